"""The example outputs in README.md and docs/ are what the code prints today (scripts/readme_examples.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA, require

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "readme_examples.py"


def _check(readme: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--readme", str(readme)], capture_output=True,
                          text=True, timeout=900)


def test_the_check_fails_on_a_stale_block_and_passes_on_a_fresh_one(tmp_path):
    from emorec import __version__

    readme = tmp_path / "README.md"
    block = "<!-- example: emorec --version -->\n```text\n$ emorec --version\nemorec {}\n```\n"
    readme.write_text(block.format("0.0.0-old"))
    stale = _check(readme)
    assert stale.returncode == 1 and f"+emorec {__version__}" in stale.stderr
    readme.write_text(block.format(__version__))
    assert _check(readme).returncode == 0
    # Regenerating rewrites the stale block in place.
    readme.write_text("intro\n" + block.format("0.0.0-old") + "outro\n")
    subprocess.run([sys.executable, str(SCRIPT), "--readme", str(readme)], check=True, capture_output=True, timeout=300)
    assert readme.read_text() == "intro\n" + block.format(__version__) + "outro\n"


def test_an_unmarked_command_block_is_refused(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("```text\n$ emorec --version\nemorec 0.1.0\n```\n")
    done = _check(readme)
    assert done.returncode == 1 and "no <!-- example" in done.stderr
    readme.write_text("<!-- example-skip: needs a GPU -->\n```text\n$ emorec --version\nemorec 0.1.0\n```\n")
    assert _check(readme).returncode == 0


def _script():
    spec = importlib.util.spec_from_file_location("readme_examples", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_docs_pages_are_checked_with_the_readme_and_every_command_block_is_marked():
    script = _script()
    pages = script.pages()
    assert pages[0] == ROOT / "README.md" and ROOT / "docs" / "commands" / "check.md" in pages
    commands = {page.relative_to(ROOT).as_posix(): [example.command for example in
                                                    script.find_examples(page.read_text().splitlines(True), page.name)]
                for page in pages}
    assert any(command.startswith("emorec check") for command in commands["docs/commands/check.md"])
    assert any(command.startswith("emorec predict") for command in commands["docs/commands/predict.md"])


def test_a_stale_block_in_a_second_page_fails_the_check_and_names_the_page(tmp_path):
    from emorec import __version__

    fresh = tmp_path / "README.md"
    fresh.write_text(f"<!-- example: emorec --version -->\n```text\n$ emorec --version\nemorec {__version__}\n```\n")
    stale = tmp_path / "page.md"
    stale.write_text("<!-- example: emorec --version -->\n```text\n$ emorec --version\nemorec 0.0.0-old\n```\n")
    done = subprocess.run([sys.executable, str(SCRIPT), "--check", "--readme", str(fresh), "--readme", str(stale)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "--- page.md" in done.stderr and "2 example(s), 1 stale" in done.stderr


@pytest.mark.slow  # runs the commands of README.md and docs/: the bundled model on all 3,589 FER2013 val images
def test_readme_and_docs_examples_are_fresh():
    require(DATA)
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-5000:]
