"""An mclust-style summary of a model-selection run: BIC over K x covariance type, the top
three models with their BIC differences, ICL, and the BIC-best model's cluster sizes,
mixing weights and classification uncertainty.

Everything is read from ``metrics.json["model_selection"]`` (written by the runner for a
config with a ``model_selection`` block), so a summary can be printed again from a run
folder: ``summarize("results/model_selection").text()``.

Signs. mclust reports BIC = 2 log L - p log n (bigger is better); the runner's grid,
``metrics.json`` and scikit-learn use -2 log L + p log n (lower is better). This summary
prints mclust's sign, so its numbers are comparable with mclust's print-out: each is the
negative of the grid's. ICL follows mclust's ``icl()`` (R/icl.R):
ICL = BIC + 2 sum_n log max_k z_nk in mclust's sign, the MAP labels' completed
log-likelihood term of Biernacki, Celeux and Govaert (2000).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from experiments import results_io

# mclust's model names for our covariance families (Fraley and Raftery's parametrisation:
# volume, shape, orientation each Equal, Variable or Identity). In one dimension mclust has
# only E (equal variance: tied) and V (variable).
MCLUST_NAMES = {"full": "VVV", "tied": "EEE", "diag": "VVI", "spherical": "VII"}
PICK = 3


def mclust_name(covariance_type, n_features):
    """mclust's model name of a covariance type ("VVV" for full; "V" / "E" in 1-D)."""
    if n_features == 1:
        return "E" if covariance_type == "tied" else "V"
    return MCLUST_NAMES[covariance_type]


@dataclasses.dataclass(frozen=True)
class ModelSelectionSummary:
    """A model-selection run as mclust summarises it; every criterion in mclust's sign.

    Attributes:
        name, dataset: the run's name and dataset.
        n_samples, n_features: the training data's shape.
        covariance_types: the grid's covariance types, in grid order.
        n_components: the grid's numbers of components, ascending.
        bic: {(covariance_type, n_components): 2 log L - p log n}, None for a cell that
            could not be fitted.
        icl: the same for ICL (None when the run predates ICL).
        top_bic, top_icl: the best `PICK` cells, best first, as (covariance_type,
            n_components, value, value - best value).
        log_evidence: {(covariance_type, n_components): 2 log p(X)} (totals, on BIC's
            mclust scale: BIC approximates 2 log p(X), Schwarz 1978), from the run's
            ``evidence.model_selection`` estimates under the prior; empty without them.
        log_evidence_stderr: the same cells' standard errors of 2 log p(X).
        top_evidence: the best `PICK` cells by log evidence, as ``top_bic``.
        best: ``metrics.json["model_selection"]["bic_best_model"]`` with ``bic`` and
            ``icl`` in mclust's sign (cluster_sizes, weights, uncertainty_mean, ...), or
            None.
    """

    name: str
    dataset: str
    n_samples: int
    n_features: int
    covariance_types: tuple
    n_components: tuple
    bic: dict
    icl: dict
    top_bic: tuple
    top_icl: tuple
    best: dict | None
    log_evidence: dict = dataclasses.field(default_factory=dict)
    log_evidence_stderr: dict = dataclasses.field(default_factory=dict)
    top_evidence: tuple = ()

    def label(self, covariance_type):
        return f"{covariance_type} ({mclust_name(covariance_type, self.n_features)})"

    def text(self):
        """The summary as mclust-style text."""
        return format_summary(self)

    def __str__(self):
        return self.text()


def _metrics(source):
    """The metrics dict of a run folder (str or PathLike), an ExperimentResult or a
    metrics dict."""
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not (folder / "metrics.json").is_file():
            raise ValueError(f"{folder}: no metrics.json (not a finished run folder)")
        return results_io.read_json(folder / "metrics.json")
    metrics = getattr(source, "metrics", source)
    if not isinstance(metrics, dict):
        raise TypeError(
            "summarize expects a run folder, an ExperimentResult or a metrics dict, "
            f"got {type(source).__name__}"
        )
    return metrics


def _negate(value):
    return None if value is None else -value


def _top(values):
    ranked = sorted(((v, key) for key, v in values.items() if v is not None), reverse=True)
    if not ranked:
        return ()
    best = ranked[0][0]
    return tuple((cov, k, v, v - best) for v, (cov, k) in ranked[:PICK])


def summarize(source):
    """The mclust-style summary of a model-selection run.

    Args:
        source: a run folder (str or PathLike), an `experiments.ExperimentResult`, or a
            ``metrics.json`` dict.

    Returns:
        `ModelSelectionSummary`.

    Raises:
        ValueError: the folder holds no finished run, or the run has no model-selection
            grid (no ``model_selection`` block in its config).
    """
    metrics = _metrics(source)
    grid = metrics.get("model_selection")
    if not grid or not grid.get("rows"):
        raise ValueError(
            f"run {metrics.get('name')!r} has no model-selection grid (set "
            "model_selection.n_components in its config)"
        )
    rows = grid["rows"]
    bic = {(r["covariance_type"], r["n_components"]): _negate(r.get("bic")) for r in rows}
    icl = {(r["covariance_type"], r["n_components"]): _negate(r.get("icl")) for r in rows}
    if not any(v is not None for v in icl.values()):
        icl = {}
    evidence = {
        (r["covariance_type"], r["n_components"]): 2.0 * r["log_evidence_total"]
        for r in rows
        if r.get("log_evidence_total") is not None
    }
    evidence_se = {
        (r["covariance_type"], r["n_components"]): 2.0 * r["log_evidence_stderr_total"]
        for r in rows
        if r.get("log_evidence_stderr_total") is not None
    }
    best = grid.get("bic_best_model")
    if best is not None:
        best = dict(best, bic=_negate(best.get("bic")), icl=_negate(best.get("icl")))
    data = metrics.get("data") or {}
    return ModelSelectionSummary(
        name=metrics.get("name", "?"),
        dataset=data.get("dataset", "?"),
        n_samples=data.get("n_train"),
        n_features=data.get("n_features") or len(data.get("feature_names") or [0, 0]),
        covariance_types=tuple(dict.fromkeys(r["covariance_type"] for r in rows)),
        n_components=tuple(sorted({r["n_components"] for r in rows})),
        bic=bic,
        icl=icl,
        top_bic=_top(bic),
        top_icl=_top(icl),
        best=best,
        log_evidence=evidence,
        log_evidence_stderr=evidence_se,
        top_evidence=_top(evidence),
    )


