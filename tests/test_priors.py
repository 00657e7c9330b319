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
    sites = {**prior.initial_hyper_values(params, spec), **prior.site_values(params, spec)}
    back = prior.params_from_sites(sites, spec, 2, data.dtype)
    for a, b in zip(back, params, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert np.isfinite(float(prior.log_density_of_sites(sites, spec, 2, data.dtype)))
    if not prior.hyper_sites:
        assert float(prior.log_density(params, spec)) == float(
            prior.log_density_of_sites(sites, spec, 2, data.dtype)
        )


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


# -- Dirichlet-process (stick-breaking) weights ----------------------------------------


def _naive_weights(sticks):
    """w_k = v_k prod_{j<k} (1 - v_j), w_K = prod_{j<K} (1 - v_j), by a plain loop."""
    weights, left = [], 1.0
    for v in sticks:
        weights.append(v * left)
        left = left * (1 - v)
    return jnp.stack(weights + [left])


def test_weight_prior_type_is_validated():
    with pytest.raises(ValueError, match="weight_prior_type must be one of.*dirichlet_process"):
        make_prior("conjugate", weight_prior_type="dirichlet_proces")
    with pytest.raises(ValueError, match="weight_prior_type"):
        prior_from_config({"name": "conjugate", "weight_prior_type": ["dirichlet_process"]})
    assert make_prior("conjugate").weight_prior_type == "dirichlet_distribution"
    assert make_prior("sparse_dirichlet", weight_prior_type="dirichlet_process")


@pytest.mark.parametrize("n_components,gamma", [(2, 0.7), (3, 2.0), (5, 0.3), (6, 4.5)])
def test_stick_breaking_density_is_beta_sticks_times_jacobian(n_components, gamma, require_x64):
    """log p(w) = sum_k log Beta(v_k; 1, gamma) - log|det dw_{1..K-1}/dv|, with SciPy's
    Beta and the Jacobian of a naive loop taken by autodiff (change of variables)."""
    from jaxgmm.priors.stick_breaking import StickBreakingWeights, sticks_from_weights

    rng = np.random.default_rng(n_components)
    distribution = StickBreakingWeights(jnp.asarray(gamma), n_components)
    for _ in range(3):
        sticks = rng.beta(1.0, gamma, size=n_components - 1)
        weights = _naive_weights(jnp.asarray(sticks))
        jac = jax.jacobian(lambda v: _naive_weights(v)[:-1])(jnp.asarray(sticks))
        expected = np.sum(stats.beta.logpdf(sticks, 1.0, gamma))
        expected -= np.linalg.slogdet(np.asarray(jac))[1]
        np.testing.assert_allclose(float(distribution.log_prob(weights)), expected, rtol=1e-10)
        np.testing.assert_allclose(sticks_from_weights(weights), sticks, rtol=1e-10)


def test_stick_breaking_density_normalises_and_sampler_matches(require_x64):
    """Importance sampling from the uniform Dirichlet: E[p(w) / 2] = 1 on the 2-simplex;
    draws have E[w_k] = gamma^(k-1) / (1 + gamma)^k and Beta(1, gamma) sticks (KS test)."""
    from jaxgmm.priors.stick_breaking import StickBreakingWeights, sticks_from_weights

    gamma, n = 1.5, 50_000
    distribution = StickBreakingWeights(jnp.asarray(gamma), 3)
    uniform = jax.random.dirichlet(jax.random.key(0), jnp.ones(3), (n,))
    ratio = np.exp(np.asarray(distribution.log_prob(uniform))) / 2.0
    assert abs(ratio.mean() - 1) < 5 * ratio.std() / np.sqrt(n)
    draws = np.asarray(StickBreakingWeights(jnp.asarray(0.8), 4).sample(jax.random.key(1), (n,)))
    np.testing.assert_allclose(draws.sum(-1), 1.0, rtol=1e-12)
    expected = [0.8 ** (k - 1) / 1.8**k for k in (1, 2, 3)] + [(0.8 / 1.8) ** 3]
    np.testing.assert_allclose(draws.mean(0), expected, atol=5 * draws.std(0).max() / np.sqrt(n))
    np.testing.assert_allclose(StickBreakingWeights(0.8, 4).mean, expected, rtol=1e-12)
    sticks = np.asarray(sticks_from_weights(jnp.asarray(draws[:5000])))
    for column in sticks.T:
        assert stats.kstest(column, stats.beta(1.0, 0.8).cdf).pvalue > 1e-3


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_dirichlet_process_prior_changes_only_the_weights_term(cov_type, data, require_x64):
    """The conjugate prior's two weight types differ by exactly the weights' log-density
    (SciPy's Dirichlet vs Beta sticks with the change of variables); K = 4."""
    weights = np.array([0.4, 0.3, 0.2, 0.1])
    means = np.array([[2.0, 55.0], [3.0, 65.0], [4.0, 75.0], [4.5, 85.0]])
    cov = np.array([[[0.1, 0.4], [0.4, 30.0]]] * 4)
    cov = {
        "full": cov,
        "tied": cov[0],
        "diag": np.diagonal(cov, axis1=1, axis2=2),
        "spherical": np.diagonal(cov, axis1=1, axis2=2).mean(1),
    }[cov_type]
    params = jaxgmm.params_from_covariances(weights, means, cov, cov_type)
    common = {"weight_concentration": 0.6}
    finite = resolve_prior(
        jaxgmm.GMMSpec(4, cov_type, prior=make_prior("conjugate", **common)), data
    )
    dp = dict(common, weight_prior_type="dirichlet_process")
    process = resolve_prior(jaxgmm.GMMSpec(4, cov_type, prior=make_prior("conjugate", **dp)), data)
    sticks = weights[:-1] / np.cumsum(weights[::-1])[::-1][:-1]
    jac = jax.jacobian(lambda v: _naive_weights(v)[:-1])(jnp.asarray(sticks))
    log_dp = np.sum(stats.beta.logpdf(sticks, 1.0, 0.6)) - np.linalg.slogdet(np.asarray(jac))[1]
    expected = log_dp - stats.dirichlet.logpdf(weights, [0.6] * 4)
    difference = process.prior.log_density(params, process) - finite.prior.log_density(
        params, finite
    )
    np.testing.assert_allclose(float(difference), expected, rtol=1e-10)


def test_dirichlet_process_map_weights_maximise_the_posterior(require_x64):
    """EM's closed-form stick-breaking weights against a numerical maximisation (SciPy) of
    sum_k nk log w_k + log p(w), for gamma >= K - 1."""
    from scipy import optimize

    from jaxgmm.model.stats import SufficientStats

    nk = np.array([30.0, 0.5, 12.0, 4.0, 0.0])
    gamma = 4.2
    prior = make_prior(
        "conjugate", weight_concentration=gamma, weight_prior_type="dirichlet_process"
    )
    spec = jaxgmm.GMMSpec(5, "spherical", prior=prior.with_data_defaults(np.eye(5)[:, :2] * 3, 5))
    dist_ = jaxgmm.priors.stick_breaking.StickBreakingWeights(jnp.asarray(gamma), 5)

    @jax.jit
    def negative(logits):
        w = jax.nn.softmax(logits)
        return -(jnp.sum(jax.scipy.special.xlogy(nk, w)) + dist_.log_prob(w))

    value_and_grad = jax.jit(jax.value_and_grad(negative))
    best = optimize.minimize(
        lambda u: tuple(np.asarray(a, np.float64) for a in value_and_grad(jnp.asarray(u))),
        np.zeros(5),
        jac=True,
        method="BFGS",
        options={"gtol": 1e-10},
    )
    stats_ = SufficientStats(
        nk=jnp.asarray(nk),
        means=jnp.zeros((5, 2)),
        scatter=jnp.ones((5, 2)),
        sum_resp_log_resp=jnp.zeros(()),
        n_samples=jnp.asarray(nk.sum()),
    )
    got = spec.prior.em_m_step(stats_, spec).weights
    np.testing.assert_allclose(got, jax.nn.softmax(jnp.asarray(best.x)), atol=2e-4)
    assert float(negative(jnp.log(got))) <= best.fun + 1e-9


def test_em_refuses_dirichlet_process_without_a_map(data):
    prior = make_prior("conjugate", weight_concentration=1.0, weight_prior_type="dirichlet_process")
    spec = resolve_prior(jaxgmm.GMMSpec(3, "full", prior=prior), data)
    with pytest.raises(
        ValueError, match="weight_prior_type='dirichlet_process'.*n_components - 1 = 2.*vb"
    ):
        jaxgmm.fit_em(jax.random.key(0), data, spec)
    assert spec.prior.no_map_reason(jaxgmm.GMMSpec(2, "full", prior=prior)) is None


# -- data-default hyperparameters on singular data (issue 16, defect 5) ------------------


def _singular_data():
    rng = np.random.default_rng(0)
    constant_column = rng.normal(size=(40, 3))
    constant_column[:, 1] = 2.5
    return {"constant_column": constant_column, "3_points_in_4d": rng.normal(size=(3, 4))}


@pytest.mark.parametrize("case", ["constant_column", "3_points_in_4d"])
@pytest.mark.parametrize("name", ["conjugate", "lkj"])
def test_data_defaults_are_proper_on_singular_data(case, name, require_x64):
    """A constant column, or fewer points than n_features + 1, made the data-default
    covariance_prior singular (log_prior -inf / NaN; SVI and NUTS failed): the defaults
    are floored to a positive-definite Psi / positive scales and log_prior is finite."""
    from jaxgmm.priors._base import DATA_DEFAULT_FLOOR

    x = _singular_data()[case]
    floor = DATA_DEFAULT_FLOOR * np.mean(np.var(x, axis=0))
    params_cov = 0.5 * np.eye(x.shape[1]) + 0.1
    for cov_type in COV_TYPES:
        spec = resolve_prior(jaxgmm.GMMSpec(2, cov_type, prior=make_prior(name)), x)
        if name == "conjugate":
            psi = np.asarray(spec.prior.covariance_prior)
            assert np.linalg.eigvalsh(psi)[0] >= 0.999 * floor / 2 ** (2 / x.shape[1])
            # the floor acts only below it: the data's well-spread directions are kept
            top = np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True))[-1]
            np.testing.assert_allclose(np.linalg.eigvalsh(psi)[-1], top / 2 ** (2 / x.shape[1]))
        else:
            assert np.min(spec.prior.scale_scale) >= 0.999 * np.sqrt(floor)
            assert np.min(spec.prior.mean_scale) >= 0.999 * np.sqrt(floor)
        cov = {
            "full": np.stack([params_cov] * 2),
            "tied": params_cov,
            "diag": np.full((2, x.shape[1]), 0.5),
            "spherical": np.full(2, 0.5),
        }[cov_type]
        params = jaxgmm.params_from_covariances(np.array([0.5, 0.5]), x[:2], cov, cov_type)
        assert np.isfinite(float(jaxgmm.log_prior(params, spec))), cov_type


