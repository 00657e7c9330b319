"""The variational-Bayes fitter (`init` / `step` over EM's blocked data) that the driver
runs, and `fit_vb`: prior resolution, initialisation, the fitter and the driver, with
restarts chosen by their final ELBO."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from jaxgmm.em.sharded import shard_blocks, sharded_mean_log_likelihood_blocks
from jaxgmm.fit.driver import FitResult, RunState, run_fitter
from jaxgmm.fit.fitter import DriverHooks, Fitter
from jaxgmm.fit.results import RestartSummary
from jaxgmm.fit.validation import check_data, check_int, check_positive
from jaxgmm.model.blocked import (
    accumulate_moments_fm,
    feature_major_blocks,
    mean_log_likelihood_blocks,
    spec_block_size,
    spec_blocks,
    stats_from_moments,
)
from jaxgmm.model.covariance import get_family
from jaxgmm.model.init import resolve_init
from jaxgmm.model.params import GMMParams
from jaxgmm.priors import ConjugatePrior, prior_from_config, resolve_prior
from jaxgmm.vb.families import get_vb_family
from jaxgmm.vb.steps import (
    UPDATES,
    VBPosterior,
    accumulate_vb_moments,
    check_vb_prior,
    elbo,
    plugin_params,
    sklearn_lower_bound,
    vb_hyperparameters,
    vb_m_step,
    vb_stats,
    weight_prior_type,
)


class VBInfo(NamedTuple):
    """Per-iteration diagnostics (iteration t maps q_{t-1} to q_t: q(z) from q_{t-1}(theta),
    then q_t(theta) from q(z)).

    Attributes:
        log_likelihood: log p(X | plug-in params of q_{t-1}) per sample (E_q weights, m_k,
            E_q precisions), by the shared density.
        bound: the complete ELBO of (q(z), q_t(theta)) per sample: a lower bound on
            log p(X) / N with every constant (docs/vb.md).
        sklearn_lower_bound_total: scikit-learn's ``lower_bound_`` for the same q, a total
            (it drops K- and N-dependent constants).

    The driver's tolerance test watches ``bound``.
    """

    log_likelihood: jax.Array
    bound: jax.Array
    sklearn_lower_bound_total: jax.Array


def _check_update(update):
    if update not in UPDATES:
        raise ValueError(f"update must be one of {list(UPDATES)}, got {update!r}")
    return update == "exact"


# Bounded like em_fitter: the same arguments give the same Fitter (the driver's compile
# cache key), and an evicted one only costs a recompile.
@functools.lru_cache(maxsize=64)
def vb_fitter(spec, tol=1e-3, update="exact", block_size=None, mesh=None):
    """The variational-Bayes `Fitter` for ``spec`` (its prior a resolved ``conjugate``
    prior: see `fit_vb`, or `jaxgmm.priors.resolve_prior`). Its state is the `VBPosterior`.

    Each step is one blocked pass over the data (q(z) from the current q(theta), the
    counts, first moments and scatter of EM's `jaxgmm.model.blocked`, and the plug-in
    log-likelihood from the same log-densities), then the closed-form update of q(theta)
    and the ELBO from those statistics; no (n_samples, K, D) array is formed.

    Args:
        spec: `GMMSpec` with a resolved conjugate prior.
        tol: convergence threshold on the change of the ELBO per sample (>= 0).
            scikit-learn's ``tol`` is on its total lower bound: ours = theirs / n_samples.
        update: "exact" (coordinate ascent, monotone ELBO) or "sklearn" (scikit-learn's
            updates, differing for tied, diag and spherical; see docs/vb.md).
        block_size: samples per block (default `jaxgmm.model.blocked.default_block_size`).
        mesh: optional `jax.sharding.Mesh`, as for `jaxgmm.em.em_fitter`: the data
            (sharded along samples over all of its axes) are laid out and reduced per
            device, and the statistics summed across devices and hosts by `psum`.

    ``init(key, params, data)`` starts from `GMMParams`: q(z) is their EM responsibilities
    and q(theta) the update from those (scikit-learn starts from the k-means
    responsibilities the same way). ``init`` itself returns `point_mass_posterior` of the
    parameters (no pass over the data); the first step computes q(theta) from their
    responsibilities and then makes iteration 1 as usual, so iteration t still maps
    q_{t-1} to q_t. A run that makes no step (``max_iter=0``, or a first step that is not
    finite) would keep that point mass: `fit_vb` then returns q_0 instead. To
    start from a `VBPosterior`, pass
    ``init_state=RunState(fitter_state=posterior, ...)`` to `run_fitter` (`fit_vb`'s
    ``init_posterior`` does).
    """
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    exact = _check_update(update)
    if block_size is not None and (
        isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1
    ):
        raise ValueError(f"block_size must be None or an int >= 1, got {block_size!r}")
    get_vb_family(spec.covariance_type)
    # With a mesh, as EM: each device lays out and reduces its own rows. Without one, the
    # blocks of a sharded array span devices and XLA gathers every row onto every device
    # in each step (seen in the compiled chunk on 2 processes): right, but not parallel.
    if mesh is None:
        prepare = functools.partial(spec_blocks, spec=spec, block_size=block_size)
        moments_of = functools.partial(accumulate_vb_moments, spec=spec, exact=exact)
        score_prepared = functools.partial(mean_log_likelihood_blocks, spec=spec)
    else:
        prepare = functools.partial(shard_blocks, spec=spec, mesh=mesh, block_size=block_size)
        moments_of = functools.partial(_sharded_vb_moments, spec=spec, exact=exact, mesh=mesh)
        score_prepared = functools.partial(sharded_mean_log_likelihood_blocks, spec=spec, mesh=mesh)

    def hyper_for(data):
        n_features = data.blocks.shape[1]
        return vb_hyperparameters(spec, n_features, data.blocks.dtype)

    def init(key, params, data):
        del key, data  # no pass over the data here: see step
        return point_mass_posterior(params, spec)

    def step(key, state, data):
        del key  # coordinate ascent is deterministic
        hyper = hyper_for(data)

        def update(q):
            moments = moments_of(data, q)
            log_likelihood, stats = vb_stats(moments, q, spec, exact)
            return vb_m_step(stats, spec, hyper, exact), log_likelihood, stats

        # From init's point mass, the first step makes two passes (q_0 from the EM
        # responsibilities of the initial parameters, then q_1) through one loop body: the
        # pass compiles once, in the chunk, not a second time in the driver's start.
        n_passes = 1 + jnp.any(jnp.isinf(state.mean_precision)).astype(jnp.int32)
        _, *rest = jax.eval_shape(update, state)
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), rest)
        new_state, log_likelihood, stats = lax.fori_loop(
            0, n_passes, lambda _, carry: update(carry[0]), (state, *zeros)
        )
        info = VBInfo(
            log_likelihood=log_likelihood,
            bound=elbo(stats, new_state, spec, hyper),
            sklearn_lower_bound_total=sklearn_lower_bound(
                stats.sum_resp_log_resp, new_state, spec
            ),
        )
        return new_state, info

    return Fitter(
        name="vb",
        bound_name="elbo",
        init=init,
        step=step,
        get_params=functools.partial(plugin_params, spec=spec),
        tol=tol,
        tol_on="bound",
        hooks=DriverHooks(
            prepare=prepare,
            score_prepared=score_prepared,
            compile_options=get_family(spec.covariance_type).em_step_compile_options,
        ),
    )


def _sharded_vb_moments(data, posterior, spec, exact, mesh):
    """`accumulate_vb_moments` of `shard_blocks` output: each device sums its own blocks,
    then `psum` (every field of `VBMoments` is a sum over samples)."""
    axes = tuple(mesh.axis_names)

    def local(data, posterior):
        moments = accumulate_vb_moments(data, posterior, spec, exact)
        return jax.tree_util.tree_map(lambda a: lax.psum(a, axes), moments)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(axes), P()), out_specs=P())(
        data, posterior
    )


def point_mass_posterior(params, spec):
    """The `VBPosterior` standing for the point mass at `GMMParams` ``params``:
    ``mean_precision`` and ``degrees_of_freedom`` infinite, the weights as concentrations
    whose expectations they are (sticks: Beta(v_k, 1 - v_k) with v_k the stick fraction
    w_k / sum_{j>=k} w_j), and the parameters' means and covariances. `plugin_params` of
    it gives ``params`` back (to rounding), and the E-step from it is EM's (see
    `jaxgmm.vb.steps.log_weights_adjustment`). Shapes as `VBPosterior`'s."""
    family = get_family(spec.covariance_type)
    weights = params.weights
    if weight_prior_type(spec.prior) == "dirichlet_process":
        # From the mass left at each stick (a reverse cumulative sum, so no cancellation
        # for a small last weight); b_k = left_{k+1} / left_k is 1 - v_k.
        left = jnp.cumsum(weights[::-1])[::-1]
        after = jnp.concatenate([left[1:], jnp.zeros_like(left[:1])])
        weights = jnp.stack([weights / left, after / left])
    n_components = spec.n_components
    per_component = get_vb_family(spec.covariance_type).dof_shape_is_per_component
    dof_shape = (n_components,) if per_component else ()
    inf = jnp.asarray(jnp.inf, params.means.dtype)
    return VBPosterior(
        weight_concentration=weights,
        mean_precision=jnp.full((n_components,), inf),
        means=params.means,
        degrees_of_freedom=jnp.full(dof_shape, inf),
        covariances=family.covariance_from_prec_chol(params.prec_chol),
        prec_chol=params.prec_chol,
    )


