"""Visualization of a dataset: a grid of sample images per class and a class-count chart."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emorec.data import DatasetError, ScanReport
from emorec.files import OutputPathError, save_figure
from emorec.images import read_image

THUMBNAIL = 256  # largest side drawn per sample: a grid cell is about 150 pixels wide


def sample_grid(report: ScanReport, per_class: int = 8, seed: int = 0):
    """A figure with one row per class and up to per_class random images in each."""
    from matplotlib.figure import Figure

    rng = np.random.default_rng(seed)
    names = report.class_names
    figure = Figure(figsize=(1.3 * per_class, 1.4 * len(names)))
    axes = figure.subplots(len(names), per_class, squeeze=False)
    for row, name in enumerate(names):
        files = report.files[name]
        picks = rng.choice(len(files), size=min(per_class, len(files)), replace=False) if files else []
        for col, axis in enumerate(axes[row]):
            axis.axis("off")
            if col < len(picks):
                axis.imshow(_thumbnail(read_image(files[picks[col]]))[..., ::-1])
        axes[row][0].set_title(f"{name} ({len(files)})", loc="left", fontsize=9)
    figure.suptitle(f"{report.root}: {report.total} images in {len(names)} classes")
    return figure


def _thumbnail(image: np.ndarray, side: int = THUMBNAIL) -> np.ndarray:
    """image shrunk to fit side x side: Matplotlib would otherwise resample a large photo in float64."""
    import cv2

    scale = side / max(image.shape[:2])
    if scale >= 1:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def count_chart(report: ScanReport):
    """A bar chart of valid images per class, with the count on each bar."""
    from matplotlib.figure import Figure

    counts = report.counts
    figure = Figure(figsize=(1.0 + 0.9 * len(counts), 3.5))
    axis = figure.subplots()
    bars = axis.bar(list(counts), list(counts.values()), color="tab:blue")
    axis.bar_label(bars)
    axis.set_ylabel("images")
    axis.set_title("images per class")
    axis.tick_params(axis="x", rotation=30)
    return figure


def save_overview(report: ScanReport, out: str | Path, per_class: int = 8, seed: int = 0,
                  overwrite: bool = False) -> tuple[Path, Path]:
    """Save the sample grid to out and the count chart beside it as <out stem>_counts.png."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise OutputPathError(f"{out}: the output must be a .png file")
    if report.total == 0:
        raise DatasetError(f"{report.root}: no valid images to show")
    counts_path = out.with_name(f"{out.stem}_counts.png")
    for path in (out, counts_path):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path}: already exists (use --exist-ok to replace it)")
    grid = save_figure(sample_grid(report, per_class, seed), out, overwrite)
    chart = save_figure(count_chart(report), counts_path, overwrite)
    return grid, chart
