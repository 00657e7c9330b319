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
    SELECTIONS,
    STATUSES,
    FitResult,
    RestartSummary,
    component_diagnostics,
    find_degeneracies,
    make_trace,
    step_is_finite,
)
from jaxgmm.fit.validation import check_init_params, no_finite_state_error
from jaxgmm.model.covariance import expansion_assumed
from jaxgmm.model.density import mean_log_likelihood
from jaxgmm.model.init import resolve_init


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
        unmoved_steps: int32 scalar, how many accepted steps in a row, up to the last,
            left the parameters unchanged (`Fitter.stall_patience`); None (as 0) in a
            state built by hand.
    """

    fitter_state: object
    previous: jax.Array
    n_iter: jax.Array
    unmoved_steps: jax.Array | None = None


# Codes of `jaxgmm.fit.results.STATUSES` in the carry; a restart still running (or
# stopped by max_iter) holds the code of "max_iter".
_STATUS_CODE = {name: code for code, name in enumerate(STATUSES)}


class _Carry(NamedTuple):
    run: RunState
    done: jax.Array  # bool
    n_iter: jax.Array  # int32, iterations of this call
    nonfinite_at: jax.Array  # int32, -1 if never
    status: jax.Array  # int32, a code of _STATUS_CODE
    refused: jax.Array  # bool: a chunk with the expanded form alone did not take a step


class _DriverInfo(NamedTuple):
    """Per-iteration values the driver adds to the fitter's Info."""

    converged: jax.Array  # bool: the tolerance test or-ed with the fitter's own
    change: jax.Array  # Info.<tol_on> minus its previous value (inf at the first)
    moved: jax.Array  # bool: the step changed the parameters


def _tolerance_passed(fitter, change, previous):
    """The driver's tolerance test (a traced bool): ``|change| < max(tol, tol_ulps *
    ulp(previous))``."""
    if fitter.tol is None:
        return jnp.asarray(False)
    threshold = jnp.asarray(fitter.tol, previous.dtype)
    if fitter.tol_ulps:
        ulp = jnp.abs(jnp.spacing(jnp.where(jnp.isfinite(previous), previous, 0)))
        threshold = jnp.maximum(threshold, fitter.tol_ulps * ulp)
    return jnp.abs(change) < threshold


def _rounded(value, previous):
    """``value`` as stored, for the tolerance test to subtract from: ``value + 0`` with a
    0 the compiler cannot see through (``previous`` is never NaN). XLA:CPU otherwise
    copies the multiply that ends a mean into the subtraction's fusion and LLVM makes
    them one FMA, so the change tested was not the difference of the values recorded
    (in float32, 1e-8 from two identical bounds, and fits that stopped on tol said
    converged=False). An optimization barrier does not help: XLA:CPU removes them
    before fusion. Adding the 0 lets at most an FMA with 0 form, which rounds exactly
    as the multiply alone does."""
    return value + jnp.isnan(previous).astype(value.dtype)


def _params_moved(old, new):
    """Whether any parameter differs (a traced bool)."""
    differs = jax.tree_util.tree_map(lambda a, b: jnp.any(a != b), old, new)
    return jnp.any(jnp.stack(jax.tree_util.tree_leaves(differs)))


