"""Variational Bayes against scikit-learn's `BayesianGaussianMixture` (its next iterations
from its own fitted attributes, its lower bound and the constants it drops), the
Student-t predictive against SciPy, active components, restarts and bad input."""

import functools
import math
import warnings

import jax
import numpy as np
import pytest
from scipy import stats as scipy_stats
from scipy.special import gammaln, multigammaln
from sklearn.mixture import BayesianGaussianMixture

import jaxgmm
from jaxgmm.priors import ConjugatePrior
from jaxgmm.vb import (
    VBPosterior,
    fit_vb,
    n_active_components,
    posterior_predictive_log_prob,
    vb_spec,
)

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
WEIGHT_TYPES = ("dirichlet_distribution", "dirichlet_process")


def _data(seed=0, n=50):
    rng = np.random.default_rng(seed)
    centres = ([0.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, 5.0, -2.0])
    return np.concatenate([rng.normal(size=(n, 3)) + c for c in centres])


def _posterior_of(sk):
    wc = sk.weight_concentration_
    wc = np.stack(wc) if isinstance(wc, tuple) else wc
    return VBPosterior(
        weight_concentration=wc,
        mean_precision=sk.mean_precision_,
        means=sk.means_,
        degrees_of_freedom=sk.degrees_of_freedom_,
        covariances=sk.covariances_,
        prec_chol=sk.precisions_cholesky_,
    )


def _prior_of(sk, weight_type):
    """The conjugate prior whose hyperparameters are scikit-learn's resolved ones (the
    fields mean the same: covariance_prior Psi (D, D), its diagonal, or tr(Psi)/D)."""
    return ConjugatePrior(
        weight_concentration=sk.weight_concentration_prior_,
        mean_prior=tuple(sk.mean_prior_),
        mean_precision=sk.mean_precision_prior_,
        degrees_of_freedom=float(sk.degrees_of_freedom_prior_),
        covariance_prior=np.asarray(sk.covariance_prior_).tolist(),
        weight_prior_type=weight_type,
    )


def _sklearn_after(x, covariance_type, weight_type, m, more):
    """scikit-learn's posterior after m iterations and after ``more`` further ones (warm
    start), with its lower_bound_ (a total) at the end."""
    sk = BayesianGaussianMixture(
        n_components=4, covariance_type=covariance_type, max_iter=m, tol=0,
        weight_concentration_prior_type=weight_type, warm_start=True, random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter
        sk.fit(x)
        start = _posterior_of(sk)
        sk.max_iter = more
        sk.fit(x)
    return sk, start, _posterior_of(sk), float(np.ravel(sk.lower_bound_)[0])


@functools.cache
def _sklearn_and_ours(covariance_type, weight_type, update):
    """scikit-learn after 3 + 2 iterations on `_data`, and ours for the same 2 from its
    state after 3 (shared by the tests below: one compile per fitter)."""
    x = _data()
    sk, start, after, lower_bound = _sklearn_after(x, covariance_type, weight_type, 3, 2)
    spec = jaxgmm.GMMSpec(4, covariance_type, reg_covar=sk.reg_covar)
    result = fit_vb(
        jax.random.PRNGKey(0), x, spec, prior=_prior_of(sk, weight_type), max_iter=2,
        tol=0, init_posterior=start, update=update,
    )
    return x, sk, after, lower_bound, result


@pytest.fixture(scope="module", autouse=True)
def _forget_shared_fits():
    yield
    _sklearn_and_ours.cache_clear()


@pytest.mark.parametrize("weight_type", WEIGHT_TYPES)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_next_iterations_equal_sklearns(covariance_type, weight_type, require_x64):
    # full covariances: scikit-learn's update is exact coordinate ascent (both agree)
    updates = ("sklearn", "exact") if covariance_type == "full" else ("sklearn",)
    for update in updates:
        _, sk, after, lower_bound, result = _sklearn_and_ours(
            covariance_type, weight_type, update
        )
        ours = result.state.fitter_state
        for name, a, b in zip(VBPosterior._fields, ours, after):
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-8, atol=0, err_msg=name)
        np.testing.assert_allclose(result.params.weights, sk.weights_, rtol=1e-8)
        np.testing.assert_allclose(
            result.trace.extras["sklearn_lower_bound_total"][-1], lower_bound, rtol=1e-8
        )


