"""Training tiny real models on FER2013 subsets: run folders, reloading, binary runs, packs, recipes."""

from __future__ import annotations

import csv
import json
import subprocess
import tempfile

import cv2
import numpy as np
import pytest
from conftest import SMALL_CLASSES, copy_fer_subset

from emorec.config import train_config
from emorec.data import ArrayData, DatasetError, load_arrays, save_pack, scan_dataset
from emorec.evaluate import evaluate
from emorec.model import FaceAugment, load_model, predict_probabilities, read_info
from emorec.train import RESUME_DIR, RunEta, _duration, _learning_rate, check_training_data, class_weights, make_optimizer, train

HISTORY_KEYS = {"loss", "accuracy", "val_loss", "val_accuracy"}


def _tiny(data, project, **overrides):
    values = dict(data=str(data), epochs=1, batch_size=16, project=str(project), patience=0, seed=1)
    return train_config(**{**values, **overrides})


# ----------------------------------------------------------------------------
# Pure helpers (fast)
# ----------------------------------------------------------------------------


def test_class_weights_balanced():
    counts = [100, 50, 25, 25]
    weights = class_weights(counts, "balanced")
    assert sorted(weights) == [0, 1, 2, 3]
    expected = [sum(counts) / (len(counts) * c) for c in counts]  # inverse frequency, mean-1 scaling
    assert [weights[i] for i in range(4)] == pytest.approx(expected)
    assert sum(w * c for w, c in zip(weights.values(), counts)) == pytest.approx(sum(counts))
    assert class_weights(counts, "none") is None


def test_class_weights_equal_counts_are_one():
    assert class_weights([7, 7, 7], "balanced") == {0: 1.0, 1: 1.0, 2: 1.0}


def test_class_weights_are_capped_at_four():
    weights = class_weights([1000, 1000, 10, 0], "balanced")
    assert weights[2] == weights[3] == 4.0
    # An empty class counts as one image, so it gets a (capped) weight instead of a division by zero.
    assert weights[0] == weights[1] == pytest.approx((1000 + 1000 + 10 + 1) / (4 * 1000))


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_make_optimizer(optimizer):
    cfg = train_config(optimizer=optimizer, weight_decay=1e-4, learning_rate=0.01)
    opt = make_optimizer(cfg, steps_per_epoch=10)
    assert type(opt).__name__.lower() == optimizer
    assert float(opt.learning_rate) == pytest.approx(0.01)


def test_cosine_schedule_warms_up_then_decays():
    cfg = train_config(schedule="cosine", learning_rate=0.1, epochs=10, warmup_epochs=2)
    schedule = _learning_rate(cfg, steps_per_epoch=5)
    at = lambda step: float(schedule(step))  # noqa: E731
    assert at(0) == pytest.approx(0.001)
    assert at(10) == pytest.approx(0.1, rel=1e-4)  # end of warmup
    assert at(10) > at(30) > at(49) >= 0.0
    assert at(50) == pytest.approx(0.0, abs=1e-6)


def test_train_without_data_fails(tmp_path):
    with pytest.raises(DatasetError, match="no training data"):
        train(train_config(project=str(tmp_path)), progress=False)


def test_train_needs_two_classes_with_images(fer_tree, tmp_path):
    root = fer_tree(classes=("happy",), per_class=5)
    with pytest.raises(DatasetError, match="two class"):
        train(_tiny(root, tmp_path), progress=False)
    (root / "sad").mkdir()
    with pytest.raises(DatasetError, match="sad"):
        train(_tiny(root, tmp_path), progress=False)
    assert not (tmp_path / "seed").exists()  # no run folder for a run that never started


# ----------------------------------------------------------------------------
# The shared run (seed arch, 3 classes x 60 images, 2 epochs): see conftest.seed_run
# ----------------------------------------------------------------------------


