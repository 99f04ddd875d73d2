"""Find duplicate, blank and faceless images in class-folder datasets, and leaks between datasets.

`find_duplicates(data, against)` reads every image once (through
`data.scan_dataset`, the reader every command uses), brings it to a 32x32
grey thumbnail (`preprocess.to_model_input`) and compares the thumbnails:

1. Each thumbnail is replaced by the mid-ranks of its grey levels, i.e. it is
   histogram-equalised. Any increasing grey-level mapping (contrast stretch,
   gamma, histogram equalisation: FER2013's own JPEGs are equalised copies)
   leaves the ranks as they were, so copies that differ that way compare equal.
2. Images with equal rank images (byte-identical files, or copies that
   differ by a grey-level mapping) are copies of each other and match the
   same others, so each such set takes part in the steps below once, through
   its first image: 10,000 identical files cost one comparison, not 50
   million (benchmarks/duplicate_copies.py, busy 2-core machine: `check
   --duplicates` on 3,000 copies 5.8 s and 142 MiB, was 61.8 s and 512 MiB;
   on 10,000 copies 16.9 s and 196 MiB, reported at 231 s and 4.9 GB before).
3. A 63-bit perceptual hash (the signs of the 8x8 lowest DCT frequencies of
   the ranks, against their median) finds candidate pairs: every pair of
   distinct rank images is compared, 256 rows at a time, by the Hamming
   distance of their hashes; pairs within HASH_DISTANCE bits are candidates.
4. Each candidate is confirmed by the correlation of the two rank images,
   lightly blurred (a Spearman correlation that JPEG noise in flat or
   saturated areas hardly moves); at least MIN_CORRELATION makes a match.
   Matches are joined into groups (union-find), so A~B and B~C group A, B, C.

The thresholds were tuned on FER2013 train+val (32,298 images). Measured by
benchmarks/duplicates.py on 500 random FER2013 faces, copies that were
re-encoded (JPEG quality 20 or 50), contrast-stretched, gamma-corrected (0.5,
2), histogram-equalised, resized (to 96 px, or 48->96->48) or all of these at
once match their original directly in 99.8-100% of cases (lowest correlation
0.958); local contrast changes (CLAHE), which are not one grey-level mapping,
in 88%. About 100 FER2013 pairs with correlations between 0.93 and 0.975 were
inspected by eye: above 0.96 all were the same photo (some with a watermark or
a drawing added), below it some were different photos of similar faces. Copies
of images that are mostly flat white or black (saturated) are the hardest:
noise in the flat areas reorders their grey levels.

Blank images are those whose thumbnail is nearly constant (grey-level
standard deviation below BLANK_STD); they are listed, not compared (they
would all match each other). Images that are not face crops by
`faces.is_face_crop` (the rule prediction follows: short side under
FACE_CROP_SIDE px) are also searched for a face with
`faces.create_detector`: on 300 FER2013 val crops that all ten FER+
annotators called faces, YuNet found no face in 13 (4.3%), at 19 ms a crop
(10 minutes for FER2013), so on crops a missing face says little and costs
much.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from emorec.data import InvalidFile, ScanReport, scan_dataset
from emorec.errors import UsageError
from emorec.files import file_identity, resolved_output
from emorec.faces import FACE_CROP_SIDE, create_detector, is_face_crop
from emorec.images import read_image
from emorec.preprocess import to_model_input

THUMB_SIDE = 32  # images are compared as 32x32 grey thumbnails
HASH_DISTANCE = 12  # of 63 hash bits: pairs further apart are not compared pixel by pixel
MIN_CORRELATION = 0.96  # rank correlation of blurred thumbnails that makes two images copies
BLANK_STD = 4.0  # thumbnails with a grey-level standard deviation below this are blank
_BLOCK = 256  # hash rows compared at once (256 x 32k distances: 8 MiB)


@dataclass(frozen=True)
class Entry:
    """One valid image: its file, its class folder and which folder it came from (0: the data)."""

    path: Path
    label: str
    folder: int


@dataclass
class DuplicateReport:
    """What `find_duplicates` found in the data folder (scans[0]) and the folders checked against it.

    groups: lists of copies of one image, each in scan order (data folder first,
    then the --against folders in the order given, each by class and name).
    """

    scans: list[ScanReport]
    groups: list[list[Entry]] = field(default_factory=list)
    blank: list[Entry] = field(default_factory=list)
    no_face: list[Entry] = field(default_factory=list)
    face_checked: int = 0
    seconds: float = 0.0

    @property
    def conflicting(self) -> list[int]:
        """Indices of the groups whose copies lie in different class folders."""
        return [i for i, group in enumerate(self.groups) if len({e.label for e in group}) > 1]

    def later_copies(self) -> list[tuple[Entry, Entry]]:
        """(copy, kept file) for each file of the data folder that setting duplicates aside removes.

        A group keeps its first file, except that a copy of an image of an
        --against folder never stays in the data folder: those files are the
        reference (a test split, say), so their copies are the leak to remove.
        A file that the group holds twice (a symbolic or hard link to it, or a
        linked folder of an --against folder pointing into the data folder) is
        never set aside: it may be the only copy, or the target of a link.
        """
        moving = []
        for group in self.groups:
            outside = [e for e in group if e.folder != 0]
            kept = outside[0] if outside else group[0]
            linked = _files_seen_twice(group)
            moving += [(e, kept) for e in group if e.folder == 0 and e is not kept
                       and file_identity(e.path) not in linked]
        return moving

    def cross_folder(self, folder: int) -> tuple[int, int]:
        """(pairs of copies between the data folder and `folder`, files of `folder` with a copy in the data)."""
        pairs = files = 0
        for group in self.groups:
            inside = sum(e.folder == 0 for e in group)
            there = sum(e.folder == folder for e in group)
            pairs += inside * there
            files += there if inside else 0
        return pairs, files

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, ready for JSON: the groups as lists of paths under `duplicates`, and the counts."""
        return {
            "folders": [{"path": str(s.root), "images": s.total, "invalid": len(s.invalid)} for s in self.scans],
            "duplicates": [[str(e.path) for e in group] for group in self.groups],
            "groups": len(self.groups),
            "files_in_groups": sum(len(g) for g in self.groups),
            "conflicting_labels": [{"group": i, "labels": sorted({e.label for e in self.groups[i]})}
                                   for i in self.conflicting],
            "cross_folder": [self._cross_folder_dict(k) for k in range(1, len(self.scans))],
            "later_copies": [str(copy.path) for copy, _ in self.later_copies()],
            "blank": [str(e.path) for e in self.blank],
            "no_face": [str(e.path) for e in self.no_face],
            "face_check": {"min_side": FACE_CROP_SIDE, "checked": self.face_checked},
            "seconds": round(self.seconds, 2),
        }

    def _cross_folder_dict(self, folder: int) -> dict[str, Any]:
        pairs, files = self.cross_folder(folder)
        return {"folder": str(self.scans[folder].root), "pairs": pairs, "files_with_a_copy_in_data": files}

    def lines(self, shown: int = 5) -> list[str]:
        """A short readable report: the counts, then the first `shown` groups and blank or faceless images."""
        data = self.scans[0].root
        lines = [f"duplicates: {len(self.groups)} group(s) of copies holding {sum(map(len, self.groups))} files",
                 f"  {len(self.conflicting)} group(s) with conflicting labels (copies in different class folders)",
                 f"  {len(self.later_copies())} later copies in {data} (what --quarantine or --delete sets aside)"]
        for k in range(1, len(self.scans)):
            pairs, files = self.cross_folder(k)
            lines.append(f"  against {self.scans[k].root}: {pairs} pair(s) of copies; {files} of its "
                         f"{self.scans[k].total} images have a copy in {data}")
        conflicting = set(self.conflicting)
        for i, group in enumerate(self.groups[:shown]):
            labels = "/".join(sorted({e.label for e in group}))
            names = [self._short(e) for e in group[:4]] + ([f"+{len(group) - 4} more"] if len(group) > 4 else [])
            lines.append(f"  {i + 1}. {labels}{' (conflicting)' if i in conflicting else ''}: {', '.join(names)}")
        if len(self.groups) > shown:
            lines.append(f"  ... {len(self.groups) - shown} more group(s): --json lists them all")
        lines.append(f"blank images: {len(self.blank)}")
        lines += [f"  {e.path}" for e in self.blank[:shown]]
        if self.face_checked:
            lines.append(f"no face found: {len(self.no_face)} of the {self.face_checked} image(s) of at least "
                         f"{FACE_CROP_SIDE} px")
            lines += [f"  {e.path}" for e in self.no_face[:shown]]
        else:
            lines.append(f"no face search: no image is {FACE_CROP_SIDE} px or larger (smaller ones count as face crops)")
        lines.append(f"compared in {self.seconds:.1f} s")
        return lines

    def _short(self, entry: Entry) -> str:
        """The path below its folder, prefixed with the folder's name for --against folders."""
        relative = entry.path.relative_to(self.scans[entry.folder].root).as_posix()
        return f"{self.scans[entry.folder].root.name}:{relative}" if entry.folder else relative

    def copies_as_invalid(self) -> list[InvalidFile]:
        """The later copies in the form `data.quarantine` and `data.delete_files` take as extra files."""
        return [InvalidFile(copy.path, f"a copy of {kept.path}") for copy, kept in self.later_copies()]


