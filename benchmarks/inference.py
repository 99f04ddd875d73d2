"""Inference speed and footprint: emorec on ONNX Runtime (float32 and int8), on Keras/TensorFlow, and `fer`, in one run.

    .venv/bin/python benchmarks/inference.py [--repeats 5] [--skip-venv-size] [--tools onnx int8 compact compact-int8 keras fer]

Figures (each tool in its own subprocess, so memory is its own):
* cold start: wall seconds of `emorec predict ONE.jpg` (median of --repeats),
  and that command's peak RSS; for fer, a script that imports fer, builds
  `FER()` and classifies the same photo;
* base venv size: a fresh venv with `pip install .` (no extras), in MB;
* per photo: median ms on the 56 labelled photos one at a time (after a
  warm-up), with faces found and correct top emotions;
* folder: photos/s over the 56 photos repeated to 1,008 files (emorec:
  `run_predict` on the folder; fer: `detect_emotions` per file), model load
  excluded;
* video: frames/s on a generated 1280x720 clip (emorec: `predict_video`,
  every frame; fer: `detect_emotions` per frame);
* classifier only: images/s at batch 1 and 64 (emorec runtimes);
* agreement: ONNX vs Keras on FER2013 val, same top emotion and the largest
  probability difference.

The bundled models ship as ONNX only; the Keras tool runs the default model
rebuilt in Keras (emorec.model.load_model), saved once as a `.keras` file in
the temporary folder so that its cold start loads a file as users' do.

`fer` runs from benchmarks/.venv-fer (created by benchmarks/photos.py on
first use). Results go to benchmarks/results/inference.json; a table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data"
PHOTOS = DATA / "photos"
RESULTS = HERE / "results" / "inference.json"
KERAS_MODEL = Path(tempfile.gettempdir()) / "emorec-benchmark-bundled.keras"  # see ensure_keras_model
ONE_PHOTO = PHOTOS / "Ellen_DeGeneres_0002.jpg"
TOOLS = ("onnx", "int8", "compact", "compact-int8", "keras", "fer")
# emorec's --model per tool: the default model (float32, int8), the compact one (float32, int8), the default in Keras
MODELS = {"onnx": "bundled", "int8": "bundled-int8", "compact": "compact", "compact-int8": "compact-int8",
          "keras": str(KERAS_MODEL)}
FOLDER_COPIES = 18  # 56 photos x 18 = 1,008 files
VIDEO_FRAMES = 150


# ----------------------------------------------------------------------------
# Workers: run inside the tool's own Python, print one JSON object
# ----------------------------------------------------------------------------


def worker(tool: str, task: str, path: str) -> dict:
    """Load the tool once, then time one task on path (a folder or a video)."""
    started = time.perf_counter()
    predict_path, predict_folder, predict_frames = _load(tool)
    load_s = time.perf_counter() - started
    if task == "folder":
        files = sorted(Path(path).iterdir())
        predict_path(files[0])  # warm-up
        started = time.perf_counter()
        found = predict_folder(files)
        seconds = time.perf_counter() - started
        return {"load_s": load_s, "files": len(files), "with_face": found, "photos_per_s": len(files) / seconds}
    started = time.perf_counter()
    frames = predict_frames(path)
    return {"load_s": load_s, "frames": frames, "frames_per_s": frames / (time.perf_counter() - started)}


def _load(tool: str):
    """(predict one path, predict a list of paths -> photos with a face, predict a video -> frames) for a tool."""
    if tool == "fer":
        import cv2
        from fer.fer import FER

        detector = FER()

        def frames_of(path):
            capture, count = cv2.VideoCapture(path), 0
            while True:
                ok, frame = capture.read()
                if not ok:
                    return count
                detector.detect_emotions(frame)
                count += 1

        return (lambda p: detector.detect_emotions(str(p)),
                lambda files: sum(bool(detector.detect_emotions(str(p))) for p in files), frames_of)
    sys.path.insert(0, str(REPO / "src"))
    from emorec.config import PredictConfig
    from emorec.predict import predict_images
    from emorec.recognizer import Recognizer
    from emorec.video import predict_video

    from emorec.pipeline import model_threads

    recognizer = Recognizer(MODELS[tool], threads=model_threads())  # as `emorec predict` builds it for folders and videos

    def folder(files):
        results = predict_images(PredictConfig(sources=[str(files[0].parent)]), progress=False, recognizer=recognizer)
        return sum(bool(r.faces) for r in results)

    def frames_of(path):
        with tempfile.TemporaryDirectory() as out:
            summary = predict_video(path, PredictConfig(sources=[path]), Path(out) / "v.csv", recognizer=recognizer,
                                    progress=False)
        return summary.frames

    return recognizer.predict, folder, frames_of


def classifier_worker() -> dict:
    """Images/s of the two emorec runtimes at batch 1 and 64, and their agreement on FER2013 val."""
    sys.path.insert(0, str(REPO / "src"))
    import numpy as np

    from emorec.evaluate import load_eval_data
    from emorec.runtime import load_runtime, probabilities

    runtimes = {tool: load_runtime(model) for tool, model in MODELS.items()}
    info = runtimes["onnx"].info
    images, labels = load_eval_data(DATA / "fer2013" / "val", info.class_names, 48, 1, progress=False)
    out = {}
    for name, runtime in runtimes.items():
        for batch in (1, 64):
            chunk = images[:batch]
            probabilities(runtime, chunk)
            times = []
            for _ in range(30 if batch == 1 else 8):
                started = time.perf_counter()
                probabilities(runtime, chunk)
                times.append(time.perf_counter() - started)
            out[f"{name}_images_per_s_batch{batch}"] = batch / statistics.median(times)
    probs = {tool: probabilities(runtime, images) for tool, runtime in runtimes.items()}
    out["agreement_images"] = len(images)
    out["agreement_same_top"] = float((probs["onnx"].argmax(1) == probs["keras"].argmax(1)).mean())
    out["agreement_max_difference"] = float(np.abs(probs["onnx"] - probs["keras"]).max())
    out["int8_same_top_as_float"] = float((probs["int8"].argmax(1) == probs["onnx"].argmax(1)).mean())
    out["val_accuracy"] = {tool: float((p.argmax(1) == labels).mean()) for tool, p in probs.items()}
    return out


# ----------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------


def ensure_keras_model() -> None:
    """Save the default bundled model, rebuilt in Keras, as KERAS_MODEL (once)."""
    if KERAS_MODEL.is_file():
        return
    sys.path.insert(0, str(REPO / "src"))
    from emorec.model import load_model, save_model

    save_model(*load_model("bundled"), KERAS_MODEL)


def fer_python() -> Path:
    """benchmarks/.venv-fer's python (made by benchmarks/photos.py)."""
    sys.path.insert(0, str(HERE))
    from photos import FER_VENV, ensure_fer_venv

    return ensure_fer_venv(FER_VENV)


