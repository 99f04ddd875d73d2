"""Scanning, validating, quarantining and loading class-folder datasets (`emorec check` semantics)."""

from __future__ import annotations

import io
import lzma
import shutil
import zipfile

import cv2
import numpy as np
import pytest
from conftest import face_like, write_image
from PIL import Image

from emorec.data import (
    ArrayData,
    DatasetError,
    clean_view,
    delete_files,
    is_pack,
    load_arrays,
    load_pack,
    pack_splits,
    quarantine,
    save_pack,
    scan_dataset,
    to_model_input,
    validate_image,
)
from emorec.images import read_image


def _jpeg_bytes(seed: int = 0, size: int = 48) -> bytes:
    ok, buffer = cv2.imencode(".jpg", face_like(seed, size))
    assert ok
    return buffer.tobytes()


@pytest.fixture
def mixed_tree(tmp_path) -> dict:
    """A dataset with valid images of every kind and every kind of bad file, plus what each should be."""
    root = tmp_path / "faces"
    valid = [
        write_image(root / "happy" / "gray.jpg", face_like(1)),
        write_image(root / "happy" / "gray.png", face_like(2)),
        write_image(root / "happy" / "colour.jpeg", face_like(3, channels=3)),
        write_image(root / "happy" / "rgba.png", face_like(4, channels=4)),
        write_image(root / "sad" / "deep.png", (face_like(5).astype(np.uint16) * 257)),
        write_image(root / "sad" / "UPPER.JPG", face_like(6)),
        write_image(root / "sad" / "nested" / "deeper.bmp", face_like(7, channels=3)),
    ]
    invalid = {}

    def bad(relative: str, data: bytes, reason_part: str) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        invalid[path] = reason_part

    jpeg = _jpeg_bytes(8)
    bad("happy/corrupt.jpg", np.random.default_rng(0).integers(0, 256, 500, np.uint8).tobytes(), "not a decodable")
    bad("happy/truncated.jpg", jpeg[: len(jpeg) // 2], "truncated")
    bad("sad/empty.jpg", b"", "empty")
    bad("sad/text.jpg", b"this is not an image\n" * 20, "not a decodable")
    # Hidden files and folders are neither valid nor invalid: they are not looked at.
    (root / "happy" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "sad" / ".hidden").mkdir()
    (root / "sad" / ".hidden" / "broken.jpg").write_bytes(b"junk")
    (root / "neutral").mkdir()  # an empty class folder
    (root / ".cache").mkdir()  # a hidden folder is not a class
    (root / ".cache" / "x.jpg").write_bytes(b"junk")
    (root / "sad" / "notes.txt").write_bytes(b"a text file")  # a document: listed, never judged or touched
    return {"root": root, "valid": valid, "invalid": invalid, "documents": [root / "sad" / "notes.txt"]}


# ----------------------------------------------------------------------------
# scan_dataset
# ----------------------------------------------------------------------------


def test_scan_counts_valid_files_per_class(mixed_tree):
    report = scan_dataset(mixed_tree["root"], progress=False)
    assert report.class_names == ["happy", "neutral", "sad"]
    assert report.counts == {"happy": 4, "neutral": 0, "sad": 3}
    assert report.total == len(mixed_tree["valid"])
    assert sorted(p for paths in report.files.values() for p in paths) == sorted(mixed_tree["valid"])


def test_scan_reports_each_invalid_file_with_its_reason(mixed_tree):
    report = scan_dataset(mixed_tree["root"], progress=False)
    found = {item.path: item.reason for item in report.invalid}
    assert set(found) == set(mixed_tree["invalid"])
    for path, reason_part in mixed_tree["invalid"].items():
        assert reason_part in found[path], (path, found[path])
    assert report.documents == mixed_tree["documents"]


def test_scan_ignores_hidden_files_and_folders(mixed_tree):
    report = scan_dataset(mixed_tree["root"], progress=False)
    seen = [p for paths in report.files.values() for p in paths] + [i.path for i in report.invalid]
    assert not any(part.startswith(".") for p in seen for part in p.relative_to(mixed_tree["root"]).parts)
    assert ".cache" not in report.class_names


def test_scan_table_lists_classes_and_total(mixed_tree):
    table = scan_dataset(mixed_tree["root"], progress=False).table()
    lines = table.splitlines()
    assert lines[0].split() == ["class", "images"]
    assert lines[1].split() == ["happy", "4"]
    assert lines[2].split() == ["neutral", "0"]
    assert lines[-1].split() == ["total", "7"]


def test_scan_missing_root_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="nowhere"):
        scan_dataset(missing, progress=False)


def test_scan_root_without_class_folders(tmp_path):
    write_image(tmp_path / "loose.png", face_like())
    with pytest.raises(DatasetError, match="no class folders"):
        scan_dataset(tmp_path, progress=False)


def test_scan_root_that_is_a_file(tmp_path):
    path = write_image(tmp_path / "one.png", face_like())
    with pytest.raises(DatasetError, match="not a folder"):
        scan_dataset(path, progress=False)


def test_scan_real_fer_subset_is_all_valid(fer_tree):
    root = fer_tree(per_class=5)
    report = scan_dataset(root, progress=False)
    assert report.invalid == []
    assert report.counts == {"angry": 5, "happy": 5, "surprise": 5}


# ----------------------------------------------------------------------------
# validate_image
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp"])
def test_every_accepted_extension_validates(tmp_path, suffix):
    path = tmp_path / f"img{suffix}"
    Image.fromarray(face_like(0, channels=3)).save(path)
    assert validate_image(path) is None


def test_wrong_extension_is_invalid_even_if_decodable(tmp_path):
    path = write_image(tmp_path / "img.png", face_like())
    renamed = path.rename(tmp_path / "img.jp2")
    assert "extension" in validate_image(renamed)
    assert "extension" in validate_image(tmp_path / "no_suffix")


# ----------------------------------------------------------------------------
# quarantine / delete / clean_view
# ----------------------------------------------------------------------------


def test_quarantine_moves_invalid_files_keeping_relative_paths(mixed_tree, tmp_path):
    root, target = mixed_tree["root"], tmp_path / "quarantine"
    report = scan_dataset(root, progress=False)
    before = {p: p.read_bytes() for p in mixed_tree["valid"]}
    moved = quarantine(report, target).done
    expected = sorted(target / p.relative_to(root) for p in mixed_tree["invalid"])
    assert sorted(moved) == expected
    assert all(p.is_file() for p in moved)
    assert not any(p.exists() for p in mixed_tree["invalid"])
    assert {p: p.read_bytes() for p in mixed_tree["valid"]} == before
    again = scan_dataset(root, progress=False)
    assert again.invalid == [] and again.total == len(before)


def test_quarantine_never_overwrites(tmp_path):
    root, target = tmp_path / "data", tmp_path / "quarantine"
    write_image(root / "happy" / "ok.png", face_like())
    contents = [b"first bad file", b"second bad file", b"third bad file"]
    for data in contents:
        (root / "happy" / "bad.jpg").write_bytes(data)
        quarantine(scan_dataset(root, progress=False), target)
    names = sorted(p.name for p in (target / "happy").iterdir())
    assert names == ["bad.1.jpg", "bad.2.jpg", "bad.jpg"]
    assert (target / "happy" / "bad.jpg").read_bytes() == contents[0]
    assert (target / "happy" / "bad.1.jpg").read_bytes() == contents[1]
    assert (target / "happy" / "bad.2.jpg").read_bytes() == contents[2]


def test_delete_files_removes_only_invalid(mixed_tree):
    report = scan_dataset(mixed_tree["root"], progress=False)
    deleted = delete_files(report).done
    assert sorted(deleted) == sorted(mixed_tree["invalid"])
    assert not any(p.exists() for p in mixed_tree["invalid"])
    assert all(p.is_file() for p in mixed_tree["valid"])
    assert (mixed_tree["root"] / "happy" / ".DS_Store").exists()


def test_delete_and_quarantine_never_remove_the_target_of_a_link(tmp_path):
    write_image(tmp_path / "data" / "happy" / "ok.png", face_like(0))
    broken = tmp_path / "data" / "happy" / "broken.jpg"
    broken.write_bytes(b"not an image")
    link = tmp_path / "data" / "sad" / "alias.jpg"
    link.parent.mkdir()
    link.symlink_to(broken)
    report = scan_dataset(tmp_path / "data", progress=False)
    for cleanup in (delete_files(report), quarantine(report, tmp_path / "aside")):
        assert cleanup.done == [] and {item.path for item in cleanup.left} == {broken, link}
        assert "the target of a symbolic link" in next(i.reason for i in cleanup.left if i.path == broken)
    assert broken.read_bytes() == b"not an image" and link.exists()


# ----------------------------------------------------------------------------
# load_arrays / packs
# ----------------------------------------------------------------------------


def test_load_arrays_resizes_and_labels_alphabetically(tmp_path):
    write_image(tmp_path / "b" / "1.png", np.full((20, 30), 200, np.uint8))
    write_image(tmp_path / "a" / "1.png", np.full((48, 48, 3), (255, 0, 0), np.uint8))  # blue in BGR
    write_image(tmp_path / "a" / "2.png", np.full((64, 64), 10, np.uint8))
    report = scan_dataset(tmp_path, progress=False)
    gray = load_arrays(report, 32, 1, progress=False)
    assert gray.images.shape == (3, 32, 32, 1) and gray.images.dtype == np.uint8
    assert gray.labels.tolist() == [0, 0, 1] and gray.class_names == ["a", "b"]
    assert gray.images[1].min() == gray.images[1].max() == 10
    assert gray.images[2].min() == gray.images[2].max() == 200
    rgb = load_arrays(report, 16, 3, progress=False)
    assert rgb.images.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(rgb.images[0, 0, 0], [0, 0, 255])  # RGB order
    np.testing.assert_array_equal(rgb.images[2, 0, 0], [200, 200, 200])


def test_load_arrays_of_empty_classes(tmp_path):
    (tmp_path / "a").mkdir()
    data = load_arrays(scan_dataset(tmp_path, progress=False), 24, 1, progress=False)
    assert len(data) == 0 and data.images.shape == (0, 24, 24, 1)


@pytest.mark.parametrize("name", ["pack.npz", "pack.npz.xz"])
def test_pack_round_trip(tmp_path, name):
    rng = np.random.default_rng(0)
    splits = {
        "train": ArrayData(rng.integers(0, 256, (5, 8, 8, 1), np.uint8), np.array([0, 1, 2, 1, 0], np.int32), ["x", "y", "z"]),
        "val": ArrayData(rng.integers(0, 256, (2, 8, 8, 1), np.uint8), np.array([2, 0], np.int32), ["x", "y", "z"]),
    }
    path = save_pack(tmp_path / name, splits)
    assert is_pack(path) and path.is_file()
    assert not list(tmp_path.glob("*.part"))
    loaded = load_pack(path)
    assert sorted(loaded) == ["train", "val"]
    for split, data in splits.items():
        np.testing.assert_array_equal(loaded[split].images, data.images)
        np.testing.assert_array_equal(loaded[split].labels, data.labels)
        assert loaded[split].class_names == ["x", "y", "z"]


def test_xz_pack_is_compressed(tmp_path):
    splits = {"train": ArrayData(np.zeros((50, 48, 48, 1), np.uint8), np.zeros(50, np.int32), ["a", "b"])}
    plain = save_pack(tmp_path / "p.npz", splits)
    packed = save_pack(tmp_path / "p.npz.xz", splits)
    assert packed.stat().st_size < plain.stat().st_size / 10


def test_load_pack_missing(tmp_path):
    with pytest.raises(DatasetError, match="missing.npz"):
        load_pack(tmp_path / "missing.npz")


@pytest.mark.parametrize("name, content", [("garbage.npz", b"not a zip"), ("garbage.npz.xz", b"not xz"), ("empty.npz", b"")])
def test_a_file_that_is_not_a_pack_is_one_dataset_error(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DatasetError, match=f"{name}: not a pack"):
        load_pack(tmp_path / name)




def _hostile_pack(path, **arrays):
    """An .npz (or .npz.xz) with exactly these members, as a hand-made or damaged pack would have."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(lzma.compress(buffer.getvalue()) if path.suffix == ".xz" else buffer.getvalue())
    return path


def _good_arrays(labels=(0, 1, 1), val_labels=(1, 0)):
    return dict(class_names=np.array(["a", "b"]), train_images=np.zeros((len(labels), 8, 8, 1), np.uint8),
                train_labels=np.array(labels, np.int32), val_images=np.zeros((len(val_labels), 8, 8, 1), np.uint8),
                val_labels=np.array(val_labels, np.int32))


def _claiming_pack(path, count):
    """A tiny .npz whose train_images header claims `count` images."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, array, shape in (("class_names", np.array(["a", "b"]), None),
                                   ("train_images", np.zeros((1, 8, 8, 1), np.uint8), (count, 8, 8, 1)),
                                   ("train_labels", np.zeros(1, np.int32), (count,))):
            member = io.BytesIO()
            header = np.lib.format.header_data_from_array_1_0(array)
            header["shape"] = shape or array.shape
            np.lib.format.write_array_header_1_0(member, header)
            member.write(array.tobytes())
            archive.writestr(f"{name}.npy", member.getvalue())
    return path


