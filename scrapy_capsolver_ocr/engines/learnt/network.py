"""The learnt reader's network: its layers, their parameters, and its forward pass.

Three 3x3 convolutions (each followed by ReLU and max-pooling) turn the 32-pixel-high
input into 4 rows of features per column a quarter of the input's width; each column's
features then become one frame, a 1x3 convolution across neighbouring columns gives each
frame its context, and a 1x1 convolution scores every class (blank first) per frame: the
frames CTC reads the text from. Arrays are batch x height x width x channels; the forward
pass takes a numpy module (numpy, or autograd's for training) so that the same code is
trained and tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .inputs import HEIGHT

Array = np.ndarray[Any, np.dtype[Any]]
Parameters = dict[str, Array]
#: Each normalised layer's mean and variance per channel, over the images they were taken on.
Statistics = dict[str, tuple[Array, Array]]
_EPSILON = 1e-5


@dataclass(frozen=True)
class Conv:
    """A convolution with ``size`` (height, width) kernels, zero-padded to keep the size,
    batch-normalised in training (unless ``normalised`` is false), then ReLU (unless
    ``relu`` is false), then max-pooling over ``pool`` (height, width)."""

    name: str
    size: tuple[int, int]
    channels: int
    pool: tuple[int, int] = (1, 1)
    relu: bool = True
    normalised: bool = True


#: Layers up to the columns (the height left is HEIGHT / 8 = 4 rows).
FEATURES = (
    Conv("conv1", (3, 3), 16, (2, 2)),
    Conv("conv2", (3, 3), 32, (2, 2)),
    Conv("conv3", (3, 3), 64, (2, 1)),
)
#: Rows of features per column once FEATURES have pooled the input.
ROWS = HEIGHT // 8
#: Channels of the frame layer (the 1x3 convolution across columns).
FRAME_CHANNELS = 128


def layers(classes: int) -> tuple[tuple[Conv, ...], tuple[Conv, ...]]:
    """The layers before the columns become frames, and those after, for ``classes``
    classes (the blank and the alphabet)."""
    frames = (
        Conv("frames", (1, 3), FRAME_CHANNELS),
        Conv("classes", (1, 1), classes, relu=False, normalised=False),
    )
    return FEATURES, frames


def initial_parameters(classes: int, seed: int) -> Parameters:
    """He-initialised weights (height x width x in x out), zero biases, and the scale
    (``gamma``, 1) and shift (``beta``, 0) of each normalised layer.

    Batch normalisation is what lets the network out of its first plateau (reading only
    blanks) in a few epochs: without it, 400 labels took 10 of 14 epochs to get there."""
    random = np.random.default_rng(seed)
    features, frames = layers(classes)
    parameters: Parameters = {}
    channels = 1
    for layer in features + frames:
        if layer.name == frames[0].name:
            channels *= ROWS
        fan_in = layer.size[0] * layer.size[1] * channels
        shape = (*layer.size, channels, layer.channels)
        weights = random.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        parameters[f"{layer.name}.weight"] = weights.astype(np.float32)
        parameters[f"{layer.name}.bias"] = np.zeros(layer.channels, dtype=np.float32)
        if layer.normalised:
            parameters[f"{layer.name}.gamma"] = np.ones(layer.channels, dtype=np.float32)
            parameters[f"{layer.name}.beta"] = np.zeros(layer.channels, dtype=np.float32)
        channels = layer.channels
    return parameters


def folded(parameters: Parameters, statistics: Statistics) -> Parameters:
    """The parameters of the network that reads: each normalisation, with the mean and
    variance in ``statistics``, folded into its convolution's weights and bias (the
    network written to the ONNX file has no normalisation left)."""
    out = {
        name: values
        for name, values in parameters.items()
        if not name.endswith((".gamma", ".beta"))
    }
    for name, (mean, variance) in statistics.items():
        scale = parameters[f"{name}.gamma"] / np.sqrt(variance + _EPSILON)
        out[f"{name}.weight"] = (parameters[f"{name}.weight"] * scale).astype(np.float32)
        bias = (parameters[f"{name}.bias"] - mean) * scale + parameters[f"{name}.beta"]
        out[f"{name}.bias"] = bias.astype(np.float32)
    return out


def classes_of(parameters: Parameters) -> int:
    return int(parameters["classes.bias"].shape[0])


def count(parameters: Parameters) -> int:
    """How many numbers the network learns."""
    return sum(int(values.size) for values in parameters.values())


def _conv(xp: Any, x: Any, layer: Conv, parameters: Any, statistics: Statistics | None) -> Any:
    weights = parameters[f"{layer.name}.weight"]
    kernel_height, kernel_width = layer.size
    batch, height, width, channels = x.shape
    top, left = kernel_height // 2, kernel_width // 2
    padded = xp.pad(x, ((0, 0), (top, top), (left, left), (0, 0)), "constant")
    # im2col: every kernel position's shifted view, side by side on the channel axis,
    # in the order the weights are flattened (row, column, channel).
    patches = xp.concatenate(
        [
            padded[:, row : row + height, column : column + width, :]
            for row in range(kernel_height)
            for column in range(kernel_width)
        ],
        axis=3,
    )
    flat = xp.reshape(patches, (batch * height * width, kernel_height * kernel_width * channels))
    out = xp.dot(flat, xp.reshape(weights, (-1, layer.channels))) + parameters[f"{layer.name}.bias"]
    if f"{layer.name}.gamma" in parameters:  # training: normalise over the batch
        mean = xp.mean(out, axis=0)
        variance = xp.mean((out - mean) ** 2, axis=0)
        if statistics is not None:
            statistics[layer.name] = (np.asarray(mean), np.asarray(variance))
        out = (out - mean) / xp.sqrt(variance + _EPSILON)
        out = out * parameters[f"{layer.name}.gamma"] + parameters[f"{layer.name}.beta"]
    out = xp.reshape(out, (batch, height, width, layer.channels))
    if layer.relu:
        out = xp.maximum(out, 0.0)
    pool_height, pool_width = layer.pool
    if layer.pool != (1, 1):
        out = xp.reshape(
            out,
            (
                batch,
                height // pool_height,
                pool_height,
                width // pool_width,
                pool_width,
                layer.channels,
            ),
        )
        out = xp.max(xp.max(out, axis=4), axis=2)
    return out


def forward(parameters: Any, x: Any, xp: Any = np, statistics: Statistics | None = None) -> Any:
    """Logits (batch x frames x classes) of inputs ``x`` (batch x HEIGHT x width x 1, width
    a multiple of 4): one frame per 4 pixels of width. With normalisation parameters (in
    training), each normalised layer's batch mean and variance go into ``statistics``."""
    features, frames = layers(classes_of(parameters))
    for layer in features:
        x = _conv(xp, x, layer, parameters, statistics)
    batch, rows, columns, channels = x.shape
    # Each column's rows x channels become one frame's features, channel-major (the order
    # a reshape of batch x channels x rows x columns gives in the ONNX file).
    x = xp.reshape(xp.transpose(x, (0, 2, 3, 1)), (batch, 1, columns, channels * rows))
    for layer in frames:
        x = _conv(xp, x, layer, parameters, statistics)
    return x[:, 0]
