"""The one driver: runs any `Fitter` under jit + chunked `lax.scan`, vmapped over
restarts, and returns a uniform `FitResult` with a per-iteration `Trace`.

Iterations run in jitted chunks; the host times each chunk and checks whether every
restart is done, so wall time per iteration is the chunk's time divided evenly among its
iterations. Compile time is
measured apart (ahead-of-time compilation) and is 0 when the executable is cached.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxgmm._cache import BoundedCache
from jaxgmm.fit.fitter import DriverHooks, step_data
from jaxgmm.fit.results import (
    FitResult,
    RestartSummary,
    component_diagnostics,
    find_degeneracies,
    make_trace,
    step_is_finite,
)
from jaxgmm.model.density import mean_log_likelihood


class RunState(NamedTuple):
    """What the driver carries for one restart; `FitResult.state` holds the best one's
    final value, and ``run_fitter(..., init_state=)`` continues from it exactly.

    Attributes:
        fitter_state: the fitter's own State.
        previous: scalar, the fitter's ``Info.<tol_on>`` at the last accepted iteration
            (-inf before the first): what the tolerance test compares with.
        n_iter: int32 scalar, iterations accepted so far, over every run continued; step
            keys are ``fold_in(restart key, n_iter)``, so a continued stochastic fit
            draws what an uninterrupted one would.
    """

    fitter_state: object
    previous: jax.Array
    n_iter: jax.Array


class _Carry(NamedTuple):
    run: RunState
    done: jax.Array  # bool
    n_iter: jax.Array  # int32, iterations of this call
    nonfinite_at: jax.Array  # int32, -1 if never


class _DriverInfo(NamedTuple):
    """Per-iteration values the driver adds to the fitter's Info."""

    converged: jax.Array  # bool: the tolerance test or-ed with the fitter's own
    change: jax.Array  # Info.<tol_on> minus its previous value (inf at the first)


def _converged(fitter, info, change):
    converged = jnp.asarray(getattr(info, "converged", False))
    if fitter.tol is not None:
        converged = converged | (jnp.abs(change) < fitter.tol)
    return converged


def _chunk_function(fitter, spec, chunk_size, sequential):
    def one_restart(key, carry, data, max_iter):
        def body(c, _):
            run = c.run
            key_step = jax.random.fold_in(key, run.n_iter)
            new_state, info = fitter.step(key_step, run.fitter_state, data)
            finite = step_is_finite(fitter.get_params(new_state), info)
            quantity = getattr(info, fitter.tol_on)
            change = quantity - run.previous
            converged = _converged(fitter, info, change)
            active = ~c.done
            accept = active & finite
            run = RunState(
                fitter_state=jax.tree_util.tree_map(
                    lambda a, b: jnp.where(accept, a, b), new_state, run.fitter_state
                ),
                previous=jnp.where(accept, quantity, run.previous).astype(run.previous.dtype),
                n_iter=run.n_iter + accept.astype(jnp.int32),
            )
            n_iter = c.n_iter + accept.astype(jnp.int32)
            nonfinite_at = jnp.where(active & ~finite, c.n_iter + 1, c.nonfinite_at)
            done = c.done | (active & (converged | ~finite)) | (n_iter >= max_iter)
            diagnostics = component_diagnostics(fitter.get_params(run.fitter_state), spec)
            driver_info = _DriverInfo(converged=converged, change=change)
            return _Carry(run, done, n_iter, nonfinite_at), (info, driver_info, diagnostics, accept)

        return lax.scan(body, carry, None, length=chunk_size)

    return jax.jit(_over_restarts(one_restart, sequential))


# Above this many (sample, component, feature + 1) elements, restarts run one after the
# other (`lax.map`) instead of vmapped: their per-restart work is already large, memory
# stays that of one restart, and a `lax.cond` inside the step (EM's choice of the
# expanded or direct Mahalanobis form) stays a branch; under vmap it would run both.
_SEQUENTIAL_RESTARTS_ELEMENTS = 2**22


def restarts_run_sequentially(n_samples, n_features, spec):
    return n_samples * spec.n_components * (n_features + 1) > _SEQUENTIAL_RESTARTS_ELEMENTS


