"""Blocked, out-of-core and sharded EM against in-memory EM, naive statistics and
scikit-learn (float64), and float32 against float64."""

import json
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgmm
from jaxgmm.em.steps import e_step
from jaxgmm.model.stats import sufficient_statistics

FAMILIES = sorted(jaxgmm.model.COVARIANCE_FAMILIES)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

needs_x64 = pytest.mark.skipif(not jax.config.jax_enable_x64, reason="needs float64")


def _data(n=1500, d=4, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, d)) * 4 + 10.0  # away from the origin on purpose
    labels = rng.integers(0, 3, n)
    return centers[labels] + rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.5


def _kmeans_init(x, spec, seed=1):
    params = jaxgmm.initial_params(jax.random.key(seed), jnp.asarray(x), spec, "kmeans", 1)
    return jax.tree_util.tree_map(lambda a: a[0], params)


@needs_x64
@pytest.mark.parametrize("cov", FAMILIES + ["full-whitened"])
def test_blocked_em_matches_sklearn(cov, monkeypatch):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    block_size = 97  # 15 blocks and a tail
    if cov == "full-whitened":
        # The float32 path (moments and M-step in the whitened frame), forced in float64
        # so scikit-learn can check it; its own block size keeps its compiled code apart.
        monkeypatch.setattr(jaxgmm.model.blocked, "WHITENED_FRAME_MIN_EPS", 0.0)
        cov, block_size = "full", 96
        assert jaxgmm.model.blocked.uses_whitened_frame(jaxgmm.GMMSpec(3, cov), jnp.float64)
    x = _data()
    init = GaussianMixture(3, covariance_type=cov, max_iter=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        init.fit(x)
        ref = GaussianMixture(
            3, covariance_type=cov, max_iter=10, tol=0, weights_init=init.weights_,
            means_init=init.means_, precisions_init=init.precisions_,
        ).fit(x)
    spec = jaxgmm.GMMSpec(3, cov)
    params = jaxgmm.params_from_precisions(init.weights_, init.means_, init.precisions_, cov)
    fitter = jaxgmm.em.em_fitter(spec, 0.0, block_size=block_size)
    res = jaxgmm.run_fitter(fitter, jax.random.key(0), jnp.asarray(x), params, spec, max_iter=10)
    # sklearn's lower_bound_ is the log-likelihood of the last iteration's E-step.
    np.testing.assert_allclose(res.trace.log_likelihood[-1], ref.lower_bound_, rtol=1e-8)
    for ours, theirs in zip(res.params, (ref.weights_, ref.means_, ref.precisions_cholesky_)):
        np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-8, atol=1e-8 * np.abs(theirs).max())


@needs_x64
@pytest.mark.parametrize("cov", FAMILIES)
@pytest.mark.parametrize("block_size", [7, 10**4])
def test_blocked_statistics_equal_naive(cov, block_size):
    x = jnp.asarray(_data(n=700))
    spec = jaxgmm.GMMSpec(3, cov)
    params = _kmeans_init(x, spec)
    moments = jaxgmm.model.accumulate_moments(x, params, spec, block_size)
    ll, stats = jaxgmm.model.stats_from_moments(moments, params, spec)
    assert stats.frame is None  # float64: data coordinates (float32 full: whitened frame)
    stats = jaxgmm.model.in_data_coordinates(stats, spec)
    ll_ref, log_resp = e_step(x, params, spec)  # the unblocked reference functions
    ref = sufficient_statistics(x, log_resp, spec)
    np.testing.assert_allclose(ll, ll_ref, rtol=1e-12)
    assert stats.frame is None and ref.frame is None
    for name in ref._fields[:-1]:  # all but frame
        atol = 1e-9 * float(np.max(np.abs(getattr(ref, name))))
        if name == "sum_resp_log_resp":
            # Derived as Q(params) - log p(X | params), not summed: its rounding is
            # relative to those totals (here sum r log r is ~1e-5 against Q ~ -7000).
            atol = 1e-12 * x.shape[0] * (1 + abs(float(ll_ref)))
        np.testing.assert_allclose(
            getattr(stats, name), getattr(ref, name), rtol=1e-9, atol=atol, err_msg=name
        )


