"""NUTS on the NumPyro model of a `GMMSpec` (NumPyro's MCMC), from one start or one per
chain, with diagnostics that a stuck chain cannot pass: rank-normalised r-hat and bulk /
tail ESS (`jaxgmm.bayes.diagnostics`) on every relabelled parameter and on the
label-invariant log-likelihood and log joint, divergences, tree-depth saturation, and a
``converged`` verdict; summaries of component parameters after relabelling the draws to a
reference solution (label switching; Stephens' KL relabelling by default)."""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC, NUTS
from numpyro.infer.initialization import init_to_value
from numpyro.infer.util import initialize_model
from numpyro.infer.util import log_density as numpyro_log_density

from jaxgmm.bayes import diagnostics
from jaxgmm.bayes.inference_data import NUTS_EXTRA_FIELDS, nuts_inference_data
from jaxgmm.bayes.model import gmm_model, model_prior
from jaxgmm.bayes.posterior import (
    RELABEL_METHODS,
    _covariances_of_draws,
    draws_mean_log_likelihood,
    posterior_mean_params,
    relabel,
    summarize,
    summarize_params,
)
from jaxgmm.em.fitter import fit_em
from jaxgmm.fit.validation import check_data, check_init_params, check_int, check_positive
from jaxgmm.model.density import mean_log_likelihood
from jaxgmm.model.params import GMMParams
from jaxgmm.priors import resolve_prior

CHAIN_METHODS = ("vectorized", "sequential", "parallel")


class NUTSResult(NamedTuple):
    """Outcome of `fit_nuts`. Draw arrays have leading axes (n_chains, n_draws).

    Attributes:
        samples: dict of the prior's site draws, as NumPyro returns them.
        draws: `GMMParams` draws, relabelled to ``reference``.
        permutations: (n_chains, n_draws, K) the relabelling (see `relabel`).
        log_likelihood: (n_chains, n_draws) log p(X | draw) per sample (no relabelling needed).
        diverging: (n_chains, n_draws) bool, divergent transitions after warm-up.
        n_divergences: their total.
        summary: {"weights" | "means" | "covariances": {"mean", "sd", "q05", "q95",
            "r_hat", "ess"}} of the relabelled draws, plus "log_likelihood".
        reference: `GMMParams` the draws were relabelled to (and the chains started at).
        posterior_mean: `GMMParams` from the relabelled posterior means.
        plug_in_log_likelihood: log p(X | posterior_mean) per sample.
        spec: `GMMSpec` with the prior resolved.
        mcmc: the NumPyro `MCMC` object (for its own print_summary etc.).
        log_joint: (n_chains, n_draws) log p(X, draw) per sample: the prior's density of
            the draw's full sample dict (hyper-sites included) plus the log-likelihood,
            divided by n_samples.
        log_prior: (n_chains, n_draws) the prior part of it, a total per draw.
        diagnostics: {"weights" | "means" | "covariances" | "log_likelihood" | "log_joint":
            {"r_hat", "ess_bulk", "ess_tail"}}: rank-normalised split r-hat and bulk / tail
            ESS (`jaxgmm.bayes.diagnostics`, Vehtari et al. 2021) of the relabelled draws.
        r_hat_max, ess_bulk_min, ess_tail_min: their extremes over every quantity that is
            not constant over the draws (a K = 1 weight is).
        converged: r_hat_max < ``r_hat_threshold`` and both ESS minima > ``ess_threshold``
            (arguments of `fit_nuts`; NaN diagnostics, e.g. from one chain, fail).
        tree_depth: (n_chains, n_draws) ceil(log2(num_steps + 1)), the depth each
            trajectory reached; tree_depth_saturated: how many draws hit ``max_tree_depth``.
        relabel_method: how the draws were relabelled (see `jaxgmm.bayes.relabel`).

    `to_inference_data` gives the draws to ArviZ (relabelled, named dims, pointwise
    log-likelihood for ``az.loo`` / ``az.waic`` / ``az.compare``).
    """

    samples: dict
    draws: GMMParams
    permutations: np.ndarray
    log_likelihood: np.ndarray
    diverging: np.ndarray
    n_divergences: int
    summary: dict
    reference: GMMParams
    posterior_mean: GMMParams
    plug_in_log_likelihood: float
    spec: object
    mcmc: object
    log_joint: np.ndarray = None
    log_prior: np.ndarray = None
    diagnostics: dict = None
    r_hat_max: float = float("nan")
    ess_bulk_min: float = float("nan")
    ess_tail_min: float = float("nan")
    converged: bool = False
    tree_depth: np.ndarray = None
    tree_depth_saturated: int = 0
    relabel_method: str = "stephens"

    def to_inference_data(self, x, *, feature_names=None, log_likelihood=True, batch_size=32):
        """The posterior as an ArviZ ``InferenceData`` (needs ``pip install 'jaxgmm[arviz]'``).

        Args:
            x: the training data passed to `fit_nuts`, array of shape (n_samples,
                n_features); checked against the recorded per-draw log-likelihoods.
            feature_names: optional names for the ``feature`` coordinate.
            log_likelihood: whether to build the pointwise ``log_likelihood`` group,
                (n_chains, n_draws, n_samples) values of log p(x_n | draw).
            batch_size: draws evaluated together for that group (memory
                O(batch_size * n_samples * K)).

        Groups: ``posterior`` (the relabelled ``draws``: ``weights``, ``means``,
        ``covariances`` on dims chain, draw, component, feature, feature_bis),
        ``log_likelihood``, ``observed_data`` and ``sample_stats`` (``diverging``, ``lp``,
        ``energy``, ``n_steps``, ``tree_depth``, ``acceptance_rate``, ``step_size``,
        ``relabel_permutation``); see `jaxgmm.bayes.inference_data`.
        """
        return nuts_inference_data(
            self, x, feature_names=feature_names, log_likelihood=log_likelihood,
            batch_size=batch_size,
        )  # fmt: skip


