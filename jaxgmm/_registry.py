"""The one lookup every registry (covariance families, initialisers, priors, optimisers,
guides, ...) uses: a plain dict keyed by the strings a config uses, and a ValueError that
lists the valid keys. Imports nothing from jaxgmm, so any layer may use it."""

from __future__ import annotations


def lookup(registry, name, what, message=None):
    """``registry[name]``, or a ValueError listing the valid keys.

    Args:
        registry: a dict keyed by strings.
        name: the key asked for (anything: an unhashable value is reported, not raised).
        what: what the key names, e.g. ``"covariance_type"``, for the message
            ``"{what} must be one of [...], got {name!r}"``.
        message: optional format string used instead, with fields ``name`` (the repr
            of the key asked for), ``valid`` (the sorted valid keys) and ``what``.
    """
    try:
        return registry[name]
    except (KeyError, TypeError):
        valid = sorted(registry)
        if message is None:
            text = f"{what} must be one of {valid}, got {name!r}"
        else:
            text = message.format(name=repr(name), valid=valid, what=what)
        raise ValueError(text) from None
