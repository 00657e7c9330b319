"""The bound ledger (issue 19): every method's bound beside its target, in the result,
metrics.json, the table and the figures; EM with a prior reports the MAP bound; every
shipped config's ledger holds; the table fits in 100 columns."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgmm
from experiments import run_experiment
from experiments.ledger import method_ledger, violations
from experiments.methods import METHODS, MethodContext
from experiments.plot import plot_run
from experiments.report import WIDTH, converged_text, format_table
from experiments.summary import summarize

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHIPPED = sorted(p.name for p in CONFIGS.glob("*.yaml"))
BOUNDED = ("em", "vb", "svi")  # the methods with a bound; gradient and NUTS have none


def _noop_bar(total, desc):
    class Bar:
        def update_to(self, n, **postfix):
            pass

        def close(self):
            pass

    return Bar()


def _blobs(n=90, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[-3.0, 0.0], [3.0, 1.0], [0.0, 4.0]])
    return jnp.asarray(centres[rng.integers(0, 3, n)] + rng.normal(size=(n, 2)))


def _em_result(spec, x, max_iter=30):
    init = jaxgmm.initial_params(jax.random.key(0), x, spec, "random", 1)
    context = MethodContext(
        key=jax.random.key(1), x=x, spec=spec, init_params=init,
        settings={"max_iter": max_iter, "tol": 0.0}, progress=_noop_bar,
    )  # fmt: skip
    return METHODS["em"].run(context)


def test_em_with_a_prior_reports_the_map_bound_below_its_target():
    """MAP-EM's traced bound is L(q_t, theta_{t+1}) + log p(theta_{t+1}) / N, below the
    log posterior of theta_{t+1} at every iteration; the log posterior it climbs never
    falls (the likelihood may). Before issue 19 the bound was the likelihood bound and no
    log prior was traced."""
    x = _blobs()
    spec = jaxgmm.priors.resolve_prior(
        jaxgmm.GMMSpec(3, "full", prior=jaxgmm.priors.prior_from_config({"name": "conjugate"})),
        x,
    )
    result = _em_result(spec, x)
    assert result.bound_name == "em_map_bound"
    log_prior = result.trace_columns["log_prior"]
    target = result.trace_columns["target"]
    n = x.shape[0]
    # The target at the returned parameters, from the shared density and the prior.
    final = jaxgmm.GMMParams(*(jnp.asarray(a) for a in result.params))
    expected = (
        float(jaxgmm.mean_log_likelihood(x, final, spec)) + float(jaxgmm.log_prior(final, spec)) / n
    )
    assert target[-1] == pytest.approx(expected, abs=1e-10)
    # Row t's target is the log posterior of the next row's iterate.
    np.testing.assert_allclose(target[:-1], (result.log_likelihood + log_prior)[1:], atol=1e-10)
    slack = 1e-10 * (1 + np.abs(target).max())
    assert np.all(result.bound <= target + slack)
    log_posterior = result.log_likelihood + log_prior
    assert np.all(np.diff(log_posterior) >= -slack)
    # The ledger entry: bound and target at the same final parameters, the gap <= 0.
    row = {
        "bound_final": float(result.bound[-1]),
        "train_log_likelihood": float(jaxgmm.mean_log_likelihood(x, final, spec)),
        "log_prior_total": float(jaxgmm.log_prior(final, spec)),
    }
    entry = method_ledger("em", row, result, None, n)
    assert entry["bound_name"] == "em_map_bound" and entry["objective"] == "log posterior"
    assert entry["target"] == pytest.approx(expected, abs=1e-10)
    assert entry["gap"] <= slack and entry["holds"] is True


def test_em_without_a_prior_keeps_the_likelihood_bound():
    x = _blobs()
    result = _em_result(jaxgmm.GMMSpec(3, "full"), x, max_iter=10)
    assert result.bound_name == "em_bound" and "log_prior" not in result.trace_columns
    target = result.trace_columns["target"]
    np.testing.assert_allclose(target[:-1], result.log_likelihood[1:], atol=1e-12)
    assert np.all(result.bound <= target + 1e-10)


def _evidence(per_sample, stderr, n=100):
    entry = {
        "method": "smc", "estimate_total": per_sample * n, "stderr_total": stderr * n,
        "per_sample": per_sample, "stderr_per_sample": stderr, "diagnostics": {"ess": 250.0},
        "seconds": 1.0, "options": {},
    }  # fmt: skip
    return {"prior": "conjugate", "n_train": n, "estimates": {"smc": entry}, "target": "smc"}


@pytest.mark.parametrize(
    "elbo, se, log_z, log_z_se, holds",
    [
        (-2.0, 0.01, -1.9, 0.01, True),  # far below
        (-1.9, 0.01, -1.92, 0.01, True),  # above, but within 3 standard errors of the gap
        (-1.8, 0.001, -1.9, 0.001, False),  # above by 0.1, errors 0.0014: a violation
    ],
)
def test_the_gap_carries_its_monte_carlo_error(elbo, se, log_z, log_z_se, holds):
    row = {"extra": {"guide": "auto_normal", "elbo": elbo, "elbo_stderr": se}}
    entry = method_ledger("svi", row, None, _evidence(log_z, log_z_se), 100)
    assert entry["gap"] == pytest.approx(elbo - log_z)
    assert entry["gap_stderr"] == pytest.approx(np.hypot(se, log_z_se))
    assert entry["holds"] is holds
    assert entry["log_evidence"] == log_z and entry["target_source"] == "log_evidence smc"
    metrics = {"methods": {"svi": {"ledger": entry}}}
    assert [m for m, _ in violations(metrics)] == ([] if holds else ["svi"])


def test_without_an_evidence_estimate_the_target_stays_empty():
    row = {"extra": {"elbo": -2.0}}
    missing = {"prior": "c", "n_train": 10, "estimates": {}, "target": None,
               "unavailable": "no estimator"}  # fmt: skip
    entry = method_ledger("vb", row, None, missing, 10)
    assert entry["bound"] == -2.0 and entry["target"] is None and entry["gap"] is None
    assert entry["holds"] is None and "no estimator" in entry["note"]
    # Gradient and NUTS have no bound; NUTS reports its draws' log-likelihood.
    grad = method_ledger("gradient", {"bound_final": -1.0, "bound_name": "log_likelihood"},
                         None, None, 10)  # fmt: skip
    assert grad["bound"] is None and grad["objective_value"] == -1.0
    draws = np.random.default_rng(0).normal(-1.5, 0.1, size=400)

    class Nuts:
        posterior = {"log_likelihood": draws, "chain": np.repeat([0, 1], 200)}

    nuts = method_ledger("nuts", {}, Nuts, _evidence(-1.6, 0.01), 10)
    assert nuts["bound"] is None and nuts["log_evidence"] == -1.6
    assert nuts["draws_log_likelihood"] == pytest.approx(draws.mean())
    # Independent draws: the standard error is about sd / sqrt(n).
    assert nuts["draws_log_likelihood_stderr"] == pytest.approx(0.1 / 20, rel=0.3)


def test_converged_means_the_same_for_every_method():
    assert converged_text({"converged": True, "status": "converged"}) == "yes"
    fixed = {"converged": False, "status": "max_iter"}
    assert converged_text(fixed, {"tol": None}) == "fixed steps"
    assert converged_text(fixed, {"tol": 1e-6}) == "no (max_iter)"
    assert converged_text({"converged": False, "status": "r_hat"}) == "no (r_hat)"


def _shrunk(name, bounded=BOUNDED):
    """Overrides that keep a shipped config's methods among ``bounded`` and make them
    tiny: EM and VB 20 iterations, SVI 60 steps with 100 evaluation draws and no posterior
    draws, no model-selection grid; the evidence block as shipped (SMC's defaults: with
    200 particles its estimate on faithful was 0.12 nats per sample low, -1.6468 +- 0.0738
    against -1.52315, a bias its standard error does not cover)."""
    import yaml

    raw = yaml.safe_load((CONFIGS / name).read_text())
    methods = [m for m in raw.get("methods", ["em"]) if m in bounded]
    overrides = [f"methods=[{','.join(methods)}]", "model_selection.n_components=null"]
    overrides += ["em.max_iter=20", "vb.max_iter=20", "svi.num_steps=60"]
    overrides += ["svi.n_eval_samples=100", "svi.posterior_draws=0"]
    return methods, overrides


def _check_ledger(name, methods, result):
    # A config may opt out of log p(X) (evidence.methods: null, e.g. sparse_dp at K=10).
    asked = (result.config.get("evidence") or {}).get("methods", ["smc"])
    has_evidence = bool(getattr(jaxgmm, "EVIDENCE_METHODS", None)) and bool(asked)
    for method in methods:
        entry = result.rows[method]["ledger"]
        assert entry["bound"] is not None, (name, method, entry)
        if method == "em" or has_evidence:
            assert entry["target"] is not None, (name, method, entry)
        if entry["target"] is not None:
            assert entry["holds"] is True, (name, method, entry)
    assert violations(result.metrics) == []
    table = result.table()
    assert max(len(line) for line in table.splitlines()) <= WIDTH, table
    assert "legend:" in table


WITH_EM = [n for n in SHIPPED if _shrunk(n, bounded=("em",))[0]]


@pytest.mark.parametrize("name", WITH_EM)
def test_every_shipped_configs_em_ledger_holds(name):
    """EM's bound below its target (the MAP bound under a prior) in every shipped config,
    with or without a prior; fast (EM only, 20 iterations)."""
    methods, overrides = _shrunk(name, bounded=("em",))
    _check_ledger(name, methods, run_experiment(str(CONFIGS / name), overrides=overrides))


POSTERIOR = [n for n in SHIPPED if set(_shrunk(n)[0]) & {"vb", "svi"}]


@pytest.mark.slow  # SMC evidence and SVI compiles: minutes per config on 2 cores
@pytest.mark.parametrize("name", POSTERIOR)
def test_every_shipped_configs_ledger_holds(name):
    """Every bound of every shipped config (EM, VB, SVI) below its target, the ELBOs'
    against the run's SMC log-evidence estimate, within 3 standard errors."""
    methods, overrides = _shrunk(name)
    _check_ledger(name, methods, run_experiment(str(CONFIGS / name), overrides=overrides))


