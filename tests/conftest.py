"""Test set-up: CPU only, float64 by default (as NumPyro's tests do, x64 can be turned
off with JAX_ENABLE_X64=0 to exercise the float32 path)."""

import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", os.environ["JAX_ENABLE_X64"].lower() in ("1", "true"))

# One persistent compilation cache per test run, shared by pytest-xdist's workers (they
# inherit the environment): many tests build their own fitter closures whose programs are
# identical, and the in-memory jit cache cannot see that. A fresh directory per run keeps
# runs independent; set JAXGMM_TEST_XLA_CACHE to a folder of your own to keep it between
# runs. Every compile is cached (the default skips those under 1 s, i.e. most of ours).
_CREATED_CACHE = None
if not os.environ.get("JAXGMM_TEST_XLA_CACHE"):
    _CREATED_CACHE = tempfile.mkdtemp(prefix="jaxgmm-test-xla-")
    os.environ["JAXGMM_TEST_XLA_CACHE"] = _CREATED_CACHE
jax.config.update("jax_compilation_cache_dir", os.environ["JAXGMM_TEST_XLA_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
# The runner's command line (tests run it in subprocesses) caches there too, not in ~/.cache.
os.environ.setdefault("JAXGMM_CACHE_DIR", os.environ["JAXGMM_TEST_XLA_CACHE"])


def _stamp_arviz_daily_warning():
    """ArviZ 0.23 writes a stamp file on its first import of the day through one fixed
    temporary name, so two pytest-xdist workers importing it at once can race (the second
    rename fails: FileNotFoundError, seen in this suite on 2026-12-02). Write today's stamp
    first, through a temporary name of this process, so ArviZ's import only reads it."""
    import datetime

    try:
        from platformdirs import user_cache_dir
    except ImportError:  # no ArviZ installed: nothing to do
        return
    folder = user_cache_dir("arviz", "arviz")
    stamp = os.path.join(folder, "daily_warning")
    today = datetime.date.today().isoformat()
    try:
        with open(stamp) as f:
            if f.read().strip() == today:
                return
    except OSError:
        pass
    try:
        os.makedirs(folder, exist_ok=True)
        tmp = f"{stamp}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(today)
        os.replace(tmp, stamp)
    except OSError:  # a read-only home: ArviZ's own write would fail the same way
        pass


_stamp_arviz_daily_warning()


def pytest_unconfigure(config):
    if _CREATED_CACHE is not None:
        shutil.rmtree(_CREATED_CACHE, ignore_errors=True)


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
