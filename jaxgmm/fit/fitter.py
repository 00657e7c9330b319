"""The fitter interface every fitting algorithm implements (EM, gradient, ...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple


class Fitter(NamedTuple):
    """A fitting algorithm as pure functions, run by `jaxgmm.run_fitter`.

    Attributes:
        name: short name used in traces (``"em"``, ``"gradient"``, ...).
        bound_name: what the ``bound`` field of its Info is (``"em_bound"``,
            ``"log_likelihood"``, ``"elbo"``, ...), per sample.
        init: ``init(params, x) -> State``.
        step: ``step(key, state, x) -> (State, Info)``, pure and jit-able. Info is a
            NamedTuple of scalars with at least ``log_likelihood`` (per sample, of the
            parameters the step started from), ``bound`` (per sample) and ``converged``
            (bool); any other fields are kept in the trace's ``extras``.
        get_params: ``get_params(state) -> GMMParams``.
        prepare: optional ``prepare(x) -> data``, run once per fit (jitted) before the
            first step; ``step`` then receives ``data`` instead of ``x`` (EM lays the
            samples out in feature-major blocks). None: ``step`` receives ``x``.
        score_prepared: optional ``score_prepared(data, params) -> log-likelihood per
            sample`` on prepared ``data`` (the same density as `mean_log_likelihood`);
            the driver scores the final parameters with it. None: `mean_log_likelihood`
            of ``x``.
        compile_options: optional XLA compile options for the executable that runs the
            steps, as a tuple of ``(name, value)`` pairs (hashable, so fitters stay
            cache keys). Options this jaxlib does not know are dropped. A speed hint
            only: results must not depend on them.
    """

    name: str
    bound_name: str
    init: Callable[..., Any]
    step: Callable[..., Any]
    get_params: Callable[..., Any]
    prepare: Callable[..., Any] | None = None
    score_prepared: Callable[..., Any] | None = None
    compile_options: tuple = ()


def step_data(fitter, x):
    """What ``fitter.step`` takes for the samples ``x``: ``fitter.prepare(x)`` or ``x``."""
    return x if fitter.prepare is None else fitter.prepare(x)