def test_the_run_folder_carries_the_ledger(tmp_path):
    """metrics.json, traces.csv and the figures of a run with a prior: EM's MAP bound
    and its per-iteration target, the final-values figure."""
    folder = tmp_path / "run"
    result = run_experiment(
        str(CONFIGS / "smoke_bayes.yaml"), output=folder,
        overrides=["methods=[em,gradient]", "em.max_iter=10", "gradient.max_steps=10"],
    )  # fmt: skip
    metrics = json.loads((folder / "metrics.json").read_text())
    em = metrics["methods"]["em"]["ledger"]
    assert em["bound_name"] == "em_map_bound" and em["holds"] is True
    assert metrics["methods"]["gradient"]["ledger"]["bound"] is None
    header = (folder / "traces.csv").read_text().splitlines()[0].split(",")
    assert header[-2:] == ["target", "log_prior"]
    for name in ("convergence.png", "final_values.png"):
        assert (folder / name).stat().st_size > 0, name
    assert plot_run(folder, animate=False)  # redrawn from the files alone
    assert format_table(metrics) == result.table()


def test_summary_ranks_the_grid_by_log_evidence_beside_bic():
    rows = [
        {
            "covariance_type": "full",
            "n_components": k,
            "bic": b,
            "icl": b + 1.0,
            "log_evidence_total": z,
            "log_evidence_stderr_total": 0.05,
        }  # fmt: skip
        for k, b, z in ((1, 100.0, -60.0), (2, 90.0, -52.0), (3, 95.0, -55.0))
    ]
    metrics = {"name": "g", "data": {"dataset": "d", "n_train": 50, "n_features": 2},
               "model_selection": {"rows": rows}}  # fmt: skip
    summary = summarize(metrics)
    assert summary.log_evidence[("full", 2)] == -104.0  # 2 log p(X), BIC's mclust scale
    assert summary.top_evidence[0][:2] == ("full", 2)
    assert "Bayesian model selection" in summary.text()


