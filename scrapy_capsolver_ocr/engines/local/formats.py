"""What a site's captcha answers look like: their lengths and their characters.

The local gate needs both (see :mod:`.gate`). They come from the request
(``solve_image={"length": 4, "charset": "0123456789"}``), else the settings
(``CAPSOLVER_LOCAL_LENGTH``, ``CAPSOLVER_LOCAL_CHARSET``), else they are learnt from the
answers the site accepted: after :data:`LEARN_AFTER` of them, the lengths and the
characters seen so far. A character or length not seen yet only costs a paid solve (the gate
declines, CapSolver answers, the site accepts, and it is learnt), so learning only widens.
Without CapSolver (no API key) nothing would teach the engine a character it was kept from
reading: the characters are then not learnt.

A site is the scheme, host and port of the page the captcha is on (``website_url``), else
of the image's URL.
"""

from __future__ import annotations

import string
from collections import OrderedDict
from dataclasses import dataclass, field
from urllib.parse import urlsplit

#: Accepted answers of a site before its format counts as learnt.
LEARN_AFTER = 3
#: The characters read when none are given or learnt yet: captcha text is nearly always
#: letters and digits, and the model also knows thousands of CJK characters that noise
#: would otherwise be read as.
DEFAULT_CHARS = string.ascii_letters + string.digits
#: Sites and answered images remembered, so that memory stays flat on a long crawl.
MAX_SITES = 1000
MAX_IMAGES = 10_000


@dataclass(frozen=True)
class ExpectedFormat:
    """The lengths an answer may have (None: not known) and the characters it is read
    from (None: not known, :data:`DEFAULT_CHARS` are read)."""

    lengths: frozenset[int] | None
    chars: str | None

    @property
    def alphabet(self) -> str:
        return self.chars if self.chars is not None else DEFAULT_CHARS


@dataclass
class _Learnt:
    answers: int = 0
    lengths: set[int] = field(default_factory=set)
    chars: set[str] = field(default_factory=set)


def site_of(website_url: str | None, source: str) -> str:
    """The site a captcha belongs to: the origin of its page, else of its image URL."""
    for url in (website_url, source):
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme in ("http", "https") and parts.netloc:
                return f"{parts.scheme}://{parts.netloc.lower()}"
    return ""


class SiteFormats:
    """The expected format of each site's captchas: given, or learnt from accepted answers."""

    def __init__(
        self, length: int | None = None, chars: str | None = None, *, learn_chars: bool = True
    ) -> None:
        self._length = length
        self._chars = chars
        self._learn_chars = learn_chars
        self._sites: OrderedDict[str, _Learnt] = OrderedDict()
        self._images: OrderedDict[str, str] = OrderedDict()

    def expected(
        self, site: str, length: int | None = None, chars: str | None = None
    ) -> ExpectedFormat:
        """The format for ``site``; ``length`` and ``chars`` (the request's own) come first,
        then the settings, then what the site taught."""
        learnt = self._sites.get(site)
        if learnt is not None and learnt.answers < LEARN_AFTER:
            learnt = None
        length = length if length is not None else self._length
        chars = chars if chars is not None else self._chars
        lengths = frozenset([length]) if length is not None else None
        if lengths is None and learnt is not None:
            lengths = frozenset(learnt.lengths)
        if chars is None and learnt is not None and self._learn_chars:
            chars = "".join(sorted(learnt.chars))
        return ExpectedFormat(lengths, chars)

    def answered(self, image_sha256: str, site: str) -> None:
        """An answer was given for this image of ``site``: if the site accepts it, it is
        learnt from."""
        self._images[image_sha256] = site
        self._images.move_to_end(image_sha256)
        while len(self._images) > MAX_IMAGES:
            self._images.popitem(last=False)

    def accepted(self, image_sha256: str, text: str) -> None:
        """The site accepted ``text`` as the answer to this image: learn from it."""
        site = self._images.pop(image_sha256, None)
        if site is None or not text:
            return  # not answered in this crawl, or already learnt from
        learnt = self._sites.setdefault(site, _Learnt())
        self._sites.move_to_end(site)
        learnt.answers += 1
        learnt.lengths.add(len(text))
        learnt.chars.update(text)
        while len(self._sites) > MAX_SITES:
            self._sites.popitem(last=False)

    def learnt(self, site: str) -> int:
        """How many accepted answers of ``site`` were learnt from."""
        learnt = self._sites.get(site)
        return learnt.answers if learnt is not None else 0
