"""ArviZ export of NUTS and SVI posteriors (`jaxgmm.bayes.inference_data`): dims and coords
for every covariance family, the pointwise log-likelihood against SciPy, ArviZ's WAIC
against `jaxgmm.bayes.waic`, its split r-hat against ours, ``az.loo`` on Old Faithful
(n observations, Pareto k), ``az.compare`` across K = 2 (NUTS) and K = 3 (SVI), the SVI
guide's draws against its own location and scale, a netCDF round trip, relabelling seen by
ArviZ, and bad input. Skipped where ArviZ is not installed, except the ImportError test."""

import importlib.util
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _bayes_helpers import faithful
from scipy import stats

import jaxgmm
from jaxgmm.bayes.inference_data import from_draws, import_arviz
from jaxgmm.bayes.posterior import relabel
from jaxgmm.model.covariance import COVARIANCE_FAMILIES
from jaxgmm.priors import make_prior


def test_missing_arviz_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "arviz", None)  # makes `import arviz` fail
    with pytest.raises(ImportError, match=r"pip install 'jaxgmm\[arviz\]'"):
        import_arviz()


HAVE_ARVIZ = importlib.util.find_spec("arviz") is not None
needs_arviz = pytest.mark.skipif(not HAVE_ARVIZ, reason="ArviZ is not installed")
az = import_arviz() if HAVE_ARVIZ else None


@pytest.fixture(scope="module")
def nuts_run():
    x = faithful()
    spec = jaxgmm.GMMSpec(2, "full", prior=make_prior("conjugate"))
    result = jaxgmm.fit_nuts(
        jax.random.key(0), x, spec, num_warmup=200, num_samples=200, num_chains=2
    )
    return x, result, result.to_inference_data(x, feature_names=["eruptions", "waiting"])


@pytest.fixture(scope="module")
def svi_run():
    x = faithful()
    spec = jaxgmm.GMMSpec(3, "diag", prior=make_prior("conjugate"))
    result = jaxgmm.fit_svi(
        jax.random.key(1), x, spec, guide="auto_normal", num_steps=500, n_eval_samples=100
    )
    return x, result, result.to_inference_data(jax.random.key(2), x, num_samples=400)


def _random_draws(spec, n_chains, n_draws, n_features, seed=0):
    rng = np.random.default_rng(seed)
    k = spec.n_components
    lead = (n_chains, n_draws)
    weights = rng.dirichlet(np.ones(k) * 5, size=lead)
    means = rng.normal(size=lead + (k, n_features)) * 3
    base = rng.normal(size=lead + (k, n_features, n_features))
    dense = base @ np.swapaxes(base, -1, -2) + np.eye(n_features)
    cov = {
        "full": dense,
        "tied": dense[:, :, 0],
        "diag": np.diagonal(dense, axis1=-2, axis2=-1),
        "spherical": np.diagonal(dense, axis1=-2, axis2=-1).mean(-1),
    }[spec.covariance_type]
    flat = jax.vmap(
        lambda w, m, c: jaxgmm.params_from_covariances(w, m, c, spec.covariance_type)
    )(
        *(jnp.asarray(a.reshape((-1,) + a.shape[2:])) for a in (weights, means, cov))
    )  # fmt: skip
    return jax.tree_util.tree_map(lambda a: a.reshape(lead + a.shape[1:]), flat), cov


def _dense(cov, covariance_type, k):
    """(..., K, D, D) covariance matrices of any family (an independent reference)."""
    if covariance_type == "full":
        return cov
    if covariance_type == "tied":
        return np.repeat(cov[..., None, :, :], k, axis=-3)
    if covariance_type == "diag":
        return cov[..., :, None] * np.eye(cov.shape[-1])
    return cov[..., None, None] * np.eye(2)