def test_data_defaults_refuse_all_constant_data_and_bad_explicit_scales():
    with pytest.raises(ValueError, match="every feature of x is constant.*covariance_prior"):
        resolve_prior(jaxgmm.GMMSpec(2, "full", prior=make_prior("conjugate")), np.ones((5, 2)))
    with pytest.raises(ValueError, match="covariance_prior must be positive definite"):
        make_prior("conjugate", covariance_prior=[[1.0, 1.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match="covariance_prior .* must be > 0"):
        make_prior("conjugate", covariance_prior=[1.0, 0.0])
    with pytest.raises(ValueError, match="scale_scale must be finite and > 0"):
        make_prior("lkj", scale_scale=[1.0, 0.0])


# ------------------------------------------------ empirical-Bayes within-cluster Psi

WITHIN = {"name": "conjugate", "covariance_prior": "within_cluster"}


def _pooled_within(x, labels):
    """sum_k sum_{n in k} (x_n - mean_k)(x_n - mean_k)^T / N, naively."""
    total = np.zeros((x.shape[1], x.shape[1]))
    for k in np.unique(labels):
        r = x[labels == k] - x[labels == k].mean(0)
        total += r.T @ r
    return total / x.shape[0]


def test_within_cluster_psi_matches_sklearn_kmeans_partition():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0, 0.0], [8.0, 0.0, 50.0], [0.0, 9.0, -40.0]])
    scales = np.array([1.0, 2.0, 10.0])  # per feature: the k-means runs standardised
    x = np.concatenate([c + rng.normal(size=(60, 3)) * scales for c in centres])
    z = (x - x.mean(0)) / x.std(0)
    labels = KMeans(3, n_init=10, random_state=0).fit(z).labels_
    spec = resolve_prior(jaxgmm.GMMSpec(3, "full", prior=prior_from_config(WITHIN)), x)
    psi = np.asarray(spec.prior.covariance_prior)
    np.testing.assert_allclose(psi, np.diag(np.diag(_pooled_within(x, labels))), rtol=1e-10)
    # The scale of one cluster: near the clusters' variances, far below the data's.
    np.testing.assert_allclose(np.diag(psi), scales**2, rtol=0.35)
    assert np.all(np.diag(psi)[1:] < 0.2 * np.var(x, axis=0)[1:])
    # Deterministic, and rescaling a feature rescales its entry only.
    spec0 = jaxgmm.GMMSpec(3, "full", prior=prior_from_config(WITHIN))
    assert resolve_prior(spec0, x) == spec
    stretched = x * np.array([1.0, 30.0, 1.0])
    psi2 = np.asarray(resolve_prior(spec0, stretched).prior.covariance_prior)
    np.testing.assert_allclose(np.diag(psi2), np.diag(psi) * np.array([1.0, 900.0, 1.0]), rtol=1e-8)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_within_cluster_psi_gives_every_family_a_proper_prior(cov_type, data, ml_fits):
    prior = prior_from_config(WITHIN)
    assert prior.label == "conjugate[within-cluster Psi, empirical Bayes]"
    unresolved = jaxgmm.GMMSpec(2, cov_type, prior=prior_from_config({**WITHIN, "mean_prior": 0}))
    with pytest.raises(ValueError, match=r"\['covariance_prior'\] still unset"):
        jaxgmm.log_prior(ml_fits[cov_type], unresolved)
    resolved = resolve_prior(jaxgmm.GMMSpec(2, cov_type, prior=prior), data)
    assert resolved.prior.name == "conjugate" and resolved.prior.label == "conjugate"
    assert np.isfinite(float(jaxgmm.log_prior(ml_fits[cov_type], resolved)))


def test_within_cluster_psi_refusals():
    with pytest.raises(ValueError, match=r"as a name must be one of \['within_cluster'\]"):
        make_prior("conjugate", covariance_prior="within")
    prior = prior_from_config(WITHIN)
    with pytest.raises(ValueError, match="every feature of x is constant"):
        prior.with_data_defaults(np.ones((5, 2)), 2)
    # Fewer distinct points than clusters: floored, still positive definite.
    x = np.repeat(np.array([[0.0, 1.0], [2.0, 3.0]]), 5, axis=0)
    assert np.all(np.diag(np.asarray(prior.with_data_defaults(x, 3).covariance_prior)) > 0)
