"""Optional dependencies: which extra brings which module, and one clear error when it is missing.

The base install (`pip install emorec`) predicts and evaluates with ONNX
Runtime. Training, `show`, `export` and `.keras` models need the `train`
extra (Keras, TensorFlow CPU, Matplotlib, tf2onnx); `emorec serve` the
`serve` extra (FastAPI, Uvicorn); `predict --engine ray` the `ray` extra (Ray Data).
"""

from __future__ import annotations

import importlib.util

from emorec.errors import EmorecError

# Top-level module -> the extra that installs it.
EXTRA_OF = {
    "keras": "train",
    "tensorflow": "train",
    "tensorboard": "train",
    "matplotlib": "train",
    "tf2onnx": "train",
    "onnx": "train",
    "yaml": "train",
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "ray": "ray",
    "pyarrow": "ray",
    "onnxruntime": "",  # part of the base install
}


class MissingExtra(EmorecError, ImportError):
    """A feature needs a package that is not installed; the message names the pip install that fixes it."""


def install_hint(module: str) -> str:
    """The pip command that installs a module emorec uses."""
    extra = EXTRA_OF.get(module.split(".")[0])
    if extra is None:
        return f"pip install {module.split('.')[0]}"
    return f"pip install 'emorec[{extra}]'" if extra else "pip install --force-reinstall emorec"


def missing_message(module: str, purpose: str = "this command") -> str:
    """One line: what needs the module, and how to install it."""
    return f"{purpose} needs {module.split('.')[0]}, which is not installed: {install_hint(module)}"


def require(module: str, purpose: str) -> None:
    """Raise MissingExtra (one line with the fix) unless module can be imported."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(missing_message(module, purpose))
