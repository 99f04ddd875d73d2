"""Progress bars: drawn on a terminal or with --progress, else silent; one summary line per finished bar."""

from __future__ import annotations

import re

import pytest

from emorec.cli import main
from emorec.progress import bar, draw_bars


@pytest.fixture(autouse=True)
def bars_follow_the_terminal():
    draw_bars(False)
    yield
    draw_bars(False)


def test_a_command_logged_to_a_file_writes_one_summary_line_per_bar(fer_tree, capsys):
    tree = fer_tree(classes=("happy", "sad"), per_class=6)
    assert main(["check", str(tree)]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err  # stderr is captured, not a terminal: no bar updates
    assert re.search(r"^checking: 12 files in \d+\.\d s$", err, re.MULTILINE), err


def test_progress_flag_draws_the_bars_anyway(fer_tree, capsys):
    tree = fer_tree(classes=("happy", "sad"), per_class=6)
    assert main(["check", str(tree), "--progress"]) == 0
    err = capsys.readouterr().err
    assert "\r" in err and "checking" in err.split("\n")[0]
    assert re.fullmatch(r"checking: 12 files in \d+\.\d s\n", err.split("\r")[-1]), err  # after the erased bar


def test_a_bar_left_early_says_how_far_it_got_and_a_disabled_one_says_nothing(capsys):
    with bar(total=5, desc="frames", unit="frame") as counting:
        counting.update(3)
    with bar(total=5, desc="photos", enabled=False) as silent:
        silent.update(5)
    assert re.fullmatch(r"frames: 3/5 frames in \d+\.\d s\n", capsys.readouterr().err)