def cold_start(tool: str, repeats: int, python: Path) -> dict:
    """Median wall seconds and peak RSS of one photo from a cold process."""
    emorec = [sys.executable, "-m", "emorec", "predict"]
    commands = {
        **{tool: emorec + ["--model", model, str(ONE_PHOTO)] for tool, model in MODELS.items()},
        "fer": [str(python), "-c", "import cv2\nfrom fer.fer import FER\n"
                f"print(FER().detect_emotions(cv2.imread({str(ONE_PHOTO)!r})))"],
    }
    walls, peaks = [], []
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
    for _ in range(repeats):
        wall, peak, done = _timed_with_rusage(commands[tool], env)
        if done.returncode != 0:
            return {"error": done.stderr.strip().splitlines()[-1:]}
        walls.append(wall)
        peaks.append(peak)
    return {"cold_start_s": statistics.median(walls), "peak_rss_mb": max(peaks)}


def _timed_with_rusage(command: list[str], env: dict) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run command as a child of a fresh helper process that reports the child's wall time and peak RSS."""
    helper = (
        "import json, os, resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "done = subprocess.run(json.loads(sys.argv[1]), capture_output=True, text=True)\n"
        "wall = time.perf_counter() - t\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'wall': wall, 'peak': peak, 'code': done.returncode, 'err': done.stderr[-500:]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", helper, json.dumps(command)], capture_output=True, text=True, env=env)
    report = json.loads(out.stdout)
    return report["wall"], report["peak"], subprocess.CompletedProcess(command, report["code"], "", report["err"])


def base_venv_mb() -> dict:
    """Size of a fresh venv with `pip install .` (no extras), and whether it predicts without TensorFlow."""
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(REPO)], check=True, capture_output=True)
        size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6
        check = ("import sys; from emorec.cli import main; code = main(['predict', %r]);"
                 "print(sorted({m.split('.')[0] for m in sys.modules} & {'keras', 'tensorflow'}))" % str(ONE_PHOTO))
        done = subprocess.run([str(venv / "bin" / "python"), "-c", check], capture_output=True, text=True)
        return {"base_venv_mb": size, "base_venv_predicts": done.returncode == 0,
                "base_venv_heavy_modules": done.stdout.strip().splitlines()[-1:]}


def per_photo(tool: str) -> dict:
    """benchmarks/photos.py's single-photo figures for one tool."""
    command = [sys.executable, str(HERE / "photos.py"), "--tools", "fer" if tool == "fer" else "emorec",
               "--out", str(Path(tempfile.gettempdir()) / f"emorec-photos-{tool}.json")]
    if tool != "fer":
        command += ["--model", MODELS[tool]]
    subprocess.run(command, capture_output=True, text=True)
    [row] = json.loads(Path(command[command.index("--out") + 1]).read_text())["results"]
    if "error" in row:
        return {"error": row["error"]}
    return {"ms_per_photo": row["median_s_per_photo"] * 1000, "faces_found": row["face_found"],
            "correct": row["correct"], "photos": row["photos"]}