@needs_arviz
@pytest.mark.usefixtures("require_x64")  # SciPy / 1e-9 comparisons
@pytest.mark.parametrize("covariance_type", list(COVARIANCE_FAMILIES))
def test_dims_coords_and_pointwise_log_likelihood_against_scipy(covariance_type):
    spec = jaxgmm.GMMSpec(3, covariance_type)
    draws, cov = _random_draws(spec, 2, 5, 2)
    x = np.random.default_rng(1).normal(size=(11, 2)) * 3
    idata = from_draws(draws, jnp.asarray(x), spec, feature_names=["a", "b"], batch_size=3)
    post = idata.posterior
    expected = {
        "full": ("component", "feature", "feature_bis"),
        "tied": ("feature", "feature_bis"),
        "diag": ("component", "feature"),
        "spherical": ("component",),
    }[covariance_type]
    assert post["covariances"].dims == ("chain", "draw") + expected
    assert post["means"].dims == ("chain", "draw", "component", "feature")
    assert post["weights"].dims == ("chain", "draw", "component")
    assert list(post["feature"].values) == ["a", "b"] and list(post["component"].values) == [
        0,
        1,
        2,
    ]
    np.testing.assert_allclose(post["covariances"].values, cov, rtol=1e-9)
    assert idata.observed_data["x"].dims == ("observation", "feature")
    ll = idata.log_likelihood["x"]
    assert ll.dims == ("chain", "draw", "observation") and ll.shape == (2, 5, 11)
    dense = _dense(cov, covariance_type, 3)
    w, m = np.asarray(draws.weights), np.asarray(draws.means)
    for c, s in [(0, 0), (1, 4), (0, 2)]:
        ref = np.log(
            sum(
                w[c, s, k] * stats.multivariate_normal.pdf(x, m[c, s, k], dense[c, s, k])
                for k in range(3)
            )
        )
        np.testing.assert_allclose(ll.values[c, s], ref, rtol=1e-9)


@needs_arviz
def test_arviz_sees_relabelled_draws():
    """Label switching: raw draws with swapped labels give ArviZ a large r-hat; the
    relabelled ones a small one, and the permutation is recorded per draw."""
    spec = jaxgmm.GMMSpec(2, "diag")
    rng = np.random.default_rng(0)
    ref = jaxgmm.params_from_covariances(
        np.array([0.3, 0.7]), np.array([[-3.0], [3.0]]), np.ones((2, 1)), "diag"
    )
    n = 200
    means = np.asarray(ref.means)[None, None] + rng.normal(size=(2, n, 2, 1)) * 0.1
    swap = np.zeros((2, n), dtype=bool)
    swap[1] = True  # chain 1 is stuck in the other labelling
    order = np.where(swap[..., None], [1, 0], [0, 1])
    take = lambda a: np.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 3)), 2)  # noqa: E731
    raw = jaxgmm.GMMParams(
        take(np.broadcast_to(np.asarray(ref.weights), (2, n, 2))),
        take(means),
        take(np.broadcast_to(np.asarray(ref.prec_chol), (2, n, 2, 1))),
    )
    x = jnp.asarray(rng.normal(size=(20, 1)) * 3)
    raw_rhat = az.rhat(from_draws(raw, x, spec, log_likelihood=False), var_names=["means"])
    draws, perms = relabel(raw, ref, spec)
    idata = from_draws(
        draws, x, spec, sample_stats={"relabel_permutation": perms}, log_likelihood=False
    )
    assert np.all(raw_rhat.means.values > 1.5)
    assert np.all(az.rhat(idata, var_names=["means"]).means.values < 1.05)
    np.testing.assert_array_equal(idata.sample_stats["relabel_permutation"].values, order)