def fit_nuts(
    key,
    x,
    spec,
    *,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 4,
    chain_method: str = "vectorized",
    reference: GMMParams | None = None,
    init: GMMParams | list | None = None,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    dense_mass: bool = False,
    progress_bar: bool = False,
    relabel_method: str = "stephens",
    r_hat_threshold: float = diagnostics.R_HAT_MAX,
    ess_threshold: float = diagnostics.ESS_MIN,
) -> NUTSResult:
    """Sample the posterior of ``spec`` (prior ``spec.prior``) given ``x`` with NUTS.

    Args:
        key: PRNG key.
        x: array of shape (n_samples, n_features).
        spec: `GMMSpec` with a prior; data-dependent prior defaults are filled from ``x``.
        num_warmup, num_samples: per chain.
        num_chains: chains; ``chain_method``: ``"vectorized"`` (default, one device),
            ``"sequential"`` or ``"parallel"`` (needs one device per chain).
        reference: solution draws are relabelled to; default: the EM maximum-likelihood
            fit (k-means initialisation, 5 restarts).
        init: where the chains start: one `GMMParams` (every chain; default
            ``reference``), or one per chain: a `GMMParams` whose leaves have a leading
            axis of length ``num_chains``, or a list of ``num_chains`` of them. Each is
            mapped to NumPyro's unconstrained space (``initialize_model`` with
            ``init_to_value``; sites the prior draws beyond `GMMParams`, hyper-sites,
            start from NumPyro's ``init_to_uniform``) and passed as ``init_params``.
        target_accept_prob, max_tree_depth, dense_mass: NUTS settings.
        progress_bar: NumPyro's own progress bar (for interactive use; off by default).
        relabel_method: ``"stephens"`` (default; all parameters, through the allocation
            probabilities of ``x``) or ``"means"``; see `jaxgmm.bayes.relabel`.
        r_hat_threshold, ess_threshold: the ``converged`` rule (default r-hat < 1.01 and
            bulk and tail ESS > 400, Vehtari et al. 2021).
    """
    x = check_data(x, "x", n_components=spec.n_components, dtype=getattr(x, "dtype", None))
    spec = resolve_prior(spec, x)
    prior = model_prior(spec)
    prior.check(spec, x.shape[1])
    num_warmup = check_int(num_warmup, "num_warmup", 0)
    num_samples = check_int(num_samples, "num_samples", 1)
    num_chains = check_int(num_chains, "num_chains", 1)
    max_tree_depth = check_int(max_tree_depth, "max_tree_depth", 1)
    target_accept_prob = check_positive(target_accept_prob, "target_accept_prob")
    if not target_accept_prob < 1:
        raise ValueError(f"target_accept_prob must be in (0, 1), got {target_accept_prob}")
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {list(CHAIN_METHODS)}, got {chain_method!r}")
    if relabel_method not in RELABEL_METHODS:
        raise ValueError(
            f"relabel_method must be one of {list(RELABEL_METHODS)}, got {relabel_method!r}"
        )
    r_hat_threshold = check_positive(r_hat_threshold, "r_hat_threshold")
    ess_threshold = check_positive(ess_threshold, "ess_threshold")
    key_ref, key_mcmc = jax.random.split(key)
    key_init = jax.random.fold_in(key_mcmc, 1)
    if reference is None:
        ml_spec = dataclasses.replace(spec, prior=None)
        reference = fit_em(key_ref, x, ml_spec, n_init=5, tol=1e-6, max_iter=500).params
    else:
        reference = _check_unbatched(reference, spec, x, "reference")
    reference = jax.tree_util.tree_map(lambda a: jnp.asarray(a, x.dtype), GMMParams(*reference))
    start, chain_inits = _chain_inits(init, reference, spec, x, num_chains)
    model = functools.partial(gmm_model, spec=spec, prior=prior)
    kernel = NUTS(
        model,
        init_strategy=init_to_value(values=prior.site_values(start, spec)),
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
        dense_mass=dense_mass,
    )
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=chain_method,
        progress_bar=bool(progress_bar),
    )
    init_params = None
    if chain_inits is not None:
        init_params = _unconstrained_inits(key_init, model, prior, spec, x, chain_inits)
    # The statistics ArviZ's sample_stats holds (to_inference_data); they do not change
    # the draws.
    mcmc.run(key_mcmc, x, extra_fields=NUTS_EXTRA_FIELDS, init_params=init_params)
    samples = mcmc.get_samples(group_by_chain=True)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    diverging = np.asarray(extra["diverging"])
    num_steps = np.asarray(extra["num_steps"], dtype=np.float64)
    tree_depth = np.ceil(np.log2(num_steps + 1)).astype(int)

    raw = _params_of_samples(prior, spec, x.shape[1], samples)
    draws, perms = relabel(raw, reference, spec, method=relabel_method, x=x)
    draws = jax.tree_util.tree_map(jnp.asarray, draws)
    log_likelihood = np.asarray(draws_mean_log_likelihood(x, draws, spec))
    log_prior = np.asarray(draws_log_prior(samples, spec, x.shape[1]), np.float64)
    log_joint = np.asarray(log_likelihood, np.float64) + log_prior / x.shape[0]
    summary = summarize_params(draws, spec)
    summary["log_likelihood"] = summarize(log_likelihood)
    summary["log_joint"] = summarize(log_joint)
    quantities = {
        "weights": draws.weights,
        "means": draws.means,
        "covariances": _covariances_of_draws(draws, spec),
        "log_likelihood": log_likelihood,
        "log_joint": log_joint,
    }
    diag = {name: diagnostics.diagnose(values) for name, values in quantities.items()}
    r_hat_max, bulk_min, tail_min = _extremes(quantities, diag)
    posterior_mean = posterior_mean_params(draws, spec)
    return NUTSResult(
        samples=samples,
        draws=draws,
        permutations=perms,
        log_likelihood=log_likelihood,
        diverging=diverging,
        n_divergences=int(diverging.sum()),
        summary=summary,
        reference=reference,
        posterior_mean=posterior_mean,
        plug_in_log_likelihood=float(mean_log_likelihood(x, posterior_mean, spec)),
        spec=spec,
        mcmc=mcmc,
        log_joint=log_joint,
        log_prior=log_prior,
        diagnostics=diag,
        r_hat_max=r_hat_max,
        ess_bulk_min=bulk_min,
        ess_tail_min=tail_min,
        converged=bool(
            r_hat_max < r_hat_threshold and bulk_min > ess_threshold and tail_min > ess_threshold
        ),
        tree_depth=tree_depth,
        tree_depth_saturated=int(np.sum(tree_depth >= max_tree_depth)),
        relabel_method=relabel_method,
    )


