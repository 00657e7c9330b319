"""The prior's sample sites as one flat unconstrained vector (NumPyro's bijections, the
ones NUTS uses), and the log densities the evidence estimators need on them.

A point of the model is the dict of every sample site of ``prior.sample`` (component
sites and any hyper-sites), not the `GMMParams` it maps to: the prior's density is over
its sites, so the evidence is an integral over them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import ImproperUniform
from numpyro.distributions.transforms import biject_to
from numpyro.infer.util import log_density

from jaxgmm.model.density import log_prob


class SiteLayout:
    """Names, shapes and bijections of the prior's sample sites for one (spec, n_features,
    dtype). Static configuration (closed over by jitted code, never traced).

    ``to_unconstrained(sites) -> u`` of shape (n_unconstrained,); ``from_unconstrained(u)
    -> (sites, log_det_jacobian)``; ``log_prior(sites)`` (a scalar total, the prior's
    density over its sites); ``log_likelihood(sites, x)`` (a scalar total)."""

    def __init__(self, prior, spec, n_features, dtype):
        self.prior, self.spec, self.n_features, self.dtype = prior, spec, n_features, dtype
        try:
            trace = handlers.trace(handlers.seed(prior.sample, 0)).get_trace(
                spec, n_features, dtype
            )
        except NotImplementedError:
            raise ValueError(
                f"log evidence needs a proper prior that can be sampled, but prior "
                f"{prior.name!r} has a site without a sampler (an improper flat density?): "
                "its evidence is undefined. Use a proper prior, e.g. "
                "jaxgmm.priors.make_prior('conjugate')"
            ) from None
        names, shapes, transforms, sizes = [], [], [], []
        for name, site in trace.items():
            if site["type"] != "sample" or site.get("is_observed", False):
                continue
            fn = site["fn"]
            base = getattr(fn, "base_dist", fn)
            if isinstance(fn, ImproperUniform) or isinstance(base, ImproperUniform):
                raise ValueError(
                    f"log evidence needs a proper prior, but prior {prior.name!r} puts an "
                    f"improper (flat) density on site {name!r}: its evidence is undefined. "
                    "Use a proper prior, e.g. jaxgmm.priors.make_prior('conjugate')"
                )
            transform = biject_to(fn.support)
            shape = tuple(jnp.shape(site["value"]))
            names.append(name)
            shapes.append(shape)
            transforms.append(transform)
            sizes.append(math.prod(transform.inverse_shape(shape)))
        self.names, self.shapes, self.transforms, self.sizes = names, shapes, transforms, sizes
        self.n_unconstrained = int(sum(sizes))
        self._component_blocks = self._find_component_blocks()

    def _find_component_blocks(self):
        """[(offset, per_component_size)] of the unconstrained blocks that hold one row per
        component (the component sites' K axis; not weights, whose K - 1 stick-breaking
        coordinates do not permute, nor hyper-sites or a tied covariance)."""
        k = self.spec.n_components
        params = self.params(self.sample_prior(jax.random.PRNGKey(0)))
        component_sites = set(self.prior.site_values(params, self.spec))
        blocks, offset = [], 0
        for name, shape, t, size in zip(
            self.names, self.shapes, self.transforms, self.sizes, strict=True
        ):
            u_shape = t.inverse_shape(shape)
            is_component = (
                name in component_sites
                and name != "weights"
                and len(shape) >= 1
                and shape[0] == k
                and len(u_shape) >= 1
                and u_shape[0] == k
                and (self.spec.covariance_type != "tied" or name == "means")
            )
            if is_component and k > 1:
                blocks.append((offset, size // k))
            offset += size
        return blocks

    def canonical_index(self, u, inverse=False):
        """(d,) int index with u[index] the coordinates of ``u`` (d,) with its components
        relabelled in order of their first mean coordinate (identity when there is no
        ``means`` site): a frame in which label-switched particles line up. ``inverse``:
        the index back (v[inverse index] undoes the relabelling)."""
        d, k = self.n_unconstrained, self.spec.n_components
        if "means" not in self.names or k == 1 or not self._component_blocks:
            return jnp.arange(d)
        start = sum(self.sizes[: self.names.index("means")])
        means = u[start : start + self.sizes[self.names.index("means")]].reshape(k, -1)
        order = jnp.argsort(means[:, 0])
        if inverse:
            order = jnp.argsort(order)
        # Static per coordinate: its block's offset and row width, component, column.
        offset = np.arange(d)
        width = np.zeros(d, dtype=int)
        comp = np.zeros(d, dtype=int)
        for start_b, w in self._component_blocks:
            local = np.arange(k * w)
            offset[start_b : start_b + k * w] = start_b + local % w
            width[start_b : start_b + k * w] = w
            comp[start_b : start_b + k * w] = local // w
        return jnp.asarray(offset) + order[jnp.asarray(comp)] * jnp.asarray(width)

    def sample_prior(self, key):
        """One exact prior draw: dict site -> value."""
        trace = handlers.trace(handlers.seed(self.prior.sample, key)).get_trace(
            self.spec, self.n_features, self.dtype
        )
        return {name: trace[name]["value"] for name in self.names}

    def to_unconstrained(self, sites):
        parts = [
            jnp.reshape(t.inv(sites[name]), (-1,))
            for name, t in zip(self.names, self.transforms, strict=True)
        ]
        return jnp.concatenate(parts).astype(self.dtype)

    def from_unconstrained(self, u):
        sites, log_det, start = {}, jnp.zeros((), self.dtype), 0
        for name, shape, t, size in zip(
            self.names, self.shapes, self.transforms, self.sizes, strict=True
        ):
            piece = jnp.reshape(u[start : start + size], t.inverse_shape(shape))
            value = t(piece)
            sites[name] = value
            log_det = log_det + jnp.sum(t.log_abs_det_jacobian(piece, value))
            start += size
        return sites, log_det

    def log_prior(self, sites):
        value, _ = log_density(
            self.prior.sample, (self.spec, self.n_features, self.dtype), {}, sites
        )
        return jnp.asarray(value, self.dtype)

    def params(self, sites):
        return self.prior.params_from_sites(sites, self.spec, self.n_features, self.dtype)

    def log_likelihood(self, sites, x):
        return jnp.sum(log_prob(x, self.params(sites), self.spec))


def map_points(fn, *xs):
    """``fn`` over the leading axis of ``xs`` one point at a time (`lax.map`): the prior's
    densities factorise matrices, and a vmapped batch of them goes to LAPACK's batched
    kernels, which can hang on several CPU devices (see `jaxgmm.model.linalg`)."""
    return jax.lax.map(lambda args: fn(*args), xs)
