"""Captcha styles drawn by captcha libraries from PyPI, for the learning-curve benchmark.

Every style draws answers it picks itself, from a seeded stream: the libraries draw with the
global ``random`` (as the demo site's ``captcha`` and ``gvcode`` do), so the stream seeds it,
draws, and puts its state back (the pattern of tests/labelled_captchas.py). The same seed
gives the same captchas on every run on this machine; streams are cached under
``/tmp/learning-curve-cache`` so that reruns only read them.

Fonts are those shipped inside the libraries' own wheels (``captcha``'s DroidSansMono,
multicolorcaptcha's fonts, in sorted order), so that no system font changes the images.

    pip install -r benchmarks/requirements.txt
"""

from __future__ import annotations

import io
import pickle
import random
import string
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEMO_SITE_DIR = Path(__file__).resolve().parents[1] / "example_project" / "demo_site"
TEST_SERVERS_DIR = Path(__file__).resolve().parents[1] / "tests" / "servers"
CACHE_DIR = Path("/tmp/learning-curve-cache")
#: Letters and digits without the pairs people confuse (0/O, 1/I): the demo site's.
ALPHANUMERIC = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def _package_font(package: str, *parts: str) -> str:
    module = __import__(package)
    return str(Path(module.__file__).parent.joinpath(*parts))


def _freefont(name: str) -> str:
    """A GNU FreeFont file, as multicolorcaptcha ships them."""
    return _package_font("multicolorcaptcha", "fonts", "freefont-20120503", name)


def _png(image: Any) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="PNG")
    return out.getvalue()


# --- the drawers: answer -> PNG bytes, drawing with the global random ------------------


def _claptcha() -> Callable[[str], bytes]:
    """claptcha 0.3 as its README draws it (FreeMono, the default 200x80 and margins, white
    noise 0.3), five characters: each glyph warped by a random quad, a thick warped line
    across. ddddocr reads about 30 % of them."""
    from claptcha import Claptcha
    from PIL import ImageFont

    class _Font(ImageFont.FreeTypeFont):
        # claptcha measures text with ImageFont.getsize, which Pillow 10 removed.
        def getsize(self, text: str) -> tuple[int, int]:
            _, _, right, bottom = self.getbbox(text)
            return right, bottom

    class _Claptcha(Claptcha):  # type: ignore[misc]
        # Its font setter builds the removed-API font itself: take ours as it is.
        @property
        def font(self) -> Any:
            return self._font

        @font.setter
        def font(self, font: Any) -> None:
            self._font = font

    size, margin = (200, 80), (20, 20)
    font = _Font(_freefont("FreeMono.ttf"), size[1] - 2 * margin[1])  # claptcha's own sizing
    drawer = _Claptcha("", font, size=size, margin=margin, noise=0.3)

    def draw(answer: str) -> bytes:
        drawer.source = answer
        return _png(drawer.image[1])

    return draw


def _wheezy() -> Callable[[str], bytes]:
    """wheezy.captcha 3: its README's recipe (warped, rotated, offset glyphs on a tinted
    background, a bezier curve, noise, smoothing)."""
    from wheezy.captcha import image as w

    render = w.captcha(
        drawings=[
            w.background(),
            w.text(
                fonts=[_package_font("captcha", "data", "DroidSansMono.ttf")],
                font_sizes=(40, 44, 48),
                drawings=[w.warp(), w.rotate(), w.offset()],
            ),
            w.curve(),
            w.noise(),
            w.smooth(),
        ],
        width=160,
        height=60,
    )
    return lambda answer: _png(render(answer))


def _captcha_noisy() -> Callable[[str], bytes]:
    """The ``captcha`` package's default look with noise: the demo site's "noisy" style."""
    from captcha.image import ImageCaptcha

    if str(TEST_SERVERS_DIR) not in sys.path:
        sys.path.insert(0, str(TEST_SERVERS_DIR))
    from seeded_drawing import draw_from_global_random

    draw_from_global_random()  # a seed fixes its images
    drawer = ImageCaptcha(width=160, height=60)
    return lambda answer: _png(drawer.generate_image(answer))


def _gvcode() -> Callable[[str], bytes]:
    """gvcode's look, as the demo site draws it (glyphs turned up to 90 degrees)."""
    if str(DEMO_SITE_DIR) not in sys.path:
        sys.path.insert(0, str(DEMO_SITE_DIR))
    from captchas import GvcodeDrawer

    drawer = GvcodeDrawer()
    return lambda answer: _png(drawer.generate_image(answer))


