"""Model architectures, and saving/loading models that describe themselves.

Every model takes raw pixels (0-255, uint8 or float): `Rescaling(1/255)` is its
first layer, and training-only augmentation layers follow it, so a saved
`.keras` file can never be fed differently from how it was trained.

A saved model carries an `emorec.json` member inside the `.keras` zip with its
class names, input size and colour mode; `keras.models.load_model` still
loads the file as usual, and `load_model` here returns both.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

import keras
from keras import layers

from emorec.files import atomic_path
from emorec.catalog import onnx_path
from emorec.runtime import (METADATA_KEY, KerasModel, ModelError, ModelInfo, OnnxModel,  # noqa: F401
                            probabilities, read_info, tta_views)


# ----------------------------------------------------------------------------
# Architectures
# ----------------------------------------------------------------------------


class FaceAugment(layers.Layer):
    """Training-time augmentation for face crops; the identity at inference.

    Per image: a horizontal flip (expressions are near-symmetric), one random
    affine warp (rotation up to ±rotation degrees, zoom by up to ±zoom, shift
    by up to ±shift of the side) and, with probability erase_prob, a random
    rectangle (2-15% of the area) set to black so the network cannot lean on
    one region such as the mouth.

    Written with keras.ops only, so it compiles under XLA on JAX; Keras' own
    RandomRotation/Zoom/Translation layers opt out of jit, which makes a JAX
    training step run eagerly and about 50x slower. Training copies the
    trained weights into a model without this layer before saving.
    """

    def __init__(self, rotation=15.0, zoom=0.15, shift=0.1, erase_prob=0.5, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rotation, self.zoom, self.shift, self.erase_prob, self.seed = rotation, zoom, shift, erase_prob, seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # TensorFlow's projective-transform op has no XLA kernel; JAX and PyTorch compile it fine.
        self.supports_jit = keras.backend.backend() != "tensorflow"

    def call(self, images, training=None):
        if not training:
            return images
        ops = keras.ops
        images = ops.convert_to_tensor(images)
        batch, height, width = ops.shape(images)[0], images.shape[1], images.shape[2]
        flip = keras.random.uniform((batch, 1, 1, 1), seed=self.seed_generator) < 0.5
        images = ops.where(flip, ops.flip(images, axis=2), images)
        images = ops.image.affine_transform(images, self._random_affine(batch, height, width), fill_mode="nearest")
        return images * self._erase_mask(batch, height, width, images.dtype)

    def _uniform(self, batch, low, high):
        return keras.random.uniform((batch,), low, high, seed=self.seed_generator)

    def _random_affine(self, batch, height, width):
        # Maps output pixel (x, y) to input (a0 x + a1 y + a2, b0 x + b1 y + b2), about the centre.
        ops = keras.ops
        angle = self._uniform(batch, -1.0, 1.0) * (self.rotation * np.pi / 180)
        scale = 1.0 / (1.0 + self._uniform(batch, -self.zoom, self.zoom))
        dx = self._uniform(batch, -self.shift, self.shift) * width
        dy = self._uniform(batch, -self.shift, self.shift) * height
        cos, sin = ops.cos(angle) * scale, ops.sin(angle) * scale
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        a2 = cx - cos * cx + sin * cy + dx
        b2 = cy - sin * cx - cos * cy + dy
        zeros = ops.zeros_like(cos)
        return ops.stack([cos, -sin, a2, sin, cos, b2, zeros, zeros], axis=1)

    def _erase_mask(self, batch, height, width, dtype):
        ops = keras.ops
        area = self._uniform(batch, 0.02, 0.15)
        ratio = ops.exp(self._uniform(batch, np.log(0.5), np.log(2.0)))
        h = ops.sqrt(area * ratio) * height
        w = ops.sqrt(area / ratio) * width
        top = self._uniform(batch, 0.0, 1.0) * (height - h)
        left = self._uniform(batch, 0.0, 1.0) * (width - w)
        rows = ops.arange(height, dtype="float32")[None, :, None]
        cols = ops.arange(width, dtype="float32")[None, None, :]
        inside = ((rows >= top[:, None, None]) & (rows < (top + h)[:, None, None])
                  & (cols >= left[:, None, None]) & (cols < (left + w)[:, None, None]))
        erase = (self._uniform(batch, 0.0, 1.0) < self.erase_prob)[:, None, None]
        return ops.cast(~(inside & erase), dtype)[..., None]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rotation": self.rotation, "zoom": self.zoom, "shift": self.shift,
                "erase_prob": self.erase_prob, "seed": self.seed}


def _conv_bn_relu(x, filters: int, stride: int = 1):
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, kernel_initializer="he_normal")(x)
    x = layers.BatchNormalization()(x)
    return layers.Activation("relu")(x)


def seed_backbone(x, dropout: float):
    """The classic notebook CNN: three Conv2D/MaxPooling blocks, Flatten, Dense, Dropout."""
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    return layers.Dropout(dropout)(x)


def vgg_backbone(x, dropout: float):
    """VGG-style network for 48x48 faces: four stages of two 3x3 conv+BN+ReLU, max pooling.

    Widths 64-128-256-512 (48 -> 24 -> 12 -> 6 -> 3), global average pooling
    and one 256-unit hidden layer keep it near 4.9M parameters (about 19 MB).
    """
    for filters in (64, 128, 256, 512):
        x = _conv_bn_relu(x, filters)
        x = _conv_bn_relu(x, filters)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(256, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    return layers.Dropout(dropout)(x)


def _basic_block(x, filters: int, stride: int):
    shortcut = x
    y = _conv_bn_relu(x, filters, stride)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal")(y)
    y = layers.BatchNormalization(gamma_initializer="zeros")(y)  # each block starts as identity
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
        shortcut = layers.BatchNormalization()(shortcut)
    return layers.Activation("relu")(layers.Add()([y, shortcut]))


def resnet_backbone(x, dropout: float):
    """A small ResNet-18-style network: 3x3 stem, four stages of two basic blocks.

    Widths 32-64-128-256 at 48-24-12-6 pixels, about 2.8M parameters.
    """
    x = _conv_bn_relu(x, 32)
    for stage, filters in enumerate((32, 64, 128, 256)):
        x = _basic_block(x, filters, stride=1 if stage == 0 else 2)
        x = _basic_block(x, filters, stride=1)
    x = layers.GlobalAveragePooling2D()(x)
    return layers.Dropout(dropout)(x)


def _squeeze_excite(x, ratio: int = 4):
    """Channel attention: rescale each channel by a gate computed from the whole feature map."""
    channels = x.shape[-1]
    gate = layers.GlobalAveragePooling2D(keepdims=True)(x)
    gate = layers.Conv2D(max(channels // ratio, 8), 1, activation="relu")(gate)
    gate = layers.Conv2D(channels, 1, activation="hard_sigmoid")(gate)
    return layers.Multiply()([x, gate])


def _inverted_residual(x, filters: int, stride: int, expand: int, squeeze: bool):
    """MobileNetV2/V3 block: 1x1 expansion, 3x3 depthwise, optional squeeze-excitation, 1x1 linear projection."""
    shortcut, inputs = x, x.shape[-1]
    if expand > 1:
        x = layers.Conv2D(inputs * expand, 1, use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
    x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    if squeeze:
        x = _squeeze_excite(x)
    x = layers.Conv2D(filters, 1, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    if stride == 1 and inputs == filters:
        x = layers.Add()([shortcut, x])
    return x


# (filters, stride, expansion, squeeze-excitation) of each block, for 48-64 px faces: 48 -> 24 -> 12 -> 6.
_COMPACT_BLOCKS = (
    (16, 1, 1, False),
    (24, 2, 4, False), (24, 1, 4, False),
    (40, 2, 4, True), (40, 1, 4, True), (40, 1, 4, True),
    (80, 2, 4, True), (80, 1, 4, True), (80, 1, 4, True),
    (112, 1, 4, True), (112, 1, 4, True),
)


def compact_backbone(x, dropout: float, width: float = 1.0):
    """Inverted residual blocks with squeeze-excitation (MobileNetV3-style) sized for 48-64 px faces.

    A full-resolution 3x3 stem, eleven blocks over 48 -> 24 -> 12 -> 6 pixels and a 1x1 head. width scales
    every layer: compact-s (0.75) is 35 MFLOPs a face at 48 px, compact-m (1.0) 54 and compact-l (1.5)
    117 (emorec.model.count_flops), against the VGG's 937.
    """
    scaled = lambda filters: max(8, int(round(filters * width / 8)) * 8)  # noqa: E731  (multiples of 8 run fastest)
    x = _conv_bn_relu(x, scaled(16))
    for filters, stride, expand, squeeze in _COMPACT_BLOCKS:
        x = _inverted_residual(x, scaled(filters), stride, expand, squeeze)
    x = layers.Conv2D(scaled(320), 1, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return layers.Dropout(dropout)(x)


BACKBONES: dict[str, Callable] = {
    "seed": seed_backbone,
    "vgg": vgg_backbone,
    "resnet": resnet_backbone,
    "compact-s": lambda x, dropout: compact_backbone(x, dropout, width=0.75),
    "compact-m": lambda x, dropout: compact_backbone(x, dropout, width=1.0),
    "compact-l": lambda x, dropout: compact_backbone(x, dropout, width=1.5),
}


def build_model(
    arch: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    augment: bool = False,
    dropout: float = 0.5,
    seed: int | None = None,
) -> keras.Model:
    """Build an uncompiled classifier that takes raw pixels.

    The output is one sigmoid unit for two classes and a softmax over
    num_classes otherwise.
    """
    if arch not in BACKBONES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(BACKBONES)}")
    if num_classes < 2:
        raise ValueError(f"need at least two classes, got {num_classes}")
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    if augment:
        x = FaceAugment(seed=seed, name="augmentation")(x)
    x = BACKBONES[arch](x, dropout)
    if num_classes == 2:
        outputs = layers.Dense(1, activation="sigmoid", name="emotion", dtype="float32")(x)
    else:
        outputs = layers.Dense(num_classes, activation="softmax", name="emotion", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"emorec_{arch}")


def inference_copy(model: keras.Model, arch: str, dropout: float = 0.5, into: keras.Model | None = None) -> keras.Model:
    """The same network without augmentation (in the global dtype policy, float32 by default), with model's weights.

    Saved models are built from standard Keras layers only, so plain
    `keras.models.load_model` reads them without importing emorec. into, an
    earlier copy of the same model, is refreshed in place instead of building
    the network again (saving every epoch).
    """
    plain = into or build_model(arch, model.input_shape[1:], _num_classes(model), augment=False, dropout=dropout)
    _copy_weights(model, plain)
    return plain


def undo_class_weights(model: keras.Model, weights: list[float]) -> None:
    """Shift the classifier's bias by -log(weight) so outputs follow the training class frequencies again.

    Training with class weights w makes the network estimate p(class | image)
    scaled by w and renormalised; subtracting log w from the logits undoes
    the scaling (logit adjustment), which is the choice that maximises
    accuracy. The weights still helped: rare classes got a larger share of
    the gradient while the features were learnt.
    """
    dense = model.layers[-1]
    kernel, bias = dense.get_weights()
    log_w = np.log(np.asarray(weights, dtype="float64"))
    shift = log_w[1] - log_w[0] if bias.shape[0] == 1 else log_w  # sigmoid: the logit of class 1 over class 0
    dense.set_weights([kernel, (bias - shift).astype(bias.dtype)])


def _copy_weights(source: keras.Model, target: keras.Model, skip: tuple[str, ...] = ()) -> None:
    """Copy weights layer by layer between two builds of one architecture, ignoring FaceAugment."""
    def plain_layers(model):
        return [layer for layer in model.layers if not isinstance(layer, FaceAugment)]

    for from_layer, to_layer in zip(plain_layers(source), plain_layers(target), strict=True):
        if to_layer.name not in skip:
            to_layer.set_weights(from_layer.get_weights())


def load_weights_from(model: keras.Model, path: str | Path, class_names: list[str]) -> list[str]:
    """Copy a saved model's weights into model, built with the same architecture, to fine-tune it.

    The classifier keeps the saved weights of the classes both models name (matched
    by name, so the order may differ); a class the saved model lacks starts from its
    fresh initialisation. Class weights undone in the saved model are put back, so
    training goes on from where it stopped. Returns the classes whose weights were copied.
    """
    path = onnx_path(path)
    info = read_info(path)
    arch, shape = model.name.removeprefix("emorec_"), tuple(model.input_shape[1:])
    if (info.arch, info.input_shape) != (arch, shape):
        raise ModelError(f"{path}: a {info.arch} model for {info.input_shape} inputs cannot start a {arch} model "
                         f"for {shape} inputs (match --arch, --image-size and --color-mode)")
    saved = load_model(path)[0]
    _copy_weights(saved, model, skip=("emotion",))
    undone = info.extra.get("class_weights_undone")
    if undone:  # back to the logits training left, before the class weights were undone
        undo_class_weights(saved, [1 / weight for weight in undone])
    kernel, bias = saved.get_layer("emotion").get_weights()
    if info.class_names == class_names:
        model.get_layer("emotion").set_weights([kernel, bias])
        return list(class_names)
    if _num_classes(model) == 2 or len(info.class_names) == 2:  # a sigmoid unit has no per-class weights to move
        return []
    shared = [name for name in class_names if name in info.class_names]
    new_kernel, new_bias = model.get_layer("emotion").get_weights()
    for name in shared:
        new_kernel[:, class_names.index(name)] = kernel[:, info.class_names.index(name)]
        new_bias[class_names.index(name)] = bias[info.class_names.index(name)]
    model.get_layer("emotion").set_weights([new_kernel, new_bias])
    return shared


def _num_classes(model: keras.Model) -> int:
    units = model.output_shape[-1]
    return 2 if units == 1 else units


def count_flops(model: keras.Model) -> int:
    """Multiply-accumulates x 2 per image for the Conv2D and Dense layers."""
    total = 0
    for layer in _all_layers(model):
        if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)):
            out_h, out_w = layer.output.shape[1:3]
            kernel = int(np.prod(layer.kernel.shape))
            total += 2 * out_h * out_w * kernel
        elif isinstance(layer, layers.Dense):
            total += 2 * int(np.prod(layer.kernel.shape))
    return total


def _all_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


# ----------------------------------------------------------------------------
# Inference helpers shared by evaluate and predict
# ----------------------------------------------------------------------------


def predict_probabilities(model: keras.Model, images: np.ndarray, tta: bool | str = False) -> np.ndarray:
    """Class probabilities (N, num_classes) of an in-memory Keras model for raw-pixel images (N, H, W, C).

    tta: False/"none", True/"flip" or "multi" (see emorec.runtime.tta_views).
    A binary model's single sigmoid output becomes two columns [p(first), p(second)].
    """
    info = ModelInfo(class_names=[str(i) for i in range(_num_classes(model))])
    return probabilities(KerasModel(model, info), images, tta)


# ----------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------


def save_model(model: keras.Model, path: str | Path, info: ModelInfo, overwrite: bool = False) -> Path:
    """Save model + metadata atomically to a `.keras` file.

    Refuses to replace an existing file unless overwrite is True.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"{path}: model files must end in .keras")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True / --exist-ok to replace it)")
    with atomic_path(path, overwrite, suffix=".keras") as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(METADATA_KEY, info.to_json())
    return path


