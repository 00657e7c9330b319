"""Stochastic variational inference on the NumPyro model of a `GMMSpec`, as a `Fitter`
run by the generic driver (uniform traces, restarts, compile time kept apart), plus an
importance-sampling estimate of log p(X) from the fitted guide.

Guides (NumPyro autoguides, keyed by config name in `GUIDES`): ``auto_delta`` (MAP: its
objective is the log joint at a point, so it is traced as ``log_joint``, not as an ELBO),
``auto_normal`` (mean field in the unconstrained space) and ``auto_multivariate_normal``
(full-rank Gaussian in the unconstrained space).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import logsumexp
from numpyro import distributions as dist
from numpyro import handlers
from numpyro.distributions import biject_to
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDelta, AutoMultivariateNormal, AutoNormal
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.svi import SVIState
from numpyro.infer.util import log_density
from numpyro.optim import optax_to_numpyro

from jaxgmm._registry import lookup
from jaxgmm.bayes import psis
from jaxgmm.bayes.inference_data import svi_inference_data
from jaxgmm.bayes.model import gmm_model, model_prior
from jaxgmm.fit.driver import FitResult, run_fitter
from jaxgmm.fit.fitter import DriverHooks, Fitter
from jaxgmm.fit.results import all_finite
from jaxgmm.fit.validation import (
    check_data,
    check_init_params,
    check_int,
    check_positive,
    no_finite_state_error,
)
from jaxgmm.gradient.fitter import OPTIMIZERS, make_optimizer
from jaxgmm.model.density import mean_log_likelihood
from jaxgmm.model.init import resolve_init
from jaxgmm.model.params import (
    GMMParams,
    covariances,
    dense_covariances,
    params_from_covariances,
)
from jaxgmm.priors import log_prior, resolve_prior

GUIDES = {
    "auto_delta": AutoDelta,
    "auto_normal": AutoNormal,
    "auto_multivariate_normal": AutoMultivariateNormal,
}


def make_svi_optimizer(name, learning_rate=0.01, schedule=None, schedule_steps=1000, **options):
    """An optax optimiser for SVI from the same registry the gradient fitter uses
    (`jaxgmm.OPTIMIZERS`), minus line-search methods: SVI's gradients are stochastic.

    ``schedule``: None (constant) or a key of `jaxgmm.gradient.SCHEDULES` (``constant``,
    ``exponential``: learning_rate * 0.01 ** (step / schedule_steps), ``cosine``,
    ``warmup_cosine``), spanning ``schedule_steps`` updates (use ``num_steps``); options:
    the optax function's keyword arguments. See `jaxgmm.gradient.make_optimizer`."""
    stochastic = {key: entry for key, entry in OPTIMIZERS.items() if not entry.line_search}
    message = "unknown optimizer {name} for SVI; valid optimizers: {valid}"
    lookup(stochastic, name, "optimizer", message)
    return make_optimizer(name, learning_rate, schedule, schedule_steps, options)


def _guide_class(name):
    return lookup(GUIDES, name, "guide", "unknown guide {name}; valid guides: {valid}")


class SVIFitState(NamedTuple):
    """Carried by the SVI fitter (the key is supplied per step by the driver)."""

    optim_state: object  # numpyro/optax optimiser state of the guide's parameters
    mutable_state: object  # None for these models
    log_likelihood: jax.Array  # scalar: log p(X | this state's point estimate) per sample


class SVIInfo(NamedTuple):
    """Per-step SVI diagnostics.

    Attributes:
        log_likelihood: log p(X | point estimate of the guide before the step) per sample;
            the point estimate is the guide's median (the delta for AutoDelta).
        bound: the stochastic objective per sample at the parameters before the step:
            the ELBO estimate (``num_particles`` draws), or for AutoDelta the log joint
            log p(X, params) / N.

    The driver tests convergence: |bound - previous bound| < tol (never, when tol is None).
    """

    log_likelihood: jax.Array
    bound: jax.Array


class SVIHandle(NamedTuple):
    """What the fitter closes over, exposed for post-processing (IS estimates)."""

    svi: SVI
    guide: object
    model: Callable
    spec: object
    n_features: int


class SiteOrderedELBO(Trace_ELBO):
    """NumPyro's `Trace_ELBO` with the per-site terms summed in sorted site order.

    Trace_ELBO sums ``log p - log q`` over a Python ``set`` of site names, whose order
    follows the string hash, i.e. ``PYTHONHASHSEED``: the same fit in two processes then
    differs in the ELBO's last bits. Summing a sorted dict makes it bit-reproducible.
    """

    def __init__(self, num_particles=1):
        super().__init__(num_particles=num_particles, sum_sites=False)

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        out = super().loss_with_mutable_state(rng_key, param_map, model, guide, *args, **kwargs)
        terms = out["loss"]
        return {**out, "loss": sum(terms[name] for name in sorted(terms))}


