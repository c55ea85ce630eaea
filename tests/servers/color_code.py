"""A captcha's answer written into its pixels, so the CapSolver mock can read screenshots.

A screenshot of a captcha element keeps none of the image file's metadata (the
``captcha-answer`` PNG text chunk the other test sites use), so the browser test site also
draws the answer as a row of solid cells: one cell per character, coloured
``rgb(ord(char), CODE_GREEN, CODE_BLUE)``, with a gap of another colour between cells.
:func:`read_color_code` reads them back from the first of the top ``SCAN_ROWS`` pixel rows
that has some. Pixels at the cells' edges may blend when a browser scales the image and are
skipped; runs shorter than ``MIN_RUN`` pixels are noise that has the code's colour by chance.
"""

from __future__ import annotations

import io
from typing import Any

CODE_GREEN = 60
CODE_BLUE = 195
CELL_WIDTH = 8
CELL_HEIGHT = 6
CELL_GAP = 2
MARGIN = 2
MIN_RUN = 4
SCAN_ROWS = 40


def color_code_cells(text: str) -> list[tuple[int, int, int, int, tuple[int, int, int]]]:
    """The cells that encode ``text``: ``(x, y, width, height, rgb)`` each, the first at
    (MARGIN, MARGIN). Characters must be below U+0100 (one byte of red each)."""
    cells = []
    for index, char in enumerate(text):
        if ord(char) > 255:
            raise ValueError(f"{char!r} cannot be colour-coded: only characters below U+0100")
        x = MARGIN + index * (CELL_WIDTH + CELL_GAP)
        cells.append((x, MARGIN, CELL_WIDTH, CELL_HEIGHT, (ord(char), CODE_GREEN, CODE_BLUE)))
    return cells


def backing_box(text: str) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``, inclusive, of the plain background behind the cells: it keeps
    the noise of the image out of the gaps."""
    width = MARGIN * 2 + len(text) * (CELL_WIDTH + CELL_GAP)
    return 0, 0, width - 1, CELL_HEIGHT + MARGIN * 2 - 1


def draw_color_code(image: Any, text: str) -> None:
    """Draw ``text``'s cells onto a Pillow RGB image, top left."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    draw.rectangle(backing_box(text), fill=(255, 255, 255))
    for x, y, width, height, rgb in color_code_cells(text):
        draw.rectangle((x, y, x + width - 1, y + height - 1), fill=rgb)


def read_color_code(image_bytes: bytes) -> str | None:
    """The text colour-coded in an image (any format Pillow reads), or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    pixels: Any = image.load()
    width, height = image.size
    # The cells sit at the top: scanning the rest of a large image would only cost time.
    for y in range(min(height, SCAN_ROWS)):
        chars: list[str] = []
        run_red, run_length = -1, 0
        # A sentinel pixel past the row's end closes the last run.
        for x in range(width + 1):
            red, green, blue = pixels[x, y] if x < width else (-1, 0, 0)
            red = red if (green, blue) == (CODE_GREEN, CODE_BLUE) else -1
            if red == run_red:
                run_length += 1
                continue
            if run_red >= 0 and run_length >= MIN_RUN:
                chars.append(chr(run_red))
            run_red, run_length = red, 1
        if chars:
            return "".join(chars)
    return None