def load_model(path: str | Path | None = None) -> tuple[keras.Model, ModelInfo]:
    """Load a saved model into Keras with its metadata: a `.keras` file, or an `.onnx` file rebuilt by
    `model_from_onnx`; a bundled model's name (None, "bundled": the default one) means its ONNX file."""
    path = onnx_path(path)
    if path.suffix == ".onnx":
        return model_from_onnx(path)
    runtime = KerasModel.load(path)
    return runtime.model, runtime.info


# The bundled models ship as ONNX only (the base install runs no Keras), so training from them and
# explaining them rebuild the Keras network from the ONNX file.
_QUANTIZED_OPS = {"QLinearConv", "QLinearMatMul", "QuantizeLinear", "DequantizeLinear", "ConvInteger", "MatMulInteger"}


def model_from_onnx(path: str | Path) -> tuple[keras.Model, ModelInfo]:
    """The Keras network an emorec ONNX file was exported from, rebuilt, and the file's metadata.

    The network comes from `build_model` with the metadata's arch, input
    shape and classes; the weights from the file's initializers, layer by
    layer in graph order. The exporter folds each BatchNormalization into
    the bias-free convolution before it (and into a scale and shift after a
    Dense layer); those come back as BatchNormalization layers that apply
    exactly that scale and shift (mean 0, variance 1 - epsilon). So the
    rebuilt model computes the same function at inference, and fine-tuning
    starts from it; in training mode BatchNormalization normalises with batch
    statistics, so the first steps re-learn each channel's scale. Raises
    ModelError for an int8 file, an architecture whose layers do not line up
    with the graph, or a rebuilt model whose probabilities differ from ONNX
    Runtime's by more than 1e-4 on face-like images.
    """
    from emorec.export import TOLERANCE, check_faces
    from emorec.extras import require

    require("onnx", "training from or explaining an ONNX model")
    import onnx
    from onnx import numpy_helper

    onnx_model = OnnxModel(path)
    info, path = onnx_model.info, onnx_model.path
    graph = onnx.load(str(path)).graph
    if any(node.op_type in _QUANTIZED_OPS for node in graph.node):
        raise ModelError(f"{path}: an int8 model cannot be rebuilt in Keras; use the float32 model it was made from")
    values = {item.name: numpy_helper.to_array(item) for item in graph.initializer}
    model = build_model(info.arch, info.input_shape, len(info.class_names))
    try:
        _set_onnx_weights(model, _onnx_layers(graph.node, values))
    except (StopIteration, ValueError, KeyError, IndexError, TypeError) as error:
        raise ModelError(f"{path}: its graph does not line up with a {info.arch} network ({error or 'too few layers'})") from None
    images = check_faces(info)
    difference = float(np.abs(predict_probabilities(model, images) - probabilities(onnx_model, images)).max())
    if difference > TOLERANCE:
        raise ModelError(f"{path}: the {info.arch} network rebuilt in Keras differs from the ONNX file by {difference:.2g}")
    return model, info


