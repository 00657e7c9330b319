"""One adapter per benchmarked tool: ``run_<tool>(x, init, covariance_type, dtype, n_iter)``
fits from the shared start and returns its seconds per iteration (the protocol's timing
rule), compile time, time to first result, iteration count and final parameters as
float64 (weights, means, covariances). Every tool runs EM except the VB rows
(``VB_TOOLS``: ``jaxgmm-vb``, ``sklearn-vb``, closed-form variational Bayes under one
conjugate prior). ``TOOLS`` lists the tools this machine can run (the optional peers only
when importable), ``UNSUPPORTED`` the dtypes and covariance types a peer cannot run
(`unsupported` looks a row up). Each adapter imports its library itself, inside the
worker, so the import is part of the memory it is charged with."""

from __future__ import annotations

import importlib.util
import time

import numpy as np

from experiments.bench.protocol import (
    best_difference,
    covariances_float64,
    responsibilities_float64,
    vb_prior,
)


def run_jaxgmm(x, init, cov_type, dtype, n_iter, accuracy_iters=0, devices=1, method="em"):
    """jaxgmm's EM (``method="em"``) or closed-form VB (``"vb"``: `jaxgmm.vb.vb_fitter`
    under `vb_prior`, scikit-learn's update rule so that it runs what scikit-learn's
    `BayesianGaussianMixture` runs; for full covariances it is also the exact update),
    both through `jaxgmm.run_fitter` from the shared start."""
    import jax
    import jax.numpy as jnp

    import jaxgmm

    k = init[1].shape[0]
    spec = jaxgmm.GMMSpec(k, cov_type)
    xj = jnp.asarray(x, dtype)
    params = jaxgmm.params_from_covariances(*[jnp.asarray(a, dtype) for a in init], cov_type)
    if method == "vb":
        if devices > 1:
            raise RuntimeError("jaxgmm's VB runs on one device (no data mesh)")
        spec = jaxgmm.vb.vb_spec(spec, xj, prior=_jaxgmm_vb_prior(x, k, cov_type))
        fitter = jaxgmm.vb.vb_fitter(spec, 0.0, "sklearn")
    elif method != "em":
        raise ValueError(f"method must be 'em' or 'vb', got {method!r}")
    mesh = None
    if devices > 1:
        # Data-parallel EM over one XLA CPU device per core (the subprocess was started
        # with --xla_force_host_platform_device_count): the documented multi-device path.
        if jax.default_backend() != "cpu" or len(jax.devices()) < devices:
            raise RuntimeError(f"jaxgmm-cores needs {devices} CPU devices, JAX has {jax.devices()}")
        mesh = jaxgmm.em.data_mesh(jax.devices()[:devices])
        xj = jaxgmm.em.shard_data(xj, mesh)
    if method == "em":
        fitter = jaxgmm.em.em_fitter(spec, 0.0, mesh=mesh)

    def fit(iters):
        # One iteration per dispatched chunk, so a 1-iteration fit does one iteration's
        # work; the per-fit data layout and final scoring cancel in the difference.
        begin = time.perf_counter()
        res = jaxgmm.run_fitter(
            fitter, jax.random.key(0), xj, params, spec, max_iter=iters, chunk_size=1
        )
        return res, time.perf_counter() - begin

    start = time.perf_counter()
    cold, _ = fit(1)
    first = time.perf_counter() - start
    res, per_iter, _ = best_difference(fit, n_iter)

    def as_float64(params):
        return (
            np.asarray(params.weights, np.float64),
            np.asarray(params.means, np.float64),
            covariances_float64(params.prec_chol, cov_type),
        )

    out = {
        "devices": devices,
        "s_per_iter": per_iter,
        "compile_s": cold.compile_s,
        "time_to_first_result_s": first,
        "n_iter": res.n_iter,
        "params": as_float64(res.params),
    }
    if accuracy_iters:
        # Past the first few iterations (where a collapsing component makes the value
        # first-order sensitive to rounding in every tool): the dtypes' answers compared.
        long = jaxgmm.run_fitter(
            fitter, jax.random.key(0), xj, params, spec, max_iter=accuracy_iters
        )
        out["accuracy_params"] = as_float64(long.params)
    return out


def _jaxgmm_vb_prior(x, n_components, cov_type):
    """`vb_prior` as jaxgmm's conjugate prior config (the same numbers, jaxgmm's names)."""
    sk = vb_prior(x, n_components, cov_type)
    return {
        "name": "conjugate",
        "weight_prior_type": sk["weight_concentration_prior_type"],
        "weight_concentration": sk["weight_concentration_prior"],
        "mean_prior": sk["mean_prior"],
        "mean_precision": sk["mean_precision_prior"],
        "degrees_of_freedom": sk["degrees_of_freedom_prior"],
        "covariance_prior": sk["covariance_prior"],
    }


