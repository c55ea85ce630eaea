"""ddddocr's captcha recogniser, run the way that reads best and fastest here.

The model and charset are ddddocr's own (its wheel ships them: no network). Two things
differ from ``DdddOcr.classification()``, both measured on this project's captchas:

- the input is scaled to -1..1 (``(x - 0.5) / 0.5``) as ddddocr 1.5 did and 1.6 stopped
  doing; the model was trained that way, and reads 4 to 6 points more of the demo site's
  noisy captchas with it (1.5.6 gives exactly these answers);
- each worker thread has its own onnxruntime session with one intra-op thread: onnxruntime
  releases the GIL while it runs, and its default of one thread per core per session makes
  two workers on two cores fight over them (one thread each roughly doubles throughput).

:meth:`OcrEngine.read` blocks for a few milliseconds: call it from worker threads only
(:mod:`.workers`), never on the reactor thread.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from . import InvalidImageError, require_ddddocr
from .gate import Alphabet, Array, Reading, read_best_path, softmax

__all__ = ["InvalidImageError", "OcrEngine", "model_input"]

#: The recogniser ``DdddOcr()`` loads by default, beside ddddocr's ``__init__.py``.
MODEL_FILE = "common_old.onnx"
#: The model reads images scaled to this height.
HEIGHT = 64
#: Time and memory grow with the scaled width (0.7 s and 60 MiB at 4096 px, a minute and
#: 10 GiB at 640000): a thin strip within any pixel cap is no captcha and is not read.
MAX_WIDTH = 4096
#: Alphabets kept built (one per site's learnt characters, at most).
_ALPHABETS = 256


def model_input(image: bytes, max_pixels: int | None = None) -> Array:
    """The image as the model takes it: grey, 64 pixels high, values -1..1, 1x1xHxW.
    Transparent parts count as white background. An image over ``max_pixels``, or too
    wide once scaled, is refused from its header, before its pixels are decoded."""
    from PIL import Image

    picture: Image.Image
    try:
        picture = Image.open(io.BytesIO(image))
        width, height = picture.size
        if max_pixels is not None and width * height > max_pixels:
            raise InvalidImageError(f"{width}x{height} pixels, over {max_pixels}")
        scaled_width = int(width * (HEIGHT / max(height, 1)))
        if not 1 <= scaled_width <= MAX_WIDTH:
            raise InvalidImageError(
                f"{width}x{height} pixels: {scaled_width} px wide once scaled to {HEIGHT} px "
                f"high, not 1 to {MAX_WIDTH}"
            )
        picture.load()
    except InvalidImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImageError(str(exc) or type(exc).__name__) from None
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        picture = Image.new("RGB", rgba.size, (255, 255, 255))
        picture.paste(rgba, (0, 0), mask=rgba)
    elif picture.mode not in ("L", "RGB"):
        picture = picture.convert("RGB")  # a palette would only resize pixel by pixel
    picture = picture.resize((scaled_width, HEIGHT), Image.Resampling.LANCZOS).convert("L")
    values = np.asarray(picture, dtype=np.float32) / 255.0
    return ((values - 0.5) / 0.5)[np.newaxis, np.newaxis]


class OcrEngine:
    """Reads captcha images with ddddocr's model; thread-safe, each thread with its own
    session. Raises :class:`~scrapy_capsolver_ocr.engines.local.OcrUnavailableError` at once
    when ddddocr is not installed; the model itself loads in the first thread that reads."""

    def __init__(self, intra_op_threads: int = 1) -> None:
        require_ddddocr("Local OCR")
        self._intra_op_threads = intra_op_threads
        self._local = threading.local()
        self._lock = threading.Lock()
        self._model: tuple[str, list[str]] | None = None
        self._alphabets: OrderedDict[str | None, Alphabet] = OrderedDict()

    def read(
        self, image: bytes, chars: str | None = None, max_pixels: int | None = None
    ) -> Reading:
        """The text of ``image`` over the alphabet ``chars`` (None: any character the model
        knows), and its confidence. Raises :class:`InvalidImageError`. Blocks."""
        return read_best_path(self.probabilities(image, max_pixels), self.alphabet(chars))

    def probabilities(self, image: bytes, max_pixels: int | None = None) -> Array:
        """The model's probabilities for ``image``: frames x charset. Blocks."""
        session = self._session()
        values = model_input(image, max_pixels)
        logits = session.run(None, {session.get_inputs()[0].name: values})[0]
        probabilities = softmax(logits)
        charset = self._charset()
        if probabilities.shape[1] != len(charset):
            raise RuntimeError(
                f"ddddocr's model gives {probabilities.shape[1]} classes but its charset has "
                f"{len(charset)}: reinstall ddddocr ({len(charset)} expected)"
            )
        return probabilities

    def alphabet(self, chars: str | None) -> Alphabet:
        with self._lock:
            alphabet = self._alphabets.get(chars)
            if alphabet is not None:
                self._alphabets.move_to_end(chars)
                return alphabet
        built = Alphabet(self._charset(), chars)
        with self._lock:
            self._alphabets[chars] = built
            while len(self._alphabets) > _ALPHABETS:
                self._alphabets.popitem(last=False)
        return built

    def _charset(self) -> list[str]:
        return self._loaded()[1]

    def _loaded(self) -> tuple[str, list[str]]:
        with self._lock:
            if self._model is None:
                import ddddocr

                # The charset through ddddocr's public API; it costs one session, once.
                charset = list(ddddocr.DdddOcr(show_ad=False).get_charset())
                self._model = (str(Path(ddddocr.__file__).parent / MODEL_FILE), charset)
            return self._model

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self._intra_op_threads
            options.inter_op_num_threads = 1
            # The model declares a 1 x seqlen output; onnxruntime would warn at every run
            # that the real one (frames x 1 x classes) differs.
            options.log_severity_level = 3
            session = onnxruntime.InferenceSession(
                self._loaded()[0], options, providers=["CPUExecutionProvider"]
            )
            self._local.session = session
        return session
