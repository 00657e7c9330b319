"""The ELBO is a bound on the exact evidence, with every constant: K = 1 gives the
closed-form conjugate evidence; on 10 one-dimensional points the evidence is a sum over
all K^N allocations of conjugate marginal likelihoods (written here in NumPy/SciPy,
independently of jaxgmm); coordinate ascent never lowers it."""

import itertools

import jax
import numpy as np
import pytest
from scipy.special import betaln, gammaln, multigammaln

import jaxgmm
from jaxgmm.priors import ConjugatePrior
from jaxgmm.vb import fit_vb

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
WEIGHT_TYPES = ("dirichlet_distribution", "dirichlet_process")
# reg_covar perturbs the update away from the exact optimum (it adds N_k reg_covar to the
# scatter); these tests compare with the exact model, so it is negligible here.
TINY_REG = 1e-300


# -- conjugate marginal likelihoods log p(X_group), independent of jaxgmm -------------------
def _group_stats(x):
    n = x.shape[0]
    xbar = x.mean(axis=0)
    return n, xbar, (x - xbar).T @ (x - xbar)


def log_marginal_shared_wishart(groups, m0, kappa0, nu0, psi):
    """log p(X) with Lambda ~ Wishart(nu0, psi^-1) shared by the groups and each group's
    mean ~ N(m0, (kappa0 Lambda)^-1) (Murphy 2007, "Conjugate Bayesian analysis of the
    Gaussian distribution", eq. 266, generalised to groups sharing Lambda). One group:
    the Normal-inverse-Wishart evidence (full covariances); several: tied."""
    d = psi.shape[0]
    n_total, psi_n, log_ratio = 0, psi.copy(), 0.0
    for x in groups:
        if x.shape[0] == 0:
            continue
        n, xbar, s = _group_stats(x)
        kn = kappa0 + n
        psi_n = psi_n + s + kappa0 * n / kn * np.outer(xbar - m0, xbar - m0)
        log_ratio += 0.5 * d * np.log(kappa0 / kn)
        n_total += n
    nu_n = nu0 + n_total
    return (
        -0.5 * n_total * d * np.log(np.pi) + log_ratio + multigammaln(nu_n / 2, d)
        - multigammaln(nu0 / 2, d) + nu0 / 2 * np.linalg.slogdet(psi)[1]
        - nu_n / 2 * np.linalg.slogdet(psi_n)[1]
    )


def log_marginal_normal_gamma(values, n, m0, kappa0, a0, b0, dim):
    """log p of ``dim``-dimensional points ``values`` (n, dim) with one precision lambda ~
    Gamma(a0, rate b0) for all coordinates and mean ~ N(m0, I / (kappa0 lambda))."""
    if n == 0:
        return 0.0
    xbar = values.mean(axis=0)
    s = np.sum((values - xbar) ** 2)
    kn = kappa0 + n
    an = a0 + n * dim / 2
    bn = b0 + 0.5 * (s + kappa0 * n / kn * np.sum((xbar - m0) ** 2))
    return (
        -0.5 * n * dim * np.log(2 * np.pi) + 0.5 * dim * np.log(kappa0 / kn) + gammaln(an)
        - gammaln(a0) + a0 * np.log(b0) - an * np.log(bn)
    )


def log_marginal(covariance_type, groups, m0, kappa0, nu0, psi):
    """log p(X | allocation into ``groups``) under the conjugate prior of jaxgmm's
    ``conjugate`` prior for ``covariance_type`` (its docstring's sites)."""
    d = psi.shape[0]
    if covariance_type == "tied":
        return log_marginal_shared_wishart(groups, m0, kappa0, nu0, psi)
    total = 0.0
    for x in groups:
        if covariance_type == "full":
            total += log_marginal_shared_wishart([x], m0, kappa0, nu0, psi) if len(x) else 0.0
        elif covariance_type == "diag":
            for j in range(d):
                total += log_marginal_normal_gamma(
                    x[:, j : j + 1], len(x), m0[j], kappa0, nu0 / 2, psi[j, j] / 2, 1
                )
        else:
            total += log_marginal_normal_gamma(
                x, len(x), m0, kappa0, nu0 / 2, np.trace(psi) / (2 * d), d
            )
    return total


