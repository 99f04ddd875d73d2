"""The `emorec` command line: parse, call the library, print. Nothing else lives here.

Heavy imports (Keras, TensorFlow) happen inside the command handlers, so
`emorec --help` and `emorec check` start in well under a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

from emorec import __version__
from emorec.config import ARCHITECTURES, RECIPES, TTA_MODES, ConfigError, PredictConfig, TrainConfig


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 1 failure, 2 usage error)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up notices are noise on a terminal
    _ensure_std_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(args.command)
            return args.handler(args)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError) as error:
        say(f"emorec {args.command}: error: {error}", err=True)
        return 1
    except OSError as error:  # permissions, full disks, read-only folders: one line, no traceback
        where = f"{error.filename}: " if error.filename else ""
        say(f"emorec {args.command}: error: {where}{error.strerror or error}", err=True)
        return 1
    except KeyboardInterrupt:
        say("interrupted", err=True)
        return 130


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
    text = text.translate(_CONTROL)
    # Bytes of a file name that are not UTF-8 arrive as lone surrogates (U+DC80..U+DCFF).
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)


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
    parser = argparse.ArgumentParser(prog="emorec", description="Facial emotion recognition: check, show, train, evaluate, predict.")
    parser.add_argument("--version", action="version", version=f"emorec {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_check(commands)
    _add_show(commands)
    _add_pack(commands)
    _add_train(commands)
    _add_evaluate(commands)
    _add_predict(commands)
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
    cmd.set_defaults(handler=_check)


def _check(args) -> int:
    from emorec import data
    from emorec.files import check_output_path

    if args.quarantine:
        check_output_path(args.quarantine, [args.data], folder=True)
    report = data.scan_dataset(args.data)
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
    cleanup = _set_aside(report, args) if report.invalid else None
    remaining = len(report.invalid) - (len(cleanup.done) if cleanup else 0)
    say(_check_summary(report, cleanup))
    return 0 if report.total and remaining == 0 else 1


def _set_aside(report, args):
    """Quarantine or delete what the flags ask for and print what was done; None when only reporting."""
    from emorec import data

    if not (args.quarantine or args.delete):
        say("nothing changed: use --quarantine DIR to move corrupt images aside or --delete to remove them")
        return None
    cleanup = data.quarantine(report, args.quarantine) if args.quarantine else data.delete_files(report)
    for item in cleanup.left:
        say(f"  left alone: {item.path}: {item.reason}")
    for item in cleanup.failed:
        say(f"  could not {'move' if args.quarantine else 'delete'}: {item.path}: {item.reason}")
    verb = f"moved to {args.quarantine}" if args.quarantine else "deleted"
    say(f"{len(cleanup.done)} corrupt image file(s) {verb}")
    return cleanup


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
    cmd.add_argument("--seed", type=int, default=0, help="which random samples to show")
    cmd.add_argument("--exist-ok", action="store_true", help="replace existing PNGs")
    cmd.set_defaults(handler=_show)


def _show(args) -> int:
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
        raise ValueError(f"{args.out}: pack files end in .npz or .npz.xz")
    check_output_path(args.out, [args.train] + ([args.val] if args.val else []))
    if Path(args.out).exists():
        raise FileExistsError(f"{args.out}: already exists")
    channels = 1 if args.color_mode == "grayscale" else 3
    splits = {}
    for split, folder in (("train", args.train), ("val", args.val)):
        if folder:
            report = data.scan_dataset(folder)
            data.warn_invalid(report)
            splits[split] = data.load_arrays(report, args.image_size, channels)
            say(f"{split}: {len(splits[split])} images from {folder}")
    path = data.save_pack(args.out, splits)
    say(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


# ----------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------

_TRAIN_FLAGS_SKIPPED = {"data", "recipe"}


def _add_train(commands) -> None:
    cmd = commands.add_parser("train", help="train a model and write a run folder (runs/<name>/)")
    cmd.add_argument("data", help="class folders (or a .npz pack from `emorec pack`)")
    cmd.add_argument("--recipe", choices=sorted(RECIPES), default="", help="start from a named recipe (fer2013: the bundled model's)")
    for item in dataclasses.fields(TrainConfig):
        if item.name not in _TRAIN_FLAGS_SKIPPED:
            _add_field_flag(cmd, item)
    cmd.set_defaults(handler=_train)


def _add_field_flag(cmd, item: dataclasses.Field) -> None:
    flag = "--" + item.name.replace("_", "-")
    help_text = f"{item.metadata['help']} (default: {item.default})"
    if item.type in ("bool", bool):
        cmd.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        return
    kind = {"int": int, "float": float}.get(str(item.type), str)
    choices = ARCHITECTURES if item.name == "arch" else None
    cmd.add_argument(flag, type=kind, choices=choices, default=argparse.SUPPRESS, help=help_text)


def _train(args) -> int:
    from emorec.config import train_config

    overrides = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and k != "recipe"}
    cfg = train_config(args.recipe, **overrides)
    from emorec.train import train

    result = train(cfg)
    say("", f"run folder: {result.run_dir}",
        f"best model: {result.best_model}  (best val accuracy {result.best_val_accuracy:.4f}, {result.seconds:.0f} s)",
        *result.report.table().splitlines())
    return 0


# ----------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------


def _add_evaluate(commands) -> None:
    cmd = commands.add_parser("evaluate", help="metrics, confusion matrix and JSON report of a model on labelled data")
    cmd.add_argument("model", help=".keras file written by emorec train, or \"bundled\"")
    cmd.add_argument("data", help="class folders (or a .npz pack) to evaluate on")
    cmd.add_argument("--out", default=None, help="folder for eval.json and confusion_matrix.png (default: a new runs/evaluate/<model>/)")
    _add_tta_flag(cmd)
    cmd.add_argument("--json", action="store_true", help="print the report as JSON")
    cmd.add_argument("--exist-ok", action="store_true", help="replace an existing report")
    cmd.set_defaults(handler=_evaluate)


def _add_tta_flag(cmd) -> None:
    cmd.add_argument("--tta", nargs="?", const="flip", default="none", choices=TTA_MODES,
                     help="test-time augmentation: --tta (mirror) or --tta multi (12 views)")


def _evaluate(args) -> int:
    from emorec.evaluate import evaluate
    from emorec.files import check_output_path, new_run_dir
    from emorec.model import model_path, read_info

    path = model_path(args.model)
    read_info(path)  # a missing or foreign file fails before the report folder is made
    check_output_path(args.out or Path("runs") / "evaluate", [args.data, path], folder=True)
    out = args.out or new_run_dir(Path("runs") / "evaluate", path.stem)
    report = evaluate(args.model, args.data, out_dir=out, tta=args.tta, overwrite=args.exist_ok)
    say(*(json.dumps(report.to_dict(), indent=2) if args.json else report.table()).splitlines())
    if not args.json:
        say(f"report and confusion matrix written to {out}")
    return 0


# ----------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------


def _add_predict(commands) -> None:
    cmd = commands.add_parser("predict", help="recognize emotions in photos, folders or videos")
    cmd.add_argument("sources", nargs="*", help="images, folders (walked recursively) or video files; "
                     "a leading .keras file is taken as --model")
    cmd.add_argument("--model", help=".keras model (default: the bundled FER2013 model)")
    cmd.add_argument("--source", help="webcam index such as 0 (live video)")
    cmd.add_argument("--detector", default="auto", help="face detector: auto, haar, ... (default auto)")
    cmd.add_argument("--no-detect", dest="detect", action="store_false", help="inputs are already face crops")
    _add_tta_flag(cmd)
    cmd.add_argument("--save-annotated", metavar="DIR", help="write copies with boxes and labels drawn into DIR")
    cmd.add_argument("--stride", type=int, default=1, help="video: classify every N-th frame")
    cmd.add_argument("--smooth", type=float, default=0.0, help="video: smoothing of probabilities over frames, 0..0.99")
    cmd.add_argument("--exist-ok", action="store_true", help="replace existing output files")
    output = cmd.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print results as JSON")
    output.add_argument("--csv", metavar="FILE", help="write one row per face to FILE")
    cmd.set_defaults(handler=_predict)


def _predict(args) -> int:
    from emorec import predict

    sources = list(args.sources) + ([args.source] if args.source is not None else [])
    if args.model is None and sources and sources[0].endswith(".keras"):
        args.model = sources.pop(0)  # `emorec predict MODEL IMAGE...` works too
    if not sources:
        raise ValueError("give at least one image, folder or video (or --source 0 for a webcam)")
    _check_predict_outputs(args, sources)
    cfg = PredictConfig(sources=sources, model=args.model, detector=args.detector, detect=args.detect, tta=args.tta,
                        save_annotated=args.save_annotated, stride=args.stride, smooth=args.smooth, exist_ok=args.exist_ok)
    results = predict.run_predict(cfg, progress=not args.json)
    if args.csv:
        predict.write_csv(results, args.csv)
    say(*(predict.results_to_json(results) if args.json else predict.format_results(results)).splitlines())
    if args.csv:
        say(f"wrote {args.csv}")
    return 1 if any(result.error for result in results) else 0


def _check_predict_outputs(args, sources: list[str]) -> None:
    """--csv and --save-annotated: never an input nor inside an input folder, writable, no silent overwrite."""
    from emorec.files import check_output_path

    if args.csv:
        check_output_path(args.csv, sources)
        if Path(args.csv).exists() and not args.exist_ok:
            raise FileExistsError(f"{args.csv}: already exists (use --exist-ok to replace it)")
    if args.save_annotated:
        check_output_path(args.save_annotated, sources, folder=True)


if __name__ == "__main__":
    sys.exit(main())
