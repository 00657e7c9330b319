"""Bounded caches of compiled functions, and `clear_cache` for all of them.

Every compiled executable holds memory mappings of its own, so a cache that grows with
each new spec or shape eventually exhausts them (see tests/conftest.py); each cache here
keeps its most recent entries only. Imports nothing from jaxgmm, so any layer may use it.
"""

from __future__ import annotations

_CACHES: list[BoundedCache] = []


class BoundedCache(dict):
    """A dict that forgets its oldest entry beyond ``max_entries``; registered so that
    `clear_cache` empties it."""

    def __init__(self, max_entries: int):
        super().__init__()
        self.max_entries = max_entries
        _CACHES.append(self)

    def __setitem__(self, key, value):
        if key not in self and len(self) >= self.max_entries:
            del self[next(iter(self))]
        super().__setitem__(key, value)


def clear_cache():
    """Forget every compiled function jaxgmm holds (the next fit compiles afresh)."""
    for cache in _CACHES:
        cache.clear()
