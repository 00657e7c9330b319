"""The comparison table a run prints: one row per method (log-likelihoods, bound, prior,
BIC/AIC, ARI, recovery, timings, convergence, degeneracies), the methods' posterior and
variational diagnostics under it, the restarts when the one returned is not the best
overall, the model-selection grid and its mclust-style summary (`experiments.summary`),
and the run's warnings; all read from the
``metrics.json`` dict, so a table can be re-printed from a run folder.
``method_warnings`` writes the warnings of one method's row."""

from __future__ import annotations

import math
import textwrap

from experiments.summary import summarize

# The table, its legend and every line under it fit in this many columns.
WIDTH = 100


def _fmt(value, spec):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


def converged_text(row, settings=None):
    """What ``converged`` means, the same for every method: "yes" when the method's own
    stopping test passed (a tolerance met; NUTS: its convergence criteria), else "no"
    and why ("no (max_iter)", "no (stalled)", "no (nonfinite@3)", "no (r_hat)"), or
    "fixed steps" for a method told to run a fixed number of steps (``tol: null``, e.g.
    SVI), where no test was asked for. None when the method reports nothing."""
    converged, status = row.get("converged"), row.get("status")
    if converged is None and status is None:
        return None
    if converged:
        return "yes"
    if status == "max_iter" and settings is not None and "tol" in settings:
        if settings["tol"] is None:
            return "fixed steps"
    if status is None or status == "converged":
        return "no"
    if status == "nonfinite":
        at = (row.get("extra") or {}).get("nonfinite_iteration")
        status = "nonfinite" if at is None else f"nonfinite@{at}"
    return f"no ({status})"


def _converged_text(row):
    text = row.get("convergence")
    return text if text is not None else converged_text(row)


def _iters_text(row):
    n = row.get("n_iter")
    if n is None:
        return None
    if row.get("bound_name") == "log_joint" and not row.get("point_estimate"):
        return f"{n} draws"  # a sampler's rows are kept draws, not iterations
    return str(n)


def _compile_text(row):
    if row.get("compile_s") is not None:
        return format(row["compile_s"], ".2f")
    return "in run" if row.get("fit_s") is not None else None


def _ledger(row, key):
    return (row.get("ledger") or {}).get(key)


def _nonzero(value):
    return value if value else None  # an exact term's 0 standard error is shown blank


def _per_sample_prior(metrics):
    n = metrics["data"]["n_train"]

    def get(method, row):
        total = row.get("log_prior_total")
        return None if total is None else total / n

    return get


