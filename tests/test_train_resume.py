"""Runs that survive interruption: real trainings killed after their second epoch (SIGKILL, SIGTERM, Ctrl-C)
in a subprocess, then resumed, end with the history and files of an uninterrupted run; NaN stops a run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_CLASSES, copy_fer_subset

from emorec.cli import main
from emorec.config import train_config
from emorec.model import read_info
from emorec.train import LOCK_FILE, RESUME_DIR, RunState

SRC = Path(__file__).resolve().parents[1] / "src"
EPOCHS = 6
OPTIONS = ["--epochs", str(EPOCHS), "--batch-size", "8", "--patience", "0", "--seed", "3"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> list[str]:
    """`emorec train` arguments for 3 classes x 8 images, validated on 3 x 4 (an epoch takes about a second)."""
    root = tmp_path_factory.mktemp("tiny")
    train = copy_fer_subset(root / "train", "train", SMALL_CLASSES, 8)
    val = copy_fer_subset(root / "val", "val", SMALL_CLASSES, 4)
    return ["train", str(train), "--val", str(val), *OPTIONS]


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("whole")
    assert main([*tiny, "--project", str(project), "--name", "run"]) == 0
    return project / "run"


def _files(run: Path) -> list[str]:
    """The run folder's files; TensorBoard's event files (one per process, named by time) by folder only."""
    return sorted({str(p.parent.relative_to(run)) + "/events" if p.name.startswith("events.") else str(p.relative_to(run))
                   for p in run.rglob("*") if p.is_file()})


def _start_training(tiny: list[str], run: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    command = [sys.executable, "-m", "emorec", *tiny, "--project", str(run.parent), "--name", run.name]
    # A child of a background job would inherit an ignored SIGINT; Ctrl-C must reach this one.
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _epochs_done(run: Path) -> int:
    state = run / RESUME_DIR / "state.json"
    return json.loads(state.read_text())["epoch"] if state.is_file() else 0


def _wait_for_epoch(run: Path, epoch: int, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while _epochs_done(run) < epoch:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "training did not reach its second epoch"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("signum, exit_code", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 143),
                                               (signal.SIGINT, 130)], ids=["SIGKILL", "SIGTERM", "SIGINT"])
def test_an_interrupted_run_resumes_to_the_end_of_an_uninterrupted_one(tiny, uninterrupted, tmp_path, signum,
                                                                       exit_code, capsys):
    run = tmp_path / "run"
    process = _start_training(tiny, run)
    _wait_for_epoch(run, 2, process)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == exit_code, err[-3000:]
    before = RunState.load(run)
    stopped_at = before.epoch
    assert 2 <= stopped_at < EPOCHS  # really interrupted, with two epochs or more done
    assert (run / "weights" / "best.keras").is_file() and (run / "weights" / "last.keras").is_file()
    assert len(json.loads((run / "history.json").read_text())["loss"]) == stopped_at
    if signum != signal.SIGKILL:
        assert f"resume with: emorec train --resume {run}" in err
        assert not list(run.glob("emorec-clean-*"))  # the temporary data view went with the run

    assert main(["train", "--resume", str(run)]) == 0
    assert f"run folder: {run}" in capsys.readouterr().out
    history = json.loads((run / "history.json").read_text())
    expected = json.loads((uninterrupted / "history.json").read_text())
    assert sorted(history) == sorted(expected)
    assert all(len(values) == EPOCHS for values in history.values())
    assert {key: values[:stopped_at] for key, values in history.items()} == before.history  # kept as it was
    assert _files(run) == _files(uninterrupted)
    assert not (run / RESUME_DIR).exists()
    assert len((run / "results.csv").read_text().splitlines()) == EPOCHS + 1
    best = read_info(run / "weights" / "best.keras").extra
    assert history["val_accuracy"][best["best_epoch"] - 1] == max(history["val_accuracy"])


@pytest.mark.slow
def test_a_finished_run_has_nothing_to_resume(uninterrupted, capsys):
    assert main(["train", "--resume", str(uninterrupted)]) == 1
    assert "the run is complete" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_refuses_data_whose_classes_changed(uninterrupted, fer_tree, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    (run / "eval.json").unlink()  # as if killed before its final report, with its resume state still there
    RunState(epoch=EPOCHS, history=json.loads((run / "history.json").read_text()),
             weights="epoch-0006.weights.h5").save(run)
    _weights_file(run, "epoch-0006.weights.h5")
    config = json.loads((run / "config.json").read_text())
    config["data"] = str(fer_tree(classes=("happy", "surprise"), per_class=2))
    config["val"] = None
    (run / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", str(run)]) == 1
    assert "no longer the run's" in capsys.readouterr().err


def test_resume_of_a_folder_that_is_no_run_is_one_line(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 1
    assert "not a run folder" in capsys.readouterr().err.strip().splitlines()[0]


def test_resume_takes_no_other_options(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--epochs", "3"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert "give the training DATA" in capsys.readouterr().err


@pytest.mark.slow
def test_a_diverging_run_stops_with_exit_1_and_keeps_the_last_good_epoch(tiny, tmp_path, capsys):
    # The warmup raises the learning rate towards 10: epoch 1 survives it, epoch 2 blows up.
    argv = [*tiny[:4], "--epochs", "5", "--batch-size", "8", "--learning-rate", "10", "--optimizer", "sgd",
            "--schedule", "cosine", "--warmup-epochs", "3", "--project", str(tmp_path), "--name", "nan"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "loss became NaN" in err and "--learning-rate" in err
    run = tmp_path / "nan"
    history = json.loads((run / "history.json").read_text())
    kept = len(history["loss"])
    assert 1 <= kept < 5 and str(run / "weights") in err
    assert "NaN" not in (run / "history.json").read_text()
    assert read_info(run / "weights" / "last.keras").extra["best_epoch"] <= kept


@pytest.mark.slow
def test_a_run_that_diverges_at_once_leaves_no_run_folder(tiny, tmp_path, capsys):
    argv = [*tiny[:4], "--epochs", "2", "--batch-size", "8", "--learning-rate", "10", "--optimizer", "sgd",
            "--project", str(tmp_path), "--name", "nan"]
    assert main(argv) == 1
    assert "loss became NaN" in capsys.readouterr().err
    assert not (tmp_path / "nan").exists()


def _fake_run(tmp_path: Path, state=None, last_model: bool = False, epochs: int = 3) -> Path:
    """A run folder as a killed run leaves it, with the given resume/state.json contents (no training needed)."""
    run = tmp_path / "run"
    (run / RESUME_DIR).mkdir(parents=True)
    config = train_config(data=str(tmp_path / "faces"), epochs=epochs, project=str(tmp_path)).with_absolute_paths()
    config.save(run / "config.json")
    if state is not None:
        (run / RESUME_DIR / "state.json").write_text(state if isinstance(state, str) else json.dumps(state))
    if last_model:
        (run / "weights").mkdir()
        (run / "weights" / "last.keras").write_bytes(b"PK")
    return run


def _weights_file(run: Path, name: str = "epoch-0001.weights.h5", truncate: bool = False) -> None:
    import h5py

    path = run / RESUME_DIR / name
    with h5py.File(path, "w") as handle:
        handle["w"] = np.zeros(10_000, np.float32)
    if truncate:
        os.truncate(path, path.stat().st_size // 2)


GOOD_STATE = {"epoch": 1, "history": {"loss": [1.0]}, "seconds": 1.0, "stopped": False,
              "weights": "epoch-0001.weights.h5", "callbacks": {}}


@pytest.mark.parametrize("state, message", [
    ("[1, 2]", "expected a mapping"),
    ({**GOOD_STATE, "colour": 1}, "unknown key\\(s\\): colour"),
    ({**GOOD_STATE, "epoch": "abc"}, "epoch: expected a whole number"),
    ({**GOOD_STATE, "epoch": 999}, "epoch: 999 is not a completed epoch count of a 3-epoch run"),
    ({**GOOD_STATE, "epoch": -5}, "epoch: -5"),
    ({**GOOD_STATE, "history": {"loss": [1.0, 2.0]}}, "history"),
    ({**GOOD_STATE, "weights": "../../etc/passwd"}, "is not the name of a .weights.h5 file"),
    ({**GOOD_STATE, "weights": "epoch-0009.weights.h5"}, "no such file"),
    ("{not json", "not valid JSON"),
])
def test_resume_checks_its_state_file_before_any_work(tmp_path, capsys, state, message):
    run = _fake_run(tmp_path, state)
    _weights_file(run)
    assert main(["train", "--resume", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert str(run / RESUME_DIR) in err


def test_resume_refuses_truncated_weights_in_one_line(tmp_path, capsys):
    run = _fake_run(tmp_path, GOOD_STATE)
    _weights_file(run, truncate=True)
    assert main(["train", "--resume", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "epoch-0001.weights.h5: cannot be read" in err


def test_resume_without_a_state_file_says_why(tmp_path, capsys):
    run = _fake_run(tmp_path, None, last_model=True)
    assert main(["train", "--resume", str(run)]) == 1
    assert "state.json: missing, so where the run stands is unknown" in capsys.readouterr().err
    os.mkfifo(run / RESUME_DIR / "state.json")
    assert main(["train", "--resume", str(run)]) == 1
    assert "FIFO" in capsys.readouterr().err


def test_a_second_resume_of_a_running_run_is_refused(tmp_path, capsys):
    import fcntl

    run = _fake_run(tmp_path, GOOD_STATE)
    with open(run / LOCK_FILE, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["train", "--resume", str(run)]) == 1
    assert "already running" in capsys.readouterr().err


def test_training_into_a_run_folder_in_use_is_refused(fer_tree, tmp_path, capsys):
    import fcntl

    data = fer_tree(classes=("happy", "sad"), per_class=3)
    run = tmp_path / "runs" / "busy"
    run.mkdir(parents=True)
    (run / "weights").mkdir()
    (run / "weights" / "best.keras").write_bytes(b"the other process's model")
    with open(run / LOCK_FILE, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        argv = ["train", str(data), "--project", str(tmp_path / "runs"), "--name", "busy", "--exist-ok", "--epochs", "1"]
        assert main(argv) == 1
    assert "already running" in capsys.readouterr().err
    assert (run / "weights" / "best.keras").read_bytes() == b"the other process's model"
