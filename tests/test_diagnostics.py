"""Rank-normalised r-hat and bulk/tail ESS against ArviZ (Vehtari et al. 2021), on mixing,
autocorrelated, stuck and tied draws, and the `converged` rule."""

import numpy as np
import pytest

from jaxgmm.bayes.diagnostics import diagnose, ess_bulk, ess_tail, is_converged, rank_rhat

az = pytest.importorskip("arviz")


def _draws(kind, rng, shape=(4, 301, 3)):
    if kind == "iid":
        return rng.normal(size=shape)
    if kind == "ar1":
        out = np.zeros(shape)
        eps = rng.normal(size=shape)
        for t in range(1, shape[1]):
            out[:, t] = 0.9 * out[:, t - 1] + eps[:, t]
        return out
    if kind == "stuck":
        # one chain at a shifted location, one with a heavier tail: bulk and tail r-hat.
        out = rng.normal(size=shape)
        out[0] += 1.5
        out[1] *= 3.0
        return out
    if kind == "ties":
        return np.round(rng.exponential(size=shape), 1)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["iid", "ar1", "stuck", "ties"])
def test_matches_arviz(kind):
    rng = np.random.default_rng(["iid", "ar1", "stuck", "ties"].index(kind))
    draws = _draws(kind, rng)
    ours = diagnose(draws)
    for i in range(draws.shape[-1]):
        one = draws[..., i]
        np.testing.assert_allclose(ours["r_hat"][i], az.rhat(one, method="rank"), rtol=1e-6)
        np.testing.assert_allclose(ours["ess_bulk"][i], az.ess(one, method="bulk"), rtol=1e-6)
        np.testing.assert_allclose(ours["ess_tail"][i], az.ess(one, method="tail"), rtol=1e-6)


def test_shapes_and_edge_cases():
    rng = np.random.default_rng(5)
    draws = rng.normal(size=(2, 50, 3, 2))
    assert rank_rhat(draws).shape == (3, 2) and ess_bulk(draws).shape == (3, 2)
    assert np.isnan(rank_rhat(draws[:1])).all()  # one chain: r-hat undefined
    assert np.isfinite(ess_tail(draws[:1])).all()
    with_nan = draws.copy()
    with_nan[0, 3, 0, 0] = np.nan
    assert np.isnan(rank_rhat(with_nan)[0, 0]) and np.isfinite(rank_rhat(with_nan)[1, 1])
    with pytest.raises(ValueError, match="n_chains, n_draws"):
        rank_rhat(np.zeros(10))


def test_converged_rule():
    rng = np.random.default_rng(6)
    good = diagnose(rng.normal(size=(4, 1000)))
    assert is_converged(good["r_hat"], good["ess_bulk"], good["ess_tail"])
    stuck = _draws("stuck", rng, (4, 1000))
    bad = diagnose(stuck)
    assert bad["r_hat"] > 1.01
    assert not is_converged(bad["r_hat"], bad["ess_bulk"], bad["ess_tail"])
    # An ESS floor the draws cannot meet fails too, and so does a NaN.
    assert not is_converged(good["r_hat"], good["ess_bulk"], good["ess_tail"], ess_min=1e5)
    assert not is_converged(np.nan, 1e4, 1e4)
