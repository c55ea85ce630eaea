"""Labelled captchas drawn by the demo site's own generator, for the local OCR tests."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

from servers.seeded_drawing import seeded_drawing

DEMO_SITE_DIR = Path(__file__).resolve().parents[1] / "example_project" / "demo_site"


def demo_maker(style: str) -> Any:
    """The demo site's ``CaptchaMaker`` of ``style`` (noisy, digits, gvcode)."""
    if str(DEMO_SITE_DIR) not in sys.path:
        sys.path.insert(0, str(DEMO_SITE_DIR))
    from captchas import CaptchaMaker

    return CaptchaMaker.of_style(style)


def fixed_captchas(style: str, count: int, seed: int = 7) -> list[tuple[str, bytes]]:
    """``count`` (answer, PNG) pairs of ``style``, the same ones on every run: tests that
    count how many the engine reads must not depend on the luck of the draw."""
    maker = demo_maker(style)
    answers = random.Random(seed)
    drawn = []
    with seeded_drawing(seed):
        for _ in range(count):
            answer = "".join(answers.choice(maker.alphabet) for _ in range(maker.length))
            drawn.append((answer, maker.render(answer)))
    return drawn


def draw_labelled(folder: Path, style: str, count: int) -> list[str]:
    """``count`` fixed captchas of ``style`` saved as ``NUMBER_ANSWER.png`` in ``folder``;
    their answers."""
    folder.mkdir(parents=True, exist_ok=True)
    drawn = fixed_captchas(style, count)
    for number, (answer, image) in enumerate(drawn):
        (folder / f"{number:04d}_{answer}.png").write_bytes(image)
    return [answer for answer, _ in drawn]
