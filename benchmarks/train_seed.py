"""Train the default (seed) architecture on full FER2013 train with val/ as validation.

    .venv/bin/python benchmarks/train_seed.py [--epochs N] [--batch-size B]

Uses `emorec train` defaults (seed CNN, Adam 1e-3, early stopping on val
accuracy) through the library. Writes benchmarks/results/train_seed.json with
epochs run, seconds per epoch, training images per second and best val accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
DATA = REPO.parent / "shared" / "data" / "fer2013"
RESULTS = REPO / "benchmarks" / "results" / "train_seed.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import keras

    from emorec.config import train_config
    from emorec.train import train

    project = tempfile.mkdtemp(prefix="emorec-bench-")
    cfg = train_config(data=str(DATA / "train"), val=str(DATA / "val"), epochs=args.epochs,
                       batch_size=args.batch_size, project=project, name="seed")
    result = train(cfg, progress=False)
    epochs = len(result.history["loss"])
    train_images = sum(1 for path in (DATA / "train").rglob("*") if path.is_file())
    figures = {
        "backend": keras.backend.backend(),
        "epochs": epochs,
        "seconds": round(result.seconds, 1),
        "seconds_per_epoch": round(result.seconds / epochs, 1),
        "train_images": train_images,
        "images_per_second": round(train_images * epochs / result.seconds, 1),
        "best_val_accuracy": round(result.best_val_accuracy, 4),
        "final_report_accuracy": round(result.report.accuracy, 4),
        "run_dir": str(result.run_dir),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
