"""Accuracy and CPU speed of saved models on FER2013 val (PublicTest).

    .venv/bin/python benchmarks/accuracy.py MODEL.keras [MODEL.keras ...] [--data DIR]

For each model: val accuracy without and with test-time augmentation
(horizontal flip; and 12-view "multi"), macro-F1, per-class recall, CPU inference images/second at
batch 1 and batch 64 (after a warm-up; median of repeats), parameters, FLOPs
per image and file size. Writes benchmarks/results/accuracy.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fer2013" / "val"
RESULTS = REPO / "benchmarks" / "results" / "accuracy.json"


def images_per_second(model, images, batch: int, repeats: int) -> float:
    """Median throughput of model(...) calls on `batch` images at a time."""
    from emorec.model import predict_probabilities

    chunk = images[:batch]
    predict_probabilities(model, chunk)  # warm-up (tracing)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predict_probabilities(model, chunk)
        times.append(time.perf_counter() - started)
    return batch / statistics.median(times)


def measure(model_path: Path, data: Path) -> dict:
    """All figures for one model."""
    from emorec.evaluate import evaluate_model, load_eval_data
    from emorec.model import count_flops, load_model

    model, info = load_model(model_path)
    plain = evaluate_model(model, info, data, progress=False)
    tta = evaluate_model(model, info, data, tta="flip", progress=False)
    multi = evaluate_model(model, info, data, tta="multi", progress=False)
    images, _ = load_eval_data(data, info.class_names, info.image_size, info.channels, progress=False)
    return {
        "model": str(model_path),
        "arch": info.arch,
        "train_seconds": info.extra.get("train_seconds"),
        "val_accuracy": round(plain.accuracy, 4),
        "val_accuracy_tta": round(tta.accuracy, 4),
        "macro_f1": round(plain.macro_f1, 4),
        "macro_f1_tta": round(tta.macro_f1, 4),
        "val_accuracy_tta_multi": round(multi.accuracy, 4),
        "recall": dict(zip(info.class_names, plain.recall)),
        "images_per_second_batch1": round(images_per_second(model, images, 1, 50), 1),
        "images_per_second_batch64": round(images_per_second(model, images, 64, 10), 1),
        "parameters": int(model.count_params()),
        "mflops_per_image": round(count_flops(model) / 1e6, 1),
        "size_mb": round(model_path.stat().st_size / 1e6, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = [measure(path, args.data) for path in args.models]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"data": str(args.data), "models": rows}, indent=2) + "\n")
    print(f"{'model':<40} {'arch':<7} {'acc':>6} {'acc+TTA':>7} {'multi':>6} {'mF1':>6} {'img/s b1':>9} {'img/s b64':>9} {'params':>9} {'MFLOPs':>7} {'MB':>6}")
    for r in rows:
        print(f"{Path(r['model']).parent.parent.name + '/' + Path(r['model']).name:<40} {r['arch']:<7} {r['val_accuracy']:6.4f} "
              f"{r['val_accuracy_tta']:7.4f} {r['val_accuracy_tta_multi']:6.4f} {r['macro_f1']:6.4f} {r['images_per_second_batch1']:9.1f} "
              f"{r['images_per_second_batch64']:9.1f} {r['parameters']:9d} {r['mflops_per_image']:7.1f} {r['size_mb']:6.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