def _chunk_function(fitter, spec, chunk_size, sequential, expanded_only=False):
    """The jitted chunk of ``chunk_size`` steps. ``expanded_only``: traced under
    `expansion_assumed`, it takes a step only where the fitter's ``expansion_holds`` says
    the expanded form is the one `use_expansion` would choose, and marks the restart
    ``refused`` otherwise (for the driver to continue it with both forms)."""
    stall = fitter.stall_patience is not None

    def one_restart(key, carry, data, max_iter):
        def body(c, _):
            run = c.run
            key_step = jax.random.fold_in(key, run.n_iter)
            new_state, info = fitter.step(key_step, run.fitter_state, data)
            quantity = _rounded(getattr(info, fitter.tol_on), run.previous)
            info = info._replace(**{fitter.tol_on: quantity})
            new_params = fitter.get_params(new_state)
            finite = step_is_finite(new_params, info)
            moved = _params_moved(fitter.get_params(run.fitter_state), new_params)
            change = quantity - run.previous
            tol_passed = _tolerance_passed(fitter, change, run.previous)
            if stall:
                # The change is that of the previous step, which did not move: no
                # evidence of convergence (a warm-up at learning rate 0 proceeds).
                tol_passed = tol_passed & (run.unmoved_steps == 0)
            converged = jnp.asarray(getattr(info, "converged", False)) | tol_passed
            active = ~c.done
            refused = jnp.asarray(False)
            if expanded_only:
                holds = fitter.hooks.expansion_holds(fitter.get_params(run.fitter_state))
                refused = active & ~holds
                active = active & holds
            accept = active & finite
            unmoved = jnp.where(moved, 0, run.unmoved_steps + 1).astype(jnp.int32)
            stalled = accept & (unmoved >= fitter.stall_patience) if stall else jnp.asarray(False)
            run = RunState(
                fitter_state=jax.tree_util.tree_map(
                    lambda a, b: jnp.where(accept, a, b), new_state, run.fitter_state
                ),
                previous=jnp.where(accept, quantity, run.previous).astype(run.previous.dtype),
                n_iter=run.n_iter + accept.astype(jnp.int32),
                unmoved_steps=jnp.where(accept, unmoved, run.unmoved_steps),
            )
            n_iter = c.n_iter + accept.astype(jnp.int32)
            nonfinite_at = jnp.where(active & ~finite, c.n_iter + 1, c.nonfinite_at)
            status = jnp.where(
                active & ~finite,
                _STATUS_CODE["nonfinite"],
                jnp.where(
                    accept & converged,
                    _STATUS_CODE["converged"],
                    jnp.where(stalled & ~converged, _STATUS_CODE["stalled"], c.status),
                ),
            ).astype(jnp.int32)
            done = c.done | (active & (converged | ~finite | stalled)) | (n_iter >= max_iter)
            diagnostics = component_diagnostics(fitter.get_params(run.fitter_state), spec)
            driver_info = _DriverInfo(converged=converged, change=change, moved=moved)
            carry = _Carry(run, done, n_iter, nonfinite_at, status, c.refused | refused)
            return carry, (info, driver_info, diagnostics, accept)

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
                unmoved_steps=jnp.zeros((n_restarts,), jnp.int32),
            )
        carry = _Carry(
            run=run,
            done=jnp.zeros((n_restarts,), bool),
            n_iter=jnp.zeros((n_restarts,), jnp.int32),
            nonfinite_at=jnp.full((n_restarts,), -1, jnp.int32),
            status=jnp.full((n_restarts,), _STATUS_CODE["max_iter"], jnp.int32),
            refused=jnp.zeros((n_restarts,), bool),
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
        log_likelihood = jax.vmap(lambda p: score(params=p))(params)
        if hooks.log_prior is None:
            return params, log_likelihood, None
        # lax.map, not vmap: a prior's density may factorise matrices, and batched LAPACK
        # calls can hang on CPU (see `jaxgmm.model.linalg`).
        log_priors = lax.map(hooks.log_prior, state)
        return params, log_likelihood, log_likelihood + log_priors / x.shape[0]

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


def _compiled(fitter, spec, chunk_size, keys, source, x, max_iter, resume, expanded_only):
    """Start (with the fitter's data preparation), chunk and finish functions compiled
    ahead of time (once per fitter, shapes and dtypes), with the seconds it took (0 when
    cached), so nothing compiles while the run is timed. ``source``: initial parameters,
    or the `RunState` to resume from when ``resume``. The chunk is compiled with the
    expanded form alone when ``expanded_only`` (`_chunk_function`); the fourth item
    compiles the chunk with both forms, ``() -> (chunk, seconds)``, for a restart it
    refused."""
    signature = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), (keys, source, x))
    sharding = str(getattr(x, "sharding", None))
    cache_key = (fitter, spec, chunk_size, resume, expanded_only, str(signature), sharding)
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
    compile_options = () if fitter.hooks is None else fitter.hooks.compile_options

    def lower_chunk(expanded_only):
        chunk_fn = _chunk_function(fitter, spec, chunk_size, sequential, expanded_only)
        if not expanded_only:
            return chunk_fn.lower(keys, carry, data, max_iter)
        with expansion_assumed():
            return chunk_fn.lower(keys, carry, data, max_iter)

    def both_forms_chunk():
        key = (*cache_key, "both forms")
        if key in _COMPILED:
            return _COMPILED[key], 0.0
        begin = time.perf_counter()
        _COMPILED[key] = _compile(lower_chunk(False), compile_options)
        return _COMPILED[key], time.perf_counter() - begin

    chunk_lowered = lower_chunk(expanded_only)
    finish_lowered = _finish_function(fitter, spec).lower(x, data, carry.run.fitter_state)
    # XLA compiles with the GIL released, so the finish compiles beside the chunk (on 2
    # cores, 0.05-0.1 s less for diag at (1e6, 16, 16) on 2 devices).
    with ThreadPoolExecutor(max_workers=1) as pool:
        finish_future = pool.submit(_compile, finish_lowered, _ONCE_PER_FIT_OPTIONS)
        chunk = _compile(chunk_lowered, compile_options)
        finish = finish_future.result()
    _COMPILED[cache_key] = (start, chunk, finish, both_forms_chunk)
    return _COMPILED[cache_key], time.perf_counter() - begin


