"""The prior interface: a frozen dataclass whose NumPyro sample statements are the single
definition of its density.

A prior implements two methods:

* ``sample(spec, n_features, dtype) -> GMMParams``: ``numpyro.sample`` statements for its
  *sites* (the variables its density is over) and the deterministic map from the sites to
  `GMMParams`;
* ``site_values(params, spec) -> dict``: the inverse map, `GMMParams` -> site values.

Everything else is derived here: ``log_density`` (the sample statements traced with the
site values substituted), ``params_from_sites`` (the sample statements run with site
values substituted). Optional: ``em_m_step(stats, spec)`` (closed-form MAP M-step) and
``with_data_defaults(x)`` (fill hyperparameters left as ``None`` from the data).

Hierarchical priors: ``sample`` may draw *hyper-sites*, variables `GMMParams` does not
hold (a scale the component covariances share, a global shrinkage parameter), named in
the class's ``hyper_sites``. ``site_values`` still returns the component sites only.
Their density is then a joint one, ``log_density_of_sites`` of the full site dict;
``log_density(params)`` would be the marginal over the hyper-sites, which is refused
unless the prior overrides it with a closed form. Gradient MAP optimises the hyper-sites
beside the parameters (started at ``initial_hyper_values``), SVI and NUTS infer them; EM
and VB refuse such a prior. ``exchangeable`` is False for a prior that treats the
component labels differently (stick-breaking weights): label-symmetry corrections apply
only when it is True.

MAP, for every fitter, means: maximise ``log p(X | params) + log_density(params, spec)``,
where ``log_density`` is the density of the prior's *site variables* with respect to
Lebesgue measure on those variables (no Jacobian of any other parameterisation is added).
Maximising a fixed function is invariant to how it is parameterised, so EM's closed form,
gradient MAP (any unconstrained parameterisation) and SVI with AutoDelta (whose objective
is the model's log joint at the delta's site values) all target the same point.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import ClassVar

import numpy as np
from numpyro import handlers
from numpyro.infer.util import log_density as _numpyro_log_density

from jaxgmm.model.spec import COVARIANCE_TYPES


def freeze(value):
    """Hyperparameter value -> hashable: arrays and lists become nested tuples of floats."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Real):
        return float(value)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        # Not numbers: left for the prior's own checks to name (tuples stay hashable).
        if isinstance(value, (list, tuple)):
            return tuple(freeze(v) for v in value)
        return value
    if arr.ndim == 0:
        return float(arr)
    return tuple(freeze(v) for v in arr)


