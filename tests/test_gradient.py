"""Gradient ML/MAP: the unconstrained parameterisation, the objective (the shared
density), the fitter under the shared driver, optimiser registry and bad input."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest
from _helpers import dense_covariances
from sklearn.datasets import load_iris

import jaxgmm
from jaxgmm.gradient.fitter import (
    OPTIMIZERS,
    SCHEDULES,
    fit_gradient,
    gradient_fitter,
    make_optimizer,
    objective,
    objective_and_grad,
)
from jaxgmm.gradient.unconstrained import (
    UnconstrainedParams,
    from_unconstrained,
    to_unconstrained,
)
from jaxgmm.model.covariance import COVARIANCE_FAMILIES
from jaxgmm.priors import log_prior

FAITHFUL = Path(__file__).resolve().parents[1] / "experiments" / "data" / "faithful.csv"


def _float():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _iris():
    return jnp.asarray(load_iris().data, _float())


def _faithful():
    return jnp.asarray(np.loadtxt(FAITHFUL, delimiter=",", skiprows=1), _float())


DATASETS = {"iris": (_iris, 3), "faithful": (_faithful, 2)}


def _unbatch(params):
    return jax.tree_util.tree_map(lambda a: a[0], params)


def _random_params(seed, spec, n_features, dtype):
    """Valid parameters with Sigma - reg_covar I comfortably positive definite."""
    rng = np.random.default_rng(seed)
    k, d = spec.n_components, n_features
    weights = rng.dirichlet(np.ones(k))
    means = rng.normal(size=(k, d))
    if spec.covariance_type in ("full", "tied"):
        n_mats = k if spec.covariance_type == "full" else 1
        a = rng.normal(size=(n_mats, d, d))
        cov = a @ np.swapaxes(a, -1, -2) + 0.1 * np.eye(d)
        cov = cov if spec.covariance_type == "full" else cov[0]
    elif spec.covariance_type == "diag":
        cov = rng.uniform(0.1, 3.0, size=(k, d))
    else:
        cov = rng.uniform(0.1, 3.0, size=(k,))
    return jaxgmm.params_from_covariances(
        jnp.asarray(weights, dtype),
        jnp.asarray(means, dtype),
        jnp.asarray(cov, dtype),
        spec.covariance_type,
    )


# --------------------------------------------------------------------------- transform


def test_every_covariance_family_has_a_transform():
    for family in COVARIANCE_FAMILIES.values():
        assert callable(family.encode_unconstrained), family.name
        assert callable(family.decode_unconstrained), family.name


@pytest.mark.numerics
@pytest.mark.parametrize("covariance_type", sorted(COVARIANCE_FAMILIES))
def test_params_round_trip(covariance_type):
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    rtol = 1e-9 if dtype == jnp.float64 else 2e-4
    spec = jaxgmm.GMMSpec(3, covariance_type, reg_covar=1e-3)
    params = _random_params(0, spec, 4, dtype)
    back = from_unconstrained(to_unconstrained(params, spec), spec)
    for name, a, b in zip(params._fields, params, back, strict=False):
        assert b.dtype == dtype, name
        np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol, err_msg=name)


@pytest.mark.numerics
@pytest.mark.parametrize("covariance_type", sorted(COVARIANCE_FAMILIES))
def test_decoder_matches_numpy_reference_and_inverts(covariance_type):
    """from_unconstrained against an independent NumPy construction of
    softmax / L L^T + reg I, and to_unconstrained inverts it on centred logits."""
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    rtol = 1e-9 if dtype == jnp.float64 else 1e-4
    k, d, reg = 3, 4, 1e-2
    spec = jaxgmm.GMMSpec(k, covariance_type, reg_covar=reg)
    rng = np.random.default_rng(1)
    shape = COVARIANCE_FAMILIES[covariance_type].prec_chol_shape(k, d)
    raw = rng.normal(scale=0.5, size=shape)
    if covariance_type in ("full", "tied"):
        raw = np.tril(raw)  # the canonical representative (upper part is ignored)
    logits = rng.normal(size=k)
    logits -= logits.mean()
    u = UnconstrainedParams(
        jnp.asarray(logits, dtype),
        jnp.asarray(rng.normal(size=(k, d)), dtype),
        jnp.asarray(raw, dtype),
    )
    params = from_unconstrained(u, spec)

    expected_w = np.exp(logits) / np.exp(logits).sum()
    if covariance_type in ("full", "tied"):
        lower = np.tril(raw, -1) + np.exp(np.diagonal(raw, axis1=-2, axis2=-1))[..., None] * np.eye(
            d
        )
        expected_cov = lower @ np.swapaxes(lower, -1, -2) + reg * np.eye(d)
    else:
        expected_cov = np.exp(2 * raw) + reg
    np.testing.assert_allclose(params.weights, expected_w, rtol=rtol)
    np.testing.assert_allclose(
        jaxgmm.covariances(params, covariance_type), expected_cov, rtol=rtol, atol=rtol
    )
    again = to_unconstrained(params, spec)
    for name, a, b in zip(u._fields, u, again, strict=False):
        np.testing.assert_allclose(b, a, rtol=10 * rtol, atol=10 * rtol, err_msg=name)


@pytest.mark.parametrize("covariance_type", sorted(COVARIANCE_FAMILIES))
def test_upper_triangle_is_ignored_and_covariances_stay_above_reg_covar(covariance_type):
    spec = jaxgmm.GMMSpec(2, covariance_type, reg_covar=1e-4)
    shape = COVARIANCE_FAMILIES[covariance_type].prec_chol_shape(2, 3)
    raw = jnp.asarray(np.random.default_rng(2).normal(size=shape)) - 30.0  # tiny excess
    u = UnconstrainedParams(jnp.zeros(2), jnp.zeros((2, 3)), raw)
    params = from_unconstrained(u, spec)
    cov = dense_covariances(jaxgmm.covariances(params, covariance_type), covariance_type, 2, 3)
    assert np.linalg.eigvalsh(cov).min() >= 1e-4 * (1 - 1e-6)
    if covariance_type in ("full", "tied"):
        moved = u._replace(cov_factor=raw + jnp.triu(jnp.ones(shape), k=1) * 7.0)
        np.testing.assert_array_equal(from_unconstrained(moved, spec).prec_chol, params.prec_chol)


@pytest.mark.parametrize("covariance_type", sorted(COVARIANCE_FAMILIES))
def test_collapsed_component_encodes_finitely(require_x64, covariance_type):
    """k-means++ starts every covariance at exactly reg_covar I (zero excess)."""
    x = _iris()
    spec = jaxgmm.GMMSpec(3, covariance_type)
    params = _unbatch(jaxgmm.initial_params(jax.random.key(0), x, spec, "k-means++"))
    u = to_unconstrained(params, spec)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in u)
    back = from_unconstrained(u, spec)
    np.testing.assert_allclose(
        jaxgmm.covariances(back, covariance_type),
        jaxgmm.covariances(params, covariance_type),
        rtol=0,
        atol=1e-12,
    )


# --------------------------------------------------------------------------- objective


@dataclasses.dataclass(frozen=True)
class _ShrinkagePrior:
    """A test-only prior written with NumPyro distributions: Dirichlet weights, normal
    means around 0, log-normal precision-Cholesky diagonals."""

    mean_scale: float = 1.0

    def log_density(self, params, spec):
        lp = dist.Dirichlet(jnp.full(spec.n_components, 2.0)).log_prob(params.weights)
        lp = lp + jnp.sum(dist.Normal(0.0, self.mean_scale).log_prob(params.means))
        diag = jnp.diagonal(params.prec_chol, axis1=-2, axis2=-1)
        return lp + jnp.sum(dist.LogNormal(0.0, 2.0).log_prob(diag))


def test_objective_is_the_shared_density_plus_prior_per_sample(require_x64):
    x = _iris()
    spec = jaxgmm.GMMSpec(3, "full")
    params = _random_params(3, spec, 4, jnp.float64)
    u = to_unconstrained(params, spec)
    ll = jaxgmm.mean_log_likelihood(x, params, spec)
    np.testing.assert_allclose(objective(u, x, spec), ll, rtol=1e-12)
    map_spec = dataclasses.replace(spec, prior=_ShrinkagePrior())
    expected = ll + log_prior(params, map_spec) / x.shape[0]
    np.testing.assert_allclose(objective(u, x, map_spec), expected, rtol=1e-12)
    # A minibatch objective divides the prior by the full sample count.
    np.testing.assert_allclose(
        objective(u, x[:10], map_spec, n_total=150),
        jaxgmm.mean_log_likelihood(x[:10], params, spec) + log_prior(params, map_spec) / 150,
        rtol=1e-12,
    )


# --------------------------------------------------------------------------- fitting


@pytest.fixture(scope="module")
def em_reference():
    """EM to its fixed point from a k-means start, per data set."""
    cache = {}

    def get(name, reg_covar=1e-6):
        if (name, reg_covar) not in cache:
            load, k = DATASETS[name]
            x = load()
            spec = jaxgmm.GMMSpec(k, "full", reg_covar=reg_covar)
            start = jaxgmm.initial_params(jax.random.key(0), x, spec, "kmeans")
            em = jaxgmm.fit_em(jax.random.key(1), x, spec, init=start, tol=0.0, max_iter=1000)
            cache[name, reg_covar] = (x, spec, start, em)
        return cache[name, reg_covar]

    return get


@pytest.mark.parametrize("reg_covar", [1e-6, 1e-10])
def test_gradient_vanishes_at_em_fixed_point(require_x64, em_reference, reg_covar):
    """EM and the gradient fitter optimise the same function. EM's M-step adds reg_covar
    to the ML covariance, so its fixed point is stationary only up to O(reg_covar) in the
    covariance coordinates; weights and means are exactly stationary."""
    x, spec, start, em = em_reference("iris", reg_covar)
    value, grad = objective_and_grad(em.params, x, spec)
    np.testing.assert_allclose(value, em.log_likelihood, rtol=1e-12)
    assert float(jnp.max(jnp.abs(grad.logits))) < 1e-9
    assert float(jnp.max(jnp.abs(grad.means))) < 1e-9
    assert float(optax.tree.norm(grad)) < 1e3 * reg_covar
    _, grad_start = objective_and_grad(_unbatch(start), x, spec)
    assert float(optax.tree.norm(grad_start)) > 1e-2


@pytest.mark.parametrize(
    "dataset, optimizer, options, gap",
    [(name, "lbfgs", None, 1e-5) for name in sorted(DATASETS)]
    + [(name, "adam", None, 1e-3) for name in sorted(DATASETS)]
    # SGD with one learning rate is slow on Old Faithful's unstandardised scales (needs
    # ~840 steps to 1e-3; docs/gradient.md), so it is checked on iris only, with
    # momentum ("sgd" is optax.sgd: no momentum unless asked for).
    + [("iris", "sgd", {"momentum": 0.9}, 1e-3)],
)
def test_reaches_em_log_likelihood_from_same_start(
    require_x64, em_reference, dataset, optimizer, options, gap
):
    x, spec, start, em = em_reference(dataset)
    result = fit_gradient(
        jax.random.key(2), x, spec, init=start, optimizer=optimizer,
        optimizer_options=options, max_steps=1000,
    )  # fmt: skip
    assert result.nonfinite_iteration is None
    assert em.log_likelihood - gap <= result.log_likelihood <= em.log_likelihood + gap
    # Same start as EM, same trace fields, objective == log-likelihood without a prior.
    np.testing.assert_allclose(
        result.trace.log_likelihood[0], em.trace.log_likelihood[0], rtol=1e-12
    )
    assert result.fitter == f"gradient_{optimizer}" and result.bound_name == "log_likelihood"
    assert len(result.trace.log_likelihood) == result.n_iter
    np.testing.assert_allclose(result.trace.bound, result.trace.log_likelihood, rtol=1e-12)
    assert np.all(np.isfinite(result.trace.extras["grad_norm"]))
    assert np.all(np.diff(result.trace.elapsed_s) >= 0)
    if optimizer == "lbfgs":  # line search: monotone ascent
        assert np.all(np.diff(result.trace.log_likelihood) >= -1e-10)
        assert result.converged


def test_map_raises_log_prior_and_is_stationary(require_x64, em_reference):
    x, spec, start, _ = em_reference("iris")
    map_spec = dataclasses.replace(spec, prior=_ShrinkagePrior(mean_scale=1.0))
    ml = fit_gradient(jax.random.key(0), x, spec, init=start, optimizer="lbfgs", max_steps=1000)
    map_ = fit_gradient(
        jax.random.key(0), x, map_spec, init=start, optimizer="lbfgs", max_steps=1000
    )
    assert map_.bound_name == "log_posterior"
    assert float(log_prior(map_.params, map_spec)) > float(log_prior(ml.params, map_spec)) + 1.0
    assert map_.log_likelihood <= ml.log_likelihood + 1e-9
    # bound = log-likelihood + log-prior / N, both of the iterate the step started from.
    last = jaxgmm.mean_log_likelihood(x, map_.params, spec)
    assert abs(float(last) - map_.log_likelihood) < 1e-12
    _, grad = objective_and_grad(map_.params, x, map_spec)
    assert float(optax.tree.norm(grad)) < 1e-3


def test_divergent_learning_rate_keeps_last_finite_params(require_x64, em_reference):
    x, spec, start, _ = em_reference("iris")
    result = fit_gradient(
        jax.random.key(0), x, spec, init=start, optimizer="sgd", learning_rate=1e3, max_steps=50
    )
    assert result.nonfinite_iteration is not None
    assert result.n_iter == result.nonfinite_iteration - 1
    assert all(bool(np.all(np.isfinite(leaf))) for leaf in result.params)
    assert np.isfinite(result.log_likelihood)
    assert not result.converged


def test_minibatch_adam_with_schedule(require_x64, em_reference):
    x, spec, start, em = em_reference("iris")
    kwargs = dict(
        init=start,
        optimizer="adam",
        learning_rate=0.05,
        schedule="cosine",
        batch_size=50,
        max_steps=150,
        tol=0.0,
    )
    result = fit_gradient(jax.random.key(3), x, spec, **kwargs)
    assert result.n_iter == 150 and result.nonfinite_iteration is None
    # Full-data log-likelihood per iteration (3 updates of 50 samples each), starting at
    # the start's value; the decayed learning rate brings it near EM's optimum.
    np.testing.assert_allclose(
        result.trace.log_likelihood[0], em.trace.log_likelihood[0], rtol=1e-12
    )
    assert em.log_likelihood - 5e-3 <= result.log_likelihood <= em.log_likelihood + 1e-6
    assert np.all(result.trace.extras["minibatch_objective"] != result.trace.bound)
    again = fit_gradient(jax.random.key(3), x, spec, **kwargs)
    np.testing.assert_array_equal(again.trace.log_likelihood, result.trace.log_likelihood)
    other = fit_gradient(jax.random.key(4), x, spec, **kwargs)
    assert not np.array_equal(other.trace.log_likelihood[1:], result.trace.log_likelihood[1:])


# --------------------------------------------------------------------------- bad input


def test_unknown_optimizer_lists_the_names():
    spec = jaxgmm.GMMSpec(2)
    with pytest.raises(ValueError, match="optimizer must be one of") as info:
        gradient_fitter(spec, "adagradd")
    for name in OPTIMIZERS:
        assert repr(name) in str(info.value)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        fit_gradient(
            jax.random.key(0),
            np.random.default_rng(0).normal(size=(20, 2)),
            spec,
            optimizer="newton",
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(schedule="linear", learning_rate=0.1), "schedule must be one of"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(optimizer_options={"momentm": 0.9}), "momentm"),
        (dict(batch_size=10), "line search"),
    ],
)
def test_bad_optimizer_settings(kwargs, match):
    optimizer = "sgd" if "optimizer_options" in kwargs else "lbfgs"
    if "schedule" in kwargs or "learning_rate" in kwargs:
        optimizer = "adam"
    with pytest.raises(ValueError, match=match):
        gradient_fitter(jaxgmm.GMMSpec(2), optimizer, **kwargs)


def test_bad_batch_settings():
    x = np.random.default_rng(0).normal(size=(20, 2))
    spec = jaxgmm.GMMSpec(2)
    with pytest.raises(ValueError, match="batch_size"):
        fit_gradient(jax.random.key(0), x, spec, optimizer="adam", batch_size=21)
    with pytest.raises(ValueError, match="eval_every"):
        fit_gradient(jax.random.key(0), x, spec, optimizer="adam", eval_every=5)
    with pytest.raises(ValueError, match="max_steps"):
        fit_gradient(jax.random.key(0), x, spec, max_steps=-1)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_builds(name):
    opt = make_optimizer("adam", 0.1, name, schedule_steps=10)
    state = opt.init(jnp.zeros(3))
    updates, _ = opt.update(jnp.ones(3), state, jnp.zeros(3))
    assert np.all(np.isfinite(updates))


@pytest.mark.numerics
def test_float32_lbfgs_fit_is_finite_and_near_em(em_reference):
    x, spec, start, em = em_reference("iris")
    x32 = np.asarray(x, np.float32)
    start32 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), start)
    result = fit_gradient(
        jax.random.key(0), x32, spec, init=start32, optimizer="lbfgs", max_steps=300, tol=1e-7
    )
    assert result.params.means.dtype == jnp.float32
    assert all(bool(np.all(np.isfinite(leaf))) for leaf in result.params)
    assert np.all(np.isfinite(result.trace.log_likelihood))
    assert result.nonfinite_iteration is None
    assert abs(result.log_likelihood - em.log_likelihood) < 1e-3


# --------------------------------------------------------------------------- stopping


def test_warmup_from_learning_rate_zero_is_not_convergence(require_x64, em_reference):
    # warmup_cosine starts at learning rate 0: the first step leaves the parameters where
    # they are, so the next change is 0; the fit used to stop there "converged".
    x, spec, start, em = em_reference("iris")
    result = fit_gradient(
        jax.random.key(0), x, spec, init=start, optimizer="adam", learning_rate=0.05,
        schedule="warmup_cosine", max_steps=300,
    )  # fmt: skip
    moved = result.trace.extras["params_moved"]
    assert not moved[0] and moved[1:].all()
    assert result.status in ("converged", "max_iter")
    assert result.n_iter > 50
    assert abs(result.log_likelihood - em.log_likelihood) < 1e-3


def test_lbfgs_whose_line_search_cannot_move_is_stalled(require_x64, em_reference):
    x, spec, start, _ = em_reference("iris")
    result = fit_gradient(
        jax.random.key(0), x, spec, init=start, optimizer="lbfgs", learning_rate=1e30,
        max_steps=300,
    )  # fmt: skip
    assert result.status == "stalled" and not result.converged
    assert result.n_iter < 300
    assert not result.trace.extras["params_moved"].any()
    # Still the start (up to the unconstrained transform's round trip).
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12),
        result.params, _unbatch(start),
    )  # fmt: skip


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_float32_fits_that_stop_on_tol_say_converged(optimizer):
    # The change the tolerance test compares is the difference of the recorded bounds,
    # and the default tol is not below one ulp of the objective.
    x = np.asarray(load_iris().data, np.float32)
    spec = jaxgmm.GMMSpec(3, "full")
    starts = jaxgmm.initial_params(jax.random.key(0), jnp.asarray(x), spec, "kmeans", 4)
    result = fit_gradient(
        jax.random.key(0), x, spec, init=starts, optimizer=optimizer, max_steps=2000
    )
    assert result.trace.bound.dtype == np.float32
    assert list(result.restarts.status) == ["converged"] * 4
    change = result.trace.extras["bound_change"]
    np.testing.assert_array_equal(change[1:], np.diff(result.trace.bound))
    converged = result.trace.extras["converged"]
    assert converged[-1] and not converged[:-1].any()
    threshold = np.maximum(1e-9, np.abs(np.spacing(result.trace.bound[:-1])))
    np.testing.assert_array_equal(converged[1:], np.abs(change[1:]) < threshold)


def test_check_prior_accepts_a_prior_with_log_density_alone():
    from jaxgmm.priors import check_prior, hyper_sites

    spec = jaxgmm.GMMSpec(2, "full", prior=_ShrinkagePrior())
    assert hyper_sites(spec.prior) == ()
    check_prior(spec, 3, jnp.float32)  # traces the density; raises on a shape mismatch
