"""jaxgmm: one Gaussian-mixture spec, fitted by EM, gradient methods and NumPyro."""

from jaxgmm._covariance import COVARIANCE_FAMILIES, regularize_covariance
from jaxgmm._density import log_prob, mean_log_likelihood, weighted_log_prob
from jaxgmm._driver import (
    Degeneracy,
    FitResult,
    RestartSummary,
    Trace,
    component_diagnostics,
    run_fitter,
)
from jaxgmm._em import (
    EMInfo,
    EMState,
    SufficientStats,
    e_step,
    em_bound,
    em_bound_from_stats,
    em_fitter,
    m_step,
    sufficient_statistics,
)
from jaxgmm._estimator import ConvergenceWarning, DegeneracyWarning, GaussianMixture
from jaxgmm._fit import fit_em
from jaxgmm._fitter import Fitter
from jaxgmm._init import INITIALIZERS, initial_params, kmeans_labels, kmeans_plusplus_indices
from jaxgmm._params import (
    GMMParams,
    covariances,
    n_parameters,
    params_from_covariances,
    params_from_precisions,
    precisions,
)
from jaxgmm._sample import sample
from jaxgmm._spec import COVARIANCE_TYPES, GMMSpec

__all__ = [
    "COVARIANCE_FAMILIES", "COVARIANCE_TYPES", "INITIALIZERS", "ConvergenceWarning",
    "Degeneracy", "DegeneracyWarning", "GaussianMixture", "EMInfo",
    "EMState", "FitResult", "Fitter", "GMMParams", "GMMSpec", "RestartSummary",
    "SufficientStats", "Trace", "component_diagnostics", "covariances", "e_step", "em_bound",
    "em_bound_from_stats", "em_fitter", "fit_em", "initial_params", "kmeans_labels",
    "kmeans_plusplus_indices", "log_prob", "m_step", "mean_log_likelihood", "n_parameters",
    "params_from_covariances", "params_from_precisions", "precisions", "regularize_covariance",
    "run_fitter", "sample", "sufficient_statistics", "weighted_log_prob",
]

# Bayesian GMM on the same spec (NumPyro): prior registry, model, SVI, NUTS, posterior tools.
from jaxgmm import priors  # noqa: E402
from jaxgmm._numpyro_model import gmm_model  # noqa: E402
from jaxgmm._nuts import NUTSResult, fit_nuts  # noqa: E402
from jaxgmm._posterior import (  # noqa: E402
    linear_assignment,
    log_predictive_density,
    posterior_mean_params,
    relabel,
    summarize,
    waic,
)
from jaxgmm._svi import GUIDES, OPTIMIZERS, SVIResult, fit_svi, svi_fitter  # noqa: E402

__all__ += [
    "GUIDES", "NUTSResult", "OPTIMIZERS", "SVIResult", "fit_nuts", "fit_svi", "gmm_model",
    "linear_assignment", "log_predictive_density", "posterior_mean_params", "priors", "relabel",
    "summarize", "svi_fitter", "waic",
]
