"""The one host loop for data that do not sit on the device (out-of-core EM over host
blocks, online EM over minibatches): the host calls one compiled step per iteration,
stops at the first non-finite step or when the tolerance test passes, and builds the
trace with the driver's builder (`jaxgmm.fit.results.make_trace`).

The loop measures its own time per iteration, so the trace's ``elapsed_s`` means what it
means for `jaxgmm.run_fitter` (wall seconds since the start of the run)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import jax
import numpy as np

from jaxgmm.fit.results import Trace, all_finite, make_trace


class HostLoopResult(NamedTuple):
    """What `run_host_loop` returns.

    Attributes:
        state: the last accepted state (the initial one if no step was accepted).
        trace: `Trace` of the accepted iterations.
        converged: whether the tolerance test passed (always False without ``tol``).
        nonfinite_iteration: the iteration whose step was not finite (the loop stopped
            there and kept the previous state), or None.
    """

    state: object
    trace: Trace
    converged: bool
    nonfinite_iteration: int | None


def params_are_finite(params):
    """Whether every value of ``params`` (a pytree) is finite (a host bool)."""
    return bool(all_finite(params))


def run_host_loop(
    step: Callable,
    state,
    inputs: Iterable,
    n_components: int,
    *,
    tol: float | None = None,
    tol_on: str | None = None,
    after_step: Callable | None = None,
    callback: Callable | None = None,
) -> HostLoopResult:
    """Run ``step`` once per item of ``inputs`` on the host.

    Args:
        step: ``step(state, item) -> (new_state, info, (min_covariance_eigenvalue,
            weights), finite)``: device values, with ``info`` an Info NamedTuple of
            scalars (at least ``log_likelihood`` and ``bound``), the diagnostics of the
            new parameters (`jaxgmm.fit.component_diagnostics`) and ``finite`` from
            `jaxgmm.fit.results.step_is_finite`.
        state: the state before the first step.
        inputs: one item per iteration (a minibatch, or anything the step ignores);
            consumed lazily, so a stream is read no further than the loop runs.
        n_components: K (shapes the trace's diagnostics).
        tol: stop when ``|info.<tol_on> - its previous value| < tol`` (host float64).
        tol_on: the Info field ``tol`` watches; its change is recorded in the trace's
            extras as ``<tol_on>_change``, beside ``converged``. None: neither.
        after_step: optional ``after_step(iteration, state, info) -> info`` on the host
            after an accepted step (e.g. to fill a full-data evaluation).
        callback: optional ``callback(iteration, info)`` after each accepted step.
    """
    infos, min_eigs, weights, elapsed, changes, converged_flags = [], [], [], [], [], []
    converged, nonfinite_at = False, None
    previous = -np.inf
    start = time.perf_counter()
    for item in inputs:
        iteration = len(infos) + 1
        new_state, info, (min_eig, w), finite = step(state, item)
        if not bool(finite):
            nonfinite_at = iteration
            break
        state = new_state
        info = jax.device_get(info)
        if after_step is not None:
            info = after_step(iteration, state, info)
        infos.append(info)
        min_eigs.append(np.asarray(min_eig))
        weights.append(np.asarray(w))
        elapsed.append(time.perf_counter() - start)
        if tol_on is not None:
            quantity = float(getattr(info, tol_on))
            changes.append(quantity - previous)
            converged = tol is not None and abs(quantity - previous) < tol
            converged_flags.append(converged)
            previous = quantity
        if callback is not None:
            callback(iteration, info)
        if converged:
            break
    fields = infos[0]._fields if infos else ("log_likelihood", "bound")
    columns = {
        name: np.asarray([getattr(i, name) for i in infos], dtype=float) for name in fields
    }
    if tol_on is not None:
        columns["converged"] = np.asarray(converged_flags, dtype=bool)
        columns[f"{tol_on}_change"] = np.asarray(changes, dtype=float)
    trace = make_trace(columns, min_eigs, weights, elapsed, n_components)
    return HostLoopResult(
        state=state, trace=trace, converged=converged, nonfinite_iteration=nonfinite_at
    )
