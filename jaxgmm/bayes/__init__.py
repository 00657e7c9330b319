"""Bayesian GMMs in NumPyro: the model (whose prior comes from `jaxgmm.priors`), SVI,
NUTS, tempered SMC, and posterior tools (relabelling, summaries, predictive density, WAIC)."""

from jaxgmm.bayes.model import gmm_model
from jaxgmm.bayes.nuts import NUTSResult, fit_nuts
from jaxgmm.bayes.posterior import (
    allocation_distance,
    allocation_probabilities,
    linear_assignment,
    log_predictive_density,
    posterior_mean_params,
    relabel,
    summarize,
    waic,
)
from jaxgmm.bayes.smc import SMCResult, fit_smc
from jaxgmm.bayes.svi import GUIDES, SVIResult, fit_svi, svi_fitter

__all__ = [
    "GUIDES",
    "NUTSResult",
    "SMCResult",
    "SVIResult",
    "allocation_distance",
    "allocation_probabilities",
    "fit_nuts",
    "fit_smc",
    "fit_svi",
    "gmm_model",
    "linear_assignment",
    "log_predictive_density",
    "posterior_mean_params",
    "relabel",
    "summarize",
    "svi_fitter",
    "waic",
]
