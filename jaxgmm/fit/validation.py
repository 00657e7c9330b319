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


def check_data(x, name="X", n_components=None, dtype=None, *, as_numpy=False):
    """Validate a data matrix and return it as a JAX array of a floating dtype.

    Args:
        x: array-like of shape (n_samples, n_features) (numpy or JAX).
        name: argument name used in error messages.
        n_components: if given, require n_samples >= n_components.
        dtype: target dtype; default keeps float64 input in x64 mode, else float32.
        as_numpy: return the validated values as a NumPy array of that dtype instead
            (for callers that pad or split the rows on the host before they reach JAX).
    """
    if not getattr(x, "is_fully_addressable", True):
        # A jax.Array spanning several processes (jax.distributed): no host holds it all.
        raise ValueError(
            f"{name} spans several processes (a jax.distributed global array), which the "
            "fit_* helpers cannot check or lay out on one host; run a fitter with a mesh "
            "instead: jaxgmm.run_fitter(jaxgmm.em.em_fitter(spec, reg_covar, mesh=mesh), "
            "key, x, params, spec) (docs/fitters.md, several devices and several hosts)"
        )
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
    dtype = compute_dtype(arr.dtype, dtype)
    if as_numpy:
        return check_fits_dtype(arr, dtype, name)
    if isinstance(x, jax.Array) and x.dtype == dtype and x.ndim == 2:
        return x
    return jnp.asarray(check_fits_dtype(arr, dtype, name))


def compute_dtype(data_dtype, dtype=None):
    """The floating dtype a computation on data of ``data_dtype`` runs in: ``dtype`` if
    given, else the data's float dtype (float64 for integers); float32 without x64."""
    if dtype is None:
        dtype = data_dtype if data_dtype in (np.float32, np.float64) else np.float64
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = np.float64
    if not jax.config.jax_enable_x64 and jnp.dtype(dtype).itemsize > 4:
        dtype = np.float32  # without x64, JAX would truncate with a warning anyway
    return np.dtype(dtype)


def check_fits_dtype(arr, dtype, name, where="", rows=None):
    """``arr`` (finite NumPy values) cast to ``dtype``; a ValueError naming ``name`` and
    the first entry if the cast overflows (finite float64 beyond float32's ~3.4e38 become
    infinite: checking finiteness before the cast is not enough). ``where`` is added to
    the position in the message (e.g. " of stream batch 3"); ``rows`` (optional) maps a
    2D ``arr``'s rows to the row numbers the message reports (a block of a larger array)."""
    arr = np.asarray(arr)
    with np.errstate(over="ignore"):  # the overflow is reported below, by name
        cast = arr.astype(dtype, copy=False)
    if cast is not arr and not np.all(np.isfinite(cast)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(cast))[0])
        if len(bad) == 2:
            row = bad[0] if rows is None else int(rows[bad[0]])
            position = f"row {row}, column {bad[1]}"
        else:
            position = f"index {bad}"
        raise ValueError(
            f"{name} has values that overflow {np.dtype(dtype).name} (largest finite "
            f"{float(np.finfo(dtype).max):.3g}; first at {position}{where}: "
            f"{float(arr[bad]):.6g}); standardise the data (e.g. subtract the mean and divide by "
            "the standard deviation of each feature) or compute in float64 "
            "(jax.config.update('jax_enable_x64', True))"
        )
    return cast


