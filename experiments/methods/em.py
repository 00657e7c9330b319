"""EM via the core driver: `jaxgmm.em.em_fitter` + `jaxgmm.run_fitter` from the shared
initial parameters, and its ``em`` config block (``CONFIG``: max_iter, tol)."""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax import lax

import jaxgmm
from experiments.config_engine import Field, at_least
from experiments.methods import Method, MethodResult, result_from_fit  # noqa: F401


# Bounded: every entry is a compiled executable, and n_iter differs from fit to fit.
@functools.lru_cache(maxsize=8)
def _history_function(fitter, spec, n_iter):
    def history(params, x):
        data = jaxgmm.fit.step_data(fitter, x)
        key = jax.random.key(0)  # EM is deterministic: its init and step ignore the key

        def body(state, _):
            state, _ = fitter.step(key, state, data)
            return state, fitter.get_params(state)

        _, iterates = lax.scan(body, fitter.init(key, params, data), None, length=n_iter)
        return iterates

    return jax.jit(history)


def em_history(fitter, spec, x, params, n_iter):
    """Parameters of every EM iterate theta_0..theta_n_iter, re-running EM from
    ``params`` (deterministic, so it retraces the fit exactly)."""
    iterates = _history_function(fitter, spec, int(n_iter))(params, x)
    stacked = jax.tree_util.tree_map(
        lambda first, rest: np.concatenate([np.asarray(first)[None], np.asarray(rest)]),
        params,
        iterates,
    )
    stacked = jaxgmm.GMMParams(*stacked)
    return {
        "weights": stacked.weights,
        "means": stacked.means,
        "covariances": np.asarray(
            jax.vmap(lambda p: jaxgmm.covariances(p, spec.covariance_type))(stacked)
        ),
    }


def run(context):
    settings = context.settings
    fitter = jaxgmm.em.em_fitter(context.spec, float(settings["tol"]))
    bar = context.progress(settings["max_iter"], "em")

    def callback(done, infos):
        bar.update_to(done)

    try:
        fit = jaxgmm.run_fitter(
            fitter,
            context.key,
            context.x,
            context.init_params,
            context.spec,
            max_iter=settings["max_iter"],
            callback=callback,
            select=context.select,
        )
    finally:
        bar.close()
    history = None
    if context.record_history:
        start = jax.tree_util.tree_map(lambda a: a[fit.best_restart], context.init_params)
        history = em_history(fitter, context.spec, context.x, start, fit.n_iter)
    return result_from_fit(fit, point_estimate=True, history=history)


def check(spec, settings, x):
    """Refuse a prior EM has no closed-form M-step for (the core's ValueError names the
    fitters that can), by tracing one M-step abstractly (nothing is computed)."""
    del settings
    if spec.prior is None:
        return
    n_samples = x.shape[0]
    jax.eval_shape(
        lambda data, log_resp: jaxgmm.em.m_step(data, log_resp, spec),
        jax.ShapeDtypeStruct(x.shape, x.dtype),
        jax.ShapeDtypeStruct((n_samples, spec.n_components), x.dtype),
    )


CONFIG = {
    "max_iter": Field(500, "int", at_least(1), "maximum EM iterations"),
    "tol": Field(
        1.0e-6, "float", at_least(0), "stop when the per-sample log-likelihood gains less"
    ),
}


METHOD = Method(
    name="em",
    run=run,
    doc="expectation-maximisation (ML, or MAP with a conjugate prior)",
    check=check,
    config=CONFIG,
)
