"""Online (stepwise) EM, Cappe and Moulines (2009): one minibatch per step, with the
sufficient statistics kept as a stochastic-approximation average of per-sample
statistics and the M-step taken from that average. Approximate by design: it does not
maximise the full-data likelihood exactly; results depend on the step sizes and batches.

Statistics are `SufficientStats` normalised *per sample* (nk / n, means, scatter / n,
sum r log r / n, n_samples = 1), so no total sample count is needed to run on a stream.
Averaging is done on the equivalent uncentred moments (linear in the samples, so the
average is exact), written in (counts, means, scatter-about-means) form with the pairwise
update of Chan, Golub and LeVeque (1979), which keeps float32 scatters accurate.

The pure pieces (`average_stats`, `online_em_init`, `online_em_step`) carry no data; the
host loop `fit_em_online` feeds fixed-shape minibatches (the last one zero-padded with
sample weight 0) to one compiled step.

The host loop is `jaxgmm.scale.host_loop.run_host_loop` (shared with out-of-core EM).
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._cache import BoundedCache
from jaxgmm.em.steps import em_bound_from_stats, params_from_stats
from jaxgmm.fit.results import (
    FitResult,
    component_diagnostics,
    single_run_result,
    step_is_finite,
)
from jaxgmm.fit.validation import (
    check_fits_dtype,
    check_init_params,
    check_int,
    check_positive,
    default_dtype,
    no_finite_state_error,
)
from jaxgmm.model.blocked import block_moments, stats_from_moments
from jaxgmm.model.covariance import get_family
from jaxgmm.model.density import mean_log_likelihood
from jaxgmm.model.init import resolve_init
from jaxgmm.model.params import GMMParams
from jaxgmm.model.stats import SufficientStats, in_data_coordinates
from jaxgmm.scale.host_loop import params_are_finite, run_host_loop
from jaxgmm.scale.out_of_core import host_blocks, open_data


class OnlineEMState(NamedTuple):
    """Carried by online EM.

    Attributes:
        params: current `GMMParams`.
        stats: averaged `SufficientStats` *per sample*: nk (K,) sums to 1, means (K, D),
            scatter family-shaped / n, sum_resp_log_resp / n, n_samples == 1.
        log_likelihood: scalar, minibatch log-likelihoods per sample averaged with the
            same step sizes (an online estimate; the parameters moved meanwhile).
        n_seen: scalar, samples absorbed so far (total sample weight).
        step: int32 scalar, minibatches absorbed so far.
    """

    params: GMMParams
    stats: SufficientStats
    log_likelihood: jax.Array
    n_seen: jax.Array
    step: jax.Array


class OnlineEMInfo(NamedTuple):
    """Per-step diagnostics (step t maps theta_{t-1} to theta_t).

    Attributes:
        log_likelihood: log-likelihood per sample of the step's minibatch under the
            parameters the step started from.
        bound: EM bound per sample (Bishop 2006, eq. 9.74) of the *averaged* statistics
            under the new parameters: the objective the M-step maximised.
        step_size: gamma used for this step.
        data_log_likelihood: full-data log-likelihood per sample after the step when
            it was evaluated (``eval_every``), else NaN. Filled on the host.
    """

    log_likelihood: jax.Array
    bound: jax.Array
    step_size: jax.Array
    data_log_likelihood: jax.Array


def per_sample_stats(stats):
    """``stats`` (sums over n_samples samples) divided by n_samples; means unchanged.
    The scatter must be in data coordinates (`jaxgmm.in_data_coordinates`): statistics
    under different parameters are averaged, so they need one frame."""
    if stats.frame is not None:
        raise ValueError("per_sample_stats needs the scatter in data coordinates; "
                         "convert with jaxgmm.in_data_coordinates(stats, spec) first")
    n = stats.n_samples
    return SufficientStats(
        nk=stats.nk / n,
        means=stats.means,
        scatter=stats.scatter / n,
        sum_resp_log_resp=stats.sum_resp_log_resp / n,
        n_samples=jnp.ones_like(n),
    )


def scale_stats(stats, n_samples):
    """Per-sample ``stats`` as sums over ``n_samples`` samples (what an M-step takes)."""
    return SufficientStats(
        nk=stats.nk * n_samples,
        means=stats.means,
        scatter=stats.scatter * n_samples,
        sum_resp_log_resp=stats.sum_resp_log_resp * n_samples,
        n_samples=stats.n_samples * n_samples,
    )


def average_stats(stats, batch_stats, step_size, spec):
    """(1 - step_size) * stats + step_size * batch_stats, both per-sample `SufficientStats`.

    Exact for the uncentred moments (sum r, sum r x, sum r x x^T, per sample), which are
    linear in the samples; written in means-and-scatter form (Chan, Golub and LeVeque
    1979): with c_a = (1 - g) nk_a, c_b = g nk_b and d = mean_b - mean_a,

        nk = c_a + c_b,   mean = mean_a + (c_b / nk) d,
        scatter = (1 - g) S_a + g S_b + (c_a c_b / nk) d d^T.

    With step sizes 1/t at fixed parameters this is the running average, i.e. the
    full-batch statistics (tested). A component with nk = 0 on both sides keeps mean_a.
    """
    g = jnp.asarray(step_size, stats.nk.dtype)
    c_a = (1 - g) * stats.nk
    c_b = g * batch_stats.nk
    nk = c_a + c_b
    positive = nk > 0
    frac_b = jnp.where(positive, c_b / jnp.where(positive, nk, 1), 0)
    delta = batch_stats.means - stats.means
    cross = jnp.where(positive, c_a * frac_b, 0)  # c_a c_b / nk
    scatter = (1 - g) * stats.scatter + g * batch_stats.scatter
    scatter = scatter + get_family(spec.covariance_type).point_mass_scatter(cross, delta)
    return SufficientStats(
        nk=nk,
        means=stats.means + frac_b[:, None] * delta,
        scatter=scatter,
        sum_resp_log_resp=(1 - g) * stats.sum_resp_log_resp + g * batch_stats.sum_resp_log_resp,
        n_samples=(1 - g) * stats.n_samples + g * batch_stats.n_samples,
    )


def online_em_init(params, spec):
    """`OnlineEMState` before any minibatch: zero statistics (the first step has step
    size 1, so they are never used)."""
    means = params.means
    dtype = means.dtype
    n_components, n_features = means.shape
    zeros = jnp.zeros((), dtype)
    scatter_shape = get_family(spec.covariance_type).scatter_shape(n_components, n_features)
    stats = SufficientStats(
        nk=jnp.zeros((n_components,), dtype),
        means=means,
        scatter=jnp.zeros(scatter_shape, dtype),
        sum_resp_log_resp=zeros,
        n_samples=zeros,
    )
    return OnlineEMState(
        params=params, stats=stats, log_likelihood=zeros, n_seen=zeros, step=jnp.zeros((), jnp.int32)
    )


def online_step_size(step, batch_weight, n_seen, *, batch_size, step_size_decay,
                     step_size_offset, warmup_steps):
    """The step size of step ``step`` (1-based) for a minibatch of total weight
    ``batch_weight`` after ``n_seen`` samples.

    During warm-up (step <= warmup_steps) it is batch_weight / (n_seen + batch_weight), so
    the statistics are the exact average over all warm-up samples; afterwards
    (step + step_size_offset)^(-step_size_decay), scaled by batch_weight / batch_size so
    a zero-padded final batch counts for its real rows, and at most 1.
    """
    dtype = jnp.result_type(batch_weight)
    running = batch_weight / (n_seen + batch_weight)
    decayed = (step.astype(dtype) + step_size_offset) ** (-step_size_decay)
    decayed = jnp.minimum(1.0, decayed * batch_weight / batch_size)
    return jnp.where((step <= warmup_steps) | (n_seen == 0), running, decayed)


def online_em_step(state, x_batch, sample_weight, n_samples, spec, *, step_size_decay,
                   step_size_offset, warmup_steps):
    """One online EM step on a minibatch.

    Args:
        state: `OnlineEMState`.
        x_batch: array of shape (batch_size, n_features).
        sample_weight: (batch_size,) weights, 1 for real rows and 0 for padding.
        n_samples: scalar, the data-set size the averaged statistics stand for in the
            M-step (matters only for a prior's MAP step; the ML step is scale-free).
        spec: `GMMSpec`.
        step_size_decay, step_size_offset, warmup_steps: see `fit_em_online`.

    Returns:
        ``(state, info)``: the new `OnlineEMState` and `OnlineEMInfo`. No M-step is taken
        during the first ``warmup_steps`` steps.
    """
    moments = block_moments(x_batch, state.params, spec, sample_weight=sample_weight)
    batch_ll, batch_stats = stats_from_moments(moments, state.params, spec)
    # Averaged across steps with different parameters: needs one frame, the data's.
    batch_stats = in_data_coordinates(batch_stats, spec)
    step = state.step + 1
    gamma = online_step_size(
        step, moments.n_samples, state.n_seen, batch_size=x_batch.shape[0],
        step_size_decay=step_size_decay, step_size_offset=step_size_offset,
        warmup_steps=warmup_steps,
    )
    stats = average_stats(state.stats, per_sample_stats(batch_stats), gamma, spec)
    scaled = scale_stats(stats, jnp.asarray(n_samples, stats.nk.dtype))
    m_params = params_from_stats(scaled, spec)
    take_m_step = step > warmup_steps
    params = jax.tree_util.tree_map(
        lambda new, old: jnp.where(take_m_step, new, old), m_params, state.params
    )
    new_state = OnlineEMState(
        params=params,
        stats=stats,
        log_likelihood=(1 - gamma) * state.log_likelihood + gamma * batch_ll,
        n_seen=state.n_seen + moments.n_samples,
        step=step,
    )
    info = OnlineEMInfo(
        log_likelihood=batch_ll,
        bound=em_bound_from_stats(scaled, params, spec),
        step_size=gamma,
        data_log_likelihood=jnp.asarray(jnp.nan, batch_ll.dtype),
    )
    return new_state, info


# --- host side -------------------------------------------------------------------------


def _step_with_diagnostics(state, x_batch, sample_weight, n_samples, hyper, spec):
    new_state, info = online_em_step(state, x_batch, sample_weight, n_samples, spec, **hyper)
    finite = step_is_finite(new_state.params, info)
    return new_state, info, component_diagnostics(new_state.params, spec), finite


# The compiled step per (spec, shapes); bounded like every cache of compiled functions
# (see `jaxgmm._cache`).
_COMPILED = BoundedCache(32)


def _compiled_step(spec, *args):
    """The step compiled ahead of time for ``args`` = (state, x_batch, sample_weight,
    n_samples, hyper), with the seconds compiling took (0 if cached). The step-size
    hyperparameters are traced, so changing them does not recompile."""
    signature = jax.tree_util.tree_map(lambda a: (a.shape, str(a.dtype)), args)
    cache_key = (spec, str(signature))
    if cache_key in _COMPILED:
        return _COMPILED[cache_key], 0.0
    begin = time.perf_counter()
    fn = jax.jit(_step_with_diagnostics, static_argnums=5)
    compiled = fn.lower(*args, spec).compile()
    _COMPILED[cache_key] = compiled
    return compiled, time.perf_counter() - begin


_mean_ll_jit = jax.jit(mean_log_likelihood, static_argnums=2)


def _data_log_likelihood(x, params, spec, dtype, block_size=65536):
    """Log-likelihood per sample of all of the host array ``x``, block by block."""
    n_samples = x.shape[0]
    total = 0.0
    for start in range(0, n_samples, block_size):
        rows = np.arange(start, min(start + block_size, n_samples))
        block = jnp.asarray(check_fits_dtype(np.asarray(x[start : start + block_size]), dtype,
                                             "x", rows=rows))
        total += float(_mean_ll_jit(block, params, spec)) * block.shape[0]
    return total / n_samples


def _shuffled_blocks(x, order, block_size, dtype, sort_rows):
    """Like `host_blocks` but reading rows ``order[i : i + block_size]``."""
    for start in range(0, len(order), block_size):
        rows = order[start : start + block_size]
        if sort_rows:  # memmaps: read in file order (the rows' order in a batch is irrelevant)
            rows = np.sort(rows)
        block = np.asarray(x[rows])
        if not np.all(np.isfinite(block)):
            bad = int(rows[np.argwhere(~np.isfinite(block))[0, 0]])
            raise ValueError(f"x contains NaN or infinity (first at row {bad})")
        block = check_fits_dtype(block, dtype, "x", rows=rows)
        n = block.shape[0]
        weight = np.ones((block_size,), dtype)
        if n < block_size:
            block = np.concatenate([block, np.zeros((block_size - n, block.shape[1]), dtype)])
            weight[n:] = 0
        yield block, weight


def _checked_stream(iterator, dtype, n_features=None):
    """Validated (n, n_features) float batches of a stream (empty batches skipped); the
    dtype defaults to the first batch's (float64 only with x64 on)."""
    for index, batch in enumerate(iterator):
        try:
            arr = np.asarray(batch)
        except Exception as exc:  # noqa: BLE001 - report any conversion failure plainly
            raise ValueError(f"x: stream batch {index} is not an array of numbers") from exc
        if arr.ndim != 2:
            hint = " (for an in-memory data set pass np.asarray(x))" if index == 0 else ""
            raise ValueError(
                f"x: stream batch {index} must be 2D of shape (n, n_features), got shape "
                f"{arr.shape}{hint}"
            )
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
        ) or np.issubdtype(arr.dtype, np.complexfloating):
            raise ValueError(f"x: stream batch {index} must hold real numbers, got dtype {arr.dtype}")
        if n_features is None:
            n_features = arr.shape[1]
        elif arr.shape[1] != n_features:
            raise ValueError(
                f"x: stream batch {index} has {arr.shape[1]} features, expected {n_features} "
                f"(shape {arr.shape})"
            )
        if arr.shape[0] == 0:
            continue
        if dtype is None:
            dtype = _resolve_dtype(arr.dtype if np.issubdtype(arr.dtype, np.floating) else None)
        if not np.all(np.isfinite(arr)):
            row, col = np.argwhere(~np.isfinite(arr))[0]
            raise ValueError(
                f"x: stream batch {index} contains NaN or infinity (first at row {row}, "
                f"column {col} of that batch)"
            )
        yield check_fits_dtype(arr, dtype, "x", where=f" of stream batch {index}")


