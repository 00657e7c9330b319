"""jaxgmm: one Gaussian-mixture spec, fitted by EM, gradient methods and NumPyro.

The top level holds what a researcher uses day to day; the subpackages hold the rest:
`jaxgmm.model` (spec, parameters, covariance families, the one density, statistics),
`jaxgmm.fit` (the fitter seam and the driver), `jaxgmm.em`, `jaxgmm.gradient`,
`jaxgmm.bayes`, `jaxgmm.vb` (closed-form variational Bayes), `jaxgmm.scale` (out-of-core
and online EM), `jaxgmm.priors` and `jaxgmm.saved` (the saved-model format; `load`).
"""

from jaxgmm import bayes, em, fit, gradient, model, priors, saved, scale, vb
from jaxgmm._cache import clear_cache
from jaxgmm.bayes import fit_nuts, fit_svi
from jaxgmm.bayes.evidence import EVIDENCE_METHODS, log_evidence
from jaxgmm.em import ConvergenceWarning, DegeneracyWarning, GaussianMixture, fit_em
from jaxgmm.fit import Degeneracy, FitResult, Fitter, RestartSummary, Trace, run_fitter
from jaxgmm.gradient import fit_gradient
from jaxgmm.model import (
    COVARIANCE_TYPES,
    INITIALIZERS,
    GMMParams,
    GMMSpec,
    aic,
    bic,
    covariances,
    initial_params,
    log_prob,
    mean_log_likelihood,
    n_parameters,
    params_from_covariances,
    params_from_precisions,
    precisions,
    sample,
)
from jaxgmm.priors import log_prior
from jaxgmm.saved import load
from jaxgmm.scale import fit_em_online, fit_em_out_of_core
from jaxgmm.vb import BayesianGaussianMixture, fit_vb

__all__ = [
    "BayesianGaussianMixture",
    "COVARIANCE_TYPES",
    "ConvergenceWarning",
    "Degeneracy",
    "DegeneracyWarning",
    "EVIDENCE_METHODS",
    "FitResult",
    "Fitter",
    "GMMParams",
    "GMMSpec",
    "GaussianMixture",
    "INITIALIZERS",
    "RestartSummary",
    "Trace",
    "aic",
    "bayes",
    "bic",
    "clear_cache",
    "covariances",
    "em",
    "fit",
    "fit_em",
    "fit_em_online",
    "fit_em_out_of_core",
    "fit_gradient",
    "fit_nuts",
    "fit_svi",
    "fit_vb",
    "gradient",
    "initial_params",
    "load",
    "log_evidence",
    "log_prior",
    "log_prob",
    "mean_log_likelihood",
    "model",
    "n_parameters",
    "params_from_covariances",
    "params_from_precisions",
    "precisions",
    "priors",
    "run_fitter",
    "sample",
    "saved",
    "scale",
    "vb",
]
