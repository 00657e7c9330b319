"""`python -m experiments.compare`: one table and one figure across run folders, the
numbers read back from each folder's metrics.json, nothing written inside a run folder,
no figure overwritten without --overwrite, and a folder that is not a run's named."""

import shutil
from pathlib import Path

import pytest

from experiments import compare, run_experiment

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml")
FAST = ["model_selection.n_components=null", "em.max_iter=20"]


def _snapshot(folder):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).rglob("*")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    full = root / "full"
    diag = root / "diag"
    run_experiment(SMOKE, overrides=FAST, output=full, plots=False)
    run_experiment(SMOKE, overrides=FAST + ["model.covariance_type=diag"], output=diag, plots=False)
    return full, diag


def test_table_and_figure_from_the_run_folders(runs, tmp_path, capsys):
    before = {folder: _snapshot(folder) for folder in runs}
    out = tmp_path / "cmp.png"
    assert compare.main([str(f) for f in runs] + ["--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Nothing inside the run folders changed.
    assert {folder: _snapshot(folder) for folder in runs} == before

    rows = compare.compare_runs(runs)
    assert [(r.run, r.method) for r in rows] == [("full", "em"), ("diag", "em")]
    assert [r.spec for r in rows] == ["K=2 full", "K=2 diag"]
    lines = text.splitlines()
    for folder, row in zip(runs, rows):
        metrics = compare.read_run(folder)["methods"]["em"]
        assert row.train_log_likelihood == metrics["train_log_likelihood"]
        assert row.test_log_likelihood == metrics["test_log_likelihood"]
        assert row.bound == metrics["bound_final"] and row.bic == metrics["bic"]
        assert row.converged == metrics["converged"]
        (line,) = [ln for ln in lines if ln.startswith(row.run + " ")]
        for value in (
            format(metrics["train_log_likelihood"], ".5f"),
            format(metrics["test_log_likelihood"], ".5f"),
            format(metrics["bound_final"], ".5f"),
            format(metrics["bic"], ".2f"),
            "em_bound",
        ):
            assert value in line, (value, line)
    assert "nats per sample" in text and "lower is better" in text


def test_default_figure_is_new_and_never_overwritten(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folders = [str(f) for f in runs]
    assert compare.main(folders) == 0
    figure = tmp_path / compare.DEFAULT_OUT
    stamp = figure.stat().st_mtime_ns, figure.read_bytes()
    capsys.readouterr()
    assert compare.main(folders) == 3
    err = capsys.readouterr().err
    assert f"{compare.DEFAULT_OUT} already exists" in err and "--overwrite" in err
    assert (figure.stat().st_mtime_ns, figure.read_bytes()) == stamp
    assert compare.main(folders + ["--overwrite"]) == 0


def test_refuses_what_is_not_a_run_folder(runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json")
    good = str(runs[0])
    for bad, fragment in (
        (empty, "not a run folder (no metrics.json"),
        (tmp_path / "missing", "no such folder"),
        (a_file, "not a folder"),
        (broken, "cannot be read as a run's metrics"),
    ):
        out = tmp_path / "x.png"
        assert compare.main([good, str(bad), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert str(bad) in err and fragment in err, err
        assert not out.exists()
    assert compare.main([good, good, "--out", str(tmp_path / "x.png")]) == 2
    assert "given twice" in capsys.readouterr().err


def test_never_writes_into_a_run_folder(runs, tmp_path, capsys):
    before = _snapshot(runs[0])
    inside = runs[0] / "compare.png"
    assert compare.main([str(f) for f in runs] + ["--out", str(inside)]) == 2
    assert "inside the run folder" in capsys.readouterr().err
    assert not inside.exists() and _snapshot(runs[0]) == before
    assert compare.main([str(runs[0]), "--out", str(tmp_path / "f.pdf")]) == 2
    assert "expected a .png" in capsys.readouterr().err


def test_same_folder_names_are_told_apart(runs, tmp_path):
    twin = tmp_path / "other" / "full"
    shutil.copytree(runs[0], twin)
    rows = compare.compare_runs([runs[0], twin])
    assert [r.run for r in rows] == [str(runs[0]), str(twin)]
