"""jaxgmm's estimators as scikit-learn estimators (issue 17, items 1 and 2's estimator
half): scikit-learn's own `check_estimator` (every check scikit-learn's estimator passes),
its tools (Pipeline, GridSearchCV, cross_val_score, clone, pickle, check_is_fitted), its
input conversion and messages, warm-start convergence, reg_covar = 0, the dtype rule and
the shape buckets of the scoring methods (counted compilations, not timings)."""

import pickle
import sys
import warnings

import jax
import numpy as np
import pytest
from _helpers import blobs
from sklearn import mixture as skmixture
from sklearn.base import clone
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import get_tags
from sklearn.utils.estimator_checks import check_estimator
from sklearn.utils.validation import check_is_fitted

import jaxgmm
import jaxgmm.em.estimator as estimator_module
from jaxgmm import BayesianGaussianMixture, GaussianMixture
from jaxgmm.em import NotFittedError

OURS = {"GaussianMixture": GaussianMixture, "BayesianGaussianMixture": BayesianGaussianMixture}
THEIRS = {
    "GaussianMixture": skmixture.GaussianMixture,
    "BayesianGaussianMixture": skmixture.BayesianGaussianMixture,
}


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def data():
    x, _ = blobs(0, n_samples=150, spread=8.0)
    return x


@pytest.fixture(scope="module")
def fitted(data):
    """Each estimator fitted once on the module's data (shared by the read-only tests)."""
    return {
        "GaussianMixture": _quiet(GaussianMixture(3, random_state=0).fit, data),
        "BayesianGaussianMixture": _quiet(
            BayesianGaussianMixture(n_components=3, random_state=0).fit, data
        ),
    }


# -- scikit-learn's check_estimator --------------------------------------------------------


def _check_results(estimator):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, on_fail=None, on_skip=None)
    passed = {r["check_name"] for r in results if r["status"] == "passed"}
    failed = {
        r["check_name"]: repr(r["exception"])[:500] for r in results if r["status"] == "failed"
    }
    return passed, failed


@pytest.mark.parametrize("name", sorted(OURS))
def test_check_estimator_passes_every_check_scikit_learns_own_estimator_passes(name):
    reference, _ = _check_results(THEIRS[name]())
    assert len(reference) >= 35  # the set is computed, not empty because of a setup error
    passed, failed = _check_results(OURS[name]())
    missing = reference - passed
    assert not missing, {check: failed.get(check, "not run") for check in sorted(missing)}


# -- the protocol: params, clone, repr, tags -----------------------------------------------


@pytest.mark.parametrize("name", sorted(OURS))
def test_get_params_are_the_constructor_arguments_and_set_params_sets_them(name):
    est = OURS[name]()
    params = est.get_params()
    assert sorted(params) == sorted(type(est)._param_names) == type(est)._get_param_names()
    # Every scikit-learn parameter is one of ours, with scikit-learn's default.
    theirs = THEIRS[name]().get_params()
    shared = {k: v for k, v in theirs.items() if k in params}
    assert set(theirs) - set(params) == set()
    assert {k: params[k] for k in shared} == shared
    assert est.set_params(n_components=4, tol=0.5) is est
    assert est.n_components == 4 and est.get_params()["tol"] == 0.5
    with pytest.raises(ValueError, match=r"Invalid parameter 'n_component' for estimator"):
        est.set_params(n_component=2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"n_components": 3},
        {"n_components": 3, "covariance_type": "diag", "tol": 0.1, "max_iter": 10,
         "random_state": 0, "reg_covar": 1e-3, "init_params": "random"},
        {"means_init": np.zeros((2, 2)), "n_components": 2},
    ],
)
def test_repr_is_scikit_learns(kwargs):
    assert repr(GaussianMixture(**kwargs)) == repr(skmixture.GaussianMixture(**kwargs))
    bgm_kwargs = {k: v for k, v in kwargs.items() if k != "means_init"}
    assert repr(BayesianGaussianMixture(**bgm_kwargs)) == repr(
        skmixture.BayesianGaussianMixture(**bgm_kwargs)
    )


