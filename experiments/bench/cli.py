"""The benchmark's command line: the size grids and scaling sweeps, ``main`` (the options,
the machine's GEMM and exp rates and each row's arithmetic floor, the loop over sizes,
dtypes and tools, the CSV and JSON files, the figures, the printed summary, the optional
per-phase profile) and the ``--worker`` entry point of the subprocesses (``run_job``).
Usage: `experiments.bench`."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import experiments.bench
from experiments.bench.floor import (
    EXP_ELEMENTS,
    GEMM_SIZE,
    em_floor,
    em_shape_floor,
    measure_rates,
    profile_worker,
)
from experiments.bench.peers import OPTIONAL_PEERS, TOOLS, VB_TOOLS, unsupported
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
        # issue 18: tied and spherical no slower than diag at the same size
        (1_000_000, 16, 16, "tied"),
        (1_000_000, 16, 16, "spherical"),
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
OUTPUT_FILES = ("bench.csv", "scaling.csv", "bench.png", "scaling.png", "floor.json", "profile.csv")
FIELDS = [
    "n_samples",
    "n_features",
    "n_components",
    "covariance_type",
    "dtype",
    "tool",
    "devices",
    "s_per_iter",
    "floor_s_per_iter",
    "ratio_over_floor",
    "shape_floor_s_per_iter",
    "ratio_over_shape_floor",
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


PROFILE_FIELDS = [
    "n_samples",
    "n_features",
    "n_components",
    "covariance_type",
    "dtype",
    "phase",
    "seconds",
    "floor_s",
    "ratio_over_floor",
    "shape_floor_s",
    "ratio_over_shape_floor",
    "floor_gflop",
    "jaxgmm_gflop",
    "block_size",
    "n_blocks",
]


def run_job(job):
    """What a ``--worker`` subprocess runs: the rates (``measure_rates``), a per-phase profile
    (``profile``), the scaling sweeps (``scaling``) or one (size, dtype, tool) row."""
    if job.get("measure_rates"):
        return measure_rates(
            job["dtypes"], job["gemm_size"], job["exp_elements"], job.get("sizes", ())
        )
    if job.get("profile"):
        return profile_worker(job)
    return scaling_worker(job) if job.get("scaling") else worker(job)


def _size(row):
    return (
        f"N={row['n_samples']} D={row['n_features']} K={row['n_components']} "
        f"{row['covariance_type']} {row['dtype']}"
    )


def set_floor(row, rates):
    """Set ``floor_s_per_iter`` (the EM iteration's floor at this size and dtype, see
    `experiments.bench.floor.em_flops`), ``shape_floor_s_per_iter`` (the same products
    at the measured rates of their own shapes, `experiments.bench.floor.em_shape_floor`)
    and each ``ratio_over_*`` (s/iter over it)."""
    size = [row[f] for f in ("n_samples", "n_features", "n_components", "covariance_type")]
    floor = em_floor(*size, row["dtype"], rates)["total"]
    shape = em_shape_floor(*size, row["dtype"], rates)["total"]
    row["floor_s_per_iter"] = floor
    row["ratio_over_floor"] = row["s_per_iter"] / floor
    row["shape_floor_s_per_iter"] = shape
    row["ratio_over_shape_floor"] = row["s_per_iter"] / shape


def _g(value, fmt=".3g"):
    return "-" if value is None else format(value, fmt)


def floor_table(rows):
    """The printed table of every row's seconds per iteration against its floor."""
    head = (
        f"{'size':<32} {'tool':<14} {'s/iter':>10} {'floor s/iter':>13} {'tool / floor':>13} "
        f"{'shape floor':>12} {'tool / shape':>13}"
    )
    lines = [head]
    for row in rows:
        lines.append(
            f"{_size(row):<32} {row['tool']:<14} {row['s_per_iter']:>10.3g} "
            f"{row['floor_s_per_iter']:>13.3g} {row['ratio_over_floor']:>12.2f}x "
            f"{row['shape_floor_s_per_iter']:>12.3g} {row['ratio_over_shape_floor']:>12.2f}x"
        )
    return lines


def profile_table(rows):
    """The printed per-phase profile of one (size, dtype)."""
    lines = [
        f"jaxgmm EM per phase at {_size(rows[0])} (blocks of {rows[0]['block_size']}, "
        f"{rows[0]['n_blocks']} blocks):",
        f"  {'phase':<40} {'s':>10} {'floor s':>10} {'x floor':>8} {'x shape':>8} "
        f"{'GFLOP floor':>12} {'GFLOP jaxgmm':>13}",
    ]
    for r in rows:
        lines.append(
            f"  {r['phase']:<40} {r['seconds']:>10.3g} {_g(r['floor_s']):>10} "
            f"{_g(r['ratio_over_floor'], '.2f'):>8} {_g(r['ratio_over_shape_floor'], '.2f'):>8} "
            f"{_g(r['floor_gflop'], '.4f'):>12} "
            f"{_g(r['jaxgmm_gflop'], '.4f'):>13}"
        )
    return lines


