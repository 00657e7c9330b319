"""NUTS, relabelling and posterior summaries: the assignment solver against SciPy, the
relabelling against known permutations, predictive densities against a naive reference,
a short NUTS run for shapes and diagnostics, and (slow) the Old Faithful lkj posterior."""

import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _bayes_helpers import faithful
from scipy import optimize, stats

import jaxgmm
from jaxgmm.bayes.nuts import fit_nuts
from jaxgmm.bayes.posterior import (
    linear_assignment,
    log_predictive_density,
    relabel,
    summarize,
    waic,
)
from jaxgmm.priors import make_prior


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 12])
def test_linear_assignment_matches_scipy(n):
    rng = np.random.default_rng(n)
    for _ in range(10):
        cost = rng.normal(size=(n, n))
        rows, cols = optimize.linear_sum_assignment(cost)
        ours = linear_assignment(cost)
        assert sorted(ours) == list(range(n))
        np.testing.assert_allclose(cost[np.arange(n), ours].sum(), cost[rows, cols].sum())


def test_linear_assignment_matches_brute_force_with_ties():
    cost = np.array([[1.0, 1.0, 2.0], [1.0, 1.0, 2.0], [0.0, 3.0, 3.0]])
    best = min(sum(cost[i, p[i]] for i in range(3)) for p in itertools.permutations(range(3)))
    assert cost[np.arange(3), linear_assignment(cost)].sum() == best


@pytest.mark.parametrize("cov_type", ["full", "tied", "diag", "spherical"])
def test_relabel_undoes_known_permutations(cov_type):
    rng = np.random.default_rng(0)
    k, d = 4, 3
    cov = {
        "full": np.stack([np.eye(d) * (i + 1) for i in range(k)]),
        "tied": np.eye(d),
        "diag": np.arange(1, k * d + 1, dtype=float).reshape(k, d),
        "spherical": np.arange(1.0, k + 1),
    }[cov_type]
    ref = jaxgmm.params_from_covariances(
        np.array([0.1, 0.2, 0.3, 0.4]), rng.normal(size=(k, d)) * 5, cov, cov_type
    )
    perms = np.stack([rng.permutation(k) for _ in range(6)]).reshape(2, 3, k)
    per_comp = cov_type != "tied"

    def permute(leaf, comp):
        leaf = np.asarray(leaf)
        if not comp:
            return np.broadcast_to(leaf, (2, 3) + leaf.shape)
        return leaf[perms]

    noise = rng.normal(size=(2, 3, k, d)) * 0.01
    draws = jaxgmm.GMMParams(
        permute(ref.weights, True),
        permute(ref.means, True) + noise,
        permute(ref.prec_chol, per_comp),
    )
    relabelled, found = relabel(draws, ref, jaxgmm.GMMSpec(k, cov_type))
    np.testing.assert_array_equal(
        np.take_along_axis(perms, found, -1), np.broadcast_to(np.arange(k), (2, 3, k))
    )
    np.testing.assert_allclose(relabelled.weights, np.broadcast_to(ref.weights, (2, 3, k)))
    np.testing.assert_allclose(
        relabelled.prec_chol, np.broadcast_to(ref.prec_chol, (2, 3) + ref.prec_chol.shape)
    )


def test_summarize_r_hat_flags_disagreeing_chains():
    rng = np.random.default_rng(1)
    mixed = rng.normal(size=(4, 500))
    stuck = mixed + np.array([0.0, 0.0, 3.0, 3.0])[:, None]
    assert abs(summarize(mixed)["r_hat"] - 1) < 0.01
    assert summarize(stuck)["r_hat"] > 1.5
    np.testing.assert_allclose(summarize(mixed)["mean"], mixed.mean())