def table_blocks(metrics):
    """The table's blocks: [(title, [(header, getter(method, row), format)])], each
    narrower than 100 columns with its cells."""
    return [
        (
            "bound ledger (nats per sample): bound <= target; gap = bound - target",
            [
                ("method", lambda m, r: m, ""),
                ("train ll", lambda m, r: r.get("train_log_likelihood"), ".5f"),
                ("test ll", lambda m, r: r.get("test_log_likelihood"), ".5f"),
                ("objective", lambda m, r: _ledger(r, "objective_value"), ".5f"),
                ("bound", lambda m, r: _ledger(r, "bound"), ".5f"),
                ("+-", lambda m, r: _nonzero(_ledger(r, "bound_stderr")), ".5f"),
                ("target", lambda m, r: _ledger(r, "target"), ".5f"),
                ("+-", lambda m, r: _nonzero(_ledger(r, "target_stderr")), ".5f"),
                ("gap", lambda m, r: _ledger(r, "gap"), ".1e"),
                ("+-", lambda m, r: _nonzero(_ledger(r, "gap_stderr")), ".1e"),
                ("holds", lambda m, r: _ledger(r, "holds"), ""),
            ],
        ),
        (
            "evidence, prior, fit (log p(X), log prior: per sample; BIC, AIC: totals)",
            [
                ("method", lambda m, r: m, ""),
                ("log p(X)", lambda m, r: _ledger(r, "log_evidence"), ".5f"),
                ("+-", lambda m, r: _ledger(r, "log_evidence_stderr"), ".5f"),
                ("draws ll", lambda m, r: _ledger(r, "draws_log_likelihood"), ".5f"),
                ("+-", lambda m, r: _ledger(r, "draws_log_likelihood_stderr"), ".5f"),
                ("log prior", _per_sample_prior(metrics), ".5f"),
                ("BIC", lambda m, r: r.get("bic"), ".2f"),
                ("AIC", lambda m, r: r.get("aic"), ".2f"),
                ("ARI", lambda m, r: r.get("ari"), ".3f"),
                ("mean err", lambda m, r: (r.get("recovery") or {}).get("means_rmse"), ".4f"),
                ("degenerate", lambda m, r: _degeneracy_text(r.get("degeneracies")), ""),
            ],
        ),
        (
            "the run",
            [
                ("method", lambda m, r: m, ""),
                ("optimises", lambda m, r: _ledger(r, "objective"), ""),
                ("traced", lambda m, r: r.get("bound_name"), ""),
                ("converged", lambda m, r: _converged_text(r), ""),
                ("iters", lambda m, r: _iters_text(r), ""),
                ("compile s", lambda m, r: _compile_text(r), ""),
                ("run s", lambda m, r: r.get("fit_s"), ".3f"),
            ],
        ),
    ]


LEGEND = (
    "legend: train/test ll = log-likelihood per sample at each method's parameters (svi, "
    "nuts, smc, vb: a posterior summary); objective = the final value of what the method "
    "optimises (column optimises); bound = the method's final bound (em: L(q,theta), "
    "plus log p(theta)/N with a prior; vb, svi: the ELBO, svi's from n_eval_samples fresh "
    "guide draws); target = what it bounds (em: log p(X|theta) [+ log p(theta)/N]; vb, svi: "
    "log p(X), the run's log-evidence estimate); +- = Monte Carlo standard error (blank: "
    "exact); holds = gap <= 3 (+-) plus rounding; log p(X) = log evidence under the "
    "posterior methods' prior; draws ll = the mean log-likelihood of a sampler's draws "
    "(E[ll | X]; +- from its effective sample size, smc's from its runs' spread); log prior = log p(theta)/N at the reported parameters; "
    "traced = the per-iteration column of traces.csv; "
    "converged = the method's stopping test passed (fixed steps: none was asked for); "
    "iters = iterations (nuts: kept draws, all chains; smc: final particles, all runs); compile s and run s apart (in run: "
    "compiled inside the run, and counted in run s)."
)


def _format_block(title, columns, methods):
    """A block's lines; wider than `WIDTH`, it is wrapped into further blocks that repeat
    the method column (a standard error stays with its value)."""
    cells = [
        [_fmt(get(method, row), spec) for _, get, spec in columns]
        for method, row in methods.items()
    ]
    headers = [h for h, _, _ in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]

    def sep(i):
        return 1 if headers[i] == "+-" else 2  # a standard error one space after its value

    groups, current, used = [], [], widths[0]
    for i in range(1, len(columns)):
        # A value and its "+-" columns move together.
        if headers[i] == "+-" and current:
            current.append(i)
            used += sep(i) + widths[i]
            continue
        span = [i] + [j for j in range(i + 1, len(columns)) if headers[j] == "+-"][:1]
        span = [j for j in span if j == i or j == i + 1]
        need = sum(sep(j) + widths[j] for j in span)
        if current and used + need > WIDTH:
            groups.append(current)
            current, used = [], widths[0]
        current.append(i)
        used += sep(i) + widths[i]
    if current:
        groups.append(current)

    def line(texts, group):
        out = texts[0].ljust(widths[0])
        for i in group:
            out += " " * sep(i) + texts[i].rjust(widths[i])
        return out.rstrip()

    lines = []
    for n, group in enumerate(groups):
        lines.append(title if n == 0 else f"{title} (continued)")
        lines.append(line(headers, group))
        lines.extend(line(c, group) for c in cells)
        if n + 1 < len(groups):
            lines.append("")
    return lines


