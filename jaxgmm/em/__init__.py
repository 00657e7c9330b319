"""Expectation-maximisation: the E-step, M-step and EM bound as pure functions, the EM
fitter over blocked (optionally sharded) data, `fit_em`, and the scikit-learn-style
`GaussianMixture` estimator."""

from jaxgmm.em.estimator import (
    ConvergenceWarning,
    DegeneracyWarning,
    GaussianMixture,
    NotFittedError,
)
from jaxgmm.em.fitter import EMInfo, EMState, em_fitter, fit_em
from jaxgmm.em.sharded import (
    data_mesh,
    process_local_data,
    shard_data,
    sharded_mean_log_likelihood,
    sharded_moments,
)
from jaxgmm.em.steps import e_step, em_bound, em_bound_from_stats, m_step, params_from_stats

__all__ = [
    "ConvergenceWarning",
    "DegeneracyWarning",
    "EMInfo",
    "EMState",
    "GaussianMixture",
    "NotFittedError",
    "data_mesh",
    "e_step",
    "em_bound",
    "em_bound_from_stats",
    "em_fitter",
    "fit_em",
    "m_step",
    "params_from_stats",
    "process_local_data",
    "shard_data",
    "sharded_mean_log_likelihood",
    "sharded_moments",
]