def test_a_wide_table_wraps_into_blocks_within_100_columns():
    """Per-sample values of unstandardised data can be -1234.5: the table then wraps into a
    continued block that repeats the method column, and never exceeds 100 columns."""
    entry = {"objective": "ELBO", "objective_value": -1234.56789, "bound_name": "elbo",
             "bound": -1234.56789, "bound_stderr": 0.001, "target": -1230.12345,
             "target_stderr": 0.002, "gap": -4.4, "gap_stderr": 0.0022, "holds": True,
             "log_evidence": -1230.12345, "log_evidence_stderr": 0.002}  # fmt: skip
    row = {"train_log_likelihood": -1200.12345, "test_log_likelihood": -1300.12345,
           "ledger": entry, "bound_name": "elbo", "n_iter": 10, "converged": True,
           "status": "converged", "prior": "a-very-long-plug-in-prior-name " * 3}  # fmt: skip
    metrics = {"name": "wide", "data": {"dataset": "d", "n_train": 10, "n_test": 5},
               "spec": {"n_components": 2, "covariance_type": "full"}, "dtype": "float64",
               "jax_backend": "cpu", "methods": {"svi": row, "vb": dict(row)},
               "model_selection": None, "warnings": []}  # fmt: skip
    table = format_table(metrics)
    assert max(len(line) for line in table.splitlines()) <= WIDTH, table
    assert "(continued)" in table and "holds" in table


