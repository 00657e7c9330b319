"""``bridge``: bridge sampling for log p(X) from posterior draws (Meng and Wong 1996's
iterative optimal bridge, in the form of Gronau et al. 2017's ``bridgesampling``), with a
proposal symmetrised over relabellings (Fruhwirth-Schnatter 2004).

The proposal is a multivariate normal g fitted, in NumPyro's unconstrained space, to the
relabelled draws of the first half of each chain, carried to the sites (constrained
space) with the bijection's Jacobian, and symmetrised: g_S(theta) = mean over sigma in S
of g(sigma theta), S all K! permutations of the component labels (hyper-sites are not
permuted). The posterior is label-symmetric (an exchangeable prior), so both it and g_S
give every relabelled mode the same mass; a proposal sitting on one mode only would miss
K! - 1 of them and put the estimate log K! too low. The target q(theta) = p(X | theta)
p(theta) and g_S are both densities over the sites, so the bridge ratio needs no
Jacobian of its own. The bridge iteration uses the second half of each chain and as many
proposal draws.

Standard error: Fruhwirth-Schnatter (2004)'s approximate relative mean-squared error of
the estimate of p(X), RE^2 = Var_g(f1) / (N2 E_g(f1)^2) + Var_post(f2) / (ESS(f2)
E_post(f2)^2), with f1 = q / (s1 q + s2 r g_S) at the proposal draws and f2 = g_S / (s1 q +
s2 r g_S) at the posterior draws, ESS the draws' effective sample size (the chains'
autocorrelation); SE(log p(X)) ~= sqrt(RE^2) (bridgesampling's ``error_measures``).
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.diagnostics import effective_sample_size
from scipy.special import logsumexp

from jaxgmm.bayes.evidence._common import LogEvidence, prepare
from jaxgmm.bayes.evidence._sites import SiteLayout, map_points
from jaxgmm.fit.validation import check_int, check_positive
from jaxgmm.model.params import GMMParams

#: The largest K whose K! relabellings are used by default.
MAX_SYMMETRISED_COMPONENTS = 6


def _permutation_set(prior, k, permutations, key):
    """(M, K) int array of the relabellings the proposal is averaged over."""
    if k == 1:
        return np.arange(k)[None]
    if not getattr(prior, "exchangeable", True):
        # Its K! labellings are modes of unequal mass that NUTS does not cross: draws from
        # one of them cannot stand for the others, as they do under a symmetric posterior
        # (toy1d, K = 2, stick-breaking gamma = 1: 0.5 nats low, 4 standard errors).
        raise ValueError(
            f"bridge: prior {getattr(prior, 'name', prior)!r} is not exchangeable in the "
            "labels, so the posterior's relabelled modes differ and the NUTS draws, from "
            "one of them, cannot be symmetrised; use method 'smc' (or 'exact' on small data)"
        )
    if permutations is None:
        if k > MAX_SYMMETRISED_COMPONENTS:
            raise ValueError(
                f"bridge: symmetrising the proposal over all {k}! = {math.factorial(k)} "
                f"relabellings is too costly for n_components > {MAX_SYMMETRISED_COMPONENTS}; "
                "pass permutations=M (M random relabellings, identity included) or an "
                "(M, K) array of permutations"
            )
        return np.array(list(itertools.permutations(range(k))))
    if isinstance(permutations, (int, np.integer)) and not isinstance(permutations, bool):
        m = check_int(permutations, "permutations", 1)
        m = min(m, math.factorial(k))
        rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
        chosen = {tuple(range(k))}
        while len(chosen) < m:
            chosen.add(tuple(rng.permutation(k)))
        return np.array(sorted(chosen))
    perms = np.asarray(permutations)
    if (
        perms.ndim != 2
        or perms.shape[1] != k
        or not np.issubdtype(perms.dtype, np.integer)
        or not np.all(np.sort(perms, axis=1) == np.arange(k))
    ):
        raise ValueError(
            f"bridge: permutations must be None, an int or an (M, {k}) int array whose rows "
            f"are permutations of 0..{k - 1}, got {permutations!r}"
        )
    return perms


def _permute_sites(layout, sites, perm):
    """The sites of the draw whose component j is component perm[j] of ``sites``;
    hyper-sites (those `site_values` does not return) unchanged."""
    params = layout.params(sites)
    # tied's prec_chol is shared by all components (covariance families'
    # permute_components is NumPy-only, not traceable).
    prec_chol = (
        params.prec_chol if layout.spec.covariance_type == "tied" else params.prec_chol[perm]
    )
    permuted = GMMParams(
        weights=params.weights[perm], means=params.means[perm], prec_chol=prec_chol
    )
    return {**sites, **layout.prior.site_values(permuted, layout.spec)}


def _check_posterior(posterior, spec, layout):
    samples = getattr(posterior, "samples", None)
    draws = getattr(posterior, "draws", None)
    if not isinstance(samples, dict) or draws is None:
        raise ValueError(
            "bridge: posterior must be a jaxgmm.bayes.NUTSResult (from jaxgmm.fit_nuts), "
            f"got {type(posterior).__name__}"
        )
    if getattr(posterior, "spec", spec) != spec:
        raise ValueError(
            "bridge: posterior was sampled for a different spec (or prior) than the one "
            f"given: {posterior.spec!r} vs {spec!r}"
        )
    missing = [name for name in layout.names if name not in samples]
    if missing:
        raise ValueError(f"bridge: posterior.samples lacks the prior's sites {missing}")
    n_draws = np.shape(samples[layout.names[0]])[1]
    if n_draws < 4:
        raise ValueError(f"bridge: needs at least 4 draws per chain, got {n_draws}")
    return samples, draws


def _bridge_iteration(l1, l2, max_iter, tol):
    """(log r, iterations) of Meng and Wong's optimal bridge, l1 / l2 the log q/g at the
    posterior / proposal draws, shifted by lstar (Gronau et al. 2017, appendix)."""
    n1, n2 = l1.size, l2.size
    log_s1, log_s2 = math.log(n1 / (n1 + n2)), math.log(n2 / (n1 + n2))
    log_r = 0.0
    for i in range(1, max_iter + 1):
        log_num = logsumexp(l2 - np.logaddexp(log_s1 + l2, log_s2 + log_r)) - math.log(n2)
        log_den = logsumexp(-np.logaddexp(log_s1 + l1, log_s2 + log_r)) - math.log(n1)
        new = log_num - log_den
        if abs(new - log_r) < tol:
            return new, i
        log_r = new
    return log_r, max_iter


def log_evidence_bridge(
    key,
    x,
    spec,
    *,
    posterior=None,
    num_warmup: int = 500,
    num_samples: int = 1000,
    num_chains: int = 4,
    permutations=None,
    max_iter: int = 1000,
    tol: float = 1e-10,
) -> LogEvidence:
    """Bridge-sampling estimate of log p(X) (a total, in nats) from posterior draws.

    Args:
        key: PRNG key (NUTS, the proposal draws).
        x: array of shape (n_samples, n_features).
        spec: `GMMSpec` with a resolved, proper prior.
        posterior: a `NUTSResult` of ``jaxgmm.fit_nuts(key, x, spec)``; default: run NUTS
            with ``num_warmup``, ``num_samples`` (per chain, >= 4) and ``num_chains``.
        permutations: the relabellings the proposal is averaged over: None (all K!,
            K <= 6; refused above), an int M (M distinct random ones, identity included),
            or an (M, K) int array. Any set keeps the estimate consistent (g_S is a
            normalised density); fewer than all K! makes it noisier. A prior with
            ``exchangeable = False`` is never symmetrised.
        max_iter, tol: of the bridge fixed-point iteration (on log r).

    Returns:
        `LogEvidence`; diagnostics: ``relative_mse`` (RE^2 above), ``n_posterior_draws``
        (N1), ``n_proposal_draws`` (N2), ``posterior_ess`` (ESS of f2), ``proposal_ess`` and
        ``pareto_k`` (importance ESS and PSIS k-hat of the weights q / g_S at the proposal
        draws: k-hat above 0.7 means the proposal misses posterior mass), ``n_iterations``,
        ``n_permutations``.
    """
    x, spec = prepare(x, spec)
    max_iter = check_int(max_iter, "max_iter", 1)
    tol = check_positive(tol, "tol")
    prior, k, dtype = spec.prior, spec.n_components, x.dtype
    layout = SiteLayout(prior, spec, x.shape[1], dtype)
    key_nuts, key_perm, key_proposal, key_sigma = jax.random.split(key, 4)
    perms = _permutation_set(prior, k, permutations, key_perm)
    if posterior is None:
        from jaxgmm.bayes.nuts import fit_nuts

        posterior = fit_nuts(
            key_nuts, x, spec, num_warmup=num_warmup,
            num_samples=check_int(num_samples, "num_samples", 4),
            num_chains=check_int(num_chains, "num_chains", 1),
        )  # fmt: skip
    samples, draws = _check_posterior(posterior, spec, layout)
    n_chains, n_draws = np.shape(samples[layout.names[0]])[:2]
    half = n_draws // 2

    def flat(tree, part):
        return jax.tree_util.tree_map(
            lambda a: jnp.asarray(a[:, part], dtype).reshape((-1,) + np.shape(a)[2:]), tree
        )

    # The proposal: relabelled first halves, in unconstrained space.
    first = slice(0, half)
    fit_sites = {name: samples[name] for name in layout.names}
    u_fit = np.asarray(
        map_points(
            lambda s, p: layout.to_unconstrained({**s, **prior.site_values(p, spec)}),
            flat(fit_sites, first),
            flat(GMMParams(*draws), first),
        ),
        dtype=np.float64,
    )
    d = layout.n_unconstrained
    mean = u_fit.mean(axis=0)
    cov = np.atleast_2d(np.cov(u_fit, rowvar=False)) + 1e-10 * np.eye(d)
    chol = np.linalg.cholesky(cov)
    inv_chol = jnp.asarray(np.linalg.inv(chol), dtype)
    log_norm = -np.sum(np.log(np.diag(chol))) - 0.5 * d * math.log(2 * math.pi)
    perms_j = jnp.asarray(perms)

    def log_q(sites):
        return layout.log_prior(sites) + layout.log_likelihood(sites, x)

    def log_g(sites):
        def one(perm):
            u = layout.to_unconstrained(_permute_sites(layout, sites, perm))
            _, log_det = layout.from_unconstrained(u)
            z = inv_chol @ (u - mean)
            return -0.5 * z @ z + log_norm - log_det

        return logsumexp_j(jax.lax.map(one, perms_j)) - math.log(perms.shape[0])

    def log_ratio(sites):
        return log_q(sites) - log_g(sites)

    # Posterior side: the second halves, raw (q and g_S are label-invariant).
    second = slice(half, n_draws)
    post_sites = flat(fit_sites, second)
    l1 = np.asarray(jax.jit(lambda s: map_points(log_ratio, s))(post_sites), dtype=np.float64)
    n1 = l1.size
    # Proposal side: u ~ N(mean, cov), then a random relabelling from the set, so that the
    # draws follow g_S (needed when the set is not a group).
    z = jax.random.normal(key_proposal, (n1, d), dtype)
    u_prop = jnp.asarray(mean, dtype) + z @ jnp.asarray(chol.T, dtype)
    sigma = jax.random.randint(key_sigma, (n1,), 0, perms.shape[0])
    inverse = jnp.asarray(np.argsort(perms, axis=1))[sigma]

    def proposal_ratio(u, inv):
        sites, _ = layout.from_unconstrained(u)
        return log_ratio(_permute_sites(layout, sites, inv))

    l2 = np.asarray(
        jax.jit(lambda u, i: map_points(proposal_ratio, u, i))(u_prop, inverse), dtype=np.float64
    )
    if not np.all(np.isfinite(l1)):
        raise ValueError(
            "bridge: the log joint or the proposal density is not finite at "
            f"{int(np.sum(~np.isfinite(l1)))} posterior draws"
        )
    l2 = np.where(np.isnan(l2), -np.inf, l2)
    lstar = float(np.median(l1))
    log_r, n_iterations = _bridge_iteration(l1 - lstar, l2 - lstar, max_iter, tol)
    if n_iterations >= max_iter:
        raise ValueError(f"bridge: the iteration did not converge within max_iter={max_iter}")

    n2 = l2.size
    s1, s2 = n1 / (n1 + n2), n2 / (n1 + n2)
    r = math.exp(log_r)
    f1 = np.exp(l2 - lstar - np.logaddexp(math.log(s1) + l2 - lstar, math.log(s2 * r)))
    f2 = np.exp(-np.logaddexp(math.log(s1) + l1 - lstar, math.log(s2 * r)))
    f2_chains = f2.reshape(n_chains, n_draws - half)
    ess_f2 = float(np.sum(effective_sample_size(f2_chains))) if n_draws - half >= 2 else n1
    ess_f2 = min(max(ess_f2, 1.0), float(n1))
    relative_mse = float(
        np.var(f1, ddof=1) / (n2 * np.mean(f1) ** 2)
        + np.var(f2, ddof=1) / (ess_f2 * np.mean(f2) ** 2)
    )
    proposal_ess, k_hat = _weight_diagnostics(l2)
    diagnostics = {
        "relative_mse": relative_mse,
        "n_posterior_draws": int(n1),
        "n_proposal_draws": int(n2),
        "posterior_ess": ess_f2,
        "proposal_ess": proposal_ess,
        "pareto_k": k_hat,
        "n_iterations": int(n_iterations),
        "n_permutations": int(perms.shape[0]),
        "n_chains": int(n_chains),
    }
    return LogEvidence(
        estimate=float(log_r + lstar),
        stderr=math.sqrt(relative_mse),
        method="bridge",
        diagnostics=diagnostics,
    )


def logsumexp_j(a):
    """logsumexp of a 1-D traced array."""
    return jax.scipy.special.logsumexp(a)


def _weight_diagnostics(log_weights):
    """(importance ESS, PSIS k-hat) of log weights; k-hat from `jaxgmm.bayes.psis`."""
    finite = log_weights[np.isfinite(log_weights)]
    lw = finite - logsumexp(finite)
    ess = float(np.exp(-logsumexp(2 * lw)))
    try:
        from jaxgmm.bayes.psis import pareto_k
    except ImportError:  # pragma: no cover - psis ships with jaxgmm
        return ess, None
    return ess, float(pareto_k(log_weights))
