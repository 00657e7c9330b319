"""`experiments.run_experiment`, the Python API under the command line."""

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

import jaxgmm
from experiments import ExperimentResult, results_io, run_experiment
from experiments.methods import MethodResult

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml")
NO_GRID = ["model_selection.n_components=null"]


def _without_timings(value):
    if isinstance(value, dict):
        return {
            k: _without_timings(v)
            for k, v in value.items()
            if k not in ("created_utc", "compile_s", "fit_s", "config_file")
        }
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api") / "run"
    return run_experiment(SMOKE, output=folder, plots=False), folder


def test_returns_metrics_and_method_results_and_writes_only_when_asked(written):
    result, folder = written
    assert isinstance(result, ExperimentResult) and result.folder == folder
    assert list(result.results) == result.config["methods"] == ["em"]
    em = result.results["em"]
    assert isinstance(em, MethodResult) and em.n_iter == len(em.log_likelihood)
    row = result.rows["em"]
    n_train, n_features = result.metrics["data"]["n_train"], result.metrics["data"]["n_features"]
    spec = jaxgmm.GMMSpec(2, "full")
    assert row["bic"] == jaxgmm.bic(row["train_log_likelihood"], n_train, n_features, spec)
    assert result.metrics["model_selection"]["best_bic"] is not None
    assert result.table().startswith("smoke: synthetic")
    # The folder holds what the command line writes, from the returned values.
    assert set(result.files) <= {p.name for p in folder.iterdir()}
    on_disk = results_io.read_json(folder / "metrics.json")
    assert on_disk["created_utc"] == result.metrics["created_utc"]
    assert on_disk["methods"]["em"]["bic"] == row["bic"]
    assert not list(folder.glob("*.png"))  # plots=False
    means = results_io.read_npz(folder / "params.npz")["em/means"]
    np.testing.assert_array_equal(means, em.params.means)


def test_refuses_a_folder_with_results_before_fitting(written, monkeypatch):
    _, folder = written

    def no_fit(*args, **kwargs):
        raise AssertionError("fitted before refusing the folder")

    monkeypatch.setattr("experiments.experiment._run", no_fit)
    with pytest.raises(results_io.RunFolderExists):
        run_experiment(SMOKE, output=folder)


def test_a_mapping_with_overrides_equals_the_file(written):
    by_path, _ = written
    raw = yaml.safe_load(Path(SMOKE).read_text())
    before = copy.deepcopy(raw)
    result = run_experiment(raw, overrides=NO_GRID)
    assert raw == before  # the caller's mapping is not modified
    assert result.folder is None and result.metrics["config_file"] == "<config>"
    assert result.metrics["model_selection"] is None and "model_selection.csv" not in result.files
    assert _without_timings(result.rows) == _without_timings(by_path.rows)
    # An already resolved config validates to itself.
    again = run_experiment(result.config, source="resolved")
    assert again.config == result.config
    assert _without_timings(again.metrics["methods"]) == _without_timings(by_path.rows)
