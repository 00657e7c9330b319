"""Gradient-based maximum likelihood / MAP with optax, on the unconstrained
softmax (weights) / Cholesky (covariances) parameterisation."""

from jaxgmm.gradient.fitter import (
    OPTIMIZERS,
    SCHEDULES,
    GradientInfo,
    GradientState,
    OptimizerError,
    fit_gradient,
    gradient_fitter,
    make_optimizer,
    optax_optimizer_names,
    resolve_optimizer,
)
from jaxgmm.gradient.unconstrained import (
    MAPVariables,
    UnconstrainedParams,
    from_unconstrained,
    hyper_values,
    to_map_variables,
    to_unconstrained,
)

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "GradientInfo",
    "GradientState",
    "MAPVariables",
    "OptimizerError",
    "UnconstrainedParams",
    "fit_gradient",
    "from_unconstrained",
    "gradient_fitter",
    "hyper_values",
    "make_optimizer",
    "optax_optimizer_names",
    "resolve_optimizer",
    "to_map_variables",
    "to_unconstrained",
]
