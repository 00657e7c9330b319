"""The comparison table a run prints: one row per method (log-likelihoods, bound, prior,
BIC/AIC, ARI, recovery, timings, convergence, degeneracies), the methods' posterior and
variational diagnostics under it, the restarts when the one returned is not the best
overall, the model-selection grid and its mclust-style summary (`experiments.summary`),
and the run's warnings; all read from the
``metrics.json`` dict, so a table can be re-printed from a run folder.
``method_warnings`` writes the warnings of one method's row."""

from __future__ import annotations

import math

from experiments.summary import summarize


def _fmt(value, spec):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


def _converged_text(row):
    """yes, or no and why: "no (max_iter)", "no (stalled)", "no (nonfinite@3)"."""
    converged, status = row.get("converged"), row.get("status")
    if converged is None and status is None:
        return None
    if converged:
        return "yes"
    if status is None or status == "converged":
        return "no"
    if status == "nonfinite":
        at = (row.get("extra") or {}).get("nonfinite_iteration")
        status = "nonfinite" if at is None else f"nonfinite@{at}"
    return f"no ({status})"


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
    ("converged", 9, lambda m, r: _converged_text(r), ""),
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
    ("elpd_loo", "elpd LOO", ".5f"),
    ("pareto_k_over_0.7", "Pareto k > 0.7", "d"),
    ("elpd_waic", "elpd WAIC", ".5f"),
    ("active_components", "active components", ""),
    ("largest_inactive_weight", "largest inactive E[weight]", ".2e"),
)


def _degeneracy_text(degeneracies):
    if not degeneracies:
        return "none"
    return ",".join(f"{d['kind'].split('_')[0]}:{d['component']}" for d in degeneracies)


def _degeneracy_words(degeneracies):
    return ", ".join(
        f"component {d['component']} "
        + (
            f"collapsed (smallest covariance eigenvalue {d['value']:.3g})"
            if d["kind"] == "collapsed_covariance"
            else f"empty (weight {d['value']:.3g})"
            if d["kind"] == "empty_component"
            else d["kind"]
        )
        + f" from iteration {d['first_iteration']}"
        for d in degeneracies
    )


def restart_choice(row):
    """(best_non_degenerate, best_overall) restart dicts of a metrics row when they differ
    (the highest log-likelihood is degenerate, and a non-degenerate restart exists),
    else None. Each dict is a ``row["restarts"]`` entry; ``selected`` marks the one
    reported."""
    restarts = [r for r in row.get("restarts") or [] if r.get("log_likelihood") is not None]
    best = next((r for r in restarts if r.get("best_overall")), None)
    clean = [r for r in restarts if r.get("degenerate") is False]
    if best is None or not clean or not best.get("degenerate"):
        return None
    return max(clean, key=lambda r: r["log_likelihood"]), best


def _restart_text(restart):
    ll = restart.get("log_likelihood")
    parts = ["ll -" if ll is None else f"ll {ll:.5f} per sample"]
    if restart.get("bic") is not None:
        parts.append(f"BIC {restart['bic']:.2f}")
    if restart.get("degenerate"):
        parts.append(f"degenerate: {_degeneracy_words(restart.get('degeneracies') or [])}")
    return f"restart {restart['restart']} ({', '.join(parts)})"