@pytest.mark.parametrize("arrays, message", [
    ({k: v for k, v in _good_arrays().items() if k != "class_names"}, "no class_names"),
    (_good_arrays(labels=(0, 99, 1)), "train_labels holds 99"),
    (_good_arrays(val_labels=(-1, 0)), "val_labels holds -1"),
    ({**_good_arrays(), "train_labels": np.array([0.0, 1.0, 1.0])}, "whole-number labels"),
    ({**_good_arrays(), "train_images": np.zeros((3, 2, 8, 8, 1), np.uint8)}, "uint8 images"),
    ({**_good_arrays(), "train_images": np.zeros((3, 8, 8, 1), np.float32)}, "uint8 images"),
    ({**_good_arrays(), "train_labels": np.zeros(2, np.int32)}, "3 whole-number labels"),
    ({**_good_arrays(), "class_names": np.array(["a", "a"])}, "distinct"),
    ({**_good_arrays(), "class_names": np.array([1, 2])}, "class_names must be"),
    ({**_good_arrays(), "notes": np.zeros(1)}, "unexpected member"),
])
@pytest.mark.parametrize("suffix", [".npz", ".npz.xz"])
def test_bad_packs_are_one_line_naming_the_file(tmp_path, arrays, message, suffix):
    path = _hostile_pack(tmp_path / f"bad{suffix}", **arrays)
    with pytest.raises(DatasetError, match=message) as caught:
        load_pack(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_pack_claiming_a_trillion_images_is_refused_from_its_header(tmp_path):
    with pytest.raises(DatasetError, match="declare 68,000,000,000,000 bytes"):
        load_pack(_claiming_pack(tmp_path / "huge.npz", 10**12))


def test_random_bytes_are_not_a_pack(tmp_path):
    (tmp_path / "r.npz").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(DatasetError, match="not a pack made by `emorec pack`") as caught:
        load_pack(tmp_path / "r.npz")
    assert "unsafe" not in str(caught.value) and "pickle" not in str(caught.value)


def test_an_xz_pack_is_decompressed_only_up_to_the_limit(tmp_path):
    path = save_pack(tmp_path / "bomb.npz.xz",
                     {"train": ArrayData(np.zeros((4000, 48, 48, 1), np.uint8), np.zeros(4000, np.int32), ["a", "b"])})
    assert path.stat().st_size < 50_000
    with pytest.raises(DatasetError, match="decompresses to more than"):
        load_pack(path, max_bytes=2**16)
    assert len(load_pack(path)["train"]) == 4000


def test_only_the_splits_asked_for_are_read(tmp_path):
    path = _hostile_pack(tmp_path / "p.npz", **_good_arrays())
    assert sorted(load_pack(path, ["val"])) == ["val"]
    assert pack_splits(path) == ["train", "val"]
    big = _claiming_pack(tmp_path / "big.npz", 10**9)  # only the unread split is too big
    with zipfile.ZipFile(big, "a") as archive:
        for name, array in (("val_images", np.zeros((2, 8, 8, 1), np.uint8)), ("val_labels", np.zeros(2, np.int32))):
            member = io.BytesIO()
            np.save(member, array)
            archive.writestr(f"{name}.npy", member.getvalue())
    assert len(load_pack(big, ["val"])["val"]) == 2


def test_is_pack():
    assert is_pack("a.npz") and is_pack("dir/a.npz.xz")
    assert not is_pack("a/") and not is_pack("a.xz") and not is_pack("a.zip")


# ----------------------------------------------------------------------------
# Deletes and moves stay inside and stay narrow
# ----------------------------------------------------------------------------


@pytest.fixture
def guarded_tree(tmp_path) -> dict:
    """A data folder with corrupt files, valid files delete must keep, and a class folder linked from outside."""
    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    write_image(root / "happy" / "ok.png", face_like(0))
    (root / "happy" / "broken.jpg").write_bytes(b"junk")
    (root / "happy" / "empty.png").write_bytes(b"")
    write_image(root / "happy" / "big.png", face_like(1, size=300))  # valid, over a small limit
    Image.fromarray(face_like(2, channels=3)).save(root / "happy" / "other.jpg", format="PPM")
    (root / "happy" / "README.md").write_text("notes\n")
    write_image(outside / "ok.png", face_like(3))
    (outside / "broken.jpg").write_bytes(b"junk")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    return {"root": root, "outside": outside}


def test_delete_removes_only_corrupt_files_inside_the_data_folder(guarded_tree, monkeypatch):
    import emorec.images

    monkeypatch.setattr(emorec.images, "MAX_PIXELS", 50_000)
    monkeypatch.setattr(emorec.images.read_image, "__defaults__", (50_000, False))
    root, outside = guarded_tree["root"], guarded_tree["outside"]
    report = scan_dataset(root, progress=False)
    assert report.documents == [root / "happy" / "README.md"]
    cleanup = delete_files(report)
    assert sorted(p.name for p in cleanup.done) == ["broken.jpg", "empty.png"]
    assert sorted(p.name for p in (root / "happy").iterdir()) == ["README.md", "big.png", "ok.png", "other.jpg"]
    left = {item.path.name: item.reason for item in cleanup.left}
    assert "exceeds" in left["big.png"] and "PPM" in left["other.jpg"]
    assert "symbolic link" in left["broken.jpg"]
    assert (outside / "broken.jpg").exists() and cleanup.failed == []


def test_quarantine_inside_the_data_folder_is_refused(guarded_tree):
    root = guarded_tree["root"]
    report = scan_dataset(root, progress=False)
    with pytest.raises(ValueError, match="inside the input folder"):
        quarantine(report, root / "quarantine")
    assert (root / "happy" / "broken.jpg").exists() and not (root / "quarantine").exists()


def test_quarantine_never_moves_through_a_linked_class_folder(guarded_tree, tmp_path):
    root, outside = guarded_tree["root"], guarded_tree["outside"]
    cleanup = quarantine(scan_dataset(root, progress=False), tmp_path / "aside")
    assert sorted(p.relative_to(tmp_path / "aside").as_posix() for p in cleanup.done) == ["happy/broken.jpg", "happy/empty.png"]
    assert (outside / "broken.jpg").read_bytes() == b"junk"


def test_a_failed_delete_is_reported_and_the_rest_still_done(guarded_tree):
    root = guarded_tree["root"]
    report = scan_dataset(root, progress=False)
    (root / "happy" / "empty.png").unlink()  # gone before the delete gets to it
    cleanup = delete_files(report)
    assert [p.name for p in cleanup.done] == ["broken.jpg"]
    assert [item.path.name for item in cleanup.failed] == ["empty.png"]


# ----------------------------------------------------------------------------
# clean_view: what training reads
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_clean_view_holds_every_valid_image_as_its_model_input(mixed_tree, channels):
    report = scan_dataset(mixed_tree["root"], progress=False)
    view = clean_view(report, image_size=32, channels=channels, progress=False)
    try:
        assert sorted(d.name for d in view.iterdir()) == report.class_names
        for name in report.class_names:
            made = sorted((view / name).iterdir())
            assert len(made) == report.counts[name] and all(p.suffix == ".png" for p in made)
            for source, png in zip(report.files[name], made):
                stored = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
                stored = stored[..., None] if channels == 1 else stored[..., ::-1]
                np.testing.assert_array_equal(stored, to_model_input(read_image(source), 32, channels))
    finally:
        shutil.rmtree(view)
    assert all(p.exists() for p in mixed_tree["valid"])


def test_clean_view_applies_exif_rotation_and_cmyk_like_prediction(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    Image.new("RGB", (16, 12), (0, 255, 255)).convert("CMYK").save(root / "a" / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    stored = np.zeros((10, 20, 3), np.uint8)
    stored[:, :5] = 255
    Image.fromarray(stored).save(root / "a" / "rotated.jpg", exif=exif, quality=95)
    view = clean_view(scan_dataset(root, progress=False), image_size=20, channels=3, progress=False)
    try:
        cmyk, rotated = (cv2.imread(str(p))[..., ::-1] for p in sorted((view / "a").iterdir()))
        assert cmyk[..., 0].mean() < 15 and cmyk[..., 1].mean() > 240 and cmyk[..., 2].mean() > 240  # cyan in RGB
        assert rotated[:4].mean() > 200 and rotated[8:].mean() < 40  # the white band ends up on top
    finally:
        shutil.rmtree(view)


@pytest.mark.parametrize("color_mode", ["grayscale", "rgb"])
def test_training_reads_exactly_what_prediction_feeds_the_model(tmp_path, color_mode):
    """image_dataset_from_directory over the clean view yields to_model_input(read_image(path)) bit for bit."""
    import keras

    from conftest import FER, PHOTOS, require

    sources = [sorted(require(FER / "train" / "happy").glob("*.jpg"))[0],
               max(require(PHOTOS).glob("*.jpg"), key=lambda p: p.stat().st_size)]
    root = tmp_path / "data"
    for index, source in enumerate(sources):
        (root / f"class{index}").mkdir(parents=True)
        shutil.copy2(source, root / f"class{index}" / source.name)
    channels = 1 if color_mode == "grayscale" else 3
    assert max(read_image(sources[1]).shape[:2]) > 48  # the photo is really resized
    view = clean_view(scan_dataset(root, progress=False), image_size=48, channels=channels, progress=False)
    try:
        dataset = keras.utils.image_dataset_from_directory(view, color_mode=color_mode, image_size=(48, 48),
                                                           batch_size=8, shuffle=False, verbose=False)
        images, labels = next(iter(dataset))
    finally:
        shutil.rmtree(view)
    for image, label in zip(np.asarray(images), np.asarray(labels)):
        expected = to_model_input(read_image(sources[label]), 48, channels)
        np.testing.assert_array_equal(image, expected.astype(np.float32))
