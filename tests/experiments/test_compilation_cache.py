"""The runner's persistent compilation cache (issue 17 item 2): where it lives, how it is
turned off, and that a run of the command line fills it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.run import default_cache_dir, enable_compilation_cache

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def test_default_cache_dir_follows_the_environment():
    assert default_cache_dir({"JAXGMM_CACHE_DIR": "/somewhere"}) == "/somewhere"
    assert default_cache_dir({"JAXGMM_CACHE_DIR": ""}) is None
    assert default_cache_dir({"XDG_CACHE_HOME": "/xdg"}) == os.path.join("/xdg", "jaxgmm", "xla")
    home = os.path.expanduser("~")
    assert default_cache_dir({}) == os.path.join(home, ".cache", "jaxgmm", "xla")


def test_an_uncreatable_cache_dir_warns_and_leaves_the_cache_off(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="compilation cache off"):
        assert enable_compilation_cache(str(blocker / "xla")) is None


def test_the_command_line_fills_the_cache_dir(tmp_path):
    cache = tmp_path / "xla"
    env = dict(os.environ, JAXGMM_CACHE_DIR=str(cache))
    command = [sys.executable, "-m", "experiments.run", SMOKE, "--output", str(tmp_path / "run"),
               "--quiet", "--no-plots", "--set", "model_selection.n_components=null"]  # fmt: skip
    subprocess.run(command, cwd=ROOT, env=env, check=True, timeout=600, capture_output=True)
    assert cache.is_dir() and any(cache.iterdir())
