"""EM against scikit-learn's GaussianMixture as an oracle (float64, identical starts)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import blobs, iris, precisions_from_prec_chol
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import jaxgmm
from jaxgmm import GMMSpec
from jaxgmm.model import COVARIANCE_FAMILIES

pytestmark = pytest.mark.numerics


def shared_start(x, spec, seed):
    """Initial params from our k-means, handed to both implementations."""
    params = jaxgmm.initial_params(jax.random.key(seed), jnp.asarray(x), spec, "kmeans", 1)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a[0]), params)
    return params, precisions_from_prec_chol(params.prec_chol, spec.covariance_type)


@pytest.mark.parametrize("covariance_type", sorted(COVARIANCE_FAMILIES))
@pytest.mark.parametrize("dataset", ["iris", "blobs"])
def test_em_matches_sklearn_every_iteration(covariance_type, dataset, require_x64):
    x = iris() if dataset == "iris" else blobs(0, n_features=3)[0]
    spec = GMMSpec(3, covariance_type)
    start, precisions = shared_start(x, spec, seed=1)
    sk = SkGaussianMixture(
        3,
        covariance_type=covariance_type,
        tol=0.0,
        max_iter=40,
        weights_init=start.weights / start.weights.sum(),
        means_init=start.means,
        precisions_init=precisions,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk.fit(x)
    ours = jaxgmm.fit_em(jax.random.key(0), x, spec, init=start, max_iter=40, tol=0.0)
    assert ours.n_iter == sk.n_iter_
    np.testing.assert_allclose(ours.trace.log_likelihood, sk.lower_bounds_, rtol=1e-8)
    np.testing.assert_allclose(ours.params.weights, sk.weights_, rtol=1e-8)
    np.testing.assert_allclose(ours.params.means, sk.means_, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(
        ours.params.prec_chol, sk.precisions_cholesky_, rtol=1e-8, atol=1e-12
    )
    np.testing.assert_allclose(
        jaxgmm.covariances(ours.params, covariance_type), sk.covariances_, rtol=1e-8, atol=1e-12
    )
    np.testing.assert_allclose(ours.log_likelihood, sk.score(x), rtol=1e-8)


@pytest.mark.parametrize("covariance_type", sorted(COVARIANCE_FAMILIES))
def test_estimator_matches_sklearn_attributes(covariance_type, require_x64):
    x = iris()
    spec = GMMSpec(3, covariance_type)
    start, precisions = shared_start(x, spec, seed=2)
    kwargs = dict(
        covariance_type=covariance_type,
        tol=1e-6,
        max_iter=200,
        weights_init=start.weights / start.weights.sum(),
        means_init=start.means,
        precisions_init=precisions,
    )
    sk = SkGaussianMixture(3, **kwargs).fit(x)
    ours = jaxgmm.GaussianMixture(3, **kwargs).fit(x)
    assert ours.converged_ and sk.converged_ and ours.n_iter_ == sk.n_iter_
    np.testing.assert_allclose(ours.lower_bound_, sk.lower_bound_, rtol=1e-8)
    np.testing.assert_allclose(ours.lower_bounds_, sk.lower_bounds_, rtol=1e-8)
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        np.testing.assert_allclose(
            getattr(ours, name), getattr(sk, name), rtol=1e-7, atol=1e-10, err_msg=name
        )
    np.testing.assert_allclose(ours.score_samples(x), sk.score_samples(x), rtol=1e-8)
    np.testing.assert_allclose(ours.predict_proba(x), sk.predict_proba(x), atol=1e-8)
    np.testing.assert_array_equal(ours.predict(x), sk.predict(x))
    np.testing.assert_allclose(ours.bic(x), sk.bic(x), rtol=1e-8)
    np.testing.assert_allclose(ours.aic(x), sk.aic(x), rtol=1e-8)
    assert ours.lower_bound_ <= ours.log_likelihood_ + 1e-12


@pytest.mark.parametrize("covariance_type", sorted(COVARIANCE_FAMILIES))
@pytest.mark.parametrize("n_features", [1, 4])
def test_parameter_count_matches_sklearn(covariance_type, n_features):
    sk = SkGaussianMixture(5, covariance_type=covariance_type)
    sk.means_ = np.zeros((5, n_features))
    assert jaxgmm.n_parameters(GMMSpec(5, covariance_type), n_features) == sk._n_parameters()
