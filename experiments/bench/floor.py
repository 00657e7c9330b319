"""The arithmetic floor of one EM iteration on this machine (issue 18): the machine's
measured GEMM and exp rates (``measure_rates``), the matrix-product flops and exps one
EM iteration must do per covariance type (``em_flops``), the floor they give
(``floor_seconds``: flops at the GEMM rate plus one exp per sample and component at the
exp rate), the same products as the per-block GEMMs they are (``block_products``) and the
floor at the measured rate of each of those shapes (``em_shape_floor``: EM's products are
skinny, and the square GEMM's rate is not theirs), the matrix-product flops of a traced
JAX function (``dot_flops``, to compare jaxgmm's own products with the count) and a
per-phase profile of jaxgmm's EM iteration, each phase against its own floors
(``profile_phases``)."""

from __future__ import annotations

import math
import time

import numpy as np

# The rate measurement's sizes: a 2048 x 2048 GEMM (large enough for the BLAS to reach its
# rate on a few cores) and 1e7 exps (well past every cache).
GEMM_SIZE = 2048
EXP_ELEMENTS = 10_000_000


def best_seconds(fn, *args, repeats=3, budget_s=1.0, max_repeats=20):
    """Best-of wall time of ``fn(*args)`` (a jitted or compiled function), warm-up call
    excluded, waiting on the result (`jax.block_until_ready`): ``repeats`` calls, or
    more (up to ``max_repeats``) while they take under ``budget_s`` in all."""
    import jax

    jax.block_until_ready(fn(*args))  # warm-up: compile, first touch of the pages
    times = []
    while len(times) < repeats or (sum(times) < budget_s and len(times) < max_repeats):
        begin = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - begin)
    return min(times)


def measure_rates(
    dtypes=("float32", "float64"), gemm_size=GEMM_SIZE, exp_elements=EXP_ELEMENTS, sizes=()
):
    """This machine's GEMM rate (GFLOP/s: a jitted ``a @ b`` of two ``gemm_size`` square
    matrices, 2 n^3 flops) and exp rate (G exp/s, over ``exp_elements`` uniform values in
    [-1, 1]) per dtype, each the best of a few timed calls after a warm-up. The exp rate
    is the better of ``jnp.exp(x)`` (an array written back) and ``jnp.sum(jnp.exp(x))``
    (the exps consumed by a reduction, as EM's log-sum-exp consumes them); both are kept.

    With ``sizes`` ((n_samples, n_features, n_components, covariance_type) tuples) it also
    measures the rate of each per-block product EM needs there (`measure_product_rates`).

    Returns a JSON-ready dict: ``gemm_gflops``, ``exp_gps``, ``exp_gps_elementwise``,
    ``exp_gps_summed`` ({dtype: rate}), ``product_gflops`` ({dtype: {product_key: rate}},
    empty without ``sizes``), ``reference_compile_s`` (`measure_reference_compile`), the
    sizes, and JAX's version, backend and devices.
    float64 needs ``jax_enable_x64`` (the benchmark's workers set it)."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    out = {
        "gemm_size": int(gemm_size),
        "exp_elements": int(exp_elements),
        "gemm_gflops": {},
        "exp_gps": {},
        "exp_gps_elementwise": {},
        "exp_gps_summed": {},
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "devices": len(jax.devices()),
    }
    matmul = jax.jit(jnp.matmul)
    exp = jax.jit(jnp.exp)
    summed_exp = jax.jit(lambda v: jnp.sum(jnp.exp(v)))
    for name in dtypes:
        dtype = jnp.dtype(name)
        # Drawn in NumPy: no random-number program to compile before the timing.
        a, b = jnp.asarray(rng.standard_normal((2, gemm_size, gemm_size)).astype(name))
        if a.dtype != dtype:
            raise ValueError(f"{name} arrays need jax_enable_x64 (JAX made {a.dtype})")
        t_gemm = best_seconds(matmul, a, b)
        x = jnp.asarray(rng.uniform(-1.0, 1.0, exp_elements).astype(name))
        elementwise = exp_elements / best_seconds(exp, x) / 1e9
        summed = exp_elements / best_seconds(summed_exp, x) / 1e9
        out["gemm_gflops"][name] = 2.0 * gemm_size**3 / t_gemm / 1e9
        out["exp_gps_elementwise"][name] = elementwise
        out["exp_gps_summed"][name] = summed
        out["exp_gps"][name] = max(elementwise, summed)
    out["product_gflops"] = measure_product_rates([tuple(s) for s in sizes], dtypes)
    out["reference_compile_s"] = measure_reference_compile()
    return out


def measure_reference_compile(repeats=3):
    """Seconds to trace, lower and compile a fixed program that is not jaxgmm's (a
    mixture E-step and M-step block loop written in plain `jax.numpy`, K = D = 16,
    float32), best of ``repeats``: the machine's compile speed at the time of the run, to
    read jaxgmm's ``compile_s`` against (this machine's compile time moves with the host's
    load by 20-50% from hour to hour). Each repeat has its own block count, so no compile
    cache can answer it."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    k = d = 16
    times = []
    for i in range(repeats):
        n_blocks = 101 + i  # a distinct program each time

        def block_pass(xs, means, prec):
            def body(b, acc):
                y = prec @ xs[b]  # (D, n)
                logits = means @ y - 0.5 * jnp.sum(y * y, axis=0)  # (K, n)
                resp = jax.nn.softmax(logits, axis=0)
                return acc[0] + resp @ xs[b].T, acc[1] + resp @ (y * y).T

            zeros = (jnp.zeros((k, d), xs.dtype), jnp.zeros((k, d), xs.dtype))
            return lax.fori_loop(0, xs.shape[0], body, zeros)

        shapes = (
            jax.ShapeDtypeStruct((n_blocks, d, 1024), jnp.float32),
            jax.ShapeDtypeStruct((k, d), jnp.float32),
            jax.ShapeDtypeStruct((d, d), jnp.float32),
        )
        begin = time.perf_counter()
        jax.jit(block_pass).lower(*shapes).compile()
        times.append(time.perf_counter() - begin)
    return min(times)