def test_predictive_density_and_waic_against_naive_reference():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 2))
    n_draws = 5
    means = rng.normal(size=(n_draws, 2, 2))
    weights = np.tile([0.3, 0.7], (n_draws, 1))
    covs = np.tile(np.eye(2), (n_draws, 2, 1, 1)) * rng.uniform(0.5, 2, (n_draws, 2, 1, 1))
    spec = jaxgmm.GMMSpec(2, "full")
    draws = jax.vmap(lambda w, m, c: jaxgmm.params_from_covariances(w, m, c, "full"))(
        jnp.asarray(weights), jnp.asarray(means), jnp.asarray(covs)
    )
    dens = np.array(
        [
            sum(
                weights[s, k] * stats.multivariate_normal.pdf(x, means[s, k], covs[s, k])
                for k in range(2)
            )
            for s in range(n_draws)
        ]
    )  # (S, N)
    np.testing.assert_allclose(
        log_predictive_density(jnp.asarray(x), draws, spec),
        np.mean(np.log(dens.mean(0))),
        rtol=1e-10,
    )
    elpd, p_waic = waic(jnp.asarray(x), draws, spec)
    expected_p = np.sum(np.var(np.log(dens), axis=0, ddof=1)) / 30
    np.testing.assert_allclose(p_waic, expected_p, rtol=1e-10)
    np.testing.assert_allclose(elpd, np.mean(np.log(dens.mean(0))) - expected_p, rtol=1e-10)


