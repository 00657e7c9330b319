"""`fit_em`: initialisation + the EM fitter + the driver, in one call."""

from __future__ import annotations

from collections.abc import Callable

import jax

from jaxgmm._driver import FitResult, run_fitter
from jaxgmm._em import em_fitter
from jaxgmm._init import initial_params
from jaxgmm._params import GMMParams
from jaxgmm._validation import check_data, check_int, check_positive


def fit_em(
    key,
    x,
    spec,
    *,
    init: str | GMMParams = "kmeans",
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    chunk_size: int | None = None,
    callback: Callable | None = None,
) -> FitResult:
    """Fit ``spec`` to ``x`` by EM.

    Args:
        key: PRNG key (for the initialiser).
        x: array of shape (n_samples, n_features).
        spec: `GMMSpec`.
        init: an initialiser name (see `INITIALIZERS`) or initial `GMMParams`
            (optionally batched with a leading restart axis).
        n_init: restarts when ``init`` is a name; run vectorised, best kept.
        max_iter: maximum EM iterations per restart.
        tol: convergence threshold on the change of the log-likelihood per sample.
        chunk_size: iterations per jitted chunk (default chosen from the size).
        callback: progress hook, see `run_fitter`.
    """
    x = check_data(x, "x", n_components=spec.n_components, dtype=getattr(x, "dtype", None))
    tol = check_positive(tol, "tol", allow_zero=True)
    n_init = check_int(n_init, "n_init", 1)
    max_iter = check_int(max_iter, "max_iter", 0)
    key_init, key_run = jax.random.split(key)
    if isinstance(init, str):
        params = initial_params(key_init, x, spec, init, n_init)
    else:
        params = jax.tree_util.tree_map(lambda a: jax.numpy.asarray(a, x.dtype), GMMParams(*init))
    return run_fitter(
        em_fitter(spec, tol), key_run, x, params, spec,
        max_iter=max_iter, chunk_size=chunk_size, callback=callback,
    )
