"""Initialisers: k-means against scikit-learn's KMeans, and each registry entry's contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import blobs
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

import jaxgmm
from jaxgmm import INITIALIZERS, GMMSpec


def test_kmeans_finds_the_same_partition_as_sklearn():
    x, _ = blobs(0, n_samples=300, n_components=4, spread=6.0)
    ours = jaxgmm.model.kmeans_labels(jax.random.key(0), jnp.asarray(x), 4)
    theirs = KMeans(4, n_init=10, random_state=0).fit(x).labels_
    assert adjusted_rand_score(theirs, np.asarray(ours)) > 0.99


def test_kmeans_plusplus_picks_distinct_points_spread_over_clusters():
    x, labels = blobs(1, n_samples=200, n_components=5, spread=20.0)
    idx = np.asarray(jaxgmm.model.kmeans_plusplus_indices(jax.random.key(1), jnp.asarray(x), 5))
    assert len(set(idx)) == 5
    assert len(set(labels[idx])) >= 4  # far-apart clusters are almost always all hit


def test_kmeans_survives_duplicated_points():
    x = jnp.ones((30, 2))
    labels = jaxgmm.model.kmeans_labels(jax.random.key(0), x, 3)
    assert labels.shape == (30,)


@pytest.mark.parametrize("method", sorted(INITIALIZERS))
@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_every_initializer_gives_valid_batched_params(method, covariance_type):
    x, _ = blobs(2, n_samples=60)
    spec = GMMSpec(3, covariance_type)
    params = jaxgmm.initial_params(jax.random.key(3), jnp.asarray(x), spec, method, n_init=4)
    assert params.weights.shape == (4, 3) and params.means.shape == (4, 3, 2)
    np.testing.assert_allclose(params.weights.sum(axis=1), 1.0, rtol=1e-6)
    for leaf in params:
        assert bool(jnp.all(jnp.isfinite(leaf)))
    if method != "kmeans":  # k-means restarts may legitimately agree on clear clusters
        assert not np.allclose(params.means[0], params.means[1]), "restarts are copies"


def test_random_from_data_means_are_data_points():
    x, _ = blobs(4, n_samples=50)
    params = jaxgmm.initial_params(
        jax.random.key(0), jnp.asarray(x), GMMSpec(3), "random_from_data"
    )
    for mean in np.asarray(params.means[0]):
        assert np.min(np.abs(x - mean).sum(axis=1)) < 1e-5


def test_unknown_initializer_lists_valid_names():
    with pytest.raises(ValueError, match="kmeans"):
        jaxgmm.initial_params(jax.random.key(0), jnp.ones((5, 2)), GMMSpec(2), "kmean")


def test_fit_em_result_fields_and_max_iter_zero():
    x, _ = blobs(5)
    spec = GMMSpec(3)
    start = jax.tree_util.tree_map(
        lambda a: a[0], jaxgmm.initial_params(jax.random.key(0), jnp.asarray(x), spec)
    )
    r = jaxgmm.fit_em(jax.random.key(0), x, spec, init=start, max_iter=0)
    assert r.n_iter == 0 and not r.converged and r.trace.iteration.size == 0
    np.testing.assert_allclose(r.params.means, start.means)
    r = jaxgmm.fit_em(jax.random.key(0), x, spec, init=start, max_iter=500, tol=1e-8)
    assert r.converged and r.n_iter == r.trace.iteration.size
    assert np.all(np.diff(r.trace.elapsed_s) >= 0) and r.compile_s >= 0 and r.run_s > 0
    assert r.bound_name == "em_bound" and r.fitter == "em"


@pytest.mark.parametrize("covariance_type", sorted(jaxgmm.model.COVARIANCE_FAMILIES))
def test_initial_m_step_is_blocked_but_exact(covariance_type, require_x64):
    """The initialisers' blocked M-step equals the plain M-step on the same responsibilities."""
    from jaxgmm.model.blocked import scatter_about
    from jaxgmm.model.covariance import get_family
    from jaxgmm.model.init import _params_from_resp

    x = jnp.asarray(blobs(6, n_samples=53, n_features=3)[0])
    spec = GMMSpec(3, covariance_type)
    resp = jax.random.dirichlet(jax.random.key(0), jnp.ones(3), (53,))
    means = (resp.T @ x) / resp.sum(0)[:, None]
    np.testing.assert_allclose(
        scatter_about(x, resp, means, spec, block_size=7),
        get_family(covariance_type).scatter(x, resp, means),
        rtol=1e-10,
    )
    ours = _params_from_resp(x, resp, spec)
    reference = jaxgmm.em.m_step(x, jnp.log(resp), spec)
    for a, b in zip(ours, reference):
        np.testing.assert_allclose(a, b, rtol=1e-9)
