"""SVI via `jaxgmm.fit_svi` (NumPyro autoguides on the NumPyro model of the spec, run by
the core driver) from the shared initial parameters: the guide's point estimate starts
at them. Its config block is ``CONFIG`` (``svi`` in a config).

The trace holds, per step, the log-likelihood per sample at the guide's point estimate
(its median; the delta for ``auto_delta``) and the one-step stochastic objective per
sample: the ELBO (``bound_name="elbo"``), or for ``auto_delta`` the log joint
log p(X, theta) / N (``"log_joint"``, the MAP objective). ``extra`` holds the final ELBO
from ``n_eval_samples`` fresh guide draws with its Monte Carlo standard error and, from
independent draws, the importance-sampling estimate of log p(X) per sample with the guide
symmetrised over the K! relabellings (``log_marginal_is``, ``log_marginal_is_stderr``), its
effective sample size ``is_ess`` and Pareto k-hat ``is_pareto_k`` (``is_reliable`` false and
an ``is_warning`` above ``is_khat_threshold``, 0.7 for 2200 draws or more). The ELBO lying
below it is no check (Jensen's inequality makes it so whatever the estimate's quality) and
is not reported. With ArviZ installed, ``posterior_draws`` draws
of the guide (not for ``auto_delta``, a point mass) make the method's ``InferenceData``
(`jaxgmm.bayes.SVIResult.to_inference_data`, one chain), written to ``posterior.nc``, and its
PSIS-LOO and WAIC go into ``extra`` (`experiments.methods.nuts.loo_waic`).
"""

from __future__ import annotations

import math

import jax
import numpy as np

import jaxgmm
from experiments.config_engine import Field, at_least, greater_than, one_of
from experiments.methods import Method, refuse_without_map, result_from_fit
from experiments.methods.nuts import arviz_or_none, loo_waic


def _postfix(infos):
    """The latest finite objective of a chunk's infos, for the progress bar."""
    bound = np.asarray(infos.bound, dtype=np.float64)
    finite = bound[np.isfinite(bound)]
    return {} if not finite.size else {"objective": f"{finite[-1]:.4f}"}


def run(context):
    settings = context.settings
    guide = settings["guide"]
    bar = context.progress(settings["num_steps"], f"svi ({guide})")
    try:
        result = jaxgmm.fit_svi(
            context.key,
            context.x,
            context.spec,
            guide=guide,
            optimizer={
                "name": settings["optimizer"],
                "learning_rate": settings["learning_rate"],
                "schedule": schedule_for(settings["schedule"], guide),
                "schedule_steps": settings["num_steps"],
            },
            num_steps=settings["num_steps"],
            num_particles=settings["num_particles"],
            init=context.init_params,
            tol=settings["tol"],
            n_eval_samples=settings["n_eval_samples"],
            callback=lambda done, infos: bar.update_to(done, **_postfix(infos)),
        )
    finally:
        bar.close()
    point = guide == "auto_delta"
    extra = {
        "guide": guide,
        "params_summary": "MAP" if point else "guide median",
        "optimizer": settings["optimizer"],
        "learning_rate": settings["learning_rate"],
        "schedule": schedule_for(settings["schedule"], guide) or "constant",
        # auto_delta: the log joint per sample at the MAP point (its exact objective).
        "elbo": result.elbo,
        "elbo_stderr": result.elbo_stderr,
        "log_marginal_is": _finite_or_none(result.log_marginal_is),
        "log_posterior_total": result.log_posterior,
    }
    if not point:
        extra.update(_importance_extra(result))
    if result.init_repaired:
        # The shared init had point-mass components (a one-point initialiser): the guide
        # started from them with the pooled within-cluster covariance instead.
        extra["init_repaired_components"] = sorted({c for _, c in result.init_repaired})
    idata = None
    if not point and settings["posterior_draws"] > 0 and arviz_or_none() is not None:
        idata = result.to_inference_data(
            jax.random.fold_in(context.key, 1),  # fit_svi split context.key itself
            context.x,
            num_samples=settings["posterior_draws"],
            feature_names=context.feature_names or None,
        )
        extra.update(loo_waic(idata))
    method_result = result_from_fit(result.fit, point_estimate=point, extra=extra)
    method_result.inference_data = idata
    return method_result


