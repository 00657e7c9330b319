"""``posterior.png``: per sampled method (NUTS, SMC), from posterior.npz and metrics.json only.
SMC's "chains" are its independent runs, their draws its final particles.

One block of rows per method:

- the posterior of the log-likelihood per sample (histogram) with every method's value
  as a vertical line, its trace per chain, and the relabelled component means of the
  first plotted feature next to every method's means;
- a trace plot (per chain) and a rank plot (Vehtari et al. 2021: per chain, the histogram
  of the draws' ranks among all chains' draws; flat when the chains mix) of the
  log-likelihood, every relabelled weight and every component's mean of the first plotted
  feature, each titled with its rank-normalised r-hat. A small weight that one chain
  never visits shows as a trace apart and a rank plot far from flat, even when the
  log-likelihood mixes.
"""

from __future__ import annotations

import io
import textwrap

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments import results_io  # noqa: E402
from experiments.metrics import match_components  # noqa: E402
from jaxgmm.bayes.diagnostics import rank_rhat  # noqa: E402

UNITS = "nats per sample"
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
RANK_BINS = 20


def _save(fig, path):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    with results_io.atomic_open(path, "wb") as f:
        f.write(buffer.getvalue())


def _estimate_kind(row):
    summary = (row.get("extra") or {}).get("params_summary")
    if summary is None and row.get("point_estimate") and row.get("prior") not in (None, "none"):
        summary = "MAP"
    return summary


def _feature(run):
    """Index and display name of the first plotted feature."""
    raw = [str(n) for n in run.data["feature_names"]]
    suffix = " (standardised)" if run.metrics["data"].get("standardized") else ""
    chosen = (run.config.get("plot") or {}).get("features")
    index = raw.index(chosen[0]) if chosen else 0
    return index, raw[index] + suffix


def _by_chain(values, chains):
    """(n_chains, n_draws) from flat draws and their chain index (chains of equal length)."""
    ids = np.unique(chains)
    return np.stack([values[chains == c] for c in ids])


def _mixing_quantities(draws, feature, feature_name):
    """[(label, flat draws)] of the log-likelihood, each weight, each component's mean."""
    out = []
    if "log_likelihood" in draws:
        out.append((f"log-likelihood ({UNITS})", draws["log_likelihood"]))
    if "weights" in draws:
        for k in range(draws["weights"].shape[1]):
            out.append((f"weight of component {k}", draws["weights"][:, k]))
    if "means" in draws:
        for k in range(draws["means"].shape[1]):
            out.append((f"mean of {feature_name}, component {k}", draws["means"][:, k, feature]))
    return out


def _axis_words(method):
    """(what a chain is, what its x axis counts): SMC's "chains" are its independent runs,
    their draws the final particles (in a random order)."""
    if method == "smc":
        return "run", "particle (random order)"
    return "chain", "draw (after warm-up)"


