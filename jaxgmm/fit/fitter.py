"""The fitter interface every fitting algorithm implements (EM, gradient, SVI, ...), and
the optional hooks through which a fitter tunes how the driver runs it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple


class DriverHooks(NamedTuple):
    """How the driver runs a fitter; all optional, none but ``log_prior`` changes the
    results.

    Attributes:
        prepare: ``prepare(x) -> data``, run once per fit (jitted) before ``init``;
            ``init`` and ``step`` then receive ``data`` instead of ``x`` (EM lays the
            samples out in feature-major blocks). None: they receive ``x``.
        score_prepared: ``score_prepared(data, params) -> log-likelihood per sample`` on
            prepared ``data`` (the same density as `mean_log_likelihood`); the driver
            scores the final parameters with it. None: `mean_log_likelihood` of ``x``.
        compile_options: XLA compile options for the executable that runs the steps, as
            a tuple of ``(name, value)`` pairs (hashable). Options this jaxlib does not
            know are dropped. A speed hint only.
        log_prior: for a MAP fitter, ``log_prior(state) -> scalar``, the total log prior
            density at one restart's final fitter state (its parameters, and any
            hyper-parameters it optimises beside them); the driver then ranks restarts by
            the log posterior per sample (log-likelihood + log_prior / n_samples, what the
            fitter maximises) instead of the log-likelihood, and records it in
            ``RestartSummary.log_posterior``. None: restarts ranked by log-likelihood.
        expansion_holds: ``expansion_holds(params) -> bool``, `use_expansion` at the
            parameters a step starts from, for a fitter whose every `expansion_cond` in
            its step is on them (EM's). The driver then compiles the steps first with
            the expanded form alone (`expansion_assumed`), checks this before each step,
            and compiles the steps with both forms only when a restart fails it (from
            the state it failed at): the same results, a shorter compile. None: the
            steps are compiled with both forms.
    """

    prepare: Callable[..., Any] | None = None
    score_prepared: Callable[..., Any] | None = None
    compile_options: tuple = ()
    log_prior: Callable[..., Any] | None = None
    expansion_holds: Callable[..., Any] | None = None


class Fitter(NamedTuple):
    """A fitting algorithm as pure functions, run by `jaxgmm.run_fitter`.

    A Fitter is hashable (its functions hash by identity, the rest are plain values), so
    the driver uses it as a key of its compile cache: build it once (the factories
    `em_fitter`, `gradient_fitter` and `svi_fitter` are cached) to reuse compiled code.

    Attributes:
        name: short name used in traces (``"em"``, ``"gradient_adam"``, ...).
        bound_name: what the ``bound`` field of its Info is (``"em_bound"``,
            ``"log_likelihood"``, ``"elbo"``, ...), per sample.
        init: ``init(key, params, data) -> State`` for one restart (``params`` unbatched
            `GMMParams`; ``data`` is ``x``, or ``hooks.prepare(x)``).
        step: ``step(key, state, data) -> (State, Info)``, pure and jit-able. Info is a
            NamedTuple of scalars with at least ``log_likelihood`` (per sample, of the
            parameters the step started from) and ``bound`` (per sample). An optional
            bool ``converged`` field is the fitter's own stopping test (e.g. a gradient
            norm), or-ed with the driver's tolerance test; any other fields are kept in
            the trace's ``extras``.
        get_params: ``get_params(state) -> GMMParams`` for one restart.
        tol: the driver's tolerance test: converged when ``|Info.<tol_on> - its value at
            the previous iteration| < max(tol, tol_ulps * ulp(previous value))``, with
            ulp the spacing of its dtype at that value. None: no tolerance test.
        tol_on: the Info field that ``tol`` watches (``"log_likelihood"`` for EM,
            ``"bound"`` for an objective).
        hooks: optional `DriverHooks` (data layout, final scoring, XLA options).
        tol_ulps: floor of the tolerance in ulps of the watched value, so that a
            default tolerance is never finer than its dtype resolves (in float32 one ulp
            of 1.2 is 1.2e-7, so 1e-9 could only mean "no change"). 0: ``tol`` alone.
        stall_patience: for an optimiser, whose step of zero is not convergence (a
            learning rate of 0 in a warm-up, a line search that found no decrease):
            the tolerance test ignores a change across a step that left the parameters
            (``get_params``) unchanged, and the fit ends as ``"stalled"`` after this many
            such steps in a row. None (EM, whose unchanged parameters are its fixed
            point): neither.
    """

    name: str
    bound_name: str
    init: Callable[..., Any]
    step: Callable[..., Any]
    get_params: Callable[..., Any]
    tol: float | None = None
    tol_on: str = "bound"
    hooks: DriverHooks | None = None
    tol_ulps: float = 0.0
    stall_patience: int | None = None


def step_data(fitter, x):
    """What ``fitter.init`` and ``fitter.step`` take for the samples ``x``:
    ``fitter.hooks.prepare(x)``, or ``x`` when the fitter has no ``prepare`` hook."""
    prepare = None if fitter.hooks is None else fitter.hooks.prepare
    return x if prepare is None else prepare(x)
