"""The result of a solve, as the spider receives it."""

from __future__ import annotations

from dataclasses import dataclass

#: Who answered: :attr:`CaptchaSolution.solver`.
LOCAL = "local"
CAPSOLVER = "capsolver"


@dataclass(frozen=True)
class CaptchaSolution:
    """A solved captcha.

    ``text`` is what to type; ``task_id`` identifies the task for ``feedbackTask`` (empty
    for a local answer); ``image_sha256`` identifies the image (the cache key);
    ``confidence`` (0..1) is given by local answers and some others; ``from_cache`` is true
    when no API call was made for it; ``solver`` says who read it: ``"capsolver"``, or
    ``"local"`` for the local OCR engine (``CAPSOLVER_LOCAL_OCR``), which costs nothing;
    ``provider`` names the paid service that answered when ``CAPSOLVER_PROVIDERS`` lists
    several (``"capsolver"``, ``"anticaptcha"``...; empty otherwise): a wrong answer is
    reported to it. A solution pickled before the field existed loads with it empty.
    """

    text: str
    task_id: str
    image_sha256: str
    confidence: float | None = None
    from_cache: bool = False
    solver: str = CAPSOLVER
    provider: str = ""

    def __str__(self) -> str:
        return self.text
