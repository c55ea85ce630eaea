"""Solve image captchas during a Scrapy crawl through CapSolver, without blocking it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import (
    CaptchaAccountError,
    CaptchaApiError,
    CaptchaBlockedError,
    CaptchaBudgetError,
    CaptchaCrawlClosingError,
    CaptchaFleetError,
    CaptchaImageError,
    CaptchaInjectionError,
    CaptchaNotFoundError,
    CaptchaOptionsError,
    CaptchaRejectedError,
    CaptchaSolveError,
    CaptchaTaskError,
    CaptchaTimeoutError,
    CaptchaTransientError,
)
from .integration.addon import Addon
from .integration.middleware import CaptchaSolverMiddleware
from .integration.playwright_pages import solve_page_captcha
from .solution import CaptchaSolution
from .solving.solver import CaptchaSolver

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

__all__ = [
    "Addon",
    "CaptchaAccountError",
    "CaptchaApiError",
    "CaptchaBlockedError",
    "CaptchaBudgetError",
    "CaptchaCrawlClosingError",
    "CaptchaFleetError",
    "CaptchaImageError",
    "CaptchaInjectionError",
    "CaptchaNotFoundError",
    "CaptchaOptionsError",
    "CaptchaRejectedError",
    "CaptchaSolution",
    "CaptchaSolveError",
    "CaptchaSolver",
    "CaptchaSolverMiddleware",
    "CaptchaTaskError",
    "CaptchaTimeoutError",
    "CaptchaTransientError",
    "get_solver",
    "solve_page_captcha",
]


def get_solver(crawler: Crawler) -> CaptchaSolver:
    """The running crawl's :class:`CaptchaSolver`, to solve images a spider obtained
    itself: ``solution = await get_solver(self.crawler).solve(png_bytes)``."""
    try:
        middleware = crawler.get_downloader_middleware(CaptchaSolverMiddleware)
    except RuntimeError:  # the engine does not exist yet
        middleware = None
    if middleware is not None:
        return middleware.solver
    raise RuntimeError(
        "CaptchaSolverMiddleware is not enabled in this crawl: add "
        "ADDONS = {'scrapy_capsolver_ocr.Addon': 500} to the settings."
    )