def _onnx_layers(nodes, values: dict[str, np.ndarray]) -> dict[str, list]:
    """Weights by kind, in graph order: "conv" (kernel OIHW, bias) and "dense" (kernel, its Mul / Add chain)."""
    consumers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: dict[str, list] = {"conv": [], "dense": []}
    for node in nodes:
        if node.op_type == "Conv":  # its bias is an input, a constant Add after it, or left out when all zero
            kernel = values[node.input[1]]
            bias = values[node.input[2]] if len(node.input) > 2 else dict(_affine_after(node, consumers, values)).get(
                "Add", np.zeros(kernel.shape[0], kernel.dtype))
            found["conv"].append((kernel, bias))
        elif node.op_type == "MatMul" and node.input[1] in values:
            found["dense"].append((values[node.input[1]], _affine_after(node, consumers, values)))
    return found


def _affine_after(node, consumers: dict[str, list], values: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """The chain of Mul / Add nodes with a constant operand that follows node: ("Mul", scale), ("Add", shift)."""
    chain = []
    following = consumers.get(node.output[0], [])
    while len(following) == 1 and following[0].op_type in ("Mul", "Add"):
        step = following[0]
        constant = [values[name] for name in step.input if name in values]
        if len(constant) != 1:
            break
        chain.append((step.op_type, constant[0].reshape(-1)))
        following = consumers.get(step.output[0], [])
    return chain


def _set_onnx_weights(model: keras.Model, found: dict[str, list]) -> None:
    """Copy the weights of _onnx_layers into model's Conv2D, Dense and BatchNormalization layers.

    Layers take the graph's convolutions (and dense kernels) in order among those of their shape: a
    residual block's shortcut may come first in the graph, its other convolutions keep their order.
    """
    convs, denses = list(found["conv"]), iter(found["dense"])
    folded = {}  # layer name -> (scale, shift) of the BatchNormalization folded into it
    for layer in model.layers:
        if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)):
            # OIHW -> HWIO; a depthwise kernel is a grouped convolution's (C, 1, H, W) -> (H, W, C, 1)
            order = (2, 3, 0, 1) if isinstance(layer, layers.DepthwiseConv2D) else (2, 3, 1, 0)
            shape = tuple(layer.kernel.shape)
            index = next(i for i, (kernel, _) in enumerate(convs) if kernel.transpose(order).shape == shape)
            kernel, bias = convs.pop(index)
            kernel = kernel.transpose(order)
            layer.set_weights([kernel, bias] if layer.use_bias else [kernel])
            folded[layer.name] = (np.ones_like(bias), bias)
        elif isinstance(layer, layers.Dense):
            kernel, chain = next(denses)
            units = kernel.shape[1]
            ops = {"Mul": np.ones(units, kernel.dtype), "Add": np.zeros(units, kernel.dtype), **dict(chain)}  # ones, zeros: left out
            layer.set_weights([kernel, ops["Add"]] if layer.use_bias else [kernel])
            folded[layer.name] = (ops["Mul"], ops["Add"])
        elif isinstance(layer, layers.BatchNormalization):
            scale, shift = folded[layer.input._keras_history.operation.name]  # the layer it normalises
            layer.set_weights([scale, shift, np.zeros_like(scale), np.full_like(scale, 1 - layer.epsilon)])
    if convs or next(denses, None) is not None:
        raise ValueError("the graph has more layers than the network")
