"""Log-evidence estimators (`jaxgmm.log_evidence`): the exact value against SciPy
references, smc and bridge against the exact value within 3 standard errors, smc and
bridge against each other on Old Faithful, and bad input."""

import itertools
import math

import jax
import numpy as np
import pytest
from scipy import integrate, special, stats
from scipy.special import betaln, logsumexp

import jaxgmm
from jaxgmm import GMMSpec
from jaxgmm.bayes.evidence import EVIDENCE_METHODS
from jaxgmm.priors import make_prior, resolve_prior

pytestmark = pytest.mark.usefixtures("require_x64")


def toy1d(n_each=5, seed=1):
    """10 one-dimensional points in two groups."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(-1.5, 0.5, n_each), rng.normal(1.5, 0.5, n_each)])[:, None]


def conjugate_spec(k, covariance_type="full", **hyper):
    hyper.setdefault("mean_precision", 0.5)
    return GMMSpec(
        n_components=k, covariance_type=covariance_type, prior=make_prior("conjugate", **hyper)
    )


def hyper(spec, x):
    """(m0, kappa, nu, Psi) of the resolved conjugate prior, in float64 numpy."""
    prior = resolve_prior(spec, x).prior
    d = x.shape[1]
    m0 = np.broadcast_to(np.asarray(prior.mean_prior, dtype=float), (d,))
    psi = np.asarray(prior.covariance_prior, dtype=float)
    psi = psi * np.eye(d) if psi.ndim == 0 else (np.diag(psi) if psi.ndim == 1 else psi)
    return m0, prior.mean_precision, prior.dof(spec, d), psi


def student_t_chain(x, m0, kappa, nu, psi):
    """log p(x_1..n) = sum_i log p(x_i | x_<i) with the NIW posterior predictive, a
    multivariate Student t (Murphy 2007, eq. 258), via SciPy's distribution."""
    d = x.shape[1]
    total, m, k, v, s = 0.0, m0.copy(), kappa, nu, psi.copy()
    for xi in x:
        dof = v - d + 1
        shape = s * (k + 1) / (k * dof)
        total += stats.multivariate_t(loc=m, shape=shape, df=dof).logpdf(xi)
        s = s + k / (k + 1) * np.outer(xi - m, xi - m)
        m = (k * m + xi) / (k + 1)
        k, v = k + 1, v + 1
    return total


def integrated_shared_variance(x, m0, kappa, a, b):
    """log p(X) with one variance s ~ InvGamma(a, b) for every coordinate and means
    mu_d | s ~ N(m0_d, s / kappa): given s each column of X is N(m0_d 1, s (I + 11'/kappa)),
    integrated over s numerically (scipy.integrate.quad)."""
    n, d = x.shape
    cov_unit = np.eye(n) + np.ones((n, n)) / kappa

    def log_given(s):
        return sum(
            stats.multivariate_normal(np.full(n, m0[j]), s * cov_unit).logpdf(x[:, j])
            for j in range(d)
        )

    peak = max((log_given(s) + stats.invgamma(a, scale=b).logpdf(s), s)
               for s in np.geomspace(1e-3, 1e3, 400))  # fmt: skip
    value, _ = integrate.quad(
        lambda s: math.exp(log_given(s) + stats.invgamma(a, scale=b).logpdf(s) - peak[0]),
        0, np.inf, points=None, limit=200,
    )  # fmt: skip
    return peak[0] + math.log(value)


# ------------------------------------------------------------------------ exact


@pytest.mark.parametrize("d", [1, 2])
def test_exact_k1_matches_student_t_chain(d):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, d)) @ np.array([[1.0, 0.4], [0.0, 0.7]])[:d, :d] + 0.5
    spec = conjugate_spec(1)
    result = jaxgmm.log_evidence(None, x, spec, method="exact")
    assert result.method == "exact" and result.stderr == 0.0
    assert result.estimate == pytest.approx(student_t_chain(x, *hyper(spec, x)), abs=1e-9)


def test_exact_k1_diag_and_spherical_match_numerical_integration():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(8, 2)) * [1.0, 2.0]
    for cov_type in ("diag", "spherical"):
        spec = conjugate_spec(1, cov_type)
        m0, kappa, nu, psi = hyper(spec, x)
        if cov_type == "diag":
            ref = sum(
                integrated_shared_variance(
                    x[:, j : j + 1], m0[j : j + 1], kappa, nu / 2, psi[j, j] / 2
                )  # fmt: skip
                for j in range(2)
            )
        else:
            ref = integrated_shared_variance(x, m0, kappa, nu / 2, np.trace(psi) / 4)
        got = jaxgmm.log_evidence(None, x, spec, method="exact").estimate
        assert got == pytest.approx(ref, abs=1e-6), cov_type