def _files_seen_twice(group: list[Entry]) -> set[tuple[int, int]]:
    """The (device, inode) of each file that two entries of the group reach (through links)."""
    seen, twice = set(), set()
    for identity in (file_identity(entry.path) for entry in group):
        if identity is not None:
            (twice if identity in seen else seen).add(identity)
    return twice


# ----------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------


class _Reader:
    """Collects a thumbnail of every image that `scan_dataset` decodes, and looks for faces in large ones."""

    def __init__(self, detector: str):
        self.thumbs: dict[Path, np.ndarray] = {}
        self.no_face: set[Path] = set()
        self.face_checked = 0
        self._detector_name = detector
        self._detector = None

    def __call__(self, path: Path, image: np.ndarray) -> None:
        self.thumbs[path] = thumbnail(image)
        if not is_face_crop(image):
            self.face_checked += 1
            if not self._detect(image):
                self.no_face.add(path)

    def _detect(self, image: np.ndarray) -> list:
        if self._detector is None:
            self._detector = create_detector(self._detector_name)
        return self._detector.detect(image)


def find_duplicates(data: str | Path, against: Sequence[str | Path] = (), progress: bool = True,
                    detector: str = "auto") -> DuplicateReport:
    """Scan `data` and each folder of `against`, and find copies within and across them.

    Also lists blank images and large images in which `detector` finds no
    face. Raises DatasetError (a ValueError) for a folder that is missing or
    not made of class folders, and ValueError for a folder given twice or
    inside another.
    """
    start = time.perf_counter()
    folders = [Path(data), *map(Path, against)]
    _check_distinct(folders)
    reader = _Reader(detector)
    scans = [scan_dataset(folder, progress, on_image=reader) for folder in folders]
    entries = [Entry(path, label, k) for k, scan in enumerate(scans)
               for label in scan.class_names for path in scan.files[label]]
    thumbs = np.zeros((len(entries), THUMB_SIDE, THUMB_SIDE), np.uint8)
    for i, entry in enumerate(entries):
        thumbs[i] = reader.thumbs.pop(entry.path)
    blank = thumbs.reshape(len(entries), THUMB_SIDE * THUMB_SIDE).std(axis=1) < BLANK_STD
    compared = np.flatnonzero(~blank)
    groups = [[entries[compared[i]] for i in group] for group in matching_groups(thumbs[compared], progress)]
    return DuplicateReport(scans=scans, groups=groups, blank=[e for e, b in zip(entries, blank) if b],
                           no_face=[e for e in entries if e.path in reader.no_face],
                           face_checked=reader.face_checked, seconds=time.perf_counter() - start)


