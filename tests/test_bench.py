"""Smoke test of `python -m experiments.bench` on its smallest size."""

import csv

import numpy as np
import pytest

from experiments.bench import cli, floor, peers, protocol, workers


def test_score_float64_matches_sklearn():
    from sklearn.mixture import GaussianMixture

    x = protocol.make_data(500, 3, 2)
    gm = GaussianMixture(2, covariance_type="full", random_state=0).fit(x)
    ours = protocol.score_float64(x, gm.weights_, gm.means_, gm.covariances_, "full")
    np.testing.assert_allclose(ours, gm.score(x), rtol=1e-10)


@pytest.mark.slow  # a full benchmark run in subprocesses (105 s); opt-in with -m slow
def test_bench_smallest_size(tmp_path, monkeypatch):
    # The optional peers (when installed) are tested on their own below.
    monkeypatch.setattr(cli, "TOOLS", {t: cli.TOOLS[t] for t in ("jaxgmm", "jaxgmm-cores", "sklearn")})
    monkeypatch.setattr(cli, "cpu_cores", lambda: 2)  # forced CPU devices, any machine
    monkeypatch.setitem(cli.GRIDS, "small", [(2000, 3, 2, "full")])
    monkeypatch.setitem(
        cli.SCALING, "small", {"base": (1000, 2, 2), "n": [500, 1000], "k": [2], "d": [2]}
    )
    assert cli.main(["--sizes", "small", "--iters", "3", "--accuracy-iters", "20",
                       "--out", str(tmp_path)]) == 0
    with open(tmp_path / "bench.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["tool"] for r in rows} == {"jaxgmm", "jaxgmm-cores", "sklearn"}
    f64 = [r for r in rows if r["dtype"] == "float64"]
    lls = [float(r["final_log_likelihood_f64"]) for r in f64]
    assert len(lls) == 3 and np.isfinite(lls).all() and np.ptp(lls) < 1e-6  # same start, same EM
    # The data-parallel row really ran on 2 devices, and the peers' ratios to it are there.
    assert {r["devices"] for r in rows if r["tool"] == "jaxgmm-cores"} == {"2"}
    # Every worker ran with the compile flags (the float64 agreement above and the
    # scikit-learn reference below hold with them).
    assert all(workers.COMPILE_FLAGS in r["xla_flags"].split() for r in rows)
    sk = next(r for r in f64 if r["tool"] == "sklearn")
    cores = next(r for r in f64 if r["tool"] == "jaxgmm-cores")
    assert float(sk["ratio_peer_over_jaxgmm_cores"]) == pytest.approx(
        float(sk["s_per_iter"]) / float(cores["s_per_iter"]))
    # The float32 accuracy check: jaxgmm's float32 row carries float32 - float64 after
    # 20 iterations, each scored in float64; the float64 run is scikit-learn's 20 iterations.
    ours = {r["dtype"]: r for r in rows if r["tool"] == "jaxgmm"}
    x = protocol.make_data(2000, 3, 2)
    ref = _sklearn_fit(x, protocol.initial_parameters(x, 2, "full"), "full", 20, reg_covar=1e-6)
    ref_ll = protocol.score_float64(x, ref.weights_, ref.means_, ref.covariances_, "full")
    assert float(ours["float64"]["accuracy_log_likelihood_f64"]) == pytest.approx(ref_ll, rel=1e-9)
    assert ours["float32"]["accuracy_iters"] == "20"
    assert abs(float(ours["float32"]["float32_minus_float64"])) < 2e-5
    cores32 = next(r for r in rows if r["tool"] == "jaxgmm-cores" and r["dtype"] == "float32")
    assert abs(float(cores32["float32_minus_float64"])) < 2e-5
    assert all(float(r["s_per_iter"]) > 0 for r in rows)
    assert (tmp_path / "bench.png").exists() and (tmp_path / "scaling.png").exists()


def test_cores_row_failure_is_reported_not_fatal(tmp_path, monkeypatch, capsys):
    # e.g. a GPU machine, where JAX has no CPU devices to split the samples over.
    monkeypatch.setattr(cli, "TOOLS", {t: cli.TOOLS[t] for t in ("jaxgmm", "jaxgmm-cores")})
    monkeypatch.setattr(cli, "cpu_cores", lambda: 2)
    monkeypatch.setitem(cli.GRIDS, "small", [(200, 2, 2, "full")])
    spawn = cli.spawn

    def failing_cores(payload):
        if payload.get("tool") == "jaxgmm-cores":
            raise RuntimeError("worker failed:\nRuntimeError: jaxgmm-cores needs 2 CPU devices")
        return spawn(payload)

    monkeypatch.setattr(cli, "spawn", failing_cores)
    assert cli.main(["--dtypes", "float64", "--iters", "2", "--accuracy-iters", "0",
                       "--no-scaling", "--out", str(tmp_path)]) == 0
    assert "jaxgmm-cores: FAILED, RuntimeError: jaxgmm-cores needs 2 CPU devices" in capsys.readouterr().out
    with open(tmp_path / "bench.csv") as f:
        assert [r["tool"] for r in csv.DictReader(f)] == ["jaxgmm"]


def test_worker_xla_flags_keep_the_users_flags():
    assert workers.worker_xla_flags("") == workers.COMPILE_FLAGS
    assert workers.worker_xla_flags("--xla_dump_to=/tmp/d", devices=2).split() == [
        "--xla_dump_to=/tmp/d", workers.COMPILE_FLAGS, "--xla_force_host_platform_device_count=2"]
    # A user's own backend options win; they are not overridden or doubled.
    own = "--xla_backend_extra_options=xla_cpu_disable_new_fusion_emitters"
    assert workers.worker_xla_flags(own) == own


def test_devices_for_divides_the_samples():
    assert protocol.devices_for(1_000_000, 2) == 2
    assert protocol.devices_for(100_000, 3) == 2  # 3 does not divide 1e5
    assert protocol.devices_for(7, 4) == 1
    assert protocol.devices_for(12, 1) == 1


@pytest.mark.parametrize("cov_type", ["full", "tied", "diag", "spherical"])
def test_covariances_float64_match_jaxgmm(cov_type):
    import jaxgmm

    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 4, 4))
    covs = {"full": lambda: a @ np.swapaxes(a, 1, 2) + 0.1 * np.eye(4),
            "tied": lambda: a[0] @ a[0].T + 0.1 * np.eye(4),
            "diag": lambda: rng.uniform(0.5, 2, (3, 4)),
            "spherical": lambda: rng.uniform(0.5, 2, 3)}[cov_type]()
    params = jaxgmm.params_from_covariances(np.full(3, 1 / 3), rng.normal(size=(3, 4)), covs, cov_type)
    if cov_type in ("tied", "spherical"):
        assert params.prec_chol.shape == covs.shape  # (D, D) and (K,): jaxgmm's layouts
    got = protocol.covariances_float64(params.prec_chol, cov_type)
    assert got.shape == covs.shape
    np.testing.assert_allclose(got, covs, rtol=1e-9)
    np.testing.assert_allclose(got, np.asarray(jaxgmm.covariances(params, cov_type)), rtol=1e-9)


