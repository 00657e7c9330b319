"""The runner saves every method's model (``models/<method>.npz``), `run_experiment` hands
the fitted estimators back, ``jaxgmm.load`` reads them from the run folder, and
``python -m experiments.predict`` writes labels, responsibilities and log-densities of new
data (standardised as the run did), refusing to overwrite its output."""

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SklearnGM

import jaxgmm
from experiments import predict as predict_module
from experiments import results_io
from experiments.datasets import read_csv
from experiments.experiment import run_experiment

ROOT = Path(__file__).resolve().parents[2]
IRIS = ROOT / "configs" / "iris.yaml"
IRIS_CSV = ROOT / "experiments" / "data" / "iris.csv"
# Iris, standardised, two methods that fit in seconds (EM: a GaussianMixture; VB: a
# BayesianGaussianMixture), no test split.
OVERRIDES = [
    "methods=[em,vb]", "em.max_iter=30", "vb.max_iter=30", "data.standardize=true",
    "evidence.methods=null",  # log p(X) (bridge + smc on iris) is not what is tested here
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory, require_x64_module):
    folder = tmp_path_factory.mktemp("runs") / "iris"
    result = run_experiment(str(IRIS), overrides=OVERRIDES, output=folder, plots=False)
    return result, folder


@pytest.fixture(scope="module")
def require_x64_module():
    import jax

    if not jax.config.jax_enable_x64:
        pytest.skip("needs JAX_ENABLE_X64=1")


def _load_quietly(folder, method):
    with pytest.warns(UserWarning, match="standardised"):
        return jaxgmm.load(folder, method)


def test_runner_writes_one_model_per_method(run):
    result, folder = run
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["models"] == {"em": "models/em.npz", "vb": "models/vb.npz"}
    assert sorted(p.name for p in (folder / "models").iterdir()) == ["em.npz", "vb.npz"]
    em = jaxgmm.saved.SavedModel.read(folder, "em")
    provenance = em.provenance
    assert provenance["method"] == "em" and provenance["dataset"] == "iris"
    assert provenance["config_sha256"] == hashlib.sha256(IRIS.read_bytes()).hexdigest()
    resolved = (folder / "config.yaml").read_bytes()
    assert provenance["resolved_config_sha256"] == hashlib.sha256(resolved).hexdigest()
    assert provenance["created_utc"] == metrics["created_utc"]
    assert provenance["standardized"] and em.standardize is not None
    assert em.feature_names == metrics["data"]["feature_names"]
    assert em.spec == jaxgmm.GMMSpec(3, "full", 1e-6)
    vb = jaxgmm.saved.SavedModel.read(folder / "models" / "vb.npz")
    assert vb.kind == "BayesianGaussianMixture" and vb.spec.prior.name == "conjugate"
    # The run's standardisation is the training data's mean and standard deviation.
    raw = read_csv(IRIS_CSV, columns=em.feature_names).x
    np.testing.assert_allclose(em.standardize[0], raw.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(em.standardize[1], raw.std(axis=0), rtol=1e-13)


def test_loaded_models_reproduce_the_run(run):
    result, folder = run
    params = results_io.read_npz(folder / "params.npz")
    x_train = results_io.read_npz(folder / "data.npz")["x_train"]
    for method, cls in (("em", jaxgmm.GaussianMixture), ("vb", jaxgmm.BayesianGaussianMixture)):
        loaded = _load_quietly(folder, method)
        assert type(loaded) is cls
        np.testing.assert_array_equal(loaded.predict(x_train), params[f"{method}/labels_train"])
        assert loaded.score(x_train) == pytest.approx(
            result.rows[method]["train_log_likelihood"], rel=1e-12
        )
        # The notebook API hands back the same model.
        in_memory = result.models[method]
        assert type(in_memory) is cls
        np.testing.assert_array_equal(
            in_memory.predict_proba(x_train), loaded.predict_proba(x_train)
        )


@pytest.fixture(scope="module")
def new_csv(tmp_path_factory):
    """Iris rows in another column order, with an id and a label column the model ignores."""
    raw = read_csv(IRIS_CSV, columns=["petal_width", "sepal_length", "petal_length",
                                      "sepal_width"]).x[::3] * 1.01  # fmt: skip
    path = tmp_path_factory.mktemp("new") / "new_flowers.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["id", "petal_width", "sepal_length", "petal_length", "sepal_width", "kind"]
        )
        for i, row in enumerate(raw):
            writer.writerow([100 + i, *(repr(float(v)) for v in row), "unknown"])
    # In the model's order (sepal_length, sepal_width, petal_length, petal_width).
    return path, raw[:, [1, 3, 2, 0]]