# Matrix-product flops (2 per multiply-add) of one EM iteration per covariance type, as
# (E-step, M-step) functions of (N, D, K); see `em_flops`.
_PRODUCT_FLOPS = {
    "full": lambda n, d, k: (2 * n * k * d * d, 2 * n * k * d * d + 2 * n * k * d),
    "tied": lambda n, d, k: (2 * n * d * d + 2 * n * k * d, 2 * n * k * d),
    "diag": lambda n, d, k: (4 * n * k * d, 4 * n * k * d),
    "spherical": lambda n, d, k: (2 * n * k * d, 2 * n * k * d + 2 * n * k),
}


def em_flops(n_samples, n_features, n_components, covariance_type):
    """The arithmetic one EM iteration must do: matrix-product flops of the E-step and
    of the M-step (2 flops per multiply-add) and the number of exps.

    Counted: the products whose cost grows with the number of samples N, written as the
    GEMMs an efficient implementation runs (D features, K components, P_k the upper
    Cholesky factor of the precision, precision = P_k P_k^T). Not counted, so the floor
    is a lower bound: element-wise work and reductions over one axis (squares and sums
    of squares, the max, subtract, divide of the log-sum-exp, r_nk times a vector), and
    everything independent of N (the M-step's O(K D^3) factorisations).

    * ``full``: E-step, the whitened residuals y_nk = P_k^T (x_n - mu_k) for all k at
      once, one (N, D) x (D, K D) GEMM (the offsets P_k^T mu_k are O(K D^2)), 2 N K D^2;
      the quadratic form |y_nk|^2 is element-wise. M-step, the weighted scatter
      sum_n r_nk x_n x_n^T (about a reference point), one (K D, N) x (N, D) GEMM of the
      rows r_nk x_n against x, 2 N K D^2, and the first moments sum_n r_nk x_n, a
      (K, N) x (N, D) GEMM, 2 N K D. Total 4 N K D^2 + 2 N K D.
    * ``diag`` (precisions p_kd): E-step, sum_d p_kd (x_nd - mu_kd)^2 =
      sum_d p_kd x_nd^2 - 2 sum_d p_kd mu_kd x_nd + const_k, one (N, 2D) x (2D, K) GEMM
      of [x^2, x], 4 N K D. M-step, sum_n r_nk [x_n^2, x_n], one (K, N) x (N, 2D) GEMM,
      4 N K D. Total 8 N K D.
    * ``spherical`` (precision p_k): E-step, p_k |x_n|^2 - 2 p_k mu_k . x_n + const_k;
      |x_n|^2 is one reduction per sample shared by all components, so the product is
      x mu^T, (N, D) x (D, K), 2 N K D. M-step, the first moments (2 N K D) and
      sum_n r_nk |x_n|^2, (K, N) x (N, 1), 2 N K. Total 4 N K D + 2 N K.
    * ``tied`` (one P): E-step, y_n = P^T x_n, (N, D) x (D, D), 2 N D^2, then
      |y_n - o_k|^2 = |y_n|^2 - 2 o_k . y_n + |o_k|^2 with o_k = P^T mu_k, the cross
      term (N, D) x (D, K), 2 N K D. M-step, the first moments, 2 N K D: the scatter
      sum_n x_n x_n^T about a reference point does not change between iterations, so
      it is taken once per fit (not counted), and the scatter about the means is
      O(K D^2) from it and the first moments (jaxgmm does this where the expanded form
      is accurate, `jaxgmm.model.covariance.use_expansion`; scikit-learn forms the
      scatter every iteration). Total 2 N D^2 + 4 N K D.

    Exps: N K, one per sample and component (the log-sum-exp's exps, reused for the
    responsibilities as jaxgmm reuses them); the N logs are not counted.

    Returns a dict of ints: ``e_step`` and ``m_step`` (flops), ``products`` (their sum),
    ``exps``.
    """
    if covariance_type not in _PRODUCT_FLOPS:
        raise ValueError(
            f"covariance_type must be one of {sorted(_PRODUCT_FLOPS)}, got {covariance_type!r}"
        )
    n, d, k = int(n_samples), int(n_features), int(n_components)
    e_step, m_step = _PRODUCT_FLOPS[covariance_type](n, d, k)
    return {"e_step": e_step, "m_step": m_step, "products": e_step + m_step, "exps": n * k}