def _grid_lines(summary, values):
    labels = [summary.label(c) for c in summary.covariance_types]
    widths = [max(11, len(label)) for label in labels]
    lines = ["  " + " " * 4 + "".join(f"  {lab:>{w}}" for lab, w in zip(labels, widths))]
    for k in summary.n_components:
        cells = []
        for cov, w in zip(summary.covariance_types, widths):
            v = values.get((cov, k))
            cells.append(f"  {'-' if v is None else format(v, '.3f'):>{w}}")
        lines.append(f"  K={k:<3}" + "".join(cells))
    return lines


def _top_lines(summary, top, name):
    heads = [f"{summary.label(cov)},{k}" for cov, k, _, _ in top]
    widths = [max(11, len(h)) for h in heads]
    pad = len(name) + 5
    return [
        " " * (2 + pad) + "".join(f"  {h:>{w}}" for h, w in zip(heads, widths)),
        f"  {name:<{pad}}" + "".join(f"  {v:>{w}.3f}" for (_, _, v, _), w in zip(top, widths)),
        f"  {name + ' diff':<{pad}}"
        + "".join(f"  {d:>{w}.3f}" for (_, _, _, d), w in zip(top, widths)),
    ]


def format_summary(summary):
    """`ModelSelectionSummary` as text, laid out as mclust prints ``summary(mclustBIC)``,
    ``mclustICL`` and ``summary(Mclust)``."""
    lines = [
        f"model-selection summary (mclust style): EM on {summary.dataset}, "
        f"n={summary.n_samples} training samples",
        "BIC in mclust's sign, 2 log L - p log n (totals, bigger is better; the runner's",
        "grid table and metrics.json hold -2 log L + p log n, the negative):",
    ]
    lines += _grid_lines(summary, summary.bic)
    if summary.top_bic:
        lines.append(f"top {len(summary.top_bic)} models by BIC:")
        lines += _top_lines(summary, summary.top_bic, "BIC")
    if summary.icl:
        lines.append("")
        lines.append(
            "ICL in mclust's sign, BIC + 2 sum_n log max_k z_nk (mclust's icl(); "
            "Biernacki et al. 2000):"
        )
        lines += _grid_lines(summary, summary.icl)
        if summary.top_icl:
            lines.append(f"top {len(summary.top_icl)} models by ICL:")
            lines += _top_lines(summary, summary.top_icl, "ICL")
    if summary.log_evidence:
        lines.append("")
        lines.append(
            "Bayesian model selection: 2 log p(X) under the prior (totals, bigger is "
            "better; on BIC's scale, which approximates it):"
        )
        lines += _grid_lines(summary, summary.log_evidence)
        if summary.log_evidence_stderr:
            worst = max(summary.log_evidence_stderr.values())
            lines.append(f"  (Monte Carlo standard error of each cell at most {worst:.3f})")
        if summary.top_evidence:
            lines.append(f"top {len(summary.top_evidence)} models by log evidence:")
            lines += _top_lines(summary, summary.top_evidence, "2logZ")
    best = summary.best
    if best:
        k = best["n_components"]
        lines.append("")
        lines.append(
            f"BIC-best model: {summary.label(best['covariance_type'])}, "
            f"{k} component{'s' if k > 1 else ''} (the grid's fit, not refitted)"
        )
        head = ("log-likelihood", "n", "df", "BIC", "ICL")
        cells = (
            format(best["log_likelihood_total"], ".3f"),
            str(best["n_samples"]),
            str(best["n_parameters"]),
            format(best["bic"], ".3f"),
            "-" if best.get("icl") is None else format(best["icl"], ".3f"),
        )
        widths = [max(len(h), len(c)) for h, c in zip(head, cells)]
        lines.append("  " + "  ".join(h.rjust(w) for h, w in zip(head, widths)))
        lines.append("  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths)))
        lines.append("  clustering table (hard assignments of the training data):")
        width = max(6, *(len(str(s)) for s in best["cluster_sizes"]))
        lines.append("    component " + "".join(f"  {j:>{width}}" for j in range(k)))
        lines.append("    size      " + "".join(f"  {s:>{width}}" for s in best["cluster_sizes"]))
        lines.append("    weight    " + "".join(f"  {w:>{width}.4f}" for w in best["weights"]))
        lines.append(
            "  classification uncertainty (1 - max responsibility): mean "
            f"{best['uncertainty_mean']:.4f}, max {best['uncertainty_max']:.4f}; per point "
            "in uncertainty.csv"
        )
    return "\n".join(lines)
