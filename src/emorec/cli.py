"""The `emorec` command line: parse, call the library, print. Nothing else lives here.

Heavy imports (Keras, TensorFlow) happen inside the command handlers, so
`emorec --help` and `emorec check` start in well under a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import sys
import warnings
from pathlib import Path
from typing import Sequence

from emorec import __version__
from emorec.config import (CHOICES, ENGINES, RECIPES, TTA_MODES, ConfigError, ExplainConfig, PredictConfig, ServeConfig,
                           TrainConfig)
from emorec.errors import EmorecError, UsageError
from emorec.extras import missing_message
from emorec.files import OutputPathError, escape_undecodable
from emorec.progress import draw_bars


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 1 failure, 2 usage error)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up notices are noise on a terminal
    _ensure_std_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    draw_bars(getattr(args, "progress", False))
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(args.command)
            return args.handler(args)
    except ConfigError as error:  # a bad option value is a usage error: exit 2, naming the option
        where = f"argument --{error.key.replace('_', '-')}: {error.problem}" if error.key else str(error)
        say(f"emorec {args.command}: error: {where}", err=True)
        return 2
    except EmorecError as error:  # an expected failure (bad input, option or file); anything else is a bug: traceback
        say(f"emorec {args.command}: error: {error}", err=True)
        return 1
    except ModuleNotFoundError as error:  # an optional dependency of this command is not installed
        say(f"emorec {args.command}: error: {missing_message(error.name or 'a module', 'this command')}", err=True)
        return 1
    except OSError as error:  # missing files, permissions, full disks, read-only folders, outputs that exist: one line
        where = f"{error.filename}: " if error.filename else ""
        say(f"emorec {args.command}: error: {where}{error.strerror or error}", err=True)
        return 1
    except KeyboardInterrupt as stop:
        say("interrupted", err=True)
        return 143 if isinstance(stop, _Terminated) else 130


def _ensure_std_streams() -> None:
    """Give a closed stdout/stderr a /dev/null, and print names a terminal cannot encode as escapes.

    A closed descriptor 1 or 2 would otherwise be reused by the next file
    opened, and library messages meant for the terminal would land in it.
    """
    for fd, name in ((1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
            setattr(sys, name, open(fd, "w", closefd=False))
        stream = getattr(sys, name)
        if stream is not None and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


_CONTROL = {**{c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}, 0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}


def printable(text: str) -> str:
    """text with control characters (terminal escape sequences, newlines) and undecodable name bytes escaped."""
    return escape_undecodable(text.translate(_CONTROL))


def say(*lines: str, err: bool = False) -> None:
    """Print each line through `printable`; a reader that went away (`| head`) ends the output, not the work."""
    stream = sys.stderr if err else sys.stdout
    try:
        for line in lines:
            print(printable(line), file=stream)
        stream.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def _one_line_warnings(command: str):
    """A warnings.showwarning that prints emorec's own warnings as `emorec CMD: warning: ...` lines."""
    package = Path(__file__).parent
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if Path(filename).resolve().is_relative_to(package):
            say(f"emorec {command}: warning: {message}", err=True)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def _int_range(low: int, high: int):
    """An argparse type for an integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range [{low}, {high}]")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their options."""
    parser = argparse.ArgumentParser(prog="emorec", description="Facial emotion recognition: check, show, pack, train, evaluate, export, predict, explain, serve.")
    parser.add_argument("--version", action="version", version=f"emorec {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_check(commands)
    _add_show(commands)
    _add_pack(commands)
    _add_train(commands)
    _add_evaluate(commands)
    _add_export(commands)
    _add_predict(commands)
    _add_explain(commands)
    _add_serve(commands)
    for name, command in commands.choices.items():
        if name != "serve":
            command.add_argument("--progress", action="store_true", help="draw progress bars even when stderr is "
                                 "not a terminal (each bar ends in one summary line either way)")
    return parser


# ----------------------------------------------------------------------------
# check
# ----------------------------------------------------------------------------


def _add_check(commands) -> None:
    cmd = commands.add_parser("check", help="validate every image of a class-folder dataset")
    cmd.add_argument("data", help="folder with one sub-folder per class")
    action = cmd.add_mutually_exclusive_group()
    action.add_argument("--quarantine", metavar="DIR", help="move invalid files into DIR (relative paths kept)")
    action.add_argument("--delete", action="store_true", help="delete invalid files (default: report only)")
    cmd.add_argument("--duplicates", action="store_true", help="also find copies of images (re-encoded, resized, "
                     "contrast-changed), blank images and large images without a face; with --quarantine or "
                     "--delete, the later copies in DATA are set aside too")
    cmd.add_argument("--against", nargs="+", default=[], metavar="OTHER", help="with --duplicates: class folders "
                     "(e.g. the test split) to look for copies of DATA's images in; never changed")
    cmd.add_argument("--json", action="store_true", help="with --duplicates: print one JSON object instead of text")
    _add_label_flags(cmd)
    cmd.set_defaults(handler=_check)


def _check(args) -> int:
    from emorec import data, labels
    from emorec.files import check_output_path

    if (args.against or args.json) and not args.duplicates:
        raise ConfigError("--against and --json go with --duplicates")
    if args.quarantine:
        check_output_path(args.quarantine, [args.data, *args.against], folder=True)
    if args.duplicates:
        return _check_duplicates(args)
    spec = _label_spec(args)
    table = labels.read_label_file(spec) if spec is not None else None  # a bad label file fails before the scan
    report = data.scan_dataset(args.data)
    _say_scan(report)
    if table is not None:
        _report_labels(report, table)
    cleanup = _set_aside(report, args) if report.invalid else None
    remaining = len(report.invalid) - (len(cleanup.done) if cleanup else 0)
    say(_check_summary(report, cleanup))
    return 0 if report.total and remaining == 0 else 1


def _say_scan(report) -> None:
    """Print what a scan found: images per class, invalid files, files that are not images."""
    say(*report.table().splitlines())
    if report.empty_classes:
        say(f"class folder(s) with no valid images: {', '.join(report.empty_classes)}")
    if not report.invalid:
        say("all files are valid images" if report.total else "no image files found")
    else:
        say("", f"{len(report.invalid)} invalid file(s):")
        for item in report.invalid:
            say(f"  {item.path}: {item.reason}")
    if report.documents:
        say("", f"{len(report.documents)} file(s) that are not images, left alone:")
        for path in report.documents:
            say(f"  {path}")


def _report_labels(report, table) -> None:
    """Print how the rows of a label file pair with the images found, and the majority labels they give."""
    from emorec import labels

    images = labels.match_images(table, report.root, report.valid_paths)
    say("", f"labels from {table.source}:", *images.notes, *labels.summary(images))


def _set_aside(report, args, copies=()):
    """Quarantine or delete what the flags ask for (corrupt files, later copies) and print what was done.

    Returns the Cleanup, or None when only reporting.
    """
    cleanup = _cleanup(report, args, copies)
    if cleanup is None:
        what = "corrupt images and later copies" if copies else "corrupt images"
        say(f"nothing changed: use --quarantine DIR to move {what} aside or --delete to remove them")
        return None
    for item in cleanup.left:
        say(f"  left alone: {item.path}: {item.reason}")
    for item in cleanup.failed:
        say(f"  could not {'move' if args.quarantine else 'delete'}: {item.path}: {item.reason}")
    verb = f"moved to {args.quarantine}" if args.quarantine else "deleted"
    say(f"{len(cleanup.done)} {'file(s)' if copies else 'corrupt image file(s)'} {verb}")
    return cleanup


def _cleanup(report, args, copies=()):
    """Quarantine or delete the invalid files of report and the copies, as the flags ask; None when only reporting."""
    from emorec import data

    if args.quarantine:
        return data.quarantine(report, args.quarantine, copies)
    return data.delete_files(report, copies) if args.delete else None


def _check_duplicates(args) -> int:
    """check --duplicates: the scan, then copies, blank and faceless images; exits 1 when anything was found."""
    from emorec.duplicates import find_duplicates
    from emorec.files import to_json

    found = find_duplicates(args.data, args.against)
    report, copies = found.scans[0], found.copies_as_invalid()
    if args.json:
        cleanup = _cleanup(report, args, copies)
        payload = {"invalid": _reasons(item for scan in found.scans for item in scan.invalid), **found.to_dict()}
        if cleanup is not None:
            payload["set_aside"] = {"done": cleanup.done, "left": _reasons(cleanup.left),
                                    "failed": _reasons(cleanup.failed)}
        say(*to_json(payload).splitlines())
    else:
        _say_scan(report)
        for scan in found.scans[1:]:
            say(f"against {scan.root}: {scan.total} valid image(s), {len(scan.invalid)} invalid")
            say(*(f"  {item.path}: {item.reason}" for item in scan.invalid))
        say("", *found.lines())
        cleanup = _set_aside(report, args, copies) if report.invalid or copies else None
        say(_check_summary(report, cleanup) + f", {len(found.groups)} group(s) of copies, {len(found.blank)} blank, "
            f"{len(found.no_face)} without a face")
    problems = [found.groups, found.blank, found.no_face, *(scan.invalid for scan in found.scans)]
    return 0 if report.total and not any(problems) else 1


def _reasons(items) -> list[dict[str, str]]:
    return [{"path": str(item.path), "reason": item.reason} for item in items]


def _check_summary(report, cleanup) -> str:
    parts = [f"{report.total} valid image(s)", f"{len(report.invalid)} invalid"]
    if cleanup is not None:
        parts[-1] += f" ({len(cleanup.done)} set aside, {len(cleanup.left)} left alone, {len(cleanup.failed)} failed)"
    if report.documents:
        parts.append(f"{len(report.documents)} non-image file(s) left alone")
    return "summary: " + ", ".join(parts)


# ----------------------------------------------------------------------------
# show / pack
# ----------------------------------------------------------------------------


def _add_show(commands) -> None:
    cmd = commands.add_parser("show", help="save a grid of sample images per class and a class-count chart")
    cmd.add_argument("data", help="folder with one sub-folder per class")
    cmd.add_argument("--out", default="samples.png", help="PNG for the sample grid (the chart goes to *_counts.png)")
    cmd.add_argument("--per-class", type=_int_range(1, 100), default=8, help="samples per class (default 8)")
    cmd.add_argument("--seed", type=_int_range(0, 2**32 - 1), default=0, help="which random samples to show")
    cmd.add_argument("--exist-ok", action="store_true", help="replace existing PNGs")
    cmd.set_defaults(handler=_show)


def _show(args) -> int:
    from emorec.extras import require

    require("matplotlib", "this command")  # before the scan, not after it
    from emorec import data, visualize
    from emorec.files import check_output_path

    check_output_path(args.out, [args.data])
    report = data.scan_dataset(args.data)
    data.warn_invalid(report)
    grid, counts = visualize.save_overview(report, args.out, per_class=args.per_class, seed=args.seed, overwrite=args.exist_ok)
    say(*report.table().splitlines(), f"saved {grid} and {counts}")
    return 0


def _add_pack(commands) -> None:
    cmd = commands.add_parser("pack", help="decode train (and val) folders into one .npz(.xz) file for GPU machines")
    cmd.add_argument("train", help="training class folders")
    cmd.add_argument("out", help="output file ending in .npz or .npz.xz")
    cmd.add_argument("--val", help="validation class folders, stored as the 'val' split")
    cmd.add_argument("--image-size", type=_int_range(16, 1024), default=48, help="side of the stored images (default 48)")
    cmd.add_argument("--color-mode", choices=("grayscale", "rgb"), default="grayscale")
    cmd.set_defaults(handler=_pack)


def _pack(args) -> int:
    from emorec import data
    from emorec.files import check_output_path

    if not data.is_pack(args.out):
        raise OutputPathError(f"{args.out}: pack files end in .npz or .npz.xz")
    check_output_path(args.out, [args.train] + ([args.val] if args.val else []))
    if Path(args.out).exists():
        raise FileExistsError(f"{args.out}: already exists")
    channels = 1 if args.color_mode == "grayscale" else 3
    folders = {split: folder for split, folder in (("train", args.train), ("val", args.val)) if folder}
    reports = {split: data.scan_dataset(folder) for split, folder in folders.items()}
    for report in reports.values():
        data.warn_invalid(report)
    data.check_splits(reports, folders)  # before the long decoding: same classes, no empty split
    splits = {}
    for split, report in reports.items():
        splits[split] = data.load_arrays(report, args.image_size, channels)
        say(f"{split}: {len(splits[split])} images from {folders[split]}")
    path = data.save_pack(args.out, splits)
    say(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


# ----------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------

_TRAIN_FLAGS_SKIPPED = {"data", "recipe"}


def _add_train(commands) -> None:
    cmd = commands.add_parser("train", help="train a model and write a run folder (runs/<name>/)")
    cmd.add_argument("data", nargs="?", help="class folders (or a .npz pack from `emorec pack`)")
    cmd.add_argument("--recipe", choices=sorted(RECIPES), default="", help="start from a named recipe (fer2013, ferplus, compact: the bundled models')")
    cmd.add_argument("--config", metavar="FILE", help="read options from a JSON or YAML file, e.g. a run's config.json "
                     "(precedence: defaults < recipe < file < flags; switches are true or false, counts whole numbers)")
    cmd.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last completed epoch, "
                     "with its saved configuration")
    for item in dataclasses.fields(TrainConfig):
        if item.name not in _TRAIN_FLAGS_SKIPPED:
            _add_field_flag(cmd, item)
    cmd.set_defaults(handler=_train)


def _add_field_flag(cmd, item: dataclasses.Field, **extra) -> None:
    """Add --FIELD-NAME for a config field: its type, choices and help; extra (help, metavar, ...) overrides them.

    Flags left out get no value in the namespace, so the config dataclass supplies every default.
    """
    flag = "--" + item.name.replace("_", "-")
    help_text = extra.pop("help", f"{item.metadata['help']} (default: {item.default})")
    if item.type in ("bool", bool):
        cmd.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text, **extra)
        return
    kind = {"int": int, "float": float}.get(str(item.type), str)
    options = dict(type=kind, choices=CHOICES.get(item.name), default=argparse.SUPPRESS, help=help_text)
    cmd.add_argument(flag, **{**options, **extra})


