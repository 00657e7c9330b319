"""Experiments on top of jaxgmm: configs, datasets, the method comparison runner, plots and
the benchmark. ``run_experiment`` (`experiments.experiment`) is the Python entry point;
``python -m experiments.run CONFIG`` and ``python -m experiments.bench`` the command lines.

Names are loaded on first use, so importing a light module (e.g. `experiments.bench`,
whose workers measure their own memory) does not import JAX.
"""

_LAZY = {
    "run_experiment": "experiments.experiment",
    "ExperimentResult": "experiments.experiment",
    "load_config": "experiments.config",
    "ConfigError": "experiments.config",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'experiments' has no attribute {name!r}")
