"""The one source loader: folders walked alike for every command, videos and webcams told apart."""

from __future__ import annotations

from pathlib import Path

from emorec.sources import expand_sources, is_video, iter_sources, plan_sources, webcam_index


def test_a_folder_gives_its_images_and_videos_in_order_hidden_entries_and_other_files_left_out(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    for name in ("a.jpg", "corrupt.png", "empty.jpg", "sub/b.jpg", "sub/clip.MP4", ".hidden/c.jpg", ".d.jpg"):
        (folder / name).write_bytes(b"")
    (folder / "notes.txt").write_text("ignored")
    assert [p.name for p in iter_sources([folder])] == ["a.jpg", "corrupt.png", "empty.jpg", "b.jpg", "clip.MP4"]
    pairs = expand_sources([folder, tmp_path / "missing.jpg"])
    assert pairs[3] == (folder / "sub" / "b.jpg", Path("sub/b.jpg"))  # output names keep the sub-folders
    assert pairs[-1] == (tmp_path / "missing.jpg", Path("missing.jpg"))  # kept, to be reported as an error


def test_plan_splits_photos_videos_webcams_and_empty_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "media" / "deep").mkdir(parents=True)
    (tmp_path / "media" / "deep" / "talk.mov").write_bytes(b"")
    (tmp_path / "media" / "face.png").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    errors, images, videos = plan_sources(["media", "empty", "party.mp4", "photo.jpg", "0"])
    assert images == ["media", "empty", "photo.jpg"]
    assert videos == [("party.mp4", None), ("0", None), (str(Path("media/deep/talk.mov")), Path("deep/talk.mov"))]
    assert [e.error for e in errors] == ["empty: no images or videos in this folder"]
    assert is_video("x.WEBM") and not is_video("x.jpg")


def test_webcam_index(tmp_path, monkeypatch):
    assert webcam_index("0") == 0 and webcam_index(2) == 2 and webcam_index("clip.mp4") is None
    monkeypatch.chdir(tmp_path)
    Path("3").write_text("a file named like an index")
    assert webcam_index("3") is None
