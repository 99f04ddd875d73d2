"""MkDocs hook: replace `<!-- cli-reference -->` in cli.md with the help of `emorec` and of every command.

The text comes from `emorec.cli.build_parser()` of the sources beside this site, so the page
cannot drift from the command line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MARKER = "<!-- cli-reference -->"
SOURCES = Path(__file__).resolve().parents[2] / "src"
WIDTH = "100"  # columns argparse wraps help at, so the page is the same on every machine


def _help_texts() -> list[tuple[str, str]]:
    """("emorec", its help), then ("emorec COMMAND", its help) for every command, in the parser's order."""
    os.environ["COLUMNS"] = WIDTH
    sys.path.insert(0, str(SOURCES))
    try:
        from emorec.cli import build_parser
    finally:
        sys.path.remove(str(SOURCES))
    parser = build_parser()
    commands = next(action for action in parser._actions if action.choices and hasattr(action, "_name_parser_map"))
    texts = [("emorec", parser.format_help())]
    texts += [(f"emorec {name}", command.format_help()) for name, command in commands.choices.items()]
    return texts


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Render the reference where cli.md has the marker; leave every other page alone."""
    if MARKER not in markdown:
        return markdown
    sections = [f"## `{name}`\n\n```text\n{text.rstrip()}\n```\n" for name, text in _help_texts()]
    return markdown.replace(MARKER, "\n".join(sections))
