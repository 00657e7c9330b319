"""Reading and writing a run directory (results/<name>/).

Files of a run:

- ``config.yaml``: the resolved config (every default filled in).
- ``metrics.json``: the comparison table, machine readable, plus versions, JAX backend,
  dtype and seed.
- ``traces.csv``: one row per method and iteration: method, iteration, log_likelihood,
  bound, bound_name, elapsed_s (log-likelihood and bound in nats per sample), and the
  optional columns of ``TRACE_OPTIONAL_COLUMNS`` (empty where a method has none):
  ``target``, what the row's bound is below (EM: log p(X | theta_{t+1}) per sample, plus
  log p(theta_{t+1}) / N with a prior), and ``log_prior``, log p(theta_t) / N of the
  row's iterate (EM with a prior: log_likelihood + log_prior is its log posterior).
- ``params.npz``: the shared initial parameters (``init/...``) and each method's final
  parameters (``<method>/weights``, ``means``, ``prec_chol``, ``covariances``,
  ``labels_train``).
- ``data.npz``: the (preprocessed) training and held-out data, labels, true parameters.
- ``history.npz`` (with --animate): every EM iterate; ``posterior.npz``: posterior draws.
- ``posterior.nc`` (NUTS, SVI, when ArviZ is installed): each method's ArviZ
  ``InferenceData`` in the netCDF group named after it (`read_inference_data`).
- ``model_selection.csv`` (with a model_selection grid), ``uncertainty.csv`` (the BIC-best
  cell's responsibilities and 1 - max responsibility per point) and ``model_selection.npz``
  (its parameters, ``best_bic/...``).
- ``models/<method>.npz``: each method's fitted model in jaxgmm's saved-model format
  (`jaxgmm.saved`; read back with ``jaxgmm.load(run_folder, method)``), built by
  `saved_model`: spec, parameters, prior, the data's standardisation and provenance.
- figures: ``*.png`` (and ``em_animation.gif``).

Every file is written atomically: to a temporary file in the same folder, then
``os.replace``, so an interrupt never leaves a half-written file. A whole run is written
into a staging folder (``staging_folder``) that replaces the run folder only once every
file is in it (``write_run``), so an interrupted run leaves the previous results intact.
``check_writable`` refuses, before anything is fitted, a run folder that cannot be written
or (with overwrite) whose old results cannot be removed. Staging and old-results folders
(``.NAME.partial-PID``, ``.NAME.old-PID``) are removed on every exit Python sees (the
command line turns SIGTERM into one); those of a killed process are removed by the next
run into the same folder, or named in a `LeftoverWarning` when they cannot be.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

TRACE_COLUMNS = ("method", "iteration", "log_likelihood", "bound", "bound_name", "elapsed_s")
TRACE_OPTIONAL_COLUMNS = ("target", "log_prior")
MODEL_SELECTION_COLUMNS = (
    "covariance_type", "n_components", "n_parameters", "train_log_likelihood",
    "test_log_likelihood", "bic", "aic", "icl", "log_evidence_total", "log_evidence_stderr_total",
    "n_iter", "converged", "fit_s", "degenerate", "error",
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


def saved_model(result, spec, *, method, feature_names, standardize, provenance):
    """The saved model (`jaxgmm.saved.SavedModel`) of one method's `MethodResult`, or None
    when the method reports no parameters.

    EM and gradient give a `jaxgmm.GaussianMixture` at their ML / MAP estimate, SVI and
    NUTS one at their posterior summary (``extra["params_summary"]``: a guide median, a
    posterior mean), VB a `jaxgmm.BayesianGaussianMixture` (its ``fitted_state`` is the
    variational posterior).

    Args:
        result: the method's `experiments.methods.MethodResult`.
        spec: the `GMMSpec` it fitted (prior resolved).
        method: the method's name.
        feature_names: the names of the training data's columns.
        standardize: None, or (mean, scale) when the run standardised the data.
        provenance: the run's facts (config file and hashes, dataset, seed, ...); the
            method, its status and what its parameters are are added here.
    """
    import jaxgmm.saved  # lazy: reading a run folder needs no JAX

    if result.params is None:
        return None
    extra = result.extra or {}
    provenance = {
        **provenance,
        "method": method,
        "point_estimate": bool(result.point_estimate),
        "params_summary": extra.get("params_summary")
        or ("MAP" if spec.prior is not None else "maximum likelihood"),
        "status": result.status,
        "n_iter": int(result.n_iter),
    }
    return jaxgmm.saved.SavedModel.from_params(
        result.params,
        spec,
        posterior=result.fitted_state,
        update=extra.get("update", "exact"),
        feature_names=feature_names,
        standardize=standardize,
        fitted={"converged_": result.converged, "n_iter_": int(result.n_iter)},
        provenance=provenance,
    )


def write_model(path, saved, overwrite=False):
    """Write a `jaxgmm.saved.SavedModel` to ``path`` (an ``.npz`` file) atomically.

    Raises:
        FileExistsError: ``path`` exists and not ``overwrite``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        f.write(saved.to_bytes())
    return path


