"""Several run folders side by side: ``python -m experiments.compare RUN_DIR [RUN_DIR ...]``.

One table (a row per run and method: train and held-out log-likelihood per sample, the
method's final bound and its name, BIC, converged) printed to stdout, and one figure
(the same numbers as dot plots) written to ``--out`` (default ``compare.png`` in the
current directory). Everything is read from each folder's ``metrics.json``; nothing is
refitted and nothing is written inside a run folder. An existing figure is not replaced
without ``--overwrite``.

Exit codes: 0 done, 2 a folder that is not a finished run folder (named), a repeated
folder, or ``--out`` inside a run folder, 3 ``--out`` exists (no ``--overwrite``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from experiments import results_io

DEFAULT_OUT = "compare.png"


class NotARunFolder(ValueError):
    """A path given as a run folder holds no finished run; the message names it."""


@dataclasses.dataclass(frozen=True)
class ComparisonRow:
    """One method of one run. Log-likelihoods and the bound are per sample (nats); BIC
    is a total, -2 log L + p log n (None for methods without a point estimate)."""

    run: str
    folder: str
    dataset: str
    spec: str
    method: str
    train_log_likelihood: float | None
    test_log_likelihood: float | None
    bound: float | None
    bound_name: str | None
    bic: float | None
    converged: bool | None
    status: str | None


def read_run(folder):
    """The ``metrics.json`` dict of a finished run folder.

    Raises:
        NotARunFolder naming the folder: missing, not a folder, no metrics.json (not a run
        folder, or an unfinished one), or a metrics.json that is not a run's.
    """
    folder = Path(folder)
    if not folder.exists():
        raise NotARunFolder(f"{folder}: no such folder")
    if not folder.is_dir():
        raise NotARunFolder(f"{folder}: not a folder (expected a run folder)")
    path = folder / "metrics.json"
    if not path.is_file():
        raise NotARunFolder(
            f"{folder}: not a run folder (no metrics.json; experiments.run writes it last, "
            "so an interrupted run has none)"
        )
    try:
        metrics = results_io.read_json(path)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise NotARunFolder(f"{path}: cannot be read as a run's metrics ({error})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("methods"), dict):
        raise NotARunFolder(f"{path}: not a run's metrics.json (no 'methods')")
    return metrics


def _labels(folders):
    """A short name per folder: its name, or the path as given when names repeat."""
    names = [Path(f).name or str(f) for f in folders]
    return [n if names.count(n) == 1 else str(f) for n, f in zip(names, folders)]


def compare_runs(folders):
    """The comparison rows of several run folders, in the order given.

    Args:
        folders: run folders (str or PathLike).

    Returns:
        list of `ComparisonRow`, every method of every run.

    Raises:
        NotARunFolder naming the first folder that is not a finished run folder, or a
        folder given twice.
    """
    folders = [Path(f) for f in folders]
    if not folders:
        raise NotARunFolder("no run folder given")
    seen = {}
    for folder in folders:
        key = folder.resolve()
        if key in seen:
            raise NotARunFolder(f"{folder}: given twice (also as {seen[key]})")
        seen[key] = folder
    rows = []
    for label, folder in zip(_labels(folders), folders):
        metrics = read_run(folder)
        spec = metrics.get("spec") or {}
        data = metrics.get("data") or {}
        for method, row in metrics["methods"].items():
            rows.append(
                ComparisonRow(
                    run=label,
                    folder=str(folder),
                    dataset=str(data.get("dataset", "?")),
                    spec=f"K={spec.get('n_components', '?')} {spec.get('covariance_type', '?')}",
                    method=method,
                    train_log_likelihood=row.get("train_log_likelihood"),
                    test_log_likelihood=row.get("test_log_likelihood"),
                    bound=row.get("bound_final"),
                    bound_name=row.get("bound_name"),
                    bic=row.get("bic"),
                    converged=row.get("converged"),
                    status=row.get("status"),
                )
            )
    return rows


def _cell(value, spec=""):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


def _converged(row):
    if row.converged is None:
        return "-"
    if row.converged:
        return "yes"
    return "no" if row.status in (None, "converged") else f"no ({row.status})"


COLUMNS = (
    ("run", lambda r: r.run),
    ("dataset", lambda r: r.dataset),
    ("model", lambda r: r.spec),
    ("method", lambda r: r.method),
    ("train ll", lambda r: _cell(r.train_log_likelihood, ".5f")),
    ("test ll", lambda r: _cell(r.test_log_likelihood, ".5f")),
    ("bound", lambda r: _cell(r.bound, ".5f")),
    ("bound name", lambda r: _cell(r.bound_name)),
    ("BIC", lambda r: _cell(r.bic, ".2f")),
    ("converged", _converged),
)


def format_comparison(rows):
    """The rows as a text table (ll and bound: nats per sample; BIC: a total, lower is
    better)."""
    cells = [[get(r) for _, get in COLUMNS] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (h, _) in enumerate(COLUMNS)]
    left = 4  # run, dataset, model and method are text: left-aligned

    def line(values):
        return "  ".join(
            v.ljust(w) if i < left else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))
        ).rstrip()

    out = [
        "train ll, test ll, bound: nats per sample; BIC: total, -2 log L + p log n "
        "(lower is better)",
        line([h for h, _ in COLUMNS]),
    ]
    out += [line(c) for c in cells]
    return "\n".join(out)


def plot_comparison(rows, path):
    """Dot plots of the rows: log-likelihood per sample (train hollow, held-out filled)
    and the bound, and BIC, one line per run and method. Written atomically to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments.plot import COLORS, _save

    labels = [f"{r.run}: {r.method}\n({r.dataset}, {r.spec})" for r in rows]
    runs = list(dict.fromkeys(r.run for r in rows))
    y = list(range(len(rows)))[::-1]
    has_bic = any(r.bic is not None for r in rows)
    fig, axes = plt.subplots(
        1, 2 if has_bic else 1, figsize=(13 if has_bic else 7.5, 1.4 + 0.55 * len(rows)),
        squeeze=False, sharey=True,
    )  # fmt: skip
    ax_ll = axes[0, 0]
    for yi, r in zip(y, rows):
        color = COLORS[runs.index(r.run) % len(COLORS)]
        if r.train_log_likelihood is not None:
            ax_ll.plot(r.train_log_likelihood, yi, "o", mfc="none", mec=color, ms=8, mew=1.6)
        if r.test_log_likelihood is not None:
            ax_ll.plot(r.test_log_likelihood, yi, "o", color=color, ms=7)
        if r.bound is not None:
            ax_ll.plot(r.bound, yi, "|", color=color, ms=14, mew=2)
    from matplotlib.lines import Line2D

    ax_ll.legend(
        handles=[
            Line2D([], [], ls="", marker="o", mfc="none", mec="black", label="train ll"),
            Line2D([], [], ls="", marker="o", color="black", label="held-out ll"),
            Line2D([], [], ls="", marker="|", color="black", ms=12, mew=2,
                   label="final bound (its name in the table)"),
        ],
        fontsize=8, loc="best",
    )  # fmt: skip
    ax_ll.set(xlabel="nats per sample (higher is better)", title="log-likelihood and bound")
    ax_ll.set_yticks(y, labels)
    if has_bic:
        ax_bic = axes[0, 1]
        for yi, r in zip(y, rows):
            if r.bic is not None:
                color = COLORS[runs.index(r.run) % len(COLORS)]
                ax_bic.plot(r.bic, yi, "D", color=color, ms=7)
        ax_bic.set(
            xlabel="BIC, -2 log L + p log n (total; lower is better)",
            title="BIC (point estimates; runs on different data are not comparable)",
        )
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.set_ylim(-0.7, len(rows) - 0.3)
    fig.suptitle(f"comparison of {len(runs)} run{'s' if len(runs) > 1 else ''}: " + ", ".join(runs))
    fig.tight_layout()
    _save(fig, Path(path))


