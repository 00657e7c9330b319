"""The runner's ``smc`` method (tempered SMC as a posterior sampler) on smoke_bayes: its
metrics row, ledger entry, draws in posterior.npz, the table's row and diagnostics, and
the warning when its runs disagree."""

import json
from pathlib import Path

import numpy as np
import pytest

from experiments import run as run_module
from experiments.report import method_warnings

SMOKE_BAYES = str(Path(__file__).resolve().parents[2] / "configs" / "smoke_bayes.yaml")


@pytest.fixture(scope="module")
def smc_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs") / "smc"
    argv = [SMOKE_BAYES, "--output", str(folder), "--methods", "em,smc",
            "--set", "smc.n_particles=60", "--set", "evidence.methods=null"]  # fmt: skip
    assert run_module.main(argv) == 0
    return folder


def test_the_smc_row_reports_its_draws_runs_and_evidence(smc_run):
    metrics = json.loads((smc_run / "metrics.json").read_text())
    row = metrics["methods"]["smc"]
    extra = row["extra"]
    assert row["prior"] == "conjugate" and row["point_estimate"] is False
    assert row["n_iter"] == 4 * 60 and row["bound_name"] == "log_joint"
    assert row["status"] in ("converged", "r_hat", "runs_disagree")
    assert row["converged"] == (row["status"] == "converged")
    assert extra["kernel"] == "hmc" and extra["n_runs"] == 4 and extra["n_particles"] == 60
    assert len(extra["mode_occupancy"]) == 4 and len(extra["run_estimates"]) == 4
    assert len(extra["run_mean_log_likelihood"]) == 4
    np.testing.assert_allclose(np.sum(extra["mode_occupancy"], axis=1), 1.0)
    n_train = round(np.mean(extra["run_estimates"]) / extra["log_evidence_smc"])
    assert n_train == 60  # 80 samples, a quarter held out; per-sample units
    assert extra["r_hat_max"] > 0.9 and 0 < extra["unique_fraction_min"] <= 1
    # The ledger: a sampler, no bound; its draws' mean log-likelihood with a run-based error.
    ledger = row["ledger"]
    assert ledger["bound"] is None and ledger["holds"] is None
    posterior = np.load(smc_run / "posterior.npz")
    draws_ll = posterior["smc/log_likelihood"]
    assert draws_ll.shape == (240,)
    assert ledger["draws_log_likelihood"] == pytest.approx(draws_ll.mean())
    run_means = [draws_ll[posterior["smc/chain"] == r].mean() for r in range(4)]
    assert ledger["draws_log_likelihood_stderr"] == pytest.approx(np.std(run_means, ddof=1) / 2)
    assert posterior["smc/means"].shape == (240, 2, 2)
    assert (smc_run / "posterior.png").stat().st_size > 0


def test_disagreeing_runs_get_their_own_warning():
    extra = {"r_hat_max": 1.3, "r_hat_threshold": 1.01, "runs_summary": "run 0: 100% mode 1",
             "run_mean_log_likelihood": [-1.4385, -1.5243]}  # fmt: skip
    (warning,) = method_warnings("smc", {"status": "runs_disagree", "extra": extra})
    assert "independent runs disagree" in warning and "run 0: 100% mode 1" in warning
    (warning,) = method_warnings("smc", {"status": "r_hat", "extra": extra})
    assert "r-hat across runs < 1.01" in warning and "smc.n_particles" in warning
    assert "-1.4385, -1.5243" in warning
    assert "chains" not in warning