def _field_values(config_class, args) -> dict:
    """The config fields given on the command line (flags made by _add_field_flag), by field name."""
    return {item.name: getattr(args, item.name) for item in dataclasses.fields(config_class) if hasattr(args, item.name)}


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def _train(args) -> int:
    flags = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and k not in _TRAIN_FLAGS_SKIPPED}
    if args.resume and (args.data or args.config or args.recipe or flags):
        raise ConfigError("--resume continues a run with its saved configuration; give no data or other options")
    if not (args.resume or args.data or args.config):
        raise ConfigError("give the training DATA (or --config FILE, or --resume RUN_DIR)")
    cfg = None if args.resume else _train_config(args, flags)  # a bad config fails before TensorFlow loads
    from emorec import train

    previous = signal.signal(signal.SIGTERM, _raise_terminated)  # a scheduler's stop saves like Ctrl-C
    try:
        result = train.resume(args.resume) if args.resume else train.train(cfg)
    except train.RunInterrupted as stop:
        _print_interrupted(stop)
        return 143 if isinstance(stop.__cause__, _Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    cfg = result.config
    val = cfg.val or "TEST_DATA"
    if cfg.labels:  # scored against a label file: so is the suggested evaluation
        columns = "".join(f" --{flag} {value}" for flag, value in (("not-classes", cfg.not_classes),
                                                                   ("rename-classes", cfg.rename_classes)) if value)
        val += f" --labels {cfg.val_labels or 'TEST_LABELS.csv'}{columns}"
    say("", f"run folder: {result.run_dir}",
        f"best model: {result.best_model}  (best val accuracy {result.best_val_accuracy:.4f}, {result.seconds:.0f} s)",
        *result.report.table().splitlines(), "", "next:", f"  emorec evaluate {result.best_model} {val} --tta",
        f"  emorec predict --model {result.best_model} PHOTO_OR_FOLDER_OR_VIDEO")
    return 0


def _train_config(args, flags: dict) -> TrainConfig:
    """defaults < recipe < config file < flags."""
    from emorec.config import read_config_file, train_config

    values = read_config_file(args.config) if args.config else {}
    recipe = args.recipe or values.pop("recipe", "")
    values.pop("recipe", None)
    if args.data:
        flags["data"] = args.data
    try:
        cfg = train_config(recipe, **{**values, **flags})
    except ConfigError as error:
        if args.config and error.key not in flags:
            raise ConfigError(f"{args.config}: {error}") from None
        raise
    return _with_weights_settings(cfg, recipe, {**values, **flags})


def _with_weights_settings(cfg: TrainConfig, recipe: str, given: dict) -> TrainConfig:
    """cfg with the architecture, image size and colour mode of its --weights model where nothing set them."""
    if not cfg.weights:
        return cfg
    from emorec.config import train_config
    from emorec.train import settings_from_weights

    explicit = set(given) | set(RECIPES.get(recipe, {}))
    taken = {key: value for key, value in settings_from_weights(cfg.weights).items() if key not in explicit}
    return train_config(recipe, **{**given, **taken}) if taken else cfg


def _print_interrupted(stop) -> None:
    if stop.run_dir is None:
        say("emorec train: interrupted before the first epoch ended; nothing was kept", err=True)
        return
    say(f"emorec train: interrupted after {stop.epochs_done} completed epoch(s); best model so far: "
        f"{stop.run_dir / 'weights' / 'best.keras'}", f"resume with: emorec train --resume {stop.run_dir}", err=True)


# ----------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------


def _add_evaluate(commands) -> None:
    cmd = commands.add_parser("evaluate", help="metrics, confusion matrix and JSON report of a model on labelled data")
    cmd.add_argument("model", help=".onnx or .keras model file, or a bundled model: fer2013, ferplus, compact (\"bundled\": the default one)")
    cmd.add_argument("data", help="class folders (or a .npz pack) to evaluate on")
    cmd.add_argument("--out", default=None, help="folder for eval.json and confusion_matrix.png (default: a new runs/evaluate/<model>/)")
    _add_tta_flag(cmd)
    cmd.add_argument("--json", action="store_true", help="print the report as JSON")
    cmd.add_argument("--exist-ok", action="store_true", help="replace an existing report")
    cmd.add_argument("--exclude-copies-of", metavar="TRAIN", default=None,
                     help="also report the figures on the images without a copy in this folder (the training data)")
    _add_label_flags(cmd)
    cmd.set_defaults(handler=_evaluate)


def _add_label_flags(cmd) -> None:
    """--labels FILE and how to read its columns: the fields of TrainConfig that say so."""
    for item in dataclasses.fields(TrainConfig):
        if item.name in ("labels", "not_classes", "rename_classes"):
            _add_field_flag(cmd, item)


def _label_spec(args):
    """The LabelSpec of the --labels flags, or None without --labels."""
    from emorec.labels import LabelSpec

    if not getattr(args, "labels", ""):
        return None
    return LabelSpec.parse(args.labels, getattr(args, "not_classes", ""), getattr(args, "rename_classes", ""))


def _add_tta_flag(cmd) -> None:
    cmd.add_argument("--tta", nargs="?", const="flip", default="none", choices=TTA_MODES,
                     help="test-time augmentation: --tta (mirror) or --tta multi (12 views)")


def _evaluate(args) -> int:
    from emorec.evaluate import evaluate
    from emorec.files import check_output_path, new_run_dir, to_json
    from emorec.catalog import onnx_path
    from emorec.runtime import read_info

    path = onnx_path(args.model)
    read_info(path)  # a missing or foreign file fails before the report folder is made
    inputs = [args.data, path] + ([args.exclude_copies_of] if args.exclude_copies_of else [])
    check_output_path(args.out or Path("runs") / "evaluate", inputs, folder=True)
    made = None if args.out else new_run_dir(Path("runs") / "evaluate", path.stem)
    out = args.out or made
    try:
        report = evaluate(path, args.data, out_dir=out, tta=args.tta, overwrite=args.exist_ok, label_spec=_label_spec(args),
                          exclude_copies_of=args.exclude_copies_of)
    except BaseException:
        if made is not None:  # a failed evaluation leaves no empty report folder
            shutil.rmtree(made, ignore_errors=True)
        raise
    say(*(to_json(report.to_dict()) if args.json else report.table()).splitlines())
    if not args.json:
        say(f"report and confusion matrix written to {out}")
    return 0


# ----------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------


def _add_export(commands) -> None:
    cmd = commands.add_parser("export", help="convert a .keras model to ONNX for the light runtime (checked against Keras)")
    cmd.add_argument("model", help=".keras file written by emorec train")
    cmd.add_argument("--format", choices=("onnx",), default="onnx", help="output format (default onnx)")
    cmd.add_argument("--out", help="output file (default: the model's path with .onnx)")
    cmd.add_argument("--int8", metavar="VAL", help="also write NAME.int8.onnx, kept only if its accuracy on the "
                     "class folders VAL is within 0.2 points of float32")
    cmd.add_argument("--calibration", metavar="DIR", help="class folders to calibrate int8 ranges on (default: VAL)")
    cmd.add_argument("--exist-ok", action="store_true", help="replace existing files")
    cmd.set_defaults(handler=_export)


def _export(args) -> int:
    from emorec.export import export_onnx, int8_path, load_int8_data, onnx_target, quantize_int8
    from emorec.files import check_targets
    from emorec.catalog import onnx_path
    from emorec.runtime import read_info

    if args.calibration and not args.int8:
        raise UsageError("--calibration goes with --int8 VAL")
    int8_data = None
    if args.int8:  # checked before anything is written
        check_targets([int8_path(onnx_target(args.model, args.out))], args.exist_ok)
        int8_data = load_int8_data(args.int8, read_info(onnx_path(args.model)), args.calibration)
    result = export_onnx(args.model, args.out, overwrite=args.exist_ok)
    say(f"wrote {result.path} ({result.path.stat().st_size / 2**20:.1f} MiB); on {result.check_images} check images "
          f"the largest probability difference from Keras is {result.max_difference:.1e}")
    if not args.int8:
        return 0
    int8 = quantize_int8(result.path, args.int8, args.calibration, overwrite=args.exist_ok, data=int8_data)
    figures = f"val accuracy {int8.float_accuracy:.2%} float32, {int8.int8_accuracy:.2%} int8 on {int8.images} images"
    if int8.kept:
        say(f"wrote {int8.path} ({int8.path.stat().st_size / 2**20:.1f} MiB); {figures}")
        return 0
    say(f"int8 copy not kept: {figures} (more than 0.2 points lower)")
    return 1


# ----------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------


_RAY_FIELDS = ("engine", "address", "cpus", "actors")
_DETECTOR_FLAG = dict(help="face detector: auto, haar, ... (default: auto)")
_DETECT_FLAG = dict(help="--no-detect: the inputs are already face crops (default: --detect, find the faces first)")
# Command-line wording where a field's help speaks of the Python API (None, module names).
_PREDICT_FLAGS = {
    "model": dict(help=".onnx or .keras model, or a bundled one by name: fer2013, ferplus, compact, NAME-int8 "
                  "(default: \"bundled\", the default one, on ONNX Runtime)"),
    "detector": _DETECTOR_FLAG,
    "detect": _DETECT_FLAG,
    "exist_ok": dict(help="replace output files that emorec wrote before: annotated copies, --csv, --parquet (never "
                     "an input, never a file emorec did not write)"),
    "track_buffer": dict(metavar="SECONDS"),
    "report": dict(metavar="DIR"),
    "save_annotated": dict(metavar="DIR", help="write copies with boxes and labels drawn into DIR"),
    "engine": dict(choices=ENGINES, help="local (default) or ray: Ray Data on a local Ray started for the command, "
                   "or on a cluster with --address"),
    "address": dict(help="ray: a running Ray cluster, e.g. ray://head:10001 (default: $RAY_ADDRESS)"),
}


def _add_predict(commands) -> None:
    cmd = commands.add_parser("predict", help="recognize emotions in photos, folders or videos")
    cmd.add_argument("sources", nargs="*", help="images, folders (walked recursively) or video files; "
                     "a leading .onnx or .keras file is taken as --model")
    cmd.add_argument("--source", help="webcam index such as 0 (live video)")
    scale = cmd.add_argument_group("scaling out (needs emorec[ray]; see docs/scaling.md)")
    for item in dataclasses.fields(PredictConfig):
        if item.name == "tta":
            _add_tta_flag(cmd)  # a bare --tta means flip, as in evaluate
        elif item.name != "sources":
            _add_field_flag(scale if item.name in _RAY_FIELDS else cmd, item, **_PREDICT_FLAGS.get(item.name, {}))
    output = cmd.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print results as JSON")
    output.add_argument("--csv", metavar="FILE", help="write one row per face to FILE")
    scale.add_argument("--parquet", metavar="DIR", help="ray: also write every row to DIR/results.parquet")
    cmd.set_defaults(handler=_predict)


def _predict(args) -> int:
    from emorec import output, predict
    from emorec.catalog import MODEL_SUFFIXES

    sources = list(args.sources) + ([args.source] if args.source is not None else [])
    values = _field_values(PredictConfig, args)
    if values.get("model") is None and sources and sources[0].endswith(MODEL_SUFFIXES):
        values["model"] = sources.pop(0)  # `emorec predict MODEL IMAGE...` works too
    if not sources:
        raise UsageError("give at least one image, folder or video (or --source 0 for a webcam)")
    cfg = PredictConfig(**{**values, "sources": sources})
    _check_predict_outputs(args, cfg)
    _check_output_plan(args, cfg)
    if cfg.engine == "ray":
        from emorec.distributed import run_predict_ray
        from emorec.catalog import onnx_path
        from emorec.runtime import read_info

        results = run_predict_ray(cfg, progress=not args.json, parquet=args.parquet)
        class_names = read_info(onnx_path(cfg.model)).class_names
    else:
        recognizer = predict.Recognizer.from_config(cfg)
        results = predict.run_predict(cfg, progress=not args.json, recognizer=recognizer)
        class_names = recognizer.class_names
    if args.csv:
        output.write_csv(results, args.csv, class_names)
    say(*(output.results_to_json(results) if args.json else output.format_results(results)).splitlines())
    if args.csv:
        say(f"wrote {args.csv}")
    if cfg.report and not args.json:  # stdout stays pure JSON
        say(f"reports in {cfg.report}")
    return 1 if any(result.error for result in results) else 0


def _check_predict_outputs(args, cfg: PredictConfig) -> None:
    """--csv, --save-annotated and --parquet: never an input nor inside an input folder, and writable."""
    from emorec.files import check_output_path

    sources = cfg.sources
    if args.csv:
        check_output_path(args.csv, sources)
    for folder in (cfg.save_annotated, cfg.report):
        if folder:
            check_output_path(folder, sources, folder=True)
    if cfg.report and cfg.engine == "ray":
        raise UsageError("--report goes with --engine local")
    ray_only = [flag for flag in ("address", "cpus", "actors", "parquet") if getattr(args, flag, None)]
    if ray_only and cfg.engine != "ray":
        raise UsageError(f"--{ray_only[0]} goes with --engine ray")
    if args.parquet:
        from emorec.distributed import PARQUET_NAME

        check_output_path(args.parquet, sources, folder=True)
        if (Path(args.parquet) / PARQUET_NAME).exists() and not cfg.exist_ok:
            raise FileExistsError(f"{Path(args.parquet) / PARQUET_NAME}: already exists (use --exist-ok to replace it)")


def _check_output_plan(args, cfg) -> None:
    """Check every file predict would write before any work: none is an input, no two are one file.

    An existing --csv file is replaced only with --exist-ok and only if emorec wrote it.
    """
    from emorec.files import check_distinct_outputs, check_targets
    from emorec.predict import planned_outputs

    outputs, inputs = planned_outputs(cfg)
    csv = [Path(args.csv)] if args.csv else []
    if args.parquet:
        from emorec.distributed import PARQUET_NAME

        outputs.append(Path(args.parquet) / PARQUET_NAME)
    check_distinct_outputs([*csv, *outputs], inputs)
    check_targets(csv, cfg.exist_ok, inputs)


# ----------------------------------------------------------------------------
# explain
# ----------------------------------------------------------------------------


_EXPLAIN_FLAGS = {
    "out": dict(required=True, metavar="DIR", help="folder for one PNG per photo (sub-folders of folders kept)"),
    "exist_ok": dict(help="replace PNGs that emorec wrote before (never a photo being explained, never a file emorec "
                     "did not write)"),
    "detector": _DETECTOR_FLAG,
    "detect": _DETECT_FLAG,
}


def _add_explain(commands) -> None:
    cmd = commands.add_parser("explain", help="Grad-CAM overlays: which part of each face drove the prediction (needs emorec[train])")
    cmd.add_argument("sources", nargs="+", metavar="[MODEL] PHOTO|FOLDER", help="photos or folders (walked recursively); "
                     "a leading .keras or .onnx file or a bundled model's name (fer2013, ferplus, compact, \"bundled\") names the model "
                     "(default: the default bundled model)")
    for item in dataclasses.fields(ExplainConfig):
        if item.name not in ("sources", "model"):  # the model is the leading source
            _add_field_flag(cmd, item, **_EXPLAIN_FLAGS.get(item.name, {}))
    cmd.set_defaults(handler=_explain)


def _explain(args) -> int:
    from emorec import explain
    from emorec.extras import require
    from emorec.catalog import names_a_model

    require("keras", explain.PURPOSE)  # before any check of the inputs: a base install gets the install hint first

    sources = list(args.sources)
    model = sources.pop(0) if names_a_model(sources[0]) else None
    if not sources:
        raise UsageError("give at least one photo or folder after the model")
    cfg = ExplainConfig(**{**_field_values(ExplainConfig, args), "sources": sources, "model": model})
    results = explain.run_explain(cfg)
    say(*explain.format_results(results))
    failed = [result for result in results if result.error is not None]
    say(*(f"emorec explain: error: {result.error}" for result in failed), err=True)
    written = sum(result.output is not None for result in results)
    say(f"{written} PNG(s) written to {args.out}" + (f"; {len(failed)} file(s) failed" if failed else ""))
    return 1 if failed else 0


# ----------------------------------------------------------------------------
# serve
# ----------------------------------------------------------------------------


def _add_serve(commands) -> None:
    cmd = commands.add_parser("serve", help="an HTTP API and a web page for recognizing emotions (needs emorec[serve])")
    for item in dataclasses.fields(ServeConfig):
        _add_field_flag(cmd, item)
    cmd.set_defaults(handler=_serve)


def _serve(args) -> int:
    from emorec.serve import serve

    cfg = ServeConfig(**{item.name: getattr(args, item.name) for item in dataclasses.fields(ServeConfig)
                         if hasattr(args, item.name)})
    say(f"emorec serve: http://{cfg.host}:{cfg.port}/ (API docs at /docs); Ctrl-C stops it")
    serve(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
