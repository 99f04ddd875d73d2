"""The Ray engine (emorec.distributed) on a local Ray with 2 CPUs, row for row against the local engine.

One Ray is started for the module (a start costs seconds); every test runs real photos, generated
bad files and a generated video through both engines and compares what they write.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import PHOTOS, require, write_video
from videos import write_scene
from emorec import cli
from emorec.config import PredictConfig
from emorec.output import format_results, results_to_json, write_csv
from emorec.predict import run_predict

FRAMES_PER_TASK = 7  # a 30-frame clip becomes 5 ranges, decoded by different tasks


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs for the whole module; emorec's commands use it instead of starting their own."""
    from emorec.distributed import ray_session

    with ray_session(cpus=2) as cpus:
        yield cpus


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """A folder of 6 photos, a truncated JPEG, a text file named .jpg, and a 30-frame video of a moving face."""
    folder = tmp_path_factory.mktemp("media") / "in"
    folder.mkdir()
    for path in sorted(require(PHOTOS).glob("*.jpg"))[:6]:
        shutil.copy(path, folder / path.name)
    good = sorted(folder.glob("*.jpg"))[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "notes.jpg").write_text("not an image\n")
    write_video(folder / "clip.mp4", frames=30)
    return folder


def _both_engines(tmp_path: Path, **options) -> tuple[list, list, Path, Path]:
    """Results of the local and the Ray engine for the same config, each run in its own folder (video CSVs)."""
    from emorec.distributed import run_predict_ray

    outcomes = []
    for engine in ("local", "ray"):
        folder = tmp_path / engine
        folder.mkdir(exist_ok=True)
        os.chdir(folder)
        cfg = PredictConfig(**options)
        if engine == "local":
            outcomes.append(run_predict(cfg, progress=False))
        else:
            outcomes.append(run_predict_ray(PredictConfig(**options, actors=2), progress=False,
                                            frames_per_task=FRAMES_PER_TASK))
    return outcomes[0], outcomes[1], tmp_path / "local", tmp_path / "ray"