def test_repr_names_our_own_parameters_when_not_default():
    assert repr(GaussianMixture(2, select="likelihood")) == (
        "GaussianMixture(n_components=2, select='likelihood')"
    )


@pytest.mark.parametrize("name", sorted(OURS))
def test_tags_are_those_of_a_density_estimator(name):
    ours, theirs = get_tags(OURS[name]()), get_tags(THEIRS[name]())
    assert ours.estimator_type == theirs.estimator_type == "density_estimator"
    assert ours.input_tags == theirs.input_tags
    assert ours.target_tags == theirs.target_tags
    assert ours.requires_fit and not ours.input_tags.sparse and not ours.input_tags.allow_nan


@pytest.mark.parametrize("name", sorted(OURS))
def test_clone_gives_an_unfitted_copy_with_the_same_parameters(name, fitted):
    est = fitted[name]
    copy = clone(est)
    assert type(copy) is type(est) and copy.get_params() == est.get_params()
    assert not hasattr(copy, "means_") and not hasattr(copy, "n_features_in_")
    with pytest.raises(SklearnNotFittedError):
        check_is_fitted(copy)
    check_is_fitted(est)


@pytest.mark.parametrize("name", sorted(OURS))
def test_pickle_round_trip_predicts_the_same(name, fitted, data):
    est = fitted[name]
    back = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(back.predict(data), est.predict(data))
    np.testing.assert_array_equal(back.predict_proba(data), est.predict_proba(data))
    np.testing.assert_array_equal(back.score_samples(data), est.score_samples(data))
    assert back.get_params() == est.get_params()


# -- NotFittedError ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OURS))
def test_every_method_before_fit_raises_scikit_learns_not_fitted_error(name):
    est = OURS[name](n_components=2)
    x = np.zeros((3, 2))
    calls = {
        "predict": lambda: est.predict(x),
        "predict_proba": lambda: est.predict_proba(x),
        "score": lambda: est.score(x),
        "score_samples": lambda: est.score_samples(x),
        "sample": lambda: est.sample(2),
    }
    if name == "GaussianMixture":
        calls.update(bic=lambda: est.bic(x), aic=lambda: est.aic(x))
    else:
        calls.update(score_samples_predictive=lambda: est.score_samples_predictive(x))
    # scikit-learn's wording, taken from scikit-learn's own estimator
    with pytest.raises(SklearnNotFittedError) as theirs:
        THEIRS[name](n_components=2).predict(x)
    for method, call in calls.items():
        with pytest.raises(SklearnNotFittedError) as caught:
            call()
        error = caught.value
        assert isinstance(error, NotFittedError), method
        assert isinstance(error, ValueError) and isinstance(error, AttributeError), method
        assert str(error) == str(theirs.value), method
    again = pickle.loads(pickle.dumps(error))
    assert isinstance(again, SklearnNotFittedError) and str(again) == str(error)
    with pytest.raises(SklearnNotFittedError):
        check_is_fitted(est)
    assert not hasattr(est, "predict_log_proba")  # no method check_estimator would miss