def floor_seconds(flops, gemm_gflops, exp_gps):
    """The floor of an `em_flops` count: its E-step and M-step products at
    ``gemm_gflops`` (GFLOP/s) and its exps at ``exp_gps`` (G exp/s). Returns seconds:
    ``e_step`` (products), ``m_step`` (products), ``exps`` and ``total`` (their sum)."""
    e_step = flops["e_step"] / (gemm_gflops * 1e9)
    m_step = flops["m_step"] / (gemm_gflops * 1e9)
    exps = flops["exps"] / (exp_gps * 1e9)
    return {"e_step": e_step, "m_step": m_step, "exps": exps, "total": e_step + m_step + exps}


def em_floor(n_samples, n_features, n_components, covariance_type, dtype, rates):
    """Seconds per EM iteration at the floor for ``dtype`` under ``rates`` (from
    `measure_rates`): `floor_seconds` of `em_flops`."""
    return floor_seconds(
        em_flops(n_samples, n_features, n_components, covariance_type),
        rates["gemm_gflops"][dtype],
        rates["exp_gps"][dtype],
    )


# The floor's products as the per-block GEMMs C (m, n) = A (m, inner) @ B (inner, n) an
# implementation runs on blocks of b samples, per covariance type: (E-step, M-step) lists
# of (m, inner, n) as functions of (D, K, b); see `block_products`.
_BLOCK_PRODUCTS = {
    "full": lambda d, k, b: ([(k * d, d, b)], [(k * d, b, d), (k, b, d)]),
    "tied": lambda d, k, b: ([(d, d, b), (k, d, b)], [(k, b, d)]),
    "diag": lambda d, k, b: ([(k, 2 * d, b)], [(k, b, 2 * d)]),
    "spherical": lambda d, k, b: ([(k, d, b)], [(k, b, d), (k, b, 1)]),
}
# Block sizes at which the products' rates are measured, besides jaxgmm's own: the floor
# takes the faster, so it is not tied to jaxgmm's choice.
SHAPE_BLOCK_SIZES = (8192,)


def block_products(n_features, n_components, covariance_type, block_size):
    """`em_flops`'s products as per-block GEMMs on blocks of ``block_size`` samples:
    ``{"e_step": [(m, inner, n), ...], "m_step": [...]}``, C (m, n) = A (m, inner) @ B
    (inner, n). Over N / block_size blocks their flops, 2 m inner n each, are `em_flops`'s.
    The E-step's inner dimension is the number of features (2 D for diag) however the
    product is laid out; the M-step's is the block."""
    if covariance_type not in _BLOCK_PRODUCTS:
        raise ValueError(
            f"covariance_type must be one of {sorted(_BLOCK_PRODUCTS)}, got {covariance_type!r}"
        )
    e_step, m_step = _BLOCK_PRODUCTS[covariance_type](
        int(n_features), int(n_components), int(block_size)
    )
    return {"e_step": e_step, "m_step": m_step}


