"""The benchmark's command line: the size grids and scaling sweeps, ``main`` (the options,
the loop over sizes, dtypes and tools, the CSV files, the figures, the printed summary)
and the ``--worker`` entry point of the subprocesses. Usage: `experiments.bench`."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
from pathlib import Path

import experiments.bench
from experiments.bench.peers import OPTIONAL_PEERS, TOOLS, UNSUPPORTED, VB_TOOLS
from experiments.bench.plots import plot_results
from experiments.bench.protocol import cpu_cores, devices_for, float32_minus_float64, set_ratios
from experiments.bench.workers import scaling_worker, spawn, worker

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
    "small": {
        "base": (20_000, 8, 8),
        "n": [5_000, 20_000, 50_000],
        "k": [2, 8, 16],
        "d": [2, 8, 16],
    },
    "all": {
        "base": (200_000, 16, 16),
        "n": [10_000, 100_000, 1_000_000],
        "k": [4, 8, 16, 32],
        "d": [4, 8, 16, 32],
    },
}
OUTPUT_FILES = ("bench.csv", "scaling.csv", "bench.png", "scaling.png")
FIELDS = [
    "n_samples",
    "n_features",
    "n_components",
    "covariance_type",
    "dtype",
    "tool",
    "devices",
    "s_per_iter",
    "ratio_peer_over_jaxgmm",
    "ratio_peer_over_jaxgmm_cores",
    "ratio_vb_over_em",
    "ratio_peer_over_jaxgmm_vb",
    "compile_s",
    "time_to_first_result_s",
    "peak_mem_mb",
    "final_log_likelihood_f64",
    "n_iter",
    "accuracy_iters",
    "accuracy_log_likelihood_f64",
    "float32_minus_float64",
    "xla_flags",
]


def write_csv(path, rows, fields):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench",  # not "__main__.py", argparse's guess
        description=experiments.bench.__doc__.splitlines()[0],
    )
    parser.add_argument("--sizes", choices=sorted(GRIDS), default="small")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--iters", type=int, default=None, help="EM iterations per timing")
    parser.add_argument("--no-scaling", action="store_true", help="skip the N/K/D sweeps")
    parser.add_argument(
        "--accuracy-iters",
        type=int,
        default=30,
        help="jaxgmm iterations for the float32-vs-float64 check (0: skip)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the results of an earlier run in --out"
    )
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
        parser.error(
            f"{out} already holds results of an earlier run ({', '.join(earlier)}); "
            "pass --overwrite to replace them, or --out DIR"
        )
    out.mkdir(parents=True, exist_ok=True)
    absent = [p for p in OPTIONAL_PEERS if importlib.util.find_spec(p) is None]
    print(f"peers not installed (skipped): {', '.join(absent) or 'none'}", flush=True)

    rows = []
    for n, d, k, cov in GRIDS[args.sizes]:
        for dtype in dtypes:
            for tool in TOOLS:
                if (tool, dtype) in UNSUPPORTED:
                    print(
                        f"N={n} D={d} K={k} {cov} {dtype} {tool}: skipped, "
                        f"{UNSUPPORTED[tool, dtype]}",
                        flush=True,
                    )
                    continue
                job = dict(
                    n=n,
                    d=d,
                    k=k,
                    cov=cov,
                    dtype=dtype,
                    tool=tool,
                    iters=iters,
                    accuracy_iters=args.accuracy_iters,
                )
                if tool == "jaxgmm-cores":
                    job["devices"] = devices_for(n, cpu_cores())
                    if job["devices"] == 1:
                        print(
                            f"N={n} D={d} K={k} {cov} {dtype} {tool}: skipped, one core "
                            "(or none of the cores' counts divides N)",
                            flush=True,
                        )
                        continue
                try:
                    row = spawn(job)
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
                print(
                    f"N={n} D={d} K={k} {cov} {dtype} {tool}{where}: {row['s_per_iter']:.4g} s/iter, "
                    f"compile {row['compile_s']:.2f} s, peak {row['peak_mem_mb']:.0f} MB, "
                    f"ll {row['final_log_likelihood_f64']:.6f}",
                    flush=True,
                )
    set_ratios(rows, VB_TOOLS)
    accuracy = float32_minus_float64(rows)
    write_csv(out / "bench.csv", rows, FIELDS)
    scaling = (
        []
        if args.no_scaling
        else spawn(dict(scaling=True, sweeps=SCALING[args.sizes], iters=min(iters, 5)))
    )
    write_csv(
        out / "scaling.csv",
        scaling,
        ["axis", "n_samples", "n_components", "n_features", "s_per_iter", "compile_s"],
    )
    plot_results(out, rows, scaling)
    for row in rows:
        where = (
            f"N={row['n_samples']} D={row['n_features']} K={row['n_components']} "
            f"{row['covariance_type']} {row['dtype']}"
        )
        if row["tool"] in VB_TOOLS:
            vb_em = row.get("ratio_vb_over_em")
            if vb_em is not None:
                target = " (target <= 1.5x)" if row["tool"] == "jaxgmm-vb" else ""
                print(
                    f"{row['tool']} / {VB_TOOLS[row['tool']]} (VB / EM) at {where}: "
                    f"{vb_em:.2f}x{target}",
                    flush=True,
                )
            peer = row.get("ratio_peer_over_jaxgmm_vb")
            if row["tool"] != "jaxgmm-vb" and peer is not None:
                print(f"{row['tool']} / jaxgmm-vb at {where}: {peer:.1f}x", flush=True)
        elif not row["tool"].startswith("jaxgmm"):
            cores = row.get("ratio_peer_over_jaxgmm_cores")
            print(
                f"{row['tool']} / jaxgmm at {where}: "
                f"{row['ratio_peer_over_jaxgmm']:.1f}x (1 device)"
                + (f", {cores:.1f}x (jaxgmm-cores)" if cores else ""),
                flush=True,
            )
    for line in accuracy:
        print(line, flush=True)
    print(f"wrote {out / 'bench.csv'}, {out / 'scaling.csv'}, bench.png, scaling.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
