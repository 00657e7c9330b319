"""The mclust-style model-selection summary: BIC and ICL of every grid cell against
scikit-learn's GaussianMixture (float64) on the same fitted parameters, the BIC-best
model's sizes, weights and per-point uncertainty, the summary's signs and ranking, and its
figures."""

import csv
import math
from pathlib import Path

import jax
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture
from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

import jaxgmm
from experiments import results_io, run_experiment
from experiments.config import validate
from experiments.datasets import make_synthetic
from experiments.evaluation import model_selection
from experiments.progress import progress_factory
from experiments.summary import MCLUST_NAMES, mclust_name, summarize

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml")
TYPES = ["full", "tied", "diag", "spherical"]


def _sklearn_model(weights, means, covariances, covariance_type):
    """A fitted-looking scikit-learn GaussianMixture holding the given parameters; its
    precision Cholesky factors are computed by scikit-learn from the covariances."""
    model = GaussianMixture(len(weights), covariance_type=covariance_type)
    model.weights_ = np.asarray(weights, np.float64)
    model.means_ = np.asarray(means, np.float64)
    model.covariances_ = np.asarray(covariances, np.float64)
    model.precisions_cholesky_ = _compute_precision_cholesky(model.covariances_, covariance_type)
    return model


def _icl_reference(model, x):
    """mclust's icl() in our sign, from scikit-learn's BIC and predict_proba in NumPy:
    BIC - 2 sum_n sum_k C_nk log z_nk with C the MAP indicator matrix."""
    z = model.predict_proba(x)
    hard = np.zeros_like(z)
    hard[np.arange(len(z)), z.argmax(1)] = 1.0
    with np.errstate(divide="ignore"):
        log_z = np.where(z > 0, np.log(z), 0.0)
    return model.bic(x) - 2.0 * np.sum(hard * log_z)


def test_grid_bic_and_icl_match_sklearn_on_every_cell(require_x64):
    data = make_synthetic(3, n_samples=150, n_components=3, n_features=2, separation=2.5)
    x = jax.numpy.asarray(data.x)
    config = validate(
        {
            "name": "t",
            "data": {"dataset": "synthetic"},
            "model": {"n_components": 2},
            "em": {"max_iter": 100},
            # One K per family keeps the compiles few; K = 1 (ICL = BIC) is the smoke run's.
            "model_selection": {"n_components": [3], "covariance_types": TYPES},
        }
    )
    fits = {}
    rows = model_selection(config, x, None, jax.random.key(0), progress_factory(False), fits)
    assert len(rows) == len(fits) == len(TYPES)
    for row in rows:
        cov, k = row["covariance_type"], row["n_components"]
        spec, params = fits[(cov, k)]
        model = _sklearn_model(params.weights, params.means, jaxgmm.covariances(params, cov), cov)
        assert row["bic"] == pytest.approx(model.bic(data.x), rel=1e-10), (cov, k)
        icl = _icl_reference(model, data.x)
        assert row["icl"] == pytest.approx(icl, rel=1e-10), (cov, k)
        # The term added, -2 sum_n log max_k z_nk, is >= 0, and > 0 for overlapping clusters.
        assert row["icl"] > row["bic"]


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("summary") / "smoke"
    result = run_experiment(SMOKE, output=folder)
    return result, folder


