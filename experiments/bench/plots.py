"""The benchmark's figures: ``bench.png`` (seconds per iteration, EM or for the ``-vb``
tools VB, per size, tool (one colour each) and dtype (float64 hatched); "n/a" where a tool was skipped or failed) and
``scaling.png`` (jaxgmm over N, K, D)."""

from __future__ import annotations

import numpy as np


def plot_results(out, rows, scaling):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted(
        {(r["n_samples"], r["n_features"], r["n_components"], r["covariance_type"]) for r in rows}
    )
    series = sorted({(r["tool"], r["dtype"]) for r in rows})
    # One colour per tool (tab10 has more colours than there are tools), float64 hatched:
    # with one colour per (tool, dtype) series tab10 ran out and repeated a colour.
    tools = sorted({tool for tool, _ in series})
    colour = {tool: plt.get_cmap("tab10")(i % 10) for i, tool in enumerate(tools)}
    fig, ax = plt.subplots(figsize=(3.8 + 2.2 * len(labels), 4))
    width = 0.8 / max(len(series), 1)
    for i, (tool, dtype) in enumerate(series):
        vals = [
            next(
                (
                    r["s_per_iter"]
                    for r in rows
                    if (r["n_samples"], r["n_features"], r["n_components"], r["covariance_type"])
                    == lab
                    and r["tool"] == tool
                    and r["dtype"] == dtype
                ),
                np.nan,
            )
            for lab in labels
        ]
        ax.bar(
            np.arange(len(labels)) + i * width,
            vals,
            width,
            label=f"{tool} {dtype}",
            color=colour[tool],
            hatch="//" if dtype == "float64" else None,
            edgecolor="white" if dtype == "float64" else None,
        )
        for j, val in enumerate(vals):
            if np.isnan(val):  # skipped (unsupported dtype) or failed: say so, not a gap
                ax.text(
                    j + i * width,
                    0.02,
                    "n/a",
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    transform=ax.get_xaxis_transform(),
                )
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2)
    ax.set_xticklabels([f"N={n:.0e}\nD={d} K={k}\n{c}" for n, d, k, c in labels])
    ax.set_yscale("log")
    ax.set_ylabel("seconds per iteration (EM; VB for *-vb)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out / "bench.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (axis, key, name) in zip(
        axes, [("n", "n_samples", "N"), ("k", "n_components", "K"), ("d", "n_features", "D")]
    ):
        pts = [r for r in scaling if r["axis"] == axis]
        ax.loglog([r[key] for r in pts], [r["s_per_iter"] for r in pts], "o-")
        ax.set_xlabel(name)
        ax.set_ylabel("s / iteration (jaxgmm f32 full)")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=120)
    plt.close(fig)
