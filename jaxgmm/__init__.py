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

# Gradient ML/MAP (issue 4).
from jaxgmm._gradient import (  # noqa: E402
    OPTIMIZERS,
    SCHEDULES,
    GradientInfo,
    GradientState,
    fit_gradient,
    gradient_fitter,
    make_optimizer,
)
from jaxgmm._unconstrained import (  # noqa: E402
    UnconstrainedParams,
    from_unconstrained,
    to_unconstrained,
)

__all__ += [
    "OPTIMIZERS", "SCHEDULES", "GradientInfo", "GradientState", "UnconstrainedParams",
    "fit_gradient", "from_unconstrained", "gradient_fitter", "make_optimizer",
    "to_unconstrained",
]

# Scale: blocked EM statistics, out-of-core EM, data-parallel sharding (README: Scale).
from jaxgmm._blocked import (  # noqa: E402
    Moments,
    accumulate_moments,
    block_moments,
    default_block_size,
    stats_from_moments,
)
from jaxgmm._out_of_core import fit_em_out_of_core, moments_from_host  # noqa: E402
from jaxgmm._sharding import (  # noqa: E402
    data_mesh,
    shard_data,
    sharded_mean_log_likelihood,
    sharded_moments,
)

__all__ += [
    "Moments", "accumulate_moments", "block_moments", "data_mesh", "default_block_size",
    "fit_em_out_of_core", "moments_from_host", "shard_data", "sharded_mean_log_likelihood",
    "sharded_moments", "stats_from_moments",
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
from jaxgmm._svi import GUIDES, SVIResult, fit_svi, svi_fitter  # noqa: E402

__all__ += [
    "GUIDES", "NUTSResult", "SVIResult", "fit_nuts", "fit_svi", "gmm_model",
    "linear_assignment", "log_predictive_density", "posterior_mean_params", "priors", "relabel",
    "summarize", "svi_fitter", "waic",
]
