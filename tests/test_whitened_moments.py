"""Full covariances: blocked EM accumulates its second moments in each component's
whitened frame and takes the M-step there (`SufficientStats.frame`), so float32 keeps
the narrow directions of an ill-conditioned covariance.

The problem below is the one that showed it: a component whose covariance has condition
number 1e6 (a narrow direction, not along an axis) lying far from the other component.
A data-coordinate scatter in float32 loses ~eps * 1e6 of that direction, and EM then
drifts or even decreases the likelihood by ~1e-4 nats per sample."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgmm
from jaxgmm.em.steps import params_from_stats
from jaxgmm.model import blocked as _blocked
from jaxgmm.model.blocked import accumulate_moments, stats_from_moments, uses_whitened_frame
from jaxgmm.model.stats import ml_params_from_stats, sufficient_statistics


def _ill_conditioned_data(n_per=20_000, seed=0):
    rng = np.random.default_rng(seed)
    d = 4
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    narrow = rotation @ np.diag([2.0, 1.0, 0.5, 2e-6]) @ rotation.T  # condition number 1e6
    a = rng.multivariate_normal(np.zeros(d), narrow, size=n_per)
    b = rng.multivariate_normal(np.full(d, 12.0), np.eye(d), size=n_per)
    return np.concatenate([a, b]) + 100.0  # away from the origin too


def _cast(params, dtype):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)


@pytest.fixture(scope="module")
def converged():
    if not jax.config.jax_enable_x64:
        pytest.skip("needs JAX_ENABLE_X64=1")
    x = _ill_conditioned_data()
    spec = jaxgmm.GMMSpec(2, "full", reg_covar=1e-9)
    res = jaxgmm.fit_em(jax.random.key(0), jnp.asarray(x), spec, tol=0.0, max_iter=60)
    return x, spec, res.params


def test_which_dtypes_use_the_frame():
    full, diag = jaxgmm.GMMSpec(2, "full"), jaxgmm.GMMSpec(2, "diag")
    assert uses_whitened_frame(full, jnp.float32) and uses_whitened_frame(full, jnp.bfloat16)
    assert not uses_whitened_frame(full, np.float64)
    assert not uses_whitened_frame(diag, jnp.float32)


def test_the_problem_is_ill_conditioned(converged):
    _, spec, params = converged
    eig = np.linalg.eigvalsh(np.asarray(jaxgmm.covariances(params, "full")))
    assert np.max(eig[:, -1] / eig[:, 0]) > 1e5


def test_float32_em_step_matches_float64(converged):
    """One EM step from the same (converged) parameters: float32 and float64 land on
    parameters whose float64 log-likelihoods agree to 1e-5 nats per sample (measured
    1.3e-6, about what rounding the means ~112 to float32 costs in a direction 1.4e-3
    wide; a data-coordinate scatter was 2e-3 off), and the float32 precision factor is
    the float64 one up to a near-identity factor (it was 6% off)."""
    x, spec, params = converged
    score = lambda p: float(jaxgmm.mean_log_likelihood(jnp.asarray(x), _cast(p, jnp.float64), spec))
    steps = {}
    for dtype in (jnp.float64, jnp.float32):
        p = _cast(params, dtype)
        _, stats = stats_from_moments(accumulate_moments(jnp.asarray(x, dtype), p, spec), p, spec)
        assert (stats.frame is not None) == (dtype == jnp.float32)  # float64: data coordinates
        steps[dtype] = params_from_stats(stats, spec)
    assert abs(score(steps[jnp.float32]) - score(steps[jnp.float64])) < 1e-5
    p64 = np.asarray(steps[jnp.float64].prec_chol)
    p32 = np.asarray(steps[jnp.float32].prec_chol, np.float64)
    relative = np.linalg.solve(p64, p32)  # identity if equal
    assert np.max(np.abs(relative - np.eye(4))) < 1e-3


def test_float32_em_is_monotone_and_ends_at_float64(converged):
    x, spec, _ = converged
    lls = {}
    for dtype in (jnp.float64, jnp.float32):
        res = jaxgmm.fit_em(jax.random.key(0), jnp.asarray(x, dtype), spec, tol=0.0, max_iter=40)
        lls[dtype] = np.asarray(res.trace.log_likelihood, np.float64)
        final = float(jaxgmm.mean_log_likelihood(jnp.asarray(x), _cast(res.params, jnp.float64), spec))
        lls[dtype, "final"] = final
    # Before the whitened frame: 7e-4 apart, and float32 EM dropped by up to 0.016.
    assert abs(lls[jnp.float32, "final"] - lls[jnp.float64, "final"]) < 2e-5
    # The float32 trace is evaluated in float32 (rounding ~1e-6 per sample), so allow that.
    assert np.all(np.diff(lls[jnp.float32]) > -5e-6)


def test_whitened_statistics_equal_data_coordinates(converged, monkeypatch):
    """Converting the whitened statistics back gives the unblocked reference statistics,
    and the whitened M-step gives the data-coordinate M-step (float64, whitened on request)."""
    x, spec, params = converged
    monkeypatch.setattr(_blocked, "WHITENED_FRAME_MIN_EPS", 0.0)
    xj = jnp.asarray(x)
    _, stats = stats_from_moments(accumulate_moments(xj, params, spec, block_size=999), params, spec)
    _, log_resp = jaxgmm.em.e_step(xj, params, spec)
    ref = sufficient_statistics(xj, log_resp, spec)
    data = jaxgmm.model.in_data_coordinates(stats, spec)
    assert data.frame is None
    np.testing.assert_allclose(data.scatter, ref.scatter, rtol=1e-7, atol=1e-9 * np.abs(ref.scatter).max())
    np.testing.assert_allclose(data.means, ref.means, rtol=1e-10)
    whitened = ml_params_from_stats(stats, spec)
    plain = ml_params_from_stats(data, spec)
    np.testing.assert_allclose(whitened.prec_chol, plain.prec_chol, rtol=1e-6, atol=1e-8)
    # The bound from whitened statistics equals the bound from data-coordinate ones.
    b1 = jaxgmm.em.em_bound_from_stats(stats, whitened, spec)
    b2 = jaxgmm.em.em_bound_from_stats(data, whitened, spec)
    assert abs(float(b1) - float(b2)) < 1e-9


def test_prior_m_step_receives_data_coordinates(converged, monkeypatch):
    """A prior's em_m_step is handed data-coordinate statistics (frame None)."""
    x, spec, params = converged
    monkeypatch.setattr(_blocked, "WHITENED_FRAME_MIN_EPS", 0.0)
    seen = {}

    class Recording:
        def em_m_step(self, stats, spec):
            seen["frame"] = stats.frame
            return ml_params_from_stats(stats, spec)

    _, stats = stats_from_moments(accumulate_moments(jnp.asarray(x), params, spec), params, spec)
    assert stats.frame is not None
    params_from_stats(stats, dataclasses.replace(spec, prior=Recording()))
    assert seen["frame"] is None