def vb_spec(spec, x, prior=None):
    """``spec`` with the prior VB uses, data defaults filled from ``x``: ``prior`` (a
    `ConjugatePrior` or its config form) if given, else ``spec.prior``, else the
    default `ConjugatePrior`."""
    if prior is not None:
        spec = dataclasses.replace(spec, prior=prior_from_config(prior))
    elif spec.prior is None:
        spec = dataclasses.replace(spec, prior=ConjugatePrior())
    spec = resolve_prior(spec, np.asarray(x))
    check_vb_prior(spec, x.shape[1])
    return spec


def _as_posterior(posterior, spec, n_features, dtype):
    """``posterior`` (a `VBPosterior` or a 6-tuple of its fields in order) as arrays of
    ``dtype``, its shapes checked against ``spec``."""
    if not isinstance(posterior, VBPosterior):
        try:
            posterior = VBPosterior(*posterior)
        except TypeError:
            raise ValueError(
                "init_posterior must be a VBPosterior or a tuple of its 6 fields "
                f"{list(VBPosterior._fields)}, got {type(posterior).__name__}"
            ) from None
    posterior = VBPosterior(*(jnp.asarray(np.asarray(a), dtype) for a in posterior))
    k = spec.n_components
    family = get_family(spec.covariance_type)
    process = weight_prior_type(spec.prior) == "dirichlet_process"
    expected = {
        "weight_concentration": (2, k) if process else (k,),
        "mean_precision": (k,),
        "means": (k, n_features),
        "degrees_of_freedom": (k,) if get_vb_family(spec.covariance_type)
        .dof_shape_is_per_component else (),
        "covariances": family.prec_chol_shape(k, n_features),
        "prec_chol": family.prec_chol_shape(k, n_features),
    }
    for name, shape in expected.items():
        got = getattr(posterior, name).shape
        if got != shape:
            raise ValueError(
                f"init_posterior.{name} must have shape {shape} for n_components={k}, "
                f"n_features={n_features}, covariance_type={spec.covariance_type!r} and "
                f"weight_prior_type={weight_prior_type(spec.prior)!r}, got {got}"
            )
    if not all(bool(jnp.all(jnp.isfinite(a))) for a in posterior):
        raise ValueError("init_posterior contains NaN or infinity")
    return posterior