@functools.lru_cache(maxsize=64)  # one per svi_fitter entry
def _svi_handle(spec, n_features, dtype_name, guide_name, optimizer, num_particles, init_scale):
    dtype = jnp.dtype(dtype_name)
    prior = model_prior(spec)
    model = functools.partial(gmm_model, spec=spec, prior=prior)
    cls = _guide_class(guide_name)
    kwargs = {"init_loc_fn": init_to_uniform}
    if guide_name != "auto_delta":
        kwargs["init_scale"] = init_scale
    guide = cls(model, **kwargs)
    svi = SVI(model, guide, optax_to_numpyro(optimizer), SiteOrderedELBO(num_particles))
    # The guide records a prototype trace of the model on its first call. Record it here,
    # once, on placeholder data of the right shape (a numpy constant, so the closures the
    # guide keeps hold no tracer), by abstract evaluation: running the model eagerly costs
    # tens of seconds of per-op compilation. Later calls only read static structure from
    # the prototype (supports, shapes); the guide's values are always supplied by us.
    placeholder = np.zeros((1, n_features), dtype)
    jax.eval_shape(lambda: handlers.seed(guide, rng_seed=0)(placeholder))
    return SVIHandle(svi=svi, guide=guide, model=model, spec=spec, n_features=n_features)


def guide_init_params(handle, params):
    """Guide parameters that put the guide's point estimate at ``params`` (`GMMParams`)."""
    prior, guide = model_prior(handle.spec), handle.guide
    # Hyper-sites (a hierarchical prior's, not in GMMParams) start at the prior's choice.
    sites = {
        **prior.initial_hyper_values(params, handle.spec),
        **prior.site_values(params, handle.spec),
    }
    if isinstance(guide, AutoDelta):
        return {f"{name}_auto_loc": value for name, value in sites.items()}
    unconstrained = {
        name: biject_to(guide.prototype_trace[name]["fn"].support).inv(sites[name])
        for name in guide._init_locs
    }
    if isinstance(guide, AutoNormal):
        return {f"{name}_auto_loc": value for name, value in unconstrained.items()}
    # AutoContinuous guides ravel their latent sites in the prototype's order.
    flat = [jnp.reshape(unconstrained[name], (-1,)) for name in guide._init_locs]
    return {"auto_loc": jnp.concatenate(flat)}


def median_sites(handle, guide_params):
    """Site values at the guide's median: the delta (AutoDelta), or the constrained image
    of the unconstrained Gaussian's location (AutoNormal, AutoMultivariateNormal)."""
    guide = handle.guide
    if isinstance(guide, AutoDelta):
        return {name: guide_params[f"{name}_auto_loc"] for name in guide._init_locs}
    if isinstance(guide, AutoNormal):
        unconstrained = {name: guide_params[f"{name}_auto_loc"] for name in guide._init_locs}
    else:
        unconstrained, start = {}, 0
        for name, init in guide._init_locs.items():
            size = int(np.prod(jnp.shape(init)))
            flat = guide_params["auto_loc"][start : start + size]
            unconstrained[name] = jnp.reshape(flat, jnp.shape(init))
            start += size
    return {
        name: biject_to(guide.prototype_trace[name]["fn"].support)(value)
        for name, value in unconstrained.items()
    }


def point_estimate(handle, guide_params):
    """`GMMParams` at the guide's median (the delta's value for AutoDelta)."""
    sites = median_sites(handle, guide_params)
    dtype = jax.tree_util.tree_leaves(sites)[0].dtype
    return model_prior(handle.spec).params_from_sites(sites, handle.spec, handle.n_features, dtype)


