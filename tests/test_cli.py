"""The `emorec` command line, run in-process through emorec.cli.main (and once in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BUNDLED, DEFAULT_CLASSES, FER, PHOTOS, face_like, require, write_image, write_video

from emorec.cli import build_parser, main
from emorec.errors import UsageError
from emorec.config import TrainConfig
from emorec.model import read_info
from emorec.evaluate import evaluate

SRC = Path(__file__).resolve().parents[1] / "src"
COMMANDS = ("check", "show", "pack", "train", "evaluate", "export", "predict", "explain", "serve")
TWO_PHOTOS = ["Arnaud_Lagardere_0001.jpg", "Beyonce_Knowles_0001.jpg"]


@pytest.fixture
def small_tree(tmp_path) -> Path:
    root = tmp_path / "faces"
    for i in range(3):
        write_image(root / "happy" / f"h{i}.png", face_like(i))
        write_image(root / "sad" / f"s{i}.jpg", face_like(10 + i))
    (root / "sad" / "broken.jpg").write_bytes(b"not an image")
    (root / "happy" / "readme.txt").write_text("notes")
    return root


# ----------------------------------------------------------------------------
# help and usage
# ----------------------------------------------------------------------------


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    listed = [line.split()[0] for line in lines if line.startswith("    ") and not line[4].isspace()]
    assert listed == list(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_its_own_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: emorec {command} ")


def test_no_command_prints_help_and_returns_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["train", "x", "--arch", "alexnet"], ["train", "x", "--recipe", "nope"],
                                  ["train", "x", "--epochs", "many"], ["frobnicate"]])
def test_bad_usage_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_train_help_shows_config_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--epochs", "--batch-size", "--val-split", "--augment", "--no-augment", "--class-weight", "--recipe"):
        assert flag in out


def test_help_does_not_import_tensorflow():
    code = (
        "import sys, contextlib, io\n"
        "from emorec.cli import main\n"
        "buffer = io.StringIO()\n"
        "with contextlib.redirect_stdout(buffer):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0\n"
        "assert 'predict' in buffer.getvalue()\n"
        "heavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('light')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "light"


# ----------------------------------------------------------------------------
# check
# ----------------------------------------------------------------------------


def test_check_reports_invalid_files_fails_and_changes_nothing(small_tree, capsys):
    assert main(["check", str(small_tree)]) == 1
    out = capsys.readouterr().out
    assert "happy" in out and "sad" in out
    assert [line.split() for line in out.splitlines() if line.startswith("total")] == [["total", "6"]]
    assert "1 invalid file(s)" in out and "broken.jpg: not a decodable image" in out
    assert "1 file(s) that are not images, left alone" in out and "readme.txt" in out
    assert "nothing changed" in out
    assert out.splitlines()[-1] == "summary: 6 valid image(s), 1 invalid, 1 non-image file(s) left alone"
    assert (small_tree / "sad" / "broken.jpg").exists() and (small_tree / "happy" / "readme.txt").exists()


def test_check_clean_tree(tmp_path, capsys):
    write_image(tmp_path / "a" / "1.png", face_like())
    write_image(tmp_path / "b" / "1.png", face_like(1))
    assert main(["check", str(tmp_path)]) == 0
    assert "all files are valid images" in capsys.readouterr().out


def test_check_names_empty_class_folders_and_fails_without_images(tmp_path, capsys):
    write_image(tmp_path / "a" / "1.png", face_like())
    (tmp_path / "b").mkdir()
    assert main(["check", str(tmp_path)]) == 0  # an empty class is named, but every file is valid
    assert "class folder(s) with no valid images: b" in capsys.readouterr().out
    (tmp_path / "a" / "1.png").unlink()
    assert main(["check", str(tmp_path)]) == 1
    assert "no image files found" in capsys.readouterr().out


def test_check_quarantine_moves_the_invalid_files(small_tree, tmp_path, capsys):
    target = tmp_path / "bad"
    assert main(["check", str(small_tree), "--quarantine", str(target)]) == 0
    assert f"1 corrupt image file(s) moved to {target}" in capsys.readouterr().out
    assert (target / "sad" / "broken.jpg").read_bytes() == b"not an image"
    assert (small_tree / "happy" / "readme.txt").is_file()  # a document, not a broken image
    assert not (small_tree / "sad" / "broken.jpg").exists()
    assert len(list(small_tree.rglob("*.*"))) == 7
    assert main(["check", str(small_tree)]) == 0
    assert "all files are valid images" in capsys.readouterr().out


def test_check_delete(small_tree, capsys):
    assert main(["check", str(small_tree), "--delete"]) == 0
    assert "1 corrupt image file(s) deleted" in capsys.readouterr().out
    assert sorted(p.name for p in small_tree.rglob("*") if p.is_file()) == sorted(
        [f"h{i}.png" for i in range(3)] + [f"s{i}.jpg" for i in range(3)] + ["readme.txt"])


def test_check_quarantine_and_delete_are_exclusive(small_tree, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["check", str(small_tree), "--delete", "--quarantine", str(tmp_path / "q")])
    assert exit_info.value.code == 2
    assert (small_tree / "sad" / "broken.jpg").exists()


def test_check_duplicates_reports_copies_and_changes_nothing(small_tree, capsys):
    copy = write_image(small_tree / "sad" / "copy.jpg", face_like(0))  # h0.png re-encoded, in another class
    assert main(["check", str(small_tree), "--duplicates"]) == 1
    out = capsys.readouterr().out
    assert "duplicates: 1 group(s) of copies holding 2 files" in out
    assert "  1 group(s) with conflicting labels" in out and f"  1 later copies in {small_tree}" in out
    assert "  1. happy/sad (conflicting): happy/h0.png, sad/copy.jpg" in out
    assert "blank images: 0" in out and "broken.jpg: not a decodable image" in out
    assert out.splitlines()[-1] == ("summary: 7 valid image(s), 1 invalid, 1 non-image file(s) left alone, "
                                    "1 group(s) of copies, 0 blank, 0 without a face")
    assert copy.exists() and (small_tree / "sad" / "broken.jpg").exists()


def test_check_missing_folder_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "no_such_dataset"
    assert main(["check", str(missing)]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("emorec check: error:") and str(missing) in lines[0]
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("command, config_class, positional", [
    ("predict", "PredictConfig", {"sources"}), ("explain", "ExplainConfig", {"sources", "model"})])
def test_predict_and_explain_have_a_flag_for_every_config_field(command, config_class, positional):
    import dataclasses

    from emorec import config

    subparser = build_parser()._subparsers._group_actions[0].choices[command]
    flags = {option for action in subparser._actions for option in action.option_strings}
    for item in dataclasses.fields(getattr(config, config_class)):
        if item.name not in positional:
            assert "--" + item.name.replace("_", "-") in flags, item.name


def test_predict_flags_left_out_take_the_config_defaults(tmp_path, capsys):
    image = write_image(tmp_path / "in" / "face.png", face_like(1))
    assert main(["predict", str(image), "--no-detect", "--json", "--stride", "2"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["faces"][0]["emotion"] in DEFAULT_CLASSES


def test_a_bug_keeps_its_traceback_while_expected_failures_are_one_line(monkeypatch, tmp_path, capsys):
    from emorec import cli

    def buggy(args):
        raise ValueError("an index went wrong")

    monkeypatch.setattr(cli, "_check", buggy)
    with pytest.raises(ValueError, match="an index went wrong"):
        main(["check", str(tmp_path)])

    def refusing(args):
        raise UsageError("--this goes with --that")

    monkeypatch.setattr(cli, "_check", refusing)
    assert main(["check", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "emorec check: error: --this goes with --that\n"


# ----------------------------------------------------------------------------
# show
# ----------------------------------------------------------------------------


def test_show_writes_two_pngs_and_refuses_to_overwrite(small_tree, tmp_path, capsys):
    out = tmp_path / "overview.png"
    assert main(["show", str(small_tree), "--out", str(out), "--per-class", "2"]) == 0
    assert out.is_file() and (tmp_path / "overview_counts.png").is_file()
    assert "saved" in capsys.readouterr().out
    before = out.read_bytes()
    assert main(["show", str(small_tree), "--out", str(out), "--seed", "3"]) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "overview" in err
    assert out.read_bytes() == before
    assert main(["show", str(small_tree), "--out", str(out), "--exist-ok"]) == 0


def test_show_rejects_non_png(small_tree, tmp_path, capsys):
    assert main(["show", str(small_tree), "--out", str(tmp_path / "overview.jpg")]) == 1
    assert ".png" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# pack / train / evaluate
# ----------------------------------------------------------------------------


def test_pack_writes_a_loadable_pack(fer_tree, tmp_path, capsys):
    root = fer_tree(per_class=4)
    out = tmp_path / "faces.npz.xz"
    assert main(["pack", str(root), str(out), "--val", str(root), "--image-size", "32"]) == 0
    from emorec.data import load_pack

    splits = load_pack(out)
    assert sorted(splits) == ["train", "val"]
    assert splits["train"].images.shape == (12, 32, 32, 1)
    assert main(["pack", str(root), str(out)]) == 1  # never replaces an existing pack
    assert main(["pack", str(root), str(tmp_path / "faces.zip")]) == 1
    assert "npz" in capsys.readouterr().err


def test_pack_refuses_a_val_folder_with_other_classes(fer_tree, tmp_path, capsys):
    train_root = fer_tree(classes=("angry", "happy", "surprise"), per_class=2, name="train")
    val_root = fer_tree(classes=("happy", "surprise"), per_class=2, name="val")
    out = tmp_path / "faces.npz"
    assert main(["pack", str(train_root), str(out), "--val", str(val_root)]) == 1
    err = capsys.readouterr().err
    assert str(val_root) in err and "differ" in err
    assert not out.exists()


def test_pack_refuses_an_empty_val_folder(fer_tree, tmp_path, capsys):
    train_root = fer_tree(classes=("happy", "surprise"), per_class=2, name="train")
    for name in ("happy", "surprise"):
        (tmp_path / "val" / name).mkdir(parents=True)
    (tmp_path / "val" / "happy" / "broken.jpg").write_bytes(b"not an image")
    assert main(["pack", str(train_root), str(tmp_path / "faces.npz"), "--val", str(tmp_path / "val")]) == 1
    assert "no valid images" in capsys.readouterr().err
    assert not (tmp_path / "faces.npz").exists()


def test_skipped_files_are_one_line_warnings(small_tree, tmp_path, capsys):
    assert main(["pack", str(small_tree), str(tmp_path / "faces.npz")]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "warning" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("emorec pack: warning: skipping ") and "broken.jpg" in lines[0]
    assert "UserWarning" not in err and "warnings.warn" not in err


@pytest.mark.slow
def test_train_writes_a_run(fer_binary, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(fer_binary["train"].parent)
    argv = ["train", "train", "--epochs", "1", "--batch-size", "16", "--val-split", "0.25",
            "--project", str(tmp_path), "--name", "cli", "--patience", "0", "--no-augment"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    run = tmp_path / "cli"
    assert f"run folder: {run}" in out
    assert f"emorec evaluate {run / 'weights' / 'best.keras'}" in out  # what to do next
    assert (run / "weights" / "best.keras").is_file() and (run / "eval.json").is_file()
    config = json.loads((run / "config.json").read_text())
    assert (config["epochs"], config["batch_size"], config["val_split"], config["augment"]) == (1, 16, 0.25, False)
    assert config["data"] == str(fer_binary["train"])  # absolute, though given relative
    # The saved config replays from anywhere: same values, the next free run folder.
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(run / "config.json")]) == 0
    replay = json.loads((tmp_path / "cli-2" / "config.json").read_text())
    assert {**replay, "name": "cli"} == config


@pytest.mark.parametrize("argv, flag", [
    (["--val-split", "0.99"], "--val-split"),
    (["--epochs", "0"], "--epochs"),
    (["--learning-rate", "100"], "--learning-rate"),
    (["--name", "../../outside"], "--name"),
    (["--name", "/tmp/elsewhere"], "--name"),
    (["--optimizer", "rmsprop"], "--optimizer"),
    (["--schedule", "step"], "--schedule"),
    (["--class-weight", "inverse"], "--class-weight"),
    (["--color-mode", "cmyk"], "--color-mode"),
])
def test_bad_train_values_exit_2_naming_the_flag(tmp_path, capsys, argv, flag):
    try:
        code = main(["train", str(tmp_path), "--project", str(tmp_path / "runs"), *argv])
    except SystemExit as exit_info:  # argparse's own choice check
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_train_help_lists_the_choices_of_enum_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for choices in ("{seed,vgg,resnet,compact-s,compact-m,compact-l}", "{adam,adamw,sgd}", "{constant,cosine,plateau}", "{none,balanced}",
                    "{grayscale,rgb}"):
        assert choices in out


def test_train_config_file_sits_between_the_recipe_and_the_flags(tmp_path):
    from emorec.cli import _train_config, build_parser

    config = tmp_path / "exp.json"
    config.write_text(json.dumps({"epochs": 7, "batch_size": 32, "optimizer": "adamw", "recipe": "fer2013"}))
    args = build_parser().parse_args(["train", "faces", "--config", str(config), "--batch-size", "8"])
    cfg = _train_config(args, {"batch_size": args.batch_size})
    assert (cfg.epochs, cfg.batch_size, cfg.optimizer) == (7, 8, "adamw")  # file < flags
    assert cfg.schedule == "cosine" and cfg.recipe == "fer2013"  # recipe < file
    assert cfg.learning_rate == 0.05 and cfg.data == "faces"


def test_a_bad_value_in_a_config_file_names_the_file_and_exits_2(tmp_path, capsys):
    config = tmp_path / "exp.yaml"
    config.write_text("epochs: 3\noptimizer: rmsprop\n")
    assert main(["train", str(tmp_path), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "rmsprop" in err
    config.write_text("epoch_count: 3\n")
    assert main(["train", str(tmp_path), "--config", str(config)]) == 2
    assert "epoch_count" in capsys.readouterr().err


def test_train_with_a_missing_weights_file_is_one_line(fer_binary, tmp_path, capsys):
    argv = ["train", str(fer_binary["train"]), "--weights", str(tmp_path / "gone.keras"), "--project", str(tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "gone.keras" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())  # no run folder was started


@pytest.mark.slow
def test_evaluate_json(seed_run, fer_small, tmp_path, capsys):
    out_dir = tmp_path / "eval"
    assert main(["evaluate", str(seed_run.best_model), str(fer_small["val"]), "--json", "--out", str(out_dir)]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = evaluate(seed_run.best_model, fer_small["val"], progress=False)
    assert printed["accuracy"] == expected.accuracy
    assert printed["confusion"] == expected.confusion and printed["images"] == 60
    assert json.loads((out_dir / "eval.json").read_text()) == printed
    assert (out_dir / "confusion_matrix.png").is_file()
    # The report is never replaced silently.
    assert main(["evaluate", str(seed_run.best_model), str(fer_small["val"]), "--out", str(out_dir)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["evaluate", str(seed_run.best_model), str(fer_small["val"]), "--out", str(out_dir), "--exist-ok"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_a_failed_evaluation_leaves_no_report_folder(untrained_model_path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "happy").mkdir(parents=True)
    (tmp_path / "data" / "happy" / "bad.jpg").write_bytes(b"not an image")
    assert main(["evaluate", str(untrained_model_path), "data"]) == 1
    assert "no valid images" in capsys.readouterr().err
    assert list((tmp_path / "runs" / "evaluate").iterdir()) == []


def test_evaluate_missing_or_foreign_model_makes_no_report_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.keras").write_text("not a model")
    assert main(["evaluate", str(tmp_path / "none.keras"), str(tmp_path)]) == 1
    assert "none.keras" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "notes.keras"), str(tmp_path)]) == 1
    assert "notes.keras: not a usable emorec model (not a .keras model file" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------
# predict with the bundled model
# ----------------------------------------------------------------------------


@pytest.fixture
def bundled():
    if not BUNDLED.is_file():
        pytest.skip(f"bundled model missing at {BUNDLED}")
    return BUNDLED


def test_evaluate_bundled_by_name(bundled, fer_tree, tmp_path, capsys):
    root = fer_tree(classes=("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"), per_class=2)
    assert main(["evaluate", "bundled", str(root), "--out", str(tmp_path / "report"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 14
    assert (tmp_path / "report" / "eval.json").is_file()


def test_predict_json_on_photos(bundled, capsys):
    photos = [str(require(PHOTOS / name)) for name in TWO_PHOTOS]
    assert main(["predict", *photos, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["source"] for r in results] == photos
    for result in results:
        assert result["error"] is None and not result["no_face"]
        assert len(result["faces"]) == 1
        face = result["faces"][0]
        x, y, w, h = face["box"]  # the detector's box; it may reach past the image edge
        assert w > 50 and h > 50 and 0 < x + w / 2 < 350 and 0 < y + h / 2 < 350
        assert sorted(face["probabilities"]) == DEFAULT_CLASSES
        assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert face["emotion"] == max(face["probabilities"], key=face["probabilities"].get)


def test_predict_no_detect_on_a_fer_crop(bundled, capsys):
    image = sorted(require(FER / "val" / "happy").glob("*.jpg"))[0]
    assert main(["predict", str(image), "--no-detect", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert len(result["faces"]) == 1 and result["faces"][0]["box"] is None
    assert result["faces"][0]["score"] is None


def test_predict_missing_file_does_not_stop_the_batch(bundled, tmp_path, capsys):
    good = str(require(PHOTOS / TWO_PHOTOS[0]))
    missing = str(tmp_path / "missing.jpg")
    # The batch goes on; the exit status still says that something failed.
    assert main(["predict", missing, good]) == 1
    lines = capsys.readouterr().out.splitlines()
    errors = [line for line in lines if line.startswith(missing)]
    assert len(errors) == 1 and "error" in errors[0]
    assert any(line.startswith(good) and "face 1" in line for line in lines)


def test_predict_on_an_empty_folder_fails_with_one_line(untrained_model_path, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(untrained_model_path), str(tmp_path / "empty")]) == 1
    assert capsys.readouterr().out.strip().endswith("no images or videos in this folder")


def test_predict_without_sources_is_an_error(capsys):
    assert main(["predict"]) == 1
    assert "at least one" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_default_output_is_a_new_run_folder(seed_run, fer_small, tmp_path, monkeypatch, capsys):
    """Without --out, reports go to runs/evaluate/<model stem>/, a fresh folder each time (never beside the model)."""
    monkeypatch.chdir(tmp_path)
    for expected in ("best", "best-2"):
        assert main(["evaluate", str(seed_run.best_model), str(fer_small["val"])]) == 0
        assert (tmp_path / "runs" / "evaluate" / expected / "eval.json").is_file()
    assert not (seed_run.best_model.parent / "eval.json").exists()


def test_tta_flag_takes_an_optional_mode():
    parser = build_parser()
    assert parser.parse_args(["evaluate", "m.keras", "d"]).tta == "none"
    assert parser.parse_args(["evaluate", "m.keras", "d", "--tta"]).tta == "flip"
    assert parser.parse_args(["predict", "x.jpg", "--tta", "multi"]).tta == "multi"
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "x.jpg", "--tta", "crops"])


def test_predict_takes_a_leading_model_file_as_the_model(untrained_model_path, capsys):
    """`emorec predict MODEL IMAGE` uses MODEL, not the bundled model."""
    image = str(sorted(require(FER / "val" / "happy").glob("*.jpg"))[0])
    assert main(["predict", str(untrained_model_path), image, "--no-detect", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["source"] == image
    assert sorted(result["faces"][0]["probabilities"]) == sorted(read_info(untrained_model_path).class_names)


# ----------------------------------------------------------------------------
# Outputs that would hurt inputs, and terminals that misbehave
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["show", "{tree}", "--out", "{tree}/sad/overview.png"],
    ["pack", "{tree}", "{tree}/happy/faces.npz"],
    ["check", "{tree}", "--quarantine", "{tree}/aside"],
    ["evaluate", "bundled", "{tree}", "--out", "{tree}/happy/report"],
    ["predict", "{tree}/sad/s0.jpg", "--csv", "{tree}/sad/s0.jpg"],
    ["predict", "{tree}", "--save-annotated", "{tree}/annotated"],
], ids=["show", "pack", "check", "evaluate", "predict-csv", "predict-annotated"])
def test_outputs_inside_the_inputs_are_refused_before_any_work(small_tree, argv, capsys):
    before = sorted((p, p.stat().st_size) for p in small_tree.rglob("*"))
    assert main([arg.format(tree=small_tree) for arg in argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"emorec {argv[0]}: error: {small_tree}")
    assert "lies inside the input folder" in err[0] or "is one of the inputs" in err[0]
    assert sorted((p, p.stat().st_size) for p in small_tree.rglob("*")) == before


def test_an_output_that_cannot_be_written_is_one_line_before_the_work(small_tree, capsys):
    assert main(["pack", str(small_tree), "/proc/faces.npz"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("emorec pack: error: /proc/faces.npz: cannot write in /proc")


@pytest.mark.parametrize("size", ["0", "-3", "5000", "big"])
def test_pack_image_size_out_of_range_is_a_usage_error(small_tree, tmp_path, size, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pack", str(small_tree), str(tmp_path / "p.npz"), "--image-size", size])
    assert exit_info.value.code == 2 and "--image-size" in capsys.readouterr().err
    assert not (tmp_path / "p.npz").exists()


def test_printable_escapes_control_characters_and_undecodable_bytes():
    from emorec.cli import printable

    assert printable("a\x1b[31mb\x07\tc\nd\x9b") == "a\\x1b[31mb\\x07\\tc\\nd\\x9b"
    assert printable("caf" + b"\xe9".decode("utf-8", "surrogateescape") + ".jpg") == "caf\\xe9.jpg"
    assert printable("ünïcode 表情.jpg") == "ünïcode 表情.jpg"


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC), "PYTHONIOENCODING": "utf-8:strict"}


def test_output_cut_short_by_head_is_no_traceback_and_the_work_is_done(tmp_path):
    root = tmp_path / "faces"
    write_image(root / "happy" / "ok.png", face_like())
    for i in range(1500):  # far more output than a pipe holds
        (root / "happy" / f"broken-file-with-a-long-name-{i:04d}.jpg").write_bytes(b"junk")
    process = subprocess.Popen([sys.executable, "-m", "emorec", "check", str(root), "--delete"], env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline().split() == [b"class", b"images"]
    process.stdout.close()  # what `| head -1` does
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
    assert [p.name for p in (root / "happy").iterdir()] == ["ok.png"]


@pytest.mark.parametrize("command", ["check", "pack"])
def test_a_closed_stderr_changes_nothing_but_the_messages(small_tree, tmp_path, command):
    args = [str(small_tree)] + ([str(tmp_path / "p.npz")] if command == "pack" else [])
    done = subprocess.run(["sh", "-c", 'exec "$@" 2>&-', "sh", sys.executable, "-m", "emorec", command, *args],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == (1 if command == "check" else 0), done.stdout
    assert "summary: 6 valid image(s), 1 invalid" in done.stdout if command == "check" else (tmp_path / "p.npz").is_file()


# ----------------------------------------------------------------------------
# outputs never replace what the user has
# ----------------------------------------------------------------------------


def _one_error(capsys, command: str = "predict") -> str:
    captured = capsys.readouterr()
    [line] = captured.err.strip().splitlines()
    assert line.startswith(f"emorec {command}: error: ") and "Traceback" not in captured.err
    return line


@pytest.fixture
def my_photo(tmp_path) -> Path:
    """p/me.jpg: one of the user's photos, in a folder of its own."""
    photo = tmp_path / "p" / "me.jpg"
    photo.parent.mkdir()
    photo.write_bytes(require(PHOTOS / TWO_PHOTOS[0]).read_bytes())
    return photo