def _read_rows(path):
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, np.array([[float(v) for v in row] for row in reader])


def test_predict_writes_labels_probabilities_and_densities(run, new_csv, tmp_path):
    _, folder = run
    data, x = new_csv
    out = tmp_path / "em_predictions.csv"
    assert predict_module.main([str(folder), str(data), "--method", "em", "--out", str(out)]) == 0
    header, table = _read_rows(out)
    assert header == ["row", "label", "prob_0", "prob_1", "prob_2", "log_density",
                      "log_density_standardized"]  # fmt: skip
    assert table.shape == (len(x), 7)
    np.testing.assert_array_equal(table[:, 0], np.arange(len(x)))

    # Reference: scikit-learn's GaussianMixture with the saved attributes, on the data
    # standardised with the saved mean and scale; log p(x) = log p(z) - sum(log scale).
    saved = jaxgmm.saved.SavedModel.read(folder, "em")
    mean, scale = saved.standardize
    reference = SklearnGM(n_components=3, covariance_type="full")
    reference.weights_, reference.means_, reference.precisions_cholesky_ = saved.params
    reference.covariances_ = saved.arrays["params/covariances"]
    z = (x - mean) / scale
    np.testing.assert_array_equal(table[:, 1], reference.predict(z))
    np.testing.assert_allclose(table[:, 2:5], reference.predict_proba(z), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(table[:, 2:5].sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(table[:, 6], reference.score_samples(z), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        table[:, 5], reference.score_samples(z) - np.log(scale).sum(), rtol=1e-10, atol=1e-12
    )


def test_predict_vb_adds_the_predictive_density(run, new_csv, tmp_path):
    _, folder = run
    data, x = new_csv
    out = tmp_path / "vb.csv"
    assert predict_module.main([str(folder), str(data), "--method", "vb", "--out", str(out)]) == 0
    header, table = _read_rows(out)
    assert header[-1] == "log_predictive_density" and table.shape[1] == 8
    saved = jaxgmm.saved.SavedModel.read(folder, "vb")
    estimator = saved.estimator()
    expected = estimator.score_samples_predictive(saved.transform(x))
    np.testing.assert_allclose(table[:, 7], expected + saved.log_abs_det_jacobian, rtol=1e-12)


def test_predict_refuses_to_overwrite(run, new_csv, tmp_path, capsys):
    _, folder = run
    data, _ = new_csv
    out = tmp_path / "p.csv"
    out.write_text("keep me\n")
    args = [str(folder), str(data), "--method", "em", "--out", str(out)]
    assert predict_module.main(args) == 3
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "keep me\n"
    assert predict_module.main([*args, "--overwrite"]) == 0
    assert out.read_text().startswith("row,label,prob_0")


def test_predict_default_output_name(run, new_csv, tmp_path, monkeypatch):
    _, folder = run
    data, _ = new_csv
    monkeypatch.chdir(tmp_path)
    assert predict_module.main([str(folder), str(data), "--method", "em"]) == 0
    assert (tmp_path / "new_flowers.em.predictions.csv").is_file()


def test_predict_bad_input_is_named(run, tmp_path, capsys):
    _, folder = run
    faithful = ROOT / "experiments" / "data" / "faithful.csv"
    assert predict_module.main([str(folder), str(faithful), "--method", "em"]) == 2
    assert "no column 'sepal_length'" in capsys.readouterr().err
    assert predict_module.main([str(folder), str(IRIS_CSV)]) == 2
    assert "several methods ['em', 'vb']" in capsys.readouterr().err
    assert predict_module.main([str(tmp_path / "nothing"), str(IRIS_CSV)]) == 2
    assert "no such saved-model file or folder" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.csv"))