def test_not_fitted_error_without_scikit_learn_is_jaxgmms_own(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.exceptions", None)  # import fails
    monkeypatch.delitem(vars(estimator_module), "_SklearnNotFittedError", raising=False)
    with pytest.raises(NotFittedError, match="not fitted yet") as caught:
        GaussianMixture(2).predict(np.zeros((3, 2)))
    assert type(caught.value) is NotFittedError
    assert not isinstance(caught.value, SklearnNotFittedError)


# -- input conversion ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OURS))
def test_object_arrays_of_numbers_fit_as_float64(name, fitted, data, require_x64):
    est = _quiet(OURS[name](n_components=3, random_state=0).fit, data.astype(object))
    np.testing.assert_allclose(est.means_, fitted[name].means_, rtol=1e-12)
    np.testing.assert_array_equal(est.predict(data.astype(object)), fitted[name].predict(data))
    bad = data.astype(object)
    bad[0, 0] = {"foo": "bar"}
    with pytest.raises(TypeError, match="X must contain numbers.*argument must be .* string.* number"):
        est.fit(bad)
    with pytest.raises(ValueError, match="X must contain numbers"):
        est.fit(np.array([["1.0", "x"]] * 5, dtype=object))


@pytest.mark.parametrize(
    "sparse_type", ["csr_matrix", "csr_array", "coo_matrix"]
)
def test_sparse_input_is_refused_by_name(sparse_type, fitted, data):
    from scipy import sparse

    x = getattr(sparse, sparse_type)(data)
    match = r"X is a scipy sparse .*: sparse input is not supported, convert with X.toarray\(\)"
    with pytest.raises(ValueError, match=match):
        GaussianMixture(2).fit(x)
    with pytest.raises(ValueError, match=match):
        fitted["GaussianMixture"].predict(x)


@pytest.mark.parametrize(
    "x, match",
    [
        (np.ones((10, 2)) + 1j, "Complex data not supported"),
        (np.empty((0, 3)), r"Found array with 0 sample\(s\) \(shape=\(0, 3\)\) while a minimum"),
        (np.empty((12, 0)), r"0 feature\(s\) \(shape=\(12, 0\)\) while a minimum of 1 is required"),
    ],
)
@pytest.mark.parametrize("name", sorted(OURS))
def test_complex_and_empty_data_use_scikit_learns_wording(name, x, match):
    with pytest.raises(ValueError, match=match):
        OURS[name]().fit(x)
    with pytest.raises(ValueError, match=match):  # and scikit-learn words it the same
        THEIRS[name]().fit(x)


@pytest.mark.parametrize("name", sorted(OURS))
def test_wrong_width_uses_scikit_learns_wording(name, fitted, data):
    match = "X has 1 features, but " + name + " is expecting 2 features as input"
    theirs = _quiet(THEIRS[name](n_components=3).fit, data)
    for method in ("predict", "predict_proba", "score", "score_samples"):
        with pytest.raises(ValueError, match=match):
            getattr(fitted[name], method)(data[:, :1])
        with pytest.raises(ValueError, match=match):
            getattr(theirs, method)(data[:, :1])


def _dataframe(x, columns=("a", "b")):
    pd = pytest.importorskip("pandas")
    return pd.DataFrame(x, columns=list(columns))


def _warning_messages(fn, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn(*args)
    return [str(w.message) for w in caught if "feature names" in str(w.message)]


@pytest.mark.parametrize("name", sorted(OURS))
def test_feature_names_are_kept_and_checked_as_scikit_learn_does(name, fitted, data):
    frame = _dataframe(data)
    ours = _quiet(OURS[name](n_components=3, random_state=0).fit, frame)
    theirs = _quiet(THEIRS[name](n_components=3, random_state=0).fit, frame)
    np.testing.assert_array_equal(ours.feature_names_in_, theirs.feature_names_in_)
    assert ours.feature_names_in_.dtype == object
    assert _warning_messages(ours.predict, frame) == []
    # the same warnings as scikit-learn's, word for word
    for method in ("predict", "score_samples"):
        assert _warning_messages(getattr(ours, method), data) == _warning_messages(
            getattr(theirs, method), data
        ) != []
    for columns in (("b", "a"), ("a", "c")):
        renamed = _dataframe(data, columns)
        with pytest.raises(ValueError) as caught_theirs:
            theirs.predict(renamed)
        with pytest.raises(ValueError) as caught_ours:
            ours.predict(renamed)
        assert str(caught_ours.value) == str(caught_theirs.value)
    # fitted on an array, given a frame: scikit-learn's other warning
    assert _warning_messages(fitted[name].predict, frame) == _warning_messages(
        _quiet(THEIRS[name](n_components=3).fit, data).predict, frame
    ) != []
    # refitted on an array: the names are gone
    _quiet(ours.fit, data)
    assert not hasattr(ours, "feature_names_in_")


def test_mixed_column_name_types_are_refused():
    with pytest.raises(TypeError, match="Feature names are only supported if all input"):
        GaussianMixture(2).fit(_dataframe(np.ones((5, 2)), columns=("a", 1)))


def test_pandas_nullable_dtypes(data, fitted, require_x64):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": pd.array(data[:, 0], dtype="Float64"),
                          "b": pd.array(data[:, 1], dtype="Float64")})
    est = _quiet(GaussianMixture(3, random_state=0).fit, frame)
    np.testing.assert_allclose(est.means_, fitted["GaussianMixture"].means_, rtol=1e-12)
    counts = pd.DataFrame({"a": pd.array([1, 2, 3, 4, 5, 7], dtype="Int64"),
                           "b": pd.array([0, 1, 0, 1, 1, 0], dtype="boolean")})
    _quiet(GaussianMixture(2, random_state=0).fit, counts)
    missing = frame.copy()
    missing.loc[3, "b"] = pd.NA
    with pytest.raises(ValueError, match="NaN or infinity.*row 3, column 1"):
        GaussianMixture(3).fit(missing)
    text = frame.assign(c=["x"] * len(frame))
    with pytest.raises(ValueError, match=r"column\(s\) \['c'\] are not numeric"):
        GaussianMixture(3).fit(text)


