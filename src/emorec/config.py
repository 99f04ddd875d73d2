"""Configuration objects that flow from the CLI (or your code) into the stages.

Every field has a default, a type and a one-line meaning. Values are checked
when the object is built, so a typo fails at once with a clear message rather
than an hour into training. Precedence: defaults < recipe < config file < explicit values.

Every field's value must have the field's type, from a file or from code alike:
true/false for switches (a quoted "false" is text, not a switch, and is refused),
whole numbers for counts (5.0 is taken as 5, 5.5 is refused), numbers for rates,
text for names and paths. Config files are JSON or YAML of at most MAX_CONFIG_BYTES,
regular files only; YAML aliases (`*name`) and documents nested deeper than
MAX_CONFIG_DEPTH levels are refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from emorec.catalog import BUNDLED_NAMES, DEFAULT_MODEL
from emorec.errors import EmorecError

ARCHITECTURES = ("seed", "vgg", "resnet", "compact-s", "compact-m", "compact-l")
COLOR_MODES = ("grayscale", "rgb")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "plateau")
CLASS_WEIGHTS = ("none", "balanced")
LABEL_TARGETS = ("soft", "majority")  # see emorec.labels
LABEL_UNSURE = ("drop", "soft")
TTA_MODES = ("none", "flip", "multi")  # test-time augmentation: see emorec.model.tta_views
ENGINES = ("local", "ray")  # where `emorec predict` runs: see emorec.distributed
MAX_CONFIG_BYTES = 2**20  # a config file is a few hundred bytes; a larger one is refused unread
MAX_CONFIG_DEPTH = 20  # config values are flat; deeper nesting is refused before it is built
MAX_SEED = 2**32 - 1  # the largest seed NumPy and Keras take


class ConfigError(EmorecError, ValueError):
    """A configuration value is unknown or out of range; `key` names the field when there is one."""

    def __init__(self, message: str, key: str | None = None, problem: str | None = None):
        super().__init__(message)
        self.key = key
        self.problem = problem or message


def _field(default: Any, help: str) -> Any:
    """A dataclass field whose help text the CLI shows."""
    if isinstance(default, list):
        return field(default_factory=list, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything `emorec train` needs; saved as config.json in every run folder."""

    data: str = _field("", "class-folder tree (or a .npz/.npz.xz pack made by `emorec pack`)")
    val: str | None = _field(None, "separate validation tree/pack; else val_split of data")
    val_split: float = _field(0.2, "fraction of data held out for validation when val is None")
    arch: str = _field("seed", "architecture name, one of ARCHITECTURES")
    epochs: int = _field(30, "maximum number of epochs")
    batch_size: int = _field(64, "images per step")
    image_size: int = _field(48, "images are resized to image_size x image_size")
    color_mode: str = _field("grayscale", "grayscale or rgb")
    optimizer: str = _field("adam", "adam, adamw or sgd (Nesterov momentum 0.9)")
    learning_rate: float = _field(1e-3, "initial learning rate")
    weight_decay: float = _field(0.0, "decoupled weight decay (adamw, sgd)")
    schedule: str = _field("constant", "constant, cosine (with warmup) or plateau")
    warmup_epochs: int = _field(0, "linear warmup epochs for the cosine schedule (at most epochs - 1)")
    label_smoothing: float = _field(0.0, "cross-entropy label smoothing")
    ema: float = _field(0.0, "validate and save a moving average of the weights with this momentum, e.g. 0.999 (0: off)")
    augment: bool = _field(False, "random shifts, flips, rotation, zoom, erasing")
    class_weight: str = _field("none", "none or balanced (inverse class frequency; undone in the saved model's output)")
    dropout: float = _field(0.5, "dropout rate before the classifier")
    labels: str = _field("", "CSV of labels for the images of data (path,label rows, or one vote column per class); "
                         "default: the folder names")
    val_labels: str = _field("", "CSV of labels for the images of val (needed with labels and val)")
    not_classes: str = _field("", "comma-separated vote columns of the label files that are not classes, e.g. "
                              "unknown,NF: they count against a majority, never as a target")
    rename_classes: str = _field("", "comma-separated COLUMN=CLASS renames for label-file classes, e.g. happiness=happy")
    targets: str = _field("soft", "with vote columns: train on the vote distribution (soft) or the majority class")
    unsure: str = _field("drop", "images without a majority vote: drop them, or keep them as soft targets")
    folder_weight: float = _field(0.0, "weight a of the folder label in the targets: a * folder + (1 - a) * file labels")
    weights: str = _field("", "start from this saved model (a bundled one by name: fer2013, ferplus, compact) to fine-tune it")
    teacher: str = _field("", "distil from these models (comma-separated bundled names or files, e.g. ferplus): "
                               "targets mix the labels with the teachers' flip-TTA probabilities")
    teacher_weight: float = _field(0.5, "with teacher: weight w of the teachers in the targets, (1 - w) * labels + w * teachers")
    temperature: float = _field(2.0, "with teacher: teacher probabilities are raised to 1 / temperature and renormalised")
    clean_val: bool = _field(False, "select the best epoch on the val images without a copy in the training data "
                                    "(emorec.duplicates.copies_in); the final report gives both (needs val)")
    patience: int = _field(10, "early-stopping patience in epochs (0 disables it)")
    mixed_precision: bool = _field(False, "train in bfloat16 mixed precision (GPU); saved in float32")
    time_limit: float = _field(0.0, "stop after this many minutes, keeping the best (0: none)")
    devices: str = _field("1", "data-parallel training on N devices or 'all' (JAX backend: KERAS_BACKEND=jax); "
                               "each step's batch is split across them")
    seed: int = _field(1337, "seed for the split, shuffling and initialisation")
    project: str = _field("runs", "parent folder of run folders")
    name: str = _field("", "run folder name; default is the architecture name")
    exist_ok: bool = _field(False, "allow writing into an existing run folder")
    recipe: str = _field("", "name of the recipe these values started from, if any")

    def __post_init__(self) -> None:
        check_types(self)
        _check_choice("arch", self.arch, ARCHITECTURES)
        _check_choice("color_mode", self.color_mode, COLOR_MODES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("class_weight", self.class_weight, CLASS_WEIGHTS)
        _check_range("val_split", self.val_split, 0.0, 0.9)
        _check_range("epochs", self.epochs, 1, 10_000)
        _check_range("batch_size", self.batch_size, 1, 65_536)
        _check_range("image_size", self.image_size, 16, 1024)
        _check_range("learning_rate", self.learning_rate, 1e-7, 10.0)
        _check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 0.5)
        _check_range("dropout", self.dropout, 0.0, 0.95)
        _check_range("ema", self.ema, 0.0, 0.99999)
        _check_range("patience", self.patience, 0, 10_000)
        _check_range("time_limit", self.time_limit, 0.0, 1e6)
        _check_range("warmup_epochs", self.warmup_epochs, 0, 10_000)
        _check_range("seed", self.seed, 0, MAX_SEED)
        _check_choice("targets", self.targets, LABEL_TARGETS)
        _check_choice("unsure", self.unsure, LABEL_UNSURE)
        _check_range("folder_weight", self.folder_weight, 0.0, 1.0)
        _check_range("teacher_weight", self.teacher_weight, 0.0, 1.0)
        _check_range("temperature", self.temperature, 0.1, 100.0)
        if self.val_labels and not self.labels:
            raise ConfigError("val_labels needs labels for the training data too (--labels FILE)", "val_labels")
        if self.labels and self.val and not self.val_labels:
            raise ConfigError("with labels and a val folder, give the val folder's labels too (--val-labels FILE)",
                              "val_labels")
        try:
            rename_pairs(self.rename_classes)
        except ValueError as error:
            raise ConfigError(f"rename_classes: {error}", "rename_classes", str(error)) from None
        if self.clean_val and self.val is None:
            raise ConfigError("clean_val needs a separate validation folder (--val DIR)", "clean_val",
                              "needs a separate validation folder (--val DIR)")
        if self.val is None and self.val_split == 0.0:
            raise ConfigError("val_split=0 needs a separate validation set (--val DIR)", "val_split",
                              "0 needs a separate validation set (--val DIR)")
        if self.name:
            _check_folder_name("name", self.name)
        self.devices = _check_devices(self.devices)

    @property
    def channels(self) -> int:
        """Number of colour channels the model takes."""
        return 1 if self.color_mode == "grayscale" else 3

    @property
    def run_name(self) -> str:
        """Folder name of the run under project/."""
        return self.name or self.arch

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, ready for JSON."""
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the config as JSON (atomically)."""
        from emorec.files import write_json

        write_json(path, self.to_dict())

    def with_absolute_paths(self) -> "TrainConfig":
        """A copy whose data, val, weights and project paths are absolute, so the saved config replays anywhere."""
        absolute = lambda path: str(Path(path).absolute()) if path else path  # noqa: E731
        def model(name: str) -> str:  # the saved config names the model it started from, even after the default changes
            name = name if name in ("", "bundled", *BUNDLED_NAMES) else absolute(name)
            return DEFAULT_MODEL if name == "bundled" else name

        teacher = ",".join(model(name.strip()) for name in self.teacher.split(",") if name.strip())
        return dataclasses.replace(self, data=absolute(self.data), val=absolute(self.val), weights=model(self.weights),
                                   teacher=teacher,
                                   labels=absolute(self.labels), val_labels=absolute(self.val_labels),
                                   project=absolute(self.project))