def copies_in(data_paths: Sequence[str | Path], other: str | Path, progress: bool = False) -> np.ndarray:
    """True for each image of data_paths that has a copy among the images of the class-folder tree `other`.

    A copy is what `find_duplicates` groups: direct matches, or matches
    through a chain of copies (A~B~C). Blank images have no copies. The data
    files must be readable images (as `scan_dataset` leaves them); `other`
    is scanned, and its unreadable files are skipped. Raises DatasetError
    when `other` is missing or holds no class folders.
    """
    inside = _thumbnails(data_paths)
    outside: list[np.ndarray] = []
    scan_dataset(other, progress, on_image=lambda _, image: outside.append(thumbnail(image)))
    thumbs = np.concatenate([inside, np.array(outside, np.uint8).reshape(-1, THUMB_SIDE, THUMB_SIDE)])
    compared = np.flatnonzero(thumbs.reshape(len(thumbs), -1).std(axis=1) >= BLANK_STD)
    found = np.zeros(len(inside), bool)
    for group in matching_groups(thumbs[compared], progress):
        members = compared[group]
        if (members >= len(inside)).any():
            found[members[members < len(inside)]] = True
    return found


def thumbnail(image: np.ndarray) -> np.ndarray:
    """The (THUMB_SIDE, THUMB_SIDE) grey thumbnail images are compared by."""
    return to_model_input(image, THUMB_SIDE, 1)[..., 0]