# Bounded: the same arguments must give the same Fitter (the driver's compile cache is
# keyed by it), but a fitter holds no executable of its own, so an evicted one only costs
# a recompile if it is built again.
@functools.lru_cache(maxsize=64)
def svi_fitter(
    spec,
    n_features,
    dtype_name,
    guide="auto_normal",
    optimizer=None,
    num_particles=1,
    tol=None,
    init_scale=0.1,
):
    """The SVI `Fitter` for ``spec`` (prior resolved) on data with ``n_features`` columns
    of dtype ``dtype_name``. ``optimizer``: an optax GradientTransformation (hashable;
    reuse the same object to reuse compiled code); default adam(0.01)."""
    optimizer = optax.adam(0.01) if optimizer is None else optimizer
    handle = _svi_handle(spec, n_features, dtype_name, guide, optimizer, num_particles, init_scale)
    svi = handle.svi

    def point_log_likelihood(svi_state, x):
        return mean_log_likelihood(x, point_estimate(handle, svi.get_params(svi_state)), spec)

    @jax.jit
    def init(key, params, x):
        state = svi.init(key, x, init_params=guide_init_params(handle, params))
        return SVIFitState(
            optim_state=state.optim_state,
            mutable_state=state.mutable_state,
            log_likelihood=point_log_likelihood(state, x),
        )

    def step(key, state, x):
        svi_state = SVIState(state.optim_state, state.mutable_state, key)
        new_state, loss = svi.update(svi_state, x)
        new_sites = median_sites(handle, svi.get_params(new_state))
        prior = model_prior(spec)
        new_point = prior.params_from_sites(new_sites, spec, handle.n_features, x.dtype)
        # The new point's log-likelihood is evaluated here (and carried to the next step's
        # Info) rather than at the start of the next step, so that a step to a point whose
        # log-likelihood or log prior is not finite (weights underflowing to 0 after a
        # diverging update) is itself refused by the driver's finite test: the state the
        # driver keeps then has finite values, not just finite parameters.
        new_ll = mean_log_likelihood(x, new_point, spec).astype(x.dtype)
        # The full site dict: a hierarchical prior's hyper-sites join its density.
        new_lp = prior.log_density_of_sites(new_sites, spec, handle.n_features, x.dtype)
        new_ok = jnp.isfinite(new_ll) & jnp.isfinite(new_lp)
        bound = jnp.where(new_ok, -loss / x.shape[0], jnp.nan).astype(x.dtype)
        info = SVIInfo(log_likelihood=state.log_likelihood, bound=bound)
        return SVIFitState(new_state.optim_state, new_state.mutable_state, new_ll), info

    @jax.jit
    def get_params(state):
        return point_estimate(handle, svi.get_params(SVIState(state.optim_state, None, None)))

    hooks = None
    if guide == "auto_delta":
        # A MAP fit: the driver ranks restarts by log posterior, as for EM and gradient MAP.
        prior, dtype = model_prior(spec), jnp.dtype(dtype_name)

        def restart_log_prior(state):
            sites = median_sites(handle, svi.get_params(SVIState(state.optim_state, None, None)))
            return prior.log_density_of_sites(sites, spec, n_features, dtype)

        hooks = DriverHooks(log_prior=restart_log_prior)
    return Fitter(
        name=f"svi_{guide}",
        bound_name="log_joint" if guide == "auto_delta" else "elbo",
        init=init,
        step=step,
        get_params=get_params,
        tol=tol,
        tol_on="bound",
        hooks=hooks,
    ), handle


class SVIResult(NamedTuple):
    """Outcome of `fit_svi`.

    Attributes:
        fit: the driver's `FitResult` (params at the guide's point estimate, trace with
            log-likelihood per sample, ``bound`` = ELBO (or log joint for AutoDelta) per
            sample, elapsed seconds).
        guide_params: dict of the fitted guide's (constrained) parameters.
        guide: guide name; spec: the `GMMSpec` with its prior resolved.
        elbo: ELBO per sample of the final guide, from ``n_eval_samples`` fresh draws
            (for AutoDelta: the log joint per sample at the point).
        elbo_stderr: its Monte Carlo standard error.
        log_marginal_is: importance-sampling estimate of log p(X) per sample, from
            ``n_eval_samples`` draws independent of the ELBO's, with the proposal
            symmetrised over the K! relabellings (see `importance_estimate`); NaN for
            AutoDelta (a point mass is no proposal) and for K > MAX_SYMMETRIZED_COMPONENTS.
            Being above ``elbo`` says nothing about its quality (it holds by Jensen's
            inequality): read ``importance["pareto_k"]`` (unreliable above
            ``importance["khat_threshold"]``, 0.7 for 2200 draws or more) and
            ``importance["ess"]``.
        log_posterior: log p(X | params) + log p(params) (total, not per sample) at the
            point estimate: the MAP objective.
        log_marginal_is_stderr: its delta-method standard error per sample (NaN when not
            estimated; itself unreliable when k-hat is).
        importance: JSON-able dict of the estimate's diagnostics (`importance_estimate`'s
            ``diagnostics``: ess, pareto_k, khat_threshold, reliable, symmetrized, ...);
            empty for AutoDelta.
        init_repaired: (restart, component) pairs whose point-mass initial covariance
            was replaced (`repair_point_masses`); empty when the init was used as given.

    `to_inference_data` gives draws of the guide to ArviZ (``az.loo``, ``az.waic``, ...).
    """

    fit: FitResult
    guide_params: dict
    guide: str
    spec: object
    elbo: float
    elbo_stderr: float
    log_marginal_is: float
    log_posterior: float
    handle: SVIHandle
    log_marginal_is_stderr: float
    importance: dict
    init_repaired: tuple

    def to_inference_data(
        self, key, x, *, num_samples=1000, feature_names=None, log_likelihood=True,
        batch_size=32,
    ):  # fmt: skip
        """``num_samples`` draws of the fitted guide as an ArviZ ``InferenceData`` with one
        chain (needs ``pip install 'jaxgmm[arviz]'``).

        Args:
            key: PRNG key for the guide's draws.
            x: the training data passed to `fit_svi`, array of shape (n_samples,
                n_features); checked against the recorded log-likelihood.
            num_samples: draws of the guide (chain 0, draws 0 .. num_samples - 1).
            feature_names, log_likelihood, batch_size: as `NUTSResult.to_inference_data`.

        The draws are relabelled to the guide's point estimate (``fit.params``) by
        `jaxgmm.bayes.relabel`; groups ``posterior``, ``log_likelihood``,
        ``observed_data`` and ``sample_stats`` (``relabel_permutation`` only). For
        ``auto_delta`` every draw is the MAP point (a point mass: no LOO or WAIC to speak
        of).
        """
        return svi_inference_data(
            key, self, x, num_samples=num_samples, feature_names=feature_names,
            log_likelihood=log_likelihood, batch_size=batch_size,
        )  # fmt: skip


