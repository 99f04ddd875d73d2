"""Labels from a CSV file next to a folder of images, instead of (or besides) the folder names.

Two layouts are read, both keyed by a `path` column relative to the image folder:

- one label per row: a `label` column holding a class name;
- one column per class holding vote counts or probabilities (FER+ is one such file:
  `neutral, happiness, ..., contempt, unknown, NF`). Other numeric columns that are
  votes but not classes (`unknown`, `NF`) are named by the caller: they count in a
  row's total, so they can deny a majority, but are never a target. Text columns
  (FER+'s `status`) are ignored.

A row's majority follows FER+'s rule: with ten or so annotators, a class with a
single vote is an outlier and is dropped; the top class then needs more than half
of the remaining votes. Probabilities (rows summing to 1) keep all their mass.

A path listed twice is read once when both rows say the same, and refused (naming both
lines) when they differ. A file names at most MAX_CLASSES classes.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from emorec.config import LABEL_TARGETS, LABEL_UNSURE, comma_list, rename_pairs
from emorec.data import MAX_CLASSES, DatasetError, ScanReport
from emorec.files import InputFileError, read_limited

PATH_COLUMN = "path"
LABEL_COLUMN = "label"
MAX_LABEL_FILE = 512 * 2**20  # bytes: a label file for millions of images fits


class LabelFileError(DatasetError):
    """A label file that cannot be used at all (missing, no `path` column, no class columns)."""


@dataclass(frozen=True)
class LabelSpec:
    """Which file holds the labels and how to read its columns."""

    file: str
    not_classes: tuple[str, ...] = ()  # vote columns that are not classes, e.g. ("unknown", "NF")
    rename: tuple[tuple[str, str], ...] = ()  # (column, class name) pairs, e.g. (("happiness", "happy"),)

    @classmethod
    def parse(cls, file: str, not_classes: str = "", rename: str = "") -> "LabelSpec":
        """A spec from the CLI's comma-separated forms: not_classes "unknown,NF", rename "happiness=happy,...".

        Raises LabelFileError on a rename without '='.
        """
        try:
            pairs = rename_pairs(rename)
        except ValueError as error:
            raise LabelFileError(str(error)) from None
        return cls(file, tuple(comma_list(not_classes)), pairs)


@dataclass
class LabelTable:
    """The rows of a label file: per row a path, the class votes and the votes for non-classes."""

    class_names: list[str]
    paths: list[str]  # as written in the file, normalised to forward slashes
    votes: np.ndarray  # (rows, classes) float: counts, probabilities or one-hot for a label column
    other: np.ndarray  # (rows,) float: votes for the non-class columns
    layout: str  # "label" or "votes"
    source: Path
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why its row gives no label

    def majority(self) -> np.ndarray:
        """Per row the index of its majority class, or -1 when there is none (see the module docstring)."""
        if self.layout == "label":
            return self.votes.argmax(axis=1)
        votes, other = self.votes.copy(), self.other.copy()
        counted = (votes.sum(axis=1) + other) > 2  # counts of several annotators, not probabilities
        votes[counted[:, None] & (votes == 1)] = 0
        other = np.where(counted, other * (other != 1), other)  # a lone 'unknown' vote is an outlier too
        total = votes.sum(axis=1) + other
        top = votes.argmax(axis=1)
        has_votes = votes.sum(axis=1) > 0
        sure = has_votes & (votes[np.arange(len(votes)), top] > total / 2)
        return np.where(sure, top, -1)

    def distribution(self) -> np.ndarray:
        """Per row the class votes as probabilities (rows without class votes are all zero)."""
        totals = self.votes.sum(axis=1, keepdims=True)
        return np.divide(self.votes, totals, out=np.zeros_like(self.votes), where=totals > 0)


def read_label_file(spec: LabelSpec) -> LabelTable:
    """Read and check a label file; rows with a bad value are listed in `skipped`, not fatal.

    Raises LabelFileError naming the file when it cannot be used at all.
    """
    path = Path(spec.file)
    try:
        text = read_limited(path, MAX_LABEL_FILE).decode("utf-8-sig")
    except (InputFileError, FileNotFoundError) as error:
        raise LabelFileError(str(error) if isinstance(error, InputFileError) else f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise LabelFileError(f"{path}: not a UTF-8 text file") from None
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as error:
        raise LabelFileError(f"{path}: not a CSV file ({error})") from None
    if not rows:
        raise LabelFileError(f"{path}: empty label file")
    header, body = [name.strip() for name in rows[0]], [row for row in rows[1:] if any(cell.strip() for cell in row)]
    if PATH_COLUMN not in header:
        raise LabelFileError(f"{path}: no '{PATH_COLUMN}' column (columns: {', '.join(header)})")
    if LABEL_COLUMN in header:
        return _label_layout(path, header, body, spec)
    return _vote_layout(path, header, body, spec)


def _renamed(spec: LabelSpec, name: str) -> str:
    return dict(spec.rename).get(name, name)


def _label_layout(path: Path, header: list[str], body: list[list[str]], spec: LabelSpec) -> LabelTable:
    at_path, at_label = header.index(PATH_COLUMN), header.index(LABEL_COLUMN)
    paths, labels, skipped, lines = [], [], {}, {}
    for number, row in enumerate(body, start=2):
        cells = row + [""] * (len(header) - len(row))
        label = _renamed(spec, cells[at_label].strip())
        if not cells[at_path].strip():
            skipped[f"line {number}"] = "empty path"
        elif not label or label in spec.not_classes:
            skipped[_normal(cells[at_path])] = f"line {number}: {'no label' if not label else label}"
        elif _first_time(path, lines, _normal(cells[at_path]), number, label):
            paths.append(_normal(cells[at_path]))
            labels.append(label)
    names = sorted(set(labels))
    _check_usable(path, names, len(paths), len(body), skipped)
    votes = np.zeros((len(labels), len(names)), np.float32)
    votes[np.arange(len(labels)), [names.index(label) for label in labels]] = 1
    return LabelTable(names, paths, votes, np.zeros(len(labels), np.float32), "label", path, skipped)


def _vote_layout(path: Path, header: list[str], body: list[list[str]], spec: LabelSpec) -> LabelTable:
    numeric = [i for i, name in enumerate(header) if name != PATH_COLUMN and _is_numeric(body, i)]
    unknown = sorted(set(spec.not_classes) - {header[i] for i in numeric})
    if unknown:
        raise LabelFileError(f"{path}: no vote column(s) {', '.join(unknown)} (vote columns: "
                             f"{', '.join(header[i] for i in numeric)})")
    classes = [i for i in numeric if header[i] not in spec.not_classes]
    if len(classes) > MAX_CLASSES:
        raise LabelFileError(f"{path}: {len(classes):,} class columns, more than the {MAX_CLASSES:,} a model can have")
    others = [i for i in numeric if header[i] in spec.not_classes]
    names = [_renamed(spec, header[i]) for i in classes]
    if len(classes) < 2 or len(set(names)) != len(names):
        raise LabelFileError(f"{path}: need a 'label' column or at least two distinct class columns of numbers "
                             f"(found: {', '.join(names) or 'none'})")
    at_path = header.index(PATH_COLUMN)
    paths, votes, other, skipped, lines = [], [], [], {}, {}
    for number, row in enumerate(body, start=2):
        cells = row + [""] * (len(header) - len(row))
        values = [cells[i].strip() for i in classes + others]
        if not cells[at_path].strip():
            skipped[f"line {number}"] = "empty path"
        elif not any(values):
            skipped[_normal(cells[at_path])] = f"line {number}: no votes"
        else:
            numbers = np.array([float(value or 0) for value in values], np.float32)
            if not np.isfinite(numbers).all() or (numbers < 0).any() or not numbers[:len(classes)].any():
                skipped[_normal(cells[at_path])] = f"line {number}: no class votes, or votes not finite and positive"
                continue
            if not _first_time(path, lines, _normal(cells[at_path]), number, tuple(numbers.tolist())):
                continue
            paths.append(_normal(cells[at_path]))
            votes.append(numbers[:len(classes)])
            other.append(numbers[len(classes):].sum())
    _check_usable(path, names, len(paths), len(body), skipped)
    order = np.argsort(names, kind="stable")  # models list classes alphabetically, like folder names
    table = np.array(votes, np.float32).reshape(-1, len(classes))[:, order]
    return LabelTable([names[i] for i in order], paths, table, np.array(other, np.float32), "votes", path, skipped)


def _first_time(file: Path, lines: dict[str, tuple[int, object]], path: str, number: int, value: object) -> bool:
    """True the first time path is listed, False for a repeat of the same row; LabelFileError for one that differs."""
    if path not in lines:
        lines[path] = (number, value)
        return True
    first, earlier = lines[path]
    if earlier != value:
        raise LabelFileError(f"{file}: {path} is listed on line {first} and again, with other labels, on line {number}")
    return False


def _check_usable(path: Path, names: list[str], usable: int, rows: int, skipped: dict[str, str]) -> None:
    """A file with no usable row, or with more classes than a model can have, cannot be used at all."""
    if not usable:
        where, reason = next(iter(skipped.items()), ("", ""))
        why = f", {len(skipped)} skipped, first: {where}: {reason}" if skipped else ""
        raise LabelFileError(f"{path}: no row with a usable label ({rows} row(s){why})")
    if len(names) > MAX_CLASSES:
        raise LabelFileError(f"{path}: {len(names):,} distinct labels, more than the {MAX_CLASSES:,} classes a model "
                             "can have (is the label column right?)")


def _is_numeric(body: list[list[str]], column: int) -> bool:
    seen = False
    for row in body:
        cell = row[column].strip() if column < len(row) else ""
        if not cell:
            continue
        try:
            float(cell)
        except ValueError:
            return False
        seen = True
    return seen


def _normal(path: str) -> str:
    return PurePosixPath(path.strip().replace("\\", "/")).as_posix()


@dataclass
class LabelledImages:
    """The images of a folder that have a usable row, with what training and evaluation need."""

    paths: list[Path]
    class_names: list[str]
    distribution: np.ndarray  # (n, classes) vote distribution, or one-hot for a label column
    majority: np.ndarray  # (n,) class index or -1
    folder: np.ndarray  # (n,) class index of the image's top folder, or -1 when it is no class
    notes: list[str]  # one line per kind of row or image left out

    def __len__(self) -> int:
        return len(self.paths)

    def targets(self, targets: str = "soft", unsure: str = "drop", folder_weight: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(kept row indices, target distributions) for training.

        targets "soft" trains on the vote distribution, "majority" on the majority
        class; rows without a majority are dropped (unsure "drop") or kept with their
        distribution ("soft"). folder_weight a mixes in the folder label:
        a * folder + (1 - a) * file, where the folder names a class.
        """
        if targets not in LABEL_TARGETS or unsure not in LABEL_UNSURE:
            raise ValueError(f"targets must be one of {LABEL_TARGETS} and unsure one of {LABEL_UNSURE}")
        sure = self.majority >= 0
        keep = np.flatnonzero(sure | (unsure == "soft"))
        chosen = self.distribution[keep].copy()
        if targets == "majority":
            rows = np.flatnonzero(sure[keep])
            chosen[rows] = np.eye(len(self.class_names), dtype=np.float32)[self.majority[keep][rows]]
        if folder_weight:
            named = np.flatnonzero(self.folder[keep] >= 0)
            one_hot = np.eye(len(self.class_names), dtype=np.float32)[self.folder[keep][named]]
            chosen[named] = folder_weight * one_hot + (1 - folder_weight) * chosen[named]
        return keep, chosen.astype(np.float32)

    def conflicts(self) -> Counter:
        """(folder class, majority class) -> count, for images whose folder label and majority differ."""
        both = (self.folder >= 0) & (self.majority >= 0) & (self.folder != self.majority)
        names = self.class_names
        return Counter((names[f], names[m]) for f, m in zip(self.folder[both], self.majority[both]))


