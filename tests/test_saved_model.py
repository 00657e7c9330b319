"""The saved-model format (`jaxgmm.saved`) and `jaxgmm.load`: a round trip keeps every
prediction, the loaded attributes predict as scikit-learn's own estimators do with the same
attributes set (an independent reference), and a file that is corrupted, not a saved model
or from a newer format version is refused with a message saying so."""

import io
import json
import re
import warnings
import zipfile

import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.datasets import load_iris
from sklearn.mixture import BayesianGaussianMixture as SklearnBGM
from sklearn.mixture import GaussianMixture as SklearnGM

import jaxgmm
from jaxgmm.saved import FORMAT_VERSION, SavedModel, SavedModelError

pytestmark = pytest.mark.usefixtures("require_x64")

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]
X = load_iris().data[::2]  # 75 x 4, float64
X_NEW = load_iris().data[1::2] + 0.05


def _quiet_fit(estimator, x=X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of the short fits
        return estimator.fit(x)


def _bytes_round_trip(saved):
    return SavedModel.from_bytes(saved.to_bytes())


def _same_predictions(a, b, x):
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))
    np.testing.assert_array_equal(a.score_samples(x), b.score_samples(x))


# Parameters fitted by scikit-learn (NumPy only: no compile), saved with from_params, loaded
# and compared with scikit-learn's own predictions: the reference is independent of jaxgmm.


@pytest.fixture(scope="module")
def sklearn_gm():
    return {
        cov: _quiet_fit(SklearnGM(3, covariance_type=cov, random_state=0, max_iter=30))
        for cov in COVARIANCE_TYPES
    }


@pytest.fixture(scope="module")
def sklearn_bgm():
    weight_types = {"full": "dirichlet_process", "tied": "dirichlet_distribution",
                    "diag": "dirichlet_process", "spherical": "dirichlet_distribution"}  # fmt: skip
    return {
        cov: _quiet_fit(
            SklearnBGM(
                n_components=3,
                covariance_type=cov,
                random_state=0,
                max_iter=30,
                weight_concentration_prior_type=weight_types[cov],
            )
        )  # fmt: skip
        for cov in COVARIANCE_TYPES
    }


def _params(reference):
    return jaxgmm.GMMParams(reference.weights_, reference.means_, reference.precisions_cholesky_)


def _vb_spec(reference):
    """scikit-learn's prior, as `jaxgmm.BayesianGaussianMixture` builds it."""
    prior = jaxgmm.priors.ConjugatePrior(
        weight_concentration=reference.weight_concentration_prior_,
        mean_prior=reference.mean_prior_,
        mean_precision=reference.mean_precision_prior_,
        degrees_of_freedom=reference.degrees_of_freedom_prior_,
        covariance_prior=reference.covariance_prior_,
        weight_prior_type=reference.weight_concentration_prior_type,
    )
    return jaxgmm.GMMSpec(3, reference.covariance_type, reference.reg_covar, prior)


