"""Labelled captchas drawn by the demo site's own generator, for the local OCR tests."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

DEMO_SITE_DIR = Path(__file__).resolve().parents[1] / "example_project" / "demo_site"


def demo_maker(style: str) -> Any:
    """The demo site's ``CaptchaMaker`` of ``style`` (noisy, digits, gvcode)."""
    if str(DEMO_SITE_DIR) not in sys.path:
        sys.path.insert(0, str(DEMO_SITE_DIR))
    from captchas import CaptchaMaker

    return CaptchaMaker.of_style(style)


def draw_labelled(folder: Path, style: str, count: int) -> list[str]:
    """``count`` captchas of ``style`` saved as ``NUMBER_ANSWER.png`` in ``folder``; their
    answers."""
    maker = demo_maker(style)
    folder.mkdir(parents=True, exist_ok=True)
    answers = []
    for number in range(count):
        answer = maker.new_answer()
        (folder / f"{number:04d}_{answer}.png").write_bytes(maker.render(answer))
        answers.append(answer)
    return answers
