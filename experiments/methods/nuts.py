"""NUTS via `jaxgmm.fit_nuts` (NumPyro's MCMC on the NumPyro model of the spec). Every
chain starts at the shared initial parameters (the best restart by log-likelihood when
``init.n_init > 1``), and the draws are relabelled to them (Hungarian matching of means)
before component summaries. Its config block is ``CONFIG`` (``nuts`` in a config).

What it reports:

- ``params``: the posterior mean (relabelled weights, means, covariances); not a point
  estimate in the ML/MAP sense, so no BIC/AIC; the runner's train/test log-likelihoods
  are plug-in values at it.
- trace: one row per kept draw, chains one after another (chain c's draws are rows
  c*num_samples+1 .. (c+1)*num_samples); ``log_likelihood`` = log p(X | draw) / N and
  ``bound`` = the draw's log joint (log p(X | draw) + log p(draw)) / N
  (``bound_name="log_joint"``, the unnormalised log posterior; not a bound).
  ``elapsed_s``: NumPyro reports no per-draw times, so the whole MCMC wall time
  (warm-up and sampling, compile included) is spread evenly over the rows.
- ``posterior``: draws ``weights`` (S, K), ``means`` (S, K, D), ``log_likelihood`` (S,),
  ``log_joint`` (S,), ``chain`` (S,), S = num_chains * num_samples.
- ``extra``: ``r_hat_max`` and ``ess_min`` over relabelled weights, means, covariances and
  the log-likelihood (NumPyro's split r-hat and ESS), ``r_hat_log_likelihood``,
  ``divergences``, ``plug_in_log_likelihood`` (train, at the posterior mean),
  ``log_predictive_density_test`` (held-out log posterior predictive density per sample,
  log-mean-exp over draws) when there is a test split, and the settings; with ArviZ
  installed (and ``inference_data``), PSIS-LOO and WAIC from the run's ``InferenceData``
  (see `loo_waic`).
- ``inference_data``: the ArviZ ``InferenceData`` (`jaxgmm.bayes.NUTSResult.to_inference_data`:
  relabelled draws, sample stats, pointwise log-likelihood), written to ``posterior.nc``.
"""

from __future__ import annotations

import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import jaxgmm
from experiments.config_engine import Field, at_least, in_interval, one_of
from experiments.methods import Method, MethodResult
from jaxgmm.bayes.inference_data import import_arviz


def best_restart(init_params, x, spec):
    """The restart of a batched `GMMParams` with the highest log-likelihood."""
    lls = jax.vmap(lambda p: jaxgmm.mean_log_likelihood(x, p, spec))(init_params)
    best = int(np.nanargmax(np.asarray(lls)))
    return jax.tree_util.tree_map(lambda a: a[best], init_params)


def _nanextreme(summary, key, fn):
    values = [np.ravel(s[key]) for s in summary.values()]
    values = np.concatenate(values)
    values = values[np.isfinite(values)]
    return float(fn(values)) if values.size else None


def arviz_or_none():
    """The ``arviz`` module, or None when it is not installed (posterior.nc is optional)."""
    try:
        return import_arviz()
    except ImportError:
        return None


