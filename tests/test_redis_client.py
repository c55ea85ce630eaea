"""The plugin's Redis client: what a URL means, and ``rediss://`` against a real TLS
``redis-server`` with the certificate verified."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import API_KEY
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from scrapy.utils.defer import deferred_from_coro
from servers.redis_server import RedisServer

from scrapy_capsolver_ocr import CaptchaFleetError
from scrapy_capsolver_ocr.settings import ApiKey
from scrapy_capsolver_ocr.state.base import CallTicket, StateLimits
from scrapy_capsolver_ocr.state.redis_client import RedisAddress


def on_reactor(test: Callable[..., Awaitable[None]]) -> Any:
    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> None:
        await deferred_from_coro(test(*args, **kwargs))

    return pytest_twisted.ensureDeferred(run)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h.example:7000/3", {"host": "h.example", "port": 7000, "db": 3, "tls": False}),
        ("redis://:p%40ss@h/0", {"host": "h", "port": 6379, "password": "p@ss", "db": 0}),
        ("redis://user:pw@h?db=2", {"username": "user", "password": "pw", "db": 2}),
        ("rediss://h:6380/1?ssl_ca_certs=/ca.pem", {"tls": True, "ca_file": "/ca.pem", "db": 1}),
        ("unix:///run/redis.sock?db=4", {"path": "/run/redis.sock", "db": 4, "host": ""}),
        ("unix://:pw@/run/redis.sock", {"path": "/run/redis.sock", "password": "pw"}),
    ],
)
def test_redis_urls(url: str, expected: dict[str, Any]) -> None:
    address = RedisAddress.from_url(url)
    assert {name: getattr(address, name) for name in expected} == expected
    assert "pw" not in address.safe_url and "p%40ss" not in address.safe_url


def test_a_database_that_is_no_number_is_refused_without_the_password() -> None:
    with pytest.raises(ValueError, match=r"redis://:\*\*\*@h/x: the database must be a number"):
        RedisAddress.from_url("redis://:secret@h/x")


def _certificate_pair(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for ``localhost`` it signed: (ca, certificate, key)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "redis.crt", directory / "redis.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@on_reactor
async def test_rediss_verifies_the_servers_certificate(redis_binary: str, tmp_path: Path) -> None:
    from scrapy_capsolver_ocr.state.redis_state import RedisState

    ca, certificate, key = _certificate_pair(tmp_path)
    server = RedisServer(redis_binary, tcp=True, tls=(certificate, key)).start()
    try:
        trusted = RedisState(
            f"{server.url}?ssl_ca_certs={ca}", "tls", ApiKey(API_KEY), StateLimits()
        )
        await trusted.open()
        assert isinstance(await trusted.begin_call(), CallTicket)
        await trusted.close()
        # Without the CA, the certificate is not trusted: no connection, no leave to pay.
        untrusted = RedisState(server.url, "tls", ApiKey(API_KEY), StateLimits())
        with pytest.raises(CaptchaFleetError, match="certificate verify failed"):
            await untrusted.begin_call()
        await untrusted.close()
    finally:
        server.stop()
