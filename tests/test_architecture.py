"""The package's shape: subpackages whose imports run one way, no import cycle, every
module importable on its own, a small top level, and experiments/ on public names only.

Imports are read from the source (ast), so the checks see lazy imports inside functions
too, and a new module is covered without editing this file."""

import ast
import pathlib
import subprocess
import sys

import pytest

import jaxgmm

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxgmm"

# Which subpackages each one may import (model <- fit <- em / gradient / bayes <- scale).
# `priors` sits beside `model`: EM's MAP M-step, the gradient objective and NumPyro all
# use one prior density. Root-level private modules (`jaxgmm._cache`) import nothing.
ALLOWED = {
    "model": set(),
    "priors": {"model"},
    "fit": {"model"},
    "em": {"model", "priors", "fit"},
    "gradient": {"model", "priors", "fit"},
    "bayes": {"model", "priors", "fit", "em", "gradient"},
    "scale": {"model", "priors", "fit", "em"},
    "vb": {"model", "priors", "fit", "em"},
}


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(folder):
    return sorted(module_name(p) for p in folder.rglob("*.py"))


def imported_modules(path):
    """Every module a file imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text())
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def jaxgmm_graph():
    modules = set(package_modules(PACKAGE))
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        graph[name] = {m for m in imported_modules(path) if m in modules and m != name}
    return graph


def subpackage(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_subpackages_import_only_the_layers_below():
    bad = []
    for module, imports in jaxgmm_graph().items():
        own = subpackage(module)
        if own not in ALLOWED:  # jaxgmm/__init__ and root-level private helpers
            continue
        for imported in imports:
            other = subpackage(imported)
            if other in ALLOWED and other != own and other not in ALLOWED[own]:
                bad.append(f"{module} imports {imported}")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_root_private_modules_import_nothing_from_jaxgmm():
    for path in PACKAGE.glob("_*.py"):
        if path.name == "__init__.py":
            continue
        imports = {m for m in imported_modules(path) if m.startswith("jaxgmm")}
        assert not imports, f"{path.name} imports {sorted(imports)}"


def find_cycle(graph):
    """One import cycle of module-level dependencies (as a list), or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, stack)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_modules():
    # A package's __init__ re-exports its modules; an edge *into* an __init__ from one of
    # its own modules is what makes a cycle, so __init__ files stay in the graph.
    graph = jaxgmm_graph()
    # `from jaxgmm.model.spec import X` also imports the parents' __init__; that is not a
    # dependency of the module on its siblings, so edges to ancestors are dropped.
    graph = {
        m: {i for i in imports if not m.startswith(i + ".")} for m, imports in graph.items()
    }
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


_IMPORT_EACH_ALONE = """
import importlib, sys
import jax, numpyro, optax  # third-party imports stay loaded: only ours are fresh
failed = []
for module in sys.argv[1:]:
    for name in [m for m in sys.modules if m.split(".")[0] in ("jaxgmm", "experiments")]:
        del sys.modules[name]
    try:
        importlib.import_module(module)
    except Exception as error:
        failed.append(f"{module}: {type(error).__name__}: {error}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_on_its_own():
    # Each module imported first, with none of ours loaded: an import that only works
    # after another module was imported (a hidden cycle or ordering dependency) fails.
    modules = package_modules(PACKAGE) + package_modules(ROOT / "experiments")
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH_ALONE, *modules],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={"JAX_PLATFORMS": "cpu", "PATH": "", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_experiments_import_no_private_jaxgmm_name():
    bad = []
    for path in (ROOT / "experiments").rglob("*.py"):
        source = path.read_text()
        tree = ast.parse(source)
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxgmm"):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Attribute):
                # jaxgmm.fit.driver._COMPILED and the like, written as attributes.
                dotted, value = [node.attr], node.value
                while isinstance(value, ast.Attribute):
                    dotted.append(value.attr)
                    value = value.value
                if isinstance(value, ast.Name) and value.id == "jaxgmm":
                    names = ["jaxgmm." + ".".join(reversed(dotted))]
            for name in names:
                if name.startswith("jaxgmm") and any(p.startswith("_") for p in name.split(".")):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert not bad, "experiments/ uses private jaxgmm names:\n" + "\n".join(sorted(set(bad)))


def test_top_level_is_small_sorted_and_complete():
    names = jaxgmm.__all__
    assert len(names) <= 46, f"{len(names)} top-level names; keep advanced ones in subpackages"
    assert list(names) == sorted(names)
    for name in names:
        assert hasattr(jaxgmm, name), name
    public = {n for n in dir(jaxgmm) if not n.startswith("_")}
    assert public <= set(names) | {"annotations"}, sorted(public - set(names))


@pytest.mark.parametrize("sub", ["model", "fit", "em", "gradient", "bayes", "scale", "priors"])
def test_subpackage_all_resolves(sub):
    package = getattr(jaxgmm, sub)
    for name in package.__all__:
        assert hasattr(package, name), f"jaxgmm.{sub}.{name}"
