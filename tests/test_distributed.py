"""The Ray engine (emorec.distributed) on a local Ray with 2 CPUs, row for row against the local engine.

One Ray is started for the module (a start costs seconds); every test runs real photos, generated
bad files and a generated video through both engines and compares what they write.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
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


@contextmanager
def fake_port(first_bytes: bytes):
    """A loopback port that accepts connections, sends first_bytes to each, then says nothing more."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop, held = threading.Event(), []

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except socket.timeout:
                continue
            connection.sendall(first_bytes)
            held.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=10)
        server.close()
        for connection in held:
            connection.close()


def test_more_cpus_or_actors_than_the_machine_has_is_one_line(capsys):
    photo = str(require(PHOTOS) / "Arnaud_Lagardere_0001.jpg")
    assert cli.main(["predict", photo, "--engine", "ray", "--cpus", "100000"]) == 1
    assert cli.main(["predict", photo, "--engine", "ray", "--actors", "100000"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"emorec predict: error: --cpus 100000 is more than the {os.cpu_count()} CPUs of this machine",
        f"emorec predict: error: --actors 100000 is more than a local Ray on this machine's {os.cpu_count()} CPUs "
        f"can run (at most {os.cpu_count() * 2})"]


@pytest.mark.parametrize("first_bytes", [b"", b"HTTP/1.1 400 Bad Request\r\n\r\n"])
def test_an_address_that_is_not_ray_is_a_one_line_error(first_bytes, capsys):
    photo = str(require(PHOTOS) / "Arnaud_Lagardere_0001.jpg")
    with fake_port(first_bytes) as address:
        started = time.monotonic()
        assert cli.main(["predict", photo, "--engine", "ray", "--address", address]) == 1
        assert time.monotonic() - started < 60
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"emorec predict: error: cannot connect to Ray at {address}: ")


def test_connecting_to_ray_has_a_deadline():
    settings_frame = b"\0\0\0\x04\0\0\0\0\0"  # answers like a gRPC server, then nothing: Ray would wait for minutes
    code = ("import sys\nfrom emorec.distributed import EngineError, ray_session\ntry:\n"
            "    with ray_session(sys.argv[1], deadline=3):\n        pass\nexcept EngineError as error:\n    print(error)\n")
    with fake_port(settings_frame) as address:  # in its own process: this module's tests keep a local Ray running
        done = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, timeout=300)
    assert done.stdout == f"cannot connect to Ray at {address}: no answer within 3 s\n", done.stderr[-2000:]


def ray_processes(temp_dir: str) -> list[int]:
    """Processes whose command line names temp_dir (Ray's session folders live there)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and temp_dir.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:  # the process ended while the list was read
            continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_no_ray_process_outlives_a_terminated_command(tmp_path):
    video = write_video(tmp_path / "long.mp4", frames=600)
    temp_dir = tempfile.mkdtemp(prefix="emorec-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    command = [sys.executable, "-m", "emorec", "predict", str(video), "--engine", "ray", "--cpus", "1"]
    process = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, "RAY_TMPDIR": temp_dir},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ray_processes(temp_dir) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # until the command's Ray is running
        assert ray_processes(temp_dir), "the command's Ray did not start"
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=120)
        deadline = time.monotonic() + 60
        while ray_processes(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)  # Ray's workers end shortly after their raylet
        assert ray_processes(temp_dir) == []
    finally:
        process.kill()
        for pid in ray_processes(temp_dir):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_the_address_probe_accepts_a_real_ray(local_ray):
    import ray

    from emorec.distributed import _probe

    _probe(ray.get_runtime_context().gcs_address)  # raises unless it answers like Ray