@needs_x64
@pytest.mark.parametrize("cov", FAMILIES + ["full-whitened"])
def test_derived_sum_resp_log_resp_equals_direct_sum(cov, monkeypatch):
    # Blocked EM derives sum r log r from Q(params) - log p(X | params); against the
    # direct sum over samples, on overlapping components where it is large.
    if cov == "full-whitened":
        monkeypatch.setattr(jaxgmm.model.blocked, "WHITENED_FRAME_MIN_EPS", 0.0)
        cov = "full"
    x = jnp.asarray(np.random.default_rng(4).normal(size=(900, 3)) * 2.0 + 5.0)
    spec = jaxgmm.GMMSpec(3, cov)
    params = jax.tree_util.tree_map(
        lambda a: a[0], jaxgmm.initial_params(jax.random.key(2), x, spec, "random", 1)
    )
    _, stats = jaxgmm.model.stats_from_moments(jaxgmm.model.accumulate_moments(x, params, spec, 100), params, spec)
    _, log_resp = e_step(x, params, spec)
    resp = jnp.exp(log_resp)
    direct = float(jnp.sum(jnp.where(resp > 0, resp * log_resp, 0.0)))
    assert direct < -100  # the entropy term is not negligible here
    np.testing.assert_allclose(float(stats.sum_resp_log_resp), direct, rtol=1e-10)


@needs_x64
@pytest.mark.parametrize("cov", FAMILIES)
def test_memmap_em_equals_in_memory(cov, tmp_path):
    x = _data(n=2003)
    path = tmp_path / "x.npy"
    np.save(path, x)
    spec = jaxgmm.GMMSpec(3, cov)
    params = _kmeans_init(x, spec)
    mem = jaxgmm.run_fitter(
        jaxgmm.em.em_fitter(spec, 0.0), jax.random.key(0), jnp.asarray(x), params, spec, max_iter=6
    )
    ooc = jaxgmm.fit_em_out_of_core(
        jax.random.key(0), path, spec, init=params, max_iter=6, tol=0.0, block_size=256
    )
    assert ooc.n_iter == mem.n_iter
    np.testing.assert_allclose(ooc.trace.log_likelihood, mem.trace.log_likelihood, rtol=1e-12)
    np.testing.assert_allclose(ooc.log_likelihood, mem.log_likelihood, rtol=1e-12)
    for a, b in zip(ooc.params, mem.params):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    # EM never decreases the log-likelihood.
    assert np.all(np.diff(ooc.trace.log_likelihood) > -1e-10)


def test_out_of_core_named_init_and_bad_input(tmp_path):
    x = _data(n=800).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    spec = jaxgmm.GMMSpec(3, "diag")
    res = jaxgmm.fit_em_out_of_core(jax.random.key(0), path, spec, init_subsample=300, max_iter=20)
    assert res.params.means.dtype == jnp.float32 and np.isfinite(res.log_likelihood)
    with pytest.raises(ValueError, match="no such file"):
        jaxgmm.fit_em_out_of_core(jax.random.key(0), tmp_path / "missing.npy", spec)
    with pytest.raises(ValueError, match="2D"):
        jaxgmm.fit_em_out_of_core(jax.random.key(0), np.zeros(5), spec)
    with pytest.raises(ValueError, match="block_size"):
        jaxgmm.em.em_fitter(spec, 1e-3, block_size=0)
    bad = x.copy()
    bad[500, 1] = np.nan
    with pytest.raises(ValueError, match="row 500"):
        jaxgmm.fit_em_out_of_core(jax.random.key(0), bad, spec, init_subsample=100, max_iter=2)


def test_default_block_size_bounds():
    assert jaxgmm.model.default_block_size(10, 3, 2) == 10
    for n, k, d in [(10**6, 16, 16), (10**5, 8, 8), (10**7, 1, 1), (10**6, 256, 128)]:
        for cov in FAMILIES:
            b = jaxgmm.model.default_block_size(n, k, d, cov)
            assert 256 <= b <= 8192 and b & (b - 1) == 0
            assert b * k * (d + 1) <= 2**23 or b == 256


