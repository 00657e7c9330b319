"""The saved-model format: a fitted mixture (spec, parameters, prior, preprocessing and
provenance) as JSON metadata plus named arrays in one ``.npz`` file, and `load`, which reads
such a file back into a fitted `jaxgmm.GaussianMixture` or `jaxgmm.BayesianGaussianMixture`.

The library never writes files: `SavedModel.to_bytes` gives a file's bytes and the caller
writes them (the experiment runner writes ``models/<method>.npz`` into its run folder).
Nothing is pickled, so loading a file runs no code from it (``np.load(...,
allow_pickle=False)``).

File layout, format version 1 (`FORMAT_VERSION`), all arrays in the dtype they were fitted in:

- ``metadata.json``: a 0-d string array holding the JSON metadata: ``format``
  ("jaxgmm.saved_model"), ``format_version``, ``kind`` ("GaussianMixture" or
  "BayesianGaussianMixture"), ``spec`` (n_components, covariance_type, reg_covar),
  ``n_features``, ``prior`` (None, or ``name`` and ``hyperparameters`` as
  `jaxgmm.priors.make_prior` takes them), ``estimator`` (constructor arguments that are
  plain values, e.g. ``update``), ``fitted`` (scalars such as ``converged_``,
  ``n_iter_``, ``lower_bound_``), ``feature_names`` (or None), ``preprocessing`` (None, or
  ``{"standardize": true}``), ``provenance`` (jaxgmm_version, created_utc, and what the
  writer adds: method, config file and hash, dataset, ...) and ``arrays`` (the shape and
  dtype of every array below, checked on reading).
- ``params/weights`` (K,), ``params/means`` (K, D), ``params/prec_chol`` and
  ``params/covariances`` (full (K, D, D), tied (D, D), diag (K, D), spherical (K,)): the
  (plug-in) parameters the estimator's ``predict`` and ``score_samples`` use.
- for a variational fit, ``posterior/<field>`` for every field of `jaxgmm.vb.VBPosterior`.
- when the model was fitted on standardised data, ``preprocessing/mean`` and
  ``preprocessing/scale`` (D,): the model's X is (data - mean) / scale.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import io
import json
import math
import numbers
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from jaxgmm.em.estimator import GaussianMixture
from jaxgmm.model.covariance import get_family
from jaxgmm.model.params import GMMParams, precisions
from jaxgmm.model.spec import GMMSpec
from jaxgmm.priors import PRIORS, Prior, make_prior
from jaxgmm.vb.estimator import BayesianGaussianMixture
from jaxgmm.vb.families import get_vb_family
from jaxgmm.vb.predictive import n_active_components
from jaxgmm.vb.steps import VBPosterior

FORMAT = "jaxgmm.saved_model"
#: The newest format version this jaxgmm writes and reads; a file from a newer one is refused.
FORMAT_VERSION = 1
#: The folder of a run folder that holds one saved model per method (``<method>.npz``).
MODELS_FOLDER = "models"
#: The suffix of a saved-model file.
SUFFIX = ".npz"

_METADATA = "metadata.json"
_KINDS = {"GaussianMixture": GaussianMixture, "BayesianGaussianMixture": BayesianGaussianMixture}
_PARAMS = ("weights", "means", "prec_chol", "covariances")
# Scalars of a fitted estimator that are worth keeping (they describe the fit, not the model).
_FITTED_SCALARS = ("converged_", "n_iter_", "lower_bound_", "log_likelihood_", "elbo_")
_FITTED = (*_FITTED_SCALARS, "feature_names_in_")


class SavedModelError(ValueError):
    """A file that is not a jaxgmm saved model, is corrupted, or comes from a newer format
    version; the message names the file and what is wrong."""


def _version():
    try:
        return importlib.metadata.version("jaxgmm")
    except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
        return None


def _plain(value):
    """A JSON value, or None when ``value`` is not one (finite numbers, strings, bools, None
    and nested lists of them)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return None if any(i is None and v is not None for i, v in zip(items, value)) else items
    return None


def _scalar(value):
    """``value`` as a plain scalar (str, bool, int, finite float), or None."""
    plain = _plain(value)
    return None if isinstance(plain, list) else plain


