"""Benchmark emorec against the `fer` package on the labelled photos in shared/data/photos.

    .venv/bin/python benchmarks/photos.py [--model M.onnx] [--tools emorec fer fer-mtcnn]

For each tool: photos in which a face was found, accuracy against labels.csv
(top emotion of the largest face; a photo without a face counts as wrong),
median seconds per photo (reading included, model load excluded, after one
warm-up photo) and peak memory (max RSS of the process that ran the tool).

Every tool runs in its own subprocess that prints JSON, so memory is measured
per tool and the two stacks never share a Python. `fer` (latest from PyPI) is
installed into its own venv, benchmarks/.venv-fer, created on first use: it
pulls TensorFlow, torch and facenet-pytorch (several GB), but its weights ship
in the wheels, so it runs offline. Tools:

* emorec: `emorec.predict.Recognizer` with the bundled model (or --model).
* fer: `FER()`, its default: OpenCV Haar cascade + quantized TFLite model.
* fer-mtcnn: `FER(mtcnn=True)`: facenet-pytorch's MTCNN (weights in its wheel).

Results go to benchmarks/results/photos.json and a table is printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_PHOTOS = REPO.parent / "shared" / "data" / "photos"
FER_VENV = HERE / ".venv-fer"
RESULTS = HERE / "results" / "photos.json"
CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
TOOLS = ("emorec", "fer", "fer-mtcnn")


# ----------------------------------------------------------------------------
# Workers: run inside the tool's own Python, print one JSON object
# ----------------------------------------------------------------------------


def emorec_predictor(args):
    """(predict(path) -> [(area, emotion)], description) for emorec."""
    sys.path.insert(0, str(REPO / "src"))
    from emorec.predict import Recognizer

    rec = Recognizer(args.model, detector=args.detector)

    def predict(path: Path) -> list[tuple[float, str]]:
        return [(_area(f.box), f.emotion) for f in rec.predict(path)]

    name = args.model or "bundled"
    return predict, f"emorec {name}, detector {type(rec.detector).__name__}"


def fer_predictor(args, mtcnn: bool):
    """(predict(path) -> [(area, emotion)], description) for the fer package."""
    import importlib.metadata

    from fer.fer import FER  # fer 25.10's __init__ no longer exports FER

    detector = FER(mtcnn=mtcnn)

    def predict(path: Path) -> list[tuple[float, str]]:
        faces = detector.detect_emotions(str(path))
        return [(_area(f["box"]), max(f["emotions"], key=f["emotions"].get)) for f in faces]

    version = importlib.metadata.version("fer")
    return predict, f"fer {version}, {'MTCNN' if mtcnn else 'Haar cascade'} + {'TFLite' if detector.use_tflite else 'Keras'}"


def _area(box) -> float:
    return float(box[2]) * float(box[3]) if box is not None else float("inf")


def run_worker(args) -> None:
    """Load the tool, warm it up, classify every labelled photo and print JSON."""
    labels = read_labels(Path(args.photos))
    start = time.perf_counter()
    if args.worker == "emorec":
        predict, description = emorec_predictor(args)
    else:
        predict, description = fer_predictor(args, mtcnn=args.worker == "fer-mtcnn")
    load_s = time.perf_counter() - start
    paths = [Path(args.photos) / name for name in labels]
    predict(paths[0])  # warm-up: first-call graph tracing, lazy allocations
    predictions, seconds = {}, []
    for path in paths:
        t0 = time.perf_counter()
        faces = predict(path)
        seconds.append(time.perf_counter() - t0)
        largest = max(faces, key=lambda f: f[0])[1] if faces else None
        predictions[path.name] = {"faces": len(faces), "emotion": largest}
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps(summarize(args.worker, description, labels, predictions, seconds, load_s, peak_kb / 1024)))


def summarize(tool, description, labels, predictions, seconds, load_s, peak_mb) -> dict:
    """The numbers reported for one tool."""
    correct = sum(predictions[name]["emotion"] == emotion for name, emotion in labels.items())
    per_class = {
        c: sum(predictions[n]["emotion"] == c for n, e in labels.items() if e == c) for c in sorted(set(labels.values()))
    }
    return {
        "tool": tool,
        "description": description,
        "photos": len(labels),
        "face_found": sum(p["faces"] > 0 for p in predictions.values()),
        "correct": correct,
        "accuracy": correct / len(labels),
        "correct_per_class": per_class,
        "median_s_per_photo": statistics.median(seconds),
        "mean_s_per_photo": statistics.fmean(seconds),
        "load_s": load_s,
        "peak_rss_mb": peak_mb,
        "predictions": predictions,
    }


def read_labels(photos: Path) -> dict[str, str]:
    """{image file name: emotion} from labels.csv, checked against our class names."""
    with open(photos / "labels.csv", newline="") as handle:
        labels = {row["image"]: row["emotion"] for row in csv.DictReader(handle)}
    unknown = set(labels.values()) - set(CLASSES)
    if unknown:
        raise SystemExit(f"labels.csv has classes emorec does not know: {sorted(unknown)}")
    return labels


# ----------------------------------------------------------------------------
# Parent: set up fer, run each tool in a subprocess, write and print results
# ----------------------------------------------------------------------------


def ensure_fer_venv(venv: Path) -> Path:
    """The venv's python, creating the venv and installing fer from PyPI if needed."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} and installing fer (TensorFlow + torch: several GB, takes minutes)", file=sys.stderr)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        (venv / ".gitignore").write_text("*\n")  # keep the venv out of git
    check = subprocess.run([str(python), "-c", "import fer.fer"], capture_output=True)
    if check.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "fer"], check=True)
    return python