def _thumbnails(paths: Sequence[str | Path]) -> np.ndarray:
    thumbs = np.zeros((len(paths), THUMB_SIDE, THUMB_SIDE), np.uint8)
    for i, path in enumerate(paths):
        thumbs[i] = thumbnail(read_image(path))
    return thumbs


def _check_distinct(folders: list[Path]) -> None:
    resolved = [resolved_output(folder) for folder in folders]  # one line, not a traceback, for a link loop
    for i, a in enumerate(resolved):
        for j, b in enumerate(resolved):
            if i != j and a.is_relative_to(b):
                raise UsageError(f"{folders[i]}: {'is the same folder as' if a == b else 'lies inside'} {folders[j]}; "
                                 "give each folder once")


# ----------------------------------------------------------------------------
# Comparing
# ----------------------------------------------------------------------------


def rank_images(thumbs: np.ndarray) -> np.ndarray:
    """(N, S, S) uint8 thumbnails as float32 mid-ranks of their grey levels (histogram-equalised).

    Equal grey levels share their mean rank, so the result depends only on
    the order of the grey levels, not on their values.
    """
    ranks = np.empty(thumbs.shape, np.float32)
    for start in range(0, len(thumbs), 4096):  # bounded temporaries: 4096 x 256 counts, 4096 x S*S indices
        flat = thumbs[start:start + 4096].reshape(-1, thumbs[0].size).astype(np.intp)
        n = len(flat)
        counts = np.bincount((np.arange(n)[:, None] * 256 + flat).ravel(), minlength=n * 256).reshape(n, 256)
        mid = (np.cumsum(counts, axis=1) - counts + (counts - 1) / 2).astype(np.float32)
        ranks[start:start + n] = np.take_along_axis(mid, flat, axis=1).reshape(n, *thumbs.shape[1:])
    return ranks


def _dct_matrix(size: int, keep: int) -> np.ndarray:
    """The first `keep` rows of the orthonormal DCT-II matrix of order `size`."""
    k, n = np.arange(keep)[:, None], np.arange(size)[None, :]
    matrix = np.cos(np.pi * (2 * n + 1) * k / (2 * size)) * np.sqrt(2 / size)
    matrix[0] /= np.sqrt(2)
    return matrix.astype(np.float32)


