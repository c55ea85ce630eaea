"""Who reads a captcha: the :class:`ImageReader` interface, and the :class:`CaptchaImage` it
is given.

The solver asks its readers in turn; the first answer wins. The cloud reader
(:class:`~scrapy_capsolver_ocr.engines.cloud.reader.CloudReader`: CapSolver's API, with the cache,
shared calls, budget and retries) always answers or raises; a reader that can decline, such
as the local OCR reader when its confidence gate refuses a reading, returns None and the next
one reads. Readers are built by whoever builds the solver, and told what became of answers.
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

    #: The :attr:`CaptchaSolution.solver` of this reader's answers.
    name: str
    #: Reads on this machine, for free: a request may ask for it (``local=True``) or not
    #: (``local=False``), and it reads only images marked :attr:`CaptchaImage.local`.
    local: bool

    async def read(self, captcha: CaptchaImage) -> CaptchaSolution | None:
        """The answer, or None to let the next reader try. Raises a ``CaptchaSolveError``."""

    def answered(self, captcha: CaptchaImage, solution: CaptchaSolution) -> None:
        """``solution`` (from any reader) answers ``captcha``."""

    def accepted(self, solution: CaptchaSolution) -> None:
        """The site accepted ``solution`` (from any reader)."""

    async def rejected(self, solution: CaptchaSolution, message: str = "") -> None:
        """The site rejected ``solution``, one of this reader's answers. Never raises."""

    async def close(self) -> None:
        """The crawl has ended: fail what still waits and let go of what is held."""