def log_allocation_prior(counts, weight_type, concentration):
    """log p(z) of one labelled allocation with these counts (n_1..n_K): the
    Dirichlet-multinomial, or the stick-breaking marginal prod_k B(1 + n_k, gamma + n_{>k})
    / B(1, gamma) (K sticks, as scikit-learn's variational family: the mass beyond K is
    left to components that receive no point)."""
    counts = np.asarray(counts, dtype=float)
    k = counts.size
    if weight_type == "dirichlet_distribution":
        a = concentration
        return (
            gammaln(k * a) - gammaln(counts.sum() + k * a) + np.sum(gammaln(counts + a) - gammaln(a))
        )
    after = np.concatenate([np.cumsum(counts[::-1])[-2::-1], [0.0]])
    return np.sum(betaln(1 + counts, concentration + after) - betaln(1, concentration))


def _prior(weight_type, d, concentration=0.7):
    psi = np.array([[1.2, 0.2], [0.2, 0.8]])[:d, :d]
    return ConjugatePrior(
        weight_concentration=concentration,
        mean_prior=tuple(np.linspace(0.5, 1.5, d)),
        mean_precision=0.3,
        degrees_of_freedom=3.5,
        covariance_prior=psi.tolist(),
        weight_prior_type=weight_type,
    ), psi


@pytest.mark.parametrize("weight_type", WEIGHT_TYPES)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_k1_converged_elbo_equals_conjugate_evidence(covariance_type, weight_type, require_x64):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 2)) @ np.array([[1.0, 0.3], [0.0, 0.7]]) + 1.0
    prior, psi = _prior(weight_type, 2)
    spec = jaxgmm.GMMSpec(1, covariance_type, reg_covar=TINY_REG)
    result = fit_vb(jax.random.PRNGKey(0), x, spec, prior=prior, max_iter=20, tol=0)
    evidence = log_marginal(covariance_type, [x], np.array(prior.mean_prior), 0.3, 3.5, psi)
    evidence += log_allocation_prior([len(x)], weight_type, 0.7)
    np.testing.assert_allclose(result.trace.bound[-1] * len(x), evidence, rtol=0, atol=1e-10)


