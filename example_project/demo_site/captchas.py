"""The demo site's captcha images, drawn by the ``captcha`` package (``ImageCaptcha``), or
by ``gvcode`` for a style the local OCR engine reads badly."""

from __future__ import annotations

import io
import secrets
from dataclasses import dataclass
from typing import Protocol

from captcha.image import ImageCaptcha
from PIL.Image import Image
from PIL.PngImagePlugin import PngInfo

#: The PNG tEXt keyword under which ``--embed-answers`` writes the answer.
ANSWER_KEYWORD = "captcha-answer"
# Like real sites, leave out the characters people confuse: 0/O and 1/I.
ALPHANUMERIC = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
DIGITS = "0123456789"
WIDTH, HEIGHT = 160, 60


class _LowDistortionCaptcha(ImageCaptcha):
    # Smaller, less rotated and warped glyphs that neither overlap nor get squeezed: on the
    # package's default images, overlap and the random gaps (which widen the text, then
    # squeeze it back into the width) make OCR merge or drop characters.
    character_rotate = (-10, 10)
    character_warp_dx = (0.1, 0.2)
    character_warp_dy = (0.1, 0.2)
    word_offset_dx = 0.0
    word_space_probability = 1.0  # a gap is added when a random number exceeds this: never


class Drawer(Protocol):
    def generate_image(self, chars: str) -> Image: ...


class GvcodeDrawer:
    """gvcode's look (``pip install gvcode``): glyphs turned up to 90 degrees, thick lines,
    some glyphs drawn white on white. The local OCR engine reads about 10 % of them."""

    def generate_image(self, chars: str) -> Image:
        from gvcode import VFCode
        from PIL import Image as PilImage

        code = VFCode()
        code.generate(chars)
        return PilImage.open(io.BytesIO(code.get_img_bytes())).convert("RGB")


@dataclass(frozen=True)
class CaptchaMaker:
    """Picks answers and draws them; one per site, used from the reactor thread only."""

    alphabet: str
    length: int
    drawer: Drawer

    @classmethod
    def noisy(cls) -> CaptchaMaker:
        """The package's default look (noise, overlap): 4 letters or digits."""
        return cls(ALPHANUMERIC, 4, ImageCaptcha(width=WIDTH, height=HEIGHT))

    @classmethod
    def digits(cls) -> CaptchaMaker:
        """4 digits with little distortion, which offline OCR reads most of the time."""
        drawer = _LowDistortionCaptcha(width=WIDTH, height=HEIGHT, font_sizes=(40, 44))
        return cls(DIGITS, 4, drawer)

    @classmethod
    def gvcode(cls) -> CaptchaMaker:
        """4 letters or digits drawn by gvcode: a style the local OCR engine reads badly."""
        return cls(ALPHANUMERIC, 4, GvcodeDrawer())

    @classmethod
    def of_style(cls, style: str) -> CaptchaMaker:
        return {"noisy": cls.noisy, "digits": cls.digits, "gvcode": cls.gvcode}[style]()

    def new_answer(self) -> str:
        return "".join(secrets.choice(self.alphabet) for _ in range(self.length))

    def render(self, answer: str, *, embed_answer: bool = False) -> bytes:
        """The PNG image of ``answer``, with the answer in a tEXt chunk if asked."""
        metadata = PngInfo()
        if embed_answer:
            metadata.add_text(ANSWER_KEYWORD, answer)
        out = io.BytesIO()
        self.drawer.generate_image(answer).save(out, format="PNG", pnginfo=metadata)
        return out.getvalue()
