"""Online (stepwise) EM: the statistic average is exact, the fit lands next to batch EM,
a stream equals the array it came from, inputs are checked, every family runs."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgmm
from jaxgmm import COVARIANCE_TYPES
from jaxgmm.priors import make_prior
from jaxgmm.scale.online import (
    average_stats,
    fit_em_online,
    online_em_init,
    per_sample_stats,
    scale_stats,
)


def three_blobs(n_samples, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(3, size=n_samples)
    return CENTERS[labels] + rng.normal(size=(n_samples, 2))


CENTERS = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
BATCH = 512  # one batch shape for most tests (3000 rows: the last batch is padded)


def rough_params(spec, shift=0.0):
    """A deliberately rough start near the blobs (no initialiser to compile)."""
    cov = {
        "full": np.tile(1.5 * np.eye(2), (3, 1, 1)),
        "tied": 1.5 * np.eye(2),
        "diag": np.full((3, 2), 1.5),
        "spherical": np.full((3,), 1.5),
    }[spec.covariance_type]
    return jaxgmm.params_from_covariances(
        np.full(3, 1 / 3), CENTERS + 0.4 + shift, cov, spec.covariance_type
    )


def kmeans_params(x, spec, seed=1):
    params = jaxgmm.initial_params(jax.random.key(seed), jnp.asarray(x), spec, "kmeans", 1)
    return jax.tree_util.tree_map(lambda a: a[0], params)


@pytest.fixture(scope="module")
def blobs_20k():
    return three_blobs(20_000)


@pytest.fixture(scope="module")
def blobs_3k():
    return three_blobs(3_000, seed=5)


def assert_stats_close(stats, reference, atol):
    assert stats.frame is None and reference.frame is None  # both in data coordinates
    for name in reference._fields[:-1]:  # all but frame
        np.testing.assert_allclose(
            np.asarray(getattr(stats, name)), np.asarray(getattr(reference, name)),
            rtol=0, atol=atol, err_msg=name,
        )


# (1) The average is exact ---------------------------------------------------------------


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("equal_batches", [True, False])
def test_running_average_equals_full_batch_statistics(cov_type, equal_batches, blobs_3k,
                                                      require_x64):
    """At fixed parameters, averaging per-batch statistics with step n_b / n_seen (= 1/t
    for equal batches) gives the full-data statistics of `stats_from_moments`."""
    x = blobs_3k + np.array([50.0, -20.0])  # off-origin: the re-centring must be exact
    spec = jaxgmm.GMMSpec(3, cov_type)
    params = rough_params(spec, shift=np.array([50.0, -20.0]))  # not the optimum
    _, full = jaxgmm.model.stats_from_moments(
        jaxgmm.model.block_moments(jnp.asarray(x), params, spec), params, spec
    )
    full = jaxgmm.model.in_data_coordinates(full, spec)

    @jax.jit
    def update(stats, batch, weight, gamma):
        # Batches zero-padded to one shape (weight 0), as the fit pads its last batch.
        moments = jaxgmm.model.block_moments(batch, params, spec, sample_weight=weight)
        _, batch_stats = jaxgmm.model.stats_from_moments(moments, params, spec)
        batch_stats = jaxgmm.model.in_data_coordinates(batch_stats, spec)
        return average_stats(stats, per_sample_stats(batch_stats), gamma, spec)

    sizes = [300] * 10 if equal_batches else [1, 7, 500, 92, 1400, 1000]
    assert sum(sizes) == x.shape[0]
    stats, start = online_em_init(params, spec).stats, 0
    for t, size in enumerate(sizes, start=1):
        batch = np.zeros((max(sizes), 2))
        batch[:size] = x[start : start + size]
        start += size
        gamma = 1.0 / t if equal_batches else size / start
        stats = update(stats, batch, (np.arange(max(sizes)) < size).astype(float), gamma)
    assert float(stats.n_samples) == pytest.approx(1.0, abs=1e-14)
    assert_stats_close(scale_stats(stats, x.shape[0]), full, atol=1e-10 * x.shape[0])


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_warmup_pass_is_the_full_batch_statistics(cov_type, blobs_3k, require_x64):
    """The fit itself: one warm-up epoch (no M-step, padded last batch included) leaves
    the initial parameters and exactly the full-data statistics under them."""
    spec = jaxgmm.GMMSpec(3, cov_type)
    params = rough_params(spec)
    result = fit_em_online(
        jax.random.key(0), blobs_3k, spec, init=params, batch_size=BATCH, n_epochs=1,
        warmup_steps=6, score_final=False,
    )
    assert result.n_iter == 6  # 5 full batches + 1 padded (440 rows)
    for got, want in zip(result.params, params):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    x = jnp.asarray(blobs_3k)
    _, full = jaxgmm.model.stats_from_moments(jaxgmm.model.block_moments(x, params, spec), params, spec)
    full = jaxgmm.model.in_data_coordinates(full, spec)
    assert_stats_close(scale_stats(result.state.stats, x.shape[0]), full, atol=1e-10 * x.shape[0])


def test_step_sizes_follow_the_schedule(blobs_3k):
    spec = jaxgmm.GMMSpec(3, "diag")
    result = fit_em_online(
        jax.random.key(0), blobs_3k, spec, init=rough_params(spec), batch_size=BATCH,
        n_epochs=2, step_size_decay=0.7, step_size_offset=3.0, warmup_steps=0,
    )
    t = result.trace.iteration
    # The padded last batch of each epoch (440 of 512 rows) gets a proportionally smaller step.
    real_rows = np.where(t % 6 == 0, 3000 - 5 * BATCH, BATCH)
    expected = np.where(t == 1, 1.0, (t + 3.0) ** -0.7 * real_rows / BATCH)
    np.testing.assert_allclose(result.trace.extras["step_size"], expected, rtol=1e-6)


# (2) Close to batch EM -------------------------------------------------------------------


def test_close_to_batch_em_on_separated_blobs(blobs_20k):
    spec = jaxgmm.GMMSpec(3, "full")
    params = kmeans_params(blobs_20k, spec)
    batch = jaxgmm.fit_em(jax.random.key(2), blobs_20k, spec, init=params, max_iter=500, tol=1e-10)
    online = fit_em_online(
        jax.random.key(3), blobs_20k, spec, init=params, batch_size=2000, n_epochs=10
    )
    assert online.fitter == "em_online"
    assert online.n_iter == 100
    gap = batch.log_likelihood - online.log_likelihood
    # Batch EM is at a (local) maximum: online EM may only approach it from below.
    assert -1e-9 < gap < 1e-3
    means_err = np.abs(np.sort(np.asarray(online.params.means), axis=0)
                       - np.sort(np.asarray(batch.params.means), axis=0))
    assert means_err.max() < 1e-2
    np.testing.assert_allclose(
        np.sort(np.asarray(online.params.weights)), np.sort(np.asarray(batch.params.weights)),
        atol=1e-2,
    )
    assert online.log_likelihood == pytest.approx(
        float(jaxgmm.mean_log_likelihood(jnp.asarray(blobs_20k), online.params, spec)), abs=1e-10
    )


def test_map_step_weighs_the_prior_against_n_samples(blobs_3k):
    """With a prior, the averaged statistics are scaled to n_samples before the MAP
    M-step, so online EM approaches batch MAP EM (and a wrong n_samples does not)."""
    x = blobs_3k[:600]
    prior = make_prior(
        "conjugate", weight_concentration=50.0, mean_prior=(3.0, 3.0), mean_precision=30.0,
        covariance_prior=((4.0, 0.0), (0.0, 4.0)),
    )
    spec = jaxgmm.GMMSpec(3, "full", prior=prior)
    params = rough_params(spec)
    batch = jaxgmm.fit_em(jax.random.key(0), x, spec, init=params, max_iter=500, tol=1e-12)
    online = fit_em_online(jax.random.key(1), x, spec, init=params, batch_size=300, n_epochs=40)
    np.testing.assert_allclose(online.params.means, batch.params.means, atol=2e-2)
    wrong = fit_em_online(
        jax.random.key(1), iter(np.array_split(np.tile(x, (40, 1)), 80)), spec, init=params,
        n_samples=60.0,
    )
    assert np.abs(np.asarray(wrong.params.means) - np.asarray(batch.params.means)).max() > 0.1


# (3) A stream equals the array it came from ----------------------------------------------


@pytest.mark.parametrize("init", ["kmeans", "rough"])
def test_stream_matches_array_without_shuffle(init, blobs_3k, require_x64):
    spec = jaxgmm.GMMSpec(3, "full")
    init = rough_params(spec) if init == "rough" else init
    common = dict(init=init, init_subsample=len(blobs_3k), batch_size=BATCH)
    from_array = fit_em_online(
        jax.random.key(4), blobs_3k, spec, n_epochs=1, shuffle=False, score_final=False, **common
    )
    # Pieces of 317 rows, re-cut into batches of 512 (the last one padded) as the array is.
    pieces = (blobs_3k[i : i + 317] for i in range(0, len(blobs_3k), 317))
    from_stream = fit_em_online(
        jax.random.key(4), pieces, spec, n_samples=float(len(blobs_3k)), **common
    )
    assert from_stream.n_iter == from_array.n_iter == 6
    for got, want in zip(from_stream.params, from_array.params):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        from_stream.trace.log_likelihood, from_array.trace.log_likelihood, rtol=1e-12
    )
    assert from_stream.log_likelihood == pytest.approx(from_array.log_likelihood, rel=1e-12)


def test_infinite_stream_stops_at_max_steps_without_over_reading():
    pulled = []

    def stream():
        for i in itertools.count():
            pulled.append(i)
            yield three_blobs(1000, seed=i)

    spec = jaxgmm.GMMSpec(3, "full")
    result = fit_em_online(
        jax.random.key(0), stream(), spec, init_subsample=3000, batch_size=BATCH, max_steps=12
    )
    assert result.n_iter == 12
    # 3 batches for the initialiser (then fitted too); 12 * 512 rows need 7 batches in all.
    assert len(pulled) == 7
    assert np.isfinite(result.log_likelihood)


def test_memmap_file_matches_in_memory(tmp_path, blobs_3k, require_x64):
    path = tmp_path / "x.npy"
    np.save(path, blobs_3k)
    spec = jaxgmm.GMMSpec(3, "tied")
    kwargs = dict(init=rough_params(spec), batch_size=BATCH, n_epochs=2, eval_every=4)
    on_disk = fit_em_online(jax.random.key(7), str(path), spec, **kwargs)
    in_memory = fit_em_online(jax.random.key(7), blobs_3k, spec, **kwargs)
    for got, want in zip(on_disk.params, in_memory.params):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10, atol=1e-12)
    evaluated = on_disk.trace.extras["data_log_likelihood"]
    assert np.all(np.isfinite(evaluated[3::4])) and np.isnan(evaluated[0])
    assert evaluated[-1] == pytest.approx(on_disk.log_likelihood, rel=1e-12)


def test_callback_sees_every_step(blobs_3k):
    seen = []
    spec = jaxgmm.GMMSpec(3, "spherical")
    result = fit_em_online(
        jax.random.key(0), blobs_3k, spec, init=rough_params(spec), batch_size=BATCH, n_epochs=2,
        callback=lambda step, info: seen.append((step, float(info.step_size))),
    )
    assert [s for s, _ in seen] == list(range(1, result.n_iter + 1))
    assert seen[0][1] == 1.0


# (4) Bad input ---------------------------------------------------------------------------


def _fit(x, **kwargs):
    return fit_em_online(jax.random.key(0), x, jaxgmm.GMMSpec(2, "diag"), **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(step_size_decay=0.5), r"step_size_decay \(kappa\) must be in \(0.5, 1\]"),
        (dict(step_size_decay=1.2), r"step_size_decay \(kappa\) must be in \(0.5, 1\]"),
        (dict(step_size_decay=float("nan")), "step_size_decay must be a finite"),
        (dict(step_size_offset=-1.0), "step_size_offset must be >= 0"),
        (dict(batch_size=0), "batch_size must be an int >= 1"),
        (dict(batch_size=2.5), "batch_size must be an int >= 1"),
        (dict(batch_size=51), "batch_size=51 exceeds n_samples=50"),
        (dict(n_epochs=0), "n_epochs must be an int >= 1"),
        (dict(max_steps=0), "max_steps must be an int >= 1"),
        (dict(warmup_steps=-1), "warmup_steps must be an int >= 0"),
        (dict(eval_every=0), "eval_every must be an int >= 1"),
        (dict(n_samples=10.0), "n_samples applies to streams only"),
        (dict(callback=3), "callback must be callable"),
        (dict(init_subsample=1), "init_subsample must be an int >= 2"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    x = np.random.default_rng(0).normal(size=(50, 2))
    with pytest.raises(ValueError, match=message):
        _fit(x, **kwargs)


def test_bad_arrays_are_reported():
    x = np.random.default_rng(0).normal(size=(50, 2))
    x[37, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinity \(first at row 37\)"):
        _fit(x)  # found in the initialiser's subsample
    params = jaxgmm.params_from_covariances(
        np.full(2, 0.5), np.array([[-1.0, 0.0], [1.0, 0.0]]), np.ones((2, 2)), "diag"
    )
    for shuffle in (True, False):
        with pytest.raises(ValueError, match=r"NaN or infinity \(first at row 37\)"):
            _fit(x, init=params, batch_size=10, shuffle=shuffle)
    with pytest.raises(ValueError, match="fewer than n_components=2"):
        _fit(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="2D array"):
        _fit(np.zeros((5,)))


def _stream(*batches):
    return iter(batches)


@pytest.mark.parametrize(
    "batches, message",
    [
        ((np.ones((5, 2)), np.ones(4)), r"stream batch 1 must be 2D .*got shape \(4,\)"),
        ((np.ones((5, 2)), np.ones((4, 3))), "stream batch 1 has 3 features, expected 2"),
        ((np.ones((5, 2)), np.array([["a", "b"]])), "stream batch 1 must hold real numbers"),
        (
            (np.ones((5, 2)), np.ones((3, 2)), np.array([[0.0, 1.0]] * 4 + [[np.inf, 0.0]])),
            r"stream batch 2 contains NaN or infinity \(first at row 4, column 0",
        ),
        ((), "the stream yielded no samples"),
        ((np.ones((1, 2)),), "yielded 1 samples, fewer than n_components=2"),
    ],
)
def test_bad_streams_name_the_batch_and_row(batches, message):
    with pytest.raises(ValueError, match=message):
        _fit(_stream(*batches), init_subsample=100)


def test_stream_only_and_array_only_arguments():
    batches = [np.random.default_rng(i).normal(size=(20, 2)) for i in range(3)]
    with pytest.raises(ValueError, match="n_epochs applies to finite data"):
        _fit(iter(batches), n_epochs=2)
    with pytest.raises(ValueError, match="eval_every needs finite data"):
        _fit(iter(batches), eval_every=1)
    with pytest.raises(ValueError, match="x must be an array .* or an iterable"):
        _fit(3.0)
    spec = jaxgmm.GMMSpec(2, "diag", prior=make_prior("conjugate", mean_prior=(0.0, 0.0),
                                                      covariance_prior=1.0))
    with pytest.raises(ValueError, match="n_samples is required for a stream with a prior"):
        fit_em_online(jax.random.key(0), iter(batches), spec)
    with pytest.raises(ValueError, match="EM has no closed-form M-step"):
        lkj = jaxgmm.GMMSpec(3, "full", prior=make_prior("lkj"))
        fit_em_online(jax.random.key(0), batches[0], lkj, init=rough_params(lkj))


# (5) Every covariance family runs ---------------------------------------------------------


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_every_family_runs(cov_type, blobs_3k):
    spec = jaxgmm.GMMSpec(3, cov_type)
    result = fit_em_online(
        jax.random.key(0), blobs_3k, spec, init=rough_params(spec), batch_size=BATCH, n_epochs=3
    )
    assert result.n_iter == 3 * 6
    assert result.nonfinite_iteration is None
    for leaf in result.params:
        assert np.all(np.isfinite(np.asarray(leaf)))
    assert float(jnp.sum(result.params.weights)) == pytest.approx(1.0, abs=1e-6)
    assert np.all(np.isfinite(result.trace.log_likelihood))
    assert np.all(np.isfinite(result.trace.bound))
    assert result.trace.extras["weights"].shape == (result.n_iter, 3)
    # Well-separated blobs, a start near them: component k ends near centre k.
    np.testing.assert_allclose(np.asarray(result.params.means), CENTERS, atol=0.15)


def test_exported():
    assert jaxgmm.fit_em_online is fit_em_online
    assert "fit_em_online" in jaxgmm.__all__
    assert list(jaxgmm.__all__) == sorted(jaxgmm.__all__)


# --- issue 16: no non-finite result, clear errors --------------------------------------


def _iris_scaled(scale):
    from sklearn.datasets import load_iris

    data = load_iris()
    return (data.data * scale).astype(np.float32), data.target


def test_no_finite_state_raises_instead_of_returning_nan():
    """Issue 16 defect 3: iris x 1e20 in float32 returned NaN parameters."""
    x, _ = _iris_scaled(1e20)
    spec = jaxgmm.GMMSpec(3, "full")
    with pytest.raises(ValueError, match=r"init='kmeans' are not finite in float32.*standardise"):
        fit_em_online(jax.random.key(0), x, spec, batch_size=50)


def test_a_nonfinite_step_keeps_the_last_finite_state_and_says_so():
    x, labels = _iris_scaled(1e19)
    x64 = x.astype(np.float64)
    means = np.stack([x64[labels == k].mean(0) for k in range(3)])
    covs = np.stack([np.cov(x64[labels == k].T) for k in range(3)]) + 1e-3 * np.eye(4) * (
        x64.std() ** 2
    )
    prec_chol = np.swapaxes(np.linalg.inv(np.linalg.cholesky(covs)), -1, -2)
    init = jaxgmm.GMMParams(
        np.full(3, 1 / 3, np.float32), means.astype(np.float32), prec_chol.astype(np.float32)
    )
    res = fit_em_online(jax.random.key(0), x, jaxgmm.GMMSpec(3, "full"), init=init,
                        batch_size=50)
    assert all(np.all(np.isfinite(np.asarray(a))) for a in res.params)
    assert np.isfinite(res.log_likelihood)
    assert np.all(np.isfinite(res.trace.bound)) and np.all(np.isfinite(res.trace.log_likelihood))
    if res.nonfinite_iteration is not None:  # where float32 overflowed: said, and stopped
        assert res.n_iter == res.nonfinite_iteration - 1
        assert res.status == "nonfinite" and not res.converged
        assert res.restarts.status.tolist() == ["nonfinite"]
    else:
        assert res.status == "max_iter"


def test_online_float64_values_overflowing_float32_are_named():
    """Issue 16 defect 4."""
    x = np.random.default_rng(0).normal(size=(50, 2))
    x[37, 1] = 1e39
    for kwargs in ({}, {"shuffle": False, "init_subsample": 2}):
        with pytest.raises(ValueError, match=r"x has values that overflow float32.*row 37"):
            _fit(x, dtype=np.float32, **kwargs)
    batches = [x[:30], x[30:]]
    with pytest.raises(ValueError, match=r"overflow float32 .*row 7, column 1 of stream batch 1"):
        _fit(iter(batches), dtype=np.float32, init_subsample=2)


def test_online_checks_the_initial_parameters():
    """Issue 16 defect 8."""
    x = np.random.default_rng(0).normal(size=(50, 2))
    bad = jaxgmm.GMMParams(np.array([-0.5, 1.5]), x[:2], np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"init\.weights must be >= 0"):
        _fit(x, init=bad)
    bad = jaxgmm.GMMParams(np.array([0.5, 0.5]), x[:2], np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match=r"init\.prec_chol must be finite"):
        _fit(iter([x]), init=bad)
