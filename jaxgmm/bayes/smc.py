"""Tempered SMC as a posterior sampler: for posteriors whose modes NUTS cannot cross.

The particles of `jaxgmm.bayes.evidence.smc` (R independent runs, each moved from exact
prior draws to the posterior through adaptive temperatures 0 = b_0 < ... < b_T = 1) are
themselves draws from the posterior: at b = 1 they are equally weighted after the last
resampling and moves. Because they start from the prior, which spreads over every mode,
they reach modes in proportion to their mass instead of staying in the mode a chain
started in (Del Moral, Doucet and Jasra 2006); each run also yields log p(X) on the way.

What "converged" can mean here: the particles of one run are correlated (resampling
copies them), so autocorrelation ESS does not apply. What can be checked is whether the
R independent runs agree: rank-normalised split r-hat across runs (each run one "chain",
its particles in a random order) on every relabelled parameter and on the log-likelihood
and log joint. Runs that found different modes, or different mode masses, disagree.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._cache import BoundedCache
from jaxgmm.bayes import diagnostics
from jaxgmm.bayes.evidence._common import LogEvidence, prepare, raw_key
from jaxgmm.bayes.evidence._sites import map_points
from jaxgmm.bayes.evidence.smc import (
    check_smc_options,
    evidence_of_run,
    run_smc,
    stage_diagnostics,
)
from jaxgmm.bayes.nuts import _check_unbatched, _extremes
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
from jaxgmm.fit.validation import check_positive
from jaxgmm.model.density import mean_log_likelihood
from jaxgmm.model.params import GMMParams

_CONVERT = BoundedCache(8)


class SMCResult(NamedTuple):
    """Outcome of `fit_smc`. Draw arrays have leading axes (n_runs, n_particles).

    Attributes:
        draws: `GMMParams` of the final particles, relabelled to ``reference``.
        permutations: (n_runs, n_particles, K) the relabelling (see `relabel`).
        log_likelihood: (n_runs, n_particles) log p(X | draw) per sample.
        log_joint: (n_runs, n_particles) (log p(X | draw) + log p(draw)) / n_samples,
            log p(draw) the prior's density of the particle's full sample dict.
        log_prior: (n_runs, n_particles) that prior density, a total.
        log_evidence: `LogEvidence` (method "smc") from the same runs: the mean of their
            log Z (see `jaxgmm.bayes.evidence.smc.log_evidence_smc`).
        summary: as `NUTSResult.summary`.
        diagnostics: {"weights" | "means" | "covariances" | "log_likelihood" |
            "log_joint": {"r_hat"}}: rank-normalised split r-hat across the runs.
        r_hat_max: its maximum over every quantity that varies (NaN fails).
        converged: r_hat_max < ``r_hat_threshold``.
        stages: the stage diagnostics (kernel, n_stages, min_ess, acceptance_min /
            acceptance_mean, frame_changes_mean, betas, n_runs, n_particles, n_mh_steps).
        unique_fraction: (n_runs,) share of distinct particles at the end (resampling
            duplicates them; moves separate them again).
        reference, posterior_mean, plug_in_log_likelihood, spec, relabel_method: as in
            `NUTSResult`.
    """

    draws: GMMParams
    permutations: np.ndarray
    log_likelihood: np.ndarray
    log_joint: np.ndarray
    log_prior: np.ndarray
    log_evidence: LogEvidence
    summary: dict
    diagnostics: dict
    r_hat_max: float
    converged: bool
    stages: dict
    unique_fraction: np.ndarray
    reference: GMMParams
    posterior_mean: GMMParams
    plug_in_log_likelihood: float
    spec: object
    relabel_method: str


def fit_smc(
    key,
    x,
    spec,
    *,
    n_particles: int = 200,
    n_runs: int = 4,
    n_mh_steps: int | None = None,
    target_ess: float = 0.9,
    max_stages: int = 500,
    kernel: str = "hmc",
    n_leapfrog: int = 10,
    reference: GMMParams | None = None,
    relabel_method: str = "stephens",
    r_hat_threshold: float = diagnostics.R_HAT_MAX,
    progress=None,
) -> SMCResult:
    """Sample the posterior of ``spec`` (prior ``spec.prior``, proper) given ``x`` by
    adaptive tempered SMC from the prior.

    Args:
        key: PRNG key.
        x: array of shape (n_samples, n_features).
        spec: `GMMSpec` with a proper prior that can be sampled; data-dependent prior
            defaults are filled from ``x``.
        n_particles, n_runs, n_mh_steps, target_ess, max_stages, kernel, n_leapfrog: as
            in `jaxgmm.bayes.evidence.smc.log_evidence_smc`, except that the default
            kernel is ``"hmc"`` (on iris, random-walk moves nearly stop in the last
            stages: docs/evidence.md). S = n_runs * n_particles draws in all.
        reference: solution draws are relabelled to; default: the EM maximum-likelihood
            fit (k-means initialisation, 5 restarts).
        relabel_method: ``"stephens"`` (default) or ``"means"``; see `jaxgmm.bayes.relabel`.
        r_hat_threshold: converged when r-hat across runs is below it on every quantity.
        progress: optional ``progress(lowest_temperature)`` called after every stage.
    """
    x, spec = prepare(x, spec)
    options = check_smc_options(n_particles, n_runs, n_mh_steps, target_ess, max_stages,
                                kernel, n_leapfrog)  # fmt: skip
    if relabel_method not in RELABEL_METHODS:
        raise ValueError(
            f"relabel_method must be one of {list(RELABEL_METHODS)}, got {relabel_method!r}"
        )
    r_hat_threshold = check_positive(r_hat_threshold, "r_hat_threshold")
    key_ref, key_smc, key_order = jax.random.split(raw_key(key), 3)
    if reference is None:
        ml_spec = dataclasses.replace(spec, prior=None)
        reference = fit_em(key_ref, x, ml_spec, n_init=5, tol=1e-6, max_iter=500).params
    else:
        reference = _check_unbatched(reference, spec, x, "reference")
    reference = jax.tree_util.tree_map(lambda a: jnp.asarray(a, x.dtype), GMMParams(*reference))

    run = run_smc(key_smc, x, spec, progress=progress, **options)
    evidence = evidence_of_run(run, options)
    r, p, d = run.state.u.shape
    # A random order within each run: r-hat splits each "chain" in halves, and the
    # resampled particles lie in ancestor order.
    order = np.asarray(jax.vmap(lambda k: jax.random.permutation(k, p))(
        jax.random.split(key_order, r)))  # fmt: skip
    u = np.take_along_axis(np.asarray(run.state.u), order[..., None], axis=1)
    unique = np.array([len(np.unique(u[i], axis=0)) / p for i in range(r)])
    raw, log_prior = _params_and_log_prior(run.layout, jnp.asarray(u.reshape(r * p, d)))
    raw = jax.tree_util.tree_map(lambda a: a.reshape((r, p) + a.shape[1:]), raw)
    draws, perms = relabel(raw, reference, spec, method=relabel_method, x=x)
    draws = jax.tree_util.tree_map(jnp.asarray, draws)
    log_likelihood = np.asarray(draws_mean_log_likelihood(x, draws, spec), np.float64)
    log_prior = np.asarray(log_prior, np.float64).reshape(r, p)
    log_joint = log_likelihood + log_prior / x.shape[0]
    quantities = {
        "weights": draws.weights,
        "means": draws.means,
        "covariances": _covariances_of_draws(draws, spec),
        "log_likelihood": log_likelihood,
        "log_joint": log_joint,
    }
    diag = {name: {"r_hat": diagnostics.rank_rhat(v)} for name, v in quantities.items()}
    # _extremes wants ESS too; across-run r-hat is the only verdict here.
    r_hat_max, _, _ = _extremes(
        quantities, {k: {**v, "ess_bulk": v["r_hat"], "ess_tail": v["r_hat"]}
                     for k, v in diag.items()},
    )  # fmt: skip
    summary = summarize_params(draws, spec)
    summary["log_likelihood"] = summarize(log_likelihood)
    summary["log_joint"] = summarize(log_joint)
    stages = stage_diagnostics(run, options)
    posterior_mean = posterior_mean_params(draws, spec)
    return SMCResult(
        draws=draws,
        permutations=perms,
        log_likelihood=log_likelihood,
        log_joint=log_joint,
        log_prior=log_prior,
        log_evidence=evidence,
        summary=summary,
        diagnostics=diag,
        r_hat_max=r_hat_max,
        converged=bool(r_hat_max < r_hat_threshold),
        stages=stages,
        unique_fraction=unique,
        reference=reference,
        posterior_mean=posterior_mean,
        plug_in_log_likelihood=float(mean_log_likelihood(x, posterior_mean, spec)),
        spec=spec,
        relabel_method=relabel_method,
    )


def _params_and_log_prior(layout, u):
    """(`GMMParams` of every particle (S, ...), log p(sites) (S,)) of particles u (S, d)."""
    cache_key = (layout.spec, layout.n_features, jnp.dtype(layout.dtype).name)
    convert = _CONVERT.get(cache_key)
    if convert is None:

        def one(ui):
            sites, _ = layout.from_unconstrained(ui)
            return layout.params(sites), layout.log_prior(sites)

        convert = _CONVERT[cache_key] = jax.jit(lambda u: map_points(one, u))
    return convert(u)