def _over_restarts(one_restart, sequential):
    """``one_restart(key, carry, data, max_iter)`` over the leading restart axis of
    ``key`` and ``carry``: called directly for one restart, with `lax.map` when
    ``sequential``, otherwise with `jax.vmap`."""

    def batched(keys, carry, data, max_iter):
        if keys.shape[0] == 1:
            out = one_restart(keys[0], jax.tree_util.tree_map(lambda a: a[0], carry), data, max_iter)
            return jax.tree_util.tree_map(lambda a: a[None], out)
        if sequential:
            return lax.map(lambda kc: one_restart(kc[0], kc[1], data, max_iter), (keys, carry))
        return jax.vmap(one_restart, in_axes=(0, 0, None, None))(keys, carry, data, max_iter)

    return batched


# Compiled start/chunk/finish functions by (fitter, spec, chunk size, shapes), most
# recent last; bounded, because every executable holds memory mappings of its own.
_COMPILED = BoundedCache(64)


# Restart r's init key is fold_in(k_r, this); step t's is fold_in(k_r, t - 1), and no
# int32 iteration count reaches this value.
_INIT_FOLD = 2**31 - 1


def _start_function(fitter, resume):
    """``start(keys, source, x) -> (carry, data)``: the fitter's data layout (its
    ``prepare`` hook), made once, and the carry: from initial parameters (``init`` of
    every restart), or, when ``resume``, from a batched `RunState`."""

    def start(keys, source, x):
        data = step_data(fitter, x)
        n_restarts = keys.shape[0]
        if resume:
            run = source
        else:
            init_keys = jax.vmap(lambda k: jax.random.fold_in(k, _INIT_FOLD))(keys)
            run = RunState(
                fitter_state=jax.vmap(fitter.init, in_axes=(0, 0, None))(init_keys, source, data),
                previous=jnp.full((n_restarts,), -jnp.inf, x.dtype),
                n_iter=jnp.zeros((n_restarts,), jnp.int32),
            )
        carry = _Carry(
            run=run,
            done=jnp.zeros((n_restarts,), bool),
            n_iter=jnp.zeros((n_restarts,), jnp.int32),
            nonfinite_at=jnp.full((n_restarts,), -1, jnp.int32),
        )
        return carry, data

    return jax.jit(start)


def _finish_function(fitter, spec):
    hooks = fitter.hooks or DriverHooks()

    def finish(x, data, state):
        # Final parameters of every restart, scored by the shared density (on the
        # fitter's prepared data when it can: EM's blocks, one compiled block body).
        params = jax.vmap(fitter.get_params)(state)
        if hooks.score_prepared is not None:
            score = partial(hooks.score_prepared, data)
        else:
            score = partial(mean_log_likelihood, x, spec=spec)
        return params, jax.vmap(lambda p: score(params=p))(params)

    return jax.jit(finish)


# Start and finish run once per fit. XLA:CPU compiles them 1.6-5x faster with its
# classic emitters than with its fusion emitters, at about the same run time (measured
# within 5% at (1e6, 16, 16)).
_ONCE_PER_FIT_OPTIONS = (("xla_cpu_use_fusion_emitters", False),)


def _compile(lowered, options):
    """``lowered.compile`` with XLA ``options`` ((name, value) pairs), or without them
    when this jaxlib does not know one of them (they only change speed)."""
    if not options:
        return lowered.compile()
    try:
        return lowered.compile(dict(options))
    except Exception as error:  # noqa: BLE001 - the type differs across jaxlib versions
        if "compile option" not in str(error):
            raise
        return lowered.compile()


def _on_several_devices(x):
    sharding = getattr(x, "sharding", None)
    return sharding is not None and len(sharding.device_set) > 1