def _inside(path, folder):
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _check_out(out, folders, overwrite):
    """0 if the figure may be written to ``out``, else the exit code (message printed)."""
    problem, code = None, 2
    if out.suffix.lower() != ".png":
        problem = f"--out {out}: expected a .png file name"
    elif any(_inside(out, Path(folder)) for folder in folders):
        folder = next(f for f in folders if _inside(out, Path(f)))
        problem = (
            f"--out {out} is inside the run folder {folder}; compare writes nothing into "
            "run folders, choose a file elsewhere"
        )
    elif out.is_dir():
        problem = f"--out {out} is a folder; give a .png file name"
    elif out.exists() and not overwrite:
        problem = (
            f"{out} already exists; pass --overwrite to replace it or --out to write elsewhere"
        )
        code = 3
    elif not out.parent.is_dir():
        problem = f"--out {out}: folder {out.parent} does not exist"
    if problem is None:
        return 0
    print(f"error: {problem}", file=sys.stderr)
    return code


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m experiments.compare",
        description="Compare run folders: one table (stdout) and one figure.",
    )
    parser.add_argument("folders", nargs="+", metavar="RUN_DIR", help="run folders")
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help=f"figure file (default: ./{DEFAULT_OUT})"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--no-plot", action="store_true", help="print the table only")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        rows = compare_runs(args.folders)
    except NotARunFolder as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if not args.no_plot:
        code = _check_out(out, args.folders, args.overwrite)
        if code:
            return code
    print(format_comparison(rows))
    if args.no_plot:
        return 0
    plot_comparison(rows, out)
    print(f"\nfigure written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
