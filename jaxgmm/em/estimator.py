"""`GaussianMixture`: scikit-learn's estimator contract on top of the functional EM; and
`MixtureEstimator`, what every scikit-learn-style estimator of jaxgmm shares: scikit-learn's
estimator protocol without importing scikit-learn (get/set_params, clone, repr, tags,
`NotFittedError`), scikit-learn's input conversion (object arrays, DataFrames and their
feature names, sparse refused), parameter checks, ``random_state``, verbose logging,
scoring and sampling at the fitted parameters in padded shape buckets, and the refusal to
keep non-finite fitted attributes."""

from __future__ import annotations

import inspect
import logging
import math
import numbers
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._registry import lookup
from jaxgmm.em.fitter import EMState, em_fitter, fit_em
from jaxgmm.em.steps import e_step
from jaxgmm.fit.driver import RunState, run_fitter
from jaxgmm.fit.results import SELECTIONS, all_finite
from jaxgmm.fit.validation import (
    check_data,
    check_init_params,
    check_int,
    check_means,
    check_positive,
    check_precisions,
    check_weights,
)
from jaxgmm.model.covariance import get_family
from jaxgmm.model.density import log_prob, weighted_log_prob
from jaxgmm.model.init import get_initializer, initial_params
from jaxgmm.model.params import (
    GMMParams,
    aic,
    bic,
    covariances,
    params_from_precisions,
    precisions,
)
from jaxgmm.model.sampling import sample
from jaxgmm.model.spec import GMMSpec

logger = logging.getLogger("jaxgmm")


class NotFittedError(ValueError, AttributeError):
    """A method that needs a fitted estimator was called before ``fit``. The exception
    actually raised is also an instance of scikit-learn's
    ``sklearn.exceptions.NotFittedError`` when scikit-learn is importable (both
    subclass ValueError and AttributeError, as scikit-learn's does)."""


def _sklearn_not_fitted_class():
    """jaxgmm's `NotFittedError` combined with scikit-learn's, built on first use (so
    scikit-learn is imported only when an error is raised), or None without it."""
    cached = globals().get("_SklearnNotFittedError")
    if cached is not None:
        return cached
    try:
        from sklearn.exceptions import NotFittedError as SklearnNotFittedError
    except ImportError:
        return None
    cls = type(
        "_SklearnNotFittedError",
        (NotFittedError, SklearnNotFittedError),
        {"__module__": __name__, "__doc__": NotFittedError.__doc__},
    )
    globals()["_SklearnNotFittedError"] = cls
    return cls


def __getattr__(name):
    # Unpickling a raised error in a fresh process looks the combined class up by name.
    if name == "_SklearnNotFittedError" and _sklearn_not_fitted_class() is not None:
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def not_fitted_error(estimator):
    """The error of a method called before ``fit``, worded as scikit-learn's
    ``check_is_fitted`` words it."""
    cls = _sklearn_not_fitted_class() or NotFittedError
    return cls(
        f"This {type(estimator).__name__} instance is not fitted yet. Call 'fit' with "
        "appropriate arguments before using this estimator."
    )


# -- scikit-learn's input conversion ---------------------------------------------------


def _is_sparse(x):
    # Only scipy makes the sparse matrices users pass; if it is not imported, x is none.
    sparse = sys.modules.get("scipy.sparse")
    return sparse is not None and sparse.issparse(x)


def _is_dataframe(x):
    return (
        hasattr(x, "columns")
        and hasattr(x, "to_numpy")
        and not isinstance(x, (np.ndarray, jax.Array))
    )


def feature_names(x):
    """The column names of a DataFrame ``x`` when all are strings (as an object array of
    shape (n_features,)), else None; a TypeError for a mix of string and other names
    (scikit-learn's ``_get_feature_names``)."""
    if not _is_dataframe(x):
        return None
    names = np.asarray(list(x.columns), dtype=object)
    if names.size == 0:
        return None
    types = sorted({type(v).__qualname__ for v in names})
    if len(types) > 1 and "str" in types:
        raise TypeError(
            "Feature names are only supported if all input features have string names, "
            f"but your input has {types} as feature name / column name types. If you want "
            "feature names to be stored and validated, you must convert them all to "
            "strings, by using X.columns = X.columns.astype(str) for example. Otherwise "
            "you can remove feature / column names from your input data, or convert them "
            "all to a non-string data type."
        )
    return names if types == ["str"] else None