def _wrap(text, indent="  ", width=WIDTH):
    return textwrap.wrap(
        text, width=width, initial_indent=indent, subsequent_indent=indent + "  ",
        break_on_hyphens=False, break_long_words=False,
    )  # fmt: skip


def _wrap_items(lead, items):
    """``lead item, item, ...`` wrapped at `WIDTH`, never inside an item ("active
    components 3 of 10" stays on one line)."""
    glue = "\x00"
    text = f"{lead} " + ", ".join(item.replace(" ", glue) for item in items)
    return [line.replace(glue, " ") for line in _wrap(text)]


def evidence_lines(metrics):
    """The log-evidence estimates of a run's metrics, as lines (empty without any)."""
    evidence = metrics.get("evidence")
    if not evidence:
        return []
    lines = _wrap(
        f"log evidence log p(X) under the prior {evidence.get('prior')} "
        f"(n_train={evidence['n_train']}; per sample, the total in brackets):",
        indent="",
    )
    if evidence.get("unavailable"):
        lines.extend(_wrap(f"not estimated: {evidence['unavailable']}"))
    for name, entry in evidence["estimates"].items():
        if "error" in entry:
            lines.extend(_wrap(f"{name}: failed: {entry['error']}"))
            continue
        diagnostics = ", ".join(
            f"{k} {format(v, '.4g') if isinstance(v, float) else v}"
            for k, v in (entry.get("diagnostics") or {}).items()
            if isinstance(v, (int, float, str, bool))
        )
        mark = " (the ELBOs' target)" if name == evidence.get("target") else ""
        text = (
            f"{name}{mark}: {entry['per_sample']:.5f} +- {entry['stderr_per_sample']:.5f} "
            f"({entry['estimate_total']:.3f} +- {entry['stderr_total']:.3f}), "
            f"{entry['seconds']:.1f} s" + (f"; {diagnostics}" if diagnostics else "")
        )
        lines.extend(_wrap(text))
    return lines


def _evidence_disagreements(evidence):
    """Estimators of the same log p(X) more than 3 combined standard errors from the
    target's estimate: at least one of them is biased (its error bars do not show it)."""
    if not evidence or evidence.get("target") is None:
        return []
    estimates = evidence["estimates"]
    ref_name = evidence["target"]
    ref = estimates[ref_name]
    found = []
    for name, entry in estimates.items():
        if name == ref_name or "error" in entry:
            continue
        diff = entry["per_sample"] - ref["per_sample"]
        se = math.hypot(entry["stderr_per_sample"], ref["stderr_per_sample"])
        if abs(diff) > 3 * se:
            found.append(
                f"evidence: {name} ({entry['per_sample']:.5f} +- "
                f"{entry['stderr_per_sample']:.2g}) and {ref_name} ({ref['per_sample']:.5f} "
                f"+- {ref['stderr_per_sample']:.2g}) disagree by {diff:+.3g} nats per sample, "
                f"{abs(diff) / se:.0f} standard errors: at least one is biased "
                "(docs/evidence.md)"
            )
    return found


def _evidence_bias(evidence):
    """A warning per estimate whose runs spread so much that the mean of their log Z is
    biased low by more than its standard error (smc's ``jensen_bias``)."""
    found = []
    n = (evidence or {}).get("n_train") or 1
    for name, entry in ((evidence or {}).get("estimates") or {}).items():
        bias = (entry.get("diagnostics") or {}).get("jensen_bias")
        if bias is None or "error" in entry or not bias > max(entry["stderr_total"], 1.0):
            continue
        found.append(
            f"evidence {name}: its runs' log p(X) spread (sd "
            f"{entry['diagnostics']['run_sd']:.3g} nats) biases their mean low by about "
            f"{bias / n:.3g} nats per sample (var / 2), more than its +- "
            f"{entry['stderr_per_sample']:.2g}, which omits it; raise "
            f"evidence.options.{name}.n_mh_steps or n_particles"
        )
    return found


