"""Run in a subprocess with 4 forced CPU devices (see tests/test_scale.py): prints the
largest differences between sharded and single-device results as JSON.
Usage: python tests/_sharded_check.py [covariance types, comma-separated]"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxgmm
from jaxgmm.em.sharded import shard_blocks
from jaxgmm.model.blocked import feature_major_blocks

jax.config.update("jax_enable_x64", True)
assert len(jax.devices()) == 4, jax.devices()
rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(4000, 3)) + rng.integers(0, 3, 4000)[:, None] * 2.0)
mesh = jaxgmm.em.data_mesh()
xs = jaxgmm.em.shard_data(x, mesh)
out = {"n_shards": len(xs.sharding.device_set)}
families = sys.argv[1].split(",") if len(sys.argv) > 1 else list(jaxgmm.model.COVARIANCE_FAMILIES)
for cov in families:
    spec = jaxgmm.GMMSpec(3, cov)
    p0 = jax.tree_util.tree_map(
        lambda a: a[0], jaxgmm.initial_params(jax.random.key(1), x, spec, "kmeans", 1)
    )
    single = jaxgmm.run_fitter(
        jaxgmm.em.em_fitter(spec, 0.0), jax.random.key(0), x, p0, spec, max_iter=5
    )
    sharded = jaxgmm.run_fitter(
        jaxgmm.em.em_fitter(spec, 0.0, block_size=256, mesh=mesh), jax.random.key(0), xs, p0, spec,
        max_iter=5,
    )
    out[f"em_{cov}_ll"] = float(np.max(np.abs(single.trace.log_likelihood - sharded.trace.log_likelihood)))
    out[f"em_{cov}_final_ll"] = abs(single.log_likelihood - sharded.log_likelihood)
    out[f"em_{cov}_params"] = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(single.params, sharded.params)
    )
    # Each device lays out its own rows, once per fit: its shard of the blocks is
    # exactly the single-device layout of those rows.
    blocks = jax.jit(lambda x, spec=spec: shard_blocks(x, spec, mesh, 256))(xs)
    rows = x.shape[0] // 4
    out[f"layout_{cov}"] = max(
        float(np.max(np.abs(np.asarray(shard.data) - np.asarray(
            feature_major_blocks(x[i * rows:(i + 1) * rows], 256).blocks))))
        for i, shard in enumerate(sorted(blocks.blocks.addressable_shards, key=lambda s: s.index[0].start))
    )
    grad = jax.jit(jax.grad(jaxgmm.mean_log_likelihood, argnums=1), static_argnums=2)
    g_single = grad(x, p0, spec)
    g_auto = grad(xs, p0, spec)  # plain function on sharded data: XLA partitions it
    g_shmap = jax.jit(
        jax.grad(lambda p, x, spec=spec: jaxgmm.em.sharded_mean_log_likelihood(x, p, spec, mesh))
    )(p0, xs)
    scale = max(float(np.max(np.abs(np.asarray(g)))) for g in g_single)
    for name, g in (("grad_auto", g_auto), ("grad_shard_map", g_shmap)):
        out[f"{name}_{cov}"] = max(
            float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(g_single, g)
        ) / scale
# Big enough that jaxlib's CPU LAPACK kernels would split their batch over the thread
# pool (K = 16 matrices of 16 x 16), with two restarts: every device factorising at once
# used to hang (see jaxgmm.model.covariance._one_matrix_per_call); now it equals one device.
if "full" in families:
    xb = jnp.asarray(rng.normal(size=(2000, 16)) + rng.integers(0, 4, 2000)[:, None] * 3.0)
    spec = jaxgmm.GMMSpec(16, "full")
    starts = jaxgmm.initial_params(jax.random.key(2), xb, spec, "kmeans", 2)
    runs = [
        jaxgmm.run_fitter(jaxgmm.em.em_fitter(spec, 0.0, mesh=m), jax.random.key(0), data, starts,
                          spec, max_iter=3, chunk_size=1)
        for m, data in ((None, xb), (mesh, jaxgmm.em.shard_data(xb, mesh)))
    ]
    out["em_full_k16_d16_restarts_ll"] = float(np.max(np.abs(
        runs[0].restarts.log_likelihood - runs[1].restarts.log_likelihood)))
    # The gradient fitter on sharded data (XLA partitions it) decodes its Cholesky
    # parameters on every device at once, the same hazard.
    grads = [
        jaxgmm.run_fitter(jaxgmm.gradient.gradient_fitter(spec, "adam", learning_rate=1e-2),
                          jax.random.key(0), data, starts, spec, max_iter=3, chunk_size=1)
        for data in (xb, jaxgmm.em.shard_data(xb, mesh))
    ]
    out["gradient_full_k16_d16_ll"] = float(np.max(np.abs(
        grads[0].restarts.log_likelihood - grads[1].restarts.log_likelihood)))
print(json.dumps(out))