def _trace_and_rank(ax_trace, ax_rank, label, per_chain, words=("chain", "draw (after warm-up)")):
    n_chains, n_draws = per_chain.shape
    unit, index_label = words
    for c in range(n_chains):
        ax_trace.plot(np.arange(1, n_draws + 1), per_chain[c], lw=0.6, alpha=0.75,
                      color=COLORS[c % len(COLORS)], label=f"{unit} {c}")  # fmt: skip
    r_hat = float(rank_rhat(per_chain)) if n_chains > 1 else float("nan")
    verdict = "" if not np.isfinite(r_hat) else (" (mixed)" if r_hat < 1.01 else " (NOT mixed)")
    ax_trace.set_title(f"{label}: trace, rank r-hat {r_hat:.3f}{verdict}", fontsize=9)
    ax_trace.set_xlabel(index_label, fontsize=8)
    ax_trace.tick_params(labelsize=7)
    flat = per_chain.ravel()
    ranks = np.empty(flat.size)
    ranks[np.argsort(flat, kind="mergesort")] = np.arange(flat.size)
    ranks = ranks.reshape(per_chain.shape)
    edges = np.linspace(0, flat.size, RANK_BINS + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    for c in range(n_chains):
        counts, _ = np.histogram(ranks[c], bins=edges)
        ax_rank.step(centres, counts, where="mid", color=COLORS[c % len(COLORS)], lw=1.2)
    expected = n_draws / RANK_BINS
    ax_rank.axhline(expected, color="0.3", ls="--", lw=0.8, label="uniform (mixing)")
    ax_rank.set_ylim(0, max(3 * expected, ax_rank.get_ylim()[1]))
    ax_rank.set_title(f"{label}: rank plot per {unit}", fontsize=9)
    ax_rank.set_xlabel("rank among all draws", fontsize=8)
    ax_rank.tick_params(labelsize=7)


def plot_posterior(run, path):
    """Write ``path`` (posterior.png) for every method with draws in posterior.npz; see
    the module docstring. ``run``: an `experiments.plot.Run`."""
    methods = sorted({k.split("/")[0] for k in run.posterior})
    points = run.methods_with_params()
    reference_method = next(
        (m for m in points if run.metrics["methods"][m].get("point_estimate")), None
    )
    method_color = {m: COLORS[i % len(COLORS)] for i, m in enumerate(run.metrics["methods"])}
    styles = ["-", "--", "-.", ":"]
    feature, feature_name = _feature(run)
    component_colors = plt.get_cmap("Pastel1").colors
    blocks = []
    for method in methods:
        draws = results_io.group(run.posterior, method)
        blocks.append((method, draws, _mixing_quantities(draws, feature, feature_name)))
    heights = []
    for _, _, quantities in blocks:
        heights += [4.0] + [2.3] * len(quantities)
    total = sum(heights) + 1.0
    fig = plt.figure(figsize=(17, total))
    grid = fig.add_gridspec(
        len(heights), 6, height_ratios=heights, hspace=0.8, wspace=0.7,
        top=1 - 0.9 / total, bottom=0.3 / total, left=0.05, right=0.98,
    )  # fmt: skip
    row = 0
    for method, draws, quantities in blocks:
        ax_ll, ax_trace, ax_mu = (fig.add_subplot(grid[row, 2 * i : 2 * i + 2]) for i in range(3))
        extra = run.metrics["methods"].get(method, {}).get("extra") or {}
        chains = draws.get("chain")
        unit, index_label = words = _axis_words(method)
        if "log_likelihood" in draws:
            ll_draws = draws["log_likelihood"]
            chains = np.zeros(len(ll_draws), dtype=int) if chains is None else chains
            ax_ll.hist(ll_draws, bins=40, density=True, color="0.75", label=f"{method} draws")
            for i, m in enumerate(points):
                ll = run.metrics["methods"][m].get("train_log_likelihood")
                summary = _estimate_kind(run.metrics["methods"][m])
                if ll is not None:
                    ax_ll.axvline(
                        ll, color=method_color[m], lw=2, ls=styles[i % len(styles)],
                        label=f"{m}{f' ({summary})' if summary else ''}: {ll:.4f}",
                    )  # fmt: skip
            ax_ll.set(xlabel=f"log-likelihood ({UNITS})", ylabel="posterior density",
                      title=f"{method}: log-likelihood of the draws")  # fmt: skip
            ax_ll.legend(fontsize=8)
            for c in np.unique(chains):
                values = ll_draws[chains == c]
                ax_trace.plot(np.arange(1, len(values) + 1), values, lw=0.8, alpha=0.8,
                              label=f"{unit} {c}")  # fmt: skip
            ax_trace.set(xlabel=index_label, ylabel=f"log-likelihood ({UNITS})")
            # The runner's census: which MAP mode each chain's draws sit nearest.
            verdict = extra.get("chains_summary") or extra.get("runs_summary")
            title = f"{method}: trace per {unit}"
            if verdict:
                title += "\n" + "\n".join(textwrap.wrap(verdict, 90))
            ax_trace.set_title(title, fontsize=11 if not verdict else 7.5)
            ax_trace.legend(fontsize=8)
        if "means" in draws:
            means = draws["means"]  # (S, K, D)
            reference = run.params[f"{reference_method}/means"] if reference_method else means[0]
            relabelled = np.stack([d[match_components(reference, d)] for d in means])
            for k in range(means.shape[1]):
                ax_mu.hist(
                    relabelled[:, k, feature], bins=40, density=True,
                    color=component_colors[k % len(component_colors)],
                    edgecolor="0.5", linewidth=0.3, label=f"component {k} draws",
                )  # fmt: skip
            for i, m in enumerate(points):
                estimate = run.params[f"{m}/means"]
                for k, value in enumerate(estimate[match_components(reference, estimate), feature]):
                    ax_mu.axvline(value, color=method_color[m], lw=1.6,
                                  ls=styles[i % len(styles)], label=m if k == 0 else None)  # fmt: skip
            ax_mu.set(
                xlabel=f"component mean of {feature_name} "
                f"(components matched to {reference_method or 'draw 0'})",
                ylabel="posterior density",
                title=f"{method}: component means vs each method's",
            )
            ax_mu.legend(fontsize=8)
        row += 1
        if chains is None:
            chains = np.zeros(len(quantities[0][1]), dtype=int) if quantities else None
        for label, values in quantities:
            ax_t = fig.add_subplot(grid[row, 0:4])
            ax_r = fig.add_subplot(grid[row, 4:6])
            _trace_and_rank(ax_t, ax_r, f"{method}: {label}", _by_chain(values, chains), words)
            row += 1
    fig.suptitle(
        f"{run.title}: posterior draws vs point estimates; trace and rank plots of the "
        "relabelled draws per chain (smc: per run)",
        y=1 - 0.25 / total,
    )
    _save(fig, path)
