"""Hostile inputs (tests/hostile.py) through every command that reads images and through the API.

Each command runs as a real subprocess with its time and peak memory
measured: every hostile input must get one line naming it, no traceback,
within seconds and under a memory bound, and nothing may be deleted or
overwritten that should not be. Inputs that are unreadable only without
root's override run as nobody (setpriv) when the tests run as root.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from hostile import (Run, as_other_user, build_tree, families, link_outside_class, measured, open_workdir,
                     privileges_droppable, run_cli)

from emorec.cli import printable
from emorec.files import escape_undecodable

LIGHT_MIB = 600  # check, show, pack: Python, NumPy, OpenCV, Pillow, Matplotlib and one decoded image
HEAVY_MIB = 2500  # evaluate, predict, train: TensorFlow and a model on top (a bomb decoded would be 4-8 GiB)
FAMILIES = families()


@pytest.fixture(scope="module")
def dropped() -> dict:
    """A nobody-writable work folder and whether commands can run there as another user."""
    work = open_workdir()
    yield {"work": work, "blocked": privileges_droppable(work)}
    _remove(work)


def _remove(folder: Path) -> None:
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(folder, ignore_errors=True)


def _prefix(family, dropped) -> list[str]:
    if not family.needs_other_user:
        return []
    if dropped["blocked"]:
        pytest.skip(f"cannot make a file unreadable here: {dropped['blocked']}")
    return as_other_user()


def _assert_sane(run: Run, limit_mib: float, seconds: float = 60) -> None:
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "\x1b" not in run.stdout + run.stderr  # escape sequences in names are printed escaped
    assert not re.search(r"\[ ?(WARN|ERROR):|libpng|Corrupt JPEG", run.stderr)  # no decoder noise
    assert run.seconds < seconds and run.peak_mib < limit_mib, (run.seconds, run.peak_mib)


def _lines_naming(text: str, path: Path) -> list[str]:
    name = printable(str(path))
    return [line for line in text.splitlines() if name + ":" in line or name + "  " in line]


# ----------------------------------------------------------------------------
# check: one family at a time, so the exit code speaks for each
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_check_names_each_hostile_input_once(family, dropped):
    prefix = _prefix(family, dropped)
    work = open_workdir()
    try:
        target = build_tree(work / "data", [family])[family.name]
        run = run_cli(["check", str(work / "data")], timeout=120, prefix=prefix, cwd=work)
        _assert_sane(run, LIGHT_MIB, seconds=20)
        walked_folder = family.name == "folder named .jpg"  # a folder is walked into, not judged
        if family.verdict == "valid" or walked_folder:
            assert run.returncode == 0, run.stdout
            assert not _lines_naming(run.stdout, target)
        else:
            assert run.returncode == 1, run.stdout
            assert len(_lines_naming(run.stdout, target)) == 1, run.stdout
            assert run.stdout.splitlines()[-1].startswith("summary: 4 valid image(s)")
    finally:
        _remove(work)


# ----------------------------------------------------------------------------
# The whole corpus at once through the heavier commands
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(dropped) -> dict:
    """Every family in one tree (the unreadable ones only where another user can run), plus a linked class."""
    chosen = [f for f in FAMILIES if not (f.needs_other_user and dropped["blocked"])]
    work = dropped["work"] / "corpus"
    work.mkdir()
    work.chmod(0o777)
    made = build_tree(work / "data", chosen)
    outside = link_outside_class(work / "data", work / "outside")
    return {"work": work, "tree": work / "data", "made": made, "families": chosen, "outside": outside,
            "prefix": as_other_user() if not dropped["blocked"] else []}


def _skipped_once(run: Run, corpus: dict, command: str) -> None:
    for family in corpus["families"]:
        if family.verdict == "valid" or family.name == "folder named .jpg":
            continue
        lines = [line for line in _lines_naming(run.stderr, corpus["made"][family.name])
                 if line.startswith(f"emorec {command}: warning: skipping")]
        assert len(lines) == 1, (family.name, run.stderr[-3000:])


@pytest.mark.parametrize("command", ["show", "pack"])
def test_light_commands_skip_each_hostile_input_with_one_warning(corpus, command):
    out = corpus["work"] / ("overview.png" if command == "show" else "faces.npz")
    argv = [command, str(corpus["tree"]), *(["--out", str(out)] if command == "show" else [str(out)])]
    run = run_cli(argv, timeout=300, prefix=corpus["prefix"], cwd=corpus["work"])
    assert run.returncode == 0, run.stderr[-3000:]
    _assert_sane(run, LIGHT_MIB + 400, seconds=120)  # the 6000x6000 PNG is decoded, drawn or resized
    _skipped_once(run, corpus, command)
    assert out.is_file()


def test_evaluate_skips_each_hostile_input_with_one_warning(corpus):
    out = corpus["work"] / "eval"
    run = run_cli(["evaluate", "bundled", str(corpus["tree"]), "--out", str(out)], timeout=300,
                  prefix=corpus["prefix"], cwd=corpus["work"])
    assert run.returncode == 1  # linked/ is not one of the bundled model's classes
    assert "classes ['linked'] are not among the model's" in run.stderr
    _assert_sane(run, HEAVY_MIB, seconds=180)
    _skipped_once(run, corpus, "evaluate")


def test_predict_names_each_hostile_input_once(corpus):
    files = [(f, corpus["made"][f.name]) for f in corpus["families"] if not corpus["made"][f.name].is_dir()]
    run = run_cli(["predict", *[str(path) for _, path in files]], timeout=300, prefix=corpus["prefix"], cwd=corpus["work"])
    assert run.returncode == 1
    _assert_sane(run, HEAVY_MIB, seconds=180)
    for family, path in files:
        lines = _lines_naming(run.stdout, path)
        errors = [line for line in lines if "  error: " in line]
        if family.verdict == "valid":
            assert lines and not errors, (family.name, lines)
        else:
            assert len(lines) == len(errors) == 1, (family.name, lines)


def test_predict_csv_has_one_row_per_hostile_input(corpus):
    files = [corpus["made"][f.name] for f in corpus["families"] if not corpus["made"][f.name].is_dir()]
    out = corpus["work"] / "hostile.csv"
    run = run_cli(["predict", *[str(path) for path in files], "--csv", str(out)], timeout=300, prefix=corpus["prefix"],
                  cwd=corpus["work"])
    assert run.returncode == 1
    _assert_sane(run, HEAVY_MIB, seconds=180)
    with open(out, newline="", encoding="utf-8") as handle:
        sources = {row["source"] for row in csv.DictReader(handle)}
    assert sources == {escape_undecodable(str(path)) for path in files}  # bytes not in UTF-8 escaped as printed


def test_recognizer_raises_one_line_image_read_errors(corpus):
    code = (
        "import json, sys\n"
        "from emorec import Recognizer\n"
        "from emorec.images import ImageReadError\n"
        "rec = Recognizer()\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        answer = f'{len(rec.predict(path))} face(s)'\n"
        "    except ImageReadError as error:\n"
        "        answer = 'ImageReadError: ' + str(error)\n"
        "    print(json.dumps([path, answer]), flush=True)\n"
    )
    files = [(f, corpus["made"][f.name]) for f in corpus["families"]]
    script = corpus["work"] / "api.py"
    script.write_text(code)
    argv = [*corpus["prefix"], sys.executable, str(script), *[os.fsdecode(path) for _, path in files]]
    run = measured(argv, corpus["work"], timeout=300)
    _assert_sane(run, HEAVY_MIB, seconds=180)
    answers = dict(json.loads(line) for line in run.stdout.splitlines())
    for family, path in files:
        answer = answers[os.fsdecode(path)]
        if family.verdict == "valid":
            assert answer.endswith("face(s)"), (family.name, answer)
        else:
            assert answer.startswith(f"ImageReadError: {path}: ") and "\n" not in answer, (family.name, answer)


def test_check_delete_removes_only_corrupt_files_inside(tmp_path):
    # A tree of its own (never a copy: copying the device named .jpg would read it forever).
    made = build_tree(tmp_path / "data", FAMILIES)
    outside = link_outside_class(tmp_path / "data", tmp_path / "outside")
    run = run_cli(["check", str(tmp_path / "data"), "--delete"], timeout=120, cwd=tmp_path)
    _assert_sane(run, LIGHT_MIB)
    assert run.returncode == 1  # refused files remain invalid
    for family in FAMILIES:
        gone = not os.path.lexists(made[family.name])
        assert gone == (family.verdict == "corrupt"), (family.name, run.stdout[-2000:])
    assert outside.read_bytes() == b"not an image"  # behind the linked class folder


def test_check_refuses_a_quarantine_inside_the_data_folder(corpus):
    target = corpus["tree"] / "quarantine"
    run = run_cli(["check", str(corpus["tree"]), "--quarantine", str(target)], timeout=60, cwd=corpus["work"])
    assert run.returncode == 1 and not target.exists()
    assert run.stderr.strip().splitlines()[-1].startswith(f"emorec check: error: {target}: lies inside the input folder")


@pytest.mark.slow
def test_training_skips_each_hostile_input_and_finishes(corpus):
    project = corpus["work"] / "runs"
    run = run_cli(["train", str(corpus["tree"]), "--epochs", "1", "--batch-size", "4", "--val-split", "0.4",
                   "--project", str(project), "--name", "hostile"], timeout=600, prefix=corpus["prefix"], cwd=corpus["work"])
    assert run.returncode == 0, run.stderr[-3000:]
    _assert_sane(run, HEAVY_MIB + 1000, seconds=600)
    _skipped_once(run, corpus, "train")
    assert (project / "hostile" / "weights" / "best.keras").is_file()