@dataclasses.dataclass(frozen=True)
class Prior:
    """Base class of priors (see the module docstring for the contract)."""

    name: ClassVar[str] = "prior"
    #: covariance types the prior supports; others raise ValueError.
    covariance_types: ClassVar[tuple] = ("full",)
    #: names of the sample sites ``sample`` draws beyond those ``site_values`` returns.
    hyper_sites: ClassVar[tuple] = ()
    #: whether the density is invariant to permuting the component labels.
    exchangeable: ClassVar[bool] = True

    # -- to implement -------------------------------------------------------------------
    def sample(self, spec, n_features, dtype):  # pragma: no cover - abstract
        raise NotImplementedError

    def site_values(self, params, spec):  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def label(self):
        """How tables and reports name this prior: its registry name, plus any choice a
        reader must see (e.g. an empirical-Bayes scale from the data)."""
        return self.name

    # -- derived ------------------------------------------------------------------------
    def with_data_defaults(self, x, n_components=None):
        """A copy with every data-dependent default (``None``) filled from ``x``
        (array of shape (n_samples, n_features)) and ``n_components``; concrete values
        are stored as tuples so the prior stays hashable. Default: nothing to fill."""
        del x, n_components
        return self

    def log_density(self, params, spec):
        """log p(sites(params)): a scalar total, traced from the sample statements.

        ValueError for a hierarchical prior (``hyper_sites``): its density of the
        parameters alone is the marginal over the hyper-sites, which only a prior that
        overrides this method provides; `log_density_of_sites` gives the joint one.
        """
        self.check(spec, params.means.shape[-1])
        if self.hyper_sites:
            raise ValueError(
                f"prior {self.name!r} is hierarchical (hyper-sites {list(self.hyper_sites)}): "
                "log p(params) is the marginal over its hyper-sites, which it does not "
                "define; use prior.log_density_of_sites(sites, spec, n_features, dtype) on "
                "the full sample dict (site_values(params) plus the hyper-sites' values)"
            )
        return self.log_density_of_sites(
            self.site_values(params, spec), spec, params.means.shape[-1], params.means.dtype
        )

    def log_density_of_sites(self, sites, spec, n_features, dtype):
        """log p(sites): the joint density of a full sample dict (component sites and
        hyper-sites), a scalar total, traced from the sample statements."""
        missing = sorted(set(self.hyper_sites) - set(sites))
        if missing:
            raise ValueError(
                f"prior {self.name!r}: the sample dict lacks hyper-site(s) {missing}; "
                f"it has {sorted(sites)}"
            )
        log_joint, _ = _numpyro_log_density(self.sample, (spec, n_features, dtype), {}, sites)
        return log_joint

    def hyper_site_supports(self, spec, n_features, dtype):
        """{hyper-site: its support (a NumPyro constraint)}, read from the sample
        statements by abstract evaluation (nothing is computed)."""
        import jax

        supports = {}

        def run():
            trace = handlers.trace(handlers.seed(self.sample, rng_seed=0)).get_trace(
                spec, n_features, dtype
            )
            supports.update({n: trace[n]["fn"].support for n in self.hyper_sites if n in trace})
            return 0

        jax.eval_shape(run)
        return supports

    def initial_hyper_values(self, params, spec):
        """{hyper-site: a starting value} given `GMMParams` ``params``, for gradient MAP
        and SVI's guides. Default: each hyper-site's prior mean (where it is finite, else
        the image of 0 under the bijection onto its support). A prior with a closed-form
        conditional mode given the parameters should return it instead."""
        if not self.hyper_sites:
            return {}
        import jax.numpy as jnp
        from numpyro.distributions.transforms import biject_to

        n_features, dtype = params.means.shape[-1], params.means.dtype
        values = {}
        for name, site in self._hyper_trace(spec, n_features, dtype, params):
            fn = site["fn"]
            fallback = biject_to(fn.support)(jnp.zeros(fn.shape(), dtype))
            try:
                mean = jnp.broadcast_to(jnp.asarray(fn.mean, dtype), fallback.shape)
            except NotImplementedError:
                mean = fallback
            values[name] = jnp.where(jnp.isfinite(mean), mean, fallback)
        return values

    def _hyper_trace(self, spec, n_features, dtype, params):
        """[(name, trace site)] of the hyper-sites: the sample statements traced with the
        component sites of ``params`` substituted."""
        model = handlers.substitute(self.sample, data=self.site_values(params, spec))
        trace = handlers.trace(handlers.seed(model, rng_seed=0)).get_trace(
            spec, n_features, dtype
        )
        return [(name, trace[name]) for name in self.hyper_sites if name in trace]

    def params_from_sites(self, sites, spec, n_features, dtype):
        """`GMMParams` from a dict of site values (the sample statements, substituted)."""
        with handlers.block():
            return handlers.substitute(self.sample, data=sites)(spec, n_features, dtype)

    def check(self, spec, n_features):
        """ValueError for an unsupported covariance type or unresolved defaults."""
        if spec.covariance_type not in self.covariance_types:
            raise ValueError(
                f"prior {self.name!r} supports covariance_type in {list(self.covariance_types)}, "
                f"got {spec.covariance_type!r}"
            )
        missing = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is None]
        if missing:
            raise ValueError(
                f"prior {self.name!r} has data-dependent hyperparameters {missing} still unset; "
                "call prior.with_data_defaults(x) (or jaxgmm.priors.resolve_prior(spec, x)) "
                "first, or give them explicitly"
            )

    # -- helpers for subclasses ---------------------------------------------------------
    def _check_positive(self, *names, minimum=0.0, strict=True):
        for name in names:
            value = getattr(self, name)
            if value is None:
                continue
            ok = value > minimum if strict else value >= minimum
            if not (isinstance(value, float) and np.isfinite(value) and ok):
                raise ValueError(
                    f"prior {self.name!r}: {name} must be a finite number "
                    f"{'>' if strict else '>='} {minimum}, got {value!r}"
                )


