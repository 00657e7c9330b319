"""Shared helpers for the Bayesian tests (data loading, an independent gradient MAP)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxgmm
from jaxgmm.priors import log_prior

DATA = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "data"


def faithful():
    return np.loadtxt(DATA / "faithful.csv", delimiter=",", skiprows=1)


def log_posterior_total(x, params, spec):
    return jaxgmm.mean_log_likelihood(x, params, spec) * x.shape[0] + log_prior(params, spec)


def _to_params(u, spec):
    """An unconstrained parameterisation of GMMParams of our own (softmax logits, means,
    log-diagonal + strict upper triangle of prec_chol): not the one NumPyro uses."""
    logits, means, raw = u
    if spec.covariance_type in ("full", "tied"):
        d = raw.shape[-1]
        upper = jnp.triu(raw, 1)
        prec_chol = upper + jnp.exp(jnp.diagonal(raw, axis1=-2, axis2=-1))[..., None] * jnp.eye(d)
    else:
        prec_chol = jnp.exp(raw)
    return jaxgmm.GMMParams(jax.nn.softmax(logits), means, prec_chol)


def _from_params(params, spec):
    pc = params.prec_chol
    if spec.covariance_type in ("full", "tied"):
        d = pc.shape[-1]
        raw = jnp.triu(pc, 1) + jnp.log(jnp.diagonal(pc, axis1=-2, axis2=-1))[..., None] * jnp.eye(
            d
        )
    else:
        raw = jnp.log(pc)
    return (jnp.log(params.weights), params.means, raw)


def gradient_map(x, spec, init_params, n_steps=500):
    """MAP by L-BFGS on log p(X | params) + log_prior(params, spec) in our own
    parameterisation (no Jacobian: a function is maximised, not a density)."""
    x = jnp.asarray(x)
    objective = lambda u: -log_posterior_total(x, _to_params(u, spec), spec) / x.shape[0]  # noqa: E731
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    @jax.jit
    def run(u):
        def body(carry, _):
            u, state = carry
            value, grad = value_and_grad(u, state=state)
            updates, state = opt.update(grad, state, u, value=value, grad=grad, value_fn=objective)
            return (optax.apply_updates(u, updates), state), value

        (u, _), values = jax.lax.scan(body, (u, opt.init(u)), None, length=n_steps)
        return u, values

    u, _ = run(_from_params(init_params, spec))
    return _to_params(u, spec)