def test_predict_never_annotates_over_its_input_photo(my_photo, capsys):
    before = my_photo.read_bytes()
    for flags in ([], ["--exist-ok"]):
        assert main(["predict", str(my_photo), "--save-annotated", str(my_photo.parent), *flags]) == 1
        line = _one_error(capsys)
        assert f"{my_photo}: is an input of this command" in line and "--exist-ok" not in line
    assert my_photo.read_bytes() == before


def test_predict_never_replaces_a_file_it_did_not_write(my_photo, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "me.jpg").write_bytes(b"the user's own file")
    (tmp_path / "table.csv").write_text("month,amount\n")
    for flags in (["--save-annotated", str(out)], ["--csv", str(tmp_path / "table.csv")]):
        for exist_ok in ([], ["--exist-ok"]):
            assert main(["predict", str(my_photo), *flags, *exist_ok]) == 1
            line = _one_error(capsys)
            assert "is not a file emorec wrote, so it is never replaced" in line and "use --exist-ok" not in line
    assert (out / "me.jpg").read_bytes() == b"the user's own file"
    assert (tmp_path / "table.csv").read_text() == "month,amount\n"


def test_predict_replaces_its_own_csv_only_when_asked(bundled, my_photo, tmp_path, capsys):
    csv_path = tmp_path / "faces.csv"
    assert main(["predict", str(my_photo), "--csv", str(csv_path)]) == 0
    assert main(["predict", str(my_photo), "--csv", str(csv_path)]) == 1
    assert "use --exist-ok to replace" in _one_error(capsys)
    assert main(["predict", str(my_photo), "--csv", str(csv_path), "--exist-ok"]) == 0


