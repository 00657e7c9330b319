"""The benchmark's workers: every (size, dtype, tool) job runs in its own subprocess
(``spawn``: ``python -m experiments.bench --worker JSON``) so that its peak resident
memory is its own, with `COMPILE_FLAGS` added to ``XLA_FLAGS``; ``worker`` and
``scaling_worker`` are what that subprocess runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from experiments.bench.peers import TOOLS, run_jaxgmm
from experiments.bench.protocol import initial_parameters, make_data, rss_mb, score_float64


def worker(job):
    """Run one (size, dtype, tool) and return its row (runs in a subprocess)."""
    n, d, k, cov_type = job["n"], job["d"], job["k"], job["cov"]
    x = make_data(n, d, k)
    init = initial_parameters(x, k, cov_type)
    base = rss_mb()
    run = TOOLS[job["tool"]]
    extra = {}
    if job["tool"].startswith("jaxgmm"):
        extra = {"accuracy_iters": job.get("accuracy_iters", 0), "devices": job.get("devices", 1)}
    out = run(x, init, cov_type, np.dtype(job["dtype"]), job["iters"], **extra)
    peak = rss_mb() - base
    ll = score_float64(x, *out.pop("params"), cov_type)
    if "accuracy_params" in out:
        out["accuracy_iters"] = job["accuracy_iters"]
        out["accuracy_log_likelihood_f64"] = score_float64(x, *out.pop("accuracy_params"), cov_type)
    return dict(
        n_samples=n,
        n_features=d,
        n_components=k,
        covariance_type=cov_type,
        dtype=job["dtype"],
        tool=job["tool"],
        peak_mem_mb=round(peak, 1),
        final_log_likelihood_f64=ll,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        **out,
    )


def scaling_worker(job):
    """jaxgmm float32 full-covariance seconds per iteration over the N, K, D sweeps."""
    rows = []
    sweeps = job["sweeps"]
    base_n, base_k, base_d = sweeps["base"]
    for axis in ("n", "k", "d"):
        for value in sweeps[axis]:
            n, k, d = base_n, base_k, base_d
            n, k, d = (
                (value if axis == "n" else n),
                (value if axis == "k" else k),
                (value if axis == "d" else d),
            )
            x = make_data(n, d, k)
            init = initial_parameters(x, k, "full")
            out = run_jaxgmm(x, init, "full", np.dtype("float32"), job["iters"])
            rows.append(
                dict(
                    axis=axis,
                    n_samples=n,
                    n_components=k,
                    n_features=d,
                    s_per_iter=out["s_per_iter"],
                    compile_s=out["compile_s"],
                )
            )
    return rows


# Every worker compiles with LLVM's loop unrolling off: XLA:CPU's kernels over small
# (K, D) arrays (the M-step, the bound) were fully unrolled, 3x the machine code; off,
# compile time fell 12-25% (0.22 s for diag at (1e6, 16, 16) on 2 devices) with the same
# time per iteration. An XLA_FLAGS that already sets backend options is left as it is.
COMPILE_FLAGS = "--xla_backend_extra_options=xla_cpu_disable_loop_unrolling"


def worker_xla_flags(inherited, devices=1):
    """The XLA_FLAGS a worker runs with: ``inherited`` plus `COMPILE_FLAGS` (unless it
    sets backend options itself) and, for several devices, the forced device count."""
    flags = inherited.split()
    if not any(f.startswith("--xla_backend_extra_options") for f in flags):
        flags.append(COMPILE_FLAGS)
    if devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    return " ".join(flags)


def spawn(payload):
    env = dict(os.environ, JAX_ENABLE_X64="1")
    env["XLA_FLAGS"] = worker_xla_flags(env.get("XLA_FLAGS", ""), payload.get("devices", 1))
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.bench", "--worker", json.dumps(payload)],
        env=env,
        capture_output=True,
        text=True,
        cwd=root,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {payload} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