def test_exact_enumeration_matches_independent_sum():
    """K = 2: sum over all 2^N allocations of the Dirichlet-multinomial probability
    (a Beta function ratio) times Student-t-chain marginals of each part."""
    x = toy1d(n_each=3)
    spec = conjugate_spec(2, weight_concentration=1.5)
    m0, kappa, nu, psi = hyper(spec, x)
    alpha, terms = 1.5, []
    for z in itertools.product([0, 1], repeat=x.shape[0]):
        z = np.array(z)
        n1 = int(z.sum())
        log_pz = betaln(alpha + n1, alpha + len(z) - n1) - betaln(alpha, alpha)
        parts = [student_t_chain(x[z == j], m0, kappa, nu, psi) if np.any(z == j) else 0.0
                 for j in (0, 1)]  # fmt: skip
        terms.append(log_pz + sum(parts))
    got = jaxgmm.log_evidence(None, x, spec, method="exact").estimate
    assert got == pytest.approx(logsumexp(terms), abs=1e-9)


def test_exact_refuses_what_it_cannot_enumerate():
    x = toy1d()
    with pytest.raises(ValueError, match="K\\^N"):
        jaxgmm.log_evidence(None, np.tile(x, (3, 1)), conjugate_spec(3), method="exact")
    with pytest.raises(ValueError, match="conjugate prior"):
        jaxgmm.log_evidence(
            None, x, GMMSpec(n_components=2, prior=make_prior("lkj")), method="exact"
        )
    with pytest.raises(ValueError, match="tied"):
        jaxgmm.log_evidence(None, x, conjugate_spec(2, "tied"), method="exact")


def test_stick_breaking_allocation_probability_matches_integration():
    """exact's p(z) under stick-breaking weights (sticks ~ Beta(1, gamma)) against the
    sticks integrated numerically (K = 3) and the Dirichlet(1, gamma) closed form (K = 2)."""
    from scipy.special import gammaln

    from jaxgmm.bayes.evidence.exact import _log_allocation_probability

    gamma, counts = 0.7, np.array([[3.0, 1.0, 2.0]])
    # E over sticks v1, v2 ~ Beta(1, gamma) of prod_k w_k^{n_k}, by Gauss-Legendre on [0, 1]^2
    # (smooth here: the (1 - v)^(gamma - 1) factors meet positive powers of 1 - v).
    nodes, weights = special.roots_legendre(200)
    v, quad_w = (nodes + 1) / 2, weights / 2
    v1, v2 = np.meshgrid(v, v, indexing="ij")
    w = np.stack([v1, (1 - v1) * v2, (1 - v1) * (1 - v2)])
    beta = stats.beta(1, gamma)
    integrand = beta.pdf(v1) * beta.pdf(v2) * np.prod(w ** counts[0][:, None, None], axis=0)
    value = quad_w @ integrand @ quad_w
    got = _log_allocation_probability(counts, "dirichlet_process", gamma)
    np.testing.assert_allclose(got, [math.log(value)], rtol=1e-9)
    n1, n2 = 4.0, 3.0
    dirichlet = (gammaln(1 + gamma) - gammaln(1 + gamma + n1 + n2) + gammaln(1 + n1)
                 + gammaln(gamma + n2) - gammaln(gamma))  # fmt: skip
    got = _log_allocation_probability(np.array([[n1, n2]]), "dirichlet_process", gamma)
    np.testing.assert_allclose(got, [dirichlet], rtol=1e-12)


# ------------------------------------------------------------------------ smc


def within(result, exact, n_se=3.0):
    return abs(result.estimate - exact) <= n_se * result.stderr


@pytest.mark.parametrize("k", [1, 2, pytest.param(3, marks=pytest.mark.slow)])
def test_smc_matches_exact(k):
    x = toy1d()
    spec = conjugate_spec(k)
    exact = jaxgmm.log_evidence(None, x, spec, method="exact").estimate
    result = jaxgmm.log_evidence(
        jax.random.PRNGKey(k), x, spec, method="smc", n_particles=400, n_mh_steps=10, n_runs=5
    )
    diag = result.diagnostics
    assert result.method == "smc" and 0 < result.stderr < 0.5
    assert within(result, exact), (result, exact)
    assert len(diag["run_estimates"]) == 5 and min(diag["n_stages"]) >= 1
    runs = np.asarray(diag["run_estimates"])
    np.testing.assert_allclose(diag["jensen_bias"], np.var(runs, ddof=1) / 2, rtol=1e-12)
    log_mean_z = np.log(np.mean(np.exp(runs - runs.max()))) + runs.max()
    np.testing.assert_allclose(diag["log_mean_z"], log_mean_z, rtol=1e-12)
    assert log_mean_z >= result.estimate  # Jensen: the log of the mean Z is above
    assert diag["betas"][-1] == 1.0 and np.all(np.diff(diag["betas"]) > 0)
    assert diag["min_ess"] >= 0.45 * 400 and 0 < diag["acceptance_min"] <= 1


# ------------------------------------------------------------------------ bridge


