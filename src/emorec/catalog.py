"""The models shipped with emorec: their names, their files, and which one is the default.

A model argument is a bundled model's name ("fer2013", "ferplus", NAME-int8 for
the int8 ONNX copy), "bundled" / None for the default model, or a path. This
module turns such an argument into a file; it imports nothing from emorec, so
config, runtime, model and labels can all use it.
"""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).parent / "models"
BUNDLED_NAMES = ("fer2013", "ferplus", "compact")  # models shipped in MODELS_DIR; see their model cards there
DEFAULT_MODEL = "ferplus"  # what "bundled" (and no model at all) means: see the model cards for why
BUNDLED_ONNX = MODELS_DIR / f"emorec-{DEFAULT_MODEL}.onnx"
MODEL_SUFFIXES = (".onnx", ".keras")


def onnx_path(model: str | Path | None) -> Path:
    """The file of a model argument for inference.

    A bundled model's name ("fer2013", "ferplus") means its ONNX file and NAME-int8 its
    int8 copy; None and "bundled" mean the default model (DEFAULT_MODEL). Anything
    else is a path. Bundled models ship as ONNX only: training from one and
    explaining one rebuild it in Keras (emorec.model.model_from_onnx).
    """
    name = bundled_name(model)
    if name is None:
        return Path(model)
    return MODELS_DIR / f"emorec-{name.removesuffix('-int8')}{'.int8' if name.endswith('-int8') else ''}.onnx"


def names_a_model(text: str) -> bool:
    """True when text is a bundled model's name ("bundled", "fer2013", ...) or a file name with a model suffix."""
    return bundled_name(text) is not None or text.endswith(MODEL_SUFFIXES)


def bundled_name(model: str | Path | None) -> str | None:
    """The bundled model a model argument names ("ferplus", "fer2013-int8", ...), or None for a path."""
    text = "bundled" if model is None else str(model)
    name = text.replace("bundled", DEFAULT_MODEL, 1) if text in ("bundled", "bundled-int8") else text
    return name if name.removesuffix("-int8") in BUNDLED_NAMES else None
