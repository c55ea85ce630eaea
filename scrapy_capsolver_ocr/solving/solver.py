"""Solving images for a crawl: check the image and the options, route it to a reader, count.

:class:`CaptchaSolver` is what the middleware, browser pages and spiders (through
:func:`~scrapy_capsolver_ocr.get_solver`) all solve through. It checks each image before
anything is spent on it, asks its readers in turn (:mod:`.reading`), and keeps the
``capsolver/requested``, ``solved``, ``failed`` and ``solve_time`` stats. The paid reader,
:class:`~scrapy_capsolver_ocr.solving.paying.CapSolverReader`, paces, retries and counts every
createTask call. With ``CAPSOLVER_LOCAL_OCR``, the local reader
(:class:`~scrapy_capsolver_ocr.engines.local.reader.LocalReader`) reads each image first and
answers when it is sure enough.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from scrapy.statscollectors import StatsCollector

from ..api.client import CapSolverApi
from ..checks import (
    check_charset,
    check_flag,
    check_length,
    check_score,
    check_text,
    check_url,
)
from ..engines.base import CaptchaImage, ImageReader
from ..engines.local import require_ddddocr
from ..errors import CaptchaOptionsError, CaptchaSolveError, unexpected_error
from ..images import check_image
from ..reactor import installed_reactor
from ..settings import SolverSettings
from ..solution import LOCAL, CaptchaSolution
from ..state.base import MemoryState, SolvingState
from ..state.fleet import state_limits
from .paying import CapSolverReader

if TYPE_CHECKING:
    from ..engines.local.reader import LocalReader

logger = logging.getLogger(__name__)


class CaptchaSolver:
    """Solves captcha images for one crawl.

    Spiders get the running instance with :func:`scrapy_capsolver_ocr.get_solver` and can
    ``await solver.solve(image_bytes)`` for images they obtained themselves.
    """

    def __init__(
        self,
        config: SolverSettings,
        stats: StatsCollector,
        on_fatal: Callable[[str], None],
        *,
        state: SolvingState | None = None,
    ) -> None:
        self.config = config
        self._stats = stats
        self._reactor = installed_reactor()
        self.state = state or MemoryState(state_limits(config))
        self.paid = CapSolverReader(config, stats, self.state, on_fatal)
        self.local: LocalReader | None = None
        self._readers: list[ImageReader] = [self.paid]
        if config.local_ocr:
            require_ddddocr("CAPSOLVER_LOCAL_OCR = True")
            from ..engines.local.reader import LocalReader  # numpy and the engine: only when on

            self.local = LocalReader(config, stats, self._reactor)
            self._readers.insert(0, self.local)
        self.in_flight = 0

    def __repr__(self) -> str:
        return f"CaptchaSolver(api={self.api!r}, in_flight={self.in_flight})"

    @property
    def api(self) -> CapSolverApi:
        return self.paid.api

    @property
    def tasks_sent(self) -> int:
        """createTask calls this process made (each is paid)."""
        return self.paid.tasks_sent

    @property
    def calls_in_flight(self) -> int:
        """createTask calls sent and not answered yet; ``in_flight`` also counts the solves
        waiting for a concurrency slot, a pause or the balance read at start."""
        return self.paid.calls_in_flight

    async def solve(
        self,
        image: bytes,
        *,
        module: str | None = None,
        score: float | None = None,
        website_url: str | None = None,
        source: str = "image",
        local: bool | None = None,
        length: int | None = None,
        charset: str | None = None,
        attempt: int = 1,
    ) -> CaptchaSolution:
        """Solve ``image`` (raw bytes of a PNG, JPEG, GIF, BMP or WEBP).

        ``module``, ``score`` and ``website_url`` override the settings for this image;
        ``source`` names the image in error messages. With ``CAPSOLVER_LOCAL_OCR``, the
        image is read locally first: ``local=False`` sends it to CapSolver all the same;
        ``length`` and ``charset`` are what its answer looks like (else the settings', else
        learnt from the site); ``attempt`` > 1 (a fresh captcha after the site refused an
        answer) goes to CapSolver when there is an API key.

        Raises a :class:`CaptchaSolveError`: :class:`~scrapy_capsolver_ocr.CaptchaOptionsError`
        for a bad option, :class:`~scrapy_capsolver_ocr.CaptchaImageError` for bytes that
        cannot be sent.
        """
        self._stats.inc_value("capsolver/requested")
        self.in_flight += 1
        started = self._reactor.seconds()
        try:
            captcha = self._checked(image, module, score, website_url, source)
            captcha = self._routed(captcha, local, length, charset, attempt)
            solution = await self._read(captcha)
        except CaptchaSolveError as exc:
            self._count_failure(exc)
            raise
        except Exception as exc:
            # A bug, not a captcha failure; still, the errback gets the class it expects.
            error = unexpected_error(exc, source)
            self._count_failure(error)
            raise error from exc
        finally:
            self.in_flight -= 1
        self._count_success(self._reactor.seconds() - started)
        return solution

    def _checked(
        self,
        image: bytes,
        module: str | None,
        score: float | None,
        website_url: str | None,
        source: str,
    ) -> CaptchaImage:
        """The image and its options, checked: nothing is spent on a bad one."""
        try:
            module = check_text("module", module) if module is not None else self.config.module
            score = check_score("score", score) if score is not None else self.config.score
            if website_url is not None:
                website_url = check_url("website_url", website_url)
        except ValueError as exc:
            raise CaptchaOptionsError(str(exc)) from None
        check_image(image, self.config.max_image_size, source, self.config.max_image_pixels)
        return CaptchaImage(
            body=image,
            sha256=hashlib.sha256(image).hexdigest(),
            source=source,
            module=module,
            score=score,
            website_url=website_url,
        )

    def _routed(
        self,
        captcha: CaptchaImage,
        local: bool | None,
        length: int | None,
        charset: str | None,
        attempt: int,
    ) -> CaptchaImage:
        """``captcha`` with what the local reader needs to know about it."""
        try:
            if local is not None:
                local = check_flag("local", local)
            if length is not None:
                length = check_length("length", length)
            if charset is not None:
                charset = check_charset("charset", charset)
            if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
                raise ValueError(f"attempt={attempt!r} is not valid: expected an int >= 1")
        except ValueError as exc:
            raise CaptchaOptionsError(str(exc)) from None
        if local and self.local is None:
            raise CaptchaOptionsError(
                "local=True asks for the local OCR engine, which is off: set "
                "CAPSOLVER_LOCAL_OCR = True."
            )
        # After a refused answer the site has drawn a new captcha: the paid reader gets it,
        # unless there is no key to pay with.
        retried = attempt > 1 and self.config.api_key is not None
        use_local = self.local is not None and local is not False and not retried
        return replace(captcha, local=use_local, length=length, charset=charset)

    async def _read(self, captcha: CaptchaImage) -> CaptchaSolution:
        for reader in self._readers:
            solution = await reader.read(captcha)
            if solution is not None:
                if self.local is not None:
                    self.local.answered(captcha, solution)
                return solution
        # The paid reader always answers or raises; only a reader list without it ends here.
        raise CaptchaSolveError(f"No reader could read the captcha of {captcha.source}.")

    def _count_failure(self, exc: CaptchaSolveError) -> None:
        self._stats.inc_value("capsolver/failed")
        self._stats.inc_value(f"capsolver/failed/{type(exc).__name__}")

    def _count_success(self, seconds: float) -> None:
        self._stats.inc_value("capsolver/solved")
        self._stats.inc_value("capsolver/solve_time/total", seconds)  # type: ignore[arg-type]
        self._stats.max_value("capsolver/solve_time/max", seconds)

    # Wrong answers

    async def report_wrong(self, solution: CaptchaSolution, message: str = "") -> None:
        """The site rejected ``solution``: forget it and tell CapSolver (``feedbackTask``)
        when ``CAPSOLVER_REPORT_WRONG`` is on. A failed report is logged, never raised.
        A local answer has no task to report: it is counted in ``capsolver/local/rejected``."""
        if solution.solver == LOCAL:
            self._stats.inc_value("capsolver/local/rejected")
            return
        await self.paid.report_wrong(solution, message)

    def report_right(self, solution: CaptchaSolution) -> None:
        """The site accepted ``solution``: with local-first on, the length and characters of
        the site's answers are learnt from it."""
        if self.local is not None:
            self.local.accepted(solution)

    # Balance

    async def balance(self) -> float:
        """The account balance in USD, from ``getBalance``."""
        return await self.paid.balance()

    def hold_until_balance_checked(self) -> None:
        self.paid.hold_until_balance_checked()

    async def record_balance(self, *, at_start: bool) -> float | None:
        return await self.paid.record_balance(at_start=at_start)

    async def close(self) -> None:
        """Fail what still waits, close the connection pool and stop the local OCR threads
        (the crawl has ended)."""
        try:
            await self.paid.close()
        finally:
            if self.local is not None:
                await self.local.close()
