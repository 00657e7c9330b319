"""Reading and writing a run directory (results/<name>/).

Files of a run:

- ``config.yaml``: the resolved config (every default filled in).
- ``metrics.json``: the comparison table, machine readable, plus versions, JAX backend,
  dtype and seed.
- ``traces.csv``: one row per method and iteration: method, iteration, log_likelihood,
  bound, bound_name, elapsed_s (log-likelihood and bound in nats per sample).
- ``params.npz``: the shared initial parameters (``init/...``) and each method's final
  parameters (``<method>/weights``, ``means``, ``prec_chol``, ``covariances``,
  ``labels_train``).
- ``data.npz``: the (preprocessed) training and held-out data, labels, true parameters.
- ``history.npz`` (with --animate): every EM iterate; ``posterior.npz``: posterior draws.
- ``model_selection.csv`` (with a model_selection grid).
- figures: ``*.png`` (and ``em_animation.gif``).

Every file is written atomically: to a temporary file in the same folder, then
``os.replace``, so an interrupt never leaves a half-written file. A whole run is written
into a staging folder (``staging_folder``) that replaces the run folder only once every
file is in it (``write_run``), so an interrupted run leaves the previous results intact.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

TRACE_COLUMNS = ("method", "iteration", "log_likelihood", "bound", "bound_name", "elapsed_s")
MODEL_SELECTION_COLUMNS = (
    "covariance_type", "n_components", "n_parameters", "train_log_likelihood",
    "test_log_likelihood", "bic", "aic", "n_iter", "converged", "fit_s", "degenerate", "error",
)  # fmt: skip


@contextlib.contextmanager
def atomic_open(path, mode="w"):
    """Open a temporary file next to ``path``; on success it replaces ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates 0600; give the file the usual permissions (0666 minus the umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path, text):
    with atomic_open(path, "w") as f:
        f.write(text)


def _jsonable(value):
    """Plain JSON values: numpy scalars to Python, non-finite floats to null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def write_json(path, data):
    write_text(path, json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n")


def read_json(path):
    return json.loads(Path(path).read_text())


def write_npz(path, arrays):
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    with atomic_open(path, "wb") as f:
        f.write(buffer.getvalue())


def read_npz(path):
    """Dict of arrays, or {} if the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def write_traces(path, traces):
    """traces: dict method -> dict with iteration, log_likelihood, bound, elapsed_s arrays
    and bound_name."""
    with atomic_open(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(TRACE_COLUMNS)
        for method, trace in traces.items():
            for i in range(len(trace["iteration"])):
                writer.writerow(
                    [
                        method,
                        int(trace["iteration"][i]),
                        repr(float(trace["log_likelihood"][i])),
                        repr(float(trace["bound"][i])),
                        trace["bound_name"],
                        repr(float(trace["elapsed_s"][i])),
                    ]
                )


def read_traces(path):
    """dict method -> dict of numpy arrays (and bound_name), in file order."""
    traces = {}
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            t = traces.setdefault(
                row["method"],
                {"iteration": [], "log_likelihood": [], "bound": [], "elapsed_s": []},
            )
            t["bound_name"] = row["bound_name"]
            t["iteration"].append(int(row["iteration"]))
            for key in ("log_likelihood", "bound", "elapsed_s"):
                t[key].append(float(row[key]))
    for t in traces.values():
        for key in ("iteration", "log_likelihood", "bound", "elapsed_s"):
            t[key] = np.asarray(t[key])
    return traces


def write_rows_csv(path, rows, columns):
    with atomic_open(path, "w") as f:
        writer = csv.DictWriter(f, columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


def group(arrays, prefix):
    """The entries ``prefix/<name>`` of an npz dict, as {name: array}."""
    start = prefix + "/"
    return {k[len(start) :]: v for k, v in arrays.items() if k.startswith(start)}


# ------------------------------------------------------------------ run folders


def write_run(folder, files):
    """Write a run's files into ``folder``.

    Args:
        folder: an existing folder (e.g. the one `staging_folder` yields).
        files: dict file name -> (kind, payload), kind one of "text" (str), "json"
            (JSON-able dict), "npz" (dict of arrays), "traces" (see `write_traces`) and
            "rows" (model-selection rows, written with `MODEL_SELECTION_COLUMNS`); written
            in order, so ``metrics.json`` goes last and its presence marks a complete run.
    """
    folder = Path(folder)
    for name, (kind, payload) in files.items():
        path = folder / name
        if kind == "text":
            write_text(path, payload)
        elif kind == "json":
            write_json(path, payload)
        elif kind == "npz":
            write_npz(path, payload)
        elif kind == "traces":
            write_traces(path, payload)
        elif kind == "rows":
            write_rows_csv(path, payload, MODEL_SELECTION_COLUMNS)
        else:  # pragma: no cover - programming error
            raise ValueError(kind)


def is_nonempty_dir(path):
    """Whether ``path`` is a folder holding anything (a run folder not to overwrite)."""
    path = Path(path)
    return path.is_dir() and any(path.iterdir())


class RunFolderExists(Exception):
    """The run folder holds results and overwriting was not asked for."""


@contextlib.contextmanager
def staging_folder(target, overwrite=False):
    """A fresh sibling folder; on success it replaces ``target`` (old contents removed).

    Raises RunFolderExists at the end, keeping ``target``, if ``target`` is a non-empty
    folder and ``overwrite`` is false (checked again in case another run wrote it)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if is_nonempty_dir(target) and not overwrite:
        shutil.rmtree(staging, ignore_errors=True)
        raise RunFolderExists(str(target))
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
