"""NUTS via `jaxgmm.fit_nuts` (NumPyro's MCMC on the NumPyro model of the spec), started
from a census of MAP modes. Its config block is ``CONFIG`` (``nuts`` in a config).

The census (`map_census`): every shared restart (``init.n_init``) plus ``census_n_init``
k-means++ restarts, each run to its MAP under the prior (EM when the prior has a
closed-form M-step, else the gradient fitter, L-BFGS), with every restart's log posterior
per sample recorded. Restarts whose log posteriors agree within ``mode_tolerance`` are one
mode. Chains start at distinct modes first, best first, among the modes within
``mode_window`` nats (total) of the best; when there are fewer such modes than chains the
cycle repeats. Draws are relabelled to the best mode (Stephens' KL relabelling, all
parameters; ``relabel: means`` for the means-only method). Each draw is assigned to the
census mode nearest to it (the share of the data they allocate differently, minimised over
relabellings: `jaxgmm.bayes.allocation_distance`), giving every chain's mode occupancy; chains "disagree" when two chains' occupancies differ
by more than ``occupancy_tolerance`` in total variation.

What it reports:

- ``params``: the posterior mean (relabelled weights, means, covariances); not a point
  estimate in the ML/MAP sense, so no BIC/AIC; the runner's train/test log-likelihoods
  are plug-in values at it.
- trace: one row per kept draw, chains one after another (chain c's draws are rows
  c*num_samples+1 .. (c+1)*num_samples); ``log_likelihood`` = log p(X | draw) / N and
  ``bound`` = the draw's log joint (log p(X | draw) + log p(draw)) / N, log p(draw) the
  prior's density of the draw's full sample dict (hyper-sites included)
  (``bound_name="log_joint"``, the unnormalised log posterior; not a bound).
  ``elapsed_s``: NumPyro reports no per-draw times, so the whole MCMC wall time
  (warm-up and sampling, compile included) is spread evenly over the rows.
- ``posterior``: draws ``weights`` (S, K), ``means`` (S, K, D), ``log_likelihood`` (S,),
  ``log_joint`` (S,), ``chain`` (S,), ``mode`` (S,) (nearest census mode), S =
  num_chains * num_samples.
- ``converged`` / ``status``: converged when rank-normalised r-hat < ``r_hat_threshold``
  (1.01) and bulk and tail ESS > ``ess_threshold`` (400) on every relabelled parameter and
  on the log-likelihood and log joint, and the chains agree; else status ``r_hat``,
  ``ess`` or ``chains_disagree`` (the first that fails, in that order, chains first).
- ``extra``: ``r_hat_max``, ``ess_bulk_min``, ``ess_tail_min`` (rank-normalised,
  `jaxgmm.bayes.diagnostics`, over every relabelled parameter and the log-likelihood and
  log joint), ``ess_min`` (the smaller ESS), ``r_hat_log_likelihood``,
  ``r_hat_log_joint``, ``r_hat_threshold``, ``ess_threshold``, ``divergences``,
  ``tree_depth_saturated`` (draws at ``max_tree_depth``), ``census`` (every restart:
  log posterior per sample, fitter, mode), ``modes`` (per mode: log posterior, restarts,
  weights), ``chain_starts`` (mode index per chain), ``mode_occupancy`` (per chain, the
  fraction of its draws nearest each mode), ``chains_disagree``, ``chains_summary`` (a
  sentence), ``relabel``, ``plug_in_log_likelihood`` (train, at the posterior mean),
  ``log_predictive_density_test`` (held-out log posterior predictive density per sample,
  log-mean-exp over draws) when there is a test split, and the settings; with ArviZ
  installed (and ``inference_data``), PSIS-LOO and WAIC from the run's ``InferenceData``
  (see `loo_waic`).
- ``inference_data``: the ArviZ ``InferenceData`` (`jaxgmm.bayes.NUTSResult.to_inference_data`:
  relabelled draws, sample stats, pointwise log-likelihood), written to ``posterior.nc``.
"""

from __future__ import annotations

import dataclasses
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import jaxgmm
from experiments.config_engine import Field, at_least, greater_than, in_interval, one_of
from experiments.methods import Method, MethodResult
from jaxgmm.bayes.inference_data import import_arviz


def best_restart(init_params, x, spec):
    """The restart of a batched `GMMParams` with the highest log-likelihood."""
    lls = jax.vmap(lambda p: jaxgmm.mean_log_likelihood(x, p, spec))(init_params)
    best = int(np.nanargmax(np.asarray(lls)))
    return jax.tree_util.tree_map(lambda a: a[best], init_params)