def _rebatch(batches, batch_size, dtype):
    """Fixed (batch_size, D) blocks and weights from batches of any length, in order;
    the last block zero-padded with weight 0."""
    pending, count = [], 0
    for rows in batches:
        pending.append(rows)
        count += rows.shape[0]
        while count >= batch_size:
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield joined[:batch_size], np.ones((batch_size,), dtype)
            rest = joined[batch_size:]
            pending, count = ([rest], rest.shape[0]) if rest.shape[0] else ([], 0)
    if count:
        joined = np.concatenate(pending)
        weight = np.zeros((batch_size,), dtype)
        weight[:count] = 1
        pad = np.zeros((batch_size - count, joined.shape[1]), dtype)
        yield np.concatenate([joined, pad]), weight


def _resolve_dtype(dtype):
    dtype = np.dtype(dtype) if dtype is not None else np.dtype(default_dtype())
    if not jax.config.jax_enable_x64 and dtype.itemsize > 4:
        dtype = np.dtype(np.float32)  # JAX would truncate with a warning anyway
    return dtype


def _check_optional_int(value, name, minimum):
    return None if value is None else check_int(value, name, minimum)


def _initial_params(key, rows, spec, init, dtype, n_features):
    """One restart's initial parameters: a named initialiser run on the host ``rows``
    (None when ``init`` is given), or the given `GMMParams` (checked) cast to ``dtype``.
    Raises the no-finite-state ValueError if they are not finite."""
    if not isinstance(init, str):
        check_init_params(init, spec, n_features, name="init", dtype=dtype)
        return resolve_init(key, None, spec, init, dtype=dtype)
    params = resolve_init(key, jnp.asarray(rows), spec, init)
    params = jax.tree_util.tree_map(lambda a: a[0], params)
    if not params_are_finite(params):
        raise no_finite_state_error(
            f"fit_em_online: the initial parameters from init={init!r}", dtype
        )
    return params