def _vb_posterior(reference):
    concentration = reference.weight_concentration_
    return jaxgmm.vb.VBPosterior(
        weight_concentration=np.stack(concentration) if isinstance(concentration, tuple)
        else concentration,
        mean_precision=reference.mean_precision_,
        means=reference.means_,
        degrees_of_freedom=np.asarray(reference.degrees_of_freedom_),
        covariances=reference.covariances_,
        prec_chol=reference.precisions_cholesky_,
    )  # fmt: skip


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_gaussian_mixture_round_trip_predicts_as_sklearn(sklearn_gm, covariance_type):
    reference = sklearn_gm[covariance_type]
    spec = jaxgmm.GMMSpec(3, covariance_type, reference.reg_covar)
    loaded = _bytes_round_trip(SavedModel.from_params(_params(reference), spec)).estimator()
    assert type(loaded) is jaxgmm.GaussianMixture and loaded.n_features_in_ == 4
    for name in ("weights_", "means_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(reference, name))
    for name in ("covariances_", "precisions_"):
        np.testing.assert_allclose(getattr(loaded, name), getattr(reference, name), rtol=1e-10)
    np.testing.assert_array_equal(loaded.predict(X_NEW), reference.predict(X_NEW))
    np.testing.assert_allclose(loaded.predict_proba(X_NEW), reference.predict_proba(X_NEW),
                               rtol=1e-9, atol=1e-12)  # fmt: skip
    np.testing.assert_allclose(loaded.score_samples(X_NEW), reference.score_samples(X_NEW),
                               rtol=1e-11, atol=1e-12)  # fmt: skip
    assert loaded.bic(X_NEW) == pytest.approx(reference.bic(X_NEW), rel=1e-11)

    # from_estimator on the loaded estimator, and back: the same predictions exactly.
    again = _bytes_round_trip(SavedModel.from_estimator(loaded)).estimator()
    _same_predictions(again, loaded, X_NEW)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_bayesian_mixture_round_trip_predicts_as_sklearn(sklearn_bgm, covariance_type):
    reference = sklearn_bgm[covariance_type]
    saved = SavedModel.from_params(
        _params(reference), _vb_spec(reference), posterior=_vb_posterior(reference),
        update="sklearn",  # scikit-learn's E-step, which its predict uses
    )  # fmt: skip
    loaded = _bytes_round_trip(saved).estimator()
    assert type(loaded) is jaxgmm.BayesianGaussianMixture and loaded.update == "sklearn"
    np.testing.assert_array_equal(loaded.predict(X_NEW), reference.predict(X_NEW))
    np.testing.assert_allclose(loaded.predict_proba(X_NEW), reference.predict_proba(X_NEW),
                               rtol=1e-9, atol=1e-12)  # fmt: skip
    for name in ("weight_concentration_prior_", "mean_precision_prior_", "mean_prior_",
                 "degrees_of_freedom_prior_", "covariance_prior_"):  # fmt: skip
        np.testing.assert_allclose(getattr(loaded, name), getattr(reference, name), rtol=1e-12)

    again = _bytes_round_trip(SavedModel.from_estimator(loaded)).estimator()
    _same_predictions(again, loaded, X_NEW)
    np.testing.assert_array_equal(
        again.score_samples_predictive(X_NEW), loaded.score_samples_predictive(X_NEW)
    )
    assert again.spec_ == loaded.spec_ == _vb_spec(reference)


# Estimators fitted by jaxgmm: everything fitted survives.


def test_fitted_gaussian_mixture_round_trip(tmp_path):
    original = _quiet_fit(jaxgmm.GaussianMixture(3, random_state=0, max_iter=5, tol=1e-4))
    path = tmp_path / "model.npz"
    path.write_bytes(SavedModel.from_estimator(original).to_bytes())
    loaded = jaxgmm.load(path)
    _same_predictions(loaded, original, X_NEW)
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(original, name))
    for name in ("converged_", "n_iter_", "lower_bound_", "log_likelihood_"):
        assert getattr(loaded, name) == getattr(original, name), name
    assert loaded.get_params() == original.get_params()


def test_fitted_bayesian_mixture_round_trip_and_refit_under_the_same_prior(tmp_path):
    original = _quiet_fit(
        jaxgmm.BayesianGaussianMixture(n_components=3, covariance_type="diag", random_state=0,
                                       max_iter=5, update="sklearn")
    )  # fmt: skip
    path = tmp_path / "model.npz"
    path.write_bytes(SavedModel.from_estimator(original).to_bytes())
    loaded = jaxgmm.load(path)
    _same_predictions(loaded, original, X_NEW)
    np.testing.assert_array_equal(
        loaded.score_samples_predictive(X_NEW), original.score_samples_predictive(X_NEW)
    )
    assert loaded.spec_ == original.spec_  # the prior, hyperparameter for hyperparameter
    assert loaded.n_active_components_ == original.n_active_components_
    assert loaded.elbo_ == original.elbo_
    refit = _quiet_fit(loaded.set_params(random_state=0))
    assert refit.spec_ == original.spec_
    np.testing.assert_allclose(refit.means_, original.means_, rtol=1e-10)