def _take(params, i):
    return jaxgmm.GMMParams(*(np.asarray(leaf)[i] for leaf in params))


def _log_posterior(fit, x, spec):
    """Final log posterior per sample of a one-restart MAP fit."""
    recorded = getattr(fit.restarts, "log_posterior", None)
    if recorded is not None and np.isfinite(np.ravel(recorded)[0]):
        return float(np.ravel(recorded)[0])
    log_prior = float(jaxgmm.log_prior(fit.params, spec))
    return float(fit.log_likelihood) + log_prior / x.shape[0]


def map_census(key, x, spec, restarts, *, max_iter=1000, tol=1e-8, mode_tolerance=1e-5):
    """Every restart run to its MAP under ``spec.prior``; a dict of lists.

    Args:
        key: PRNG key.
        x: array of shape (n_samples, n_features).
        spec: `GMMSpec` with a (resolved) prior.
        restarts: `GMMParams` with a leading (n_restarts,) axis.
        max_iter, tol: EM iterations / gradient steps and tolerance of each MAP fit.
        mode_tolerance: log posteriors per sample within it are one mode.

    Returns:
        ``{"log_posterior": [R floats], "fitter": [R], "params": [R GMMParams],
        "mode": [R ints], "modes": [{"log_posterior", "restarts", "params"}]}``; modes
        best first (mode 0 has the highest log posterior). When the prior has no MAP
        (its ``no_map_reason``), the restarts are maximum-likelihood EM fits and
        "log_posterior" holds their log-likelihood per sample (fitter "em (ML: no MAP)").
    """
    # A prior whose density is unbounded (e.g. sparse Dirichlet weights) has no MAP: the
    # census then runs EM without the prior and ranks restarts by log-likelihood.
    no_map = getattr(spec.prior, "no_map_reason", lambda s: None)(spec)
    if no_map:
        spec = dataclasses.replace(spec, prior=None)
    closed_form = getattr(spec.prior, "em_m_step", None) is not None or spec.prior is None
    n = int(np.shape(restarts.means)[0])
    keys = jax.random.split(key, n)
    out = {"log_posterior": [], "fitter": [], "params": []}
    for r in range(n):
        start = _take(restarts, r)
        if closed_form:
            fit = jaxgmm.fit_em(keys[r], x, spec, init=start, max_iter=max_iter, tol=tol)
        else:
            fit = jaxgmm.fit_gradient(
                keys[r], x, spec, init=start, optimizer="lbfgs", max_steps=max_iter,
                tol=tol,
            )  # fmt: skip
        params = jax.tree_util.tree_map(np.asarray, fit.params)
        lp = _log_posterior(fit, x, spec)
        out["log_posterior"].append(lp if np.isfinite(lp) else -np.inf)
        out["fitter"].append(("em (ML: no MAP)" if no_map else "em") if closed_form else "gradient")
        out["params"].append(jaxgmm.GMMParams(*params))
    order = np.argsort(-np.asarray(out["log_posterior"]), kind="stable")
    modes, mode_of = [], [None] * n
    for r in order:
        lp = out["log_posterior"][r]
        if not np.isfinite(lp):
            continue
        if modes and abs(modes[-1]["log_posterior"] - lp) <= mode_tolerance:
            modes[-1]["restarts"].append(int(r))
        else:
            modes.append({"log_posterior": lp, "restarts": [int(r)], "params": out["params"][r]})
        mode_of[r] = len(modes) - 1
    if not modes:
        raise ValueError("nuts: no census restart reached a finite log posterior")
    out["mode"] = mode_of
    out["modes"] = modes
    return out


def chain_starts(modes, num_chains, n_samples, mode_window):
    """Mode index per chain: distinct modes first (best first) among those within
    ``mode_window`` nats (total, i.e. per sample times n) of the best, then cycling."""
    best = modes[0]["log_posterior"]
    eligible = [
        i for i, m in enumerate(modes) if (best - m["log_posterior"]) * n_samples <= mode_window
    ]
    return [eligible[c % len(eligible)] for c in range(num_chains)]


def nearest_modes(x, draws, modes, spec):
    """(S,) index of the census mode nearest to each draw (leading axis S) by
    `jaxgmm.bayes.allocation_distance`: the share of the data the draw and the mode
    allocate differently, minimised over relabellings."""
    distances = [jaxgmm.bayes.allocation_distance(x, draws, mode["params"], spec) for mode in modes]
    return np.argmin(np.stack(distances, axis=-1), axis=-1)


