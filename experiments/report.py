"""The comparison table a run prints: one row per method (log-likelihoods, bound, prior,
BIC/AIC, ARI, recovery, timings, convergence, degeneracies), the methods' posterior and
variational diagnostics under it, and the model-selection grid; all read from the
``metrics.json`` dict, so a table can be re-printed from a run folder."""

from __future__ import annotations


def _fmt(value, spec):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


TABLE_COLUMNS = (
    # header, width, getter, format
    ("method", 8, lambda m, r: m, ""),
    ("train ll", 10, lambda m, r: r.get("train_log_likelihood"), ".5f"),
    ("test ll", 10, lambda m, r: r.get("test_log_likelihood"), ".5f"),
    ("bound", 10, lambda m, r: r.get("bound_final"), ".5f"),
    ("bound name", 13, lambda m, r: r.get("bound_name"), ""),
    ("prior", 17, lambda m, r: r.get("prior"), ""),
    ("log prior", 10, lambda m, r: r.get("log_prior_total"), ".3f"),
    ("BIC", 10, lambda m, r: r.get("bic"), ".2f"),
    ("AIC", 10, lambda m, r: r.get("aic"), ".2f"),
    ("ARI", 6, lambda m, r: r.get("ari"), ".3f"),
    ("mean err", 8, lambda m, r: (r.get("recovery") or {}).get("means_rmse"), ".4f"),
    ("iters", 6, lambda m, r: r.get("n_iter"), "d"),
    ("compile s", 9, lambda m, r: r.get("compile_s"), ".2f"),
    ("fit s", 8, lambda m, r: r.get("fit_s"), ".3f"),
    ("conv", 4, lambda m, r: r.get("converged"), ""),
    ("degenerate", 10, lambda m, r: _degeneracy_text(r.get("degeneracies")), ""),
)


# Method extras shown under the table: (key in row["extra"], label, format).
EXTRA_COLUMNS = (
    ("elbo", "ELBO", ".5f"),
    ("elbo_stderr", "+-", ".5f"),
    ("log_marginal_is", "IS log p(X)", ".5f"),
    ("elbo_below_is", "ELBO <= IS", ""),
    ("r_hat_max", "r-hat max", ".4f"),
    ("ess_min", "ESS min", ".0f"),
    ("divergences", "divergences", "d"),
    ("plug_in_log_likelihood", "plug-in ll (posterior mean)", ".5f"),
    ("posterior_mean_log_likelihood", "E[ll | X]", ".5f"),
    ("log_predictive_density_test", "held-out log pred. density", ".5f"),
    ("active_components", "active components", ""),
    ("largest_inactive_weight", "largest inactive E[weight]", ".2e"),
)


def _degeneracy_text(degeneracies):
    if not degeneracies:
        return "none"
    return ",".join(f"{d['kind'].split('_')[0]}:{d['component']}" for d in degeneracies)


def format_table(metrics):
    """The comparison table of a run's ``metrics`` (the ``metrics.json`` dict), as text."""
    lines = [
        f"{metrics['name']}: {metrics['data']['dataset']}, n_train={metrics['data']['n_train']}, "
        f"n_test={metrics['data']['n_test']}, K={metrics['spec']['n_components']} "
        f"{metrics['spec']['covariance_type']}, {metrics['dtype']} on {metrics['jax_backend']}"
        "  (ll, bound: nats per sample)",
        "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w, _, _) in enumerate(TABLE_COLUMNS)),
    ]
    for method, row in metrics["methods"].items():
        cells = []
        for i, (_, width, get, spec) in enumerate(TABLE_COLUMNS):
            text = _fmt(get(method, row), spec)
            cells.append(text.rjust(width) if i else text.ljust(width))
        lines.append("  ".join(cells))
    details = [
        f"  {method}: "
        + ", ".join(
            f"{label} {_fmt(row['extra'][key], spec)}"
            for key, label, spec in EXTRA_COLUMNS
            if row.get("extra", {}).get(key) is not None
        )
        for method, row in metrics["methods"].items()
        if any(row.get("extra", {}).get(key) is not None for key, _, _ in EXTRA_COLUMNS)
    ]
    if details:
        lines.append("")
        lines.append("posterior / variational diagnostics (per sample unless noted):")
        lines.extend(details)
    defaults = sorted(
        {r["prior"] for r in metrics["methods"].values() if "(default)" in (r.get("prior") or "")}
    )
    if defaults:
        lines.append(
            "  (default) prior: model.prior is null, so methods that need a prior use "
            "conjugate with data defaults; set model.prior to choose"
        )
    grid = metrics.get("model_selection")
    if grid:
        lines.append("")
        lines.append("model selection (EM):")
        lines.append(
            f"{'covariance':<10}  {'K':>3}  {'params':>6}  {'train ll':>10}  {'test ll':>10}  "
            f"{'BIC':>10}  {'AIC':>10}  {'conv':>4}"
        )
        for r in grid["rows"]:
            if "error" in r:
                lines.append(
                    f"{r['covariance_type']:<10}  {r['n_components']:>3}  error: {r['error']}"
                )
                continue
            lines.append(
                f"{r['covariance_type']:<10}  {r['n_components']:>3}  {r['n_parameters']:>6}  "
                f"{_fmt(r['train_log_likelihood'], '.5f'):>10}  "
                f"{_fmt(r['test_log_likelihood'], '.5f'):>10}  {r['bic']:>10.2f}  "
                f"{r['aic']:>10.2f}  {_fmt(r['converged'], ''):>4}"
            )
        for key, label in (
            ("best_bic", "BIC"),
            ("best_aic", "AIC"),
            ("best_test_log_likelihood", "held-out ll"),
        ):
            best = grid.get(key)
            if best:
                lines.append(
                    f"best by {label}: {best['covariance_type']}, K={best['n_components']}"
                )
    return "\n".join(lines)
