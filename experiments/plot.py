"""Figures of a run, drawn from its files only: ``python -m experiments.plot results/iris``.

Reads config.yaml, metrics.json, traces.csv, params.npz, data.npz and, when present,
history.npz, posterior.npz; never refits. Figures (PNG, written atomically):

- ``convergence.png``: one panel per method on its own y range: its log-likelihood (and
  log posterior with a prior), its bound or objective (SVI's one-step ELBO faint, its
  moving mean with a +-1 sd band and the final n_eval_samples ELBO with its error bar)
  and the bound's target (EM's per iteration; log p(X) with its +-3 se band); under
  them, every method's distance to its own final objective (log scale) and every
  bound's gap to its target (symmetric log: a negative gap is drawn, never clipped).
- ``final_values.png``: every method's final train / held-out log-likelihood,
  objective, bound, target, log evidence and draws' log-likelihood, with +-3 se bars.
- ``clusters.png``: data with each component's 1- and 2-sigma ellipses, one panel per
  method (plus the shared initialisation and, for generated data, the truth); for 1-D
  data, component densities over a histogram.
- ``posterior.png``: for methods with posterior draws (NUTS), the posterior of the
  log-likelihood per sample, its trace per chain, and the relabelled means next to every
  method's estimates; trace and rank plots per chain of the log-likelihood and the
  relabelled weights and means (`experiments.plot_posterior`). Sampled methods are left
  out of ``convergence.png``.
- ``model_selection.png``: BIC/AIC and held-out log-likelihood over the grid.
- ``model_selection_best.png``: the BIC-best grid cell's clusters (its fit, from
  model_selection.npz); ``uncertainty.png``: its classification uncertainty per point
  (uncertainty.csv), mclust-style, and the sorted uncertainties.
- ``em_animation.gif``: EM's ellipses over iterations (only when history.npz exists).
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402

from experiments import results_io  # noqa: E402
from jaxgmm.model import dense_covariances  # noqa: E402

UNITS = "nats per sample"
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _save(fig, path):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    with results_io.atomic_open(path, "wb") as f:
        f.write(buffer.getvalue())


class Run:
    """The files of a run folder, loaded once."""

    def __init__(self, folder):
        self.folder = Path(folder)
        if not (self.folder / "metrics.json").is_file():
            raise FileNotFoundError(f"{self.folder}: no metrics.json (not a finished run folder)")
        self.metrics = results_io.read_json(self.folder / "metrics.json")
        self.config = yaml.safe_load((self.folder / "config.yaml").read_text())
        self.traces = results_io.read_traces(self.folder / "traces.csv")
        self.params = results_io.read_npz(self.folder / "params.npz")
        self.data = results_io.read_npz(self.folder / "data.npz")
        self.history = results_io.read_npz(self.folder / "history.npz")
        self.posterior = results_io.read_npz(self.folder / "posterior.npz")

    @property
    def title(self):
        m = self.metrics
        spec = m["spec"]
        return (
            f"{m['name']}: {m['data']['dataset']}, K={spec['n_components']} "
            f"{spec['covariance_type']}, n={m['data']['n_train']}"
        )

    def methods_with_params(self):
        return [m for m in self.metrics["methods"] if f"{m}/means" in self.params]


# ------------------------------------------------------------------ convergence


def _smooth(values, window):
    """(centred moving average, moving standard deviation) of ``values`` over ``window``
    points (shorter at the ends), NaN-aware."""
    values = np.asarray(values, np.float64)
    n = values.size
    half = max(window // 2, 0)
    mean = np.empty(n)
    std = np.empty(n)
    for i in range(n):
        chunk = values[max(0, i - half) : i + half + 1]
        chunk = chunk[np.isfinite(chunk)]
        mean[i] = chunk.mean() if chunk.size else np.nan
        std[i] = chunk.std() if chunk.size > 1 else 0.0
    return mean, std


def _is_stochastic(run, method):
    """Whether a method's traced bound is a one-step stochastic estimate (SVI's ELBO, not
    auto_delta's log joint)."""
    extra = run.metrics["methods"].get(method, {}).get("extra") or {}
    return method == "svi" and extra.get("guide") != "auto_delta"


def _ledger_of(run, method):
    return run.metrics["methods"].get(method, {}).get("ledger") or {}


def _final_objective(run, method, t):
    """The value the approach panel measures each iterate against: the method's final
    objective (the ledger's), else its trace's last finite value."""
    value = _ledger_of(run, method).get("objective_value")
    if value is None:
        finite = t["bound"][np.isfinite(t["bound"])]
        value = finite[-1] if finite.size else np.nan
    return value