@pytest.mark.parametrize("k", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_bridge_matches_exact(k):
    x = toy1d()
    spec = conjugate_spec(k)
    exact = jaxgmm.log_evidence(None, x, spec, method="exact").estimate
    posterior = jaxgmm.fit_nuts(
        jax.random.PRNGKey(10 + k), x, spec, num_warmup=200, num_samples=300, num_chains=2
    )
    result = jaxgmm.log_evidence(
        jax.random.PRNGKey(k), x, spec, method="bridge", posterior=posterior
    )
    diag = result.diagnostics
    assert result.method == "bridge" and 0 < result.stderr < 0.5
    assert within(result, exact), (result, exact)
    assert diag["n_permutations"] == math.factorial(k)
    assert diag["n_posterior_draws"] == 2 * 150 == diag["n_proposal_draws"]
    assert 0 < diag["posterior_ess"] <= 300 and 0 < diag["proposal_ess"] <= 300
    assert np.isfinite(diag["pareto_k"])


def test_smc_matches_exact_under_stick_breaking_weights_and_bridge_refuses():
    x = toy1d()
    spec = conjugate_spec(2, weight_prior_type="dirichlet_process", weight_concentration=0.5)
    exact = jaxgmm.log_evidence(None, x, spec, method="exact").estimate
    result = jaxgmm.log_evidence(
        jax.random.PRNGKey(5), x, spec, method="smc", n_particles=400, n_mh_steps=10
    )
    assert within(result, exact), (result, exact)
    with pytest.raises(ValueError, match="not exchangeable.*use method 'smc'"):
        jaxgmm.log_evidence(jax.random.PRNGKey(0), x, spec, method="bridge", num_samples=4)


def test_bridge_permutation_set():
    from jaxgmm.bayes.evidence.bridge import _permutation_set

    prior = make_prior("conjugate")
    key = jax.random.PRNGKey(0)
    assert _permutation_set(prior, 3, None, key).shape == (6, 3)
    some = _permutation_set(prior, 8, 5, key)
    assert some.shape == (5, 8) and (np.sort(some, axis=1) == np.arange(8)).all()
    assert (some == np.arange(8)).all(axis=1).any()  # identity included
    with pytest.raises(ValueError, match="permutations"):
        _permutation_set(prior, 8, None, key)
    with pytest.raises(ValueError, match="permutations of 0..2"):
        _permutation_set(prior, 3, [[0, 1, 1]], key)

    class Labelled:
        exchangeable = False

    assert _permutation_set(Labelled(), 1, None, key).tolist() == [[0]]
    with pytest.raises(ValueError, match="not exchangeable"):
        _permutation_set(Labelled(), 3, None, key)


@pytest.mark.slow
def test_smc_and_bridge_agree_on_faithful():
    """configs/faithful.yaml's model on its 217 standardised training points."""
    from experiments.datasets import load_dataset, prepare

    train, _, _ = prepare(
        load_dataset({"dataset": "faithful"}, 0), 0, standardize_data=True, test_fraction=0.2
    )
    x = train.x
    assert x.shape == (217, 2)
    spec = GMMSpec(n_components=2, covariance_type="full", prior=make_prior("conjugate"))
    smc = jaxgmm.log_evidence(jax.random.PRNGKey(0), x, spec, method="smc")
    bridge = jaxgmm.log_evidence(jax.random.PRNGKey(0), x, spec, method="bridge")
    assert abs(smc.estimate - bridge.estimate) <= 3 * math.hypot(smc.stderr, bridge.stderr)
    assert bridge.diagnostics["pareto_k"] < 0.7


# ------------------------------------------------------------------------ bad input


def test_bad_input_is_a_clear_value_error():
    x = toy1d()
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match=r"unknown evidence method 'nope'.*'exact'.*'smc'"):
        jaxgmm.log_evidence(key, x, conjugate_spec(2), method="nope")
    with pytest.raises(ValueError, match="needs a spec with a prior"):
        jaxgmm.log_evidence(key, x, GMMSpec(n_components=2))
    bad = x.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        jaxgmm.log_evidence(key, bad, conjugate_spec(2))
    with pytest.raises(ValueError, match=r"no option\(s\) \['particles'\].*n_particles"):
        jaxgmm.log_evidence(key, x, conjugate_spec(2), particles=10)
    with pytest.raises(ValueError, match="proper prior"):
        jaxgmm.log_evidence(key, x, GMMSpec(n_components=2, prior=make_prior("flat")))
    with pytest.raises(ValueError, match="n_runs"):
        jaxgmm.log_evidence(key, x, conjugate_spec(2), n_runs=1)
    with pytest.raises(ValueError, match="7! = 5040"):
        jaxgmm.log_evidence(key, np.tile(x, (2, 1)), conjugate_spec(7), method="bridge")
    with pytest.raises(ValueError, match="NUTSResult"):
        jaxgmm.log_evidence(key, x, conjugate_spec(2), method="bridge", posterior={"a": 1})
    assert set(EVIDENCE_METHODS) >= {"smc", "bridge", "exact"}
    assert jaxgmm.EVIDENCE_METHODS is EVIDENCE_METHODS


def test_typed_and_raw_keys_give_the_same_estimate():
    x, spec = toy1d(), conjugate_spec(1)
    options = dict(method="smc", n_particles=50, n_mh_steps=2, n_runs=2)
    typed = jaxgmm.log_evidence(jax.random.key(3), x, spec, **options)
    raw = jaxgmm.log_evidence(jax.random.PRNGKey(3), x, spec, **options)
    assert typed.estimate == raw.estimate and np.isfinite(typed.estimate)