def _extremes(quantities, diag):
    """Max r-hat and min bulk / tail ESS over every scalar that varies over the draws
    (NaN when a diagnostic is NaN: then the verdict fails)."""
    r_hats, bulks, tails = [], [], []
    for name, values in quantities.items():
        values = np.asarray(values, dtype=np.float64)
        flat = values.reshape(values.shape[:2] + (-1,))
        varies = np.ptp(flat.reshape(-1, flat.shape[-1]), axis=0) > 0
        r_hats.append(np.ravel(diag[name]["r_hat"])[varies])
        bulks.append(np.ravel(diag[name]["ess_bulk"])[varies])
        tails.append(np.ravel(diag[name]["ess_tail"])[varies])
    r_hat, bulk, tail = (np.concatenate(a) for a in (r_hats, bulks, tails))
    if r_hat.size == 0:
        return float("nan"), float("nan"), float("nan")
    nan = float("nan")
    worst = lambda a, fn: nan if np.isnan(a).any() else float(fn(a))  # noqa: E731
    return worst(r_hat, np.max), worst(bulk, np.min), worst(tail, np.min)


def _chain_inits(init, reference, spec, x, num_chains):
    """``(start, per_chain)``: where NumPyro's ``init_to_value`` starts (``init`` when it is
    one solution, else ``reference`` or chain 0's), and None (every chain at ``start``) or
    a list of ``num_chains`` checked `GMMParams` in x's dtype."""
    if init is None:
        return reference, None
    if isinstance(init, list):
        inits = [_check_unbatched(p, spec, x, f"init[{i}]") for i, p in enumerate(init)]
    else:
        checked = check_init_params(init, spec, x.shape[1], name="init", dtype=x.dtype)
        if np.ndim(checked.means) == 2:
            return jax.tree_util.tree_map(lambda a: jnp.asarray(a, x.dtype), checked), None
        n = np.shape(checked.means)[0]
        inits = [jax.tree_util.tree_map(lambda a, i=i: a[i], checked) for i in range(n)]
    if len(inits) != num_chains:
        raise ValueError(
            f"init must be one solution or one per chain: got {len(inits)} for "
            f"num_chains={num_chains}"
        )
    inits = [jax.tree_util.tree_map(lambda a: jnp.asarray(a, x.dtype), p) for p in inits]
    return inits[0], inits


