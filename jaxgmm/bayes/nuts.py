"""NUTS on the NumPyro model of a `GMMSpec` (NumPyro's MCMC), with diagnostics: r-hat
and ESS (NumPyro's), divergences, per-draw log-likelihood, and summaries of component
parameters after relabelling draws to a reference solution (label switching)."""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC, NUTS
from numpyro.infer.initialization import init_to_value

from jaxgmm.bayes.inference_data import NUTS_EXTRA_FIELDS, nuts_inference_data
from jaxgmm.bayes.model import gmm_model, model_prior
from jaxgmm.bayes.posterior import (
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
    init: GMMParams | None = None,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    dense_mass: bool = False,
    progress_bar: bool = False,
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
        init: where every chain starts; default ``reference``.
        target_accept_prob, max_tree_depth, dense_mass: NUTS settings.
        progress_bar: NumPyro's own progress bar (for interactive use; off by default).
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
    key_ref, key_mcmc = jax.random.split(key)
    if reference is None:
        ml_spec = dataclasses.replace(spec, prior=None)
        reference = fit_em(key_ref, x, ml_spec, n_init=5, tol=1e-6, max_iter=500).params
    else:
        reference = _check_unbatched(reference, spec, x, "reference")
    reference = jax.tree_util.tree_map(lambda a: jnp.asarray(a, x.dtype), GMMParams(*reference))
    init = reference if init is None else _check_unbatched(init, spec, x, "init")
    init_values = prior.site_values(
        jax.tree_util.tree_map(lambda a: jnp.asarray(a, x.dtype), init), spec
    )
    kernel = NUTS(
        functools.partial(gmm_model, spec=spec, prior=prior),
        init_strategy=init_to_value(values=init_values),
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
    # The statistics ArviZ's sample_stats holds (to_inference_data); they do not change
    # the draws.
    mcmc.run(key_mcmc, x, extra_fields=NUTS_EXTRA_FIELDS)
    samples = mcmc.get_samples(group_by_chain=True)
    diverging = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["diverging"])

    raw = _params_of_samples(prior, spec, x.shape[1], samples)
    draws, perms = relabel(raw, reference, spec)
    draws = jax.tree_util.tree_map(jnp.asarray, draws)
    log_likelihood = np.asarray(draws_mean_log_likelihood(x, draws, spec))
    summary = summarize_params(draws, spec)
    summary["log_likelihood"] = summarize(log_likelihood)
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
    )


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
