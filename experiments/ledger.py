"""The bound ledger: for every method, the quantity it optimises, the bound it reports and
the target that bound lies below, side by side, per sample (nats / n_train).

- em, maximum likelihood: optimises log p(X | theta); bound L(q, theta) (``em_bound``),
  target log p(X | theta).
- em with a prior (MAP-EM): optimises the log posterior; bound L(q, theta) + log p(theta)
  (``em_map_bound``), target log p(X | theta) + log p(theta).
- gradient: optimises its objective (the log-likelihood, or the log posterior with a
  prior); no bound, no target.
- vb, svi: optimise the ELBO; bound the ELBO, target log p(X) (`experiments.evidence`).
  svi with ``auto_delta``: the log joint at a point (MAP), no bound.
- nuts, smc: samplers, no bound; the entry holds the draws' mean log-likelihood (with its
  Monte Carlo standard error: NUTS's by chain, SMC's by run) and log p(X).

theta is the method's final parameters; L(q, theta) is EM's last traced bound
L(q_{T-1}, theta_T), so its target is at the same theta_T. Every entry holds ``gap`` =
bound - target (<= 0 when the bound holds) and ``gap_stderr``, the Monte Carlo standard
error of the gap where a term is estimated (an SVI ELBO from guide draws, an estimated
log p(X); independent draws, so the variances add), else 0; ``holds`` is whether
gap <= 3 * gap_stderr + a rounding slack. A target left empty (no log-evidence estimate)
leaves ``gap`` and ``holds`` None.
"""

from __future__ import annotations

import math

import numpy as np

from experiments.evidence import target as evidence_target

# Rounding slack of an exact bound (EM, VB): bound and target come from different
# summations of the same terms.
RTOL = 1e-9


def _draws_mean_and_se(log_likelihood, chain):
    """Mean of the draws' log-likelihoods and its Monte Carlo standard error sd / sqrt(ESS)
    (NumPyro's split-chain ESS), or (mean, None) with too few draws."""
    draws = np.asarray(log_likelihood, np.float64)
    mean = float(np.mean(draws))
    chain = np.zeros(draws.size, int) if chain is None else np.asarray(chain)
    chains = [draws[chain == c] for c in np.unique(chain)]
    n = min(len(c) for c in chains)
    if n < 4:
        return mean, None
    from numpyro.diagnostics import effective_sample_size

    ess = float(effective_sample_size(np.stack([c[:n] for c in chains])))
    if not (math.isfinite(ess) and ess > 0):
        return mean, None
    return mean, float(np.std(draws, ddof=1) / math.sqrt(ess))


def _runs_mean_and_se(log_likelihood, run):
    """Mean of the draws' log-likelihoods and its standard error from R independent runs
    (sd of the run means / sqrt(R)): an SMC run's particles are correlated through
    resampling, so an autocorrelation ESS would overstate their information."""
    draws = np.asarray(log_likelihood, np.float64)
    run = np.asarray(run)
    means = np.array([draws[run == r].mean() for r in np.unique(run)])
    if means.size < 2:
        return float(np.mean(draws)), None
    return float(np.mean(draws)), float(np.std(means, ddof=1) / math.sqrt(means.size))


def _entry(objective, bound_name=None, bound=None, bound_stderr=None, target_name=None,
           target_value=None, target_stderr=None, target_source=None, note=None):  # fmt: skip
    entry = {
        "objective": objective,
        "bound_name": bound_name,
        "bound": bound,
        "bound_stderr": bound_stderr,
        "target_name": target_name,
        "target": target_value,
        "target_stderr": target_stderr,
        "target_source": target_source,
        "gap": None,
        "gap_stderr": None,
        "holds": None,
        "note": note,
    }
    if bound is not None and target_value is not None:
        gap = bound - target_value
        se = math.hypot(bound_stderr or 0.0, target_stderr or 0.0)
        entry["gap"] = gap
        entry["gap_stderr"] = se
        entry["holds"] = bool(gap <= 3.0 * se + RTOL * (1.0 + abs(target_value)))
    return entry