def loo_waic(idata):
    """PSIS-LOO and WAIC of an ``InferenceData`` with a pointwise log-likelihood group, by
    ArviZ (``az.loo``, ``az.waic``), as ``extra`` entries.

    ``elpd_loo``, ``elpd_loo_se``, ``elpd_waic``, ``elpd_waic_se`` per sample (the totals
    divided by n); ``p_loo_total``, ``p_waic_total``: effective numbers of parameters
    (totals); ``pareto_k_max`` and ``pareto_k_over_0.7`` (how many points' PSIS is
    unreliable); ``loo_warning`` / ``waic_warning``: ArviZ's flags (its warnings are
    recorded here, not printed).
    """
    az = import_arviz()
    n = idata.log_likelihood.sizes["observation"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the flags below carry them
        loo = az.loo(idata, pointwise=True)
        waic = az.waic(idata)
    pareto_k = np.asarray(loo.pareto_k)
    return {
        "elpd_loo": float(loo.elpd_loo) / n,
        "elpd_loo_se": float(loo.se) / n,
        "p_loo_total": float(loo.p_loo),
        "pareto_k_max": float(np.max(pareto_k)),
        "pareto_k_over_0.7": int(np.sum(pareto_k > 0.7)),
        "loo_warning": bool(loo.warning),
        "elpd_waic": float(waic.elpd_waic) / n,
        "elpd_waic_se": float(waic.se) / n,
        "p_waic_total": float(waic.p_waic),
        "waic_warning": bool(waic.warning),
    }


def run(context):
    settings = context.settings
    spec, x = context.spec, context.x
    start = best_restart(context.init_params, x, spec)
    began = time.perf_counter()
    result = jaxgmm.fit_nuts(
        context.key,
        x,
        spec,
        num_warmup=settings["num_warmup"],
        num_samples=settings["num_samples"],
        num_chains=settings["num_chains"],
        chain_method=settings["chain_method"],
        reference=start,
        init=start,
        target_accept_prob=settings["target_accept_prob"],
        max_tree_depth=settings["max_tree_depth"],
        dense_mass=settings["dense_mass"],
        progress_bar=context.show_progress,  # NumPyro's own bar
    )
    total_s = time.perf_counter() - began

    n_chains, n_draws = result.log_likelihood.shape
    flat = jax.tree_util.tree_map(
        lambda a: jnp.reshape(a, (n_chains * n_draws,) + a.shape[2:]), result.draws
    )
    log_likelihood = np.asarray(result.log_likelihood, np.float64).reshape(-1)
    log_priors = np.asarray(
        jax.jit(jax.vmap(lambda p: jaxgmm.log_prior(p, result.spec)))(flat), np.float64
    )
    log_joint = log_likelihood + log_priors / x.shape[0]
    n_total = log_likelihood.size

    summary = result.summary
    extra = {
        "r_hat_max": _nanextreme(summary, "r_hat", np.max),
        "ess_min": _nanextreme(summary, "ess", np.min),
        "r_hat_log_likelihood": float(summary["log_likelihood"]["r_hat"]),
        "divergences": int(result.n_divergences),
        "plug_in_log_likelihood": float(result.plug_in_log_likelihood),
        "posterior_mean_log_likelihood": float(np.mean(log_likelihood)),
        "params_summary": "posterior mean",
        "num_chains": n_chains,
        "num_samples": n_draws,
        "num_warmup": settings["num_warmup"],
        "chain_method": settings["chain_method"],
    }
    if context.x_test is not None:
        extra["log_predictive_density_test"] = jaxgmm.bayes.log_predictive_density(
            context.x_test, flat, result.spec
        )
    idata = None
    if settings["inference_data"] and arviz_or_none() is not None:
        idata = result.to_inference_data(x, feature_names=context.feature_names or None)
        extra.update(loo_waic(idata))
    r_hat = extra["r_hat_max"]
    posterior_mean = jax.tree_util.tree_map(np.asarray, result.posterior_mean)
    return MethodResult(
        params=jaxgmm.GMMParams(*posterior_mean),
        point_estimate=False,
        iteration=np.arange(1, n_total + 1),
        log_likelihood=log_likelihood,
        bound=log_joint,
        elapsed_s=total_s * np.arange(1, n_total + 1) / n_total,
        bound_name="log_joint",
        compile_s=None,  # NumPyro compiles inside mcmc.run; included in fit_s
        fit_s=total_s,
        n_iter=n_total,
        converged=None if r_hat is None else bool(r_hat < 1.05),
        status=None if r_hat is None else ("converged" if r_hat < 1.05 else "r_hat"),
        extra=extra,
        posterior={
            "weights": np.asarray(flat.weights),
            "means": np.asarray(flat.means),
            "log_likelihood": log_likelihood,
            "log_joint": log_joint,
            "chain": np.repeat(np.arange(n_chains), n_draws),
        },
        inference_data=idata,
    )


CONFIG = {
    "num_warmup": Field(500, "int", at_least(0), "warm-up (adaptation) steps per chain"),
    "num_samples": Field(500, "int", at_least(1), "kept draws per chain"),
    "num_chains": Field(2, "int", at_least(1), "chains (r-hat needs >= 2)"),
    "chain_method": Field(
        "vectorized", "str", one_of(["vectorized", "sequential", "parallel"]),
        "how chains run: vectorized (one device, default), sequential, parallel "
        "(one device per chain)",
    ),
    "target_accept_prob": Field(
        0.8, "float", in_interval(1e-9, 1.0), "NUTS step-size adaptation target"
    ),
    "dense_mass": Field(False, "bool", None, "adapt a dense mass matrix (else diagonal)"),
    "max_tree_depth": Field(10, "int", at_least(1), "NUTS maximum tree depth"),
    "inference_data": Field(
        True, "bool", None,
        "with ArviZ installed: the draws' InferenceData in posterior.nc, and LOO/WAIC from it "
        "(the pointwise log-likelihood holds chains x draws x n_train values)",
    ),
}  # fmt: skip


METHOD = Method(
    name="nuts",
    run=run,
    doc="NumPyro NUTS: posterior draws, r-hat/ESS/divergences, predictive density",
    needs_prior=True,
    config=CONFIG,
)
