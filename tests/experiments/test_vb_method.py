"""The runner's ``vb`` method (experiments/methods/vb.py): what it reports, against
scikit-learn's `BayesianGaussianMixture` and SciPy's Student-t, and configs/sparse_dp.yaml
(surplus components empty out under a sparse Dirichlet-process prior)."""

import csv
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxgmm
from experiments import run_experiment
from experiments.config import ConfigError
from experiments.methods import METHODS, MethodContext
from experiments.progress import progress_factory

SPARSE_DP = str(Path(__file__).resolve().parents[2] / "configs" / "sparse_dp.yaml")


def _two_clusters(seed=0, n=120):
    rng = np.random.default_rng(seed)
    a = rng.multivariate_normal([-3.0, 0.0], [[1.0, 0.4], [0.4, 0.6]], n // 2)
    b = rng.multivariate_normal([3.0, 1.0], [[0.5, -0.2], [-0.2, 1.2]], n - n // 2)
    return np.concatenate([a, b])


def _context(x, x_test, prior, **settings):
    spec = jaxgmm.priors.resolve_prior(jaxgmm.GMMSpec(2, "full", prior=prior), jnp.asarray(x))
    resolved = {k: v.default for k, v in METHODS["vb"].config.items()}
    resolved.update(settings)
    init = jaxgmm.initial_params(jax.random.key(0), jnp.asarray(x), spec, "kmeans", 1)
    context = MethodContext(
        key=jax.random.key(1), x=jnp.asarray(x), spec=spec, init_params=init,
        settings=resolved, progress=progress_factory(False), x_test=jnp.asarray(x_test),
    )  # fmt: skip
    return context, spec


def _student_t_mixture_log_pdf(x, bgm):
    """Bishop (2006) eq. 10.81 from scikit-learn's fitted attributes, with SciPy:
    St(x | m_k, ((nu_k + 1 - D) beta_k / (1 + beta_k)) W_k, nu_k + 1 - D), where
    scikit-learn's covariances_ = (nu_k W_k)^-1."""
    d = x.shape[1]
    parts = []
    for k in range(bgm.n_components):
        dof = bgm.degrees_of_freedom_[k] + 1 - d
        beta = bgm.mean_precision_[k]
        shape = bgm.covariances_[k] * bgm.degrees_of_freedom_[k] * (1 + beta) / (dof * beta)
        parts.append(
            np.log(bgm.weights_[k]) + stats.multivariate_t(bgm.means_[k], shape, df=dof).logpdf(x)
        )
    return np.logaddexp.reduce(np.stack(parts), axis=0)


def test_vb_method_matches_sklearn_bayesian_gaussian_mixture(require_x64):
    from sklearn.mixture import BayesianGaussianMixture

    x, x_test = _two_clusters(0), _two_clusters(1, 40)
    prior = jaxgmm.priors.prior_from_config(
        {"name": "conjugate", "weight_concentration": 2.0, "mean_precision": 0.5}
    )
    context, spec = _context(x, x_test, prior, tol=1e-12, max_iter=1000)
    result = METHODS["vb"].run(context)
    assert result.bound_name == "elbo" and not result.point_estimate
    assert result.converged
    # The exact update's ELBO never decreases (to rounding).
    assert np.all(np.diff(result.bound) >= -1e-12)
    assert result.extra["elbo"] == result.bound[-1]
    assert result.extra["n_active_components"] == 2
    assert result.extra["largest_inactive_weight"] is None

    # scikit-learn under the same prior (its names), started from its own k-means: at
    # convergence on two well-separated clusters both reach the same optimum.
    p = spec.prior
    bgm = BayesianGaussianMixture(
        n_components=2, covariance_type="full", tol=1e-12, max_iter=1000, random_state=0,
        weight_concentration_prior_type="dirichlet_distribution",
        weight_concentration_prior=p.weight_concentration, mean_precision_prior=p.mean_precision,
        mean_prior=np.asarray(p.mean_prior), degrees_of_freedom_prior=p.dof(spec, 2),
        covariance_prior=np.asarray(p.covariance_prior), reg_covar=spec.reg_covar,
    ).fit(x)  # fmt: skip
    order = np.argsort(bgm.means_[:, 0])
    ours = np.argsort(result.params.means[:, 0])
    np.testing.assert_allclose(result.params.weights[ours], bgm.weights_[order], rtol=1e-6)
    np.testing.assert_allclose(result.params.means[ours], bgm.means_[order], rtol=1e-6)
    # Held-out posterior predictive (Student-t mixture), per sample, against SciPy.
    want = float(np.mean(_student_t_mixture_log_pdf(x_test, bgm)))
    assert result.extra["log_predictive_density_test"] == pytest.approx(want, rel=1e-7)
    # ... which is not the plug-in Gaussian mixture's held-out log-likelihood.
    plug_in = jaxgmm.mean_log_likelihood(
        jnp.asarray(x_test), jaxgmm.GMMParams(*map(jnp.asarray, result.params)), spec
    )
    assert abs(want - float(plug_in)) > 1e-4


def test_vb_refuses_a_prior_without_closed_form_updates(tmp_path):
    config = {
        "name": "vb_lkj", "seed": 0,
        "data": {"dataset": "synthetic", "n_samples": 60, "n_components": 2, "n_features": 2},
        "model": {"n_components": 2, "covariance_type": "full", "prior": {"name": "lkj"}},
        "methods": ["vb"],
    }  # fmt: skip
    with pytest.raises(ConfigError, match=r"vb cannot fit.*conjugate"):
        run_experiment(config)


@pytest.mark.parametrize(
    "override, key",
    [("vb.n_active_threshold=1.5", "vb.n_active_threshold"), ("vb.update=fast", "vb.update"),
     ("vb.tol=-1", "vb.tol")],
)  # fmt: skip
def test_vb_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run_experiment(SPARSE_DP, overrides=[override])


def test_sparse_dp_config_reports_three_active_components(tmp_path):
    result = run_experiment(SPARSE_DP, output=tmp_path / "run", plots=False)
    row = result.rows["vb"]
    assert result.metrics["spec"]["n_components"] == 10
    assert row["prior_hyperparameters"]["weight_prior_type"] == "dirichlet_process"
    extra = row["extra"]
    assert extra["n_active_components"] == 3
    weights = np.sort(result.results["vb"].params.weights)[::-1]
    assert weights.size == 10 and abs(weights.sum() - 1) < 1e-9
    assert np.all(weights[:3] > 0.1) and np.all(weights[3:] < 1e-2)
    assert extra["largest_inactive_weight"] == pytest.approx(weights[3])
    # The three that stay are the three true clusters.
    assert row["ari"] > 0.9
    # Emptied components are inactive, the purpose of the prior, not a degenerate result.
    assert len(extra["inactive_components"]) == 7 and row["degeneracies"] == []
    assert not any(w.startswith("vb: degenerate") for w in result.metrics.get("warnings") or [])
    table = result.table()
    assert "active components 3 of 10" in table
    # The run folder: metrics.json and the trace file carry VB's ELBO.
    folder = tmp_path / "run"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["methods"]["vb"]["bound_name"] == "elbo"
    with open(folder / "traces.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == "vb"]
    assert len(rows) == row["n_iter"] and {r["bound_name"] for r in rows} == {"elbo"}
    assert float(rows[-1]["bound"]) == pytest.approx(row["bound_final"], rel=1e-12)