def _compiled(fitter, spec, chunk_size, keys, source, x, max_iter, resume):
    """Start (with the fitter's data preparation), chunk and finish functions compiled
    ahead of time (once per fitter, shapes and dtypes), with the seconds it took (0 when
    cached), so nothing compiles while the run is timed. ``source``: initial parameters,
    or the `RunState` to resume from when ``resume``."""
    signature = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), (keys, source, x))
    cache_key = (
        fitter, spec, chunk_size, resume, str(signature), str(getattr(x, "sharding", None))
    )
    if cache_key in _COMPILED:
        return _COMPILED[cache_key], 0.0
    begin = time.perf_counter()
    start_fn = _start_function(fitter, resume)
    start = _compile(start_fn.lower(keys, source, x), _ONCE_PER_FIT_OPTIONS)
    # The chunk and finish take what start returns, placed as start places it (on a mesh
    # XLA may replicate the carry over devices; lowered without that, they expect one).
    carry, data = jax.tree_util.tree_map(
        lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        jax.eval_shape(start_fn, keys, source, x),
        start.output_shardings,
    )
    # On several devices, one restart at a time too: vmapped restarts would batch the
    # per-matrix linear algebra again (see `jaxgmm.model.linalg`).
    sequential = restarts_run_sequentially(x.shape[0], x.shape[1], spec) or _on_several_devices(x)
    chunk_lowered = _chunk_function(fitter, spec, chunk_size, sequential).lower(
        keys, carry, data, max_iter
    )
    finish_lowered = _finish_function(fitter, spec).lower(x, data, carry.run.fitter_state)
    compile_options = () if fitter.hooks is None else fitter.hooks.compile_options
    # XLA compiles with the GIL released, so the finish compiles beside the chunk (on 2
    # cores, 0.05-0.1 s less for diag at (1e6, 16, 16) on 2 devices).
    with ThreadPoolExecutor(max_workers=1) as pool:
        finish_future = pool.submit(_compile, finish_lowered, _ONCE_PER_FIT_OPTIONS)
        chunk = _compile(chunk_lowered, compile_options)
        finish = finish_future.result()
    _COMPILED[cache_key] = (start, chunk, finish)
    return _COMPILED[cache_key], time.perf_counter() - begin


