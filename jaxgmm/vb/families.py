"""What variational Bayes needs from each covariance family beyond its geometry: the
conjugate posterior of the precision (Wishart for full and tied, Gamma per feature for
diag, one Gamma per component for spherical), its update, its expected log-determinant,
its KL divergence from the prior, and its Student-t posterior predictive.

The geometry (Mahalanobis terms, scatters, prec_chol conversions, the whitened frame) stays
in `jaxgmm.model.covariance`; these classes only add the conjugate pieces, keyed by the
same ``covariance_type`` strings in `VB_FAMILIES`. A registered covariance family without
an entry here is refused by `get_vb_family` with the list of supported ones.

Notation (per component k, D features): nu the degrees of freedom, P = E_q[Lambda] the
expected precision (``precision = prec_chol @ prec_chol.T``, scikit-learn's
``precisions_cholesky_``), ``covariances`` = P^{-1} (scikit-learn's ``covariances_``),
Psi the prior scale (``covariance_prior``) in the family's layout, nu0 its degrees of
freedom. ``exact``: the coordinate-ascent update of the conjugate model (Bishop 2006, sec.
10.2) when True; scikit-learn's update when False (they differ for tied, diag and
spherical; see docs/vb.md).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax.scipy.special import digamma, gammaln, multigammaln

from jaxgmm._registry import lookup
from jaxgmm.model.covariance import get_family
from jaxgmm.model.linalg import cholesky

_LOG_2 = math.log(2.0)
_LOG_PI = math.log(math.pi)


def _wishart_log_det_offset(dof, n_features):
    """E[log|Lambda|] - log|E Lambda| under Wishart(nu, W) with E Lambda = nu W:
    sum_{i<D} digamma((nu - i)/2) + D log 2 - D log nu (Bishop 2006, eq. B.81)."""
    i = jnp.arange(n_features, dtype=dof.dtype)
    return (
        jnp.sum(digamma(0.5 * (dof[..., None] - i)), axis=-1)
        + n_features * _LOG_2
        - n_features * jnp.log(dof)
    )


def _gamma_log_det_offset(dof, n_features):
    """The same for D independent precisions lambda_d ~ Gamma(nu/2, rate nu/(2 P_d)):
    D (digamma(nu/2) + log 2 - log nu), since E log lambda = digamma(a) - log b."""
    return n_features * (digamma(0.5 * dof) + _LOG_2 - jnp.log(dof))


def _gamma_kl(a, b, a0, b0):
    """KL(Gamma(a, rate b) || Gamma(a0, rate b0)), elementwise."""
    return (
        (a - a0) * digamma(a) - gammaln(a) + gammaln(a0) + a0 * (jnp.log(b) - jnp.log(b0))
        + a * (b0 - b) / b
    )


def _student_t_log_norm(dof, dim):
    """log Gamma((nu + d)/2) - log Gamma(nu/2) - d/2 log(nu pi)."""
    return gammaln(0.5 * (dof + dim)) - gammaln(0.5 * dof) - 0.5 * dim * jnp.log(dof * math.pi)


class VBFull:
    """q(mu_k, Lambda_k) = N(mu_k | m_k, (kappa_k Lambda_k)^-1) Wishart(Lambda_k | nu_k, W_k)
    (Bishop 2006, eqs. 10.59-10.63); scikit-learn's update is this one."""

    name = "full"
    dof_shape_is_per_component = True

    @staticmethod
    def prior_scale(psi):
        return psi

    @staticmethod
    def update(nk, sk, diff, shrink, hyper, frame, exact):
        """(dof (K,), covariances (K, D, D), prec_chol (K, D, D)).

        nu_k = nu0 + N_k; W_k^-1 = Psi + N_k sk_k + N_k kappa0 / kappa_k d_k d_k^T, with sk
        the regularised ML covariance and d_k = xbar_k - m0; covariances = W_k^-1 / nu_k.
        With a ``frame`` P0 (float32 blocked moments) ``sk`` is P0^T sk P0 and the update
        runs there, as EM's M-step does (see `jaxgmm.model.stats.SufficientStats`)."""
        del exact
        family = get_family("full")
        psi, dof0 = hyper.covariance_prior, hyper.degrees_of_freedom
        if frame is not None:
            psi = jnp.einsum("kdi,de,kej->kij", frame, psi, frame)
            diff = jnp.einsum("kd,kde->ke", diff, frame)
        scale = psi + nk[:, None, None] * sk + shrink[:, None, None] * (
            diff[:, :, None] * diff[:, None, :]
        )
        dof = dof0 + nk
        cov = scale / dof[:, None, None]
        if frame is None:
            return dof, cov, family.prec_chol_from_covariance(cov)
        return dof, family.from_frame(cov, frame), family.prec_chol_from_whitened_covariance(
            cov, frame
        )

    @staticmethod
    def log_det_offset(dof, n_features, exact):
        del exact
        return _wishart_log_det_offset(dof, n_features)

    @staticmethod
    def log_det_precision(prec_chol, n_features, dof):
        """(K,) log|P_k| (P = E Lambda)."""
        return 2.0 * get_family("full").log_det_prec_chol(prec_chol, n_features)

    @classmethod
    def kl_precision(cls, dof, prec_chol, hyper, n_features):
        """sum_k KL(Wishart(nu_k, W_k) || Wishart(nu0, Psi^-1)) (Bishop 2006, eqs. B.78-B.82):
        log B(W, nu) - log B(W0, nu0) + (nu - nu0)/2 E log|Lambda| - nu D / 2
        + tr(Psi E Lambda) / 2, with log B(W, nu) = -nu/2 log|W| - nu D/2 log 2
        - log Gamma_D(nu/2)."""
        d = n_features
        family = get_family(cls.name)
        dof0, psi = hyper.degrees_of_freedom, hyper.covariance_prior
        log_det_p = cls.log_det_precision(prec_chol, d, dof)
        log_det_w = log_det_p - d * jnp.log(dof)
        log_det_psi = 2.0 * jnp.sum(jnp.log(jnp.diagonal(cholesky(psi))))
        log_b = -0.5 * dof * log_det_w - 0.5 * dof * d * _LOG_2 - multigammaln(0.5 * dof, d)
        log_b0 = 0.5 * dof0 * log_det_psi - 0.5 * dof0 * d * _LOG_2 - multigammaln(0.5 * dof0, d)
        e_log_det = _wishart_log_det_offset(dof, d) + log_det_p
        per = log_b - log_b0 + 0.5 * (dof - dof0) * e_log_det - 0.5 * dof * d
        # tr(Psi P_k) summed over components (tied: once), as the bound's trace term.
        trace = family.trace_term(jnp.broadcast_to(psi, prec_chol.shape), prec_chol)
        return jnp.sum(per) + 0.5 * trace

    @staticmethod
    def predictive_log_prob_fm(xt, means, prec_chol, dof, mean_precision):
        """(K, n) log St(x | m_k, L_k, nu_k + 1 - D), L_k = (nu_k + 1 - D) kappa_k /
        ((1 + kappa_k) nu_k) P_k (Bishop 2006, eqs. 10.81-10.82)."""
        family = get_family("full")
        d = xt.shape[0]
        df = dof + 1.0 - d
        factor = df * mean_precision / ((1.0 + mean_precision) * dof)
        scaled = prec_chol * jnp.sqrt(factor)[:, None, None]
        maha = family.mahalanobis_fm(xt, means, scaled)
        log_det = family.log_det_prec_chol(scaled, d)
        return (_student_t_log_norm(df, d) + log_det)[:, None] - 0.5 * (df + d)[:, None] * (
            jnp.log1p(maha / df[:, None])
        )


