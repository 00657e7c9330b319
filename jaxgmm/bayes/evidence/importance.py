"""``importance``: log p(X) by importance sampling from a fitted SVI guide, the proposal
symmetrised over the K! relabellings (Fruhwirth-Schnatter 2004), with the weights'
effective sample size and Pareto k-hat (Vehtari et al. 2024) as its diagnostics.

The work is `jaxgmm.bayes.svi.importance_estimate` (the same numbers `fit_svi` reports as
``log_marginal_is``); this module gives it the common evidence signature.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxgmm.bayes.evidence._common import LogEvidence, prepare
from jaxgmm.bayes.svi import SVIResult, fit_svi, importance_estimate, symmetrization
from jaxgmm.fit.validation import check_int


def log_evidence_importance(
    key,
    x,
    spec,
    *,
    svi: SVIResult | None = None,
    guide: str = "auto_multivariate_normal",
    num_steps: int = 3000,
    optimizer=None,
    n_draws: int = 4000,
    symmetrize: bool | None = None,
) -> LogEvidence:
    """Importance-sampling estimate of log p(X) (a total, in nats) from an SVI guide.

    Args:
        key: PRNG key (the SVI fit, when one is made, and the draws).
        x: array of shape (n_samples, n_features).
        spec: `GMMSpec` with a resolved, proper prior.
        svi: an `SVIResult` of `jaxgmm.fit_svi` on this ``x`` and ``spec`` whose guide is
            the proposal; default: fit one (``guide``, ``num_steps``, ``optimizer``).
        guide: ``auto_normal`` or ``auto_multivariate_normal`` (a stochastic guide).
        n_draws: draws of the guide for the estimate (and as many for the ELBO).
        symmetrize: None (default): symmetrise over the K! relabellings when the prior is
            exchangeable and K <= `jaxgmm.bayes.svi.MAX_SYMMETRIZED_COMPONENTS` (refused
            above); False: the raw guide as proposal (biased low by up to log K! nats when
            the guide sits in one mode).

    Returns:
        `LogEvidence`; diagnostics: ``ess``, ``pareto_k``, ``khat_threshold``, ``reliable``
        (k-hat at most the threshold; when False the estimate and its stderr are not to be
        trusted), ``n_draws``, ``symmetrized``, ``symmetrization``, ``elbo`` and
        ``elbo_stderr`` (totals), ``log_marginal_unsymmetrized`` (total),
        ``pareto_k_unsymmetrized``, ``elbo_symmetrized`` (total) and ``guide``.
    """
    x, spec = prepare(x, spec)
    n_draws = check_int(n_draws, "n_draws", 2)
    auto, reason = symmetrization(spec)
    if symmetrize is None and auto is None:
        raise ValueError(
            f"method 'importance' cannot symmetrise its proposal: {reason}; pass "
            "symmetrize=False to accept that bias, or use method 'smc'"
        )
    key_fit, key_draws = jax.random.split(key)
    if svi is None:
        if guide == "auto_delta":
            raise ValueError(
                "method 'importance' needs a stochastic guide (auto_normal or "
                "auto_multivariate_normal), got guide 'auto_delta' (a point mass)"
            )
        svi = fit_svi(
            key_fit, x, spec, guide=guide, num_steps=num_steps, optimizer=optimizer,
            n_eval_samples=2,
        )  # fmt: skip
    elif not isinstance(svi, SVIResult):
        raise ValueError(f"svi must be an SVIResult from jaxgmm.fit_svi, got {type(svi)!r}")
    if svi.guide == "auto_delta":
        raise ValueError("svi: a fit with guide 'auto_delta' (a point mass) is no proposal")
    if svi.spec != spec or svi.handle.n_features != x.shape[1]:
        raise ValueError(
            "svi was fitted to another model or data width than (x, spec): "
            f"its spec {svi.spec!r}, {svi.handle.n_features} features; "
            f"here {spec!r}, {x.shape[1]} features"
        )
    n = x.shape[0]
    est = importance_estimate(
        key_draws, svi.handle, svi.guide_params, x, n_draws, symmetrize=symmetrize
    )
    diag = dict(est["diagnostics"])
    for name in ("log_marginal_unsymmetrized", "elbo_symmetrized"):
        diag[name] = float(diag[name]) * n
    diag.update(elbo=est["elbo"] * n, elbo_stderr=est["elbo_stderr"] * n, guide=svi.guide)
    estimate, stderr = est["log_marginal"] * n, est["log_marginal_stderr"] * n
    if not np.isfinite(estimate):
        raise ValueError(
            "method 'importance': no finite importance weight from the guide's draws "
            f"(the guide's fit may have diverged); diagnostics {diag}"
        )
    return LogEvidence(float(estimate), float(stderr), "importance", diag)