def test_predict_refuses_two_outputs_on_one_file_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    video = write_video(tmp_path / "party.mp4", frames=2)
    before = video.read_bytes()
    assert main(["predict", str(video), "--csv", "party.csv", "--exist-ok"]) == 1
    assert "two outputs of this command would be written to this one file" in _one_error(capsys)
    assert main(["predict", str(video), "--save-annotated", str(tmp_path), "--exist-ok"]) == 1
    assert f"{video}: is an input of this command" in _one_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["party.mp4"] and video.read_bytes() == before


@pytest.mark.parametrize("flag", ["--csv", "--save-annotated"])
def test_predict_output_that_is_a_link_loop_is_one_line(flag, my_photo, tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop.name)
    assert main(["predict", str(my_photo), flag, str(loop)]) == 1
    assert f"{loop}: symbolic link loop" in _one_error(capsys)


def test_predict_csv_of_a_file_name_that_is_not_utf8(bundled, my_photo, tmp_path, capsys):
    latin1 = Path(os.fsdecode(os.fsencode(my_photo.parent) + b"/caf\xe9.jpg"))
    my_photo.rename(latin1)
    assert main(["predict", str(my_photo.parent), "--csv", str(tmp_path / "faces.csv")]) == 0
    printed = capsys.readouterr().out
    rows = (tmp_path / "faces.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 2 and rows[1].startswith(f"{my_photo.parent}/caf\\xe9.jpg,1,")
    assert f"{my_photo.parent}/caf\\xe9.jpg  face 1" in printed


def test_check_delete_leaves_hdr_and_pfm_images_named_as_photos(bundled, small_tree, capsys):
    import cv2
    import numpy as np

    picture = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)
    hdr, pfm = small_tree / "sad" / "sunset.jpg", small_tree / "happy" / "depth.gif"
    hdr.write_bytes(cv2.imencode(".hdr", picture)[1].tobytes())
    pfm.write_bytes(cv2.imencode(".pfm", picture)[1].tobytes())
    assert main(["check", str(small_tree), "--delete"]) == 1
    out = capsys.readouterr().out
    assert f"left alone: {hdr}: a Radiance HDR file, not one of JPEG" in out
    assert f"left alone: {pfm}: a PFM (floating-point) file, not one of JPEG" in out
    assert hdr.exists() and pfm.exists() and not (small_tree / "sad" / "broken.jpg").exists()
    assert main(["predict", str(hdr), str(pfm)]) == 1  # every command reads them alike
    out = capsys.readouterr().out
    assert "a Radiance HDR file, not one of" in out and "a PFM (floating-point) file, not one of" in out


