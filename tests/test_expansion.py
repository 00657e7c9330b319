"""The expanded (matrix-product) Mahalanobis form of diag, spherical and tied
covariances, and the guard that keeps it to parameters where it is accurate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import dense_covariances
from scipy.stats import multivariate_normal

import jaxgmm
from jaxgmm.model.covariance import get_family, use_expansion

EXPANDABLE = ["diag", "spherical", "tied"]


def _params(covariance_type, dtype, seed=0, k=4, d=5, spread=3.0, scale=1.0):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=spread, size=(k, d))
    if covariance_type == "tied":
        a = rng.normal(size=(d, d)) / np.sqrt(d)
        cov = scale**2 * (a @ a.T + 0.5 * np.eye(d))
    elif covariance_type == "diag":
        cov = scale**2 * rng.uniform(0.5, 2.0, size=(k, d))
    else:
        cov = scale**2 * rng.uniform(0.5, 2.0, size=k)
    params = jaxgmm.params_from_covariances(np.full(k, 1.0 / k), means, cov, covariance_type)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)


def _reference_log_density(x, params, covariance_type):
    """float64 SciPy log N(x | mu_k, Sigma_k), (n, K)."""
    k, d = params.means.shape
    covs = dense_covariances(np.asarray(jaxgmm.covariances(params, covariance_type), np.float64),
                             covariance_type, k, d)
    means = np.asarray(params.means, np.float64)
    return np.stack([multivariate_normal(means[j], covs[j]).logpdf(x) for j in range(k)], axis=1)


@pytest.mark.parametrize("covariance_type", EXPANDABLE)
def test_expanded_equals_direct_when_allowed(covariance_type):
    params = _params(covariance_type, jnp.float64)
    family = get_family(covariance_type)
    xt = jnp.asarray(np.random.default_rng(1).normal(scale=3.0, size=(5, 300)))
    assert bool(use_expansion(family, params.means, params.prec_chol))
    expanded = family.mahalanobis_fm(xt, params.means, params.prec_chol, expanded=True)
    direct = family.mahalanobis_fm(xt, params.means, params.prec_chol, expanded=False)
    np.testing.assert_allclose(expanded, direct, rtol=1e-10, atol=1e-10)


@pytest.mark.numerics
@pytest.mark.parametrize("covariance_type", EXPANDABLE)
def test_guard_refuses_the_expansion_for_a_tight_far_component(covariance_type):
    # Components 1e-3 wide, 30 units from the data's centre: (30 / 1e-3)^2 ~ 1e9 standard
    # deviations squared, so float32's expansion would be off by ~1e2 in each term.
    params = _params(covariance_type, jnp.float32, spread=30.0, scale=1e-3)
    family = get_family(covariance_type)
    assert not bool(use_expansion(family, params.means, params.prec_chol))
    rng = np.random.default_rng(2)
    x = np.asarray(params.means, np.float64)[rng.integers(0, 4, 200)] + 1e-3 * rng.normal(size=(200, 5))
    reference = _reference_log_density(x, params, covariance_type)
    wlp = np.asarray(jaxgmm.model.weighted_log_prob(jnp.asarray(x, jnp.float32), params,
                                              jaxgmm.GMMSpec(4, covariance_type)))
    log_gauss = wlp - np.log(np.asarray(params.weights, np.float64))
    near = reference > reference.max(axis=1, keepdims=True) - 50  # where responsibilities live
    np.testing.assert_allclose(log_gauss[near], reference[near], atol=5e-2)
    # ... and the guard matters: the expanded form itself is far off here.
    expanded = family.mahalanobis_fm(jnp.asarray(x.T, jnp.float32), params.means, params.prec_chol,
                                     expanded=True)
    direct = family.mahalanobis_fm(jnp.asarray(x.T, jnp.float32), params.means, params.prec_chol)
    assert float(jnp.max(jnp.abs(expanded - direct))) > 1.0


def test_guard_is_false_for_nan_parameters():
    params = _params("diag", jnp.float64)
    means = params.means.at[0, 0].set(jnp.nan)
    assert not bool(use_expansion(get_family("diag"), means, params.prec_chol))


@pytest.mark.numerics
@pytest.mark.skipif(not jax.config.jax_enable_x64, reason="needs float64 for the reference")
def test_em_float32_matches_float64_with_a_collapsing_diag_component():
    # One tight cluster far from the rest: the guard must switch float32 EM to the direct
    # form, or float32 and float64 end ~0.4 nats per sample apart (measured).
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.normal(size=(3000, 4)) * 2.0,
        rng.normal(size=(1000, 4)) * 2.0 + 6.0,
        10.0 + 1e-3 * rng.normal(size=(1000, 4)),
    ])
    spec = jaxgmm.GMMSpec(3, "diag")
    init = jaxgmm.params_from_covariances(
        np.full(3, 1 / 3), np.array([[0.0] * 4, [6.0] * 4, [10.0] * 4]),
        np.array([[4.0] * 4, [4.0] * 4, [1e-4] * 4]), "diag")
    lls = {}
    for dtype in (jnp.float32, jnp.float64):
        params = jax.tree_util.tree_map(lambda a, dtype=dtype: jnp.asarray(a, dtype), init)
        res = jaxgmm.run_fitter(jaxgmm.em.em_fitter(spec, 0.0), jax.random.key(0),
                                jnp.asarray(x, dtype), params, spec, max_iter=30)
        final = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), res.params)
        lls[dtype] = float(jaxgmm.mean_log_likelihood(jnp.asarray(x), final, spec))
    assert abs(lls[jnp.float32] - lls[jnp.float64]) < 2e-5


@pytest.mark.skipif(not jax.config.jax_enable_x64, reason="compares to 1e-10")
def test_sequential_restarts_equal_vmapped_restarts(monkeypatch):
    from jaxgmm.fit import driver as _driver

    rng = np.random.default_rng(3)
    x = jnp.asarray(np.concatenate([rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 4]))
    spec = jaxgmm.GMMSpec(2, "diag")
    init = jaxgmm.initial_params(jax.random.key(1), x, spec, "random", 3)
    results = []
    for threshold in (10**12, 0):  # vmapped, then lax.map
        monkeypatch.setattr(_driver, "_SEQUENTIAL_RESTARTS_ELEMENTS", threshold)
        monkeypatch.setattr(_driver, "_COMPILED", {})  # recompile under this threshold
        assert _driver.restarts_run_sequentially(400, 2, spec) == (threshold == 0)
        fitter = jaxgmm.em.em_fitter(spec, 1e-4)
        results.append(jaxgmm.run_fitter(fitter, jax.random.key(0), x, init, spec, max_iter=20))
    np.testing.assert_allclose(results[0].restarts.log_likelihood, results[1].restarts.log_likelihood,
                               rtol=1e-10)
    np.testing.assert_array_equal(results[0].restarts.n_iter, results[1].restarts.n_iter)


@pytest.mark.numerics
@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_em_continues_with_both_forms_once_the_expansion_stops_holding(
    covariance_type, monkeypatch
):
    # The driver first compiles EM's steps with the expanded form alone (the guard holds
    # at these broad initial variances); the third cluster then collapses, the guard
    # fails, and the fit must go on with both forms, as if compiled with them from the
    # start. Forcing the expanded form instead ends ~0.06-0.3 nats per sample lower
    # (measured), so this data tells the two apart.
    from jaxgmm.fit import driver

    rng = np.random.default_rng(0)
    x = jnp.asarray(np.concatenate([
        rng.normal(size=(3000, 4)) * 2.0,
        rng.normal(size=(1000, 4)) * 2.0 + 6.0,
        10.0 + 1e-3 * rng.normal(size=(1000, 4)),
    ]), jnp.float32)
    spec = jaxgmm.GMMSpec(3, covariance_type)
    variances = np.full((3, 4), 4.0) if covariance_type == "diag" else np.full(3, 4.0)
    init = jaxgmm.params_from_covariances(
        np.full(3, 1 / 3), np.array([[0.0] * 4, [6.0] * 4, [10.0] * 4]), variances,
        covariance_type)
    init = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), init)
    assert bool(use_expansion(get_family(covariance_type), init.means, init.prec_chol))

    chunks = []  # expanded_only of every chunk the driver lowers
    chunk_function = driver._chunk_function
    monkeypatch.setattr(driver, "_chunk_function",
                        lambda *args: (chunks.append(args[4]), chunk_function(*args))[1])
    monkeypatch.setattr(driver, "_COMPILED", {})
    fitter = jaxgmm.em.em_fitter(spec, 0.0)
    results = {}
    for name, holds in [("default", fitter.hooks.expansion_holds), ("both forms", None),
                        ("expanded forced", lambda params: jnp.asarray(True))]:
        chunks.clear()
        variant = fitter._replace(hooks=fitter.hooks._replace(expansion_holds=holds))
        results[name] = jaxgmm.run_fitter(variant, jax.random.key(0), x, init, spec, max_iter=30)
        results[name + " chunks"] = list(chunks)
    assert results["default chunks"] == [True, False]
    assert results["both forms chunks"] == [False]
    default, both = results["default"], results["both forms"]
    assert default.n_iter == both.n_iter == 30
    for a, b in zip(jax.tree_util.tree_leaves(default.params), jax.tree_util.tree_leaves(both.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(default.trace.log_likelihood, both.trace.log_likelihood, rtol=1e-6)
    assert both.log_likelihood - results["expanded forced"].log_likelihood > 0.01
    # The late compile counts as compile time, not run time.
    assert default.compile_s > both.compile_s > 0


def test_em_compiles_only_the_expanded_form_while_it_holds(monkeypatch):
    from jaxgmm.fit import driver

    chunks = []
    chunk_function = driver._chunk_function
    monkeypatch.setattr(driver, "_chunk_function",
                        lambda *args: (chunks.append(args[4]), chunk_function(*args))[1])
    monkeypatch.setattr(driver, "_COMPILED", {})
    rng = np.random.default_rng(1)
    x = jnp.asarray(np.concatenate([rng.normal(size=(300, 3)), rng.normal(size=(300, 3)) + 3]))
    for covariance_type, expected in [("diag", [True]), ("tied", [True]), ("full", [False])]:
        chunks.clear()
        spec = jaxgmm.GMMSpec(2, covariance_type)
        init = jaxgmm.initial_params(jax.random.key(0), x, spec, "kmeans")
        result = jaxgmm.run_fitter(jaxgmm.em.em_fitter(spec, 1e-6), jax.random.key(0), x, init,
                                   spec, max_iter=50)
        assert result.converged
        assert chunks == expected, covariance_type  # full has no expanded form