def fit_vb(
    key,
    x,
    spec,
    *,
    prior=None,
    max_iter: int = 100,
    tol: float = 1e-3,
    n_init: int = 1,
    init: str | GMMParams = "kmeans",
    init_posterior: VBPosterior | None = None,
    update: str = "exact",
    block_size: int | None = None,
    chunk_size: int | None = None,
    callback: Callable | None = None,
) -> FitResult:
    """Fit the conjugate mixture to ``x`` by closed-form mean-field variational Bayes.

    Args:
        key: PRNG key (for the initialiser).
        x: array of shape (n_samples, n_features).
        spec: `GMMSpec`.
        prior: a `jaxgmm.priors.ConjugatePrior` (or its config form, e.g.
            ``{"name": "conjugate", "weight_prior_type": "dirichlet_process"}``);
            None: ``spec.prior``, or the default conjugate prior. Data defaults are
            filled from ``x``.
        max_iter: maximum iterations per restart (>= 0).
        tol: convergence threshold on the change of the ELBO per sample.
        n_init: restarts when ``init`` is a name; the one with the highest final ELBO is
            kept (as scikit-learn keeps the highest lower bound).
        init: an initialiser name (see `jaxgmm.INITIALIZERS`) or initial `GMMParams`
            (optionally with a leading restart axis): q starts from their responsibilities.
        init_posterior: a `VBPosterior` to continue from (scikit-learn's fitted
            attributes, or ``result.state.fitter_state`` of an earlier fit); ``init``
            and ``n_init`` are then ignored.
        update: "exact" or "sklearn" (see `vb_fitter`).
        block_size, chunk_size, callback: as for `jaxgmm.fit_em`.

    Returns:
        `FitResult`: ``params`` the plug-in `GMMParams` of the final q (E_q weights,
        m_k, E_q precisions), ``trace.bound`` the ELBO per sample each iteration
        (``bound_name`` "elbo"), ``trace.extras["sklearn_lower_bound_total"]``, and
        ``state.fitter_state`` the final `VBPosterior`.
    """
    x = check_data(x, "x", n_components=spec.n_components, dtype=getattr(x, "dtype", None))
    tol = check_positive(tol, "tol", allow_zero=True)
    n_init = check_int(n_init, "n_init", 1)
    max_iter = check_int(max_iter, "max_iter", 0)
    _check_update(update)
    spec = vb_spec(spec, x, prior)
    fitter = vb_fitter(spec, tol, update, block_size)
    run = functools.partial(
        run_fitter, fitter, x=x, spec=spec, max_iter=max_iter, chunk_size=chunk_size,
        callback=callback,
    )
    key_init, key_run = jax.random.split(key)
    if init_posterior is not None:
        posterior = _as_posterior(init_posterior, spec, x.shape[1], x.dtype)
        state = RunState(
            fitter_state=posterior,
            previous=jnp.asarray(-jnp.inf, x.dtype),
            n_iter=jnp.zeros((), jnp.int32),
        )
        return run(key=key_run, init_params=None, init_state=state)
    params = resolve_init(key_init, x, spec, init, n_init)
    if params.means.ndim == 2:
        result = run(key=key_run, init_params=params)
    else:
        result = _best_by_elbo(run, key_run, params)
    return _without_point_mass(result, x, spec, update == "exact", block_size)


