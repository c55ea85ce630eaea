"""Solve image captchas during a Scrapy crawl through CapSolver, without blocking it."""

from __future__ import annotations

from .errors import (
    CaptchaAccountError,
    CaptchaApiError,
    CaptchaBlockedError,
    CaptchaBudgetError,
    CaptchaCrawlClosingError,
    CaptchaFleetError,
    CaptchaImageError,
    CaptchaInjectionError,
    CaptchaNoSlotError,
    CaptchaNotFoundError,
    CaptchaOptionsError,
    CaptchaRejectedError,
    CaptchaSolveError,
    CaptchaTaskError,
    CaptchaTimeoutError,
    CaptchaTransientError,
)
from .integration.addon import Addon
from .integration.middleware import CaptchaSolverMiddleware, get_solver
from .integration.playwright_pages import solve_page_captcha
from .solution import CaptchaSolution
from .solving.solver import CaptchaSolver

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
    "CaptchaNoSlotError",
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
