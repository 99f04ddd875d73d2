"""Metrics against hand-computable cases, report files, and evaluating saved models on folders and packs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import SMALL_CLASSES, write_image

from emorec.cli import main
from emorec.data import DatasetError, load_arrays, save_pack, scan_dataset
from emorec.duplicates import copies_in
from emorec.evaluate import compute_metrics, evaluate, load_eval_data, plot_history, write_report
from emorec.model import load_model, predict_probabilities

# A 3-class confusion matrix (rows: true, columns: predicted) with known counts.
CONFUSION = np.array([[5, 2, 1], [0, 6, 0], [3, 1, 4]])
NAMES = ["a", "b", "c"]


def _labels_from(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, predicted = [], []
    for (true, pred), count in np.ndenumerate(confusion):
        labels += [true] * count
        predicted += [pred] * count
    order = np.random.default_rng(0).permutation(len(labels))  # order must not matter
    return np.array(labels)[order], np.array(predicted)[order]


def test_metrics_from_a_known_confusion_matrix():
    labels, predicted = _labels_from(CONFUSION)
    report = compute_metrics(labels, predicted, NAMES)
    assert report.confusion == CONFUSION.tolist()
    assert report.images == CONFUSION.sum() == 22
    assert report.support == CONFUSION.sum(axis=1).tolist()
    assert report.accuracy == pytest.approx(np.trace(CONFUSION) / CONFUSION.sum())
    for k in range(3):
        tp = CONFUSION[k, k]
        precision = tp / CONFUSION[:, k].sum()
        recall = tp / CONFUSION[k].sum()
        f1 = 2 * precision * recall / (precision + recall)
        assert report.precision[k] == pytest.approx(precision, abs=5e-5)
        assert report.recall[k] == pytest.approx(recall, abs=5e-5)
        assert report.f1[k] == pytest.approx(f1, abs=5e-5)
    expected_f1 = [2 * CONFUSION[k, k] / (CONFUSION[:, k].sum() + CONFUSION[k].sum()) for k in range(3)]
    assert report.macro_f1 == pytest.approx(np.mean(expected_f1))
    assert report.tta == "none"


def test_metrics_for_a_class_never_predicted_or_absent():
    labels = np.array([0, 0, 1, 1])
    predicted = np.array([0, 0, 0, 0])  # class 1 never predicted, class 2 absent
    report = compute_metrics(labels, predicted, NAMES, tta="flip")
    assert report.accuracy == 0.5
    assert report.precision == [0.5, 0.0, 0.0]
    assert report.recall == [1.0, 0.0, 0.0]
    assert report.f1[0] == pytest.approx(2 * 0.5 * 1.0 / 1.5, abs=5e-5)
    assert report.support == [2, 2, 0]
    # Macro-F1 averages the classes present in the data: class 2 has no images, so no F1.
    assert report.macro_f1 == pytest.approx((2 / 3 + 0.0) / 2)
    assert report.tta == "flip"


def test_macro_f1_ignores_classes_absent_from_the_data():
    labels = np.array([0, 0, 0, 1, 1, 1])
    predicted = np.array([0, 0, 0, 1, 1, 0])
    present_only = compute_metrics(labels, predicted, ["a", "b"])
    with_absent = compute_metrics(labels, predicted, ["a", "b", "c", "d", "e"])
    assert with_absent.macro_f1 == pytest.approx(present_only.macro_f1)
    assert with_absent.macro_f1 == pytest.approx((2 * 3 / 7 + 2 * 2 / 5) / 2)
    assert with_absent.f1[2:] == [0.0, 0.0, 0.0]


def test_perfect_predictions():
    labels = np.array([2, 0, 1, 2])
    report = compute_metrics(labels, labels.copy(), NAMES)
    assert report.accuracy == report.macro_f1 == 1.0
    assert report.precision == report.recall == report.f1 == [1.0, 1.0, 1.0]


def test_report_table_lists_every_class():
    labels, predicted = _labels_from(CONFUSION)
    table = compute_metrics(labels, predicted, NAMES).table()
    lines = table.splitlines()
    assert [line.split()[0] for line in lines[1:4]] == NAMES
    assert lines[1].split()[-1] == "8"  # support of class a
    assert f"accuracy {15 / 22:.4f}" in lines[-1]


def test_write_report_files(tmp_path):
    labels, predicted = _labels_from(CONFUSION)
    report = compute_metrics(labels, predicted, NAMES)
    paths = write_report(report, tmp_path / "out")
    assert paths["json"] == tmp_path / "out" / "eval.json"
    assert json.loads(paths["json"].read_text()) == report.to_dict()
    image = cv2.imread(str(paths["confusion"]))
    assert paths["confusion"].name == "confusion_matrix.png" and image is not None and image.shape[0] > 50
    with pytest.raises(FileExistsError):
        write_report(report, tmp_path / "out")
    write_report(report, tmp_path / "out", overwrite=True)
    tta = write_report(compute_metrics(labels, predicted, NAMES, tta="flip"), tmp_path / "out")
    assert tta["json"].name == "eval_tta.json" and tta["confusion"].name == "confusion_matrix_tta.png"


def test_plot_history_has_train_and_val_curves():
    figure = plot_history({"loss": [1.0, 0.5, 0.4], "val_loss": [1.1, 0.7, 0.6]}, "loss")
    lines = figure.axes[0].get_lines()
    assert [list(line.get_ydata()) for line in lines] == [[1.0, 0.5, 0.4], [1.1, 0.7, 0.6]]
    assert list(lines[0].get_xdata()) == [1, 2, 3]


# ----------------------------------------------------------------------------
# Saved models on data (an untrained model is enough: the pipeline is what is tested)
# ----------------------------------------------------------------------------


def test_evaluate_matches_direct_predictions(untrained_model_path, fer_tree, tmp_path):
    root = fer_tree(per_class=8)
    report = evaluate(untrained_model_path, root, out_dir=tmp_path / "eval", progress=False)
    model, info = load_model(untrained_model_path)
    data = load_arrays(scan_dataset(root, progress=False), info.image_size, info.channels, progress=False)
    predicted = predict_probabilities(model, data.images).argmax(axis=1)
    assert report.accuracy == pytest.approx(float((predicted == data.labels).mean()), abs=0)
    assert report.confusion == compute_metrics(data.labels, predicted, info.class_names).confusion
    assert report.images == 24
    assert (tmp_path / "eval" / "eval.json").is_file() and (tmp_path / "eval" / "confusion_matrix.png").is_file()


def test_evaluate_on_a_subset_of_the_classes_maps_labels_by_name(untrained_model_path, fer_tree):
    # Only "happy" and "surprise": folder labels 0, 1 must become model labels 1, 2.
    root = fer_tree(classes=SMALL_CLASSES[1:], per_class=5)
    images, labels = load_eval_data(root, list(SMALL_CLASSES), 48, 1, progress=False)
    assert images.shape == (10, 48, 48, 1)
    assert labels.tolist() == [1] * 5 + [2] * 5
    report = evaluate(untrained_model_path, root, progress=False)
    assert report.support == [0, 5, 5]


def test_evaluate_with_unknown_classes_fails(untrained_model_path, tmp_path):
    for name in ("happy", "contempt"):
        path = tmp_path / "data" / name / "x.png"
        path.parent.mkdir(parents=True)
        cv2.imwrite(str(path), np.zeros((48, 48), np.uint8))
    with pytest.raises(DatasetError, match="contempt"):
        evaluate(untrained_model_path, tmp_path / "data", progress=False)


def test_evaluate_on_a_folder_without_valid_images_fails(untrained_model_path, tmp_path):
    (tmp_path / "data" / "happy").mkdir(parents=True)
    (tmp_path / "data" / "happy" / "bad.jpg").write_bytes(b"nope")
    with pytest.warns(UserWarning, match="bad.jpg"), pytest.raises(DatasetError, match="no valid images"):
        evaluate(untrained_model_path, tmp_path / "data", progress=False)


def test_evaluate_on_a_pack_matches_the_folder(untrained_model_path, fer_tree, tmp_path):
    root = fer_tree(per_class=6)
    data = load_arrays(scan_dataset(root, progress=False), 48, 1, progress=False)
    pack = save_pack(tmp_path / "faces.npz", {"train": data, "val": data})
    from_folder = evaluate(untrained_model_path, root, progress=False)
    from_pack = evaluate(untrained_model_path, pack, progress=False)
    assert from_pack.confusion == from_folder.confusion


def test_evaluate_never_scores_a_packs_training_split(untrained_model_path, fer_tree, tmp_path):
    data = load_arrays(scan_dataset(fer_tree(per_class=3), progress=False), 48, 1, progress=False)
    pack = save_pack(tmp_path / "train_only.npz", {"train": data})
    with pytest.raises(DatasetError, match="no 'test' or 'val' split"):
        evaluate(untrained_model_path, pack, progress=False)


def test_evaluate_on_a_pack_of_another_image_size(untrained_model_path, fer_tree, tmp_path):
    """A pack made with --image-size 64 is resized to the model's 48 px, as training from a pack does."""
    root = fer_tree(per_class=4)
    data = load_arrays(scan_dataset(root, progress=False), 64, 1, progress=False)
    pack = save_pack(tmp_path / "faces64.npz", {"val": data})
    images, labels = load_eval_data(pack, list(SMALL_CLASSES), 48, 1, progress=False)
    assert images.shape == (12, 48, 48, 1)
    assert evaluate(untrained_model_path, pack, progress=False).images == 12