# -- scikit-learn's tools ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OURS))
def test_pipeline_predicts_as_the_estimator_on_scaled_data(name, data):
    pipe = _quiet(make_pipeline(StandardScaler(), OURS[name](n_components=3, random_state=0)).fit,
                  data)
    scaled = StandardScaler().fit_transform(data)
    alone = _quiet(OURS[name](n_components=3, random_state=0).fit, scaled)
    np.testing.assert_array_equal(pipe.predict(data), alone.predict(scaled))
    np.testing.assert_allclose(pipe.score(data), alone.score(scaled), rtol=1e-12)


def test_grid_search_and_cross_val_score_agree_with_scikit_learns(data, require_x64):
    grid = {"n_components": [2, 3]}
    ours = _quiet(GridSearchCV(GaussianMixture(random_state=0), grid, cv=3).fit, data)
    theirs = _quiet(
        GridSearchCV(skmixture.GaussianMixture(random_state=0), grid, cv=3).fit, data
    )
    assert ours.best_params_ == theirs.best_params_ == {"n_components": 3}
    np.testing.assert_allclose(
        ours.cv_results_["mean_test_score"], theirs.cv_results_["mean_test_score"], rtol=1e-4
    )
    assert isinstance(ours.best_estimator_, GaussianMixture)
    scores = _quiet(cross_val_score, GaussianMixture(3, random_state=0), data, cv=3)
    reference = _quiet(cross_val_score, skmixture.GaussianMixture(3, random_state=0), data, cv=3)
    np.testing.assert_allclose(scores, reference, rtol=1e-4)


# -- warm start, reg_covar, dtypes ---------------------------------------------------------


def test_warm_start_converges_on_the_call_scikit_learn_does(data, require_x64):
    # Repeated max_iter=1 fits: the first tolerance test of each compares with the
    # previous fit's lower_bound_. Before: converged_ stayed False for ever.
    start = dict(
        weights_init=[0.2, 0.3, 0.5],
        means_init=data[[0, 50, 100]],
        precisions_init=np.stack([np.eye(2)] * 3),
    )
    settings = dict(n_components=3, warm_start=True, max_iter=1, tol=1e-4, **start)
    ours, theirs = GaussianMixture(**settings), skmixture.GaussianMixture(**settings)
    converged_ours, converged_theirs = [], []
    for _ in range(40):
        _quiet(ours.fit, data)
        _quiet(theirs.fit, data)
        converged_ours.append(ours.converged_)
        converged_theirs.append(theirs.converged_)
        np.testing.assert_allclose(ours.lower_bound_, theirs.lower_bound_, rtol=1e-9)
        assert ours.n_iter_ == theirs.n_iter_ == 1
    assert converged_ours == converged_theirs
    assert any(converged_theirs) and not converged_theirs[0]


