"""The API key never shows: not in a DEBUG log, stats, exceptions, reprs or settings dumps;
it is never sent over plain HTTP to another host, nor to a server whose certificate fails."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import pprint
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from conftest import API_KEY, TOPOLOGY_PASSWORD, CapSolverMock
from crawling import RecordingSpider, crawl, solver_settings, stat
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from scrapy.crawler import Crawler
from scrapy.http import Response
from twisted.internet import ssl
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.protocols import policies
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from scrapy_capsolver_ocr import (
    CaptchaAccountError,
    CaptchaTransientError,
    get_solver,
)

WRONG_KEY = "CAP-9f8e7d6c5b4a39281706f5e4d3c2b1a0WRONG"


def secret_parts(key: str) -> list[str]:
    """The key, and the part of it that masking hides (all but the last four characters)."""
    return [key, key[:-4], key[4:-4]]


class InspectingSpider(RecordingSpider):
    """Records every repr and traceback a user could print or log from a callback."""

    def __init__(self, report: bool = False, **kwargs: Any) -> None:
        super().__init__(on_response=self.inspect, **kwargs)
        self.report = report
        self.seen: list[str] = []

    async def inspect(self, spider: RecordingSpider, response: Response) -> None:
        solver = get_solver(self.crawler)
        self.seen += [repr(response), repr(response.request), repr(response.meta)]
        self.seen += [repr(solver), repr(solver.config), repr(solver.readers), str(solver.config)]
        if self.report and "captcha_solution" in response.meta:
            await solver.report_wrong(response.meta["captcha_solution"], "rejected by the site")

    def failed(self, failure: Failure) -> None:
        super().failed(failure)
        error = failure.value
        self.seen += [failure.getTraceback(), str(error), repr(error), repr(vars(error))]
        self.seen += traceback.format_exception(error)


def everything_shown(crawler: Crawler, caplog: pytest.LogCaptureFixture) -> str:
    """All a user could see of the crawl: its whole log (with tracebacks), stats, errors,
    reprs, and the settings as Scrapy dumps them."""
    spider: Any = crawler.spider
    assert crawler.stats is not None
    parts = [caplog.text, *spider.seen, pprint.pformat(crawler.stats.get_stats())]
    parts += [repr(crawler.settings), pprint.pformat(crawler.settings.copy_to_dict())]
    parts += [repr(solution) for solution in spider.solutions.values()]
    return "\n".join(parts)


def assert_no_key(text: str, *keys: str) -> None:
    for key in keys:
        for part in secret_parts(key):
            assert part not in text


# Every kind of error in one crawl: each image prefix picks a fault.
FAULTS = [
    {"fault": "http", "status": 503, "answer_prefix": "tr", "per_image": 1},
    {"fault": "reset", "answer_prefix": "rs", "per_image": 1},
    {"fault": "drop_mid", "answer_prefix": "dm", "per_image": 1},
    {"fault": "latency", "seconds": 5, "answer_prefix": "to", "per_image": 1},
    {"fault": "huge", "answer_prefix": "hg", "per_image": 1},
    {"fault": "not_json", "answer_prefix": "nj", "per_image": 1},
    {"fault": "error", "code": "ERROR_INVALID_IMAGE", "answer_prefix": "ta"},
    {"fault": "error", "code": "ERROR_CAPTCHA_UNSOLVABLE", "answer_prefix": "un"},
    {"fault": "empty_text", "answer_prefix": "em"},
    {"fault": "http", "status": 502, "answer_prefix": "ex"},  # retries used up
    {"fault": "error", "code": "ERROR_KEY_TEMP_BLOCKED", "answer_prefix": "bl", "count": 1},
    {"fault": "error", "code": "ERROR_TASKID_INVALID", "method": "feedbackTask", "every": 2},
]
PREFIXES = ["ok", "tr", "rs", "dm", "to", "hg", "nj", "ta", "un", "em", "ex", "bl"]


def debug_settings(capsolver: CapSolverMock, **overrides: Any) -> dict[str, Any]:
    return solver_settings(
        capsolver,
        **{
            "LOG_LEVEL": "DEBUG",
            "CAPSOLVER_TIMEOUT": 1,
            "CAPSOLVER_BLOCK_PAUSE": 0.2,
            "CAPSOLVER_MAX_RETRIES": 2,
            **overrides,
        },
    )


@pytest_twisted.ensureDeferred
async def test_debug_crawl_with_every_kind_of_error_never_shows_the_key(
    capsolver: CapSolverMock, image_site: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    capsolver.configure(faults=FAULTS)
    urls = [f"{image_site}/captcha/{prefix}{i}.png" for prefix in PREFIXES for i in range(2)]
    urls += [f"{image_site}/bad/html", f"{image_site}/status/500"]
    crawler = await crawl(InspectingSpider, debug_settings(capsolver), urls=urls, report=True)
    spider: Any = crawler.spider

    # The crawl did meet every kind of error it is meant to show.
    errors = {type(e).__name__ for e in spider.errors.values()}
    assert {"CaptchaImageError", "CaptchaTaskError", "CaptchaTransientError"} <= errors
    codes = {getattr(e, "error_code", "") for e in spider.errors.values()}
    assert {"ERROR_CAPTCHA_UNSOLVABLE", "EMPTY_SOLUTION"} <= codes
    stats = crawler.stats.get_stats()  # type: ignore[union-attr]
    for code in ("HTTP_503", "TIMEOUT", "ANSWER_TOO_LARGE", "NOT_JSON", "ERROR_KEY_TEMP_BLOCKED"):
        assert stats[f"capsolver/error/{code}"] >= 1
    assert stat(crawler, "capsolver/feedback_failed") >= 1
    assert stat(crawler, "capsolver/paused") == 1
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    assert any(r.getMessage().startswith("Overridden settings") for r in caplog.records)

    shown = everything_shown(crawler, caplog)
    assert_no_key(shown, API_KEY)
    # What the masked form shows: the last four characters only.
    assert f"ApiKey('...{API_KEY[-4:]}')" in shown


@pytest.mark.parametrize(
    ("faults", "key", "reason"),
    [
        ([], WRONG_KEY, "capsolver_bad_key"),  # refused at the start's getBalance
        ([{"fault": "error", "code": "ERROR_KEY_DENIED_ACCESS", "every": 3}], API_KEY, None),
        ([{"fault": "http", "status": 401}], API_KEY, None),
        ([{"fault": "error", "code": "ERROR_ZERO_BALANCE"}], API_KEY, None),
    ],
    ids=["wrong-key", "key-denied", "http-401", "zero-balance"],
)
@pytest_twisted.ensureDeferred
async def test_account_errors_never_show_the_key(
    capsolver: CapSolverMock,
    image_site: str,
    caplog: pytest.LogCaptureFixture,
    faults: list[dict[str, Any]],
    key: str,
    reason: str | None,
) -> None:
    caplog.set_level(logging.DEBUG)
    capsolver.configure(faults=faults)
    urls = [f"{image_site}/captcha/acct{i}.png" for i in range(8)]
    settings = debug_settings(capsolver, CAPSOLVER_API_KEY=key, CAPSOLVER_CONCURRENCY=2)
    crawler = await crawl(InspectingSpider, settings, urls=urls)
    spider: Any = crawler.spider
    assert str(stat(crawler, "finish_reason")).startswith("capsolver_")
    if reason is not None:
        assert stat(crawler, "finish_reason") == reason
    assert all(isinstance(e, CaptchaAccountError) for e in spider.errors.values())
    assert_no_key(everything_shown(crawler, caplog), API_KEY, WRONG_KEY)


@pytest_twisted.ensureDeferred
async def test_key_set_for_the_middleware_alone_is_masked_in_settings_dumps(
    capsolver: CapSolverMock, image_site: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = debug_settings(
        capsolver,
        ADDONS={},
        DOWNLOADER_MIDDLEWARES={"scrapy_capsolver_ocr.CaptchaSolverMiddleware": 543},
    )
    url = f"{image_site}/captcha/mw02.png"
    crawler = await crawl(InspectingSpider, settings, urls=[url])
    assert crawler.spider.texts == {url: "mw02"}  # type: ignore[union-attr]
    assert_no_key(everything_shown(crawler, caplog), API_KEY)


def test_key_from_the_environment_stays_out_of_the_settings(monkeypatch: Any) -> None:
    from scrapy.utils.test import get_crawler

    from scrapy_capsolver_ocr import CaptchaSolverMiddleware

    monkeypatch.setenv("CAPSOLVER_API_KEY", API_KEY)
    crawler = get_crawler(settings_dict={"ADDONS": {"scrapy_capsolver_ocr.Addon": 500}})
    middleware = CaptchaSolverMiddleware.from_crawler(crawler)
    assert middleware.config.api_key is not None
    assert middleware.config.api_key.reveal() == API_KEY
    assert_no_key(pprint.pformat(crawler.settings.copy_to_dict()), API_KEY)
    assert_no_key(repr(middleware.solver) + repr(middleware.config), API_KEY)


# TLS: a server with a certificate nobody vouches for


class Recorder(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def render_POST(self, request: Any) -> bytes:
        self.requests += 1
        request.setHeader(b"content-type", b"application/json")
        return b'{"errorId": 0, "balance": 1.0}'


def self_signed_certificate() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for 127.0.0.1 signed by its own key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """The server's TLS, made with cryptography objects (Twisted's own helpers go through
    pyOpenSSL's deprecated X509 objects, and warnings are errors here)."""

    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.context = SSL.Context(SSL.TLS_SERVER_METHOD)
        self.context.use_certificate(certificate)
        self.context.use_privatekey(key)

    def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        return SSL.Connection(self.context, None)


