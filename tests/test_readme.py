"""README.md's example outputs are what the code prints today (scripts/readme_examples.py)."""

from __future__ import annotations

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


@pytest.mark.slow  # runs the README's commands: the bundled model on all 3,589 FER2013 val images
def test_readme_examples_are_fresh():
    require(DATA)
    done = _check(ROOT / "README.md")
    assert done.returncode == 0, done.stderr[-5000:]
