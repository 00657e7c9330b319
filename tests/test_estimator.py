"""The scikit-learn-style estimator: contract, bad input, degenerate data."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import blobs, dense_covariances, iris

import jaxgmm
from jaxgmm import GaussianMixture
from jaxgmm.model import COVARIANCE_FAMILIES


def quiet_fit(gm, x):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gm.fit(x)
    return caught


def test_accepts_numpy_and_jax_arrays_alike():
    x, _ = blobs(0)
    a = GaussianMixture(3, random_state=0).fit(x)
    b = GaussianMixture(3, random_state=0).fit(jnp.asarray(x))
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-6)
    assert a.predict(x).shape == (len(x),)
    assert a.predict_proba(jnp.asarray(x)).shape == (len(x), 3)


def test_fit_predict_equals_fit_then_predict():
    x, _ = blobs(1)
    gm = GaussianMixture(3, random_state=3)
    labels = gm.fit_predict(x)
    np.testing.assert_array_equal(labels, gm.predict(x))


def test_sample_shapes_and_moments(require_x64):
    x = iris()
    gm = GaussianMixture(3, random_state=0, tol=1e-6).fit(x)
    xs, ys = gm.sample(20000)
    assert xs.shape == (20000, 4) and ys.shape == (20000,)
    np.testing.assert_allclose(np.bincount(ys, minlength=3) / 20000, gm.weights_, atol=0.02)
    for k in range(3):
        np.testing.assert_allclose(np.cov(xs[ys == k].T), gm.covariances_[k], atol=0.05)


def test_n_init_keeps_best_and_reports_every_restart():
    x, _ = blobs(4, n_components=4)
    gm = GaussianMixture(4, n_init=5, init_params="random_from_data", random_state=0, tol=1e-6)
    quiet_fit(gm, x)
    restarts = gm.fit_result_.restarts
    assert restarts.log_likelihood.shape == (5,)
    assert gm.log_likelihood_ == pytest.approx(restarts.log_likelihood.max())


def test_warm_start_continues_from_previous_parameters():
    x, _ = blobs(5)
    gm = GaussianMixture(3, max_iter=2, tol=0.0, warm_start=True, random_state=0)
    quiet_fit(gm, x)
    first = gm.log_likelihood_
    quiet_fit(gm, x)
    assert gm.lower_bounds_[0] == pytest.approx(first, rel=1e-6)
    assert gm.log_likelihood_ >= first - 1e-6


def test_not_converged_warns():
    x, _ = blobs(6)
    caught = quiet_fit(GaussianMixture(3, max_iter=1, tol=0.0, random_state=0), x)
    assert any(issubclass(w.category, jaxgmm.ConvergenceWarning) for w in caught)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_components": 0}, "n_components"),
        ({"covariance_type": "fool"}, "covariance_type"),
        ({"init_params": "kmean"}, "init_params.*kmeans"),
        ({"reg_covar": float("nan")}, "reg_covar"),  # 0 is allowed, as in scikit-learn
        ({"reg_covar": -1e-3}, "reg_covar"),
        ({"tol": -1.0}, "tol"),
        ({"max_iter": -1}, "max_iter"),
        ({"n_init": 0}, "n_init"),
        ({"weights_init": [0.5, 0.5]}, r"weights_init.*\(3,\)"),
        ({"weights_init": [0.5, 0.5, 0.5]}, "weights_init.*sum to 1"),
        ({"means_init": np.zeros((3, 3))}, r"means_init.*\(3, 2\)"),
        ({"precisions_init": np.ones((3, 2))}, r"precisions_init.*\(3, 2, 2\)"),
        (
            {"precisions_init": -np.ones((3, 2)), "covariance_type": "diag"},
            "precisions_init.*positive",
        ),
        ({"precisions_init": np.stack([np.diag([1.0, -1.0])] * 3)}, "positive-definite"),
        ({"random_state": "seed"}, "random_state"),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(kwargs, match):
    x, _ = blobs(7)
    params = {"n_components": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**params).fit(x)


@pytest.mark.parametrize(
    "x, match",
    [
        (np.arange(10.0), "2D array.*reshape"),
        (np.array([[0.0, np.nan]] * 10), "NaN or infinity.*row 0, column 1"),
        (np.array([[0.0, np.inf]] * 10), "NaN or infinity"),
        (np.ones((2, 2)), "n_samples=2, fewer than n_components=3"),
        (np.array([["a", "b"]] * 5), "numbers"),
        (np.zeros((5, 0)), "at least one"),
    ],
)
def test_bad_data_raises_value_error(x, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(3).fit(x)


def test_predict_before_fit_and_wrong_width_are_clear():
    with pytest.raises(ValueError, match="not fitted"):
        GaussianMixture(2).predict(np.zeros((3, 2)))
    gm = GaussianMixture(2, random_state=0).fit(blobs(8)[0])
    with pytest.raises(ValueError, match="3 features.*2 features"):
        gm.score(np.zeros((3, 3)))


def _assert_finite(gm):
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.all(np.isfinite(getattr(gm, name))), name
    assert np.isfinite(gm.log_likelihood_)


@pytest.mark.parametrize("covariance_type", sorted(COVARIANCE_FAMILIES))
def test_duplicated_points_flag_collapse_instead_of_crashing(covariance_type, require_x64):
    rng = np.random.default_rng(0)
    x = np.vstack([np.repeat([[5.0, 5.0]], 30, axis=0), rng.normal(size=(60, 2))])
    gm = GaussianMixture(3, covariance_type=covariance_type, init_params="kmeans", random_state=0)
    caught = quiet_fit(gm, x)
    _assert_finite(gm)
    if covariance_type != "tied":  # tied shares one covariance with the spread data
        kinds = {d.kind for d in gm.degeneracies_}
        assert "collapsed_covariance" in kinds
        assert any(issubclass(w.category, jaxgmm.DegeneracyWarning) for w in caught)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("covariance_type", sorted(COVARIANCE_FAMILIES))
def test_constant_column_finishes_finite(covariance_type, dtype):
    x, _ = blobs(9, n_features=3)
    x[:, 1] = 7.0
    gm = GaussianMixture(3, covariance_type=covariance_type, random_state=0)
    quiet_fit(gm, x.astype(dtype))
    _assert_finite(gm)
    if covariance_type != "spherical":  # one variance averaged over features can't see it
        assert any(d.kind == "collapsed_covariance" for d in gm.degeneracies_)


@pytest.mark.parametrize("scale", [1e8, 1e-8])
@pytest.mark.parametrize("covariance_type", sorted(COVARIANCE_FAMILIES))
def test_extreme_scales_finish_finite(covariance_type, scale, require_x64):
    x, _ = blobs(10)
    gm = GaussianMixture(3, covariance_type=covariance_type, random_state=0)
    quiet_fit(gm, x * scale)
    _assert_finite(gm)
    if scale == 1e-8:  # the data's variance is far below reg_covar: must be flagged
        assert {d.kind for d in gm.degeneracies_} == {"collapsed_covariance"}


@pytest.mark.parametrize("covariance_type", sorted(COVARIANCE_FAMILIES))
def test_float32_default_path_has_no_nan(covariance_type):
    x = iris().astype(np.float32)
    gm = GaussianMixture(3, covariance_type=covariance_type, random_state=0, n_init=2)
    quiet_fit(gm, x)
    _assert_finite(gm)
    assert gm.means_.dtype == np.float32 or jax.config.jax_enable_x64


def test_empty_component_is_reported():
    # Four components for two tight, far-apart clusters: some weight must vanish or
    # collapse; whatever happens, it is finite and reported.
    x = np.vstack([np.zeros((20, 1)), np.full((20, 1), 100.0)]) + np.linspace(0, 1e-3, 40)[:, None]
    start = dict(
        weights_init=[0.25] * 4,
        means_init=[[0.0], [100.0], [1e4], [-1e4]],
        precisions_init=np.ones((4, 1, 1)),
    )
    gm = GaussianMixture(4, **start, max_iter=20)
    quiet_fit(gm, x)
    _assert_finite(gm)
    empty = [d for d in gm.degeneracies_ if d.kind == "empty_component"]
    assert {d.component for d in empty} == {2, 3}
    assert all(d.first_iteration >= 1 for d in empty)


@pytest.mark.parametrize("verbose", [0, 1, 2])
def test_verbose_logs_every_verbose_interval_iterations(verbose, caplog):
    # scikit-learn's verbose messages, through the "jaxgmm" logger (the library never
    # prints): "Iteration t" every verbose_interval iterations, the outcome at the end,
    # and at verbose 2 the time lapse and the log-likelihood change.
    x, _ = blobs(0)
    gm = GaussianMixture(3, random_state=0, tol=0.0, max_iter=7, verbose=verbose, verbose_interval=3)
    with caplog.at_level("INFO", logger="jaxgmm"):
        quiet_fit(gm, x)
    messages = [r.getMessage() for r in caplog.records if r.name == "jaxgmm"]
    if verbose == 0:
        assert messages == []
        return
    iterations = [m for m in messages if m.strip().startswith("Iteration")]
    assert [int(m.split()[1]) for m in iterations] == [3, 6]
    assert messages[-1].startswith("Initialization did not converge.")
    if verbose == 2:
        change = float(iterations[0].split("ll change")[1])
        expected = gm.lower_bounds_[2] - gm.lower_bounds_[1]
        np.testing.assert_allclose(change, expected, rtol=1e-4, atol=1e-5)
        assert "time lapse" in iterations[0] and "lower bound" in messages[-1]


@pytest.mark.parametrize("kwargs", [{"verbose_interval": 0}, {"verbose": -1}, {"verbose": "yes"}])
def test_bad_verbose_settings_raise(kwargs):
    x, _ = blobs(0)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        GaussianMixture(2, **kwargs).fit(x)


# -- issue 16: no wrong answer that looks fine -------------------------------------------


def test_float32_data_whose_squares_overflow_raise_instead_of_nan():
    # Defect 3: iris x 1e20 in float32 gave NaN covariances_, a warning claiming finite
    # parameters were kept, and predict() == 0 everywhere. Now: a ValueError saying why
    # and what to do, and an estimator fitted before keeps its (finite) attributes.
    x = iris()
    gm = GaussianMixture(3, random_state=0).fit(x.astype(np.float32))
    means = gm.means_.copy()
    with pytest.raises(ValueError, match=r"(?s)overflow float32.*standardise X.*float64"):
        gm.fit((x * 1e20).astype(np.float32))
    np.testing.assert_array_equal(gm.means_, means)
    _assert_finite(gm)


def test_float32_overflow_from_given_starting_parameters_raises():
    # Finite starting parameters (no initialiser involved) on the same data: EM's first
    # step overflows, and the starting point itself has no finite log-likelihood.
    x = (iris() * 1e20).astype(np.float32)
    start = dict(
        weights_init=[1 / 3] * 3,
        means_init=np.zeros((3, 4)),
        precisions_init=np.stack([np.eye(4)] * 3),
    )
    with pytest.raises(ValueError, match="GaussianMixture.*float32.*standardise X"):
        GaussianMixture(3, **start).fit(x)


def test_finite_float64_data_overflowing_float32_say_so_with_x64_off():
    # Defect 4: with x64 off, finite float64 X * 1e39 was cast to float32 (inf) and the
    # message said "X contains NaN or infinity", which is false.
    x = iris() * 1e39
    assert np.all(np.isfinite(x))
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="overflow float32") as caught:
            GaussianMixture(3).fit(x)
    assert "NaN" not in str(caught.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"init_params": ["kmeans"]}, r"init_params must be one of \[.*'kmeans'.*\], got \['kmeans'\]"),
        ({"covariance_type": ["full"]}, r"covariance_type must be one of \[.*'full'.*\]"),
    ],
)
def test_unhashable_choices_get_a_message_naming_the_argument(kwargs, match):
    # Defect 14: init_params=['kmeans'] gave "unhashable type: 'list'".
    with pytest.raises(ValueError, match=match):
        GaussianMixture(3, **kwargs).fit(blobs(0)[0])


def _min_covariance_eigenvalue(gm):
    k, d = gm.means_.shape
    dense = dense_covariances(gm.covariances_, gm.covariance_type, k, d)
    return min(np.linalg.eigvalsh(c).min() for c in dense)


def test_default_selection_skips_the_degenerate_optimum_and_reports_every_restart():
    # Defect 2 (issue 16's case): one of 8 random_from_data restarts on iris reaches a
    # spurious -99.17 (total) with a component pinned at the reg_covar floor; it used to be
    # returned. Degeneracy is judged here from covariances_ by NumPy, independently.
    x = iris()
    settings = dict(init_params="random_from_data", n_init=8, random_state=3, max_iter=1000,
                    tol=1e-8)
    by_likelihood = GaussianMixture(3, select="likelihood", **settings)
    quiet_fit(by_likelihood, x)
    gm = GaussianMixture(3, **settings)
    caught = quiet_fit(gm, x)

    restarts = gm.restarts_
    assert restarts.log_likelihood.shape == restarts.degenerate.shape == (8,)
    assert len(restarts.degeneracies) == 8
    assert restarts.degenerate.any() and not restarts.degenerate.all()
    # The degenerate restart is the most likely one: "likelihood" keeps it...
    assert by_likelihood.best_restart_ == by_likelihood.best_overall_restart_
    assert restarts.degenerate[by_likelihood.best_restart_]
    assert _min_covariance_eigenvalue(by_likelihood) < 2 * by_likelihood.reg_covar
    # ...and the default keeps the best restart without a degenerate component.
    assert gm.best_overall_restart_ == by_likelihood.best_restart_ != gm.best_restart_
    assert not restarts.degenerate[gm.best_restart_]
    assert gm.log_likelihood_ == pytest.approx(restarts.log_likelihood[~restarts.degenerate].max())
    assert gm.log_likelihood_ == pytest.approx(gm.score(x), rel=1e-10)
    assert _min_covariance_eigenvalue(gm) > 100 * gm.reg_covar
    assert gm.degeneracies_ == ()
    assert not any(issubclass(w.category, jaxgmm.DegeneracyWarning) for w in caught)


def test_bad_select_is_named():
    with pytest.raises(ValueError, match=r"select must be one of \['likelihood', 'non_degenerate'\]"):
        GaussianMixture(3, select="best").fit(blobs(0)[0])
