"""The driver (`jaxgmm.run_fitter`): it owns the tolerance test and continues a fit
exactly from a previous result's state (10 + 10 iterations equal 20)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgmm

# One chunk size for every run, so the split and the whole runs execute the same
# compiled chunk and must agree to the bit.
CHUNK = 5


def _data(n=240, d=2, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [4.0, 4.0], [0.0, 5.0]])[:, :d]
    return jnp.asarray(rng.normal(size=(n, d)) + np.repeat(centres, n // 3, axis=0))


def _init(x, spec):
    params = jaxgmm.initial_params(jax.random.key(0), x, spec, "random", 1)
    return jax.tree_util.tree_map(lambda a: a[0], params)


def _split_and_whole(fitter, x, spec, init, n_first, n_total):
    key = jax.random.key(1)

    def run(**kwargs):
        return jaxgmm.run_fitter(fitter, key, x, spec=spec, chunk_size=CHUNK, **kwargs)

    whole = run(init_params=init, max_iter=n_total)
    first = run(init_params=init, max_iter=n_first)
    second = run(init_params=None, max_iter=n_total - n_first, init_state=first.state)
    return first, second, whole


def _assert_continued(first, second, whole):
    assert first.n_iter + second.n_iter == whole.n_iter
    assert second.converged == whole.converged
    for name in ("log_likelihood", "bound"):
        np.testing.assert_array_equal(
            np.concatenate([getattr(first.trace, name), getattr(second.trace, name)]),
            getattr(whole.trace, name),
        )
    for name in whole.trace.extras:
        np.testing.assert_array_equal(
            np.concatenate([first.trace.extras[name], second.trace.extras[name]]),
            whole.trace.extras[name],
            err_msg=name,
        )
    jax.tree_util.tree_map(np.testing.assert_array_equal, second.params, whole.params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, second.state, whole.state)
    assert second.log_likelihood == whole.log_likelihood


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_em_10_plus_10_equals_20(cov):
    x = _data()
    spec = jaxgmm.GMMSpec(3, cov)
    fitter = jaxgmm.em.em_fitter(spec, 0.0)  # tol 0: never converges, runs all 20
    first, second, whole = _split_and_whole(fitter, x, spec, _init(x, spec), 10, 20)
    assert whole.n_iter == 20 and not whole.converged
    _assert_continued(first, second, whole)
    assert int(second.state.n_iter) == 20


def test_em_resumed_tolerance_test_uses_the_previous_run():
    # The first continued iteration compares with the last value of the previous run,
    # so a fit split before its convergence point stops where the whole fit stops.
    x = _data()
    spec = jaxgmm.GMMSpec(3, "full")
    init = _init(x, spec)
    free = jaxgmm.run_fitter(
        jaxgmm.em.em_fitter(spec, 0.0), jax.random.key(1), x, init, spec, max_iter=200
    )
    # changes[i] is iteration i + 2's change.
    tol = 1e-4
    changes = np.abs(np.diff(free.trace.log_likelihood))
    assert np.any(changes < tol)
    expected = int(np.flatnonzero(changes < tol)[0]) + 2
    # Split just before the stop: the continued run's first iteration must pass the test.
    fitter = jaxgmm.em.em_fitter(spec, tol)
    first, second, whole = _split_and_whole(fitter, x, spec, init, expected - 1, 200)
    assert whole.converged and whole.n_iter == expected
    assert not first.converged and second.n_iter == 1 and second.converged
    _assert_continued(first, second, whole)


@pytest.mark.parametrize("batch_size", [None, 60])
def test_gradient_adam_10_plus_10_equals_20(batch_size):
    # adam's state (moments, step count) resumes; in minibatch mode the step keys are
    # folded with the total iteration count, so the minibatches continue too.
    x = _data()
    spec = jaxgmm.GMMSpec(3, "full")
    fitter = jaxgmm.gradient.gradient_fitter(
        spec, "adam", learning_rate=0.05, tol=0.0, batch_size=batch_size,
        eval_every=1 if batch_size is None else 2,
    )
    first, second, whole = _split_and_whole(fitter, x, spec, _init(x, spec), 10, 20)
    assert whole.n_iter == 20
    _assert_continued(first, second, whole)
    count = jax.tree_util.tree_leaves(
        [s.count for s in second.state.fitter_state.opt_state if hasattr(s, "count")]
    )
    assert int(count[0]) == 20 * (1 if batch_size is None else 2)


def test_resume_checks_its_arguments():
    x = _data()
    spec = jaxgmm.GMMSpec(3, "diag")
    fitter = jaxgmm.em.em_fitter(spec, 0.0)
    init = _init(x, spec)
    result = jaxgmm.run_fitter(fitter, jax.random.key(0), x, init, spec, max_iter=2)
    with pytest.raises(ValueError, match="exactly one of init_params and init_state"):
        jaxgmm.run_fitter(
            fitter, jax.random.key(0), x, init, spec, max_iter=2, init_state=result.state
        )
    with pytest.raises(ValueError, match="init_state must be a RunState"):
        jaxgmm.run_fitter(
            fitter, jax.random.key(0), x, None, spec, max_iter=2, init_state=result.params
        )


def test_fitter_states_carry_no_previous_value():
    # The tolerance test is the driver's: no fitter state holds a previous value.
    from jaxgmm.bayes.svi import SVIFitState

    for state in (jaxgmm.em.EMState, jaxgmm.gradient.GradientState, SVIFitState):
        assert not [f for f in state._fields if f.startswith("prev")], state
    fitter = jaxgmm.em.em_fitter(jaxgmm.GMMSpec(2, "full"), 1e-3)
    assert (fitter.tol, fitter.tol_on) == (1e-3, "log_likelihood")
    hash(fitter)  # a compile-cache key