def match_images(table: LabelTable, root: str | Path, image_paths: list[Path]) -> LabelledImages:
    """Pair the valid images found under root with the rows of table, by path relative to root.

    Images without a row and rows naming no valid image are left out and counted in `notes`.
    """
    root = Path(root)
    index = {path: row for row, path in enumerate(table.paths)}
    rows, kept, tops, unlisted = [], [], [], []
    for image in image_paths:
        relative = image.relative_to(root)
        row = index.get(relative.as_posix())
        if row is not None:
            rows.append(row)
            kept.append(image)
            tops.append(relative.parts[0] if len(relative.parts) > 1 else "")
        elif relative.as_posix() not in table.skipped:
            unlisted.append(image)
    found = {table.paths[row] for row in rows}
    missing = [path for path in table.paths if path not in found]
    notes = _notes(table, root, unlisted, missing)
    rows_arr = np.array(rows, np.int64)
    folder = np.array([table.class_names.index(top) if top in table.class_names else -1 for top in tops], np.int64)
    return LabelledImages(kept, table.class_names, table.distribution()[rows_arr], table.majority()[rows_arr],
                          folder, notes)


def label_report(table: LabelTable, report: ScanReport) -> LabelledImages:
    """match_images for the valid images of a scan, with each note about left-out rows or images as a warning."""
    images = match_images(table, report.root, report.valid_paths)
    for note in images.notes:
        warnings.warn(note, stacklevel=3)
    return images


