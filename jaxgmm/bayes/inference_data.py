"""ArviZ `InferenceData` of NUTS and SVI posteriors: relabelled draws with named dims and
coords, NUTS sample statistics under ArviZ's names, a pointwise log-likelihood group (one
value per training sample per draw, from the core's one density) and the observed data, so
that ``az.summary``, ``az.loo``, ``az.waic`` and ``az.compare`` work on jaxgmm's fits.

ArviZ is optional (``pip install 'jaxgmm[arviz]'``): it is imported only when an
`InferenceData` is built. The ``InferenceData`` API is ArviZ's 0.x one (0.17 to 0.23);
ArviZ 1.0 replaced it with ``xarray.DataTree`` and is refused by name.

Groups and dims (K components, D features, n training samples):

- ``posterior``: ``weights`` (chain, draw, component), ``means`` (chain, draw, component,
  feature), ``covariances`` in the family's shape with dims from ``component``,
  ``feature`` and ``feature_bis`` (full: (component, feature, feature_bis), tied:
  (feature, feature_bis), diag: (component, feature), spherical: (component,)).
- ``log_likelihood``: ``x`` (chain, draw, observation): log p(x_n | draw).
- ``observed_data``: ``x`` (observation, feature).
- ``sample_stats`` (NUTS): ``diverging``, ``lp`` (minus NumPyro's potential energy: the log
  density NUTS samples, in its unconstrained space), ``energy``, ``n_steps``,
  ``tree_depth`` (log2(n_steps) + 1, as ``az.from_numpyro``), ``acceptance_rate``,
  ``step_size``; and ``relabel_permutation`` (chain, draw, component): the relabelling,
  ``means[..., j, :] = raw_means[..., relabel_permutation[..., j], :]``.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers

from jaxgmm.bayes.model import model_prior
from jaxgmm.bayes.posterior import _covariances_of_draws, relabel
from jaxgmm.fit.validation import check_data, check_int
from jaxgmm.model.covariance import get_family
from jaxgmm.model.density import log_prob

INSTALL_HINT = "pip install 'jaxgmm[arviz]'"

# NumPyro's extra fields and the names ArviZ gives them (as az.from_numpyro does).
NUTS_EXTRA_FIELDS = (
    "diverging",
    "potential_energy",
    "energy",
    "num_steps",
    "accept_prob",
    "adapt_state.step_size",
)
_ARVIZ_STAT_NAMES = {
    "potential_energy": "lp",
    "num_steps": "n_steps",
    "accept_prob": "acceptance_rate",
    "adapt_state.step_size": "step_size",
}


def import_arviz():
    """The ``arviz`` module; ImportError with the install command when it is absent or is
    ArviZ 1.x (whose ``DataTree`` API this module does not build)."""
    try:
        with warnings.catch_warnings():
            # 0.23 announces the 1.0 refactor on import; the pin below keeps us off it.
            warnings.filterwarnings("ignore", "ArviZ is undergoing", FutureWarning)
            import arviz
    except ImportError as exc:
        raise ImportError(
            f"to_inference_data needs ArviZ (>= 0.17, < 1), which is not installed: {INSTALL_HINT}"
        ) from exc
    major = int(str(arviz.__version__).split(".")[0])
    if major >= 1:
        raise ImportError(
            f"to_inference_data builds ArviZ 0.x InferenceData (0.17 to 0.23); ArviZ "
            f"{arviz.__version__} is installed: {INSTALL_HINT} installs a supported version"
        )
    return arviz


@functools.partial(jax.jit, static_argnames=("spec", "batch_size"))
def _pointwise(x, flat_draws, spec, batch_size):
    # lax.map over draws, vmapped over batch_size at a time: memory O(batch * n * K), and
    # no vmap over thousands of draws at once.
    return jax.lax.map(lambda p: log_prob(x, p, spec), flat_draws, batch_size=batch_size)


def pointwise_log_likelihood(x, draws, spec, batch_size=32):
    """log p(x_n | draw) of every draw and sample, via the core's `jaxgmm.log_prob`.

    Args:
        x: array of shape (n_samples, n_features).
        draws: `GMMParams` with leading draw axes (...), e.g. (n_chains, n_draws).
        spec: `GMMSpec`.
        batch_size: draws evaluated together (memory O(batch_size * n_samples * K)).

    Returns:
        numpy array of shape (..., n_samples).
    """
    batch_size = check_int(batch_size, "batch_size", 1)
    lead = np.shape(draws.means)[:-2]
    flat = jax.tree_util.tree_map(
        lambda a: jnp.reshape(jnp.asarray(a, x.dtype), (-1,) + np.shape(a)[len(lead) :]), draws
    )
    n_draws = int(np.prod(lead, dtype=int))
    out = _pointwise(x, flat, spec, min(batch_size, max(n_draws, 1)))
    return np.asarray(out).reshape(lead + (x.shape[0],))


def _covariance_dims(spec):
    """Dim names of one draw's covariances, read off the family's shape: K and D are given
    distinct sizes, so each axis says whether it runs over components or features without
    a branch on the covariance type."""
    k_probe, d_probe = 2, 3
    shape = get_family(spec.covariance_type).prec_chol_shape(k_probe, d_probe)
    names, features_seen = [], 0
    for size in shape:
        if size == k_probe:
            names.append("component")
        else:
            names.append("feature" if features_seen == 0 else "feature_bis")
            features_seen += 1
    return tuple(names)


def _check_x(x, spec, n_features, what):
    x = check_data(x, "x", n_components=spec.n_components, dtype=getattr(x, "dtype", None))
    if x.shape[1] != n_features:
        raise ValueError(
            f"x must be the training data of this {what} fit: it has {x.shape[1]} features, "
            f"the draws have {n_features}"
        )
    return x


def _check_same_data(observed, recorded, x, what):
    """ValueError unless the per-sample log-likelihoods computed on ``x`` equal those the
    fit recorded on its training data (so ``x`` is that data, in the same scale)."""
    observed = np.asarray(observed, np.float64)
    recorded = np.asarray(recorded, np.float64)
    tol = 1e3 * float(jnp.finfo(x.dtype).eps) * (1.0 + np.abs(recorded))
    gap = np.abs(observed - recorded)
    if not np.all(gap <= tol):
        worst = int(np.argmax(gap - tol))
        raise ValueError(
            f"x must be the training data of this {what} fit (as passed to the fit, in the "
            f"same units): its log-likelihood per sample is {observed.flat[worst]:.6g} where "
            f"the fit recorded {recorded.flat[worst]:.6g}"
        )


def from_draws(
    draws,
    x,
    spec,
    *,
    sample_stats=None,
    feature_names=None,
    attrs=None,
    log_likelihood=True,
    batch_size=32,
):
    """An ArviZ `InferenceData` from `GMMParams` draws (already relabelled).

    Args:
        draws: `GMMParams` whose leaves have leading axes (n_chains, n_draws).
        x: training data, array of shape (n_samples, n_features).
        spec: `GMMSpec`.
        sample_stats: optional dict name -> array (n_chains, n_draws, ...).
        feature_names: optional n_features names for the ``feature`` coordinate
            (default 0 .. D-1).
        attrs: optional dict of str/number attributes for every group.
        log_likelihood: whether to build the pointwise ``log_likelihood`` group
            ((n_chains, n_draws, n_samples) values).
        batch_size: draws evaluated together for that group.

    Returns:
        ``arviz.InferenceData`` (groups and dims: see the module docstring).
    """
    az = import_arviz()
    lead = np.shape(draws.means)[:-2]
    if len(lead) != 2:
        raise ValueError(
            f"draws must have leading axes (n_chains, n_draws), got means of shape "
            f"{np.shape(draws.means)}"
        )
    n_components, n_features = np.shape(draws.means)[-2:]
    if feature_names is None:
        feature_names = np.arange(n_features)
    else:
        feature_names = np.asarray([str(f) for f in feature_names])
        if feature_names.shape != (n_features,):
            raise ValueError(
                f"feature_names must have {n_features} entries, got {feature_names.size}"
            )
    coords = {
        "component": np.arange(n_components),
        "feature": feature_names,
        "feature_bis": feature_names,
        "observation": np.arange(x.shape[0]),
    }
    attrs = dict(attrs or {})
    # One dataset per group: ``x`` names the data in both log_likelihood (per observation)
    # and observed_data (observation x feature), so dims cannot be shared across groups.
    dataset = functools.partial(az.dict_to_dataset, coords=coords, attrs=attrs)
    groups = {
        "posterior": dataset(
            {
                "weights": np.asarray(draws.weights),
                "means": np.asarray(draws.means),
                "covariances": _covariances_of_draws(draws, spec),
            },
            dims={
                "weights": ["component"],
                "means": ["component", "feature"],
                "covariances": list(_covariance_dims(spec)),
            },
        ),
        "observed_data": dataset(
            {"x": np.asarray(x)}, dims={"x": ["observation", "feature"]}, default_dims=[]
        ),
    }
    if log_likelihood:
        groups["log_likelihood"] = dataset(
            {"x": pointwise_log_likelihood(x, draws, spec, batch_size)},
            dims={"x": ["observation"]},
        )
    if sample_stats:
        groups["sample_stats"] = dataset(
            {k: np.asarray(v) for k, v in sample_stats.items()},
            dims={"relabel_permutation": ["component"]},
        )
    idata = az.InferenceData(**groups)
    return idata


def _prior_name(spec):
    return getattr(spec.prior, "name", type(spec.prior).__name__)


def _attrs(spec, fitter):
    return {
        "jaxgmm_fitter": fitter,
        "inference_library": "numpyro",
        "n_components": int(spec.n_components),
        "covariance_type": spec.covariance_type,
        "prior": _prior_name(spec),
        "relabelled": "draws permuted to the reference by jaxgmm.bayes.relabel",
    }


def nuts_inference_data(result, x, *, feature_names=None, log_likelihood=True, batch_size=32):
    """ArviZ `InferenceData` of a `NUTSResult`: see `NUTSResult.to_inference_data`."""
    spec = result.spec
    n_features = np.shape(result.draws.means)[-1]
    x = _check_x(x, spec, n_features, "NUTS")
    stats = {}
    extra = result.mcmc.get_extra_fields(group_by_chain=True) if result.mcmc else {}
    for field in NUTS_EXTRA_FIELDS:
        if field not in extra:
            continue
        value = np.asarray(extra[field])
        name = _ARVIZ_STAT_NAMES.get(field, field)
        stats[name] = -value if field == "potential_energy" else value
        if field == "num_steps":
            stats["tree_depth"] = np.log2(np.maximum(value, 1)).astype(int) + 1
    stats.setdefault("diverging", np.asarray(result.diverging))
    stats["relabel_permutation"] = np.asarray(result.permutations)
    idata = from_draws(
        result.draws,
        x,
        spec,
        sample_stats=stats,
        feature_names=feature_names,
        attrs=_attrs(spec, "nuts"),
        log_likelihood=log_likelihood,
        batch_size=batch_size,
    )
    if log_likelihood:
        observed = np.asarray(idata.log_likelihood["x"]).mean(axis=-1)
        _check_same_data(observed, result.log_likelihood, x, "NUTS")
    return idata


@functools.partial(jax.jit, static_argnums=(1, 4))
def _guide_sites(key, handle, guide_params, x, num_samples):
    """(num_samples, ...) latent site values drawn from the guide (auxiliary sites, e.g.
    AutoMultivariateNormal's flat latent, left out), as `log_importance_weights` draws."""

    def one(draw_key):
        seeded = handlers.seed(handlers.substitute(handle.guide, data=guide_params), draw_key)
        guide_trace = handlers.trace(seeded).get_trace(x)
        return {
            name: site["value"]
            for name, site in guide_trace.items()
            if site["type"] == "sample" and not site.get("infer", {}).get("is_auxiliary", False)
        }

    return jax.lax.map(one, jax.random.split(key, num_samples))


def svi_draws(key, result, x, num_samples=1000):
    """``(draws, permutations)``: ``num_samples`` draws of `GMMParams` from the fitted
    guide of an `SVIResult`, leading axes (1, num_samples), relabelled to the guide's
    point estimate ``result.fit.params``."""
    num_samples = check_int(num_samples, "num_samples", 1)
    handle, spec = result.handle, result.spec
    sites = _guide_sites(key, handle, result.guide_params, x, num_samples)
    raw = _params_of_sites(sites, spec, handle.n_features)
    raw = jax.tree_util.tree_map(lambda a: np.asarray(a)[None], raw)
    return relabel(raw, result.fit.params, spec)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _params_of_sites(sites, spec, n_features):
    """`GMMParams` (leading axis: draws) of a dict of site draws."""
    prior = model_prior(spec)
    dtype = jax.tree_util.tree_leaves(sites)[0].dtype
    one = lambda s: prior.params_from_sites(s, spec, n_features, dtype)  # noqa: E731
    return jax.lax.map(one, sites)


def svi_inference_data(
    key, result, x, *, num_samples=1000, feature_names=None, log_likelihood=True, batch_size=32
):
    """ArviZ `InferenceData` of an `SVIResult`: see `SVIResult.to_inference_data`."""
    spec = result.spec
    x = _check_x(x, spec, result.handle.n_features, "SVI")
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, x.dtype), result.fit.params)
    point = log_prob(x, params, spec)
    _check_same_data(np.mean(np.asarray(point)), result.fit.log_likelihood, x, "SVI")
    draws, perms = svi_draws(key, result, x, num_samples)
    attrs = _attrs(spec, f"svi_{result.guide}")
    attrs["relabelled"] = "draws permuted to the guide's point estimate by jaxgmm.bayes.relabel"
    return from_draws(
        draws,
        x,
        spec,
        sample_stats={"relabel_permutation": perms},
        feature_names=feature_names,
        attrs=attrs,
        log_likelihood=log_likelihood,
        batch_size=batch_size,
    )