def default_chunk_size(n_samples, n_features, spec, max_iter):
    """Iterations per jitted chunk: large for small problems (dispatch overhead
    dominates), down to 1 when one iteration is already expensive."""
    work = n_samples * spec.n_components * (n_features + 1) ** 2
    return int(max(1, min(max_iter, 100, 2e7 // max(work, 1))))


def run_fitter(
    fitter,
    key,
    x,
    init_params,
    spec,
    *,
    max_iter: int,
    chunk_size: int | None = None,
    callback: Callable[[int, object], None] | None = None,
    init_state: RunState | None = None,
) -> FitResult:
    """Run ``fitter`` from one or several initial parameters, or continue a fit.

    Args:
        fitter: a `Fitter`.
        key: PRNG key, split into one key k_r per restart; restart r's ``init`` gets
            ``fold_in(k_r, 2**31 - 1)`` and its iteration t (counted over continued
            runs) ``fold_in(k_r, t - 1)``.
        x: array of shape (n_samples, n_features).
        init_params: `GMMParams`, or a batch of them with a leading restart axis
            (n_init, ...) to run restarts vectorised; None with ``init_state``.
        spec: `GMMSpec`.
        max_iter: maximum iterations per restart in this call (>= 0).
        chunk_size: iterations per jitted chunk (default: `default_chunk_size`).
        callback: called on the host after each chunk as ``callback(iterations_done,
            infos)`` with iterations_done the largest n_iter over restarts; for progress.
        init_state: continue from this `RunState` (a previous ``FitResult.state``, or a
            batch of them with a leading restart axis) instead of initialising: with the
            same ``key``, ``fitter`` and ``x``, 10 iterations then 10 more from the first
            result's state give the fit 20 iterations would have.

    Returns:
        `FitResult` of the restart with the highest final log-likelihood; its trace,
        ``n_iter`` and timings cover this call's iterations.
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"max_iter must be an int >= 0, got {max_iter!r}")
    resume = init_state is not None
    if resume == (init_params is not None):
        raise ValueError("give exactly one of init_params and init_state")
    if resume:
        if not isinstance(init_state, RunState):
            raise ValueError(
                f"init_state must be a RunState (a FitResult.state of run_fitter), "
                f"got {type(init_state).__name__}"
            )
        source = init_state
        if np.ndim(source.n_iter) == 0:
            source = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], source)
        n_restarts = source.n_iter.shape[0]
    else:
        source = init_params
        if source.means.ndim != 3:
            source = jax.tree_util.tree_map(lambda a: a[None], source)
        n_restarts = source.means.shape[0]
    n_samples, n_features = x.shape
    chunk_size = chunk_size or default_chunk_size(n_samples, n_features, spec, max(max_iter, 1))

    keys = jax.random.split(key, n_restarts)
    max_iter_arr = jnp.asarray(max_iter, jnp.int32)
    (start_fn, chunk_fn, finish_fn), compile_s = _compiled(
        fitter, spec, chunk_size, keys, source, x, max_iter_arr, resume
    )

    outputs, chunk_times = [], []
    start = time.perf_counter()
    # Once per fit (with the data layout); counted in run_s and the first chunk's time.
    carry, data = jax.block_until_ready(start_fn(keys, source, x))
    carry = carry._replace(done=carry.done | (max_iter == 0))
    prepare_s = time.perf_counter() - start
    while not bool(np.all(np.asarray(carry.done))):
        chunk_start = time.perf_counter()
        carry, out = chunk_fn(keys, carry, data, max_iter_arr)
        jax.block_until_ready(carry)
        chunk_times.append(time.perf_counter() - chunk_start)
        outputs.append(jax.device_get(out))
        if callback is not None:
            callback(int(np.max(np.asarray(carry.n_iter))), out[0])
    if chunk_times:
        chunk_times[0] += prepare_s
    final_params, final_ll = finish_fn(x, data, carry.run.fitter_state)
    final_ll = np.asarray(final_ll)
    run_s = time.perf_counter() - start

    n_iter = np.asarray(carry.n_iter)
    converged = _converged_at_last(outputs, n_iter)
    # A NaN final log-likelihood can only come from non-finite data; never pick it.
    best = int(np.argmax(np.where(np.isfinite(final_ll), final_ll, -np.inf)))
    trace = _trace_of(outputs, chunk_times, chunk_size, best, fitter.tol_on, spec.n_components)
    nonfinite_at = int(np.asarray(carry.nonfinite_at)[best])
    return FitResult(
        params=jax.tree_util.tree_map(lambda a: a[best], final_params),
        converged=bool(converged[best]),
        n_iter=int(n_iter[best]),
        log_likelihood=float(final_ll[best]),
        trace=trace,
        fitter=fitter.name,
        bound_name=fitter.bound_name,
        compile_s=compile_s,
        run_s=run_s,
        restarts=RestartSummary(log_likelihood=final_ll, converged=converged, n_iter=n_iter),
        best_restart=best,
        degeneracies=find_degeneracies(trace, spec, n_samples),
        nonfinite_iteration=None if nonfinite_at < 0 else nonfinite_at,
        state=jax.tree_util.tree_map(lambda a: a[best], carry.run),
    )


def _converged_at_last(outputs, n_iter):
    """Whether the last accepted step of each restart reported convergence."""
    if not outputs:
        return np.zeros_like(n_iter, dtype=bool)
    converged = np.concatenate([np.asarray(o[1].converged) for o in outputs], axis=1)
    accepted = np.concatenate([np.asarray(o[3]) for o in outputs], axis=1)
    result = np.zeros(converged.shape[0], dtype=bool)
    for r in range(converged.shape[0]):
        rows = np.flatnonzero(accepted[r])
        result[r] = bool(rows.size) and bool(converged[r, rows[-1]])
    return result


def _trace_of(outputs, chunk_times, chunk_size, restart, tol_on, n_components):
    if not outputs:
        empty = np.zeros((0,))
        columns = {"log_likelihood": empty, "bound": empty}
        return make_trace(columns, empty, empty, empty, n_components)
    # vmapped scan outputs are (restart, chunk, ...): take one restart, join chunks.
    def join(name, part):  # one field of the fitter's (0) or the driver's (1) Info
        return np.concatenate([np.asarray(getattr(o[part], name))[restart] for o in outputs])

    pick = lambda a: np.asarray(a)[restart]  # noqa: E731
    accepted = np.concatenate([pick(o[3]) for o in outputs]).astype(bool)
    columns = {name: join(name, 0)[accepted] for name in outputs[0][0]._fields}
    columns["converged"] = join("converged", 1)[accepted]
    columns[f"{tol_on}_change"] = join("change", 1)[accepted]
    min_eig = np.concatenate([pick(o[2][0]) for o in outputs])[accepted]
    weights = np.concatenate([pick(o[2][1]) for o in outputs])[accepted]
    per_iteration = np.repeat(np.asarray(chunk_times) / chunk_size, chunk_size)
    elapsed = np.cumsum(per_iteration)[accepted]
    return make_trace(columns, min_eig, weights, elapsed, n_components)
