"""The API client writes each request body in one piece, with its headers."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import StringTransport

from scrapy_capsolver_ocr.api.client import _whole_body


def test_a_request_body_is_written_whole_as_the_request_starts() -> None:
    body = b'{"task": {"type": "ImageToTextTask", "body": "iVBORw0KGgo="}}'
    producer: Any = _whole_body(body)
    consumer = StringTransport()

    done = producer.startProducing(consumer)

    # At once, not a reactor turn later through Twisted's cooperator as treq's producer does.
    assert consumer.value() == body
    assert producer.length == len(body)
    assert done.called