def _multicolor() -> Callable[[str], bytes]:
    """multicolorcaptcha 1.2 at difficulty 2: each glyph in its own colour, font (44 of
    them, some decorative) and rotation up to 55 degrees, circles and a line over them.
    It picks the characters itself (A-Z and 0-9, O and 0 both): the answer is its."""
    from multicolorcaptcha import CaptchaGenerator

    generator = CaptchaGenerator(0)
    generator.l_fonts.sort()  # the folder walk's order depends on the file system

    def draw(answer: str) -> bytes:
        raise AssertionError("multicolorcaptcha picks its own answers")

    draw.generator = generator  # type: ignore[attr-defined]
    return draw


@dataclass(frozen=True)
class Style:
    """A captcha style: how to make a drawer, and the answers it draws. ``version`` names
    the drawing in the cache: change it with the drawer."""

    name: str
    library: str
    alphabet: str
    length: int
    make: Callable[[], Callable[[str], bytes]]
    #: The library picks the answer (multicolorcaptcha).
    picks_answers: bool = False
    version: int = 1

    @property
    def key(self) -> str:
        """The style's name in cache files."""
        return f"{self.name}-v{self.version}"

    def stream(self, seed: int) -> CaptchaStream:
        return CaptchaStream(self, seed)


STYLES: dict[str, Style] = {
    style.name: style
    for style in (
        Style("claptcha", "claptcha", ALPHANUMERIC, 5, _claptcha, version=2),
        Style("wheezy", "wheezy.captcha", ALPHANUMERIC, 4, _wheezy),
        Style(
            "multicolor",
            "multicolorcaptcha",
            string.ascii_uppercase + string.digits,
            4,
            _multicolor,
            picks_answers=True,
        ),
        Style("captcha-noisy", "captcha", ALPHANUMERIC, 4, _captcha_noisy),
        Style("gvcode", "gvcode", ALPHANUMERIC, 4, _gvcode),
    )
}


class CaptchaStream:
    """The captchas of a style, in a fixed order: ``get(i)`` is the i-th one a site
    showed. Drawn on demand, kept in memory, saved to the cache by :meth:`save`."""

    def __init__(self, style: Style, seed: int) -> None:
        self.style = style
        self.seed = seed
        self.path = CACHE_DIR / f"{style.key}-seed{seed}.pickle"
        self.items: list[tuple[str, bytes]] = []
        self._state: Any = None  # (answers' random state, global random state)
        self._drawer: Callable[[str], bytes] | None = None
        self._saved = 0
        if self.path.exists():
            with self.path.open("rb") as file:
                self.items, self._state = pickle.load(file)
            self._saved = len(self.items)

    def get(self, index: int) -> tuple[str, bytes]:
        """The answer and PNG of the ``index``-th captcha."""
        if index >= len(self.items):
            self._draw(index + 1 - len(self.items))
        return self.items[index]

    def ensure(self, count: int) -> None:
        if count > len(self.items):
            self._draw(count - len(self.items))

    def _draw(self, count: int) -> None:
        if self._drawer is None:
            self._drawer = self.style.make()
        answers = random.Random()
        saved = random.getstate()
        if self._state is None:
            answers.seed(self.seed)
            random.seed(self.seed)
        else:
            answers.setstate(self._state[0])
            random.setstate(self._state[1])
        try:
            for _ in range(count):
                self.items.append(self._draw_one(answers))
            self._state = (answers.getstate(), random.getstate())
        finally:
            random.setstate(saved)

    def _draw_one(self, answers: random.Random) -> tuple[str, bytes]:
        assert self._drawer is not None
        if self.style.picks_answers:
            model = self._drawer.generator.gen_captcha_image(  # type: ignore[attr-defined]
                difficult_level=2, chars_mode="ascii", multicolor=True
            )
            return model.characters, _png(model.image)
        answer = "".join(answers.choice(self.style.alphabet) for _ in range(self.style.length))
        return answer, self._drawer(answer)

    def save(self) -> None:
        if len(self.items) != self._saved:
            save_cached(self.path, (self.items, self._state))
            self._saved = len(self.items)


def save_cached(path: Path, value: Any) -> None:
    """Pickle ``value`` to ``path`` whole: a run stopped while saving leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("wb") as file:
        pickle.dump(value, file, protocol=pickle.HIGHEST_PROTOCOL)
    partial.replace(path)
