"""jaxgmm: one Gaussian-mixture spec, fitted by EM, gradient methods and NumPyro."""

from jaxgmm import priors
from jaxgmm._blocked import (
    Moments,
    accumulate_moments,
    block_moments,
    default_block_size,
    stats_from_moments,
)
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
    in_data_coordinates,
    m_step,
    sufficient_statistics,
)
from jaxgmm._estimator import ConvergenceWarning, DegeneracyWarning, GaussianMixture
from jaxgmm._fit import fit_em
from jaxgmm._fitter import Fitter
from jaxgmm._gradient import (
    OPTIMIZERS,
    SCHEDULES,
    GradientInfo,
    GradientState,
    fit_gradient,
    gradient_fitter,
    make_optimizer,
)
from jaxgmm._init import INITIALIZERS, initial_params, kmeans_labels, kmeans_plusplus_indices
from jaxgmm._numpyro_model import gmm_model
from jaxgmm._nuts import NUTSResult, fit_nuts
from jaxgmm._online import (
    OnlineEMInfo,
    OnlineEMState,
    fit_em_online,
    online_em_init,
    online_em_step,
)
from jaxgmm._out_of_core import fit_em_out_of_core, moments_from_host
from jaxgmm._params import (
    GMMParams,
    covariances,
    n_parameters,
    params_from_covariances,
    params_from_precisions,
    precisions,
)
from jaxgmm._posterior import (
    linear_assignment,
    log_predictive_density,
    posterior_mean_params,
    relabel,
    summarize,
    waic,
)
from jaxgmm._sample import sample
from jaxgmm._sharding import (
    data_mesh,
    shard_data,
    sharded_mean_log_likelihood,
    sharded_moments,
)
from jaxgmm._spec import COVARIANCE_TYPES, GMMSpec
from jaxgmm._svi import GUIDES, SVIResult, fit_svi, svi_fitter
from jaxgmm._unconstrained import (
    UnconstrainedParams,
    from_unconstrained,
    to_unconstrained,
)

__all__ = [
    "COVARIANCE_FAMILIES",
    "COVARIANCE_TYPES",
    "ConvergenceWarning",
    "Degeneracy",
    "DegeneracyWarning",
    "EMInfo",
    "EMState",
    "FitResult",
    "Fitter",
    "GMMParams",
    "GMMSpec",
    "GUIDES",
    "GaussianMixture",
    "GradientInfo",
    "GradientState",
    "INITIALIZERS",
    "Moments",
    "NUTSResult",
    "OPTIMIZERS",
    "OnlineEMInfo",
    "OnlineEMState",
    "RestartSummary",
    "SCHEDULES",
    "SVIResult",
    "SufficientStats",
    "Trace",
    "UnconstrainedParams",
    "accumulate_moments",
    "block_moments",
    "component_diagnostics",
    "covariances",
    "data_mesh",
    "default_block_size",
    "e_step",
    "em_bound",
    "em_bound_from_stats",
    "em_fitter",
    "fit_em",
    "fit_em_online",
    "fit_em_out_of_core",
    "fit_gradient",
    "fit_nuts",
    "fit_svi",
    "from_unconstrained",
    "gmm_model",
    "gradient_fitter",
    "in_data_coordinates",
    "initial_params",
    "kmeans_labels",
    "kmeans_plusplus_indices",
    "linear_assignment",
    "log_predictive_density",
    "log_prob",
    "m_step",
    "make_optimizer",
    "mean_log_likelihood",
    "moments_from_host",
    "n_parameters",
    "online_em_init",
    "online_em_step",
    "params_from_covariances",
    "params_from_precisions",
    "posterior_mean_params",
    "precisions",
    "priors",
    "regularize_covariance",
    "relabel",
    "run_fitter",
    "sample",
    "shard_data",
    "sharded_mean_log_likelihood",
    "sharded_moments",
    "stats_from_moments",
    "sufficient_statistics",
    "summarize",
    "svi_fitter",
    "to_unconstrained",
    "waic",
    "weighted_log_prob",
]