@needs_arviz
@pytest.mark.usefixtures("require_x64")  # SciPy / 1e-9 comparisons
def test_nuts_round_trip(nuts_run, tmp_path):
    x, result, idata = nuts_run
    assert set(idata.groups()) >= {"posterior", "log_likelihood", "sample_stats", "observed_data"}
    post = idata.posterior
    assert post.sizes["chain"] == 2 and post.sizes["draw"] == 200
    assert list(post["feature"].values) == ["eruptions", "waiting"]
    # Posterior means and sds are those of our relabelled draws.
    for name in ("weights", "means", "covariances"):
        np.testing.assert_allclose(
            post[name].mean(("chain", "draw")).values, result.summary[name]["mean"], rtol=1e-12
        )
        np.testing.assert_allclose(
            post[name].std(("chain", "draw"), ddof=1).values, result.summary[name]["sd"],
            rtol=1e-10,
        )  # fmt: skip
    summary = az.summary(idata, var_names=["weights", "means"], round_to="none")
    assert "means[eruptions, 0]" not in summary.index  # coords are component, then feature
    assert "means[0, eruptions]" in summary.index and len(summary) == 2 + 4
    np.testing.assert_allclose(
        summary.loc["means[1, waiting]", "mean"], result.summary["means"]["mean"][1, 1]
    )
    # Our r-hat is NumPyro's split Gelman-Rubin on the relabelled draws, ArviZ's
    # method="split" the same estimator (az.summary's default is rank-normalised).
    for name in ("weights", "means", "covariances"):
        np.testing.assert_allclose(
            az.rhat(idata, method="split")[name].values, result.summary[name]["r_hat"], rtol=1e-6
        )
    stats_ = idata.sample_stats
    np.testing.assert_array_equal(stats_["diverging"].values, result.diverging)
    for name in ("lp", "energy", "tree_depth", "n_steps", "acceptance_rate", "step_size"):
        assert stats_[name].shape == (2, 200) and np.all(np.isfinite(stats_[name].values))
    assert np.all(stats_["n_steps"].values <= 2**10 - 1) and np.all(stats_["tree_depth"] <= 10)
    np.testing.assert_array_equal(stats_["relabel_permutation"].values, result.permutations)
    # The pointwise log-likelihood averages to the per-draw values fit_nuts recorded.
    np.testing.assert_allclose(
        idata.log_likelihood["x"].mean("observation").values, result.log_likelihood, rtol=1e-10
    )
    np.testing.assert_array_equal(idata.observed_data["x"].values, x)
    path = tmp_path / "posterior.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    np.testing.assert_array_equal(back.posterior["means"].values, post["means"].values)
    np.testing.assert_array_equal(back.log_likelihood["x"].values, idata.log_likelihood["x"].values)


@needs_arviz
@pytest.mark.usefixtures("require_x64")  # SciPy / 1e-9 comparisons
def test_nuts_loo_and_waic(nuts_run):
    x, result, idata = nuts_run
    loo = az.loo(idata, pointwise=True)
    assert loo.n_data_points == x.shape[0] == 272
    assert loo.n_samples == 400
    assert np.mean(loo.pareto_k.values < 0.7) >= 0.9
    assert np.isfinite(loo.elpd_loo) and loo.p_loo > 0
    # ArviZ's WAIC against ours: the same lppd; p_waic with ArviZ's ddof=0 variance.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "posterior variance ... exceeds 0.4"
        waic = az.waic(idata)
    elpd, p_waic = jaxgmm.bayes.waic(jnp.asarray(x), result.draws, result.spec)
    n, s = x.shape[0], 400
    np.testing.assert_allclose(waic.p_waic, p_waic * n * (s - 1) / s, rtol=1e-9)
    np.testing.assert_allclose(waic.elpd_waic, (elpd + p_waic) * n - waic.p_waic, rtol=1e-9)


