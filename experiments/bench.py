"""EM speed benchmark: jaxgmm against scikit-learn (and gmmx / pomegranate when they
are importable) on the same data and the same initial parameters, in one run.

    python -m experiments.bench [--sizes small|all] [--dtypes float32,float64]
                                [--out results/bench] [--iters N] [--accuracy-iters M]
                                [--no-scaling] [--overwrite]

jaxgmm runs twice: "jaxgmm" on one XLA device, and "jaxgmm-cores" with the samples split
over one XLA CPU device per core (``--xla_force_host_platform_device_count``, a data mesh
and `jaxgmm.em.shard_data`; skipped on one core). Every peer's ratio is reported against both.
Each (size, dtype, tool) runs in its own subprocess so that its peak resident memory
(``ru_maxrss`` minus the resident size after the data are built) is its own. Reported per
row: seconds per EM iteration (compile excluded), the ratio peer / jaxgmm, compile time,
time to first result (a cold call: compile plus the first jitted chunk), peak memory
beyond the data, and the final log-likelihood per sample of every tool's parameters
scored by one float64 NumPy function (``score_float64``), so a fast wrong answer shows.
Timings use a few iterations; float32 accuracy is checked separately: jaxgmm runs
``--accuracy-iters`` iterations in each dtype from the same start, and the float32 minus
float64 log-likelihood (both scored in float64) is reported per size. Every worker runs
with `COMPILE_FLAGS` added to ``XLA_FLAGS`` (LLVM loop unrolling off: shorter compiles,
same run time; recorded per row as ``xla_flags``). Writes
``bench.csv``, ``scaling.csv``, ``bench.png`` and ``scaling.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# (n_samples, n_features, n_components, covariance_type)
GRIDS = {
    "small": [(20_000, 8, 8, "full"), (20_000, 8, 8, "diag")],
    "all": [
        (100_000, 8, 8, "full"),
        (1_000_000, 16, 16, "full"),
        (1_000_000, 16, 16, "diag"),
    ],
}
# Scaling sweeps for jaxgmm (float32, full): vary one of N, K, D about a base point.
SCALING = {
    "small": {"base": (20_000, 8, 8), "n": [5_000, 20_000, 50_000], "k": [2, 8, 16], "d": [2, 8, 16]},
    "all": {
        "base": (200_000, 16, 16),
        "n": [10_000, 100_000, 1_000_000],
        "k": [4, 8, 16, 32],
        "d": [4, 8, 16, 32],
    },
}
OUTPUT_FILES = ("bench.csv", "scaling.csv", "bench.png", "scaling.png")
FIELDS = [
    "n_samples", "n_features", "n_components", "covariance_type", "dtype", "tool",
    "devices", "s_per_iter", "ratio_peer_over_jaxgmm", "ratio_peer_over_jaxgmm_cores", "compile_s", "time_to_first_result_s",
    "peak_mem_mb", "final_log_likelihood_f64", "n_iter",
    "accuracy_iters", "accuracy_log_likelihood_f64", "float32_minus_float64", "xla_flags",
]


def make_data(n_samples, n_features, n_components, seed=0):
    """A seeded mixture with random means and random full covariances (float64)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_components, n_features)) * 3.0
    factors = rng.normal(size=(n_components, n_features, n_features)) / np.sqrt(n_features)
    labels = rng.integers(0, n_components, n_samples)
    x = np.empty((n_samples, n_features))
    for k in range(n_components):
        rows = labels == k
        x[rows] = means[k] + rng.normal(size=(rows.sum(), n_features)) @ (factors[k] + 0.3 * np.eye(n_features))
    return x


def initial_parameters(x, n_components, covariance_type, seed=1):
    """The same start for every tool: random data points as means, the data's
    covariance (or variances) for every component, equal weights."""
    rng = np.random.default_rng(seed)
    means = x[rng.choice(x.shape[0], n_components, replace=False)]
    cov = np.cov(x[: min(x.shape[0], 100_000)].T)
    weights = np.full(n_components, 1.0 / n_components)
    if covariance_type == "full":
        covs = np.broadcast_to(cov, (n_components,) + cov.shape).copy()
    elif covariance_type == "diag":
        covs = np.broadcast_to(np.diag(cov), (n_components, x.shape[1])).copy()
    else:
        raise ValueError(f"covariance_type must be 'full' or 'diag' here, got {covariance_type!r}")
    return weights, means, covs


