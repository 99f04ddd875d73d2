"""emorec: facial emotion recognition, from a folder of labelled faces to predictions on photos and videos.

The stages live in their own modules: `data` (scan, validate, load),
`visualize`, `model`, `train`, `evaluate`, `faces`, `predict` and `cli`.
Importing `emorec` itself is light; Keras loads when a stage needs it.
"""

__version__ = "0.1.0"

__all__ = ["Recognizer", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import emorec` (and `emorec --help`) do not import TensorFlow.
    if name == "Recognizer":
        from emorec.predict import Recognizer

        return Recognizer
    raise AttributeError(f"module 'emorec' has no attribute {name!r}")