@needs_arviz
def test_svi_draws_follow_the_guide(svi_run):
    x, result, idata = svi_run
    post = idata.posterior
    assert post.sizes["chain"] == 1 and post.sizes["draw"] == 400
    assert post["covariances"].dims == ("chain", "draw", "component", "feature")
    assert idata.log_likelihood["x"].shape == (1, 400, 272)
    # The conjugate prior's means site is unconstrained: AutoNormal draws it from
    # N(loc, scale) directly. The relabelling (to the guide's median) must not permute a
    # unimodal guide's draws.
    loc = np.asarray(result.guide_params["means_auto_loc"])
    scale = np.asarray(result.guide_params["means_auto_scale"])
    assert np.all(idata.sample_stats["relabel_permutation"].values == np.arange(3))
    draws = post["means"].values[0]
    assert np.all(np.abs(draws.mean(0) - loc) < 5 * scale / np.sqrt(400))
    np.testing.assert_allclose(draws.std(0, ddof=1), scale, rtol=0.2)
    loo = az.loo(idata)
    assert loo.n_data_points == 272 and np.isfinite(loo.elpd_loo)


@needs_arviz
def test_compare_across_k(nuts_run, svi_run):
    _, _, k2 = nuts_run
    _, _, k3 = svi_run
    table = az.compare({"K=2 nuts": k2, "K=3 svi": k3})
    assert set(table.index) == {"K=2 nuts", "K=3 svi"}
    assert sorted(table["rank"]) == [0, 1]
    np.testing.assert_allclose(table["weight"].sum(), 1.0)
    for name, idata in (("K=2 nuts", k2), ("K=3 svi", k3)):
        np.testing.assert_allclose(table.loc[name, "elpd_loo"], az.loo(idata).elpd_loo)


@needs_arviz
@pytest.mark.slow  # a third compiled SVI model for one line of behaviour
def test_svi_auto_delta_draws_are_the_point():
    x = faithful()
    spec = jaxgmm.GMMSpec(2, "diag", prior=make_prior("conjugate"))
    result = jaxgmm.fit_svi(jax.random.key(0), x, spec, guide="auto_delta", num_steps=200)
    idata = result.to_inference_data(jax.random.key(1), x, num_samples=5)
    np.testing.assert_allclose(
        idata.posterior["means"].values[0], np.broadcast_to(result.fit.params.means, (5, 2, 2))
    )


@needs_arviz
def test_bad_x_is_named(nuts_run):
    x, result, _ = nuts_run
    with pytest.raises(ValueError, match="x must be the training data .* 3 features"):
        result.to_inference_data(np.ones((10, 3)))
    with pytest.raises(ValueError, match="x must be the training data"):
        result.to_inference_data(x[::-1][:200])
    with pytest.raises(ValueError, match="x must be the training data"):
        result.to_inference_data(x / 60.0)
    with pytest.raises(ValueError, match="feature_names must have 2 entries"):
        result.to_inference_data(x, feature_names=["a"])


@needs_arviz
@pytest.mark.usefixtures("require_x64")  # SciPy / 1e-9 comparisons
def test_runner_loo_waic_and_posterior_nc(nuts_run, svi_run, tmp_path):
    """The runner's LOO/WAIC extras are ArviZ's totals per sample; posterior.nc holds one
    netCDF group per method and reads back."""
    from experiments import results_io
    from experiments.methods.nuts import loo_waic

    _, _, k2 = nuts_run
    _, _, k3 = svi_run
    extra = loo_waic(k2)
    loo = az.loo(k2, pointwise=True)
    np.testing.assert_allclose(extra["elpd_loo"] * 272, loo.elpd_loo)
    np.testing.assert_allclose(extra["p_loo_total"], loo.p_loo)
    assert extra["pareto_k_over_0.7"] == int(np.sum(loo.pareto_k.values > 0.7))
    results_io.write_inference_data(tmp_path / "posterior.nc", {"nuts": k2, "svi": k3})
    for method, idata in (("nuts", k2), ("svi", k3)):
        back = results_io.read_inference_data(tmp_path, method)
        np.testing.assert_array_equal(
            back.posterior["means"].values, idata.posterior["means"].values
        )
        assert back.posterior.attrs["jaxgmm_fitter"] == idata.posterior.attrs["jaxgmm_fitter"]
    assert [p.name for p in tmp_path.iterdir()] == ["posterior.nc"]  # no temporary left