def write_inference_data(path, datasets):
    """Write ArviZ ``InferenceData`` objects, dict method -> idata, into one netCDF file
    (each under the group named after its method), atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        for i, (method, idata) in enumerate(datasets.items()):
            idata.to_netcdf(tmp, base_group=method, overwrite_existing=i == 0)
        umask = os.umask(0)  # mkstemp made it 0600; the usual 0666 minus the umask
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_inference_data(path, method):
    """One method's ArviZ ``InferenceData`` from a run folder's ``posterior.nc`` (``path``:
    the run folder or the file). Needs ArviZ (``pip install 'jaxgmm[arviz]'``)."""
    from jaxgmm.bayes.inference_data import import_arviz  # lazy: only this needs ArviZ

    path = Path(path)
    path = path / "posterior.nc" if path.is_dir() else path
    return import_arviz().InferenceData.from_netcdf(str(path), base_group=method)


def write_traces(path, traces):
    """traces: dict method -> dict with iteration, log_likelihood, bound, elapsed_s arrays
    and bound_name, and optionally arrays named in ``TRACE_OPTIONAL_COLUMNS``."""
    optional = [c for c in TRACE_OPTIONAL_COLUMNS if any(c in t for t in traces.values())]
    with atomic_open(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(TRACE_COLUMNS + tuple(optional))
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
                    + ["" if c not in trace else repr(float(trace[c][i])) for c in optional]
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
            for key in TRACE_OPTIONAL_COLUMNS:
                if row.get(key):
                    t.setdefault(key, []).append(float(row[key]))
    for t in traces.values():
        for key in ("iteration", "log_likelihood", "bound", "elapsed_s"):
            t[key] = np.asarray(t[key])
        for key in TRACE_OPTIONAL_COLUMNS:
            if key in t:
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
            "rows" (model-selection rows, written with `MODEL_SELECTION_COLUMNS`),
            "models" (a folder, e.g. ``models``, of {method: `jaxgmm.saved.SavedModel`},
            each written as ``<method>.npz``) and
            "netcdf" (dict method -> ArviZ InferenceData, see `write_inference_data`); written
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
        elif kind == "models":
            for method, saved in payload.items():
                write_model(path / f"{method}.npz", saved)
        elif kind == "netcdf":
            write_inference_data(path, payload)
        else:  # pragma: no cover - programming error
            raise ValueError(kind)


def is_nonempty_dir(path):
    """Whether ``path`` is a folder holding anything (a run folder not to overwrite)."""
    path = Path(path)
    return path.is_dir() and any(path.iterdir())


class RunFolderExists(Exception):
    """The run folder holds results and overwriting was not asked for."""


class RunFolderUnwritable(OSError):
    """The run folder cannot be written (or its old results cannot be replaced)."""


class LeftoverWarning(UserWarning):
    """A staging or old-results folder could not be removed; the message names it."""


def _blocking_ancestor(path):
    """The nearest existing ancestor of ``path`` (``path`` itself if it exists)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _unremovable(folder):
    """The first folder inside ``folder`` (itself included) whose entries cannot be
    deleted, or None."""
    for root, _, _ in os.walk(folder):
        if not os.access(root, os.W_OK | os.X_OK):
            return Path(root)
    return None


def check_writable(target, overwrite=False):
    """Refuse, before any fitting, a run folder that could not be written at the end.

    The run is staged in a sibling folder of ``target`` that then replaces it, so the
    parent must let a folder be created and renamed, and with ``overwrite`` every folder
    of the old run must let its entries be deleted. Missing parent folders are created
    (as writing would). Nothing else is left behind.

    Raises:
        RunFolderUnwritable whose message names the folder and the reason.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise RunFolderUnwritable(f"{target} exists and is not a folder")
    ancestor = _blocking_ancestor(target.parent)
    if not ancestor.is_dir():
        raise RunFolderUnwritable(f"cannot create {target}: {ancestor} is a file, not a folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=f".{target.name}.probe-", dir=target.parent)
        os.rmdir(probe)
    except OSError as error:
        reason = error.strerror or str(error)
        raise RunFolderUnwritable(
            f"cannot write the run folder {target}: {target.parent}: {reason}"
        ) from None
    if overwrite and target.is_dir():
        blocked = _unremovable(target)
        if blocked is not None:
            raise RunFolderUnwritable(
                f"cannot replace the old results in {target}: {blocked} is read-only "
                "(make it writable, or write elsewhere with --output)"
            )


_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:partial|old)-(?P<pid>\d+)$")


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove(folder):
    """Delete a staging or old-results folder; a `LeftoverWarning` names it if it stays."""
    errors = []
    shutil.rmtree(folder, onerror=lambda func, path, info: errors.append(info[1]))
    if Path(folder).exists():
        reason = errors[0].strerror if errors and errors[0].strerror else "not removable"
        warnings.warn(
            f"could not remove {folder} ({reason}); delete it by hand",
            LeftoverWarning,
            stacklevel=3,
        )


def remove_stale_leftovers(target):
    """Remove the ``.NAME.partial-PID`` / ``.NAME.old-PID`` siblings of ``target`` left by
    runs whose process no longer exists (killed before they could clean up).

    Returns:
        The list of folders removed.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    removed = []
    for path in target.parent.iterdir():
        match = _LEFTOVER.match(path.name)
        if not match or match["name"] != target.name or not path.is_dir():
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _process_alive(pid):
            continue
        _remove(path)
        if not path.exists():
            removed.append(path)
    return removed


@contextlib.contextmanager
def staging_folder(target, overwrite=False):
    """A fresh sibling folder; on success it replaces ``target`` (old contents removed).

    Stale staging folders of killed runs into ``target`` are removed first. Raises
    RunFolderExists at the end, keeping ``target``, if ``target`` is a non-empty folder
    and ``overwrite`` is false (checked again in case another run wrote it). An old run
    that cannot be deleted once replaced is named in a `LeftoverWarning`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_leftovers(target)
    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    old = None
    try:
        yield staging
        if is_nonempty_dir(target) and not overwrite:
            raise RunFolderExists(str(target))
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and old.exists() and not target.exists():
            os.replace(old, target)  # interrupted between the two renames: put it back
        raise
    if old is not None:
        _remove(old)
