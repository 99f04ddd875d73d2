"""The predict stage: photos and folders in order, bad files as error results, videos routed, outputs kept safe."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import PHOTO_NAMES, PHOTOS, photo, require, write_video

from emorec import predict
from emorec.config import PredictConfig
from emorec.output import format_results
from emorec.predict import predict_images, run_predict


def cfg(sources, model=None, **kw) -> PredictConfig:
    return PredictConfig(sources=[str(s) for s in sources], model=str(model) if model else None, **kw)


def test_blank_photo_has_no_face(recognizer, tmp_path):
    cv2.imwrite(str(tmp_path / "blank.png"), np.full((300, 300, 3), 255, np.uint8))
    [result] = predict_images(cfg([tmp_path / "blank.png"]), progress=False, recognizer=recognizer)
    assert result.no_face and result.error is None
    assert format_results([result]).endswith("blank.png  no face found")


def test_bad_files_in_a_folder_are_errors_and_the_rest_works(recognizer, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(require(PHOTOS / PHOTO_NAMES[0]).read_bytes())
    (folder / "sub" / "b.jpg").write_bytes((PHOTOS / PHOTO_NAMES[1]).read_bytes())
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("ignored")
    results = predict_images(cfg([folder]), progress=False, recognizer=recognizer)
    by_name = {Path(r.source).name: r for r in results}
    assert "empty.jpg" in by_name["empty.jpg"].error and "\n" not in by_name["empty.jpg"].error
    assert "corrupt.png" in by_name["corrupt.png"].error
    for name in ("a.jpg", "b.jpg"):
        assert by_name[name].error is None and len(by_name[name].faces) == 1
    text = format_results(results)
    assert "corrupt.png  error: " in text and "a.jpg  face 1 (" in text
    (corrupt_line,) = [line for line in text.splitlines() if "corrupt.png" in line]
    assert corrupt_line.count("corrupt.png") == 1  # the path is said once


def test_many_photos_keep_their_order_across_model_calls(recognizer, tmp_path, monkeypatch):
    monkeypatch.setattr(predict, "FACES_PER_CALL", 3)  # several model calls for the folder
    names = sorted(p.name for p in require(PHOTOS).glob("*.jpg"))[:9]
    for i, name in enumerate(names):
        (tmp_path / f"{i:02d}.jpg").write_bytes((PHOTOS / name).read_bytes())
    (tmp_path / "04b.jpg").write_bytes(b"broken")
    results = predict_images(cfg([tmp_path]), progress=False, recognizer=recognizer)
    assert [Path(r.source).name for r in results] == sorted(p.name for p in tmp_path.iterdir())
    assert results[5].error and all(r.error is None for i, r in enumerate(results) if i != 5)
    for result in results:
        if result.faces:  # the same answer as one photo at a time
            [alone] = recognizer.predict_batch([result.source])
            assert [f.emotion for f in alone] == [f.emotion for f in result.faces]
            assert alone[0].confidence == pytest.approx(result.faces[0].confidence, abs=1e-5)


def test_save_annotated_refuses_to_overwrite(recognizer, tmp_path):
    out = tmp_path / "out"
    config = cfg([require(PHOTOS / PHOTO_NAMES[0])], save_annotated=str(out))
    predict_images(config, progress=False, recognizer=recognizer)
    saved = cv2.imread(str(out / PHOTO_NAMES[0]))
    assert saved.shape == photo().shape
    assert not np.array_equal(saved, photo())
    before = (out / PHOTO_NAMES[0]).read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        predict_images(config, progress=False, recognizer=recognizer)
    assert (out / PHOTO_NAMES[0]).read_bytes() == before
    config.exist_ok = True
    predict_images(config, progress=False, recognizer=recognizer)
    assert [p.name for p in out.iterdir()] == [PHOTO_NAMES[0]]  # no temporary files left


def test_run_predict_routes_videos_and_images(seven_class_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_video(folder / "clip.avi", frames=3)
    (folder / "a.jpg").write_bytes(require(PHOTOS / PHOTO_NAMES[2]).read_bytes())
    out = tmp_path / "out"
    results = run_predict(cfg([folder], seven_class_model, save_annotated=str(out)), progress=False)
    assert [Path(r.source).name for r in results] == ["a.jpg", "clip.avi"]
    assert len(results[0].faces) == 1 and results[1].video.frames == 3
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "clip.csv", "clip.mp4"]
    again = run_predict(cfg([folder / "clip.avi"], seven_class_model, save_annotated=str(out)), progress=False)
    assert "already exists" in again[0].error
    assert "video: 3 frames" in format_results(results)


def test_run_predict_reports_a_folder_without_media(untrained_model_path, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    results = run_predict(cfg([tmp_path / "empty"], untrained_model_path), progress=False)
    assert len(results) == 1 and "no images or videos" in results[0].error
    assert str(tmp_path / "empty") in results[0].error


def test_same_named_videos_in_sub_folders_keep_their_own_outputs(recognizer, tmp_path):
    folder = tmp_path / "in"
    for sub in ("a", "b"):
        (folder / sub).mkdir(parents=True)
        write_video(folder / sub / "clip.avi", frames=2)
    out = tmp_path / "out"
    results = run_predict(cfg([folder], save_annotated=str(out)), progress=False, recognizer=recognizer)
    assert [r.error for r in results] == [None, None]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.*")) == [
        "a/clip.csv", "a/clip.mp4", "b/clip.csv", "b/clip.mp4"]


def test_video_sources_that_cannot_be_opened_are_one_line_errors(recognizer, tmp_path):
    import os

    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    results = run_predict(cfg([fifo, "99999999999"], save_annotated=str(tmp_path / "out")), progress=False,
                          recognizer=recognizer)
    assert "FIFO" in results[0].error and "\n" not in results[0].error  # refused, never opened (no hang)
    assert "no such camera" in results[1].error


def test_annotated_copies_never_replace_an_input_photo_even_with_exist_ok(recognizer, tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    me = folder / "me.jpg"
    me.write_bytes(require(PHOTOS / PHOTO_NAMES[0]).read_bytes())
    before = me.read_bytes()
    with pytest.raises(ValueError, match="is an input of this command"):
        predict_images(cfg([me], save_annotated=str(folder), exist_ok=True), progress=False, recognizer=recognizer)
    assert me.read_bytes() == before


def test_annotated_copies_replace_only_files_emorec_wrote(recognizer, tmp_path):
    out = tmp_path / "out"
    config = cfg([require(PHOTOS / PHOTO_NAMES[0])], save_annotated=str(out), exist_ok=True)
    predict_images(config, progress=False, recognizer=recognizer)
    predict_images(config, progress=False, recognizer=recognizer)  # its own output: replaced on request
    mine = out / PHOTO_NAMES[0]
    mine.write_bytes((PHOTOS / PHOTO_NAMES[1]).read_bytes())  # a photo of the user's with that name
    with pytest.raises(FileExistsError, match="not a file emorec wrote"):
        predict_images(config, progress=False, recognizer=recognizer)
    assert mine.read_bytes() == (PHOTOS / PHOTO_NAMES[1]).read_bytes()


def test_an_annotated_video_never_replaces_the_input_video(seven_class_model, tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    video = write_video(folder / "party.mp4", frames=2)
    before = video.read_bytes()
    [result] = run_predict(cfg([video], seven_class_model, save_annotated=str(folder), exist_ok=True), progress=False)
    assert "is an input of this command" in result.error
    assert video.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["party.mp4"]


def test_planned_outputs_list_every_file_a_run_writes(seven_class_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_video(folder / "clip.avi", frames=2)
    (folder / "a.jpg").write_bytes(require(PHOTOS / PHOTO_NAMES[2]).read_bytes())
    config = cfg([folder], seven_class_model, save_annotated=str(tmp_path / "out"))
    outputs, inputs = predict.planned_outputs(config)
    run_predict(config, progress=False)
    assert sorted(outputs) == sorted((tmp_path / "out").iterdir())
    assert sorted(inputs) == sorted(folder.iterdir())
