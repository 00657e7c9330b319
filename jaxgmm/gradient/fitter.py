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

import difflib
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
from jaxgmm.fit.fitter import DriverHooks, Fitter
from jaxgmm.fit.validation import check_data, check_int, check_positive
from jaxgmm.gradient.unconstrained import (
    MAPVariables,
    UnconstrainedParams,
    from_unconstrained,
    hyper_values,
    params_of,
    to_map_variables,
)
from jaxgmm.model.covariance import get_family
from jaxgmm.model.density import mean_log_likelihood
from jaxgmm.model.params import GMMParams
from jaxgmm.priors import log_prior

# --------------------------------------------------------------------------- registries


class OptimizerError(ValueError):
    """A bad optimiser argument.

    Attributes:
        argument: the argument at fault: ``"optimizer"``, ``"learning_rate"``,
            ``"schedule"`` or ``"optimizer_options"`` (the experiment runner names the
            config key from it).
    """

    def __init__(self, argument, message):
        self.argument = argument
        super().__init__(message)


class OptimizerEntry(NamedTuple):
    """A named optimiser.

    Attributes:
        build: ``build(learning_rate=..., **options) -> optax.GradientTransformation``;
            ``learning_rate`` is a float, an optax schedule, or None (line search). Its
            signature is the list of valid options.
        default_learning_rate: used when the caller gives none.
        line_search: whether ``update`` needs ``value``, ``grad`` and ``value_fn``
            (full batch only).
    """

    build: Callable[..., Any]
    default_learning_rate: float | None
    line_search: bool


def _lbfgs(
    learning_rate=None,
    memory_size=10,
    scale_init_precond=True,
    linesearch=None,
    max_linesearch_steps=None,
):
    # optax.lbfgs with its default zoom line search (strong Wolfe conditions, initial
    # guess "one"); max_linesearch_steps rebuilds that line search with another step
    # budget. With learning_rate=None the line search alone sets the step.
    if linesearch is not None and max_linesearch_steps is not None:
        raise OptimizerError(
            "optimizer_options",
            "optimizer_options: give lbfgs either linesearch or max_linesearch_steps, not both",
        )
    if linesearch is None:
        linesearch = optax.scale_by_zoom_linesearch(
            max_linesearch_steps=20 if max_linesearch_steps is None else max_linesearch_steps,
            initial_guess_strategy="one",
        )
    return optax.lbfgs(
        learning_rate=learning_rate,
        memory_size=memory_size,
        scale_init_precond=scale_init_precond,
        linesearch=linesearch,
    )


