"""optax as users write it (issue 17 item 4): `fit_gradient` / `gradient_fitter` take a name
that means exactly optax's function, or any optax GradientTransformation (chains,
extra-argument updates such as L-BFGS), against hand-written optax loops on jaxgmm's
objective; bad names and keywords are named; the runner's ``gradient.optimizer_options``."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_iris

import jaxgmm
from experiments.config import load_config
from experiments.config_engine import ConfigError
from jaxgmm.gradient import OptimizerError, fit_gradient, gradient_fitter, make_optimizer
from jaxgmm.gradient.fitter import objective
from jaxgmm.gradient.unconstrained import from_unconstrained, to_unconstrained

SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
STEPS = 25


@pytest.fixture(scope="module")
def iris_start():
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    x = jnp.asarray(load_iris().data, dtype)
    spec = jaxgmm.GMMSpec(3, "full")
    start = jaxgmm.initial_params(jax.random.key(0), x, spec, "kmeans")
    return x, spec, start


def _optax_loop(opt, x, spec, start, steps=STEPS, line_search=False):
    """The loop optax's docs write, on jaxgmm's objective: the objective per sample at
    each iterate before its update, and the final parameters."""
    u0 = to_unconstrained(jax.tree_util.tree_map(lambda a: a[0], start), spec)

    def loss(u):
        return -objective(u, x, spec)

    def body(carry, _):
        u, state = carry
        if line_search:
            value, grad = optax.value_and_grad_from_state(loss)(u, state=state)
            updates, state = opt.update(grad, state, u, value=value, grad=grad, value_fn=loss)
        else:
            value, grad = jax.value_and_grad(loss)(u)
            updates, state = opt.update(grad, state, u)
        return (optax.apply_updates(u, updates), state), -value

    (u, _), values = jax.lax.scan(body, (u0, opt.init(u0)), None, length=steps)
    return np.asarray(values), from_unconstrained(u, spec)


def _assert_same_run(result, values, params, rtol):
    assert result.n_iter == len(values)
    np.testing.assert_allclose(result.trace.log_likelihood, values, rtol=rtol)
    for name, a, b in zip(params._fields, result.params, params, strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol, err_msg=name)


def _rtol():
    return 1e-9 if jax.config.jax_enable_x64 else 2e-4


def test_chain_with_clipping_is_the_optax_loop(iris_start):
    x, spec, start = iris_start
    chain = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2))
    result = fit_gradient(
        jax.random.key(0), x, spec, init=start, optimizer=chain, max_steps=STEPS, tol=0.0
    )
    assert result.fitter == "gradient_optax"
    # An independent chain of the same pieces, run by hand.
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2))
    values, params = _optax_loop(reference, x, spec, start)
    _assert_same_run(result, values, params, _rtol())
    assert values[-1] > values[0] + 1e-3  # it moved

    # The same object reuses the fitter and its compiled fit; a new one is a new fitter.
    assert gradient_fitter(spec, chain) is gradient_fitter(spec, chain)
    assert gradient_fitter(spec, chain) is not gradient_fitter(spec, reference)
    again = fit_gradient(
        jax.random.key(0), x, spec, init=start, optimizer=chain, max_steps=STEPS, tol=0.0
    )
    assert again.compile_s == 0.0
    np.testing.assert_array_equal(again.trace.log_likelihood, result.trace.log_likelihood)


def test_adamw_by_name_with_options_is_optax_adamw(iris_start):
    x, spec, start = iris_start
    result = fit_gradient(
        jax.random.key(0), x, spec, init=start, optimizer="adamw", learning_rate=0.02,
        optimizer_options={"weight_decay": 0.1, "b1": 0.8}, max_steps=STEPS, tol=0.0,
    )  # fmt: skip
    assert result.fitter == "gradient_adamw"
    values, params = _optax_loop(optax.adamw(0.02, b1=0.8, weight_decay=0.1), x, spec, start)
    _assert_same_run(result, values, params, _rtol())


def test_sgd_is_optax_sgd_without_momentum(iris_start):
    x, spec, start = iris_start
    plain = fit_gradient(
        jax.random.key(0), x, spec, init=start, optimizer="sgd", max_steps=STEPS, tol=0.0
    )
    values, params = _optax_loop(optax.sgd(0.01), x, spec, start)
    _assert_same_run(plain, values, params, _rtol())
    # Momentum only when asked for, as in optax.
    heavy = fit_gradient(
        jax.random.key(0), x, spec, init=start, optimizer="sgd",
        optimizer_options={"momentum": 0.9}, max_steps=STEPS, tol=0.0,
    )  # fmt: skip
    values_m, params_m = _optax_loop(optax.sgd(0.01, momentum=0.9), x, spec, start)
    _assert_same_run(heavy, values_m, params_m, _rtol())
    assert not np.allclose(values_m[2:], values[2:], rtol=1e-6)


def test_lbfgs_object_takes_extra_arguments_as_optax_documents(iris_start):
    x, spec, start = iris_start
    steps = 15
    result = fit_gradient(
        jax.random.key(0), x, spec, init=start, optimizer=optax.lbfgs(), max_steps=steps,
        tol=0.0,
    )  # fmt: skip
    values, params = _optax_loop(optax.lbfgs(), x, spec, start, steps, line_search=True)
    _assert_same_run(result, values, params, 1e-7 if jax.config.jax_enable_x64 else 2e-3)
    assert np.all(np.diff(values) >= -1e-6)  # the line search ascends
    assert result.trace.extras["linesearch_steps"].max() >= 1
    # Minibatches are refused for any optimiser with a line search, found in its state.
    with pytest.raises(ValueError, match="line search"):
        gradient_fitter(spec, optax.chain(optax.clip(1.0), optax.lbfgs()), batch_size=10)


@pytest.mark.parametrize(
    "args, kwargs, argument, match",
    [
        (("adamww",), {}, "optimizer", r"did you mean 'adamw'"),
        (("scale_by_adam",), {}, "optimizer", "name of an optax optimizer"),
        ((optax.adamw,), {}, "optimizer", r"call it .*optax\.adamw"),
        (("adamw",), {}, "learning_rate", "needs a learning_rate"),
        (("adamw", 0.1), {"options": {"weight_decy": 1.0}}, "optimizer_options",
         r"\['weight_decy'\].*valid options: \['b1', 'b2', 'eps'.*'weight_decay'"),
        (("sgd",), {"options": {"learning_rate": 1.0}}, "optimizer_options", "pass it as"),
        (("polyak_sgd", 0.1), {}, "learning_rate", "takes no learning_rate"),
        ((optax.adam(0.1), 0.1), {}, "learning_rate", "carries its own"),
        ((optax.adam(0.1),), {"options": {"b1": 0.5}}, "optimizer_options", "carries its own"),
        (("lbfgs",), {"schedule": "cosine"}, "schedule", "needs a learning_rate"),
    ],
)  # fmt: skip
def test_bad_optimizer_arguments_are_named(args, kwargs, argument, match):
    with pytest.raises(OptimizerError, match=match) as info:
        make_optimizer(*args, **kwargs)
    assert info.value.argument == argument
    assert isinstance(info.value, ValueError)


def test_an_optimizer_that_cannot_update_the_parameters_is_named_up_front():
    def update(updates, state, params=None):
        raise RuntimeError("this transformation only takes a flat array")

    broken = optax.GradientTransformation(lambda params: optax.EmptyState(), update)
    with pytest.raises(OptimizerError, match="cannot update jaxgmm's parameters.*flat array"):
        gradient_fitter(jaxgmm.GMMSpec(2), broken)


def test_names_resolve_to_optax_functions():
    names = jaxgmm.gradient.optax_optimizer_names()
    assert {"adamw", "rmsprop", "lbfgs", "contrib.prodigy"} <= set(names)
    assert not any(name.split(".")[-1].startswith("scale_by_") for name in names)
    for name in ("rmsprop", "contrib.prodigy"):
        assert isinstance(
            make_optimizer(name, 0.1 if name == "rmsprop" else None),
            optax.GradientTransformation,
        )


# --------------------------------------------------------------------------- config


def test_config_optimizer_options_are_checked_against_optax(tmp_path):
    base = ["methods=[gradient]", "gradient.optimizer=adamw", "gradient.learning_rate=0.01"]
    config = load_config(SMOKE, base + ["gradient.optimizer_options={weight_decay: 1e-4}"])
    from experiments.methods.gradient import optimizer_options

    # YAML 1.1 reads 1e-4 as a string; the keyword gets the number meant.
    assert optimizer_options(config["gradient"]) == {"weight_decay": 1e-4}

    cases = [
        (["gradient.optimizer_options={weight_decy: 1e-4}"], "gradient.optimizer_options",
         ["weight_decy", "weight_decay"]),
        (["gradient.optimizer=adamww"], "gradient.optimizer", ["did you mean 'adamw'"]),
        (["gradient.learning_rate=null"], "gradient.learning_rate", ["needs a learning_rate"]),
        (["gradient.optimizer_options=[1]"], "gradient.optimizer_options", ["mapping"]),
    ]  # fmt: skip
    for extra, key, fragments in cases:
        with pytest.raises(ConfigError) as info:
            load_config(SMOKE, base + extra)
        message = str(info.value)
        assert f"{SMOKE}: {key} (from --set):" in message, message
        for fragment in fragments:
            assert fragment in message, message


def test_runner_fits_adamw_with_options():
    from experiments import run_experiment

    result = run_experiment(
        SMOKE,
        overrides=["methods=[gradient]", "gradient.optimizer=adamw",
                   "gradient.learning_rate=0.05", "gradient.max_steps=10",
                   "gradient.optimizer_options={weight_decay: 1e-4}",
                   "model_selection.n_components=null"],
    )  # fmt: skip
    row = result.rows["gradient"]
    assert row["extra"]["optimizer"] == "adamw"
    assert row["extra"]["optimizer_options"] == {"weight_decay": 1e-4}
    assert np.isfinite(row["train_log_likelihood"])
