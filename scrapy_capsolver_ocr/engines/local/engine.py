"""ddddocr's captcha recogniser, run the way that reads best and fastest here.

The model and charset are ddddocr's own (its wheel ships them: no network). Two things
differ from ``DdddOcr.classification()``, both measured on this project's captchas:

- the input is scaled to -1..1 (``(x - 0.5) / 0.5``) as ddddocr 1.5 did and 1.6 stopped
  doing; the model was trained that way, and reads 4 to 6 points more of the demo site's
  noisy captchas with it (1.5.6 gives exactly these answers);
- each worker thread has its own onnxruntime session with one intra-op thread: onnxruntime
  releases the GIL while it runs, and its default of one thread per core per session makes
  two workers on two cores fight over them (one thread each roughly doubles throughput);
- a reading that is neither sure nor hopeless is read again by ddddocr's other bundled
  model (``common.onnx``, its "beta"), and the confidence says whether the two agreed
  (:func:`~.gate.second_opinion`): on the demo site's noisy captchas, about a fifth more
  are answered locally at the same threshold, with fewer of those answers wrong.

:meth:`OcrEngine.read` blocks for a few milliseconds: call it from worker threads only
(:mod:`.workers`), never on the reactor thread.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import InvalidImageError, require_ddddocr
from .gate import (
    Alphabet,
    Array,
    Reading,
    read_best_path,
    second_opinion,
    softmax,
    wants_second_opinion,
)
from .workers import WorkerProcesses

__all__ = ["InvalidImageError", "OcrEngine", "model_input"]

#: The recogniser ``DdddOcr()`` loads by default, beside ddddocr's ``__init__.py``.
MODEL_FILE = "common_old.onnx"
#: The recogniser ``DdddOcr(beta=True)`` loads: the second opinion.
SECOND_MODEL_FILE = "common.onnx"
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


class _Model:
    """One of ddddocr's recognisers: its file, its charset (both found on first use), the
    alphabets built over that charset, and one onnxruntime session per thread."""

    def __init__(self, file: str, beta: bool, intra_op_threads: int) -> None:
        self._file = file
        self._beta = beta
        self._intra_op_threads = intra_op_threads
        self._local = threading.local()
        self._lock = threading.Lock()
        self.loaded: tuple[str, list[str]] | None = None
        #: onnxruntime's GraphOptimizationLevel for sessions made from now on (None: its
        #: default, all optimisations); the throughput benchmark compares them.
        self.graph_optimization_level: Any = None
        self._alphabets: OrderedDict[str | None, Alphabet] = OrderedDict()

    def read(self, values: Array, chars: str | None) -> Reading:
        return read_best_path(self.probabilities(values), self.alphabet(chars))

    def probabilities(self, values: Array) -> Array:
        session = self.session()
        logits = session.run(None, {session.get_inputs()[0].name: values})[0]
        probabilities = softmax(logits)
        charset = self.charset()
        if probabilities.shape[1] != len(charset):
            raise RuntimeError(
                f"ddddocr's model {self._file} gives {probabilities.shape[1]} classes but its "
                f"charset has {len(charset)}: reinstall ddddocr"
            )
        return probabilities

    def alphabet(self, chars: str | None) -> Alphabet:
        with self._lock:
            alphabet = self._alphabets.get(chars)
            if alphabet is not None:
                self._alphabets.move_to_end(chars)
                return alphabet
        built = Alphabet(self.charset(), chars)
        with self._lock:
            self._alphabets[chars] = built
            while len(self._alphabets) > _ALPHABETS:
                self._alphabets.popitem(last=False)
        return built

    def charset(self) -> list[str]:
        return self._loaded()[1]

    def _loaded(self) -> tuple[str, list[str]]:
        with self._lock:
            if self.loaded is None:
                import ddddocr

                # The charset through ddddocr's public API; it costs one session, once.
                charset = list(ddddocr.DdddOcr(show_ad=False, beta=self._beta).get_charset())
                self.loaded = (str(Path(ddddocr.__file__).parent / self._file), charset)
            return self.loaded

    def session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self._intra_op_threads
            options.inter_op_num_threads = 1
            # The model declares a 1 x seqlen output; onnxruntime would warn at every run
            # that the real one (frames x 1 x classes) differs.
            options.log_severity_level = 3
            if self.graph_optimization_level is not None:
                options.graph_optimization_level = self.graph_optimization_level
            session = onnxruntime.InferenceSession(
                self._loaded()[0], options, providers=["CPUExecutionProvider"]
            )
            self._local.session = session
        return session


class OcrEngine:
    """Reads captcha images with ddddocr's models; thread-safe, each thread with its own
    sessions. Raises :class:`~scrapy_capsolver_ocr.engines.local.OcrUnavailableError` at once
    when ddddocr is not installed; each model loads in the first thread that needs it (the
    second one only when a reading first wants its opinion). ``second_opinion=False`` reads
    with the first model alone: faster, fewer captchas answered at a given threshold."""

    def __init__(
        self, intra_op_threads: int = 1, *, second_opinion: bool = True, processes: int = 0
    ) -> None:
        require_ddddocr("Local OCR")
        self.first = _Model(MODEL_FILE, False, intra_op_threads)
        self.second = _Model(SECOND_MODEL_FILE, True, intra_op_threads) if second_opinion else None
        self.processes: WorkerProcesses | None = None
        if processes:
            setup = {"intra_op_threads": intra_op_threads, "second_opinion": second_opinion}
            self.processes = WorkerProcesses(processes, f"{__name__}.reader_of", setup)

    def read(
        self, image: bytes, chars: str | None = None, max_pixels: int | None = None
    ) -> Reading:
        """The text of ``image`` over the alphabet ``chars`` (None: any character the model
        knows), and its confidence. Raises :class:`InvalidImageError`, and
        :class:`~.workers.WorkerProcessDied` when it reads in processes and the one reading
        this image died. Blocks."""
        if self.processes is not None:
            reading: Reading = self.processes.call(image, chars, max_pixels)
            return reading
        values = model_input(image, max_pixels)
        reading = self.first.read(values, chars)
        if self.second is not None and wants_second_opinion(reading):
            reading = second_opinion(reading, self.second.read(values, chars))
        return reading

    def probabilities(self, image: bytes, max_pixels: int | None = None) -> Array:
        """The first model's probabilities for ``image``: frames x charset. Blocks."""
        return self.first.probabilities(model_input(image, max_pixels))

    def alphabet(self, chars: str | None) -> Alphabet:
        """The first model's alphabet of ``chars``."""
        return self.first.alphabet(chars)

    def close(self) -> None:
        """Stop the worker processes, if it reads in processes; reading in processes after
        this raises RuntimeError. Blocks until they exit (each ends a read in progress
        first): call it from a thread."""
        if self.processes is not None:
            self.processes.close()


def reader_of(intra_op_threads: int, second_opinion: bool) -> Callable[..., Reading]:
    """What a worker process reads with: an engine of its own, reading in its own thread."""
    return OcrEngine(intra_op_threads, second_opinion=second_opinion).read
