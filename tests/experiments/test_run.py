"""The experiment runner end to end: files, agreement between them, independent
recomputation of the metrics, config errors, overwrite protection, redrawing plots."""

import json
import math
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from experiments import plot as plot_module
from experiments import results_io
from experiments import run as run_module
from experiments.config import SCHEMA
from experiments.methods import DEFAULT_PRIOR, METHODS, MethodContext, MethodResult
from experiments.progress import progress_factory

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMOKE = str(CONFIGS / "smoke.yaml")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs") / "smoke"
    assert run_module.main([SMOKE, "--output", str(folder), "--quiet", "--animate"]) == 0
    return folder


def _scipy_mean_log_likelihood(x, weights, means, covariances):
    """Independent reference: SciPy's multivariate normal, full covariances."""
    log_parts = np.stack(
        [
            np.log(w) + multivariate_normal(m, c).logpdf(x)
            for w, m, c in zip(weights, means, covariances, strict=True)
        ],
        axis=1,
    )
    return float(np.mean(logsumexp(log_parts, axis=1)))


def test_smoke_writes_every_file(smoke_run):
    for name in (
        "config.yaml", "metrics.json", "traces.csv", "params.npz", "data.npz", "history.npz",
        "model_selection.csv", "convergence.png", "clusters.png", "model_selection.png",
        "em_animation.gif",
    ):  # fmt: skip
        assert (smoke_run / name).is_file(), name
        assert (smoke_run / name).stat().st_size > 0, name
    # No temporary or staging leftovers.
    assert not [p for p in smoke_run.iterdir() if p.name.startswith(".")]
    assert not [p for p in smoke_run.parent.iterdir() if p.name.startswith(".")]


def test_metrics_agree_with_traces_and_params(smoke_run):
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    traces = results_io.read_traces(smoke_run / "traces.csv")
    params = results_io.read_npz(smoke_run / "params.npz")
    data = results_io.read_npz(smoke_run / "data.npz")
    assert metrics["seed"] == 0 and metrics["dtype"] == "float64"
    assert metrics["versions"]["jax"] == jax.__version__
    assert metrics["jax_backend"] == jax.default_backend()
    assert set(traces) == set(metrics["methods"]) == {"em"}
    row, trace = metrics["methods"]["em"], traces["em"]
    assert row["n_iter"] == len(trace["iteration"]) >= 1
    np.testing.assert_array_equal(trace["iteration"], np.arange(1, row["n_iter"] + 1))
    assert trace["bound_name"] == row["bound_name"] == "em_bound"
    assert row["bound_final"] == trace["bound"][-1]
    assert np.all(np.diff(trace["elapsed_s"]) >= 0)
    # EM: the log-likelihood never decreases, and the final parameters are at least as
    # good as the last iterate the trace recorded.
    assert np.all(np.diff(trace["log_likelihood"]) >= -1e-10)
    assert row["train_log_likelihood"] >= trace["log_likelihood"][-1] - 1e-10

    # The final log-likelihood, recomputed with SciPy from the saved files.
    weights, means, covs = (params[f"em/{k}"] for k in ("weights", "means", "covariances"))
    for x, key in (
        (data["x_train"], "train_log_likelihood"),
        (data["x_test"], "test_log_likelihood"),
    ):
        assert row[key] == pytest.approx(
            _scipy_mean_log_likelihood(x, weights, means, covs), abs=1e-9
        )

    # BIC / AIC from an independent parameter count (full covariances).
    n, d = data["x_train"].shape
    k = metrics["spec"]["n_components"]
    n_params = (k - 1) + k * d + k * d * (d + 1) // 2
    total = row["train_log_likelihood"] * n
    assert row["n_parameters"] == n_params
    assert row["bic"] == pytest.approx(-2 * total + n_params * math.log(n), rel=1e-12)
    assert row["aic"] == pytest.approx(-2 * total + 2 * n_params, rel=1e-12)
    assert 0.0 <= row["ari"] <= 1.0 and row["recovery"]["means_rmse"] >= 0.0


