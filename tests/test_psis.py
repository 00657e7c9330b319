"""`jaxgmm.bayes.psis` against ArviZ's ``psislw`` (an independent implementation of the
same published algorithm) and against closed-form facts about the weights."""

import numpy as np
import pytest

from jaxgmm.bayes import psis

az = pytest.importorskip("arviz")


def _weight_sets():
    rng = np.random.default_rng(0)
    yield "normal", rng.normal(size=1000)  # light tail: k well below 0.5
    yield "student_t3", np.log(np.abs(rng.standard_t(3, size=2000)))  # k about 1/3
    yield "pareto_k0.8", np.log(rng.pareto(1 / 0.8, size=4000) + 1)  # heavy: k about 0.8
    yield "lognormal_sd3", 3.0 * rng.normal(size=500)
    yield "small", rng.normal(size=37)
    yield "with_zero_weights", np.concatenate([rng.normal(size=300), [-np.inf] * 5])


@pytest.mark.parametrize(
    "name,lw", list(_weight_sets()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_matches_arviz(name, lw):
    smoothed, k = psis.psis(lw)
    az_smoothed, az_k = az.psislw(np.array(lw, dtype=float), reff=1.0)
    np.testing.assert_allclose(k, az_k, rtol=1e-12, atol=1e-12)
    assert psis.pareto_k(lw) == k
    finite = np.isfinite(az_smoothed)
    np.testing.assert_array_equal(np.isfinite(smoothed), finite)
    np.testing.assert_allclose(smoothed[finite], az_smoothed[finite], rtol=1e-10, atol=1e-12)


def test_khat_tracks_a_known_tail():
    # Weights drawn from a generalised Pareto with shape 0.8: k-hat must come out near 0.8
    # and the summary must call the estimate unreliable; a normal's log weights (lognormal
    # weights with sd 0.5) have a light tail and are reliable.
    rng = np.random.default_rng(1)
    heavy = np.log(rng.pareto(1 / 0.8, size=20000) + 1)
    summary = psis.summarize(heavy)
    assert abs(summary["pareto_k"] - 0.8) < 0.1
    assert not summary["reliable"]
    light = psis.summarize(0.5 * rng.normal(size=20000))
    assert light["pareto_k"] < 0.3 and light["reliable"]


def test_ess_closed_forms():
    assert psis.importance_ess(np.zeros(50)) == pytest.approx(50.0)
    # one weight dominating: ESS -> 1
    assert psis.importance_ess(np.array([0.0, -800.0, -800.0])) == pytest.approx(1.0)
    # two equal weights and the rest zero: ESS = 2
    assert psis.importance_ess(np.array([3.0, 3.0, -np.inf, -np.inf])) == pytest.approx(2.0)
    # lognormal weights, sd s: ESS / N -> exp(-s^2)
    rng = np.random.default_rng(2)
    ess = psis.importance_ess(0.5 * rng.normal(size=200000))
    assert ess / 200000 == pytest.approx(np.exp(-0.25), rel=0.02)


def test_thresholds_and_tail_length():
    assert psis.tail_length(1000) == 95  # min(200, 3 sqrt(1000) = 94.87) rounded up
    assert psis.tail_length(20) == 4
    assert psis.khat_threshold(10000) == 0.7
    assert psis.khat_threshold(100) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((2, 3)), "1-D"),
        (np.array([0.0]), "at least 2"),
        (np.array([0.0, np.nan]), "NaN"),
        (np.array([-np.inf, -np.inf]), "every weight is 0"),
    ],
)
def test_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        psis.pareto_k(bad)
