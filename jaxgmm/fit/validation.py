"""Input checks shared by the functional API and the estimator: each error names the
argument and what was expected, before anything reaches JAX."""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm.model.covariance import get_family


def default_dtype():
    """float64 when JAX's x64 mode is on, else float32."""
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def check_data(x, name="X", n_components=None, dtype=None):
    """Validate a data matrix and return it as a JAX array of a floating dtype.

    Args:
        x: array-like of shape (n_samples, n_features) (numpy or JAX).
        name: argument name used in error messages.
        n_components: if given, require n_samples >= n_components.
        dtype: target dtype; default keeps float64 input in x64 mode, else float32.
    """
    try:
        arr = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - report any conversion failure plainly
        raise ValueError(f"{name} must be an array of numbers, got {type(x).__name__}") from exc
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise ValueError(f"{name} must contain numbers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real-valued, got dtype {arr.dtype}")
    if arr.ndim != 2:
        hint = (
            " Reshape your data either using array.reshape(-1, 1) if your data has a single "
            "feature or array.reshape(1, -1) if it contains a single sample."
            if arr.ndim == 1
            else ""
        )
        raise ValueError(
            f"Expected a 2D array for {name} of shape (n_samples, n_features), "
            f"got {arr.ndim}D array of shape {arr.shape}.{hint}"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(
            f"{name} must have at least one sample and one feature, got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"{name} contains NaN or infinity (first at row {bad[0]}, column {bad[1]}); "
            "remove or impute these values first"
        )
    if n_components is not None and arr.shape[0] < n_components:
        raise ValueError(
            f"{name} has n_samples={arr.shape[0]}, fewer than n_components={n_components}; "
            "need n_samples >= n_components"
        )
    if dtype is None:
        dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.float64
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = np.float64
    if not jax.config.jax_enable_x64 and jnp.dtype(dtype).itemsize > 4:
        dtype = np.float32  # without x64, JAX would truncate with a warning anyway
    if isinstance(x, jax.Array) and x.dtype == dtype and x.ndim == 2:
        return x
    return jnp.asarray(arr, dtype=dtype)


def check_positive(value, name, allow_zero=False):
    """A real number > 0 (or >= 0), as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def check_int(value, name, minimum):
    """An integer >= minimum (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_weights(weights, n_components, name="weights_init"):
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_components,):
        raise ValueError(f"{name} must have shape ({n_components},), got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or np.any(w > 1):
        raise ValueError(f"{name} must be in [0, 1], got {w}")
    if not np.isclose(w.sum(), 1.0, rtol=0, atol=1e-6):
        raise ValueError(f"{name} must sum to 1, got sum {w.sum():.8f}")
    return w


def check_means(means, n_components, n_features, name="means_init"):
    m = np.asarray(means, dtype=np.float64)
    if m.shape != (n_components, n_features):
        raise ValueError(f"{name} must have shape ({n_components}, {n_features}), got {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} must be finite")
    return m


def check_precisions(precisions, covariance_type, n_components, n_features, name="precisions_init"):
    """Shape and finiteness, then the family's own check (``check_precisions``:
    symmetry and positive-definiteness, or positivity)."""
    p = np.asarray(precisions, dtype=np.float64)
    family = get_family(covariance_type)
    expected = family.prec_chol_shape(n_components, n_features)
    if p.shape != expected:
        raise ValueError(
            f"{name} for covariance_type={covariance_type!r} must have shape {expected}, got {p.shape}"
        )
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} must be finite")
    family.check_precisions(p, name)
    return p
