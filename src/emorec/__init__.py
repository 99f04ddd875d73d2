"""emorec: facial emotion recognition, from a folder of labelled faces to predictions on photos and videos.

The stages live in their own modules: `data` (scan, validate, load),
`visualize`, `model`, `train`, `evaluate`, `export`, `predict` and `cli`;
`recognizer`, `runtime`, `faces` and `preprocess` hold what prediction
runs on. Importing `emorec` itself is light; ONNX Runtime loads with a
model, and Keras only for training and `.keras` files.
"""

import os

__version__ = "0.1.0"

# OpenCV reads its decoder limit once, when it is loaded, so it is set here, before
# any emorec module imports cv2: a second fence behind the header check of
# emorec.data.read_image (64,000,000 is data.MAX_PIXELS). Its own log lines and
# FFmpeg's would otherwise reach the terminal; emorec reports failures itself.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "64000000")
os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

__all__ = ["Recognizer", "analyze_video", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import emorec` (and `emorec --help`) load no model runtime.
    if name == "Recognizer":
        from emorec.recognizer import Recognizer

        return Recognizer
    if name == "analyze_video":
        from emorec.video import analyze_video

        return analyze_video
    raise AttributeError(f"module 'emorec' has no attribute {name!r}")