def _expansion_holds_at(fitter, source, resume):
    """Whether every restart starts where the fitter's ``expansion_holds`` is True (no
    hook: False), so that a chunk with the expanded form alone can take its first step."""
    hooks = fitter.hooks
    if hooks is None or hooks.expansion_holds is None:
        return False
    params = jax.vmap(fitter.get_params)(source.fitter_state) if resume else source
    return bool(jnp.all(jax.vmap(hooks.expansion_holds)(params)))


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
    select: str = "non_degenerate",
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
            Checked by `jaxgmm.fit.validation.check_init_params`.
        spec: `GMMSpec`.
        max_iter: maximum iterations per restart in this call (>= 0).
        chunk_size: iterations per jitted chunk (default: `default_chunk_size`).
        callback: called on the host after each chunk as ``callback(iterations_done,
            infos)`` with iterations_done the largest n_iter over restarts; for progress.
        init_state: continue from this `RunState` (a previous ``FitResult.state``, or a
            batch of them with a leading restart axis) instead of initialising: with the
            same ``key``, ``fitter`` and ``x``, 10 iterations then 10 more from the first
            result's state give the fit 20 iterations would have.
        select: which restart to return, among those whose final parameters and
            log-likelihood are finite: ``"non_degenerate"`` (default) the highest final
            log-likelihood among restarts without a degenerate component (`Degeneracy`),
            or the highest overall when every restart is degenerate (``selection`` then
            says ``"likelihood"``); ``"likelihood"`` the highest overall. A collapsed
            component's likelihood grows without bound as its covariance shrinks, so the
            highest likelihood is often a spurious optimum. A MAP fitter (one whose
            hooks give ``log_prior``) is ranked by the final log posterior per sample
            instead of the log-likelihood, under either rule: it is what MAP maximises.

    Returns:
        `FitResult` of the selected restart; its trace, ``n_iter`` and timings cover this
        call's iterations; ``restarts`` has every restart's final log-likelihood, status
        and degeneracies.

    Raises:
        ValueError: bad arguments, or no restart has a finite final state (the message
        says why, e.g. the data's scale overflowing its dtype, and what to do).
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"max_iter must be an int >= 0, got {max_iter!r}")
    if not isinstance(select, str) or select not in SELECTIONS:
        raise ValueError(f"select must be one of {list(SELECTIONS)}, got {select!r}")
    resume = init_state is not None
    if resume == (init_params is not None):
        raise ValueError("give exactly one of init_params and init_state")
    n_samples, n_features = x.shape
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
        if source.unmoved_steps is None:
            source = source._replace(unmoved_steps=jnp.zeros((n_restarts,), jnp.int32))
    else:
        source = check_init_params(init_params, spec, n_features, name="init_params")
        if source.means.ndim != 3:
            source = jax.tree_util.tree_map(lambda a: a[None], source)
        n_restarts = source.means.shape[0]
    chunk_size = chunk_size or default_chunk_size(n_samples, n_features, spec, max(max_iter, 1))

    keys = jax.random.split(key, n_restarts)
    max_iter_arr = jnp.asarray(max_iter, jnp.int32)
    expanded_only = _expansion_holds_at(fitter, source, resume)
    (start_fn, chunk_fn, finish_fn, both_forms_chunk), compile_s = _compiled(
        fitter, spec, chunk_size, keys, source, x, max_iter_arr, resume, expanded_only
    )
    late_compile_s = 0.0  # of the chunk with both forms, if a restart needs it

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
        if expanded_only and bool(np.any(np.asarray(carry.refused))):
            # A restart reached parameters where the expanded form is not accurate: it
            # and the rest continue, from the step it did not take, with both forms.
            chunk_fn, seconds = both_forms_chunk()
            late_compile_s += seconds
            expanded_only = False
    if chunk_times:
        chunk_times[0] += prepare_s
    final_params, final_ll, final_lp = finish_fn(x, data, carry.run.fitter_state)
    final_ll = np.asarray(final_ll)
    final_lp = None if final_lp is None else np.asarray(final_lp)
    # What restarts are ranked by: the fitter's target, the log posterior for MAP.
    final_score = final_ll if final_lp is None else final_lp
    run_s = time.perf_counter() - start - late_compile_s
    compile_s += late_compile_s

    n_iter = np.asarray(carry.n_iter)
    status = np.asarray([STATUSES[code] for code in np.asarray(carry.status)])
    traces = [
        _trace_of(outputs, chunk_times, chunk_size, r, fitter, spec.n_components)
        for r in range(n_restarts)
    ]
    degeneracies = tuple(find_degeneracies(t, spec, n_samples) for t in traces)
    degenerate = np.asarray([bool(d) for d in degeneracies])
    params_finite = np.all(
        [
            np.all(np.isfinite(np.asarray(leaf)).reshape(n_restarts, -1), axis=1)
            for leaf in jax.tree_util.tree_leaves(final_params)
        ],
        axis=0,
    )
    finite = np.isfinite(final_score) & params_finite
    if not np.any(finite):
        start = "the state they continued from" if resume else "their initial parameters"
        raise no_finite_state_error(
            f"no finite result: the final states of all {n_restarts} restart(s) of fitter "
            f"{fitter.name!r} (kept from {start} on, at the last finite step)",
            x.dtype,
        )
    best, best_overall, selection = select_restart(final_score, finite, degenerate, select)
    nonfinite_at = int(np.asarray(carry.nonfinite_at)[best])
    return FitResult(
        params=jax.tree_util.tree_map(lambda a: a[best], final_params),
        converged=bool(status[best] == "converged"),
        n_iter=int(n_iter[best]),
        log_likelihood=float(final_ll[best]),
        trace=traces[best],
        fitter=fitter.name,
        bound_name=fitter.bound_name,
        compile_s=compile_s,
        run_s=run_s,
        restarts=RestartSummary(
            log_likelihood=final_ll,
            converged=status == "converged",
            n_iter=n_iter,
            degenerate=degenerate,
            degeneracies=degeneracies,
            status=status,
            log_posterior=final_lp,
        ),
        best_restart=best,
        degeneracies=degeneracies[best],
        nonfinite_iteration=None if nonfinite_at < 0 else nonfinite_at,
        state=jax.tree_util.tree_map(lambda a: a[best], carry.run),
        status=str(status[best]),
        selection=selection,
        best_overall_restart=best_overall,
    )


