"""Hierarchical priors (issue 20 item 5): a prior's hyper-sites (sample sites GMMParams does
not hold) are optimised by gradient MAP and inferred by SVI and NUTS; EM, VB and
``log_prior(params)`` refuse with a message naming the prior."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats

import jaxgmm
from jaxgmm.gradient import hyper_values
from jaxgmm.priors import make_prior, resolve_prior


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(40, 2)), rng.normal(size=(40, 2)) * 0.5 + 5.0])
    spec = jaxgmm.GMMSpec(2, "full", prior=make_prior("hierarchical_conjugate"))
    return jnp.asarray(x), resolve_prior(spec, jnp.asarray(x))


def _scipy_log_joint_in_scale(scale, params, prior):
    """log p(scale) + sum_k log IW(Sigma_k | nu, scale Psi0), from SciPy (the terms of the
    log joint that depend on the scale)."""
    psi0 = np.asarray(prior.covariance_prior)
    cov = np.asarray(jaxgmm.covariances(params, "full"))
    g = prior.scale_shape
    nu = psi0.shape[0] + 2
    out = stats.gamma.logpdf(scale, g, scale=1 / g)
    for c in cov:
        out += stats.invwishart.logpdf(c, df=nu, scale=scale * psi0)
    return out


def test_gradient_map_optimises_the_hyper_site(problem):
    x, spec = problem
    result = jaxgmm.fit_gradient(jax.random.PRNGKey(0), x, spec, n_init=2, max_steps=300)
    assert result.bound_name == "log_posterior"
    scale = float(hyper_values(result.state.fitter_state.u, spec)["covariance_scale"])
    # At the joint MAP the scale maximises the log joint given the parameters (SciPy).
    best = optimize.minimize_scalar(
        lambda s: -_scipy_log_joint_in_scale(s, result.params, spec.prior),
        bounds=(1e-6, 100.0),
        method="bounded",
        options={"xatol": 1e-10},
    )
    np.testing.assert_allclose(scale, best.x, rtol=1e-4)
    assert np.all(np.isfinite(result.restarts.log_posterior))
    # The closed-form conditional mode the fit starts from is the same maximiser.
    start = spec.prior.initial_hyper_values(result.params, spec)["covariance_scale"]
    np.testing.assert_allclose(float(start), best.x, rtol=1e-6)


@pytest.mark.parametrize("guide", ["auto_delta", "auto_normal"])
def test_svi_infers_the_hyper_site(problem, guide):
    x, spec = problem
    result = jaxgmm.fit_svi(
        jax.random.PRNGKey(0), x, spec, guide=guide, num_steps=150, n_eval_samples=50
    )
    assert np.isfinite(result.log_posterior) and np.isfinite(result.elbo)


def test_nuts_samples_the_hyper_site(problem):
    x, spec = problem
    result = jaxgmm.fit_nuts(
        jax.random.PRNGKey(0), x, spec, num_warmup=30, num_samples=30, num_chains=1
    )
    scale = np.asarray(result.samples["covariance_scale"])
    assert scale.size == 30 and np.all(scale > 0)
    assert np.all(np.isfinite(result.log_joint))


def test_em_vb_and_marginal_log_prior_refuse(problem):
    x, spec = problem
    params = jaxgmm.initial_params(jax.random.PRNGKey(0), x, spec)
    one = jax.tree_util.tree_map(lambda a: a[0], params)
    with pytest.raises(ValueError, match="EM has no closed-form M-step for the prior "
                       r"'hierarchical_conjugate': it is hierarchical \(hyper-sites"):
        jaxgmm.fit_em(jax.random.PRNGKey(0), x, spec)
    with pytest.raises(ValueError, match="'hierarchical_conjugate'"):
        jaxgmm.fit_vb(jax.random.PRNGKey(0), x, spec)
    with pytest.raises(ValueError, match="is hierarchical .*log_density_of_sites"):
        jaxgmm.log_prior(one, spec)
    with pytest.raises(ValueError, match=r"lacks hyper-site\(s\) \['covariance_scale'\]"):
        spec.prior.log_density_of_sites(spec.prior.site_values(one, spec), spec, 2, x.dtype)
    assert spec.prior.hyper_sites == ("covariance_scale",) and spec.prior.exchangeable
    assert not make_prior("conjugate", weight_prior_type="dirichlet_process").exchangeable
