"""The prior registry. A prior is a frozen dataclass (hyperparameters as fields) whose
NumPyro sample statements define its density; see `jaxgmm.priors._base.Prior`.

Adding a prior: one new module defining a `Prior` subclass, plus one entry in `PRIORS`
(or `register_prior(name, cls)` at run time). Config form: ``prior: {name: lkj, eta: 2.0}``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxgmm._registry import lookup
from jaxgmm.priors._base import DATA_DEFAULT_FLOOR, Prior, freeze
from jaxgmm.priors.conjugate import ConjugatePrior
from jaxgmm.priors.flat import FlatPrior
from jaxgmm.priors.hierarchical import HierarchicalConjugatePrior
from jaxgmm.priors.lkj import LKJPrior
from jaxgmm.priors.sparse_dirichlet import SparseDirichletPrior

PRIORS = {
    "flat": FlatPrior,
    "conjugate": ConjugatePrior,
    "lkj": LKJPrior,
    "sparse_dirichlet": SparseDirichletPrior,
    "hierarchical_conjugate": HierarchicalConjugatePrior,
}


def hyperparameter_names(name):
    """The hyperparameters (dataclass fields) of the registered prior ``name``."""
    return [f.name for f in dataclasses.fields(_prior_class(name))]


def _prior_class(name):
    if isinstance(name, str) and ":" in name:
        return load_prior_class(name)
    return lookup(PRIORS, name, "prior", "unknown prior {name}; valid priors: {valid}")


def load_prior_class(path):
    """The `Prior` subclass named by ``"package.module:ClassName"`` (a plug-in prior in
    the researcher's own file), imported with `importlib` from ``sys.path`` (the working
    directory first under ``python -m``). ValueError naming the module (and its file) for
    an unimportable module, a missing class, or a class that is not a dataclass subclass
    of `Prior`."""
    import importlib
    import os

    module_name, _, class_name = str(path).partition(":")
    if not module_name or not class_name or ":" in class_name:
        raise ValueError(f"a plug-in prior is named 'package.module:ClassName', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any failure of the user's module: name it, say why
        raise ValueError(
            f"cannot import module {module_name!r} of prior {path!r} "
            f"({type(error).__name__}: {error}); modules are imported from the working "
            f"directory ({os.getcwd()}) and sys.path"
        ) from None
    where = getattr(module, "__file__", None) or module_name
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"module {module_name!r} ({where}) has no class {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Prior) and dataclasses.is_dataclass(cls)):
        raise ValueError(
            f"{path!r} ({where}) is not a prior: expected a frozen dataclass subclass of "
            f"jaxgmm.priors.Prior, got {cls!r}"
        )
    return cls


def make_prior(name, **hyperparameters):
    """Build the registered prior ``name`` with the given hyperparameters.

    Lists and arrays are frozen into tuples (priors are hashable, static under jit).
    Raises ValueError listing the valid names / hyperparameters on an unknown one.
    """
    cls = _prior_class(name)
    valid = hyperparameter_names(name)
    unknown = sorted(set(hyperparameters) - set(valid))
    if unknown:
        raise ValueError(
            f"prior {name!r} has no hyperparameter(s) {unknown}; valid hyperparameters: {valid}"
        )
    return cls(**{key: freeze(value) for key, value in hyperparameters.items()})


def prior_from_config(config):
    """A prior from a config value: ``None``, a name, ``{"name": ..., **hyperparameters}``
    or an already-built `Prior`."""
    if config is None or isinstance(config, Prior):
        return config
    if isinstance(config, str):
        return make_prior(config)
    if isinstance(config, dict):
        if "name" not in config:
            raise ValueError(
                f"prior config needs a 'name' key (one of {sorted(PRIORS)}), "
                f"got keys {sorted(config)}"
            )
        rest = {key: value for key, value in config.items() if key != "name"}
        return make_prior(config["name"], **rest)
    raise ValueError(
        "prior config must be None, a prior name or a mapping with 'name', "
        f"got {type(config).__name__}"
    )


def check_prior(spec, n_features, dtype):
    """Trace ``spec.prior``'s density abstractly (nothing is computed), so that a
    hyperparameter of the wrong length for the data raises its ValueError here rather
    than inside a fit; a hierarchical prior is traced with its hyper-sites."""
    import jax

    from jaxgmm.model import abstract_params

    prior = spec.prior
    if prior is None:
        return
    if hasattr(prior, "check"):  # a duck-typed prior may define log_density alone
        prior.check(spec, n_features)
    shapes = abstract_params(spec, n_features, dtype)

    def density(params):
        if not hyper_sites(prior):
            return log_prior(params, spec)
        sites = {**prior.initial_hyper_values(params, spec), **prior.site_values(params, spec)}
        return prior.log_density_of_sites(sites, spec, n_features, dtype)

    jax.eval_shape(density, shapes)


def register_prior(name, cls):
    """Add a `Prior` subclass to `PRIORS` under ``name`` (refuses to overwrite)."""
    if not (isinstance(cls, type) and issubclass(cls, Prior) and dataclasses.is_dataclass(cls)):
        raise ValueError(f"register_prior needs a dataclass subclass of Prior, got {cls!r}")
    if name in PRIORS and PRIORS[name] is not cls:
        raise ValueError(f"a prior named {name!r} is already registered ({PRIORS[name].__name__})")
    PRIORS[name] = cls
    return cls


def hyper_sites(prior):
    """The hyper-sites of ``prior`` (a tuple; empty for None or for a duck-typed prior
    that defines only ``log_density``, which the gradient fitter accepts)."""
    return tuple(getattr(prior, "hyper_sites", ()))


def log_prior(params, spec):
    """log p(params) under ``spec.prior`` (0 for maximum likelihood), a scalar total.

    The one door through which fitters reach a prior's density: a prior object provides
    ``log_density(params, spec)``, computed from its NumPyro sample statements, so that
    MAP by gradient, SVI and NUTS share one density.
    """
    if spec.prior is None:
        return jnp.zeros((), params.means.dtype)
    return spec.prior.log_density(params, spec)


def resolve_prior(spec, x):
    """``spec`` with its prior's data-dependent defaults filled from ``x`` (array of
    shape (n_samples, n_features)); ``spec`` itself when there is nothing to fill."""
    if spec.prior is None:
        return spec
    resolved = spec.prior.with_data_defaults(x, spec.n_components)
    return spec if resolved == spec.prior else dataclasses.replace(spec, prior=resolved)


__all__ = [
    "DATA_DEFAULT_FLOOR",
    "log_prior",
    "PRIORS",
    "ConjugatePrior",
    "FlatPrior",
    "HierarchicalConjugatePrior",
    "LKJPrior",
    "Prior",
    "SparseDirichletPrior",
    "check_prior",
    "hyperparameter_names",
    "load_prior_class",
    "make_prior",
    "prior_from_config",
    "register_prior",
    "resolve_prior",
]
