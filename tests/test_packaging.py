"""What `pip install` puts on the path: the library only. The experiment suite runs from the
repository root and must not shadow a researcher's own `experiments` package."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

PROBE = (
    "import importlib.util, jaxgmm; "
    "print(importlib.util.find_spec('experiments') is None, jaxgmm.__name__)"
)


def _probe(cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_experiments_is_not_installed_but_runs_from_the_repository(tmp_path):
    assert _probe(tmp_path) == ["True", "jaxgmm"]  # elsewhere: jaxgmm only
    assert _probe(ROOT) == ["False", "jaxgmm"]  # from the root: the suite is found


def test_a_users_own_experiments_package_is_not_shadowed(tmp_path):
    own = tmp_path / "experiments"
    own.mkdir()
    (own / "__init__.py").write_text("MINE = True\n")
    out = subprocess.run([sys.executable, "-c", "import experiments; print(experiments.MINE)"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "True", out.stderr[-2000:]
