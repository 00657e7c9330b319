"""EM as pure functions: E-step, M-step, the EM lower bound (Bishop 2006, eq. 9.74),
and the EM fitter (`init` / `step`) that the generic driver runs."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from jaxgmm._covariance import get_family, regularize_covariance
from jaxgmm._density import weighted_log_prob
from jaxgmm._fitter import Fitter
from jaxgmm._params import GMMParams


class SufficientStats(NamedTuple):
    """Responsibility-weighted statistics of the data, all an M-step needs.

    Attributes:
        nk: (n_components,) sum_n r_nk.
        means: (n_components, n_features) sum_n r_nk x_n / (nk + 10 eps).
        scatter: family-shaped scatter about ``means`` (see `jaxgmm._covariance`).
        sum_resp_log_resp: scalar, sum_nk r_nk log r_nk (minus the entropy of q).
        n_samples: scalar, number of samples (as the data's dtype).
        frame: None (the scatter is in data coordinates), or, for full covariances, the
            prec_chol P whose whitened frame the scatter is expressed in: ``scatter`` is
            then P^T S P. Blocked EM produces that form, because in float32 it keeps the
            narrow directions of an ill-conditioned covariance that an elementwise S
            loses. `in_data_coordinates` converts; a prior's ``em_m_step`` always receives
            data coordinates.
    """

    nk: jax.Array
    means: jax.Array
    scatter: jax.Array
    sum_resp_log_resp: jax.Array
    n_samples: jax.Array
    frame: jax.Array | None = None


def in_data_coordinates(stats, spec):
    """``stats`` with the scatter in data coordinates (``frame`` None)."""
    if stats.frame is None:
        return stats
    scatter = get_family(spec.covariance_type).from_frame(stats.scatter, stats.frame)
    return stats._replace(scatter=scatter, frame=None)


def _safe_counts(nk):
    # scikit-learn adds 10 * eps so empty components give finite means and weights.
    return nk + 10 * jnp.finfo(nk.dtype).eps


def e_step(x, params, spec):
    """Expectation step.

    Args:
        x: array of shape (n_samples, n_features).
        params: current `GMMParams`.
        spec: `GMMSpec`.

    Returns:
        ``(log_likelihood, log_resp)``: the log-likelihood per sample of ``params``
        (scalar) and log-responsibilities of shape (n_samples, n_components).
    """
    wlp = weighted_log_prob(x, params, spec)
    log_norm = logsumexp(wlp, axis=1)
    return jnp.mean(log_norm), wlp - log_norm[:, None]


def sufficient_statistics(x, log_resp, spec):
    """`SufficientStats` of ``x`` under responsibilities ``exp(log_resp)``."""
    family = get_family(spec.covariance_type)
    resp = jnp.exp(log_resp)
    nk = jnp.sum(resp, axis=0)
    means = (resp.T @ x) / _safe_counts(nk)[:, None]
    return SufficientStats(
        nk=nk,
        means=means,
        scatter=family.scatter(x, resp, means),
        sum_resp_log_resp=jnp.sum(jnp.where(resp > 0, resp * log_resp, 0.0)),
        n_samples=jnp.asarray(x.shape[0], x.dtype),
    )


def ml_params_from_stats(stats, spec):
    """Maximum-likelihood M-step from sufficient statistics (scikit-learn's estimate)."""
    family = get_family(spec.covariance_type)
    nk = _safe_counts(stats.nk)
    cov = family.covariance_from_scatter(stats.scatter, nk)
    cov = regularize_covariance(cov, spec.reg_covar, spec.covariance_type, stats.frame)
    if stats.frame is None:
        prec_chol = family.prec_chol_from_covariance(cov)
    else:
        prec_chol = family.prec_chol_from_whitened_covariance(cov, stats.frame)
    return GMMParams(weights=nk / jnp.sum(nk), means=stats.means, prec_chol=prec_chol)


def params_from_stats(stats, spec):
    """The M-step for ``spec``: maximum likelihood, or the prior's closed-form MAP step."""
    if spec.prior is None:
        return ml_params_from_stats(stats, spec)
    map_step = getattr(spec.prior, "em_m_step", None)
    if map_step is None:
        raise ValueError(
            f"EM has no closed-form M-step for the prior {spec.prior!r}; fit it with "
            "a fitter that uses the prior's density instead (gradient MAP, SVI or NUTS)"
        )
    return map_step(in_data_coordinates(stats, spec), spec)


def m_step(x, log_resp, spec):
    """Maximisation step.

    Args:
        x: array of shape (n_samples, n_features).
        log_resp: array of shape (n_samples, n_components).
        spec: `GMMSpec`.

    Returns:
        The new `GMMParams` (``reg_covar`` added to the covariance diagonal).
    """
    return params_from_stats(sufficient_statistics(x, log_resp, spec), spec)


def em_bound(x, log_resp, params, spec):
    """EM lower bound per sample, Bishop (2006) eq. 9.74, evaluated directly:

    L(q, theta) = 1/N sum_n sum_k r_nk [log pi_k + log N(x_n | mu_k, Sigma_k) - log r_nk].

    Equals the log-likelihood per sample when q is the posterior under ``params``.
    """
    wlp = weighted_log_prob(x, params, spec)
    resp = jnp.exp(log_resp)
    terms = jnp.where(resp > 0, resp * (wlp - log_resp), 0.0)
    return jnp.sum(terms) / x.shape[0]


def em_bound_from_stats(stats, params, spec):
    """The same bound as `em_bound`, from sufficient statistics in O(K D^3), so EM can
    record L(q_t, theta_{t+1}) without a second pass over the data."""
    expected = expected_complete_log_likelihood(stats, params, spec)
    return (expected - stats.sum_resp_log_resp) / stats.n_samples


def expected_complete_log_likelihood(stats, params, spec):
    """Q = sum_nk r_nk [log pi_k + log N(x_n | mu_k, Sigma_k)] (a total, not per sample)
    from sufficient statistics, exact because
    sum_n r_nk (x_n - mu)(x_n - mu)^T = S_k + n_k (xbar_k - mu)(xbar_k - mu)^T."""
    family = get_family(spec.covariance_type)
    n_features = params.means.shape[-1]
    log_det = family.log_det_prec_chol(params.prec_chol, n_features)
    offset = family.paired_mahalanobis(stats.means, params.means, params.prec_chol)
    per_component = stats.nk * (
        jnp.log(params.weights) + log_det - 0.5 * n_features * math.log(2 * math.pi) - 0.5 * offset
    )
    expected = jnp.sum(jnp.where(stats.nk > 0, per_component, 0.0))
    prec_chol = params.prec_chol
    if stats.frame is not None:
        prec_chol = family.relative_prec_chol(stats.frame, prec_chol)
    return expected - 0.5 * family.trace_term(stats.scatter, prec_chol)


class EMState(NamedTuple):
    """Carried by EM: current parameters and the previous log-likelihood per sample."""

    params: GMMParams
    prev_log_likelihood: jax.Array  # scalar


class EMInfo(NamedTuple):
    """Per-iteration EM diagnostics (iteration t maps theta_t to theta_{t+1}).

    Attributes:
        log_likelihood: log p(X | theta_t) per sample, from the E-step.
        bound: L(q_t, theta_{t+1}) per sample, right after the M-step; lies between
            log p(X | theta_t) and log p(X | theta_{t+1}).
        converged: |log_likelihood - previous log_likelihood| < tol.
    """

    log_likelihood: jax.Array
    bound: jax.Array
    converged: jax.Array


# Full covariances' step is matrix products: XLA:CPU compiles it 1.7x faster with its
# classic emitters than with its fusion emitters, at the same measured time per
# iteration. Diagonal ones are elementwise work that the fusion emitters make 20-40%
# faster, so they keep the default.
_STEP_COMPILE_OPTIONS = {"full": (("xla_cpu_use_fusion_emitters", False),)}


@functools.cache
def em_fitter(spec, tol=1e-3, block_size=None, mesh=None):
    """The EM `Fitter` for ``spec``. Cached so repeated fits reuse compiled code.

    Each step is one blocked pass over the data (`jaxgmm._blocked.accumulate_moments`:
    log-likelihood, counts, first moments, scatter) followed by the M-step from those
    statistics; no (n_samples, K, D) array is formed.

    Args:
        spec: `GMMSpec`.
        tol: convergence threshold on the change of the log-likelihood per sample.
        block_size: samples per block (default chosen from n_samples, K and D by
            `jaxgmm._blocked.default_block_size`).
        mesh: optional `jax.sharding.Mesh`; the data (sharded along samples over all of
            its axes, see `jaxgmm.shard_data`) are reduced per device and the statistics
            summed across devices (and hosts) by XLA collectives.
    """
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if block_size is not None and (
        isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1
    ):
        raise ValueError(f"block_size must be None or an int >= 1, got {block_size!r}")
    from jaxgmm._blocked import (
        accumulate_moments_fm,
        mean_log_likelihood_blocks,
        spec_blocks,
        stats_from_moments,
    )
    from jaxgmm._sharding import (
        shard_blocks,
        sharded_mean_log_likelihood_blocks,
        sharded_moments_blocks,
    )

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

    def init(params, x):
        return EMState(params=params, prev_log_likelihood=jnp.asarray(-jnp.inf, x.dtype))

    def step(key, state, data):
        del key  # EM is deterministic
        moments = moments_of(data, state.params)
        log_likelihood, stats = stats_from_moments(moments, state.params, spec)
        new_params = params_from_stats(stats, spec)
        info = EMInfo(
            log_likelihood=log_likelihood,
            bound=em_bound_from_stats(stats, new_params, spec),
            converged=jnp.abs(log_likelihood - state.prev_log_likelihood) < tol,
        )
        return EMState(params=new_params, prev_log_likelihood=log_likelihood), info

    return Fitter(
        name="em",
        bound_name="em_bound",
        init=init,
        step=step,
        get_params=lambda s: s.params,
        prepare=prepare,
        score_prepared=score_prepared,
        compile_options=_STEP_COMPILE_OPTIONS.get(spec.covariance_type, ()),
    )