# Above this many components the K! relabellings of the symmetrised proposal are refused
# (7! = 5040 guide densities per draw); the unsymmetrised estimate is off by up to log K!.
MAX_SYMMETRIZED_COMPONENTS = 6


def guide_log_density(handle, guide_params, sites):
    """log q(sites): the density of a stochastic guide (AutoNormal, AutoMultivariateNormal)
    at ``sites`` (dict name -> value, the model's latent site values), with respect to
    Lebesgue measure on the site values: the Gaussian density of the unconstrained values
    minus log |det J| of the map from unconstrained to site space, as the guide's own
    trace scores its draws. A scalar."""
    guide = handle.guide
    unconstrained, log_det = {}, 0.0
    for name in guide._init_locs:
        transform = biject_to(guide.prototype_trace[name]["fn"].support)
        value = sites[name]
        free = transform.inv(value)
        log_det = log_det + jnp.sum(transform.log_abs_det_jacobian(free, value))
        unconstrained[name] = free
    if isinstance(guide, AutoNormal):
        log_base = sum(
            jnp.sum(
                dist.Normal(
                    guide_params[f"{name}_auto_loc"], guide_params[f"{name}_auto_scale"]
                ).log_prob(free)
            )
            for name, free in unconstrained.items()
        )
    elif isinstance(guide, AutoMultivariateNormal):
        # AutoContinuous guides ravel their latent sites in the prototype's order.
        flat = jnp.concatenate([jnp.reshape(v, (-1,)) for v in unconstrained.values()])
        log_base = dist.MultivariateNormal(
            guide_params["auto_loc"], scale_tril=guide_params["auto_scale_tril"]
        ).log_prob(flat)
    else:
        raise ValueError(f"guide_log_density needs a stochastic guide, got {type(guide).__name__}")
    return log_base - log_det


def _permute_params(params, perm, spec):
    """`GMMParams` with component j taken from component perm[j] (jittable)."""
    take = lambda a: jnp.take(a, perm, axis=0)  # noqa: E731
    shared = spec.covariance_type == "tied"  # one matrix for all components: nothing to permute
    return GMMParams(
        weights=take(params.weights),
        means=take(params.means),
        prec_chol=params.prec_chol if shared else take(params.prec_chol),
    )


def symmetrization(spec):
    """(symmetrize, reason): whether the importance-sampling proposal is symmetrised over the
    K! relabellings for ``spec`` (prior resolved), and a sentence saying why or why not."""
    prior, k = model_prior(spec), spec.n_components
    if k == 1:
        return False, "K = 1: a single labelling"
    if not getattr(prior, "exchangeable", True):
        return False, f"prior {prior.name!r} is not exchangeable in the labels: no symmetry"
    if k > MAX_SYMMETRIZED_COMPONENTS:
        return None, (
            f"K = {k}: the symmetrised proposal would need K! = {math.factorial(k)} guide "
            f"densities per draw (at most K = {MAX_SYMMETRIZED_COMPONENTS} is supported), and "
            f"without it the estimate misses up to log K! = {math.lgamma(k + 1):.3f} nats"
        )
    return True, f"proposal averaged over the K! = {math.factorial(k)} relabellings"


