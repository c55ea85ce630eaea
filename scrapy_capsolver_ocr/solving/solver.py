"""Solving images for a crawl: check the image, route it to a reader, count.

:class:`CaptchaSolver` is what the middleware, browser pages and spiders (through
:func:`~scrapy_capsolver_ocr.get_solver`) all solve through. It checks each image before
anything is spent on it, asks its readers in turn (:mod:`~scrapy_capsolver_ocr.engines`),
and keeps the ``capsolver/requested``, ``solved``, ``failed`` and ``solve_time`` stats.
Whoever builds the solver builds its readers: with ``CAPSOLVER_LOCAL_OCR``, the local reader
(:class:`~scrapy_capsolver_ocr.engines.local.reader.LocalReader`) first, then the cloud reader
(:class:`~scrapy_capsolver_ocr.engines.cloud.reader.CloudReader`), which paces, retries and counts
every createTask call.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence

from scrapy.statscollectors import StatsCollector

from ..engines.base import CaptchaImage, ImageReader
from ..errors import CaptchaOptionsError, CaptchaSolveError, unexpected_error
from ..images import check_image
from ..reactor import installed_reactor
from ..settings import SolverSettings
from ..solution import CaptchaSolution
from ..state.base import SolvingState
from ..state.housekeeping import quietly
from .options import SolveOptions, check_attempt, checked_options

logger = logging.getLogger(__name__)


class CaptchaSolver:
    """Solves captcha images for one crawl, with ``readers`` asked in turn and the crawl's
    solving ``state``.

    Spiders get the running instance with :func:`scrapy_capsolver_ocr.get_solver` and can
    ``await solver.solve(image_bytes)`` for images they obtained themselves.
    """

    def __init__(
        self,
        config: SolverSettings,
        stats: StatsCollector,
        readers: Sequence[ImageReader],
        state: SolvingState,
    ) -> None:
        self.config = config
        self.readers = tuple(readers)
        self.state = state
        self._stats = stats
        self._reactor = installed_reactor()
        self._reads_locally = any(reader.local for reader in self.readers)
        #: Solves under way, from the check of their image to their answer.
        self.in_flight = 0

    def __repr__(self) -> str:
        return f"CaptchaSolver(readers={self.readers!r}, in_flight={self.in_flight})"

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

        def options() -> SolveOptions:
            check_attempt(attempt)
            return checked_options(
                module=module,
                score=score,
                website_url=website_url,
                local=local,
                length=length,
                charset=charset,
            )

        return await self._solve(image, options, source, attempt)

    async def solve_with(
        self, image: bytes, options: SolveOptions, *, source: str, attempt: int = 1
    ) -> CaptchaSolution:
        """:meth:`solve` with ``options`` already checked (a request's parsed meta), for
        the middleware and the browser pages; ``attempt`` is a checked one too."""
        return await self._solve(image, lambda: options, source, attempt)

    async def _solve(
        self, image: bytes, options: Callable[[], SolveOptions], source: str, attempt: int
    ) -> CaptchaSolution:
        self._stats.inc_value("capsolver/requested")
        self.in_flight += 1
        started = self._reactor.seconds()
        try:
            captcha = self._captcha(image, options(), source, attempt)
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

    def _captcha(
        self, image: bytes, options: SolveOptions, source: str, attempt: int
    ) -> CaptchaImage:
        """The image with its options and the settings' defaults, checked: nothing is spent
        on a bad one."""
        check_image(image, self.config.max_image_size, source, self.config.max_image_pixels)
        return CaptchaImage(
            body=image,
            sha256=hashlib.sha256(image).hexdigest(),
            source=source,
            module=options.module if options.module is not None else self.config.module,
            score=options.score if options.score is not None else self.config.score,
            website_url=options.website_url,
            local=self._local(options, attempt),
            length=options.length,
            charset=options.charset,
        )

    def _local(self, options: SolveOptions, attempt: int) -> bool:
        """Whether the readers on this machine may read the image."""
        if options.local and not self._reads_locally:
            raise CaptchaOptionsError(
                "local=True asks for the local OCR engine, which is off: set "
                "CAPSOLVER_LOCAL_OCR = True."
            )
        # After a refused answer the site has drawn a new captcha: the paid reader gets it,
        # unless there is no key to pay with.
        retried = attempt > 1 and self.config.api_key is not None
        return self._reads_locally and options.local is not False and not retried

    async def _read(self, captcha: CaptchaImage) -> CaptchaSolution:
        for reader in self.readers:
            solution = await reader.read(captcha)
            if solution is not None:
                for told in self.readers:
                    told.answered(captcha, solution)
                return solution
        # The cloud reader always answers or raises; only a reader list without it ends here.
        raise CaptchaSolveError(f"No reader could read the captcha of {captcha.source}.")

    def _count_failure(self, exc: CaptchaSolveError) -> None:
        self._stats.inc_value("capsolver/failed")
        self._stats.inc_value(f"capsolver/failed/{type(exc).__name__}")

    def _count_success(self, seconds: float) -> None:
        self._stats.inc_value("capsolver/solved")
        self._stats.inc_value("capsolver/solve_time/total", seconds)  # type: ignore[arg-type]
        self._stats.max_value("capsolver/solve_time/max", seconds)

    # What the site said of an answer

    async def report_wrong(self, solution: CaptchaSolution, message: str = "") -> None:
        """The site rejected ``solution``: forget it and tell CapSolver (``feedbackTask``)
        when ``CAPSOLVER_REPORT_WRONG`` is on. A failed report is logged, never raised.
        A local answer has no task to report: it is counted in ``capsolver/local/rejected``."""
        reader = next((r for r in self.readers if r.name == solution.solver), None)
        if reader is None:
            logger.debug("No reader of this crawl answered %r: nobody to tell", solution.solver)
            return
        if not reader.local:
            # Only answers that cost something are kept in the crawl's shared answers.
            await quietly(self._stats, self.state.forget(solution.image_sha256), "forget an answer")
        await reader.rejected(solution, message)

    def report_right(self, solution: CaptchaSolution) -> None:
        """The site accepted ``solution``: with local-first on, the length and characters of
        the site's answers are learnt from it."""
        for reader in self.readers:
            reader.accepted(solution)

    async def close(self) -> None:
        """Fail what still waits and let every reader go: the connection pool, the local OCR
        threads (the crawl has ended)."""
        failure: BaseException | None = None
        for reader in self.readers:
            try:
                await reader.close()
            except BaseException as exc:  # the others are closed all the same
                failure = failure or exc
        if failure is not None:
            raise failure
