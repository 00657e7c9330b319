"""EM via the core driver: `jaxgmm.em.em_fitter` + `jaxgmm.run_fitter` from the shared
initial parameters, and its ``em`` config block (``CONFIG``: max_iter, tol).

The bound EM reports (``MethodResult.bound``, row t for iteration t: theta_t -> theta_{t+1})
and its per-iteration target (``MethodResult.trace_columns["target"]``):

- maximum likelihood: ``em_bound`` L(q_t, theta_{t+1}) <= log p(X | theta_{t+1}) (per
  sample; Bishop 2006 eq. 9.74 and the KL identity eq. 9.70);
- with a prior (MAP-EM climbs the log posterior, not the likelihood): ``em_map_bound``
  L(q_t, theta_{t+1}) + log p(theta_{t+1}) / N <= (log p(X | theta_{t+1}) +
  log p(theta_{t+1})) / N, the log posterior up to its constant; the likelihood may fall
  while this rises. ``trace_columns["log_prior"]`` holds log p(theta_t) / N for the row's
  iterate, so log_likelihood + log_prior is the log posterior EM climbs.

The log priors need every iterate: EM is deterministic, so the iterates are recomputed
from the returned restart's start (`em_iterates`), one scan, after the fit and outside its
timing.
"""

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
def _history_function(fitter, n_iter):
    def history(params, x):
        data = jaxgmm.fit.step_data(fitter, x)
        key = jax.random.key(0)  # EM is deterministic: its init and step ignore the key

        def body(state, _):
            state, _ = fitter.step(key, state, data)
            return state, fitter.get_params(state)

        _, iterates = lax.scan(body, fitter.init(key, params, data), None, length=n_iter)
        return iterates

    return jax.jit(history)


def em_iterates(fitter, x, params, n_iter):
    """`GMMParams` of every EM iterate theta_0..theta_n_iter (numpy, leading axis
    n_iter + 1), re-running EM from ``params`` (deterministic, so it retraces the fit)."""
    iterates = _history_function(fitter, int(n_iter))(params, x)
    stacked = jax.tree_util.tree_map(
        lambda first, rest: np.concatenate([np.asarray(first)[None], np.asarray(rest)]),
        params,
        iterates,
    )
    return jaxgmm.GMMParams(*stacked)


@functools.lru_cache(maxsize=8)
def _log_prior_function(spec):
    # lax.map, not vmap: jit(vmap(log_prior)) over thousands of parameter sets has hung
    # (issue 20); a sequential map costs nothing at these sizes.
    return jax.jit(lambda stacked: lax.map(lambda p: jaxgmm.log_prior(p, spec), stacked))


def iterate_log_priors(stacked, spec):
    """log p(theta_t) (totals) of stacked `GMMParams`, shape (n_iterates,)."""
    stacked = jaxgmm.GMMParams(*(jax.numpy.asarray(a) for a in stacked))
    return np.asarray(_log_prior_function(spec)(stacked), np.float64)


def em_history(fitter, spec, x, params, n_iter, stacked=None):
    """Weights, means and covariances of every EM iterate theta_0..theta_n_iter (for the
    animation), from `em_iterates` (or its result ``stacked``)."""
    if stacked is None:
        stacked = em_iterates(fitter, x, params, n_iter)
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
    start = jax.tree_util.tree_map(lambda a: a[fit.best_restart], context.init_params)
    stacked = None
    if context.spec.prior is not None or context.record_history:
        stacked = em_iterates(fitter, context.x, start, fit.n_iter)
    history = None
    if context.record_history:
        history = em_history(fitter, context.spec, context.x, start, fit.n_iter, stacked)
    result = result_from_fit(fit, point_estimate=True, history=history)
    ll = result.log_likelihood
    # Row t's bound is L(q_t, theta_{t+1}); its target is at theta_{t+1}: the next row's
    # log-likelihood, and for the last row the returned parameters'.
    target = np.append(ll[1:], float(fit.log_likelihood))[: ll.size]
    if context.spec.prior is not None and ll.size:
        n_samples = context.x.shape[0]
        log_prior = iterate_log_priors(stacked, context.spec)[: ll.size + 1] / n_samples
        result.bound = result.bound + log_prior[1:]
        result.bound_name = "em_map_bound"
        target = target + log_prior[1:]
        result.trace_columns["log_prior"] = log_prior[:-1]
        result.extra["objective"] = "log posterior"
    result.trace_columns["target"] = target
    return result


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