def ledger_warnings(rows, evidence=None):
    """Warnings of the run's ledger: a bound above its target, a target that could not
    be estimated."""
    found = []
    for name, row in rows.items():
        entry = row.get("ledger") or {}
        if entry.get("holds") is False:
            found.append(
                f"{name}: its bound {entry['bound_name']} ({entry['bound']:.6f}) exceeds its "
                f"target {entry['target_name']} ({entry['target']:.6f}) by "
                f"{entry['gap']:.3g} +- {entry['gap_stderr']:.2g} nats per sample: a bound "
                "that is not a bound (an estimate's error, or a defect)"
            )
        elif (
            entry.get("holds")
            and not entry.get("bound_stderr")
            and entry["gap"] > 1e-9 * (1.0 + abs(entry["target"]))  # beyond rounding
        ):
            # Within the target's error bars, yet an exact bound (no Monte Carlo error)
            # above an estimate of what it bounds says how far the estimate is low.
            found.append(
                f"{name}: its exact bound {entry['bound_name']} ({entry['bound']:.6f}) lies "
                f"above the estimate of {entry['target_name']} ({entry['target']:.6f}) by "
                f"{entry['gap']:.3g} nats per sample, within that estimate's +- "
                f"{entry['gap_stderr']:.2g}; since {entry['target_name']} >= the bound, the "
                "estimate is at least that much low (its estimator's bias or noise)"
            )
    found.extend(_evidence_disagreements(evidence))
    found.extend(_evidence_bias(evidence))
    if evidence and evidence.get("target") is None:
        why = evidence.get("unavailable") or "; ".join(
            f"{k}: {v.get('error')}" for k, v in evidence["estimates"].items()
        )
        found.append(f"evidence: no log p(X) estimate, so the ELBOs have no target ({why})")
    return found


