"""What the tests of the local OCR server share: calls made as a plain blocking client makes
them (answers read whatever their status), the shape every error answer must have, a test
image and stand-in OCR engines."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import captcha
import treq
from PIL import Image, ImageDraw, ImageFont
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from scrapy_capsolver_ocr.cli import commands as cli
from scrapy_capsolver_ocr.server import app as ocr_server

SERVE = ["-m", "scrapy_capsolver_ocr", "serve", "--port", "0"]
FAKE_SERVER = str(Path(__file__).parent / "servers" / "fake_ocr_server.py")
FONT = str(Path(captcha.__file__).parent / "data" / "DroidSansMono.ttf")
KEY = "local-test-key"
OK_KEYS = {"errorId", "errorCode", "errorDescription"}

JsonObject = dict[str, Any]


def server_env(**extra: str) -> dict[str, str]:
    """This environment without a required key from the developer's shell, plus ``extra``."""
    env = {name: value for name, value in os.environ.items() if name != cli.REQUIRE_KEY_ENV}
    return {**env, **extra}


def call(
    url: str, method: str, payload: object = None, *, raw: bytes | None = None, verb: str = "POST"
) -> Any:
    """POST (or ``verb``) to the API; return (HTTP status, JSON answer) whatever the status."""
    body = raw if raw is not None else json.dumps(payload).encode()
    request = urllib.request.Request(
        f"{url}/{method}", data=body, headers={"Content-Type": "application/json"}, method=verb
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.load(error)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_task(body: str, **fields: object) -> JsonObject:
    return {"clientKey": KEY, "task": {"type": "ImageToTextTask", "body": body, **fields}}


def assert_error(answer: tuple[int, JsonObject], status: int, code: str) -> None:
    http_status, data = answer
    assert (http_status, data["errorCode"]) == (status, code), data
    assert set(data) == OK_KEYS
    assert data["errorId"] == 1
    assert isinstance(data["errorDescription"], str) and data["errorDescription"]


def clean_png(text: str) -> bytes:
    """Black text on white: any OCR reads it, so answers can be checked exactly."""
    picture = Image.new("RGB", (160, 60), "white")
    ImageDraw.Draw(picture).text((10, 8), text, fill="black", font=ImageFont.truetype(FONT, 40))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


class GateEngine:
    """Holds every image until released, and says when one is being read."""

    def __init__(self) -> None:
        self.reading = threading.Event()
        self.release = threading.Event()
        self.threads: set[str] = set()

    def recognize(self, image: bytes, module: str) -> str:
        self.threads.add(threading.current_thread().name)
        self.reading.set()
        self.release.wait(timeout=30)
        return image.decode()


class RecordingEngine:
    """Answers ``text`` and keeps every image it was given."""

    def __init__(self) -> None:
        self.images: list[bytes] = []

    def recognize(self, image: bytes, module: str) -> str:
        self.images.append(image)
        return "text"


@contextlib.asynccontextmanager
async def image_held(engine: GateEngine, **options: Any) -> AsyncIterator[tuple[str, Deferred]]:
    """A server in this process (``options`` of ``start_server``, one worker) reading one
    image, held by ``engine`` until released: yields the server's URL and the createTask
    call still waiting for its answer. The server stops after the block."""
    server = ocr_server.start_server(engine, workers=1, **options)
    try:
        solving = treq.post(f"{server.url}/createTask", json=image_task(b64(b"ok")), timeout=30)
        await deferToThread(engine.reading.wait, 30)
        yield server.url, solving
    finally:
        engine.release.set()
        await server.stop()
