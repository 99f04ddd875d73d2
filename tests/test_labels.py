"""Label files: both layouts, FER+'s majority rule, pairing rows with images, targets, and training on votes."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from conftest import DATA, FER, require
from emorec import data as data_lib
from emorec.config import ConfigError, train_config
from emorec.evaluate import evaluate
from emorec.labels import LabelFileError, LabelSpec, match_images, read_label_file, summary
from emorec.model import read_info
from emorec.train import check_training_data, load_training_data, train

FERPLUS = DATA / "ferplus"
FERPLUS_NAMES = dict(not_classes="unknown,NF", rename="happiness=happy,sadness=sad,anger=angry")
VOTE_HEADER = ["path", "status", "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
               "unknown", "NF"]


def write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def images_of(root):
    report = data_lib.scan_dataset(root, progress=False)
    return report, [path for name in report.class_names for path in report.files[name]]


def ferplus_subset(tmp_path, split: str, per_class: int, classes=("angry", "happy", "neutral", "sad", "surprise")):
    """A copy of the first per_class FER2013 images of each folder with a vote row, and their rows of ferplus/<split>.csv."""
    rows = list(csv.reader(open(require(FERPLUS / f"{split}.csv"))))
    root, kept, taken = tmp_path / split, [rows[0]], {}
    for row in rows[1:]:
        folder = row[0].split("/")[0]
        if folder in classes and row[2] != "" and taken.get(folder, 0) < per_class:
            taken[folder] = taken.get(folder, 0) + 1
            (root / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy2(FER / split / row[0], root / row[0])
            kept.append(row)
    return root, write_csv(tmp_path / f"{split}.csv", kept)


# ----------------------------------------------------------------------------
# Reading the two layouts
# ----------------------------------------------------------------------------


def test_one_label_per_row_gives_one_hot_rows_and_sorted_classes(tmp_path):
    file = write_csv(tmp_path / "l.csv", [["path", "label"], ["a/1.png", "sad"], ["a\\2.png", "happy"], ["b/3.png", "sad"]])
    table = read_label_file(LabelSpec(str(file)))
    assert table.layout == "label" and table.class_names == ["happy", "sad"]
    assert table.paths == ["a/1.png", "a/2.png", "b/3.png"]
    np.testing.assert_array_equal(table.votes, [[0, 1], [1, 0], [0, 1]])
    np.testing.assert_array_equal(table.majority(), [1, 0, 1])


def test_label_rows_with_a_not_class_or_no_label_are_skipped_with_their_reason(tmp_path):
    file = write_csv(tmp_path / "l.csv", [["path", "label"], ["1.png", "sad"], ["2.png", ""], ["3.png", "NF"],
                                         ["4.png", "joy"], ["", "sad"]])
    table = read_label_file(LabelSpec.parse(str(file), "NF", "joy=happy"))
    assert table.paths == ["1.png", "4.png"] and table.class_names == ["happy", "sad"]
    assert table.skipped == {"2.png": "line 3: no label", "3.png": "line 4: NF", "line 6": "empty path"}


def test_ferplus_votes_majority_follows_its_rule(tmp_path):
    rows = [VOTE_HEADER,
            ["a.png", "unique", 7, 2, 0, 0, 0, 0, 0, 0, 1, 0],  # neutral: 7 of 9 after the lone votes go
            ["b.png", "unique", 4, 0, 0, 4, 0, 0, 0, 0, 2, 0],  # 4 of 10: no majority
            ["c.png", "unique", 1, 1, 1, 1, 1, 1, 1, 0, 0, 3],  # only lone votes: no majority
            ["d.png", "unique", 0, 0, 0, 0, 0, 0, 0, 0, 0, 10],  # not a face: no class votes at all
            ["e.png", "no-match", "", "", "", "", "", "", "", "", "", ""]]
    table = read_label_file(LabelSpec.parse(str(write_csv(tmp_path / "v.csv", rows)), **FERPLUS_NAMES))
    assert table.layout == "votes"
    assert table.class_names == ["angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    assert table.paths == ["a.png", "b.png", "c.png"]
    neutral = table.class_names.index("neutral")
    np.testing.assert_array_equal(table.majority(), [neutral, -1, -1])
    np.testing.assert_allclose(table.distribution()[0, [neutral, table.class_names.index("happy")]], [7 / 9, 2 / 9])
    assert set(table.skipped) == {"d.png", "e.png"}


def test_probabilities_keep_all_their_mass(tmp_path):
    file = write_csv(tmp_path / "p.csv", [["path", "cat", "dog"], ["1.png", 0.6, 0.4], ["2.png", 0.5, 0.5], ["3.png", 0, 1]])
    table = read_label_file(LabelSpec(str(file)))
    np.testing.assert_array_equal(table.majority(), [0, -1, 1])


@pytest.mark.parametrize("rows, spec, message", [
    ([["file", "label"], ["1.png", "a"]], {}, "no 'path' column"),
    ([["path", "a"], ["1.png", 1]], {}, "at least two distinct class columns"),
    ([["path", "a", "b"], ["1.png", 1, 0]], {"not_classes": "NF"}, "no vote column"),
    ([["path", "a", "b"], ["1.png", 1, 0]], {"rename": "a=b"}, "at least two distinct class columns"),
    ([["path", "label"], ["1.png", "a"]], {"rename": "a:b"}, "expected COLUMN=CLASS"),
])
def test_unusable_label_files_name_the_problem(tmp_path, rows, spec, message):
    file = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(LabelFileError, match=message):
        read_label_file(LabelSpec.parse(str(file), **spec))


def test_a_missing_or_binary_label_file_is_one_error(tmp_path):
    with pytest.raises(LabelFileError, match="no such file"):
        read_label_file(LabelSpec(str(tmp_path / "none.csv")))
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(LabelFileError, match="not a UTF-8"):
        read_label_file(LabelSpec(str(tmp_path / "bin.csv")))


def test_negative_votes_skip_the_row(tmp_path):
    file = write_csv(tmp_path / "v.csv", [["path", "a", "b"], ["1.png", 3, -1], ["2.png", 3, 1]])
    table = read_label_file(LabelSpec(str(file)))
    assert table.paths == ["2.png"] and "not finite" in table.skipped["1.png"]


# ----------------------------------------------------------------------------
# Pairing rows with images; targets
# ----------------------------------------------------------------------------


def test_rows_without_images_and_images_without_rows_are_left_out_and_named(fer_tree, tmp_path):
    root = fer_tree(classes=("happy", "sad"), per_class=3)
    _, paths = images_of(root)
    relative = [path.relative_to(root).as_posix() for path in paths]
    rows = [["path", "label"]] + [[name, "happy"] for name in relative[1:]] + [["sad/gone.jpg", "sad"]]
    images = match_images(read_label_file(LabelSpec(str(write_csv(tmp_path / "l.csv", rows)))), root, paths)
    assert len(images) == 5 and paths[0] not in images.paths
    assert any("1 row(s) name no valid image" in note and "sad/gone.jpg" in note for note in images.notes)
    assert any("1 image(s) have no row" in note and relative[0] in note for note in images.notes)


def test_a_folder_label_that_the_file_contradicts_is_a_conflict(fer_tree, tmp_path):
    root = fer_tree(classes=("happy", "sad"), per_class=2)
    _, paths = images_of(root)
    labels = {"happy": "happy", "sad": "happy"}  # the file says the sad folder's faces are happy
    rows = [["path", "label"]] + [[p.relative_to(root).as_posix(), labels[p.parent.name]] for p in paths]
    table = read_label_file(LabelSpec(str(write_csv(tmp_path / "l.csv", rows))))
    images = match_images(table, root, paths)
    assert table.class_names == ["happy"]  # the folder name 'sad' is no class of the file
    assert not images.conflicts() and (images.folder == -1).sum() == 2
    rows.append(["x/none.png", "sad"])  # now 'sad' is a class of the file, and the two folders disagree
    images = match_images(read_label_file(LabelSpec(str(write_csv(tmp_path / "l.csv", rows)))), root, paths)
    assert images.conflicts() == {("sad", "happy"): 2}
    assert any("differs from the majority on 2 of 4" in line for line in summary(images))


def test_targets_soft_majority_unsure_and_folder_weight(tmp_path):
    root = tmp_path / "data"
    for name in ("a/1.png", "a/2.png", "b/3.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
    file = write_csv(tmp_path / "v.csv", [["path", "a", "b"], ["a/1.png", 8, 2], ["a/2.png", 5, 5], ["b/3.png", 6, 4]])
    images = match_images(read_label_file(LabelSpec(str(file))), root, [root / "a/1.png", root / "a/2.png", root / "b/3.png"])
    keep, soft = images.targets("soft", "drop")
    assert keep.tolist() == [0, 2]
    np.testing.assert_allclose(soft, [[0.8, 0.2], [0.6, 0.4]])
    keep, hard = images.targets("majority", "soft")
    assert keep.tolist() == [0, 1, 2]
    np.testing.assert_allclose(hard, [[1, 0], [0.5, 0.5], [1, 0]])
    _, mixed = images.targets("soft", "drop", folder_weight=0.5)
    np.testing.assert_allclose(mixed, [[0.9, 0.1], [0.3, 0.7]])  # b/3.png's folder says b


# ----------------------------------------------------------------------------
# Training and evaluation with FER+ votes (real images, real votes)
# ----------------------------------------------------------------------------


def test_training_data_from_votes_are_the_vote_distributions(tmp_path):
    root, file = ferplus_subset(tmp_path, "val", per_class=6)
    cfg = train_config(data=str(root), labels=str(file), not_classes="unknown,NF",
                       rename_classes=FERPLUS_NAMES["rename"], unsure="soft", val_split=0.2, project=str(tmp_path / "runs"))
    sources = check_training_data(cfg, progress=False)
    data = load_training_data(cfg, sources, progress=False)
    assert data.class_names == ["angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    images, targets = data.train
    assert len(images) + len(data.val_arrays[0]) <= 30 and len(images) == 24
    np.testing.assert_allclose(targets.sum(axis=1), 1, atol=1e-6)
    assert ((targets > 0).sum(axis=1) > 1).any()  # soft: several classes per image
    val_images, val_labels = data.val_arrays
    assert (val_labels >= 0).all() and data.val[1].max(axis=1).min() == 1  # val is scored on the majority


def test_labels_with_a_val_folder_need_val_labels():
    with pytest.raises(ConfigError, match="val-labels"):
        train_config(data="x", val="y", labels="l.csv")
    with pytest.raises(ConfigError, match="rename_classes"):
        train_config(data="x", labels="l.csv", rename_classes="happiness")


@pytest.mark.slow
def test_soft_target_training_on_ferplus_votes(tmp_path):
    train_root, train_file = ferplus_subset(tmp_path, "train", per_class=40)
    val_root, val_file = ferplus_subset(tmp_path, "val", per_class=10)
    cfg = train_config(data=str(train_root), val=str(val_root), labels=str(train_file), val_labels=str(val_file),
                       not_classes="unknown,NF", rename_classes=FERPLUS_NAMES["rename"], targets="soft", unsure="soft",
                       weights="fer2013", arch="vgg", epochs=1, batch_size=32, learning_rate=1e-4,
                       project=str(tmp_path / "runs"), patience=0)
    with pytest.warns(UserWarning, match="starts afresh for contempt"):
        result = train(cfg, progress=False)
    info = read_info(result.best_model)
    assert info.class_names == ["angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    spec = LabelSpec.parse(str(val_file), **FERPLUS_NAMES)
    report = evaluate(result.best_model, val_root, label_spec=spec, progress=False)
    assert report.labels == str(val_file) and report.vote_cross_entropy is not None
    # Fine-tuned from the FER2013 model for one epoch at a small rate: it keeps what that model knew.
    assert report.accuracy > 0.5
    assert report.images == result.report.images


def test_evaluate_with_a_label_file_scores_the_file_not_the_folders(fer_tree, tmp_path):
    root = fer_tree(classes=("happy", "surprise"), per_class=10)
    _, paths = images_of(root)
    as_folders = evaluate(None, root, progress=False)
    same = [["path", "label"]] + [[p.relative_to(root).as_posix(), p.parent.name] for p in paths]
    by_file = evaluate(None, root, label_spec=LabelSpec(str(write_csv(tmp_path / "same.csv", same))), progress=False)
    assert by_file.accuracy == pytest.approx(as_folders.accuracy) and by_file.vote_cross_entropy is None
    flipped = [["path", "label"]] + [[p.relative_to(root).as_posix(), "nonsense"] for p in paths]
    wrong = evaluate(None, root, label_spec=LabelSpec(str(write_csv(tmp_path / "flip.csv", flipped))), progress=False)
    assert wrong.accuracy == 0 and wrong.class_names[-1] == "nonsense"  # a class the model lacks is always missed


# ----------------------------------------------------------------------------
# Hostile label files
# ----------------------------------------------------------------------------


def _label_rows(root, label_of):
    """path,label rows for the images under root; label_of(folder name, index) gives each label."""
    _, paths = images_of(root)
    return [["path", "label"]] + [[p.relative_to(root).as_posix(), label_of(p.parent.name, i)] for i, p in enumerate(paths)]


def test_a_two_class_label_file_gives_one_sigmoid_target_like_folders(fer_tree, tmp_path):
    root = fer_tree(classes=("happy", "sad"), per_class=10)
    file = write_csv(tmp_path / "l.csv", _label_rows(root, lambda folder, i: folder))
    cfg = train_config(data=str(root), labels=str(file), val_split=0.2, project=str(tmp_path / "runs"))
    data = load_training_data(cfg, check_training_data(cfg, progress=False), progress=False)
    images, targets = data.train
    assert targets.shape == (len(images), 1) and data.val[1].shape == (len(data.val[0]), 1)
    assert set(np.unique(targets)) == {0.0, 1.0} and data.class_names == ["happy", "sad"]


@pytest.mark.slow
def test_a_two_class_label_file_trains(fer_tree, tmp_path):
    root = fer_tree(classes=("happy", "sad"), per_class=10)
    file = write_csv(tmp_path / "l.csv", _label_rows(root, lambda folder, i: folder))
    cfg = train_config(data=str(root), labels=str(file), epochs=1, batch_size=8, project=str(tmp_path / "runs"))
    result = train(cfg, progress=False)
    assert read_info(result.best_model).class_names == ["happy", "sad"]


def test_a_path_listed_twice_with_other_labels_names_both_lines(tmp_path):
    rows = [["path", "label"], ["a/1.png", "happy"], ["a/2.png", "sad"], ["a/1.png", "sad"]]
    with pytest.raises(LabelFileError, match="a/1.png is listed on line 2 and again, with other labels, on line 4"):
        read_label_file(LabelSpec(str(write_csv(tmp_path / "l.csv", rows))))
    votes = [VOTE_HEADER[:4], ["a/1.png", "", "3", "7"], ["a/1.png", "", "7", "3"]]
    with pytest.raises(LabelFileError, match="line 2 .* line 3"):
        read_label_file(LabelSpec(str(write_csv(tmp_path / "v.csv", votes))))


def test_a_path_listed_twice_alike_is_read_once(tmp_path):
    rows = [["path", "label"], ["a/1.png", "happy"], ["a/2.png", "sad"], ["a\\1.png", "happy"]]
    table = read_label_file(LabelSpec(str(write_csv(tmp_path / "l.csv", rows))))
    assert table.paths == ["a/1.png", "a/2.png"]


@pytest.mark.parametrize("rows, message", [([["path", "label"]], "no row with a usable label \\(0 row"),
                                           ([["path", "label"], ["a.png", ""]], "1 skipped, first: a.png: line 2: no label"),
                                           ([["path", "happy", "sad"]], "found: none")])
def test_a_label_file_without_usable_rows_is_one_line(tmp_path, rows, message):
    with pytest.raises(LabelFileError, match=message):
        read_label_file(LabelSpec(str(write_csv(tmp_path / "l.csv", rows))))


def test_too_many_distinct_labels_are_refused_before_any_table_is_built(tmp_path):
    rows = [["path", "label"]] + [[f"{i}.png", f"class{i}"] for i in range(1_500)]
    with pytest.raises(LabelFileError, match="1,500 distinct labels, more than the 1,000"):
        read_label_file(LabelSpec(str(write_csv(tmp_path / "l.csv", rows))))


def test_no_majority_anywhere_fails_before_training(fer_tree, tmp_path):
    root = fer_tree(classes=("happy", "sad"), per_class=5)
    _, paths = images_of(root)
    rows = [["path", "happy", "sad"]] + [[p.relative_to(root).as_posix(), "5", "5"] for p in paths]
    file = write_csv(tmp_path / "v.csv", rows)
    cfg = train_config(data=str(root), labels=str(file), unsure="soft", project=str(tmp_path / "runs"))
    with pytest.raises(data_lib.DatasetError, match="no validation image has a majority label"):
        check_training_data(cfg, progress=False)
    assert not (tmp_path / "runs").exists()
