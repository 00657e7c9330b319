"""Closed-form mean-field variational Bayes for the conjugate Gaussian mixture as pure
functions: the variational state (`VBPosterior`, scikit-learn's fitted attributes), the
update of q(z) (an EM E-step with adjusted weights), the update of q(weights) q(means,
precisions) from EM's sufficient statistics, and the complete ELBO.

Model (the ``conjugate`` prior, `jaxgmm.priors.ConjugatePrior`): weights ~ Dirichlet(alpha)
or stick-breaking with sticks ~ Beta(1, gamma); precisions ~ Wishart(nu0, Psi^-1) (full,
tied), Gamma(nu0/2, Psi_dd/2) per feature (diag), Gamma(nu0/2, tr(Psi)/(2D)) (spherical);
means | precision ~ N(m0, (kappa0 Lambda)^-1). Sources: Bishop (2006) sec. 10.2; Blei and
Jordan (2006) for the stick-breaking weights; the formulas, term by term, are in
docs/vb.md.

Dirichlet-process weights follow scikit-learn: K sticks, each with a Beta posterior (the
last one too), which truncates the variational family, not the model (Kurihara, Welling
and Vlassis 2007): q leaves the components after K empty, so the ELBO bounds the evidence
of the untruncated stick-breaking mixture, and (being below it) also the evidence under
the prior truncated at K.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import digamma, gammaln

from jaxgmm.model.blocked import (
    Moments,
    block_log_prob_fm,
    block_second_moments,
    stats_from_moments,
    sum_over_prepared,
)
from jaxgmm.model.covariance import expansion_cond, get_family, regularize_covariance
from jaxgmm.model.density import weighted_log_prob_fm
from jaxgmm.model.params import GMMParams
from jaxgmm.model.stats import expected_complete_log_likelihood, safe_counts
from jaxgmm.priors._base import matrix_hyperparameter, vector_hyperparameter
from jaxgmm.vb.families import get_vb_family

#: Values of ``update``: "exact" coordinate ascent for the conjugate model (monotone
#: ELBO), or "sklearn", scikit-learn's `BayesianGaussianMixture` updates (the same for
#: full covariances; see docs/vb.md for tied, diag and spherical).
UPDATES = ("exact", "sklearn")

WEIGHT_PRIOR_TYPES = ("dirichlet_distribution", "dirichlet_process")


class VBPosterior(NamedTuple):
    """The variational posterior q, field for field scikit-learn's fitted attributes of
    `sklearn.mixture.BayesianGaussianMixture` (so either can start from the other's).

    Attributes:
        weight_concentration: (n_components,) Dirichlet concentrations alpha_k
            ("dirichlet_distribution"), or (2, n_components): the Beta(a_k, b_k) of the
            sticks ("dirichlet_process"; scikit-learn's tuple, stacked).
        mean_precision: (n_components,) kappa_k.
        means: (n_components, n_features) m_k.
        degrees_of_freedom: (n_components,) nu_k, or () for tied.
        covariances: E_q[Lambda_k]^-1 in the family's covariance layout (full (K, D, D),
            tied (D, D), diag (K, D), spherical (K,)); scikit-learn's ``covariances_``.
        prec_chol: its precision Cholesky (scikit-learn's ``precisions_cholesky_``), the
            family's ``prec_chol`` layout.
    """

    weight_concentration: jax.Array
    mean_precision: jax.Array
    means: jax.Array
    degrees_of_freedom: jax.Array
    covariances: jax.Array
    prec_chol: jax.Array


class VBHyper(NamedTuple):
    """The conjugate prior's hyperparameters as arrays, Psi in the family's layout.

    Attributes:
        weight_concentration: scalar alpha (Dirichlet) or gamma (stick-breaking).
        mean_prior: (n_features,) m0.
        mean_precision: scalar kappa0.
        degrees_of_freedom: scalar nu0.
        covariance_prior: Psi: (D, D) for full and tied, its diagonal (D,) for diag,
            tr(Psi)/D () for spherical (scikit-learn's ``covariance_prior`` layouts).
    """

    weight_concentration: jax.Array
    mean_prior: jax.Array
    mean_precision: jax.Array
    degrees_of_freedom: jax.Array
    covariance_prior: jax.Array


def weight_prior_type(prior):
    """The prior's ``weight_prior_type`` ("dirichlet_distribution" if it has none)."""
    return getattr(prior, "weight_prior_type", "dirichlet_distribution")


def check_vb_prior(spec, n_features):
    """ValueError unless ``spec.prior`` is a resolved ``conjugate`` prior VB can use."""
    prior = spec.prior
    get_vb_family(spec.covariance_type)
    if prior is None or getattr(prior, "name", None) != "conjugate":
        name = None if prior is None else getattr(prior, "name", type(prior).__name__)
        raise ValueError(
            "variational Bayes needs the 'conjugate' prior (spec.prior or prior=), got "
            f"{name!r}; fit_vb(prior=None) uses the conjugate prior with data defaults"
        )
    prior.check(spec, n_features)
    if weight_prior_type(prior) not in WEIGHT_PRIOR_TYPES:
        raise ValueError(
            f"weight_prior_type must be one of {list(WEIGHT_PRIOR_TYPES)}, "
            f"got {weight_prior_type(prior)!r}"
        )


def vb_hyperparameters(spec, n_features, dtype):
    """`VBHyper` of ``spec.prior`` (a resolved conjugate prior) in ``dtype``."""
    check_vb_prior(spec, n_features)
    prior = spec.prior
    psi = matrix_hyperparameter(prior, "covariance_prior", n_features, dtype)
    as_array = lambda v: jnp.asarray(v, dtype)  # noqa: E731
    return VBHyper(
        weight_concentration=as_array(prior.weight_concentration),
        mean_prior=vector_hyperparameter(prior, "mean_prior", n_features, dtype),
        mean_precision=as_array(prior.mean_precision),
        degrees_of_freedom=as_array(prior.dof(spec, n_features)),
        covariance_prior=get_vb_family(spec.covariance_type).prior_scale(psi),
    )


# -- the weights --------------------------------------------------------------------------
def _is_process(spec):
    return weight_prior_type(spec.prior) == "dirichlet_process"


def expected_log_weights(weight_concentration, spec):
    """(K,) E_q[log pi_k]: digamma(alpha_k) - digamma(sum alpha) (Dirichlet), or
    E log v_k + sum_{j<k} E log(1 - v_j) (sticks, Blei and Jordan 2006 eq. 21)."""
    if not _is_process(spec):
        return digamma(weight_concentration) - digamma(jnp.sum(weight_concentration))
    a, b = weight_concentration[0], weight_concentration[1]
    digamma_sum = digamma(a + b)
    log_rest = jnp.cumsum(digamma(b) - digamma_sum)
    return digamma(a) - digamma_sum + jnp.concatenate([jnp.zeros_like(a[:1]), log_rest[:-1]])


def expected_weights(weight_concentration, spec):
    """(K,) the plug-in weights scikit-learn's ``weights_`` holds: E_q[pi] (Dirichlet), or
    E_q[pi_k] = E v_k prod_{j<k} E(1 - v_j) normalised to sum 1 (sticks)."""
    if not _is_process(spec):
        return weight_concentration / jnp.sum(weight_concentration)
    a, b = weight_concentration[0], weight_concentration[1]
    rest = jnp.cumprod(b / (a + b))
    weights = a / (a + b) * jnp.concatenate([jnp.ones_like(a[:1]), rest[:-1]])
    return weights / jnp.sum(weights)


def betaln(a, b):
    """log B(a, b) as log-gammas: jax.scipy.special.betaln (jax 0.10) is off by 1.2e-7 at
    (13, 0.7), enough to put a K = 1 ELBO above the exact evidence."""
    return gammaln(a) + gammaln(b) - gammaln(a + b)


def _update_weights(nk, hyper, spec):
    if not _is_process(spec):
        return hyper.weight_concentration + nk
    # b_k = gamma + sum_{j>k} N_j (scikit-learn's _estimate_weights).
    after = jnp.concatenate([jnp.cumsum(nk[::-1])[-2::-1], jnp.zeros_like(nk[:1])])
    return jnp.stack([1.0 + nk, hyper.weight_concentration + after])


def kl_weights(weight_concentration, hyper, spec):
    """KL(q(weights) || p(weights)), a scalar: Dirichlet(alpha_k) from Dirichlet(alpha0),
    or sum_k KL(Beta(a_k, b_k) || Beta(1, gamma))."""
    if not _is_process(spec):
        alpha, alpha0 = weight_concentration, hyper.weight_concentration
        total = jnp.sum(alpha)
        k = alpha.shape[0]
        return (
            gammaln(total) - jnp.sum(gammaln(alpha)) - gammaln(k * alpha0) + k * gammaln(alpha0)
            + jnp.sum((alpha - alpha0) * (digamma(alpha) - digamma(total)))
        )
    a, b = weight_concentration[0], weight_concentration[1]
    gamma = hyper.weight_concentration
    return jnp.sum(
        betaln(1.0, gamma) - betaln(a, b) + (a - 1.0) * digamma(a) + (b - gamma) * digamma(b)
        + (1.0 + gamma - a - b) * digamma(a + b)
    )


# -- plug-in parameters and the E-step's adjusted weights ---------------------------------
def plugin_params(posterior, spec):
    """`GMMParams` (E_q[weights], m_k, prec_chol): what scikit-learn's ``predict`` and
    ``score_samples`` use."""
    return GMMParams(
        weights=expected_weights(posterior.weight_concentration, spec),
        means=posterior.means,
        prec_chol=posterior.prec_chol,
    )


def _log_det_offset(posterior, spec, exact):
    """(K,) E_q[log|Lambda_k|] - log|E_q Lambda_k| (exact for the q held, or the
    Wishart form scikit-learn's E-step uses for every family)."""
    vb_family = get_vb_family(spec.covariance_type)
    n_features = posterior.means.shape[-1]
    offset = vb_family.log_det_offset(posterior.degrees_of_freedom, n_features, exact)
    return jnp.broadcast_to(offset, posterior.mean_precision.shape)


def log_weights_adjustment(posterior, spec, exact=True):
    """(K,) log w~_k: E_q[log pi_k] + 1/2 (E log|Lambda_k| - log|P_k|) - D / (2 kappa_k),
    so that E_q[log pi_k + log N(x | mu_k, Lambda_k^-1)] = log w~_k + log N(x | m_k, P_k^-1)
    with P_k = E_q[Lambda_k] (Bishop 2006, eqs. 10.64-10.67).

    ``exact=False`` gives scikit-learn's E-step (its ``_estimate_log_prob``), whose
    E log|Lambda| is the Wishart one for every covariance type."""
    n_features = posterior.means.shape[-1]
    adjusted = (
        expected_log_weights(posterior.weight_concentration, spec)
        + 0.5 * _log_det_offset(posterior, spec, exact)
        - 0.5 * n_features / posterior.mean_precision
    )
    # A point mass (kappa = inf, `jaxgmm.vb.fitter.point_mass_posterior`) has no spread:
    # the E-step is EM's, with log w (its E log pi and E log|Lambda| terms are NaN).
    point_mass = jnp.isinf(posterior.mean_precision)
    return jnp.where(point_mass, jnp.log(expected_weights(posterior.weight_concentration, spec)),
                     adjusted)


def estep_log_prob(x, posterior, spec, exact=True):
    """(n_samples, n_components) E_q[log pi_k + log N(x_n | mu_k, Lambda_k^-1)], the
    unnormalised log-responsibilities (in memory; the fitter works block by block)."""
    unit = _unit_params(posterior)
    wlp = weighted_log_prob_fm(x.T, unit, spec)
    return (wlp + log_weights_adjustment(posterior, spec, exact)[:, None]).T


def _unit_params(posterior):
    """GMMParams with weights 1: the log weights are added apart, so that tiny E log pi
    (-1000 for an empty component under a sparse Dirichlet) never round-trips via exp."""
    return GMMParams(
        weights=jnp.ones_like(posterior.mean_precision),
        means=posterior.means,
        prec_chol=posterior.prec_chol,
    )


# -- the blocked E-step -------------------------------------------------------------------
class VBMoments(NamedTuple):
    """EM's `Moments` of q(z) (its ``log_likelihood`` is sum_n log sum_k exp(rho_nk), the
    E-step's normaliser) and the plug-in log-likelihood total sum_n log p(x_n | E params)."""

    moments: Moments
    plugin_log_likelihood: jax.Array


def _block_moments(xt, weight, unit, log_w, to_plugin, spec, expanded, with_second=True):
    """`VBMoments` of one feature-major block (as `jaxgmm.model.blocked.block_moments_fm`,
    plus the plug-in log-likelihood from the same log-densities); without
    ``with_second``, first moments only (see `accumulate_vb_moments`)."""
    log_gauss, whitening = block_log_prob_fm(xt, unit, spec, expanded)  # (K, n), weights 1
    wlp = log_gauss + log_w[:, None]
    top = lax.stop_gradient(jnp.max(wlp, axis=0))
    shifted = jnp.exp(wlp - top)
    total = jnp.sum(shifted, axis=0)
    log_norm = top + jnp.log(total)
    resp = shifted / total
    plugin = jax.scipy.special.logsumexp(log_gauss + to_plugin[:, None], axis=0)
    weight = weight.astype(xt.dtype)
    resp = resp * weight
    first, second = block_second_moments(
        resp, xt, unit.means, spec, expanded, whitening, with_second
    )
    moments = Moments(
        log_likelihood=jnp.sum(log_norm * weight),
        nk=jnp.sum(resp, axis=1),
        first=first,
        second=second,
        n_samples=jnp.sum(weight),
    )
    return VBMoments(moments=moments, plugin_log_likelihood=jnp.sum(plugin * weight))


def accumulate_vb_moments(data, posterior, spec, exact=True):
    """`VBMoments` of prepared `FeatureMajorBlocks` under ``posterior``: one pass, block
    by block under `lax.fori_loop` (one compiled body; padding has weight 0).

    With a `DataScatter` (tied) and where `use_expansion` allows, the blocks form only
    their first moments and the scatter comes from the family's
    ``scatter_from_data_scatter``, as in EM's `accumulate_moments_fm`."""
    family = get_family(spec.covariance_type)
    unit = _unit_params(posterior)
    log_w = log_weights_adjustment(posterior, spec, exact)
    to_plugin = jnp.log(expected_weights(posterior.weight_concentration, spec))

    def pass_with(expanded, with_second=True):
        def block(i):
            return _block_moments(
                data.blocks[i], data.weight[i], unit, log_w, to_plugin, spec, expanded, with_second
            )

        return sum_over_prepared(block, data)

    def from_data_scatter():
        vb = pass_with(True, with_second=False)
        second = family.scatter_from_data_scatter(
            data.data_scatter, vb.moments.first, vb.moments.nk, unit.means
        )
        return vb._replace(moments=vb.moments._replace(second=second))

    uses_data_scatter = data.data_scatter is not None and family.uses_data_scatter
    return expansion_cond(
        family,
        unit.means,
        unit.prec_chol,
        from_data_scatter if uses_data_scatter else lambda: pass_with(True),
        lambda: pass_with(False),
    )


def vb_stats(vb_moments, posterior, spec, exact=True):
    """``(plug-in log-likelihood per sample, SufficientStats of q(z))`` from summed
    `VBMoments`. ``sum_resp_log_resp`` is sum_nk r_nk log r_nk, by EM's identity
    (`jaxgmm.model.blocked.stats_from_moments`) with the adjusted log weights added."""
    moments = vb_moments.moments
    unit = _unit_params(posterior)
    _, stats = stats_from_moments(moments, unit, spec)
    log_w = log_weights_adjustment(posterior, spec, exact)
    # stats_from_moments used weights 1; the normaliser included log w~.
    weighted = jnp.sum(jnp.where(stats.nk > 0, stats.nk * log_w, 0.0))
    stats = stats._replace(sum_resp_log_resp=stats.sum_resp_log_resp + weighted)
    return vb_moments.plugin_log_likelihood / moments.n_samples, stats


# -- the update of q(weights) q(means, precisions) ----------------------------------------
def vb_m_step(stats, spec, hyper, exact=True):
    """The `VBPosterior` maximising the ELBO for q(z) with these `SufficientStats`
    (``exact``; else scikit-learn's update). ``reg_covar`` is added where scikit-learn
    adds it: to the maximum-likelihood covariance sk, which enters as N_k sk (through
    `jaxgmm.model.covariance.regularize_covariance`)."""
    family = get_family(spec.covariance_type)
    vb_family = get_vb_family(spec.covariance_type)
    nk = safe_counts(stats.nk)  # scikit-learn's nk + 10 eps, everywhere in its update
    sk = family.covariance_from_scatter(stats.scatter, nk)
    sk = regularize_covariance(sk, spec.reg_covar, spec.covariance_type, stats.frame)
    kappa0, m0 = hyper.mean_precision, hyper.mean_prior
    kappa = kappa0 + nk
    means = (kappa0 * m0 + nk[:, None] * stats.means) / kappa[:, None]
    diff = stats.means - m0
    shrink = nk * kappa0 / kappa
    dof, cov, prec_chol = vb_family.update(nk, sk, diff, shrink, hyper, stats.frame, exact)
    return VBPosterior(
        weight_concentration=_update_weights(nk, hyper, spec),
        mean_precision=kappa,
        means=means,
        degrees_of_freedom=dof,
        covariances=cov,
        prec_chol=prec_chol,
    )


# -- the ELBO -----------------------------------------------------------------------------
def kl_means(posterior, hyper, spec):
    """sum_k E_q(Lambda_k) KL(N(m_k, (kappa_k Lambda_k)^-1) || N(m0, (kappa0 Lambda_k)^-1))
    = 1/2 sum_k [D (r_k - 1 - log r_k) + kappa0 (m_k - m0)^T P_k (m_k - m0)],
    r_k = kappa0 / kappa_k."""
    family = get_family(spec.covariance_type)
    n_features = posterior.means.shape[-1]
    ratio = hyper.mean_precision / posterior.mean_precision
    m0 = jnp.broadcast_to(hyper.mean_prior, posterior.means.shape)
    offset = family.paired_mahalanobis(m0, posterior.means, posterior.prec_chol)
    return 0.5 * jnp.sum(
        n_features * (ratio - 1.0 - jnp.log(ratio)) + hyper.mean_precision * offset
    )


def expected_log_joint_data(stats, posterior, spec):
    """E_q[log p(X, Z | weights, means, precisions)] (a total) from the statistics of q(z):
    sum_k N_k log w~_k + sum_nk r_nk log N(x_n | m_k, P_k^-1), with the exact log w~."""
    unit = _unit_params(posterior)
    gauss = expected_complete_log_likelihood(stats, unit, spec)
    log_w = log_weights_adjustment(posterior, spec, exact=True)
    return gauss + jnp.sum(jnp.where(stats.nk > 0, stats.nk * log_w, 0.0))


def elbo_terms(stats, posterior, spec, hyper):
    """The ELBO's terms (totals, nats) for q(z) with `SufficientStats` ``stats`` and
    q(theta) = ``posterior``: ``expected_log_joint`` (E log p(X, Z | theta)),
    ``entropy_z`` (-sum r log r), ``kl_weights``, ``kl_means``, ``kl_precisions``."""
    vb_family = get_vb_family(spec.covariance_type)
    n_features = posterior.means.shape[-1]
    return {
        "expected_log_joint": expected_log_joint_data(stats, posterior, spec),
        "entropy_z": -stats.sum_resp_log_resp,
        "kl_weights": kl_weights(posterior.weight_concentration, hyper, spec),
        "kl_means": kl_means(posterior, hyper, spec),
        "kl_precisions": vb_family.kl_precision(
            posterior.degrees_of_freedom, posterior.prec_chol, hyper, n_features
        ),
    }


def elbo(stats, posterior, spec, hyper):
    """The complete ELBO per sample, E_q[log p(X, Z, theta)] - E_q[log q(Z, theta)] over N:
    a lower bound on log p(X) / N with every constant (docs/vb.md)."""
    t = elbo_terms(stats, posterior, spec, hyper)
    total = (
        t["expected_log_joint"] + t["entropy_z"] - t["kl_weights"] - t["kl_means"]
        - t["kl_precisions"]
    )
    return total / stats.n_samples


def sklearn_lower_bound(sum_resp_log_resp, posterior, spec):
    """scikit-learn's ``lower_bound_`` (a total, its ``_compute_lower_bound``) for q(z)
    with sum_nk r log r = ``sum_resp_log_resp`` and q(theta) = ``posterior``: the ELBO
    less the constants it drops (exact for full covariances at its optimum)."""
    family = get_family(spec.covariance_type)
    n_features = posterior.means.shape[-1]
    dof = posterior.degrees_of_freedom
    log_det_w = 2.0 * family.log_det_prec_chol(posterior.prec_chol, n_features) - (
        n_features * jnp.log(dof)
    )
    i = jnp.arange(n_features, dtype=dof.dtype)
    # scikit-learn's _log_wishart_norm: log B(W, nu) without the log pi term.
    log_wishart = -(
        0.5 * dof * log_det_w + 0.5 * dof * n_features * math.log(2.0)
        + jnp.sum(gammaln(0.5 * (dof[..., None] - i)), axis=-1)
    )
    k = posterior.mean_precision.shape[0]
    log_wishart = k * log_wishart if spec.covariance_type == "tied" else jnp.sum(log_wishart)
    wc = posterior.weight_concentration
    if _is_process(spec):
        log_norm_weight = -jnp.sum(betaln(wc[0], wc[1]))
    else:
        log_norm_weight = gammaln(jnp.sum(wc)) - jnp.sum(gammaln(wc))
    return (
        -sum_resp_log_resp - log_wishart - log_norm_weight
        - 0.5 * n_features * jnp.sum(jnp.log(posterior.mean_precision))
    )