def _unconstrained_inits(key, model, prior, spec, x, chain_inits):
    """NumPyro ``init_params``: each chain's start in the unconstrained space, stacked on
    a leading chain axis (none for one chain)."""
    keys = jax.random.split(key, len(chain_inits))
    per_chain = []
    for chain_key, params in zip(keys, chain_inits):
        info = initialize_model(
            chain_key,
            model,
            init_strategy=init_to_value(values=prior.site_values(params, spec)),
            model_args=(x,),
        )
        per_chain.append(info.param_info.z)
    if len(per_chain) == 1:
        return per_chain[0]
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *per_chain)


def draws_log_prior(samples, spec, n_features):
    """log p(draw) of every draw's full sample dict (hyper-sites included), a total per
    draw; leading axes those of ``samples`` (e.g. (n_chains, n_draws)).

    One draw at a time by `jax.lax.map`: ``jit(vmap(...))`` over thousands of draws hung
    intermittently on CPU (issue 20)."""
    lead = np.shape(jax.tree_util.tree_leaves(samples)[0])[:2]
    flat = jax.tree_util.tree_map(lambda a: jnp.reshape(a, (-1,) + a.shape[2:]), samples)
    out = _log_prior_of_sites(flat, spec, n_features)
    return np.asarray(out).reshape(lead)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _log_prior_of_sites(flat_samples, spec, n_features):
    prior = model_prior(spec)
    dtype = jax.tree_util.tree_leaves(flat_samples)[0].dtype

    def one(sites):
        value, _ = numpyro_log_density(prior.sample, (spec, n_features, dtype), {}, sites)
        return value

    return jax.lax.map(one, flat_samples)


def _check_unbatched(params, spec, x, name):
    """``params`` checked as one `GMMParams` for ``x`` (no restart axis: one solution)."""
    params = check_init_params(params, spec, x.shape[1], name=name, dtype=x.dtype)
    if np.ndim(params.means) != 2:
        raise ValueError(
            f"{name} must be one solution: means of shape ({spec.n_components}, "
            f"{x.shape[1]}), got {np.shape(params.means)} (no leading restart axis)"
        )
    return params


def _params_of_samples(prior, spec, n_features, samples):
    """`GMMParams` of every draw (leading axes (n_chains, n_draws))."""
    dtype = jax.tree_util.tree_leaves(samples)[0].dtype

    @jax.jit
    def convert(sites):
        one = lambda s: prior.params_from_sites(s, spec, n_features, dtype)  # noqa: E731
        return jax.vmap(jax.vmap(one))(sites)

    return convert(samples)
