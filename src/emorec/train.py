"""Training: load the data, build and compile the model, fit, and write a run folder as the run goes.

A run folder (`runs/<name>/`) holds:
    weights/best.keras   best epoch so far on validation accuracy (with emorec metadata), updated every epoch
    weights/last.keras   the last completed epoch, updated every epoch
    config.json          the TrainConfig used, with absolute paths (`emorec train --config` replays it)
    history.json         per-epoch loss, accuracy, val_loss, val_accuracy, lr (updated every epoch)
    results.csv          the same, as CSV
    loss.png, accuracy.png   training curves (updated every epoch)
    eval.json, confusion_matrix.png   the best model on the validation data (written at the end)
    tensorboard/         TensorBoard logs (when TensorFlow is installed)
    resume/              while the run is unfinished: what `emorec train --resume` needs (the training
                         weights with the optimizer state, so step count, schedule position and EMA,
                         plus the history and the early-stopping and plateau counters)
    .emorec.lock         locked while a process trains in the folder: a second train or resume into it is refused

Every file is replaced atomically, so a run stopped at any moment (Ctrl-C, SIGTERM, kill -9, power loss)
leaves the files of its last completed epoch, and `resume` continues from there.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib.util
import io
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

import keras

from emorec import data as data_lib
from emorec import distill
from emorec.catalog import onnx_path
from emorec.config import ConfigError, TrainConfig, check_types, read_config_file
from emorec.errors import EmorecError, UsageError
from emorec.evaluate import EvalReport, compute_metrics, plot_history, write_report
from emorec.files import (InputFileError, atomic_path, atomic_write_bytes, atomic_write_text, check_output_path,
                          new_run_dir, read_limited, save_figure, stat_regular, write_json)
from emorec.labels import LabelledImages, LabelSpec, label_report, read_label_file
from emorec.model import (ModelInfo, build_model, inference_copy, load_model, load_weights_from,
                          predict_probabilities, read_info, save_model, undo_class_weights)

RESUME_DIR = "resume"
LOCK_FILE = ".emorec.lock"  # held (flock) by the one process training in a run folder
MAX_STATE_BYTES = 64 * 2**20  # state.json holds a few numbers per epoch


class TrainingDiverged(EmorecError, ValueError):
    """The loss became NaN or infinite; the run folder keeps the last good epoch."""


class ResumeError(EmorecError, ValueError):
    """A run folder whose saved state does not let the run go on; the message names the file and why."""


class RunInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped the run; run_dir (None if no epoch finished) keeps the completed epochs."""

    def __init__(self, run_dir: Path | None, epochs_done: int):
        super().__init__(f"interrupted after {epochs_done} epoch(s)")
        self.run_dir = run_dir
        self.epochs_done = epochs_done


@dataclass
class RunResult:
    """Where a training run wrote its outputs, and how it went."""

    run_dir: Path
    best_model: Path
    history: dict[str, list[float]]
    report: EvalReport
    seconds: float
    config: TrainConfig

    @property
    def best_val_accuracy(self) -> float:
        """Best validation accuracy seen during training."""
        return max(self.history["val_accuracy"])