def _log_joint_of_every_allocation(x, k, covariance_type, weight_type, prior, psi):
    """log p(X, z) for each of the K^N labelled allocations z of one-dimensional ``x``
    (vectorised over allocations: in 1-D every family but tied is the Normal-Gamma per
    component, tied one Gamma precision shared), as (allocations, values)."""
    x = x[:, 0]
    m0, kappa0 = prior.mean_prior[0], prior.mean_precision
    a0, b0 = 3.5 / 2, psi[0, 0] / 2
    allocations = np.array(list(itertools.product(range(k), repeat=x.size)))
    one_hot = allocations[:, :, None] == np.arange(k)  # (A, N, K)
    n = one_hot.sum(axis=1).astype(float)
    total = np.einsum("ank,n->ak", one_hot, x)
    scatter = np.einsum("ank,n->ak", one_hot, x**2) - total**2 / np.maximum(n, 1)
    kn = kappa0 + n
    spread = scatter + kappa0 * (total - n * m0) ** 2 / (kn * np.maximum(n, 1))
    log_ratio = 0.5 * np.log(kappa0 / kn)
    if covariance_type == "tied":
        an, bn = a0 + x.size / 2, b0 + 0.5 * spread.sum(axis=1)
        gauss = (
            -x.size / 2 * np.log(2 * np.pi) + log_ratio.sum(axis=1) + gammaln(an) - gammaln(a0)
            + a0 * np.log(b0) - an * np.log(bn)
        )
    else:
        an, bn = a0 + n / 2, b0 + 0.5 * spread
        gauss = np.sum(
            -n / 2 * np.log(2 * np.pi) + log_ratio + gammaln(an) - gammaln(a0)
            + a0 * np.log(b0) - an * np.log(bn),
            axis=1,
        )
    weights = np.array(
        [log_allocation_prior(c, weight_type, prior.weight_concentration) for c in n]
    )
    values = gauss + weights
    # the vectorised form against the general per-group one, on a few allocations
    for i in (0, len(allocations) // 3, len(allocations) - 1):
        z = allocations[i]
        groups = [x[z == j][:, None] for j in range(k)]
        direct = log_marginal(covariance_type, groups, np.array([m0]), kappa0, 3.5, psi)
        np.testing.assert_allclose(gauss[i], direct, rtol=1e-12)
    return allocations, values


def _posterior_of_allocation(x, z, spec, prior):
    """The optimal q(theta) for the hard allocation z: q(z) = delta_z and this q(theta)
    have ELBO = log p(X, z) exactly, so coordinate ascent from it must end above that."""
    from jaxgmm.model.stats import sufficient_statistics
    from jaxgmm.vb import vb_hyperparameters, vb_m_step, vb_spec

    spec = vb_spec(spec, x, prior)
    with np.errstate(divide="ignore"):
        log_resp = np.log(np.eye(spec.n_components)[z])
    stats = sufficient_statistics(jax.numpy.asarray(x), jax.numpy.asarray(log_resp), spec)
    return vb_m_step(stats, spec, vb_hyperparameters(spec, x.shape[1], x.dtype))


@pytest.mark.parametrize("n_components", [2, 3])
@pytest.mark.parametrize("weight_type", WEIGHT_TYPES)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_elbo_is_below_the_exact_evidence(covariance_type, weight_type, n_components, require_x64):
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(-1.5, 0.6, size=5), rng.normal(1.5, 0.6, size=5)])[:, None]
    prior, psi = _prior(weight_type, 1, concentration=0.5)
    allocations, log_joint = _log_joint_of_every_allocation(
        x, n_components, covariance_type, weight_type, prior, psi
    )
    top = log_joint.max()
    evidence = top + np.log(np.sum(np.exp(log_joint - top)))
    spec = jaxgmm.GMMSpec(n_components, covariance_type, reg_covar=TINY_REG)
    # From the best single allocation z*: the ELBO starts at log p(X, z*) and may only rise.
    start = _posterior_of_allocation(x, allocations[np.argmax(log_joint)], spec, prior)
    result = fit_vb(
        jax.random.PRNGKey(0), x, spec, prior=prior, max_iter=100, tol=0, init_posterior=start
    )
    total = result.trace.bound * len(x)
    assert np.all(total <= evidence + 1e-9), (total.max(), evidence)
    assert total[-1] >= top - 1e-9, (total[-1], top)
    assert evidence - total[-1] > 1e-3  # 10 points do not pin the allocation down


@pytest.mark.parametrize("weight_type", WEIGHT_TYPES)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_exact_updates_never_lower_the_elbo(covariance_type, weight_type):
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.normal(size=(40, 3)) * s + c for s, c in ((1.0, 0.0), (0.5, 3.0), (2.0, -4.0))]
    )
    prior = ConjugatePrior(weight_concentration=0.1, weight_prior_type=weight_type)
    spec = jaxgmm.GMMSpec(5, covariance_type)
    result = fit_vb(
        jax.random.PRNGKey(1), x, spec, prior=prior, max_iter=60, tol=0, init="random"
    )
    bound = result.trace.bound
    assert np.all(np.isfinite(bound))
    # rounding, and reg_covar's O(reg_covar^2) step away from the optimum, only
    scale = 1e-11 if x.dtype == np.float64 and jax.config.jax_enable_x64 else 1e-5
    assert np.min(np.diff(bound)) >= -scale * np.abs(bound).max(), np.min(np.diff(bound))
    assert bound[-1] - bound[0] > 1e-3  # it moved