def test_map_spec_and_prior_round_trip(sklearn_gm):
    prior = jaxgmm.priors.ConjugatePrior(weight_concentration=2.0, mean_precision=0.5)
    spec = jaxgmm.priors.resolve_prior(jaxgmm.GMMSpec(3, "diag", 1e-5, prior), X)
    params = _params(sklearn_gm["diag"])
    saved = SavedModel.from_params(
        params, spec, feature_names=["a", "b", "c", "d"], provenance={"method": "em"}
    )
    back = _bytes_round_trip(saved)
    assert back.spec == spec  # the resolved prior, exactly
    assert back.feature_names == ["a", "b", "c", "d"]
    assert back.provenance["method"] == "em" and back.provenance["jaxgmm_version"]
    assert back.metadata["format_version"] == FORMAT_VERSION
    # The file is a plain npz: readable without pickle, metadata as JSON text.
    with np.load(io.BytesIO(saved.to_bytes()), allow_pickle=False) as npz:
        assert json.loads(str(npz["metadata.json"]))["kind"] == "GaussianMixture"
    np.testing.assert_allclose(
        back.estimator().score_samples(X_NEW),
        sklearn_gm["diag"].score_samples(X_NEW),
        rtol=1e-11,
    )


def test_standardised_model_transforms_new_data_and_load_warns(sklearn_gm, tmp_path):
    raw = X * 10.0 + 3.0  # "the data as recorded"; X is its standardisation here
    mean, scale = np.full(4, 3.0), np.full(4, 10.0)
    g = sklearn_gm["full"]
    path = tmp_path / "model.npz"
    saved = SavedModel.from_params(_params(g), jaxgmm.GMMSpec(3), standardize=(mean, scale))
    path.write_bytes(saved.to_bytes())
    with pytest.warns(UserWarning, match="standardised"):
        estimator = jaxgmm.load(path)
    saved = SavedModel.read(path)
    np.testing.assert_allclose(saved.transform(raw), X, rtol=1e-13)
    # log p(raw) = log p(z) + log|dz/draw|, against SciPy's density of the raw data.
    raw_density = np.log(sum(
        w * multivariate_normal(mean + scale * m, np.outer(scale, scale) * c).pdf(raw)
        for w, m, c in zip(g.weights_, g.means_, g.covariances_)
    ))  # fmt: skip
    ours = estimator.score_samples(saved.transform(raw)) + saved.log_abs_det_jacobian
    np.testing.assert_allclose(ours, raw_density, rtol=1e-10)
    with pytest.raises(ValueError, match=r"shape \(n_samples, 4\)"):
        saved.transform(raw[:, :3])


def test_feature_names_in_survive(sklearn_gm):
    estimator = SavedModel.from_params(_params(sklearn_gm["full"]), jaxgmm.GMMSpec(3)).estimator()
    estimator.feature_names_in_ = np.asarray(["sl", "sw", "pl", "pw"], dtype=object)
    back = _bytes_round_trip(SavedModel.from_estimator(estimator))
    assert back.feature_names == ["sl", "sw", "pl", "pw"]
    assert list(back.estimator().feature_names_in_) == ["sl", "sw", "pl", "pw"]


def test_unfitted_estimator_is_refused():
    with pytest.raises((ValueError, AttributeError), match="not fitted"):
        SavedModel.from_estimator(jaxgmm.GaussianMixture(2))
    with pytest.raises(ValueError, match="jaxgmm.GaussianMixture"):
        SavedModel.from_estimator(SklearnGM(2))


# -- folders and methods ------------------------------------------------------------------


def test_load_from_a_folder_picks_the_method(sklearn_gm, sklearn_bgm, tmp_path):
    models = tmp_path / "run" / "models"
    models.mkdir(parents=True)
    reference = sklearn_bgm["diag"]
    gm = SavedModel.from_params(_params(sklearn_gm["diag"]), jaxgmm.GMMSpec(3, "diag"))
    vb = SavedModel.from_params(
        _params(reference), _vb_spec(reference), posterior=_vb_posterior(reference)
    )
    (models / "em.npz").write_bytes(gm.to_bytes())
    (models / "vb.npz").write_bytes(vb.to_bytes())
    assert type(jaxgmm.load(tmp_path / "run", "em")) is jaxgmm.GaussianMixture
    assert type(jaxgmm.load(models, "vb")) is jaxgmm.BayesianGaussianMixture
    with pytest.raises(FileNotFoundError, match=r"several methods \['em', 'vb'\]"):
        jaxgmm.load(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"no saved model 'nuts'; saved: \['em', 'vb'\]"):
        jaxgmm.load(tmp_path / "run", "nuts")
    with pytest.raises(FileNotFoundError, match="no saved models"):
        jaxgmm.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such"):
        jaxgmm.load(tmp_path / "missing.npz")


# -- refusals -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_bytes(sklearn_gm):
    return SavedModel.from_params(_params(sklearn_gm["full"]), jaxgmm.GMMSpec(3)).to_bytes()


