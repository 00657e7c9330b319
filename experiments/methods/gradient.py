"""Gradient ML/MAP via `jaxgmm.gradient.gradient_fitter` + the core driver, from the shared
initial parameters. Its config block is ``gradient`` in experiments.config."""

from __future__ import annotations

import jaxgmm
from experiments.methods import Method, result_from_fit


def run(context):
    settings = context.settings
    fitter = jaxgmm.gradient.gradient_fitter(
        context.spec,
        settings["optimizer"],
        learning_rate=settings["learning_rate"],
        schedule=settings["schedule"],
        schedule_steps=settings["max_steps"],
        batch_size=settings["batch_size"],
        eval_every=settings["eval_every"],
        tol=settings["tol"],
        grad_tol=settings["grad_tol"],
    )
    bar = context.progress(settings["max_steps"], f"gradient ({settings['optimizer']})")
    try:
        fit = jaxgmm.run_fitter(
            fitter, context.key, context.x, context.init_params, context.spec,
            max_iter=settings["max_steps"], callback=lambda done, infos: bar.update_to(done),
        )
    finally:
        bar.close()
    grad_norm = fit.trace.extras.get("grad_norm")
    extra = {"optimizer": settings["optimizer"]}
    if grad_norm is not None and len(grad_norm):
        extra["final_grad_norm"] = float(grad_norm[-1])
    return result_from_fit(fit, point_estimate=True, extra=extra)


METHOD = Method(
    name="gradient",
    run=run,
    doc="optax on softmax / log-Cholesky parameters (ML, or MAP with a prior)",
)