def product_key(shape):
    """The JSON key of a per-block product (m, inner, n): ``"m x inner x n"``."""
    return " x ".join(str(int(v)) for v in shape)


def shape_block_sizes(n_samples, n_features, n_components, covariance_type):
    """The block sizes the shape floor tries at this size: jaxgmm's own
    (`jaxgmm.model.default_block_size`) and `SHAPE_BLOCK_SIZES`, at most n_samples."""
    from jaxgmm.model import default_block_size

    own = default_block_size(n_samples, n_components, n_features, covariance_type)
    return sorted({own, *(min(int(n_samples), b) for b in SHAPE_BLOCK_SIZES)})


def measure_product_rate(shape, n_blocks, dtype, pool=4):
    """GFLOP/s of one per-block product ``shape`` (m, inner, n) in ``dtype``, run
    ``n_blocks`` times in one jitted `lax.fori_loop` (as a blocked pass runs it), operands
    cycling through ``pool`` pre-drawn pairs (they stay in cache, as a fused pass's do):
    the best of the four layouts (A or A^T stored, B or B^T stored; XLA:CPU's rate
    differs by up to 3x between them), each best of a few calls (`best_seconds`)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    m, inner, n = (int(v) for v in shape)
    rng = np.random.default_rng(0)
    best = 0.0
    for a_t in (False, True):
        for b_t in (False, True):
            a_shape = (pool, inner, m) if a_t else (pool, m, inner)
            b_shape = (pool, n, inner) if b_t else (pool, inner, n)
            a = jnp.asarray(rng.standard_normal(a_shape).astype(dtype))
            b = jnp.asarray(rng.standard_normal(b_shape).astype(dtype))

            def run(a, b, a_t=a_t, b_t=b_t):
                def body(i, _):
                    ai, bi = a[i % pool], b[i % pool]
                    return (ai.T if a_t else ai) @ (bi.T if b_t else bi)

                # The carry is the last product: every iteration's product is computed, and
                # nothing else is (no reduction of the output).
                return lax.fori_loop(0, n_blocks, body, jnp.zeros((m, n), a.dtype))

            seconds = best_seconds(jax.jit(run), a, b)
            best = max(best, 2.0 * m * inner * n * n_blocks / seconds / 1e9)
    return best


def measure_product_rates(sizes, dtypes):
    """The rate of every per-block product (`block_products`) the shape floor needs at
    ``sizes`` ((n_samples, n_features, n_components, covariance_type) tuples), at each
    of `shape_block_sizes`: ``{dtype: {product_key: GFLOP/s}}``."""
    rates = {name: {} for name in dtypes}
    for n_samples, n_features, n_components, covariance_type in sizes:
        for block in shape_block_sizes(n_samples, n_features, n_components, covariance_type):
            products = block_products(n_features, n_components, covariance_type, block)
            n_blocks = -(-int(n_samples) // block)
            for shape in products["e_step"] + products["m_step"]:
                for name in dtypes:
                    key = product_key(shape)
                    if key not in rates[name]:
                        rates[name][key] = measure_product_rate(shape, n_blocks, name)
    return rates


def em_shape_floor(n_samples, n_features, n_components, covariance_type, dtype, rates):
    """Seconds per EM iteration when every product of `em_flops` runs at the measured
    rate of its own per-block shape (``rates["product_gflops"]``, `measure_product_rates`)
    instead of the square GEMM's, at the better of `shape_block_sizes`; the exps as in
    `em_floor`. Same keys as `floor_seconds`, plus ``block_size`` (the one taken)."""
    product_rates = rates["product_gflops"][dtype]
    exps = int(n_samples) * int(n_components) / (rates["exp_gps"][dtype] * 1e9)
    best = None
    for block in shape_block_sizes(n_samples, n_features, n_components, covariance_type):
        products = block_products(n_features, n_components, covariance_type, block)
        per_block = int(n_samples) / block  # blocks, without padding: em_flops's count
        parts = {
            step: sum(
                2.0 * m * inner * n * per_block / (product_rates[product_key((m, inner, n))] * 1e9)
                for m, inner, n in products[step]
            )
            for step in ("e_step", "m_step")
        }
        total = parts["e_step"] + parts["m_step"] + exps
        if best is None or total < best["total"]:
            best = dict(parts, exps=exps, total=total, block_size=block)
    return best


def dot_flops(fn, *args):
    """Matrix-product flops (2 per multiply-add of every ``dot_general``) of one call
    ``fn(*args)``, counted in its jaxpr: sub-jaxprs (jit, custom rules) are entered, a
    ``cond`` counts its costliest branch, a ``scan`` its body times its length. A
    ``while`` loop has no static trip count and raises ValueError."""
    import jax

    return _jaxpr_dot_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def _jaxpr_dot_flops(jaxpr):
    import jax

    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[c] for c in contract)
        elif name == "cond":
            total += max(_jaxpr_dot_flops(b.jaxpr) for b in eqn.params["branches"])
        elif name == "while":
            raise ValueError("dot_flops: a while loop has no static trip count")
        else:
            inner = [
                p.jaxpr if isinstance(p, jax.extend.core.ClosedJaxpr) else p
                for p in eqn.params.values()
                if isinstance(p, (jax.extend.core.ClosedJaxpr, jax.extend.core.Jaxpr))
            ]
            count = sum(_jaxpr_dot_flops(j) for j in inner)
            total += count * (eqn.params["length"] if name == "scan" else 1)
    return total


def _compile(fn, args, options):
    """``jax.jit(fn)`` compiled for ``args`` with XLA ``options`` ((name, value) pairs,
    as jaxgmm's driver compiles EM's step), or without them where this jaxlib lacks one."""
    import jax

    lowered = jax.jit(fn).lower(*args)
    if not options:
        return lowered.compile()
    try:
        return lowered.compile(dict(options))
    except Exception as error:  # noqa: BLE001 - the type differs across jaxlib versions
        if "compile option" not in str(error):
            raise
        return lowered.compile()


def _sum_over_blocks(block_fn, n_blocks):
    """Pytree sum of ``block_fn(i)`` over ``n_blocks`` blocks under `lax.fori_loop`, as
    jaxgmm's blocked pass sums its blocks (one compiled block body, starting from zeros)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    zeros = jax.tree_util.tree_map(
        lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(block_fn, 0)
    )
    return lax.fori_loop(
        0, n_blocks, lambda i, acc: jax.tree_util.tree_map(jnp.add, acc, block_fn(i)), zeros
    )