def perceptual_hashes(ranks: np.ndarray) -> np.ndarray:
    """One uint64 per rank image: 63 bits, whether each low DCT frequency (8x8, DC left out) is above their median."""
    dct = _dct_matrix(ranks.shape[-1], 8)
    low = (dct @ ranks @ dct.T).reshape(len(ranks), 64)[:, 1:]
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(np.pad(bits, ((0, 0), (1, 0))), axis=1).view(">u8").ravel().astype(np.uint64)


def rank_vectors(ranks: np.ndarray) -> np.ndarray:
    """Blurred rank images as zero-mean unit vectors, so that a dot product is their correlation."""
    blurred = np.stack([cv2.GaussianBlur(r, (3, 3), 0) for r in ranks]).reshape(len(ranks), -1)
    blurred -= blurred.mean(axis=1, keepdims=True)
    return blurred / np.maximum(np.linalg.norm(blurred, axis=1, keepdims=True), 1e-6)


def matching_groups(thumbs: np.ndarray, progress: bool = False) -> list[list[int]]:
    """Indices of the thumbnails that are copies of each other: groups of two or more, each sorted, by first member.

    Each set of equal rank images is compared once, through its first
    member, and then stands for all its members (see the module docstring).
    """
    ranks = rank_images(thumbs)
    members = _equal_sets(ranks)
    first = np.array([indices[0] for indices in members], np.intp)
    linked = group_pairs(matching_pairs(ranks[first], progress), len(first))
    alone = set(range(len(first))).difference(*linked)
    sets = linked + [[k] for k in sorted(alone) if len(members[k]) > 1]
    return sorted((sorted(i for k in group for i in members[k]) for group in sets), key=lambda group: group[0])


def _equal_sets(ranks: np.ndarray) -> list[list[int]]:
    """The indices of equal rank images, set by set, each set and the sets in index order."""
    sets: dict[bytes, list[int]] = {}
    for index, rank in enumerate(ranks):
        # A 128-bit digest stands for the 4 KiB image: equal digests of unequal images are not to be expected.
        sets.setdefault(hashlib.blake2b(rank.tobytes(), digest_size=16).digest(), []).append(index)
    return list(sets.values())


def matching_pairs(ranks: np.ndarray, progress: bool = False) -> np.ndarray:
    """(M, 2) index pairs i < j of rank images (`rank_images`) that are copies: hash candidates, then confirmed."""
    if len(ranks) < 2:
        return np.zeros((0, 2), np.intp)
    candidates = _hash_candidates(perceptual_hashes(ranks), progress)
    if not len(candidates):
        return candidates
    used, local = np.unique(candidates, return_inverse=True)
    vectors = rank_vectors(ranks[used])
    first, second = local.reshape(-1, 2).T
    correlation = np.concatenate([  # 8192 pairs at a time: FER2013 has ~90,000 candidates (750 MB at once)
        np.einsum("ij,ij->i", vectors[first[i:i + 8192]], vectors[second[i:i + 8192]])
        for i in range(0, len(first), 8192)])
    return candidates[correlation >= MIN_CORRELATION]


def _hash_candidates(hashes: np.ndarray, progress: bool) -> np.ndarray:
    """Pairs i < j whose hashes differ in at most HASH_DISTANCE bits (every pair is looked at)."""
    found = []
    starts = range(0, len(hashes), _BLOCK)
    if progress:
        from emorec.progress import bar

        starts = bar(starts, desc="comparing", unit="block")
    for start in starts:
        distances = np.bitwise_count(hashes[start:start + _BLOCK, None] ^ hashes[None, start:])
        rows, cols = np.nonzero(distances <= HASH_DISTANCE)
        above = cols > rows  # each pair once, and no image with itself
        found.append(np.stack([rows[above] + start, cols[above] + start], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), np.intp)


def group_pairs(pairs: np.ndarray, n: int) -> list[list[int]]:
    """Connected groups (two or more members, each sorted) of the graph on n nodes with these edges, by first member."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = {}
    for i in np.unique(pairs):
        members.setdefault(root(i), []).append(int(i))
    return [sorted(group) for _, group in sorted(members.items())]
