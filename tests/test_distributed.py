"""Data-parallel fits over two real processes (`jax.distributed`, CPU collectives over
gloo, coordinator on 127.0.0.1): each process holds only its own half of the samples,
and EM, the gradient fitter (full batch) and VB equal the same fits made by one process
on all the samples: same iteration count and status, parameters and traces within 1e-10.

The processes are tests/_distributed_worker.py, started here with a free port and a
timeout (a hang fails the test and kills every process). ``python
tests/test_distributed.py`` prints the largest differences of every configuration."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "_distributed_worker.py")
N_PROCESSES = 2
TIMEOUT_S = 300  # ~30 s on an idle 2-core machine; a hang must fail, not stall CI

# (covariance type, fits): the default run keeps to fits that compile quickly; L-BFGS
# and full covariances (heavier to compile) run with -m slow. Tied runs EM and VB, whose
# scatter comes from each process's own part of the samples' scatter (`DataScatter`).
CONFIGS = {
    "diag": ("diag", "em,adam,vb"),
    "tied": ("tied", "em,vb"),
    "full": ("full", "em,lbfgs,adam,vb"),
}


def _cpu_collectives_missing():
    """Why this jaxlib cannot run cross-process collectives on CPU, or None."""
    import jax

    if "jax_cpu_collectives_implementation" not in jax.config.values:
        return f"jax {jax.__version__} has no jax_cpu_collectives_implementation option"
    try:
        from jax._src.lib import _jax
    except ImportError:
        return f"jaxlib of jax {jax.__version__} has no _jax extension to check for gloo"
    if not hasattr(_jax, "make_gloo_tcp_collectives"):
        return f"jaxlib of jax {jax.__version__} is built without gloo CPU collectives"
    return None


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(covariance, fits, folder, timeout=TIMEOUT_S):
    """The reference and the N_PROCESSES processes of one distributed run, together;
    returns (reference, [process 0, process 1, ...]) as parsed JSON."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    port = _free_port()
    common = ["--processes", str(N_PROCESSES), "--covariance", covariance, "--fits", fits]
    runs = {"reference": []}
    runs.update({f"process{i}": ["--process-id", str(i), "--port", str(port)] for i in range(N_PROCESSES)})
    procs, logs = {}, {}
    try:
        for name, extra in runs.items():
            logs[name] = open(os.path.join(folder, f"{name}.log"), "w+")
            procs[name] = subprocess.Popen(
                [sys.executable, WORKER, "--out", os.path.join(folder, f"{name}.json"),
                 *common, *extra],
                env=env, stdout=logs[name], stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs.values()):
            failed = [n for n, p in procs.items() if p.returncode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        failed = {n: p.returncode for n, p in procs.items() if p.returncode != 0}
        if failed:
            hung = any(code is None for code in failed.values())
            why = f"still running after {timeout} s" if hung else "exited with an error"
            details = []
            for n in failed:
                logs[n].seek(0)
                details.append(f"--- {n} (exit {failed[n]}) ---\n{logs[n].read()[-3000:]}")
            pytest.fail(f"distributed run {why}: {failed}\n" + "\n".join(details))
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()
        for f in logs.values():
            f.close()
    results = {}
    for name in runs:
        with open(os.path.join(folder, f"{name}.json")) as f:
            results[name] = json.load(f)
    return results["reference"], [results[f"process{i}"] for i in range(N_PROCESSES)]


def _max_diff(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _differences(reference, process):
    """Per fit: largest |difference| of the parameters, the traces and the final
    log-likelihood from the reference's."""
    out = {}
    for name, fit in process["fits"].items():
        ref = reference["fits"][name]
        out[name] = {
            "params": max(_max_diff(fit["params"][k], ref["params"][k]) for k in ref["params"]),
            "trace_log_likelihood": _max_diff(
                fit["trace_log_likelihood"], ref["trace_log_likelihood"]
            ),
            "trace_bound": _max_diff(fit["trace_bound"], ref["trace_bound"]),
            "log_likelihood": abs(fit["log_likelihood"] - ref["log_likelihood"]),
        }
    return out


def test_process_local_data_on_one_process():
    import jax
    import jax.numpy as jnp

    import jaxgmm

    mesh = jaxgmm.em.data_mesh(jax.devices()[:1])
    rows = np.arange(12.0).reshape(6, 2)
    x = jaxgmm.em.process_local_data(rows, mesh)
    assert x.shape == rows.shape and x.sharding.mesh == mesh
    np.testing.assert_array_equal(np.asarray(x), rows)
    np.testing.assert_array_equal(np.asarray(jaxgmm.em.shard_data(jnp.asarray(rows), mesh)), rows)
    with pytest.raises(ValueError, match="n_local_samples, n_features"):
        jaxgmm.em.process_local_data(rows[:, 0], mesh)


@pytest.mark.parametrize(
    "config", ["diag", "tied", pytest.param("full", marks=pytest.mark.slow)]
)
def test_two_processes_equal_one(config, tmp_path):
    missing = _cpu_collectives_missing()
    if missing:
        pytest.skip(missing)
    covariance, fits = CONFIGS[config]
    reference, processes = _run_workers(covariance, fits, str(tmp_path))
    assert (reference["process_count"], reference["n_devices"]) == (1, 1)
    n_samples = reference["global_shape"][0]
    assert reference["local_rows"] == n_samples
    for process in processes:
        # A real distributed run: every process sees both devices and the whole array
        # but holds its own rows only.
        assert (process["process_count"], process["n_devices"]) == (N_PROCESSES, N_PROCESSES)
        assert process["global_shape"] == reference["global_shape"]
        assert process["local_rows"] == n_samples // N_PROCESSES
        assert list(process["fits"]) == fits.split(",")
        assert "same shape" in (process["mismatch_error"] or ""), process["mismatch_error"]
        assert "spans several processes" in (process["fit_helper_error"] or "")
        for name, fit in process["fits"].items():
            ref = reference["fits"][name]
            assert fit["n_iter"] == ref["n_iter"], name
            assert fit["status"] == ref["status"], name
            # Run to convergence on tol (Adam: a fixed number of steps), so that the
            # iteration counts compared mean something.
            assert fit["status"] == ("max_iter" if name == "adam" else "converged"), name
        for name, diffs in _differences(reference, process).items():
            for what, diff in diffs.items():
                assert diff < 1e-10, (name, what, diff)
    # The parameters are replicated: every process returns the same values.
    for process in processes[1:]:
        for name, fit in process["fits"].items():
            assert fit["params"] == processes[0]["fits"][name]["params"], name
            assert fit["n_iter"] == processes[0]["fits"][name]["n_iter"], name


if __name__ == "__main__":
    import tempfile

    for config, (covariance, fits) in CONFIGS.items():
        with tempfile.TemporaryDirectory() as folder:
            begin = time.perf_counter()
            reference, processes = _run_workers(covariance, fits, folder)
            report = {
                "config": config,
                "wall_s": round(time.perf_counter() - begin, 1),
                "n_iter": {n: f["n_iter"] for n, f in reference["fits"].items()},
                "max_diff_over_processes": {
                    name: {
                        what: max(_differences(reference, p)[name][what] for p in processes)
                        for what in ("params", "trace_log_likelihood", "trace_bound", "log_likelihood")
                    }
                    for name in reference["fits"]
                },
            }
            print(json.dumps(report))
