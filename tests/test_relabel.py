"""Relabelling of posterior draws (label switching): Stephens' KL algorithm on allocation
probabilities against known permutations, and the case the means-only method cannot solve,
two components with equal means and different variances (issue 20)."""

import jax
import numpy as np
import pytest

import jaxgmm
from jaxgmm.bayes.posterior import relabel
from jaxgmm.model.params import covariances

TRUE_VARIANCES = np.array([0.2, 3.0])


def _equal_means_draws(seed=0, n_draws=400):
    """Data from 0.5 N(0, 0.2) + 0.5 N(0, 3.0), draws scattered about the truth as a
    posterior would be, with labels switched at random in about half the draws."""
    rng = np.random.default_rng(seed)
    n = 300
    z = rng.integers(0, 2, n)
    x = rng.normal(0.0, np.sqrt(TRUE_VARIANCES[z]))[:, None]
    weights = np.clip(0.5 + 0.04 * rng.normal(size=(n_draws, 1)), 0.3, 0.7)
    weights = np.concatenate([weights, 1 - weights], axis=1)
    means = 0.08 * rng.normal(size=(n_draws, 2, 1))
    variances = TRUE_VARIANCES * np.exp(0.15 * rng.normal(size=(n_draws, 2)))
    swap = rng.random(n_draws) < 0.5
    order = np.where(swap[:, None], [1, 0], [0, 1])
    weights = np.take_along_axis(weights, order, 1)
    means = np.take_along_axis(means, order[:, :, None], 1)
    variances = np.take_along_axis(variances, order, 1)
    draws = jax.vmap(lambda w, m, v: jaxgmm.params_from_covariances(w, m, v, "spherical"))(
        weights, means, variances
    )
    draws = jax.tree_util.tree_map(lambda a: np.asarray(a).reshape((2, -1) + a.shape[1:]), draws)
    reference = jaxgmm.params_from_covariances(
        np.array([0.5, 0.5]), np.zeros((2, 1)), TRUE_VARIANCES, "spherical"
    )
    return x, draws, reference, order.reshape(2, -1, 2)


def _consistent(perms, order):
    """Fraction of draws whose relabelling undoes the known switch (draw component
    perms[j] is true component j)."""
    return float(np.mean(np.all(np.take_along_axis(order, perms, -1) == [0, 1], axis=-1)))


def test_equal_means_stephens_recovers_variances_means_only_does_not():
    x, draws, reference, order = _equal_means_draws()
    spec = jaxgmm.GMMSpec(2, "spherical")
    variances = {}
    for method in ("stephens", "means"):
        relabelled, perms = relabel(draws, reference, spec, method=method, x=x)
        variances[method] = np.asarray(covariances(relabelled, "spherical")).reshape(-1, 2)
        if method == "stephens":
            assert _consistent(perms, order) > 0.99
        else:
            assert _consistent(perms, order) < 0.8
    np.testing.assert_allclose(np.median(variances["stephens"], 0), TRUE_VARIANCES, rtol=0.1)
    # Means-only labels at random: both posterior variances are pulled to the middle.
    assert np.mean(variances["means"][:, 0]) > 0.5
    assert np.mean(variances["means"][:, 1]) < 2.6


@pytest.mark.parametrize("cov_type", ["full", "tied", "diag", "spherical"])
def test_stephens_undoes_known_permutations(cov_type):
    rng = np.random.default_rng(1)
    k, d = 3, 2
    cov = {
        "full": np.stack([np.eye(d) * (i + 1) for i in range(k)]),
        "tied": np.eye(d),
        "diag": np.arange(1, k * d + 1, dtype=float).reshape(k, d) / 2,
        "spherical": np.arange(1.0, k + 1),
    }[cov_type]
    ref = jaxgmm.params_from_covariances(
        np.array([0.2, 0.3, 0.5]), np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]]), cov, cov_type
    )
    x = np.asarray(jaxgmm.sample(jax.random.key(0), ref, jaxgmm.GMMSpec(k, cov_type), 200)[0])
    perms = np.stack([rng.permutation(k) for _ in range(12)]).reshape(3, 4, k)
    per_comp = cov_type != "tied"

    def permute(leaf, comp):
        leaf = np.asarray(leaf)
        return leaf[perms] if comp else np.broadcast_to(leaf, (3, 4) + leaf.shape)

    draws = jaxgmm.GMMParams(
        permute(ref.weights, True),
        permute(ref.means, True) + rng.normal(size=(3, 4, k, d)) * 0.05,
        permute(ref.prec_chol, per_comp),
    )
    relabelled, found = relabel(draws, ref, jaxgmm.GMMSpec(k, cov_type), method="stephens", x=x)
    np.testing.assert_array_equal(
        np.take_along_axis(perms, found, -1), np.broadcast_to(np.arange(k), (3, 4, k))
    )
    np.testing.assert_allclose(relabelled.weights, np.broadcast_to(ref.weights, (3, 4, k)))