def schedule_for(schedule, guide):
    """The `jaxgmm.gradient.SCHEDULES` name (None: constant) that ``svi.schedule`` means for
    ``guide``: ``auto`` is ``exponential`` for ``auto_delta`` (its objective is
    deterministic: a step size decaying over the run lets it settle on the MAP instead of
    hovering ~1e-6 per sample below it) and constant for stochastic guides."""
    if schedule == "auto":
        return "exponential" if guide == "auto_delta" else None
    return None if schedule == "constant" else schedule


def _finite_or_none(value):
    return None if value is None or not math.isfinite(value) else float(value)


def _importance_extra(result):
    """The importance-sampling estimate's error and diagnostics (`SVIResult.importance`).

    Its lying above the ELBO holds by Jensen's inequality whatever its quality, so it is not
    reported as a check; the Pareto k-hat and ESS say whether it can be trusted."""
    info = result.importance
    k = info.get("pareto_k")
    extra = {
        "log_marginal_is_stderr": _finite_or_none(result.log_marginal_is_stderr),
        "is_ess": _finite_or_none(info.get("ess")),
        "is_pareto_k": _finite_or_none(k),
        "is_khat_threshold": info.get("khat_threshold"),
        "is_reliable": info.get("reliable"),
        "is_draws": info.get("n_draws"),
        "is_symmetrized": info.get("symmetrized"),
        "is_symmetrization": info.get("symmetrization"),
        "log_marginal_is_unsymmetrized": _finite_or_none(info.get("log_marginal_unsymmetrized")),
        "elbo_symmetrized": _finite_or_none(info.get("elbo_symmetrized")),
    }
    if not info.get("reliable"):
        extra["is_warning"] = (
            f"the importance-sampling log p(X) is unreliable: Pareto k-hat {k:.2f} above "
            f"{info.get('khat_threshold'):.2f} (the guide's tails are too light for the "
            "posterior; its standard error is unreliable too)"
            if k is not None
            else f"no importance-sampling log p(X): {info.get('symmetrization')}"
        )
    return extra


def _check(spec, settings, x):
    del x
    if settings["guide"] == "auto_delta":
        refuse_without_map(spec, "svi.guide auto_delta")


def _svi_optimizers():
    # The gradient fitter's optax registry, less line-search methods (SVI is stochastic).
    return [name for name, entry in jaxgmm.gradient.OPTIMIZERS.items() if not entry.line_search]


CONFIG = {
    "guide": Field(
        "auto_normal", "str", one_of(lambda: jaxgmm.bayes.GUIDES),
        "NumPyro autoguide: auto_delta (MAP), auto_normal (mean field), "
        "auto_multivariate_normal (full rank)",
    ),
    "optimizer": Field(
        "adam", "str", one_of(_svi_optimizers), "optax optimiser of the guide's parameters"
    ),
    "learning_rate": Field(
        0.01, "float", greater_than(0), "the optimiser's (peak) step size"
    ),
    "schedule": Field(
        "auto", "str", one_of(lambda: ["auto", *jaxgmm.gradient.SCHEDULES]),
        "step-size schedule over num_steps (jaxgmm.gradient.SCHEDULES: constant, "
        "exponential = learning_rate * 0.01 ** (step / num_steps), cosine, warmup_cosine); "
        "auto: exponential for auto_delta (settles on the MAP), constant otherwise",
    ),
    "num_steps": Field(2000, "int", at_least(1), "maximum SVI steps"),
    "num_particles": Field(1, "int", at_least(1), "draws per ELBO gradient estimate"),
    "tol": Field(
        None, "float", at_least(0),
        "stop when the objective per sample changes less (null: run num_steps; "
        "useful for auto_delta, whose objective is not noisy)",
        nullable=True,
    ),
    "n_eval_samples": Field(
        1000, "int", at_least(1),
        "guide draws for the final ELBO and, independently, the importance-sampling log p(X)",
    ),
    "posterior_draws": Field(
        1000, "int", at_least(0),
        "with ArviZ installed: guide draws for posterior.nc and LOO/WAIC (0: none; "
        "auto_delta: none, a point mass)",
    ),
}  # fmt: skip


METHOD = Method(
    name="svi",
    run=run,
    doc="NumPyro SVI (autoguide) on the model with the prior; ELBO and IS log p(X)",
    needs_prior=True,
    check=_check,
    config=CONFIG,
)