def _prior_metadata(prior):
    if prior is None:
        return None
    if not (isinstance(prior, Prior) and dataclasses.is_dataclass(prior)):
        raise ValueError(f"cannot save a prior of type {type(prior).__name__}")
    names = [name for name, cls in PRIORS.items() if cls is type(prior)]
    if not names:
        raise ValueError(
            f"cannot save a prior of unregistered type {type(prior).__name__}; "
            "register it with jaxgmm.priors.register_prior"
        )
    hyperparameters = {}
    for field in dataclasses.fields(prior):
        value = getattr(prior, field.name)
        plain = _plain(value)
        if plain is None and value is not None:
            raise ValueError(
                f"cannot save prior {names[0]!r}: hyperparameter {field.name}={value!r} is "
                "not a finite number, string or nested list of them"
            )
        hyperparameters[field.name] = plain
    return {"name": names[0], "hyperparameters": hyperparameters}


def _utc_now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True, eq=False)
class SavedModel:
    """A saved model in memory: the metadata (a JSON-able dict) and the arrays.

    Build one with `SavedModel.from_estimator` (a fitted estimator),
    `SavedModel.from_params` (parameters and a spec, as the experiment runner does),
    `SavedModel.from_bytes` or `SavedModel.read` (a file); write ``to_bytes()`` to a file.

    Attributes:
        metadata: dict, see the module docstring.
        arrays: {name: numpy array}, see the module docstring.
    """

    metadata: dict
    arrays: dict

    # -- building -----------------------------------------------------------------------

    @classmethod
    def from_params(
        cls,
        params,
        spec,
        *,
        posterior=None,
        update="exact",
        feature_names=None,
        standardize=None,
        estimator_params=None,
        fitted=None,
        provenance=None,
    ):
        """The saved model of fitted parameters.

        Args:
            params: `GMMParams` of one fit (no restart axis): the parameters ``predict``
                and ``score_samples`` use (plug-in values for a posterior).
            spec: the `GMMSpec` fitted, its prior (if any) resolved.
            posterior: None, or the `jaxgmm.vb.VBPosterior` of a variational fit, which
                makes the model a `BayesianGaussianMixture` (``spec.prior`` must then be
                the conjugate prior it was fitted under).
            update: the variational fit's ``update`` ("exact" or "sklearn"; its E-step
                is what ``predict`` uses).
            feature_names: None or the n_features names of X's columns.
            standardize: None, or (mean, scale) arrays of shape (n_features,) when the
                model was fitted on (data - mean) / scale.
            estimator_params: further constructor arguments of the estimator (plain
                values only; others are left out).
            fitted: further fitted scalars to restore (e.g. ``{"converged_": True}``).
            provenance: dict of JSON-able facts about the fit (method, config, dataset,
                ...); ``jaxgmm_version`` and ``created_utc`` are added when absent.
        """
        params = GMMParams(*(np.asarray(a) for a in params))
        if params.means.ndim != 2:
            raise ValueError(
                f"params.means must have shape (n_components, n_features), got "
                f"{params.means.shape} (pick one restart first)"
            )
        n_features = int(params.means.shape[1])
        family = get_family(spec.covariance_type)
        arrays = {f"params/{name}": getattr(params, name) for name in GMMParams._fields}
        arrays["params/covariances"] = np.asarray(
            family.covariance_from_prec_chol(params.prec_chol)
        )
        kind = "GaussianMixture"
        estimator = {}
        if posterior is not None:
            kind = "BayesianGaussianMixture"
            posterior = VBPosterior(*(np.asarray(a) for a in posterior))
            for name in VBPosterior._fields:
                arrays[f"posterior/{name}"] = getattr(posterior, name)
            estimator["update"] = update
        # Scalars only: array arguments (means_init, ...) describe how a fit started,
        # not the model.
        estimator.update(
            {k: _scalar(v) for k, v in (estimator_params or {}).items() if _scalar(v) is not None}
        )
        preprocessing = None
        if standardize is not None:
            mean, scale = (np.asarray(a, dtype=np.float64) for a in standardize)
            arrays["preprocessing/mean"], arrays["preprocessing/scale"] = mean, scale
            preprocessing = {"standardize": True}
        provenance = dict(provenance or {})
        provenance.setdefault("jaxgmm_version", _version())
        provenance.setdefault("created_utc", _utc_now())
        metadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "spec": {
                "n_components": spec.n_components,
                "covariance_type": spec.covariance_type,
                "reg_covar": spec.reg_covar,
            },
            "n_features": n_features,
            "prior": _prior_metadata(spec.prior),
            "estimator": estimator,
            "fitted": {k: _plain(v) for k, v in (fitted or {}).items() if _plain(v) is not None},
            "feature_names": None if feature_names is None else [str(f) for f in feature_names],
            "preprocessing": preprocessing,
            "provenance": provenance,
        }
        saved = cls(metadata=metadata, arrays=arrays)
        saved = cls(metadata={**metadata, "arrays": saved._array_listing()}, arrays=arrays)
        saved._check("cannot save the model", saving=True)  # what is written reads back
        json.dumps(saved.metadata, allow_nan=False)  # plain JSON, or a ValueError now
        return saved

    @classmethod
    def from_estimator(cls, estimator, *, standardize=None, provenance=None):
        """The saved model of a fitted `jaxgmm.GaussianMixture` or
        `jaxgmm.BayesianGaussianMixture` (its fitted attributes, spec, prior, the
        constructor arguments that are plain values and ``feature_names_in_``).
        ``standardize`` and ``provenance``: as in `from_params`."""
        if not isinstance(estimator, tuple(_KINDS.values())):
            raise ValueError(
                "from_estimator saves a jaxgmm.GaussianMixture or "
                f"jaxgmm.BayesianGaussianMixture, got {type(estimator).__name__}"
            )
        estimator._check_fitted()  # the estimator's own not-fitted error
        spec = getattr(estimator, "spec_", None)
        if spec is None:
            spec = estimator._check_common_parameters()
        params = GMMParams(estimator.weights_, estimator.means_, estimator.precisions_cholesky_)
        posterior = None
        if isinstance(estimator, BayesianGaussianMixture):
            concentration = estimator.weight_concentration_
            if isinstance(concentration, tuple):
                concentration = np.stack(concentration)
            posterior = VBPosterior(
                weight_concentration=concentration,
                mean_precision=estimator.mean_precision_,
                means=estimator.means_,
                degrees_of_freedom=estimator.degrees_of_freedom_,
                covariances=estimator.covariances_,
                prec_chol=estimator.precisions_cholesky_,
            )
        names = getattr(estimator, "feature_names_in_", None)
        fitted = {k: getattr(estimator, k) for k in _FITTED_SCALARS if hasattr(estimator, k)}
        if names is not None:
            fitted["feature_names_in_"] = [str(n) for n in names]
        return cls.from_params(
            params,
            spec,
            posterior=posterior,
            update=getattr(estimator, "update", "exact"),
            feature_names=names,
            standardize=standardize,
            estimator_params=estimator.get_params(),
            fitted=fitted,
            provenance=provenance,
        )

    # -- bytes and files ----------------------------------------------------------------

    def to_bytes(self):
        """The ``.npz`` file's bytes (compressed; no pickled objects)."""
        buffer = io.BytesIO()
        text = json.dumps(self.metadata, allow_nan=False, indent=1)
        np.savez_compressed(buffer, **{_METADATA: np.asarray(text)}, **self.arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data, name="<bytes>"):
        """A saved model from a file's bytes; ``name`` is used in error messages.

        Raises:
            SavedModelError: not a saved model, corrupted, or from a newer format version.
        """
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                files = list(npz.files)
                if _METADATA not in files:
                    raise SavedModelError(
                        f"{name}: not a jaxgmm saved model (an .npz file without "
                        f"{_METADATA!r}; it holds {sorted(files)[:8]})"
                    )
                text = npz[_METADATA]
                arrays = {key: npz[key] for key in files if key != _METADATA}
        except SavedModelError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as error:
            raise SavedModelError(
                f"{name}: not a readable jaxgmm saved model (corrupted or not an .npz file: "
                f"{error})"
            ) from None
        try:
            metadata = json.loads(str(text))
        except (TypeError, ValueError) as error:
            raise SavedModelError(f"{name}: corrupted: {_METADATA} is not JSON ({error})") from None
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
            raise SavedModelError(f"{name}: not a jaxgmm saved model (no format {FORMAT!r})")
        version = metadata.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise SavedModelError(f"{name}: corrupted: format_version is {version!r}")
        if version > FORMAT_VERSION:
            raise SavedModelError(
                f"{name}: written in saved-model format version {version} by jaxgmm "
                f"{metadata.get('provenance', {}).get('jaxgmm_version')}; this jaxgmm "
                f"({_version()}) reads versions up to {FORMAT_VERSION}: upgrade jaxgmm to load it"
            )
        saved = cls(metadata=metadata, arrays=arrays)
        saved._check(name)
        return saved

    @classmethod
    def read(cls, path, method=None):
        """Read a saved model: ``path`` is a saved-model file, or a folder holding
        ``models/<method>.npz`` files (a run folder of ``python -m experiments.run``) or
        ``<method>.npz`` files; ``method`` picks one (needed when there are several).

        Raises:
            FileNotFoundError: no such file, folder or method (the message lists the
                methods saved).
            SavedModelError: not a saved model, corrupted, or from a newer format version.
        """
        path = _model_path(Path(path), method)
        return cls.from_bytes(path.read_bytes(), name=str(path))

    # -- what it holds ------------------------------------------------------------------

    @property
    def kind(self):
        """The estimator's class name: "GaussianMixture" or "BayesianGaussianMixture"."""
        return self.metadata["kind"]

    @property
    def spec(self):
        """The `GMMSpec` fitted, its prior rebuilt (None for maximum likelihood)."""
        meta = self.metadata
        prior = None
        if meta["prior"] is not None:
            prior = make_prior(meta["prior"]["name"], **meta["prior"]["hyperparameters"])
        return GMMSpec(**meta["spec"], prior=prior)

    @property
    def params(self):
        """The `GMMParams` (numpy arrays) that ``predict`` and ``score_samples`` use."""
        return GMMParams(*(self.arrays[f"params/{name}"] for name in GMMParams._fields))

    @property
    def posterior(self):
        """The `jaxgmm.vb.VBPosterior` of a variational fit, else None."""
        if self.kind != "BayesianGaussianMixture":
            return None
        return VBPosterior(*(self.arrays[f"posterior/{name}"] for name in VBPosterior._fields))

    @property
    def feature_names(self):
        """The names of the fitted data's columns (a list of str), or None."""
        return self.metadata["feature_names"]

    @property
    def standardize(self):
        """(mean, scale) of shape (n_features,) when the model was fitted on
        (data - mean) / scale, else None."""
        if self.metadata["preprocessing"] is None:
            return None
        return self.arrays["preprocessing/mean"], self.arrays["preprocessing/scale"]

    @property
    def provenance(self):
        """dict: jaxgmm_version, created_utc and what the writer recorded."""
        return self.metadata["provenance"]

    # -- using it -----------------------------------------------------------------------

    def estimator(self):
        """A new fitted `jaxgmm.GaussianMixture` (ML, MAP or plug-in posterior summaries)
        or `jaxgmm.BayesianGaussianMixture` (variational fits) with the saved attributes.
        It works on the data as the model was fitted on them: standardised, when
        `standardize` is not None (see `transform`)."""
        meta = self.metadata
        cls = _KINDS[meta["kind"]]
        spec = self.spec
        allowed = set(cls._param_names)
        arguments = {k: v for k, v in meta["estimator"].items() if k in allowed}
        arguments.update(
            n_components=spec.n_components,
            covariance_type=spec.covariance_type,
            reg_covar=spec.reg_covar,
        )
        params = self.params
        if cls is BayesianGaussianMixture:
            arguments.update(_sklearn_prior_arguments(spec, meta["n_features"]))
        estimator = cls(**arguments)
        fitted = {
            "weights_": params.weights,
            "means_": params.means,
            "precisions_cholesky_": params.prec_chol,
            "covariances_": self.arrays["params/covariances"],
            "precisions_": np.asarray(precisions(params, spec.covariance_type)),
        }
        if cls is BayesianGaussianMixture:
            posterior = self.posterior
            concentration = posterior.weight_concentration
            if concentration.ndim == 2:  # scikit-learn's tuple of the sticks' Beta parameters
                concentration = (concentration[0], concentration[1])
            dof = posterior.degrees_of_freedom
            fitted.update(
                weight_concentration_=concentration,
                mean_precision_=posterior.mean_precision,
                degrees_of_freedom_=float(dof) if dof.ndim == 0 else dof,
                posterior_=posterior,
                **_sklearn_prior_attributes(spec, meta["n_features"]),
            )
            fitted["n_active_components_"] = n_active_components(posterior, spec)
        else:
            spec = dataclasses.replace(spec, prior=None)  # the estimator's own spec_ is ML
        for name, value in meta["fitted"].items():
            if name not in _FITTED:  # a file sets no other attribute
                continue
            if name == "feature_names_in_":
                value = np.asarray(value, dtype=object)
            fitted[name] = value
        for name, value in fitted.items():
            setattr(estimator, name, value)
        estimator.spec_ = spec
        estimator.n_features_in_ = meta["n_features"]
        return estimator

    def transform(self, X):
        """The model's X for data in the units it was recorded in: (X - mean) / scale
        when the model was fitted on standardised data, else X; array of shape
        (n_samples, n_features), float64."""
        x = np.asarray(X, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.metadata["n_features"]:
            raise ValueError(
                f"X must have shape (n_samples, {self.metadata['n_features']}), got {x.shape}"
            )
        if self.standardize is None:
            return x
        mean, scale = self.standardize
        return (x - mean) / scale

    @property
    def log_abs_det_jacobian(self):
        """log |d transform(x) / dx| = -sum(log scale) (0 without standardisation): add it
        to a log-density of transform(X) to get the log-density of X itself."""
        if self.standardize is None:
            return 0.0
        return float(-np.sum(np.log(self.standardize[1])))

    # -- checks -------------------------------------------------------------------------

    def _array_listing(self):
        return {
            name: {"shape": list(a.shape), "dtype": str(a.dtype)}
            for name, a in sorted(self.arrays.items())
        }

    def _check(self, name, saving=False):
        """SavedModelError naming what is wrong unless the metadata and the arrays make a
        model this jaxgmm can build."""

        def fail(what):
            raise SavedModelError(f"{name}: {what}" if saving else f"{name}: corrupted: {what}")

        meta = self.metadata
        missing = [
            key for key in ("kind", "spec", "n_features", "prior", "estimator", "fitted",
                            "feature_names", "preprocessing", "provenance", "arrays")
            if key not in meta
        ]  # fmt: skip
        if missing:
            fail(f"metadata lacks {missing}")
        if meta["kind"] not in _KINDS:
            fail(f"kind {meta['kind']!r} is none of {sorted(_KINDS)}")
        listed = meta["arrays"]
        if not isinstance(listed, dict) or set(listed) != set(self.arrays):
            have, want = set(self.arrays), set(listed) if isinstance(listed, dict) else set()
            fail(f"arrays {sorted(want - have)} are missing and {sorted(have - want)} unexpected")
        for key, array in self.arrays.items():
            entry = listed[key] if isinstance(listed[key], dict) else {}
            if [list(array.shape), str(array.dtype)] != [entry.get("shape"), entry.get("dtype")]:
                fail(
                    f"{key} has shape {array.shape} and dtype {array.dtype}, the metadata "
                    f"says {listed[key]}"
                )
            if not np.issubdtype(array.dtype, np.floating) or not np.all(np.isfinite(array)):
                fail(f"{key} is not an array of finite floats")
        try:
            spec = self.spec
        except (TypeError, ValueError) as error:
            fail(f"spec or prior: {error}")
        k, d = spec.n_components, meta["n_features"]
        if not isinstance(d, int) or d < 1:
            fail(f"n_features is {d!r}")
        family = get_family(spec.covariance_type)
        expected = {
            "params/weights": (k,),
            "params/means": (k, d),
            "params/prec_chol": family.prec_chol_shape(k, d),
            "params/covariances": family.prec_chol_shape(k, d),
        }
        if meta["kind"] == "BayesianGaussianMixture":
            if spec.prior is None or getattr(spec.prior, "name", None) != "conjugate":
                fail("a variational model needs its conjugate prior")
            process = getattr(spec.prior, "weight_prior_type", None) == "dirichlet_process"
            per_component = get_vb_family(spec.covariance_type).dof_shape_is_per_component
            expected.update(
                {
                    "posterior/weight_concentration": (2, k) if process else (k,),
                    "posterior/mean_precision": (k,),
                    "posterior/means": (k, d),
                    "posterior/degrees_of_freedom": (k,) if per_component else (),
                    "posterior/covariances": family.prec_chol_shape(k, d),
                    "posterior/prec_chol": family.prec_chol_shape(k, d),
                }
            )
        if meta["preprocessing"] is not None:
            expected.update({"preprocessing/mean": (d,), "preprocessing/scale": (d,)})
        for key, shape in expected.items():
            if key not in self.arrays:
                fail(f"no array {key}")
            if self.arrays[key].shape != tuple(shape):
                fail(f"{key} has shape {self.arrays[key].shape}, expected {tuple(shape)}")
        weights = self.arrays["params/weights"]
        if np.any(weights < 0) or abs(float(np.sum(weights)) - 1) > 1e-4:
            fail(f"params/weights are not a probability vector (sum {float(np.sum(weights))})")
        if meta["preprocessing"] is not None and np.any(self.arrays["preprocessing/scale"] <= 0):
            fail("preprocessing/scale is not positive")
        names = meta["feature_names"]
        if names is not None and (not isinstance(names, list) or len(names) != d):
            fail(f"feature_names is not a list of {d} names")


def _sklearn_prior_arguments(spec, n_features):
    """`BayesianGaussianMixture` constructor arguments (scikit-learn's names and layouts)
    of a resolved conjugate prior, so that a refit uses the same prior."""
    prior = spec.prior
    psi = np.asarray(prior.covariance_prior, dtype=np.float64)
    if psi.ndim == 0:
        psi = float(psi) * np.eye(n_features)
    elif psi.ndim == 1:
        psi = np.diag(psi)
    scale = np.asarray(get_vb_family(spec.covariance_type).prior_scale(psi))
    return {
        "weight_concentration_prior_type": prior.weight_prior_type,
        "weight_concentration_prior": float(prior.weight_concentration),
        "mean_precision_prior": float(prior.mean_precision),
        "mean_prior": np.broadcast_to(
            np.asarray(prior.mean_prior, dtype=np.float64), (n_features,)
        ).copy(),
        "degrees_of_freedom_prior": float(prior.dof(spec, n_features)),
        "covariance_prior": float(scale) if scale.ndim == 0 else scale,
    }


def _sklearn_prior_attributes(spec, n_features):
    arguments = _sklearn_prior_arguments(spec, n_features)
    return {
        f"{name}_": arguments[name]
        for name in ("weight_concentration_prior", "mean_precision_prior", "mean_prior",
                     "degrees_of_freedom_prior", "covariance_prior")
    }  # fmt: skip


def _model_path(path, method):
    """The saved-model file that ``path`` (a file, a run folder or a models folder) and
    ``method`` name."""
    if path.is_file():
        if method is not None and path.stem != method:
            raise FileNotFoundError(f"{path} is the saved model of {path.stem!r}, not {method!r}")
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such saved-model file or folder")
    folder = path / MODELS_FOLDER if (path / MODELS_FOLDER).is_dir() else path
    available = sorted(p.stem for p in folder.glob(f"*{SUFFIX}") if p.is_file())
    if not available:
        raise FileNotFoundError(
            f"{path}: no saved models (no {MODELS_FOLDER}/*{SUFFIX}); a run folder written "
            "before models were saved needs to be rerun"
        )
    if method is None:
        if len(available) > 1:
            raise FileNotFoundError(
                f"{path} holds the models of several methods {available}; choose one "
                "(jaxgmm.load(path, method), or --method of python -m experiments.predict)"
            )
        method = available[0]
    if method not in available:
        raise FileNotFoundError(f"{path}: no saved model {method!r}; saved: {available}")
    return folder / f"{method}{SUFFIX}"


def load(path, method=None):
    """Load a saved model as a fitted estimator.

    Args:
        path: a saved-model ``.npz`` file, or a run folder of ``python -m experiments.run``
            (its ``models/<method>.npz``).
        method: which method's model, for a folder holding several.

    Returns:
        A fitted `jaxgmm.GaussianMixture` (EM, gradient, and the plug-in posterior
        summaries of SVI and NUTS) or `jaxgmm.BayesianGaussianMixture` (variational fits)
        whose ``predict``, ``predict_proba`` and ``score_samples`` equal the saved
        model's. If the model was fitted on standardised data, it expects standardised X:
        a `UserWarning` says so; `SavedModel.read(path).transform(X)` standardises new
        data as the fit did.

    Raises:
        FileNotFoundError: no such file, folder or method.
        SavedModelError: not a saved model, corrupted, or from a newer format version.
    """
    saved = SavedModel.read(path, method)
    if saved.standardize is not None:
        warnings.warn(
            f"{path}: the model was fitted on standardised data, so its predict / "
            "score_samples expect X standardised as in the fit: use "
            "jaxgmm.saved.SavedModel.read(path).transform(X)",
            UserWarning,
            stacklevel=2,
        )
    return saved.estimator()


__all__ = ["FORMAT_VERSION", "MODELS_FOLDER", "SavedModel", "SavedModelError", "load"]
