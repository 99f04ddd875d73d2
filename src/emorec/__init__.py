"""emorec: facial emotion recognition, from a folder of labelled faces to predictions on photos and videos.

The stages live in their own modules: `data` (scan, validate, load),
`visualize`, `model`, `train`, `evaluate`, `export`, `predict` and `cli`;
`recognizer`, `runtime`, `faces` and `preprocess` hold what prediction
runs on. Importing `emorec` itself is light; ONNX Runtime loads with a
model, and Keras only for training and `.keras` files.
"""

__version__ = "0.1.0"

__all__ = ["Recognizer", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import emorec` (and `emorec --help`) load no model runtime.
    if name == "Recognizer":
        from emorec.recognizer import Recognizer

        return Recognizer
    raise AttributeError(f"module 'emorec' has no attribute {name!r}")
