"""The explain stage: Grad-CAM heat maps of the part of each face that drove the model's prediction.

    >>> explainer = Explainer()                   # the bundled model (rebuilt in Keras), automatic detector
    >>> for face in explainer.explain("photo.jpg"):
    ...     face.emotion, face.heatmaps           # {"happy": (48, 48) map in [0, 1], runner-up: ...}

Faces are found, cropped and classified exactly as `emorec predict` does it
(`Recognizer.prepare` and `classify_prepared`, so the probabilities are the
ones predict reports). Grad-CAM (Selvaraju et al., 2017) then weighs the
feature maps of the last convolutional block by the gradients of a class
score (in its Grad-CAM++ form: see `channel_weights`); the positive part of
the weighted sum, scaled to [0, 1] and resized to the crop, is the heat map.
The class score is the logit before the softmax: the probability of a
confident prediction saturates near 1 and its gradient nearly vanishes.

`run_explain(cfg)` is what `emorec explain` calls: one PNG per photo (a row
per face: the crop, the top class's map, the runner-up's map), written
atomically under cfg.out with the sub-folders of folder sources. Gradients
need Keras (the `train` extra): a `.keras` model is loaded as it is, an
`.onnx` one (the bundled models) is rebuilt in Keras from its weights
(emorec.model.model_from_onnx); gradients are taken with the TensorFlow or
the JAX backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from emorec.catalog import onnx_path
from emorec.config import ExplainConfig
from emorec.errors import UsageError
from emorec.images import read_image
from emorec.extras import require
from emorec.files import check_output_path, check_targets, save_figure
from emorec.predict import error_line
from emorec.recognizer import Prepared, Recognizer, to_bgr
from emorec.results import FaceResult
from emorec.runtime import KerasModel, ModelError
from emorec.sources import expand_sources, is_video

EXPLAINED = 2  # heat maps per face: the top class and the runner-up
SHOWN_SIDE = 192  # side the crop and its maps are enlarged to before drawing (a 48-px crop 4x)
PURPOSE = "emorec explain (Grad-CAM)"


@dataclass(kw_only=True)
class FaceExplanation(FaceResult):
    """A classified face (box, probabilities, emotion, ... as in FaceResult), the crop the model saw and its heat maps.

    heatmaps maps class names to (H, W) float32 arrays in [0, 1] of the crop's
    size, the top class first, then the runner-up; 1 marks the pixels that
    raised that class's score most. crop is the (H, W, C) uint8 model input.
    """

    crop: np.ndarray
    heatmaps: dict[str, np.ndarray]


@dataclass
class ExplainResult:
    """What `run_explain` did with one photo: the faces found (without heat maps), the PNG written, or the error."""

    source: str
    faces: list[FaceResult] = field(default_factory=list)
    output: Path | None = None
    error: str | None = None


# ----------------------------------------------------------------------------
# Grad-CAM on a Keras model
# ----------------------------------------------------------------------------


def keras_runtime(model: str | Path | None) -> KerasModel:
    """A model argument loaded into Keras for gradients: a `.keras` file as saved, an `.onnx` file (a bundled
    model's name too) rebuilt from its weights by emorec.model.model_from_onnx."""
    from emorec.model import load_model

    path = onnx_path(model)
    network, info = load_model(path)
    return KerasModel(network, info, path)


def last_conv_layer(model):
    """The last layer of a Keras model whose output is a feature map (N, H, W, C): a Conv2D or an activation."""
    from keras import layers

    for layer in reversed(model.layers):
        if isinstance(layer, (layers.Conv2D, layers.Activation, layers.ReLU)) and len(layer.output.shape) == 4:
            return layer
    raise ModelError(f"model {model.name!r} has no convolutional layer to explain")


def _gradient(backend: str) -> Callable:
    """d fn(x) / dx for a scalar fn, on the given Keras backend."""
    if backend == "tensorflow":
        import tensorflow as tf

        def gradient(fn, x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                score = fn(x)
            return tape.gradient(score, x)

        return gradient
    if backend == "jax":
        import jax

        return lambda fn, x: jax.grad(fn)(x)
    raise UsageError(f"explain takes gradients with the tensorflow or jax Keras backend, not {backend!r} "
                     "(set KERAS_BACKEND=tensorflow)")


class GradCam:
    """Grad-CAM heat maps (Grad-CAM++ weights) on the last feature map of a Keras classifier ending in a Dense layer.

    The model is cut in two at that feature map (`body`: pixels -> maps,
    `head`: maps -> the classifier's input), so the gradients of the class
    scores are taken with respect to the maps themselves, on any backend
    `_gradient` knows.
    """

    def __init__(self, model):
        import keras

        self.gradient = _gradient(keras.backend.backend())
        self.layer = last_conv_layer(model)
        self.classifier = model.layers[-1]
        if not isinstance(self.classifier, keras.layers.Dense):
            raise ModelError(f"model {model.name!r} does not end in a Dense classifier layer")
        # The network cut at the feature map: pixels -> maps, and maps -> the classifier's input.
        self.body = keras.Model(model.input, self.layer.output)
        self.head = keras.Model(self.layer.output, self.classifier.input)

    def logits(self, feature_maps):
        """Class scores before the softmax (N, num_classes); a sigmoid's one logit z becomes [-z, z]."""
        from keras import ops

        z = ops.matmul(self.head(feature_maps, training=False), self.classifier.kernel)
        if self.classifier.use_bias:
            z = z + self.classifier.bias
        return ops.concatenate([-z, z], axis=1) if z.shape[-1] == 1 else z

    def __call__(self, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Heat maps (N, K, H, W) in [0, 1] for raw-pixel images (N, H, W, C) and class indices (N, K)."""
        from keras import ops

        images = np.asarray(images, np.float32)
        maps = self.body(images, training=False)
        activations = ops.convert_to_numpy(maps)
        heat = []
        for column in np.asarray(classes, np.int32).T:
            picked = ops.convert_to_tensor(column[:, None])

            def score(x, picked=picked):  # the faces are independent, so the sum's gradient is each face's own
                return ops.sum(ops.take_along_axis(self.logits(x), picked, axis=1))

            gradients = ops.convert_to_numpy(self.gradient(score, maps))
            weights = channel_weights(gradients, activations)
            heat.append(np.maximum((weights * activations).sum(axis=-1), 0))
        return np.stack([_to_unit_maps(h, images.shape[1:3]) for h in heat], axis=1)


def channel_weights(gradients: np.ndarray, activations: np.ndarray) -> np.ndarray:
    """Grad-CAM++ weights (N, 1, 1, C) of the feature maps (N, h, w, C), from a class score's gradients.

    Plain Grad-CAM weighs each map by its mean gradient; when a class is
    recognised mostly by other features being weak, that sum is negative
    everywhere and the map comes out empty (11 of 56 FER2013 val faces with
    the bundled model). Grad-CAM++ (Chattopadhay et al., 2018) sums only the
    positive gradients, each scaled by alpha, so the map shows what raised
    the score. Occluding the quarter of the crop it marks hottest lowered
    the top-class probability by 0.46 on average on those 56 faces,
    occluding the coldest quarter by 0.03.
    """
    squared, cubed = gradients**2, gradients**3
    denominator = 2 * squared + activations.sum(axis=(1, 2), keepdims=True) * cubed
    alpha = squared / np.where(denominator != 0, denominator, 1)
    return (alpha * np.maximum(gradients, 0)).sum(axis=(1, 2), keepdims=True)


def _to_unit_maps(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Coarse maps (N, h, w) >= 0 resized to size (H, W) and scaled to a peak of 1 each (all-zero stays zero)."""
    resized = np.stack([cv2.resize(m.astype(np.float32), size[::-1], interpolation=cv2.INTER_LINEAR) for m in heat]
                       ) if len(heat) else np.zeros((0, *size), np.float32)
    peak = resized.reshape(len(resized), -1).max(axis=1, initial=0)
    return np.clip(resized / np.where(peak > 0, peak, 1)[:, None, None], 0.0, 1.0)


# ----------------------------------------------------------------------------
# Faces in photos
# ----------------------------------------------------------------------------


class Explainer:
    """Find the faces in photos, classify them and explain the top class and the runner-up with Grad-CAM.

    model: a `.keras` or `.onnx` file saved by emorec (see keras_runtime),
    or a bundled model's name (None/"bundled": the default one). detector and
    detect work as in `Recognizer` (detect=False: every input is one face crop).
    """

    def __init__(self, model: str | Path | None = None, detector: str = "auto", detect: bool = True):
        require("keras", PURPOSE)
        self.recognizer = Recognizer(runtime=keras_runtime(model), detector=detector, detect=detect)
        self.grad_cam = GradCam(self.recognizer.runtime.model)

    @classmethod
    def from_config(cls, cfg: ExplainConfig) -> "Explainer":
        """An Explainer with the model, detector and options of an ExplainConfig."""
        return cls(cfg.model, detector=cfg.detector, detect=cfg.detect)

    @property
    def class_names(self) -> list[str]:
        """The model's classes, in output order."""
        return self.recognizer.class_names

    def explain(self, image: str | Path | np.ndarray, rgb: bool = False) -> list[FaceExplanation]:
        """The faces of one image (a path, or a BGR array; rgb=True for RGB), each with its heat maps."""
        return self.explain_prepared(self.recognizer.prepare(to_bgr(image, rgb)))

    def explain_prepared(self, prepared: Prepared) -> list[FaceExplanation]:
        """`explain` for the output of `Recognizer.prepare`."""
        faces = self.recognizer.classify_prepared([prepared])[0]
        if not faces:
            return []
        probabilities = np.array([[face.probabilities[name] for name in self.class_names] for face in faces])
        ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :EXPLAINED]
        heat = self.grad_cam(prepared.crops, ranked)
        return [FaceExplanation(**vars(face), crop=crop, heatmaps={self.class_names[i]: m for i, m in zip(order, maps)})
                for face, crop, order, maps in zip(faces, prepared.crops, ranked, heat)]


def explain_image(image: str | Path | np.ndarray, model: str | Path | None = None, detect: bool = True,
                  rgb: bool = False) -> list[FaceExplanation]:
    """Explain the faces of one image with a model loaded for this call (use an `Explainer` for many images)."""
    return Explainer(model, detect=detect).explain(image, rgb=rgb)


# ----------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------


def explanation_figure(faces: Sequence[FaceExplanation], row_titles: Sequence[str] | None = None,
                       title: str | None = None):
    """A Matplotlib figure with a row per face: the crop, then each class's heat map over it.

    Panels are upscaled to SHOWN_SIDE pixels; the heat-map panels are titled
    with the class name and its probability. row_titles name the crops
    (default: "face N" and its box).
    """
    require("matplotlib", PURPOSE)
    from matplotlib.figure import Figure

    columns = 1 + max((len(face.heatmaps) for face in faces), default=EXPLAINED)
    figure = Figure(figsize=(2.3 * columns, 2.5 * max(1, len(faces))))
    axes = figure.subplots(max(1, len(faces)), columns, squeeze=False)
    for row, face in enumerate(faces):
        crop = _upscaled_crop(face.crop)
        axes[row][0].imshow(crop, cmap="gray", vmin=0, vmax=255)
        axes[row][0].set_title(row_titles[row] if row_titles else _face_title(row, face), fontsize=9)
        for axis, (name, heat) in zip(axes[row][1:], face.heatmaps.items()):
            axis.imshow(crop, cmap="gray", vmin=0, vmax=255)
            axis.imshow(cv2.resize(heat, crop.shape[1::-1], interpolation=cv2.INTER_LINEAR), cmap="jet", alpha=0.45,
                        vmin=0, vmax=1)
            axis.set_title(f"{name} {face.probabilities[name]:.2f}", fontsize=10)
    for axis in axes.flat:
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def _upscaled_crop(crop: np.ndarray) -> np.ndarray:
    """A model crop (H, W, 1 or 3) enlarged to SHOWN_SIDE for display: (S, S) gray or (S, S, 3) RGB."""
    side = (SHOWN_SIDE, SHOWN_SIDE)
    image = crop[..., 0] if crop.shape[-1] == 1 else crop
    return cv2.resize(image, side, interpolation=cv2.INTER_CUBIC)


def _face_title(row: int, face: FaceResult) -> str:
    return f"face {row + 1} " + ("(whole image)" if face.box is None else "({},{},{},{})".format(*face.box))


# ----------------------------------------------------------------------------
# The `emorec explain` entry
# ----------------------------------------------------------------------------


def explain_targets(cfg: ExplainConfig) -> tuple[list[tuple[Path, Path | None]], list[ExplainResult]]:
    """(photo, PNG to write) pairs for cfg.sources, and the results of sources that cannot be explained.

    Folders are walked recursively (videos in them skipped) and keep their
    sub-folders under cfg.out; a video named directly and a folder without
    photos are errors.
    """
    pairs, refused = [], []
    for source in cfg.sources:
        if is_video(source) and not Path(source).is_dir():
            refused.append(ExplainResult(str(source), error=f"{source}: a video; explain works on photos"))
            continue
        photos = [(path, Path(cfg.out) / name.with_suffix(".png")) for path, name in expand_sources([source])
                  if not is_video(path)]
        if not photos:
            refused.append(ExplainResult(str(source), error=f"{source}: no photos in this folder"))
        pairs += photos
    return pairs, refused


def run_explain(cfg: ExplainConfig, progress: bool = True, explainer: Explainer | None = None) -> list[ExplainResult]:
    """Explain every photo of cfg.sources into a PNG under cfg.out; one ExplainResult per photo.

    Raises FileExistsError or OutputPathError before any work when a PNG
    would replace a photo of cfg.sources, an existing file (unless
    cfg.exist_ok, and never one emorec did not write), or when two photos
    would write the same PNG. A photo that cannot be read gets a result
    with error set and the others go on; a photo without faces gets no PNG.
    """
    check_output_path(cfg.out, cfg.sources, folder=True)
    pairs, results = explain_targets(cfg)
    check_targets([png for _, png in pairs], cfg.exist_ok, inputs=[photo for photo, _ in pairs])
    explainer = explainer or Explainer.from_config(cfg)
    with _photos_bar(len(pairs), progress) as bar:
        for path, png in pairs:
            results.append(_explain_photo(explainer, path, png, cfg.exist_ok))
            bar.update()
    return results


def _explain_photo(explainer: Explainer, path: Path, png: Path, exist_ok: bool) -> ExplainResult:
    try:
        faces = explainer.explain_prepared(explainer.recognizer.prepare(read_image(path, reduce=True)))
    except Exception as error:  # noqa: BLE001 - error_line re-raises what is not a bad photo
        return ExplainResult(str(path), error=error_line(path, error))
    if not faces:
        return ExplainResult(str(path))
    save_figure(explanation_figure(faces, title=path.name), png, overwrite=exist_ok)
    return ExplainResult(str(path), [FaceResult(face.box, face.probabilities, face.score) for face in faces], png)


def _photos_bar(total: int, enabled: bool):
    from emorec.progress import bar

    return bar(total=total, desc="explain", unit="image", enabled=enabled and total > 1)


def format_results(results: Sequence[ExplainResult]) -> list[str]:
    """One line per photo that was explained or had no face: `photo.jpg -> out/photo.png  face 1: happy 0.87, sad 0.06`."""
    lines = []
    for result in results:
        if result.error is not None:
            continue
        if result.output is None:
            lines.append(f"{result.source}  no face found")
            continue
        faces = "; ".join(f"face {i}: " + ", ".join(f"{name} {p:.2f}" for name, p in _top(face)) for i, face in
                          enumerate(result.faces, 1))
        lines.append(f"{result.source} -> {result.output}  {faces}")
    return lines


def _top(face: FaceResult) -> list[tuple[str, float]]:
    return sorted(face.probabilities.items(), key=lambda item: -item[1])[:EXPLAINED]
