"""Evaluation: metrics on held-out data, JSON reports and plots (confusion matrix, history curves)."""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from emorec import data as data_lib
from emorec.config import tta_mode
from emorec.extras import missing_message
from emorec.files import save_figure, write_json
from emorec.labels import LabelSpec, label_report, read_label_file
from emorec.runtime import Runtime, load_runtime, probabilities

PREDICT_CHUNK = 512  # images per progress step while evaluating


@dataclass
class EvalReport:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix."""

    accuracy: float
    macro_f1: float
    class_names: list[str]
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    images: int
    tta: str = "none"  # test-time augmentation used: none, flip or multi
    labels: str = "folders"  # where the true labels came from: the folder names, or a label file (its majority)
    no_majority: int = 0  # labelled images left out of the figures above for want of a majority
    vote_cross_entropy: float | None = None  # mean cross-entropy of the predictions against the vote distributions
    copies_of: str | None = None  # a folder (the training data) whose copies `clean` leaves out
    copies: int = 0  # evaluated images with a copy in copies_of
    clean: EvalReport | None = None  # the same figures on the images without a copy in copies_of

    def to_dict(self) -> dict:
        """Plain dict, ready for JSON."""
        return asdict(self)

    def table(self) -> str:
        """A printable per-class table with the overall figures."""
        width = max(len("class"), *(len(n) for n in self.class_names))
        lines = [f"{'class':<{width}}  precision  recall     f1  support"]
        for i, name in enumerate(self.class_names):
            lines.append(
                f"{name:<{width}}  {self.precision[i]:9.3f}  {self.recall[i]:6.3f}  {self.f1[i]:5.3f}  {self.support[i]:7d}"
            )
        lines.append(f"accuracy {self.accuracy:.4f}   macro-F1 {self.macro_f1:.4f}   images {self.images}")
        if self.labels != "folders":
            lines.append(f"true labels: the majority of {self.labels}" +
                         (f" ({self.no_majority} image(s) without one left out)" if self.no_majority else ""))
        if self.vote_cross_entropy is not None:
            lines.append(f"cross-entropy against the vote distributions {self.vote_cross_entropy:.4f}")
        if self.clean is not None:
            lines.append(f"without copies in {self.copies_of}: accuracy {self.clean.accuracy:.4f}   macro-F1 "
                         f"{self.clean.macro_f1:.4f}   images {self.clean.images} ({self.copies} with a copy left out)")
        return "\n".join(lines)


def compute_metrics(labels: np.ndarray, predicted: np.ndarray, class_names: list[str], tta: str = "none") -> EvalReport:
    """Metrics from integer true labels and predicted labels.

    Macro-F1 averages the F1 of the classes present in the data (support > 0): a class the data
    does not contain has no F1 to speak of, and counting it as 0 would understate the model.
    """
    n = len(class_names)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    true_pos = np.diag(confusion).astype(float)
    precision = _safe_divide(true_pos, confusion.sum(axis=0))
    recall = _safe_divide(true_pos, confusion.sum(axis=1))
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    accuracy = float(true_pos.sum() / max(len(labels), 1))
    present = confusion.sum(axis=1) > 0
    return EvalReport(
        accuracy=accuracy,
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        class_names=list(class_names),
        precision=precision.round(4).tolist(),
        recall=recall.round(4).tolist(),
        f1=f1.round(4).tolist(),
        support=confusion.sum(axis=1).tolist(),
        confusion=confusion.tolist(),
        images=int(len(labels)),
        tta=tta,
    )


def _safe_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=float), where=b > 0)


def load_eval_data(source: str | Path, class_names: list[str], image_size: int, channels: int, progress: bool = True):
    """Images and labels of a class-folder tree (or a pack's "test" or else "val" split), indexed by class_names.

    Raises DatasetError when a folder class is unknown to the model, or when a pack has only a training split
    (scoring the data a model was trained on would report a figure that means nothing).
    """
    images, labels, _ = _load_eval_files(source, class_names, image_size, channels, progress)
    return images, labels


def _load_eval_files(source: str | Path, class_names: list[str], image_size: int, channels: int, progress: bool):
    """load_eval_data, and the file of each image (None for a pack, whose images have no files)."""
    paths = None
    if data_lib.is_pack(source):
        splits = data_lib.pack_splits(source)
        held_out = [split for split in ("test", "val") if split in splits]
        if not held_out:
            raise data_lib.DatasetError(f"{source}: no 'test' or 'val' split to evaluate on (it has: {', '.join(splits)})")
        arrays = data_lib.load_pack(source, held_out[:1])[held_out[0]]  # the training split is never read
        arrays.images = data_lib.fit_arrays(arrays.images, image_size, channels)
    else:
        report = data_lib.scan_dataset(source, progress=progress)
        data_lib.warn_invalid(report)
        arrays = data_lib.load_arrays(report, image_size, channels, progress=progress)
        paths = report.valid_paths  # the order load_arrays reads them in
    unknown = sorted(set(arrays.class_names) - set(class_names))
    if unknown:
        raise data_lib.DatasetError(f"{source}: classes {unknown} are not among the model's {class_names}")
    remap = np.array([class_names.index(name) for name in arrays.class_names])
    return arrays.images, remap[arrays.labels] if len(arrays) else arrays.labels, paths


def evaluate_model(runtime: Runtime, source: str | Path, tta: bool | str = False, progress: bool = True,
                   label_spec: LabelSpec | None = None, exclude_copies_of: str | Path | None = None) -> EvalReport:
    """Evaluate a loaded model (see emorec.runtime.load_runtime) on a class-folder tree or pack.

    Every image is classified whole, as `predict` classifies a face crop
    (`faces.is_face_crop`), so the two agree on crops like FER2013's.

    With label_spec, the true label of an image is the majority of its row in that file
    (images without one are left out and counted), classes are matched by name (a
    label class the model lacks counts as an error), and vote rows also give the
    cross-entropy of the predictions against the vote distributions.
    With exclude_copies_of (a class-folder tree: the training data), the report's
    `clean` part repeats the figures on the images without a copy there
    (emorec.duplicates.copies_in); source must then be a folder.
    """
    info = runtime.info
    if exclude_copies_of is not None:
        _check_copies_source(source, exclude_copies_of)
    if label_spec is not None:
        return _evaluate_on_label_file(runtime, source, tta, progress, label_spec, exclude_copies_of)
    images, truth, paths = _load_eval_files(source, info.class_names, info.image_size, info.channels, progress)
    if len(truth) == 0:
        raise data_lib.DatasetError(f"{source}: no valid images to evaluate on")
    predicted = _predict(runtime, images, tta, progress).argmax(axis=1)
    result = compute_metrics(truth, predicted, info.class_names, tta_mode(tta))
    if exclude_copies_of is not None:
        _add_clean(result, truth, predicted, paths, exclude_copies_of, progress)
    return result


def _check_copies_source(source: str | Path, other: str | Path) -> None:
    """DatasetError before any work when copies cannot be looked for: a pack to evaluate, or no such folder."""
    if data_lib.is_pack(source):
        raise data_lib.DatasetError(f"{source}: copies are looked for among files: evaluate class folders, not a pack")
    if not Path(other).is_dir():
        raise data_lib.DatasetError(f"{other}: no such folder (the images whose copies are left out)")


def _add_clean(report: EvalReport, truth: np.ndarray, predicted: np.ndarray, paths: list[Path], other: str | Path,
               progress: bool) -> None:
    """Set report.clean: the figures on the images without a copy in other."""
    from emorec.duplicates import copies_in

    copies = copies_in(paths, other, progress)
    report.copies_of, report.copies = str(other), int(copies.sum())
    report.clean = compute_metrics(truth[~copies], predicted[~copies], report.class_names, report.tta)
    report.clean.labels, report.clean.no_majority = report.labels, report.no_majority


def _predict(runtime: Runtime, images: np.ndarray, tta: bool | str, progress: bool) -> np.ndarray:
    from emorec.progress import bar as progress_bar

    parts = []
    with progress_bar(total=len(images), desc="predicting", unit="image", enabled=progress) as bar:
        for start in range(0, len(images), PREDICT_CHUNK):
            parts.append(probabilities(runtime, images[start:start + PREDICT_CHUNK], tta=tta))
            bar.update(len(parts[-1]))
    return np.concatenate(parts)


def _evaluate_on_label_file(runtime: Runtime, source: str | Path, tta: bool | str, progress: bool,
                            spec: LabelSpec, exclude_copies_of: str | Path | None) -> EvalReport:
    info = runtime.info
    table = read_label_file(spec)  # a bad label file fails before the folder is read
    report = data_lib.scan_dataset(source, progress=progress)
    data_lib.warn_invalid(report)
    labelled = label_report(table, report)
    if not len(labelled):
        raise data_lib.DatasetError(f"{source}: no image has a row in {spec.file}")
    names = info.class_names + [name for name in labelled.class_names if name not in info.class_names]
    where = np.array([names.index(name) for name in labelled.class_names])
    images = data_lib.load_images(labelled.paths, info.image_size, info.channels, progress)
    probs = _predict(runtime, images, tta, progress)
    sure = labelled.majority >= 0
    truth, predicted = where[labelled.majority[sure]], probs[sure].argmax(axis=1)
    result = compute_metrics(truth, predicted, names, tta_mode(tta))
    result.labels, result.no_majority = str(spec.file), int((~sure).sum())
    if table.layout == "votes":
        result.vote_cross_entropy = _vote_cross_entropy(labelled.distribution, where, probs)
    if exclude_copies_of is not None:
        paths = [path for path, kept in zip(labelled.paths, sure) if kept]
        _add_clean(result, truth, predicted, paths, exclude_copies_of, progress)
    return result


def _vote_cross_entropy(distribution: np.ndarray, where: np.ndarray, probs: np.ndarray) -> float:
    """Mean -sum(v log p) over the model's classes, each row's votes renormalised to the classes the model has.

    where: the model's index of each label class (at or past the model's class count for a class it lacks).
    """
    own = where < probs.shape[1]
    votes = np.zeros(probs.shape, np.float64)
    votes[:, where[own]] = distribution[:, own]
    mass = votes.sum(axis=1)
    rows = mass > 0
    votes = votes[rows] / mass[rows, None]
    return float(-(votes * np.log(np.clip(probs[rows], 1e-7, 1.0))).sum(axis=1).mean())


def evaluate(model: str | Path | None, source: str | Path, out_dir: str | Path | None = None, tta: bool | str = False,
             progress: bool = True, overwrite: bool = False, label_spec: LabelSpec | None = None,
             exclude_copies_of: str | Path | None = None) -> EvalReport:
    """Load a saved model (.onnx or .keras; None: the bundled one), evaluate it on source and, if out_dir is set, write the report and plots there.

    exclude_copies_of: also report the figures without the images that have a copy in that folder (see evaluate_model).
    """
    report = evaluate_model(load_runtime(model), source, tta=tta, progress=progress, label_spec=label_spec,
                            exclude_copies_of=exclude_copies_of)
    if out_dir is not None:
        write_report(report, out_dir, overwrite=overwrite)
    return report


def write_report(report: EvalReport, out_dir: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """Write eval.json and confusion_matrix.png into out_dir; returns their paths.

    Without Matplotlib (the base install) only eval.json is written, with a
    warning that names the install that adds the plot.
    """
    out_dir = Path(out_dir)
    suffix = {"none": "", "flip": "_tta"}.get(report.tta, f"_tta_{report.tta}")
    paths = {"json": write_json(out_dir / f"eval{suffix}.json", report.to_dict(), overwrite)}
    if importlib.util.find_spec("matplotlib") is None:
        warnings.warn(f"no confusion_matrix{suffix}.png: {missing_message('matplotlib', 'the plot')}", stacklevel=2)
        return paths
    paths["confusion"] = save_figure(plot_confusion(report), out_dir / f"confusion_matrix{suffix}.png", overwrite)
    return paths


def plot_confusion(report: EvalReport):
    """A row-normalized confusion matrix figure, with counts in each cell."""
    from matplotlib.figure import Figure

    counts = np.array(report.confusion)
    rates = _safe_divide(counts.astype(float), counts.sum(axis=1, keepdims=True).repeat(counts.shape[1], axis=1))
    figure = Figure(figsize=(1.0 + 0.9 * len(counts), 0.8 + 0.8 * len(counts)))
    axes = figure.subplots()
    axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(counts):
        colour = "white" if rates[row, col] > 0.5 else "black"
        axes.text(col, row, f"{rates[row, col]:.2f}\n{count}", ha="center", va="center", fontsize=8, color=colour)
    ticks = range(len(report.class_names))
    axes.set_xticks(ticks, report.class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, report.class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"accuracy {report.accuracy:.3f}, macro-F1 {report.macro_f1:.3f}" + ("" if report.tta == "none" else f" (TTA: {report.tta})"))
    return figure


def plot_history(history: dict[str, list[float]], metric: str):
    """One training curve (e.g. "loss" or "accuracy"), train vs validation, per epoch."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    values = history.get(metric, [])
    epochs = np.arange(1, len(values) + 1)
    axes.plot(epochs, values, marker=".", label=f"train {metric}")
    if f"val_{metric}" in history:
        axes.plot(epochs, history[f"val_{metric}"], marker=".", label=f"val {metric}")
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3)
    axes.legend()
    return figure
