"""Data-parallel EM and log-likelihood over a `jax.sharding.Mesh`: the samples are
split across devices (and hosts), each device accumulates its own statistics, and XLA
collectives (`psum`) add them up. Parameters are replicated."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxgmm.model.blocked import accumulate_moments_fm, spec_blocks, total_log_likelihood_blocks
from jaxgmm.model.density import log_prob


def data_mesh(devices=None, axis_name="data"):
    """A one-axis `Mesh` over ``devices`` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (axis_name,))


def _n_shards(mesh):
    return int(np.prod([mesh.shape[name] for name in mesh.axis_names]))


def _check_divisible(n_samples, mesh, name="x"):
    n_shards = _n_shards(mesh)
    if n_samples % n_shards:
        raise ValueError(
            f"{name} has n_samples={n_samples}, not a multiple of the mesh's {n_shards} "
            f"devices; drop or add {n_samples % n_shards} rows (e.g. x[:{n_samples - n_samples % n_shards}])"
        )


def shard_data(x, mesh):
    """Place ``x`` (n_samples, n_features) on ``mesh``, split along samples over all of
    the mesh's axes. n_samples must be a multiple of the number of devices."""
    _check_divisible(x.shape[0], mesh)
    return jax.device_put(x, NamedSharding(mesh, P(tuple(mesh.axis_names), None)))


def _per_device(fn, mesh, in_specs, out_specs):
    """``fn`` run by every device of ``mesh`` on its own shards (`jax.shard_map`)."""
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs)


def shard_blocks(x, spec, mesh, block_size=None):
    """``x`` (sharded along samples over ``mesh``) as `FeatureMajorBlocks`, each device
    laying out its own rows (blocks of `default_block_size` for its row count unless
    ``block_size``), sharded along the block axis. Made once per fit, like
    `feature_major_blocks` on one device, so no iteration re-lays out the data."""
    _check_divisible(x.shape[0], mesh)
    axes = tuple(mesh.axis_names)

    def local(x_local):
        return spec_blocks(x_local, spec, block_size)

    return _per_device(local, mesh, P(axes, None), P(axes))(x)


def sharded_moments_blocks(data, params, spec, mesh):
    """`Moments` of `shard_blocks` output: each device sums its own blocks, then `psum`."""
    axes = tuple(mesh.axis_names)

    def local(data, params):
        moments = accumulate_moments_fm(data, params, spec)
        return jax.tree_util.tree_map(lambda a: lax.psum(a, axes), moments)

    return _per_device(local, mesh, (P(axes), P()), P())(data, params)


def sharded_mean_log_likelihood_blocks(data, params, spec, mesh):
    """`mean_log_likelihood` of `shard_blocks` output, each device scoring its blocks."""
    axes = tuple(mesh.axis_names)

    def local(data, params):
        total = total_log_likelihood_blocks(data, params, spec)
        return lax.psum(total, axes), lax.psum(jnp.sum(data.weight), axes)

    total, n_samples = _per_device(local, mesh, (P(axes), P()), (P(), P()))(data, params)
    return total / n_samples


def sharded_moments(x, params, spec, mesh, block_size=None):
    """`Moments` of ``x`` sharded along samples: blocked per device, then `psum`."""
    return sharded_moments_blocks(shard_blocks(x, spec, mesh, block_size), params, spec, mesh)


def sharded_mean_log_likelihood(x, params, spec, mesh):
    """`mean_log_likelihood` with each device scoring its own samples (differentiable;
    the gradient's reduction is a `psum` too). Equals the single-device value."""
    _check_divisible(x.shape[0], mesh)
    axes = tuple(mesh.axis_names)

    def local(x_local, params):
        return lax.psum(log_prob(x_local, params, spec).sum(), axes)

    return _per_device(local, mesh, (P(axes, None), P()), P())(x, params) / x.shape[0]