@pytest.mark.slow
def test_run_folder_contents(seed_run):
    run = seed_run.run_dir
    assert run.name == "tiny"
    for name in ("weights/best.keras", "weights/last.keras", "config.json", "history.json", "loss.png",
                 "accuracy.png", "eval.json", "confusion_matrix.png", "results.csv"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    for name in ("loss.png", "accuracy.png", "confusion_matrix.png"):
        assert cv2.imread(str(run / name)) is not None, name
    history = json.loads((run / "history.json").read_text())
    assert HISTORY_KEYS <= set(history)
    assert all(len(history[key]) == 2 for key in HISTORY_KEYS)
    assert history == seed_run.history
    assert seed_run.best_val_accuracy == max(history["val_accuracy"])
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 2 and config["arch"] == "seed" and config["name"] == "tiny"
    with open(run / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and {"loss", "val_accuracy"} <= set(rows[0])
    assert float(rows[1]["loss"]) == pytest.approx(history["loss"][1], rel=1e-4)
    assert not list(run.rglob("*.tmp*"))


@pytest.mark.slow
def test_run_models_carry_metadata(seed_run):
    weights = seed_run.run_dir / "weights"
    for name in ("best.keras", "last.keras"):
        info = read_info(weights / name)
        assert info.class_names == list(SMALL_CLASSES)
        assert info.input_shape == (48, 48, 1) and info.arch == "seed"
        assert info.extra["best_epoch"] in (1, 2)
    model, _ = load_model(weights / "best.keras")
    assert not any(isinstance(layer, FaceAugment) for layer in model.layers)


@pytest.mark.slow
def test_eval_json_matches_the_returned_report(seed_run):
    stored = json.loads((seed_run.run_dir / "eval.json").read_text())
    assert stored == seed_run.report.to_dict()
    assert stored["images"] == 60 and stored["support"] == [20, 20, 20]
    # The final report is on the best epoch's weights.
    best = seed_run.history["val_accuracy"][read_info(seed_run.best_model).extra["best_epoch"] - 1]
    assert stored["accuracy"] == pytest.approx(best, abs=1e-6)


@pytest.mark.slow
def test_reloaded_best_model_reproduces_evaluate(seed_run, fer_small):
    model, info = load_model(seed_run.best_model)
    report = evaluate(seed_run.best_model, fer_small["val"], progress=False)
    data = load_arrays(scan_dataset(fer_small["val"], progress=False), info.image_size, info.channels, progress=False)
    predicted = predict_probabilities(model, data.images).argmax(axis=1)
    assert report.accuracy == float((predicted == data.labels).mean())
    assert report.images == len(data) == 60
    # Training's own validation pipeline (tf.data) and evaluate (OpenCV) see the same pixels.
    assert report.confusion == seed_run.report.confusion


@pytest.mark.slow
def test_second_run_with_the_same_name_gets_a_new_folder(fer_binary, tmp_path):
    cfg = _tiny(fer_binary["train"], tmp_path, name="same", val_split=0.25)
    first = train(cfg, progress=False)
    second = train(cfg, progress=False)
    assert first.run_dir == tmp_path / "same"
    assert second.run_dir == tmp_path / "same-2"
    assert (first.run_dir / "weights" / "best.keras").is_file()
    assert (second.run_dir / "weights" / "best.keras").is_file()


@pytest.mark.slow
def test_binary_run(fer_binary, tmp_path):
    result = train(_tiny(fer_binary["train"], tmp_path, val=str(fer_binary["val"]), epochs=2), progress=False)
    model, info = load_model(result.best_model)
    assert info.class_names == ["happy", "surprise"]
    assert model.output_shape == (None, 1)
    assert model.layers[-1].activation.__name__ == "sigmoid"
    assert result.report.images == 30 and result.report.support == [15, 15]
    assert len(result.history["val_accuracy"]) == 2
    probs = predict_probabilities(model, np.zeros((2, 48, 48, 1), np.uint8))
    assert probs.shape == (2, 2)
    # evaluate agrees with the run's own report for the binary case too.
    assert evaluate(result.best_model, fer_binary["val"], progress=False).confusion == result.report.confusion


@pytest.mark.slow
def test_corrupt_file_warns_and_training_goes_on(tmp_path):
    root = copy_fer_subset(tmp_path / "data", "train", ("happy", "surprise"), 20)
    bad = root / "happy" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.warns(UserWarning, match="broken.jpg"):
        result = train(_tiny(root, tmp_path / "runs", val_split=0.25), progress=False)
    assert (result.run_dir / "weights" / "best.keras").is_file()
    assert bad.exists()  # training never touches the user's files
    assert result.report.images == 10  # 40 valid images, a quarter held out


@pytest.mark.slow
def test_training_from_a_pack_with_a_val_split(fer_binary, tmp_path):
    data = load_arrays(scan_dataset(fer_binary["train"], progress=False), 48, 1, progress=False)
    pack = save_pack(tmp_path / "faces.npz.xz", {"train": data})
    result = train(_tiny(pack, tmp_path / "runs", val_split=0.25), progress=False)
    assert result.report.images == 20  # 80 images, a quarter held out
    assert sum(result.report.support) == 20
    info = read_info(result.best_model)
    assert info.class_names == ["happy", "surprise"]
    assert len(result.history["loss"]) == 1


@pytest.mark.slow
def test_training_from_a_pack_with_its_val_split(fer_small, tmp_path):
    report = scan_dataset(fer_small["train"], progress=False)
    train_data = load_arrays(report, 48, 1, progress=False)
    val_data = load_arrays(scan_dataset(fer_small["val"], progress=False), 48, 1, progress=False)
    pack = save_pack(tmp_path / "faces.npz", {"train": train_data, "val": val_data})
    result = train(_tiny(pack, tmp_path / "runs", image_size=32), progress=False)
    assert result.report.images == 60 and result.report.support == [20, 20, 20]
    assert read_info(result.best_model).image_size == 32


@pytest.mark.slow
def test_fer2013_recipe_runs(fer_tree, tmp_path):
    root = fer_tree(classes=SMALL_CLASSES, per_class=16)
    cfg = train_config("fer2013", data=str(root), epochs=1, batch_size=16, val_split=0.25, project=str(tmp_path))
    assert (cfg.arch, cfg.augment, cfg.schedule, cfg.class_weight) == ("vgg", True, "cosine", "balanced")
    result = train(cfg, progress=False)
    model, info = load_model(result.best_model)
    assert info.arch == "vgg" and info.extra["recipe"] == "fer2013"
    assert not any(isinstance(layer, FaceAugment) for layer in model.layers)
    assert result.run_dir.name == "vgg"
    assert len(result.history["lr"]) == 1
    assert result.report.images == 12


@pytest.mark.slow
def test_balanced_class_weights_are_undone_in_the_saved_model(fer_tree, tmp_path):
    root = fer_tree(classes=("happy", "surprise"), per_class=24)
    for path in sorted((root / "surprise").iterdir())[:16]:
        path.unlink()
    cfg = _tiny(root, tmp_path / "runs", class_weight="balanced", val_split=0.25)
    result = train(cfg, progress=False)
    info = read_info(result.best_model)
    counts = scan_dataset(root, progress=False).counts
    assert counts == {"happy": 24, "surprise": 8}
    assert info.extra["class_weights_undone"] == pytest.approx([32 / 48, 32 / 16])
    assert "class_weights_undone" not in read_info(train(_tiny(root, tmp_path / "plain", val_split=0.25),
                                                          progress=False).best_model).extra


@pytest.mark.slow
def test_fine_tuning_starts_from_the_saved_weights(seed_run, fer_small, tmp_path):
    cfg = _tiny(fer_small["train"], tmp_path, val=str(fer_small["val"]), weights=str(seed_run.best_model),
                learning_rate=1e-7)
    result = train(cfg, progress=False)
    start, _ = load_model(seed_run.best_model)
    tuned, _ = load_model(result.best_model)
    # With a learning rate of 1e-7 one epoch barely moves the weights, so the predictions stay those of the start.
    images = load_arrays(scan_dataset(fer_small["val"], progress=False), 48, 1, progress=False).images
    np.testing.assert_allclose(predict_probabilities(tuned, images), predict_probabilities(start, images), atol=1e-3)
    assert result.report.accuracy == seed_run.report.accuracy


@pytest.mark.slow
def test_ema_validates_and_saves_the_averaged_weights(seed_run, fer_small, tmp_path):
    common = dict(val=str(fer_small["val"]), weights=str(seed_run.best_model), optimizer="sgd", learning_rate=0.05,
                  epochs=3)
    plain = train(_tiny(fer_small["train"], tmp_path / "plain", **common), progress=False)
    averaged = train(_tiny(fer_small["train"], tmp_path / "ema", ema=0.99999, **common), progress=False)
    start = load_model(seed_run.best_model)[0].trainable_weights

    def drift(path):
        weights = load_model(path)[0].trainable_weights
        return max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(weights, start))

    # With momentum ~1 the average stays at the first step's weights while the raw weights wander off.
    for run in (plain, averaged):
        assert drift(run.run_dir / "weights" / "last.keras") > 0
    assert drift(averaged.best_model) < drift(plain.best_model) / 4
    assert drift(averaged.run_dir / "weights" / "last.keras") < drift(plain.run_dir / "weights" / "last.keras") / 4
    # What validation scored is what was saved.
    best_epoch = read_info(averaged.best_model).extra["best_epoch"]
    assert averaged.report.accuracy == pytest.approx(averaged.history["val_accuracy"][best_epoch - 1], abs=1e-6)


@pytest.mark.slow
def test_fine_tuning_for_other_classes_warns_and_keeps_the_backbone(seed_run, fer_binary, tmp_path):
    cfg = _tiny(fer_binary["train"], tmp_path, val=str(fer_binary["val"]), weights=str(seed_run.best_model))
    with pytest.warns(UserWarning, match="classifier starts afresh"):
        result = train(cfg, progress=False)
    assert read_info(result.best_model).class_names == ["happy", "surprise"]


def test_fine_tuning_from_a_missing_model_fails_before_loading_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.keras"):
        train(_tiny(tmp_path / "no-data", tmp_path, weights=str(tmp_path / "nothing.keras")), progress=False)


def test_validation_classes_must_match(fer_tree, tmp_path):
    train_root = fer_tree(classes=("happy", "surprise"), per_class=4, name="train")
    val_root = fer_tree(classes=("happy", "angry"), per_class=2, name="val")
    with pytest.raises(DatasetError, match="differ"):
        train(_tiny(train_root, tmp_path / "runs", val=str(val_root)), progress=False)
    assert not (tmp_path / "runs").exists()


def test_a_run_that_fails_before_its_first_epoch_leaves_nothing_behind(untrained_model_path, fer_tree, tmp_path):
    # The start model is a seed CNN and the run a VGG: the mismatch is found from the model's
    # metadata, before the data is scanned or the run folder made.
    root = fer_tree(per_class=4)
    cfg = _tiny(root, tmp_path / "runs", val_split=0.5, arch="vgg", weights=str(untrained_model_path))
    with pytest.raises(ValueError, match="untrained.keras is a seed model .* --arch vgg"):
        train(cfg, progress=False)
    assert not (tmp_path / "runs").exists()
    assert sorted(p.name for p in root.iterdir()) == list(SMALL_CLASSES)  # the data is untouched


@pytest.mark.slow
def test_no_temporary_link_trees_left_after_training(fer_tree, tmp_path, monkeypatch):
    root = fer_tree(classes=("happy", "surprise"), per_class=6)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    result = train(_tiny(root, tmp_path / "runs", val_split=0.5, batch_size=4), progress=False)
    assert list(scratch.iterdir()) == []
    assert not list(result.run_dir.glob("emorec-clean-*"))  # the view lived in the run folder while it ran
    assert not (result.run_dir / RESUME_DIR).exists()  # a complete run leaves nothing to resume


@pytest.mark.slow
def test_a_cmyk_jpeg_trains_and_validates_as_evaluate_reads_it(tmp_path):
    from PIL import Image

    train_root = copy_fer_subset(tmp_path / "train", "train", ("happy", "surprise"), 12)
    val_root = copy_fer_subset(tmp_path / "val", "val", ("happy", "surprise"), 3)
    for root in (train_root, val_root):
        face = cv2.imread(str(next((root / "happy").glob("*.jpg"))))
        Image.fromarray(face, "RGB").convert("CMYK").save(root / "happy" / "cmyk.jpg")
    counted = scan_dataset(val_root, progress=False).total  # 7 if check accepts the CMYK file, 6 if it skips it
    result = train(_tiny(train_root, tmp_path / "runs", val=str(val_root), batch_size=4), progress=False)
    assert result.report.images == counted
    # Training's tf.data pipeline saw the same pixels as evaluate's OpenCV reader, CMYK file included.
    assert evaluate(result.best_model, val_root, progress=False).confusion == result.report.confusion


def test_the_eta_counts_the_epochs_left(capsys):
    eta = RunEta(epochs=10)
    eta.on_epoch_begin(0)
    assert capsys.readouterr().out == ""  # nothing to go on before the first epoch ends
    eta.on_epoch_begin(4)
    out = capsys.readouterr().out
    assert out.startswith("4/10 epochs done") and "left, done around" in out
    assert (_duration(42), _duration(600), _duration(3 * 3600 + 5 * 60)) == ("42 s", "10 min", "3 h 05 min")


# ----------------------------------------------------------------------------
# Checks before training (fast: they fail or warn before any model is built)
# ----------------------------------------------------------------------------


def test_val_that_is_the_training_folder_warns(fer_tree, tmp_path):
    root = fer_tree(classes=("happy", "surprise"), per_class=3)
    with pytest.warns(UserWarning, match="validation folder is the training folder"):
        check_training_data(_tiny(root, tmp_path, val=str(root)), progress=False)


def test_val_sharing_files_with_training_warns(fer_tree, tmp_path):
    train_root = fer_tree(classes=("happy", "surprise"), per_class=4, name="train")
    val_root = fer_tree(classes=("happy", "surprise"), per_class=2, name="val")
    shared = next((train_root / "happy").iterdir())
    (val_root / "happy" / "linked.jpg").symlink_to(shared)
    (val_root / "surprise" / "hard.jpg").hardlink_to(next((train_root / "surprise").iterdir()))
    with pytest.warns(UserWarning, match="2 validation image"):
        check_training_data(_tiny(train_root, tmp_path, val=str(val_root)), progress=False)


def test_a_pack_with_an_empty_val_split_is_refused(fer_tree, tmp_path):
    data = load_arrays(scan_dataset(fer_tree(per_class=3), progress=False), 48, 1, progress=False)
    empty = ArrayData(data.images[:0], data.labels[:0], data.class_names)
    pack = tmp_path / "faces.npz"
    np.savez(pack, class_names=np.array(data.class_names), train_images=data.images, train_labels=data.labels,
             val_images=empty.images, val_labels=empty.labels)  # as an older emorec could write it
    with pytest.raises(DatasetError, match="'val' split.*no valid images"):
        train(_tiny(pack, tmp_path / "runs"), progress=False)
    assert not (tmp_path / "runs").exists()


def test_save_pack_refuses_splits_with_other_classes(fer_tree, tmp_path):
    train_data = load_arrays(scan_dataset(fer_tree(per_class=2, name="a"), progress=False), 48, 1, progress=False)
    val_data = load_arrays(scan_dataset(fer_tree(classes=("happy", "surprise"), per_class=2, name="b"),
                                        progress=False), 48, 1, progress=False)
    with pytest.raises(DatasetError, match="differ"):
        save_pack(tmp_path / "faces.npz", {"train": train_data, "val": val_data})
    assert not (tmp_path / "faces.npz").exists()


# ----------------------------------------------------------------------------
# Data-parallel training (`--devices`): Keras' DataParallel on JAX, two virtual CPU devices
# ----------------------------------------------------------------------------

TWO_CPU_DEVICES = {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
SAME_LOSS = 1e-3  # relative: the same global batches on 1 or 2 devices differ only in summation order


def _train_on_jax(data, project, *flags) -> subprocess.CompletedProcess:
    import os
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, **TWO_CPU_DEVICES, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "emorec", "train", str(data), "--epochs", "1", "--batch-size", "16", "--patience",
               "0", "--seed", "5", "--project", str(project), *flags]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def test_devices_need_the_jax_backend(fer_binary, tmp_path, capsys):
    from emorec import cli

    assert cli.main(["train", str(fer_binary["train"]), "--devices", "2", "--project", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == ("emorec train: error: argument --devices: training on several devices "
                                               "needs the JAX backend (set KERAS_BACKEND=jax); this is tensorflow")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_two_devices_train_like_one(fer_binary, tmp_path):
    one = _train_on_jax(fer_binary["train"], tmp_path, "--name", "one")
    two = _train_on_jax(fer_binary["train"], tmp_path, "--name", "two", "--devices", "2")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    assert "data-parallel training on 2 devices (cpu:0, cpu:1)" in two.stdout
    assert "data-parallel" not in one.stdout

    runs = {name: tmp_path / name for name in ("one", "two")}
    layout = {name: sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) for name, run in runs.items()}
    assert layout["one"] == layout["two"]
    configs = {name: json.loads((run / "config.json").read_text()) for name, run in runs.items()}
    assert (configs["one"]["devices"], configs["two"]["devices"]) == ("1", "2")
    losses = {name: json.loads((run / "history.json").read_text())["loss"][0] for name, run in runs.items()}
    assert losses["two"] == pytest.approx(losses["one"], rel=SAME_LOSS)

    more = _train_on_jax(fer_binary["train"], tmp_path, "--name", "three", "--devices", "3")
    assert more.returncode == 2 and not (tmp_path / "three").exists()
    assert more.stderr.strip().splitlines()[-1] == ("emorec train: error: argument --devices: 3 devices asked for, "
                                                    "but this machine has 2: cpu:0, cpu:1")


def test_clean_val_needs_a_separate_val_folder(tmp_path):
    from emorec.config import ConfigError

    with pytest.raises(ConfigError, match="clean_val needs a separate validation folder"):
        train_config(data=str(tmp_path), clean_val=True)


@pytest.mark.slow
def test_clean_val_selects_epochs_without_the_val_images_copied_from_train(tmp_path):
    train_root = copy_fer_subset(tmp_path / "train", "train", ("happy", "surprise"), 12)
    val_root = copy_fer_subset(tmp_path / "val", "val", ("happy", "surprise"), 5)
    planted = sorted((train_root / "happy").iterdir())[:3]
    for index, path in enumerate(planted):  # pixel-identical copies, one re-encoded as PNG
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(val_root / "happy" / f"copy{index}.png"), image)
    cfg = train_config(**{**_tiny(train_root, tmp_path / "runs").to_dict(), "val": str(val_root), "clean_val": True})
    result = train(cfg, progress=False)
    report = json.loads((result.run_dir / "eval.json").read_text())
    assert report["images"] == 13 and report["copies"] >= 3  # the whole val set is still reported
    assert report["clean"]["images"] == 13 - report["copies"]
    assert report["copies_of"] == str(train_root.absolute())
