"""The docs site: the command-line reference hook renders every command, and the site builds strictly."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emorec.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "docs" / "hooks" / "cli_reference.py"


def _hook():
    spec = importlib.util.spec_from_file_location("cli_reference", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _commands() -> list[str]:
    action = next(action for action in build_parser()._actions if hasattr(action, "_name_parser_map"))
    return list(action.choices)


def test_the_reference_renders_the_help_of_every_command_where_the_marker_is():
    hook = _hook()
    page = hook.on_page_markdown("# Reference\n\n<!-- cli-reference -->\n", None, None, None)
    assert "<!-- cli-reference -->" not in page
    for command in _commands():
        assert f"## `emorec {command}`" in page and f"usage: emorec {command}" in page, command
    assert "--save-annotated DIR" in page and "--recipe" in page  # options come from the parser itself


def test_pages_without_the_marker_are_left_alone():
    assert _hook().on_page_markdown("# Models\n", None, None, None) == "# Models\n"


def test_the_nav_names_every_page_and_the_site_builds_strictly(tmp_path):
    if shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    pages = {path.relative_to(ROOT / "docs").as_posix() for path in (ROOT / "docs").rglob("*.md")}
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(page in nav for page in pages), sorted(page for page in pages if page not in nav)
    done = subprocess.run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "usage: emorec predict" in (tmp_path / "site" / "cli" / "index.html").read_text()
