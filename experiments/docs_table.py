"""The config-key table of docs/experiments.md, generated from the config schema.

``python -m experiments.docs_table`` rewrites the block between the two markers below with
`experiments.config.schema_markdown()`; ``--check`` only reports (exit status 1) whether
the file is out of date. `tests/test_docs.py` runs the same comparison.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

START = "<!-- config-table:start -->"
END = "<!-- config-table:end -->"
DOC = Path(__file__).resolve().parent.parent / "docs" / "experiments.md"


def config_table():
    """The generated table: `experiments.config.schema_markdown()` with every method block."""
    # Importing the methods registers their config blocks, so the table lists them all.
    import experiments.methods  # noqa: F401
    from experiments.config import schema_markdown

    return schema_markdown()


def _bounds(text):
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start or text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"expected one {START!r} followed by one {END!r}")
    return start + len(START), end


# Blank lines around the table keep Markdown renderers from reading a marker as a table row.
_BEFORE, _AFTER = "\n\n", "\n"


def table_block(text):
    """The table between the markers of ``text``, without the blank lines around it."""
    start, end = _bounds(text)
    return text[start:end].removeprefix(_BEFORE).removesuffix(_AFTER)


def with_table(text, table):
    """``text`` with the block between the markers replaced by ``table``."""
    start, end = _bounds(text)
    return text[:start] + _BEFORE + table + _AFTER + text[end:]


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.docs_table",
        description="Rewrite the config-key table of docs/experiments.md from the schema.",
    )
    parser.add_argument("--file", type=Path, default=DOC, help=f"default {DOC}")
    parser.add_argument("--check", action="store_true", help="report only; exit 1 if stale")
    args = parser.parse_args(argv)
    text = args.file.read_text(encoding="utf-8")
    new = with_table(text, config_table())
    if args.check:
        if new != text:
            print(f"{args.file}: config table is out of date; run python -m experiments.docs_table")
            return 1
        return 0
    if new != text:
        args.file.write_text(new, encoding="utf-8")
        print(f"{args.file}: config table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
