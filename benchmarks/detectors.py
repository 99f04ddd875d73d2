"""Compare the face detectors in emorec.faces, and calibrate FER2013 framing.

    python benchmarks/detectors.py              # detector table on shared/data/photos
    python benchmarks/detectors.py --calibrate  # FER crop vs detector box numbers
    python benchmarks/detectors.py --passes     # YuNet at full size vs coarse first, with the bundled model

Data is looked up in ../shared/data relative to the repository root. Results
go to benchmarks/results/detectors.json (and fer_framing.json).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from emorec import faces  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"


def benchmark(name: str, photos: list[Path]) -> dict:
    """Run one detector over the photos: face counts and median ms per photo."""
    detector = faces.create_detector(name)
    images = [cv2.imread(str(p)) for p in photos]
    detector.detect(images[0])  # warm-up: first call pays one-off setup
    counts, times = [], []
    for image in images:
        start = time.perf_counter()
        counts.append(len(detector.detect(image)))
        times.append((time.perf_counter() - start) * 1000)
    return {
        "detector": name,
        "photos": len(photos),
        "one_face": sum(c == 1 for c in counts),
        "no_face": sum(c == 0 for c in counts),
        "several_faces": sum(c > 1 for c in counts),
        "median_ms": round(statistics.median(times), 2),
        "missed": [p.name for p, c in zip(photos, counts) if c != 1],
    }


def print_table(rows: list[dict]) -> None:
    """Print the benchmark rows as a fixed-width table."""
    print(f"{'detector':<10}{'photos':>7}{'one':>6}{'none':>6}{'>1':>5}{'ms/photo':>10}")
    for r in rows:
        print(f"{r['detector']:<10}{r['photos']:>7}{r['one_face']:>6}{r['no_face']:>6}"
              f"{r['several_faces']:>5}{r['median_ms']:>10.1f}")


def fer_images(per_class: int) -> list[Path]:
    """The first ``per_class`` FER2013 val images of every class."""
    root = DATA / "fer2013" / "val"
    return [p for d in sorted(root.iterdir()) for p in sorted(d.glob("*.[jp][pn]g"))[:per_class]]


def framing(face: faces.Face, side: int) -> dict:
    """Where a side x side crop (the whole image) sits relative to one detected face."""
    x, y, w, h = face.box
    centre = side / 2
    out = {"box_scale": side / max(w, h), "box_scale_w": side / w, "box_aspect": h / w,
           "box_shift_x": (centre - (x + w / 2)) / w, "box_shift_y": (centre - (y + h / 2)) / h}
    if face.landmarks:
        (ex, ey), (mx, my) = np.mean(face.landmarks[0:2], axis=0), np.mean(face.landmarks[3:5], axis=0)
        dist = math.hypot(mx - ex, my - ey)
        (lx, ly), (rx, ry) = face.landmarks[0], face.landmarks[1]
        out.update({"lm_scale": side / dist, "lm_shift_x": (centre - (ex + mx) / 2) / dist,
                    "lm_shift_y": (centre - (ey + my) / 2) / dist,
                    "roll_deg": math.degrees(math.atan2(ry - ly, rx - lx))})
    return out


def summarize(values: list[float]) -> dict:
    """Median, quartiles and robust spread (IQR / median) of a list."""
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return {"median": round(float(med), 4), "q1": round(float(q1), 4), "q3": round(float(q3), 4),
            "iqr_over_median": round(float((q3 - q1) / abs(med)), 4) if med else None}


def calibrate(name: str, per_class: int) -> dict:
    """Detect faces on FER2013 val images and summarize the crop-vs-detection geometry."""
    detector = faces.create_detector(name, min_size=8)
    paths = fer_images(per_class)
    rows = []
    for path in paths:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        found = detector.detect(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
        if len(found) == 1:
            rows.append(framing(found[0], gray.shape[0]))
    keys = rows[0].keys() if rows else []
    stats = {k: summarize([r[k] for r in rows]) for k in keys}
    return {"detector": name, "images": len(paths), "one_face": len(rows), "stats": stats}


def _fine_only(image, max_side, find):
    return find(*faces._prepare(image, max_side))


def compare_passes(per_class: int) -> list[dict]:
    """The bundled model through Recognizer with YuNet looking at max_side only, or at COARSE_SIDE first.

    Faces found, correct top emotions and ms per image on the labelled
    photos and on FER2013 val images (which the detector re-crops).
    """
    import csv

    from emorec.recognizer import WholeImage, Recognizer

    labels = {r["image"]: r["emotion"] for r in csv.DictReader(open(DATA / "photos" / "labels.csv"))}
    sets = {"photos": [(DATA / "photos" / name, emotion) for name, emotion in labels.items()],
            "fer_val": [(p, p.parent.name) for p in fer_images(per_class)]}
    rows = []
    coarse_then_fine = faces._coarse_then_fine
    for variant, passes in (("fine only", _fine_only), ("coarse first", coarse_then_fine)):
        faces._coarse_then_fine = passes
        recognizer = Recognizer(detector="yunet")
        for name, items in sets.items():
            images = [(cv2.imread(str(path)), emotion) for path, emotion in items]
            recognizer.predict(images[0][0])
            found = correct = 0
            times = []
            for image, emotion in images:
                start = time.perf_counter()
                prepared = recognizer.prepare(image)
                result = recognizer.classify_prepared([prepared])[0]
                times.append((time.perf_counter() - start) * 1000)
                found += bool(prepared.regions) and not isinstance(prepared.regions[0], WholeImage)
                largest = max(result, key=lambda f: f.box[2] * f.box[3] if f.box else 0, default=None)
                correct += largest is not None and largest.emotion == emotion
            rows.append({"variant": variant, "set": name, "images": len(images), "faces_found": found,
                         "correct": correct, "accuracy": round(correct / len(images), 4),
                         "median_ms": round(statistics.median(times), 2)})
    return rows


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibrate", action="store_true", help="measure FER2013 framing instead")
    parser.add_argument("--passes", action="store_true", help="compare fine-only and coarse-first detection")
    parser.add_argument("--per-class", type=int, default=60, help="FER val images per class (calibrate, passes)")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"no data at {DATA}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.passes:
        rows = compare_passes(args.per_class)
        print(f"{'variant':<16}{'set':<9}{'images':>7}{'faces':>7}{'correct':>9}{'accuracy':>10}{'ms/image':>10}")
        for r in rows:
            print(f"{r['variant']:<16}{r['set']:<9}{r['images']:>7}{r['faces_found']:>7}{r['correct']:>9}"
                  f"{r['accuracy']:>10.4f}{r['median_ms']:>10.1f}")
        (RESULTS / "detection_passes.json").write_text(json.dumps(rows, indent=1))
        return
    if args.calibrate:
        result = [calibrate(name, args.per_class) for name in faces.DETECTORS]
        print(json.dumps(result, indent=1))
        (RESULTS / "fer_framing.json").write_text(json.dumps(result, indent=1))
        return
    photos = sorted((DATA / "photos").glob("*.jpg"))
    rows = [benchmark(name, photos) for name in faces.DETECTORS]
    print_table(rows)
    (RESULTS / "detectors.json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {RESULTS / 'detectors.json'}")


if __name__ == "__main__":
    main()