# Recipes are named sets of TrainConfig values. `fer2013` is the recipe of the
# bundled fer2013 model: a VGG-style network, SGD with Nesterov momentum, a cosine
# schedule, label smoothing, weight decay, augmentation and balanced class weights.
# `ferplus` is the recipe of the bundled ferplus model.
RECIPES: dict[str, dict[str, Any]] = {
    "seed": {},
    "fer2013": {
        "arch": "vgg",
        "epochs": 130,
        "batch_size": 128,
        "optimizer": "sgd",
        "learning_rate": 0.05,
        "weight_decay": 5e-4,
        "schedule": "cosine",
        "warmup_epochs": 3,
        "label_smoothing": 0.1,
        "augment": True,
        "class_weight": "balanced",
        "dropout": 0.4,
        "patience": 0,
    },
    # Fine-tunes the fer2013 model on FER+ annotator votes (give --labels and --val-labels):
    # soft targets, contempt as an eighth class, a tenth of fer2013's learning rate.
    "ferplus": {
        "arch": "vgg",
        "weights": "fer2013",
        "not_classes": "unknown,NF",
        "rename_classes": "happiness=happy,sadness=sad,anger=angry",
        "targets": "soft",
        "unsure": "soft",
        "epochs": 6,
        "batch_size": 128,
        "optimizer": "sgd",
        "learning_rate": 0.01,
        "weight_decay": 5e-4,
        "schedule": "cosine",
        "warmup_epochs": 1,
        "augment": True,
        "dropout": 0.4,
        "patience": 0,
    },
    # A compact student for the light runtime, trained from scratch on FER+ votes (give --labels and
    # --val-labels) and distilled from the bundled ferplus model.
    "compact": {
        "arch": "compact-m",
        "teacher": "ferplus",
        "teacher_weight": 0.5,
        "temperature": 2.0,
        "not_classes": "unknown,NF",
        "rename_classes": "happiness=happy,sadness=sad,anger=angry",
        "targets": "soft",
        "unsure": "soft",
        "epochs": 12,
        "batch_size": 128,
        "optimizer": "sgd",
        "learning_rate": 0.05,
        "weight_decay": 5e-4,
        "schedule": "cosine",
        "warmup_epochs": 2,
        "augment": True,
        "dropout": 0.2,
        "patience": 0,
    },
}


