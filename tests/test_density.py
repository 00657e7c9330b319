"""The one log-density against SciPy, and its invariances."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import dense_covariances
from scipy.stats import multivariate_normal

import jaxgmm
from jaxgmm import GMMSpec
from jaxgmm.model import COVARIANCE_FAMILIES

pytestmark = pytest.mark.numerics


def random_params(seed, covariance_type, k=3, d=3, dtype=np.float64):
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(k))
    means = rng.normal(size=(k, d))
    a = rng.normal(size=(k, d, d))
    full = a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(d)
    cov = {
        "full": full,
        "tied": full[0],
        "diag": np.einsum("kdd->kd", full),
        "spherical": np.einsum("kdd->k", full) / d,
    }[covariance_type]
    params = jaxgmm.params_from_covariances(weights, means.astype(dtype), cov, covariance_type)
    return params, weights, means, cov


@pytest.mark.parametrize("covariance_type", sorted(COVARIANCE_FAMILIES))
def test_log_prob_matches_scipy(covariance_type, require_x64):
    k, d = 3, 3
    params, weights, means, cov = random_params(0, covariance_type, k, d)
    x = np.random.default_rng(1).normal(size=(50, d)) * 2
    dense = dense_covariances(cov, covariance_type, k, d)
    expected_components = np.stack(
        [np.log(weights[j]) + multivariate_normal(means[j], dense[j]).logpdf(x) for j in range(k)],
        axis=1,
    )
    spec = GMMSpec(k, covariance_type)
    wlp = np.asarray(jaxgmm.model.weighted_log_prob(jnp.asarray(x), params, spec))
    np.testing.assert_allclose(wlp, expected_components, rtol=1e-10)
    expected = np.logaddexp.reduce(expected_components, axis=1)
    np.testing.assert_allclose(np.asarray(jaxgmm.log_prob(x, params, spec)), expected, rtol=1e-10)
    np.testing.assert_allclose(
        float(jaxgmm.mean_log_likelihood(x, params, spec)), expected.mean(), rtol=1e-10
    )


@pytest.mark.parametrize("covariance_type", sorted(COVARIANCE_FAMILIES))
def test_covariance_precision_round_trip(covariance_type, require_x64):
    params, _, _, cov = random_params(2, covariance_type)
    np.testing.assert_allclose(jaxgmm.covariances(params, covariance_type), cov, rtol=1e-10)
    prec = jaxgmm.precisions(params, covariance_type)
    dense_cov = dense_covariances(cov, covariance_type, 3, 3)
    dense_prec = dense_covariances(np.asarray(prec), covariance_type, 3, 3)
    np.testing.assert_allclose(dense_prec @ dense_cov, np.broadcast_to(np.eye(3), (3, 3, 3)),
                               atol=1e-9)
    again = jaxgmm.params_from_precisions(params.weights, params.means, prec, covariance_type)
    np.testing.assert_allclose(again.prec_chol, params.prec_chol, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("covariance_type", sorted(COVARIANCE_FAMILIES))
def test_relabelling_components_leaves_likelihood_unchanged(covariance_type):
    params, *_ = random_params(3, covariance_type, dtype=np.float32)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(30, 3)), params.means.dtype)
    spec = GMMSpec(3, covariance_type)
    base = jaxgmm.log_prob(x, params, spec)
    for perm in itertools.permutations(range(3)):
        perm = np.array(perm)
        prec = params.prec_chol if covariance_type == "tied" else params.prec_chol[perm]
        permuted = jaxgmm.GMMParams(params.weights[perm], params.means[perm], prec)
        np.testing.assert_allclose(jaxgmm.log_prob(x, permuted, spec), base, rtol=1e-5)


def test_log_prob_is_finite_far_from_every_component():
    params, *_ = random_params(5, "full", dtype=np.float32)
    x = jnp.full((4, 3), 1e4, jnp.float32)
    out = jaxgmm.log_prob(x, params, GMMSpec(3, "full"))
    assert jnp.all(jnp.isfinite(out)) and jnp.all(out < -1e3)


def test_density_is_differentiable():
    params, *_ = random_params(6, "full")
    x = jnp.asarray(np.random.default_rng(7).normal(size=(20, 3)))
    grads = jax.grad(jaxgmm.mean_log_likelihood, argnums=1)(x, params, GMMSpec(3, "full"))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
