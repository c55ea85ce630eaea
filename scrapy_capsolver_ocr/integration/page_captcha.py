"""Page mode: the captcha image of an element on an HTML page.

An inline ``data:`` image is decoded in place; an image URL is downloaded as a side request
through the crawl's own downloader, so the page's session (``cookiejar``), proxy and headers
apply to it, as a browser would fetch it.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from scrapy import Request
from scrapy.http import Response, TextResponse
from scrapy.utils.defer import maybe_deferred_to_future

from ..errors import CaptchaImageError, CaptchaNotFoundError

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

#: Meta key of the image requests made here: such a request is never itself solved.
SIDE_REQUEST = "_capsolver_page_image"
#: Page request meta copied to the image request: same session, proxy and limits. The
#: proxy's credentials travel in the copied Proxy-Authorization header, which Scrapy's
#: HttpProxyMiddleware keeps for the copied proxy.
_SHARED_META = ("cookiejar", "proxy", "download_timeout", "bindaddress")
#: Page request headers that do not belong on an image request.
_PAGE_ONLY_HEADERS = (b"Cookie", b"Content-Type", b"Content-Length", b"Accept")
_IMAGE_ACCEPT = b"image/avif,image/webp,image/png,image/*;q=0.8,*/*;q=0.5"


def check_displayed(request: Request, response: Response, crawler: Crawler) -> None:
    """Raise :class:`CaptchaImageError` unless the spider will get this page: a 2xx, or a
    status it allowed. The captcha of a page nobody sees is not worth paying for."""
    if 200 <= response.status < 300 or request.meta.get("handle_httpstatus_all"):
        return
    allowed = request.meta.get("handle_httpstatus_list")
    if allowed is None:
        allowed = crawler.settings.getlist("HTTPERROR_ALLOWED_CODES")
    if response.status not in {int(code) for code in allowed}:
        raise CaptchaImageError(
            f"The page {response.url} got HTTP {response.status}; its captcha is solved only "
            "for statuses the spider handles (handle_httpstatus_list, HTTPERROR_ALLOWED_CODES)."
        )


def check_image_status(image: Response, described: str) -> None:
    """Raise :class:`CaptchaImageError` when the captcha's download got an HTTP error:
    its body is an error page, not the image."""
    if not 200 <= image.status < 300:
        raise CaptchaImageError(f"{described} got HTTP {image.status}, not an image.")


#: What a site answers to a second fetch of a captcha image whose URL names a one-time key
#: (django-simple-captcha: 410 Gone once the key is used up).
SINGLE_USE_STATUSES = (404, 410)


def single_use_error(url: str, status: int, attempt: int) -> CaptchaImageError:
    """The error for a captcha image that a refused answer had requested again and that is
    gone: re-sending it cannot bring a new captcha, so say what can."""
    return CaptchaImageError(
        f"The captcha image URL {url} answered HTTP {status} when it was requested again "
        f"after a refused answer (attempt {attempt}): it looks single-use (a one-time key "
        "that the form names too), so it cannot be fetched twice. Solve such captchas in "
        "page mode (solve_image={'selector': ...} on the page that carries the form), or "
        "retry from the spider by requesting the form page again."
    )


def download_error(what: str, exc: BaseException) -> CaptchaImageError:
    """The error for ``what`` (a captcha, or the page holding it) when its download failed;
    raise it ``from exc``."""
    return CaptchaImageError(f"Could not download {what}: {type(exc).__name__}: {exc}")


def http_url(url: str) -> str | None:
    """``url`` when CapSolver can take it as ``websiteURL`` (not about:blank, data:, ...)."""
    return url if url.startswith(("http://", "https://")) else None


def image_source(response: Response, selector: str) -> str:
    """The ``src`` of the first element matching ``selector`` (or the text it selects, for
    selectors such as ``img.captcha::attr(data-src)``), resolved against the page."""
    if not isinstance(response, TextResponse):
        raise CaptchaImageError(
            f"The response from {response.url} is not an HTML page, so the captcha element "
            f"{selector!r} cannot be looked up in it."
        )
    found = response.css(selector)  # a valid selector: options.py checked it
    if not found:
        raise CaptchaNotFoundError(f"No element matches {selector!r} on {response.url}.")
    first = found[0]
    root: Any = first.root
    source = first.attrib.get("src") if not isinstance(root, str) else root
    source = (source or "").strip()
    if not source:
        raise CaptchaNotFoundError(
            f"The element {selector!r} on {response.url} has no image (no src attribute)."
        )
    if source.startswith("data:"):
        return source
    return response.urljoin(source)


def decode_data_uri(uri: str, page_url: str) -> bytes:
    """The bytes of a ``data:`` URI; malformed base64 is an error, not silently skipped."""
    header, comma, payload = uri[len("data:") :].partition(",")
    if not comma:
        raise CaptchaImageError(f"The captcha on {page_url} is a data: URI without a comma.")
    if header.lower().endswith(";base64"):
        text = unquote_to_bytes(payload)
        try:
            return base64.b64decode(b"".join(text.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CaptchaImageError(
                f"The captcha on {page_url} is a data: URI whose base64 is malformed ({exc})."
            ) from None
    return unquote_to_bytes(payload)


def image_request(page_request: Request, page: Response, url: str, max_size: int) -> Request:
    """The request for the captcha ``url`` of ``page``, in the page's session; a body over
    ``max_size`` bytes is not downloaded whole."""
    headers = page_request.headers.copy()
    for name in _PAGE_ONLY_HEADERS:
        headers.pop(name, None)
    headers[b"Accept"] = _IMAGE_ACCEPT
    headers[b"Referer"] = page.url
    meta: dict[str, Any] = {
        name: page_request.meta[name] for name in _SHARED_META if name in page_request.meta
    }
    meta[SIDE_REQUEST] = True
    meta["download_maxsize"] = max_size
    return Request(url, headers=headers, meta=meta, dont_filter=True)


async def download(crawler: Crawler, request: Request) -> Response:
    engine: Any = crawler.engine
    if hasattr(engine, "download_async"):
        response: Response = await engine.download_async(request)
        return response
    # Scrapy 2.13: download() returns a Deferred (deprecated since 2.14).
    downloaded: Response = await maybe_deferred_to_future(engine.download(request))
    return downloaded


async def page_image(
    crawler: Crawler, request: Request, response: Response, selector: str, max_size: int
) -> tuple[bytes, str]:
    """The captcha image on ``response`` and where it came from (for messages).

    Raises :class:`CaptchaNotFoundError` when there is no such image, and
    :class:`CaptchaImageError` when it cannot be had.
    """
    check_displayed(request, response, crawler)
    source = image_source(response, selector)
    if source.startswith("data:"):
        return decode_data_uri(source, response.url), f"the data: URI on {response.url}"
    try:
        image = await download(crawler, image_request(request, response, source, max_size))
    except Exception as exc:
        raise download_error(f"the captcha {source} of {response.url}", exc) from exc
    check_image_status(image, f"The captcha {source} of {response.url}")
    return image.body, image.url