def test_vb_warm_start_carries_the_tolerance_test_over(data):
    bgm = BayesianGaussianMixture(n_components=3, warm_start=True, max_iter=1, tol=1e-3,
                                  random_state=0)
    elbos, converged = [], []
    for _ in range(60):
        _quiet(bgm.fit, data)
        elbos.append(bgm.elbo_)
        converged.append(bgm.converged_)
        if bgm.converged_:
            break
    assert converged[-1] and not any(converged[:-1])
    # converged exactly when the ELBO total changed by less than tol (sklearn's rule)
    changes = np.abs(np.diff(elbos)) * len(data)
    assert changes[-1] < 1e-3 and np.all(changes[:-1] >= 1e-3)


def test_reg_covar_zero_is_accepted_as_in_scikit_learn(data, require_x64):
    start = dict(
        weights_init=[1 / 3] * 3,
        means_init=data[[0, 50, 100]],
        precisions_init=np.stack([np.eye(2)] * 3),
    )
    ours = _quiet(GaussianMixture(3, reg_covar=0.0, tol=1e-8, **start).fit, data)
    theirs = _quiet(skmixture.GaussianMixture(3, reg_covar=0.0, tol=1e-8, **start).fit, data)
    np.testing.assert_allclose(ours.means_, theirs.means_, rtol=1e-7)
    np.testing.assert_allclose(ours.covariances_, theirs.covariances_, rtol=1e-7)
    # A component collapsing onto repeated points with no floor (its covariance is
    # exactly 0 after one M-step): scikit-learn raises; we stop at the last finite
    # parameters and say so, instead of returning NaN.
    x = np.vstack([np.repeat([[5.0, 5.0]], 30, axis=0), data])
    collapse = dict(weights_init=[0.5, 0.5], means_init=[[5.0, 5.0], [0.0, 0.0]],
                    precisions_init=np.stack([1e6 * np.eye(2), np.eye(2)]))
    with pytest.raises(ValueError, match="ill-defined empirical covariance"):
        skmixture.GaussianMixture(2, reg_covar=0.0, **collapse).fit(x)
    with pytest.warns(jaxgmm.DegeneracyWarning, match="non-finite values at iteration 1"):
        gm = GaussianMixture(2, reg_covar=0.0, **collapse).fit(x)
    assert all(np.all(np.isfinite(getattr(gm, a))) for a in ("means_", "covariances_"))
    np.testing.assert_array_equal(gm.means_, collapse["means_init"])
    with pytest.raises(ValueError, match="reg_covar must be >= 0"):
        GaussianMixture(2, reg_covar=-1e-9).fit(data)


@pytest.mark.parametrize("name", sorted(OURS))
def test_dtype_rule_float64_in_float64_out_with_x64(name, fitted, data, require_x64):
    est = fitted[name]
    assert est.means_.dtype == np.float64
    for method in ("predict_proba", "score_samples"):
        assert getattr(est, method)(data).dtype == np.float64
    assert est.sample(5)[0].dtype == np.float64
    if name == "GaussianMixture":  # float32 in: float32 results (the shared conversion)
        est32 = _quiet(GaussianMixture(3, random_state=0).fit, data.astype(np.float32))
        assert est32.means_.dtype == np.float32
        assert est32.predict_proba(data.astype(np.float32)).dtype == np.float32


