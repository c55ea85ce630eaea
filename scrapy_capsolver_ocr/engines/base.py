"""Who reads a captcha: the :class:`ImageReader` interface, and the :class:`CaptchaImage` it
is given.

The solver asks its readers in turn; the first answer wins. The paid reader
(:class:`~scrapy_capsolver_ocr.solving.paying.CapSolverReader`: CapSolver's API, with the cache,
shared calls, budget and retries) always answers or raises; a reader that can decline, such
as a local OCR engine that is not confident enough, returns None and the next one reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..solution import CaptchaSolution


@dataclass(frozen=True)
class CaptchaImage:
    """A checked captcha image and the options that apply to it (settings and the
    request's own, merged)."""

    body: bytes
    sha256: str
    #: Where the image came from, for messages (a URL, a selector on a page).
    source: str
    module: str | None = None
    score: float | None = None
    website_url: str | None = None
    #: The local reader may read it (local-first is on, the request did not opt out, and
    #: it is not a fresh captcha after a rejected answer).
    local: bool = False
    #: The answer's expected length and characters, when the request gave them.
    length: int | None = None
    charset: str | None = None

    @property
    def key(self) -> str:
        """What identifies the answer: the same image read with another module may differ."""
        return f"{self.sha256}:{self.module or ''}"


class ImageReader(Protocol):
    """Reads the text of a captcha image."""

    async def read(self, captcha: CaptchaImage) -> CaptchaSolution | None:
        """The answer, or None to let the next reader try. Raises a ``CaptchaSolveError``."""