def test_compile_options_change_nothing_but_speed():
    # EM's step for full covariances is compiled with XLA:CPU's classic emitters
    # (`DriverHooks.compile_options`); the same fit compiled without them, and with an option
    # this jaxlib does not have (dropped), must give the same numbers.
    from jaxgmm.fit import driver as _driver

    x = jnp.asarray(_data(n=600, d=3, seed=5))
    spec = jaxgmm.GMMSpec(3, "full")
    fitter = jaxgmm.em.em_fitter(spec, 0.0)
    assert fitter.hooks.compile_options
    init = _kmeans_init(x, spec)

    def fit(f):
        return jaxgmm.run_fitter(f, jax.random.key(0), x, init, spec, max_iter=5)

    reference = fit(fitter)
    for options in [(), (("no_such_xla_option_anywhere", 1),)]:
        other = fit(fitter._replace(hooks=fitter.hooks._replace(compile_options=options)))
        # Equal up to summation order (the emitters may vectorise reductions differently).
        np.testing.assert_allclose(other.trace.log_likelihood, reference.trace.log_likelihood, rtol=1e-6)
        np.testing.assert_allclose(other.params.prec_chol, reference.params.prec_chol, rtol=1e-5)
    with pytest.raises(TypeError):  # other compile errors are not swallowed
        _driver._compile(jax.jit(lambda a: a + 1).lower(1.0), (("xla_cpu_use_fusion_emitters", object()),))


@needs_x64
@pytest.mark.parametrize("cov", ["full", "tied", "diag"])
def test_float32_matches_float64(cov):
    # The target: float32 within 2e-5 nats per sample of float64 from the same
    # initialisation, both sets of final parameters scored by the one float64 density.
    x = _data(n=40000, d=8, seed=3)
    spec = jaxgmm.GMMSpec(4, cov)
    p64 = _kmeans_init(x, spec)
    p32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), p64)
    fitter = jaxgmm.em.em_fitter(spec, 0.0)
    r64 = jaxgmm.run_fitter(fitter, jax.random.key(0), jnp.asarray(x), p64, spec, max_iter=30)
    r32 = jaxgmm.run_fitter(
        fitter, jax.random.key(0), jnp.asarray(x, jnp.float32), p32, spec, max_iter=30
    )
    assert r32.params.means.dtype == jnp.float32
    as64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), r32.params)
    scored32 = float(jaxgmm.mean_log_likelihood(jnp.asarray(x), as64, spec))
    assert abs(scored32 - r64.log_likelihood) < 2e-5
    assert abs(r32.log_likelihood - r64.log_likelihood) < 2e-5  # its own float32 score too


@pytest.mark.parametrize(
    "families", ["full,tied,diag", pytest.param(",".join(FAMILIES), marks=pytest.mark.slow)]
)
def test_sharded_equals_single_device(families):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "_sharded_check.py"), families],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("n_shards") == 4
    assert len(out) == 6 * len(families.split(",")) + 2 * ("full" in families.split(","))
    for name, diff in out.items():
        assert diff < 1e-10, (name, diff)


@needs_x64
@pytest.mark.parametrize("cov", FAMILIES)
def test_blocked_log_prob_and_gradient_equal_unblocked(cov, monkeypatch):
    import jaxgmm.model.density as density

    x = jnp.asarray(_data(n=1001))
    spec = jaxgmm.GMMSpec(3, cov)
    params = _kmeans_init(x, spec)
    grad = jax.grad(jaxgmm.mean_log_likelihood, argnums=1)
    whole, g_whole = jaxgmm.log_prob(x, params, spec), grad(x, params, spec)
    monkeypatch.setattr(density, "_BLOCK_ELEMENTS", 100)  # 6-25 rows per block + a tail
    blocked, g_blocked = jaxgmm.log_prob(x, params, spec), grad(x, params, spec)
    np.testing.assert_allclose(blocked, whole, rtol=1e-12)
    for a, b in zip(g_blocked, g_whole):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


# --- issue 16: no non-finite result, clear errors --------------------------------------


def _iris_scaled(scale):
    from sklearn.datasets import load_iris

    data = load_iris()
    return (data.data * scale).astype(np.float32), data.target


