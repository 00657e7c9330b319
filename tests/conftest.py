"""Test set-up: CPU only, float64 by default (as NumPyro's tests do, x64 can be turned
off with JAX_ENABLE_X64=0 to exercise the float32 path)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", os.environ["JAX_ENABLE_X64"].lower() in ("1", "true"))


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop compiled executables after each test module. Every XLA:CPU executable keeps
    its own memory mappings; a full session otherwise passes the kernel's limit of 65530
    mappings per process (vm.max_map_count), and then XLA segfaults mid-compile."""
    yield
    import jaxgmm

    jaxgmm.clear_cache()
    jax.clear_caches()


@pytest.fixture
def require_x64():
    """Skip a test that needs float64 (oracle comparisons) when x64 is off."""
    if not jax.config.jax_enable_x64:
        pytest.skip("needs JAX_ENABLE_X64=1")