def fit_em_online(
    key,
    x,
    spec,
    *,
    init: str | GMMParams = "kmeans",
    init_subsample: int = 100_000,
    batch_size: int | None = None,
    n_epochs: int | None = None,
    step_size_decay: float = 0.6,
    step_size_offset: float = 2.0,
    warmup_steps: int | None = None,
    max_steps: int | None = None,
    n_samples: float | None = None,
    dtype=None,
    shuffle: bool = True,
    eval_every: int | None = None,
    score_final: bool = True,
    callback: Callable[[int, OnlineEMInfo], None] | None = None,
) -> FitResult:
    """Online (stepwise) EM (Cappe and Moulines 2009). APPROXIMATE: it does not maximise
    the full-data likelihood exactly; the result depends on the step sizes, the batch
    size and the order of the minibatches.

    Step t draws a minibatch, computes its per-sample sufficient statistics s_hat_t
    under the current parameters, averages s_t = (1 - gamma_t) s_{t-1} + gamma_t s_hat_t
    with gamma_t = (t + step_size_offset)^(-step_size_decay) (gamma_1 = 1), and takes
    the EM M-step (`params_from_stats`, so reg_covar and a prior's MAP step are as in
    batch EM) from s_t.

    Args:
        key: PRNG key (initialiser subsample, initialiser, per-epoch shuffles).
        x: array of shape (n_samples, n_features), a ``np.memmap``, a path to a ``.npy``
            file (opened memory-mapped), or an iterable of minibatches, each an array of
            shape (n, n_features) (a stream: consumed once, in order, re-cut into batches
            of ``batch_size`` rows; may be infinite if ``max_steps`` is given).
        spec: `GMMSpec`.
        init: an initialiser name or `GMMParams`. A named initialiser runs on
            ``init_subsample`` random rows of finite data, or on the first
            ``init_subsample`` rows of a stream (which are then also used for fitting).
        init_subsample: rows used by a named initialiser.
        batch_size: rows per step (default: min(n_samples, 1024) for finite data, the
            first batch's length for a stream); must be <= n_samples.
        n_epochs: passes over finite data (default 5); not allowed for a stream.
        step_size_decay: kappa in (0.5, 1] (Robbins-Monro: sum gamma = inf, sum
            gamma^2 < inf). 1 with offset 0 is the running average.
        step_size_offset: t0 >= 0; larger values damp the early steps.
        warmup_steps: steps without an M-step at the start, with exact running-average
            statistics (Cappe and Moulines's advice, so the first M-step sees enough
            samples). Default: the fewest steps covering 10 * K * (D + 1) samples, minus 1
            (0 when one batch is enough).
        max_steps: stop after this many steps (all epochs otherwise).
        n_samples: stream only: the data-set size the averaged statistics stand for in a
            prior's MAP M-step (required with a prior). Finite data use x.shape[0].
            Without a prior the ML M-step is scale-free and 1 is used.
        dtype: float dtype of the computation (default: the data's).
        shuffle: reshuffle finite data each epoch (ignored for streams). A memmapped
            batch's rows are read in file order; with ``shuffle=False`` batches are
            consecutive rows, which biases the fit if the file is ordered (e.g. by class).
        eval_every: finite data only: also compute the full-data log-likelihood every
            this many steps (one extra pass each time; off by default).
        score_final: finite data: the result's ``log_likelihood`` is the full-data
            log-likelihood of the final parameters (one extra pass). Otherwise (and for
            streams) it is the step-size-averaged minibatch log-likelihood (an estimate).
        callback: called on the host after every step as ``callback(step, info)`` with
            ``info`` an `OnlineEMInfo` of host scalars; for progress.

    Returns:
        `FitResult` (fitter ``"em_online"``, bound_name ``"averaged_em_bound"``). Its
        trace has one entry per step: ``log_likelihood`` is the minibatch log-likelihood
        per sample, ``bound`` the EM bound of the averaged statistics; ``extras`` holds
        ``step_size``, ``data_log_likelihood`` (NaN where not evaluated), smallest
        covariance eigenvalues and weights. ``converged`` is always False (online EM has
        no convergence test); ``state`` is the final `OnlineEMState`.
    """
    kappa = check_positive(step_size_decay, "step_size_decay")
    if not 0.5 < kappa <= 1.0:
        raise ValueError(
            f"step_size_decay (kappa) must be in (0.5, 1] so that the step sizes satisfy "
            f"Robbins-Monro, got {step_size_decay!r}"
        )
    t0 = check_positive(step_size_offset, "step_size_offset", allow_zero=True)
    batch_size = _check_optional_int(batch_size, "batch_size", 1)
    n_epochs = _check_optional_int(n_epochs, "n_epochs", 1)
    warmup_steps = _check_optional_int(warmup_steps, "warmup_steps", 0)
    max_steps = _check_optional_int(max_steps, "max_steps", 1)
    eval_every = _check_optional_int(eval_every, "eval_every", 1)
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable or None, got {type(callback).__name__}")
    if isinstance(init, str):
        init_subsample = check_int(init_subsample, "init_subsample", spec.n_components)
    if dtype is not None and not np.issubdtype(np.dtype(dtype), np.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype!r}")
    key_rows, key_init, key_shuffle = jax.random.split(key, 3)

    finite = isinstance(x, (str, os.PathLike)) or hasattr(x, "shape")
    if finite:
        if n_samples is not None:
            raise ValueError(
                "n_samples applies to streams only; finite x uses its own x.shape[0]"
            )
        if isinstance(x, jax.Array):
            x = np.asarray(x)
        x = open_data(x, dtype)
        dtype = _resolve_dtype(dtype or x.dtype)
        n_total, n_features = x.shape
        if n_total < spec.n_components:
            raise ValueError(
                f"x has n_samples={n_total}, fewer than n_components={spec.n_components}"
            )
        if batch_size is None:
            batch_size = min(n_total, 1024)
        if batch_size > n_total:
            raise ValueError(f"batch_size={batch_size} exceeds n_samples={n_total}")
        n_epochs = 5 if n_epochs is None else n_epochs
        if isinstance(init, str):
            rows = np.sort(np.asarray(jax.random.choice(
                key_rows, n_total, (min(init_subsample, n_total),), replace=False
            )))
            subset = np.asarray(x[rows])
            if not np.all(np.isfinite(subset)):
                bad = int(rows[np.argwhere(~np.isfinite(subset))[0, 0]])
                raise ValueError(f"x contains NaN or infinity (first at row {bad})")
            subset = check_fits_dtype(subset, dtype, "x", rows=rows)
            params = _initial_params(key_init, subset, spec, init, dtype, n_features)
        else:
            params = _initial_params(key_init, None, spec, init, dtype, n_features)
        steps_per_epoch = -(-n_total // batch_size)

        def batches():
            for epoch in range(n_epochs):
                if shuffle:
                    order = np.asarray(
                        jax.random.permutation(jax.random.fold_in(key_shuffle, epoch), n_total)
                    )
                    yield from _shuffled_blocks(
                        x, order, batch_size, dtype, sort_rows=isinstance(x, np.memmap)
                    )
                else:
                    yield from host_blocks(x, batch_size, dtype)

        total_steps = n_epochs * steps_per_epoch
        scale = float(n_total)
    else:
        if n_epochs is not None:
            raise ValueError(
                "n_epochs applies to finite data; a stream is consumed once (use max_steps "
                "to stop early)"
            )
        if eval_every is not None:
            raise ValueError("eval_every needs finite data (an array or .npy file), not a stream")
        if isinstance(x, Iterable):
            iterator = iter(x)
        else:
            raise ValueError(
                "x must be an array of shape (n_samples, n_features), a path to a .npy file, "
                f"or an iterable of (n, n_features) minibatches, got {type(x).__name__}"
            )
        if n_samples is not None:
            n_samples = check_positive(n_samples, "n_samples")
        elif spec.prior is not None:
            raise ValueError(
                "n_samples is required for a stream with a prior: the MAP M-step weighs the "
                "prior against that many samples"
            )
        want_features = None if isinstance(init, str) else np.shape(init[1])[-1]
        stream = _checked_stream(iterator, None if dtype is None else _resolve_dtype(dtype),
                                 want_features)
        want_rows = init_subsample if isinstance(init, str) else 1
        head, n_head = [], 0
        for rows in stream:
            head.append(rows)
            n_head += rows.shape[0]
            if n_head >= want_rows:
                break
        if not head:
            raise ValueError("x: the stream yielded no samples")
        dtype = head[0].dtype
        n_features = head[0].shape[1]
        if batch_size is None:
            batch_size = head[0].shape[0]
        if isinstance(init, str):
            first = np.concatenate(head)[:init_subsample]
            if first.shape[0] < spec.n_components:
                raise ValueError(
                    f"x: the stream yielded {first.shape[0]} samples, fewer than "
                    f"n_components={spec.n_components}"
                )
            params = _initial_params(key_init, first, spec, init, dtype, n_features)
        else:
            params = _initial_params(key_init, None, spec, init, dtype, n_features)

        def batches():
            return _rebatch(itertools.chain(head, stream), batch_size, dtype)

        total_steps = None
        scale = 1.0 if n_samples is None else n_samples
    if params.means.shape[-1] != n_features:
        raise ValueError(
            f"init has n_features={params.means.shape[-1]}, x has n_features={n_features}"
        )
    if warmup_steps is None:
        needed = 10 * spec.n_components * (n_features + 1)
        warmup_steps = max(0, math.ceil(needed / batch_size) - 1)
    if max_steps is not None:
        total_steps = max_steps if total_steps is None else min(total_steps, max_steps)
    hyper = dict(step_size_decay=kappa, step_size_offset=t0, warmup_steps=warmup_steps)
    return _run_online(
        batches(), params, spec, hyper, batch_size=batch_size, dtype=dtype, scale=scale,
        max_steps=total_steps, data=x if finite else None, eval_every=eval_every,
        score_final=score_final and finite, callback=callback,
    )


def _run_online(batches, params, spec, hyper, *, batch_size, dtype, scale, max_steps, data,
                eval_every, score_final, callback):
    """The host loop: one compiled step per minibatch; returns a `FitResult`."""
    state = online_em_init(params, spec)
    n_scale = jnp.asarray(scale, dtype)
    n_features = params.means.shape[-1]
    template = (np.zeros((batch_size, n_features), dtype), np.zeros((batch_size,), dtype))
    hyper = {
        "step_size_decay": jnp.asarray(hyper["step_size_decay"], dtype),
        "step_size_offset": jnp.asarray(hyper["step_size_offset"], dtype),
        "warmup_steps": jnp.asarray(hyper["warmup_steps"], jnp.int32),
    }
    step_fn, compile_s = _compiled_step(spec, state, *template, n_scale, hyper)

    def step(state, batch):
        block, weight = batch
        return step_fn(state, block, weight, n_scale, hyper)

    def evaluate(iteration, state, info):
        if eval_every is not None and iteration % eval_every == 0:
            data_ll = _data_log_likelihood(data, state.params, spec, dtype)
            info = info._replace(data_log_likelihood=np.asarray(data_ll))
        return info

    start = time.perf_counter()
    # islice stops before reading past max_steps batches (a stream is not over-consumed).
    loop = run_host_loop(
        step, state, itertools.islice(batches, max_steps), spec.n_components,
        after_step=evaluate, callback=callback,
    )
    state = loop.state
    if loop.trace.iteration.size == 0 and not score_final:
        # No step was accepted: the averaged minibatch log-likelihood is still its zero
        # start, not an estimate of anything.
        raise no_finite_state_error("fit_em_online: the first step's values", dtype)
    if score_final:
        final_ll = _data_log_likelihood(data, state.params, spec, dtype)
    else:
        final_ll = float(state.log_likelihood)
    if not np.isfinite(final_ll):
        raise no_finite_state_error(
            "fit_em_online: the log-likelihood of the "
            + ("initial parameters" if loop.trace.iteration.size == 0 else "final parameters"),
            dtype,
        )
    run_s = time.perf_counter() - start
    n_for_degeneracy = data.shape[0] if data is not None else float(state.n_seen)
    return single_run_result(
        state.params, loop.trace, spec, fitter="em_online", bound_name="averaged_em_bound",
        converged=False, log_likelihood=final_ll, n_samples=n_for_degeneracy,
        compile_s=compile_s, run_s=run_s, nonfinite_iteration=loop.nonfinite_iteration,
        state=state,
    )