@pytest.mark.parametrize("covariance_type", ["tied", "diag", "spherical"])
def test_exact_update_differs_from_sklearns_where_documented(covariance_type, require_x64):
    x = _data()
    sk, start, after, _ = _sklearn_after(x, covariance_type, "dirichlet_distribution", 3, 1)
    spec = jaxgmm.GMMSpec(4, covariance_type, reg_covar=sk.reg_covar)
    result = fit_vb(
        jax.random.PRNGKey(0), x, spec, prior=_prior_of(sk, "dirichlet_distribution"),
        max_iter=1, tol=0, init_posterior=start, update="exact",
    )
    ours = result.state.fitter_state
    assert not np.allclose(ours.covariances, after.covariances, rtol=1e-6)
    if covariance_type == "diag":
        return  # diag's update is scikit-learn's; only its E-step's E log|Lambda| differs
    # exact: nu = nu0 + N (tied, the data counted once) or nu0 + D N_k (spherical: each
    # point brings D observations of lambda_k); scikit-learn adds N / K and N_k
    n_k = np.asarray(ours.weight_concentration) - sk.weight_concentration_prior_
    grows_by = len(x) if covariance_type == "tied" else x.shape[1] * n_k
    np.testing.assert_allclose(
        ours.degrees_of_freedom, sk.degrees_of_freedom_prior_ + grows_by, rtol=1e-10
    )


def _dropped_constants_full(n_samples, n_features, n_components, sk, weight_type, nk):
    """What scikit-learn's lower bound leaves out of the complete ELBO (full covariances),
    from Bishop (2006) eqs. 10.71-10.77 at the optimal q(theta): the Gaussian's
    -N D/2 log 2 pi, the prior normalisers K [D/2 log kappa0 + log B(W0, nu0)] with the
    D(D-1)/4 log pi its Wishart normaliser drops, the weight prior's normaliser, and
    1/2 reg_covar sum_k N_k tr(E Lambda_k) (it counts N_k reg_covar I as data scatter)."""
    d, k = n_features, n_components
    nu0, kappa0 = sk.degrees_of_freedom_prior_, sk.mean_precision_prior_
    psi = np.asarray(sk.covariance_prior_)
    log_b0 = nu0 / 2 * np.linalg.slogdet(psi)[1] - nu0 * d / 2 * math.log(2) - multigammaln(
        nu0 / 2, d
    )
    const = -n_samples * d / 2 * math.log(2 * math.pi) + k * (
        d / 2 * math.log(kappa0) + log_b0 + d * (d - 1) / 4 * math.log(math.pi)
    )
    alpha0 = sk.weight_concentration_prior_
    if weight_type == "dirichlet_process":
        const += k * math.log(alpha0)  # -K log B(1, gamma)
    else:
        const += gammaln(k * alpha0) - k * gammaln(alpha0)
    traces = np.trace(sk.precisions_, axis1=-2, axis2=-1)
    return const + 0.5 * sk.reg_covar * np.sum(nk * traces)


@pytest.mark.parametrize("weight_type", WEIGHT_TYPES)
def test_elbo_minus_sklearn_lower_bound_is_the_dropped_constants(weight_type, require_x64):
    # the exact update's fit of test_next_iterations_equal_sklearns (after 3 + 2)
    x, sk, _, lower_bound, result = _sklearn_and_ours("full", weight_type, "exact")
    wc = np.asarray(sk.weight_concentration_[0] if weight_type == "dirichlet_process"
                    else sk.weight_concentration_)
    nk = wc - (1.0 if weight_type == "dirichlet_process" else sk.weight_concentration_prior_)
    dropped = _dropped_constants_full(len(x), 3, 4, sk, weight_type, nk)
    np.testing.assert_allclose(
        result.trace.bound[-1] * len(x) - lower_bound, dropped, rtol=1e-8
    )