# The fields that take one of a fixed set of names (the CLI lists them in --help).
CHOICES: dict[str, tuple[str, ...]] = {
    "arch": ARCHITECTURES,
    "color_mode": COLOR_MODES,
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "class_weight": CLASS_WEIGHTS,
    "targets": LABEL_TARGETS,
    "unsure": LABEL_UNSURE,
}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The values of a JSON or YAML config file (a run's own config.json works), as a dict.

    Raises ConfigError naming the file when it is missing, not a regular file, over
    MAX_CONFIG_BYTES, not valid JSON/YAML (YAML aliases and deep nesting included) or not
    a mapping of names to values. The values' types are checked when a config is built from them.
    """
    from emorec.files import InputFileError, read_limited

    path = Path(path)
    try:
        text = read_limited(path, MAX_CONFIG_BYTES).decode("utf-8")
    except InputFileError as error:
        raise ConfigError(str(error)) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    is_yaml = path.suffix.lower() in (".yaml", ".yml")
    try:
        values = _parse_yaml(text) if is_yaml else json.loads(text)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply (config values are flat)") from None
    except ValueError as error:
        raise ConfigError(f"{path}: not valid {'YAML' if is_yaml else 'JSON'}: {_first_line(error)}") from None
    if not isinstance(values, dict) or not all(isinstance(key, str) for key in values):
        raise ConfigError(f"{path}: expected a mapping of config keys to values")
    return values


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines[:3])[:300]


def _parse_yaml(text: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise ValueError("reading YAML needs PyYAML (pip install pyyaml); JSON needs nothing more") from None

    class FlatLoader(yaml.SafeLoader):
        """SafeLoader without aliases (a few aliased lists expand to gigabytes) and with a depth bound."""

        depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a config file", mark)
            self.depth += 1
            if self.depth > MAX_CONFIG_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_CONFIG_DEPTH} levels",
                                                  self.peek_event().start_mark)
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    try:
        return yaml.load(text, Loader=FlatLoader)  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ValueError(f"{where}{error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise ValueError(str(error)) from None


def train_config(recipe: str = "", **overrides: Any) -> TrainConfig:
    """Build a TrainConfig from a recipe name plus explicit values.

    Unknown keys and unknown recipes raise ConfigError naming the culprit.
    """
    if not isinstance(recipe, str) or (recipe and recipe not in RECIPES):
        raise ConfigError(f"unknown recipe {_short(recipe)}; choose from {', '.join(RECIPES)}", "recipe",
                          f"{_short(recipe)} is not one of: {', '.join(RECIPES)}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
    values = {**RECIPES.get(recipe, {}), **overrides, "recipe": recipe}
    return TrainConfig(**values)


@dataclass
class PredictConfig:
    """Everything `emorec predict` needs."""

    sources: list[str] = _field([], "images, folders, videos, or a webcam index")
    model: str | None = _field(None, ".onnx or .keras file, or a bundled model's name (fer2013, ferplus, compact); None: the default")
    detector: str = _field("auto", "face detector name (see emorec.faces)")
    detect: bool = _field(True, "False treats every input as an already cropped face")
    tta: str = _field("none", "test-time augmentation: none, flip (mirror) or multi (12 views)")
    save_annotated: str | None = _field(None, "folder for copies with boxes and labels drawn")
    report: str | None = _field(None, "folder for HTML reports: one page per video, one for the photos")
    stride: int = _field(1, "video: classify every stride-th frame")
    smooth: float = _field(0.0, "video: exponential smoothing of each person's probabilities (0 = off, <1)")
    track_buffer: float = _field(2.0, "video: seconds a face lost from sight keeps its track id for when it comes back")
    exist_ok: bool = _field(False, "allow overwriting annotated outputs")
    engine: str = _field("local", "local (threads in this process) or ray (Ray Data: a local Ray or a cluster)")
    address: str | None = _field(None, "ray: address of a running Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    cpus: int = _field(0, "ray: CPUs a local Ray decodes on (0: all); the classifier actors come on top")
    actors: int = _field(0, "ray: classifier actors, each loading the model once (0: one per 3 CPUs)")

    def __post_init__(self) -> None:
        check_types(self, also={"tta": (bool, type(None))})  # tta_mode reads switches too
        self.tta = tta_mode(self.tta)
        _check_range("stride", self.stride, 1, 100_000)
        _check_range("smooth", self.smooth, 0.0, 0.99)
        _check_range("track_buffer", self.track_buffer, 0.0, 600.0)
        _check_choice("engine", self.engine, ENGINES)
        _check_range("cpus", self.cpus, 0, 100_000)
        _check_range("actors", self.actors, 0, 100_000)


@dataclass
class ServeConfig:
    """Everything `emorec serve` needs."""

    model: str | None = _field(None, ".onnx or .keras file, or a bundled model's name (fer2013, ferplus, compact); None: the default")
    detector: str = _field("auto", "face detector name (see emorec.faces)")
    host: str = _field("127.0.0.1", "address to listen on")
    port: int = _field(8000, "TCP port")
    workers: int = _field(2, "inference threads: requests beyond them wait in the queue")
    queue: int = _field(32, "requests admitted at once (running and waiting); more get 503 with Retry-After")
    max_upload_mb: float = _field(20.0, "largest request body in MB; larger uploads get 413")
    max_files: int = _field(32, "most files in one request")
    decode_mb: float = _field(1024.0, "MB of decoded image pixels in flight across requests; more wait briefly, "
                                      "then get 503 with Retry-After")
    body_grace_s: float = _field(10.0, "seconds an upload may take before the minimum upload rate applies")
    min_upload_kbps: float = _field(16.0, "slowest upload accepted once the grace seconds are over, in KB/s; "
                                          "slower ones get 408")

    def __post_init__(self) -> None:
        check_types(self)
        _check_range("port", self.port, 0, 65_535)
        _check_range("workers", self.workers, 1, 256)
        _check_range("queue", self.queue, 1, 100_000)
        _check_range("max_upload_mb", self.max_upload_mb, 0.001, 10_000)
        _check_range("max_files", self.max_files, 1, 10_000)
        _check_range("decode_mb", self.decode_mb, 1, 1_000_000)
        _check_range("body_grace_s", self.body_grace_s, 0, 3600)
        _check_range("min_upload_kbps", self.min_upload_kbps, 0.001, 1_000_000)


@dataclass
class ExplainConfig:
    """Everything `emorec explain` needs."""

    sources: list[str] = _field([], "photos and folders (walked recursively)")
    out: str = _field("explain", "folder for the PNGs (sub-folders of folder sources kept)")
    model: str | None = _field(None, ".keras file (or .onnx with a .keras beside it); None uses the bundled model")
    detector: str = _field("auto", "face detector name (see emorec.faces)")
    detect: bool = _field(True, "False treats every input as an already cropped face")
    exist_ok: bool = _field(False, "allow overwriting PNGs")

    def __post_init__(self) -> None:
        check_types(self)


def comma_list(text: str) -> list[str]:
    """The stripped, non-empty items of a comma-separated option ("unknown, NF" -> ["unknown", "NF"])."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def rename_pairs(text: str) -> tuple[tuple[str, str], ...]:
    """(column, class name) pairs from the "happiness=happy,sadness=sad" form; ValueError names a bad item."""
    pairs = []
    for item in comma_list(text):
        column, sep, name = item.partition("=")
        if not sep or not column.strip() or not name.strip():
            raise ValueError(f"rename {item!r}: expected COLUMN=CLASS, e.g. happiness=happy")
        pairs.append((column.strip(), name.strip()))
    return tuple(pairs)


def tta_mode(tta: bool | str | None) -> str:
    """Normalise a TTA setting: False/None -> "none", True -> "flip", or a name from TTA_MODES."""
    mode = tta if isinstance(tta, str) else {False: "none", None: "none", True: "flip"}.get(tta, tta)
    _check_choice("tta", mode, TTA_MODES)
    return mode


def check_types(config: Any, also: dict[str, type | tuple[type, ...]] | None = None) -> None:
    """Check every field of a config dataclass against its annotated type, in place; ConfigError naming the first
    field whose value does not fit.

    Whole-valued floats become ints (5.0 -> 5), ints become floats, paths become text; nothing else is converted:
    a string is never a switch or a number. `also` names extra types a field takes (checked later by the field).
    """
    hints = typing.get_type_hints(type(config))
    for item in fields(config):
        value = getattr(config, item.name)
        if also and item.name in also and isinstance(value, also[item.name]):
            continue
        setattr(config, item.name, _typed(item.name, value, hints[item.name]))


def _typed(name: str, value: Any, hint: Any) -> Any:
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    if value is None and type(None) in kinds:
        return None
    for kind in kinds:
        converted = _as_kind(value, kind)
        if converted is not _MISMATCH:
            return converted
    if name == "devices" and _as_kind(value, int) is not _MISMATCH:
        return value  # a count of devices may be written as a number; _check_devices reads it
    expected = " or ".join(_KIND_NAMES.get(kind, "a mapping" if typing.get_origin(kind) is dict else str(kind))
                           for kind in kinds)
    problem = f"expected {expected}, got {_short(value)} ({_type_name(value)})"
    raise ConfigError(f"{name}: {problem}", name, problem)


_MISMATCH = object()
_KIND_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "text",
               type(None): "null", list[str]: "a list of text"}


