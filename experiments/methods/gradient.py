"""Gradient ML/MAP via `jaxgmm.gradient.gradient_fitter` + the core driver, from the shared
initial parameters, and its ``gradient`` config block (``CONFIG``)."""

from __future__ import annotations

import jaxgmm
from experiments.config_engine import TYPES, Field, at_least, greater_than, one_of
from experiments.methods import Method, SettingError, refuse_without_map, result_from_fit


def optimizer_options(settings):
    """``gradient.optimizer_options`` as keyword arguments: YAML 1.1 reads ``1e-4`` (no
    dot) as a string, so number-like strings become the floats meant."""
    options = {}
    for key, value in (settings["optimizer_options"] or {}).items():
        if isinstance(value, str):
            try:
                value = TYPES["float"](value)
            except Exception:  # not a number: the optax function's own argument
                pass
        options[str(key)] = value
    return options


def _fitter(spec, settings):
    return jaxgmm.gradient.gradient_fitter(
        spec,
        settings["optimizer"],
        learning_rate=settings["learning_rate"],
        optimizer_options=optimizer_options(settings),
        schedule=settings["schedule"],
        # A schedule spans optimiser updates: eval_every of them per iteration on
        # minibatches (eval_every is 1 in full batch), as jaxgmm.fit_gradient counts.
        schedule_steps=settings["max_steps"] * settings["eval_every"],
        batch_size=settings["batch_size"],
        eval_every=settings["eval_every"],
        tol=settings["tol"],
        grad_tol=settings["grad_tol"],
    )


def run(context):
    settings = context.settings
    fitter = _fitter(context.spec, settings)
    bar = context.progress(settings["max_steps"], f"gradient ({settings['optimizer']})")
    try:
        fit = jaxgmm.run_fitter(
            fitter,
            context.key,
            context.x,
            context.init_params,
            context.spec,
            max_iter=settings["max_steps"],
            callback=lambda done, infos: bar.update_to(done),
            select=context.select,
        )
    finally:
        bar.close()
    grad_norm = fit.trace.extras.get("grad_norm")
    extra = {"optimizer": settings["optimizer"]}
    if settings["optimizer_options"]:
        extra["optimizer_options"] = optimizer_options(settings)
    if grad_norm is not None and len(grad_norm):
        extra["final_grad_norm"] = float(grad_norm[-1])
    return result_from_fit(fit, point_estimate=True, extra=extra)


def config_check(settings):
    """The rules between keys of the ``gradient`` block that `jaxgmm.gradient` enforces only
    when the fitter is built, checked when the config is loaded instead."""
    optimizer = settings["optimizer"]
    try:
        entry = jaxgmm.gradient.resolve_optimizer(optimizer)
    except ValueError as error:
        return [("optimizer", str(error))]
    stochastic = sorted(k for k, v in jaxgmm.gradient.OPTIMIZERS.items() if not v.line_search)
    errors = []
    if settings["batch_size"] is not None and entry.line_search:
        errors.append(
            (
                "batch_size",
                f"optimizer {optimizer!r} uses a line search and needs full-batch gradients; "
                f"set gradient.batch_size: null, or gradient.optimizer to one of {stochastic}",
            )
        )
    if (
        settings["schedule"] is not None
        and settings["learning_rate"] is None
        and entry.default_learning_rate is None
    ):
        errors.append(
            (
                "schedule",
                f"schedule {settings['schedule']!r} scales a learning rate, and optimizer "
                f"{optimizer!r} has none by default (its line search sets the step); "
                "set gradient.learning_rate, or gradient.schedule: null",
            )
        )
    if settings["batch_size"] is None and settings["eval_every"] != 1:
        errors.append(
            (
                "eval_every",
                f"{settings['eval_every']} minibatch updates per iteration need "
                "gradient.batch_size (full-batch iterations make one update each)",
            )
        )
    if not errors:
        # The optax function's signature: unknown or missing options, a learning rate it
        # needs (optax.adamw has no default) or cannot take.
        try:
            jaxgmm.gradient.make_optimizer(
                optimizer,
                settings["learning_rate"],
                settings["schedule"],
                settings["max_steps"] * settings["eval_every"],
                optimizer_options(settings),
            )
        except jaxgmm.gradient.OptimizerError as error:
            errors.append((error.argument, str(error)))
    return errors


def check(spec, settings, x):
    """The data-dependent rule (a minibatch no larger than the data), then the fitter's own
    argument checks, before anything is fitted."""
    refuse_without_map(spec, "gradient")
    n_samples = x.shape[0]
    if settings["batch_size"] is not None and settings["batch_size"] > n_samples:
        raise SettingError(
            "batch_size",
            f"{settings['batch_size']} exceeds the {n_samples} training samples",
        )
    try:
        _fitter(spec, settings)
    except jaxgmm.gradient.OptimizerError as error:
        raise SettingError(error.argument, str(error)) from None


CONFIG = {
    "optimizer": Field(
        "lbfgs", "str", None,
        "lbfgs (zoom line search), adam, sgd (optax.sgd: no momentum unless optimizer_options "
        "give one) or any optax optimiser by its optax name (adamw, rmsprop, contrib.prodigy)",
    ),
    "optimizer_options": Field(
        {}, "mapping", None,
        "keyword arguments of the optax function, checked against its signature "
        "(e.g. {weight_decay: 1.0e-4} for adamw, {momentum: 0.9} for sgd)",
    ),
    "learning_rate": Field(
        None, "float", greater_than(0),
        "step size (null: the optimiser's default; L-BFGS uses its line search)",
        nullable=True,
    ),
    "schedule": Field(
        None, "str", one_of(lambda: jaxgmm.gradient.SCHEDULES),
        "learning-rate schedule (null: constant)", nullable=True,
    ),
    "max_steps": Field(1000, "int", at_least(1), "maximum iterations"),
    "tol": Field(
        1.0e-9, "float", at_least(0), "stop when the objective per sample changes less"
    ),
    "grad_tol": Field(0.0, "float", at_least(0), "stop when the gradient norm is below"),
    "batch_size": Field(
        None, "int", at_least(1), "minibatch size (null: full batch)", nullable=True
    ),
    "eval_every": Field(
        1, "int", at_least(1),
        "minibatch updates per iteration; the full-data log-likelihood is traced once per iteration",
    ),
}  # fmt: skip


METHOD = Method(
    name="gradient",
    run=run,
    doc="optax on softmax / log-Cholesky parameters (ML, or MAP with a prior)",
    check=check,
    config=CONFIG,
    config_check=config_check,
)