def score_float64(x, weights, means, covs, covariance_type, block=65536):
    """Log-likelihood per sample in float64 NumPy (independent of every tool)."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    k = len(weights)
    covs = np.asarray(covs, np.float64)
    if covariance_type == "diag":
        covs = np.stack([np.diag(c) for c in covs])
    chols = np.linalg.cholesky(covs)
    log_det = 2 * np.sum(np.log(np.diagonal(chols, axis1=1, axis2=2)), axis=1)
    total = 0.0
    for start in range(0, n, block):
        xb = x[start : start + block]
        wlp = np.empty((xb.shape[0], k))
        for j in range(k):
            z = np.linalg.solve(chols[j], (xb - means[j]).T)
            wlp[:, j] = np.log(weights[j]) - 0.5 * (d * np.log(2 * np.pi) + log_det[j] + np.sum(z * z, 0))
        top = wlp.max(1, keepdims=True)
        total += np.sum(top[:, 0] + np.log(np.exp(wlp - top).sum(1)))
    return total / n


def _rss_mb():
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_cores():
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def devices_for(n_samples, cores):
    """XLA CPU devices for the ``jaxgmm-cores`` row: one per core, as many as divide
    n_samples (`jaxgmm.em.shard_data` splits the samples evenly)."""
    return max(d for d in range(1, cores + 1) if n_samples % d == 0)


def _run_jaxgmm(x, init, cov_type, dtype, n_iter, accuracy_iters=0, devices=1):
    import jax
    import jax.numpy as jnp

    import jaxgmm

    k = init[1].shape[0]
    spec = jaxgmm.GMMSpec(k, cov_type)
    xj = jnp.asarray(x, dtype)
    params = jaxgmm.params_from_covariances(*[jnp.asarray(a, dtype) for a in init], cov_type)
    mesh = None
    if devices > 1:
        # Data-parallel EM over one XLA CPU device per core (the subprocess was started
        # with --xla_force_host_platform_device_count): the documented multi-device path.
        if jax.default_backend() != "cpu" or len(jax.devices()) < devices:
            raise RuntimeError(f"jaxgmm-cores needs {devices} CPU devices, JAX has {jax.devices()}")
        mesh = jaxgmm.em.data_mesh(jax.devices()[:devices])
        xj = jaxgmm.em.shard_data(xj, mesh)
    fitter = jaxgmm.em.em_fitter(spec, 0.0, mesh=mesh)

    def fit(iters):
        # One iteration per dispatched chunk, so a 1-iteration fit does one iteration's
        # work; the per-fit data layout and final scoring cancel in the difference.
        begin = time.perf_counter()
        res = jaxgmm.run_fitter(fitter, jax.random.key(0), xj, params, spec, max_iter=iters, chunk_size=1)
        return res, time.perf_counter() - begin

    start = time.perf_counter()
    cold, _ = fit(1)
    first = time.perf_counter() - start
    res, per_iter, _ = _best_difference(fit, n_iter)

    def as_float64(params):
        return (np.asarray(params.weights, np.float64), np.asarray(params.means, np.float64),
                _covariances_float64(params.prec_chol, cov_type))

    out = {
        "devices": devices,
        "s_per_iter": per_iter,
        "compile_s": cold.compile_s,
        "time_to_first_result_s": first,
        "n_iter": res.n_iter,
        "params": as_float64(res.params),
    }
    if accuracy_iters:
        # Past the first few iterations (where a collapsing component makes the value
        # first-order sensitive to rounding in every tool): the dtypes' answers compared.
        long = jaxgmm.run_fitter(fitter, jax.random.key(0), xj, params, spec, max_iter=accuracy_iters)
        out["accuracy_params"] = as_float64(long.params)
    return out


def _covariances_float64(prec_chol, cov_type):
    """Covariances from jaxgmm's precision Cholesky factors, in float64 NumPy. Formed in
    float32 instead, a covariance with condition number 1e6 loses its narrow directions
    and the float64 score of a float32 fit drops by ~1e-4 nats/sample."""
    p = np.asarray(prec_chol, np.float64)
    if cov_type == "full":
        inverse = np.linalg.inv(p)  # precision = P P^T, so Sigma = P^{-T} P^{-1}
        return np.swapaxes(inverse, -1, -2) @ inverse
    if cov_type == "diag":
        return 1.0 / np.square(p)
    raise ValueError(f"covariance_type must be 'full' or 'diag' here, got {cov_type!r}")


def _best_difference(fit, n_iter):
    """Seconds per iteration as (t(n iters) - t(1 iter)) / (n - 1), each the best of a few
    repeats (the same rule for every tool), so per-fit set-up and dispatch cancel.
    ``fit(iters)`` returns (result, seconds). Returns (result of the n-iteration fit,
    s/iter, t(1)). Fits under 2 s are repeated for about 2 s (3 to 10 times): a
    difference of a few milliseconds is otherwise at the mercy of thread wake-ups."""
    res, t_all = fit(n_iter)
    repeats = 1 if t_all >= 2.0 else max(3, min(10, int(2.0 / max(t_all, 1e-9))))
    t_one = min(fit(1)[1] for _ in range(repeats))
    t_all = min([t_all] + [fit(n_iter)[1] for _ in range(repeats - 1)])
    per_iter = (t_all - t_one) / (n_iter - 1) if n_iter > 1 else t_all
    if per_iter <= 0:  # still swamped by noise: fall back to the plain average
        per_iter = t_all / n_iter
    return res, per_iter, t_one


def _run_sklearn(x, init, cov_type, dtype, n_iter):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    weights, means, covs = init
    if cov_type == "full":
        precisions = np.linalg.inv(covs)
    else:
        precisions = 1.0 / covs
    xs = np.asarray(x, dtype)

    def fit(iters):
        gm = GaussianMixture(
            len(weights), covariance_type=cov_type, max_iter=iters, tol=0.0,
            weights_init=weights, means_init=means, precisions_init=precisions,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            start = time.perf_counter()
            gm.fit(xs)
        return gm, time.perf_counter() - start

    # Differences cancel sklearn's per-fit set-up and final E-step.
    gm, per_iter, t_one = _best_difference(fit, n_iter)
    return {
        "s_per_iter": per_iter,
        "compile_s": 0.0,
        "time_to_first_result_s": t_one,
        "n_iter": int(gm.n_iter_),
        "params": (gm.weights_, gm.means_, gm.covariances_),
    }


def _run_gmmx(x, init, cov_type, dtype, n_iter):
    """gmmx (``EMFitter`` on a ``GaussianMixtureModelJax``), started from ``init``.

    Semantics, read from gmmx 0.7's source (gmmx/fit.py, gmmx/gmm.py):
    - float32 only: ``gmmx.gmm.check_shape`` raises for any other dtype, and with JAX's x64
      mode on, the full-covariance path promotes to float64 internally (``jnp.eye``) and
      then fails that check; so the fit runs under ``jax.enable_x64(False)`` and float64 is
      reported as unsupported (``UNSUPPORTED``), not silently run in float32.
    - ``EMFitter.fit`` is a ``lax.while_loop`` of (E-step, M-step) while
      ``n_iter < max_iter and |delta log-likelihood| >= tol``; with ``tol=-inf`` it does
      exactly ``max_iter`` E+M steps, as scikit-learn with ``tol=0`` does (sklearn's final
      extra E-step only sets labels, not parameters).
    - ``reg_covar`` (default 1e-6, passed explicitly) is added to the covariance diagonal as
      in scikit-learn and jaxgmm, and counts get the same ``10 * eps`` as scikit-learn.
    - The initial parameters are taken exactly (``from_squeezed``: weights, means,
      covariances), cast to float32.
    ``max_iter`` is a static field of ``EMFitter``, so each iteration count compiles once;
    both are compiled ahead (``lower().compile()``) and timed warm, so s_per_iter excludes
    compilation; compile_s and time_to_first_result_s are those of a 1-iteration fit.
    """
    import jax
    import jax.numpy as jnp
    from gmmx import EMFitter, GaussianMixtureModelJax

    if np.dtype(dtype) != np.float32:
        raise ValueError(f"gmmx supports float32 only, got {dtype}")
    weights, means, covs = init
    with jax.enable_x64(False):
        xj = jnp.asarray(x, jnp.float32)
        gmm0 = GaussianMixtureModelJax.from_squeezed(
            means=jnp.asarray(means, jnp.float32), covariances=jnp.asarray(covs, jnp.float32),
            weights=jnp.asarray(weights, jnp.float32), covariance_type=cov_type,
        )

        def compiled(iters):
            fitter = EMFitter(max_iter=iters, tol=float("-inf"), reg_covar=1e-6)
            return fitter, EMFitter.fit.lower(fitter, xj, gmm0).compile()

        start = time.perf_counter()
        one = compiled(1)
        compile_s = time.perf_counter() - start
        jax.block_until_ready(one[1](one[0], xj, gmm0))
        first = time.perf_counter() - start
        many = compiled(n_iter)
        jax.block_until_ready(many[1](many[0], xj, gmm0))  # warm-up, untimed

        def fit(iters):
            fitter, call = one if iters == 1 else many
            start = time.perf_counter()
            res = jax.block_until_ready(call(fitter, xj, gmm0))
            return res, time.perf_counter() - start

        res, per_iter, _ = _best_difference(fit, n_iter)
        gmm = res.gmm
        params = (
            np.asarray(gmm.weights_numpy, np.float64),
            np.asarray(gmm.means_numpy, np.float64),
            np.asarray(gmm.covariances.values_numpy, np.float64),
        )
    return {
        "s_per_iter": per_iter,
        "compile_s": compile_s,
        "time_to_first_result_s": first,
        "n_iter": int(res.n_iter),
        "params": params,
    }


def _run_pomegranate(x, init, cov_type, dtype, n_iter):
    """pomegranate 1.x (``GeneralMixtureModel`` of ``Normal(covariance_type=...)``, torch on
    CPU), started from ``init``.

    Semantics, read from pomegranate 1.1's source (gmm.py, distributions/normal.py):
    - ``fit`` loops ``for i in range(max_iter)``: E-step (``summarize``), then, for i > 0,
      ``break`` if the improvement is below ``tol`` (before the M-step), then M-step
      (``from_summaries``). With ``tol=-inf`` it never breaks (a NaN improvement does not
      compare below it either): exactly ``max_iter`` E+M steps, like scikit-learn's
      ``max_iter`` with ``tol=0``. ``fit`` does not report an iteration count.
    - No covariance regularisation: ``Normal(min_cov=...)`` is stored but never applied, so
      nothing is added to the diagonal (scikit-learn, jaxgmm and gmmx add reg_covar=1e-6).
      Covariances are formed from uncentred sums, E[x x^T] - mu mu^T (cancellation in
      float32 when means are large against the spreads).
    - dtype: pomegranate's working dtype is that of its first parameter, a float32 tensor
      created with torch's default dtype, so float64 inputs alone still give float32
      emission matrices and float32 sufficient statistics, and ``.to(torch.float64)``
      leaves the mixture's weight sums float32. The fit therefore runs under
      ``torch.set_default_dtype(dtype)`` (restored afterwards), which makes every tensor
      float64 in the float64 rows.
    - The initial parameters are taken exactly (priors, per-component means and covs).
    - Counts get no ``10 * eps`` (scikit-learn adds it; negligible).
    Timing as for scikit-learn: (t(n) - t(1)) / (n - 1), each the best of a few repeats, after
    one untimed-for-s_per_iter cold 1-iteration fit (torch's one-off start-up, reported as
    time_to_first_result_s); a fresh model is built (outside the timed region) for every
    fit, since ``fit`` updates the model in place. No compilation.
    """
    import torch
    from pomegranate.distributions import Normal
    from pomegranate.gmm import GeneralMixtureModel

    tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[np.dtype(dtype)]
    weights, means, covs = init
    old_default = torch.get_default_dtype()
    torch.set_default_dtype(tdtype)
    try:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype))

        def model(iters):
            dists = [
                Normal(torch.tensor(means[j], dtype=tdtype), torch.tensor(covs[j], dtype=tdtype),
                       covariance_type=cov_type)
                for j in range(len(weights))
            ]
            return GeneralMixtureModel(dists, priors=torch.tensor(weights, dtype=tdtype),
                                       max_iter=iters, tol=float("-inf"))

        def fit(iters):
            gm = model(iters)
            start = time.perf_counter()
            with torch.no_grad():
                gm.fit(xt)
            return gm, time.perf_counter() - start

        # The first torch call in a process pays seconds of one-off start-up; it is the
        # cold time to first result, and is kept out of the per-iteration difference.
        first = fit(1)[1]
        gm, per_iter, _ = _best_difference(fit, n_iter)
        params = (
            gm.priors.detach().numpy().astype(np.float64),
            np.stack([d.means.detach().numpy() for d in gm.distributions]).astype(np.float64),
            np.stack([d.covs.detach().numpy() for d in gm.distributions]).astype(np.float64),
        )
    finally:
        torch.set_default_dtype(old_default)
    return {
        "s_per_iter": per_iter,
        "compile_s": 0.0,
        "time_to_first_result_s": first,
        "n_iter": n_iter,  # exact by the loop above; pomegranate does not report it
        "params": params,
    }


# Peers are benchmarked only when importable (optional, not dependencies of jaxgmm:
# ``pip install gmmx pomegranate``; pomegranate pulls in torch).
OPTIONAL_PEERS = {"gmmx": _run_gmmx, "pomegranate": _run_pomegranate}
# jaxgmm runs twice: on one XLA device, and ("jaxgmm-cores") with the samples split over
# one CPU device per core. XLA:CPU runs most of a step's element-wise work on one core,
# so the second uses a 2-core machine fully (1.4-2x faster, same result to rounding).
TOOLS = {"jaxgmm": _run_jaxgmm, "jaxgmm-cores": _run_jaxgmm, "sklearn": _run_sklearn}
TOOLS.update({name: run for name, run in OPTIONAL_PEERS.items()
              if importlib.util.find_spec(name) is not None})
# (tool, dtype) pairs a peer cannot run; reported as skipped, not run in another dtype.
UNSUPPORTED = {
    ("gmmx", "float64"): "gmmx is float32 only (gmmx.gmm.check_shape rejects other dtypes)",
}


def worker(job):
    """Run one (size, dtype, tool) and return its row (runs in a subprocess)."""
    n, d, k, cov_type = job["n"], job["d"], job["k"], job["cov"]
    x = make_data(n, d, k)
    init = initial_parameters(x, k, cov_type)
    base = _rss_mb()
    run = TOOLS[job["tool"]]
    extra = {}
    if job["tool"].startswith("jaxgmm"):
        extra = {"accuracy_iters": job.get("accuracy_iters", 0), "devices": job.get("devices", 1)}
    out = run(x, init, cov_type, np.dtype(job["dtype"]), job["iters"], **extra)
    peak = _rss_mb() - base
    ll = score_float64(x, *out.pop("params"), cov_type)
    if "accuracy_params" in out:
        out["accuracy_iters"] = job["accuracy_iters"]
        out["accuracy_log_likelihood_f64"] = score_float64(x, *out.pop("accuracy_params"), cov_type)
    return dict(
        n_samples=n, n_features=d, n_components=k, covariance_type=cov_type, dtype=job["dtype"],
        tool=job["tool"], peak_mem_mb=round(peak, 1), final_log_likelihood_f64=ll,
        xla_flags=os.environ.get("XLA_FLAGS", ""), **out,
    )


def scaling_worker(job):
    """jaxgmm float32 full-covariance seconds per iteration over the N, K, D sweeps."""
    rows = []
    sweeps = job["sweeps"]
    base_n, base_k, base_d = sweeps["base"]
    for axis in ("n", "k", "d"):
        for value in sweeps[axis]:
            n, k, d = base_n, base_k, base_d
            n, k, d = (value if axis == "n" else n), (value if axis == "k" else k), (value if axis == "d" else d)
            x = make_data(n, d, k)
            init = initial_parameters(x, k, "full")
            out = _run_jaxgmm(x, init, "full", np.dtype("float32"), job["iters"])
            rows.append(dict(axis=axis, n_samples=n, n_components=k, n_features=d,
                             s_per_iter=out["s_per_iter"], compile_s=out["compile_s"]))
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


def _spawn(payload):
    env = dict(os.environ, JAX_ENABLE_X64="1")
    env["XLA_FLAGS"] = worker_xla_flags(env.get("XLA_FLAGS", ""), payload.get("devices", 1))
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.bench", "--worker", json.dumps(payload)],
        env=env, capture_output=True, text=True, cwd=root,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {payload} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _write_csv(path, rows, fields):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _plots(out, rows, scaling):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({(r["n_samples"], r["n_features"], r["n_components"], r["covariance_type"]) for r in rows})
    series = sorted({(r["tool"], r["dtype"]) for r in rows})
    fig, ax = plt.subplots(figsize=(1.8 + 2.2 * len(labels), 4))
    width = 0.8 / max(len(series), 1)
    for i, (tool, dtype) in enumerate(series):
        vals = [
            next((r["s_per_iter"] for r in rows if (r["n_samples"], r["n_features"], r["n_components"],
                  r["covariance_type"]) == lab and r["tool"] == tool and r["dtype"] == dtype), np.nan)
            for lab in labels
        ]
        ax.bar(np.arange(len(labels)) + i * width, vals, width, label=f"{tool} {dtype}")
        for j, val in enumerate(vals):
            if np.isnan(val):  # skipped (unsupported dtype) or failed: say so, not a gap
                ax.text(j + i * width, 0.02, "n/a", rotation=90, ha="center", va="bottom",
                        fontsize=7, transform=ax.get_xaxis_transform())
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2)
    ax.set_xticklabels([f"N={n:.0e}\nD={d} K={k}\n{c}" for n, d, k, c in labels])
    ax.set_yscale("log")
    ax.set_ylabel("seconds per EM iteration")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "bench.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (axis, key, name) in zip(axes, [("n", "n_samples", "N"), ("k", "n_components", "K"),
                                            ("d", "n_features", "D")]):
        pts = [r for r in scaling if r["axis"] == axis]
        ax.loglog([r[key] for r in pts], [r["s_per_iter"] for r in pts], "o-")
        ax.set_xlabel(name)
        ax.set_ylabel("s / iteration (jaxgmm f32 full)")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", choices=sorted(GRIDS), default="small")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--iters", type=int, default=None, help="EM iterations per timing")
    parser.add_argument("--no-scaling", action="store_true", help="skip the N/K/D sweeps")
    parser.add_argument("--accuracy-iters", type=int, default=30,
                        help="jaxgmm iterations for the float32-vs-float64 check (0: skip)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of an earlier run in --out")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(scaling_worker(job) if job.get("scaling") else worker(job)))
        return 0
    dtypes = [s.strip() for s in args.dtypes.split(",") if s.strip()]
    for dt in dtypes:
        if dt not in ("float32", "float64"):
            parser.error(f"--dtypes entries must be float32 or float64, got {dt!r}")
    iters = args.iters or (10 if args.sizes == "small" else 4)
    if iters < 2:
        parser.error("--iters must be >= 2")
    if args.accuracy_iters < 0:
        parser.error(f"--accuracy-iters must be >= 0, got {args.accuracy_iters}")
    out = Path(args.out)
    earlier = [f for f in OUTPUT_FILES if (out / f).exists()]
    if earlier and not args.overwrite:
        # As experiments.run does: an earlier run's results are not replaced unasked.
        parser.error(f"{out} already holds results of an earlier run ({', '.join(earlier)}); "
                     "pass --overwrite to replace them, or --out DIR")
    out.mkdir(parents=True, exist_ok=True)
    absent = [p for p in OPTIONAL_PEERS if importlib.util.find_spec(p) is None]
    print(f"peers not installed (skipped): {', '.join(absent) or 'none'}", flush=True)

    rows = []
    for n, d, k, cov in GRIDS[args.sizes]:
        for dtype in dtypes:
            for tool in TOOLS:
                if (tool, dtype) in UNSUPPORTED:
                    print(f"N={n} D={d} K={k} {cov} {dtype} {tool}: skipped, "
                          f"{UNSUPPORTED[tool, dtype]}", flush=True)
                    continue
                job = dict(n=n, d=d, k=k, cov=cov, dtype=dtype, tool=tool, iters=iters,
                           accuracy_iters=args.accuracy_iters)
                if tool == "jaxgmm-cores":
                    job["devices"] = devices_for(n, cpu_cores())
                    if job["devices"] == 1:
                        print(f"N={n} D={d} K={k} {cov} {dtype} {tool}: skipped, one core "
                              "(or none of the cores' counts divides N)", flush=True)
                        continue
                try:
                    row = _spawn(job)
                except RuntimeError as err:
                    if tool not in OPTIONAL_PEERS and tool != "jaxgmm-cores":
                        raise
                    # A peer that fails (e.g. pomegranate's float32 covariance losing
                    # positive definiteness), or the cores row off a CPU backend, is
                    # reported, not allowed to end the run.
                    reason = str(err).strip().splitlines()[-1]
                    print(f"N={n} D={d} K={k} {cov} {dtype} {tool}: FAILED, {reason}", flush=True)
                    continue
                rows.append(row)
                where = f" ({row['devices']} devices)" if row.get("devices", 1) > 1 else ""
                print(f"N={n} D={d} K={k} {cov} {dtype} {tool}{where}: {row['s_per_iter']:.4g} s/iter, "
                      f"compile {row['compile_s']:.2f} s, peak {row['peak_mem_mb']:.0f} MB, "
                      f"ll {row['final_log_likelihood_f64']:.6f}", flush=True)
    size = ("n_samples", "n_features", "n_components", "covariance_type", "dtype")
    for row in rows:
        for tool, field in (("jaxgmm", "ratio_peer_over_jaxgmm"),
                            ("jaxgmm-cores", "ratio_peer_over_jaxgmm_cores")):
            ours = next((r for r in rows if r["tool"] == tool and all(r[f] == row[f] for f in size)), None)
            if ours is not None:
                row[field] = row["s_per_iter"] / ours["s_per_iter"]
    accuracy = _float32_minus_float64(rows)
    _write_csv(out / "bench.csv", rows, FIELDS)
    scaling = [] if args.no_scaling else _spawn(dict(scaling=True, sweeps=SCALING[args.sizes], iters=min(iters, 5)))
    _write_csv(out / "scaling.csv", scaling,
               ["axis", "n_samples", "n_components", "n_features", "s_per_iter", "compile_s"])
    _plots(out, rows, scaling)
    for row in rows:
        if not row["tool"].startswith("jaxgmm"):
            cores = row.get("ratio_peer_over_jaxgmm_cores")
            print(f"{row['tool']} / jaxgmm at N={row['n_samples']} D={row['n_features']} "
                  f"K={row['n_components']} {row['covariance_type']} {row['dtype']}: "
                  f"{row['ratio_peer_over_jaxgmm']:.1f}x (1 device)"
                  + (f", {cores:.1f}x (jaxgmm-cores)" if cores else ""), flush=True)
    for line in accuracy:
        print(line, flush=True)
    print(f"wrote {out / 'bench.csv'}, {out / 'scaling.csv'}, bench.png, scaling.png")
    return 0


def _float32_minus_float64(rows):
    """Set ``float32_minus_float64`` on each jaxgmm float32 row (either jaxgmm tool) that
    has a float64 twin with an accuracy run, and return one printable line per row."""
    lines = []
    size = ("n_samples", "n_features", "n_components", "covariance_type")
    for row in rows:
        if not row["tool"].startswith("jaxgmm") or row["dtype"] != "float32" or not row.get("accuracy_iters"):
            continue
        twin = next((r for r in rows if r["tool"] == row["tool"] and r["dtype"] == "float64"
                     and all(r[f] == row[f] for f in size)), None)
        if twin is None:
            continue
        diff = row["accuracy_log_likelihood_f64"] - twin["accuracy_log_likelihood_f64"]
        row["float32_minus_float64"] = diff
        lines.append(f"{row['tool']} float32 - float64 after {row['accuracy_iters']} iterations at "
                     f"N={row['n_samples']} D={row['n_features']} K={row['n_components']} "
                     f"{row['covariance_type']}: {diff:+.2e} nats/sample (target |.| <= 2e-5)")
    return lines


if __name__ == "__main__":
    sys.exit(main())
