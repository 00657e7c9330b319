"""The prior registry: construction and errors, densities against SciPy, the site <->
params maps, and the conjugate prior's closed-form MAP M-step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _bayes_helpers import faithful, log_posterior_total
from scipy import stats

import jaxgmm
from jaxgmm.priors import (
    PRIORS,
    make_prior,
    prior_from_config,
    resolve_prior,
)

COV_TYPES = ["full", "tied", "diag", "spherical"]


@pytest.fixture(scope="module")
def data():
    return jnp.asarray(faithful())


@pytest.fixture(scope="module")
def ml_fits():
    """Fixed, plausible Old Faithful parameters for every covariance type (no fitting)."""
    weights = np.array([0.36, 0.64])
    means = np.array([[2.04, 54.5], [4.29, 80.0]])
    full = np.array([[[0.07, 0.44], [0.44, 33.7]], [[0.17, 0.94], [0.94, 36.0]]])
    cov = {
        "full": full,
        "tied": full.mean(0),
        "diag": np.diagonal(full, axis1=1, axis2=2),
        "spherical": np.diagonal(full, axis1=1, axis2=2).mean(1),
    }
    return {ct: jaxgmm.params_from_covariances(weights, means, cov[ct], ct) for ct in COV_TYPES}


def test_unknown_prior_name_lists_valid():
    with pytest.raises(ValueError, match="valid priors.*conjugate.*flat.*lkj"):
        make_prior("wishart")


def test_unknown_hyperparameter_lists_valid():
    with pytest.raises(ValueError, match=r"no hyperparameter\(s\) \['etaa'\].*eta"):
        make_prior("lkj", etaa=2.0)


@pytest.mark.parametrize("bad", [{"eta": 0.0}, {"eta": -1.0}, {"scale_distribution": "gamma"}])
def test_bad_hyperparameter_values(bad):
    with pytest.raises(ValueError, match="lkj"):
        make_prior("lkj", **bad)


def test_config_form_and_hashability():
    prior = prior_from_config({"name": "conjugate", "mean_prior": [0.0, 1.0], "mean_precision": 2})
    assert prior == make_prior("conjugate", mean_prior=(0.0, 1.0), mean_precision=2.0)
    assert prior.mean_prior == (0.0, 1.0)
    spec = jaxgmm.GMMSpec(2, "full", prior=prior)
    assert hash(spec) == hash(
        jaxgmm.GMMSpec(
            2,
            "full",
            prior=prior_from_config(
                {"name": "conjugate", "mean_prior": np.array([0.0, 1.0]), "mean_precision": 2.0}
            ),
        )
    )
    with pytest.raises(ValueError, match="'name'"):
        prior_from_config({"eta": 1.0})


def test_unresolved_data_defaults_raise(data, ml_fits):
    spec = jaxgmm.GMMSpec(2, "full", prior=make_prior("conjugate"))
    with pytest.raises(ValueError, match="with_data_defaults"):
        spec.prior.log_density(ml_fits["full"], spec)
    with pytest.raises(ValueError, match="with_data_defaults"):
        jaxgmm.fit_em(jax.random.key(0), data, spec)


def test_data_defaults_values(data):
    spec = resolve_prior(jaxgmm.GMMSpec(3, "full", prior=make_prior("conjugate")), data)
    x = np.asarray(data)
    np.testing.assert_allclose(spec.prior.mean_prior, x.mean(0))
    np.testing.assert_allclose(
        spec.prior.covariance_prior, np.cov(x, rowvar=False, bias=True) / 3 ** (2 / 2)
    )
    lkj = make_prior("lkj", mean_scale=1.0).with_data_defaults(x)
    assert lkj.mean_scale == 1.0  # given values are kept
    np.testing.assert_allclose(lkj.scale_scale, x.std(0))


@pytest.mark.parametrize("name", sorted(PRIORS))
@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_sites_round_trip_and_finite_density(name, cov_type, data, ml_fits):
    spec = resolve_prior(jaxgmm.GMMSpec(2, cov_type, prior=make_prior(name)), data)
    params = ml_fits[cov_type]
    prior = spec.prior
    back = prior.params_from_sites(prior.site_values(params, spec), spec, 2, data.dtype)
    for a, b in zip(back, params, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert np.isfinite(float(prior.log_density(params, spec)))


def test_conjugate_full_density_matches_scipy(data, ml_fits):
    prior = make_prior(
        "conjugate", weight_concentration=2.5, mean_precision=0.3, degrees_of_freedom=4.5
    ).with_data_defaults(data, 2)
    spec = jaxgmm.GMMSpec(2, "full", prior=prior)
    p = ml_fits["full"]
    cov = np.asarray(jaxgmm.covariances(p, "full"))
    psi, m0 = np.asarray(prior.covariance_prior), np.asarray(prior.mean_prior)
    expected = stats.dirichlet.logpdf(np.asarray(p.weights), [2.5, 2.5])
    for k in range(2):
        expected += stats.invwishart.logpdf(cov[k], df=4.5, scale=psi)
        expected += stats.multivariate_normal.logpdf(np.asarray(p.means[k]), m0, cov[k] / 0.3)
    np.testing.assert_allclose(float(prior.log_density(p, spec)), expected, rtol=1e-10)


@pytest.mark.parametrize("cov_type", ["diag", "spherical"])
def test_conjugate_diagonal_density_matches_scipy(cov_type, data, ml_fits):
    prior = make_prior("conjugate", mean_precision=0.5, degrees_of_freedom=5.0)
    prior = prior.with_data_defaults(data, 2)
    spec = jaxgmm.GMMSpec(2, cov_type, prior=prior)
    p = ml_fits[cov_type]
    var = np.asarray(jaxgmm.covariances(p, cov_type))
    psi, m0 = np.asarray(prior.covariance_prior), np.asarray(prior.mean_prior)
    rate = np.diag(psi) / 2 if cov_type == "diag" else np.trace(psi) / 4
    var_b = var if cov_type == "diag" else var[:, None] * np.ones(2)
    expected = stats.dirichlet.logpdf(np.asarray(p.weights), [1.0, 1.0])
    expected += np.sum(stats.invgamma.logpdf(var, 2.5, scale=rate))
    expected += np.sum(stats.norm.logpdf(np.asarray(p.means), m0, np.sqrt(var_b / 0.5)))
    np.testing.assert_allclose(float(prior.log_density(p, spec)), expected, rtol=1e-10)


def test_lkj_density_matches_scipy_parts(data, ml_fits):
    """weights, means and half-normal scales against SciPy; the D=2 LKJ-Cholesky term
    against its closed form: for L = [[1, 0], [r, sqrt(1 - r^2)]], p(L) is the LKJ
    density of r, (1 - r^2)^(eta - 1) / B(eta, eta) / 2^(2 eta - 1), times |dr/dL21| = 1."""
    prior = make_prior("lkj", eta=3.0, weight_concentration=2.0).with_data_defaults(data)
    spec = jaxgmm.GMMSpec(2, "full", prior=prior)
    p = ml_fits["full"]
    cov = np.asarray(jaxgmm.covariances(p, "full"))
    sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    r = cov[:, 0, 1] / (sd[:, 0] * sd[:, 1])
    expected = stats.dirichlet.logpdf(np.asarray(p.weights), [2.0, 2.0])
    expected += np.sum(stats.norm.logpdf(np.asarray(p.means), prior.mean_prior, prior.mean_scale))
    expected += np.sum(stats.halfnorm.logpdf(sd, scale=prior.scale_scale))
    eta = 3.0
    expected += np.sum(stats.beta.logpdf((r + 1) / 2, eta, eta) - np.log(2))
    np.testing.assert_allclose(float(prior.log_density(p, spec)), expected, rtol=1e-9)


def test_em_refuses_lkj_naming_fitters(data):
    spec = resolve_prior(jaxgmm.GMMSpec(2, "full", prior=make_prior("lkj")), data)
    with pytest.raises(ValueError, match="gradient MAP, SVI or NUTS"):
        jaxgmm.fit_em(jax.random.key(0), data, spec)


def test_em_refuses_sparse_dirichlet(data):
    spec = resolve_prior(jaxgmm.GMMSpec(2, "full", prior=make_prior("sparse_dirichlet")), data)
    with pytest.raises(ValueError, match="weight_concentration >= 1.*SVI.*NUTS"):
        jaxgmm.fit_em(jax.random.key(0), data, spec)


def test_flat_em_step_is_maximum_likelihood(data, ml_fits):
    spec = jaxgmm.GMMSpec(2, "full", prior=make_prior("flat"))
    log_resp = jaxgmm.em.e_step(data, ml_fits["full"], spec)[1]
    stats_ = jaxgmm.model.sufficient_statistics(data, log_resp, spec)
    ml = jaxgmm.em.m_step(data, log_resp, jaxgmm.GMMSpec(2, "full"))
    for a, b in zip(spec.prior.em_m_step(stats_, spec), ml, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_conjugate_em_map_is_a_stationary_point_and_monotone(cov_type, data, require_x64):
    """The closed-form M-step must maximise log p(X | params) + log_density(params): the
    EM fixed point has zero gradient of the log-posterior (an independent check of the
    formulas), and the log-posterior never decreases along the EM path."""
    prior = make_prior("conjugate", weight_concentration=3.0, mean_precision=0.5)
    spec = resolve_prior(jaxgmm.GMMSpec(2, cov_type, reg_covar=1e-12, prior=prior), data)
    start = jax.tree_util.tree_map(
        lambda a: a[0], jaxgmm.initial_params(jax.random.key(2), data, spec, "kmeans", 1)
    )

    @jax.jit
    def em_path(params):
        def body(p, _):
            new = jaxgmm.em.m_step(data, jaxgmm.em.e_step(data, p, spec)[1], spec)
            return new, log_posterior_total(data, new, spec)

        return jax.lax.scan(body, params, None, length=60)

    final, values = em_path(start)
    values = np.concatenate([[float(log_posterior_total(data, start, spec))], values])

    def objective(logits, means, prec_chol):
        params = jaxgmm.GMMParams(jax.nn.softmax(logits), means, prec_chol)
        return log_posterior_total(data, params, spec)

    grads = jax.grad(objective, argnums=(0, 1, 2))(
        jnp.log(final.weights), final.means, final.prec_chol
    )
    g_pc = grads[2]
    if cov_type in ("full", "tied"):
        g_pc = jnp.triu(g_pc)  # only the upper triangle is a free coordinate
    for g, v in zip((grads[0], grads[1], g_pc), (None, final.means, final.prec_chol), strict=True):
        scale = 1.0 if v is None else jnp.abs(v) + 1e-3
        assert float(jnp.max(jnp.abs(g) * scale)) < 1e-5 * data.shape[0]


def test_priors_factorise_through_the_linalg_wrapper(ml_fits):
    # Priors use `jaxgmm.model.linalg.cholesky` (one matrix per call, which avoids the
    # batched-LAPACK hang on several CPU devices), never jnp.linalg.cholesky directly,
    # and the site values it gives equal the direct factorisation's.
    import pathlib

    folder = pathlib.Path(jaxgmm.priors.__file__).parent
    for path in folder.glob("*.py"):
        assert "jnp.linalg.cholesky" not in path.read_text(), path.name
    lkj = make_prior("lkj")
    spec = jaxgmm.GMMSpec(2, "full", prior=lkj)
    sites = lkj.site_values(ml_fits["full"], spec)
    cov = jaxgmm.covariances(ml_fits["full"], "full")
    scales = jnp.sqrt(jnp.diagonal(cov, axis1=-2, axis2=-1))
    np.testing.assert_allclose(
        sites["corr_cholesky"], jnp.linalg.cholesky(cov) / scales[..., :, None], rtol=1e-12
    )
