"""The EM fitter (`init` / `step` over blocked data, optionally sharded) that the driver
runs, and `fit_em`: initialisation + the EM fitter + the driver, in one call."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax

from jaxgmm.em.sharded import (
    shard_blocks,
    sharded_mean_log_likelihood_blocks,
    sharded_moments_blocks,
)
from jaxgmm.em.steps import check_em_prior, em_bound_from_stats, params_from_stats
from jaxgmm.fit.driver import FitResult, checked_initial_params, run_fitter
from jaxgmm.fit.fitter import DriverHooks, Fitter
from jaxgmm.fit.validation import check_data, check_int, check_positive
from jaxgmm.model.blocked import (
    accumulate_moments_fm,
    mean_log_likelihood_blocks,
    spec_blocks,
    stats_from_moments,
)
from jaxgmm.model.covariance import get_family, use_expansion
from jaxgmm.model.params import GMMParams
from jaxgmm.priors import log_prior


def fit_em(
    key,
    x,
    spec,
    *,
    init: str | GMMParams = "kmeans",
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    chunk_size: int | None = None,
    callback: Callable | None = None,
    select: str = "non_degenerate",
) -> FitResult:
    """Fit ``spec`` to ``x`` by EM.

    Args:
        key: PRNG key (for the initialiser).
        x: array of shape (n_samples, n_features).
        spec: `GMMSpec`.
        init: an initialiser name (see `INITIALIZERS`) or initial `GMMParams`
            (optionally batched with a leading restart axis).
        n_init: restarts when ``init`` is a name; run vectorised, best kept (highest
            log-likelihood, or log posterior under ``spec.prior``).
        max_iter: maximum EM iterations per restart.
        tol: convergence threshold on the change of the log-likelihood per sample.
        chunk_size: iterations per jitted chunk (default chosen from the size).
        callback: progress hook, see `run_fitter`.
        select: which restart to return: ``"non_degenerate"`` (default: the best restart
            without a collapsed or empty component, when there is one) or
            ``"likelihood"`` (the best overall); see `run_fitter`.

    Returns:
        `FitResult` (``restarts`` holds every restart's log-likelihood, status and
        degeneracies).

    Raises:
        ValueError: bad arguments, or no finite state (e.g. data whose squares overflow
        float32): the message says why and what to do.
    """
    check_em_prior(spec)
    x = check_data(x, "x", n_components=spec.n_components, dtype=getattr(x, "dtype", None))
    tol = check_positive(tol, "tol", allow_zero=True)
    n_init = check_int(n_init, "n_init", 1)
    max_iter = check_int(max_iter, "max_iter", 0)
    key_init, key_run = jax.random.split(key)
    params = checked_initial_params(key_init, x, spec, init, n_init)
    return run_fitter(
        em_fitter(spec, tol), key_run, x, params, spec,
        max_iter=max_iter, chunk_size=chunk_size, callback=callback, select=select,
    )


class EMState(NamedTuple):
    """Carried by EM: the current parameters (EM needs nothing else)."""

    params: GMMParams


class EMInfo(NamedTuple):
    """Per-iteration EM diagnostics (iteration t maps theta_t to theta_{t+1}).

    Attributes:
        log_likelihood: log p(X | theta_t) per sample, from the E-step.
        bound: L(q_t, theta_{t+1}) per sample, right after the M-step; lies between
            log p(X | theta_t) and log p(X | theta_{t+1}).

    The driver tests convergence: |log_likelihood - previous log_likelihood| < tol.
    """

    log_likelihood: jax.Array
    bound: jax.Array


# Bounded: the same arguments must give the same Fitter (the driver's compile cache is
# keyed by it), but a fitter holds no executable of its own, so an evicted one only costs
# a recompile if it is built again.
@functools.lru_cache(maxsize=64)
def em_fitter(spec, tol=1e-3, block_size=None, mesh=None):
    """The EM `Fitter` for ``spec``. Cached so repeated fits reuse compiled code.

    Each step is one blocked pass over the data (`jaxgmm.model.blocked.accumulate_moments`:
    log-likelihood, counts, first moments, scatter) followed by the M-step from those
    statistics; no (n_samples, K, D) array is formed.

    Args:
        spec: `GMMSpec`.
        tol: convergence threshold on the change of the log-likelihood per sample.
        block_size: samples per block (default chosen from n_samples, K and D by
            `jaxgmm.model.blocked.default_block_size`).
        mesh: optional `jax.sharding.Mesh`; the data (sharded along samples over all of
            its axes, see `jaxgmm.shard_data`) are reduced per device and the statistics
            summed across devices (and hosts) by XLA collectives.
    """
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    check_em_prior(spec)
    if block_size is not None and (
        isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1
    ):
        raise ValueError(f"block_size must be None or an int >= 1, got {block_size!r}")
    # The data are laid out in blocks once per fit (`prepare`); with a mesh, each device
    # lays out its own rows.
    if mesh is None:
        prepare = functools.partial(spec_blocks, spec=spec, block_size=block_size)
        moments_of = functools.partial(accumulate_moments_fm, spec=spec)
        score_prepared = functools.partial(mean_log_likelihood_blocks, spec=spec)
    else:
        prepare = functools.partial(shard_blocks, spec=spec, mesh=mesh, block_size=block_size)
        moments_of = functools.partial(sharded_moments_blocks, spec=spec, mesh=mesh)
        score_prepared = functools.partial(sharded_mean_log_likelihood_blocks, spec=spec, mesh=mesh)

    family = get_family(spec.covariance_type)

    def init(key, params, data):
        del key, data  # EM starts from the parameters alone
        return EMState(params=params)

    def step(key, state, data):
        del key  # EM is deterministic
        moments = moments_of(data, state.params)
        log_likelihood, stats = stats_from_moments(moments, state.params, spec)
        new_params = params_from_stats(stats, spec)
        info = EMInfo(
            log_likelihood=log_likelihood, bound=em_bound_from_stats(stats, new_params, spec)
        )
        return EMState(params=new_params), info

    return Fitter(
        name="em",
        bound_name="em_bound",
        init=init,
        step=step,
        get_params=lambda s: s.params,
        tol=tol,
        tol_on="log_likelihood",
        hooks=DriverHooks(
            prepare=prepare,
            score_prepared=score_prepared,
            compile_options=family.em_step_compile_options,
            # MAP-EM: restarts ranked by the log posterior it increases, not the likelihood.
            log_prior=None if spec.prior is None else lambda state: log_prior(state.params, spec),
            # Every expansion choice in the step is on the step's starting parameters.
            expansion_holds=(
                (lambda params: use_expansion(family, params.means, params.prec_chol))
                if family.has_expansion
                else None
            ),
        ),
    )
