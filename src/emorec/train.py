"""Training: load the data, build and compile the model, fit, and write a run folder.

A run folder (`runs/<name>/`) holds:
    weights/best.keras   best epoch on validation accuracy (with emorec metadata)
    weights/last.keras   last epoch
    config.json          the TrainConfig used
    history.json         per-epoch loss, accuracy, val_loss, val_accuracy, lr
    loss.png, accuracy.png   training curves
    eval.json, confusion_matrix.png   the best model on the validation data
    tensorboard/         TensorBoard logs (when TensorFlow is installed)
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import keras

from emorec import data as data_lib
from emorec.config import TrainConfig
from emorec.evaluate import EvalReport, compute_metrics, plot_history, write_report
from emorec.files import new_run_dir, save_figure, write_json
from emorec.model import (ModelInfo, build_model, inference_copy, load_weights_from, model_path, predict_probabilities,
                          read_info, save_model, undo_class_weights)


@dataclass
class RunResult:
    """Where a training run wrote its outputs, and how it went."""

    run_dir: Path
    best_model: Path
    history: dict[str, list[float]]
    report: EvalReport
    seconds: float

    @property
    def best_val_accuracy(self) -> float:
        """Best validation accuracy seen during training."""
        return max(self.history.get("val_accuracy", [float("nan")]))


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


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------


def load_training_data(cfg: TrainConfig, progress: bool = True) -> TrainingData:
    """Load cfg.data (and cfg.val) as datasets or arrays, skipping invalid files with a warning."""
    if data_lib.is_pack(cfg.data):
        return _from_pack(cfg)
    return _from_folders(cfg, progress)


def _from_folders(cfg: TrainConfig, progress: bool) -> TrainingData:
    reports = [data_lib.scan_dataset(cfg.data, progress=progress)]
    if cfg.val:
        reports.append(data_lib.scan_dataset(cfg.val, progress=progress))
        if reports[1].class_names != reports[0].class_names:
            raise data_lib.DatasetError(f"{cfg.val}: classes {reports[1].class_names} differ from {reports[0].class_names}")
    _check_classes(reports[0], cfg.data)
    for report in reports:
        data_lib.warn_invalid(report)
    # Checked before any link tree is made, so a bad dataset leaves nothing behind.
    views = [data_lib.clean_view(r, image_size=cfg.image_size, channels=cfg.channels, progress=progress) for r in reports]
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
    names = reports[0].class_names
    counts = [reports[0].counts[name] for name in names]
    steps = int(train.cardinality())
    return TrainingData(train.prefetch(2), val.prefetch(2), None, names, counts, steps, views)


def _check_classes(report: data_lib.ScanReport, source) -> None:
    if report.empty_classes:
        raise data_lib.DatasetError(f"{source}: class folder(s) with no valid images: {', '.join(report.empty_classes)}")
    if len(report.class_names) < 2:
        raise data_lib.DatasetError(f"{source}: need at least two class folders, found {report.class_names}")


def _from_pack(cfg: TrainConfig) -> TrainingData:
    splits = data_lib.load_pack(cfg.data)
    train = splits.get("train") or next(iter(splits.values()))
    if cfg.val:
        val = data_lib.load_pack(cfg.val).get("val") if data_lib.is_pack(cfg.val) else None
        if val is None:
            raise data_lib.DatasetError(f"{cfg.val}: a pack's training data needs a pack with a 'val' split as --val")
    elif "val" in splits:
        val = splits["val"]
    else:
        train, val = _split_arrays(train, cfg.val_split, cfg.seed)
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


def _split_arrays(data: data_lib.ArrayData, fraction: float, seed: int):
    order = np.random.default_rng(seed).permutation(len(data))
    cut = int(round(len(data) * (1 - fraction)))
    pick = lambda idx: data_lib.ArrayData(data.images[idx], data.labels[idx], data.class_names)  # noqa: E731
    return pick(order[:cut]), pick(order[cut:])


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


class BestWeights(keras.callbacks.Callback):
    """Keeps the weights of the best (by val_accuracy) and of the last epoch, as validation saw them.

    With EMA on, validation sees the averaged weights, so those are the ones kept.
    """

    def __init__(self):
        super().__init__()
        self.best = -np.inf
        self.best_epoch = -1
        self.weights = None
        self.last_weights = None

    def on_epoch_end(self, epoch, logs=None):
        self.last_weights = self.model.get_weights()
        score = (logs or {}).get("val_accuracy", -np.inf)
        if score > self.best:
            self.best, self.best_epoch, self.weights = score, epoch, self.last_weights

    def restore(self, model: keras.Model, last: bool = False) -> None:
        """Put the best (or the last epoch's) weights into model, if any epoch finished."""
        weights = self.last_weights if last else self.weights
        if weights is not None:
            model.set_weights(weights)


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


def make_callbacks(cfg: TrainConfig, run_dir: Path, best: BestWeights) -> list[keras.callbacks.Callback]:
    """EMA swap, best-weights tracking, LR and CSV logs, optional early stop / plateau / time limit / TensorBoard."""
    # With EMA the averaged weights go in before validation and stay in for the epoch-end callbacks.
    callbacks = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if cfg.ema else []
    callbacks += [best, LearningRateLog(), keras.callbacks.CSVLogger(str(run_dir / "results.csv"))]
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
    """Train a model as cfg says and write a run folder; returns where and how well."""
    if not cfg.data:
        raise data_lib.DatasetError("no training data given")
    if cfg.weights:
        read_info(model_path(cfg.weights))  # a missing or foreign file fails before the data loads
    keras.utils.set_random_seed(cfg.seed)
    data = load_training_data(cfg, progress)
    run_dir = new_run_dir(cfg.project, cfg.run_name, cfg.exist_ok)
    cfg.save(run_dir / "config.json")
    try:
        return _fit_and_save(cfg, data, run_dir, progress)
    finally:
        for folder in data.cleanup:
            shutil.rmtree(folder, ignore_errors=True)


def _fit_and_save(cfg: TrainConfig, data: TrainingData, run_dir: Path, progress: bool) -> RunResult:
    num_classes = len(data.class_names)
    keras.config.set_dtype_policy("mixed_bfloat16" if cfg.mixed_precision else "float32")
    try:  # layers keep the policy they were built with; the global one goes back at once
        model = build_model(cfg.arch, (cfg.image_size, cfg.image_size, cfg.channels), num_classes,
                            augment=cfg.augment, dropout=cfg.dropout, seed=cfg.seed)
    finally:
        keras.config.set_dtype_policy("float32")
    if cfg.weights and not load_weights_from(model, cfg.weights, data.class_names):
        warnings.warn(f"{cfg.weights}: other classes than {data.class_names}; the classifier starts afresh", stacklevel=2)
    model.compile(optimizer=make_optimizer(cfg, data.steps_per_epoch), loss=make_loss(cfg, num_classes),
                  metrics=["accuracy"])
    best = BestWeights()
    started = time.monotonic()
    weights = class_weights(data.class_counts, cfg.class_weight)
    fit_args = dict(epochs=cfg.epochs, class_weight=weights,
                    callbacks=make_callbacks(cfg, run_dir, best), verbose=1 if progress and sys.stdout.isatty() else 2)
    if isinstance(data.train, tuple):
        images, targets = data.train
        history = model.fit(images, targets, batch_size=cfg.batch_size, shuffle=True,
                            validation_data=data.val, validation_batch_size=512, **fit_args)
    else:
        history = model.fit(data.train, validation_data=data.val, shuffle=False, **fit_args)  # reshuffled by tf.data
    seconds = time.monotonic() - started
    info = ModelInfo(class_names=data.class_names, image_size=cfg.image_size, color_mode=cfg.color_mode, arch=cfg.arch,
                     extra={"best_epoch": best.best_epoch + 1, "train_seconds": round(seconds, 1), "recipe": cfg.recipe})
    undone = list(weights.values()) if weights else None  # in class order
    if undone:
        info.extra["class_weights_undone"] = undone
    best.restore(model, last=True)
    save_model(_for_inference(model, cfg, undone), run_dir / "weights" / "last.keras", info, overwrite=True)
    best.restore(model)
    model = _for_inference(model, cfg, undone)
    best_path = save_model(model, run_dir / "weights" / "best.keras", info, overwrite=True)
    hist = {key: [float(v) for v in values] for key, values in history.history.items()}
    report = _final_report(model, data, run_dir)
    _write_history(hist, run_dir)
    return RunResult(run_dir, best_path, hist, report, seconds)


def _for_inference(model: keras.Model, cfg: TrainConfig, weights: list[float] | None) -> keras.Model:
    """The model as saved: no augmentation, float32, class weights undone at the output."""
    plain = inference_copy(model, cfg.arch, cfg.dropout)
    if weights:
        undo_class_weights(plain, weights)
    return plain


def _final_report(model: keras.Model, data: TrainingData, run_dir: Path) -> EvalReport:
    if data.val_arrays is not None:
        images, labels = data.val_arrays
    else:
        batches = [(x, y) for x, y in data.val.as_numpy_iterator()]
        images = np.concatenate([x for x, _ in batches])
        targets = np.concatenate([y for _, y in batches])
        labels = targets.argmax(axis=1) if targets.shape[-1] > 1 else targets[:, 0].astype(int)
    probs = predict_probabilities(model, images)
    report = compute_metrics(labels, probs.argmax(axis=1), data.class_names)
    write_report(report, run_dir, overwrite=True)
    return report


def _write_history(history: dict[str, list[float]], run_dir: Path) -> None:
    write_json(run_dir / "history.json", history)
    for metric in ("loss", "accuracy"):
        save_figure(plot_history(history, metric), run_dir / f"{metric}.png")
