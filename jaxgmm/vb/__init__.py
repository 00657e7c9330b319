"""Closed-form mean-field variational Bayes (coordinate ascent) for the conjugate Gaussian
mixture, run by the same driver as EM, on EM's blocked statistics.

Public API:

* `VBPosterior`: the variational state, field for field scikit-learn's
  `BayesianGaussianMixture` fitted attributes (``weight_concentration`` (K,) or (2, K),
  ``mean_precision``, ``means``, ``degrees_of_freedom``, ``covariances``, ``prec_chol``).
* `fit_vb(key, x, spec, *, prior=None, max_iter=100, tol=1e-3, n_init=1, init="kmeans",
  init_posterior=None, update="exact", ...)` -> `jaxgmm.FitResult`: ``params`` the plug-in
  `GMMParams` (E_q weights, m_k, E_q precisions), ``trace.bound`` the complete ELBO per
  sample (``bound_name`` "elbo"), ``state.fitter_state`` the final `VBPosterior`.
* `vb_fitter(spec, tol=1e-3, update="exact", block_size=None)`: the `jaxgmm.Fitter`
  (state: `VBPosterior`; Info: `VBInfo`) for `jaxgmm.run_fitter`; ``spec.prior`` must be
  a resolved conjugate prior (`vb_spec`).
* `posterior_predictive_log_prob(posterior, x, spec)` (Student-t mixture, per sample),
  `n_active_components(posterior, spec, threshold=1e-2)`, `expected_weights`,
  `plugin_params`.
* ``update``: "exact" (default; coordinate ascent, ELBO monotone) or "sklearn"
  (scikit-learn's updates, the same as exact for full covariances; see docs/vb.md).
"""

from jaxgmm.vb.estimator import BayesianGaussianMixture
from jaxgmm.vb.families import VB_FAMILIES
from jaxgmm.vb.fitter import VBInfo, fit_vb, vb_fitter, vb_spec
from jaxgmm.vb.predictive import (
    mean_posterior_predictive_log_prob,
    n_active_components,
    posterior_predictive_log_prob,
)
from jaxgmm.vb.steps import (
    UPDATES,
    VBHyper,
    VBPosterior,
    elbo,
    elbo_terms,
    estep_log_prob,
    expected_log_weights,
    expected_weights,
    plugin_params,
    sklearn_lower_bound,
    vb_hyperparameters,
    vb_m_step,
)

__all__ = [
    "BayesianGaussianMixture",
    "UPDATES",
    "VBHyper",
    "VBInfo",
    "VBPosterior",
    "VB_FAMILIES",
    "elbo",
    "elbo_terms",
    "estep_log_prob",
    "expected_log_weights",
    "expected_weights",
    "fit_vb",
    "mean_posterior_predictive_log_prob",
    "n_active_components",
    "plugin_params",
    "posterior_predictive_log_prob",
    "sklearn_lower_bound",
    "vb_fitter",
    "vb_hyperparameters",
    "vb_m_step",
    "vb_spec",
]