def _log_sum_exp_block(wlp, weight):
    """jaxgmm's log-sum-exp and responsibilities of one (K, n) block, as its blocked
    pass computes them (`jaxgmm.model.blocked`'s block body, one exp per element reused
    for the responsibilities), reduced to (sum_n log p(x_n), nk) so nothing is dropped."""
    import jax.numpy as jnp
    from jax import lax

    top = lax.stop_gradient(jnp.max(wlp, axis=0))
    shifted = jnp.exp(wlp - top)
    total = jnp.sum(shifted, axis=0)
    log_norm = (top + jnp.log(total)) * weight
    resp = shifted / total * weight
    return jnp.sum(log_norm), jnp.sum(resp, axis=1)


PHASES = (
    "layout (once per fit)",
    "E-step: quadratic forms",
    "E-step: log-sum-exp, responsibilities",
    "M-step: weighted scatter",
    "M-step: parameters from statistics",
    "sum of the per-iteration phases",
    "EM step (one jitted fitter.step)",
)


def profile_phases(x, init, covariance_type, dtype, rates):
    """Seconds of each phase of one jaxgmm EM iteration on ``x`` (n_samples, n_features)
    from ``init`` (weights, means, covariances), each compiled on its own with the EM
    step's XLA options and timed by `best_seconds`, beside its floor at ``rates``.

    The phases run over jaxgmm's own layout (the EM fitter's ``prepare`` hook: blocks of
    `jaxgmm.model.default_block_size`, feature-major) one block at a time under
    `lax.fori_loop`, as EM's blocked pass does, each from the previous phase's output
    computed beforehand (so the fused pass's savings are not in their sum; the last row
    is the whole step): the quadratic forms are jaxgmm's
    `jaxgmm.model.density.weighted_log_prob_fm` (the family's Mahalanobis form, the
    expanded one where `jaxgmm.model.covariance.use_expansion` allows it at ``init``);
    the log-sum-exp and responsibilities re-implement the block body's few lines
    (``_log_sum_exp_block``); the weighted scatter is the family's
    ``whitened_moments_fm`` where `jaxgmm.model.blocked.uses_whitened_frame` (float32
    full), tied's ``first_moments_fm`` and ``scatter_from_data_scatter`` where the
    expanded form is used, and ``second_moments_fm`` otherwise, as the blocked pass
    chooses; the
    parameters from statistics are `jaxgmm.model.stats_from_moments`,
    `jaxgmm.em.params_from_stats` and `jaxgmm.em.em_bound_from_stats`; the step is the EM
    fitter's own ``step`` (its ``jaxgmm_gflop`` counts the products of the blocked pass's
    block body, `jaxgmm.model.blocked.block_moments_branch_fm` in the form taken at
    ``init``).

    ``rates`` must hold the product rates at this size (`measure_rates` with ``sizes``).

    Returns one dict per phase (`PHASES`): ``phase``, ``seconds``, ``floor_s`` (None for
    phases the floor does not count), ``ratio_over_floor``, ``shape_floor_s`` and
    ``ratio_over_shape_floor`` (the same against `em_shape_floor`), ``floor_gflop`` and
    ``jaxgmm_gflop`` (matrix-product GFLOP of the floor and of jaxgmm's code, `dot_flops`;
    None where not counted), ``block_size`` and ``n_blocks``.
    """
    import jax
    import jax.numpy as jnp
    from jax import lax

    import jaxgmm
    from jaxgmm.model.blocked import block_moments_branch_fm, uses_whitened_frame
    from jaxgmm.model.covariance import use_expansion
    from jaxgmm.model.density import weighted_log_prob_fm

    n_samples, n_features = x.shape
    n_components = init[1].shape[0]
    family = jaxgmm.model.get_family(covariance_type)
    spec = jaxgmm.GMMSpec(n_components, covariance_type)
    xj = jnp.asarray(x, dtype)
    params = jaxgmm.params_from_covariances(*[jnp.asarray(a, dtype) for a in init], covariance_type)
    fitter = jaxgmm.em.em_fitter(spec, 0.0)
    options = fitter.hooks.compile_options
    expanded = bool(use_expansion(family, params.means, params.prec_chol))
    whitened = uses_whitened_frame(spec, xj.dtype)

    prepare = _compile(fitter.hooks.prepare, (xj,), ())
    data = prepare(xj)
    n_blocks, _, block_size = data.blocks.shape

    def quadratic_block(xt, p):
        return weighted_log_prob_fm(xt, p, spec, expanded)

    # Tied's blocks form only first moments where the expanded form is used; the scatter
    # then comes from the layout's `DataScatter` (`accumulate_moments_fm`).
    from_data_scatter = expanded and data.data_scatter is not None

    def scatter_block(resp, xt, p):
        if whitened:
            return family.whitened_moments_fm(resp, xt, p.means, p.prec_chol)
        if from_data_scatter:
            first = family.first_moments_fm(resp, xt, p.means)
            return first, jnp.zeros(family.scatter_shape(*first.shape), first.dtype)
        return family.second_moments_fm(resp, xt, p.means, expanded)

    def quadratic(d, p):
        return _sum_over_blocks(
            lambda i: jnp.sum(quadratic_block(d.blocks[i], p) * d.weight[i], axis=1), n_blocks
        )

    def log_sum_exp(wlp, d):
        return _sum_over_blocks(lambda i: _log_sum_exp_block(wlp[i], d.weight[i]), n_blocks)

    def scatter(resp, d, p):
        first, second = _sum_over_blocks(lambda i: scatter_block(resp[i], d.blocks[i], p), n_blocks)
        if from_data_scatter:
            nk = jnp.sum(resp, axis=(0, 2))
            second = family.scatter_from_data_scatter(d.data_scatter, first, nk, p.means)
        return first, second

    def from_statistics(moments, p):
        _, stats = jaxgmm.model.stats_from_moments(moments, p, spec)
        new = jaxgmm.em.params_from_stats(stats, spec)
        return new, jaxgmm.em.em_bound_from_stats(stats, new, spec)

    # Each phase's input, computed beforehand (and kept in memory: N K values per array).
    wlp = jax.jit(lambda d, p: lax.map(lambda xt: quadratic_block(xt, p), d.blocks))(data, params)
    resp = (
        jax.jit(lambda w: lax.map(lambda b: jnp.exp(b - jax.nn.logsumexp(b, axis=0)), w))(wlp)
        * data.weight[:, None, :]
    )
    state = fitter.init(jax.random.key(0), params, data)
    key = jax.random.key(0)

    timed = {PHASES[0]: best_seconds(prepare, xj)}
    outputs = {}
    for phase, fn, args in (
        (PHASES[1], quadratic, (data, params)),
        (PHASES[2], log_sum_exp, (wlp, data)),
        (PHASES[3], scatter, (resp, data, params)),
    ):
        compiled = _compile(fn, args, options)
        timed[phase] = best_seconds(compiled, *args)
        outputs[phase] = compiled(*args)
    # The pass's statistics, from the phases' own outputs (what EM's blocked pass sums).
    (log_likelihood, nk), (first, second) = outputs[PHASES[2]], outputs[PHASES[3]]
    moments = jaxgmm.model.Moments(
        log_likelihood=log_likelihood,
        nk=nk,
        first=first,
        second=second,
        n_samples=jnp.sum(data.weight),
    )
    compiled = _compile(from_statistics, (moments, params), options)
    timed[PHASES[4]] = best_seconds(compiled, moments, params)
    timed[PHASES[5]] = sum(timed[p] for p in PHASES[1:5])
    step = _compile(fitter.step, (key, state, data), options)
    timed[PHASES[6]] = best_seconds(step, key, state, data)

    flops = em_flops(n_samples, n_features, n_components, covariance_type)
    floor = em_floor(n_samples, n_features, n_components, covariance_type, str(xj.dtype), rates)
    block_x, block_r = data.blocks[0], resp[0]
    ours_e = n_blocks * dot_flops(quadratic_block, block_x, params)
    ours_m = n_blocks * dot_flops(scatter_block, block_r, block_x, params)
    # The fused block body's own products (where the E-step and the scatter each form
    # the same product, it counts twice: XLA does not merge them).
    ours_pass = n_blocks * dot_flops(
        lambda xt, w, p: block_moments_branch_fm(xt, p, spec, w, expanded, not from_data_scatter),
        block_x,
        data.weight[0],
        params,
    )
    shape = em_shape_floor(
        n_samples, n_features, n_components, covariance_type, str(xj.dtype), rates
    )
    counted = {  # phase: (floor seconds, shape floor seconds, floor flops, jaxgmm's flops)
        PHASES[1]: (floor["e_step"], shape["e_step"], flops["e_step"], ours_e),
        PHASES[2]: (floor["exps"], shape["exps"], 0, 0),
        PHASES[3]: (floor["m_step"], shape["m_step"], flops["m_step"], ours_m),
        PHASES[5]: (floor["total"], shape["total"], flops["products"], ours_e + ours_m),
        PHASES[6]: (floor["total"], shape["total"], flops["products"], ours_pass),
    }
    rows = []
    for phase in PHASES:
        floor_s, shape_s, floor_flops, ours = counted.get(phase, (None, None, None, None))
        rows.append(
            dict(
                phase=phase,
                seconds=timed[phase],
                floor_s=floor_s,
                ratio_over_floor=None if floor_s is None else timed[phase] / floor_s,
                shape_floor_s=shape_s,
                ratio_over_shape_floor=None if shape_s is None else timed[phase] / shape_s,
                floor_gflop=None if floor_flops is None else floor_flops / 1e9,
                jaxgmm_gflop=None if ours is None else ours / 1e9,
                block_size=int(block_size),
                n_blocks=int(n_blocks),
            )
        )
    return rows


def profile_worker(job):
    """`profile_phases` on the benchmark's data and shared start for one (size, dtype)
    job (runs in a benchmark subprocess); rows carry the size and dtype."""
    from experiments.bench.protocol import initial_parameters, make_data

    n, d, k, cov_type = job["n"], job["d"], job["k"], job["cov"]
    x = make_data(n, d, k)
    rows = profile_phases(
        x, initial_parameters(x, k, cov_type), cov_type, np.dtype(job["dtype"]), job["rates"]
    )
    size = dict(
        n_samples=n, n_features=d, n_components=k, covariance_type=cov_type, dtype=job["dtype"]
    )
    return [dict(size, **row) for row in rows]