def method_warnings(name, row, settings=None):
    """The warnings of one method's metrics row, as sentences starting with its name.

    Args:
        name: the method.
        row: its ``metrics.json["methods"]`` row (``status``, ``extra``,
            ``degeneracies``, ``restarts``, ``n_iter``).
        settings: its config block (a tolerance in it makes stopping at the iteration
            limit worth a warning), or None.
    """
    found = []
    status = row.get("status")
    extra = row.get("extra") or {}
    if status == "nonfinite":
        at = extra.get("nonfinite_iteration")
        kept = (
            "its initial parameters"
            if not row.get("n_iter")
            else f"the parameters of iteration {row['n_iter']}, the last finite ones"
        )
        found.append(
            f"{name}: non-finite values at iteration {at}: the fit stopped there and "
            f"reports {kept}, not an optimum; lower the learning rate, standardise the "
            "data (data.standardize: true) or use dtype: float64"
        )
    elif status == "stalled":
        found.append(
            f"{name}: the optimiser stopped moving at iteration {row.get('n_iter')} before "
            "meeting its tolerance (stalled): not converged; check the learning rate and "
            "schedule"
        )
    elif status == "max_iter" and settings and settings.get("tol"):
        found.append(
            f"{name}: stopped at the iteration limit ({row.get('n_iter')}) before the "
            f"change fell below {name}.tol={settings['tol']:g}"
        )
    elif status == "r_hat":
        found.append(
            f"{name}: chains have not mixed (r-hat max {extra.get('r_hat_max', math.nan):.3f}"
            " >= 1.05): the posterior summaries are not reliable; run longer or more chains"
        )
    if row.get("degeneracies"):
        found.append(f"{name}: degenerate result: {_degeneracy_words(row['degeneracies'])}")
    choice = restart_choice(row)
    selection = extra.get("selection")
    if choice is not None:
        clean, best = choice
        if clean.get("selected"):
            found.append(
                f"{name}: restart {best['restart']} has a higher log-likelihood "
                f"({best['log_likelihood']:.5f}) than the one reported, restart "
                f"{clean['restart']} ({clean['log_likelihood']:.5f}), but is degenerate "
                "(a collapsed component's likelihood grows without bound: a spurious "
                f"optimum); selection: {selection or 'non_degenerate'}"
            )
        else:
            found.append(
                f"{name}: the reported restart {best['restart']} is degenerate; the best "
                f"non-degenerate one, restart {clean['restart']}, reaches "
                f"{clean['log_likelihood']:.5f} (init.select: non_degenerate reports it)"
            )
    elif row.get("restarts") and row.get("degeneracies"):
        if all(r.get("degenerate") for r in row["restarts"]):
            n = len(row["restarts"])
            which = f"every one of the {n} restarts is" if n > 1 else "the only restart is"
            found.append(
                f"{name}: {which} degenerate; more restarts (init.n_init), a larger "
                "model.reg_covar or fewer components may give a non-degenerate fit"
            )
    return found


def format_table(metrics):
    """The comparison table of a run's ``metrics`` (the ``metrics.json`` dict), as text."""
    table = [
        [_fmt(get(method, row), spec) for _, _, get, spec in TABLE_COLUMNS]
        for method, row in metrics["methods"].items()
    ]
    # A column is as wide as its widest cell ("no (nonfinite@12)" is wider than "yes").
    widths = [
        max([width, len(header)] + [len(cells[i]) for cells in table])
        for i, (header, width, _, _) in enumerate(TABLE_COLUMNS)
    ]
    lines = [
        f"{metrics['name']}: {metrics['data']['dataset']}, n_train={metrics['data']['n_train']}, "
        f"n_test={metrics['data']['n_test']}, K={metrics['spec']['n_components']} "
        f"{metrics['spec']['covariance_type']}, {metrics['dtype']} on {metrics['jax_backend']}"
        "  (ll, bound: nats per sample)",
        "  ".join(
            h.rjust(w) if i else h.ljust(w)
            for i, ((h, _, _, _), w) in enumerate(zip(TABLE_COLUMNS, widths))
        ),
    ]
    for cells in table:
        lines.append(
            "  ".join(
                text.rjust(w) if i else text.ljust(w)
                for i, (text, w) in enumerate(zip(cells, widths))
            )
        )
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
    choices = {m: restart_choice(r) for m, r in metrics["methods"].items()}
    choices = {m: c for m, c in choices.items() if c is not None}
    if choices:
        lines.append("")
        lines.append("restarts (the highest log-likelihood is degenerate):")
        for method, (clean, best) in choices.items():
            pad = " " * len(method)
            for i, (label, restart) in enumerate(
                (("best non-degenerate", clean), ("best overall       ", best))
            ):
                mark = "  <- reported" if restart.get("selected") else ""
                lead = f"{method}:" if i == 0 else f"{pad} "
                lines.append(f"  {lead} {label} {_restart_text(restart)}{mark}")
    grid = metrics.get("model_selection")
    if grid:
        lines.append("")
        lines.append("model selection (EM; BIC, AIC, ICL: totals, lower is better):")
        lines.append(
            f"{'covariance':<10}  {'K':>3}  {'params':>6}  {'train ll':>10}  {'test ll':>10}  "
            f"{'BIC':>10}  {'AIC':>10}  {'ICL':>10}  {'conv':>4}"
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
                f"{r['aic']:>10.2f}  {_fmt(r.get('icl'), '.2f'):>10}  "
                f"{_fmt(r['converged'], ''):>4}"
            )
        for key, label in (
            ("best_bic", "BIC"),
            ("best_aic", "AIC"),
            ("best_icl", "ICL"),
            ("best_test_log_likelihood", "held-out ll"),
        ):
            best = grid.get(key)
            if best:
                lines.append(
                    f"best by {label}: {best['covariance_type']}, K={best['n_components']}"
                )
        if any("error" not in r for r in grid["rows"]):
            lines.append("")
            lines.append(summarize(metrics).text())
    if metrics.get("warnings"):
        lines.append("")
        lines.append("warnings:")
        lines.extend(f"  {w}" for w in metrics["warnings"])
    return "\n".join(lines)