def checked_initial_params(key, x, spec, init, n_init=1):
    """`jaxgmm.model.resolve_init`, checked: given parameters by
    `jaxgmm.fit.validation.check_init_params` (named ``init``), an initialiser's output for
    finiteness (data whose squares overflow their dtype overflow in the initialiser).

    Args: as `jaxgmm.model.resolve_init` (``x`` of shape (n_samples, n_features)).

    Returns:
        `GMMParams` (leading (n_init,) axis for a named initialiser).
    """
    if not isinstance(init, str):
        init = check_init_params(init, spec, x.shape[1], name="init", dtype=x.dtype)
    params = resolve_init(key, x, spec, init, n_init)
    if isinstance(init, str):
        finite = [np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.device_get(params)]
        if not all(finite):
            raise no_finite_state_error(f"the initial parameters from init={init!r}", x.dtype)
    return params


def select_restart(log_likelihood, finite, degenerate, select="non_degenerate"):
    """The restart `run_fitter` returns.

    Args:
        log_likelihood: (n_init,) final log-likelihoods per sample, or whatever the
            restarts are ranked by (the log posterior per sample for MAP).
        finite: (n_init,) bool, whether a restart's final state is finite (at least one).
        degenerate: (n_init,) bool, whether a restart ended with a degenerate component.
        select: a key of `jaxgmm.fit.results.SELECTIONS`.

    Returns:
        ``(best, best_overall, selection)``: the index returned, the index of the highest
        finite log-likelihood, and the rule that chose ``best``.
    """
    score = np.where(finite, np.asarray(log_likelihood, dtype=float), -np.inf)
    best_overall = int(np.argmax(score))
    eligible = np.asarray(finite) & ~np.asarray(degenerate)
    if select == "non_degenerate" and np.any(eligible):
        return int(np.argmax(np.where(eligible, score, -np.inf))), best_overall, select
    return best_overall, best_overall, "likelihood"


def _trace_of(outputs, chunk_times, chunk_size, restart, fitter, n_components):
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
    columns[f"{fitter.tol_on}_change"] = join("change", 1)[accepted]
    if fitter.stall_patience is not None:
        columns["params_moved"] = join("moved", 1)[accepted]
    min_eig = np.concatenate([pick(o[2][0]) for o in outputs])[accepted]
    weights = np.concatenate([pick(o[2][1]) for o in outputs])[accepted]
    per_iteration = np.repeat(np.asarray(chunk_times) / chunk_size, chunk_size)
    elapsed = np.cumsum(per_iteration)[accepted]
    return make_trace(columns, min_eig, weights, elapsed, n_components)
