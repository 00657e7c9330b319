"""The benchmark's protocol, the same for every tool: the seeded data and the shared
start (``make_data``, ``initial_parameters``; for the VB rows their responsibilities,
``responsibilities_float64``, and one conjugate prior, ``vb_prior``), one float64 NumPy
scorer of every tool's parameters (``score_float64``, ``covariances_float64``), the timing rule
(``best_difference``: a difference of best-of-repeats), peak memory (``rss_mb``), the
device count of the ``jaxgmm-cores`` row, the peer / jaxgmm ratios and the float32
accuracy check (``float32_minus_float64``)."""

from __future__ import annotations

import os
import resource

import numpy as np


def make_data(n_samples, n_features, n_components, seed=0):
    """A seeded mixture with random means and random full covariances (float64)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_components, n_features)) * 3.0
    factors = rng.normal(size=(n_components, n_features, n_features)) / np.sqrt(n_features)
    labels = rng.integers(0, n_components, n_samples)
    x = np.empty((n_samples, n_features))
    for k in range(n_components):
        rows = labels == k
        x[rows] = means[k] + rng.normal(size=(rows.sum(), n_features)) @ (
            factors[k] + 0.3 * np.eye(n_features)
        )
    return x


# The covariance types every piece of the protocol handles, in scikit-learn's layouts
# (``GaussianMixture.covariances_``): full (K, D, D), tied (D, D), diag (K, D),
# spherical (K,).
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def _check_covariance_type(covariance_type):
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of {list(COVARIANCE_TYPES)}, got {covariance_type!r}"
        )


def initial_parameters(x, n_components, covariance_type, seed=1):
    """The same start for every tool: random data points as means, the data's
    covariance for every component (full: (K, D, D); tied: the one (D, D); diag: its
    diagonal, (K, D); spherical: its mean variance, (K,)), equal weights."""
    _check_covariance_type(covariance_type)
    rng = np.random.default_rng(seed)
    means = x[rng.choice(x.shape[0], n_components, replace=False)]
    cov = np.atleast_2d(np.cov(x[: min(x.shape[0], 100_000)].T))
    weights = np.full(n_components, 1.0 / n_components)
    covs = {
        "full": lambda: np.broadcast_to(cov, (n_components,) + cov.shape).copy(),
        "tied": lambda: cov.copy(),
        "diag": lambda: np.broadcast_to(np.diag(cov), (n_components, x.shape[1])).copy(),
        "spherical": lambda: np.full(n_components, np.diag(cov).mean()),
    }[covariance_type]()
    return weights, means, covs


def _dense_covariances(covs, covariance_type, n_components, n_features):
    """(K, D, D) covariances from scikit-learn's layout of ``covariance_type``."""
    covs = np.asarray(covs, np.float64)
    eye = np.eye(n_features)
    if covariance_type == "full":
        return covs
    if covariance_type == "tied":
        return np.broadcast_to(covs, (n_components, n_features, n_features))
    if covariance_type == "diag":
        return covs[:, :, None] * eye
    return covs[:, None, None] * eye  # spherical


def _weighted_log_prob_blocks(x, weights, means, covs, covariance_type, block):
    """Yield (n_block, K) log w_k + log N(x | mu_k, Sigma_k) in float64 NumPy, per block."""
    _check_covariance_type(covariance_type)
    x = np.asarray(x, np.float64)
    d = x.shape[1]
    k = len(weights)
    chols = np.linalg.cholesky(_dense_covariances(covs, covariance_type, k, d))
    log_det = 2 * np.sum(np.log(np.diagonal(chols, axis1=1, axis2=2)), axis=1)
    for start in range(0, x.shape[0], block):
        xb = x[start : start + block]
        wlp = np.empty((xb.shape[0], k))
        for j in range(k):
            z = np.linalg.solve(chols[j], (xb - means[j]).T)
            wlp[:, j] = np.log(weights[j]) - 0.5 * (
                d * np.log(2 * np.pi) + log_det[j] + np.sum(z * z, 0)
            )
        yield wlp


def vb_prior(x, n_components, covariance_type):
    """The one prior of every VB row: scikit-learn's `BayesianGaussianMixture` defaults,
    given explicitly to each tool so that neither tool's own defaults decide. Stick-breaking
    weights with concentration 1/K, mean_prior the data mean, mean_precision 1,
    degrees_of_freedom D, covariance_prior the data covariance in scikit-learn's layout
    for the type (full and tied: the (D, D) matrix; diag: its diagonal, (D,); spherical:
    its mean variance, a float), as keyword arguments of scikit-learn's names."""
    _check_covariance_type(covariance_type)
    x = np.asarray(x, np.float64)
    cov = np.atleast_2d(np.cov(x[: min(x.shape[0], 100_000)].T))
    covariance_prior = {
        "full": cov,
        "tied": cov,
        "diag": np.diag(cov).copy(),
        "spherical": float(np.diag(cov).mean()),
    }[covariance_type]
    return dict(
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=1.0 / n_components,
        mean_prior=x.mean(0),
        mean_precision_prior=1.0,
        degrees_of_freedom_prior=float(x.shape[1]),
        covariance_prior=covariance_prior,
    )


def score_float64(x, weights, means, covs, covariance_type, block=65536):
    """Log-likelihood per sample in float64 NumPy (independent of every tool)."""
    total = 0.0
    for wlp in _weighted_log_prob_blocks(x, weights, means, covs, covariance_type, block):
        top = wlp.max(1, keepdims=True)
        total += np.sum(top[:, 0] + np.log(np.exp(wlp - top).sum(1)))
    return total / np.shape(x)[0]


