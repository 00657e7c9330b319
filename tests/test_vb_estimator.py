"""`jaxgmm.BayesianGaussianMixture` against scikit-learn's `BayesianGaussianMixture`: the
constructor, per-iteration parity through warm_start, the constants its lower bound drops,
scoring against SciPy, bad input."""

import inspect
import warnings

import numpy as np
import pytest
from _helpers import blobs, iris
from scipy.special import gammaln, logsumexp
from scipy.stats import multivariate_normal, multivariate_t
from sklearn.mixture import BayesianGaussianMixture as SklearnBGM

import jaxgmm
from jaxgmm import BayesianGaussianMixture

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
WEIGHT_TYPES = ("dirichlet_process", "dirichlet_distribution")
POSTERIOR = (
    "weight_concentration_",
    "mean_precision_",
    "means_",
    "degrees_of_freedom_",
    "covariances_",
    "precisions_cholesky_",
)


def quiet(fit, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit(*args)


def test_constructor_arguments_and_defaults_are_scikit_learns():
    ours = BayesianGaussianMixture().get_params()
    theirs = SklearnBGM().get_params()
    assert set(theirs) <= set(ours)
    assert {name: ours[name] for name in theirs} == theirs
    assert set(ours) - set(theirs) == {"update"}
    # Every argument is keyword-only, as in scikit-learn.
    kinds = {p.kind for p in inspect.signature(BayesianGaussianMixture).parameters.values()}
    assert kinds == {inspect.Parameter.KEYWORD_ONLY}


def _continue_from_sklearn(covariance_type, weight_type, update, first=3, then=4, **extra):
    """scikit-learn fitted for ``first`` iterations; its attributes copied onto ours; both
    continue ``then`` iterations (warm_start)."""
    x, _ = blobs(0, n_samples=80, n_features=3)
    args = dict(
        n_components=3, covariance_type=covariance_type,
        weight_concentration_prior_type=weight_type, tol=0.0, **extra,
    )
    theirs = quiet(SklearnBGM(max_iter=first, random_state=0, **args).fit, x)
    ours = BayesianGaussianMixture(max_iter=then, warm_start=True, update=update, **args)
    for name in POSTERIOR:
        setattr(ours, name, getattr(theirs, name))
    quiet(ours.fit, x)
    quiet(theirs.set_params(warm_start=True, max_iter=then).fit, x)
    return x, ours, theirs


@pytest.mark.parametrize("weight_type", WEIGHT_TYPES)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_warm_start_from_sklearn_continues_as_sklearn(covariance_type, weight_type, require_x64):
    x, ours, theirs = _continue_from_sklearn(covariance_type, weight_type, "sklearn")
    for name in POSTERIOR + ("weights_", "precisions_"):
        np.testing.assert_allclose(
            np.asarray(getattr(ours, name)), np.asarray(getattr(theirs, name)), rtol=1e-8,
            err_msg=name,
        )
    np.testing.assert_allclose(ours.lower_bounds_, np.ravel(theirs.lower_bounds_), rtol=1e-8)
    assert ours.n_iter_ == theirs.n_iter_
    np.testing.assert_allclose(ours.predict_proba(x), theirs.predict_proba(x), rtol=1e-8,
                               atol=1e-12)
    np.testing.assert_array_equal(ours.predict(x), theirs.predict(x))
    for name in ("weight_concentration_prior_", "mean_precision_prior_", "mean_prior_",
                 "degrees_of_freedom_prior_", "covariance_prior_"):
        np.testing.assert_allclose(getattr(ours, name), getattr(theirs, name), rtol=1e-12)


@pytest.mark.parametrize("weight_type", WEIGHT_TYPES)
def test_default_update_is_sklearns_for_full_covariances(weight_type, require_x64):
    _, ours, theirs = _continue_from_sklearn("full", weight_type, "exact")
    for name in POSTERIOR:
        np.testing.assert_allclose(
            np.asarray(getattr(ours, name)), np.asarray(getattr(theirs, name)), rtol=1e-8
        )


@pytest.mark.parametrize("weight_type", WEIGHT_TYPES)
def test_elbo_minus_sklearn_lower_bound_is_the_constants_it_drops(weight_type, require_x64):
    # Full covariances at the update's optimum (Bishop 2006, eqs. 10.70-10.77): everything
    # but these terms cancels, and scikit-learn drops them ("removed all the constant
    # terms", _compute_lower_bound). Written here from the prior alone.
    x, ours, theirs = _continue_from_sklearn("full", weight_type, "sklearn")
    n, d = x.shape
    k = ours.n_components
    alpha0, kappa0 = ours.weight_concentration_prior_, ours.mean_precision_prior_
    nu0, psi = ours.degrees_of_freedom_prior_, ours.covariance_prior_
    if weight_type == "dirichlet_process":
        weights = k * np.log(alpha0)  # -sum_k log B(1, gamma), the sticks' prior normaliser
        nk = ours.weight_concentration_[0] - 1.0
    else:
        weights = gammaln(k * alpha0) - k * gammaln(alpha0)  # log C(alpha0)
        nk = ours.weight_concentration_ - alpha0
    wishart = k * (  # K log B(Psi^-1, nu0) with the log pi term scikit-learn keeps
        0.5 * nu0 * np.linalg.slogdet(psi)[1] - 0.5 * nu0 * d * np.log(2.0)
        - gammaln(0.5 * (nu0 - np.arange(d))).sum()
    )
    dropped = weights - 0.5 * n * d * np.log(2 * np.pi) + 0.5 * k * d * np.log(kappa0) + wishart
    # reg_covar enters the update's scatter but not the data's likelihood: +1/2 reg N_k
    # tr(E Lambda_k) is left over (not a constant; 1e-4 nats here).
    regularisation = 0.5 * ours.reg_covar * np.sum(nk * np.trace(ours.precisions_, axis1=1, axis2=2))
    np.testing.assert_allclose(
        ours.elbo_ * n - float(np.ravel(theirs.lower_bound_)[0]),
        dropped + regularisation,
        rtol=1e-8,
    )


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_fit_scores_against_independent_references(covariance_type, require_x64):
    x = iris()
    gm = quiet(
        BayesianGaussianMixture(n_components=3, covariance_type=covariance_type,
                                random_state=0, max_iter=200).fit, x
    )
    theirs = quiet(SklearnBGM(n_components=3, covariance_type=covariance_type,
                              random_state=0, max_iter=2).fit, x)
    for name in POSTERIOR + ("weights_", "precisions_"):
        assert np.shape(getattr(gm, name)) == np.shape(getattr(theirs, name)), name
        assert np.all(np.isfinite(getattr(gm, name))), name
    k, d = gm.means_.shape
    cov = {
        "full": lambda c: c,
        "tied": lambda c: np.broadcast_to(c, (k, d, d)),
        "diag": lambda c: np.stack([np.diag(v) for v in c]),
        "spherical": lambda c: c[:, None, None] * np.eye(d),
    }[covariance_type](gm.covariances_)
    plug_in = logsumexp(
        [np.log(w) + multivariate_normal(m, c).logpdf(x) for w, m, c in zip(gm.weights_, gm.means_, cov)],
        axis=0,
    )
    np.testing.assert_allclose(gm.score_samples(x), plug_in, rtol=1e-10)
    assert gm.score(x) == pytest.approx(gm.log_likelihood_, rel=1e-10)
    np.testing.assert_allclose(gm.predict_proba(x).sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(gm.predict(x), gm.predict_proba(x).argmax(axis=1))
    assert np.isfinite(gm.elbo_) and gm.elbo_ < gm.log_likelihood_
    assert np.all(np.diff(gm.elbos_) >= -1e-10 * np.abs(gm.elbos_[1:]))  # exact: monotone
    xs, ys = gm.sample(50)
    assert xs.shape == (50, d) and ys.shape == (50,)


def test_predictive_is_a_student_t_mixture(require_x64):
    # Bishop (2006) eq. 10.81: St(x | m_k, ((nu_k + 1 - D) kappa_k / (1 + kappa_k)) W_k,
    # nu_k + 1 - D), with W_k = precisions_k / nu_k; SciPy's multivariate_t as reference.
    x = iris()
    gm = quiet(BayesianGaussianMixture(n_components=3, random_state=0, max_iter=200).fit, x)
    d = x.shape[1]
    parts = []
    for w, m, kappa, nu, c in zip(gm.weights_, gm.means_, gm.mean_precision_,
                                  gm.degrees_of_freedom_, gm.covariances_):
        df = nu + 1 - d
        shape = (1 + kappa) * nu / (kappa * df) * c
        parts.append(np.log(w) + multivariate_t(m, shape, df=df).logpdf(x))
    np.testing.assert_allclose(gm.score_samples_predictive(x), logsumexp(parts, axis=0),
                               rtol=1e-10)


def test_sparse_dirichlet_process_empties_surplus_components():
    x, labels = blobs(2, n_samples=300, n_features=2, n_components=3, spread=8.0)
    assert len(set(labels)) == 3
    gm = quiet(
        BayesianGaussianMixture(n_components=10, weight_concentration_prior=1e-3,
                                random_state=0, max_iter=500).fit, x
    )
    assert gm.n_active_components_ == 3
    assert np.sum(gm.weights_ > 1e-2) == 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weight_concentration_prior_type": "dp"},
         r"weight_concentration_prior_type must be one of \['dirichlet_distribution', "
         r"'dirichlet_process'\]"),
        ({"weight_concentration_prior": 0.0}, "weight_concentration_prior must be > 0"),
        ({"mean_precision_prior": -1.0}, "mean_precision_prior"),
        ({"mean_prior": [0.0]}, r"mean_prior.*\(2,\)"),
        ({"degrees_of_freedom_prior": 0.5}, "degrees_of_freedom_prior must be > n_features - 1"),
        ({"covariance_prior": np.eye(3)}, r"covariance_prior.*\(2, 2\)"),
        ({"covariance_prior": -np.eye(2)}, "covariance_prior.*positive-definite"),
        ({"covariance_prior": [1.0, -1.0], "covariance_type": "diag"}, "covariance_prior.*> 0"),
        ({"update": "fast"}, r"update must be one of \['exact', 'sklearn'\]"),
        ({"init_params": ["kmeans"]}, "init_params must be one of"),
        ({"n_components": 0}, "n_components"),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BayesianGaussianMixture(**{"n_components": 2, **kwargs}).fit(blobs(0)[0])


def test_warm_start_from_bad_attributes_names_them():
    gm = BayesianGaussianMixture(n_components=2, warm_start=True)
    for name in POSTERIOR:
        setattr(gm, name, np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="warm_start=True: weight_concentration_ must have shape"):
        gm.fit(blobs(0)[0])


def test_float32_overflow_raises_instead_of_nan():
    x = (iris() * 1e20).astype(np.float32)
    with pytest.raises(ValueError, match="BayesianGaussianMixture.*overflow float32.*standardise"):
        BayesianGaussianMixture(n_components=3).fit(x)


def test_verbose_reports_sklearns_lower_bound_change(caplog):
    x, _ = blobs(0)
    gm = BayesianGaussianMixture(n_components=3, random_state=0, tol=0.0, max_iter=4,
                                 verbose=2, verbose_interval=2)
    with caplog.at_level("INFO", logger="jaxgmm"):
        quiet(gm.fit, x)
    iterations = [r.getMessage() for r in caplog.records if "Iteration" in r.getMessage()]
    assert [int(m.split()[1]) for m in iterations] == [2, 4]
    change = float(iterations[0].split("ll change")[1])
    np.testing.assert_allclose(change, gm.lower_bounds_[1] - gm.lower_bounds_[0], rtol=1e-4)


def test_top_level_export():
    assert jaxgmm.BayesianGaussianMixture is jaxgmm.vb.BayesianGaussianMixture
