"""One process of a real multi-process (`jax.distributed`) data-parallel fit, or the
single-process reference it must equal; run by tests/test_distributed.py.

Usage:
    python tests/_distributed_worker.py --out OUT.json --process-id I --processes N --port P
    python tests/_distributed_worker.py --out OUT.json --processes N          (reference)
    options: --covariance diag (default) | full | tied | spherical, --fits em,adam,vb (of FITS)

A process of the distributed run makes only its own rows (``local_rows(process_id)``),
builds the global array from them with `jaxgmm.em.process_local_data`, and fits with
the mesh over every process's devices; the reference concatenates every process's rows
on one device and fits without a mesh. Both write the same JSON: per fit the iteration
count, status, final log-likelihood, per-iteration trace and parameters.
"""

import argparse
import json
import time

import jax

jax.config.update("jax_enable_x64", True)
# Cross-process collectives on CPU: gloo over TCP (the default in jax 0.10.2, set here so
# the run does not depend on it). Must be set before the CPU backend starts.
jax.config.update("jax_cpu_collectives_implementation", "gloo")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROWS_PER_PROCESS, N_FEATURES, N_COMPONENTS = 500, 3, 3
TOL, MAX_ITER, ADAM_STEPS = 1e-8, 200, 30
FITS = ("em", "lbfgs", "adam", "vb")


def local_rows(process_id):
    """Process ``process_id``'s samples (ROWS_PER_PROCESS, N_FEATURES): 3 clusters."""
    rng = np.random.default_rng([0, process_id])
    labels = rng.integers(0, N_COMPONENTS, ROWS_PER_PROCESS)
    return rng.normal(size=(ROWS_PER_PROCESS, N_FEATURES)) + 2.0 * labels[:, None]


def initial_params(jaxgmm, spec):
    """The same start on every process, from no data (a real run would broadcast one,
    e.g. with jax.experimental.multihost_utils.broadcast_one_to_all)."""
    k, d = N_COMPONENTS, N_FEATURES
    covariances = {
        "full": jnp.broadcast_to(jnp.eye(d), (k, d, d)),
        "tied": jnp.eye(d),
        "diag": jnp.ones((k, d)),
        "spherical": jnp.ones(k),
    }[spec.covariance_type]
    means = jnp.asarray([[0.5] * d, [2.5] * d, [3.5] * d])
    weights = jnp.full((k,), 1.0 / k)
    return jaxgmm.params_from_covariances(weights, means, covariances, spec.covariance_type)


def fitters(jaxgmm, covariance_type, mesh):
    """name (of FITS) -> (spec, fitter, max_iter)."""
    spec = jaxgmm.GMMSpec(N_COMPONENTS, covariance_type)
    # VB with explicit hyperparameters: its data defaults (`jaxgmm.vb.vb_spec`) read
    # the whole array on the host, which no process of a distributed run holds.
    prior = jaxgmm.priors.ConjugatePrior(mean_prior=(2.0,) * N_FEATURES, covariance_prior=1.0)
    vb_spec = jaxgmm.GMMSpec(N_COMPONENTS, covariance_type, prior=prior)
    return {
        "em": (spec, jaxgmm.em.em_fitter(spec, TOL, mesh=mesh), MAX_ITER),
        # Full batch: the global array makes XLA partition jax.grad(mean_log_likelihood).
        "lbfgs": (spec, jaxgmm.gradient.gradient_fitter(spec, "lbfgs", tol=TOL), MAX_ITER),
        "adam": (
            spec,
            jaxgmm.gradient.gradient_fitter(spec, "adam", learning_rate=1e-2, tol=0.0),
            ADAM_STEPS,
        ),
        "vb": (vb_spec, jaxgmm.vb.vb_fitter(vb_spec, TOL, mesh=mesh), MAX_ITER),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--processes", type=int, required=True)
    parser.add_argument("--process-id", type=int, default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--covariance", default="diag")
    parser.add_argument("--fits", default="em,adam,vb")
    args = parser.parse_args()
    start = time.perf_counter()
    process_id = args.process_id
    if process_id is not None:
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{args.port}",
            num_processes=args.processes,
            process_id=process_id,
            initialization_timeout=120,
        )
    import jaxgmm

    if process_id is None:
        mesh = None
        x = jnp.asarray(np.concatenate([local_rows(i) for i in range(args.processes)]))
    else:
        mesh = jaxgmm.em.data_mesh()
        x = jaxgmm.em.process_local_data(local_rows(process_id), mesh)
    out = {
        "process_count": jax.process_count(),
        "n_devices": len(jax.devices()),
        "global_shape": list(x.shape),
        # Rows this process holds: its own only.
        "local_rows": sum(s.data.shape[0] for s in x.addressable_shards),
        "fits": {},
    }
    if process_id is not None:
        # Row counts that differ across processes: every process must refuse them.
        try:
            jaxgmm.em.process_local_data(local_rows(process_id)[: ROWS_PER_PROCESS - process_id], mesh)
            out["mismatch_error"] = None
        except ValueError as error:
            out["mismatch_error"] = str(error)
        # The fit_* helpers read the data on the host: refused by name, not a bare error.
        try:
            jaxgmm.fit_em(jax.random.key(0), x, jaxgmm.GMMSpec(N_COMPONENTS, args.covariance))
            out["fit_helper_error"] = None
        except ValueError as error:
            out["fit_helper_error"] = str(error)
    chosen = fitters(jaxgmm, args.covariance, mesh)
    for name in args.fits.split(","):
        spec, fitter, max_iter = chosen[name]
        res = jaxgmm.run_fitter(
            fitter, jax.random.key(0), x, initial_params(jaxgmm, spec), spec, max_iter=max_iter
        )
        out["fits"][name] = {
            "n_iter": res.n_iter,
            "status": res.status,
            "log_likelihood": res.log_likelihood,
            "trace_log_likelihood": np.asarray(res.trace.log_likelihood).tolist(),
            "trace_bound": np.asarray(res.trace.bound).tolist(),
            "params": {k: np.asarray(v).tolist() for k, v in res.params._asdict().items()},
            "compile_s": res.compile_s,
            "run_s": res.run_s,
        }
    out["wall_s"] = time.perf_counter() - start
    with open(args.out, "w") as f:
        json.dump(out, f)
    if process_id is not None:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