def _read_uncertainty(path):
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def test_best_model_files_match_sklearn(grid_run, require_x64):
    result, folder = grid_run
    grid = result.metrics["model_selection"]
    best = grid["bic_best_model"]
    cell = (best["covariance_type"], best["n_components"])
    rows = {(r["covariance_type"], r["n_components"]): r for r in grid["rows"]}
    assert cell == min(rows, key=lambda c: rows[c]["bic"])
    assert {"covariance_type": cell[0], "n_components": cell[1]} == grid["best_bic"]
    assert grid["best_icl"] == dict(
        zip(("covariance_type", "n_components"), min(rows, key=lambda c: rows[c]["icl"]))
    )
    arrays = results_io.group(results_io.read_npz(folder / "model_selection.npz"), "best_bic")
    data = results_io.read_npz(folder / "data.npz")
    model = _sklearn_model(arrays["weights"], arrays["means"], arrays["covariances"], cell[0])
    x_train, x_test = data["x_train"], data["x_test"]
    n = len(x_train)

    # The grid cell's fit, reused: its BIC and ICL recomputed by scikit-learn.
    assert best["bic"] == pytest.approx(model.bic(x_train), rel=1e-10)
    assert best["icl"] == pytest.approx(_icl_reference(model, x_train), rel=1e-10)
    assert best["log_likelihood_total"] == pytest.approx(model.score(x_train) * n, rel=1e-10)
    assert best["n_samples"] == n and best["n_parameters"] == model._n_parameters()
    # mclust's clustering table and mixing probabilities.
    labels = model.predict(x_train)
    np.testing.assert_array_equal(arrays["labels_train"], labels)
    assert best["cluster_sizes"] == np.bincount(labels, minlength=cell[1]).tolist()
    np.testing.assert_allclose(best["weights"], arrays["weights"], rtol=1e-12)
    assert sum(best["cluster_sizes"]) == n and math.isclose(sum(best["weights"]), 1.0)

    # uncertainty.csv: every training and held-out point, 1 - max responsibility.
    table = _read_uncertainty(folder / "uncertainty.csv")
    assert [r["split"] for r in table] == ["train"] * n + ["test"] * len(x_test)
    for split, x in (("train", x_train), ("test", x_test)):
        part = [r for r in table if r["split"] == split]
        assert [int(r["index"]) for r in part] == list(range(len(x)))
        proba = model.predict_proba(x)
        resp = np.array([[float(r[f"resp_{k}"]) for k in range(cell[1])] for r in part])
        np.testing.assert_allclose(resp, proba, atol=1e-12)
        uncertainty = np.array([float(r["uncertainty"]) for r in part])
        np.testing.assert_allclose(uncertainty, 1.0 - proba.max(1), atol=1e-12)
        assert [int(r["label"]) for r in part] == proba.argmax(1).tolist()
    u_train = 1.0 - model.predict_proba(x_train).max(1)
    assert best["uncertainty_mean"] == pytest.approx(u_train.mean(), abs=1e-12)
    assert best["uncertainty_max"] == pytest.approx(u_train.max(), abs=1e-12)
    assert 0.0 <= best["uncertainty_max"] <= 1.0 - 1.0 / cell[1] + 1e-12


def test_summary_is_in_mclusts_sign_and_ranks_by_it(grid_run):
    result, folder = grid_run
    summary = summarize(folder)
    assert summary == summarize(result) == summarize(result.metrics)
    rows = result.metrics["model_selection"]["rows"]
    assert summary.covariance_types == ("full", "diag") and summary.n_components == (1, 2)
    for r in rows:
        cell = (r["covariance_type"], r["n_components"])
        assert summary.bic[cell] == -r["bic"] and summary.icl[cell] == -r["icl"]
    # Top three by mclust's BIC (bigger is better), differences to the best <= 0.
    ranked = sorted(rows, key=lambda r: r["bic"])[:3]
    assert [(c, k) for c, k, _, _ in summary.top_bic] == [
        (r["covariance_type"], r["n_components"]) for r in ranked
    ]
    assert summary.top_bic[0][3] == 0.0
    for _, _, value, diff in summary.top_bic:
        assert diff == pytest.approx(value - summary.top_bic[0][2]) and diff <= 0
    best = result.metrics["model_selection"]["bic_best_model"]
    assert summary.best["bic"] == -best["bic"] and summary.best["icl"] == -best["icl"]
    assert summary.best["cluster_sizes"] == best["cluster_sizes"]
    for r in rows:
        if r["n_components"] == 1:  # one component: every z_n1 = 1, so ICL = BIC
            assert r["icl"] == pytest.approx(r["bic"], abs=1e-9)

    text = summary.text()
    for fragment in (
        "mclust's sign, 2 log L - p log n",
        "top 3 models by BIC",
        "BIC diff",
        "top 3 models by ICL",
        "clustering table",
        "uncertainty.csv",
        f"{best['covariance_type']} ({MCLUST_NAMES[best['covariance_type']]})",
        format(-best["bic"], ".3f"),
        "size      " + "".join(f"  {s:>6}" for s in best["cluster_sizes"]),
    ):
        assert fragment in text, (fragment, text)
    # The runner's table ends its grid section with the summary.
    assert text in result.table()


def test_summary_figures_are_drawn(grid_run):
    _, folder = grid_run
    for name in ("model_selection_best.png", "uncertainty.png"):
        assert (folder / name).stat().st_size > 0, name


def test_summary_refuses_a_run_without_grid_and_a_folder_without_run(tmp_path):
    result = run_experiment(SMOKE, overrides=["model_selection.n_components=null"])
    with pytest.raises(ValueError, match="no model-selection grid"):
        summarize(result)
    assert "model-selection summary" not in result.table()
    with pytest.raises(ValueError, match=f"{tmp_path}: no metrics.json"):
        summarize(tmp_path)
    with pytest.raises(TypeError, match="run folder, an ExperimentResult or a metrics dict"):
        summarize(42)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_mclust_names(covariance_type):
    assert mclust_name(covariance_type, 3) == MCLUST_NAMES[covariance_type]
    assert mclust_name(covariance_type, 1) == ("E" if covariance_type == "tied" else "V")