def test_history_retraces_the_fit(smoke_run):
    history = results_io.group(results_io.read_npz(smoke_run / "history.npz"), "em")
    params = results_io.read_npz(smoke_run / "params.npz")
    n_iter = json.loads((smoke_run / "metrics.json").read_text())["methods"]["em"]["n_iter"]
    assert history["means"].shape[0] == n_iter + 1
    np.testing.assert_allclose(history["means"][0], params["init/means"][0], rtol=1e-12)
    np.testing.assert_allclose(history["means"][-1], params["em/means"], rtol=1e-9, atol=1e-12)


def test_model_selection_grid(smoke_run):
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    rows = metrics["model_selection"]["rows"]
    assert {(r["covariance_type"], r["n_components"]) for r in rows} == {
        ("full", 1), ("full", 2), ("diag", 1), ("diag", 2),
    }  # fmt: skip
    best = min(rows, key=lambda r: r["bic"])
    assert metrics["model_selection"]["best_bic"] == {
        "covariance_type": best["covariance_type"], "n_components": best["n_components"],
    }  # fmt: skip
    # K=1 has a closed form: the sample mean and the ML covariance (ddof=0) plus reg_covar.
    x = results_io.read_npz(smoke_run / "data.npz")["x_train"]
    cov = np.cov(x.T, bias=True) + 1e-6 * np.eye(x.shape[1])
    one = next(r for r in rows if r["covariance_type"] == "full" and r["n_components"] == 1)
    expected = _scipy_mean_log_likelihood(x, [1.0], [x.mean(0)], [cov])
    assert one["train_log_likelihood"] == pytest.approx(expected, abs=1e-8)
    csv_rows = (smoke_run / "model_selection.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 1 + len(rows)


def test_plot_redraws_from_files_only(smoke_run, tmp_path, monkeypatch):
    folder = tmp_path / "copy"
    shutil.copytree(smoke_run, folder)
    for png in folder.glob("*.png"):
        png.unlink()

    def no_fit(*args, **kwargs):
        raise AssertionError("plotting must not refit")

    monkeypatch.setattr("jaxgmm.run_fitter", no_fit)
    assert plot_module.main([str(folder), "--no-animate"]) == 0
    for name in ("convergence.png", "clusters.png", "model_selection.png"):
        assert (folder / name).stat().st_size > 0


def test_posterior_plot_from_draws(smoke_run, tmp_path):
    """The NUTS figure is drawn from posterior.npz; fake draws around the EM estimate."""
    folder = tmp_path / "copy"
    shutil.copytree(smoke_run, folder)
    rng = np.random.default_rng(0)
    means = results_io.read_npz(folder / "params.npz")["em/means"]
    draws = means[None] + 0.05 * rng.standard_normal((200,) + means.shape)
    draws[::2] = draws[::2, ::-1]  # label switching, undone by the relabelling
    results_io.write_npz(
        folder / "posterior.npz",
        {"nuts/means": draws, "nuts/log_likelihood": -3.2 + 0.01 * rng.standard_normal(200)},
    )
    written = plot_module.plot_run(folder, animate=False)
    assert folder / "posterior.png" in written
    assert (folder / "posterior.png").stat().st_size > 0


def test_refuses_to_overwrite(smoke_run, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(smoke_run, folder)
    before = (folder / "metrics.json").read_bytes()
    fast = ["--no-plots", "--quiet", "--set", "model_selection.n_components=null"]
    assert run_module.main([SMOKE, "--output", str(folder)] + fast) == 3
    assert "--overwrite" in capsys.readouterr().err
    assert (folder / "metrics.json").read_bytes() == before
    assert run_module.main([SMOKE, "--output", str(folder), "--overwrite"] + fast) == 0
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["model_selection"] is None
    # The old run's files are gone, not mixed with the new ones.
    assert not (folder / "clusters.png").exists() and not (folder / "history.npz").exists()


def test_float32_run(tmp_path):
    folder = tmp_path / "f32"
    args = [SMOKE, "--output", str(folder), "--quiet", "--no-plots", "--dtype", "float32",
            "--set", "model_selection.n_components=null"]  # fmt: skip
    assert run_module.main(args) == 0
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["dtype"] == "float32"
    row = metrics["methods"]["em"]
    assert all(
        math.isfinite(row[k]) for k in ("train_log_likelihood", "test_log_likelihood", "bic")
    )
    assert results_io.read_npz(folder / "params.npz")["em/means"].dtype == np.float32


BROKEN = [
    ("model:\n  n_components: three\n", [], "model.n_components: expected int"),
    ("em:\n  max_iters: 5\n", [], "em.max_iters: unknown key; did you mean 'max_iter'?"),
    (
        "",
        ["--set", "model.covariance_type=ful"],
        "model.covariance_type (from --set): expected one of",
    ),
    ("", ["--methods", "em,nope"], "methods (from --set): expected one of"),
    ("plot:\n  features: [x0, height]\n", [], "plot.features: no feature(s) ['height']"),
    ("model:\n  n_components: 500\n", [], "model.n_components: 500 components but only"),
]


@pytest.mark.parametrize("extra, args, message", BROKEN)
def test_broken_configs_name_file_and_key(tmp_path, capsys, extra, args, message):
    base = (
        "name: broken\ndata:\n  dataset: synthetic\n  n_samples: 60\n"
        "model:\n  n_components: 2\n" if "model:" not in extra else
        "name: broken\ndata:\n  dataset: synthetic\n  n_samples: 60\n"
    )  # fmt: skip
    path = tmp_path / "broken.yaml"
    path.write_text(base + extra)
    code = run_module.main([str(path), "--output", str(tmp_path / "out"), "--quiet"] + args)
    err = capsys.readouterr().err
    assert code == 2
    assert f"{path}: {message}" in err, err
    assert not (tmp_path / "out").exists()


def test_missing_config_file(tmp_path, capsys):
    assert run_module.main([str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: file not found" in capsys.readouterr().err


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "metrics.json"
    results_io.write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with results_io.atomic_open(path) as f:
            f.write('{"half": ')
            raise RuntimeError("interrupted")
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_json_has_no_nan(tmp_path):
    results_io.write_json(tmp_path / "m.json", {"x": float("nan"), "y": np.float32(1.5)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": None, "y": 1.5}


# Small settings for the contract test of slow methods (their defaults are for real runs).
TINY = {
    "svi": {"num_steps": 30, "n_eval_samples": 50},
    "nuts": {"num_warmup": 30, "num_samples": 30},
}


@pytest.mark.parametrize(
    "name",
    [
        # SVI and NUTS compile for ~10-20 s; test_run_bayes runs them through the runner.
        pytest.param(name, marks=pytest.mark.slow) if METHODS[name].needs_prior else name
        for name in sorted(METHODS)
    ],
)
def test_method_contract(name):
    """Every registered method has a config block and returns a consistent MethodResult."""
    import jax.numpy as jnp

    import jaxgmm
    from experiments.config import load_config  # noqa: F401  (blocks registered on import)

    assert name in SCHEMA
    rng = np.random.default_rng(0)
    x = jnp.asarray(np.concatenate([rng.normal(-3, 1, (40, 2)), rng.normal(3, 1, (40, 2))]))
    spec = jaxgmm.GMMSpec(2, "full")
    init = jaxgmm.initial_params(jax.random.key(0), x, spec, "kmeans", 1)
    if METHODS[name].needs_prior:
        prior = jaxgmm.priors.prior_from_config(DEFAULT_PRIOR)
        spec = jaxgmm.priors.resolve_prior(jaxgmm.GMMSpec(2, "full", prior=prior), x)
    settings = {k: v.default for k, v in SCHEMA[name].items()}
    settings.update(TINY.get(name, {}))
    context = MethodContext(
        key=jax.random.key(1), x=x, spec=spec, init_params=init, settings=settings,
        progress=progress_factory(False),
    )  # fmt: skip
    result = METHODS[name].run(context)
    assert isinstance(result, MethodResult)
    n = len(result.iteration)
    assert n == result.n_iter
    for field in ("log_likelihood", "bound", "elapsed_s"):
        assert getattr(result, field).shape == (n,)
    assert np.all(np.isfinite(result.log_likelihood))
    if result.params is not None:
        assert result.params.means.shape == (2, 2)
        np.testing.assert_allclose(result.params.weights.sum(), 1.0, rtol=1e-6)