def occupancy(mode_index, chain, n_modes):
    """(n_chains, n_modes) fraction of each chain's draws nearest each mode."""
    chains = np.unique(chain)
    return np.stack(
        [
            np.bincount(mode_index[chain == c], minlength=n_modes) / np.sum(chain == c)
            for c in chains
        ]
    )


def occupancy_sentence(table, modes, n_samples):
    """Plain words for the occupancy table: per chain, its modes by share."""
    parts = []
    for c, row in enumerate(table):
        shares = [
            f"{100 * share:.0f}% mode {m} ({modes[m]['log_posterior'] * n_samples:.2f})"
            for m, share in sorted(enumerate(row), key=lambda t: -t[1])
            if share > 0
        ]
        parts.append(f"chain {c}: " + ", ".join(shares))
    return "; ".join(parts) + " (mode: census MAP, its log posterior as a total)"


def run_census(context, key_census, key_extra, spec, mode_tolerance):
    """`map_census` of the run's shared restarts plus ``census_n_init`` k-means++ ones
    (the method's setting) under ``spec`` (its prior resolved)."""
    x = context.x
    restarts = jax.tree_util.tree_map(np.asarray, context.init_params)
    n_extra = context.settings["census_n_init"]
    if n_extra > 0:
        extra_starts = jaxgmm.initial_params(key_extra, x, context.spec, "k-means++", n_extra)
        restarts = jax.tree_util.tree_map(
            lambda a, b: np.concatenate([a, np.asarray(b, a.dtype)]), restarts, extra_starts
        )
    return map_census(key_census, x, spec, restarts, mode_tolerance=mode_tolerance)


def occupancy_spread(table):
    """The largest total-variation distance between two rows (chains, runs) of an
    `occupancy` table; 0 for one row."""
    return max(
        (0.5 * np.abs(a - b).sum() for i, a in enumerate(table) for b in table[i + 1 :]),
        default=0.0,
    )