def _dataframe_values(x, name):
    """A DataFrame's values as a float array: pandas' nullable dtypes (Int64, Float64,
    boolean) with missing values become NaN (refused by name afterwards); float32
    columns stay float32."""
    if not type(x).__module__.startswith("pandas"):
        return np.asarray(x.to_numpy())
    import pandas as pd  # present: x is one of its frames

    numeric = [
        pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
        for dtype in x.dtypes
    ]
    if not all(numeric):
        bad = [str(c) for c, ok in zip(x.columns, numeric) if not ok]
        raise ValueError(
            f"{name} must contain numbers; column(s) {bad} are not numeric (dtypes "
            f"{[str(d) for d, ok in zip(x.dtypes, numeric) if not ok]}): encode or drop them"
        )
    float32 = all(np.dtype(getattr(d, "numpy_dtype", d)) == np.float32 for d in x.dtypes)
    return x.to_numpy(dtype=np.float32 if float32 else np.float64, na_value=np.nan)


def as_array(x, estimator_name, name="X"):
    """``x`` (array-like of shape (n_samples, n_features)) as a NumPy array, converted as
    scikit-learn's ``check_array`` converts it: object arrays of numbers and DataFrames
    (pandas' nullable dtypes too) become floats; sparse, complex and empty input are
    refused with scikit-learn's wording. A JAX array is returned as it is (it can be
    none of those)."""
    if isinstance(x, jax.Array):
        if jnp.issubdtype(x.dtype, jnp.complexfloating):
            raise ValueError(f"Complex data not supported: {name} has dtype {x.dtype}")
        return x
    if _is_sparse(x):
        raise ValueError(
            f"{name} is a scipy sparse {type(x).__name__}: sparse input is not supported, "
            "convert with X.toarray()"
        )
    if _is_dataframe(x):
        arr = _dataframe_values(x, name)
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # noqa: BLE001 - report any conversion failure plainly
            raise ValueError(
                f"{name} must be an array of numbers, got {type(x).__name__}"
            ) from exc
    if arr.dtype == object:
        # scikit-learn reads object arrays of numbers as float64; numpy's own message
        # says which element is not a number.
        try:
            arr = arr.astype(np.float64)
        except TypeError as exc:
            raise TypeError(f"{name} must contain numbers: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"{name} must contain numbers: {exc}") from None
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"Complex data not supported: {name} has dtype {arr.dtype}")
    if arr.ndim == 2 and 0 in arr.shape:
        what = "sample(s)" if arr.shape[0] == 0 else "feature(s)"
        raise ValueError(
            f"Found array with 0 {what} (shape={arr.shape}) while a minimum of 1 is "
            f"required by {estimator_name}: {name} must have at least one sample and one "
            "feature"
        )
    return arr


_warned_float32 = False  # the float32 warning is given once per process


def warn_if_float32(data_dtype):
    """Warn, once per process, when data that would be computed in float64 (float64,
    integers, objects of numbers) are computed in float32 because JAX's x64 mode is off."""
    global _warned_float32
    if _warned_float32 or jax.config.jax_enable_x64:
        return
    if np.dtype(data_dtype) == np.float32:
        return
    _warned_float32 = True
    warnings.warn(
        f"X has dtype {np.dtype(data_dtype).name} but JAX's x64 mode is off, so jaxgmm "
        "computes in float32 (about 7 significant digits) and returns float32 results; "
        "for float64 results enable x64 before any JAX computation: "
        'jax.config.update("jax_enable_x64", True) (or set JAX_ENABLE_X64=1). '
        "Pass float32 X to silence this warning.",
        UserWarning,
        stacklevel=4,
    )


# -- shape buckets -----------------------------------------------------------------------

# Scoring and sampling run on rows padded to a power of two (at least _MIN_BUCKET), so
# calls at 1000, 1001 and 1500 samples share one executable; above _MAX_BUCKET rows they
# run in blocks of _MAX_BUCKET, which bounds both the number of executables per method
# (9) and the padding (under one block).
_MIN_BUCKET = 256
_MAX_BUCKET = 1 << 16


def bucket_size(n_rows):
    """The padded row count for ``n_rows`` rows (one block of at most 65536 rows): the
    next power of two, at least 256."""
    return min(_MAX_BUCKET, max(_MIN_BUCKET, 1 << (int(n_rows) - 1).bit_length()))


