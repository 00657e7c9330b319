"""The docs say only what the code does: the README's API taste runs, the config table is
the schema's, and every module, dotted name and file the README and docs/ mention exists."""

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

from experiments import docs_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]


def _text(path):
    return path.read_text(encoding="utf-8")


def _mentions(pattern):
    """(page name, match) for every match of ``pattern`` in the README and docs/."""
    return sorted({(p.name, m) for p in PAGES for m in re.findall(pattern, _text(p))})


def test_docs_pages_exist():
    names = {p.name for p in DOCS}
    assert {"experiments.md", "design.md", "priors.md", "performance.md", "benchmarks.md"} <= names


def test_readme_stays_short():
    assert len(_text(README).splitlines()) <= 200


def test_config_table_is_generated_from_the_schema():
    text = _text(docs_table.DOC)
    assert docs_table.table_block(text) == docs_table.config_table()
    assert docs_table.with_table(text, docs_table.config_table()) == text


def _anchors(path):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", _text(path), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_links_resolve():
    """Every relative link to a page (and to a heading in it) of the README and docs/."""
    for page in PAGES:
        for target, anchor in re.findall(r"\]\(([\w./-]*\.md)?(?:#([\w-]+))?\)", _text(page)):
            linked = (page.parent / target) if target else page
            assert linked.is_file(), f"{page.name}: link to missing {target}"
            if anchor:
                assert anchor in _anchors(linked), f"{page.name}: no heading #{anchor} in {target}"


def test_quick_start_commands_are_the_tested_ones():
    """The two quick-start commands: an install that provides the test extra, Python 3.11
    allowed, and the iris config the first one runs."""
    text = _text(README)
    assert "pip install -e . && python -m experiments.run configs/iris.yaml" in text
    assert 'pip install -e ".[test]" && python -m pytest' in text
    # tomllib is Python 3.11+; the project supports 3.10, so read the two lines directly.
    pyproject = _text(ROOT / "pyproject.toml")
    assert re.search(r"^test = \[", pyproject, flags=re.M), "no `test` extra"
    assert re.search(r'^requires-python = ">=3\.(10|11)"', pyproject, flags=re.M)
    assert (ROOT / "configs" / "iris.yaml").is_file()


def _python_blocks(path):
    return re.findall(r"```python\n(.*?)```", _text(path), flags=re.S)


def test_readme_api_taste_runs():
    """The README's Python block runs as written (its prints are its only output)."""
    (block,) = _python_blocks(README)
    names = set(re.findall(r"\bjaxgmm\.(\w+)", block))
    import jaxgmm

    assert names <= set(jaxgmm.__all__), "the taste uses top-level names only"
    exec(compile(block, "README.md", "exec"), {"__name__": "readme_taste"})


@pytest.mark.parametrize(
    "module", [m for _, m in _mentions(r"python -m ([\w.]+)") if m not in ("venv", "pip", "pytest")]
)
def test_every_python_dash_m_module_exists(module):
    assert importlib.util.find_spec(module) is not None, f"python -m {module}: no such module"


def _resolve(dotted):
    """Import the longest importable prefix of ``dotted``, then getattr the rest."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


_FILE_SUFFIX = re.compile(r"\.(md|py|yaml|csv|json|npz|npy|png|gif)$")


@pytest.mark.parametrize(
    "dotted",
    sorted(
        {
            m
            for _, m in _mentions(r"(?<![\w/.-])((?:jaxgmm|experiments)(?:\.[A-Za-z_]\w*)+)")
            if not _FILE_SUFFIX.search(m)
        }
    ),
)
def test_every_dotted_name_resolves(dotted):
    """Catches stale paths such as a module that moved into a subpackage."""
    try:
        _resolve(dotted)
    except (ImportError, AttributeError) as err:
        pytest.fail(f"{dotted} is mentioned in the docs but does not resolve: {err}")


@pytest.mark.parametrize(
    "path",
    sorted(
        {m for _, m in _mentions(r"`((?:jaxgmm|experiments|tests|configs)/[\w./-]*\w)(?:::\w+)?`")}
    ),
)
def test_every_file_mentioned_exists(path):
    assert (ROOT / path).exists(), f"{path} is mentioned in the docs but does not exist"