def census_extra(census):
    """The ``census`` (every restart) and ``modes`` entries of a method's ``extra``."""
    finite = lambda v: float(v) if np.isfinite(v) else None  # noqa: E731
    return {
        "census": [
            {"restart": r, "log_posterior": finite(lp), "fitter": f, "mode": m}
            for r, (lp, f, m) in enumerate(
                zip(census["log_posterior"], census["fitter"], census["mode"])
            )
        ],
        "modes": [
            {"mode": i, "log_posterior": float(m["log_posterior"]), "restarts": m["restarts"],
             "weights": [float(w) for w in np.asarray(m["params"].weights)]}
            for i, m in enumerate(census["modes"])
        ],  # fmt: skip
    }


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
    n = x.shape[0]
    began = time.perf_counter()
    key_census, key_extra, key_nuts = jax.random.split(context.key, 3)
    resolved = jaxgmm.priors.resolve_prior(spec, x)
    census = run_census(context, key_census, key_extra, resolved, settings["mode_tolerance"])
    modes = census["modes"]
    starts = chain_starts(modes, settings["num_chains"], n, settings["mode_window"])
    inits = [
        jaxgmm.GMMParams(*(jnp.asarray(a, x.dtype) for a in modes[m]["params"])) for m in starts
    ]
    census_s = time.perf_counter() - began
    result = jaxgmm.fit_nuts(
        key_nuts,
        x,
        spec,
        num_warmup=settings["num_warmup"],
        num_samples=settings["num_samples"],
        num_chains=settings["num_chains"],
        chain_method=settings["chain_method"],
        reference=inits[0],
        init=inits if len(inits) > 1 else inits[0],
        target_accept_prob=settings["target_accept_prob"],
        max_tree_depth=settings["max_tree_depth"],
        dense_mass=settings["dense_mass"],
        progress_bar=context.show_progress,  # NumPyro's own bar
        relabel_method=settings["relabel"],
        r_hat_threshold=settings["r_hat_threshold"],
        ess_threshold=settings["ess_threshold"],
    )
    total_s = time.perf_counter() - began

    n_chains, n_draws = result.log_likelihood.shape
    flat = jax.tree_util.tree_map(
        lambda a: jnp.reshape(a, (n_chains * n_draws,) + a.shape[2:]), result.draws
    )
    log_likelihood = np.asarray(result.log_likelihood, np.float64).reshape(-1)
    log_joint = np.asarray(result.log_joint, np.float64).reshape(-1)
    n_total = log_likelihood.size
    chain = np.repeat(np.arange(n_chains), n_draws)

    mode_index = nearest_modes(x, flat, modes, result.spec)
    table = occupancy(mode_index, chain, len(modes))
    spread = occupancy_spread(table)
    disagree = bool(spread > settings["occupancy_tolerance"])
    diag = result.diagnostics
    if disagree:
        status = "chains_disagree"
    elif not result.r_hat_max < settings["r_hat_threshold"]:
        status = "r_hat"
    elif not min(result.ess_bulk_min, result.ess_tail_min) > settings["ess_threshold"]:
        status = "ess"
    else:
        status = "converged"
    finite = lambda v: float(v) if np.isfinite(v) else None  # noqa: E731
    extra = {
        "r_hat_max": finite(result.r_hat_max),
        "ess_bulk_min": finite(result.ess_bulk_min),
        "ess_tail_min": finite(result.ess_tail_min),
        "ess_min": finite(min(result.ess_bulk_min, result.ess_tail_min)),
        "r_hat_log_likelihood": finite(diag["log_likelihood"]["r_hat"]),
        "r_hat_log_joint": finite(diag["log_joint"]["r_hat"]),
        "r_hat_threshold": settings["r_hat_threshold"],
        "ess_threshold": settings["ess_threshold"],
        "divergences": int(result.n_divergences),
        "tree_depth_saturated": int(result.tree_depth_saturated),
        "max_tree_depth": settings["max_tree_depth"],
        "relabel": result.relabel_method,
        **census_extra(census),
        "chain_starts": [int(m) for m in starts],
        "mode_occupancy": [[float(v) for v in row] for row in table],
        "occupancy_spread": float(spread),
        "chains_disagree": disagree,
        "chains_summary": occupancy_sentence(table, modes, n)
        + ("; THE CHAINS DISAGREE: the posterior summaries mix chains that explored "
           "different modes" if disagree else ""),
        "census_s": census_s,
        "plug_in_log_likelihood": float(result.plug_in_log_likelihood),
        "posterior_mean_log_likelihood": float(np.mean(log_likelihood)),
        "params_summary": "posterior mean",
        "num_chains": n_chains,
        "num_samples": n_draws,
        "num_warmup": settings["num_warmup"],
        "chain_method": settings["chain_method"],
    }  # fmt: skip
    if context.x_test is not None:
        extra["log_predictive_density_test"] = jaxgmm.bayes.log_predictive_density(
            context.x_test, flat, result.spec
        )
    idata = None
    if settings["inference_data"] and arviz_or_none() is not None:
        idata = result.to_inference_data(x, feature_names=context.feature_names or None)
        extra.update(loo_waic(idata))
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
        converged=status == "converged",
        status=status,
        extra=extra,
        posterior={
            "weights": np.asarray(flat.weights),
            "means": np.asarray(flat.means),
            "log_likelihood": log_likelihood,
            "log_joint": log_joint,
            "chain": chain,
            "mode": mode_index,
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
    "census_n_init": Field(
        8, "int", at_least(0),
        "k-means++ restarts added to the shared ones for the census of MAP modes that the "
        "chains start from",
    ),
    "mode_tolerance": Field(
        1e-5, "float", at_least(0.0),
        "census restarts whose log posteriors per sample agree within this are one mode",
    ),
    "mode_window": Field(
        10.0, "float", at_least(0.0),
        "chains start only at census modes within this many nats (total log posterior) of "
        "the best",
    ),
    "occupancy_tolerance": Field(
        0.1, "float", in_interval(0.0, 1.0),
        "chains disagree when two chains' mode occupancies differ by more than this "
        "(total variation)",
    ),
    "relabel": Field(
        "stephens", "str", one_of(["stephens", "means"]),
        "relabelling: stephens (KL on allocation probabilities, all parameters) or means",
    ),
    "r_hat_threshold": Field(
        1.01, "float", greater_than(1.0),
        "converged needs rank-normalised r-hat below this on every quantity",
    ),
    "ess_threshold": Field(
        400.0, "float", at_least(1.0),
        "converged needs bulk and tail ESS above this on every quantity",
    ),
    "inference_data": Field(
        True, "bool", None,
        "with ArviZ installed: the draws' InferenceData in posterior.nc, and LOO/WAIC from it "
        "(the pointwise log-likelihood holds chains x draws x n_train values)",
    ),
}  # fmt: skip


METHOD = Method(
    name="nuts",
    run=run,
    doc="NumPyro NUTS from a census of MAP modes: posterior draws, rank r-hat, bulk/tail "
    "ESS, mode occupancy per chain, divergences, predictive density",
    needs_prior=True,
    config=CONFIG,
)
