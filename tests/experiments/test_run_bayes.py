"""The runner with priors and the Bayesian methods: every method of smoke_bayes.yaml (EM
and gradient MAP, SVI, NUTS under one conjugate prior) writes consistent files; prior
config errors name the key path; the SVI ELBO is below its importance-sampling estimate."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import jaxgmm
from experiments import results_io
from experiments import run as run_module
from experiments.config import load_config
from experiments.experiment import method_specs
from experiments.methods import METHODS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMOKE_BAYES = str(CONFIGS / "smoke_bayes.yaml")


@pytest.fixture(scope="module")
def bayes_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs") / "smoke_bayes"
    assert run_module.main([SMOKE_BAYES, "--output", str(folder), "--quiet"]) == 0
    return folder


def test_every_method_runs_and_writes_its_files(bayes_run):
    metrics = json.loads((bayes_run / "metrics.json").read_text())
    assert list(metrics["methods"]) == ["em", "gradient", "svi", "nuts"]
    assert set(metrics["methods"]) == set(METHODS) - {"vb", "smc"}
    for name in ("convergence.png", "clusters.png", "posterior.png", "posterior.npz"):
        assert (bayes_run / name).stat().st_size > 0, name
    for method, row in metrics["methods"].items():
        assert row["prior"] == "conjugate", method
        assert row["prior_hyperparameters"]["mean_precision"] == 0.1
        # mean_prior was filled from the (training) data.
        assert len(row["prior_hyperparameters"]["mean_prior"]) == 2
        assert np.isfinite(row["log_prior_total"]), method


def test_metrics_agree_with_traces_for_every_method(bayes_run):
    metrics = json.loads((bayes_run / "metrics.json").read_text())
    traces = results_io.read_traces(bayes_run / "traces.csv")
    params = results_io.read_npz(bayes_run / "params.npz")
    data = results_io.read_npz(bayes_run / "data.npz")
    assert set(traces) == set(metrics["methods"])
    # EM under the prior reports the MAP bound L(q, theta) + log p(theta) / N (issue 19).
    expected_bounds = {"em": "em_map_bound", "svi": "elbo", "nuts": "log_joint"}
    for method, row in metrics["methods"].items():
        trace = traces[method]
        assert row["n_iter"] == len(trace["iteration"]) >= 1, method
        np.testing.assert_array_equal(trace["iteration"], np.arange(1, row["n_iter"] + 1))
        assert trace["bound_name"] == row["bound_name"], method
        if method in expected_bounds:
            assert row["bound_name"] == expected_bounds[method]
        assert row["bound_final"] == trace["bound"][-1], method
        assert np.all(np.isfinite(trace["log_likelihood"])), method
        assert np.all(np.diff(trace["elapsed_s"]) >= 0), method
        # The final parameters' log-likelihood, recomputed from params.npz with the core.
        spec = jaxgmm.GMMSpec(2, "diag")
        fitted = jaxgmm.GMMParams(
            *(jnp.asarray(params[f"{method}/{k}"]) for k in ("weights", "means", "prec_chol"))
        )
        ll = float(jaxgmm.mean_log_likelihood(jnp.asarray(data["x_train"]), fitted, spec))
        assert row["train_log_likelihood"] == pytest.approx(ll, abs=1e-9), method

    # NUTS: the trace is the per-draw log-likelihood, equal to posterior.npz's draws, and
    # the log joint adds the (total) log prior / N to it.
    draws = results_io.group(results_io.read_npz(bayes_run / "posterior.npz"), "nuts")
    nuts, trace = metrics["methods"]["nuts"], traces["nuts"]
    np.testing.assert_allclose(trace["log_likelihood"], draws["log_likelihood"], rtol=1e-12)
    np.testing.assert_allclose(trace["bound"], draws["log_joint"], rtol=1e-12)
    n_draws = nuts["extra"]["num_chains"] * nuts["extra"]["num_samples"]
    assert draws["means"].shape == (n_draws, 2, 2) and draws["weights"].shape == (n_draws, 2)
    np.testing.assert_allclose(draws["weights"].sum(axis=1), 1.0, rtol=1e-9)
    assert nuts["extra"]["posterior_mean_log_likelihood"] == pytest.approx(
        float(np.mean(draws["log_likelihood"])), rel=1e-12
    )
    assert nuts["point_estimate"] is False and nuts.get("bic") is None
    assert nuts["extra"]["divergences"] >= 0 and nuts["extra"]["r_hat_max"] > 0.9
    assert np.isfinite(nuts["extra"]["log_predictive_density_test"])
    # EM (closed-form MAP step) and gradient MAP agree on the MAP point's log posterior.
    em, grad = metrics["methods"]["em"], metrics["methods"]["gradient"]
    n = metrics["data"]["n_train"]
    assert em["train_log_likelihood"] * n + em["log_prior_total"] == pytest.approx(
        grad["train_log_likelihood"] * n + grad["log_prior_total"], abs=1e-4
    )


def test_svi_elbo_below_importance_sampling_estimate(bayes_run):
    extra = json.loads((bayes_run / "metrics.json").read_text())["methods"]["svi"]["extra"]
    assert extra["guide"] == "auto_normal"
    assert extra["elbo"] <= extra["log_marginal_is"]
    # Above the ELBO by Jensen whatever its quality: the diagnostics say whether to trust it.
    assert "elbo_below_is" not in extra
    assert extra["is_symmetrized"] is True and extra["log_marginal_is_stderr"] > 0
    assert 1 <= extra["is_ess"] <= extra["is_draws"] and extra["is_pareto_k"] is not None
    assert extra["is_reliable"] == (extra["is_pareto_k"] <= extra["is_khat_threshold"])


def test_default_prior_for_methods_that_need_one(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: c\ndata: {dataset: synthetic, n_samples: 60}\nmodel: {n_components: 2}\n"
        "methods: [em, gradient, svi, nuts]\n"
    )
    config = load_config(path)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(60, 2)) + 3.0)
    spec = jaxgmm.GMMSpec(2, "full")
    specs = method_specs(config, spec, x, str(path))
    assert specs["em"] == (spec, "none") and specs["gradient"] == (spec, "none")
    for method in ("svi", "nuts"):
        method_spec, label = specs[method]
        assert label == "conjugate[within-cluster Psi, empirical Bayes] (default)"
        assert method_spec.prior.name == "conjugate"
        np.testing.assert_allclose(method_spec.prior.mean_prior, np.asarray(x).mean(0))
        psi = np.asarray(method_spec.prior.covariance_prior)
        assert np.count_nonzero(psi - np.diag(np.diag(psi))) == 0  # diagonal, from k-means


PRIOR_ERRORS = [
    (["model.prior.name=conjugat"], "model.prior.name: expected one of", ["'conjugate'", "'lkj'"]),
    (
        ["model.prior.name=conjugate", "model.prior.kappa=2"],
        "model.prior.kappa: prior 'conjugate' has no such hyperparameter",
        ["mean_precision"],
    ),
    (
        ["model.prior.name=lkj", "model.prior.eta=-1"],
        "model.prior.eta: prior 'lkj'",
        ["eta"],
    ),
    (
        ["model.prior.name=conjugate", "model.prior.mean_prior=[1, 2, 3]"],
        "model.prior: ",
        ["mean_prior", "(2,)"],
    ),
    (
        ["model.prior.name=lkj", "methods=[em, nuts]"],
        "methods: em cannot fit this model (model.prior: lkj)",
        ["gradient", "SVI", "NUTS"],
    ),
    (
        ["model.prior.name=sparse_dirichlet", "methods=[svi]", "svi.guide=auto_delta"],
        "methods: svi cannot fit this model",
        ["auto_normal"],
    ),
]


@pytest.mark.parametrize("overrides, message, fragments", PRIOR_ERRORS)
def test_prior_config_errors(tmp_path, capsys, overrides, message, fragments):
    path = tmp_path / "prior.yaml"
    path.write_text(
        "name: p\ndata: {dataset: synthetic, n_samples: 60}\nmodel: {n_components: 2}\n"
    )
    args = [str(path), "--output", str(tmp_path / "out"), "--quiet", "--no-plots"]
    for override in overrides:
        args += ["--set", override]
    assert run_module.main(args) == 2
    err = capsys.readouterr().err.replace(" (from --set)", "")
    line = next((ln for ln in err.splitlines() if message in ln), None)
    assert line is not None and line.startswith(f"{path}: "), err
    for fragment in fragments:
        assert fragment in line, line
    assert not (tmp_path / "out").exists()