def run_worker(tool: str, task: str, path: Path, python: Path) -> dict:
    """One worker in the tool's Python; its JSON."""
    python = python if tool == "fer" else Path(sys.executable)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([str(python), __file__, "--worker", tool, task, str(path)], capture_output=True, text=True,
                          env=env)
    if done.returncode != 0:
        return {"error": " | ".join(done.stderr.strip().splitlines()[-2:])}
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_folder(root: Path) -> Path:
    """The labelled photos, each copied FOLDER_COPIES times (as links), in one folder."""
    folder = root / "photos"
    folder.mkdir()
    for copy in range(FOLDER_COPIES):
        for photo in sorted(PHOTOS.glob("*.jpg")):
            (folder / f"{copy:02d}_{photo.name}").symlink_to(photo)
    return folder


def make_video(root: Path) -> Path:
    """A 1280x720 clip: the photos, one face each, drifting across a grey background."""
    import cv2
    import numpy as np

    photos = [cv2.imread(str(p)) for p in sorted(PHOTOS.glob("*.jpg")) if min(cv2.imread(str(p)).shape[:2]) >= 300]
    path = root / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (1280, 720))
    for index in range(VIDEO_FRAMES):
        frame = np.full((720, 1280, 3), 110, np.uint8)
        face = cv2.resize(photos[(index // 25) % len(photos)], (300, 300))
        x = 200 + (index * 4) % 700
        frame[210:510, x : x + 300] = face
        writer.write(frame)
    writer.release()
    return path


def table(results: dict) -> str:
    """The figures side by side, one column per tool."""
    rows = [("cold start of one photo (s)", "cold_start_s", "{:.2f}"), ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
            ("ms per photo (56 photos)", "ms_per_photo", "{:.1f}"), ("faces found", "faces_found", "{}/56"),
            ("correct", "correct", "{}/56"), ("folder photos/s (1,008 files)", "photos_per_s", "{:.1f}"),
            ("video frames/s (1280x720)", "frames_per_s", "{:.1f}"),
            ("classifier img/s, batch 1", "images_per_s_batch1", "{:.0f}"),
            ("classifier img/s, batch 64", "images_per_s_batch64", "{:.0f}")]
    tools = [t for t in TOOLS if t in results["tools"]]
    names = {"onnx": "emorec ONNX", "int8": "emorec ONNX int8", "compact": "emorec compact", "compact-int8": "emorec compact int8",
             "keras": "emorec Keras", "fer": "fer"}
    lines = [f"| figure | {' | '.join(names[t] for t in tools)} |", "|---" * (len(tools) + 1) + "|"]
    for label, key, fmt in rows:
        cells = [results["tools"][t].get(key) for t in tools]
        if all(c is None for c in cells):
            continue
        lines.append(f"| {label} | " + " | ".join("-" if c is None else fmt.format(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    """Run every measurement (or, with --worker, one task of one tool)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="cold starts per tool (median reported)")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--skip-venv-size", action="store_true", help="do not build a fresh base venv")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--worker", nargs=3, metavar=("TOOL", "TASK", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--classifier-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    if args.classifier_worker:
        print(json.dumps(classifier_worker()))
        return
    python = fer_python() if "fer" in args.tools else Path(sys.executable)
    if "keras" in args.tools:
        ensure_keras_model()
    results: dict = {"machine": f"{os.cpu_count()} CPU cores", "tools": {tool: {} for tool in args.tools}}
    with tempfile.TemporaryDirectory() as tmp:
        folder, video = make_folder(Path(tmp)), make_video(Path(tmp))
        for tool in args.tools:
            print(f"measuring {tool} ...", file=sys.stderr)
            figures = results["tools"][tool]
            figures.update(cold_start(tool, args.repeats, python))
            figures.update(per_photo(tool))
            figures.update(run_worker(tool, "folder", folder, python))
            figures.update(run_worker(tool, "video", video, python))
    if {"onnx", "int8", "keras"} <= set(args.tools):
        done = subprocess.run([sys.executable, __file__, "--classifier-worker"], capture_output=True, text=True)
        classifier = json.loads(done.stdout.strip().splitlines()[-1])
        for tool in [tool for tool in MODELS if tool in results["tools"]]:
            for batch in (1, 64):
                results["tools"][tool][f"images_per_s_batch{batch}"] = classifier.pop(f"{tool}_images_per_s_batch{batch}")
        results["agreement"] = classifier
    if not args.skip_venv_size:
        results["base_install"] = base_venv_mb()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    if "agreement" in results:
        a = results["agreement"]
        print(f"\nONNX vs Keras on {a['agreement_images']} FER2013 val images: same top emotion "
              f"{a['agreement_same_top']:.2%}, largest probability difference {a['agreement_max_difference']:.1e}; "
              f"int8 vs float32 same top emotion {a['int8_same_top_as_float']:.2%}; val accuracy "
              + ", ".join(f"{tool} {acc:.2%}" for tool, acc in a["val_accuracy"].items()))
    if "base_install" in results:
        b = results["base_install"]
        print(f"base venv (pip install ., no extras): {b['base_venv_mb']:.0f} MB; predicts: {b['base_venv_predicts']}; "
              f"TensorFlow/Keras imported: {b['base_venv_heavy_modules']}")
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
