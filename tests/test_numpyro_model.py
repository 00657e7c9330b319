"""The NumPyro model's likelihood is the core log-likelihood, and agrees with NumPyro's
own mixture distributions."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from _bayes_helpers import faithful
from numpyro.infer.util import log_density

import jaxgmm
from jaxgmm.bayes.model import gmm_model
from jaxgmm.priors import make_prior, resolve_prior


def _params(cov_type, key=0, k=3, d=2):
    keys = jax.random.split(jax.random.key(key), 3)
    weights = jax.random.dirichlet(keys[0], jnp.ones(k) * 2.0)
    means = jax.random.normal(keys[1], (k, d)) * 2
    a = jax.random.normal(keys[2], (k, d, d))
    full = a @ jnp.swapaxes(a, -1, -2) + 0.5 * jnp.eye(d)
    cov = {
        "full": full,
        "tied": full[0],
        "diag": jnp.diagonal(full, axis1=1, axis2=2),
        "spherical": jnp.diagonal(full, axis1=1, axis2=2).mean(1),
    }[cov_type]
    return jaxgmm.params_from_covariances(weights, means, cov, cov_type), cov


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(5), (40, 2)) * 2.0


@pytest.mark.parametrize("cov_type", ["full", "tied", "diag", "spherical"])
def test_model_log_joint_is_core_log_likelihood_plus_prior(cov_type, x):
    params, _ = _params(cov_type)
    flat = jaxgmm.GMMSpec(3, cov_type, prior=make_prior("flat"))
    sites = flat.prior.site_values(params, flat)
    log_joint, trace = log_density(gmm_model, (x, flat), {}, sites)
    core_total = jnp.sum(jaxgmm.log_prob(x, params, flat))
    assert float(log_joint) == float(core_total)  # flat prior: exactly the likelihood
    assert float(trace["log_likelihood"]["fn"].log_factor) == float(core_total)
    conj = resolve_prior(jaxgmm.GMMSpec(3, cov_type, prior=make_prior("conjugate")), x)
    log_joint, _ = log_density(gmm_model, (x, conj), {}, conj.prior.site_values(params, conj))
    expected = core_total + conj.prior.log_density(params, conj)
    np.testing.assert_allclose(float(log_joint), float(expected), rtol=1e-12)


def test_agrees_with_numpyro_mixture_full(x):
    params, cov = _params("full")
    mixture = dist.MixtureSameFamily(
        dist.Categorical(probs=params.weights),
        dist.MultivariateNormal(params.means, covariance_matrix=cov),
    )
    spec = jaxgmm.GMMSpec(3, "full")
    np.testing.assert_allclose(jaxgmm.log_prob(x, params, spec), mixture.log_prob(x), rtol=1e-10)


def test_agrees_with_numpyro_mixture_diag(x):
    params, var = _params("diag")
    mixture = dist.MixtureSameFamily(
        dist.Categorical(probs=params.weights),
        dist.Normal(params.means, jnp.sqrt(var)).to_event(1),
    )
    spec = jaxgmm.GMMSpec(3, "diag")
    np.testing.assert_allclose(jaxgmm.log_prob(x, params, spec), mixture.log_prob(x), rtol=1e-10)


def test_model_without_prior_raises(x):
    with pytest.raises(ValueError, match="needs a prior.*flat"):
        log_density(gmm_model, (x, jaxgmm.GMMSpec(2, "full")), {}, {})


def test_unsupported_covariance_type_of_a_new_prior_raises():
    from jaxgmm.priors import Prior

    class FullOnly(Prior):
        name = "full_only"

    spec = jaxgmm.GMMSpec(2, "diag", prior=FullOnly())
    with pytest.raises(ValueError, match="full_only.*supports covariance_type in \\['full'\\]"):
        spec.prior.check(spec, 2)


def test_faithful_model_runs_in_float32_without_nan():
    x = jnp.asarray(faithful(), jnp.float32)
    spec = resolve_prior(jaxgmm.GMMSpec(2, "full", prior=make_prior("lkj")), x)
    params = jaxgmm.params_from_covariances(
        jnp.array([0.36, 0.64], jnp.float32),
        jnp.array([[2.0, 54.5], [4.3, 80.0]], jnp.float32),
        jnp.array([[[0.07, 0.44], [0.44, 33.7]], [[0.17, 0.94], [0.94, 36.0]]], jnp.float32),
        "full",
    )
    sites = spec.prior.site_values(params, spec)
    value, trace = log_density(gmm_model, (x, spec), {}, sites)
    assert np.isfinite(float(value))
    rebuilt = spec.prior.params_from_sites(sites, spec, 2, jnp.float32)
    assert all(leaf.dtype == jnp.float32 for leaf in rebuilt)
    assert trace["log_likelihood"]["fn"].log_factor.dtype == jnp.float32


def test_dirichlet_process_weights_site_in_the_model(x):
    """The stick-breaking prior keeps the one ``weights`` site: the model's log joint is
    the core log-likelihood plus log_density (Jacobian included), the site is on the
    simplex (so NumPyro's unconstrained transform applies), and seeded draws of the model
    are stick-breaking weights."""
    from numpyro import handlers
    from numpyro.distributions import constraints

    params, _ = _params("diag", k=4)
    prior = make_prior("conjugate", weight_concentration=0.5, weight_prior_type="dirichlet_process")
    spec = resolve_prior(jaxgmm.GMMSpec(4, "diag", prior=prior), x)
    sites = spec.prior.site_values(params, spec)
    log_joint, trace = log_density(gmm_model, (x, spec), {}, sites)
    expected = jnp.sum(jaxgmm.log_prob(x, params, spec)) + spec.prior.log_density(params, spec)
    np.testing.assert_allclose(float(log_joint), float(expected), rtol=1e-12)
    assert trace["weights"]["fn"].support is constraints.simplex

    @jax.jit
    @jax.vmap
    def draw(key):
        trace = handlers.trace(handlers.seed(gmm_model, rng_seed=key)).get_trace(x, spec)
        return trace["weights"]["value"]

    weights = draw(jax.random.split(jax.random.key(0), 3))
    assert weights.shape == (3, 4) and bool(jnp.all(weights >= 0))
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