def test_ray_engine_writes_the_local_engines_rows(local_ray, media, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sources = [str(media), str(media / "missing.jpg"), str(media / "gone.mp4")]
    local, ray, local_dir, ray_dir = _both_engines(tmp_path, sources=sources)

    assert len(ray) == len(local) == 11  # 6 photos, 2 bad files, the clip, a missing photo and video
    assert results_to_json(ray).replace(str(ray_dir), str(local_dir)) == results_to_json(local)
    assert format_results(ray).replace(str(ray_dir), str(local_dir)) == format_results(local)
    write_csv(local, local_dir / "faces.csv")
    write_csv(ray, ray_dir / "faces.csv")
    assert (ray_dir / "faces.csv").read_text() == (local_dir / "faces.csv").read_text()
    assert (ray_dir / "clip.csv").read_text() == (local_dir / "clip.csv").read_text()
    errors = {Path(r.source).name: r.error for r in ray if r.error}
    assert set(errors) == {"truncated.jpg", "notes.jpg", "missing.jpg", "gone.mp4"}
    clip = next(result.video for result in ray if result.video is not None)
    assert clip.frames == 30 and clip.classified_frames == 30


def test_strided_smoothed_video_matches_across_frame_ranges(local_ray, media, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local, ray, local_dir, ray_dir = _both_engines(tmp_path, sources=[str(media / "clip.mp4")], stride=4, smooth=0.6)

    assert (ray_dir / "clip.csv").read_text() == (local_dir / "clip.csv").read_text()
    assert ray[0].video.classified_frames == 8 and ray[0].video.frames == local[0].video.frames == 30


def test_people_keep_the_same_tracks_when_a_video_is_cut_into_frame_ranges(local_ray, tmp_path, monkeypatch):
    require(PHOTOS)
    monkeypatch.chdir(tmp_path)
    video = tmp_path / "crossing.mp4"
    write_scene("crossing", video, fps=12.0)  # two people swap sides; 36 frames in ranges of 7
    local, ray, local_dir, ray_dir = _both_engines(tmp_path, sources=[str(video)], smooth=0.7)

    assert (ray_dir / "crossing.csv").read_text() == (local_dir / "crossing.csv").read_text()
    assert [track.to_dict() for track in ray[0].video.tracks] == [track.to_dict() for track in local[0].video.tracks]
    assert [track.id for track in local[0].video.tracks] == [1, 2]


def test_an_existing_video_csv_is_refused_as_on_the_local_engine(local_ray, media, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for engine in ("local", "ray"):
        (tmp_path / engine).mkdir()
        (tmp_path / engine / "clip.csv").write_text("kept\n")
    photo = str(sorted(media.glob("*.jpg"))[0])
    local, ray, local_dir, ray_dir = _both_engines(tmp_path, sources=[str(media / "clip.mp4"), photo])

    assert results_to_json(ray).replace(str(ray_dir), str(local_dir)) == results_to_json(local)
    assert "already exists" in ray[1].error and (ray_dir / "clip.csv").read_text() == "kept\n"


def test_predict_dataset_composes_with_a_users_dataset(local_ray, media):
    import ray.data

    from emorec.distributed import predict_dataset

    photos = sorted(str(path) for path in media.glob("*.jpg"))
    rows = predict_dataset(ray.data.from_items([{"path": path} for path in photos])).take_all()

    local = run_predict(PredictConfig(sources=photos), progress=False)
    faces = {(r.source, number): face for r in local for number, face in enumerate(r.faces, 1)}
    by_face = {(row["source"], row["face"]): row for row in rows if row["face"] is not None}
    assert by_face.keys() == faces.keys()
    for key, face in faces.items():
        assert by_face[key]["emotion"] == face.emotion
        assert by_face[key]["happy"] == pytest.approx(face.probabilities["happy"], abs=1e-6)
    assert {Path(row["source"]).name for row in rows if row["error"]} == {"truncated.jpg", "notes.jpg"}


def test_cli_writes_parquet_and_csv_like_the_local_engine(local_ray, media, tmp_path, monkeypatch, capsys):
    import pyarrow.parquet as pq

    from emorec.distributed import rows_of

    monkeypatch.chdir(tmp_path)
    photos = [str(path) for path in sorted(media.glob("*.jpg"))]
    code = cli.main(["predict", *photos, "--engine", "ray", "--actors", "2", "--parquet", "out", "--csv", "ray.csv"])
    assert code == 1  # the two bad files, reported, not fatal
    assert cli.main(["predict", *photos, "--csv", "local.csv"]) == 1
    assert Path("ray.csv").read_text() == Path("local.csv").read_text()

    local = run_predict(PredictConfig(sources=photos), progress=False)
    classes = list(local[0].faces[0].probabilities)
    expected = [row for result in local for row in rows_of(result, classes)]
    assert pq.read_table("out/results.parquet").to_pylist() == expected
    assert cli.main(["predict", *photos, "--engine", "ray", "--parquet", "out"]) == 1  # never overwritten unasked
    assert "results.parquet: already exists" in capsys.readouterr().err


def test_ray_only_options_are_one_line_errors(tmp_path, capsys):
    photo = str(require(PHOTOS) / "Arnaud_Lagardere_0001.jpg")
    assert cli.main(["predict", photo, "--parquet", str(tmp_path / "out")]) == 1
    assert cli.main(["predict", photo, "--engine", "ray", "--save-annotated", str(tmp_path / "drawn")]) == 1
    assert cli.main(["predict", "--source", "0", "--engine", "ray"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["emorec predict: error: --parquet goes with --engine ray",
                     "emorec predict: error: --save-annotated runs on the local engine only (leave out --engine ray)",
                     "emorec predict: error: 0: a webcam runs on the local engine only (leave out --engine ray)"]