def run_jaxgmm_vb(x, init, cov_type, dtype, n_iter, accuracy_iters=0, devices=1):
    return run_jaxgmm(x, init, cov_type, dtype, n_iter, accuracy_iters, devices, method="vb")


def run_sklearn_vb(x, init, cov_type, dtype, n_iter):
    """scikit-learn's `BayesianGaussianMixture` under `vb_prior`, started where jaxgmm's VB
    starts: its own initialisation step (``_initialize``: q(theta) from responsibilities)
    fed the responsibilities of the shared initial parameters instead of k-means'."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import BayesianGaussianMixture

    class FromResponsibilities(BayesianGaussianMixture):
        # scikit-learn takes no initial parameters for VB, only an init_params name; this
        # replaces the one method that turns that name into responsibilities.
        def _initialize_parameters(self, X, random_state, xp=None):
            self._initialize(X, start.astype(X.dtype))

    start = responsibilities_float64(x, *init, cov_type)
    xs = np.asarray(x, dtype)
    prior = vb_prior(x, len(init[0]), cov_type)

    def fit(iters):
        bgm = FromResponsibilities(
            n_components=len(init[0]), covariance_type=cov_type, max_iter=iters, tol=0.0,
            reg_covar=1e-6, **prior,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            begin = time.perf_counter()
            bgm.fit(xs)
        return bgm, time.perf_counter() - begin

    bgm, per_iter, t_one = best_difference(fit, n_iter)
    return {
        "s_per_iter": per_iter,
        "compile_s": 0.0,
        "time_to_first_result_s": t_one,
        "n_iter": int(bgm.n_iter_),
        "params": (bgm.weights_, bgm.means_, bgm.covariances_),
    }


def run_sklearn(x, init, cov_type, dtype, n_iter):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    weights, means, covs = init
    # scikit-learn's precisions_init layouts: the inverse matrices (full (K, D, D), tied
    # (D, D)) or the inverse variances (diag (K, D), spherical (K,)).
    precisions = np.linalg.inv(covs) if cov_type in ("full", "tied") else 1.0 / covs
    xs = np.asarray(x, dtype)

    def fit(iters):
        gm = GaussianMixture(
            len(weights),
            covariance_type=cov_type,
            max_iter=iters,
            tol=0.0,
            weights_init=weights,
            means_init=means,
            precisions_init=precisions,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            start = time.perf_counter()
            gm.fit(xs)
        return gm, time.perf_counter() - start

    # Differences cancel sklearn's per-fit set-up and final E-step.
    gm, per_iter, t_one = best_difference(fit, n_iter)
    return {
        "s_per_iter": per_iter,
        "compile_s": 0.0,
        "time_to_first_result_s": t_one,
        "n_iter": int(gm.n_iter_),
        "params": (gm.weights_, gm.means_, gm.covariances_),
    }


def run_gmmx(x, init, cov_type, dtype, n_iter):
    """gmmx (``EMFitter`` on a ``GaussianMixtureModelJax``), started from ``init``.

    Semantics, read from gmmx 0.7's source (gmmx/fit.py, gmmx/gmm.py):
    - float32 only: ``gmmx.gmm.check_shape`` raises for any other dtype, and with JAX's x64
      mode on, the full-covariance path promotes to float64 internally (``jnp.eye``) and
      then fails that check; so the fit runs under ``jax.enable_x64(False)`` and float64 is
      reported as unsupported (``UNSUPPORTED``), not silently run in float32.
    - ``EMFitter.fit`` is a ``lax.while_loop`` of (E-step, M-step) while
      ``n_iter < max_iter and |delta log-likelihood| >= tol``; with ``tol=-inf`` it does
      exactly ``max_iter`` E+M steps, as scikit-learn with ``tol=0`` does (sklearn's final
      extra E-step only sets labels, not parameters).
    - ``reg_covar`` (default 1e-6, passed explicitly) is added to the covariance diagonal as
      in scikit-learn and jaxgmm, and counts get the same ``10 * eps`` as scikit-learn.
    - full and diag only: gmmx's ``CovarianceType`` enum and its ``COVARIANCE`` registry
      (gmmx/gmm.py) have no tied or spherical family, so those rows are reported as
      unsupported (``UNSUPPORTED``).
    - The initial parameters are taken exactly (``from_squeezed``: weights, means,
      covariances), cast to float32.
    ``max_iter`` is a static field of ``EMFitter``, so each iteration count compiles once;
    both are compiled ahead (``lower().compile()``) and timed warm, so s_per_iter excludes
    compilation; compile_s and time_to_first_result_s are those of a 1-iteration fit.
    """
    # What gmmx cannot run is refused before gmmx is imported (a test checks it without gmmx).
    if np.dtype(dtype) != np.float32:
        raise ValueError(f"gmmx supports float32 only, got {dtype}")
    if cov_type not in ("full", "diag"):
        raise ValueError(f"gmmx supports full and diag covariances only, got {cov_type!r}")
    import jax
    import jax.numpy as jnp
    from gmmx import EMFitter, GaussianMixtureModelJax

    weights, means, covs = init
    with jax.enable_x64(False):
        xj = jnp.asarray(x, jnp.float32)
        gmm0 = GaussianMixtureModelJax.from_squeezed(
            means=jnp.asarray(means, jnp.float32),
            covariances=jnp.asarray(covs, jnp.float32),
            weights=jnp.asarray(weights, jnp.float32),
            covariance_type=cov_type,
        )

        def compiled(iters):
            fitter = EMFitter(max_iter=iters, tol=float("-inf"), reg_covar=1e-6)
            return fitter, EMFitter.fit.lower(fitter, xj, gmm0).compile()

        start = time.perf_counter()
        one = compiled(1)
        compile_s = time.perf_counter() - start
        jax.block_until_ready(one[1](one[0], xj, gmm0))
        first = time.perf_counter() - start
        many = compiled(n_iter)
        jax.block_until_ready(many[1](many[0], xj, gmm0))  # warm-up, untimed

        def fit(iters):
            fitter, call = one if iters == 1 else many
            start = time.perf_counter()
            res = jax.block_until_ready(call(fitter, xj, gmm0))
            return res, time.perf_counter() - start

        res, per_iter, _ = best_difference(fit, n_iter)
        gmm = res.gmm
        params = (
            np.asarray(gmm.weights_numpy, np.float64),
            np.asarray(gmm.means_numpy, np.float64),
            np.asarray(gmm.covariances.values_numpy, np.float64),
        )
    return {
        "s_per_iter": per_iter,
        "compile_s": compile_s,
        "time_to_first_result_s": first,
        "n_iter": int(res.n_iter),
        "params": params,
    }


def run_pomegranate(x, init, cov_type, dtype, n_iter):
    """pomegranate 1.x (``GeneralMixtureModel`` of ``Normal(covariance_type=...)``, torch on
    CPU), started from ``init``.

    Semantics, read from pomegranate 1.1's source (gmm.py, distributions/normal.py):
    - ``fit`` loops ``for i in range(max_iter)``: E-step (``summarize``), then, for i > 0,
      ``break`` if the improvement is below ``tol`` (before the M-step), then M-step
      (``from_summaries``). With ``tol=-inf`` it never breaks (a NaN improvement does not
      compare below it either): exactly ``max_iter`` E+M steps, like scikit-learn's
      ``max_iter`` with ``tol=0``. ``fit`` does not report an iteration count.
    - No covariance regularisation: ``Normal(min_cov=...)`` is stored but never applied, so
      nothing is added to the diagonal (scikit-learn, jaxgmm and gmmx add reg_covar=1e-6).
      Covariances are formed from uncentred sums, E[x x^T] - mu mu^T (cancellation in
      float32 when means are large against the spreads).
    - dtype: pomegranate's working dtype is that of its first parameter, a float32 tensor
      created with torch's default dtype, so float64 inputs alone still give float32
      emission matrices and float32 sufficient statistics, and ``.to(torch.float64)``
      leaves the mixture's weight sums float32. The fit therefore runs under
      ``torch.set_default_dtype(dtype)`` (restored afterwards), which makes every tensor
      float64 in the float64 rows.
    - The initial parameters are taken exactly (priors, per-component means and covs).
    - Covariance types: ``Normal``'s ``'full'``, ``'diag'`` and ``'sphere'`` (spherical).
      A sphere's ``covs`` is given as D equal variances: the docstring's shape (1,) fails
      ``Normal.__init__``'s ``_check_shapes`` (len(covs) == len(means)), and the M-step's
      mean variance (``covs.mean(dim=-1)``) is written back into all D entries. There is
      no tied type (each component is its own ``Normal``): tied rows are reported as
      unsupported (``UNSUPPORTED``).
    - Counts get no ``10 * eps`` (scikit-learn adds it; negligible).
    Timing as for scikit-learn: (t(n) - t(1)) / (n - 1), each the best of a few repeats, after
    one untimed-for-s_per_iter cold 1-iteration fit (torch's one-off start-up, reported as
    time_to_first_result_s); a fresh model is built (outside the timed region) for every
    fit, since ``fit`` updates the model in place. No compilation.
    """
    if cov_type not in _POMEGRANATE_TYPES:
        raise ValueError(f"pomegranate has no {cov_type!r} covariance type")
    import torch
    from pomegranate.distributions import Normal
    from pomegranate.gmm import GeneralMixtureModel

    tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[
        np.dtype(dtype)
    ]
    weights, means, covs = init
    if cov_type == "spherical":
        covs = np.repeat(np.asarray(covs)[:, None], means.shape[1], axis=1)
    old_default = torch.get_default_dtype()
    torch.set_default_dtype(tdtype)
    try:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype))

        def model(iters):
            dists = [
                Normal(
                    torch.tensor(means[j], dtype=tdtype),
                    torch.tensor(covs[j], dtype=tdtype),
                    covariance_type=_POMEGRANATE_TYPES[cov_type],
                )
                for j in range(len(weights))
            ]
            return GeneralMixtureModel(
                dists, priors=torch.tensor(weights, dtype=tdtype), max_iter=iters, tol=float("-inf")
            )

        def fit(iters):
            gm = model(iters)
            start = time.perf_counter()
            with torch.no_grad():
                gm.fit(xt)
            return gm, time.perf_counter() - start

        # The first torch call in a process pays seconds of one-off start-up; it is the
        # cold time to first result, and is kept out of the per-iteration difference.
        first = fit(1)[1]
        gm, per_iter, _ = best_difference(fit, n_iter)
        params = (
            gm.priors.detach().numpy().astype(np.float64),
            np.stack([d.means.detach().numpy() for d in gm.distributions]).astype(np.float64),
            np.stack([d.covs.detach().numpy() for d in gm.distributions]).astype(np.float64),
        )
        if cov_type == "spherical":  # D equal variances per component -> (K,)
            params = params[:2] + (params[2].mean(axis=1),)
    finally:
        torch.set_default_dtype(old_default)
    return {
        "s_per_iter": per_iter,
        "compile_s": 0.0,
        "time_to_first_result_s": first,
        "n_iter": n_iter,  # exact by the loop above; pomegranate does not report it
        "params": params,
    }


# pomegranate's names of the covariance types it has.
_POMEGRANATE_TYPES = {"full": "full", "diag": "diag", "spherical": "sphere"}
# Peers are benchmarked only when importable (optional, not dependencies of jaxgmm:
# ``pip install gmmx pomegranate``; pomegranate pulls in torch).
OPTIONAL_PEERS = {"gmmx": run_gmmx, "pomegranate": run_pomegranate}
# jaxgmm runs twice: on one XLA device, and ("jaxgmm-cores") with the samples split over
# one CPU device per core. XLA:CPU runs most of a step's element-wise work on one core,
# so the second uses a 2-core machine fully (1.4-2x faster, same result to rounding).
TOOLS = {
    "jaxgmm": run_jaxgmm,
    "jaxgmm-cores": run_jaxgmm,
    "sklearn": run_sklearn,
    "jaxgmm-vb": run_jaxgmm_vb,
    "sklearn-vb": run_sklearn_vb,
}
# What each VB row is compared with: the EM row of the same library (the VB / EM ratio)
# and, for a peer, jaxgmm's VB row. Every other tool runs EM.
VB_TOOLS = {"jaxgmm-vb": "jaxgmm", "sklearn-vb": "sklearn"}
TOOLS.update(
    {
        name: run
        for name, run in OPTIONAL_PEERS.items()
        if importlib.util.find_spec(name) is not None
    }
)
# (tool, dtype) and (tool, covariance type) pairs a peer cannot run; reported as skipped,
# not run in another dtype or covariance type.
UNSUPPORTED = {
    ("gmmx", "float64"): "gmmx is float32 only (gmmx.gmm.check_shape rejects other dtypes)",
    **{
        ("gmmx", cov): f"gmmx has no {cov} covariances (gmmx.gmm.CovarianceType: full and "
        "diag only)"
        for cov in ("tied", "spherical")
    },
    ("pomegranate", "tied"): "pomegranate has no tied covariances (each component is its "
    "own Normal: covariance_type full, diag or sphere)",
}


def unsupported(tool, dtype, cov_type):
    """Why ``tool`` cannot run this (dtype, covariance type) row (`UNSUPPORTED`'s reasons,
    joined by '; '), or None when it can."""
    reasons = [UNSUPPORTED[tool, key] for key in (dtype, cov_type) if (tool, key) in UNSUPPORTED]
    return "; ".join(reasons) or None