def _without_point_mass(result, x, spec, exact, block_size):
    """A fit that made no step (``max_iter=0``, or a first step that was not finite)
    still holds init's point mass (infinite mean precision and degrees of freedom).
    Replace it with q_0, the update from the initial parameters' responsibilities, as
    scikit-learn's ``max_iter=0`` gives; its plug-in parameters and their log-likelihood
    with it. Compiled only for such fits."""
    no_step = np.isinf(np.asarray(result.state.fitter_state.mean_precision)).any()
    if result.n_iter > 0 or not no_step:
        return result
    block = spec_block_size(*x.shape, spec, block_size)
    posterior, params, log_likelihood = _first_posterior(x, result.params, spec, exact, block)
    if not np.isfinite(float(log_likelihood)):
        return result
    state = result.state._replace(fitter_state=posterior)
    return result._replace(params=params, log_likelihood=float(log_likelihood), state=state)


@functools.partial(jax.jit, static_argnames=("spec", "exact", "block_size"))
def _first_posterior(x, params, spec, exact, block_size):
    data = feature_major_blocks(x, block_size)
    stats = stats_from_moments(accumulate_moments_fm(data, params, spec), params, spec)[1]
    posterior = vb_m_step(stats, spec, vb_hyperparameters(spec, x.shape[1], x.dtype), exact)
    plugin = plugin_params(posterior, spec)
    return posterior, plugin, mean_log_likelihood_blocks(data, plugin, spec)


def _best_by_elbo(run, key, params):
    """One driver run per restart (the same executable each time), keeping the restart
    with the highest final ELBO. The driver alone would keep the highest plug-in
    log-likelihood, which favours the fit that keeps more components alive."""
    n_restarts = params.means.shape[0]
    results = [
        run(key=k, init_params=jax.tree_util.tree_map(lambda a, r=r: a[r], params))
        for r, k in enumerate(jax.random.split(key, n_restarts))
    ]
    final_elbo = np.array(
        [r.trace.bound[-1] if r.trace.bound.size else -np.inf for r in results], dtype=float
    )
    score = np.where(np.isfinite(final_elbo), final_elbo, -np.inf)
    if not np.any(np.isfinite(score)):
        score = np.array([r.log_likelihood for r in results], dtype=float)
        score = np.where(np.isfinite(score), score, -np.inf)
    best = int(np.argmax(score))
    summary = RestartSummary(
        log_likelihood=np.array([r.log_likelihood for r in results]),
        converged=np.array([r.converged for r in results]),
        n_iter=np.array([r.n_iter for r in results]),
        degenerate=np.array([bool(r.degeneracies) for r in results]),
        degeneracies=tuple(r.degeneracies for r in results),
        status=np.array([r.status for r in results]),
    )
    ll = np.array([r.log_likelihood for r in results], dtype=float)
    return results[best]._replace(
        restarts=summary,
        best_restart=best,
        best_overall_restart=int(np.argmax(np.where(np.isfinite(ll), ll, -np.inf))),
        selection="elbo",
        compile_s=sum(r.compile_s for r in results),
        run_s=sum(r.run_s for r in results),
    )