def test_show_with_a_negative_seed_names_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["show", str(tmp_path), "--seed", "-1"])
    assert caught.value.code == 2
    assert "argument --seed: -1 is out of range" in capsys.readouterr().err


def test_train_into_a_project_that_is_a_file_fails_before_the_scan(tmp_path, capsys):
    (tmp_path / "runs").write_text("not a folder")
    assert main(["train", str(tmp_path / "no-such-data"), "--project", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{tmp_path / 'runs'}: is not a folder" in err


def test_train_weights_bring_their_architecture_size_and_colour(tmp_path):
    from emorec.cli import _train_config
    from emorec.catalog import onnx_path

    info = read_info(onnx_path("ferplus"))
    args = build_parser().parse_args(["train", "faces", "--weights", "ferplus"])
    cfg = _train_config(args, {"weights": "ferplus"})
    assert (cfg.arch, cfg.image_size, cfg.color_mode) == (info.arch, info.image_size, info.color_mode) != ("seed", 48, "rgb")
    assert cfg.arch != TrainConfig.arch


def test_train_weights_with_a_conflicting_explicit_arch_is_one_line_before_the_scan(tmp_path, capsys):
    argv = ["train", str(tmp_path / "no-such-data"), "--weights", "ferplus", "--arch", "resnet",
            "--project", str(tmp_path / "runs")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "argument --weights:" in err and "--arch resnet" in err
    assert not (tmp_path / "runs").exists()
