"""What every evidence estimator shares: the result type and the input checks."""

from __future__ import annotations

from typing import NamedTuple

from jaxgmm.bayes.model import model_prior
from jaxgmm.fit.validation import check_data
from jaxgmm.priors import resolve_prior


class LogEvidence(NamedTuple):
    """A log-evidence estimate.

    Attributes:
        estimate: log p(X), a TOTAL over samples in nats (divide by n_samples for the
            per-sample figure).
        stderr: its Monte Carlo standard error, total nats (0 for ``exact``).
        method: the `EVIDENCE_METHODS` name that produced it.
        diagnostics: JSON-able dict of the method's own diagnostics (see each method).
    """

    estimate: float
    stderr: float
    method: str
    diagnostics: dict


def raw_key(key):
    """``key`` as a raw uint32 key: NumPyro's seed handler inside a traced function refuses
    a typed key (``jax.random.key``), and both carry the same bits."""
    import jax

    if key is not None and jax.dtypes.issubdtype(jax.numpy.asarray(key).dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


def prepare(x, spec, name="x"):
    """(x as a checked JAX array, spec with its prior's data defaults filled from x).

    ValueError for bad data (non-finite, wrong shape) or a spec without a prior."""
    if getattr(spec, "prior", None) is None:
        raise ValueError(
            "log evidence needs a spec with a prior (GMMSpec.prior, e.g. "
            "jaxgmm.priors.make_prior('conjugate')): p(X) integrates the likelihood over it"
        )
    x = check_data(x, name, n_components=spec.n_components, dtype=getattr(x, "dtype", None))
    spec = resolve_prior(spec, x)
    model_prior(spec).check(spec, x.shape[1])
    return x, spec
