"""The NumPyro model of a `GMMSpec`: the prior's sample statements plus the core's one
log-likelihood as a factor, with the component assignments marginalised out."""

from __future__ import annotations

import numpyro

from jaxgmm.model.density import log_prob


def model_prior(spec, prior=None):
    """The prior to use: ``prior`` if given, else ``spec.prior``; ValueError if neither."""
    prior = spec.prior if prior is None else prior
    if prior is None:
        raise ValueError(
            "the NumPyro model needs a prior: set GMMSpec.prior (e.g. "
            "jaxgmm.priors.make_prior('flat') for the maximum-likelihood equivalent)"
        )
    return prior


def gmm_model(x, spec, prior=None):
    """NumPyro model: params ~ prior; log p(X | params) via `jaxgmm.log_prob`.

    Args:
        x: array of shape (n_samples, n_features).
        spec: `GMMSpec`.
        prior: a prior object (default ``spec.prior``) with resolved hyperparameters.

    Returns:
        The sampled `GMMParams`. The likelihood is the factor site ``"log_likelihood"``
        (a total over samples), so the model's log joint is log p(params) + log p(X | params).
    """
    prior = model_prior(spec, prior)
    params = prior.sample(spec, x.shape[-1], x.dtype)
    numpyro.factor("log_likelihood", log_prob(x, params, spec).sum())
    return params