@functools.partial(jax.jit, static_argnums=(1, 4, 5))
def importance_terms(key, handle, guide_params, x, n_draws, symmetrize=False):
    """Per-draw terms of z_s ~ q (the guide), each of shape (n_draws,), totals over samples:
    ``(log_joint, log_q, log_q_sym)``: log p(X, z_s), log q(z_s) (the guide's trace) and
    log q_sym(z_s) = log mean_sigma q(sigma z_s) over the K! relabellings sigma (the
    permuted draw's density in site space; hyper-sites, if any, unchanged), or log q(z_s)
    again when ``symmetrize`` is False. Since p(X, .) is label-invariant under an
    exchangeable prior, p(X, z)/q_sym(z) is the importance weight of the symmetrised
    proposal q_sym, whose draws are z_s relabelled by a uniform random sigma."""
    guide, model, spec = handle.guide, handle.model, handle.spec
    prior = model_prior(spec)
    k = spec.n_components
    # K! rows: built only when used (K = 10 would be 3.6 million).
    perms = (
        jnp.asarray(list(itertools.permutations(range(k))), dtype=jnp.int32) if symmetrize else None
    )

    def one(draw_key):
        seeded = handlers.seed(handlers.substitute(guide, data=guide_params), draw_key)
        guide_trace = handlers.trace(seeded).get_trace(x)
        log_q = 0.0
        latent = {}
        for name, site in guide_trace.items():
            if site["type"] != "sample":
                continue
            log_q = log_q + jnp.sum(site["fn"].log_prob(site["value"]))
            if not site.get("infer", {}).get("is_auxiliary", False):
                latent[name] = site["value"]
        log_p, _ = log_density(model, (x,), {}, latent)
        if not symmetrize:
            return log_p, log_q, log_q
        params = prior.params_from_sites(latent, spec, handle.n_features, x.dtype)

        def permuted_log_q(perm):
            sites = {**latent, **prior.site_values(_permute_params(params, perm, spec), spec)}
            return guide_log_density(handle, guide_params, sites)

        # lax.map, not vmap: the site transforms factor matrices, and batched LAPACK calls
        # can hang (see jaxgmm.model.linalg).
        log_qs = jax.lax.map(permuted_log_q, perms)
        return log_p, log_q, logsumexp(log_qs) - math.log(perms.shape[0])

    return jax.lax.map(one, jax.random.split(key, n_draws))


def log_importance_weights(key, handle, guide_params, x, n_draws, symmetrize=False):
    """(n_draws,) log importance weights log p(X, z_s) - log q(z_s), z_s ~ q, totals; with
    ``symmetrize`` the weights of the symmetrised proposal (see `importance_terms`)."""
    log_p, _, log_q_sym = importance_terms(key, handle, guide_params, x, n_draws, symmetrize)
    return log_p - log_q_sym


def usable_log_weights(log_weights):
    """Whether an importance estimate can be formed from ``log_weights``: no NaN or +inf,
    and at least one finite weight (-inf is a zero weight, e.g. a draw whose likelihood
    underflows, and is allowed)."""
    w = np.asarray(log_weights)
    return bool(not np.isnan(w).any() and not np.isposinf(w).any() and np.isfinite(w).any())


def _log_mean_exp(log_weights):
    """(log mean exp(w), its delta-method standard error), both in the units of w."""
    s = log_weights.size
    log_mean = float(logsumexp(log_weights) - math.log(s))
    ess = psis.importance_ess(log_weights)
    # SE(log mean w) ~ sd(w) / (sqrt(S) mean w) (delta method), and with the sample variance
    # sd(w)^2 / mean(w)^2 = S (S / ESS - 1) / (S - 1).
    stderr = math.sqrt(max(s / ess - 1.0, 0.0) / max(s - 1, 1))
    return log_mean, stderr