# Above this relative change of a rate between the start and the end of a run, the
# benchmark warns that rows measured minutes apart are not comparable to better than it.
DRIFT_TOLERANCE = 0.10


def speed_drift_lines(before, after, tolerance=DRIFT_TOLERANCE):
    """Lines comparing the host's rates at the start of a run (``before``, from
    `measure_rates`) with the same measurement at its end (``after``): GEMM and exp per
    dtype and the reference compile, each with its relative change, and a warning when
    any changed by more than ``tolerance``. Every row's ratio to its peers and to the
    floor mixes measurements minutes apart, so a host whose speed moves in between moves
    them by as much."""
    changes = []
    for label, key, unit in (("GEMM", "gemm_gflops", "GFLOP/s"), ("exp", "exp_gps", "G/s")):
        for dtype, start in before[key].items():
            if dtype in after[key]:
                changes.append((f"{label} {dtype}", start, after[key][dtype], unit, ".3g"))
    if before.get("reference_compile_s") and after.get("reference_compile_s"):
        changes.append(
            ("reference compile", before["reference_compile_s"], after["reference_compile_s"], "s", ".3f")
        )
    parts = [
        f"{name} {start:{fmt}} -> {end:{fmt}} {unit} ({end / start - 1:+.0%})"
        for name, start, end, unit, fmt in changes
    ]
    lines = ["the host's rates at the end of the run against its start: " + ", ".join(parts)]
    moved = [name for name, start, end, _, _ in changes if abs(end / start - 1) > tolerance]
    if moved:
        lines.append(
            f"warning: {', '.join(moved)} changed by more than {tolerance:.0%} during the run, "
            "so rows measured minutes apart (a tool and its peers, one size and the next) "
            "differ by about as much from the host alone; rerun on an idle machine, or "
            "compare rows measured close together"
        )
    return lines


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
    parser.add_argument(
        "--covariance-types",
        default=None,
        help="comma-separated: only the grid's rows of these covariance types (default all)",
    )
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--iters", type=int, default=None, help="EM iterations per timing")
    parser.add_argument("--no-scaling", action="store_true", help="skip the N/K/D sweeps")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also time jaxgmm's EM per phase at every size and dtype, each against its floor",
    )
    parser.add_argument(
        "--gemm-size",
        type=int,
        default=GEMM_SIZE,
        help="square matrix size of the GEMM rate measurement (smaller: a quick look only)",
    )
    parser.add_argument(
        "--exp-elements",
        type=int,
        default=EXP_ELEMENTS,
        help="array length of the exp rate measurement",
    )
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
        print(json.dumps(run_job(job)))
        return 0
    dtypes = [s.strip() for s in args.dtypes.split(",") if s.strip()]
    for dt in dtypes:
        if dt not in ("float32", "float64"):
            parser.error(f"--dtypes entries must be float32 or float64, got {dt!r}")
    grid = GRIDS[args.sizes]
    if args.covariance_types is not None:
        wanted = [c.strip() for c in args.covariance_types.split(",") if c.strip()]
        available = sorted({row[3] for row in grid})
        unknown = [c for c in wanted if c not in available]
        if unknown or not wanted:
            parser.error(
                f"--covariance-types entries must be among {available} (the --sizes "
                f"{args.sizes} grid), got {args.covariance_types!r}"
            )
        grid = [row for row in grid if row[3] in wanted]
    iters = args.iters or (10 if args.sizes == "small" else 4)
    if iters < 2:
        parser.error("--iters must be >= 2")
    if args.accuracy_iters < 0:
        parser.error(f"--accuracy-iters must be >= 0, got {args.accuracy_iters}")
    if args.gemm_size < 1 or args.exp_elements < 1:
        parser.error("--gemm-size and --exp-elements must be >= 1")
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
    # The rates are measured before any tool runs (with the grid's product rates) and
    # again at the end (the host's drift), each in a worker like the tools'.
    load_before = os.getloadavg()
    measured_at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())

    def host_rates(sizes=()):
        job = dict(measure_rates=True, dtypes=dtypes, sizes=sizes)
        return spawn(dict(job, gemm_size=args.gemm_size, exp_elements=args.exp_elements))

    rates = host_rates(grid)
    print(
        "this machine's rates (the floor's): GEMM "
        + ", ".join(f"{dt} {rates['gemm_gflops'][dt]:.1f} GFLOP/s" for dt in dtypes)
        + f" ({args.gemm_size}^2 matmul); exp "
        + ", ".join(f"{dt} {rates['exp_gps'][dt]:.3g} G/s" for dt in dtypes)
        + f" ({args.exp_elements} elements); load average {load_before[0]:.2f}",
        flush=True,
    )
    print(
        f"  reference compile (a fixed plain-JAX EM block loop, not jaxgmm's): "
        f"{rates['reference_compile_s']:.3f} s; read each row's compile against it",
        flush=True,
    )
    for dt in dtypes:
        print(
            f"  {dt} per-block products (m x inner x n, best layout): "
            + ", ".join(f"{key} {rate:.1f}" for key, rate in rates["product_gflops"][dt].items())
            + " GFLOP/s",
            flush=True,
        )

    rows = []
    for n, d, k, cov in grid:
        for dtype in dtypes:
            for tool in TOOLS:
                reason = unsupported(tool, dtype, cov)
                if reason:
                    print(f"N={n} D={d} K={k} {cov} {dtype} {tool}: skipped, {reason}", flush=True)
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
                set_floor(row, rates)
                rows.append(row)
                where = f" ({row['devices']} devices)" if row.get("devices", 1) > 1 else ""
                reference = rates.get("reference_compile_s")
                compile_ratio = (
                    f" ({row['compile_s'] / reference:.1f}x the reference)"
                    if reference and row["compile_s"] > 0
                    else ""
                )
                print(
                    f"N={n} D={d} K={k} {cov} {dtype} {tool}{where}: {row['s_per_iter']:.4g} s/iter "
                    f"({row['ratio_over_floor']:.2f}x the floor, {row['floor_s_per_iter']:.3g}; "
                    f"{row['ratio_over_shape_floor']:.2f}x the shape floor, "
                    f"{row['shape_floor_s_per_iter']:.3g}), "
                    f"compile {row['compile_s']:.2f} s{compile_ratio}, peak {row['peak_mem_mb']:.0f} MB, "
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
    profile = []
    if args.profile:
        for n, d, k, cov in grid:
            for dtype in dtypes:
                profile.extend(
                    spawn(dict(profile=True, n=n, d=d, k=k, cov=cov, dtype=dtype, rates=rates))
                )
        write_csv(out / "profile.csv", profile, PROFILE_FIELDS)
    rates_after = host_rates()  # the same measurement at the end: the host's drift
    floors = [
        dict(
            n_samples=n,
            n_features=d,
            n_components=k,
            covariance_type=cov,
            dtype=dtype,
            **{f"floor_{part}_s": s for part, s in em_floor(n, d, k, cov, dtype, rates).items()},
            **{
                f"shape_floor_{part}" + ("" if part == "block_size" else "_s"): s
                for part, s in em_shape_floor(n, d, k, cov, dtype, rates).items()
            },
        )
        for n, d, k, cov in grid
        for dtype in dtypes
    ]
    with open(out / "floor.json", "w") as f:
        json.dump(
            dict(
                command=["python", "-m", "experiments.bench"]
                + list(sys.argv[1:] if argv is None else argv),
                measured_at=measured_at,
                load_average_before=load_before,
                load_average_after=os.getloadavg(),
                cpu_cores=cpu_cores(),
                rates=rates,
                rates_after=rates_after,
                floors=floors,
                ratios=[
                    {
                        f: r.get(f)
                        for f in FIELDS[:6]
                        + ["s_per_iter", "floor_s_per_iter", "ratio_over_floor"]
                        + ["shape_floor_s_per_iter", "ratio_over_shape_floor"]
                    }
                    for r in rows
                ],
                profile=profile,
            ),
            f,
            indent=1,
        )
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
        elif not row["tool"].startswith("jaxgmm") and "ratio_peer_over_jaxgmm" in row:
            # (no jaxgmm row, e.g. it failed or was left out: no ratio to print)
            cores = row.get("ratio_peer_over_jaxgmm_cores")
            print(
                f"{row['tool']} / jaxgmm at {where}: "
                f"{row['ratio_peer_over_jaxgmm']:.1f}x (1 device)"
                + (f", {cores:.1f}x (jaxgmm-cores)" if cores else ""),
                flush=True,
            )
    for line in accuracy:
        print(line, flush=True)
    if rows:
        print(
            "seconds per iteration against the arithmetic floor (matrix products at the "
            "measured square-GEMM rate plus one exp per sample and component) and the shape "
            "floor (the same products at the measured rates of their own per-block shapes); "
            "the EM iteration's floors, for the -vb rows too:",
            flush=True,
        )
        for line in floor_table(rows):
            print(line, flush=True)
    sizes = sorted({_size(r) for r in profile}, key=[_size(r) for r in profile].index)
    for size in sizes:
        for line in profile_table([r for r in profile if _size(r) == size]):
            print(line, flush=True)
    for line in speed_drift_lines(rates, rates_after):
        print(line, flush=True)
    extra = ", profile.csv" if args.profile else ""
    print(
        f"wrote {out / 'bench.csv'}, {out / 'scaling.csv'}, bench.png, scaling.png, floor.json{extra}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
