"""Benchmark `emorec check --duplicates`: how well near-copies are found, and what it finds in FER2013.

    .venv/bin/python benchmarks/duplicates.py [--faces 500] [--data DIR --against DIR ...]

1. Near-copies: --faces random FER2013 images (train and val, blank ones left
   out) are each changed in the ways listed in CHANGES; for each change it
   prints the share of copies that match their original directly (hash within
   HASH_DISTANCE bits and correlation at least MIN_CORRELATION, no help from a
   third image), the lowest and 1st-percentile correlation and the largest hash
   distance.
2. The report on FER2013 train against val (or --data/--against): groups,
   files in groups, conflicting groups, pairs and files shared with each
   --against folder, blank images and the seconds it took, on this machine.

Results go to benchmarks/results/duplicates.json and a table is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FER = REPO.parent / "shared" / "data" / "fer2013"
RESULTS = HERE / "results" / "duplicates.json"
sys.path.insert(0, str(REPO / "src"))

from emorec.images import read_image  # noqa: E402
from emorec.duplicates import (HASH_DISTANCE, MIN_CORRELATION, find_duplicates, perceptual_hashes,  # noqa: E402
                               rank_images, rank_vectors)
from emorec.preprocess import to_model_input  # noqa: E402


def _curve(gray: np.ndarray, curve) -> np.ndarray:
    return np.clip(curve(np.arange(256.0)), 0, 255).round().astype(np.uint8)[gray]


def _jpeg(gray: np.ndarray, quality: int) -> np.ndarray:
    return cv2.imdecode(cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_GRAYSCALE)


def _resized(gray: np.ndarray, side: int) -> np.ndarray:
    return cv2.resize(gray, (side, side), interpolation=cv2.INTER_CUBIC)


CHANGES = {
    "JPEG quality 20": lambda g: _jpeg(g, 20),
    "JPEG quality 50": lambda g: _jpeg(g, 50),
    "contrast 0.6x + 40": lambda g: _curve(g, lambda x: 40 + 0.6 * x),
    "gamma 0.5": lambda g: _curve(g, lambda x: 255 * (x / 255) ** 0.5),
    "gamma 2": lambda g: _curve(g, lambda x: 255 * (x / 255) ** 2),
    "histogram equalised": cv2.equalizeHist,
    "CLAHE (local contrast)": lambda g: cv2.createCLAHE(2.0, (4, 4)).apply(g),
    "resized to 96": lambda g: _resized(g, 96),
    "resized 48->96->48": lambda g: cv2.resize(_resized(g, 96), (48, 48), interpolation=cv2.INTER_AREA),
    "96 px, gamma 1.5, JPEG 40": lambda g: _jpeg(_curve(_resized(g, 96), lambda x: 255 * (x / 255) ** 1.5), 40),
}


def _thumb(gray: np.ndarray) -> np.ndarray:
    return to_model_input(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), 32, 1)[..., 0]


def near_copies(count: int, seed: int) -> dict[str, dict[str, float]]:
    """Per change: share matched directly, lowest and 1st-percentile correlation, largest hash distance."""
    paths = sorted(FER.glob("*/*/*.jpg"))
    rng = np.random.default_rng(seed)
    grays = []
    for index in rng.permutation(len(paths)):
        gray = to_model_input(read_image(paths[index]), 48, 1)[..., 0]
        if gray.std() >= 4:
            grays.append(gray)
        if len(grays) == count:
            break
    originals = rank_images(np.stack([_thumb(g) for g in grays]))
    results = {}
    for name, change in CHANGES.items():
        copies = rank_images(np.stack([_thumb(change(g)) for g in grays]))
        distance = np.bitwise_count(perceptual_hashes(originals) ^ perceptual_hashes(copies))
        correlation = np.einsum("ij,ij->i", rank_vectors(originals), rank_vectors(copies))
        matched = (distance <= HASH_DISTANCE) & (correlation >= MIN_CORRELATION)
        results[name] = {"matched": float(matched.mean()), "min_correlation": float(correlation.min()),
                         "p1_correlation": float(np.percentile(correlation, 1)), "max_distance": int(distance.max())}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=str(FER / "train"))
    parser.add_argument("--against", nargs="*", default=[str(FER / "val")])
    args = parser.parse_args()

    copies = near_copies(args.faces, args.seed)
    print(f"near-copies of {args.faces} FER2013 faces (hash <= {HASH_DISTANCE} bits, correlation >= {MIN_CORRELATION}):")
    print(f"{'change':<28} {'matched':>8} {'min corr':>9} {'1% corr':>8} {'max bits':>9}")
    for name, row in copies.items():
        print(f"{name:<28} {row['matched']:>8.1%} {row['min_correlation']:>9.3f} {row['p1_correlation']:>8.3f} "
              f"{row['max_distance']:>9}")

    found = find_duplicates(args.data, args.against).to_dict()
    summary = {key: found[key] for key in ("groups", "files_in_groups", "cross_folder", "seconds")}
    summary.update(conflicting_groups=len(found["conflicting_labels"]), later_copies=len(found["later_copies"]),
                   blank=len(found["blank"]), no_face=len(found["no_face"]), folders=found["folders"])
    print(f"\n{args.data} against {' '.join(args.against)}:")
    for key in ("groups", "files_in_groups", "conflicting_groups", "later_copies", "blank", "no_face", "seconds"):
        print(f"  {key:<18} {summary[key]}")
    for item in summary["cross_folder"]:
        print(f"  {item['folder']}: {item['pairs']} pairs, {item['files_with_a_copy_in_data']} files with a copy")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"near_copies": copies, "report": summary}, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
