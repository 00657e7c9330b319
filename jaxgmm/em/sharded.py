"""Data-parallel EM and log-likelihood over a `jax.sharding.Mesh`: the samples are
split across devices (and hosts), each device accumulates its own statistics, and XLA
collectives (`psum`) add them up. Parameters are replicated."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import multihost_utils
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


def process_local_data(local_rows, mesh):
    """The global array (n_samples, n_features) sharded along samples over ``mesh`` (as
    `shard_data` makes it), built from this process's rows alone: with
    `jax.distributed` initialised, every process calls it with its own ``local_rows``
    and no process ever holds the others' samples.

    Args:
        local_rows: array of shape (n_local_samples, n_features), this process's rows;
            every process must pass the same shape, a multiple of the number of its
            devices in ``mesh``.
        mesh: the data `Mesh` (`data_mesh`); its axes all split the samples.

    Returns:
        ``jax.Array`` of shape (n_local_samples * n_processes, n_features) whose rows
        follow the mesh's device order (`data_mesh()`: process 0's rows first).

    Raises:
        ValueError: the processes' shapes differ, or the local row count is not a
        multiple of the local devices (checked on every process before any array is
        built: ``jax.make_array_from_process_local_data`` would otherwise infer a
        different global shape on each process and fail or hang later).
    """
    local_rows = np.asarray(local_rows)
    if local_rows.ndim != 2:
        raise ValueError(
            f"local_rows must have shape (n_local_samples, n_features), got {local_rows.shape}"
        )
    n_local_devices = len(mesh.local_devices)
    if jax.process_count() > 1:
        shapes = np.asarray(
            multihost_utils.process_allgather(np.asarray(local_rows.shape, np.int64))
        ).reshape(-1, 2)
        if np.any(shapes != shapes[0]):
            listed = ", ".join(f"process {i}: {tuple(int(n) for n in s)}" for i, s in enumerate(shapes))
            raise ValueError(
                "every process must pass local_rows of the same shape (drop or pad rows so "
                f"that each holds the same number), got {listed}"
            )
    if local_rows.shape[0] % n_local_devices:
        n = local_rows.shape[0]
        raise ValueError(
            f"local_rows has {n} rows, not a multiple of this process's {n_local_devices} "
            f"devices in the mesh; drop or add {n % n_local_devices} rows on every process"
        )
    sharding = NamedSharding(mesh, P(tuple(mesh.axis_names), None))
    return jax.make_array_from_process_local_data(sharding, local_rows)


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
