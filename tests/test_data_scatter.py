"""Tied covariances' scatter from the samples' own scatter (`DataScatter`, taken once per
fit), checked against NumPy / SciPy references and against the per-block scatter."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import jaxgmm
from jaxgmm.model.blocked import (
    DataScatter,
    accumulate_moments_fm,
    blocks_data_scatter,
    feature_major_blocks,
    spec_blocks,
)
from jaxgmm.model.covariance import get_family, use_expansion

needs_x64 = pytest.mark.skipif(not jax.config.jax_enable_x64, reason="needs float64")
K, D = 3, 4


def _mixture(n, offset=0.0, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3.0, size=(K, D)) + offset
    a = rng.normal(size=(D, D)) / np.sqrt(D)
    cov = a @ a.T + 0.5 * np.eye(D)
    labels = rng.integers(0, K, n)
    x = means[labels] + rng.multivariate_normal(np.zeros(D), cov, n)
    return x, means, cov


def _reference_moments(x, weights, means, cov):
    """float64 (nk, first, scatter about the means) from SciPy's densities, no jaxgmm."""
    log_p = np.stack(
        [np.log(w) + multivariate_normal(m, cov).logpdf(x) for w, m in zip(weights, means)], axis=1
    )
    resp = np.exp(log_p - logsumexp(log_p, axis=1, keepdims=True))
    diff = x[:, None, :] - means[None]  # (n, K, D)
    nk = resp.sum(axis=0)
    first = np.einsum("nk,nkd->kd", resp, diff)
    scatter = np.einsum("nk,nkd,nke->de", resp, diff, diff)
    return nk, first, scatter


@needs_x64
def test_data_scatter_about_any_point_over_parts():
    # Two parts (as two devices would hold), padded tails of weight 0: their sum shifted
    # to a point c equals sum_n (x_n - c)(x_n - c)^T.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, D)) * 2.0 + 50.0
    parts = [blocks_data_scatter(feature_major_blocks(jnp.asarray(p), 96)) for p in (x[:613], x[613:])]
    both = DataScatter(*[jnp.concatenate(fields) for fields in zip(*parts)])
    assert both.count.shape == (2,) and both.scatter.shape == (2, D, D)
    center = np.array([49.0, 51.0, 50.5, 48.0])
    expected = (x - center).T @ (x - center)
    np.testing.assert_allclose(both.about(jnp.asarray(center)), expected, rtol=1e-12)


def test_spec_blocks_attach_it_for_tied_only():
    x = jnp.asarray(_mixture(200)[0], jnp.float32)
    for cov in jaxgmm.model.COVARIANCE_FAMILIES:
        data = spec_blocks(x, jaxgmm.GMMSpec(K, cov))
        assert (data.data_scatter is not None) == (cov == "tied"), cov


@needs_x64
@pytest.mark.parametrize("tight_far", [False, True], ids=["from_data_scatter", "refused"])
def test_tied_moments_equal_scipy_reference(tight_far):
    # Both branches of accumulate_moments_fm: the scatter from the DataScatter (where
    # the expansion is allowed) and each block's own (a component 1e-7 wide, far from the
    # centre, where float64's expansion guard refuses).
    x, means, cov = _mixture(1003)
    if tight_far:
        cov = cov * 1e-14
    weights = np.array([0.2, 0.3, 0.5])
    params = jaxgmm.params_from_covariances(weights, means, cov, "tied")
    spec = jaxgmm.GMMSpec(K, "tied")
    assert bool(use_expansion(get_family("tied"), params.means, params.prec_chol)) != tight_far
    data = spec_blocks(jnp.asarray(x), spec, block_size=128)  # 8 blocks, padded tail
    moments = accumulate_moments_fm(data, params, spec)
    nk, first, scatter = _reference_moments(x, weights, means, cov)
    np.testing.assert_allclose(moments.nk, nk, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(moments.first, first, rtol=1e-9, atol=1e-8)
    np.testing.assert_allclose(moments.second, scatter, rtol=1e-10, atol=1e-8)


@pytest.mark.numerics
def test_float32_scatter_from_data_scatter_is_as_accurate_as_per_block():
    # Data 100 units from the origin, means spread ~3 (risk ~ 60 under the guard's limit):
    # the subtraction from the samples' scatter must keep float32's digits, no worse
    # than the per-block scatter, against float64 NumPy.
    x, means, cov = _mixture(20_000, offset=100.0, seed=1)
    x = x.astype(np.float32).astype(np.float64)  # the samples float32 holds
    weights = np.full(K, 1.0 / K)
    spec = jaxgmm.GMMSpec(K, "tied")
    params = jaxgmm.params_from_covariances(
        jnp.asarray(weights, jnp.float32), jnp.asarray(means, jnp.float32),
        jnp.asarray(cov, jnp.float32), "tied",
    )
    assert bool(use_expansion(get_family("tied"), params.means, params.prec_chol))
    data = spec_blocks(jnp.asarray(x, jnp.float32), spec)
    from_data = accumulate_moments_fm(data, params, spec).second
    per_block = accumulate_moments_fm(data._replace(data_scatter=None), params, spec).second
    means32 = np.asarray(params.means, np.float64)
    cov32 = np.asarray(jaxgmm.covariances(params, "tied"), np.float64)
    _, _, scatter = _reference_moments(x, np.asarray(params.weights, np.float64), means32, cov32)

    def error(second):
        return np.abs(np.asarray(second, np.float64) - scatter).max() / np.abs(scatter).max()

    assert error(from_data) < 1e-5
    assert error(from_data) < 3 * error(per_block) + 1e-6


@needs_x64
def test_vb_pass_from_data_scatter_equals_per_block_scatter():
    # VB's pass (accumulate_vb_moments) under a posterior from one VB update: the
    # scatter from the DataScatter equals each block's own (the per-block path is what
    # tests/test_vb.py checks against scikit-learn), and so do the other sums.
    from jaxgmm.priors import ConjugatePrior
    from jaxgmm.vb.steps import accumulate_vb_moments, vb_hyperparameters, vb_m_step

    x, means, cov = _mixture(1003, offset=20.0, seed=2)
    spec = jaxgmm.GMMSpec(K, "tied", prior=ConjugatePrior())
    spec = dataclasses.replace(spec, prior=spec.prior.with_data_defaults(x, K))
    params = jaxgmm.params_from_covariances(np.full(K, 1.0 / K), means, cov, "tied")
    data = spec_blocks(jnp.asarray(x), spec, block_size=128)
    stats = jaxgmm.model.stats_from_moments(accumulate_moments_fm(data, params, spec), params, spec)[1]
    posterior = vb_m_step(stats, spec, vb_hyperparameters(spec, D, jnp.float64))
    from_data = accumulate_vb_moments(data, posterior, spec)
    per_block = accumulate_vb_moments(data._replace(data_scatter=None), posterior, spec)
    scale = np.abs(np.asarray(per_block.moments.second)).max()
    assert scale > 1.0
    np.testing.assert_allclose(from_data.moments.second, per_block.moments.second, rtol=1e-11, atol=1e-11 * scale)
    for got, expected in zip(jax.tree_util.tree_leaves(from_data), jax.tree_util.tree_leaves(per_block)):
        np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-9)