@implementer(IOpenSSLTrustRoot, IPolicyForHTTPS)
class TrustOnly:
    """Trusts the certificate in the PEM file ``path`` and nothing else: the policy of the
    control request."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        context.load_verify_locations(str(self.path))

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return ssl.optionsForClientTLS(hostname.decode(), trustRoot=self)


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Recorder, Path]]:
    from twisted.internet import reactor

    certificate, key = self_signed_certificate()
    pem = tmp_path / "certificate.pem"
    pem.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    recorder = Recorder()
    site = server.Site(recorder)
    site.noisy = False
    # Not the Site itself: Twisted < 26 sets ALPN on the TLS context of a Site's connection
    # after the connection is made, which pyOpenSSL 26 refuses.
    factory = policies.WrappingFactory(site)
    tls: Any = reactor
    port = tls.listenSSL(0, factory, ServerTLS(certificate, key), interface="127.0.0.1")
    yield f"https://127.0.0.1:{port.getHost().port}", recorder, pem
    port.stopListening()


@pytest_twisted.ensureDeferred
async def test_server_with_an_untrusted_certificate_is_refused(
    https_server: tuple[str, Recorder, Path],
    image_site: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, recorder, certificate_pem = https_server
    caplog.set_level(logging.DEBUG)
    captcha = f"{image_site}/captcha/tls1.png"
    settings = solver_settings(None, CAPSOLVER_API_URL=url, CAPSOLVER_MAX_RETRIES=1)
    crawler = await crawl(InspectingSpider, settings, urls=[captcha])
    spider: Any = crawler.spider

    error = spider.errors[captcha]
    assert isinstance(error, CaptchaTransientError)
    assert error.error_code == "TLS_CERTIFICATE"
    assert f"the TLS certificate of {url} was refused (certificate verify failed)" in str(error)
    assert stat(crawler, "capsolver/error/TLS_CERTIFICATE") == 2  # a call and its retry
    # The start's getBalance failed the same way, and the crawl went on.
    assert "certificate" in caplog.text
    assert stat(crawler, "capsolver/balance_start", None) is None
    assert stat(crawler, "finish_reason") == "finished"
    # Not one request reached the server: the key never left.
    assert recorder.requests == 0

    # The same server, trusted explicitly, answers: the refusal was the certificate's.
    from twisted.internet import reactor
    from twisted.web.client import Agent

    agent = Agent(reactor, contextFactory=TrustOnly(certificate_pem))
    # The test runs as a Deferred (pytest-twisted), so Deferreds are awaited directly.
    answer = await treq.client.HTTPClient(agent).post(url + "/getBalance", data=b"{}")
    assert answer.code == 200
    await treq.content(answer)
    assert recorder.requests == 1


# Fleet mode: the Redis password shows nowhere either, on a Redis Cluster or through Sentinel.


def redis_settings(request: pytest.FixtureRequest, kind: str, password: str) -> dict[str, Any]:
    if kind == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        url = cluster.url.replace(TOPOLOGY_PASSWORD, password)
        return {"CAPSOLVER_REDIS_URL": url, "CAPSOLVER_REDIS_CLUSTER": True}
    sentinel = request.getfixturevalue("redis_sentinel")
    return {
        "CAPSOLVER_REDIS_URL": sentinel.url.replace(TOPOLOGY_PASSWORD, password),
        "CAPSOLVER_REDIS_SENTINELS": [f"{host}:{port}" for host, port in sentinel.sentinels],
    }


@pytest.mark.asyncio_reactor
@pytest.mark.parametrize("kind", ["cluster", "sentinel"])
@pytest_twisted.ensureDeferred
async def test_the_redis_password_never_shows_on_a_cluster_or_through_sentinel(
    kind: str,
    request: pytest.FixtureRequest,
    capsolver: CapSolverMock,
    image_site: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = {
        **debug_settings(capsolver),
        **redis_settings(request, kind, TOPOLOGY_PASSWORD),
        "CAPSOLVER_FLEET": f"key-safety-{kind}",
    }
    urls = [f"{image_site}/captcha/ok{kind}{i}.png" for i in range(3)]
    crawler = await crawl(InspectingSpider, settings, urls=urls)
    spider: Any = crawler.spider
    assert len(spider.texts) == 3
    assert stat(crawler, "capsolver/fleet/tasks_used") >= 1  # it did run in fleet mode
    state = get_solver(crawler).state
    shown = "\n".join(
        [caplog.text, *spider.seen, pprint.pformat(crawler.stats.get_stats()), repr(state)]  # type: ignore[union-attr]
    )
    assert "Fleet mode: RedisState(" in shown
    assert TOPOLOGY_PASSWORD not in shown

    # A wrong password: refused, and neither password is shown.
    caplog.clear()
    wrong = {**settings, **redis_settings(request, kind, "not-the-" + TOPOLOGY_PASSWORD)}
    wrong.update(CAPSOLVER_MAX_RETRIES=0, CAPSOLVER_FLEET=f"key-safety-wrong-{kind}")
    crawler = await crawl(InspectingSpider, wrong, urls=[f"{image_site}/captcha/no{kind}.png"])
    spider = crawler.spider
    assert {type(e).__name__ for e in spider.errors.values()} == {"CaptchaFleetError"}, [
        str(e) for e in spider.errors.values()
    ]
    shown = "\n".join(
        [caplog.text, *map(str, spider.errors.values()), pprint.pformat(crawler.stats.get_stats())]  # type: ignore[union-attr]
    )
    assert "redis://:***@" in shown and TOPOLOGY_PASSWORD not in shown
