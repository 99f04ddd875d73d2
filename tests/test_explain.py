"""Grad-CAM explanations with the bundled model on FER2013 val faces and real photos, and `emorec explain`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import BUNDLED, FER, FER2013_MODEL, FER_CLASSES, PHOTOS, require

from emorec.cli import main
from emorec.images import read_image

SRC = Path(__file__).resolve().parents[1] / "src"
PHOTO = "Jennifer_Aniston_0021.jpg"


@pytest.fixture(scope="module")
def crops_explainer():
    """The fer2013 model, explaining FER2013 val images as ready-made face crops."""
    from emorec.explain import Explainer

    if not FER2013_MODEL.is_file():
        pytest.skip(f"bundled model missing at {FER2013_MODEL}")
    return Explainer("fer2013", detect=False)


def val_images(per_class: int) -> list[Path]:
    """The first per_class FER2013 val images of every class."""
    return [path for name in FER_CLASSES for path in sorted(require(FER / "val" / name).glob("*.jpg"))[:per_class]]


def test_heat_maps_cover_the_crop_in_unit_range_for_the_top_class_then_the_runner_up(crops_explainer):
    for path in val_images(2):
        (explained,) = crops_explainer.explain(path)
        probabilities = explained.probabilities
        ranked = sorted(probabilities, key=probabilities.get, reverse=True)
        assert list(explained.heatmaps) == ranked[:2]
        top, runner_up = explained.heatmaps.values()
        for heat in (top, runner_up):
            assert heat.shape == explained.crop.shape[:2] == (48, 48)
            assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
        assert np.abs(top - runner_up).mean() > 0.02, path  # each class is explained by its own evidence


@pytest.fixture(scope="module")
def default_crops_explainer():
    """The default bundled model (ferplus), explaining FER2013 val images as ready-made face crops."""
    from emorec.explain import Explainer

    if not BUNDLED.is_file():
        pytest.skip(f"bundled model missing at {BUNDLED}")
    return Explainer(detect=False)


@pytest.mark.parametrize("explainer_name", ["crops_explainer", "default_crops_explainer"])
def test_occluding_the_hottest_pixels_costs_the_top_class_more_than_occluding_the_coldest(explainer_name, request):
    crops_explainer = request.getfixturevalue(explainer_name)
    hot_drops, cold_drops = [], []
    for path in val_images(4):
        (explained,) = crops_explainer.explain(path)
        top = explained.emotion
        heat, crop = explained.heatmaps[top], explained.crop.astype(np.float32)
        low, high = np.quantile(heat, [0.25, 0.75])
        occluded = []
        for region in (heat >= high, heat <= low):  # a quarter of the face each, filled with its mean grey
            image = crop.copy()
            image[region] = crop.mean()
            occluded.append(image)
        before = explained.probabilities[top]
        hot, cold = crops_explainer.recognizer.classify(np.stack(occluded))[:, list(explained.probabilities).index(top)]
        hot_drops.append(before - hot)
        cold_drops.append(before - cold)
    hot_drops, cold_drops = np.array(hot_drops), np.array(cold_drops)
    assert hot_drops.mean() > cold_drops.mean() + 0.2, (hot_drops.mean(), cold_drops.mean())
    assert (hot_drops > cold_drops).mean() >= 0.75


def test_a_photo_is_explained_face_by_face_with_the_probabilities_predict_reports():
    from emorec.explain import explain_image
    from emorec.recognizer import Recognizer

    path = require(PHOTOS / PHOTO)
    (explained,) = explain_image(path)  # the bundled .onnx model's .keras sibling
    (predicted,) = Recognizer().predict(path)  # the bundled model on ONNX Runtime
    assert explained.box == predicted.box
    for name, probability in predicted.probabilities.items():
        assert explained.probabilities[name] == pytest.approx(probability, abs=1e-4)
    assert all(heat.shape == (48, 48) for heat in explained.heatmaps.values())


def test_gradients_on_the_jax_backend_match_tensorflow(crops_explainer, tmp_path):
    pytest.importorskip("jax")
    paths = val_images(1)[:3]
    script = ("import sys, numpy as np\nfrom emorec.explain import Explainer\n"
              "explainer = Explainer('fer2013', detect=False)\n"
              "maps = [np.stack(list(explainer.explain(p)[0].heatmaps.values())) for p in sys.argv[2:]]\n"
              "np.save(sys.argv[1], np.stack(maps))\n")
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "jax.npy"), *map(str, paths)], env=env, check=True,
                   capture_output=True, timeout=300)
    on_tensorflow = np.stack([np.stack(list(crops_explainer.explain(p)[0].heatmaps.values())) for p in paths])
    np.testing.assert_allclose(np.load(tmp_path / "jax.npy"), on_tensorflow, atol=1e-3)


def test_an_unsupported_backend_or_model_is_one_clear_error(tmp_path):
    from emorec.explain import _gradient, keras_runtime
    from emorec.runtime import ModelError, read_info

    with pytest.raises(ValueError, match="tensorflow or jax Keras backend, not 'torch'"):
        _gradient("torch")
    assert keras_runtime("bundled").path == keras_runtime(None).path == BUNDLED
    lone = shutil.copy(BUNDLED, tmp_path / "lone.onnx")  # any emorec ONNX file is explained without a .keras file
    assert keras_runtime(lone).info == read_info(BUNDLED)
    with pytest.raises(ModelError, match="int8 model cannot be rebuilt"):
        keras_runtime("ferplus-int8")


# ----------------------------------------------------------------------------
# emorec explain
# ----------------------------------------------------------------------------


@pytest.fixture
def photo_tree(tmp_path) -> Path:
    """photos/people/<photo>.jpg, photos/crops/<val crop>.jpg and photos/crops/notes.jpg (not an image)."""
    root = tmp_path / "photos"
    (root / "people").mkdir(parents=True)
    (root / "crops").mkdir()
    shutil.copy(require(PHOTOS / PHOTO), root / "people" / PHOTO)
    shutil.copy(val_images(1)[3], root / "crops" / "happy.jpg")
    (root / "crops" / "notes.jpg").write_text("not an image")
    return root


def test_explain_writes_one_png_per_photo_keeping_sub_folders_and_reports_bad_files(photo_tree, tmp_path, capsys):
    out = tmp_path / "explained"
    assert main(["explain", "bundled", str(photo_tree), "--out", str(out)]) == 1  # a bad file fails the run, not the batch
    printed = capsys.readouterr()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "crops", "crops/happy.png", "people", f"people/{Path(PHOTO).stem}.png"]
    [error] = [line for line in printed.err.splitlines() if line.startswith("emorec explain:")]
    assert error.startswith(f"emorec explain: error: {photo_tree / 'crops' / 'notes.jpg'}: ")
    assert "Traceback" not in printed.err
    assert f"people/{PHOTO} -> {out / 'people' / Path(PHOTO).stem}.png  face 1: " in printed.out
    assert "2 PNG(s) written" in printed.out and "1 file(s) failed" in printed.out
    png = read_image(out / "people" / f"{Path(PHOTO).stem}.png")
    assert png.shape[1] > 2 * png.shape[0]  # one row: crop, top class, runner-up


def test_explain_never_overwrites_without_exist_ok(photo_tree, tmp_path, capsys):
    (photo_tree / "crops" / "notes.jpg").unlink()
    out = tmp_path / "explained"
    assert main(["explain", str(photo_tree / "crops"), "--out", str(out)]) == 0
    png = out / "happy.png"
    written = png.read_bytes()
    capsys.readouterr()
    assert main(["explain", str(photo_tree / "crops"), "--out", str(out)]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"emorec explain: error: {png}: already exists") and "use --exist-ok" in line
    assert png.read_bytes() == written
    assert main(["explain", str(photo_tree / "crops"), "--out", str(out), "--exist-ok"]) == 0
    assert cv2.imread(str(png)) is not None


def test_explain_exist_ok_never_replaces_a_file_it_did_not_write(photo_tree, tmp_path, capsys):
    (photo_tree / "crops" / "notes.jpg").unlink()
    out = tmp_path / "explained"
    out.mkdir()
    (out / "happy.png").write_bytes(b"mine")
    assert main(["explain", str(photo_tree / "crops"), "--out", str(out), "--exist-ok"]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"emorec explain: error: {out / 'happy.png'}: already exists and is not a file emorec wrote")
    assert (out / "happy.png").read_bytes() == b"mine"


def test_explain_never_writes_over_the_photo_it_explains(photo_tree, capsys):
    shot = photo_tree / "people" / "shot.png"
    shot.write_bytes(cv2.imencode(".png", cv2.imread(str(photo_tree / "people" / PHOTO)))[1].tobytes())
    before = shot.read_bytes()
    assert main(["explain", str(shot), "--out", str(shot.parent), "--exist-ok"]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == f"emorec explain: error: {shot}: is an input of this command, and an output never replaces an input; choose another output"
    assert shot.read_bytes() == before


def test_explain_out_that_is_a_link_loop_is_one_line(photo_tree, tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop.name)
    assert main(["explain", str(photo_tree / "people"), "--out", str(loop)]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == f"emorec explain: error: {loop}: symbolic link loop"


@pytest.mark.parametrize("argv, message", [
    (["ferplus-int8", "{photo}"], "int8 model cannot be rebuilt"),
    (["{photo}", "--out-inside"], "lies inside the input folder"),
    (["bundled"], "give at least one photo or folder"),
])
def test_explain_usage_problems_are_one_line_before_any_work(argv, message, photo_tree, tmp_path, capsys):
    names = {"{photo}": str(photo_tree)}
    out = str(photo_tree / "out") if "--out-inside" in argv else str(tmp_path / "explained")
    args = [names.get(a, a) for a in argv if a != "--out-inside"]
    assert main(["explain", *args, "--out", out]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("emorec explain: error: ") and message in line
    assert not Path(out).exists()
