"""Regression tests for the experiment runner's part of issue 16: answers that looked fine
(a dropped column, an infinite setting, a non-finite fit reported as a result, a degenerate
restart), checks that came after fitting (cross-field gradient rules, unwritable output,
component grids larger than the data), and leftovers of interrupted runs."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from experiments import results_io
from experiments import run as run_module
from experiments.config import ConfigError, load_config
from experiments.datasets import DataWarning, read_csv
from experiments.report import format_table, method_warnings

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
FAST = ["--quiet", "--no-plots", "--set", "model_selection.n_components=null"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _write(tmp_path, data, name="data.csv"):
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def _no_fitting(monkeypatch):
    """Make any fit fail loudly: the tests below must stop before fitting."""
    import experiments.experiment as experiment

    def refuse(*args, **kwargs):
        raise AssertionError("fitting started")

    monkeypatch.setattr(experiment, "_run", refuse)


# ------------------------------------------------------------- defect 6: the CSV loader


@pytest.mark.parametrize("cell", ["", "  ", "NA", "nan"])
def test_csv_all_missing_column_is_named_not_dropped_silently(tmp_path, cell):
    path = _write(tmp_path, f"a,b,c\n1,{cell},2\n3,{cell},4\n5,{cell},6\n")
    with pytest.warns(DataWarning, match=r"data\.csv: column 'b' is not used.*blank or NA"):
        data = read_csv(path)
    assert data.feature_names == ("a", "c")
    np.testing.assert_array_equal(data.x, [[1, 2], [3, 4], [5, 6]])
    # Asked for explicitly, it is an error at its first line, as before.
    with pytest.raises(ValueError, match="column 'b', line 2"):
        read_csv(path, columns=["a", "b"])


def test_csv_byte_order_mark_is_not_part_of_the_first_name(tmp_path):
    path = _write(tmp_path, b"\xef\xbb\xbfa,b,species\n1,2,x\n3,4,y\n")
    data = read_csv(path, columns=["a", "b"], label_column="species")
    assert data.feature_names == ("a", "b")
    np.testing.assert_array_equal(data.x, [[1, 2], [3, 4]])


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_csv_semicolon_and_tab_separated_files_are_read(tmp_path, delimiter):
    text = (
        delimiter.join(["a", "b"])
        + "\n"
        + "\n".join(delimiter.join(row) for row in [["1.5", "2"], ["3", "-4e-1"]])
    )
    data = read_csv(_write(tmp_path, text + "\n"))
    assert data.feature_names == ("a", "b")
    np.testing.assert_array_equal(data.x, [[1.5, 2], [3, -0.4]])


def test_csv_decimal_comma_message_says_so(tmp_path):
    path = _write(tmp_path, "a;b\n1,5;2\n3;4\n", "semi.csv")
    with pytest.raises(ValueError) as info:
        read_csv(path)
    message = str(info.value)
    for fragment in ("semi.csv", "column 'a'", "line 2", "'1,5'", "decimal comma", "semicolon"):
        assert fragment in message, message


def test_csv_latin1_file_is_read_with_a_warning(tmp_path):
    path = _write(tmp_path, "temp\xe9rature,b\n1,2\n3,4\n".encode("latin-1"), "latin.csv")
    with pytest.warns(DataWarning, match=r"latin\.csv: not UTF-8 .*line 1.*Latin-1"):
        data = read_csv(path)
    assert data.feature_names == ("température", "b")
    np.testing.assert_array_equal(data.x, [[1, 2], [3, 4]])


def test_csv_id_like_column_is_named(tmp_path):
    rng = np.random.default_rng(0)
    rows = "\n".join(
        f"{i + 100},{v:.4f},{int(w)}" for i, (v, w) in enumerate(rng.normal(size=(12, 2)))
    )
    path = _write(tmp_path, "id,x,w\n" + rows + "\n")
    with pytest.warns(DataWarning, match="column 'id' holds distinct integers") as record:
        data = read_csv(path)
    assert data.feature_names == ("id", "x", "w")
    # Only the id: w holds repeated integers, x is not integer-valued.
    assert len([w for w in record if issubclass(w.category, DataWarning)]) == 1


def test_runner_lists_data_warnings_and_refuses_a_folder_as_data_path(tmp_path, capsys):
    csv_path = _write(tmp_path, "a,b,empty\n" + "".join(f"{i % 3},{i % 5}.5,\n" for i in range(12)))
    config = tmp_path / "c.yaml"
    config.write_text(
        f"name: c\ndata: {{dataset: csv, path: {csv_path}}}\nmodel: {{n_components: 1}}\n"
        "em: {max_iter: 3}\n"
    )
    from experiments import run_experiment

    result = run_experiment(str(config))
    assert result.metrics["data"]["feature_names"] == ["a", "b"]
    (warning,) = result.metrics["warnings"]
    assert "column 'empty' is not used" in warning and str(csv_path) in warning
    table = " ".join(result.table().split())  # the table wraps long warnings
    assert "warnings:" in table and "column 'empty' is not used" in table

    config.write_text(config.read_text().replace(str(csv_path), str(tmp_path)))
    assert run_module.main([str(config), "--output", str(tmp_path / "out")] + FAST) == 2
    err = capsys.readouterr().err
    assert f"{config}: data.path: {tmp_path}: is a folder, not a CSV file" in err, err
    with pytest.raises(ValueError, match="is a folder"):
        read_csv(tmp_path)


# ------------------------------------------------------------- defect 9: config gaps

MINIMAL = "name: x\ndata: {dataset: iris}\nmodel: {n_components: 3}\n"


@pytest.mark.parametrize(
    "override",
    [
        "model.reg_covar=.inf",
        "em.tol=.inf",
        "gradient.learning_rate=.inf",
        "svi.learning_rate=.inf",
        "gradient.tol=-.inf",
        "em.tol=.nan",
        "model.reg_covar=1e999",
    ],
)
def test_non_finite_numbers_are_refused(tmp_path, override):
    path = _write(tmp_path, MINIMAL, "c.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    key = override.split("=")[0]
    (line,) = info.value.errors
    assert line.startswith(f"{path}: {key} (from --set): expected a finite number"), line


@pytest.mark.parametrize(
    "block, key, fragments",
    [
        ("{optimizer: lbfgs, batch_size: 10}", "gradient.batch_size", ["line search", "adam"]),
        ("{optimizer: lbfgs, schedule: cosine}", "gradient.schedule", ["gradient.learning_rate"]),
        ("{optimizer: adam, eval_every: 4}", "gradient.eval_every", ["gradient.batch_size"]),
    ],
)
def test_gradient_cross_field_rules_at_load(tmp_path, block, key, fragments):
    path = _write(tmp_path, MINIMAL + f"gradient: {block}\n", "c.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (line,) = info.value.errors
    assert line.startswith(f"{path}: {key}: "), line
    for fragment in fragments:
        assert fragment in line, line
    # The rules the fitter accepts pass: adam with minibatches, a schedule with a rate.
    load_config(path, ["gradient.optimizer=adam", "gradient.batch_size=8",
                       "gradient.schedule=cosine", "gradient.learning_rate=0.1"])  # fmt: skip


def test_batch_larger_than_data_is_refused_before_any_method_runs(tmp_path, capsys, monkeypatch):
    from experiments.methods import METHODS

    def refuse(context):
        raise AssertionError("a method ran")

    for name in ("em", "gradient"):
        monkeypatch.setitem(METHODS, name, dataclasses.replace(METHODS[name], run=refuse))
    out = tmp_path / "out"
    args = [SMOKE, "--output", str(out), "--methods", "em,gradient",
            "--set", "gradient.optimizer=adam", "--set", "gradient.batch_size=1000"]  # fmt: skip
    assert run_module.main(args + FAST) == 2
    err = capsys.readouterr().err
    assert f"{SMOKE}: gradient.batch_size: 1000 exceeds the 90 training samples" in err, err
    assert not out.exists()


# --------------------------------------------------- defect 14: grids larger than the data


def test_model_selection_grid_above_n_samples_names_the_key(tmp_path, capsys, monkeypatch):
    args = [SMOKE, "--output", str(tmp_path / "out"), "--quiet", "--no-plots",
            "--set", "model_selection.n_components=[1, 2, 91, 500]"]  # fmt: skip
    assert run_module.main(args) == 2
    err = capsys.readouterr().err
    assert f"{SMOKE}: model_selection.n_components: [91, 500] exceed the 90 training" in err, err
    assert "top_k" not in err


# ------------------------------------------- defects 10 and 2: what the report says


def _metrics(**row):
    base = {
        "bound_name": "em_bound", "bound_final": -1.0, "n_iter": 7, "converged": False,
        "status": "max_iter", "degeneracies": [], "restarts": None, "extra": {},
        "train_log_likelihood": -1.0,
    }  # fmt: skip
    base.update(row)
    return {
        "name": "t", "data": {"dataset": "d", "n_train": 10, "n_test": 0},
        "spec": {"n_components": 2, "covariance_type": "full"}, "dtype": "float64",
        "jax_backend": "cpu", "methods": {"em": base}, "model_selection": None,
        "warnings": method_warnings("em", base, {"tol": 1e-6}),
    }  # fmt: skip


@pytest.mark.parametrize(
    "row, cell, warning",
    [
        ({"converged": True, "status": "converged"}, "yes", None),
        ({}, "no (max_iter)", "iteration limit (7) before the change fell below em.tol=1e-06"),
        ({"status": "stalled"}, "no (stalled)", "stopped moving at iteration 7"),
        (
            {"status": "nonfinite", "n_iter": 0, "extra": {"nonfinite_iteration": 1}},
            "no (nonfinite@1)",
            "non-finite values at iteration 1: the fit stopped there and reports its "
            "initial parameters",
        ),
    ],
)
def test_table_converged_column_says_why_not(row, cell, warning):
    metrics = _metrics(**row)
    table = format_table(metrics)
    # The table is in blocks (issue 19); "converged" heads a column of the run block.
    lines = table.splitlines()
    at = next(i for i, text in enumerate(lines) if " converged" in text)
    header, line = lines[at : at + 2]
    assert " converged" in header
    assert cell in line
    if warning is None:
        assert "warnings:" not in table
    else:
        assert "warnings:" in table and warning in table


def _restarts(selected):
    collapsed = {"component": 2, "kind": "collapsed_covariance", "first_iteration": 4,
                 "value": 1e-6}  # fmt: skip
    return [
        {"restart": 0, "log_likelihood": -1.2, "degenerate": False, "selected": selected == 0,
         "best_overall": False, "degeneracies": [], "n_iter": 9, "converged": True},
        {"restart": 1, "log_likelihood": -0.66, "degenerate": True, "selected": selected == 1,
         "best_overall": True, "n_iter": 9, "converged": True, "degeneracies": [collapsed]},
        {"restart": 2, "log_likelihood": -1.3, "degenerate": False, "selected": False,
         "best_overall": False, "degeneracies": [], "n_iter": 9, "converged": True},
    ]  # fmt: skip


@pytest.mark.parametrize("selected", [0, 1])
def test_table_shows_best_non_degenerate_beside_best_overall(selected):
    metrics = _metrics(converged=True, status="converged", restarts=_restarts(selected),
                       extra={"selection": ["non_degenerate", "likelihood"][selected]})  # fmt: skip
    lines = format_table(metrics).splitlines()
    clean = next(line for line in lines if "best non-degenerate restart 0" in line)
    best = next(line for line in lines if "best overall" in line)
    assert "ll -1.20000 per sample" in clean and "degenerate" not in clean.split("restart 0")[1]
    assert "restart 1 (ll -0.66000 per sample, degenerate: component 2 collapsed" in best
    assert ("<- reported" in clean) == (selected == 0)
    assert ("<- reported" in best) == (selected == 1)
    (warning,) = metrics["warnings"]
    assert "restart 1" in warning and "restart 0" in warning
    # A best overall that is not degenerate needs no second line.
    restarts = _restarts(0)
    restarts[1]["degenerate"], restarts[1]["degeneracies"] = False, []
    assert "best overall" not in format_table(_metrics(restarts=restarts))


def test_iris_degenerate_restart_is_reported_beside_the_one_kept():
    """defect 2 (issue 16's case): iris, K=3 full, random_from_data, 8 restarts, seed 3:
    one restart reaches a spurious optimum with a component at the reg_covar floor."""
    from experiments import run_experiment

    base = ["methods=[em]", "seed=3", "init.method=random_from_data", "init.n_init=8"]
    kept = run_experiment(ROOT / "configs" / "iris.yaml", overrides=base)
    row = kept.rows["em"]
    restarts = row["restarts"]
    assert len(restarts) == 8
    assert all(r["degenerate"] == bool(r["degeneracies"]) for r in restarts)
    (selected,) = [r for r in restarts if r["selected"]]
    (best,) = [r for r in restarts if r["best_overall"]]
    assert best["degenerate"] and not selected["degenerate"]
    clean = [r["log_likelihood"] for r in restarts if not r["degenerate"]]
    assert selected["log_likelihood"] == max(clean)
    # The runner rescores the parameters with its own compiled density: equal to rounding.
    assert row["train_log_likelihood"] == pytest.approx(selected["log_likelihood"], rel=1e-12)
    assert best["log_likelihood"] > selected["log_likelihood"]
    assert not row["degeneracies"] and row["bic"] == selected["bic"]
    table = kept.table()
    assert f"best overall        restart {best['restart']}" in table
    assert any("is degenerate" in w for w in kept.metrics["warnings"])

    likely = run_experiment(
        ROOT / "configs" / "iris.yaml", overrides=base + ["init.select=likelihood"]
    )
    row = likely.rows["em"]
    assert row["extra"]["selection"] == "likelihood"
    assert row["degeneracies"]
    assert row["train_log_likelihood"] == pytest.approx(best["log_likelihood"], rel=1e-12)
    assert "<- reported" in next(
        line for line in likely.table().splitlines() if "best overall" in line
    )


def test_nonfinite_fit_is_reported_not_hidden(tmp_path):
    """defect 10: a fit that went non-finite (here sgd with a huge learning rate) says so
    in the row, the table's converged column and the warnings; it is not converged."""
    from experiments import run_experiment

    result = run_experiment(
        SMOKE,
        overrides=["methods=[gradient]", "gradient.optimizer=sgd",
                   "gradient.learning_rate=1e6", "gradient.max_steps=20",
                   "model_selection.n_components=null"],
    )  # fmt: skip
    row = result.rows["gradient"]
    assert row["converged"] is False and row["status"] == "nonfinite"
    at = row["extra"]["nonfinite_iteration"]
    assert at >= 1 and row["n_iter"] == at - 1
    assert f"no (nonfinite@{at})" in result.table()
    assert any(w.startswith(f"gradient: non-finite values at iteration {at}")
               for w in result.metrics["warnings"])  # fmt: skip
    # Whatever is reported is finite (the last finite parameters), never NaN.
    assert np.isfinite(row["train_log_likelihood"])
    restarts = row["restarts"]
    assert len(restarts) == 1 and restarts[0]["selected"]
    assert restarts[0]["status"] == "nonfinite"


# ------------------------------------------------------- defect 12: unwritable output


def test_run_folder_under_a_file_is_refused_before_fitting(tmp_path, capsys, monkeypatch):
    _no_fitting(monkeypatch)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run_module.main([SMOKE, "--output", str(blocker / "sub" / "run")] + FAST) == 2
    err = capsys.readouterr().err
    assert f"{blocker} is a file, not a folder" in err, err


def test_unwritable_parent_is_refused_before_fitting(tmp_path, capsys, monkeypatch):
    _no_fitting(monkeypatch)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # As root a read-only folder is still writable, so simulate the refusal.
    monkeypatch.setattr(results_io.tempfile, "mkdtemp", denied)
    assert run_module.main([SMOKE, "--output", str(tmp_path / "run")] + FAST) == 2
    err = capsys.readouterr().err
    assert f"cannot write the run folder {tmp_path / 'run'}" in err and "Permission denied" in err


@pytest.mark.skipif(IS_ROOT, reason="root can write a read-only folder")
def test_read_only_parent_and_read_only_old_run(tmp_path, capsys, monkeypatch):
    _no_fitting(monkeypatch)
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert run_module.main([SMOKE, "--output", str(parent / "run")] + FAST) == 2
        assert "cannot write the run folder" in capsys.readouterr().err
    finally:
        parent.chmod(0o755)
    old = tmp_path / "old"
    (old / "plots").mkdir(parents=True)
    (old / "plots" / "a.png").write_text("x")
    (old / "plots").chmod(0o555)
    try:
        args = [SMOKE, "--output", str(old), "--overwrite"] + FAST
        assert run_module.main(args) == 2
        assert f"{old / 'plots'} is read-only" in capsys.readouterr().err
    finally:
        (old / "plots").chmod(0o755)


def test_old_run_that_cannot_be_removed_is_named(tmp_path, monkeypatch):
    target = tmp_path / "run"
    target.mkdir()
    (target / "metrics.json").write_text("{}")
    real_rmtree = results_io.shutil.rmtree

    def rmtree(path, *args, **kwargs):
        if ".old-" in str(path):
            return None  # as an undeletable read-only old run does
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(results_io.shutil, "rmtree", rmtree)
    with pytest.warns(results_io.LeftoverWarning, match=r"could not remove .*\.run\.old-"):
        with results_io.staging_folder(target, overwrite=True) as staging:
            (staging / "metrics.json").write_text('{"new": 1}')
    assert json.loads((target / "metrics.json").read_text()) == {"new": 1}


def test_leftovers_of_killed_runs_are_removed_by_the_next_run(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(dead.stdout)
    target = tmp_path / "run"
    stale = [tmp_path / f".run.partial-{pid}", tmp_path / f".run.old-{pid}"]
    other = tmp_path / f".other.partial-{pid}"  # another run's: not ours to delete
    alive = tmp_path / f".run.partial-{os.getppid()}"  # a live process's
    for folder in stale + [other, alive]:
        folder.mkdir()
        (folder / "metrics.json").write_text("{}")
    with results_io.staging_folder(target) as staging:
        (staging / "metrics.json").write_text("{}")
    assert not any(p.exists() for p in stale)
    assert other.exists() and alive.exists()


def test_sigterm_while_writing_leaves_no_staging_folder(tmp_path):
    """defect 12: SIGTERM during the write (here sent by the process to itself once the
    files are staged) ends the run through Python, so the staging folder is removed."""
    out = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from experiments import results_io, run
        real = results_io.write_run
        def write_run(folder, files):
            real(folder, files)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(60)
        results_io.write_run = write_run
        sys.exit(run.main([{SMOKE!r}, "--output", {str(out)!r}, "--quiet", "--no-plots",
                           "--set", "model_selection.n_components=null",
                           "--set", "em.max_iter=3"]))
        """
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())
