"""Tempered SMC as a posterior sampler (`jaxgmm.bayes.fit_smc`) and its HMC moves: the
posterior predictive density of its particles against the exact one (a ratio of exact
evidences, by enumeration of every allocation), HMC-moved SMC's log p(X) against the
exact value, the across-run r-hat catching runs that disagree, and bad input."""

import jax
import numpy as np
import pytest
from scipy.special import logsumexp

import jaxgmm
from jaxgmm import GMMSpec
from jaxgmm.bayes.posterior import pointwise_log_likelihood
from jaxgmm.priors import make_prior, resolve_prior

pytestmark = pytest.mark.usefixtures("require_x64")


def toy1d(n_each=5, seed=1):
    """10 one-dimensional points in two groups."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(-1.5, 0.5, n_each), rng.normal(1.5, 0.5, n_each)])[:, None]


def resolved_spec(x, k=2):
    spec = GMMSpec(n_components=k, covariance_type="full",
                   prior=make_prior("conjugate", mean_precision=0.5))  # fmt: skip
    # Resolved on x once, so that the exact evidences of x and x + [y] share one prior.
    return resolve_prior(spec, x)


def exact_log_evidence(x, spec):
    return jaxgmm.log_evidence(jax.random.PRNGKey(0), x, spec, method="exact").estimate


@pytest.fixture(scope="module")
def toy_fit():
    x = toy1d()
    spec = resolved_spec(x)
    return x, spec, jaxgmm.bayes.fit_smc(jax.random.PRNGKey(0), x, spec, n_particles=200, n_mh_steps=2)


def test_predictive_density_of_the_particles_matches_the_exact_one(toy_fit):
    # p(y | X) = p(X, y) / p(X): both exact, summing over all K^N allocations; label-
    # invariant, and sensitive to how the particles share their mass between modes.
    x, spec, result = toy_fit
    flat = jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:]), result.draws)
    ys = np.array([[-3.0], [0.0], [1.5]])
    pointwise = np.asarray(pointwise_log_likelihood(ys, flat, result.spec))
    estimate = logsumexp(pointwise, axis=0) - np.log(pointwise.shape[0])
    w = np.exp(pointwise - pointwise.max(axis=0))
    stderr = w.std(axis=0) / np.sqrt(w.shape[0]) / w.mean(axis=0)
    exact_x = exact_log_evidence(x, spec)
    for i, y in enumerate(ys):
        exact = exact_log_evidence(np.vstack([x, y]), spec) - exact_x
        # The standard error treats particles as independent (they are not quite: the
        # resampling copies some), hence 4 of them.
        assert abs(estimate[i] - exact) < 4 * stderr[i] + 1e-3, (y, estimate[i], exact)


def test_the_result_is_a_converged_posterior_with_its_own_evidence(toy_fit):
    x, spec, result = toy_fit
    assert result.draws.means.shape == (4, 200, 2, 1)
    assert result.log_likelihood.shape == result.log_joint.shape == (4, 200)
    assert result.converged and result.r_hat_max < 1.01
    assert result.stages["kernel"] == "hmc" and 0.3 < result.stages["acceptance_mean"] < 0.95
    assert np.all(result.unique_fraction > 0.9)
    # The log joint is the log-likelihood plus the prior's density over n.
    np.testing.assert_allclose(
        result.log_joint, result.log_likelihood + result.log_prior / x.shape[0], rtol=1e-12
    )
    prior_0 = float(jaxgmm.log_prior(jax.tree_util.tree_map(lambda a: a[1, 7], result.draws), spec))
    assert abs(result.log_prior[1, 7] - prior_0) < 1e-8
    # Its runs' log Z is HMC-moved SMC's estimate: at K=2 some HMC proposals change the
    # components' order and are refused (the involution needs one frame at both ends);
    # the estimate must not move.
    exact = exact_log_evidence(x, spec)
    evidence = result.log_evidence
    assert abs(evidence.estimate - exact) <= 3 * evidence.stderr, (evidence, exact)
    assert evidence.diagnostics["frame_changes_mean"] > 0
    # Relabelled to the reference: component 0 is the left group in every draw.
    assert np.mean(result.draws.means[..., 0, 0] < result.draws.means[..., 1, 0]) > 0.99


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2])
def test_hmc_moves_give_the_exact_log_evidence(k):
    # More runs and particles than the fixture's (45 s each on a 2-core CPU).
    x = toy1d()
    spec = resolved_spec(x, k)
    result = jaxgmm.log_evidence(
        jax.random.PRNGKey(k), x, spec, method="smc", kernel="hmc", n_particles=400,
        n_mh_steps=2, n_runs=5,
    )  # fmt: skip
    exact = exact_log_evidence(x, spec)
    assert abs(result.estimate - exact) <= 3 * result.stderr, (result.estimate, exact)
    assert result.diagnostics["kernel"] == "hmc"
    if k == 2:
        assert result.diagnostics["frame_changes_mean"] > 0


def test_a_run_that_ended_elsewhere_fails_the_verdict(monkeypatch):
    # The toy fit's own (compiled) runs, with run 0's particles moved: one run in another
    # place than the others must fail the across-run r-hat, whatever its particles say.
    import jaxgmm.bayes.smc as smc_module

    real = smc_module.run_smc

    def run_0_elsewhere(*args, **kwargs):
        run = real(*args, **kwargs)
        u = run.state.u.at[0].add(1.0)
        return run._replace(state=run.state._replace(u=u))

    monkeypatch.setattr(smc_module, "run_smc", run_0_elsewhere)
    x = toy1d()
    result = jaxgmm.bayes.fit_smc(jax.random.PRNGKey(0), x, resolved_spec(x), n_particles=200,
                            n_mh_steps=2)  # fmt: skip
    assert not result.converged and result.r_hat_max > 1.1


@pytest.mark.slow
def test_runs_stopped_early_disagree_and_are_not_converged():
    # Two well-separated groups in 2-D; with one particle-poor random-walk move per stage
    # and a coarse ladder, runs end in different places: the across-run r-hat must say so.
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(-3, 0.3, (30, 2)), rng.normal(3, 0.3, (30, 2))])
    spec = resolved_spec(x)
    result = jaxgmm.bayes.fit_smc(
        jax.random.PRNGKey(1), x, spec, n_particles=10, n_mh_steps=1, kernel="rw",
        target_ess=0.2,
    )  # fmt: skip
    assert not result.converged and result.r_hat_max > 1.01


def test_bad_input_is_refused_with_the_argument_named():
    x = toy1d()
    spec = resolved_spec(x)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="kernel must be one of"):
        jaxgmm.bayes.fit_smc(key, x, spec, kernel="nope")
    with pytest.raises(ValueError, match="n_runs"):
        jaxgmm.bayes.fit_smc(key, x, spec, n_runs=1)
    with pytest.raises(ValueError, match="relabel_method"):
        jaxgmm.bayes.fit_smc(key, x, spec, relabel_method="nope")
    with pytest.raises(ValueError, match="target_ess"):
        jaxgmm.bayes.fit_smc(key, x, spec, target_ess=1.5)
    flat = GMMSpec(n_components=2, covariance_type="full", prior=make_prior("flat"))
    with pytest.raises(ValueError, match="proper prior"):
        jaxgmm.bayes.fit_smc(key, x, flat)