# Method extras shown under the table: (key in row["extra"], label, format).
EXTRA_COLUMNS = (
    # The ELBO is the ledger's bound (one per method); the SVI guide's importance-sampling
    # log p(X) is a further evidence estimate, with its diagnostics when it reports them.
    ("log_marginal_is", "IS log p(X)", ".5f"),
    ("log_marginal_is_stderr", "+-", ".5f"),
    ("is_ess", "IS ESS", ".0f"),
    ("is_pareto_k", "IS k-hat", ".2f"),
    ("log_evidence_smc", "SMC log p(X)", ".5f"),
    ("log_evidence_smc_stderr", "+-", ".5f"),
    ("jensen_bias", "its Jensen bias", ".5f"),
    ("r_hat_max", "r-hat max", ".4f"),
    ("unique_fraction_min", "distinct particles min", ".3f"),
    ("acceptance_min", "acceptance min", ".3f"),
    ("ess_bulk_min", "bulk ESS min", ".0f"),
    ("ess_tail_min", "tail ESS min", ".0f"),
    ("tree_depth_saturated", "saturated trees", "d"),
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


def _sampler_warning(name, status, extra):
    """The warning of a sampler that did not converge (NUTS statuses r_hat, ess,
    chains_disagree; SMC's r_hat, runs_disagree), with the thresholds it was judged by."""
    r_hat = extra.get("r_hat_max")
    r_hat_text = "r-hat max -" if r_hat is None else f"r-hat max {r_hat:.3f}"
    if name == "smc" or status == "runs_disagree":
        limit = f"r-hat across runs < {extra.get('r_hat_threshold', 1.01):g}"
        if status == "runs_disagree":
            why = extra.get("runs_summary") or "the runs found different modes"
            return (
                f"{name}: the independent runs disagree ({why}; {r_hat_text}): the "
                "particles are not one posterior; see posterior.png and extra.census"
            )
        means = extra.get("run_mean_log_likelihood")
        means_text = "" if not means else (
            "; the runs' mean log-likelihood per sample: " + ", ".join(f"{v:.4f}" for v in means)
        )  # fmt: skip
        return (
            f"{name}: the independent runs disagree ({r_hat_text}; needs {limit}"
            f"{means_text}): the posterior summaries are not reliable; raise "
            "smc.n_particles or smc.n_mh_steps, or use nuts"
        )
    limits = (
        f"r-hat < {extra.get('r_hat_threshold', 1.01):g}, bulk and tail ESS > "
        f"{extra.get('ess_threshold', 400):g}"
    )
    if status == "chains_disagree":
        why = extra.get("chains_summary") or "the chains sit in different modes"
        return (
            f"{name}: chains disagree ({why}; {r_hat_text}): the draws are not one "
            "posterior; see posterior.png and extra.census"
        )
    if status == "ess":
        ess = [extra.get("ess_bulk_min"), extra.get("ess_tail_min")]
        ess_text = ", ".join("-" if v is None else f"{v:.0f}" for v in ess)
        return (
            f"{name}: too few effective draws (bulk, tail ESS min {ess_text}; needs "
            f"{limits}): run more draws"
        )
    return (
        f"{name}: chains have not mixed ({r_hat_text}; needs {limits}): the posterior "
        "summaries are not reliable; run longer or more chains"
    )


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
    elif status in ("r_hat", "ess", "chains_disagree", "runs_disagree"):
        found.append(_sampler_warning(name, status, extra))
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
    methods = metrics["methods"]
    lines = _wrap(
        f"{metrics['name']}: {metrics['data']['dataset']}, n_train={metrics['data']['n_train']}, "
        f"n_test={metrics['data']['n_test']}, K={metrics['spec']['n_components']} "
        f"{metrics['spec']['covariance_type']}, {metrics['dtype']} on {metrics['jax_backend']}",
        indent="",
    )
    for title, columns in table_blocks(metrics):
        lines.append("")
        lines.extend(_format_block(title, columns, methods))
    # Prior labels can be long (a plug-in prior's name): one line per prior, not a column.
    priors = {}
    for method, row in methods.items():
        priors.setdefault(row.get("prior") or "none", []).append(method)
    used = "; ".join(f"{label} ({', '.join(ms)})" for label, ms in priors.items())
    lines.extend(_wrap(f"prior: {used}", indent=""))
    lines.append("")
    lines.extend(_wrap(LEGEND, indent=""))
    evidence = evidence_lines(metrics)
    if evidence:
        lines.append("")
        lines.extend(evidence)
    details = [
        line
        for method, row in methods.items()
        if any(row.get("extra", {}).get(key) is not None for key, _, _ in EXTRA_COLUMNS)
        for line in _wrap_items(
            f"{method}:",
            [
                f"{label} {_fmt(row['extra'][key], spec)}"
                for key, label, spec in EXTRA_COLUMNS
                if row.get("extra", {}).get(key) is not None
            ],
        )
    ]
    if details:
        lines.append("")
        lines.append("posterior / variational diagnostics (per sample unless noted):")
        lines.extend(details)
    defaults = sorted(
        {r["prior"] for r in metrics["methods"].values() if "(default)" in (r.get("prior") or "")}
    )
    if defaults:
        lines.extend(
            _wrap(
                "(default) prior: model.prior is null, so methods that need a prior use "
                "the posterior default, conjugate with a within-cluster Psi (empirical "
                "Bayes: docs/priors.md); set model.prior to choose"
            )
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
        lines.extend(line for w in metrics["warnings"] for line in _wrap(w))
    return "\n".join(lines)
