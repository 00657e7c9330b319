"""Tempered SMC as a posterior sampler via `jaxgmm.bayes.fit_smc`: the option for posteriors
whose modes NUTS cannot cross. Its config block is ``CONFIG`` (``smc`` in a config).

R independent runs each move ``n_particles`` exact prior draws to the posterior through
adaptive temperatures (HMC moves by default); the final particles are the draws. The
census of MAP modes is NUTS's (`experiments.methods.nuts.map_census`): it names the modes
that each run's particles are assigned to (nearest by allocation distance) and gives the
reference the draws are relabelled to; the particles do not start there.

What it reports:

- ``params``: the posterior mean of the relabelled draws (not a point estimate: no BIC).
- trace: one row per final particle, runs one after another (like NUTS's chains);
  ``log_likelihood`` = log p(X | draw) / N and ``bound`` = the draw's log joint / N
  (``bound_name="log_joint"``, not a bound). ``elapsed_s``: the wall time spread evenly.
- ``posterior``: ``weights``, ``means``, ``log_likelihood``, ``log_joint``, ``chain``
  (the run), ``mode`` (nearest census mode).
- ``converged`` / ``status``: converged when the runs agree: their mode occupancies
  differ by at most ``occupancy_tolerance`` (total variation) and rank-normalised r-hat
  across runs is below ``r_hat_threshold`` on every relabelled parameter and on the
  log-likelihood and log joint; else ``runs_disagree`` or ``r_hat``. There is no ESS: a
  run's particles are correlated through resampling, so autocorrelation ESS does not
  apply (``unique_fraction_min`` says how many distinct particles are left).
- ``extra``: ``r_hat_max``, ``r_hat_threshold``, ``log_evidence_smc`` / ``log_evidence_smc_stderr``
  (per sample, the mean of the runs' log Z; the same estimator as ``evidence.methods:
  [smc]``), ``jensen_bias`` (per sample: about how far that mean of log Z is low),
  ``run_estimates`` (totals), ``n_stages``, ``min_ess``, ``acceptance_min`` /
  ``acceptance_mean``, ``frame_changes_mean``, ``unique_fraction_min``, the census,
  ``modes``, ``mode_occupancy`` (per run), ``run_mean_log_likelihood`` (per run, per sample),
  ``runs_disagree``, ``runs_summary``, the
  settings, and ``log_predictive_density_test`` with a test split.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxgmm
from experiments.config_engine import Field, at_least, greater_than, in_interval, one_of
from experiments.methods import Method, MethodResult
from experiments.methods.nuts import (
    census_extra,
    nearest_modes,
    occupancy,
    occupancy_sentence,
    occupancy_spread,
    run_census,
)


def run(context):
    settings = context.settings
    spec, x = context.spec, context.x
    n = x.shape[0]
    began = time.perf_counter()
    key_census, key_extra, key_smc = jax.random.split(context.key, 3)
    resolved = jaxgmm.priors.resolve_prior(spec, x)
    census = run_census(context, key_census, key_extra, resolved, mode_tolerance=1e-5)
    modes = census["modes"]
    census_s = time.perf_counter() - began
    bar = context.progress(1000, "smc temperature")
    result = jaxgmm.bayes.fit_smc(
        key_smc,
        x,
        resolved,
        n_particles=settings["n_particles"],
        n_runs=settings["n_runs"],
        n_mh_steps=settings["n_mh_steps"],
        target_ess=settings["target_ess"],
        max_stages=settings["max_stages"],
        kernel=settings["kernel"],
        n_leapfrog=settings["n_leapfrog"],
        reference=jaxgmm.GMMParams(*(jnp.asarray(a, x.dtype) for a in modes[0]["params"])),
        relabel_method=settings["relabel"],
        r_hat_threshold=settings["r_hat_threshold"],
        progress=lambda beta: bar.update_to(int(1000 * beta), beta=f"{beta:.3g}"),
    )
    bar.close()
    total_s = time.perf_counter() - began

    n_runs, n_particles = result.log_likelihood.shape
    flat = jax.tree_util.tree_map(
        lambda a: jnp.reshape(a, (n_runs * n_particles,) + a.shape[2:]), result.draws
    )
    log_likelihood = result.log_likelihood.reshape(-1)
    log_joint = result.log_joint.reshape(-1)
    n_total = log_likelihood.size
    run_index = np.repeat(np.arange(n_runs), n_particles)
    mode_index = nearest_modes(x, flat, modes, result.spec)
    table = occupancy(mode_index, run_index, len(modes))
    spread = occupancy_spread(table)
    disagree = bool(spread > settings["occupancy_tolerance"])
    if disagree:
        status = "runs_disagree"
    elif not result.r_hat_max < settings["r_hat_threshold"]:
        status = "r_hat"
    else:
        status = "converged"
    evidence = result.log_evidence
    stages = result.stages
    finite = lambda v: float(v) if np.isfinite(v) else None  # noqa: E731
    # With one census mode every particle is "nearest" to it; the runs' mean
    # log-likelihoods still show runs that ended in different places.
    run_means = [float(np.mean(log_likelihood[run_index == r])) for r in range(n_runs)]
    sentence = (
        occupancy_sentence(table, modes, n).replace("chain ", "run ")
        + "; the runs' mean log-likelihood per sample: "
        + ", ".join(f"{v:.4f}" for v in run_means)
    )
    extra = {
        "r_hat_max": finite(result.r_hat_max),
        "r_hat_log_likelihood": finite(result.diagnostics["log_likelihood"]["r_hat"]),
        "r_hat_log_joint": finite(result.diagnostics["log_joint"]["r_hat"]),
        "r_hat_threshold": settings["r_hat_threshold"],
        "log_evidence_smc": evidence.estimate / n,
        "log_evidence_smc_stderr": evidence.stderr / n,
        "jensen_bias": evidence.diagnostics["jensen_bias"] / n,
        "run_estimates": evidence.diagnostics["run_estimates"],
        "kernel": stages["kernel"],
        "n_stages": stages["n_stages"],
        "min_ess": stages["min_ess"],
        "acceptance_min": stages["acceptance_min"],
        "acceptance_mean": stages["acceptance_mean"],
        "frame_changes_mean": stages["frame_changes_mean"],
        "unique_fraction_min": float(np.min(result.unique_fraction)),
        "relabel": result.relabel_method,
        **census_extra(census),
        "mode_occupancy": [[float(v) for v in row] for row in table],
        "occupancy_spread": float(spread),
        "run_mean_log_likelihood": run_means,
        "runs_disagree": disagree,
        "runs_summary": sentence
        + ("; THE RUNS DISAGREE: their particles found different modes or mode masses; "
           "raise smc.n_particles or smc.n_mh_steps" if disagree else ""),
        "census_s": census_s,
        "plug_in_log_likelihood": float(result.plug_in_log_likelihood),
        "posterior_mean_log_likelihood": float(np.mean(log_likelihood)),
        "params_summary": "posterior mean",
        "n_runs": n_runs,
        "n_particles": n_particles,
        "n_mh_steps": stages["n_mh_steps"],
    }  # fmt: skip
    if context.x_test is not None:
        extra["log_predictive_density_test"] = jaxgmm.bayes.log_predictive_density(
            context.x_test, flat, result.spec
        )
    posterior_mean = jax.tree_util.tree_map(np.asarray, result.posterior_mean)
    return MethodResult(
        params=jaxgmm.GMMParams(*posterior_mean),
        point_estimate=False,
        iteration=np.arange(1, n_total + 1),
        log_likelihood=log_likelihood,
        bound=log_joint,
        elapsed_s=total_s * np.arange(1, n_total + 1) / n_total,
        bound_name="log_joint",
        compile_s=None,  # compiled inside the first stage; included in fit_s
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
            "chain": run_index,
            "mode": mode_index,
        },
    )


CONFIG = {
    "n_particles": Field(200, "int", at_least(2), "particles per run"),
    "n_runs": Field(4, "int", at_least(2), "independent runs (their agreement is the check)"),
    "kernel": Field(
        "hmc", "str", one_of(["hmc", "rw"]),
        "moves: hmc (Hamiltonian, the particles' covariance as inverse mass) or rw "
        "(random-walk Metropolis)",
    ),
    "n_mh_steps": Field(
        None, "int", at_least(1), "moves per stage (null: 4 for hmc, 40 for rw)", nullable=True
    ),
    "n_leapfrog": Field(10, "int", at_least(1), "leapfrog steps per HMC move"),
    "target_ess": Field(
        0.9, "float", in_interval(1e-9, 1.0),
        "each stage's temperature step keeps this share of the particles' ESS",
    ),
    "max_stages": Field(500, "int", at_least(1), "stages allowed before giving up"),
    "census_n_init": Field(
        8, "int", at_least(0),
        "k-means++ restarts added to the shared ones for the census of MAP modes (the "
        "reference for relabelling and the modes the occupancy counts)",
    ),
    "occupancy_tolerance": Field(
        0.1, "float", in_interval(0.0, 1.0),
        "runs disagree when two runs' mode occupancies differ by more than this (total "
        "variation)",
    ),
    "relabel": Field(
        "stephens", "str", one_of(["stephens", "means"]),
        "relabelling: stephens (KL on allocation probabilities, all parameters) or means",
    ),
    "r_hat_threshold": Field(
        1.01, "float", greater_than(1.0),
        "converged needs rank-normalised r-hat across runs below this on every quantity",
    ),
}  # fmt: skip


METHOD = Method(
    name="smc",
    run=run,
    doc="tempered SMC from the prior (HMC moves): posterior draws that reach every mode, "
    "r-hat across independent runs, mode occupancy per run, log p(X) on the way",
    needs_prior=True,
    config=CONFIG,
)