def test_short_nuts_run_shapes_and_diagnostics():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(-2, 0.5, (40, 1)), rng.normal(2, 0.5, (40, 1))])
    spec = jaxgmm.GMMSpec(2, "diag", prior=make_prior("conjugate"))
    reference = jaxgmm.params_from_covariances(
        np.array([0.5, 0.5]), np.array([[2.0], [-2.0]]), np.full((2, 1), 0.25), "diag"
    )
    swapped = jax.tree_util.tree_map(lambda a: a[::-1], reference)
    result = fit_nuts(
        jax.random.key(0),
        x,
        spec,
        num_warmup=150,
        num_samples=100,
        num_chains=2,
        chain_method="vectorized",
        reference=reference,
        init=[reference, swapped],  # one start per chain, in the two labellings
    )
    assert result.log_likelihood.shape == (2, 100) and result.diverging.shape == (2, 100)
    assert np.all(np.isfinite(result.log_likelihood))
    assert result.draws.means.shape == (2, 100, 2, 1)
    assert set(result.summary) == {"weights", "means", "covariances", "log_likelihood", "log_joint"}
    assert result.summary["means"]["r_hat"].shape == (2, 1)
    # The modes are far apart: each chain stays in the labelling it started in, so the
    # per-chain inits were used, and relabelling undoes chain 1's swap.
    np.testing.assert_array_equal(result.permutations[0], np.tile([0, 1], (100, 1)))
    np.testing.assert_array_equal(result.permutations[1], np.tile([1, 0], (100, 1)))
    raw_means = np.asarray(result.samples["means"]) if "means" in result.samples else None
    if raw_means is not None:
        assert raw_means[1, :, 0, 0].mean() < 0 < raw_means[0, :, 0, 0].mean()
    # Relabelled to the reference, whose component 1 is the one near -2.
    np.testing.assert_allclose(result.summary["means"]["mean"][:, 0], [2.0, -2.0], atol=0.3)
    ml = jaxgmm.fit_em(jax.random.key(0), x, jaxgmm.GMMSpec(2, "diag"), init=reference, tol=1e-8)
    # The plug-in log-likelihood at the posterior mean is at most the ML optimum.
    assert result.plug_in_log_likelihood <= ml.log_likelihood + 1e-9
    # Log joint = log-likelihood + the prior's density of the draw (jaxgmm.log_prior of the
    # relabelled params: the conjugate prior is exchangeable) / n.
    log_prior = jax.vmap(jax.vmap(lambda p: jaxgmm.log_prior(p, result.spec)))(result.draws)
    np.testing.assert_allclose(result.log_prior, log_prior, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(
        result.log_joint, result.log_likelihood + result.log_prior / len(x), rtol=1e-6
    )
    # Diagnostics: ArviZ's rank-normalised r-hat / bulk and tail ESS on every quantity.
    az = pytest.importorskip("arviz")
    for name in ("weights", "means", "log_likelihood", "log_joint"):
        values = np.asarray(getattr(result, name, None) if name.startswith("log") else
                            getattr(result.draws, name))  # fmt: skip
        ours = result.diagnostics[name]
        flat = values.reshape(2, 100, -1)
        for i in range(flat.shape[-1]):
            np.testing.assert_allclose(
                np.ravel(ours["r_hat"])[i], az.rhat(flat[..., i], method="rank"), rtol=1e-5
            )
            np.testing.assert_allclose(
                np.ravel(ours["ess_tail"])[i], az.ess(flat[..., i], method="tail"), rtol=1e-5
            )
    assert result.r_hat_max >= np.max(result.diagnostics["means"]["r_hat"])
    assert result.ess_bulk_min <= np.min(result.diagnostics["log_joint"]["ess_bulk"])
    # 200 draws cannot have both ESS above the default floor of 400.
    assert not result.converged
    assert result.tree_depth.shape == (2, 100) and np.all(result.tree_depth >= 1)
    assert 0 <= result.tree_depth_saturated <= 200


def test_per_chain_init_must_match_num_chains():
    x = np.concatenate([np.linspace(-3, -1, 20), np.linspace(1, 3, 20)])[:, None]
    spec = jaxgmm.GMMSpec(2, "diag", prior=make_prior("conjugate"))
    one = jaxgmm.params_from_covariances(
        np.array([0.5, 0.5]), np.array([[2.0], [-2.0]]), np.full((2, 1), 0.25), "diag"
    )
    with pytest.raises(ValueError, match=r"one per chain: got 3 for num_chains=2"):
        fit_nuts(jax.random.key(0), x, spec, num_chains=2, reference=one, init=[one] * 3)
    with pytest.raises(ValueError, match=r"init\[1\]\.weights must sum to 1"):
        fit_nuts(jax.random.key(0), x, spec, num_chains=2, reference=one,
                 init=[one, one._replace(weights=np.array([0.7, 0.7]))])  # fmt: skip
    with pytest.raises(ValueError, match="relabel_method must be one of"):
        fit_nuts(jax.random.key(0), x, spec, reference=one, relabel_method="ecr")


def test_log_prior_of_8000_draws_does_not_hang():
    """Issue 20: jit(vmap(log_prior)) over ~4000 draws hung 2 runs in 5; draws_log_prior
    maps one draw at a time. 8000 x K draws, checked against the prior's own density."""
    from jaxgmm.bayes.nuts import draws_log_prior
    from jaxgmm.priors import resolve_prior

    rng = np.random.default_rng(4)
    k, d = 3, 2
    x = rng.normal(size=(60, d))
    spec = resolve_prior(jaxgmm.GMMSpec(k, "full", prior=make_prior("conjugate")), x)
    n = 8000
    weights = rng.dirichlet(np.ones(k), size=n)
    means = rng.normal(size=(n, k, d))
    cov = np.eye(d) * rng.uniform(0.5, 2.0, size=(n, k, 1, 1))
    draws = jax.vmap(lambda w, m, c: jaxgmm.params_from_covariances(w, m, c, "full"))(
        weights, means, cov
    )
    sites = jax.vmap(lambda p: spec.prior.site_values(p, spec))(draws)
    sites = jax.tree_util.tree_map(lambda a: a.reshape((4, 2000) + a.shape[1:]), sites)
    start = time.perf_counter()
    values = draws_log_prior(sites, spec, d)
    assert time.perf_counter() - start < 300
    assert values.shape == (4, 2000) and np.all(np.isfinite(values))
    expected = [
        float(jaxgmm.log_prior(jaxgmm.GMMParams(*(leaf[i] for leaf in draws)), spec))
        for i in range(5)
    ]
    np.testing.assert_allclose(values.reshape(-1)[:5], expected, rtol=1e-5)


def test_bad_chain_method():
    with pytest.raises(ValueError, match="chain_method"):
        fit_nuts(
            jax.random.key(0),
            faithful(),
            jaxgmm.GMMSpec(2, "full", prior=make_prior("lkj")),
            chain_method="threads",
        )


@pytest.mark.slow
def test_nuts_old_faithful_lkj():
    x = faithful()
    rng = np.random.default_rng(0)
    held_out = rng.permutation(len(x))[:40]
    train = np.delete(x, held_out, axis=0)
    spec = jaxgmm.GMMSpec(2, "full", prior=make_prior("lkj"))
    start = time.perf_counter()
    result = fit_nuts(
        jax.random.key(0),
        train,
        spec,
        num_warmup=500,
        num_samples=1000,
        num_chains=4,
        chain_method="vectorized",
    )
    elapsed = time.perf_counter() - start
    r_hat = result.summary["means"]["r_hat"]
    print(
        f"NUTS faithful lkj: {elapsed:.1f}s, max r-hat(means) {r_hat.max():.4f}, "
        f"divergences {result.n_divergences}, min ESS(means) "
        f"{result.summary['means']['ess'].min():.0f}"
    )
    assert np.all(r_hat < 1.01)
    assert result.n_divergences == 0
    assert result.summary["log_likelihood"]["r_hat"] < 1.01
    em = jaxgmm.fit_em(jax.random.key(1), train, jaxgmm.GMMSpec(2, "full"), n_init=5, tol=1e-8)
    order = relabel(jax.tree_util.tree_map(lambda a: a[None], em.params), result.reference, spec)[0]
    em_means = np.asarray(order.means[0])
    mean, sd = result.summary["means"]["mean"], result.summary["means"]["sd"]
    assert np.all(np.abs(mean - em_means) < 2 * sd), (mean, em_means, sd)
    lpd = log_predictive_density(jnp.asarray(x[held_out]), result.draws, result.spec)
    plug_in = float(
        jaxgmm.mean_log_likelihood(jnp.asarray(x[held_out]), result.posterior_mean, result.spec)
    )
    print(f"held-out log predictive density {lpd:.4f}, plug-in {plug_in:.4f}")
    assert np.isfinite(lpd) and abs(lpd - plug_in) < 0.1


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("means", np.zeros((2, 3)), r"reference\.means .*shape \(2, 1\)"),
        ("means", np.zeros((4, 2, 1)), r"reference must be one solution"),
        ("weights", np.array([0.7, 0.7]), r"reference\.weights must sum to 1"),
        ("prec_chol", np.zeros((2, 1)), r"reference\.prec_chol .*positive"),
    ],
)
def test_bad_reference_names_the_argument(field, value, match):
    """Issue 16 defect 14: a wrong-shaped reference gave a broadcasting error."""
    x = np.concatenate([np.linspace(-3, -1, 20), np.linspace(1, 3, 20)])[:, None]
    spec = jaxgmm.GMMSpec(2, "diag", prior=make_prior("conjugate"))
    good = jaxgmm.params_from_covariances(
        np.array([0.5, 0.5]), np.array([[2.0], [-2.0]]), np.full((2, 1), 0.25), "diag"
    )
    if field == "means" and value.ndim == 3:
        bad = jax.tree_util.tree_map(lambda a: np.stack([np.asarray(a)] * 4), good)
    else:
        bad = good._replace(**{field: value})
    for argument in ("reference", "init"):
        given = {"reference": good, argument: bad}
        with pytest.raises(ValueError, match=match.replace("reference", argument)):
            fit_nuts(jax.random.key(0), x, spec, num_warmup=1, num_samples=1, num_chains=1, **given)


