"""Caches of compiled functions are bounded and `jaxgmm.clear_cache()` empties them all;
the one registry lookup lists the valid keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgmm
from jaxgmm import _cache
from jaxgmm._registry import lookup
from jaxgmm.fit import driver
from jaxgmm.model import init as init_module
from jaxgmm.scale import online


def test_every_compiled_function_cache_is_bounded_and_cleared():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 2)))
    spec = jaxgmm.GMMSpec(2, "diag")
    jaxgmm.fit_em(jax.random.key(0), x, spec, max_iter=2)
    jaxgmm.fit_em_online(jax.random.key(0), np.asarray(x), spec, batch_size=32, n_epochs=1)
    caches = (driver._COMPILED, online._COMPILED, init_module._VMAPPED)
    for cache in caches:
        assert isinstance(cache, _cache.BoundedCache) and cache.max_entries >= 1
        assert len(cache) >= 1
    jaxgmm.clear_cache()
    assert all(len(cache) == 0 for cache in caches)


def test_bounded_cache_forgets_its_oldest_entries():
    cache = _cache.BoundedCache(3)
    try:
        for i in range(10):
            cache[i] = i
            assert len(cache) <= 3
        assert list(cache) == [7, 8, 9]
        cache[8] = "again"  # an existing key does not evict
        assert list(cache) == [7, 8, 9]
    finally:
        _cache._CACHES.remove(cache)


def test_initializer_cache_stays_bounded():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(20, 2)))
    jaxgmm.clear_cache()
    cache = init_module._VMAPPED
    limit, cache.max_entries = cache.max_entries, 2  # a small bound keeps compiles few
    try:
        for reg in (1e-6, 1e-5, 1e-4, 1e-3):
            spec = jaxgmm.GMMSpec(2, "diag", reg_covar=reg)
            jaxgmm.initial_params(jax.random.key(0), x, spec, "random")
            assert len(cache) <= 2
        assert [spec.reg_covar for _, spec in cache] == [1e-4, 1e-3]
    finally:
        cache.max_entries = limit


@pytest.mark.parametrize("name", ["nope", 3, None, ["list"]])
def test_lookup_lists_the_valid_keys(name):
    registry = {"b": 2, "a": 1}
    assert lookup(registry, "a", "thing") == 1
    with pytest.raises(ValueError, match=r"thing must be one of \['a', 'b'\], got"):
        lookup(registry, name, "thing")
    with pytest.raises(ValueError, match=r"unknown thing .*; valid: \['a', 'b'\]"):
        lookup(registry, name, "thing", "unknown {what} {name}; valid: {valid}")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: jaxgmm.model.get_family("banana"), "covariance_type must be one of"),
        (lambda: jaxgmm.model.init.get_initializer("banana"), "init_params must be one of"),
        (lambda: jaxgmm.gradient.make_optimizer("banana"), "optimizer must be one of"),
        (lambda: jaxgmm.priors.make_prior("banana"), "unknown prior 'banana'; valid priors"),
    ],
)
def test_registries_use_the_one_lookup(call, message):
    with pytest.raises(ValueError, match=message):
        call()