@dataclass
class RunState:
    """Where a run stands after its last completed epoch (saved as resume/state.json)."""

    epoch: int = 0  # completed epochs
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0  # training time so far, over every start and resume
    stopped: bool = False  # early stopping or the time limit ended the run
    weights: str = ""  # file in resume/ with the training weights and the optimizer state
    callbacks: dict[str, dict] = field(default_factory=dict)  # counters of early stopping and plateau

    @classmethod
    def load(cls, run_dir: Path, epochs: int | None = None) -> "RunState":
        """The saved state of run_dir, checked like a config (types, known keys, 0 <= epoch <= epochs, and
        when epochs is given, a readable weights file). `train` writes it before the first epoch.

        Raises ResumeError naming resume/state.json (or the weights file) when the run cannot go on from it.
        """
        path = run_dir / RESUME_DIR / "state.json"
        if not os.path.lexists(path):
            raise ResumeError(f"{path}: missing, so where the run stands is unknown; it cannot be resumed "
                              "(train again into it with --exist-ok, or start a new run)")
        try:
            values = json.loads(read_limited(path, MAX_STATE_BYTES))
        except InputFileError as error:
            raise ResumeError(f"{error}; the run cannot be resumed") from None
        except (ValueError, RecursionError):
            raise ResumeError(f"{path}: not valid JSON; the run cannot be resumed") from None
        return cls.from_dict(values, path, epochs)

    @classmethod
    def from_dict(cls, values, path: Path, epochs: int | None = None) -> "RunState":
        """A state from the values of a state.json at path; ResumeError naming path and the key at fault."""
        known = {item.name for item in dataclasses.fields(cls)}
        if not isinstance(values, dict) or set(values) - known:
            extra = ", ".join(sorted(map(str, set(values) - known))) if isinstance(values, dict) else ""
            raise ResumeError(f"{path}: expected a mapping of {', '.join(sorted(known))}"
                              + (f"; unknown key(s): {extra}" if extra else ""))
        try:
            state = cls(**values)
            check_types(state)
            state._check(epochs)
        except ConfigError as error:
            raise ResumeError(f"{path}: {error}; the run cannot be resumed") from None
        if epochs is not None and state.epoch:  # resuming: the weights it names must load
            _check_weights_file(path.parent, state.weights)
        return state

    def save(self, run_dir: Path) -> None:
        """Write resume/state.json of run_dir (atomically)."""
        (run_dir / RESUME_DIR).mkdir(exist_ok=True)
        write_json(run_dir / RESUME_DIR / "state.json", asdict(self))

    def _check(self, epochs: int | None) -> None:
        if not 0 <= self.epoch <= (epochs if epochs is not None else self.epoch):
            raise ConfigError(f"epoch: {self.epoch} is not a completed epoch count of a {epochs}-epoch run", "epoch")
        for key, values in self.history.items():
            if not (isinstance(values, list) and len(values) == self.epoch
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
                raise ConfigError(f"history: {key!r} is not a list of {self.epoch} numbers", "history")
        if self.seconds < 0 or not all(isinstance(v, dict) for v in self.callbacks.values()):
            raise ConfigError("seconds or callbacks: negative time or counters that are not mappings", "callbacks")


def _check_weights_file(folder: Path, name: str) -> None:
    """Raise ResumeError unless name is a readable weights file in folder (HDF5, as Keras writes it)."""
    import h5py

    if not name or Path(name).name != name or not name.endswith(".weights.h5"):
        raise ResumeError(f"{folder / 'state.json'}: weights: {name!r} is not the name of a .weights.h5 file "
                          f"in {folder}")
    path = folder / name
    try:
        stat_regular(path)
        with h5py.File(path, "r"):
            pass
    except (InputFileError, OSError) as error:
        reason = str(error).split(": ", 1)[-1] if isinstance(error, InputFileError) else "truncated or not HDF5"
        raise ResumeError(f"{path}: cannot be read ({reason}); the run cannot be resumed from it") from None


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold the run folder's lock for the block: a second train or resume into the same folder fails at once."""
    import fcntl

    with open(run_dir / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ResumeError(f"{run_dir}: already running in another process (its {LOCK_FILE} is locked)") from None
        yield


@dataclass
class TrainingSources:
    """Checked training inputs, before anything is written: scan reports of class folders, or pack arrays."""

    reports: list[data_lib.ScanReport]  # [train] or [train, val]
    arrays: tuple[data_lib.ArrayData, data_lib.ArrayData] | None = None  # (train, val) from packs
    labelled: list[LabelledImages] | None = None  # [train] or [train, val] with labels from files

    @property
    def class_names(self) -> list[str]:
        """The classes the model will learn, in label order."""
        if self.labelled:
            return self.labelled[0].class_names
        return self.arrays[0].class_names if self.arrays else self.reports[0].class_names


@dataclass
class TrainingData:
    """Train and validation inputs in a form `model.fit` takes, plus what the run needs to know."""

    train: object  # tf.data.Dataset or (images, targets) arrays
    val: object
    val_arrays: tuple[np.ndarray, np.ndarray] | None  # (images, int labels) for the final report
    class_names: list[str]
    class_counts: list[int]
    steps_per_epoch: int
    cleanup: list[Path]
    val_copies: np.ndarray | None = None  # with clean_val: True for each of val_arrays with a copy in the training data


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------


def check_training_data(cfg: TrainConfig, progress: bool = True) -> TrainingSources:
    """Scan cfg.data (and cfg.val) or read the packs, raising DatasetError on what training cannot use.

    Warns about skipped files and about validation data that is also training data. Writes nothing.
    """
    if data_lib.is_pack(cfg.data):
        if cfg.labels:
            raise data_lib.DatasetError(f"{cfg.data}: labels from a file need a folder of images, not a pack")
        return TrainingSources([], _pack_arrays(cfg))
    reports = [data_lib.scan_dataset(cfg.data, progress=progress)]
    if cfg.val:
        reports.append(data_lib.scan_dataset(cfg.val, progress=progress))
        _warn_overlap(reports[0], reports[1])
    for report in reports:
        data_lib.warn_invalid(report)
    if cfg.labels:
        return TrainingSources(reports, labelled=_labelled(cfg, reports))
    if cfg.val and reports[1].class_names != reports[0].class_names:
        raise data_lib.DatasetError(f"{cfg.val}: classes {reports[1].class_names} differ from {reports[0].class_names}")
    _check_classes(reports[0], cfg.data)
    return TrainingSources(reports)


def _labelled(cfg: TrainConfig, reports: list[data_lib.ScanReport]) -> list[LabelledImages]:
    """The images of each report paired with the rows of its label file; notes about left-out rows are warnings."""
    labelled = []
    for report, file in zip(reports, [cfg.labels, cfg.val_labels]):
        labelled.append(label_report(read_label_file(LabelSpec.parse(file, cfg.not_classes, cfg.rename_classes)), report))
    names = labelled[0].class_names
    if len(labelled) > 1 and labelled[1].class_names != names:
        raise data_lib.DatasetError(f"{cfg.val_labels}: classes {labelled[1].class_names} differ from {cfg.labels}'s {names}")
    if not len(labelled[0].targets(cfg.targets, cfg.unsure)[0]):
        raise data_lib.DatasetError(f"{cfg.labels}: no image of {cfg.data} has a usable label")
    val_file, val_images = (cfg.val_labels, labelled[1]) if len(labelled) > 1 else (cfg.labels, labelled[0])
    if not (val_images.majority >= 0).any():  # validation scores the majority label
        raise data_lib.DatasetError(f"{val_file}: no validation image has a majority label, so none can be scored "
                                    "(validation needs rows where one class has more than half the votes)")
    return labelled


def _warn_overlap(train: data_lib.ScanReport, val: data_lib.ScanReport) -> None:
    """Warn when validation images are training images too (same folder, links or the same files)."""
    if train.root.resolve() == val.root.resolve():
        warnings.warn(f"{val.root}: the validation folder is the training folder; val accuracy will not "
                      "measure generalisation", stacklevel=3)
        return
    identity = lambda path: (path.stat().st_dev, path.stat().st_ino)  # noqa: E731  (catches links too)
    seen = {identity(path) for paths in train.files.values() for path in paths}
    shared = sum(identity(path) in seen for paths in val.files.values() for path in paths)
    if shared:
        warnings.warn(f"{val.root}: {shared} validation image(s) are also training images", stacklevel=3)


def load_training_data(cfg: TrainConfig, sources: TrainingSources, workdir: Path | None = None,
                       progress: bool = True) -> TrainingData:
    """Checked sources as datasets or arrays; class-folder data is read through a clean view made in workdir."""
    if sources.arrays is not None:
        return _from_arrays(cfg, *sources.arrays)
    if sources.labelled is not None:
        return _from_label_files(cfg, sources.labelled, progress)
    return _from_folders(cfg, sources.reports, workdir, progress)


def _from_folders(cfg: TrainConfig, reports: list[data_lib.ScanReport], workdir: Path | None,
                  progress: bool) -> TrainingData:
    views = []
    try:
        for report in reports:
            views.append(data_lib.clean_view(report, parent=workdir, image_size=cfg.image_size, channels=cfg.channels,
                                             progress=progress))
        common = dict(
            label_mode="binary" if len(reports[0].class_names) == 2 else "categorical",
            color_mode=cfg.color_mode,
            batch_size=cfg.batch_size,
            image_size=(cfg.image_size, cfg.image_size),
            seed=cfg.seed,
            verbose=False,
        )
        if cfg.val:
            train = keras.utils.image_dataset_from_directory(views[0], shuffle=True, **common)
            val = keras.utils.image_dataset_from_directory(views[1], shuffle=False, **common)
        else:
            train, val = keras.utils.image_dataset_from_directory(
                views[0], validation_split=cfg.val_split, subset="both", shuffle=True, **common
            )
    except BaseException:
        _remove(views)
        raise
    names = reports[0].class_names
    counts = [reports[0].counts[name] for name in names]
    steps = int(train.cardinality())
    return TrainingData(train.prefetch(2), val.prefetch(2), None, names, counts, steps, views)


def _remove(folders: list[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def _check_classes(report: data_lib.ScanReport, source) -> None:
    if report.empty_classes:
        raise data_lib.DatasetError(f"{source}: class folder(s) with no valid images: {', '.join(report.empty_classes)}")
    if len(report.class_names) < 2:
        raise data_lib.DatasetError(f"{source}: need at least two class folders, found {report.class_names}")


def _pack_arrays(cfg: TrainConfig) -> tuple[data_lib.ArrayData, data_lib.ArrayData]:
    splits = data_lib.load_pack(cfg.data, ["train"] if cfg.val else ["train", "val"])
    if "train" not in splits:
        has = ", ".join(data_lib.pack_splits(cfg.data))
        raise data_lib.DatasetError(f"{cfg.data}: no 'train' split (it has: {has})")
    train, sources = splits["train"], {"train": cfg.data}
    if cfg.val:
        val_split = data_lib.load_pack(cfg.val, ["val"]).get("val") if data_lib.is_pack(cfg.val) else None
        if val_split is None:
            raise data_lib.DatasetError(f"{cfg.val}: a pack's training data needs a pack with a 'val' split as --val")
        if Path(cfg.val).resolve() == Path(cfg.data).resolve():
            warnings.warn(f"{cfg.val}: the validation pack is the training pack", stacklevel=3)
        val, sources["val"] = val_split, cfg.val
    elif "val" in splits:
        val, sources["val"] = splits["val"], f"{cfg.data} (its 'val' split)"
    else:
        train, val = _split_arrays(train, cfg.val_split, cfg.seed)
    data_lib.check_splits({"train": train, "val": val}, sources)
    if len(train.class_names) < 2:
        raise data_lib.DatasetError(f"{cfg.data}: need at least two classes, found {train.class_names}")
    return train, val


def _from_arrays(cfg: TrainConfig, train: data_lib.ArrayData, val: data_lib.ArrayData) -> TrainingData:
    train_images, val_images = (data_lib.fit_arrays(d.images, cfg.image_size, cfg.channels) for d in (train, val))
    num_classes = len(train.class_names)
    return TrainingData(
        train=(train_images, _targets(train.labels, num_classes)),
        val=(val_images, _targets(val.labels, num_classes)),
        val_arrays=(val_images, val.labels),
        class_names=train.class_names,
        class_counts=np.bincount(train.labels, minlength=num_classes).tolist(),
        steps_per_epoch=int(np.ceil(len(train) / cfg.batch_size)),
        cleanup=[],
    )


def _from_label_files(cfg: TrainConfig, labelled: list[LabelledImages], progress: bool) -> TrainingData:
    """Images in memory with their targets: file targets for training, the majority class for validation."""
    train = labelled[0]
    keep, targets = train.targets(cfg.targets, cfg.unsure, cfg.folder_weight)
    images = data_lib.load_images([train.paths[i] for i in keep], cfg.image_size, cfg.channels, progress)
    if len(labelled) > 1:
        val = labelled[1]
        sure = np.flatnonzero(val.majority >= 0)
        val_images = data_lib.load_images([val.paths[i] for i in sure], cfg.image_size, cfg.channels, progress)
        val_labels = val.majority[sure]
    else:
        kept, held_out = _split_order(len(keep), cfg.val_split, cfg.seed)
        held_out = held_out[train.majority[keep[held_out]] >= 0]  # scored on the majority, like a val file
        val_images, val_labels = images[held_out], train.majority[keep[held_out]]
        images, targets = images[kept], targets[kept]
    if not len(val_labels):
        raise data_lib.DatasetError(f"{cfg.labels}: no held-out validation image has a majority label; "
                                    "raise --val-split or give --val and --val-labels")
    num_classes = len(train.class_names)
    return TrainingData(
        train=(images, _as_model_targets(targets)),
        val=(val_images, _targets(val_labels, num_classes)),
        val_arrays=(val_images, val_labels),
        class_names=train.class_names,
        class_counts=np.round(targets.sum(axis=0)).astype(int).tolist(),
        steps_per_epoch=int(np.ceil(len(images) / cfg.batch_size)),
        cleanup=[],
    )


def _with_teacher(cfg: TrainConfig, data: TrainingData, run_dir: Path, progress: bool) -> TrainingData:
    """The data with training targets mixed with the teachers' probabilities (see emorec.distill)."""
    images, targets = data.train if isinstance(data.train, tuple) else _as_arrays(data.train)
    say = (lambda line: print(line, flush=True)) if progress else None  # noqa: E731
    teacher = distill.cached_teacher_probabilities(run_dir, cfg.teacher, images, data.class_names, say)
    mixed = distill.mix_targets(targets, teacher, cfg.teacher_weight, cfg.temperature)
    return dataclasses.replace(data, train=(images, mixed))


def _clean_validation(cfg: TrainConfig, sources: TrainingSources, data: TrainingData, progress: bool) -> TrainingData:
    """The data validated each epoch on the val images without a copy in cfg.data; the final report keeps them all."""
    from emorec.duplicates import copies_in

    if sources.labelled is not None:
        val = sources.labelled[1]
        paths = [val.paths[i] for i in np.flatnonzero(val.majority >= 0)]  # the order of _from_label_files
        images, labels = data.val_arrays
    else:
        arrays = data_lib.load_arrays(sources.reports[1], cfg.image_size, cfg.channels, progress)
        paths, images, labels = sources.reports[1].valid_paths, arrays.images, arrays.labels
    copies = copies_in(paths, cfg.data, progress)
    if copies.all():
        raise data_lib.DatasetError(f"{cfg.val}: every validation image has a copy in {cfg.data}; nothing is left "
                                    "to select epochs on")
    if progress:
        print(f"clean validation: {int(copies.sum())} of {len(copies)} val images have a copy in the training data "
              f"and are left out of the epoch selection", flush=True)
    clean = (images[~copies], _targets(labels[~copies], len(data.class_names)))
    return dataclasses.replace(data, val=clean, val_arrays=(images, labels), val_copies=copies)


def _as_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    """All (images, targets) of a batched dataset, in one pass."""
    batches = list(dataset.as_numpy_iterator())
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches]).astype(np.float32)


def _split_arrays(data: data_lib.ArrayData, fraction: float, seed: int):
    pick = lambda idx: data_lib.ArrayData(data.images[idx], data.labels[idx], data.class_names)  # noqa: E731
    kept, held_out = _split_order(len(data), fraction, seed)
    return pick(kept), pick(held_out)


def _split_order(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of range(count): (kept indices, held-out fraction of them)."""
    order = np.random.default_rng(seed).permutation(count)
    cut = int(round(count * (1 - fraction)))
    return order[:cut], order[cut:]


def _as_model_targets(distributions: np.ndarray) -> np.ndarray:
    """Class distributions as the model's output takes them: two classes are one sigmoid, p(second class)."""
    return distributions[:, 1:] if distributions.shape[1] == 2 else distributions


def _targets(labels: np.ndarray, num_classes: int) -> np.ndarray:
    if num_classes == 2:
        return labels.astype("float32")[:, None]
    return keras.utils.to_categorical(labels, num_classes).astype("float32")


# ----------------------------------------------------------------------------
# Optimisation
# ----------------------------------------------------------------------------


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam, AdamW or SGD (Nesterov momentum 0.9) with the configured schedule, weight decay and EMA."""
    rate = _learning_rate(cfg, steps_per_epoch)
    decay = cfg.weight_decay or None
    ema = dict(use_ema=True, ema_momentum=cfg.ema) if cfg.ema else {}
    if cfg.optimizer == "adam":
        optimizer = keras.optimizers.Adam(rate, **ema)
    elif cfg.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(rate, weight_decay=cfg.weight_decay, **ema)
    else:
        optimizer = keras.optimizers.SGD(rate, momentum=0.9, nesterov=True, weight_decay=decay, **ema)
    if decay:
        # Decaying BatchNorm scales and biases only fights the normalisation.
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def _learning_rate(cfg: TrainConfig, steps_per_epoch: int):
    if cfg.schedule != "cosine":
        return cfg.learning_rate
    warmup_epochs = min(cfg.warmup_epochs, cfg.epochs - 1)
    warmup = warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.learning_rate / 100 if warmup else cfg.learning_rate,
        decay_steps=max((cfg.epochs - warmup_epochs) * steps_per_epoch, 1),
        alpha=0.0,
        warmup_target=cfg.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def make_loss(cfg: TrainConfig, num_classes: int) -> keras.losses.Loss:
    """Binary cross-entropy for two classes, categorical cross-entropy otherwise."""
    if num_classes == 2:
        return keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing)
    return keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)


def class_weights(counts: list[int], mode: str) -> dict[int, float] | None:
    """Inverse-frequency weights (mean 1) for mode "balanced", None otherwise.

    Weights are capped at 4x the mean so a tiny class (FER2013's disgust,
    1.5% of images) cannot dominate the gradient.
    """
    if mode != "balanced":
        return None
    counts_arr = np.maximum(np.array(counts, dtype=float), 1)
    weights = counts_arr.sum() / (len(counts_arr) * counts_arr)
    weights = np.minimum(weights, 4.0)
    return {i: float(w) for i, w in enumerate(weights)}


# ----------------------------------------------------------------------------
# Callbacks
# ----------------------------------------------------------------------------


class TimeLimit(keras.callbacks.Callback):
    """Stops training once `minutes` have passed (checked after every batch)."""

    def __init__(self, minutes: float):
        super().__init__()
        self.deadline = time.monotonic() + minutes * 60

    def on_train_batch_end(self, batch, logs=None):
        if time.monotonic() > self.deadline and not self.model.stop_training:
            print("time limit reached; stopping after this epoch's validation")
            self.model.stop_training = True


class LearningRateLog(keras.callbacks.Callback):
    """Adds the current learning rate to each epoch's logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class RunEta(keras.callbacks.Callback):
    """Prints before each epoch how long the whole run will still take, and when it should end.

    Printed at the start of the next epoch rather than at the end of one, so that it follows
    Keras' per-epoch line instead of cutting into its progress bar.
    """

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs
        self.started = self.first_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.started is None:
            self.started, self.first_epoch = time.monotonic(), epoch
            return
        per_epoch = (time.monotonic() - self.started) / (epoch - self.first_epoch)
        left = per_epoch * (self.epochs - epoch)
        finish = time.strftime("%H:%M", time.localtime(time.time() + left))
        print(f"{epoch}/{self.epochs} epochs done, {per_epoch:.0f} s each: about {_duration(left)} left, "
              f"done around {finish} (sooner if early stopping ends the run)", flush=True)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class RunCheckpoint(keras.callbacks.Callback):
    """After every epoch: the inference models, history, CSV and curves, then the state `resume` needs.

    The same idea as keras.callbacks.BackupAndRestore, which keeps only the weights and the epoch number
    in two files written one after the other; here the state file is replaced last and atomically, names
    the weights file it goes with, and also holds the history and the early-stopping and plateau counters.
    A run killed at any moment therefore resumes from a consistent last completed epoch.
    Listed last, so it sees the epoch's logs and counters after every other callback has run.
    """

    COUNTED = (keras.callbacks.EarlyStopping, keras.callbacks.ReduceLROnPlateau)
    STATEFUL = ("wait", "best", "best_epoch", "cooldown_counter")  # their counters

    def __init__(self, run: "_Run", state: RunState, others: list[keras.callbacks.Callback]):
        super().__init__()
        self.run, self.state, self.others = run, state, others
        self.diverged_epoch = None
        self.started = time.monotonic()

    def on_train_begin(self, logs=None):
        # Runs after the other callbacks' own on_train_begin, which reset their counters.
        for callback in self.others:
            for name, value in self.state.callbacks.get(type(callback).__name__, {}).items():
                setattr(callback, name, value)
            if isinstance(callback, keras.callbacks.SwapEMAWeights) and self.state.epoch:
                # The state was saved after the epoch-end swap, so the model holds the averaged weights
                # and the optimizer the raw ones: the next epoch must swap them back first.
                callback._ema_weights_in_model = True

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not all(np.isfinite(logs.get(key, 0.0)) for key in ("loss", "val_loss")):
            self.diverged_epoch = epoch + 1  # this epoch is not kept, and the run stops here
            self.model.stop_training = True
            return
        state = self.state
        for key, value in logs.items():
            state.history.setdefault(key, []).append(float(value))
        state.epoch = epoch + 1
        state.seconds += time.monotonic() - self.started
        self.started = time.monotonic()
        state.stopped = bool(self.model.stop_training)
        self.run.save_models(self.model, logs.get("val_accuracy", float("nan")), state)
        self.run.write_history(state.history)
        self._save_state()

    def _save_state(self):
        folder = self.run.dir / RESUME_DIR
        name = f"epoch-{self.state.epoch:04d}.weights.h5"
        with atomic_path(folder / name, suffix=".weights.h5") as tmp:  # fsynced before state.json names it
            self.model.save_weights(tmp)
        self.state.weights = name
        self.state.callbacks = {type(cb).__name__: {k: _plain(getattr(cb, k)) for k in self.STATEFUL if hasattr(cb, k)}
                                for cb in self.others if isinstance(cb, self.COUNTED)}
        self.state.save(self.run.dir)
        for old in folder.glob("epoch-*.weights.h5"):
            if old.name != name:
                old.unlink()


def _plain(value):
    return None if value is None else (float(value) if isinstance(value, (float, np.floating)) else int(value))


def make_callbacks(cfg: TrainConfig, run_dir: Path) -> list[keras.callbacks.Callback]:
    """NaN stop, EMA swap, LR log, optional early stop / plateau / time limit / TensorBoard."""
    callbacks = [keras.callbacks.TerminateOnNaN()]
    # With EMA the averaged weights go in before validation and stay in for the epoch-end callbacks.
    if cfg.ema:
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    callbacks.append(LearningRateLog())
    if cfg.patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=cfg.patience, mode="max"))
    if cfg.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(cfg.patience // 2, 3)))
    if cfg.time_limit:
        callbacks.append(TimeLimit(cfg.time_limit))
    if importlib.util.find_spec("tensorboard") is not None and keras.backend.backend() == "tensorflow":
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard")))
    return callbacks


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------


def train(cfg: TrainConfig, progress: bool = True) -> RunResult:
    """Train a model as cfg says and write a run folder; returns where and how well.

    Raises RunInterrupted on Ctrl-C / SIGTERM (the completed epochs stay resumable) and
    TrainingDiverged when the loss becomes NaN (the last good epoch is kept).
    """
    if not cfg.data:
        raise data_lib.DatasetError("no training data given")
    data_parallel(cfg)  # a device count this machine cannot give fails before anything is read or written
    cfg = cfg.with_absolute_paths()
    if cfg.weights:
        _check_weights_fit(cfg)  # a missing, foreign or mismatched model fails before the data loads
    distill.check_teachers(cfg.teacher)
    check_output_path(cfg.project, folder=True)  # a file named like the project folder fails before the scan
    sources = check_training_data(cfg, progress)
    run_dir = new_run_dir(cfg.project, cfg.run_name, cfg.exist_ok)
    with run_lock(run_dir):
        shutil.rmtree(run_dir / RESUME_DIR, ignore_errors=True)  # a reused folder's unfinished run starts over
        cfg.save(run_dir / "config.json")
        RunState().save(run_dir)  # a run killed before its first epoch ends resumes from the start
        return _run(cfg, sources, run_dir, RunState(), progress, discard_on_failure=not cfg.exist_ok)


def settings_from_weights(weights: str) -> dict[str, object]:
    """The arch, image_size and color_mode of a saved model (a bundled one by name): the model it can start."""
    info = read_info(onnx_path(weights))
    return {"arch": info.arch, "image_size": info.image_size, "color_mode": info.color_mode}


def _check_weights_fit(cfg: TrainConfig) -> None:
    """ConfigError naming --weights when the saved model cannot start the model cfg builds."""
    settings = settings_from_weights(cfg.weights)
    differ = [f"--{key.replace('_', '-')} {getattr(cfg, key)}" for key, value in settings.items()
              if getattr(cfg, key) != value]
    if differ:
        model = f"a {settings['arch']} model for {settings['image_size']}px {settings['color_mode']} images"
        problem = f"{cfg.weights} is {model}; it cannot start a model with {', '.join(differ)} " \
                  "(leave them out to take the model's)"
        raise ConfigError(f"weights: {problem}", "weights", problem)


def resume(run_dir: str | Path, progress: bool = True) -> RunResult:
    """Continue the run in run_dir from its last completed epoch, with its saved configuration."""
    from emorec.config import train_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no config.json)")
    if not (run_dir / RESUME_DIR).is_dir() and (run_dir / "eval.json").is_file():
        raise UsageError(f"{run_dir}: the run is complete; nothing to resume")
    values = read_config_file(run_dir / "config.json")
    try:
        cfg = train_config(values.pop("recipe", ""), **values)
    except ConfigError as error:
        raise ConfigError(f"{run_dir / 'config.json'}: {error}") from None
    data_parallel(cfg)
    with run_lock(run_dir):
        state = RunState.load(run_dir, cfg.epochs)
        sources = check_training_data(cfg, progress)
        last = run_dir / "weights" / "last.keras"
        if last.is_file() and read_info(last).class_names != sources.class_names:
            raise data_lib.DatasetError(f"{cfg.data}: classes {sources.class_names} are no longer the run's "
                                        f"{read_info(last).class_names}; the run cannot go on with this data")
        return _run(cfg, sources, run_dir, state, progress, discard_on_failure=False)


def _run(cfg: TrainConfig, sources: TrainingSources, run_dir: Path, state: RunState, progress: bool,
         discard_on_failure: bool) -> RunResult:
    _remove(list(run_dir.glob(data_lib.VIEW_PREFIX + "*")))  # left behind by a killed process
    keras.utils.set_random_seed(cfg.seed + state.epoch)  # resumed epochs do not replay the first epochs' order
    try:
        data = load_training_data(cfg, sources, run_dir, progress)
        if cfg.teacher:
            data = _with_teacher(cfg, data, run_dir, progress)
        if cfg.clean_val:
            data = _clean_validation(cfg, sources, data, progress)
        try:
            return _fit_and_save(cfg, data, run_dir, state, progress)
        finally:
            _remove(data.cleanup)
    except BaseException as error:
        done = _epochs_done(run_dir)
        if done == 0 and discard_on_failure:  # nothing worth keeping: leave no empty run folder
            shutil.rmtree(run_dir, ignore_errors=True)
        if isinstance(error, KeyboardInterrupt):
            raise RunInterrupted(run_dir if run_dir.exists() else None, done) from error
        raise


def _epochs_done(run_dir: Path) -> int:
    """Completed epochs of a run that just stopped (0 when its state cannot be read)."""
    try:
        return RunState.load(run_dir).epoch
    except ResumeError:
        return 0


class _Run:
    """One run's folder, and what writing its models and history needs."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, class_names: list[str], undone: list[float] | None,
                 resumed: bool):
        self.cfg, self.dir, self.class_names, self.undone = cfg, run_dir, class_names, undone
        self.plain: keras.Model | None = None  # the saved network, built once and refreshed each epoch
        self.best_score, self.best_epoch = -np.inf, 0
        best = self.best_path
        if resumed and best.is_file():  # the best model so far says how good it was
            extra = read_info(best).extra
            self.best_score, self.best_epoch = extra.get("val_accuracy", -np.inf), extra.get("best_epoch", 0)

    @property
    def best_path(self) -> Path:
        """weights/best.keras of this run."""
        return self.dir / "weights" / "best.keras"

    def save_models(self, model: keras.Model, val_accuracy: float, state: RunState) -> None:
        """Write weights/last.keras and, when val_accuracy is the best so far, weights/best.keras."""
        improved = bool(val_accuracy > self.best_score)  # False for NaN
        if improved:
            self.best_score, self.best_epoch = float(val_accuracy), state.epoch
        extra = {"best_epoch": self.best_epoch, "val_accuracy": self.best_score, "train_seconds": round(state.seconds, 1),
                 "recipe": self.cfg.recipe}
        if self.undone:
            extra["class_weights_undone"] = self.undone
        info = ModelInfo(class_names=self.class_names, image_size=self.cfg.image_size, color_mode=self.cfg.color_mode,
                         arch=self.cfg.arch, extra=extra)
        self.plain = _for_inference(model, self.cfg, self.undone, into=self.plain)
        last = save_model(self.plain, self.dir / "weights" / "last.keras", info, overwrite=True)
        if improved or not self.best_path.is_file():
            atomic_write_bytes(self.best_path, last.read_bytes())  # the same model: a copy is cheaper than a save

    def write_history(self, history: dict[str, list[float]]) -> None:
        """history.json, results.csv and the loss and accuracy curves."""
        write_json(self.dir / "history.json", history)
        keys = sorted(history)
        table = io.StringIO()
        writer = csv.writer(table, lineterminator="\n")
        writer.writerow(["epoch", *keys])
        for index in range(len(history.get("loss", []))):
            writer.writerow([index + 1, *(history[key][index] for key in keys)])
        atomic_write_text(self.dir / "results.csv", table.getvalue())
        for metric in ("loss", "accuracy"):
            save_figure(plot_history(history, metric), self.dir / f"{metric}.png")


def data_parallel(cfg: TrainConfig) -> keras.distribution.DataParallel | None:
    """The keras.distribution.DataParallel that cfg.devices asks for (None for one device).

    Raises ConfigError (naming --devices) when the backend is not JAX, when
    fewer devices exist than asked for, or when the batch does not split
    evenly across them.
    """
    if cfg.devices == "1":
        return None
    backend = keras.backend.backend()
    if backend != "jax":
        raise ConfigError(f"devices={cfg.devices} needs the JAX backend (KERAS_BACKEND=jax), not {backend}", "devices",
                          f"training on several devices needs the JAX backend (set KERAS_BACKEND=jax); this is {backend}")
    available = keras.distribution.list_devices()
    count = len(available) if cfg.devices == "all" else int(cfg.devices)
    if count > len(available):
        problem = f"{count} devices asked for, but this machine has {len(available)}: {', '.join(available)}"
        raise ConfigError(f"devices={problem}", "devices", problem)
    if cfg.batch_size % count:
        problem = f"a batch of {cfg.batch_size} does not split evenly over {count} devices; use a multiple of {count}"
        raise ConfigError(f"devices={problem}", "devices", problem)
    return keras.distribution.DataParallel(devices=available[:count]) if count > 1 else None


def _even_batches(data: TrainingData, devices: int) -> TrainingData:
    """The data with every batch a multiple of devices long, as sharding needs: a last, partial batch is cut
    to a multiple (at most devices - 1 images per epoch left out of training and of the per-epoch
    validation; the final report still uses every validation image)."""
    if isinstance(data.train, tuple):
        trim = lambda arrays: tuple(a[: len(a) - len(a) % devices] for a in arrays)  # noqa: E731
        return dataclasses.replace(data, train=trim(data.train), val=trim(data.val))
    import tensorflow as tf

    def cut(images, targets):
        keep = tf.shape(images)[0] - tf.shape(images)[0] % devices
        return images[:keep], targets[:keep]

    even = lambda dataset: dataset.map(cut).filter(lambda images, _: tf.shape(images)[0] > 0)  # noqa: E731
    return dataclasses.replace(data, train=even(data.train), val=even(data.val))


def _fit_and_save(cfg: TrainConfig, data: TrainingData, run_dir: Path, state: RunState, progress: bool) -> RunResult:
    with _on_devices(cfg, data, progress) as batches:  # the model is built inside: its variables live there
        run, checkpoint = _fit(cfg, data, batches, run_dir, state, progress)
    if checkpoint.diverged_epoch:
        raise TrainingDiverged(_diverged_message(run_dir, checkpoint.diverged_epoch))
    best, _ = load_model(run.best_path)
    report = _final_report(best, data, run_dir, (cfg.val_labels or cfg.labels) if cfg.labels else "folders", cfg.data)
    shutil.rmtree(run_dir / RESUME_DIR, ignore_errors=True)  # complete: nothing left to resume
    return RunResult(run_dir, run.best_path, state.history, report, state.seconds, cfg)


def _fit(cfg: TrainConfig, data: TrainingData, batches: TrainingData, run_dir: Path, state: RunState,
         progress: bool) -> tuple["_Run", "RunCheckpoint"]:
    """Build, compile and fit the model on batches (data, split evenly over the devices); the run and its checkpoint."""
    num_classes = len(data.class_names)
    keras.config.set_dtype_policy("mixed_bfloat16" if cfg.mixed_precision else "float32")
    try:  # layers keep the policy they were built with; the global one goes back at once
        model = build_model(cfg.arch, (cfg.image_size, cfg.image_size, cfg.channels), num_classes,
                            augment=cfg.augment, dropout=cfg.dropout, seed=cfg.seed)
    finally:
        keras.config.set_dtype_policy("float32")
    if cfg.weights and not state.epoch:
        shared = load_weights_from(model, cfg.weights, data.class_names)
        if shared != data.class_names:
            new = [name for name in data.class_names if name not in shared]
            warnings.warn(f"{cfg.weights}: the classifier starts afresh for {', '.join(new)}", stacklevel=2)
    model.compile(optimizer=make_optimizer(cfg, data.steps_per_epoch), loss=make_loss(cfg, num_classes),
                  metrics=["accuracy"])
    if state.epoch:
        model.optimizer.build(model.trainable_variables)
        _load_training_weights(model, run_dir / RESUME_DIR / state.weights)
    weights = class_weights(data.class_counts, cfg.class_weight)
    undone = list(weights.values()) if weights else None  # in class order
    run = _Run(cfg, run_dir, data.class_names, undone, resumed=state.epoch > 0)
    callbacks = make_callbacks(cfg, run_dir)
    checkpoint = RunCheckpoint(run, state, list(callbacks))
    callbacks += [checkpoint] + ([RunEta(cfg.epochs)] if progress else [])
    if state.epoch < cfg.epochs and not state.stopped:
        fit_args = dict(epochs=cfg.epochs, initial_epoch=state.epoch, class_weight=weights, callbacks=callbacks,
                        verbose=(1 if sys.stdout.isatty() else 2) if progress else 0)
        if isinstance(batches.train, tuple):
            images, targets = batches.train
            model.fit(images, targets, batch_size=cfg.batch_size, shuffle=True,
                      validation_data=batches.val, validation_batch_size=512, **fit_args)
        else:
            model.fit(batches.train, validation_data=batches.val, shuffle=False, **fit_args)  # reshuffled by tf.data
    return run, checkpoint


def _load_training_weights(model: keras.Model, path: Path) -> None:
    """The weights, step, schedule position and EMA of a run's last completed epoch; ResumeError if they do not fit."""
    try:
        model.load_weights(path)
    except (OSError, ValueError, KeyError) as error:
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise ResumeError(f"{path}: cannot be loaded into this run's model ({reason})") from None


@contextlib.contextmanager
def _on_devices(cfg: TrainConfig, data: TrainingData, progress: bool):
    """The DataParallel distribution of cfg.devices for the block, and data whose batches split evenly
    over its devices (on one device: no distribution, the data as it is)."""
    distribution = data_parallel(cfg)
    if distribution is None:
        yield data
        return
    devices = distribution.device_mesh.devices.ravel().tolist()
    if progress:
        print(f"data-parallel training on {len(devices)} devices ({', '.join(devices)}): {cfg.batch_size // len(devices)} "
              f"images of each batch of {cfg.batch_size} per device", flush=True)
    with distribution.scope():
        yield _even_batches(data, len(devices))


def _diverged_message(run_dir: Path, epoch: int) -> str:
    kept = (f"the models of epoch {epoch - 1} are kept in {run_dir / 'weights'}" if epoch > 1
            else "no epoch completed, so nothing was kept")
    return f"the loss became NaN or infinite in epoch {epoch}, so training stopped; {kept}. " \
           "A lower --learning-rate usually helps"


def _for_inference(model: keras.Model, cfg: TrainConfig, weights: list[float] | None,
                   into: keras.Model | None = None) -> keras.Model:
    """The model as saved: no augmentation, float32, class weights undone at the output (into: refresh that copy)."""
    plain = inference_copy(model, cfg.arch, cfg.dropout, into=into)
    if weights:
        undo_class_weights(plain, weights)
    return plain


def _final_report(model: keras.Model, data: TrainingData, run_dir: Path, label_source: str = "folders",
                  copies_of: str | None = None) -> EvalReport:
    if data.val_arrays is not None:
        images, labels = data.val_arrays
    else:
        images, targets = _as_arrays(data.val)
        labels = targets.argmax(axis=1) if targets.shape[-1] > 1 else targets[:, 0].astype(int)
    probs = predict_probabilities(model, images)
    report = compute_metrics(labels, probs.argmax(axis=1), data.class_names)
    report.labels = label_source  # a label file's majority, or the folder names
    if data.val_copies is not None:
        copies, predicted = data.val_copies, probs.argmax(axis=1)
        report.copies_of, report.copies = copies_of, int(copies.sum())
        report.clean = compute_metrics(labels[~copies], predicted[~copies], data.class_names)
        report.clean.labels = label_source
    write_report(report, run_dir, overwrite=True)
    return report
