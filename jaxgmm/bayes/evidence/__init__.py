"""Log-evidence estimators: log p(X) = log ∫ p(X | theta) p(theta) dtheta under a spec's
prior, as a total in nats with a standard error and diagnostics.

``EVIDENCE_METHODS`` maps a name to a function ``fn(key, x, spec, **options) ->
LogEvidence``; `log_evidence` dispatches to it. Methods: ``"smc"`` (adaptive tempered
SMC from the prior, `jaxgmm.bayes.evidence.smc`), ``"bridge"`` (bridge sampling from
posterior draws with a label-symmetrised proposal, `jaxgmm.bayes.evidence.bridge`),
``"exact"`` (conjugate prior, small data: enumeration of every allocation,
`jaxgmm.bayes.evidence.exact`).
"""

from __future__ import annotations

import inspect

from jaxgmm._registry import lookup
from jaxgmm.bayes.evidence._common import LogEvidence, prepare, raw_key
from jaxgmm.bayes.evidence.bridge import log_evidence_bridge
from jaxgmm.bayes.evidence.exact import log_evidence_exact
from jaxgmm.bayes.evidence.importance import log_evidence_importance
from jaxgmm.bayes.evidence.smc import log_evidence_smc

EVIDENCE_METHODS = {
    "smc": log_evidence_smc,
    "bridge": log_evidence_bridge,
    "exact": log_evidence_exact,
    "importance": log_evidence_importance,
}


def option_names(fn):
    """The keyword options an evidence method accepts (its keyword-only parameters)."""
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def log_evidence(key, x, spec, method="smc", **options) -> LogEvidence:
    """Estimate log p(X) under ``spec.prior`` by ``method``.

    Args:
        key: PRNG key (raw ``PRNGKey`` or typed ``jax.random.key``; unused by ``exact``).
        x: array of shape (n_samples, n_features).
        spec: `GMMSpec` with a proper prior (data-dependent defaults are filled from x).
        method: a key of `EVIDENCE_METHODS`.
        **options: the method's own options (see each method's docstring).

    Returns:
        `LogEvidence` (estimate, stderr, method, diagnostics); estimate and stderr are
        TOTALS in nats, not per sample.

    Raises ValueError for an unknown method or option (listing the valid ones), a spec
    without a prior, or non-finite / malformed x.
    """
    fn = lookup(
        EVIDENCE_METHODS, method, "method", "unknown evidence method {name}; valid methods: {valid}"
    )
    valid = option_names(fn)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"evidence method {method!r} has no option(s) {unknown}; valid options: {valid}"
        )
    return fn(raw_key(key), x, spec, **options)


__all__ = [
    "EVIDENCE_METHODS",
    "LogEvidence",
    "log_evidence",
    "log_evidence_bridge",
    "log_evidence_exact",
    "log_evidence_importance",
    "log_evidence_smc",
    "option_names",
    "prepare",
]
