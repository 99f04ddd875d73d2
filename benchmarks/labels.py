"""Both bundled models on both label sets, the 56 photos, and the duplicate report on FER2013.

    .venv/bin/python benchmarks/labels.py [--models fer2013 ferplus PATH.onnx ...] [--skip-duplicates]

For each model: FER2013 val accuracy, macro-F1 and per-class recall against the
original folder labels and against the FER+ majority labels (FERPlus' rule:
votes of one annotator dropped, the top class needs more than half of the rest;
images without a majority are left out), the cross-entropy against the FER+
vote distributions, and the number of the 56 labelled photos whose largest face
gets the right emotion (a photo without a face counts as wrong). Then the
duplicate report of `emorec check fer2013/train --duplicates --against
fer2013/val` with the time it took.

Results go to benchmarks/results/labels.json and a table is printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data"
RESULTS = HERE / "results" / "labels.json"
FERPLUS_COLUMNS = dict(not_classes="unknown,NF", rename="happiness=happy,sadness=sad,anger=angry")

sys.path.insert(0, str(REPO / "src"))


def model_figures(model: str) -> dict:
    """Accuracy on both label sets of FER2013 val and the 56-photo score of one model."""
    from emorec.evaluate import evaluate_model
    from emorec.labels import LabelSpec
    from emorec.runtime import load_runtime

    runtime = load_runtime(model)
    val = DATA / "fer2013" / "val"
    original = evaluate_model(runtime, val, progress=False)
    spec = LabelSpec.parse(str(DATA / "ferplus" / "val.csv"), **FERPLUS_COLUMNS)
    ferplus = evaluate_model(runtime, val, label_spec=spec, progress=False)
    return {
        "model": model,
        "classes": runtime.info.class_names,
        "original": _summary(original),
        "ferplus_majority": {**_summary(ferplus), "no_majority": ferplus.no_majority,
                             "vote_cross_entropy": ferplus.vote_cross_entropy},
        "photos": photo_score(model),
    }


def _summary(report) -> dict:
    return {"accuracy": report.accuracy, "macro_f1": report.macro_f1, "images": report.images,
            "recall": dict(zip(report.class_names, report.recall))}


def photo_score(model: str) -> dict:
    """Photos whose largest face gets the labelled emotion, and photos with a face."""
    from emorec.recognizer import Recognizer

    recognizer = Recognizer(model)
    rows = list(csv.DictReader(open(DATA / "photos" / "labels.csv")))
    correct = found = 0
    for row in rows:
        faces = recognizer.predict(DATA / "photos" / row["image"])
        if faces:
            found += 1
            largest = max(faces, key=lambda face: face.box[2] * face.box[3])
            correct += largest.emotion == row["emotion"]
    return {"correct": correct, "faces_found": found, "photos": len(rows)}


def duplicate_figures() -> dict:
    """Counts of the duplicate report on FER2013 train against val, and its wall time."""
    from emorec.duplicates import find_duplicates

    start = time.perf_counter()
    report = find_duplicates(DATA / "fer2013" / "train", against=[DATA / "fer2013" / "val"], progress=False)
    seconds = time.perf_counter() - start
    found = report.to_dict()
    cross = found["cross_folder"][0]
    return {"groups": found["groups"], "files_in_groups": found["files_in_groups"],
            "groups_with_conflicting_labels": len(found["conflicting_labels"]),
            "train_val_pairs": cross["pairs"], "val_images_with_a_copy_in_train": cross["files_with_a_copy_in_data"],
            "later_copies_in_train": len(found["later_copies"]), "blank_images": len(found["blank"]),
            "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["fer2013", "ferplus"])
    parser.add_argument("--skip-duplicates", action="store_true")
    args = parser.parse_args()
    results = {"models": [model_figures(model) for model in args.models]}
    if not args.skip_duplicates:
        results["duplicates"] = duplicate_figures()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"\nwritten to {RESULTS}")


def print_table(results: dict) -> None:
    """The figures side by side, one column per model."""
    models = results["models"]
    rows = [("model", [m["model"] for m in models]),
            ("val accuracy, original labels", [f"{m['original']['accuracy']:.2%}" for m in models]),
            ("val macro-F1, original labels", [f"{m['original']['macro_f1']:.3f}" for m in models]),
            ("val accuracy, FER+ majority", [f"{m['ferplus_majority']['accuracy']:.2%}" for m in models]),
            ("val macro-F1, FER+ majority", [f"{m['ferplus_majority']['macro_f1']:.3f}" for m in models]),
            ("cross-entropy vs FER+ votes", [f"{m['ferplus_majority']['vote_cross_entropy']:.3f}" for m in models]),
            ("56 photos correct", [f"{m['photos']['correct']}/{m['photos']['photos']}" for m in models])]
    for labels in ("original", "ferplus_majority"):
        for name in models[0][labels]["recall"]:
            rows.append((f"recall {name} ({'FER+' if labels != 'original' else 'original'})",
                         [f"{m[labels]['recall'].get(name, float('nan')):.3f}" for m in models]))
    width = max(len(label) for label, _ in rows)
    for label, values in rows:
        print(f"{label:<{width}}  " + "  ".join(f"{value:>14}" for value in values))
    if "duplicates" in results:
        print("\nduplicates, FER2013 train against val:")
        for key, value in results["duplicates"].items():
            print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