# The names that need no "optax." to be understood, with jaxgmm's default learning rates
# (optax.adam and optax.sgd have none). Any other optax optimiser is reached by its optax
# name (see `resolve_optimizer`); these three are optax's own functions too, so a name
# means exactly what optax's does ("sgd" has no momentum unless options give one).
OPTIMIZERS = {
    "adam": OptimizerEntry(optax.adam, default_learning_rate=0.05, line_search=False),
    "sgd": OptimizerEntry(optax.sgd, default_learning_rate=0.01, line_search=False),
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

# Where optax keeps its optimisers: "adamw" is optax.adamw, "contrib.prodigy" is
# optax.contrib.prodigy.
_OPTAX_MODULES = {"": optax, "contrib": optax.contrib}
# An optax optimiser takes a step size; scale_by_* building blocks take one too, but they
# are not optimisers (their sign conventions differ), so they are not names here.
_STEP_SIZE_PARAMETERS = ("learning_rate", "max_learning_rate")
_NO_DEFAULT = inspect.Parameter.empty


def _optax_function(name):
    """The optax optimiser function called ``name``, or None."""
    if not isinstance(name, str):
        return None
    module_name, _, attr = name.rpartition(".")
    module = _OPTAX_MODULES.get(module_name)
    if module is None or attr.startswith(("_", "scale_by_")):
        return None
    function = getattr(module, attr, None)
    if not inspect.isfunction(function):
        return None
    if not set(_STEP_SIZE_PARAMETERS) & set(inspect.signature(function).parameters):
        return None
    return function


@functools.cache
def optax_optimizer_names():
    """Every name `resolve_optimizer` understands beyond `OPTIMIZERS`: optax's optimiser
    functions (``"adamw"``, ``"rmsprop"``, ...) and optax.contrib's (``"contrib.prodigy"``),
    sorted."""
    names = []
    for prefix, module in _OPTAX_MODULES.items():
        for attr in dir(module):
            name = f"{prefix}.{attr}" if prefix else attr
            if _optax_function(name) is not None:
                names.append(name)
    return tuple(sorted(names))


def _unknown_optimizer(name):
    hint = ""
    if isinstance(name, str):
        close = difflib.get_close_matches(name, list(OPTIMIZERS) + list(optax_optimizer_names()))
        hint = f"; did you mean {close[0]!r}?" if close else ""
    elif callable(name) and _optax_function(getattr(name, "__name__", None)) is name:
        hint = f"; call it to build the optimizer, e.g. optax.{name.__name__}(1e-2)"
    return OptimizerError(
        "optimizer",
        f"optimizer must be one of {sorted(OPTIMIZERS)}, the name of an optax optimizer "
        f"(optax.<name>, e.g. 'adamw', 'rmsprop'; optax.contrib.<name> as "
        f"'contrib.<name>'), or an optax GradientTransformation, got {name!r}{hint}",
    )


def resolve_optimizer(name):
    """The `OptimizerEntry` of an optimiser name.

    Args:
        name: a key of `OPTIMIZERS`, or the name of an optax optimiser function:
            ``"adamw"`` is ``optax.adamw``, ``"contrib.prodigy"`` is
            ``optax.contrib.prodigy`` (the list: `optax_optimizer_names`).

    Returns:
        `OptimizerEntry`; for an optax name, ``build`` is the optax function itself and
        ``default_learning_rate`` its own default (``_NO_DEFAULT`` when it has none).

    Raises:
        OptimizerError: a name neither knows, with the closest valid one.
    """
    if isinstance(name, str) and name in OPTIMIZERS:
        return OPTIMIZERS[name]
    function = _optax_function(name)
    if function is None:
        raise _unknown_optimizer(name)
    parameters = inspect.signature(function).parameters
    default = parameters["learning_rate"].default if "learning_rate" in parameters else None
    # line_search False: the fitter finds a line search in the state it builds.
    return OptimizerEntry(function, default_learning_rate=default, line_search=False)


def _describe(optimizer):
    if isinstance(optimizer, str):
        qualified = f"optax.{optimizer}" if optimizer not in OPTIMIZERS else None
        return f"{optimizer!r}" + (f" ({qualified})" if qualified else "")
    return "<optax GradientTransformation>"


def _check_options(name, build, options):
    """``options`` against ``build``'s signature: unknown and missing keywords named."""
    parameters = inspect.signature(build).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    allowed = [
        p
        for p, parameter in parameters.items()
        if p != "learning_rate" and parameter.kind is not inspect.Parameter.VAR_POSITIONAL
    ]
    if "learning_rate" in options:
        raise OptimizerError(
            "optimizer_options",
            "optimizer_options must not hold learning_rate: pass it as learning_rate",
        )
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise OptimizerError(
            "optimizer_options",
            f"optimizer_options {unknown} not understood by optimizer {_describe(name)}; "
            f"valid options: {allowed}",
        )
    missing = [
        p
        for p in allowed
        if parameters[p].default is _NO_DEFAULT
        and parameters[p].kind is not inspect.Parameter.VAR_KEYWORD
        and p not in options
    ]
    if missing:
        raise OptimizerError(
            "optimizer_options",
            f"optimizer {_describe(name)} needs optimizer_options {missing} (no default)",
        )


def make_optimizer(name, learning_rate=None, schedule=None, schedule_steps=1000, options=()):
    """Build an optax optimiser from its name, or check an optax object.

    Args:
        name: a key of `OPTIMIZERS` (``"lbfgs"``, ``"adam"``, ``"sgd"``), the name of any
            optax optimiser (``"adamw"``, ``"rmsprop"``, ``"contrib.prodigy"``; see
            `resolve_optimizer`), or an ``optax.GradientTransformation`` (returned as it
            is: it carries its own learning rate, so the other arguments must be unset).
        learning_rate: peak learning rate (> 0); default: 0.05 for adam, 0.01 for sgd,
            None for lbfgs (its line search chooses the step), optax's own default for
            another optax name (an error where optax has none).
        schedule: None or a key of `SCHEDULES`.
        schedule_steps: number of optimiser updates the schedule spans.
        options: dict or (key, value) pairs of the optax function's keyword arguments
            (e.g. ``momentum`` for sgd, ``weight_decay`` for adamw; for lbfgs also
            ``max_linesearch_steps``), checked against its signature.

    Raises:
        OptimizerError (a ValueError): an unknown name, an option the function does not
        take, a missing learning rate; ``argument`` names the argument at fault.
    """
    options = dict(options)
    if isinstance(name, optax.GradientTransformation):
        given = [
            argument
            for argument, value in (
                ("learning_rate", learning_rate),
                ("schedule", schedule),
                ("optimizer_options", options or None),
            )
            if value is not None
        ]
        if given:
            raise OptimizerError(
                given[0],
                f"{', '.join(given)} apply to an optimizer given by name; an optax "
                "GradientTransformation carries its own (build it with them, or pass a "
                "schedule to its learning_rate)",
            )
        return name
    entry = resolve_optimizer(name)
    takes_learning_rate = "learning_rate" in inspect.signature(entry.build).parameters
    if not takes_learning_rate and (learning_rate is not None or schedule is not None):
        argument = "learning_rate" if learning_rate is not None else "schedule"
        raise OptimizerError(
            argument,
            f"optimizer {_describe(name)} takes no learning_rate (it sets its own step), "
            f"so {argument} does not apply",
        )
    lr = entry.default_learning_rate if learning_rate is None else learning_rate
    if lr is _NO_DEFAULT:
        raise OptimizerError(
            "learning_rate",
            f"optimizer {_describe(name)} needs a learning_rate (optax has no default for it)",
        )
    if lr is not None and learning_rate is not None:
        try:
            lr = check_positive(lr, "learning_rate")
        except ValueError as error:
            raise OptimizerError("learning_rate", str(error)) from None
    if schedule is not None:
        try:
            make_schedule = lookup(SCHEDULES, schedule, "schedule")
        except ValueError as error:
            raise OptimizerError("schedule", str(error)) from None
        if lr is None:
            raise OptimizerError(
                "schedule",
                f"schedule={schedule!r} needs a learning_rate for optimizer {_describe(name)}",
            )
        lr = make_schedule(lr, check_int(schedule_steps, "schedule_steps", 1))
    _check_options(name, entry.build, options)
    if takes_learning_rate:
        options["learning_rate"] = lr
    try:
        built = entry.build(**options)
    except OptimizerError:
        raise
    except (TypeError, ValueError) as error:
        raise OptimizerError(
            "optimizer_options",
            f"optimizer {_describe(name)} refused its options {dict(options)}: {error}",
        ) from None
    if not isinstance(built, optax.GradientTransformation):
        raise OptimizerError(
            "optimizer",
            f"optimizer {_describe(name)} did not build an optax GradientTransformation",
        )
    return built


# --------------------------------------------------------------------------- objective


def objective(u, x, spec, n_total=None):
    """The gradient fitter's objective per sample (maximised).

    Args:
        u: `UnconstrainedParams`, or `MAPVariables` under a hierarchical prior (the
            hyper-sites' values join the prior's density).
        x: array of shape (n_samples, n_features) (the data, or a minibatch of it).
        spec: `GMMSpec`.
        n_total: number of samples in the full data set (default ``x.shape[0]``); the
            prior's total log-density is divided by it, so the minibatch objective is an
            unbiased estimate of the full one.

    Returns:
        ``mean_log_likelihood(x, theta) + log_prior(theta) / n_total`` with
        ``theta = from_unconstrained(u, spec)``, a scalar.
    """
    params = from_unconstrained(params_of(u), spec)
    n_total = x.shape[0] if n_total is None else n_total
    value = mean_log_likelihood(x, params, spec)
    if spec.prior is not None:
        value = value + _log_prior_of(u, params, spec) / n_total
    return value


def _log_prior_of(u, params, spec):
    """The prior's total log density at the iterate: of ``params`` alone, or, under a
    hierarchical prior (``u`` a `MAPVariables`), jointly with the hyper-sites' values."""
    if not isinstance(u, MAPVariables):
        return log_prior(params, spec)
    sites = {**spec.prior.site_values(params, spec), **hyper_values(u, spec)}
    return spec.prior.log_density_of_sites(
        sites, spec, params.means.shape[-1], params.means.dtype
    )


def objective_and_grad(params, x, spec):
    """(objective per sample, its gradient as `UnconstrainedParams`) at `GMMParams`
    (under a hierarchical prior, `MAPVariables` with the hyper-sites at the prior's
    ``initial_hyper_values``)."""
    return jax.value_and_grad(objective)(to_map_variables(params, spec), x, spec)


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
        u: `UnconstrainedParams` of the current iterate (`MAPVariables` under a
            hierarchical prior: its hyper-sites are optimised too).
        opt_state: the optax optimiser state.
    """

    u: UnconstrainedParams | MAPVariables
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
    optimizer="lbfgs",
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

    Cached on its arguments, so repeated fits reuse compiled code. An optax object is
    hashed by identity: passing the same object again reuses the compiled fit, while a
    new one (even ``optax.adam(0.1)`` built again) compiles afresh.

    Args:
        spec: `GMMSpec`.
        optimizer: a name (a key of `OPTIMIZERS`, or any optax optimiser: ``"adamw"``,
            ``"contrib.prodigy"``; see `make_optimizer`) or any
            ``optax.GradientTransformation`` (a chain, an optax.contrib optimiser, one
            whose update takes extra arguments such as ``optax.lbfgs()``). An update
            that takes extra arguments (``optax.GradientTransformationExtraArgs``)
            receives ``value`` (the loss minimised: minus the objective per sample),
            ``grad`` (its gradient) and ``value_fn`` (the loss as a function of the
            `UnconstrainedParams`): what optax's line searches, ``polyak_sgd`` and
            ``contrib.reduce_on_plateau`` read.
        learning_rate, schedule, schedule_steps, optimizer_options: see `make_optimizer`
            (names only).
        batch_size: None for full-batch gradients, else the minibatch size; each
            iteration then makes ``eval_every`` updates on minibatches drawn without
            replacement from a fresh permutation of the data (from the step's key).
            Refused for an optimiser with a line search (found in its state).
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

    Raises:
        OptimizerError (a ValueError): a bad optimiser argument, or an optimiser that
        cannot update jaxgmm's parameters (tried on abstract arrays, nothing runs).
        ValueError: other bad arguments.
    """
    options = tuple(sorted(dict(optimizer_options or {}).items()))
    try:
        hash(options)
    except TypeError:
        raise OptimizerError(
            "optimizer_options", "optimizer_options values must be hashable (numbers, strings)"
        ) from None
    if schedule is None:
        schedule_steps = 1  # unused: keep one cache entry whatever the caller passed
    # Validate eagerly so bad input fails here, not inside jit.
    make_optimizer(optimizer, learning_rate, schedule, schedule_steps, options)
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", 1)
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


def _update(opt, grads, opt_state, u, value, value_fn):
    """One optax update of the loss (minus the objective): extra arguments go to an update
    that takes them, as optax's line searches need."""
    if isinstance(opt, optax.GradientTransformationExtraArgs):
        return opt.update(grads, opt_state, u, value=value, grad=grads, value_fn=value_fn)
    return opt.update(grads, opt_state, u)


_LINE_SEARCH_STATES = (optax.ScaleByZoomLinesearchState, optax.ScaleByBacktrackingLinesearchState)


def _reusable_line_search_state(opt_state):
    """The state of a line search that is the optimiser's last transformation and stored
    the loss and gradient at the point it moved to, or None.

    Only then is that value the loss at the next iterate (`optax.value_and_grad_from_state`
    may reuse it); a transformation after the line search would change the step. A chain's
    state is the tuple of its transformations' states, so the last one is followed down.
    """
    node = opt_state
    while type(node) is tuple and node:  # a chain's tuple, not a NamedTuple state
        node = node[-1]
    if isinstance(node, _LINE_SEARCH_STATES) and node.grad is not None:
        return node
    return None


def _linesearch_steps(opt_state):
    found = optax.tree.get_all_with_path(opt_state, "num_linesearch_steps")
    return sum((jnp.asarray(value, jnp.int32) for _, value in found), jnp.int32(0))


def _probe(opt, spec, describe):
    """Run ``init`` and one update on abstract `UnconstrainedParams` of ``spec``'s shapes
    (nothing is computed) and return the abstract optimiser state; an optimiser that
    cannot update these parameters is an `OptimizerError` here rather than a traceback
    from inside the compiled fit."""
    k, d = spec.n_components, 2  # the state's structure does not depend on n_features
    cov_shape = get_family(spec.covariance_type).prec_chol_shape(k, d)
    u = UnconstrainedParams(
        logits=jax.ShapeDtypeStruct((k,), jnp.float32),
        means=jax.ShapeDtypeStruct((k, d), jnp.float32),
        cov_factor=jax.ShapeDtypeStruct(cov_shape, jnp.float32),
    )

    def loss(v):
        return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(v))

    def one_update(v):
        opt_state = opt.init(v)
        value, grads = jax.value_and_grad(loss)(v)
        updates, opt_state = _update(opt, grads, opt_state, v, value, loss)
        return optax.apply_updates(v, updates), opt_state

    try:
        moved, opt_state = jax.eval_shape(one_update, u)
    except Exception as error:  # any failure of a user's optimiser: name it, say why
        raise OptimizerError(
            "optimizer",
            f"optimizer {describe} cannot update jaxgmm's parameters (an UnconstrainedParams "
            f"of arrays; its update gets grads, state, params, value=, grad=, value_fn=): "
            f"{type(error).__name__}: {error}",
        ) from None
    if jax.tree.structure(moved) != jax.tree.structure(u) or any(
        a.shape != b.shape for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(u), strict=True)
    ):
        raise OptimizerError(
            "optimizer", f"optimizer {describe} returned updates that do not match the parameters"
        )
    return opt_state


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
    describe = _describe(optimizer)
    probe_state = _probe(opt, spec, describe)
    line_search = bool(optax.tree.get_all_with_path(probe_state, "num_linesearch_steps"))
    if batch_size is not None and line_search:
        stochastic = sorted(k for k, v in OPTIMIZERS.items() if not v.line_search)
        raise OptimizerError(
            "optimizer",
            f"optimizer {describe} uses a line search and needs full-batch gradients; "
            f"use batch_size=None, or a stochastic optimizer (e.g. {stochastic})",
        )

    def init(key, params, x):
        del key, x  # deterministic; the optimiser state depends on the parameters only
        u = to_map_variables(params, spec)
        return GradientState(u=u, opt_state=opt.init(u))

    def current_params(state):
        return from_unconstrained(params_of(state.u), spec)

    def make_info(state, x, value, grad, linesearch_steps, minibatch_objective):
        log_likelihood = (
            value
            if spec.prior is None
            else mean_log_likelihood(x, current_params(state), spec)
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
        stored = _reusable_line_search_state(state.opt_state)
        if stored is not None:
            neg_value, neg_grad = optax.value_and_grad_from_state(loss)(state.u, state=stored)
        else:
            neg_value, neg_grad = jax.value_and_grad(loss)(state.u)
        updates, opt_state = _update(opt, neg_grad, state.opt_state, state.u, neg_value, loss)
        value = -neg_value
        steps = _linesearch_steps(opt_state) if line_search else 0
        info = make_info(state, x, value, neg_grad, steps, value)
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
            loss = lambda v: -objective(v, x[rows], spec, n_total=n_samples)
            neg_value, neg_grad = jax.value_and_grad(loss)(u)
            updates, opt_state = _update(opt, neg_grad, opt_state, u, neg_value, loss)
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
        name=f"gradient_{optimizer if isinstance(optimizer, str) else 'optax'}",
        bound_name="log_likelihood" if spec.prior is None else "log_posterior",
        init=init,
        step=full_batch_step if batch_size is None else minibatch_step,
        get_params=current_params,
        tol=tol,
        tol_on="bound",
        tol_ulps=tol_ulps,
        stall_patience=STALL_PATIENCE,
        # MAP: restarts ranked by the log posterior the fit maximises (the hyper-sites'
        # values included under a hierarchical prior).
        hooks=None
        if spec.prior is None
        else DriverHooks(log_prior=lambda state: _log_prior_of(state.u, current_params(state), spec)),
    )


# --------------------------------------------------------------------------- one call


def fit_gradient(
    key,
    x,
    spec,
    *,
    init: str | GMMParams = "kmeans",
    n_init: int = 1,
    optimizer="lbfgs",
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
        n_init: restarts when ``init`` is a name; run vectorised, best kept (highest
            log-likelihood, or log posterior under ``spec.prior``).
        optimizer: a name -- ``"lbfgs"``, ``"adam"``, ``"sgd"`` (exactly optax's: no
            momentum unless ``optimizer_options={"momentum": 0.9}``) or any optax
            optimiser (``"adamw"``, ``"contrib.prodigy"``) -- or an
            ``optax.GradientTransformation`` such as
            ``optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2))``
            (see `gradient_fitter`; the same object reuses the compiled fit).
        learning_rate: peak learning rate (default per optimizer; none for lbfgs);
            names only.
        schedule: None or a key of `SCHEDULES`, spanning all optimiser updates of the
            run; names only.
        optimizer_options: dict of the optax function's keyword arguments (see
            `make_optimizer`); names only.
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