def importance_estimate(key, handle, guide_params, x, n_draws=1000, symmetrize=None):
    """The ELBO and the importance-sampling estimate of log p(X) from a fitted guide, from
    independent draws (``n_draws`` each).

    log p(X) >= E_q[log p(X, z) - log q(z)] (the ELBO); the importance-sampling estimate
    log (1/S) sum_s p(X, z_s) / q_sym(z_s) is consistent for log p(X), and its expectation
    lies between the ELBO and log p(X) (Burda et al. 2016) *whatever its quality*, so being
    above the ELBO checks nothing: its Pareto k-hat (Vehtari et al. 2024) and effective
    sample size say whether it can be trusted (k-hat above `psis.khat_threshold`, 0.7 for
    S >= 2200: unreliable, its standard error too). The proposal is the guide symmetrised
    over the K! relabellings (Fruhwirth-Schnatter 2004): a guide sitting in one of the K!
    symmetric modes of the posterior covers 1/K! of its mass, and the unsymmetrised
    estimate misses log K! nats.

    Args:
        symmetrize: None (default) decides by `symmetrization`; True or False forces it
            (True still refuses an exchangeable-prior check failure, not K).

    Returns:
        dict: ``elbo``, ``elbo_stderr``, ``log_marginal``, ``log_marginal_stderr`` (per
        sample; ``log_marginal`` NaN when K is too large to symmetrise), and
        ``diagnostics`` (JSON-able: ``ess``, ``pareto_k``, ``khat_threshold``, ``reliable``,
        ``n_draws``, ``symmetrized``, ``symmetrization`` (why), and the unsymmetrised
        estimate ``log_marginal_unsymmetrized`` with its ``pareto_k_unsymmetrized``, and
        ``elbo_symmetrized``, the ELBO of q_sym, a tighter lower bound, per sample).
    """
    n = x.shape[0]
    auto, reason = symmetrization(handle.spec)
    if symmetrize is None:
        symmetrize = auto
    elif symmetrize and auto is False:
        raise ValueError(f"symmetrize=True is not possible here: {reason}")
    elif not symmetrize:
        reason = "not symmetrised (symmetrize=False)"
    key_elbo, key_is = jax.random.split(key)
    sym = bool(symmetrize)
    log_p, log_q, log_q_sym = (
        np.asarray(a, np.float64)
        for a in importance_terms(key_elbo, handle, guide_params, x, n_draws, sym)
    )
    w_elbo = log_p - log_q
    elbo = float(np.mean(w_elbo)) / n
    elbo_stderr = float(np.std(w_elbo) / math.sqrt(n_draws)) / n
    log_p, log_q, log_q_sym = (
        np.asarray(a, np.float64)
        for a in importance_terms(key_is, handle, guide_params, x, n_draws, sym)
    )
    raw, weights = log_p - log_q, log_p - log_q_sym
    finite = usable_log_weights(weights) and usable_log_weights(raw)
    summary = psis.summarize(weights) if finite else {"ess": float("nan"), "pareto_k": None}
    raw_log_mean, _ = _log_mean_exp(raw) if finite else (float("nan"), None)
    log_mean, stderr = _log_mean_exp(weights) if finite else (float("nan"), float("nan"))
    diagnostics = {
        **summary,
        "n_draws": int(n_draws),
        "symmetrized": sym,
        "symmetrization": reason,
        "log_marginal_unsymmetrized": raw_log_mean / n,
        "pareto_k_unsymmetrized": psis.pareto_k(raw) if finite else None,
        "elbo_symmetrized": float(np.mean(weights)) / n if sym else elbo,
    }
    if symmetrize is None:  # K too large: no estimate rather than one off by up to log K!
        log_mean, stderr = float("nan"), float("nan")
    return {
        "elbo": elbo,
        "elbo_stderr": elbo_stderr,
        "log_marginal": log_mean / n,
        "log_marginal_stderr": stderr / n,
        "diagnostics": diagnostics,
    }


def _point_mass_floor(x, spec):
    """The covariance eigenvalue below which an initial component is a point mass: twice
    ``reg_covar`` (what `jaxgmm.fit.results.find_degeneracies` calls collapsed), and at
    least 1e-6 of the smallest per-feature data variance (for reg_covar 0)."""
    return max(2.0 * spec.reg_covar, 1e-6 * float(np.min(np.var(x, axis=0))))


