"""Closed-form variational Bayes via `jaxgmm.vb.fit_vb` (coordinate ascent on the conjugate
model, run by the core driver) from the shared initial parameters; its config block is
``CONFIG`` (``vb`` in a config).

VB needs a prior (``Method.needs_prior``): the ``conjugate`` prior of ``model.prior``, or
its data-default form when ``model.prior`` is null, the same one SVI and NUTS get, so its
ELBO sits beside their ELBO and log p(X) estimates under one prior. The weights' prior
type (finite Dirichlet or truncated Dirichlet process) is the prior's
``weight_prior_type``, not a ``vb`` key, so that every method of a run fits one model.

Restarts (``init.n_init`` > 1): every shared start is run and the one with the highest
final ELBO is kept (scikit-learn keeps the highest lower bound); ``init.select`` is for
the point-estimate methods and does not apply (``extra["selection"]`` is "elbo").

What it reports:

- ``params``: the plug-in `GMMParams` at the variational posterior (E_q[weights], the
  means m_k, E_q[precision]^-1; scikit-learn's ``weights_``, ``means_``,
  ``covariances_``), a posterior summary, not a point estimate (no BIC/AIC); the runner's
  train / test log-likelihoods are plug-in values at it.
- trace: per iteration, the log-likelihood per sample at the plug-in parameters and the
  complete ELBO per sample (``bound_name="elbo"``: a lower bound on log p(X) / N with
  every constant, comparable with SVI's ELBO and its importance-sampling log p(X)).
- ``extra``: ``elbo`` (final), ``n_active_components`` (components whose E_q[weight]
  exceeds ``vb.n_active_threshold``; ``active_components`` says it in words for the
  table), ``largest_inactive_weight`` (None when all are active), ``inactive_components``
  (those with fewer than one expected sample: reported here, not as degeneracies, since
  emptying them is what a sparse weights prior is for), and, with a test
  split, ``log_predictive_density_test``: the held-out log posterior predictive density
  per sample (a mixture of Student-t distributions, Bishop 2006 eq. 10.81).
"""

from __future__ import annotations

import numpy as np

import jaxgmm
import jaxgmm.vb
from experiments.config_engine import Field, at_least, in_interval, one_of
from experiments.methods import Method, result_from_fit


def _postfix(infos):
    bound = np.asarray(infos.bound, dtype=np.float64)
    finite = bound[np.isfinite(bound)]
    return {} if not finite.size else {"elbo": f"{finite[-1]:.5f}"}


def run(context):
    settings = context.settings
    bar = context.progress(settings["max_iter"], "vb")
    try:
        fit = jaxgmm.vb.fit_vb(
            context.key,
            context.x,
            context.spec,
            max_iter=settings["max_iter"],
            tol=settings["tol"],
            init=context.init_params,
            update=settings["update"],
            callback=lambda done, infos: bar.update_to(done, **_postfix(infos)),
        )
    finally:
        bar.close()
    posterior = fit.state.fitter_state  # the final VBPosterior
    threshold = settings["n_active_threshold"]
    weights = np.asarray(fit.params.weights, np.float64)
    inactive = weights[weights <= threshold]
    bound = np.asarray(fit.trace.bound, np.float64)
    n_active = jaxgmm.vb.n_active_components(posterior, context.spec, threshold=threshold)
    extra = {
        "elbo": float(bound[-1]) if bound.size else None,
        "n_active_components": int(n_active),
        "n_active_threshold": threshold,
        "active_components": f"{n_active} of {weights.size} (E[weight] > {threshold:g})",
        "largest_inactive_weight": float(inactive.max()) if inactive.size else None,
        "weight_prior_type": context.spec.prior.weight_prior_type,
        "update": settings["update"],
        "params_summary": "plug-in at the variational posterior",
        # fit_vb keeps the restart with the highest final ELBO (as scikit-learn keeps the
        # highest lower bound), whatever init.select says for the point-estimate methods.
        "selection": "elbo",
    }
    if context.x_test is not None:
        extra["log_predictive_density_test"] = float(
            jaxgmm.vb.mean_posterior_predictive_log_prob(posterior, context.x_test, context.spec)
        )
    result = _inactive_not_degenerate(result_from_fit(fit, point_estimate=False, extra=extra))
    # The saved model is a BayesianGaussianMixture: it needs q, not only the plug-in params.
    result.fitted_state = jaxgmm.vb.VBPosterior(*(np.asarray(a) for a in posterior))
    return result


def _inactive_not_degenerate(result):
    """Emptying surplus components is what a sparse weights prior is for, so VB's empty
    components are reported as inactive (``extra["inactive_components"]``, beside
    ``n_active_components``), not as degeneracies; a collapsed covariance still is one."""

    def keep(found):
        return [d for d in found if d["kind"] != "empty_component"]

    empty = sorted(d["component"] for d in result.degeneracies if d["kind"] == "empty_component")
    result.degeneracies = keep(result.degeneracies)
    for row in result.restarts or []:
        if row.get("degeneracies") is not None:
            row["degeneracies"] = keep(row["degeneracies"])
            row["degenerate"] = bool(row["degeneracies"])
    result.extra["inactive_components"] = empty
    return result


def check(spec, settings, x):
    """Refuse a prior VB has no closed-form updates for (the core's ValueError says which
    prior it needs), before anything is fitted."""
    del settings
    jaxgmm.vb.vb_hyperparameters(spec, x.shape[1], x.dtype)


CONFIG = {
    "max_iter": Field(500, "int", at_least(1), "maximum VB (coordinate-ascent) iterations"),
    "tol": Field(
        1.0e-6, "float", at_least(0), "stop when the ELBO per sample gains less"
    ),
    "update": Field(
        "exact", "str", one_of(lambda: jaxgmm.vb.UPDATES),
        "exact: coordinate ascent for the conjugate model (monotone ELBO); sklearn: "
        "scikit-learn's BayesianGaussianMixture updates (differ for tied/diag/spherical)",
    ),
    "n_active_threshold": Field(
        1.0e-2, "float", in_interval(0.0, 1.0),
        "a component is active when its posterior mean weight exceeds this",
    ),
}  # fmt: skip


METHOD = Method(
    name="vb",
    run=run,
    doc="closed-form variational Bayes (conjugate prior): ELBO, active components, "
    "Student-t predictive",
    needs_prior=True,
    check=check,
    config=CONFIG,
)
