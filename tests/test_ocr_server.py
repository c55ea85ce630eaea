"""The local CapSolver-compatible OCR server (``scrapy-capsolver-ocr serve``), over HTTP."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import captcha
import pytest
import pytest_twisted
import treq
from captcha.image import ImageCaptcha
from PIL import Image, ImageDraw, ImageFont
from servers.process import running_server
from twisted.internet.threads import deferToThread

from scrapy_capsolver_ocr import cli, ocr_server

SERVE = ["-m", "scrapy_capsolver_ocr", "serve", "--port", "0"]
FAKE_SERVER = str(Path(__file__).parent / "servers" / "fake_ocr_server.py")
FONT = str(Path(captcha.__file__).parent / "data" / "DroidSansMono.ttf")
KEY = "local-test-key"
OK_KEYS = {"errorId", "errorCode", "errorDescription"}
CREATE_TASK_KEYS = OK_KEYS | {"status", "solution", "taskId"}

JsonObject = dict[str, Any]


def server_env(**extra: str) -> dict[str, str]:
    """This environment without a required key from the developer's shell, plus ``extra``."""
    env = {name: value for name, value in os.environ.items() if name != cli.REQUIRE_KEY_ENV}
    return {**env, **extra}


def call(url: str, method: str, payload: object = None, *, raw: bytes | None = None) -> Any:
    """POST to the API; return (HTTP status, JSON answer) whatever the status."""
    body = raw if raw is not None else json.dumps(payload).encode()
    request = urllib.request.Request(
        f"{url}/{method}", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.load(error)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def clean_png(text: str) -> bytes:
    """Black text on white: any OCR reads it, so answers can be checked exactly."""
    picture = Image.new("RGB", (160, 60), "white")
    ImageDraw.Draw(picture).text((10, 8), text, fill="black", font=ImageFont.truetype(FONT, 40))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def image_task(body: str, **fields: object) -> JsonObject:
    return {"clientKey": KEY, "task": {"type": "ImageToTextTask", "body": body, **fields}}


def assert_error(answer: tuple[int, JsonObject], status: int, code: str) -> None:
    http_status, data = answer
    assert (http_status, data["errorCode"]) == (status, code), data
    assert set(data) == OK_KEYS
    assert data["errorId"] == 1
    assert isinstance(data["errorDescription"], str) and data["errorDescription"]


@pytest.fixture(scope="module")
def ocr_url() -> Iterator[str]:
    pytest.importorskip("ddddocr", reason='the OCR extra: pip install ".[ocr]"')
    with running_server(SERVE, env=server_env()) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_url() -> Iterator[str]:
    pytest.importorskip("ddddocr", reason='the OCR extra: pip install ".[ocr]"')
    with running_server(SERVE, env=server_env(**{cli.REQUIRE_KEY_ENV: KEY})) as url:
        yield url


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    with running_server([FAKE_SERVER], env=server_env()) as url:
        yield url


def test_documentation_example_gets_the_documented_answer(ocr_url: str) -> None:
    # The request of CapSolver's ImageToTextTask page, field for field, with a real captcha.
    png = ImageCaptcha(width=160, height=60).generate("4821", format="PNG").getvalue()
    request = {
        "clientKey": "YOUR_API_KEY",
        "task": {
            "type": "ImageToTextTask",
            "websiteURL": "https://xxxx.com",
            "module": "queueit",
            "body": b64(png),
        },
    }
    status, answer = call(ocr_url, "createTask", request)
    assert status == 200
    assert set(answer) == CREATE_TASK_KEYS
    assert (answer["errorId"], answer["errorCode"], answer["errorDescription"]) == (0, "", "")
    assert answer["status"] == "ready"
    assert set(answer["solution"]) == {"text"}
    assert isinstance(answer["solution"]["text"], str) and answer["solution"]["text"]
    uuid.UUID(answer["taskId"])


def test_reads_the_text_of_a_clean_image(ocr_url: str) -> None:
    status, answer = call(ocr_url, "createTask", image_task(b64(clean_png("AB12")), score=0.9))
    assert (status, answer["solution"]) == (200, {"text": "AB12"})


def test_number_module_keeps_digits_only(ocr_url: str) -> None:
    status, answer = call(
        ocr_url, "createTask", image_task(b64(clean_png("AB12")), module="number")
    )
    assert (status, answer["solution"]) == (200, {"text": "12"})


def test_image_without_text_is_unsolvable(ocr_url: str) -> None:
    answer = call(ocr_url, "createTask", image_task(b64(clean_png(""))))
    assert_error(answer, 400, "ERROR_CAPTCHA_UNSOLVABLE")


PNG = clean_png("4821")


@pytest.mark.parametrize(
    ("method", "raw", "status", "code"),
    [
        ("createTask", b"{not json", 400, "ERROR_BAD_REQUEST"),
        ("createTask", b"[1, 2]", 400, "ERROR_BAD_REQUEST"),
        ("getBalance", b"", 400, "ERROR_BAD_REQUEST"),
        ("createTask", {"clientKey": KEY}, 400, "ERROR_INVALID_TASK_DATA"),
        ("createTask", {"task": {"type": "ImageToTextTask"}}, 400, "ERROR_INVALID_TASK_DATA"),
        ("createTask", {"task": {"body": b64(PNG)}}, 400, "ERROR_INVALID_TASK_DATA"),
        ("createTask", image_task(""), 400, "ERROR_INVALID_TASK_DATA"),
        ("createTask", image_task("not base64!"), 400, "ERROR_INVALID_TASK_DATA"),
        (
            "createTask",
            image_task("data:image/png;base64," + b64(PNG)),
            400,
            "ERROR_INVALID_TASK_DATA",
        ),
        (
            "createTask",
            image_task(b64(PNG)[:40] + "\n" + b64(PNG)[40:]),
            400,
            "ERROR_INVALID_TASK_DATA",
        ),
        ("createTask", image_task(b64(PNG), module=7), 400, "ERROR_INVALID_TASK_DATA"),
        (
            "createTask",
            {"task": {"type": "ImageToTextTask", "module": "number", "images": [b64(PNG)]}},
            400,
            "ERROR_INVALID_TASK_DATA",
        ),
        ("createTask", image_task(b64(b"plain text, no image")), 400, "ERROR_INVALID_IMAGE"),
        ("createTask", image_task(b64(PNG[:100])), 400, "ERROR_INVALID_IMAGE"),
        (
            "createTask",
            {"task": {"type": "ReCaptchaV2Task", "websiteURL": "https://example.com"}},
            400,
            "ERROR_TASK_NOT_SUPPORTED",
        ),
        ("feedbackTask", {"taskId": str(uuid.uuid4())}, 400, "ERROR_TASKID_INVALID"),
        ("feedbackTask", {"result": {"invalid": True}}, 400, "ERROR_TASKID_INVALID"),
    ],
    ids=[
        "bad-json",
        "json-not-object",
        "empty-body",
        "no-task",
        "no-body",
        "no-type",
        "empty-body-field",
        "bad-base64",
        "data-uri-prefix",
        "newline-in-base64",
        "module-not-string",
        "batch-images",
        "not-an-image",
        "truncated-image",
        "unknown-task-type",
        "unknown-task-id",
        "no-task-id",
    ],
)
def test_request_errors_get_capsolver_error_answers(
    ocr_url: str, method: str, raw: bytes | JsonObject, status: int, code: str
) -> None:
    if isinstance(raw, bytes):
        answer = call(ocr_url, method, raw=raw)
    else:
        answer = call(ocr_url, method, raw)
    assert_error(answer, status, code)


def test_get_balance_answers_the_fixed_local_balance(ocr_url: str) -> None:
    status, answer = call(ocr_url, "getBalance", {"clientKey": KEY})
    assert status == 200
    assert answer == {**ok_fields(), "balance": ocr_server.LOCAL_BALANCE, "packages": []}


def ok_fields() -> JsonObject:
    return {"errorId": 0, "errorCode": "", "errorDescription": ""}


def test_feedback_on_a_solved_task_is_accepted(ocr_url: str) -> None:
    _, solved = call(ocr_url, "createTask", image_task(b64(PNG)))
    feedback = {
        "clientKey": KEY,
        "taskId": solved["taskId"],
        "result": {"invalid": True, "code": 1001, "message": "the site refused the answer"},
    }
    assert call(ocr_url, "feedbackTask", feedback) == (200, ok_fields())


@pytest.mark.parametrize("method", ["createTask", "getBalance", "feedbackTask"])
@pytest.mark.parametrize("key", [None, "wrong-key", 12345])
def test_required_key_is_enforced(keyed_url: str, method: str, key: object) -> None:
    request = image_task(b64(PNG))
    if key is None:
        del request["clientKey"]
    else:
        request["clientKey"] = key
    answer = call(keyed_url, method, request)
    assert_error(answer, 401, "ERROR_KEY_DENIED_ACCESS")
    assert KEY not in json.dumps(answer[1])


def test_required_key_lets_its_holder_in(keyed_url: str) -> None:
    assert call(keyed_url, "getBalance", {"clientKey": KEY})[0] == 200
    status, answer = call(keyed_url, "createTask", image_task(b64(PNG)))
    assert (status, answer["solution"]) == (200, {"text": "4821"})
    feedback = {"clientKey": KEY, "taskId": answer["taskId"], "result": {"invalid": True}}
    assert call(keyed_url, "feedbackTask", feedback) == (200, ok_fields())


def test_module_reaches_the_engine_with_common_as_default(fake_url: str) -> None:
    body = b64(b"any bytes")
    _, plain = call(fake_url, "createTask", image_task(body))
    _, number = call(fake_url, "createTask", image_task(body, module="number"))
    assert (plain["solution"]["text"], number["solution"]["text"]) == ("common:9", "number:9")


def test_images_are_read_in_parallel() -> None:
    # Each OCR call waits until two are in progress: the first createTask can only be answered
    # once the second one is read beside it.
    argv = [FAKE_SERVER, "--parties", "2", "--workers", "2"]
    with running_server(argv, env=server_env()) as url, ThreadPoolExecutor(2) as executor:
        first = executor.submit(call, url, "createTask", image_task(b64(b"first")))
        second = executor.submit(call, url, "createTask", image_task(b64(b"second!")))
        texts = [future.result()[1]["solution"]["text"] for future in (first, second)]
    assert texts == ["common:5", "common:7"]


def test_serve_prints_a_clear_message_without_ddddocr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ddddocr", None)  # makes "import ddddocr" fail
    assert cli.main(["serve", "--port", "0"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert 'pip install "scrapy-capsolver-ocr[ocr]"' in captured.err


def test_serve_reads_the_required_key_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(cli.REQUIRE_KEY_ENV, "from-env")
    assert cli.build_parser().parse_args(["serve"]).require_key == "from-env"
    args = cli.build_parser().parse_args(["serve", "--require-key", "from-flag"])
    assert args.require_key == "from-flag"


@pytest.mark.parametrize("option", [["--workers", "0"], ["--port", "70000"], ["--port", "x"]])
def test_serve_refuses_bad_options(option: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", *option])
    assert exit_info.value.code == 2


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


@pytest_twisted.ensureDeferred
async def test_start_server_reads_off_the_reactor_thread() -> None:
    engine = GateEngine()
    server = ocr_server.start_server(engine, workers=1, require_key=KEY)
    try:
        solving = treq.post(f"{server.url}/createTask", json=image_task(b64(b"ok")), timeout=30)
        await deferToThread(engine.reading.wait, 30)
        # The image is being read, yet the reactor answers.
        balance = await treq.post(f"{server.url}/getBalance", json={"clientKey": KEY})
        assert balance.code == 200
        await balance.content()
        engine.release.set()
        response = await solving
        answer = await response.json()
    finally:
        engine.release.set()
        await server.stop()
    assert (response.code, answer["solution"]) == (200, {"text": "ok"})
    assert threading.main_thread().name not in engine.threads