def run_tool(tool: str, args) -> dict:
    """Run one tool's worker in a subprocess and parse its JSON (or the error)."""
    if tool == "emorec":
        python = Path(sys.executable)
    else:
        python = ensure_fer_venv(Path(args.fer_venv))
    command = [str(python), str(Path(__file__).resolve()), "--worker", tool, "--photos", str(args.photos)]
    if args.model:
        command += ["--model", str(args.model)]
    command += ["--detector", args.detector]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"tool": tool, "error": " | ".join(tail) or f"exit code {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    """A printable comparison table."""
    head = f"{'tool':<10} {'faces':>7} {'accuracy':>13} {'median s':>9} {'peak MB':>8} {'load s':>7}  description"
    lines = [head, "-" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['tool']:<10} error: {r['error']}")
            continue
        faces = f"{r['face_found']}/{r['photos']}"
        accuracy = f"{r['correct']}/{r['photos']} {r['accuracy']:.1%}"
        lines.append(
            f"{r['tool']:<10} {faces:>7} {accuracy:>13} {r['median_s_per_photo']:>9.4f} "
            f"{r['peak_rss_mb']:>8.0f} {r['load_s']:>7.1f}  {r['description']}"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="emorec .onnx or .keras model (default: the bundled model)")
    parser.add_argument("--detector", default="auto", help="emorec face detector (default: auto)")
    parser.add_argument("--photos", default=str(DEFAULT_PHOTOS), help="folder with the photos and labels.csv")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--fer-venv", default=str(FER_VENV), help="venv for the fer package (created if missing)")
    parser.add_argument("--out", default=str(RESULTS), help="JSON file for the results")
    parser.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    """Run the benchmark (or, with --worker, one tool)."""
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    if not (Path(args.photos) / "labels.csv").is_file():
        raise SystemExit(f"{args.photos}: no labels.csv (shared data missing?)")
    results = []
    for tool in args.tools:
        if tool == "emorec" and not args.model and not _bundled_model().is_file():
            results.append({"tool": tool, "error": f"no bundled model at {_bundled_model()}; pass --model PATH"})
            continue
        print(f"running {tool} ...", file=sys.stderr)
        results.append(run_tool(tool, args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"photos": str(args.photos), "results": results}, indent=2) + "\n")
    print(table(results))
    print(f"\nwritten {out}")


def _bundled_model() -> Path:
    return REPO / "src" / "emorec" / "models" / "emorec-ferplus.onnx"  # the default bundled model


if __name__ == "__main__":
    main()