class VBTied(VBFull):
    """One Wishart q(Lambda) shared by the components, q(mu_k | Lambda) per component.

    Exact: nu = nu0 + N, W^-1 = Psi + sum_k [N_k sk + N_k kappa0/kappa_k d_k d_k^T] (sk
    the tied ML covariance + reg_covar, shared). scikit-learn counts the data 1/K times:
    nu = nu0 + N / K, W^-1 = Psi + N/K sk + 1/K sum_k N_k kappa0/kappa_k d_k d_k^T."""

    name = "tied"
    dof_shape_is_per_component = False

    @staticmethod
    def update(nk, sk, diff, shrink, hyper, frame, exact):
        del frame  # tied has no whitened frame
        family = get_family("tied")
        n_components = nk.shape[0]
        total = jnp.sum(nk)
        spread = jnp.einsum("k,kd,ke->de", shrink, diff, diff)
        count = total if exact else total / n_components
        spread = spread if exact else spread / n_components
        dof = hyper.degrees_of_freedom + count
        cov = (hyper.covariance_prior + count * sk + spread) / dof
        return dof, cov, family.prec_chol_from_covariance(cov)

    @staticmethod
    def log_det_precision(prec_chol, n_features, dof):
        return 2.0 * get_family("tied").log_det_prec_chol(prec_chol, n_features)

    @staticmethod
    def predictive_log_prob_fm(xt, means, prec_chol, dof, mean_precision):
        n_components = means.shape[0]
        shared = jnp.broadcast_to(prec_chol, (n_components,) + prec_chol.shape)
        return VBFull.predictive_log_prob_fm(
            xt, means, shared, jnp.broadcast_to(dof, (n_components,)), mean_precision
        )