def check_finite_rows(arr, name, rows=None, where=""):
    """Raise the NaN/infinity ValueError of `check_data` for a 2D NumPy block ``arr``
    whose rows are rows ``rows`` (default 0..n-1) of the data ``name``."""
    if not np.all(np.isfinite(arr)):
        r, c = (int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        row = r if rows is None else int(rows[r])
        raise ValueError(
            f"{name} contains NaN or infinity (first at row {row}, column {c}{where}); "
            "remove or impute these values first"
        )


def no_finite_state_error(what, dtype, advice=None):
    """The ValueError a fitter raises when it has no finite state to return: ``what``
    (e.g. "fit_em_online: the initial parameters") says what was not finite; ``advice``
    (optional) is a fitter-specific remedy put first."""
    dtype = np.dtype(dtype)
    remedies = [advice] if advice else []
    remedies.append(
        "standardise the data (subtract each feature's mean and divide by its standard "
        "deviation)"
    )
    if dtype.itemsize < 8:
        remedies.append("compute in float64 (jax.config.update('jax_enable_x64', True))")
    else:
        remedies.append("raise reg_covar")
    return ValueError(
        f"{what} are not finite in {dtype.name}: the data's values, their squares or "
        f"the likelihood overflow {dtype.name} (largest finite "
        f"{float(np.finfo(dtype).max):.3g}), or the data are degenerate; "
        + "; or ".join(remedies)
    )


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


def _factor_is_matrix(family):
    """Whether the family's precision factor holds D x D matrices (full, tied), probed
    through its shape rule so that no covariance type is named here."""
    return tuple(family.prec_chol_shape(1, 2)[-2:]) == (2, 2)


def check_init_params(params, spec, n_features, name="init_params", dtype=None):
    """Validate initial `GMMParams` given by the user before they reach a fitter.

    Args:
        params: `GMMParams` (or a tuple (weights, means, prec_chol)), unbatched or with
            a leading restart axis: weights (n_components,), means (n_components,
            n_features), prec_chol of the family's shape (see `jaxgmm.GMMParams`).
        spec: `GMMSpec`.
        n_features: the data's number of features.
        name: the argument's name in error messages.
        dtype: if given, the values must also be finite once cast to it.

    Returns:
        ``params`` as `GMMParams` (values unchanged).

    Raises:
        ValueError naming ``name`` and what was expected: wrong shapes; non-finite
        values; weights negative or not summing to 1; a precision factor with a zero,
        negative or NaN diagonal (entries, for diag/spherical), or for full/tied not
        upper triangular (scikit-learn's ``precisions_cholesky_`` convention).
    """
    from jaxgmm.model.params import GMMParams  # fit -> model is allowed; keeps import light

    if isinstance(params, (str, dict)) or not isinstance(params, (tuple, list)) or len(
        params
    ) != 3:
        raise ValueError(
            f"{name} must be GMMParams(weights, means, prec_chol) (or an initialiser name "
            f"where one is accepted), got {type(params).__name__}"
        )
    params = GMMParams(*params)
    family = get_family(spec.covariance_type)
    k, d = spec.n_components, int(n_features)
    try:
        shapes = [np.shape(leaf) for leaf in params]
    except Exception as exc:  # noqa: BLE001 - report any conversion failure plainly
        raise ValueError(f"{name} must hold arrays of numbers") from exc
    means_shape = shapes[1]
    batched = len(means_shape) == 3
    lead = means_shape[:1] if batched else ()
    expected = (lead + (k,), lead + (k, d), lead + tuple(family.prec_chol_shape(k, d)))
    fields = ("weights", "means", "prec_chol")
    restart_note = " (with a leading restart axis)" if batched else ""
    for field, shape, want in zip(fields, shapes, expected):
        if tuple(shape) != want:
            raise ValueError(
                f"{name}.{field} for n_components={k}, n_features={d}, "
                f"covariance_type={spec.covariance_type!r} must have shape {want}"
                f"{restart_note}, got {tuple(shape)}"
            )
    if any(isinstance(leaf, jax.core.Tracer) for leaf in params):
        return params  # values unknown under a transformation: shapes are all we can check
    values = {}
    for field, leaf in zip(fields, params):
        try:
            arr = np.asarray(leaf)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{name}.{field} must be an array of numbers") from exc
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
        ):
            raise ValueError(f"{name}.{field} must hold real numbers, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
            raise ValueError(
                f"{name}.{field} must be finite, got {arr[bad]} at index {bad}"
            )
        if dtype is not None:
            check_fits_dtype(arr, dtype, f"{name}.{field}")
        values[field] = arr.astype(np.float64)
    w = values["weights"]
    if np.any(w < 0):
        bad = tuple(int(i) for i in np.argwhere(w < 0)[0])
        raise ValueError(f"{name}.weights must be >= 0, got {w[bad]} at index {bad}")
    # A float32 simplex sums to 1 only to about K ulps.
    weights_dtype = np.asarray(params.weights).dtype
    eps = float(np.finfo(weights_dtype).eps) if np.issubdtype(weights_dtype, np.floating) else 0
    tol = max(1e-6, 8 * k * eps)
    error = np.abs(np.atleast_1d(w.sum(axis=-1)) - 1)
    if np.any(error > tol):
        worst = np.atleast_1d(w.sum(axis=-1))[np.argmax(error)]
        raise ValueError(f"{name}.weights must sum to 1, got sum {worst:.8g}")
    p = values["prec_chol"]
    if _factor_is_matrix(family):
        lower = np.tril(np.ones((d, d), bool), -1)
        if np.any(p[..., lower] != 0):
            raise ValueError(
                f"{name}.prec_chol for covariance_type={spec.covariance_type!r} must be "
                "upper triangular (scikit-learn's precisions_cholesky_: precision = "
                "prec_chol @ prec_chol.T); build it with jaxgmm.params_from_covariances "
                "or jaxgmm.params_from_precisions"
            )
    with np.errstate(divide="ignore", invalid="ignore"):
        log_det = np.asarray(
            jax.device_get(family.log_det_prec_chol(jnp.asarray(p), d)), dtype=np.float64
        )
    if not np.all(np.isfinite(log_det)):
        what = "diagonal" if _factor_is_matrix(family) else "entries"
        raise ValueError(
            f"{name}.prec_chol for covariance_type={spec.covariance_type!r} must have a "
            f"positive {what} (a precision factor is invertible), got a zero, negative or "
            "non-finite value"
        )
    return params