# -- the posterior predictive -------------------------------------------------------------
def _scipy_predictive(posterior, x, covariance_type, weights):
    """log sum_k w_k St_k(x) with each component's Student-t from SciPy (Bishop 2006,
    eq. 10.81: dof nu + 1 - D, scale (1 + kappa) / (kappa (nu + 1 - D)) W^-1; diag: per
    feature dof nu, scale (1 + kappa) / kappa cov_kd; spherical: dof nu, isotropic)."""
    k, d = posterior.means.shape
    cov = np.asarray(posterior.covariances)
    dof = np.broadcast_to(np.asarray(posterior.degrees_of_freedom), (k,))
    kappa = np.asarray(posterior.mean_precision)
    out = []
    for j in range(k):
        m = np.asarray(posterior.means[j])
        if covariance_type in ("full", "tied"):
            w_inv = (cov if covariance_type == "tied" else cov[j]) * dof[j]
            df = dof[j] + 1 - d
            shape = (1 + kappa[j]) / (kappa[j] * df) * w_inv
            out.append(scipy_stats.multivariate_t(m, shape, df=df).logpdf(x))
        elif covariance_type == "diag":
            scale = np.sqrt((1 + kappa[j]) / kappa[j] * cov[j])
            out.append(np.sum(scipy_stats.t(dof[j], m, scale).logpdf(x), axis=1))
        else:
            shape = (1 + kappa[j]) / kappa[j] * cov[j] * np.eye(d)
            out.append(scipy_stats.multivariate_t(m, shape, df=dof[j]).logpdf(x))
    out = np.stack(out, axis=1) + np.log(weights)
    top = out.max(axis=1, keepdims=True)
    return (top + np.log(np.sum(np.exp(out - top), axis=1, keepdims=True)))[:, 0]


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_posterior_predictive_is_scipys_student_t_mixture(covariance_type, require_x64):
    x = _data(4, n=40)  # the data, spec and max_iter of the tests below (their compiles)
    spec = jaxgmm.GMMSpec(3, covariance_type)
    result = fit_vb(jax.random.PRNGKey(0), x, spec, max_iter=20, tol=0)
    posterior = result.state.fitter_state
    held_out = _data(5, n=4)
    ours = posterior_predictive_log_prob(posterior, held_out, vb_spec(spec, x))
    ref = _scipy_predictive(posterior, held_out, covariance_type, np.asarray(result.params.weights))
    np.testing.assert_allclose(ours, ref, rtol=1e-10)


