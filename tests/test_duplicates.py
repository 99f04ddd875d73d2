"""Duplicate, blank and faceless images (emorec.duplicates and `emorec check --duplicates`), on real FER2013 faces."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import FER, PHOTOS, PHOTO_NAMES, copy_fer_subset, require, traced_peak, write_image

from emorec.cli import main
from emorec.duplicates import copies_in, find_duplicates, group_pairs, matching_groups, matching_pairs, rank_images
from emorec.images import read_image
from emorec.preprocess import to_model_input

CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def _lut(gray: np.ndarray, curve) -> np.ndarray:
    return np.clip(curve(np.arange(256.0)), 0, 255).round().astype(np.uint8)[gray]


def _jpeg(gray: np.ndarray, quality: int) -> np.ndarray:
    return cv2.imdecode(cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_GRAYSCALE)


# Each makes a near-copy of a 48x48 grey face: what re-publishing an image does to it.
VARIANTS = {
    "jpeg30.jpg": lambda g: _jpeg(g, 30),
    "stretched.png": lambda g: _lut(g, lambda x: 40 + 0.6 * x),
    "gamma.png": lambda g: _lut(g, lambda x: 255 * (x / 255) ** 0.5),
    "equalised.png": cv2.equalizeHist,
    "up96.png": lambda g: cv2.resize(g, (96, 96), interpolation=cv2.INTER_CUBIC),
    "up-down.png": lambda g: cv2.resize(cv2.resize(g, (96, 96), interpolation=cv2.INTER_CUBIC), (48, 48),
                                        interpolation=cv2.INTER_AREA),
    "all.jpg": lambda g: _jpeg(_lut(cv2.resize(g, (96, 96)), lambda x: 255 * (x / 255) ** 1.5), 40),
}


def _first_faces(split: str = "val", per_class: int = 1) -> list[Path]:
    """The first per_class files of each FER2013 class folder of split, class by class."""
    return [path for name in CLASSES for path in sorted((require(FER / split) / name).glob("*.jpg"))[:per_class]]


def _most_saturated(faces: list[Path], count: int) -> list[Path]:
    """The faces with the most white (>= 250) pixels: flat areas where re-encoding noise changes the ranks most."""
    return sorted(faces, key=lambda path: -(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) >= 250).mean())[:count]


def _write_variants(folder: Path, original: Path) -> set[Path]:
    """original copied into folder with its near-copies beside it; all their paths."""
    gray = cv2.imread(str(original), cv2.IMREAD_GRAYSCALE)
    paths = {write_image(folder / original.name, gray)}
    for suffix, make in VARIANTS.items():
        paths.add(write_image(folder / f"{original.stem}_{suffix}", make(gray)))
    return paths


def _groups(report) -> list[set[Path]]:
    return [{entry.path for entry in group} for group in report.groups]


def test_near_copies_group_with_their_original_and_nothing_else(tmp_path):
    hard = _most_saturated(_first_faces(per_class=50), 3)
    faces = [face for face in _first_faces() if face not in hard] + hard
    expected = [_write_variants(tmp_path / "data" / face.parent.name, face) for face in faces]
    report = find_duplicates(tmp_path / "data", progress=False)
    assert sorted(map(sorted, _groups(report))) == sorted(map(sorted, expected))
    assert report.conflicting == [] and report.blank == []
    assert all(group[0].path.stem.count("_") == 1 for group in report.groups)  # the original is kept: first by name


def test_no_false_matches_among_distinct_fer2013_faces(tmp_path):
    """350 real faces: the only copies found are those whose decoded pixels are identical."""
    data = copy_fer_subset(tmp_path / "val350", "val", CLASSES, 50)
    report = find_duplicates(data, progress=False)
    by_pixels: dict[bytes, set[Path]] = {}
    for path in sorted(data.rglob("*.jpg")):
        by_pixels.setdefault(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).tobytes(), set()).add(path)
    identical = [paths for paths in by_pixels.values() if len(paths) > 1]
    assert identical, "this subset of FER2013 val holds a pixel-identical pair; it should be found"
    assert sorted(map(sorted, _groups(report))) == sorted(map(sorted, identical))


def test_copies_in_different_class_folders_are_conflicting(tmp_path):
    face = _first_faces()[3]
    gray = cv2.imread(str(face), cv2.IMREAD_GRAYSCALE)
    write_image(tmp_path / "happy" / "a.png", gray)
    write_image(tmp_path / "sad" / "b.jpg", _jpeg(gray, 50))
    write_image(tmp_path / "sad" / "c.png", cv2.imread(str(_first_faces()[5]), cv2.IMREAD_GRAYSCALE))
    write_image(tmp_path / "sad" / "d.png", cv2.equalizeHist(cv2.imread(str(_first_faces()[5]), cv2.IMREAD_GRAYSCALE)))
    report = find_duplicates(tmp_path, progress=False)
    assert [[e.path.name for e in group] for group in report.groups] == [["a.png", "b.jpg"], ["c.png", "d.png"]]
    assert report.conflicting == [0]
    assert report.to_dict()["conflicting_labels"] == [{"group": 0, "labels": ["happy", "sad"]}]


def test_blank_images_are_flagged_and_not_grouped(tmp_path):
    rng = np.random.default_rng(0)
    write_image(tmp_path / "a" / "black.png", np.zeros((48, 48), np.uint8))
    write_image(tmp_path / "a" / "grey.jpg", np.full((48, 48), 128, np.uint8))
    write_image(tmp_path / "b" / "faint.png", (200 + rng.integers(-2, 3, (48, 48))).astype(np.uint8))
    write_image(tmp_path / "b" / "face.jpg", cv2.imread(str(_first_faces()[0]), cv2.IMREAD_GRAYSCALE))
    report = find_duplicates(tmp_path, progress=False)
    assert sorted(e.path.name for e in report.blank) == ["black.png", "faint.png", "grey.jpg"]
    assert report.groups == []


def test_large_images_without_a_face_are_flagged(tmp_path):
    rng = np.random.default_rng(1)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (200, 200), dtype=np.uint8), (9, 9), 3)
    write_image(tmp_path / "a" / "texture.png", texture)
    write_image(tmp_path / "a" / "photo.jpg", cv2.imread(str(require(PHOTOS / PHOTO_NAMES[0]))))
    write_image(tmp_path / "b" / "crop.png", rng.integers(0, 256, (48, 48), dtype=np.uint8))  # small: not searched
    report = find_duplicates(tmp_path, progress=False)
    assert [e.path.name for e in report.no_face] == ["texture.png"]
    assert report.face_checked == 2


def _thumbs(paths: list[Path]) -> np.ndarray:
    return np.stack([to_model_input(read_image(path), 32, 1)[..., 0] for path in paths])


def test_many_copies_group_as_when_every_pair_is_compared(tmp_path):
    """Identical files, grey-level-mapped copies, near-copies and distinct faces: the groups of the all-pairs search."""
    faces = _first_faces("val", per_class=4)
    for index, path in enumerate(faces):
        write_image(tmp_path / "distinct" / f"d{index:02d}.png", cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
    copied, mapped = faces[0].read_bytes(), cv2.imread(str(faces[1]), cv2.IMREAD_GRAYSCALE)
    for index in range(300):
        (tmp_path / ("a" if index % 2 else "b")).mkdir(exist_ok=True)
        (tmp_path / ("a" if index % 2 else "b") / f"copy{index:03d}.jpg").write_bytes(copied)
    for index in range(20):
        write_image(tmp_path / "a" / f"stretched{index:02d}.png", _lut(mapped, lambda x, k=index: 20 + k + 0.7 * x))
    write_image(tmp_path / "b" / "reencoded.jpg", _jpeg(cv2.imread(str(faces[2]), cv2.IMREAD_GRAYSCALE), 30))
    report = find_duplicates(tmp_path, progress=False)
    paths = [entry.path for entry in (e for g in report.groups for e in g)]
    every = sorted(tmp_path.rglob("*.*"))
    thumbs = _thumbs(every)
    all_pairs = [{every[i] for i in group} for group in group_pairs(matching_pairs(rank_images(thumbs)), len(thumbs))]
    assert sorted(map(sorted, _groups(report))) == sorted(map(sorted, all_pairs))
    sizes = sorted(len(group) for group in report.groups)
    assert sizes[-2:] == [21, 301] and len(paths) == len(set(paths))  # d00 and its 300 copies, d01 and 20 mapped ones


def test_identical_copies_are_compared_once_so_memory_stays_linear():
    rng = np.random.default_rng(0)
    face = cv2.GaussianBlur(rng.integers(0, 256, (32, 32), dtype=np.uint8), (5, 5), 1)
    others = np.stack([cv2.GaussianBlur(rng.integers(0, 256, (32, 32), dtype=np.uint8), (5, 5), 1) for _ in range(20)])
    thumbs = np.concatenate([np.repeat(face[None], 4000, axis=0), others])
    groups, peak = traced_peak(lambda: matching_groups(thumbs))
    assert groups == [list(range(4000))]
    assert peak < 120 * 2**20  # every pair: 8 million candidate pairs, over 250 MiB


def test_copies_in_marks_the_data_images_with_a_copy_in_the_other_folder(tmp_path):
    """Real FER2013 val faces against real train faces plus planted copies: identical, contrast-remapped, re-encoded."""
    data = sorted(copy_fer_subset(tmp_path / "val", "val", CLASSES, 3).rglob("*.jpg"))
    other = copy_fer_subset(tmp_path / "train", "train", CLASSES, 10)
    planted = {0: lambda g: g, 4: lambda g: g, 8: VARIANTS["stretched.png"], 12: VARIANTS["gamma.png"],
               16: VARIANTS["equalised.png"], 20: VARIANTS["jpeg30.jpg"]}
    for index, make in planted.items():
        gray = cv2.imread(str(data[index]), cv2.IMREAD_GRAYSCALE)
        write_image(other / "neutral" / f"copy_{index}.png", make(gray))  # any class folder: labels do not matter
    found = copies_in(data, other)
    assert found.dtype == bool and found.shape == (len(data),)
    assert found[list(planted)].all()
    # Beyond the planted copies, exactly the data images the duplicate report links to the other folder.
    report = find_duplicates(tmp_path / "val", [other], progress=False, detector="haar")
    linked = {e.path for group in report.groups if any(e.folder == 1 for e in group) for e in group if e.folder == 0}
    assert {data[i] for i in np.flatnonzero(found)} == linked
    assert (~found).sum() >= len(data) - len(planted) - 2  # distinct faces stay unmarked


def test_copies_in_leaves_blank_images_and_an_empty_list_unmarked(tmp_path):
    blank = write_image(tmp_path / "data" / "a" / "black.png", np.zeros((48, 48), np.uint8))
    write_image(tmp_path / "other" / "a" / "black.png", np.zeros((48, 48), np.uint8))
    assert copies_in([blank], tmp_path / "other").tolist() == [False]
    assert copies_in([], tmp_path / "other").shape == (0,)


def test_group_pairs_joins_chains():
    assert group_pairs(np.array([[3, 4], [0, 5], [4, 6], [5, 2]]), 8) == [[0, 2, 5], [3, 4, 6]]
    assert group_pairs(np.zeros((0, 2), int), 3) == []


# ----------------------------------------------------------------------------
# emorec check --duplicates
# ----------------------------------------------------------------------------


@pytest.fixture
def split_pair(tmp_path) -> dict[str, Path]:
    """train/ with a face, its copy and another face; test/ with a copy of the other face and one new face."""
    faces = [cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in _first_faces()[:3]]
    files = {
        "kept": write_image(tmp_path / "train" / "angry" / "a1.png", faces[0]),
        "copy": write_image(tmp_path / "train" / "angry" / "a2.jpg", _jpeg(faces[0], 40)),
        "leak": write_image(tmp_path / "train" / "fear" / "b1.png", faces[1]),
        "test_copy": write_image(tmp_path / "test" / "angry" / "b2.png", cv2.equalizeHist(faces[1])),
        "test_own": write_image(tmp_path / "test" / "fear" / "c1.png", faces[2]),
    }
    return {"train": tmp_path / "train", "test": tmp_path / "test", **files}


def test_check_duplicates_json(split_pair, capsys):
    code = main(["check", str(split_pair["train"]), "--duplicates", "--against", str(split_pair["test"]), "--json"])
    assert code == 1  # copies found
    found = json.loads(capsys.readouterr().out)
    assert found["duplicates"] == [[str(split_pair["kept"]), str(split_pair["copy"])],
                                   [str(split_pair["leak"]), str(split_pair["test_copy"])]]
    assert found["groups"] == 2 and found["files_in_groups"] == 4
    assert found["conflicting_labels"] == [{"group": 1, "labels": ["angry", "fear"]}]
    assert found["cross_folder"] == [{"folder": str(split_pair["test"]), "pairs": 1, "files_with_a_copy_in_data": 1}]
    assert found["later_copies"] == [str(split_pair["copy"]), str(split_pair["leak"])]
    assert found["blank"] == [] and found["no_face"] == [] and found["invalid"] == []
    assert [f["images"] for f in found["folders"]] == [3, 2]
    assert "set_aside" not in found
    assert all(split_pair[key].exists() for key in ("kept", "copy", "leak", "test_copy", "test_own"))


def test_check_duplicates_quarantine_moves_only_later_copies_in_data(split_pair, tmp_path, capsys):
    target = tmp_path / "aside"
    main(["check", str(split_pair["train"]), "--duplicates", "--against", str(split_pair["test"]),
          "--quarantine", str(target)])
    out = capsys.readouterr().out
    assert f"2 file(s) moved to {target}" in out
    moved = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert moved == ["angry/a2.jpg", "fear/b1.png"]
    assert split_pair["kept"].exists() and split_pair["test_copy"].exists() and split_pair["test_own"].exists()
    assert main(["check", str(split_pair["train"]), "--duplicates", "--against", str(split_pair["test"])]) == 0
    assert "duplicates: 0 group(s)" in capsys.readouterr().out


def test_check_duplicates_delete(split_pair, capsys):
    assert main(["check", str(split_pair["train"]), "--duplicates", "--delete", "--json"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert found["set_aside"] == {"done": [str(split_pair["copy"])], "left": [], "failed": []}
    assert not split_pair["copy"].exists() and split_pair["kept"].exists() and split_pair["leak"].exists()


def test_check_against_the_same_folder_is_a_one_line_error(split_pair, capsys):
    assert main(["check", str(split_pair["train"]), "--duplicates", "--against", str(split_pair["train"])]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("emorec check: error:") and "give each folder once" in err[0]


@pytest.mark.parametrize("flags", [["--json"], ["--against", "x"]])
def test_check_json_and_against_need_duplicates(split_pair, flags, capsys):
    assert main(["check", str(split_pair["train"]), *flags]) == 2
    assert "go with --duplicates" in capsys.readouterr().err


def test_check_duplicates_on_a_folder_without_images(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    assert main(["check", str(tmp_path), "--duplicates"]) == 1
    captured = capsys.readouterr()
    assert "no image files found" in captured.out and "duplicates: 0 group(s)" in captured.out
    assert "error" not in captured.err


def test_delete_never_removes_data_reached_through_a_linked_against_folder(split_pair, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "angry").symlink_to(split_pair["train"] / "angry", target_is_directory=True)  # DATA's own images
    assert main(["check", str(split_pair["train"]), "--duplicates", "--against", str(other), "--delete", "--json"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert found["duplicates"][0] == [str(split_pair["kept"]), str(split_pair["copy"]), str(other / "angry" / "a1.png"),
                                      str(other / "angry" / "a2.jpg")]  # the same two files, seen from both folders
    assert found["later_copies"] == [] and found["set_aside"]["done"] == []
    assert all(path.exists() for path in (split_pair["kept"], split_pair["copy"], *(other / "angry").iterdir()))


def test_delete_never_removes_the_target_of_a_link_inside_data(split_pair, capsys):
    link = split_pair["train"] / "disgust" / "b1-link.png"
    link.parent.mkdir()
    link.symlink_to(split_pair["leak"])  # sorts before fear/b1.png, so the link is the file a group keeps
    assert main(["check", str(split_pair["train"]), "--duplicates", "--delete", "--json"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert str(split_pair["leak"]) not in found["set_aside"]["done"] + found["later_copies"]
    assert split_pair["leak"].exists() and link.resolve() == split_pair["leak"] and link.exists()
