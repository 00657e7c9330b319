"""The runner's iris EM log-likelihood equals scikit-learn's GaussianMixture fitted from
the same initial parameters (float64)."""

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

from experiments import results_io
from experiments import run as run_module

IRIS = str(Path(__file__).resolve().parents[2] / "configs" / "iris.yaml")


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_iris_em_matches_sklearn(tmp_path, require_x64, covariance_type):
    folder = tmp_path / "iris"
    args = [IRIS, "--output", str(folder), "--quiet", "--no-plots", "--methods", "em",
            "--set", "em.tol=1e-12", "--set", "em.max_iter=5000",
            "--set", f"model.covariance_type={covariance_type}"]  # fmt: skip
    assert run_module.main(args) == 0
    metrics = json.loads((folder / "metrics.json").read_text())
    params = results_io.read_npz(folder / "params.npz")
    x = results_io.read_npz(folder / "data.npz")["x_train"]
    assert metrics["dtype"] == "float64" and x.shape == (150, 4)

    covariances = params["init/covariances"][0]
    precisions = 1.0 / covariances if covariance_type == "diag" else np.linalg.inv(covariances)
    reference = GaussianMixture(
        n_components=3, covariance_type=covariance_type, reg_covar=1e-6, tol=1e-12,
        max_iter=5000, weights_init=params["init/weights"][0], means_init=params["init/means"][0],
        precisions_init=precisions,
    ).fit(x)  # fmt: skip
    assert reference.converged_
    ours = metrics["methods"]["em"]["train_log_likelihood"]
    assert ours == pytest.approx(reference.score(x), abs=1e-6)
    assert metrics["methods"]["em"]["converged"]