def test_evaluate_shows_progress_while_predicting(untrained_model_path, fer_tree, capsys):
    evaluate(untrained_model_path, fer_tree(per_class=3), progress=True)
    assert "predicting" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# Whole and clean: leaving out the images with a copy in the training data
# ----------------------------------------------------------------------------


@pytest.fixture
def val_and_leaky_train(fer_tree, tmp_path):
    """A val tree of real faces, and a train tree holding real train faces plus copies of four val images."""
    val = fer_tree(per_class=8, split="val", name="val")
    train = fer_tree(per_class=5, split="train", name="train")
    val_files = sorted(val.rglob("*.jpg"))
    for index in (0, 5, 10, 20):
        gray = cv2.imread(str(val_files[index]), cv2.IMREAD_GRAYSCALE)
        write_image(train / "happy" / f"leak_{index}.png", gray if index % 2 else cv2.equalizeHist(gray))
    return val, train


def test_evaluate_reports_whole_and_clean_figures(untrained_model_path, val_and_leaky_train, tmp_path):
    val, train = val_and_leaky_train
    report = evaluate(untrained_model_path, val, out_dir=tmp_path / "eval", progress=False, exclude_copies_of=train)
    model, info = load_model(untrained_model_path)
    scan = scan_dataset(val, progress=False)
    data = load_arrays(scan, info.image_size, info.channels, progress=False)
    predicted = predict_probabilities(model, data.images).argmax(axis=1)
    copies = copies_in(scan.valid_paths, train)
    assert report.images == 24 and report.copies == int(copies.sum()) >= 4
    assert report.confusion == compute_metrics(data.labels, predicted, info.class_names).confusion
    clean = compute_metrics(data.labels[~copies], predicted[~copies], info.class_names)
    assert report.clean.images == 24 - report.copies and report.clean.confusion == clean.confusion
    assert report.clean.accuracy == pytest.approx(clean.accuracy, abs=0)
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["copies_of"] == str(train) and saved["clean"]["images"] == report.clean.images
    assert f"without copies in {train}: accuracy {clean.accuracy:.4f}" in report.table()


def test_evaluate_exclude_copies_of_on_the_command_line(untrained_model_path, val_and_leaky_train, tmp_path, capsys):
    val, train = val_and_leaky_train
    assert main(["evaluate", str(untrained_model_path), str(val), "--exclude-copies-of", str(train),
                 "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "images 24" in out and f"without copies in {train}" in out
    assert main(["evaluate", str(untrained_model_path), str(val), "--exclude-copies-of", str(tmp_path / "gone"),
                 "--out", str(tmp_path / "out2")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gone: no such folder" in err[0]


def test_evaluate_exclude_copies_of_refuses_a_pack(untrained_model_path, val_and_leaky_train, tmp_path):
    val, train = val_and_leaky_train
    pack = save_pack(tmp_path / "faces.npz", {"val": load_arrays(scan_dataset(val, progress=False), 48, 1, False)})
    with pytest.raises(DatasetError, match="not a pack"):
        evaluate(untrained_model_path, pack, progress=False, exclude_copies_of=train)
