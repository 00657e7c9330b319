"""The runner's method adapters (experiments/methods/): what they hand the core fitters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgmm
from experiments.methods import METHODS, MethodContext
from experiments.progress import progress_factory


def _gradient_context(**settings):
    rng = np.random.default_rng(0)
    x = jnp.asarray(np.concatenate([rng.normal(-3, 1, (40, 2)), rng.normal(3, 1, (40, 2))]))
    spec = jaxgmm.GMMSpec(2, "full")
    init = jaxgmm.initial_params(jax.random.key(0), x, spec, "kmeans", 1)
    resolved = {k: v.default for k, v in METHODS["gradient"].config.items()}
    resolved.update(settings)
    return MethodContext(
        key=jax.random.key(1), x=x, spec=spec, init_params=init, settings=resolved,
        progress=progress_factory(False),
    )  # fmt: skip


@pytest.mark.parametrize("schedule", ["cosine", "exponential"])
def test_gradient_schedule_spans_every_minibatch_update(schedule, monkeypatch):
    # With minibatches each iteration makes eval_every optimiser updates, so a decaying
    # schedule must span max_steps * eval_every updates; spanning max_steps it hit its
    # floor (cosine: a zero step) after 1/eval_every of the run and the fit stalled.
    spans = []
    gradient_fitter = jaxgmm.gradient.gradient_fitter

    def spy(*args, **kwargs):
        spans.append(kwargs["schedule_steps"])
        return gradient_fitter(*args, **kwargs)

    monkeypatch.setattr(jaxgmm.gradient, "gradient_fitter", spy)
    max_steps, eval_every = 6, 5
    context = _gradient_context(
        optimizer="adam", learning_rate=0.05, schedule=schedule, max_steps=max_steps,
        tol=0.0, grad_tol=0.0, batch_size=20, eval_every=eval_every,
    )  # fmt: skip
    result = METHODS["gradient"].run(context)
    assert result.n_iter == max_steps
    assert spans == [result.n_iter * eval_every]  # the number of optimiser updates
    if schedule == "cosine":
        # Every iteration still moves the parameters (a cosine at its floor steps by 0).
        assert np.all(np.diff(result.log_likelihood) != 0)


@pytest.mark.parametrize(
    ("prior", "k"),
    [
        ({"weight_concentration": 0.5}, 2),
        ({"weight_prior_type": "dirichlet_process", "weight_concentration": 0.01}, 3),
    ],
)
@pytest.mark.parametrize(("method", "settings"), [("gradient", {}), ("svi", {"guide": "auto_delta"})])
def test_map_methods_refuse_a_prior_without_a_maximum(prior, k, method, settings):
    # Under these weight priors the posterior density is unbounded (a weight -> 0), so a
    # MAP fitter would return emptied components that look like a fit: refused up front.
    x = jnp.asarray(np.random.default_rng(0).normal(size=(30, 2)))
    spec = jaxgmm.GMMSpec(k, "full", prior=jaxgmm.priors.make_prior("conjugate", **prior))
    spec = jaxgmm.priors.resolve_prior(spec, x)
    resolved = {key: v.default for key, v in METHODS[method].config.items()}
    resolved.update(settings)
    with pytest.raises(ValueError, match="no MAP"):
        METHODS[method].check(spec, resolved, x)
    # the same prior is fine for a posterior method
    METHODS["svi"].check(spec, {**resolved, "guide": "auto_normal"}, x)
