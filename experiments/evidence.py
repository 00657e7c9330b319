"""The run's log-evidence estimates: the ``evidence`` config block, `estimate_evidence` for
the posterior methods' model, and `grid_evidence` for Bayesian model selection over the
model-selection grid.

log p(X) = log of the integral of p(X | theta) p(theta) over theta, under the prior the
posterior methods (SVI, NUTS, VB) use, is the target of every ELBO in the bound ledger
(`experiments.ledger`). It is estimated by `jaxgmm.log_evidence` (one call per name in
``evidence.methods``, each a key of `jaxgmm.EVIDENCE_METHODS`), which returns the estimate
and its Monte Carlo standard error in total nats; here they are kept as totals
(``estimate_total``, ``stderr_total``) and per sample (``per_sample``,
``stderr_per_sample``, divided by n_train). The first name listed is the ledger's target;
the others are shown beside it (two estimators that share no code path should agree
within their errors).

When `jaxgmm.log_evidence` is not available, or every listed name fails, the estimates
say why (``unavailable`` / ``error``) and the ledger's targets stay empty: no number is
made up in their place.
"""

from __future__ import annotations

import math
import time

import jax

import jaxgmm
from experiments.config_engine import Field

# The methods that report a posterior (and so an ELBO, or draws): a run with one of them
# estimates log p(X) under their prior unless evidence.methods is null.
POSTERIOR_METHODS = ("svi", "nuts", "smc", "vb")


def registry():
    """{name: function} of the log-evidence estimators of this jaxgmm (empty when it has
    none)."""
    return dict(getattr(jaxgmm, "EVIDENCE_METHODS", None) or {})


def _check_methods(value):
    known = registry()
    if value is None or not known:
        return None  # without a registry the run says so; nothing to check against
    unknown = [m for m in value if m not in known]
    if unknown:
        return f"unknown log-evidence method(s) {unknown}; valid: {sorted(known)}"
    if len(set(value)) != len(value):
        return f"{value} names a method twice"
    return None


def _check_options(value):
    bad = [k for k, v in (value or {}).items() if not isinstance(v, dict)]
    if bad:
        return (
            f"options are keyed by method name, each a mapping of keyword arguments "
            f"(e.g. {{smc: {{n_particles: 500}}}}); {bad} are not mappings"
        )
    return None


CONFIG = {
    "methods": Field(
        ["smc"], "list[str]", _check_methods,
        "log-evidence estimators (keys of jaxgmm.EVIDENCE_METHODS), the first the ELBOs' "
        "target; run when a posterior method (svi, nuts, smc, vb) is listed (null: none)",
        nullable=True,
    ),
    "options": Field(
        {}, "mapping", _check_options,
        "keyword arguments per estimator, e.g. {smc: {n_particles: 500}}",
    ),
    "model_selection": Field(
        False, "bool", None,
        "also estimate log p(X) for every model-selection grid cell (under model.prior, or "
        "the default conjugate prior) for Bayesian model selection beside BIC",
    ),
}  # fmt: skip


def config_check(settings):
    """Options may only name listed estimators."""
    listed = settings["methods"] or []
    extra = sorted(set(settings["options"] or {}) - set(listed))
    if extra:
        return [("options", f"{extra} not in evidence.methods {listed}")]
    return []


def wanted(config):
    """Whether this run estimates log p(X) for its posterior methods."""
    return bool(config["evidence"]["methods"]) and any(
        m in POSTERIOR_METHODS for m in config["methods"]
    )


def _one(key, x, spec, name, options):
    """One estimator's entry (see `estimate_evidence`)."""
    n_samples = x.shape[0]
    began = time.perf_counter()
    try:
        found = jaxgmm.log_evidence(key, x, spec, method=name, **options)
    except (ValueError, TypeError, NotImplementedError) as error:
        return {"method": name, "error": str(error)}
    seconds = time.perf_counter() - began
    estimate, stderr = float(found.estimate), float(found.stderr)
    if not math.isfinite(estimate):
        return {"method": name, "error": f"non-finite estimate {estimate}"}
    return {
        "method": name,
        "estimate_total": estimate,
        "stderr_total": stderr,
        "per_sample": estimate / n_samples,
        "stderr_per_sample": stderr / n_samples,
        "diagnostics": dict(found.diagnostics or {}),
        "seconds": seconds,
        "options": dict(options),
    }


def estimate_evidence(key, x, spec, settings, prior_label=None):
    """log p(X) under ``spec`` (its prior resolved) by every estimator of the block.

    Args:
        key: PRNG key.
        x: array of shape (n_samples, n_features), the training data.
        spec: `GMMSpec` with a resolved prior.
        settings: the resolved ``evidence`` block.
        prior_label: how the run names the prior (e.g. "conjugate (default)").

    Returns:
        dict: ``prior``, ``n_train``, ``estimates`` ({name: entry}: estimate_total,
        stderr_total, per_sample, stderr_per_sample, diagnostics, seconds, options; or
        ``error``), ``target`` (the name whose estimate is the ELBOs' target, or None),
        and ``unavailable`` (why nothing was estimated) when jaxgmm has no estimator.
    """
    out = {
        "prior": prior_label,
        "n_train": int(x.shape[0]),
        "estimates": {},
        "target": None,
    }
    if getattr(jaxgmm, "log_evidence", None) is None:
        out["unavailable"] = "this jaxgmm has no log_evidence (jaxgmm.EVIDENCE_METHODS)"
        return out
    options = settings["options"] or {}
    for i, name in enumerate(settings["methods"] or []):
        entry = _one(jax.random.fold_in(key, i), x, spec, name, dict(options.get(name) or {}))
        out["estimates"][name] = entry
        if out["target"] is None and "error" not in entry:
            out["target"] = name
    return out


def target(evidence):
    """The target entry of an `estimate_evidence` dict, or None."""
    if not evidence or evidence.get("target") is None:
        return None
    return evidence["estimates"][evidence["target"]]


def grid_evidence(rows, config, x_train, key, default_prior):
    """Add ``log_evidence_total`` and ``log_evidence_stderr_total`` (nats) to every fitted
    model-selection grid row, under ``model.prior`` or ``default_prior`` (a prior config
    dict) resolved for the cell's K and covariance type, by the first estimator listed; a
    cell the estimator refuses gets ``log_evidence_error``. Rows are changed in place."""
    settings = config["evidence"]
    names = settings["methods"] or []
    if not names or getattr(jaxgmm, "log_evidence", None) is None:
        return rows
    prior_config = config["model"]["prior"] or default_prior
    name = names[0]
    options = dict((settings["options"] or {}).get(name) or {})
    for i, row in enumerate(rows):
        if "error" in row:
            continue
        try:
            spec = jaxgmm.GMMSpec(
                row["n_components"], row["covariance_type"], config["model"]["reg_covar"],
                jaxgmm.priors.prior_from_config(dict(prior_config)),
            )  # fmt: skip
            spec = jaxgmm.priors.resolve_prior(spec, x_train)
        except ValueError as error:
            row["log_evidence_error"] = str(error)
            continue
        entry = _one(jax.random.fold_in(key, i), x_train, spec, name, options)
        if "error" in entry:
            row["log_evidence_error"] = entry["error"]
            continue
        row["log_evidence_total"] = entry["estimate_total"]
        row["log_evidence_stderr_total"] = entry["stderr_total"]
        row["log_evidence_method"] = name
    return rows