def _evidence_target(evidence, bound_name, bound, bound_stderr, objective, note=None):
    found = evidence_target(evidence)
    if found is None:
        why = (evidence or {}).get("unavailable") or (
            "no log-evidence estimate (evidence.methods)"
            if not (evidence or {}).get("estimates")
            else "every log-evidence estimator failed"
        )
        return _entry(objective, bound_name, bound, bound_stderr, "log p(X)",
                      note=f"target empty: {why}")  # fmt: skip
    return _entry(
        objective, bound_name, bound, bound_stderr, "log p(X)", found["per_sample"],
        found["stderr_per_sample"], f"log_evidence {found['method']}", note,
    )  # fmt: skip


def method_ledger(name, row, result, evidence, n_train):
    """The ledger entry of one method.

    Args:
        name: the method ("em", "gradient", "svi", "nuts", "smc", "vb").
        row: its metrics row (train_log_likelihood, log_prior_total, bound_final, extra).
        result: its `experiments.methods.MethodResult` (trace, posterior draws).
        evidence: the run's `experiments.evidence.estimate_evidence` dict, or None.
        n_train: training samples (per-sample units).

    Returns:
        dict: objective, bound_name, bound, bound_stderr, target_name, target,
        target_stderr, target_source, gap, gap_stderr, holds, note (None where a method
        has no such quantity), plus ``log_evidence`` / ``log_evidence_stderr`` (per
        sample) for posterior methods and ``draws_log_likelihood`` /
        ``draws_log_likelihood_stderr`` for samplers.
    """
    extra = row.get("extra") or {}
    prior = row.get("log_prior_total")
    ll = row.get("train_log_likelihood")
    if name == "em":
        bound = row.get("bound_final")
        if prior is None:
            entry = _entry(
                "log-likelihood", "em_bound", bound, None, "log p(X | theta)", ll, None,
                "train log-likelihood at the final parameters",
            )  # fmt: skip
        else:
            entry = _entry(
                "log posterior", "em_map_bound", bound, None, "log p(X | theta) + log p(theta)",
                None if ll is None else ll + prior / n_train, None,
                "train log-likelihood + log prior / N at the final parameters",
            )  # fmt: skip
    elif name == "gradient":
        entry = _entry(
            "log posterior" if prior is not None else "log-likelihood",
            note=f"objective {row.get('bound_name')} = {row.get('bound_final')}: no bound",
        )
        entry["objective_value"] = row.get("bound_final")
    elif name == "vb":
        entry = _evidence_target(evidence, "elbo", extra.get("elbo"), 0.0, "ELBO")
    elif name == "svi":
        if extra.get("guide") == "auto_delta":
            entry = _entry("log p(X, theta) (MAP)", note="a point-mass guide: no ELBO")
            entry["objective_value"] = extra.get("elbo")
        else:
            entry = _evidence_target(
                evidence, "elbo", extra.get("elbo"), extra.get("elbo_stderr"), "ELBO",
                note="ELBO from svi.n_eval_samples fresh guide draws",
            )  # fmt: skip
    elif name in ("nuts", "smc"):
        entry = _entry(None, note="a sampler: no bound; its draws' log-likelihood and log p(X)")
        posterior = result.posterior if result is not None else None
        if posterior and "log_likelihood" in posterior:
            spread = _runs_mean_and_se if name == "smc" else _draws_mean_and_se
            mean, se = spread(posterior["log_likelihood"], posterior.get("chain"))
            entry["draws_log_likelihood"] = mean
            entry["draws_log_likelihood_stderr"] = se
    else:  # a method this ledger does not know: say so rather than guess
        entry = _entry(None, note=f"no ledger rule for method {name!r}")
    if "objective_value" not in entry:
        # The final value of what the method optimises: EM's is its target (the bound is
        # tight at the optimum), an ELBO its bound; a sampler optimises nothing.
        entry["objective_value"] = (
            entry["target"] if name == "em" else entry["bound"] if name in ("vb", "svi") else None
        )
    if name in ("vb", "svi", "nuts", "smc"):
        found = evidence_target(evidence)
        entry["log_evidence"] = None if found is None else found["per_sample"]
        entry["log_evidence_stderr"] = None if found is None else found["stderr_per_sample"]
    return entry


def violations(metrics):
    """[(method, entry)] of every ledger entry whose bound exceeds its target."""
    return [
        (method, row["ledger"])
        for method, row in metrics["methods"].items()
        if (row.get("ledger") or {}).get("holds") is False
    ]