def test_posterior_predictive_matches_monte_carlo_over_q(require_x64):
    """E_q[p(x | theta)] by sampling q (NumPy/SciPy draws), for one full component:
    checks Bishop's eq. 10.81 itself, not only its evaluation."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 2)) @ np.array([[1.0, 0.5], [0.0, 0.8]])
    spec = jaxgmm.GMMSpec(1, "full")
    posterior = fit_vb(jax.random.PRNGKey(0), x, spec, max_iter=3, tol=0).state.fitter_state
    nu = float(posterior.degrees_of_freedom[0])
    kappa = float(posterior.mean_precision[0])
    w = np.linalg.inv(np.asarray(posterior.covariances[0]) * nu)
    draws = 40000
    lam = scipy_stats.wishart(df=nu, scale=w).rvs(draws, random_state=rng)  # (S, D, D)
    cov = np.linalg.inv(lam)
    mu = np.asarray(posterior.means[0]) + np.einsum(
        "sde,se->sd", np.linalg.cholesky(cov / kappa), rng.normal(size=(draws, 2))
    )
    point = np.array([[0.5, -0.3], [2.0, 1.0]])
    diff = point[None] - mu[:, None]  # (S, 2 points, D)
    maha = np.einsum("spd,sde,spe->sp", diff, lam, diff)
    logs = -0.5 * maha + 0.5 * np.linalg.slogdet(lam)[1][:, None] - np.log(2 * np.pi)
    mc = np.log(np.mean(np.exp(logs - logs.max(0)), axis=0)) + logs.max(0)
    ours = posterior_predictive_log_prob(posterior, point, vb_spec(spec, x))
    np.testing.assert_allclose(ours, mc, atol=0.02)


# -- active components, restarts, input ---------------------------------------------------
def test_surplus_components_empty_out_under_a_sparse_process_prior():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    x = np.concatenate([rng.normal(size=(100, 2)) * 0.7 + c for c in centres])
    prior = ConjugatePrior(weight_concentration=0.01, weight_prior_type="dirichlet_process")
    spec = jaxgmm.GMMSpec(10, "full")
    # single runs can keep one-point components (a local optimum of the ELBO, -3.47 vs
    # -3.41 nats per sample here); restarts kept by the ELBO find the three clusters
    result = fit_vb(
        jax.random.PRNGKey(0), x, spec, prior=prior, max_iter=500, tol=1e-9, n_init=4
    )
    spec = vb_spec(spec, x, prior)
    assert n_active_components(result.state.fitter_state, spec) == 3
    assert n_active_components(result.state.fitter_state, spec, threshold=0.0) == 10
    weights = np.asarray(result.params.weights)
    np.testing.assert_allclose(np.sort(weights)[-3:], [1 / 3] * 3, atol=0.02)


def test_restarts_keep_the_highest_final_elbo():
    x = _data(4, n=40)
    spec = jaxgmm.GMMSpec(3, "diag")
    params = jaxgmm.initial_params(jax.random.PRNGKey(2), x, spec, "random", 3)
    one = [
        fit_vb(
            jax.random.PRNGKey(0), x, spec, max_iter=20, tol=0,
            init=jax.tree_util.tree_map(lambda a, r=r: a[r], params),
        ).trace.bound[-1]
        for r in range(3)
    ]
    assert np.ptp(one) > 1e-6  # the restarts end apart, so the choice is tested
    both = fit_vb(jax.random.PRNGKey(0), x, spec, max_iter=20, tol=0, init=params)
    assert both.best_restart == int(np.argmax(one))
    np.testing.assert_allclose(both.trace.bound[-1], max(one), rtol=1e-12)
    assert both.restarts.n_iter.shape == (3,)
    assert both.selection == "elbo"
    assert both.restarts.degenerate.shape == (3,) and len(both.restarts.degeneracies) == 3
    assert set(both.restarts.status) <= set(jaxgmm.fit.results.STATUSES)


def test_float32_full_matches_float64():
    x = _data(4, n=40)
    spec = jaxgmm.GMMSpec(3, "full")
    start = jaxgmm.initial_params(jax.random.PRNGKey(0), x, spec, "kmeans", 1)
    r64 = fit_vb(jax.random.PRNGKey(0), x.astype(np.float64), spec, max_iter=20, tol=0, init=start)
    r32 = fit_vb(jax.random.PRNGKey(0), x.astype(np.float32), spec, max_iter=20, tol=0, init=start)
    assert r32.params.means.dtype == np.float32
    np.testing.assert_allclose(r32.trace.bound, r64.trace.bound, rtol=2e-5)


def test_bad_input_is_refused_by_name():
    x = _data(4, n=40)
    spec = jaxgmm.GMMSpec(3, "full")
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="conjugate"):
        fit_vb(key, x, spec, prior={"name": "lkj"})
    with pytest.raises(ValueError, match="update must be one of"):
        fit_vb(key, x, spec, update="fast")
    with pytest.raises(ValueError, match="weight_prior_type"):
        fit_vb(key, x, spec, prior={"name": "conjugate", "weight_prior_type": "pitman_yor"})
    good = fit_vb(key, x, spec, max_iter=20, tol=0).state.fitter_state  # as the tests above
    with pytest.raises(ValueError, match=r"init_posterior.means must have shape \(3, 3\)"):
        fit_vb(key, x, spec, init_posterior=good._replace(means=good.means[:, :2]))
    with pytest.raises(ValueError, match="init_posterior must be a VBPosterior"):
        fit_vb(key, x, spec, init_posterior=3)
    process = {"name": "conjugate", "weight_prior_type": "dirichlet_process"}
    with pytest.raises(ValueError, match=r"weight_concentration must have shape \(2, 3\)"):
        fit_vb(key, x, spec, prior=process, init_posterior=good)
    with pytest.raises(ValueError, match="threshold"):
        n_active_components(good, vb_spec(spec, x), threshold=1.5)


def test_max_iter_0_is_the_update_from_the_initial_responsibilities(require_x64):
    # VB's init holds a point mass at the initial parameters; a fit that makes no step
    # must still return q_0, the update from their responsibilities, as scikit-learn's
    # max_iter=0 does (not the point mass, whose precisions are infinite).
    x = _data()
    weights = np.array([0.2, 0.3, 0.5])
    means = x[[0, 60, 120]]
    covariance = np.cov(x.T)
    start = np.stack(
        [w * scipy_stats.multivariate_normal(m, covariance).pdf(x) for w, m in zip(weights, means)],
        axis=1,
    )
    start /= start.sum(axis=1, keepdims=True)

    class FromResponsibilities(BayesianGaussianMixture):
        def _initialize_parameters(self, X, random_state, xp=None):
            self._initialize(X, start)

    sk = FromResponsibilities(n_components=3, max_iter=0, random_state=0,
                              weight_concentration_prior_type="dirichlet_distribution")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.fit(x)
    params = jaxgmm.model.params_from_covariances(
        weights, means, np.broadcast_to(covariance, (3, 3, 3)), "full"
    )
    spec = jaxgmm.GMMSpec(3, "full", reg_covar=sk.reg_covar)
    result = fit_vb(jax.random.PRNGKey(0), x, spec, prior=_prior_of(sk, "dirichlet_distribution"),
                    max_iter=0, init=params)
    assert result.n_iter == 0
    for name, a, b in zip(VBPosterior._fields, result.state.fitter_state, _posterior_of(sk)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-8, err_msg=name)
    np.testing.assert_allclose(result.params.weights, sk.weights_, rtol=1e-8)
    # the plug-in log-likelihood (scikit-learn's score for VB is not a normalised density)
    plug_in = np.log(sum(
        w * scipy_stats.multivariate_normal(m, c).pdf(x)
        for w, m, c in zip(sk.weights_, sk.means_, sk.covariances_)
    )).mean()
    np.testing.assert_allclose(result.log_likelihood, plug_in, rtol=1e-8)