def test_float64_input_without_x64_warns_once(monkeypatch, data):
    monkeypatch.setattr(estimator_module, "_warned_float32", False)
    with jax.enable_x64(False):
        with pytest.warns(UserWarning, match=r"(?s)float64 but JAX's x64 mode is off.*"
                          r"float32.*jax.config.update\(\"jax_enable_x64\", True\)"):
            gm = GaussianMixture(3, random_state=0, max_iter=5).fit(data)
        assert gm.means_.dtype == np.float32
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*x64 mode is off")
            gm.predict(data)
            GaussianMixture(3, random_state=0, max_iter=5).fit(data)
    monkeypatch.setattr(estimator_module, "_warned_float32", False)
    with jax.enable_x64(False), warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*x64 mode is off")
        _quiet(GaussianMixture(3, random_state=0, max_iter=5).fit, data.astype(np.float32))
    assert estimator_module._warned_float32 is False


# -- shape buckets: no recompile for a new number of samples -------------------------------


class _CompileCounter:
    """Counts XLA compilations (every jit, eager op included) while active."""

    def __enter__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def _listener(self, event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listener)


def _use(est, x, name):
    est.predict(x)
    est.predict_proba(x)
    est.score_samples(x)
    est.score(x)
    est.sample(len(x))
    if name == "GaussianMixture":
        est.bic(x)
        est.aic(x)
    else:
        est.score_samples_predictive(x)


@pytest.mark.parametrize("name", sorted(OURS))
def test_new_sample_counts_reuse_one_executable(name, fitted):
    # Rows are padded to the next power of two (at least 256): 513..1024 rows share the
    # 1024-row executables, 1025..2048 the 2048-row ones.
    est = fitted[name]
    rng = np.random.default_rng(0)
    for n in (1000, 1500):
        _use(est, rng.normal(size=(n, 2)), name)  # compiles the 1024- and 2048-row buckets
    with _CompileCounter() as counter:
        for n in (1001, 1024, 513, 1025, 1999, 2048):
            _use(est, rng.normal(size=(n, 2)), name)
    assert counter.count == 0


@pytest.mark.parametrize("name", sorted(OURS))
def test_padded_results_equal_scikit_learns_at_the_same_parameters(name, fitted, require_x64):
    # A fit's attributes copied onto scikit-learn's estimator: its predictions are the
    # reference. For GaussianMixture 70000 rows span two blocks (the second padded); the
    # blocks are the base class's, so BayesianGaussianMixture is checked on one.
    est = fitted[name]
    theirs = THEIRS[name](n_components=3)
    attributes = ["weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"]
    if name == "BayesianGaussianMixture":
        attributes += ["weight_concentration_", "mean_precision_", "degrees_of_freedom_"]
        theirs.weight_concentration_prior_type = est.weight_concentration_prior_type
    for attribute in attributes:
        setattr(theirs, attribute, getattr(est, attribute))
    theirs.converged_, theirs.n_features_in_ = True, 2
    n_rows = 70000 if name == "GaussianMixture" else 3000
    x = np.random.default_rng(1).normal(scale=4.0, size=(n_rows, 2))
    for n in (n_rows, 300, 1):
        np.testing.assert_allclose(est.predict_proba(x[:n]), theirs.predict_proba(x[:n]),
                                   rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(est.predict(x[:n]), theirs.predict(x[:n]))
    if name == "GaussianMixture":  # BGM's score_samples differ by design (docs/fitters.md)
        np.testing.assert_allclose(est.score_samples(x), theirs.score_samples(x), rtol=1e-10)
    if name == "GaussianMixture":
        xs, labels = est.sample(70000)
        assert xs.shape == (70000, 2) and labels.shape == (70000,)
        np.testing.assert_allclose(np.bincount(labels, minlength=3) / 70000, est.weights_,
                                   atol=0.01)
        assert not np.array_equal(xs[:100], xs[65536:65636])  # the second block draws anew


def test_scikit_learns_dataframe_column_names_check_passes():
    # Not among check_estimator's default checks for mixtures; run it for its pandas cases.
    pytest.importorskip("pandas")
    from sklearn.utils.estimator_checks import check_dataframe_column_names_consistency

    _quiet(check_dataframe_column_names_consistency, "GaussianMixture", GaussianMixture())