def map_row_buckets(fn, x):
    """``fn`` over the rows of ``x`` (NumPy, (n_samples, ...)) in padded blocks: each block
    is padded to `bucket_size` rows with copies of its first row (finite wherever the data
    are), passed to ``fn`` as a JAX array, and the padding rows of the result dropped.
    ``fn`` returns an array whose leading axis is the rows; returns NumPy, (n_samples, ...)."""
    n_rows = x.shape[0]
    outputs = []
    for start in range(0, n_rows, _MAX_BUCKET):
        block = x[start : start + _MAX_BUCKET]
        size = bucket_size(block.shape[0])
        if size > block.shape[0]:
            pad = np.broadcast_to(block[:1], (size - block.shape[0],) + block.shape[1:])
            block = np.concatenate([block, pad])
        out = np.asarray(jax.device_get(fn(jnp.asarray(block))))
        outputs.append(out[: min(_MAX_BUCKET, n_rows - start)])
    return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)


def _is_scalar_nan(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isnan(value)


class ConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before its convergence test passed."""


class DegeneracyWarning(UserWarning):
    """A component collapsed or emptied during the fit (see ``degeneracies_``)."""


_e_step = jax.jit(e_step, static_argnums=2)
_log_prob = jax.jit(log_prob, static_argnums=2)
_weighted_log_prob = jax.jit(weighted_log_prob, static_argnums=2)
_sample = jax.jit(sample, static_argnums=(2, 3))


def key_from_random_state(random_state):
    """A JAX key from scikit-learn's ``random_state`` (None, an int, a numpy RandomState)
    or a JAX key itself."""
    if random_state is None:
        return jax.random.key(int(np.random.SeedSequence().generate_state(1)[0]))
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return jax.random.key(int(random_state))
    if isinstance(random_state, np.random.RandomState):
        return jax.random.key(int(random_state.randint(np.iinfo(np.int32).max)))
    if isinstance(random_state, jax.Array):
        return random_state
    raise ValueError(
        f"random_state must be None, an int, a numpy RandomState or a JAX key, got {random_state!r}"
    )


class VerboseLog:
    """scikit-learn's verbose messages (`BaseMixture._print_verbose_msg_*`), logged at
    INFO level to the ``"jaxgmm"`` logger, fed by the driver's per-chunk callback.
    ``field``: the Info field whose change is reported (EM: the log-likelihood per
    sample; VB: the ELBO, as scikit-learn reports its lower bound)."""

    def __init__(self, verbose, interval, field="log_likelihood"):
        self.verbose, self.interval, self.field = verbose, interval, field
        self.done = 0  # iterations already seen
        self.previous = None  # (n_restarts,) log-likelihood at the last seen iteration

    def begin(self, n_restarts):
        if self.verbose:
            logger.info("Initialization: %d restart(s), run together", n_restarts)
        self.start = self.last_message = self.last_chunk = time.perf_counter()

    def chunk_done(self, iterations_done, infos):
        now = time.perf_counter()
        if iterations_done < self.done:  # a new restart run after the previous one
            self.done, self.previous = 0, None
            if self.verbose:
                logger.info("Initialization: next restart")
        new = iterations_done - self.done
        if new <= 0:
            return
        # infos are (n_restarts, chunk_size); the first `new` columns are this chunk's
        # iterations (the rest ran after every restart was done and were discarded).
        log_likelihood = np.asarray(getattr(infos, self.field))
        per_iteration = (now - self.last_chunk) / new
        for column in range(new):
            iteration = self.done + column + 1
            current = log_likelihood[:, column]
            change = current - (-np.inf if self.previous is None else self.previous)
            self.previous = current
            if iteration % self.interval:
                continue
            if self.verbose == 1:
                logger.info("  Iteration %d", iteration)
            else:
                at = self.last_chunk + per_iteration * (column + 1)
                logger.info(
                    "  Iteration %d\t time lapse %.5fs\t ll change %s",
                    iteration,
                    at - self.last_message,
                    " ".join(f"{c:.5f}" for c in change),
                )
                self.last_message = at
        self.done, self.last_chunk = iterations_done, now

    def end(self, converged, lower_bound):
        outcome = "converged" if converged else "did not converge"
        if self.verbose == 1:
            logger.info("Initialization %s.", outcome)
        elif self.verbose >= 2:
            logger.info(
                "Initialization %s. time lapse %.5fs\t lower bound %.5f.",
                outcome,
                time.perf_counter() - self.start,
                lower_bound,
            )


def _nonfinite_error(estimator, x, what):
    """The ValueError for a fit with no finite state: why (the data's scale against its
    dtype, when that explains it) and what to do."""
    values = np.asarray(x, dtype=np.float64)
    spread = float(np.max(np.abs(values - values.mean(axis=0))))
    dtype = np.dtype(x.dtype)
    largest = float(np.finfo(dtype).max)
    # Covariances are sums of squared deviations over samples: that is what overflows.
    # Compared in log space: spread**2 itself overflows a Python float beyond ~1e154.
    if spread > 0 and 2 * np.log(spread) + np.log(values.shape[0]) > np.log(largest):
        reason = (
            f"X ({dtype}) has values {spread:.3g} away from the feature means, so the "
            f"summed squared deviations in the covariance estimates overflow {dtype} "
            f"(largest finite value {largest:.3g})"
        )
    else:
        reason = "X is badly scaled for its dtype, or the starting parameters are"
    remedy = "standardise X (subtract each feature's mean and divide by its standard deviation)"
    if dtype != np.float64:
        remedy += (
            ", or fit in float64 (float64 X with JAX's x64 mode on: "
            "jax.config.update('jax_enable_x64', True))"
        )
    return ValueError(f"{type(estimator).__name__} {what}: {reason}; {remedy}")


class MixtureEstimator:
    """What jaxgmm's scikit-learn-style estimators share. A subclass defines
    ``_param_names`` (its constructor arguments, every one with a default), ``fit_predict``,
    ``_weighted_log_prob(x)`` (the unnormalised log-responsibilities that ``predict``
    uses) and ``_log_resp(x)`` (their log-softmax, for ``predict_proba``), both on one
    padded block of rows, and sets
    the fitted attributes ``weights_``, ``means_``, ``precisions_cholesky_``, ``spec_`` and
    ``n_features_in_`` through `_set_parameters`, which refuses non-finite values.

    The scikit-learn estimator protocol is implemented here without importing
    scikit-learn: ``get_params`` / ``set_params`` (nested ``a__b`` names too), so that
    ``sklearn.base.clone``, pipelines and grid searches work; a repr listing the
    parameters that differ from their defaults, as scikit-learn's; ``__sklearn_tags__``
    (a density estimator; scikit-learn is imported only when it is called); fitted
    attributes end in ``_`` and none exists before ``fit`` (``check_is_fitted``)."""

    _param_names: tuple = ()

    # -- scikit-learn's estimator protocol -----------------------------------------

    @classmethod
    def _get_param_names(cls):
        """The constructor's parameter names, sorted (scikit-learn's rule)."""
        signature = inspect.signature(cls.__init__)
        return sorted(p.name for p in signature.parameters.values() if p.name != "self")

    def get_params(self, deep=True):
        """The constructor parameters as a dict (with ``deep``, also ``name__sub`` for
        parameters that are estimators themselves)."""
        out = {}
        for name in self._get_param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{name}__{k}", v) for k, v in value.get_params().items())
            out[name] = value
        return out

    def set_params(self, **params):
        """Set constructor parameters (``name__sub`` for a nested estimator's); returns
        self. Values are checked by ``fit``, as in scikit-learn."""
        if not params:
            return self
        valid = self.get_params(deep=True)
        nested = {}
        for key, value in params.items():
            name, delim, sub = key.partition("__")
            if name not in valid:
                raise ValueError(
                    f"Invalid parameter {name!r} for estimator {self}. Valid parameters "
                    f"are: {self._get_param_names()!r}."
                )
            if delim:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, name, value)
                valid[name] = value
        for name, sub_params in nested.items():
            valid[name].set_params(**sub_params)
        return self

    def __repr__(self):
        defaults = {
            name: p.default for name, p in inspect.signature(type(self).__init__).parameters.items()
        }

        def changed(name, value):
            default = defaults.get(name, inspect.Parameter.empty)
            if default is inspect.Parameter.empty:
                return True
            return repr(value) != repr(default) and not (
                _is_scalar_nan(value) and _is_scalar_nan(default)
            )

        items = [
            f"{name}={value!r}"
            for name, value in sorted(self.get_params(deep=False).items())
            if changed(name, value)
        ]
        head = f"{type(self).__name__}("
        # One line when it fits in 79 columns, else wrapped under the first parameter
        # (scikit-learn's layout for simple values).
        lines, line = [], head
        for i, item in enumerate(items):
            piece = item + ("," if i < len(items) - 1 else ")")
            if line not in (head, " " * len(head)) and len(line) + 1 + len(piece) > 79:
                lines.append(line)
                line = " " * len(head)
            line += ("" if line in (head, " " * len(head)) else " ") + piece
        if not items:
            line += ")"
        return "\n".join([*lines, line])

    def __sklearn_tags__(self):
        from sklearn.utils import InputTags, Tags, TargetTags

        return Tags(
            estimator_type="density_estimator",
            target_tags=TargetTags(required=False),
            transformer_tags=None,
            regressor_tags=None,
            classifier_tags=None,
            input_tags=InputTags(allow_nan=False, sparse=False),
        )

    # -- parameters ----------------------------------------------------------------

    def _check_common_parameters(self):
        """The checks of the arguments every estimator has; returns the `GMMSpec`."""
        get_family(self.covariance_type)
        get_initializer(self.init_params)
        check_int(self.n_init, "n_init", 1)
        check_int(self.verbose_interval, "verbose_interval", 1)
        if not isinstance(self.verbose, numbers.Integral) or self.verbose < 0:
            raise ValueError(f"verbose must be an int >= 0 (or a bool), got {self.verbose!r}")
        check_int(self.max_iter, "max_iter", 0)
        check_positive(self.tol, "tol", allow_zero=True)
        check_int(self.n_components, "n_components", 1)
        return GMMSpec(
            n_components=int(self.n_components),
            covariance_type=self.covariance_type,
            reg_covar=check_positive(self.reg_covar, "reg_covar", allow_zero=True),
        )

    def _fit_data(self, X, spec):
        """X validated for fitting (and against the warm-started width), as a JAX array,
        and its feature names (or None), to be set by `_set_parameters`."""
        names = feature_names(X)
        arr = as_array(X, type(self).__name__)
        x = check_data(arr, "X", n_components=spec.n_components)
        warn_if_float32(arr.dtype)
        if self.warm_start and hasattr(self, "means_"):
            # From means_, not n_features_in_: the fitted attributes may have been set
            # by hand (e.g. copied from scikit-learn).
            width = np.shape(self.means_)[-1]
            if x.shape[1] != width:
                raise ValueError(f"X has {x.shape[1]} features, but the warm-started model has {width}")
        self._fit_feature_names = names
        return x

    def _warm_start_params(self, x, spec):
        """The fitted attributes as starting `GMMParams`, checked (whoever set them)."""
        return check_init_params(
            self._params(x.dtype),
            spec,
            x.shape[1],
            name="the fitted weights_ / means_ / precisions_cholesky_ (warm_start=True)",
            dtype=x.dtype,
        )

    def _named_initial_params(self, key, x, spec):
        """``n_init`` restarts from the ``init_params`` initialiser, refused when they
        are not finite (the first thing data too large for their dtype break)."""
        params = initial_params(key, x, spec, self.init_params, int(self.n_init))
        if not bool(all_finite(params)):
            raise _nonfinite_error(
                self,
                x,
                f"cannot start: the initial parameters from init_params={self.init_params!r} "
                "are not finite",
            )
        return params

    def _set_parameters(self, params, spec, x, **more):
        """Set ``weights_``, ``means_``, the covariance attributes, ``spec_``,
        ``n_features_in_`` and ``feature_names_in_`` (when X had string column names;
        removed otherwise) from plug-in `GMMParams` (and the attributes in ``more``, by
        name); a ValueError (and nothing set) when any of them is not finite, so a fitted
        estimator never holds NaN."""
        params = jax.device_get(params)
        fitted = {
            "weights_": np.asarray(params.weights),
            "means_": np.asarray(params.means),
            "precisions_cholesky_": np.asarray(params.prec_chol),
            "covariances_": np.asarray(covariances(params, spec.covariance_type)),
            "precisions_": np.asarray(precisions(params, spec.covariance_type)),
        }
        fitted.update(jax.device_get(more))
        bad = [name for name, value in fitted.items() if not np.all(np.isfinite(value))]
        if bad:
            raise _nonfinite_error(self, x, f"found no finite parameters ({', '.join(bad)})")
        for name, value in fitted.items():
            setattr(self, name, value)
        self.spec_ = spec
        self.n_features_in_ = x.shape[1]
        names = self.__dict__.pop("_fit_feature_names", None)
        if names is not None:
            self.feature_names_in_ = names
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_

    def _verbose_log(self, field="log_likelihood"):
        return VerboseLog(int(self.verbose), int(self.verbose_interval), field)

    # -- using a fitted model --------------------------------------------------------

    def fit(self, X, y=None):
        """Estimate the parameters. X: array-like of shape (n_samples, n_features).
        ``y`` is ignored (scikit-learn's signature)."""
        self.fit_predict(X, y)
        return self

    def _check_fitted(self):
        if not hasattr(self, "means_"):
            raise not_fitted_error(self)

    def _check_feature_names(self, X):
        """scikit-learn's feature-name check (``_check_feature_names`` with reset=False):
        a warning when only one of the fit's X and this X has names, a ValueError when
        the names differ."""
        fitted = getattr(self, "feature_names_in_", None)
        given = feature_names(X)
        name = type(self).__name__
        if fitted is None and given is None:
            return
        if fitted is None:
            warnings.warn(f"X has feature names, but {name} was fitted without feature names",
                          UserWarning, stacklevel=4)
            return
        if given is None:
            warnings.warn(
                f"X does not have valid feature names, but {name} was fitted with feature names",
                UserWarning,
                stacklevel=4,
            )
            return
        if len(fitted) == len(given) and np.all(fitted == given):
            return
        unexpected = sorted(set(given) - set(fitted))
        missing = sorted(set(fitted) - set(given))

        def listed(names):
            shown = [f"- {n}\n" for n in names[:5]]
            return "".join(shown) + ("- ...\n" if len(names) > 5 else "")

        message = "The feature names should match those that were passed during fit.\n"
        if unexpected:
            message += "Feature names unseen at fit time:\n" + listed(unexpected)
        if missing:
            message += "Feature names seen at fit time, yet now missing:\n" + listed(missing)
        if not unexpected and not missing:
            message += "Feature names must be in the same order as they were in fit.\n"
        raise ValueError(message)

    def _params(self, dtype):
        # Cast on the host: a cast by JAX would compile for every new dtype and shape.
        return jax.tree_util.tree_map(
            lambda a: jnp.asarray(np.asarray(a, dtype)),
            GMMParams(self.weights_, self.means_, self.precisions_cholesky_),
        )

    def _x(self, X):
        """X of a method of a fitted model: checked (feature names, width) and converted
        to a NumPy array of the compute dtype, shape (n_samples, n_features)."""
        self._check_fitted()
        self._check_feature_names(X)
        arr = as_array(X, type(self).__name__)
        x = check_data(arr, "X", as_numpy=True)
        warn_if_float32(arr.dtype)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {x.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input"
            )
        return x

    def _score_samples(self, x):
        params = self._params(x.dtype)
        return map_row_buckets(lambda block: _log_prob(block, params, self.spec_), x)

    def _labels(self, x):
        """Most probable component per row of the NumPy ``x``, shape (n_samples,)."""
        return np.argmax(map_row_buckets(self._weighted_log_prob, x), axis=1)

    def score_samples(self, X):
        """Per-sample log-density log p(x_n) at the fitted ``weights_``, ``means_`` and
        ``precisions_cholesky_``, shape (n_samples,)."""
        return self._score_samples(self._x(X))

    def score(self, X, y=None):
        """Mean of ``score_samples(X)``: the log-likelihood per sample."""
        return float(np.mean(self._score_samples(self._x(X))))

    def predict(self, X):
        """Most probable component per sample, shape (n_samples,)."""
        return self._labels(self._x(X))

    def predict_proba(self, X):
        """Responsibilities, shape (n_samples, n_components), rows summing to 1."""
        return np.exp(map_row_buckets(self._log_resp, self._x(X)))

    def sample(self, n_samples=1):
        """Draw samples: returns (X of shape (n_samples, n_features), y of shape
        (n_samples,)), in random order (scikit-learn sorts them by component)."""
        self._check_fitted()
        n_samples = check_int(n_samples, "n_samples", 1)
        params = self._params(np.asarray(self.means_).dtype)
        key = key_from_random_state(self.random_state)
        xs, labels = [], []
        for block, start in enumerate(range(0, n_samples, _MAX_BUCKET)):
            # Block 0 draws with the key itself; block b > 0 with fold_in(key, b).
            block_key = key if block == 0 else jax.random.fold_in(key, block)
            size = bucket_size(n_samples - start)
            x, y = jax.device_get(_sample(block_key, params, self.spec_, size))
            keep = min(_MAX_BUCKET, n_samples - start)
            xs.append(np.asarray(x)[:keep])
            labels.append(np.asarray(y)[:keep])
        return np.concatenate(xs), np.concatenate(labels)


class GaussianMixture(MixtureEstimator):
    """Gaussian mixture fitted by EM, with scikit-learn's parameters and attributes.

    Parameters have scikit-learn's names and meanings (``n_components``,
    ``covariance_type``, ``tol``, ``reg_covar``, ``max_iter``, ``n_init``,
    ``init_params``, ``weights_init``, ``means_init``, ``precisions_init``,
    ``random_state``, ``warm_start``, ``verbose``, ``verbose_interval``). Restarts
    (``n_init``) run vectorised. ``select`` (not in scikit-learn) is how the kept restart
    is chosen: ``"non_degenerate"`` (default), the highest final log-likelihood among
    restarts with no collapsed or empty component, falling back to the highest overall
    when every restart is degenerate; ``"likelihood"``, the highest final log-likelihood.

    Data are used in float64 when JAX's x64 mode is enabled and the input is float64,
    otherwise in float32. ``verbose`` and ``verbose_interval`` work as in scikit-learn
    but log to the ``"jaxgmm"`` logger at INFO level instead of printing: with
    ``verbose >= 1``, every ``verbose_interval`` iterations ``"  Iteration t"`` and the
    outcome at the end; with ``verbose >= 2`` also the time since the previous message
    and the change of the log-likelihood per sample (one value per restart: restarts
    run together). Time is measured per jitted chunk of iterations and shared evenly
    among them (the driver's convention), compilation included.

    ``fit`` raises a ValueError, and leaves the estimator as it was, when no finite
    parameters exist (e.g. float32 data so large that their covariances overflow): a
    fitted estimator never holds NaN or infinity.

    Attributes (after ``fit``):
        weights_: (n_components,).
        means_: (n_components, n_features).
        covariances_, precisions_, precisions_cholesky_: shapes per covariance_type,
            as in scikit-learn: full (K, D, D), tied (D, D), diag (K, D), spherical (K,).
        converged_: bool. n_iter_: int.
        lower_bounds_: (n_iter_,) the EM bound L(q_t, theta_t) per sample right after
            each E-step, i.e. the log-likelihood per sample of the parameters each
            iteration started from (scikit-learn's ``lower_bounds_``).
        lower_bound_: ``lower_bounds_[-1]``: the log-likelihood per sample of the
            parameters *before* the last M-step, as in scikit-learn. It is a lower bound
            on ``log_likelihood_`` (EM never decreases the likelihood).
        log_likelihood_: log-likelihood per sample of the final parameters.
        em_bounds_: (n_iter_,) the bound L(q_t, theta_{t+1}) right after each M-step.
        degeneracies_: tuple of `jaxgmm.Degeneracy` (collapsed or empty components).
        restarts_: `jaxgmm.RestartSummary` of every restart (arrays of shape (n_init,)):
            final ``log_likelihood``, ``converged``, ``n_iter``, ``degenerate`` and the
            ``degeneracies`` of each.
        best_restart_: index of the kept restart; best_overall_restart_: index of the
            restart with the highest final log-likelihood, degenerate or not.
        fit_result_: the full `jaxgmm.FitResult` (trace, timings, every restart).
    """

    _param_names = (
        "n_components",
        "covariance_type",
        "tol",
        "reg_covar",
        "max_iter",
        "n_init",
        "init_params",
        "weights_init",
        "means_init",
        "precisions_init",
        "random_state",
        "warm_start",
        "verbose",
        "verbose_interval",
        "select",
    )

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        select="non_degenerate",
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.select = select

    # -- fitting -------------------------------------------------------------------

    def _initial_params(self, key, x, spec):
        if self.warm_start and hasattr(self, "means_"):
            return self._warm_start_params(x, spec)
        k, d = spec.n_components, x.shape[1]
        w = None if self.weights_init is None else check_weights(self.weights_init, k)
        m = None if self.means_init is None else check_means(self.means_init, k, d)
        p = None
        if self.precisions_init is not None:
            p = check_precisions(self.precisions_init, spec.covariance_type, k, d)
        if w is not None and m is not None and p is not None:
            return params_from_precisions(w, jnp.asarray(m, x.dtype), p, spec.covariance_type)
        params = self._named_initial_params(key, x, spec)
        n = params.means.shape[0]
        if w is not None:
            params = params._replace(weights=jnp.broadcast_to(jnp.asarray(w, x.dtype), (n, k)))
        if m is not None:
            params = params._replace(means=jnp.broadcast_to(jnp.asarray(m, x.dtype), (n, k, d)))
        if p is not None:
            prec_chol = get_family(spec.covariance_type).prec_chol_from_precision(jnp.asarray(p))
            params = params._replace(
                prec_chol=jnp.broadcast_to(prec_chol.astype(x.dtype), params.prec_chol.shape)
            )
        return params

    def fit_predict(self, X, y=None):
        """Fit, then return labels of shape (n_samples,) from a final E-step."""
        spec = self._check_common_parameters()
        lookup(dict.fromkeys(SELECTIONS), self.select, "select")
        x = self._fit_data(X, spec)
        key_init, key_run = jax.random.split(key_from_random_state(self.random_state))
        warm = self.warm_start and hasattr(self, "means_")
        params = self._initial_params(key_init, x, spec)

        log = self._verbose_log()
        log.begin(params.means.shape[0] if params.means.ndim == 3 else 1)
        run = dict(
            max_iter=int(self.max_iter),
            callback=log.chunk_done if log.verbose else None,
            select=self.select,
        )
        try:
            if warm:
                # Continue as scikit-learn does: the first tolerance test compares with
                # the previous fit's lower_bound_, so repeated max_iter=1 fits converge.
                state = RunState(
                    fitter_state=EMState(params=params),
                    previous=jnp.asarray(np.asarray(self._previous_bound(), x.dtype)),
                    n_iter=jnp.zeros((), jnp.int32),
                )
                fitter = em_fitter(spec, check_positive(self.tol, "tol", allow_zero=True))
                result = run_fitter(fitter, key_run, x, None, spec, init_state=state, **run)
            else:
                result = fit_em(key_run, x, spec, init=params, tol=float(self.tol), **run)
        except ValueError as error:
            # Everything else fit_em checks was checked above under this estimator's
            # names; what is left is what only running shows: no finite state exists.
            raise _nonfinite_error(self, x, "found no finite parameters from any start") from error
        self._set_fitted(result, spec, x)
        log.end(result.converged, self.lower_bound_)
        return self._labels(np.asarray(x))

    def _previous_bound(self):
        """The value the first tolerance test of a warm start compares with: the
        previous fit's ``lower_bound_`` (-inf for attributes set by hand)."""
        previous = getattr(self, "lower_bound_", -math.inf)
        return float(previous) if np.isfinite(previous) else -math.inf

    def _set_fitted(self, result, spec, x):
        if not math.isfinite(result.log_likelihood):
            raise _nonfinite_error(self, x, "found no finite log-likelihood")
        self._set_parameters(result.params, spec, x)
        self.fit_result_ = result
        self.converged_ = result.converged
        self.n_iter_ = result.n_iter
        self.lower_bounds_ = np.asarray(result.trace.log_likelihood)
        self.em_bounds_ = np.asarray(result.trace.bound)
        self.log_likelihood_ = result.log_likelihood
        self.lower_bound_ = float(self.lower_bounds_[-1]) if self.lower_bounds_.size else -math.inf
        self.degeneracies_ = result.degeneracies
        self.restarts_ = result.restarts
        self.best_restart_ = result.best_restart
        self.best_overall_restart_ = result.best_overall_restart
        if result.nonfinite_iteration is not None:
            kept = (
                "the initial parameters"
                if result.n_iter == 0
                else f"the finite parameters after iteration {result.n_iter}"
            )
            warnings.warn(
                f"EM produced non-finite values at iteration {result.nonfinite_iteration}; "
                f"the fit stopped there and kept {kept}",
                DegeneracyWarning,
                stacklevel=3,
            )
        if result.degeneracies:
            details = "; ".join(
                f"component {d.component}: {d.kind} from iteration {d.first_iteration}"
                for d in result.degeneracies
            )
            warnings.warn(f"degenerate components: {details}", DegeneracyWarning, stacklevel=3)
        if not result.converged and self.max_iter > 0 and result.nonfinite_iteration is None:
            warnings.warn(
                f"EM did not converge within max_iter={self.max_iter} iterations (tol={self.tol}); "
                "increase max_iter or tol, or check for degenerate data",
                ConvergenceWarning,
                stacklevel=3,
            )

    # -- using a fitted model --------------------------------------------------------

    def _weighted_log_prob(self, x):
        return _weighted_log_prob(x, self._params(x.dtype), self.spec_)

    def _log_resp(self, x):
        return _e_step(x, self._params(x.dtype), self.spec_)[1]

    def bic(self, X):
        """Bayesian information criterion: -2 log L + n_parameters * log(n_samples)."""
        x = self._x(X)
        score = float(np.mean(self._score_samples(x)))
        return bic(score, x.shape[0], self.n_features_in_, self.spec_)

    def aic(self, X):
        """Akaike information criterion: -2 log L + 2 n_parameters."""
        x = self._x(X)
        score = float(np.mean(self._score_samples(x)))
        return aic(score, x.shape[0], self.n_features_in_, self.spec_)
