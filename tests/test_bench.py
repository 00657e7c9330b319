"""Smoke test of `python -m experiments.bench` on its smallest size."""

import csv

import numpy as np
import pytest

from experiments import bench


def test_score_float64_matches_sklearn():
    from sklearn.mixture import GaussianMixture

    x = bench.make_data(500, 3, 2)
    gm = GaussianMixture(2, covariance_type="full", random_state=0).fit(x)
    ours = bench.score_float64(x, gm.weights_, gm.means_, gm.covariances_, "full")
    np.testing.assert_allclose(ours, gm.score(x), rtol=1e-10)


def test_bench_smallest_size(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.GRIDS, "small", [(2000, 3, 2, "full")])
    monkeypatch.setitem(
        bench.SCALING, "small", {"base": (1000, 2, 2), "n": [500, 1000], "k": [2], "d": [2]}
    )
    assert bench.main(["--sizes", "small", "--dtypes", "float64", "--iters", "3",
                       "--out", str(tmp_path)]) == 0
    with open(tmp_path / "bench.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["tool"] for r in rows} == {"jaxgmm", "sklearn"}
    lls = [float(r["final_log_likelihood_f64"]) for r in rows]
    assert np.isfinite(lls).all() and abs(lls[0] - lls[1]) < 1e-6  # same start, same EM
    assert all(float(r["s_per_iter"]) > 0 for r in rows)
    assert (tmp_path / "bench.png").exists() and (tmp_path / "scaling.png").exists()


def test_bench_rejects_bad_dtype(tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--dtypes", "float16", "--out", str(tmp_path)])