def _notes(table: LabelTable, root: Path, unlisted: list[Path], missing: list[str]) -> list[str]:
    notes = []
    if table.skipped:
        where, why = next(iter(table.skipped.items()))
        notes.append(f"{table.source}: {len(table.skipped)} row(s) give no usable label (first: {where}: {why}); "
                     "their images are left out")
    if missing:
        notes.append(f"{table.source}: {len(missing)} row(s) name no valid image under {root} "
                     f"(first: {missing[0]}); left out")
    if unlisted:
        notes.append(f"{root}: {len(unlisted)} image(s) have no row in {table.source} "
                     f"(first: {unlisted[0].relative_to(root).as_posix()}); left out")
    return notes


def summary(images: LabelledImages) -> list[str]:
    """Printable lines: images per majority class, rows without a majority, and folder/label conflicts."""
    counts = np.bincount(images.majority[images.majority >= 0], minlength=len(images.class_names))
    width = max(len(name) for name in images.class_names)
    lines = [f"{'majority':<{width}}  images"]
    lines += [f"{name:<{width}}  {count:6d}" for name, count in zip(images.class_names, counts)]
    unsure = int((images.majority < 0).sum())
    lines.append(f"{len(images)} labelled image(s), {unsure} without a majority")
    conflicts = images.conflicts()
    named = int(((images.folder >= 0) & (images.majority >= 0)).sum())
    if named:
        total = sum(conflicts.values())
        lines.append(f"folder label differs from the majority on {total} of {named} image(s) ({100 * total / named:.1f}%)"
                     + (": " + ", ".join(f"{a}->{b} {n}" for (a, b), n in conflicts.most_common(5)) if total else ""))
    return lines
