"""The image as the learnt network takes it, one function for training and reading.

It is the local engine's own input (:func:`~..local.engine.model_input`: the same image
checks, transparency on white, grey, 64 pixels high, -1..1) averaged over 2x2 pixels to
32 high: a quarter of the pixels to convolve, and captcha glyphs stay legible at that
height. Images of one batch are padded on the right with background to a common width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..local.engine import model_input as local_model_input

Array = np.ndarray[Any, np.dtype[Any]]

#: The height of the network's input, in pixels.
HEIGHT = 32
#: The network halves the width twice: widths are padded to a multiple of this.
WIDTH_STEP = 4
#: The value of white background in the input.
BACKGROUND = 1.0


def network_input(image: bytes, max_pixels: int | None = None) -> Array:
    """``image`` as HEIGHT x width float32 values (-1 black .. 1 white). Raises
    :class:`~..local.InvalidImageError` for bytes that are no readable image, an image over
    ``max_pixels``, or one too wide once scaled."""
    values = local_model_input(image, max_pixels)[0, 0]
    height, width = values.shape
    width -= width % 2
    # The mean of each 2x2 block, as four strided views: a third of numpy's mean over axes.
    top, bottom = values[0:height:2, :width], values[1:height:2, :width]
    halved = (top[:, 0::2] + top[:, 1::2] + bottom[:, 0::2] + bottom[:, 1::2]) * np.float32(0.25)
    return halved.astype(np.float32, copy=False)  # type: ignore[no-any-return]


def padded(values: Array, width: int) -> Array:
    """``values`` (HEIGHT x w) padded with background on the right to ``width``, at least
    one WIDTH_STEP wide and a multiple of it."""
    width = max(width, values.shape[1], WIDTH_STEP)
    width += -width % WIDTH_STEP
    out = np.full((values.shape[0], width), BACKGROUND, dtype=np.float32)
    out[:, : values.shape[1]] = values
    return out


def batch(inputs: Sequence[Array]) -> Array:
    """Network inputs as one batch x HEIGHT x width x 1 array, padded to the widest."""
    width = max(values.shape[1] for values in inputs)
    return np.stack([padded(values, width) for values in inputs])[..., np.newaxis]
