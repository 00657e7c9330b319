"""Data-parallel EM and log-likelihood over a `jax.sharding.Mesh`: the samples are
split across devices (and hosts), each device accumulates its own statistics, and XLA
collectives (`psum`) add them up. Parameters are replicated."""

from __future__ import annotations

import jax
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxgmm._blocked import accumulate_moments
from jaxgmm._density import log_prob


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


def sharded_moments(x, params, spec, mesh, block_size=None):
    """`Moments` of ``x`` sharded along samples: blocked per device, then `psum`."""
    _check_divisible(x.shape[0], mesh)
    axes = tuple(mesh.axis_names)

    def local(x_local, params):
        moments = accumulate_moments(x_local, params, spec, block_size)
        return jax.tree_util.tree_map(lambda a: lax.psum(a, axes), moments)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(axes, None), P()), out_specs=P())(
        x, params
    )


def sharded_mean_log_likelihood(x, params, spec, mesh):
    """`mean_log_likelihood` with each device scoring its own samples (differentiable;
    the gradient's reduction is a `psum` too). Equals the single-device value."""
    _check_divisible(x.shape[0], mesh)
    axes = tuple(mesh.axis_names)

    def local(x_local, params):
        return lax.psum(log_prob(x_local, params, spec).sum(), axes)

    total = jax.shard_map(local, mesh=mesh, in_specs=(P(axes, None), P()), out_specs=P())(
        x, params
    )
    return total / x.shape[0]
