"""The model: `GMMSpec`, `GMMParams` and their conversions, the covariance families,
the one log-likelihood, sufficient statistics (in memory and in feature-major blocks),
sampling and the initialisers. Imports nothing else from jaxgmm."""

from jaxgmm.model.blocked import (
    Moments,
    accumulate_moments,
    block_moments,
    default_block_size,
    stats_from_moments,
)
from jaxgmm.model.covariance import (
    COVARIANCE_FAMILIES,
    CovarianceFamily,
    get_family,
    regularize_covariance,
)
from jaxgmm.model.density import log_prob, mean_log_likelihood, weighted_log_prob
from jaxgmm.model.init import (
    INITIALIZERS,
    initial_params,
    kmeans_labels,
    kmeans_plusplus_indices,
    resolve_init,
)
from jaxgmm.model.params import (
    GMMParams,
    abstract_params,
    aic,
    bic,
    covariances,
    dense_covariances,
    n_parameters,
    params_from_covariances,
    params_from_precisions,
    precisions,
)
from jaxgmm.model.sampling import sample
from jaxgmm.model.spec import COVARIANCE_TYPES, GMMSpec
from jaxgmm.model.stats import (
    SufficientStats,
    in_data_coordinates,
    ml_params_from_stats,
    sufficient_statistics,
)

__all__ = [
    "COVARIANCE_FAMILIES",
    "COVARIANCE_TYPES",
    "CovarianceFamily",
    "GMMParams",
    "GMMSpec",
    "INITIALIZERS",
    "Moments",
    "SufficientStats",
    "abstract_params",
    "accumulate_moments",
    "aic",
    "bic",
    "block_moments",
    "covariances",
    "default_block_size",
    "dense_covariances",
    "get_family",
    "in_data_coordinates",
    "initial_params",
    "kmeans_labels",
    "kmeans_plusplus_indices",
    "log_prob",
    "mean_log_likelihood",
    "ml_params_from_stats",
    "n_parameters",
    "params_from_covariances",
    "params_from_precisions",
    "precisions",
    "regularize_covariance",
    "resolve_init",
    "sample",
    "stats_from_moments",
    "sufficient_statistics",
    "weighted_log_prob",
]
