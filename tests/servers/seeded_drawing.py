"""Captchas drawn the same on every run, for tests that count what a reader gets right or
compare image bytes: the ``captcha`` package draws its noise with ``secrets`` (0.6 on),
which no seed fixes, or with ``random`` (before). Both are made to draw from one seeded
generator while a block runs; single-threaded callers only."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import captcha.image

T = TypeVar("T")
#: Where ``captcha`` draws from: its ``secrets`` module is replaced here.
_DRAWING: Any = captcha.image


class SeededSecrets:
    """The part of the ``secrets`` module that ``captcha.image`` calls, seeded."""

    def __init__(self, seed: int | str) -> None:
        self._random = random.Random(seed)

    def randbelow(self, exclusive_upper_bound: int) -> int:
        return self._random.randrange(exclusive_upper_bound)

    def randbits(self, k: int) -> int:
        return self._random.getrandbits(k)

    def choice(self, sequence: Sequence[T]) -> T:
        return self._random.choice(sequence)


@contextlib.contextmanager
def seeded_drawing(seed: int | str) -> Iterator[None]:
    """Within the block, captcha images (and ``random``) follow ``seed``; both are put back
    afterwards."""
    saved_state = random.getstate()
    saved_secrets = getattr(_DRAWING, "secrets", None)
    random.seed(seed)
    if saved_secrets is not None:
        _DRAWING.secrets = SeededSecrets(seed)
    try:
        yield
    finally:
        random.setstate(saved_state)
        if saved_secrets is not None:
            _DRAWING.secrets = saved_secrets
