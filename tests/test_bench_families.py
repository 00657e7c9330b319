"""The benchmark's protocol and adapters for every covariance type (issue 18's tied and
spherical rows beside full and diag): the shared start in scikit-learn's layouts, the
float64 scorer and responsibilities against scikit-learn, the covariances from jaxgmm's
precision factors, the EM and VB adapters' agreement from the shared start, and the
peers' unsupported types reported as skipped."""

import json
import warnings

import numpy as np
import pytest

from experiments.bench import cli, peers, protocol

NEW_TYPES = ["tied", "spherical"]


def _sklearn_shape(cov_type, k, d):
    """scikit-learn's ``covariances_`` shape per type (its docs' table)."""
    return {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[cov_type]


def _sklearn_fit(x, cov_type, **kwargs):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianMixture(covariance_type=cov_type, **kwargs).fit(x)


def test_protocol_knows_every_jaxgmm_family():
    import jaxgmm

    assert set(protocol.COVARIANCE_TYPES) == set(jaxgmm.model.COVARIANCE_FAMILIES)


def test_all_grid_has_tied_and_spherical_at_the_diag_size():
    assert (1_000_000, 16, 16, "diag") in cli.GRIDS["all"]
    for cov_type in NEW_TYPES:
        assert (1_000_000, 16, 16, cov_type) in cli.GRIDS["all"]
    assert {row[3] for row in cli.GRIDS["small"]} == {"full", "diag"}  # used by tests


@pytest.mark.parametrize("cov_type", protocol.COVARIANCE_TYPES)
def test_initial_parameters_in_sklearn_layout(cov_type):
    x = protocol.make_data(3000, 4, 3)
    weights, means, covs = protocol.initial_parameters(x, 3, cov_type)
    assert weights.shape == (3,) and means.shape == (3, 4)
    assert covs.shape == _sklearn_shape(cov_type, 3, 4)
    cov = np.cov(x.T)
    # Every type is the data's covariance, in its own layout, for every component.
    expected = {
        "full": np.broadcast_to(cov, (3, 4, 4)),
        "tied": cov,
        "diag": np.broadcast_to(np.diag(cov), (3, 4)),
        "spherical": np.full(3, np.trace(cov) / 4),
    }[cov_type]
    np.testing.assert_allclose(covs, expected, rtol=1e-12)
    # The same means for every type (one seeded draw).
    np.testing.assert_array_equal(means, protocol.initial_parameters(x, 3, "full")[1])


def test_protocol_rejects_unknown_covariance_type():
    x = protocol.make_data(100, 2, 2)
    for call in (
        lambda: protocol.initial_parameters(x, 2, "banded"),
        lambda: protocol.vb_prior(x, 2, "banded"),
        lambda: protocol.covariances_float64(np.ones(2), "banded"),
        lambda: protocol.score_float64(x, np.full(2, 0.5), x[:2], np.ones(2), "banded"),
    ):
        with pytest.raises(ValueError, match="spherical"):
            call()


@pytest.mark.parametrize("cov_type", protocol.COVARIANCE_TYPES)
def test_score_and_responsibilities_match_sklearn(cov_type):
    # Fitted (so the components differ), small blocks (so blocking is exercised).
    x = protocol.make_data(700, 3, 3)
    gm = _sklearn_fit(x, cov_type, n_components=3, random_state=0, max_iter=20)
    params = (gm.weights_, gm.means_, gm.covariances_)
    assert gm.covariances_.shape == _sklearn_shape(cov_type, 3, 3)
    ours = protocol.score_float64(x, *params, cov_type, block=256)
    np.testing.assert_allclose(ours, gm.score(x), rtol=1e-10)
    resp = protocol.responsibilities_float64(x, *params, cov_type, block=256)
    np.testing.assert_allclose(resp, gm.predict_proba(x), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("cov_type", NEW_TYPES)
def test_vb_prior_is_sklearns_default_layout(cov_type):
    from sklearn.mixture import BayesianGaussianMixture

    x = protocol.make_data(2000, 3, 3)
    prior = protocol.vb_prior(x, 3, cov_type)
    if cov_type == "tied":
        assert prior["covariance_prior"].shape == (3, 3)
    else:
        assert isinstance(prior["covariance_prior"], float)
    # scikit-learn's own default for the type (all samples here: < 100_000) is the same.
    bgm = BayesianGaussianMixture(n_components=3, covariance_type=cov_type, max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bgm.fit(x)
    np.testing.assert_allclose(prior["covariance_prior"], bgm.covariance_prior_, rtol=1e-12)


def _fewer_is_distinguishable(x, init, cov_type, ll, run, n_iter):
    fewer = run(x, init, cov_type, np.dtype("float64"), n_iter - 1)
    return abs(ll - protocol.score_float64(x, *fewer["params"], cov_type)) > 1e-6


@pytest.mark.parametrize("cov_type", NEW_TYPES)
def test_em_adapters_agree_from_the_shared_start(cov_type):
    # jaxgmm's EM and scikit-learn's GaussianMixture from the same start, the same four
    # iterations: the same parameters in float64, and jaxgmm's float32 close to them.
    x = protocol.make_data(2000, 3, 3)
    init = protocol.initial_parameters(x, 3, cov_type)
    ours = peers.run_jaxgmm(x, init, cov_type, np.dtype("float64"), 4)
    theirs = peers.run_sklearn(x, init, cov_type, np.dtype("float64"), 4)
    assert ours["n_iter"] == theirs["n_iter"] == 4
    assert ours["s_per_iter"] > 0 and theirs["s_per_iter"] > 0
    for got, want in zip(ours["params"], theirs["params"]):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    ll = protocol.score_float64(x, *ours["params"], cov_type)
    assert ll == pytest.approx(protocol.score_float64(x, *theirs["params"], cov_type), abs=1e-10)
    assert _fewer_is_distinguishable(x, init, cov_type, ll, peers.run_sklearn, 4)
    ours32 = peers.run_jaxgmm(x, init, cov_type, np.dtype("float32"), 4)
    assert abs(protocol.score_float64(x, *ours32["params"], cov_type) - ll) < 1e-5


def test_unsupported_reasons_per_dtype_and_covariance_type():
    assert peers.unsupported("jaxgmm", "float64", "tied") is None
    assert peers.unsupported("sklearn-vb", "float32", "spherical") is None
    assert peers.unsupported("gmmx", "float32", "full") is None
    for cov_type in NEW_TYPES:
        assert "gmmx has no" in peers.unsupported("gmmx", "float32", cov_type)
    both = peers.unsupported("gmmx", "float64", "tied")
    assert "float32 only" in both and "no tied" in both
    assert "no tied" in peers.unsupported("pomegranate", "float64", "tied")
    assert peers.unsupported("pomegranate", "float64", "spherical") is None  # its 'sphere'


@pytest.mark.parametrize("cov_type", NEW_TYPES)
def test_gmmx_refuses_tied_and_spherical(cov_type):
    # gmmx 0.7 has only full and diag families (gmmx.gmm.CovarianceType); the adapter
    # says so itself, whether gmmx is installed or not (the check precedes the import).
    x = protocol.make_data(200, 2, 2)
    init = protocol.initial_parameters(x, 2, cov_type)
    with pytest.raises(ValueError, match="full and diag"):
        peers.run_gmmx(x, init, cov_type, np.dtype("float32"), 2)
    gmmx = pytest.importorskip("gmmx.gmm")
    assert cov_type not in {t.value for t in gmmx.CovarianceType}


def test_pomegranate_refuses_tied():
    x = protocol.make_data(200, 2, 2)
    with pytest.raises(ValueError, match="no 'tied'"):
        peers.run_pomegranate(
            x, protocol.initial_parameters(x, 2, "tied"), "tied", np.dtype("float64"), 2
        )


def test_pomegranate_spherical_matches_sklearn():
    torch = pytest.importorskip("torch")
    pytest.importorskip("pomegranate")
    x = protocol.make_data(2000, 3, 3)
    init = protocol.initial_parameters(x, 3, "spherical")
    default = torch.get_default_dtype()
    out = peers.run_pomegranate(x, init, "spherical", np.dtype("float64"), 4)
    assert torch.get_default_dtype() == default
    assert out["params"][2].shape == (3,)
    # pomegranate never regularises covariances: scikit-learn with reg_covar=0.
    ref = _sklearn_fit(
        x, "spherical", n_components=3, max_iter=4, tol=0.0, reg_covar=0.0,
        weights_init=init[0], means_init=init[1], precisions_init=1.0 / init[2],
    )  # fmt: skip
    for got, want in zip(out["params"], (ref.weights_, ref.means_, ref.covariances_)):
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


def test_bench_skips_unsupported_covariance_types(tmp_path, monkeypatch, capsys):
    # The command line's skip check: gmmx's and pomegranate's tied rows are reported as
    # skipped with the peer's limitation, never spawned; scikit-learn's row runs.
    spawned = []

    def spawn(job):
        spawned.append(job.get("tool"))
        return json.loads(json.dumps(cli.run_job(job)))

    tools = {"sklearn": peers.run_sklearn, "gmmx": peers.run_gmmx}
    tools["pomegranate"] = peers.run_pomegranate
    monkeypatch.setattr(cli, "TOOLS", tools)
    monkeypatch.setattr(cli, "spawn", spawn)
    monkeypatch.setitem(cli.GRIDS, "small", [(400, 2, 2, "tied")])
    args = ["--dtypes", "float32", "--iters", "2", "--accuracy-iters", "0", "--no-scaling",
            "--gemm-size", "32", "--exp-elements", "1000", "--out", str(tmp_path)]  # fmt: skip
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "N=400 D=2 K=2 tied float32 gmmx: skipped, gmmx has no tied covariances" in out
    assert "N=400 D=2 K=2 tied float32 pomegranate: skipped, pomegranate has no tied" in out
    assert "N=400 D=2 K=2 tied float32 sklearn: " in out
    assert [t for t in spawned if t is not None] == ["sklearn"]