def _method_panel(ax, run, method, t, color):
    """One method's trace: its log-likelihood, its bound (or objective) and the bound's
    target, on the method's own y range."""
    x = t["iteration"]
    entry = _ledger_of(run, method)
    values = []
    if entry.get("objective") == "log-likelihood":
        ax.plot(x, t["log_likelihood"], "-", color="0.35", lw=1.4, label="log-likelihood")
        values.append(t["log_likelihood"])
    else:
        # Not what this method optimises (a log posterior, an ELBO lies far below it):
        # on its own axis, so that the approach of the method's own quantity shows.
        twin = ax.twinx()
        twin.plot(x, t["log_likelihood"], "-", color="0.6", lw=1.0)
        twin.set_ylabel("log-likelihood (grey, right axis)", color="0.45", fontsize=8)
        twin.tick_params(axis="y", colors="0.45", labelsize=7)
        twin.ticklabel_format(axis="y", useOffset=False)
    if "log_prior" in t:
        log_posterior = t["log_likelihood"] + t["log_prior"]
        ax.plot(x, log_posterior, "-", color="black", lw=1.4,
                label="log posterior (ll + log prior/N)")  # fmt: skip
        values.append(log_posterior)
    name = t["bound_name"]
    if _is_stochastic(run, method):
        window = max(5, len(x) // 25)
        mean, std = _smooth(t["bound"], window)
        ax.plot(x, t["bound"], "-", color=color, lw=0.5, alpha=0.25,
                label=f"{name} (one-step estimate)")  # fmt: skip
        ax.plot(x, mean, "-", color=color, lw=2, label=f"{name}, moving mean ({window} steps)")
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, label="+- 1 sd")
        values += [mean - std, mean + std]
        if entry.get("bound") is not None:
            se = entry.get("bound_stderr") or 0.0
            ax.errorbar([x[-1]], [entry["bound"]], yerr=[3 * se], fmt="o", color=color,
                        capsize=4, label=f"final ELBO {entry['bound']:.5f} (+- 3 se)")  # fmt: skip
            values.append(np.array([entry["bound"]]))
    else:
        style = "--" if name in ("em_bound", "em_map_bound", "elbo") else "-"
        label = f"{name} (bound)" if entry.get("bound_name") else f"{name} (objective)"
        ax.plot(x, t["bound"], style, color=color, lw=1.8, label=label)
        values.append(t["bound"])
    if "target" in t:
        ax.plot(x, t["target"], ":", color="crimson", lw=1.6,
                label=f"target: {entry.get('target_name') or 'what the bound is below'}")  # fmt: skip
        values.append(t["target"])
    elif entry.get("target") is not None:
        target, se = entry["target"], entry.get("target_stderr") or 0.0
        ax.axhline(target, color="crimson", ls=":", lw=1.6,
                   label=f"target {entry['target_name']} ({entry['target_source']})")  # fmt: skip
        if se:
            ax.axhspan(target - 3 * se, target + 3 * se, color="crimson", alpha=0.12,
                       label="target +- 3 se")  # fmt: skip
        values.append(np.array([target]))
    missing = entry.get("bound_name") and "target" not in t and entry.get("target") is None
    # The y range from the second iterate on, so the approach stays visible after a poor
    # start (the first iterate may sit far below).
    skip = min(1, len(x) - 1)
    pooled = np.concatenate([np.ravel(v)[skip:] if v.size > 1 else np.ravel(v) for v in values])
    pooled = pooled[np.isfinite(pooled)]
    if pooled.size:
        low, high = pooled.min(), pooled.max()
        pad = 0.06 * max(high - low, 1e-9 * max(1.0, abs(high)))
        ax.set_ylim(low - pad, high + pad)
    if len(x) > 50:
        ax.set_xscale("log")
    objective = entry.get("objective") or "-"
    title = f"{method}: optimises {objective}"
    if missing:
        title += "\n" + textwrap.fill(f"({entry.get('note') or 'target not estimated'})", 60)
    ax.set(xlabel="iteration" + (" (log scale)" if len(x) > 50 else ""),
           ylabel=UNITS)  # fmt: skip
    ax.set_title(title, fontsize=10)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def _gaps(run, method, t):
    """(iterations, target - bound per iteration, standard error or None) of a method
    with a bound and a target, else None. EM: its per-iteration target; VB: the ELBO
    against log p(X); SVI: the smoothed one-step ELBO against log p(X), se from the
    evidence estimate."""
    entry = _ledger_of(run, method)
    if not entry.get("bound_name"):
        return None
    if "target" in t:
        return t["iteration"], t["target"] - t["bound"], None
    if entry.get("target") is None:
        return None
    bound = t["bound"]
    if _is_stochastic(run, method):
        bound, _ = _smooth(bound, max(5, len(bound) // 25))
    return t["iteration"], entry["target"] - bound, entry.get("target_stderr")


def plot_convergence(run, path):
    """convergence.png: a panel per method (its own y range) with its log-likelihood, its
    bound or objective and the bound's target; under them, every method's approach to
    its own final objective, |objective_t - final| on a log scale, and every bound's gap
    to its target on a symmetric-log scale (a negative gap, a bound above its target,
    shows below zero instead of being clipped)."""
    # Samplers' per-draw traces are not convergence curves: posterior.png shows them.
    sampled = {k.split("/")[0] for k in run.posterior}
    traces = {m: t for m, t in run.traces.items() if m not in sampled and len(t["iteration"])}
    n = max(len(traces), 1)
    fig = plt.figure(figsize=(max(4.6 * n, 10), 9.4))
    grid = fig.add_gridspec(2, max(n, 2))
    colors = {m: COLORS[i % len(COLORS)] for i, m in enumerate(run.metrics["methods"])}
    for i, (method, t) in enumerate(traces.items()):
        _method_panel(fig.add_subplot(grid[0, i]), run, method, t, colors[method])
    half = max(n, 2) // 2
    ax_approach = fig.add_subplot(grid[1, :half])
    ax_gap = fig.add_subplot(grid[1, half:])
    smallest, lowest, highest = [], [0.0], [0.0]
    for method, t in traces.items():
        final = _final_objective(run, method, t)
        values = t["bound"]
        if _is_stochastic(run, method):
            values, _ = _smooth(values, max(5, len(values) // 25))
        distance = np.abs(values - final)
        shown = distance > 0
        ax_approach.semilogy(t["iteration"][shown], distance[shown], "-", color=colors[method],
                             label=f"{method}: |{t['bound_name']} - final|")  # fmt: skip
        gaps = _gaps(run, method, t)
        if gaps is None:
            continue
        x, gap, se = gaps
        ax_gap.plot(x, gap, "-", color=colors[method],
                    label=f"{method}: target - {t['bound_name']}")  # fmt: skip
        if se:
            ax_gap.fill_between(x, gap - 3 * se, gap + 3 * se, color=colors[method], alpha=0.15)
        negative = np.isfinite(gap) & (gap < 0)
        if negative.any():
            ax_gap.plot(x[negative], gap[negative], "v", color="crimson", ms=4,
                        label=f"{method}: {negative.sum()} negative (bound above target)")  # fmt: skip
        finite = gap[np.isfinite(gap) & (gap != 0)]
        if finite.size:
            smallest.append(np.abs(finite).min())
            lowest.append(finite.min())
            highest.append(finite.max())
    ax_approach.set(xlabel="iteration", ylabel=f"{UNITS} (log scale)",
                    title="approach: distance to each method's own final objective")  # fmt: skip
    if ax_approach.lines:
        ax_approach.legend(fontsize=8)
    ax_approach.grid(alpha=0.3)
    if ax_gap.lines:
        linthresh = max(min(smallest), 1e-15) if smallest else 1e-12
        ax_gap.set_yscale("symlog", linthresh=linthresh)
        ax_gap.axhline(0.0, color="black", lw=0.8)
        # The limits hold every gap (a negative one included); the +-3 se bands of
        # estimated targets may reach beyond them.
        low = min(lowest)
        ax_gap.set_ylim(2.0 * low if low < 0 else -linthresh, 2.0 * max(highest) + linthresh)
        ax_gap.legend(fontsize=8)
    else:
        ax_gap.text(0.5, 0.5, "no method has both a bound and a target", ha="center",
                    va="center", transform=ax_gap.transAxes)  # fmt: skip
    ax_gap.set(xlabel="iteration", ylabel=f"{UNITS} (symmetric log scale)",
               title="bound gap: target - bound (>= 0 when the bound holds; band: +- 3 se)")  # fmt: skip
    ax_gap.grid(alpha=0.3)
    for ax in (ax_approach, ax_gap):
        if max((len(t["iteration"]) for t in traces.values()), default=0) > 50:
            ax.set_xscale("log")
    skipped = f"; {', '.join(sorted(sampled))}: see posterior.png" if sampled else ""
    fig.suptitle(f"{run.title}: each method's bound (or objective) and target{skipped}")
    fig.tight_layout()
    _save(fig, path)


# ------------------------------------------------------------------ final values


FINAL_QUANTITIES = (
    # label, getter(row, ledger) -> (value, stderr), marker
    ("train ll", lambda r, e: (r.get("train_log_likelihood"), None), "o"),
    ("test ll", lambda r, e: (r.get("test_log_likelihood"), None), "s"),
    ("objective", lambda r, e: (e.get("objective_value"), None), "P"),
    ("bound", lambda r, e: (e.get("bound"), e.get("bound_stderr")), "v"),
    ("target", lambda r, e: (e.get("target"), e.get("target_stderr")), "^"),
    ("log p(X)", lambda r, e: (e.get("log_evidence"), e.get("log_evidence_stderr")), "*"),
    ("draws ll", lambda r, e: (e.get("draws_log_likelihood"),
                               e.get("draws_log_likelihood_stderr")), "D"),
)  # fmt: skip


def plot_final_values(run, path):
    """final_values.png: every method's final train / held-out log-likelihood, objective,
    bound, target, log evidence and draws' log-likelihood (per sample), with 3-standard-
    error bars where a value is a Monte Carlo estimate; one row per method."""
    methods = list(run.metrics["methods"])
    fig, ax = plt.subplots(figsize=(11, 1.4 + 1.2 * len(methods)))
    n_q = len(FINAL_QUANTITIES)
    shown = set()
    for i, method in enumerate(methods):
        row = run.metrics["methods"][method]
        entry = row.get("ledger") or {}
        for j, (label, get, marker) in enumerate(FINAL_QUANTITIES):
            value, se = get(row, entry)
            if value is None or not np.isfinite(value):
                continue
            y = i + (j - (n_q - 1) / 2) * 0.11
            ax.errorbar(
                [value], [y], xerr=None if not se else [3 * se], fmt=marker,
                color=COLORS[j % len(COLORS)], ms=7, capsize=4,
                label=None if label in shown else label,
            )  # fmt: skip
            shown.add(label)
        if entry.get("gap") is not None:
            se = entry.get("gap_stderr")
            ax.annotate(
                f"gap {entry['gap']:.2e}" + (f" +- {se:.1e}" if se else ""),
                (1.0, i), xycoords=("axes fraction", "data"), xytext=(-4, 0),
                textcoords="offset points", ha="right", va="center", fontsize=8,
                color="crimson" if entry.get("holds") is False else "0.3",
            )  # fmt: skip
    ax.set_yticks(range(len(methods)), methods)
    ax.invert_yaxis()
    ax.set(xlabel=UNITS, title=f"{run.title}: final values (bars: +- 3 Monte Carlo se; "
           "gap = bound - target)")  # fmt: skip
    ax.ticklabel_format(axis="x", useOffset=False)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    _save(fig, path)


# ---------------------------------------------------------------------- clusters


def _feature_names(run):
    suffix = " (standardised)" if run.metrics["data"].get("standardized") else ""
    return [str(n) + suffix for n in run.data["feature_names"]]


def _feature_pair(run):
    names = _feature_names(run)
    raw = [str(n) for n in run.data["feature_names"]]
    chosen = (run.config.get("plot") or {}).get("features")
    if chosen:
        return [raw.index(c) for c in chosen], names
    return [0, 1], names


def _ellipses(ax, means, covariances, pair, n_components, alpha=1.0):
    for k in range(n_components):
        cov = covariances[k][np.ix_(pair, pair)]
        values, vectors = np.linalg.eigh(cov)
        angle = math.degrees(math.atan2(vectors[1, 1], vectors[0, 1]))
        color = COLORS[k % len(COLORS)]
        for n_sigma, style in ((1, "-"), (2, "--")):
            width, height = 2 * n_sigma * np.sqrt(np.maximum(values[::-1], 0))
            ax.add_patch(
                Ellipse(
                    means[k, pair], width, height, angle=angle, fill=False, edgecolor=color,
                    linestyle=style, lw=1.6, alpha=alpha,
                )
            )  # fmt: skip
        ax.plot(*means[k, pair], "x", color="black", ms=8, mew=2)


def _full(covariances, cov_type, n_components, n_features):
    """Covariances of any family as (n_components, n_features, n_features)."""
    return dense_covariances(
        np.asarray(covariances, dtype=np.float64), cov_type, n_components, n_features
    )


def _component_densities(grid, weights, means, covariances):
    """(K, G) weighted 1-D normal densities on ``grid``."""
    var = np.asarray(covariances)[:, 0, 0][:, None]
    return (
        weights[:, None]
        * np.exp(-0.5 * (grid[None] - means[:, :1]) ** 2 / var)
        / np.sqrt(2 * np.pi * var)
    )


def _panels(run):
    """(title, weights, means, covariances, labels) for init, every method, the truth."""
    panels = []
    init = results_io.group(run.params, "init")
    if init:
        panels.append(
            ("initial (shared)", init["weights"][0], init["means"][0], init["covariances"][0], None)
        )
    for method in run.methods_with_params():
        p = results_io.group(run.params, method)
        row = run.metrics["methods"][method]
        ll = row.get("train_log_likelihood")
        summary = _estimate_kind(row)
        title = method + (f" ({summary})" if summary else "")
        title += "" if ll is None else f"\ntrain ll {ll:.4f} {UNITS}"
        panels.append((title, p["weights"], p["means"], p["covariances"], p["labels_train"]))
    true = results_io.group(run.data, "true")
    cov_type = run.metrics["spec"]["covariance_type"]
    n_features = run.data["x_train"].shape[1]
    panels = [(t, w, m, _full(c, cov_type, len(w), n_features), lab) for t, w, m, c, lab in panels]
    if true:
        panels.append(
            (
                "true parameters",
                true["weights"],
                true["means"],
                true["covariances"],
                run.data.get("labels_train"),
            )
        )
    return panels


def plot_clusters(run, path):
    x = run.data["x_train"]
    panels = _panels(run)
    n = len(panels)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.6 * cols, 4.2 * rows), squeeze=False, sharex=True, sharey=True
    )
    if x.shape[1] == 1:
        grid = np.linspace(x.min() - 0.1 * np.ptp(x), x.max() + 0.1 * np.ptp(x), 600)
        for ax, (title, w, m, c, _) in zip(axes.flat, panels, strict=False):
            heights, _, _ = ax.hist(
                x[:, 0], bins=40, density=True, color="0.85", label="data (train)"
            )
            comps = _component_densities(grid, w, m, c)
            ax.plot(grid, comps.sum(0), color="black", lw=3, alpha=0.35, label="mixture")
            for k in range(len(w)):
                color = COLORS[k % len(COLORS)]
                ax.plot(grid, comps[k], color=color, lw=1.4, label=f"component {k}")
                ax.axvline(m[k, 0], color=color, lw=1, ls=":")
            # Components at the reg_covar floor (one-point initialisations) are spikes;
            # keep the histogram's scale.
            ax.set_ylim(0, 1.35 * heights.max())
            ax.set(title=title, xlabel=_feature_names(run)[0], ylabel="density")
        axes.flat[0].legend(fontsize=8)
    else:
        pair, names = _feature_pair(run)
        for ax, (title, w, m, c, labels) in zip(axes.flat, panels, strict=False):
            colors = (
                "0.6" if labels is None else np.asarray(COLORS)[np.asarray(labels) % len(COLORS)]
            )
            ax.scatter(x[:, pair[0]], x[:, pair[1]], s=9, c=colors, alpha=0.55, linewidths=0)
            _ellipses(ax, np.asarray(m), np.asarray(c), pair, len(w))
            ax.set(title=title, xlabel=names[pair[0]], ylabel=names[pair[1]])
            ax.tick_params(labelbottom=True)
        from matplotlib.lines import Line2D

        handles = [
            Line2D([], [], color="black", ls="-", label="1 sigma"),
            Line2D([], [], color="black", ls="--", label="2 sigma"),
            Line2D([], [], color="black", marker="x", ls="", label="mean"),
        ]
        axes.flat[0].legend(handles=handles, fontsize=8, loc="best")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(f"{run.title}: components per method (colours: assigned component)")
    fig.tight_layout()
    _save(fig, path)


# --------------------------------------------------------------------- posterior


def _estimate_kind(row):
    """What a method's parameters are, for labels: its extra's ``params_summary``, or MAP
    for point estimates under a prior (None for maximum likelihood)."""
    summary = (row.get("extra") or {}).get("params_summary")
    if summary is None and row.get("point_estimate") and row.get("prior") not in (None, "none"):
        summary = "MAP"
    return summary


def plot_posterior(run, path):
    """posterior.png: see `experiments.plot_posterior` (trace and rank plots per chain of
    the relabelled weights, means and the log-likelihood, next to the point estimates)."""
    from experiments.plot_posterior import plot_posterior as draw  # it imports this module's peers

    draw(run, path)


# --------------------------------------------------------------- model selection


def plot_model_selection(run, path):
    rows = [r for r in run.metrics["model_selection"]["rows"] if "error" not in r]
    types = list(dict.fromkeys(r["covariance_type"] for r in rows))
    held_out = any(r.get("test_log_likelihood") is not None for r in rows)
    fig, (ax_ic, ax_ll) = plt.subplots(1, 2, figsize=(12, 4.6))
    for i, cov in enumerate(types):
        sel = sorted(
            (r for r in rows if r["covariance_type"] == cov), key=lambda r: r["n_components"]
        )
        k = [r["n_components"] for r in sel]
        color = COLORS[i % len(COLORS)]
        ax_ic.plot(k, [r["bic"] for r in sel], "o-", color=color, label=f"{cov}: BIC")
        ax_ic.plot(k, [r["aic"] for r in sel], "s--", color=color, mfc="none", label=f"{cov}: AIC")
        ax_ll.plot(
            k,
            [r["train_log_likelihood"] for r in sel],
            "o--",
            color=color,
            mfc="none",
            label=f"{cov}: train",
        )
        if held_out:
            ax_ll.plot(
                k,
                [r["test_log_likelihood"] for r in sel],
                "o-",
                color=color,
                label=f"{cov}: held-out",
            )
    best = run.metrics["model_selection"].get("best_bic")
    if best:
        r = next(
            r
            for r in rows
            if r["covariance_type"] == best["covariance_type"]
            and r["n_components"] == best["n_components"]
        )
        ax_ic.plot(
            r["n_components"],
            r["bic"],
            "*",
            color="black",
            ms=16,
            label=f"best BIC: {best['covariance_type']}, K={best['n_components']}",
        )
    ax_ic.set(
        xlabel="n_components K",
        ylabel="criterion (nats, total; lower is better)",
        title="BIC and AIC",
    )
    ax_ll.set(
        xlabel="n_components K",
        ylabel=f"log-likelihood ({UNITS})",
        title="train and held-out log-likelihood" if held_out else "train log-likelihood",
    )
    for ax in (ax_ic, ax_ll):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(
        f"{run.metrics['name']}: model selection by EM on {run.metrics['data']['dataset']}"
    )
    fig.tight_layout()
    _save(fig, path)


# ------------------------------------------------- model selection: the BIC-best model


def _best_model(run):
    """(entry, params) of the BIC-best grid cell: ``bic_best_model`` of metrics.json and
    the ``best_bic/...`` arrays of model_selection.npz; None when the run has neither."""
    entry = (run.metrics.get("model_selection") or {}).get("bic_best_model")
    arrays = results_io.group(results_io.read_npz(run.folder / "model_selection.npz"), "best_bic")
    if not entry or not arrays:
        return None
    return entry, arrays


def _read_uncertainty(path):
    """{split: (index (n,), label (n,), uncertainty (n,))} of an uncertainty.csv."""
    import csv

    parts = {}
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            part = parts.setdefault(row["split"], ([], [], []))
            part[0].append(int(row["index"]))
            part[1].append(int(row["label"]))
            part[2].append(float(row["uncertainty"]))
    return {k: tuple(np.asarray(a) for a in v) for k, v in parts.items()}


def _best_title(run, entry):
    from experiments.summary import mclust_name

    cov, k = entry["covariance_type"], entry["n_components"]
    name = mclust_name(cov, run.data["x_train"].shape[1])
    return f"BIC-best model: {cov} ({name}), K={k}, BIC {entry['bic']:.2f} (lower is better)"


def plot_best_model(run, path):
    """The BIC-best grid cell's clusters: the training data coloured by hard assignment,
    1- and 2-sigma ellipses (1-D: component densities over a histogram)."""
    entry, p = _best_model(run)
    x = run.data["x_train"]
    k = entry["n_components"]
    covs = _full(p["covariances"], entry["covariance_type"], k, x.shape[1])
    labels = p["labels_train"]
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    sizes = ", ".join(f"{s}" for s in entry["cluster_sizes"])
    weights = ", ".join(f"{w:.3f}" for w in entry["weights"])
    if x.shape[1] == 1:
        grid = np.linspace(x.min() - 0.1 * np.ptp(x), x.max() + 0.1 * np.ptp(x), 600)
        heights, _, _ = ax.hist(x[:, 0], bins=40, density=True, color="0.85", label="data")
        comps = _component_densities(grid, p["weights"], p["means"], covs)
        ax.plot(grid, comps.sum(0), color="black", lw=3, alpha=0.35, label="mixture")
        for j in range(k):
            ax.plot(grid, comps[j], color=COLORS[j % len(COLORS)], lw=1.4, label=f"component {j}")
        ax.set_ylim(0, 1.35 * heights.max())
        ax.set(xlabel=_feature_names(run)[0], ylabel="density")
        ax.legend(fontsize=8)
    else:
        pair, names = _feature_pair(run)
        colors = np.asarray(COLORS)[np.asarray(labels) % len(COLORS)]
        ax.scatter(x[:, pair[0]], x[:, pair[1]], s=10, c=colors, alpha=0.6, linewidths=0)
        _ellipses(ax, np.asarray(p["means"]), covs, pair, k)
        ax.set(xlabel=names[pair[0]], ylabel=names[pair[1]])
        from matplotlib.lines import Line2D

        ax.legend(
            handles=[
                Line2D([], [], color="black", ls="-", label="1 sigma"),
                Line2D([], [], color="black", ls="--", label="2 sigma"),
                Line2D([], [], color="black", marker="x", ls="", label="mean"),
            ],
            fontsize=8, loc="best",
        )  # fmt: skip
    ax.set_title(
        f"{run.metrics['name']}: {run.metrics['data']['dataset']}, training data coloured by "
        f"assigned component\n{_best_title(run, entry)}\ncluster sizes {sizes}; "
        f"weights {weights}",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, path)


def plot_uncertainty(run, path):
    """mclust's uncertainty plot for the BIC-best model: the training data on the plotted
    feature pair, each point's size and colour growing with its classification
    uncertainty 1 - max_k z_nk (1-D: against the feature), with the model's ellipses; and
    the uncertainties sorted, with mclust's 75% and 95% quantile cut points."""
    entry, p = _best_model(run)
    x = run.data["x_train"]
    _, _, uncertainty = _read_uncertainty(run.folder / "uncertainty.csv")["train"]
    k = entry["n_components"]
    # 1 - max_k z_nk lies in [0, 1 - 1/K].
    top = max(1.0 - 1.0 / k, 1e-12)
    fig, (ax, ax_sorted) = plt.subplots(
        1, 2, figsize=(12.4, 5.0), gridspec_kw={"width_ratios": [1.35, 1]}
    )
    order = np.argsort(uncertainty)  # the uncertain points drawn last, on top
    sizes = 6 + 120 * uncertainty / top
    if x.shape[1] == 1:
        xs, ys = x[order, 0], uncertainty[order]
        ax.set(xlabel=_feature_names(run)[0], ylabel="uncertainty 1 - max responsibility")
    else:
        pair, names = _feature_pair(run)
        xs, ys = x[order, pair[0]], x[order, pair[1]]
        covs = _full(p["covariances"], entry["covariance_type"], k, x.shape[1])
        _ellipses(ax, np.asarray(p["means"]), covs, pair, k, alpha=0.5)
        ax.set(xlabel=names[pair[0]], ylabel=names[pair[1]])
    points = ax.scatter(
        xs, ys, s=sizes[order], c=uncertainty[order], cmap="viridis", vmin=0.0, vmax=top,
        edgecolors="0.3", linewidths=0.3,
    )  # fmt: skip
    fig.colorbar(points, ax=ax, label="classification uncertainty 1 - max_k z_nk")
    ax.set_title(
        f"{_best_title(run, entry)}\nsize and colour: uncertainty (max {1 - 1 / k:.2f} with K={k})",
        fontsize=10,
    )
    ranked = np.sort(uncertainty)[::-1]
    ax_sorted.plot(np.arange(1, len(ranked) + 1), ranked, "-", color="black", lw=1.5)
    for q, style in ((0.75, ":"), (0.95, "--")):
        cut = np.quantile(uncertainty, q)
        ax_sorted.axhline(cut, color="0.4", ls=style, lw=1, label=f"{q:.0%} quantile {cut:.3g}")
    ax_sorted.set(
        xlabel="points, most uncertain first",
        ylabel="uncertainty 1 - max responsibility",
        title=f"sorted: mean {uncertainty.mean():.4f}, max {uncertainty.max():.4f}",
        ylim=(-0.02 * top, 1.05 * top),
    )
    ax_sorted.set_xscale("log")
    ax_sorted.legend(fontsize=8)
    ax_sorted.grid(alpha=0.3)
    fig.suptitle(
        f"{run.metrics['name']}: classification uncertainty of the BIC-best model "
        f"({run.metrics['data']['dataset']}, training data)"
    )
    fig.tight_layout()
    _save(fig, path)


# --------------------------------------------------------------------- animation


def animate_em(run, path, method="em", max_frames=60):
    from matplotlib.animation import FuncAnimation, PillowWriter

    hist = results_io.group(run.history, method)
    x = run.data["x_train"]
    n_frames_total = hist["means"].shape[0]
    frames = np.unique(np.round(np.geomspace(1, n_frames_total, max_frames)).astype(int) - 1)
    cov_type = run.metrics["spec"]["covariance_type"]
    fig, ax = plt.subplots(figsize=(6, 5))
    one_d = x.shape[1] == 1
    pair, names = ([0], None) if one_d else _feature_pair(run)

    def draw(frame):
        ax.clear()
        w, m = hist["weights"][frame], hist["means"][frame]
        c = _full(hist["covariances"][frame], cov_type, len(w), x.shape[1])
        if one_d:
            grid = np.linspace(x.min(), x.max(), 400)
            heights, _, _ = ax.hist(x[:, 0], bins=40, density=True, color="0.85")
            for k, density in enumerate(_component_densities(grid, w, m, c)):
                ax.plot(grid, density, color=COLORS[k % len(COLORS)])
                ax.axvline(m[k, 0], color=COLORS[k % len(COLORS)], lw=1, ls=":")
            ax.set_ylim(0, 1.35 * heights.max())
            ax.set(xlabel=_feature_names(run)[0], ylabel="density")
        else:
            ax.scatter(x[:, pair[0]], x[:, pair[1]], s=8, c="0.6", alpha=0.6, linewidths=0)
            _ellipses(ax, m, c, pair, len(w))
            ax.set(xlabel=names[pair[0]], ylabel=names[pair[1]])
        what = "component densities" if one_d else "1 and 2 sigma ellipses"
        ax.set_title(f"{run.metrics['name']}: {method}, iteration {frame} ({what})")
        return ()

    if not one_d:
        pad = 0.15 * np.ptp(x[:, pair], axis=0)
        lims = (x[:, pair].min(0) - pad, x[:, pair].max(0) + pad)

        def draw_fixed(frame):
            draw(frame)
            ax.set_xlim(lims[0][0], lims[1][0])
            ax.set_ylim(lims[0][1], lims[1][1])
            return ()
    else:
        draw_fixed = draw
    animation = FuncAnimation(fig, draw_fixed, frames=frames, blit=False)
    tmp = path.parent / f".{path.name}.tmp.gif"
    animation.save(tmp, writer=PillowWriter(fps=6))
    plt.close(fig)
    tmp.replace(path)


# ---------------------------------------------------------------------------- all


def plot_run(folder, animate=None):
    """Draw every figure of a run folder from its files; returns the paths written.

    Args:
        folder: the run folder.
        animate: draw em_animation.gif; None means whenever history.npz is present.
    """
    run = Run(folder)
    written = []
    if run.traces:
        written.append(run.folder / "convergence.png")
        plot_convergence(run, written[-1])
    if any((row.get("ledger") or {}) for row in run.metrics["methods"].values()):
        written.append(run.folder / "final_values.png")
        plot_final_values(run, written[-1])
    written.append(run.folder / "clusters.png")
    plot_clusters(run, written[-1])
    if run.posterior:
        written.append(run.folder / "posterior.png")
        plot_posterior(run, written[-1])
    if run.metrics.get("model_selection"):
        written.append(run.folder / "model_selection.png")
        plot_model_selection(run, written[-1])
        if _best_model(run) is not None:
            written.append(run.folder / "model_selection_best.png")
            plot_best_model(run, written[-1])
            if (run.folder / "uncertainty.csv").is_file():
                written.append(run.folder / "uncertainty.png")
                plot_uncertainty(run, written[-1])
    if (animate is None or animate) and results_io.group(run.history, "em"):
        written.append(run.folder / "em_animation.gif")
        animate_em(run, written[-1])
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.plot", description="Redraw a run's figures from its files."
    )
    parser.add_argument("folder", help="a run folder written by experiments.run")
    parser.add_argument(
        "--no-animate", action="store_true", help="skip the GIF even if history.npz exists"
    )
    args = parser.parse_args(argv)
    try:
        written = plot_run(args.folder, animate=False if args.no_animate else None)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
