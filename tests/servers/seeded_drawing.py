"""Captchas drawn the same on every run, for tests and benchmarks that count what a reader
gets right or compare image bytes: the ``captcha`` package draws its noise with ``secrets``
(0.6 on), which no seed fixes, or with ``random`` (before). Here it draws from the global
``random``, seeded (tests and benchmarks only: a site must keep ``secrets``)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import captcha.image

T = TypeVar("T")
#: Where ``captcha`` draws from: its ``secrets`` module is replaced here.
_DRAWING: Any = captcha.image


class GlobalRandomSecrets:
    """The part of the ``secrets`` module that ``captcha.image`` calls, from ``random``."""

    @staticmethod
    def randbelow(exclusive_upper_bound: int) -> int:
        return random.randrange(exclusive_upper_bound)

    @staticmethod
    def randbits(k: int) -> int:
        return random.getrandbits(k)

    @staticmethod
    def choice(sequence: Sequence[T]) -> T:
        return random.choice(sequence)


def draw_from_global_random() -> None:
    """From now on, in this process, captcha images follow ``random``'s state."""
    if hasattr(_DRAWING, "secrets"):
        _DRAWING.secrets = GlobalRandomSecrets


@contextlib.contextmanager
def seeded_drawing(seed: int | str) -> Iterator[None]:
    """Within the block, captcha images (and ``random``) follow ``seed``; both are put back
    afterwards. Single-threaded callers only."""
    saved_state = random.getstate()
    saved_secrets = getattr(_DRAWING, "secrets", None)
    random.seed(seed)
    draw_from_global_random()
    try:
        yield
    finally:
        random.setstate(saved_state)
        if saved_secrets is not None:
            _DRAWING.secrets = saved_secrets
