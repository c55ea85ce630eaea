"""The result of a solve, as the spider receives it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CaptchaSolution:
    """A solved captcha.

    ``text`` is what to type; ``task_id`` identifies the task for ``feedbackTask``;
    ``image_sha256`` identifies the image (the cache key); ``confidence`` is given by some
    answers only; ``from_cache`` is true when no API call was made for it.
    """

    text: str
    task_id: str
    image_sha256: str
    confidence: float | None = None
    from_cache: bool = False

    def __str__(self) -> str:
        return self.text
