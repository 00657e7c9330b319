"""Checks of one covariance family's methods against NumPy and SciPy references.

Each ``check_*(name)`` takes a key of `jaxgmm.model.COVARIANCE_FAMILIES` and knows nothing
about the family but what its methods promise (see `jaxgmm.model.covariance.
CovarianceFamily`): parameters come from ``decode_unconstrained`` of random reals, and
the references work on the dense (K, D, D) covariances from ``dense``. So a newly
registered family is tested by the same checks (test_covariance_families.py runs them
over the registry, test_toy_family.py on a family registered by the test).
"""

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import jaxgmm
from jaxgmm.fit.validation import check_precisions
from jaxgmm.model import get_family
from jaxgmm.model.density import weighted_log_prob
from jaxgmm.model.stats import expected_complete_log_likelihood

K, D = 3, 4


def random_params(name, seed=0, k=K, d=D, reg_covar=0.1):
    """Valid `GMMParams` of family ``name`` (float64): the decoder maps any reals to
    valid precision factors."""
    family = get_family(name)
    rng = np.random.default_rng(seed)
    raw = jnp.asarray(0.4 * rng.normal(size=family.prec_chol_shape(k, d)))
    return jaxgmm.GMMParams(
        weights=jnp.asarray(rng.dirichlet(np.ones(k))),
        means=jnp.asarray(rng.normal(scale=2.0, size=(k, d))),
        prec_chol=family.decode_unconstrained(raw, reg_covar),
    )


def dense_covariances(name, prec_chol, k=K, d=D):
    family = get_family(name)
    return np.asarray(family.dense(family.covariance_from_prec_chol(prec_chol), k, d))


def _data_and_resp(seed=1, n=60, k=K, d=D):
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=2.0, size=(n, d)) + 5.0
    resp = rng.dirichlet(np.ones(k), size=n)
    return jnp.asarray(x), jnp.asarray(resp)


def _dense_scatter(x, resp, centers):
    """(K, D, D) NumPy reference: sum_n r_nk (x_n - c_k)(x_n - c_k)^T."""
    diff = np.asarray(x)[:, None, :] - np.asarray(centers)[None]
    return np.einsum("nk,nkd,nke->kde", np.asarray(resp), diff, diff)