def _as_kind(value: Any, kind: Any) -> Any:
    """value as kind, or _MISMATCH; only conversions that cannot change what the user meant."""
    if kind is bool:
        return value if isinstance(value, bool) else _MISMATCH
    if isinstance(value, bool):
        return _MISMATCH  # True is an int to Python, but never a count or a rate here
    if kind is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) else _MISMATCH
    if kind is float:
        return float(value) if isinstance(value, (int, float)) else _MISMATCH
    if kind is str:
        return os.fspath(value) if isinstance(value, (str, os.PathLike)) else _MISMATCH
    if kind is dict or typing.get_origin(kind) is dict:
        return value if isinstance(value, dict) else _MISMATCH
    if typing.get_origin(kind) is list:
        if isinstance(value, (list, tuple)) and all(isinstance(item, (str, os.PathLike)) for item in value):
            return [os.fspath(item) for item in value]
        return _MISMATCH
    return _MISMATCH


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "a whole number", float: "a number", str: "text", list: "a list",
            dict: "a mapping", bytes: "binary data", type(None): "null"}.get(type(value), type(value).__name__)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        problem = f"{_short(value)} is not one of: {', '.join(choices)}"
        raise ConfigError(f"{name}={problem}", name, problem)


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problem = f"{_short(value)} is not a number"
        raise ConfigError(f"{name}={problem}", name, problem)
    if not low <= value <= high:
        problem = f"{_short(value)} is out of range [{low}, {high}]"
        raise ConfigError(f"{name}={problem}", name, problem)


def _check_devices(value: Any) -> str:
    """A device count: a whole number of at least 1, or "all" (stored as text either way)."""
    text = str(value).strip().lower()
    if isinstance(value, bool) or not (text == "all" or (text.isdigit() and int(text) >= 1)):
        problem = f"{_short(value)} is not a number of devices (1, 2, ...) or 'all'"
        raise ConfigError(f"devices={problem}", "devices", problem)
    return text if text == "all" else str(int(text))


def _check_folder_name(name: str, value: str) -> None:
    from emorec.files import check_folder_name

    try:
        check_folder_name(value)
    except ValueError:
        problem = f"{_short(value)} must be a single folder name (no '/', not '.' or '..')"
        raise ConfigError(f"{name}={problem}", name, problem) from None