def test_stephens_beyond_enumeration_matches_hungarian():
    """K = 6 uses the assignment solver per draw instead of enumerating K! permutations."""
    rng = np.random.default_rng(2)
    k = 6
    ref = jaxgmm.params_from_covariances(
        np.full(k, 1 / k), np.arange(k, dtype=float)[:, None] * 5, np.ones(k), "spherical"
    )
    x = np.asarray(jaxgmm.sample(jax.random.key(1), ref, jaxgmm.GMMSpec(k, "spherical"), 300)[0])
    perms = np.stack([rng.permutation(k) for _ in range(8)]).reshape(2, 4, k)
    draws = jaxgmm.GMMParams(
        np.asarray(ref.weights)[perms],
        np.asarray(ref.means)[perms],
        np.asarray(ref.prec_chol)[perms],
    )
    _, found = relabel(draws, ref, jaxgmm.GMMSpec(k, "spherical"), method="stephens", x=x)
    np.testing.assert_array_equal(
        np.take_along_axis(perms, found, -1), np.broadcast_to(np.arange(k), (2, 4, k))
    )


def test_bad_arguments():
    x, draws, reference, _ = _equal_means_draws(n_draws=8)
    spec = jaxgmm.GMMSpec(2, "spherical")
    with pytest.raises(ValueError, match="relabel method must be one of"):
        relabel(draws, reference, spec, method="ecr")
    with pytest.raises(ValueError, match="needs x"):
        relabel(draws, reference, spec, method="stephens")
    with pytest.raises(ValueError, match=r"x must have shape \(n_samples, 1\)"):
        relabel(draws, reference, spec, method="stephens", x=np.zeros((10, 3)))


def test_allocation_distance_against_brute_force():
    """The share of points two solutions allocate differently, minimised over labellings,
    against SciPy densities and every permutation; zero for a relabelled copy."""
    import itertools

    from scipy import stats

    from jaxgmm.bayes import allocation_distance

    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(-3, 1, 40), rng.normal(0, 1, 40), rng.normal(3, 1, 40)])[:, None]
    spec = jaxgmm.GMMSpec(3, "spherical")

    def params(w, m, v):
        return jaxgmm.params_from_covariances(np.array(w), np.array(m)[:, None], np.array(v),
                                              "spherical")  # fmt: skip

    ref_args = ([0.3, 0.3, 0.4], [-3.0, 0.0, 3.0], [1.0, 1.0, 1.0])
    draw_args = [
        ([0.3, 0.4, 0.3], [0.0, 3.0, -3.0], [1.0, 1.0, 1.0]),  # a relabelled copy
        ([0.5, 0.49, 0.01], [-1.5, 3.0, 40.0], [2.0, 1.0, 5.0]),  # merged, one empty
        ([0.2, 0.5, 0.3], [1.0, -2.0, 2.5], [0.5, 2.0, 1.0]),
    ]
    draws = jax.tree_util.tree_map(lambda *a: np.stack(a), *[params(*a) for a in draw_args])
    ours = allocation_distance(x, draws, params(*ref_args), spec)

    def resp(w, m, v):
        dens = np.stack([w[k] * stats.norm.pdf(x[:, 0], m[k], np.sqrt(v[k])) for k in range(3)], 1)
        return dens / dens.sum(1, keepdims=True)

    q = resp(*ref_args)
    expected = [
        min(0.5 * np.abs(resp(*a)[:, list(p)] - q).sum(1).mean()
            for p in itertools.permutations(range(3)))
        for a in draw_args
    ]  # fmt: skip
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-7)
    assert ours[0] < 1e-6 and ours[1] > 0.2