def test_map_census_modes_chain_starts_and_occupancy():
    """The runner's census: restarts started in two different merges of three clusters
    (K = 2) end at two MAP modes, ranked by log posterior; chains start at distinct modes
    first; draws are assigned to the nearest mode whatever their labelling."""
    from experiments.methods.nuts import chain_starts, map_census, nearest_modes, occupancy
    from jaxgmm.priors import resolve_prior

    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(-4, 0.5, 60), rng.normal(0, 0.5, 40), rng.normal(4, 0.5, 60)])
    x = x[:, None]
    spec = resolve_prior(jaxgmm.GMMSpec(2, "diag", prior=make_prior("conjugate")), x)

    def start(m0, m1):
        return jaxgmm.params_from_covariances(
            np.array([0.5, 0.5]), np.array([[m0], [m1]]), np.ones((2, 1)), "diag"
        )

    starts = [start(-2.0, 4.0), start(-4.0, 2.0), start(4.0, -2.0), start(-2.1, 4.1)]
    restarts = jax.tree_util.tree_map(lambda *a: np.stack(a), *starts)
    census = map_census(jax.random.key(0), x, spec, restarts)
    assert len(census["log_posterior"]) == 4 and len(census["modes"]) == 2
    lps = [m["log_posterior"] for m in census["modes"]]
    assert lps[0] > lps[1]
    # Restarts 0, 3 and 2 (a relabelled copy of 0) merge the left pair, 1 the right pair.
    assert census["mode"][0] == census["mode"][2] == census["mode"][3] != census["mode"][1]
    for r, params in enumerate(census["params"]):
        # MAP-EM climbed: the log posterior per sample rose from where it started.
        before = float(jaxgmm.mean_log_likelihood(x, starts[r], spec)) + float(
            jaxgmm.log_prior(starts[r], spec)
        ) / len(x)
        assert census["log_posterior"][r] > before
        np.testing.assert_allclose(
            census["log_posterior"][r],
            float(jaxgmm.mean_log_likelihood(x, params, spec))
            + float(jaxgmm.log_prior(params, spec)) / len(x),
            rtol=1e-6,
        )
    modes = census["modes"]
    assert chain_starts(modes, 3, len(x), mode_window=1e9) == [0, 1, 0]
    assert chain_starts(modes, 3, len(x), mode_window=0.0) == [0, 0, 0]
    # Draws: both modes, in both labellings.
    copies = [modes[0]["params"], modes[1]["params"]]
    copies += [jax.tree_util.tree_map(lambda a: np.asarray(a)[::-1], p) for p in copies]
    draws = jax.tree_util.tree_map(lambda *a: np.stack(a), *copies)
    index = nearest_modes(x, draws, modes, spec)
    np.testing.assert_array_equal(index, [0, 1, 0, 1])
    table = occupancy(index, np.array([0, 0, 1, 1]), 2)
    np.testing.assert_allclose(table, [[0.5, 0.5], [0.5, 0.5]])


def test_map_census_under_a_prior_without_a_map_ranks_ml_restarts():
    """sparse_dirichlet (concentration 0.01 < 1) has an unbounded posterior density and so
    no MAP: the census runs maximum-likelihood EM instead of failing, and says so."""
    from experiments.methods.nuts import map_census
    from jaxgmm.priors import resolve_prior

    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(-3, 0.5, 40), rng.normal(3, 0.5, 40)])[:, None]
    spec = resolve_prior(jaxgmm.GMMSpec(2, "diag", prior=make_prior("sparse_dirichlet")), x)
    assert spec.prior.no_map_reason(spec)
    restarts = jaxgmm.initial_params(jax.random.key(0), x, spec, "k-means++", 3)
    census = map_census(jax.random.key(1), x, spec, restarts)
    assert set(census["fitter"]) == {"em (ML: no MAP)"}
    ml = jaxgmm.fit_em(jax.random.key(2), x, jaxgmm.GMMSpec(2, "diag"), n_init=3)
    np.testing.assert_allclose(max(census["log_posterior"]), ml.log_likelihood, atol=1e-6)
