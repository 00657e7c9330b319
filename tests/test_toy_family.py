"""A fifth covariance family is one class plus one registry entry.

`SharedIsotropic` (Sigma_k = s^2 I for every component: one free covariance parameter)
is defined here and registered by monkeypatching `COVARIANCE_FAMILIES`; no jaxgmm module
is edited. EM, the gradient fitter, the estimator and scoring then run on it, checked
against SciPy and a NumPy M-step, and the generic family checks run on it too.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _family_checks import FAMILY_CHECKS
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import jaxgmm
from jaxgmm.model.covariance import (
    COVARIANCE_FAMILIES,
    CovarianceFamily,
    regularize_covariance,
    sum_squares_over_features,
)

NAME = "shared_isotropic"


class SharedIsotropic(CovarianceFamily):
    """One variance s^2 shared by all components: prec_chol = 1/s, shape (); the scatter
    is kept per feature, summed over components, shape (D,)."""

    name = NAME

    @staticmethod
    def prec_chol_shape(n_components, n_features):
        return ()

    @staticmethod
    def scatter_shape(n_components, n_features):
        return (n_features,)

    @staticmethod
    def n_parameters(n_components, n_features):
        return 1

    @staticmethod
    def dense(covariances, n_components, n_features):
        return covariances * np.ones((n_components, 1, 1)) * np.eye(n_features)

    @staticmethod
    def covariance_from_prec_chol(prec_chol):
        return 1.0 / jnp.square(prec_chol)

    @staticmethod
    def precision_from_prec_chol(prec_chol):
        return jnp.square(prec_chol)

    @staticmethod
    def prec_chol_from_covariance(cov):
        return jax.lax.rsqrt(cov)

    @staticmethod
    def prec_chol_from_precision(precision):
        return jnp.sqrt(precision)

    @staticmethod
    def add_to_diagonal(cov, value):
        return cov + value

    @staticmethod
    def min_eigenvalue(prec_chol, n_components):
        return jnp.broadcast_to(1.0 / jnp.square(prec_chol), (n_components,))

    @staticmethod
    def log_det_prec_chol(prec_chol, n_features):
        return n_features * jnp.log(prec_chol)

    @staticmethod
    def mahalanobis_fm(xt, means, prec_chol, expanded=False):
        return sum_squares_over_features((xt[None] - means[:, :, None]) * prec_chol)

    @staticmethod
    def paired_mahalanobis(points, means, prec_chol):
        return jnp.sum(jnp.square(points - means), axis=-1) * jnp.square(prec_chol)

    @staticmethod
    def scatter(x, resp, centers):
        diff = x[:, None, :] - centers[None, :, :]
        return jnp.einsum("nk,nkd->d", resp, jnp.square(diff))

    @staticmethod
    def second_moments_fm(resp, xt, means, expanded=False):
        diff = xt[None] - means[:, :, None]  # (K, D, n)
        weighted = resp[:, None, :] * diff
        return jnp.sum(weighted, axis=2), jnp.sum(weighted * diff, axis=(0, 2))

    @staticmethod
    def recentre_scatter(second, first, nk, delta):
        shift = jnp.sum(2.0 * first * delta - nk[:, None] * jnp.square(delta), axis=0)
        return jnp.maximum(second - shift, 0.0)

    @staticmethod
    def point_mass_scatter(counts, deltas):
        return jnp.einsum("k,kd->d", counts, jnp.square(deltas))

    @staticmethod
    def covariance_from_scatter(scatter, nk):
        return jnp.mean(scatter) / jnp.sum(nk)

    @staticmethod
    def trace_term(scatter, prec_chol):
        return jnp.sum(scatter) * jnp.square(prec_chol)

    @classmethod
    def decode_unconstrained(cls, cov_factor, reg_covar):
        cov = regularize_covariance(jnp.exp(2.0 * cov_factor), reg_covar, cls.name)
        return cls.prec_chol_from_covariance(cov)

    @classmethod
    def encode_unconstrained(cls, prec_chol, reg_covar):
        cov = cls.covariance_from_prec_chol(prec_chol)
        excess = regularize_covariance(cov, -reg_covar, cls.name)
        return 0.5 * jnp.log(jnp.maximum(excess, jnp.sqrt(jnp.finfo(cov.dtype).eps) * cov))

    @staticmethod
    def sample_noise(z, prec_chol, labels):
        return z / prec_chol

    @staticmethod
    def permute_components(prec_chol, perms):
        return prec_chol

    @classmethod
    def check_precisions(cls, precisions, name):
        if np.any(precisions <= 0):
            raise ValueError(f"{name} must be positive for covariance_type={cls.name!r}")


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(COVARIANCE_FAMILIES, NAME, SharedIsotropic)
    yield NAME
    jaxgmm.clear_cache()  # compiled functions keyed by a spec of the toy family


def _data():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [6.0, 1.0], [1.0, 7.0]])
    labels = rng.integers(3, size=300)
    return jnp.asarray(centers[labels] + 1.3 * rng.normal(size=(300, 2)))


def _scipy_log_prob(x, params):
    """log sum_k w_k N(x | mu_k, s^2 I), by hand with SciPy."""
    var = float(1.0 / np.square(params.prec_chol))
    d = x.shape[1]
    per_component = [
        np.log(w) + multivariate_normal(m, var * np.eye(d)).logpdf(np.asarray(x))
        for w, m in zip(np.asarray(params.weights), np.asarray(params.means), strict=True)
    ]
    return logsumexp(np.stack(per_component, axis=1), axis=1)


def _numpy_em_step(x, params, reg_covar):
    """One EM step for the shared isotropic family, written from the formulas."""
    x = np.asarray(x)
    var = float(1.0 / np.square(params.prec_chol))
    log_r = np.stack(
        [
            np.log(w) + multivariate_normal(m, var * np.eye(x.shape[1])).logpdf(x)
            for w, m in zip(np.asarray(params.weights), np.asarray(params.means), strict=True)
        ],
        axis=1,
    )
    resp = np.exp(log_r - logsumexp(log_r, axis=1, keepdims=True))
    nk = resp.sum(axis=0) + 10 * np.finfo(np.float64).eps
    means = resp.T @ x / nk[:, None]
    sq = np.square(x[:, None, :] - means[None]).sum(axis=-1)
    var = np.sum(resp * sq) / (nk.sum() * x.shape[1]) + reg_covar
    return nk / nk.sum(), means, var


def test_spec_accepts_a_registered_family_only(toy):
    assert jaxgmm.GMMSpec(3, toy).covariance_type == toy
    with pytest.raises(ValueError, match=NAME):
        jaxgmm.GMMSpec(3, "not_a_family")


def test_spec_refuses_the_toy_family_when_unregistered():
    with pytest.raises(ValueError, match="covariance_type"):
        jaxgmm.GMMSpec(3, NAME)


@pytest.mark.parametrize("check", FAMILY_CHECKS, ids=lambda c: c.__name__)
def test_generic_family_checks(toy, check, require_x64):
    check(toy)


def test_scoring_matches_scipy(toy, require_x64):
    x = _data()
    spec = jaxgmm.GMMSpec(3, toy)
    params = jaxgmm.GMMParams(
        weights=jnp.asarray([0.2, 0.5, 0.3]),
        means=jnp.asarray([[0.0, 1.0], [5.0, 0.0], [1.0, 6.0]]),
        prec_chol=jnp.asarray(1.0 / 1.7),
    )
    expected = _scipy_log_prob(x, params)
    np.testing.assert_allclose(jaxgmm.log_prob(x, params, spec), expected, rtol=1e-10)
    np.testing.assert_allclose(
        jaxgmm.mean_log_likelihood(x, params, spec), expected.mean(), rtol=1e-10
    )
    assert jaxgmm.n_parameters(spec, 2) == 2 + 6 + 1


def test_em_on_the_toy_family(toy, require_x64):
    x = _data()
    spec = jaxgmm.GMMSpec(3, toy, reg_covar=1e-6)
    result = jaxgmm.fit_em(jax.random.key(0), x, spec, max_iter=200, tol=1e-10)
    ll = np.asarray(result.trace.log_likelihood)
    assert ll.size >= 2 and np.all(np.diff(ll) >= -1e-10)  # EM never decreases it
    params = result.params
    assert params.prec_chol.shape == ()
    np.testing.assert_allclose(
        result.log_likelihood, _scipy_log_prob(x, params).mean(), rtol=1e-8
    )
    # One EM step from a rough start, by jaxgmm and by NumPy from the formulas, agree.
    start = jaxgmm.GMMParams(
        weights=jnp.full((3,), 1.0 / 3.0),
        means=jnp.asarray([[1.0, 1.0], [4.0, 2.0], [2.0, 5.0]]),
        prec_chol=jnp.asarray(0.5),
    )
    again = jaxgmm.fit_em(jax.random.key(1), x, spec, init=start, max_iter=1, tol=0.0)
    assert again.n_iter == 1
    weights, means, var = _numpy_em_step(x, start, spec.reg_covar)
    np.testing.assert_allclose(again.params.weights, weights, rtol=1e-8)
    np.testing.assert_allclose(again.params.means, means, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(1.0 / np.square(again.params.prec_chol), var, rtol=1e-8)
    # The true generating variance is 1.3^2.
    assert abs(float(1.0 / np.square(params.prec_chol)) - 1.3**2) < 0.2


def test_gradient_fitter_reaches_the_em_optimum(toy, require_x64):
    x = _data()
    spec = jaxgmm.GMMSpec(3, toy)
    em = jaxgmm.fit_em(jax.random.key(0), x, spec, max_iter=300, tol=1e-12)
    grad = jaxgmm.fit_gradient(jax.random.key(0), x, spec, max_steps=300)
    assert grad.params.prec_chol.shape == ()
    assert np.all(np.isfinite(np.asarray(grad.trace.log_likelihood)))
    np.testing.assert_allclose(grad.log_likelihood, em.log_likelihood, atol=1e-6)
    np.testing.assert_allclose(
        jaxgmm.mean_log_likelihood(x, grad.params, spec),
        _scipy_log_prob(x, grad.params).mean(),
        rtol=1e-10,
    )


def test_estimator_and_sampling_on_the_toy_family(toy, require_x64):
    x = np.asarray(_data())
    gm = jaxgmm.GaussianMixture(3, covariance_type=toy, random_state=0).fit(x)
    assert gm.covariances_.shape == ()
    np.testing.assert_allclose(
        gm.score(x),
        _scipy_log_prob(x, jaxgmm.GMMParams(gm.weights_, gm.means_, gm.precisions_cholesky_)).mean(),
        rtol=1e-8,
    )
    spec = jaxgmm.GMMSpec(1, toy)
    params = jaxgmm.GMMParams(jnp.ones(1), jnp.asarray([[1.0, -2.0]]), jnp.asarray(0.5))
    samples, labels = jaxgmm.sample(jax.random.key(0), params, spec, 20000)
    assert samples.shape == (20000, 2) and np.all(np.asarray(labels) == 0)
    np.testing.assert_allclose(np.cov(np.asarray(samples).T), 4.0 * np.eye(2), atol=0.15)