def vector_hyperparameter(prior, name, n_features, dtype):
    """A (n_features,) hyperparameter: a scalar is broadcast, a vector must match."""
    import jax.numpy as jnp

    value = np.asarray(getattr(prior, name), dtype=np.float64)
    if value.ndim == 0:
        value = np.full((n_features,), float(value))
    if value.shape != (n_features,):
        raise ValueError(
            f"prior {prior.name!r}: {name} must be a scalar or have shape ({n_features},), "
            f"got shape {value.shape}"
        )
    return jnp.asarray(value, dtype)


def matrix_hyperparameter(prior, name, n_features, dtype):
    """A (n_features, n_features) matrix: scalar -> s I, vector -> diag(v), or a matrix."""
    import jax.numpy as jnp

    value = np.asarray(getattr(prior, name), dtype=np.float64)
    if value.ndim == 0:
        value = float(value) * np.eye(n_features)
    elif value.ndim == 1 and value.shape == (n_features,):
        value = np.diag(value)
    if value.shape != (n_features, n_features):
        raise ValueError(
            f"prior {prior.name!r}: {name} must be a scalar, shape ({n_features},) or "
            f"({n_features}, {n_features}), got shape {value.shape}"
        )
    return jnp.asarray(value, dtype)


#: Data-default scales are floored at this fraction of the data's mean variance
#: (tr(cov) / D): the relative size of scikit-learn's default reg_covar (1e-6) on
#: standardised data. It only acts where the data show (almost) no spread: a constant
#: column, collinear columns, fewer distinct points than n_features + 1.
DATA_DEFAULT_FLOOR = 1e-6


def data_mean_std_cov(x):
    """Mean (D,), standard deviation (D,) and covariance (D, D) of x, in float64 numpy,
    floored so that every default built from them is a proper prior.

    The covariance's eigenvalues and the variances are raised to at least
    ``DATA_DEFAULT_FLOOR * tr(cov) / D`` (eigenvalues above it are left exactly as they
    are: well-spread data give the plain biased covariance). ValueError when every
    feature is constant: then the data give no scale at all.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(
            "data-dependent prior defaults need x of shape (n_samples >= 2, n_features), "
            f"got shape {x.shape}"
        )
    cov = np.atleast_2d(np.cov(x, rowvar=False, bias=True))
    variances = np.diag(cov)
    floor = DATA_DEFAULT_FLOOR * float(np.mean(variances))
    if not floor > 0:
        raise ValueError(
            "data-dependent prior defaults need spread in the data, but every feature of x "
            f"is constant (all {x.shape[0]} samples are equal); give the prior's scale "
            "hyperparameters (covariance_prior / mean_scale, scale_scale) explicitly"
        )
    return x.mean(axis=0), np.sqrt(np.maximum(variances, floor)), _floor_eigenvalues(cov, floor)


def _floor_eigenvalues(cov, floor):
    """cov with eigenvalues below ``floor`` raised to it (cov itself when none is)."""
    eigenvalues, vectors = np.linalg.eigh(cov)
    if eigenvalues[0] >= floor:
        return cov
    floored = (vectors * np.maximum(eigenvalues, floor)) @ vectors.T
    return (floored + floored.T) / 2


ALL_COVARIANCE_TYPES = COVARIANCE_TYPES