@pytest.mark.parametrize("x_dtype, params_dtype", [(jnp.float32, jnp.float64), (jnp.float64, jnp.float32)])
def test_mixed_dtypes_choose_one_frame(converged, x_dtype, params_dtype):
    """float32 data with float64 parameters (or the reverse) give float64 moments; the
    block kernel and `stats_from_moments` must agree on the frame."""
    x, spec, params = converged
    p = _cast(params, params_dtype)
    _, stats = stats_from_moments(accumulate_moments(jnp.asarray(x, x_dtype), p, spec), p, spec)
    _, ref = stats_from_moments(accumulate_moments(jnp.asarray(x), params, spec), params, spec)
    got = jaxgmm.model.in_data_coordinates(stats, spec)
    assert got.scatter.dtype == jnp.float64
    np.testing.assert_allclose(got.scatter, ref.scatter, rtol=1e-3, atol=1e-4 * np.abs(ref.scatter).max())


def test_empty_component_with_a_narrow_frame_gets_reg_covar():
    """A component that loses all its points (nk = 0) while its frame is ill-conditioned
    (condition number 3e6, a rotated narrow direction): the whitened float32 M-step still
    gives a finite covariance of reg_covar * I, as the data-coordinate step does."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 3))
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    covs = np.stack([np.eye(3), np.eye(3), rotation @ np.diag([3.0, 1.0, 1e-6]) @ rotation.T])
    means = np.array([[0.0, 0, 0], [1, 0, 0], [500, 500, 500]])  # the third is far from all
    spec = jaxgmm.GMMSpec(3, "full", reg_covar=1e-6)
    params = jaxgmm.params_from_covariances(np.full(3, 1 / 3), means, covs, "full")
    p = _cast(params, jnp.float32)
    _, stats = stats_from_moments(accumulate_moments(jnp.asarray(x, jnp.float32), p, spec), p, spec)
    assert stats.frame is not None and float(stats.nk[2]) == 0.0
    new = params_from_stats(stats, spec)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in new)
    cov = np.asarray(jaxgmm.covariances(_cast(new, jnp.float64), "full"))[2]
    np.testing.assert_allclose(cov, 1e-6 * np.eye(3), rtol=1e-3, atol=1e-9)
