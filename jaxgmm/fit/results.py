"""What a fit returns: the per-iteration `Trace`, the `FitResult` of the best restart, a
`RestartSummary` of all restarts and the `Degeneracy` of components at the end; and what
every loop that runs a fitter shares to build them (the device driver and the host loop
of `jaxgmm.scale`): the check that a step stayed finite and the trace builder."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm.model.covariance import get_family


class Trace(NamedTuple):
    """Per-iteration record of one fit (host numpy arrays, length n_iter).

    Attributes:
        iteration: (T,) 1-based iteration numbers.
        log_likelihood: (T,) log-likelihood per sample of the parameters each
            iteration started from (the shared density function).
        bound: (T,) the fitter's own bound or objective per sample (``bound_name``).
        elapsed_s: (T,) wall seconds since the start of the run (compile excluded).
        extras: other per-iteration fields of the fitter's Info, plus
            ``min_covariance_eigenvalue`` and ``weights`` of shape (T, n_components)
            after each iteration.
    """

    iteration: np.ndarray
    log_likelihood: np.ndarray
    bound: np.ndarray
    elapsed_s: np.ndarray
    extras: dict


# What ended a restart: the tolerance test (or the fitter's own) passed; max_iter
# iterations ran; an optimiser left its parameters unchanged for `Fitter.stall_patience`
# steps in a row; a step produced non-finite values (the restart kept the last finite ones).
STATUSES = ("converged", "max_iter", "stalled", "nonfinite")

# How `run_fitter` picks the returned restart among those with a finite final state.
SELECTIONS = ("non_degenerate", "likelihood")


class RestartSummary(NamedTuple):
    """Final values of every restart.

    Attributes:
        log_likelihood: (n_init,) final log-likelihood per sample.
        converged: (n_init,) bool, ``status == "converged"``.
        n_iter: (n_init,) iterations performed.
        degenerate: (n_init,) bool, whether the restart ended with a degenerate component
            (``degeneracies[r]`` not empty). None only from code that predates it.
        degeneracies: tuple of n_init tuples of `Degeneracy`, each restart's at its end.
        status: (n_init,) str, each restart's `FitResult.status`.
        log_posterior: (n_init,) final log posterior per sample, log-likelihood +
            log p(params) / n_samples (unnormalised), for a MAP fit (EM or gradient under
            a prior), whose restarts are ranked by it; None otherwise.
    """

    log_likelihood: np.ndarray
    converged: np.ndarray
    n_iter: np.ndarray
    degenerate: np.ndarray | None = None
    degeneracies: tuple | None = None
    status: np.ndarray | None = None
    log_posterior: np.ndarray | None = None


class Degeneracy(NamedTuple):
    """A component that is degenerate at the end of the fit.

    Attributes:
        component: index of the component.
        kind: ``"collapsed_covariance"`` (smallest covariance eigenvalue below
            2 * reg_covar: the data's own variance in some direction is under the floor)
            or ``"empty_component"`` (weight * n_samples < 1).
        first_iteration: first iteration after which the condition held without
            interruption until the end.
        value: the smallest eigenvalue or the weight at the end.
    """

    component: int
    kind: str
    first_iteration: int
    value: float


class FitResult(NamedTuple):
    """Outcome of `run_fitter` for the selected restart (by default the non-degenerate
    restart with the highest final log-likelihood, or log posterior for MAP; see
    ``selection``).

    Attributes:
        params: final `GMMParams` (always finite: a fit with no finite state raises).
        converged: ``status == "converged"``.
        n_iter: iterations performed.
        log_likelihood: log-likelihood per sample of ``params``.
        trace: `Trace` of the best restart.
        fitter: the fitter's name; ``bound_name``: what ``trace.bound`` is.
        compile_s: seconds spent compiling (0 when cached); ``run_s``: seconds running.
        restarts: `RestartSummary` of all restarts; ``best_restart``: the index of the
            restart returned.
        degeneracies: tuple of `Degeneracy` of the final parameters.
        nonfinite_iteration: iteration at which the fitter produced non-finite values
            (the fit stopped there and kept the last finite parameters), or None.
        state: what a fit can be continued from. For `run_fitter`, the best restart's
            final `jaxgmm.fit.RunState` (the fitter's state, e.g. an SVI guide's
            optimiser state, in ``fitter_state``); pass it as ``init_state=`` to continue
            exactly. For the host loops of `jaxgmm.scale`, their own final state (the
            `OnlineEMState` of online EM; None out of core).
        status: what ended the fit, one of `STATUSES`: ``"converged"`` (the tolerance
            test or the fitter's own test passed), ``"max_iter"``, ``"stalled"`` (an
            optimiser left the parameters unchanged for `Fitter.stall_patience` steps in
            a row: not convergence) or ``"nonfinite"`` (see ``nonfinite_iteration``).
        selection: the rule that picked ``best_restart``: ``"non_degenerate"`` (the best
            restart without a degenerate component) or ``"likelihood"`` (the best
            overall: asked for, or, under ``select="non_degenerate"``, every restart
            with a finite state was degenerate); ``"elbo"`` for `jaxgmm.fit_vb`, which
            keeps the restart with the highest final ELBO.
        best_overall_restart: index of the restart with the highest finite final
            log-likelihood (log posterior for MAP), degenerate or not (equals ``best_restart`` unless a
            degenerate restart scored higher than the one returned).
    """

    params: object
    converged: bool
    n_iter: int
    log_likelihood: float
    trace: Trace
    fitter: str
    bound_name: str
    compile_s: float
    run_s: float
    restarts: RestartSummary
    best_restart: int
    degeneracies: tuple
    nonfinite_iteration: int | None
    state: object = None
    status: str | None = None
    selection: str | None = None
    best_overall_restart: int | None = None


def all_finite(tree):
    """Whether every element of every leaf of ``tree`` is finite (a traced bool)."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves))


def step_is_finite(params, info):
    """Whether a step's new ``params`` and its Info's ``log_likelihood`` and ``bound`` are
    all finite (a traced bool): a step that fails it is not accepted and ends the fit."""
    return all_finite(params) & jnp.isfinite(info.log_likelihood) & jnp.isfinite(info.bound)


def make_trace(columns, min_covariance_eigenvalue, weights, elapsed_s, n_components):
    """The `Trace` of T accepted iterations.

    Args:
        columns: dict of per-iteration values by name, each of shape (T,): the Info
            fields (``log_likelihood`` and ``bound`` become the trace's own fields, the
            others go to ``extras``) and anything the loop adds (e.g. ``converged``).
        min_covariance_eigenvalue, weights: (T, n_components) after each iteration.
        elapsed_s: (T,) wall seconds since the start of the run.
        n_components: K (shapes the diagnostics when T is 0).
    """
    n_iter = len(elapsed_s)
    extras = {
        name: np.asarray(values)
        for name, values in columns.items()
        if name not in ("log_likelihood", "bound")
    }
    extras["min_covariance_eigenvalue"] = np.asarray(min_covariance_eigenvalue).reshape(
        n_iter, n_components
    )
    extras["weights"] = np.asarray(weights).reshape(n_iter, n_components)
    return Trace(
        iteration=np.arange(1, n_iter + 1),
        log_likelihood=np.asarray(columns["log_likelihood"]),
        bound=np.asarray(columns["bound"]),
        elapsed_s=np.asarray(elapsed_s, dtype=float),
        extras=extras,
    )


def component_diagnostics(params, spec):
    """(min_covariance_eigenvalue, weights), each of shape (n_components,)."""
    family = get_family(spec.covariance_type)
    return family.min_eigenvalue(params.prec_chol, spec.n_components), params.weights


def find_degeneracies(trace, spec, n_samples):
    """Degenerate components at the end of a fit, with the iteration each began."""
    if trace.iteration.size == 0:
        return ()
    flags = {
        "collapsed_covariance": (
            trace.extras["min_covariance_eigenvalue"] < 2 * spec.reg_covar,
            trace.extras["min_covariance_eigenvalue"],
        ),
        "empty_component": (trace.extras["weights"] * n_samples < 1, trace.extras["weights"]),
    }
    found = []
    for kind, (flag, values) in flags.items():
        for k in np.flatnonzero(flag[-1]):
            clear = np.flatnonzero(~flag[:, k])
            first = int(trace.iteration[clear[-1]]) + 1 if clear.size else 1
            found.append(Degeneracy(int(k), kind, first, float(values[-1, k])))
    return tuple(found)


def single_run_result(params, trace, spec, *, fitter, bound_name, converged, log_likelihood,
                      n_samples, compile_s, run_s, nonfinite_iteration, state=None,
                      status=None):
    """`FitResult` of a fit with one restart run by a host loop (out-of-core, online).
    ``status`` defaults to "nonfinite" (with a ``nonfinite_iteration``), else
    "converged" or "max_iter" from ``converged``."""
    n_iter = len(trace.iteration)
    if status is None:
        status = (
            "nonfinite" if nonfinite_iteration is not None
            else "converged" if converged else "max_iter"
        )  # fmt: skip
    if status not in STATUSES:
        raise ValueError(f"status must be one of {list(STATUSES)}, got {status!r}")
    converged = status == "converged"
    degeneracies = find_degeneracies(trace, spec, n_samples)
    return FitResult(
        params=params,
        converged=converged,
        n_iter=n_iter,
        log_likelihood=log_likelihood,
        trace=trace,
        fitter=fitter,
        bound_name=bound_name,
        compile_s=compile_s,
        run_s=run_s,
        restarts=RestartSummary(
            log_likelihood=np.asarray([log_likelihood]),
            converged=np.asarray([converged]),
            n_iter=np.asarray([n_iter]),
            degenerate=np.asarray([bool(degeneracies)]),
            degeneracies=(degeneracies,),
            status=np.asarray([status]),
        ),
        best_restart=0,
        degeneracies=degeneracies,
        nonfinite_iteration=nonfinite_iteration,
        state=state,
        status=status,
        # One restart: what the default rule would say of it.
        selection="likelihood" if degeneracies else "non_degenerate",
        best_overall_restart=0,
    )