class VBDiag:
    """q(mu_kd, lambda_kd) = N(m_kd, 1/(kappa_k lambda_kd)) Gamma(nu_k/2, rate nu_k/(2 P_kd))
    per feature: a product of D one-dimensional Normal-Gamma posteriors. The update
    (nu_k = nu0 + N_k, scale Psi_dd + N_k sk_kd + N_k kappa0/kappa_k d_kd^2) is
    scikit-learn's; its E-step's E log|Lambda| is the Wishart one (sum_i digamma((nu-i)/2)),
    where the exact one is D digamma(nu/2)."""

    name = "diag"
    dof_shape_is_per_component = True

    @staticmethod
    def prior_scale(psi):
        return jnp.diagonal(psi)

    @staticmethod
    def update(nk, sk, diff, shrink, hyper, frame, exact):
        del frame, exact
        family = get_family("diag")
        dof = hyper.degrees_of_freedom + nk
        scale = hyper.covariance_prior + nk[:, None] * sk + shrink[:, None] * jnp.square(diff)
        cov = scale / dof[:, None]
        return dof, cov, family.prec_chol_from_covariance(cov)

    @staticmethod
    def log_det_offset(dof, n_features, exact):
        if exact:
            return _gamma_log_det_offset(dof, n_features)
        return _wishart_log_det_offset(dof, n_features)

    @staticmethod
    def log_det_precision(prec_chol, n_features, dof):
        return 2.0 * get_family("diag").log_det_prec_chol(prec_chol, n_features)

    @staticmethod
    def kl_precision(dof, prec_chol, hyper, n_features):
        """sum_kd KL(Gamma(nu_k/2, nu_k/(2 P_kd)) || Gamma(nu0/2, Psi_dd/2))."""
        a = 0.5 * dof[:, None]
        b = a / jnp.square(prec_chol)
        a0 = 0.5 * hyper.degrees_of_freedom
        return jnp.sum(_gamma_kl(a, b, a0, 0.5 * hyper.covariance_prior))

    @staticmethod
    def predictive_log_prob_fm(xt, means, prec_chol, dof, mean_precision):
        """(K, n) sum_d log St(x_d | m_kd, kappa_k/(1+kappa_k) P_kd, nu_k): per feature the
        Normal-Gamma predictive, a Student-t with 2a = nu_k degrees of freedom."""
        factor = mean_precision / (1.0 + mean_precision)
        scaled = prec_chol * jnp.sqrt(factor)[:, None]  # (K, D)
        y = (xt[None] - means[:, :, None]) * scaled[:, :, None]  # (K, D, n)
        df = dof[:, None, None]
        per_feature = -0.5 * (df + 1.0) * jnp.log1p(jnp.square(y) / df)
        d = xt.shape[0]
        const = d * _student_t_log_norm(dof, 1.0) + jnp.sum(jnp.log(scaled), axis=-1)
        return const[:, None] + jnp.sum(per_feature, axis=1)


class VBSpherical(VBDiag):
    """q(mu_k, lambda_k) = N(m_k, I/(kappa_k lambda_k)) Gamma(nu_k/2, rate nu_k/(2 P_k)), one
    precision per component shared by its D features.

    Exact: each point brings D observations of lambda_k, so nu_k = nu0 + D N_k and the scale
    is Psi_s + D (N_k sk_k + N_k kappa0/kappa_k mean_d d_kd^2), Psi_s = tr(Psi)/D.
    scikit-learn adds N_k (not D N_k) to both: its mean over features counts as one
    observation."""

    name = "spherical"

    @staticmethod
    def prior_scale(psi):
        return jnp.trace(psi) / psi.shape[-1]

    @staticmethod
    def update(nk, sk, diff, shrink, hyper, frame, exact):
        del frame
        family = get_family("spherical")
        n_features = diff.shape[-1]
        count = n_features if exact else 1
        dof = hyper.degrees_of_freedom + count * nk
        scale = hyper.covariance_prior + count * (
            nk * sk + shrink * jnp.mean(jnp.square(diff), axis=-1)
        )
        cov = scale / dof
        return dof, cov, family.prec_chol_from_covariance(cov)

    @staticmethod
    def log_det_precision(prec_chol, n_features, dof):
        return 2.0 * get_family("spherical").log_det_prec_chol(prec_chol, n_features)

    @staticmethod
    def kl_precision(dof, prec_chol, hyper, n_features):
        """sum_k KL(Gamma(nu_k/2, nu_k/(2 P_k)) || Gamma(nu0/2, Psi_s/2))."""
        a = 0.5 * dof
        b = a / jnp.square(prec_chol)
        a0 = 0.5 * hyper.degrees_of_freedom
        return jnp.sum(_gamma_kl(a, b, a0, 0.5 * hyper.covariance_prior))

    @staticmethod
    def predictive_log_prob_fm(xt, means, prec_chol, dof, mean_precision):
        """(K, n) log of the D-dimensional Student-t with nu_k degrees of freedom and
        precision kappa_k/(1+kappa_k) P_k I (lambda_k shared by the features)."""
        d = xt.shape[0]
        scaled = prec_chol * jnp.sqrt(mean_precision / (1.0 + mean_precision))
        maha = get_family("spherical").mahalanobis_fm(xt, means, scaled)
        const = _student_t_log_norm(dof, d) + d * jnp.log(scaled)
        return const[:, None] - 0.5 * (dof + d)[:, None] * jnp.log1p(maha / dof[:, None])


VB_FAMILIES = {cls.name: cls for cls in (VBFull, VBTied, VBDiag, VBSpherical)}


def get_vb_family(covariance_type):
    return lookup(
        VB_FAMILIES,
        covariance_type,
        "covariance_type",
        "variational Bayes supports covariance_type in {valid}, got {name}",
    )
