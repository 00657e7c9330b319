"""Run in a subprocess with 4 forced CPU devices (see tests/test_scale.py): prints the
largest differences between sharded and single-device results as JSON.
Usage: python tests/_sharded_check.py [covariance types, comma-separated]"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxgmm

jax.config.update("jax_enable_x64", True)
assert len(jax.devices()) == 4, jax.devices()
rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(4000, 3)) + rng.integers(0, 3, 4000)[:, None] * 2.0)
mesh = jaxgmm.data_mesh()
xs = jaxgmm.shard_data(x, mesh)
out = {"n_shards": len(xs.sharding.device_set)}
families = sys.argv[1].split(",") if len(sys.argv) > 1 else list(jaxgmm.COVARIANCE_FAMILIES)
for cov in families:
    spec = jaxgmm.GMMSpec(3, cov)
    p0 = jax.tree_util.tree_map(
        lambda a: a[0], jaxgmm.initial_params(jax.random.key(1), x, spec, "kmeans", 1)
    )
    single = jaxgmm.run_fitter(
        jaxgmm.em_fitter(spec, 0.0), jax.random.key(0), x, p0, spec, max_iter=5
    )
    sharded = jaxgmm.run_fitter(
        jaxgmm.em_fitter(spec, 0.0, block_size=256, mesh=mesh), jax.random.key(0), xs, p0, spec,
        max_iter=5,
    )
    out[f"em_{cov}_ll"] = float(np.max(np.abs(single.trace.log_likelihood - sharded.trace.log_likelihood)))
    out[f"em_{cov}_params"] = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(single.params, sharded.params)
    )
    grad = jax.jit(jax.grad(jaxgmm.mean_log_likelihood, argnums=1), static_argnums=2)
    g_single = grad(x, p0, spec)
    g_auto = grad(xs, p0, spec)  # plain function on sharded data: XLA partitions it
    g_shmap = jax.jit(
        jax.grad(lambda p, x, spec=spec: jaxgmm.sharded_mean_log_likelihood(x, p, spec, mesh))
    )(p0, xs)
    scale = max(float(np.max(np.abs(np.asarray(g)))) for g in g_single)
    for name, g in (("grad_auto", g_auto), ("grad_shard_map", g_shmap)):
        out[f"{name}_{cov}"] = max(
            float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(g_single, g)
        ) / scale
print(json.dumps(out))