def _rewrite(data, change_metadata=None, change_arrays=None):
    """The file ``data`` with its metadata and arrays edited (a consistent npz)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        metadata = json.loads(str(npz["metadata.json"]))
        arrays = {k: npz[k] for k in npz.files if k != "metadata.json"}
    if change_metadata:
        change_metadata(metadata)
    if change_arrays:
        change_arrays(arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **{"metadata.json": np.asarray(json.dumps(metadata))}, **arrays)
    return buffer.getvalue()


def test_good_bytes_load(good_bytes):
    assert SavedModel.from_bytes(good_bytes).kind == "GaussianMixture"


def test_truncated_and_bit_flipped_files_are_refused(good_bytes, tmp_path):
    path = tmp_path / "m.npz"
    path.write_bytes(good_bytes[: len(good_bytes) // 2])
    with pytest.raises(SavedModelError, match="not a readable jaxgmm saved model"):
        jaxgmm.load(path)
    # Flip bytes inside the stored arrays (past the first local header): zip's CRC fails.
    flipped = bytearray(good_bytes)
    with zipfile.ZipFile(io.BytesIO(good_bytes)) as archive:
        info = archive.getinfo("params/means.npy")
    local = good_bytes[info.header_offset : info.header_offset + 30]
    name_length, extra_length = (
        int.from_bytes(local[26:28], "little"),
        int.from_bytes(local[28:30], "little"),
    )
    start = info.header_offset + 30 + name_length + extra_length + 5
    for i in range(start, start + 8):
        flipped[i] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(SavedModelError, match=re.escape(str(path))):
        jaxgmm.load(path)


def test_not_a_saved_model_is_refused(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("weights,means\n1,2\n")
    with pytest.raises(SavedModelError, match="not a readable jaxgmm saved model"):
        jaxgmm.load(text)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.ones(3))
    with pytest.raises(SavedModelError, match="not a jaxgmm saved model"):
        jaxgmm.load(other)


def test_newer_format_version_is_refused_with_upgrade_advice(good_bytes):
    newer = _rewrite(good_bytes, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(SavedModelError, match=f"format version {FORMAT_VERSION + 1}.*upgrade"):
        SavedModel.from_bytes(newer)


@pytest.mark.parametrize(
    "edit, match",
    [
        (dict(change_arrays=lambda a: a.pop("params/means")), "missing"),
        (dict(change_arrays=lambda a: a.update({"params/weights": np.ones(3) / 3 * np.nan})),
         "finite"),
        (dict(change_metadata=lambda m: m["spec"].update(n_components=4)),
         r"params/weights has shape \(3,\), expected \(4,\)"),
        (dict(change_metadata=lambda m: m["spec"].update(covariance_type="banana")),
         "covariance_type"),
        (dict(change_metadata=lambda m: m.pop("provenance")), "lacks"),
        (dict(change_metadata=lambda m: m.update(kind="Pipeline")), "kind"),
        (dict(change_metadata=lambda m: m.update(format_version="1")), "format_version"),
    ],
)  # fmt: skip
def test_corrupted_contents_are_refused(good_bytes, edit, match):
    bad = _rewrite(good_bytes, **edit)
    with pytest.raises(SavedModelError, match=match):
        SavedModel.from_bytes(bad, name="bad.npz")


def test_a_listed_shape_that_disagrees_is_corruption(good_bytes):
    def shrink(arrays):
        arrays["params/weights"] = arrays["params/weights"][:2] / arrays["params/weights"][:2].sum()

    with pytest.raises(SavedModelError, match="corrupted: params/weights has shape"):
        SavedModel.from_bytes(_rewrite(good_bytes, change_arrays=shrink))


def test_parameters_that_cannot_be_read_back_are_not_saved(sklearn_gm):
    params = _params(sklearn_gm["full"])
    bad = params._replace(means=np.where(np.eye(3, 4, dtype=bool), np.nan, params.means))
    with pytest.raises(SavedModelError, match="cannot save the model: params/means is not"):
        SavedModel.from_params(bad, jaxgmm.GMMSpec(3))
    with pytest.raises(ValueError, match="pick one restart"):
        SavedModel.from_params(jaxgmm.GMMParams(*(a[None] for a in params)), jaxgmm.GMMSpec(3))