def test_bench_rejects_bad_dtype(tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["--dtypes", "float16", "--out", str(tmp_path)])


def test_bench_rejects_a_covariance_type_outside_the_grid(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--covariance-types", "tied", "--out", str(tmp_path)])  # small: full, diag
    assert "--covariance-types entries must be among ['diag', 'full']" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_bench_refuses_to_replace_earlier_results(tmp_path, capsys):
    (tmp_path / "bench.csv").write_text("earlier run\n")
    with pytest.raises(SystemExit):
        cli.main(["--out", str(tmp_path)])
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "bench.csv").read_text() == "earlier run\n"


def test_bench_rejects_negative_accuracy_iters(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--accuracy-iters", "-1", "--out", str(tmp_path)])
    assert "--accuracy-iters must be >= 0" in capsys.readouterr().err


def _sklearn_fit(x, init, cov_type, n_iter, reg_covar):
    """scikit-learn float64 EM from ``init``, exactly ``n_iter`` iterations."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    weights, means, covs = init
    precisions = np.linalg.inv(covs) if cov_type in ("full", "tied") else 1.0 / covs
    gm = GaussianMixture(len(weights), covariance_type=cov_type, max_iter=n_iter, tol=0.0,
                         reg_covar=reg_covar, weights_init=weights, means_init=means,
                         precisions_init=precisions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return gm.fit(x)


@pytest.mark.parametrize("cov_type", ["full", "diag"])
def test_gmmx_adapter_matches_sklearn(cov_type):
    pytest.importorskip("gmmx")
    x = protocol.make_data(2000, 3, 3)
    init = protocol.initial_parameters(x, 3, cov_type)
    out = peers.run_gmmx(x, init, cov_type, np.dtype("float32"), 4)
    assert out["n_iter"] == 4 and out["s_per_iter"] > 0
    weights, means, covs = out["params"]
    assert means.shape == (3, 3) and covs.shape == ((3, 3, 3) if cov_type == "full" else (3, 3))
    ll = protocol.score_float64(x, weights, means, covs, cov_type)
    ref = _sklearn_fit(x, init, cov_type, 4, reg_covar=1e-6)  # gmmx adds the same 1e-6
    assert abs(ll - ref.score(x)) < 1e-5  # float32 against float64
    np.testing.assert_allclose(means, ref.means_, atol=1e-3)
    # One iteration fewer is distinguishable, so the count is checked, not just the start.
    assert abs(ll - _sklearn_fit(x, init, cov_type, 3, reg_covar=1e-6).score(x)) > 1e-4


def test_gmmx_float64_is_reported_unsupported():
    pytest.importorskip("gmmx")
    assert ("gmmx", "float64") in peers.UNSUPPORTED
    x = protocol.make_data(200, 2, 2)
    with pytest.raises(ValueError, match="float32"):
        peers.run_gmmx(x, protocol.initial_parameters(x, 2, "full"), "full",
                        np.dtype("float64"), 2)


@pytest.mark.parametrize("cov_type", ["full", "diag"])
def test_pomegranate_adapter_matches_sklearn(cov_type):
    torch = pytest.importorskip("torch")
    pytest.importorskip("pomegranate")
    x = protocol.make_data(2000, 3, 3)
    init = protocol.initial_parameters(x, 3, cov_type)
    default = torch.get_default_dtype()
    out = peers.run_pomegranate(x, init, cov_type, np.dtype("float64"), 4)
    assert torch.get_default_dtype() == default  # restored
    assert out["n_iter"] == 4 and out["s_per_iter"] > 0
    # pomegranate never regularises covariances, so it is scikit-learn with reg_covar=0.
    ref = _sklearn_fit(x, init, cov_type, 4, reg_covar=0.0)
    for got, want in zip(out["params"], (ref.weights_, ref.means_, ref.covariances_)):
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)
    assert abs(protocol.score_float64(x, *out["params"], cov_type) - ref.score(x)) < 1e-10
    out32 = peers.run_pomegranate(x, init, cov_type, np.dtype("float32"), 4)
    assert abs(protocol.score_float64(x, *out32["params"], cov_type) - ref.score(x)) < 1e-4


@pytest.mark.parametrize("cov_type", ["full", "tied", "diag", "spherical"])
def test_vb_adapters_agree_from_the_shared_start(cov_type):
    # jaxgmm's VB and scikit-learn's BayesianGaussianMixture, both from the responsibilities
    # of the shared initial parameters under the one prior (protocol.vb_prior), run the same
    # iterations: two independent implementations, the same numbers.
    x = protocol.make_data(2000, 3, 3)
    init = protocol.initial_parameters(x, 3, cov_type)
    ours = peers.run_jaxgmm_vb(x, init, cov_type, np.dtype("float64"), 4)
    theirs = peers.run_sklearn_vb(x, init, cov_type, np.dtype("float64"), 4)
    assert ours["n_iter"] == theirs["n_iter"] == 4
    assert ours["s_per_iter"] > 0 and theirs["s_per_iter"] > 0
    for got, want in zip(ours["params"], theirs["params"]):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    ll = protocol.score_float64(x, *ours["params"], cov_type)
    # The iteration count matters (one fewer is distinguishable) and it is not EM.
    fewer = peers.run_sklearn_vb(x, init, cov_type, np.dtype("float64"), 3)
    assert abs(ll - protocol.score_float64(x, *fewer["params"], cov_type)) > 1e-6
    em = _sklearn_fit(x, init, cov_type, 4, reg_covar=1e-6)
    assert abs(ll - em.score(x)) > 1e-6


@pytest.mark.slow  # a benchmark run (44 s); the VB adapters' agreement is tested above
def test_bench_vb_rows_and_ratios(tmp_path, monkeypatch, capsys):
    tools = ("jaxgmm", "sklearn", "jaxgmm-vb", "sklearn-vb")
    monkeypatch.setattr(cli, "TOOLS", {t: cli.TOOLS[t] for t in tools})
    monkeypatch.setitem(cli.GRIDS, "small", [(2000, 3, 2, "full")])
    assert cli.main(["--dtypes", "float64", "--iters", "3", "--accuracy-iters", "0",
                       "--no-scaling", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    with open(tmp_path / "bench.csv") as f:
        rows = {r["tool"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(tools)
    s = {t: float(r["s_per_iter"]) for t, r in rows.items()}
    # VB / EM within each library, and scikit-learn's VB over jaxgmm's.
    assert float(rows["jaxgmm-vb"]["ratio_vb_over_em"]) == pytest.approx(s["jaxgmm-vb"] / s["jaxgmm"])
    assert float(rows["sklearn-vb"]["ratio_vb_over_em"]) == pytest.approx(s["sklearn-vb"] / s["sklearn"])
    assert float(rows["sklearn-vb"]["ratio_peer_over_jaxgmm_vb"]) == pytest.approx(
        s["sklearn-vb"] / s["jaxgmm-vb"])
    # A VB row is never set against another library's EM row.
    assert rows["sklearn-vb"]["ratio_peer_over_jaxgmm"] == ""
    assert "jaxgmm-vb / jaxgmm (VB / EM) at N=2000 D=3 K=2 full float64" in out
    assert "target <= 1.5x" in out and "sklearn-vb / jaxgmm-vb at N=2000" in out
    lls = {t: float(r["final_log_likelihood_f64"]) for t, r in rows.items()}
    assert lls["jaxgmm-vb"] == pytest.approx(lls["sklearn-vb"], abs=1e-9)
    assert lls["jaxgmm"] == pytest.approx(lls["sklearn"], abs=1e-9)
    assert abs(lls["jaxgmm-vb"] - lls["jaxgmm"]) > 1e-6


# The arithmetic floor (issue 18): the flop count, its arithmetic, the rates, the profile
# and the CLI's columns. Fast: tiny sizes, and the CLI's workers run in this process.


def test_em_flops_by_hand():
    # full at N=10, D=2, K=3: E 2 N K D^2 = 240; M 2 N K D^2 + 2 N K D = 240 + 120.
    assert floor.em_flops(10, 2, 3, "full") == {"e_step": 240, "m_step": 360, "products": 600, "exps": 30}
    assert floor.em_flops(10, 2, 3, "diag") == {"e_step": 240, "m_step": 240, "products": 480, "exps": 30}
    assert floor.em_flops(10, 2, 3, "spherical")["products"] == 4 * 10 * 3 * 2 + 2 * 10 * 3
    assert floor.em_flops(10, 2, 3, "tied")["products"] == 2 * 10 * 2 * 2 + 4 * 10 * 3 * 2
    with pytest.raises(ValueError, match="diag"):
        floor.em_flops(10, 2, 3, "banded")


def _per_sample_products(fn, n_features, n_components, n_samples):
    """jaxgmm's matrix-product flops per sample: the difference of two block sizes, so
    terms independent of the samples (offsets, O(K D^2) per block) cancel."""
    import jax.numpy as jnp

    def count(n):
        rng = np.random.default_rng(0)
        xt = jnp.asarray(rng.normal(size=(n_features, n)))
        resp = jnp.asarray(rng.uniform(size=(n_components, n)))
        return floor.dot_flops(fn, xt, resp)

    return (count(2 * n_samples) - count(n_samples)) / n_samples


@pytest.mark.parametrize("cov_type", ["full", "tied", "diag", "spherical"])
def test_em_flops_against_jaxgmm_products(cov_type):
    # The count against an independent one: the dot_generals in the jaxprs of jaxgmm's own
    # E-step (Mahalanobis) and M-step (second moments) for the family. The floor is a lower
    # bound of what jaxgmm computes; where jaxgmm does more, the test says how much.
    import jaxgmm

    d, k = 3, 4
    family = jaxgmm.model.get_family(cov_type)
    rng = np.random.default_rng(1)
    a = rng.normal(size=(k, d, d))
    covs = {"full": a @ np.swapaxes(a, 1, 2) + np.eye(d), "tied": a[0] @ a[0].T + np.eye(d),
            "diag": rng.uniform(0.5, 2, (k, d)), "spherical": rng.uniform(0.5, 2, k)}[cov_type]
    params = jaxgmm.params_from_covariances(np.full(k, 1 / k), rng.normal(size=(k, d)), covs, cov_type)
    expanded = family.has_expansion
    ours_e = _per_sample_products(
        lambda xt, r: family.mahalanobis_fm(xt, params.means, params.prec_chol, expanded), d, k, 64)
    if family.uses_data_scatter:  # tied: the blocks form first moments only
        ours_m = _per_sample_products(
            lambda xt, r: family.first_moments_fm(r, xt, params.means), d, k, 64)
    else:
        ours_m = _per_sample_products(
            lambda xt, r: family.second_moments_fm(r, xt, params.means, expanded), d, k, 64)
    flops = floor.em_flops(1, d, k, cov_type)
    assert flops["e_step"] <= ours_e and flops["m_step"] <= ours_m
    expected = {  # jaxgmm's products per sample
        "full": (2 * k * d * (d + 1), flops["m_step"]),  # E: the offset rides in a column
        "tied": (flops["e_step"], flops["m_step"]),
        "diag": (flops["e_step"], flops["m_step"]),
        "spherical": (4 * k * d, 4 * k * d),  # diag's products, per-feature scatter
    }[cov_type]
    assert (ours_e, ours_m) == expected
    if cov_type == "full":
        # float32's whitened frame forms y again and multiplies r y by [x, 1]: twice
        # the M-step's products.
        ours_w = _per_sample_products(
            lambda xt, r: family.whitened_moments_fm(r, xt, params.means, params.prec_chol), d, k, 64)
        assert ours_w == 2 * flops["m_step"]


def test_dot_flops_counts_like_xla():
    import jax
    import jax.numpy as jnp

    a, b = jnp.ones((5, 7)), jnp.ones((7, 3))
    assert floor.dot_flops(jnp.matmul, a, b) == 2 * 5 * 7 * 3
    cost = jax.jit(jnp.matmul).lower(a, b).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    if cost and "flops" in cost:
        assert cost["flops"] == 2 * 5 * 7 * 3
    batched = floor.dot_flops(lambda u, v: jnp.einsum("kde,kef->kdf", u, v), jnp.ones((4, 2, 3)), jnp.ones((4, 3, 5)))
    assert batched == 2 * 4 * 2 * 3 * 5
    scanned = floor.dot_flops(lambda u: jax.lax.scan(lambda c, _: (c @ u, None), u, None, length=3)[0],
                              jnp.ones((4, 4)))
    assert scanned == 3 * 2 * 4**3
    branch = floor.dot_flops(lambda p, u: jax.lax.cond(p, lambda: u @ u, lambda: u), True, jnp.ones((4, 4)))
    assert branch == 2 * 4**3
    with pytest.raises(ValueError, match="while"):
        floor.dot_flops(lambda u: jax.lax.fori_loop(0, jnp.sum(u).astype(int), lambda i, c: c @ u, u),
                        jnp.ones((2, 2)))


def test_floor_seconds_arithmetic():
    s = floor.floor_seconds({"e_step": 2e9, "m_step": 1e9, "exps": 5e8}, 10.0, 0.5)
    assert s == pytest.approx({"e_step": 0.2, "m_step": 0.1, "exps": 1.0, "total": 1.3})
    rates = {"gemm_gflops": {"float32": 100.0, "float64": 50.0}, "exp_gps": {"float32": 2.0, "float64": 1.0}}
    n, d, k = 10_000, 8, 8
    f64 = floor.em_floor(n, d, k, "full", "float64", rates)
    assert f64["total"] == pytest.approx((4 * n * k * d * d + 2 * n * k * d) / 50e9 + n * k / 1e9)
    assert floor.em_floor(n, d, k, "full", "float32", rates)["total"] < f64["total"]


def test_measure_rates_is_positive_per_dtype():
    rates = floor.measure_rates(("float32", "float64"), gemm_size=64, exp_elements=10_000)
    for key in ("gemm_gflops", "exp_gps", "exp_gps_elementwise", "exp_gps_summed"):
        assert set(rates[key]) == {"float32", "float64"} and min(rates[key].values()) > 0
    assert rates["exp_gps"]["float32"] == max(rates["exp_gps_elementwise"]["float32"],
                                              rates["exp_gps_summed"]["float32"])
    assert rates["gemm_size"] == 64
    assert 0 < rates["reference_compile_s"] < 60


def test_reference_compile_is_not_answered_by_a_cache():
    # Each repeat compiles a new program: with a cache, the second and third would take
    # ~1 ms, and the best of three would not be the machine's compile time.
    one = floor.measure_reference_compile(repeats=1)
    assert floor.measure_reference_compile(repeats=3) > 0.2 * one


def _uniform_product_rates(sizes, gflops):
    """Made-up product rates: ``gflops[dtype]`` for every per-block product at ``sizes``."""
    rates = {}
    for dtype, rate in gflops.items():
        rates[dtype] = {}
        for n, d, k, cov in sizes:
            for block in floor.shape_block_sizes(n, d, k, cov):
                products = floor.block_products(d, k, cov, block)
                for shape in products["e_step"] + products["m_step"]:
                    rates[dtype][floor.product_key(shape)] = rate
    return rates


_RATES = {"gemm_gflops": {"float32": 50.0, "float64": 25.0}, "exp_gps": {"float32": 1.0, "float64": 0.5},
          "product_gflops": _uniform_product_rates([(600, 2, 2, "full")], {"float32": 10.0, "float64": 5.0})}


@pytest.mark.parametrize("cov_type", ["full", "tied", "diag", "spherical"])
def test_block_products_are_the_floors_count(cov_type):
    # Over N / b blocks, the per-block GEMMs do exactly em_flops's products (an independent
    # count: the by-hand formulas above), for a block that divides N and one that does not.
    n, d, k = 12_000, 5, 3
    flops = floor.em_flops(n, d, k, cov_type)
    for block in (400, 7):
        products = floor.block_products(d, k, cov_type, block)
        for step in ("e_step", "m_step"):
            total = sum(2 * m * inner * cols for m, inner, cols in products[step]) * n / block
            assert total == pytest.approx(flops[step], rel=1e-12)
        # E-step: the inner dimension is the features (2 D for diag); M-step: the block.
        assert all(inner in (d, 2 * d) for _, inner, _ in products["e_step"])
        assert all(inner == block for _, inner, _ in products["m_step"])
    with pytest.raises(ValueError, match="spherical"):
        floor.block_products(d, k, "banded", 8)


def test_em_shape_floor_arithmetic():
    # Every product at the square GEMM's rate: the shape floor is the floor. One shape at
    # half the rate: its seconds double. The faster block size is the one taken.
    n, d, k = 100_000, 8, 8
    base = {"gemm_gflops": {"float64": 40.0}, "exp_gps": {"float64": 1.0}}
    rates = dict(base, product_gflops=_uniform_product_rates([(n, d, k, "full")], {"float64": 40.0}))
    plain = floor.em_floor(n, d, k, "full", "float64", rates)
    shape = floor.em_shape_floor(n, d, k, "full", "float64", rates)
    for part in ("e_step", "m_step", "exps", "total"):
        assert shape[part] == pytest.approx(plain[part], rel=1e-12)
    blocks = floor.shape_block_sizes(n, d, k, "full")
    assert len(blocks) == 2  # jaxgmm's 512 and 8192
    slow = floor.product_key(floor.block_products(d, k, "full", blocks[0])["e_step"][0])
    rates["product_gflops"]["float64"][slow] = 20.0
    shape = floor.em_shape_floor(n, d, k, "full", "float64", rates)
    assert shape["block_size"] == blocks[1] and shape["total"] == pytest.approx(plain["total"])
    for block in blocks:  # both slow: the E-step takes twice as long
        key = floor.product_key(floor.block_products(d, k, "full", block)["e_step"][0])
        rates["product_gflops"]["float64"][key] = 20.0
    shape = floor.em_shape_floor(n, d, k, "full", "float64", rates)
    assert shape["e_step"] == pytest.approx(2 * plain["e_step"])
    assert shape["m_step"] == pytest.approx(plain["m_step"])


def test_measure_product_rates_covers_every_product():
    import jax
    import jax.numpy as jnp

    sizes = [(2_000, 3, 2, "tied")]
    rates = floor.measure_product_rates(sizes, ("float32",))
    assert set(rates["float32"]) == set(_uniform_product_rates(sizes, {"float32": 1.0})["float32"])
    assert min(rates["float32"].values()) > 0
    # The rate is of the product itself (not optimised away, not diluted): timed another
    # way, a chain of 100 products whose operand depends on the last, within 4x.
    m, inner, cols = 64, 64, 2000
    rate = floor.measure_product_rate((m, inner, cols), 100, "float32")
    a, b = jnp.ones((m, inner)), jnp.ones((inner, cols))
    f = jax.jit(lambda a, b: jax.lax.fori_loop(0, 100, lambda i, c: a @ (b + c[0, 0] * 0), jnp.zeros((m, cols))))
    by_hand = 2 * m * inner * cols * 100 / floor.best_seconds(f, a, b) / 1e9
    assert rate / 4 < by_hand < rate * 4


@pytest.mark.parametrize("cov_type,dtype", [("full", "float32")])  # diag: the CLI test below
def test_profile_phases_tiny(cov_type, dtype):
    x = protocol.make_data(600, 2, 2)
    rows = floor.profile_phases(x, protocol.initial_parameters(x, 2, cov_type), cov_type, np.dtype(dtype), _RATES)
    by = {r["phase"]: r for r in rows}
    assert list(by) == list(floor.PHASES)
    assert all(r["seconds"] > 0 for r in rows)
    per_iter = floor.PHASES[1:5]
    assert by[floor.PHASES[5]]["seconds"] == pytest.approx(sum(by[p]["seconds"] for p in per_iter))
    total = floor.em_floor(600, 2, 2, cov_type, dtype, _RATES)
    assert by[floor.PHASES[6]]["floor_s"] == pytest.approx(total["total"])
    assert by[floor.PHASES[1]]["floor_s"] == pytest.approx(total["e_step"])
    assert by[floor.PHASES[2]]["floor_s"] == pytest.approx(total["exps"])
    shape = floor.em_shape_floor(600, 2, 2, cov_type, dtype, _RATES)
    assert by[floor.PHASES[6]]["shape_floor_s"] == pytest.approx(shape["total"])
    assert by[floor.PHASES[3]]["shape_floor_s"] == pytest.approx(shape["m_step"])
    for r in rows:
        if r["floor_s"] is not None:
            assert r["ratio_over_floor"] == pytest.approx(r["seconds"] / r["floor_s"])
            assert r["ratio_over_shape_floor"] == pytest.approx(r["seconds"] / r["shape_floor_s"])
            assert r["jaxgmm_gflop"] >= r["floor_gflop"]  # the floor is a lower bound


def test_bench_prints_floor_and_ratio_columns(tmp_path, monkeypatch, capsys):
    # The whole command line at a tiny size, its workers run in this process (JSON round
    # trip as from a subprocess), scikit-learn the one tool: the rates, each row's floor
    # and ratio, the table, floor.json and the profile.
    import json

    monkeypatch.setattr(cli, "TOOLS", {"sklearn": cli.TOOLS["sklearn"]})
    monkeypatch.setattr(cli, "spawn", lambda job: json.loads(json.dumps(cli.run_job(job))))
    # The profile's own worker is tested above (its compiles would take most of the time
    # here); its wiring, table and file are tested with its rows made up.
    def profile_worker(job):
        size = {"n_samples": job["n"], "n_features": job["d"], "n_components": job["k"],
                "covariance_type": job["cov"], "dtype": job["dtype"]}
        return [dict(size, phase=p, seconds=1e-3, floor_s=None, ratio_over_floor=None,
                     shape_floor_s=None, ratio_over_shape_floor=None, floor_gflop=None, jaxgmm_gflop=None, block_size=400, n_blocks=1)
                for p in floor.PHASES]

    monkeypatch.setattr(cli, "profile_worker", profile_worker)
    monkeypatch.setitem(cli.GRIDS, "small", [(400, 2, 2, "diag")])
    assert cli.main(["--dtypes", "float64", "--iters", "2", "--accuracy-iters", "0", "--no-scaling",
                     "--gemm-size", "64", "--exp-elements", "10000", "--profile",
                     "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "this machine's rates (the floor's): GEMM float64" in out
    assert "floor s/iter" in out and "tool / floor" in out
    assert "x the floor" in out
    assert "jaxgmm EM per phase at N=400 D=2 K=2 diag float64" in out and "E-step: quadratic forms" in out
    with open(tmp_path / "bench.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["ratio_over_floor"]) == pytest.approx(
        float(row["s_per_iter"]) / float(row["floor_s_per_iter"]))
    saved = json.loads((tmp_path / "floor.json").read_text())
    assert saved["rates"]["gemm_gflops"]["float64"] > 0 and saved["rates"]["gemm_size"] == 64
    expected = floor.em_floor(400, 2, 2, "diag", "float64", saved["rates"])["total"]
    assert float(row["floor_s_per_iter"]) == pytest.approx(expected)
    assert saved["floors"][0]["floor_total_s"] == pytest.approx(expected)
    # The shape floor: from the same run's product rates, one per product of this size.
    products = floor.block_products(2, 2, "diag", 400)
    assert set(saved["rates"]["product_gflops"]["float64"]) == {
        floor.product_key(p) for p in products["e_step"] + products["m_step"]}
    assert "per-block products" in out and "tool / shape" in out and "x the shape floor" in out
    shape = floor.em_shape_floor(400, 2, 2, "diag", "float64", saved["rates"])["total"]
    assert float(row["shape_floor_s_per_iter"]) == pytest.approx(shape)
    assert float(row["ratio_over_shape_floor"]) == pytest.approx(float(row["s_per_iter"]) / shape)
    assert saved["floors"][0]["shape_floor_total_s"] == pytest.approx(shape)
    assert saved["ratios"][0]["tool"] == "sklearn"
    # The rates measured again at the end of the run, and their drift printed.
    assert saved["rates_after"]["gemm_gflops"]["float64"] > 0
    assert saved["rates_after"]["reference_compile_s"] > 0
    assert "the host's rates at the end of the run against its start: GEMM float64" in out
    with open(tmp_path / "profile.csv") as f:
        assert [r["phase"] for r in csv.DictReader(f)] == list(floor.PHASES)


def test_speed_drift_lines_report_each_rate_and_warn_past_the_tolerance():
    before = {"gemm_gflops": {"float32": 200.0, "float64": 100.0},
              "exp_gps": {"float32": 4.0, "float64": 2.0}, "reference_compile_s": 0.100}
    steady = {"gemm_gflops": {"float32": 190.0, "float64": 105.0},
              "exp_gps": {"float32": 4.0, "float64": 1.9}, "reference_compile_s": 0.108}
    (line,) = cli.speed_drift_lines(before, steady)
    assert "GEMM float32 200 -> 190 GFLOP/s (-5%)" in line
    assert "GEMM float64 100 -> 105 GFLOP/s (+5%)" in line
    assert "exp float64 2 -> 1.9 G/s (-5%)" in line
    assert "reference compile 0.100 -> 0.108 s (+8%)" in line
    drifted = dict(steady, gemm_gflops={"float32": 150.0, "float64": 105.0},
                   reference_compile_s=0.125)
    lines = cli.speed_drift_lines(before, drifted)
    assert len(lines) == 2 and lines[1].startswith("warning: GEMM float32, reference compile changed")
    # A dtype measured only at the start (or a run without the reference) is left out.
    (line,) = cli.speed_drift_lines(before, {"gemm_gflops": {"float64": 100.0},
                                             "exp_gps": {"float64": 2.0}})
    assert "float32" not in line and "reference compile" not in line