def _class_params(x, labels, cov):
    """Per-class float64 moments as float32 `GMMParams` (built in NumPy, so that the
    float32 cast is the only rounding even with x64 off)."""
    x64 = x.astype(np.float64)
    means = np.stack([x64[labels == k].mean(0) for k in range(3)])
    covs = np.stack([np.cov(x64[labels == k].T) for k in range(3)]) + 1e-3 * np.eye(4) * (
        x64.std() ** 2
    )
    chol = np.linalg.cholesky(covs)
    prec_chol = np.swapaxes(np.linalg.inv(chol), -1, -2)  # upper: precision = P P^T
    diag = np.sqrt(1 / np.einsum("kdd->kd", covs))
    factor = {"full": prec_chol, "diag": diag}[cov]
    return jaxgmm.GMMParams(
        np.full(3, 1 / 3, np.float32), means.astype(np.float32), factor.astype(np.float32)
    )


def test_out_of_core_max_iter_zero_returns_the_initial_parameters(require_x64):
    """Issue 16 defect 7: max_iter=0 is accepted, so it must return the start."""
    from scipy.stats import multivariate_normal

    x = _data(n=200, d=2)
    spec = jaxgmm.GMMSpec(2, "full")
    params = jaxgmm.params_from_covariances(
        np.array([0.4, 0.6]), x[:2], np.stack([np.eye(2)] * 2), "full"
    )
    res = jaxgmm.fit_em_out_of_core(jax.random.key(0), x, spec, init=params, max_iter=0)
    assert res.n_iter == 0 and res.trace.iteration.size == 0 and not res.converged
    assert res.status == "max_iter" and res.nonfinite_iteration is None
    assert res.restarts.status.tolist() == ["max_iter"] and res.best_overall_restart == 0
    np.testing.assert_array_equal(np.asarray(res.params.means), np.asarray(params.means))
    dens = sum(w * multivariate_normal(m, np.eye(2)).pdf(x) for w, m in zip([0.4, 0.6], x[:2]))
    np.testing.assert_allclose(res.log_likelihood, np.mean(np.log(dens)), rtol=1e-10)


def test_out_of_core_without_a_finite_state_raises():
    """Issue 16 defects 3 and 7: iris x 1e20 in float32 (squares overflow) returned NaN
    parameters and log-likelihood; now a ValueError says why and what to do."""
    x, labels = _iris_scaled(1e20)
    spec = jaxgmm.GMMSpec(3, "full")
    with pytest.raises(ValueError, match=r"init='kmeans' are not finite in float32.*standardise"):
        jaxgmm.fit_em_out_of_core(jax.random.key(0), x, spec, max_iter=5)
    # Finite initial parameters whose log-likelihood already overflows (diag, 1e19).
    x, labels = _iris_scaled(1e19)
    init = _class_params(x, labels, "diag")
    with pytest.raises(ValueError, match=r"fit_em_out_of_core: .*not finite in float32"):
        jaxgmm.fit_em_out_of_core(jax.random.key(0), x, jaxgmm.GMMSpec(3, "diag"), init=init)


def test_out_of_core_float64_values_overflowing_float32_are_named():
    """Issue 16 defect 4: finite float64 data beyond float32's range were cast to inf."""
    x = _data(n=60, d=2)
    x[41, 1] = 1e39
    with pytest.raises(ValueError, match=r"x has values that overflow float32 .*row 41, column 1"):
        jaxgmm.fit_em_out_of_core(
            jax.random.key(0), x, jaxgmm.GMMSpec(2, "diag"), dtype=np.float32, max_iter=1
        )


def test_out_of_core_checks_the_initial_parameters():
    """Issue 16 defect 8: invalid given parameters get the argument's name."""
    x = _data(n=60, d=2)
    spec = jaxgmm.GMMSpec(2, "diag")
    bad = jaxgmm.GMMParams(np.array([0.5, 0.6]), x[:2], np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"init\.weights must sum to 1"):
        jaxgmm.fit_em_out_of_core(jax.random.key(0), x, spec, init=bad)
    bad = jaxgmm.GMMParams(np.array([0.5, 0.5]), x[:2], np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"init\.prec_chol .*positive"):
        jaxgmm.fit_em_out_of_core(jax.random.key(0), x, spec, init=bad)