def check_shapes_and_conversions(name):
    family = get_family(name)
    params = random_params(name)
    p = params.prec_chol
    assert p.shape == family.prec_chol_shape(K, D)
    cov = family.covariance_from_prec_chol(p)
    dense = dense_covariances(name, p)
    assert dense.shape == (K, D, D)
    np.testing.assert_allclose(dense, np.swapaxes(dense, -1, -2), atol=1e-12)
    precision = family.precision_from_prec_chol(p)
    dense_precision = np.asarray(family.dense(precision, K, D))
    np.testing.assert_allclose(dense_precision, np.linalg.inv(dense), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(family.prec_chol_from_covariance(cov), p, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(family.prec_chol_from_precision(precision), p, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        family.min_eigenvalue(p, K), np.linalg.eigvalsh(dense)[:, 0], rtol=1e-9
    )
    n_free = family.n_parameters(K, D)
    assert isinstance(n_free, int) and 0 <= n_free <= K * D * (D + 1) // 2


def check_density_matches_scipy(name):
    params = random_params(name)
    spec = jaxgmm.GMMSpec(K, name)
    x, _ = _data_and_resp()
    dense = dense_covariances(name, params.prec_chol)
    expected = np.stack(
        [
            np.log(params.weights[k]) + multivariate_normal(params.means[k], dense[k]).logpdf(x)
            for k in range(K)
        ],
        axis=1,
    )
    np.testing.assert_allclose(weighted_log_prob(x, params, spec), expected, rtol=1e-10)
    np.testing.assert_allclose(
        jaxgmm.log_prob(x, params, spec), logsumexp(expected, axis=1), rtol=1e-10
    )


def check_scatter_matches_numpy(name):
    """The family's scatter carries sum_k tr(Sigma_k^{-1} S_k) exactly (the bound's
    trace term), whatever parameters it is paired with."""
    family = get_family(name)
    x, resp = _data_and_resp()
    centers = random_params(name, seed=2).means
    scatter = family.scatter(x, resp, centers)
    assert scatter.shape == family.scatter_shape(K, D)
    s_dense = _dense_scatter(x, resp, centers)
    for seed in (3, 4):
        p = random_params(name, seed=seed).prec_chol
        inv = np.linalg.inv(dense_covariances(name, p))
        expected = np.einsum("kde,ked->", inv, s_dense)
        np.testing.assert_allclose(family.trace_term(scatter, p), expected, rtol=1e-10)


def check_block_moments_match_in_memory(name):
    """``second_moments_fm`` on one feature-major block (both forms where the family has
    an expanded one) against NumPy's first moment and the in-memory ``scatter``."""
    family = get_family(name)
    x, resp = _data_and_resp()
    means = random_params(name, seed=2).means
    first_expected = np.einsum("nk,nkd->kd", resp, np.asarray(x)[:, None] - np.asarray(means))
    scatter = family.scatter(x, resp, means)
    for expanded in (False, True) if family.has_expansion else (False,):
        first, second = family.second_moments_fm(resp.T, x.T, means, expanded)
        np.testing.assert_allclose(first, first_expected, rtol=1e-9, atol=1e-9)
        assert second.shape == family.scatter_shape(K, D)
        np.testing.assert_allclose(
            family.symmetrize_scatter(second), scatter, rtol=1e-9, atol=1e-9
        )


def check_recentre_scatter(name):
    """The scatter about mu + delta from the moments about mu."""
    family = get_family(name)
    x, resp = _data_and_resp()
    mu = random_params(name, seed=2).means
    delta = jnp.asarray(np.random.default_rng(5).normal(size=mu.shape))
    first, second = family.second_moments_fm(resp.T, x.T, mu)
    nk = jnp.sum(resp, axis=0)
    np.testing.assert_allclose(
        family.recentre_scatter(second, first, nk, delta),
        family.scatter(x, resp, mu + delta),
        rtol=1e-9,
        atol=1e-9,
    )
    symmetric = family.symmetrize_scatter(second)
    np.testing.assert_allclose(family.symmetrize_scatter(symmetric), symmetric, rtol=0, atol=0)


def check_point_mass_scatter(name):
    """sum_k c_k d_k d_k^T is the scatter of one point per component, of weight c_k at
    distance d_k from its centre."""
    family = get_family(name)
    rng = np.random.default_rng(6)
    counts = jnp.asarray(rng.uniform(0.1, 2.0, size=K))
    deltas = jnp.asarray(rng.normal(size=(K, D)))
    centers = jnp.asarray(rng.normal(size=(K, D)))
    expected = family.scatter(centers + deltas, jnp.diag(counts), centers)
    got = family.point_mass_scatter(counts, deltas)
    assert got.shape == family.scatter_shape(K, D)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def check_ml_estimate_is_stationary(name):
    """The family's M-step estimate (``covariance_from_scatter``, via
    `ml_params_from_stats`) maximises the expected complete-data log-likelihood over the
    family: its gradient in the unconstrained coordinates vanishes there."""
    family = get_family(name)
    reg = 1e-12  # the M-step adds reg_covar; negligible here
    spec = jaxgmm.GMMSpec(K, name, reg_covar=reg)
    x, resp = _data_and_resp()
    stats = jaxgmm.model.sufficient_statistics(x, jnp.log(resp), spec)
    params = jaxgmm.model.ml_params_from_stats(stats, spec)

    def q(cov_factor):
        p = params._replace(prec_chol=family.decode_unconstrained(cov_factor, reg))
        return expected_complete_log_likelihood(stats, p, spec)

    u = family.encode_unconstrained(params.prec_chol, reg)
    grad = jax.grad(q)(u)
    assert float(jnp.max(jnp.abs(grad))) < 1e-6 * float(jnp.sum(stats.nk))
    # ... and moving away lowers it.
    step = jnp.asarray(np.random.default_rng(7).normal(scale=0.05, size=u.shape))
    assert q(u + step) < q(u) and q(u - step) < q(u)


def check_sample_noise_has_the_family_covariance(name):
    """``sample_noise`` is a linear map A_k of the standard normal z with A_k A_k^T =
    Sigma_k (exact: fed the identity, its rows are the columns of A_k)."""
    family = get_family(name)
    p = random_params(name).prec_chol
    dense = dense_covariances(name, p)
    for k in range(K):
        labels = jnp.full((D,), k)
        a_t = np.asarray(family.sample_noise(jnp.eye(D), p, labels))
        np.testing.assert_allclose(a_t.T @ a_t, dense[k], rtol=1e-9, atol=1e-12)


def check_permute_components(name):
    """Relabelling draws permutes their covariances like their means (a shared
    covariance stays)."""
    family = get_family(name)
    draws = [random_params(name, seed=s).prec_chol for s in (0, 1)]
    stacked = np.stack([np.asarray(p) for p in draws])  # two draws
    perms = np.array([[2, 0, 1], [1, 2, 0]])
    permuted = np.asarray(family.permute_components(stacked, perms))
    assert permuted.shape == stacked.shape
    for i in range(2):
        np.testing.assert_array_equal(
            dense_covariances(name, jnp.asarray(permuted[i])),
            dense_covariances(name, draws[i])[perms[i]],
        )


def check_unconstrained_round_trip(name):
    family = get_family(name)
    reg = 1e-3
    p = random_params(name, reg_covar=0.2).prec_chol
    u = family.encode_unconstrained(p, reg)
    assert u.shape == p.shape
    np.testing.assert_allclose(family.decode_unconstrained(u, reg), p, rtol=1e-9, atol=1e-12)
    # Any real cov_factor decodes to covariances >= reg_covar I.
    raw = jnp.asarray(np.random.default_rng(8).normal(size=p.shape)) - 30.0
    dense = dense_covariances(name, family.decode_unconstrained(raw, reg))
    assert np.linalg.eigvalsh(dense).min() >= reg * (1 - 1e-9)


def check_precisions_check(name):
    family = get_family(name)
    p = random_params(name).prec_chol
    precision = np.asarray(family.precision_from_prec_chol(p))
    got = check_precisions(precision, name, K, D)
    np.testing.assert_array_equal(got, precision)
    try:
        check_precisions(-precision, name, K, D)
    except ValueError:
        pass
    else:
        raise AssertionError(f"{name}: a negated precision was accepted")


FAMILY_CHECKS = [
    check_shapes_and_conversions,
    check_density_matches_scipy,
    check_scatter_matches_numpy,
    check_block_moments_match_in_memory,
    check_recentre_scatter,
    check_point_mass_scatter,
    check_ml_estimate_is_stationary,
    check_sample_noise_has_the_family_covariance,
    check_permute_components,
    check_unconstrained_round_trip,
    check_precisions_check,
]