def test_exact_bound_above_an_evidence_estimate_is_reported():
    """VB's ELBO is exact: an estimate of log p(X) below it is low by at least the gap,
    even when the gap is within the estimate's error bars (holds)."""
    from experiments.report import ledger_warnings

    def row(bound, bound_stderr, target, target_stderr):
        gap = bound - target
        return {"ledger": {
            "bound_name": "elbo", "bound": bound, "bound_stderr": bound_stderr,
            "target_name": "log p(X)", "target": target, "gap": gap,
            "gap_stderr": (bound_stderr or 0.0) + target_stderr, "holds": True,
        }}  # fmt: skip

    rows = {
        "vb": row(-1.99, None, -2.05, 0.05),  # exact bound above the estimate
        "svi": row(-2.02, 0.001, -2.05, 0.05),  # a noisy bound: no such conclusion
        "em": row(-1.2 + 1e-13, None, -1.2, 0.0),  # rounding only
    }
    warnings = ledger_warnings(rows)
    assert len(warnings) == 1 and warnings[0].startswith("vb: its exact bound elbo")
    assert "at least that much low" in warnings[0]


def test_evidence_estimators_that_disagree_are_reported():
    from experiments.report import ledger_warnings

    def entry(per_sample, stderr):
        return {"per_sample": per_sample, "stderr_per_sample": stderr}

    evidence = {
        "target": "bridge",
        "estimates": {
            "bridge": entry(-1.97027, 0.0002),
            "smc": entry(-2.05207, 0.02064),  # 4 standard errors below
            "importance": entry(-1.9705, 0.001),  # within 1
            "broken": {"error": "refused"},
        },
    }
    warnings = ledger_warnings({}, evidence)
    assert len(warnings) == 1 and warnings[0].startswith("evidence: smc (-2.05207")
    assert "4 standard errors" in warnings[0]


def test_smc_runs_that_spread_are_reported_as_biased_low():
    from experiments.report import ledger_warnings

    def smc(runs):
        runs = np.asarray(runs)
        stderr = runs.std(ddof=1) / np.sqrt(runs.size)
        diag = {"run_sd": runs.std(ddof=1), "jensen_bias": runs.var(ddof=1) / 2}
        return {"per_sample": runs.mean() / 150, "stderr_total": stderr,
                "stderr_per_sample": stderr / 150, "diagnostics": diag}  # fmt: skip

    iris = {"target": "smc", "n_train": 150,
            "estimates": {"smc": smc([-311.27, -313.68, -299.60, -306.69])}}  # fmt: skip
    (warning,) = ledger_warnings({}, iris)
    assert warning.startswith("evidence smc:") and "0.128 nats per sample" in warning
    tight = {"target": "smc", "n_train": 150, "estimates": {"smc": smc([-300.1, -300.3, -299.9])}}
    assert ledger_warnings({}, tight) == []