def responsibilities_float64(x, weights, means, covs, covariance_type, block=65536):
    """(n_samples, K) EM responsibilities of the parameters, float64 NumPy: the shared
    start of the VB rows (q(z) of the shared initial parameters, as `jaxgmm.vb` starts)."""
    parts = []
    for wlp in _weighted_log_prob_blocks(x, weights, means, covs, covariance_type, block):
        wlp = wlp - wlp.max(1, keepdims=True)
        resp = np.exp(wlp)
        parts.append(resp / resp.sum(1, keepdims=True))
    return np.concatenate(parts)


def rss_mb():
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_cores():
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def devices_for(n_samples, cores):
    """XLA CPU devices for the ``jaxgmm-cores`` row: one per core, as many as divide
    n_samples (`jaxgmm.em.shard_data` splits the samples evenly)."""
    return max(d for d in range(1, cores + 1) if n_samples % d == 0)


def covariances_float64(prec_chol, cov_type):
    """Covariances from jaxgmm's precision Cholesky factors, in float64 NumPy, in
    scikit-learn's layout (full: (K, D, D) from (K, D, D); tied: (D, D) from (D, D);
    diag: (K, D) from (K, D); spherical: (K,) from (K,)). Formed in float32 instead, a
    covariance with condition number 1e6 loses its narrow directions and the float64
    score of a float32 fit drops by ~1e-4 nats/sample."""
    _check_covariance_type(cov_type)
    p = np.asarray(prec_chol, np.float64)
    if cov_type in ("full", "tied"):
        inverse = np.linalg.inv(p)  # precision = P P^T, so Sigma = P^{-T} P^{-1}
        return np.swapaxes(inverse, -1, -2) @ inverse
    return 1.0 / np.square(p)  # diag, spherical: P is the inverse standard deviation


def best_difference(fit, n_iter):
    """Seconds per iteration as (t(n iters) - t(1 iter)) / (n - 1), each the best of a few
    repeats (the same rule for every tool), so per-fit set-up and dispatch cancel.
    ``fit(iters)`` returns (result, seconds). Returns (result of the n-iteration fit,
    s/iter, t(1)). Fits under 2 s are repeated for about 2 s (3 to 10 times): a
    difference of a few milliseconds is otherwise at the mercy of thread wake-ups."""
    res, t_all = fit(n_iter)
    repeats = 1 if t_all >= 2.0 else max(3, min(10, int(2.0 / max(t_all, 1e-9))))
    t_one = min(fit(1)[1] for _ in range(repeats))
    t_all = min([t_all] + [fit(n_iter)[1] for _ in range(repeats - 1)])
    per_iter = (t_all - t_one) / (n_iter - 1) if n_iter > 1 else t_all
    if per_iter <= 0:  # still swamped by noise: fall back to the plain average
        per_iter = t_all / n_iter
    return res, per_iter, t_one


def set_ratios(rows, vb_tools=None):
    """Set the ratios of seconds per iteration between rows of the same size and dtype.

    EM rows: ``ratio_peer_over_jaxgmm`` (and ``..._cores``), this row over the jaxgmm
    (jaxgmm-cores) row. VB rows (``vb_tools``: {VB tool: the EM tool of its library}):
    ``ratio_vb_over_em``, this row over its library's EM row (jaxgmm's target <= 1.5),
    and ``ratio_peer_over_jaxgmm_vb``, this row over the jaxgmm-vb row; a VB row is never
    set against an EM row of another library."""
    vb_tools = vb_tools or {}
    size = ("n_samples", "n_features", "n_components", "covariance_type", "dtype")

    def find(tool, row):
        return next(
            (r for r in rows if r["tool"] == tool and all(r[f] == row[f] for f in size)), None
        )

    for row in rows:
        if row["tool"] in vb_tools:
            pairs = (
                (vb_tools[row["tool"]], "ratio_vb_over_em"),
                ("jaxgmm-vb", "ratio_peer_over_jaxgmm_vb"),
            )
        else:
            pairs = (
                ("jaxgmm", "ratio_peer_over_jaxgmm"),
                ("jaxgmm-cores", "ratio_peer_over_jaxgmm_cores"),
            )
        for tool, field in pairs:
            ours = find(tool, row)
            if ours is not None:
                row[field] = row["s_per_iter"] / ours["s_per_iter"]


def float32_minus_float64(rows):
    """Set ``float32_minus_float64`` on each jaxgmm float32 row (either jaxgmm tool) that
    has a float64 twin with an accuracy run, and return one printable line per row."""
    lines = []
    size = ("n_samples", "n_features", "n_components", "covariance_type")
    for row in rows:
        if (
            not row["tool"].startswith("jaxgmm")
            or row["dtype"] != "float32"
            or not row.get("accuracy_iters")
        ):
            continue
        twin = next(
            (
                r
                for r in rows
                if r["tool"] == row["tool"]
                and r["dtype"] == "float64"
                and all(r[f] == row[f] for f in size)
            ),
            None,
        )
        if twin is None:
            continue
        diff = row["accuracy_log_likelihood_f64"] - twin["accuracy_log_likelihood_f64"]
        row["float32_minus_float64"] = diff
        lines.append(
            f"{row['tool']} float32 - float64 after {row['accuracy_iters']} iterations at "
            f"N={row['n_samples']} D={row['n_features']} K={row['n_components']} "
            f"{row['covariance_type']}: {diff:+.2e} nats/sample (target |.| <= 2e-5)"
        )
    return lines
