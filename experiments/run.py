"""The experiment runner's command line: ``python -m experiments.run CONFIG [options]``.

Parses the options into config overrides, loads the config, refuses a run folder that
already holds results (unless ``--overwrite``), runs `experiments.experiment.run_experiment`,
writes the run folder (`experiments.results_io`; figures by `experiments.plot`) and prints
the comparison table (`experiments.report`).

A run directory is never overwritten silently: if ``results/<name>/`` (or ``--output``)
exists and is not empty the runner refuses unless ``--overwrite``. The run is written into
a temporary sibling folder that replaces the target only once everything is written, so
an interrupted run leaves the previous results intact. A run folder that could not be
written is refused before anything is fitted (exit 2), and SIGTERM, like Ctrl-C, ends the
run through Python so that its staging folder is removed.

Exit codes: 0 done, 2 invalid config or unwritable run folder, 3 the run folder holds
results (no ``--overwrite``), 128 + signal number when terminated.

The runner turns on JAX's persistent compilation cache (`enable_compilation_cache`), so a
second run of a config loads its compiled fits from disk instead of compiling them; the
library never does (it sets no global config).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import warnings
from pathlib import Path

import jax

from experiments.config import ConfigError, load_config
from experiments.experiment import run_experiment
from experiments.results_io import (
    LeftoverWarning,
    RunFolderExists,
    RunFolderUnwritable,
    check_writable,
    is_nonempty_dir,
)


@contextlib.contextmanager
def _terminate_as_exit():
    """SIGTERM raises SystemExit(128 + SIGTERM) in the main thread while the run lasts, so
    cleanup code (the staging folder's) runs, as it does for Ctrl-C; the default action
    would kill the process and leave the folder behind."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def default_cache_dir(environ=None):
    """Where the runner keeps compiled programs: ``$JAXGMM_CACHE_DIR`` if set (empty:
    none), else ``$XDG_CACHE_HOME/jaxgmm/xla``, else ``~/.cache/jaxgmm/xla``."""
    environ = os.environ if environ is None else environ
    if "JAXGMM_CACHE_DIR" in environ:
        return environ["JAXGMM_CACHE_DIR"] or None
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxgmm", "xla")


def enable_compilation_cache(path=None):
    """Turn on JAX's persistent compilation cache in ``path`` (default `default_cache_dir`)
    for this process; returns the folder used, or None when disabled.

    Every compile is cached (``jax_persistent_cache_min_compile_time_secs`` 0): under
    load a fitter's compile may take less than JAX's 1 s default, and the eager ops a run
    compiles add up. A folder given by JAX's own ``JAX_COMPILATION_CACHE_DIR`` is kept
    unless ``JAXGMM_CACHE_DIR`` names another. A folder that cannot be created leaves the
    cache off with a warning: the run itself does not need it.
    """
    if path is None:
        if "JAXGMM_CACHE_DIR" not in os.environ and jax.config.jax_compilation_cache_dir:
            path = jax.config.jax_compilation_cache_dir
        else:
            path = default_cache_dir()
    if not path:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        warnings.warn(
            f"compilation cache off: cannot create {path} ({error.strerror}); "
            "set JAXGMM_CACHE_DIR to a writable folder, or to '' to silence this",
            stacklevel=2,
        )
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return str(path)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m experiments.run",
        description="Fit one Gaussian-mixture spec with several methods and compare them.",
    )
    parser.add_argument("config", help="YAML config file (keys: docs/experiments.md)")
    parser.add_argument("--output", "-o", help="run folder (default: results/<name>)")
    parser.add_argument(
        "--methods", help="comma-separated subset of methods to run, e.g. em,gradient"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
        help="override a config value (YAML syntax), e.g. --set model.n_components=4; repeatable",
    )  # fmt: skip
    parser.add_argument("--x64", action="store_true", help="same as --dtype float64")
    parser.add_argument(
        "--dtype", choices=["float32", "float64"], help="override the config's dtype"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no table, no progress bars")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing non-empty run folder"
    )
    parser.add_argument("--animate", action="store_true", help="also draw em_animation.gif")
    parser.add_argument("--no-plots", action="store_true", help="write files but draw no figures")
    return parser


def main(argv=None):
    with _terminate_as_exit():
        return _main(argv)


def _main(argv):
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.methods is not None:
        names = [m.strip() for m in args.methods.split(",") if m.strip()]
        overrides.append("methods=[" + ",".join(names) + "]")
    if args.x64 and args.dtype == "float32":
        print("error: --x64 contradicts --dtype float32", file=sys.stderr)
        return 2
    if args.x64 or args.dtype:
        overrides.append(f"dtype={'float64' if args.x64 else args.dtype}")
    try:
        config = load_config(args.config, overrides)
    except ConfigError as error:
        print(f"error: invalid config\n{error}", file=sys.stderr)
        return 2

    if config["dtype"] == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)

    output = Path(args.output) if args.output else Path("results") / config["name"]
    if is_nonempty_dir(output) and not args.overwrite:
        print(
            f"error: {output} already holds results; pass --overwrite to replace them "
            "or --output to write elsewhere",
            file=sys.stderr,
        )
        return 3
    if output.exists() and not output.is_dir():
        print(f"error: {output} exists and is not a folder", file=sys.stderr)
        return 3
    try:
        check_writable(output, overwrite=args.overwrite)
    except RunFolderUnwritable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    show_progress = not args.quiet and sys.stdout.isatty()
    animate = args.animate or config["plot"]["animate"]
    try:
        result = run_experiment(config, source=args.config, progress=show_progress, animate=animate)
    except ConfigError as error:
        print(f"error: invalid config\n{error}", file=sys.stderr)
        return 2
    with warnings.catch_warnings(record=True) as leftovers:
        warnings.simplefilter("always", LeftoverWarning)
        try:
            result.write(output, overwrite=args.overwrite, plots=not args.no_plots)
        except RunFolderExists:
            print(
                f"error: {output} was written by another run meanwhile; not replaced",
                file=sys.stderr,
            )
            return 3
    if not args.quiet:
        print(result.table())
        print(f"\nresults written to {output}/")
    elif result.metrics["warnings"]:
        print("warnings:", *result.metrics["warnings"], sep="\n  ", file=sys.stderr)
    for caught in leftovers:
        if issubclass(caught.category, LeftoverWarning):
            print(f"warning: {caught.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(caught.message, caught.category, caught.filename, caught.lineno)
    return 0


if __name__ == "__main__":
    # The command line only: a program that calls main() keeps its own JAX config.
    enable_compilation_cache()
    sys.exit(main())
