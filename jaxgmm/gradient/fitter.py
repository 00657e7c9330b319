"""Gradient-based maximum likelihood and MAP: optax optimisers on the unconstrained
parameterisation of `jaxgmm.gradient.unconstrained`, as a `Fitter` run by the shared driver.

The objective, per sample, is

    objective(theta) = mean_log_likelihood(x, theta) + log_prior(theta) / n_samples,

with the log-likelihood from `jaxgmm.model.density` (the function EM's E-step uses) and the
prior's density from `jaxgmm.priors.log_prior` (the density the NumPyro model uses).
Without a prior it is the log-likelihood per sample (``bound_name="log_likelihood"``);
with one it is the unnormalised log-posterior per sample (``"log_posterior"``).

One fitter iteration is one optimiser update on the full data (full batch), or
``eval_every`` updates on minibatches (minibatch mode). Minibatch mode groups updates into
iterations rather than evaluating the full-data log-likelihood on a subset of steps
because the driver vmaps over restarts, and under vmap a ``lax.cond`` on a per-restart
step counter runs both branches: a conditional evaluation would cost a full pass every
step anyway. So every trace row is an honest full-data value of the parameters the
iteration started from.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxgmm._registry import lookup
from jaxgmm.fit.driver import FitResult, checked_initial_params, run_fitter
from jaxgmm.fit.fitter import Fitter
from jaxgmm.fit.validation import check_data, check_int, check_positive
from jaxgmm.gradient.unconstrained import UnconstrainedParams, from_unconstrained, to_unconstrained
from jaxgmm.model.density import mean_log_likelihood
from jaxgmm.model.params import GMMParams
from jaxgmm.priors import log_prior

# --------------------------------------------------------------------------- registries


class OptimizerEntry(NamedTuple):
    """A named optimiser.

    Attributes:
        build: ``build(learning_rate, **options) -> optax.GradientTransformation``;
            ``learning_rate`` is a float, an optax schedule, or None (line search).
        default_learning_rate: used when the caller gives none.
        line_search: whether ``update`` needs ``value``, ``grad`` and ``value_fn``
            (full batch only).
    """

    build: Callable[..., Any]
    default_learning_rate: float | None
    line_search: bool


def _adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8):
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def _sgd(learning_rate, momentum=0.9, nesterov=False):
    return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


def _lbfgs(learning_rate, memory_size=10, max_linesearch_steps=20):
    # optax's L-BFGS with its zoom line search (strong Wolfe conditions); with
    # learning_rate=None the line search alone sets the step.
    return optax.lbfgs(
        learning_rate=learning_rate,
        memory_size=memory_size,
        linesearch=optax.scale_by_zoom_linesearch(
            max_linesearch_steps=max_linesearch_steps, initial_guess_strategy="one"
        ),
    )


OPTIMIZERS = {
    "adam": OptimizerEntry(_adam, default_learning_rate=0.05, line_search=False),
    "sgd": OptimizerEntry(_sgd, default_learning_rate=0.01, line_search=False),
    "lbfgs": OptimizerEntry(_lbfgs, default_learning_rate=None, line_search=True),
}

# Each schedule maps (peak learning rate, number of optimiser updates) to an optax schedule.
SCHEDULES = {
    "constant": lambda lr, steps: optax.constant_schedule(lr),
    "cosine": lambda lr, steps: optax.cosine_decay_schedule(lr, decay_steps=steps),
    # lr * 0.01 ** (t / steps): two decades over the run.
    "exponential": lambda lr, steps: optax.exponential_decay(
        lr, transition_steps=steps, decay_rate=0.01
    ),
    "warmup_cosine": lambda lr, steps: optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps=max(1, steps // 20), decay_steps=steps
    ),
}


def make_optimizer(name, learning_rate=None, schedule=None, schedule_steps=1000, options=()):
    """Build a named optax optimiser.

    Args:
        name: a key of `OPTIMIZERS` (``"adam"``, ``"sgd"``, ``"lbfgs"``).
        learning_rate: peak learning rate (> 0); default the entry's default
            (None for ``"lbfgs"``: its line search chooses the step).
        schedule: None or a key of `SCHEDULES`.
        schedule_steps: number of optimiser updates the schedule spans.
        options: dict or (key, value) pairs passed to the builder (e.g.
            ``momentum`` for sgd, ``memory_size`` for lbfgs).
    """
    entry = lookup(OPTIMIZERS, name, "optimizer")
    lr = entry.default_learning_rate if learning_rate is None else learning_rate
    if lr is not None:
        lr = check_positive(lr, "learning_rate")
    if schedule is not None:
        make_schedule = lookup(SCHEDULES, schedule, "schedule")
        if lr is None:
            raise ValueError(f"schedule={schedule!r} needs a learning_rate for optimizer {name!r}")
        lr = make_schedule(lr, check_int(schedule_steps, "schedule_steps", 1))
    options = dict(options)
    allowed = [p for p in inspect.signature(entry.build).parameters if p != "learning_rate"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"optimizer_options {unknown} not understood by optimizer {name!r}; "
            f"valid options: {allowed}"
        )
    return entry.build(lr, **options)


# --------------------------------------------------------------------------- objective


def objective(u, x, spec, n_total=None):
    """The gradient fitter's objective per sample (maximised).

    Args:
        u: `UnconstrainedParams`.
        x: array of shape (n_samples, n_features) (the data, or a minibatch of it).
        spec: `GMMSpec`.
        n_total: number of samples in the full data set (default ``x.shape[0]``); the
            prior's total log-density is divided by it, so the minibatch objective is an
            unbiased estimate of the full one.

    Returns:
        ``mean_log_likelihood(x, theta) + log_prior(theta) / n_total`` with
        ``theta = from_unconstrained(u, spec)``, a scalar.
    """
    params = from_unconstrained(u, spec)
    n_total = x.shape[0] if n_total is None else n_total
    value = mean_log_likelihood(x, params, spec)
    if spec.prior is not None:
        value = value + log_prior(params, spec) / n_total
    return value


def objective_and_grad(params, x, spec):
    """(objective per sample, its gradient as `UnconstrainedParams`) at `GMMParams`."""
    return jax.value_and_grad(objective)(to_unconstrained(params, spec), x, spec)


# --------------------------------------------------------------------------- fitter

# The default tolerance on the change of the objective per sample; the driver raises it
# to one ulp of the objective where that is larger (float32).
DEFAULT_TOL = 1e-9

# Consecutive steps that leave the parameters unchanged before a fit is "stalled": more
# than a warm-up's first step at learning rate 0, few enough that a line search failing
# every time (20 evaluations per step) costs little.
STALL_PATIENCE = 10


class GradientState(NamedTuple):
    """Carried by the gradient fitter.

    Attributes:
        u: `UnconstrainedParams` of the current iterate.
        opt_state: the optax optimiser state.
    """

    u: UnconstrainedParams
    opt_state: Any


class GradientInfo(NamedTuple):
    """Per-iteration diagnostics, all of the parameters the iteration started from.

    Attributes:
        log_likelihood: full-data log-likelihood per sample.
        bound: full-data objective per sample (equals ``log_likelihood`` without a prior).
        grad_norm: Euclidean norm of the full-data objective's gradient with respect to
            the unconstrained parameters.
        converged: ``grad_norm < grad_tol`` (when grad_tol > 0); the driver ors in its
            tolerance test ``|bound - previous bound| < tol`` (when tol > 0) and records
            the change as the trace's ``bound_change``.
        linesearch_steps: line-search steps of the update (lbfgs; 0 otherwise).
        minibatch_objective: mean of the minibatch objectives over the iteration's
            updates (minibatch mode; equals ``bound`` in full batch).
    """

    log_likelihood: jax.Array
    bound: jax.Array
    grad_norm: jax.Array
    converged: jax.Array
    linesearch_steps: jax.Array
    minibatch_objective: jax.Array


def gradient_fitter(
    spec,
    optimizer: str = "lbfgs",
    *,
    learning_rate: float | None = None,
    schedule: str | None = None,
    schedule_steps: int = 1000,
    optimizer_options=None,
    batch_size: int | None = None,
    eval_every: int = 1,
    tol: float | None = None,
    grad_tol: float = 0.0,
) -> Fitter:
    """The gradient `Fitter` for ``spec`` (ML, or MAP when ``spec.prior`` is set).

    Cached on its (hashable) arguments, so repeated fits reuse compiled code.

    Args:
        spec: `GMMSpec`.
        optimizer: a key of `OPTIMIZERS`.
        learning_rate, schedule, schedule_steps, optimizer_options: see `make_optimizer`.
        batch_size: None for full-batch gradients, else the minibatch size; each
            iteration then makes ``eval_every`` updates on minibatches drawn without
            replacement from a fresh permutation of the data (from the step's key).
        eval_every: optimiser updates per iteration in minibatch mode (the full-data
            log-likelihood, objective and gradient norm are evaluated once per
            iteration, before its updates). Must be 1 in full-batch mode.
        tol: convergence when the full-data objective per sample changes by less than
            ``tol`` between iterations (0 disables). None (default): `DEFAULT_TOL`, but
            never below one ulp of the objective in the data's dtype (in float32 one ulp
            of 1.2 is 1.2e-7: a change under 1e-9 is no change at all).
        grad_tol: convergence when the full-data gradient norm is below ``grad_tol``
            (0 disables).

    A step that leaves the parameters unchanged (a learning rate of 0 at the start of
    ``"warmup_cosine"``, a line search that found no decrease) is not convergence: the
    tolerance test skips the change across it, and `STALL_PATIENCE` such steps in a row
    end the fit with status ``"stalled"``.
    """
    options = tuple(sorted(dict(optimizer_options or {}).items()))
    try:
        hash(options)
    except TypeError:
        raise ValueError("optimizer_options values must be hashable (numbers, strings)") from None
    if schedule is None:
        schedule_steps = 1  # unused: keep one cache entry whatever the caller passed
    # Validate eagerly so bad input fails here, not inside jit.
    make_optimizer(optimizer, learning_rate, schedule, schedule_steps, options)
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", 1)
        if OPTIMIZERS[optimizer].line_search:
            raise ValueError(
                f"optimizer={optimizer!r} uses a line search and needs full-batch gradients; "
                f"use batch_size=None, or a stochastic optimizer "
                f"{sorted(k for k, v in OPTIMIZERS.items() if not v.line_search)}"
            )
    eval_every = check_int(eval_every, "eval_every", 1)
    if batch_size is None and eval_every != 1:
        raise ValueError(
            f"eval_every={eval_every} needs batch_size: full-batch iterations evaluate every step"
        )
    return _gradient_fitter(
        spec,
        optimizer,
        None if learning_rate is None else float(learning_rate),
        schedule,
        int(schedule_steps),
        options,
        batch_size,
        eval_every,
        None if tol is None else check_positive(tol, "tol", allow_zero=True),
        check_positive(grad_tol, "grad_tol", allow_zero=True),
    )


# Bounded: the same arguments must give the same Fitter (the driver's compile cache is
# keyed by it), but a fitter holds no executable of its own, so an evicted one only costs
# a recompile if it is built again.
@functools.lru_cache(maxsize=64)
def _gradient_fitter(
    spec,
    optimizer,
    learning_rate,
    schedule,
    schedule_steps,
    options,
    batch_size,
    eval_every,
    tol,
    grad_tol,
):
    opt = make_optimizer(optimizer, learning_rate, schedule, schedule_steps, options)
    line_search = OPTIMIZERS[optimizer].line_search

    def init(key, params, x):
        del key, x  # deterministic; the optimiser state depends on the parameters only
        u = to_unconstrained(params, spec)
        return GradientState(u=u, opt_state=opt.init(u))

    def make_info(state, x, value, grad, linesearch_steps, minibatch_objective):
        log_likelihood = (
            value
            if spec.prior is None
            else mean_log_likelihood(x, from_unconstrained(state.u, spec), spec)
        )
        grad_norm = optax.tree.norm(grad)
        converged = jnp.asarray(False)
        if grad_tol > 0:
            converged = grad_norm < grad_tol
        return GradientInfo(
            log_likelihood=log_likelihood,
            bound=value,
            grad_norm=grad_norm,
            converged=converged,
            linesearch_steps=jnp.asarray(linesearch_steps, jnp.int32),
            minibatch_objective=jnp.asarray(minibatch_objective, x.dtype),
        )

    def full_batch_step(key, state, x):
        del key  # deterministic
        loss = lambda u: -objective(u, x, spec)  # optax minimises
        if line_search:
            neg_value, neg_grad = optax.value_and_grad_from_state(loss)(
                state.u, state=state.opt_state
            )
            updates, opt_state = opt.update(
                neg_grad, state.opt_state, state.u, value=neg_value, grad=neg_grad, value_fn=loss
            )
            linesearch_steps = optax.tree.get(opt_state, "num_linesearch_steps")
        else:
            neg_value, neg_grad = jax.value_and_grad(loss)(state.u)
            updates, opt_state = opt.update(neg_grad, state.opt_state, state.u)
            linesearch_steps = 0
        value = -neg_value
        info = make_info(state, x, value, neg_grad, linesearch_steps, value)
        return GradientState(u=optax.apply_updates(state.u, updates), opt_state=opt_state), info

    def minibatch_step(key, state, x):
        n_samples = x.shape[0]
        if batch_size > n_samples:
            raise ValueError(f"batch_size={batch_size} exceeds n_samples={n_samples}")
        value, grad = jax.value_and_grad(objective)(state.u, x, spec)
        order = jax.random.permutation(key, n_samples)

        def update(i, carry):
            u, opt_state, total = carry
            rows = jnp.take(order, (i * batch_size + jnp.arange(batch_size)) % n_samples)
            neg_value, neg_grad = jax.value_and_grad(
                lambda v: -objective(v, x[rows], spec, n_total=n_samples)
            )(u)
            updates, opt_state = opt.update(neg_grad, opt_state, u)
            return optax.apply_updates(u, updates), opt_state, total - neg_value

        u, opt_state, total = lax.fori_loop(
            0, eval_every, update, (state.u, state.opt_state, jnp.zeros((), x.dtype))
        )
        info = make_info(state, x, value, grad, 0, total / eval_every)
        return GradientState(u=u, opt_state=opt_state), info

    if tol is None:
        tol, tol_ulps = DEFAULT_TOL, 1.0
    else:
        tol, tol_ulps = (tol if tol > 0 else None), 0.0  # tol=0 turns the test off
    return Fitter(
        name=f"gradient_{optimizer}",
        bound_name="log_likelihood" if spec.prior is None else "log_posterior",
        init=init,
        step=full_batch_step if batch_size is None else minibatch_step,
        get_params=lambda state: from_unconstrained(state.u, spec),
        tol=tol,
        tol_on="bound",
        tol_ulps=tol_ulps,
        stall_patience=STALL_PATIENCE,
    )


# --------------------------------------------------------------------------- one call


def fit_gradient(
    key,
    x,
    spec,
    *,
    init: str | GMMParams = "kmeans",
    n_init: int = 1,
    optimizer: str = "lbfgs",
    learning_rate: float | None = None,
    schedule: str | None = None,
    optimizer_options=None,
    max_steps: int = 1000,
    tol: float | None = None,
    grad_tol: float = 0.0,
    batch_size: int | None = None,
    eval_every: int | None = None,
    chunk_size: int | None = None,
    callback: Callable | None = None,
    select: str = "non_degenerate",
) -> FitResult:
    """Fit ``spec`` to ``x`` by gradient ascent on the log-likelihood (or log-posterior
    when ``spec.prior`` is set), mirroring `jaxgmm.fit_em`.

    Args:
        key: PRNG key (initialiser, minibatches).
        x: array of shape (n_samples, n_features).
        spec: `GMMSpec`.
        init: an initialiser name (see `INITIALIZERS`) or initial `GMMParams`
            (optionally batched with a leading restart axis) -- the same parameters can
            start EM and gradient fits.
        n_init: restarts when ``init`` is a name; run vectorised, best kept.
        optimizer: a key of `OPTIMIZERS` (``"lbfgs"``, ``"adam"``, ``"sgd"``).
        learning_rate: peak learning rate (default per optimizer; none for lbfgs).
        schedule: None or a key of `SCHEDULES`, spanning all optimiser updates of the run.
        optimizer_options: dict of extra builder options (see `make_optimizer`).
        max_steps: maximum iterations (the driver's ``max_iter``); an iteration is one
            update in full batch, ``eval_every`` updates in minibatch mode.
        tol: stop when the objective per sample changes by less than ``tol`` (0: off;
            None: 1e-9, or one ulp of the objective where that is larger, as in
            float32; see `gradient_fitter`).
        grad_tol: stop when the full-data gradient norm is below ``grad_tol`` (0: off).
        batch_size: None (full batch) or the minibatch size (<= n_samples).
        eval_every: minibatch updates per iteration (default: one pass over the data,
            ``ceil(n_samples / batch_size)``); the full-data log-likelihood is reported
            once per iteration.
        chunk_size, callback, select: see `run_fitter`.

    Returns:
        `FitResult`; ``status`` is ``"stalled"`` when the optimiser stopped moving the
        parameters (not convergence; e.g. a learning rate too large for L-BFGS's line
        search).

    Raises:
        ValueError: bad arguments, or no finite state (e.g. data whose squares overflow
        float32): the message says why and what to do.
    """
    x = check_data(x, "x", n_components=spec.n_components, dtype=getattr(x, "dtype", None))
    n_init = check_int(n_init, "n_init", 1)
    max_steps = check_int(max_steps, "max_steps", 0)
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", 1)
        if batch_size > x.shape[0]:
            raise ValueError(f"batch_size={batch_size} exceeds n_samples={x.shape[0]}")
        if eval_every is None:
            eval_every = -(-x.shape[0] // batch_size)
    elif eval_every is not None and eval_every != 1:
        raise ValueError(f"eval_every={eval_every} needs batch_size (minibatch mode)")
    eval_every = 1 if eval_every is None else check_int(eval_every, "eval_every", 1)
    fitter = gradient_fitter(
        spec,
        optimizer,
        learning_rate=learning_rate,
        schedule=schedule,
        schedule_steps=max(1, max_steps * eval_every),
        optimizer_options=optimizer_options,
        batch_size=batch_size,
        eval_every=eval_every,
        tol=tol,
        grad_tol=grad_tol,
    )
    key_init, key_run = jax.random.split(key)
    params = checked_initial_params(key_init, x, spec, init, n_init)
    return run_fitter(
        fitter,
        key_run,
        x,
        params,
        spec,
        max_iter=max_steps,
        chunk_size=chunk_size,
        callback=callback,
        select=select,
    )