def repair_point_masses(x, params, spec):
    """Initial parameters whose point-mass components get a usable covariance.

    One-point initialisers (``random_from_data``, ``k-means++``) start each component at
    the ``reg_covar`` floor: a covariance of 1e-6 where the data's is O(1). EM's first
    E/M step replaces it, but SVI's guide starts there, and at Adam's step size (0.01 in
    the unconstrained space per step) its log-scale needs thousands of steps to grow,
    while the ELBO sits at -1e7 .. -5e4 per sample (toy1d). A component whose smallest
    covariance eigenvalue is below `_point_mass_floor` gets the pooled within-cluster
    covariance of the partition of ``x`` by nearest initial mean, about the initial
    means (plus ``reg_covar``), in the family's shape; weights and means are kept.

    Args:
        x: array of shape (n_samples, n_features).
        params: `GMMParams`, optionally with a leading (n_init,) restart axis.
        spec: `GMMSpec`.

    Returns:
        ``(params, repaired)``: ``repaired`` a tuple of (restart, component) pairs
        (restart 0 for unbatched params), empty when nothing was repaired (``params``
        then returned as given).
    """
    cov_type, k = spec.covariance_type, spec.n_components
    batched = params.weights.ndim == 2
    leaves = params if batched else jax.tree_util.tree_map(lambda a: a[None], params)
    xs = np.asarray(x, np.float64)
    n, d = xs.shape
    floor = _point_mass_floor(xs, spec)
    new, repaired = [], []
    for r in range(leaves.weights.shape[0]):
        one = jax.tree_util.tree_map(lambda a: a[r], leaves)  # noqa: B023
        cov = np.asarray(covariances(one, cov_type), np.float64)
        dense = np.asarray(dense_covariances(cov, cov_type, k, d))
        collapsed = np.linalg.eigvalsh(dense)[:, 0] < floor
        if not collapsed.any():
            new.append(one)
            continue
        means = np.asarray(one.means, np.float64)
        nearest = np.argmin(((xs[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
        resid = xs - means[nearest]
        pooled = resid.T @ resid / n + spec.reg_covar * np.eye(d)
        if cov_type == "full":
            cov = np.where(collapsed[:, None, None], pooled, cov)
        elif cov_type == "tied":
            cov = pooled
        elif cov_type == "diag":
            cov = np.where(collapsed[:, None], np.diagonal(pooled), cov)
        else:
            cov = np.where(collapsed, np.trace(pooled) / d, cov)
        dtype = params.weights.dtype  # float32 stays float32 (x64 may be off)
        fixed = params_from_covariances(
            jnp.asarray(one.weights, dtype),
            jnp.asarray(means, dtype),
            jnp.asarray(cov, dtype),
            cov_type,
        )
        new.append(fixed)
        repaired.extend((r, int(c)) for c in np.flatnonzero(collapsed))
    if not repaired:
        return params, ()
    dtype = params.weights.dtype
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a).astype(dtype), *new)
    return (stacked if batched else jax.tree_util.tree_map(lambda a: a[0], stacked)), tuple(
        repaired
    )


def fit_svi(
    key,
    x,
    spec,
    *,
    guide: str = "auto_normal",
    optimizer=None,
    num_steps: int = 2000,
    num_particles: int = 1,
    init: str | GMMParams = "kmeans",
    n_init: int = 1,
    tol: float | None = None,
    init_scale: float = 0.1,
    n_eval_samples: int = 1000,
    repair_init: bool = True,
    chunk_size: int | None = None,
    callback: Callable | None = None,
) -> SVIResult:
    """Fit the NumPyro model of ``spec`` (prior ``spec.prior``) to ``x`` by SVI.

    Args:
        key: PRNG key.
        x: array of shape (n_samples, n_features).
        spec: `GMMSpec` with a prior; data-dependent prior defaults are filled from ``x``.
        guide: a name in `GUIDES`.
        optimizer: an optax GradientTransformation, or a config mapping
            ``{"name": "adam", "learning_rate": 0.01, "schedule": "exponential",
            "schedule_steps": 2000}`` (see `make_svi_optimizer`); default adam(0.01),
            for ``auto_delta`` with the step decaying to 1e-4 over ``num_steps``.
        num_steps: SVI steps (per restart).
        num_particles: draws per ELBO gradient estimate.
        init: initialiser name or `GMMParams` (optionally batched); the guide's point
            estimate starts there.
        n_init: restarts when ``init`` is a name (best final log-likelihood kept).
        tol: stop when the per-sample objective changes by less than ``tol`` (useful for
            AutoDelta, whose objective is deterministic); None runs ``num_steps``.
        init_scale: initial scale of stochastic guides (unconstrained space).
        n_eval_samples: draws for the final ELBO and, independently, for the
            importance-sampling estimate of log p(X) (symmetrised over relabellings).
        repair_init: give initial point-mass components (covariance at the ``reg_covar``
            floor, as one-point initialisers leave them) the pooled within-cluster
            covariance (see `repair_point_masses`; reported in ``init_repaired``); False
            refuses such an init (ValueError) instead.
        chunk_size, callback: see `run_fitter`.
    """
    x = check_data(x, "x", n_components=spec.n_components, dtype=getattr(x, "dtype", None))
    spec = resolve_prior(spec, x)
    model_prior(spec)
    _guide_class(guide)
    num_steps = check_int(num_steps, "num_steps", 0)
    num_particles = check_int(num_particles, "num_particles", 1)
    n_init = check_int(n_init, "n_init", 1)
    n_eval_samples = check_int(n_eval_samples, "n_eval_samples", 1)
    init_scale = check_positive(init_scale, "init_scale")
    if tol is not None:
        tol = check_positive(tol, "tol", allow_zero=True)
    if isinstance(optimizer, dict):
        optimizer = make_svi_optimizer(**optimizer)
    elif optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(
            "optimizer must be an optax GradientTransformation or a mapping "
            f"{{'name': ..., 'learning_rate': ..., **options}} (see make_svi_optimizer), "
            f"got {optimizer!r}"
        )
    optimizer = _default_optimizer(guide, num_steps) if optimizer is None else optimizer
    key_init, key_run, key_eval = jax.random.split(key, 3)
    if not isinstance(init, str):
        check_init_params(init, spec, x.shape[1], name="init", dtype=x.dtype)
    params = resolve_init(key_init, x, spec, init, n_init)
    if not bool(all_finite(params)):
        raise no_finite_state_error(f"fit_svi: the initial parameters from init={init!r}", x.dtype)
    fixed, repaired = repair_point_masses(x, params, spec)
    if repaired and not repair_init:
        raise ValueError(
            f"fit_svi: init={_describe_init(init)} has point-mass components (restart, "
            f"component) {list(repaired)}: smallest covariance eigenvalue below "
            f"{_point_mass_floor(np.asarray(x), spec):.3g}, the reg_covar floor one-point "
            "initialisers leave; SVI's guide would start there and its ELBO stay absurdly "
            "low for thousands of steps. Use init='kmeans', or repair_init=True"
        )
    params = fixed
    fitter, handle = svi_fitter(
        spec, x.shape[1], str(x.dtype), guide, optimizer, num_particles, tol, init_scale
    )
    result = run_fitter(
        fitter,
        key_run,
        x,
        params,
        spec,
        max_iter=num_steps,
        chunk_size=chunk_size,
        callback=callback,
    )
    if not (np.isfinite(result.log_likelihood) and bool(all_finite(result.params))):
        raise no_finite_state_error(
            "fit_svi: the point estimate's parameters and log-likelihood of every restart",
            x.dtype,
            advice="if the trace diverged, lower the optimizer's learning rate",
        )
    final_state = handle.svi.get_params(SVIState(result.state.fitter_state.optim_state, None, None))
    if model_prior(spec).hyper_sites:
        # A hierarchical prior: the joint density at the guide's median, hyper-sites in.
        sites = median_sites(handle, final_state)
        log_post = float(
            result.log_likelihood * x.shape[0]
            + model_prior(spec).log_density_of_sites(sites, spec, x.shape[1], x.dtype)
        )
    else:
        log_post = float(log_posterior(x, result.params, spec))
    if guide == "auto_delta":
        elbo, stderr, is_estimate = log_post / x.shape[0], 0.0, float("nan")
        is_stderr, diagnostics = float("nan"), {}
    else:
        estimate = importance_estimate(key_eval, handle, final_state, x, n_eval_samples)
        elbo, stderr = estimate["elbo"], estimate["elbo_stderr"]
        is_estimate, is_stderr = estimate["log_marginal"], estimate["log_marginal_stderr"]
        diagnostics = estimate["diagnostics"]
    if not (np.isfinite(log_post) and np.isfinite(elbo) and np.isfinite(stderr)):
        raise no_finite_state_error(
            f"fit_svi: the final log posterior ({log_post}) and ELBO estimate ({elbo}, from "
            f"{n_eval_samples} draws of the guide)",
            x.dtype,
            advice="if the trace diverged, lower the optimizer's learning rate",
        )
    return SVIResult(
        fit=result,
        guide_params=final_state,
        guide=guide,
        spec=spec,
        elbo=elbo,
        elbo_stderr=stderr,
        log_marginal_is=is_estimate,
        log_posterior=log_post,
        handle=handle,
        log_marginal_is_stderr=is_stderr,
        importance=diagnostics,
        init_repaired=repaired,
    )


def _describe_init(init):
    return repr(init) if isinstance(init, str) else "the given GMMParams"


@functools.lru_cache(maxsize=8)  # cached: the same object reuses the compiled fitter
def _default_optimizer(guide, num_steps):
    """adam(0.01); for AutoDelta with the step decaying to 1e-4 over ``num_steps``
    (``exponential`` in `jaxgmm.gradient.SCHEDULES`): its objective is deterministic,
    and a constant step leaves it hovering up to ~1e-5 per sample below the MAP."""
    if guide == "auto_delta":
        return make_svi_optimizer("adam", 0.01, "exponential", max(num_steps, 1))
    return optax.adam(0.01)


@functools.partial(jax.jit, static_argnums=2)
def log_posterior(x, params, spec):
    """log p(X | params) + log p(params), a total (not per sample): the MAP objective of
    every fitter (EM with a closed-form step, gradient MAP, SVI with AutoDelta)."""
    return mean_log_likelihood(x, params, spec) * x.shape[0] + log_prior(params, spec)
