"""The bundled OCR server speaking Anti-Captcha's, CapMonster Cloud's and 2Captcha's
dialects: each under its own prefix (or at the root with ``serve --protocol``), with integer
task ids, the text only through getTaskResult, its own error codes, balance and reports."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
import treq
from conftest import SERVERS, run_command
from ocr_server_helpers import KEY, OK_KEYS, GateEngine, call, server_env
from servers.image_site import captcha_image
from servers.process import running_server

from scrapy_capsolver_ocr.server import app as ocr_server
from scrapy_capsolver_ocr.server.polled import FIRST_TASK_ID, SERVER_DIALECTS

DIALECTS = tuple(SERVER_DIALECTS)
EMBEDDED = str(SERVERS / "embedded_ocr_server.py")
PNG = captcha_image("ab12")
#: How many polls a test waits for a task read by the stand-in engine (it answers at once).
POLLS = 200

JsonObject = dict[str, Any]


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_server([EMBEDDED, "--require-key", KEY], env=server_env()) as url:
        yield url


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def task(body: str | None = None, **fields: Any) -> JsonObject:
    image = {"type": "ImageToTextTask", "body": b64(PNG) if body is None else body, **fields}
    return {"clientKey": KEY, "task": image}


def create(url: str, dialect: str, payload: JsonObject) -> int:
    status, answer = call(url, f"{dialect}/createTask".lstrip("/"), payload)
    assert (status, set(answer)) == (200, {"errorId", "taskId"}), answer
    assert answer["errorId"] == 0
    task_id = answer["taskId"]
    assert type(task_id) is int
    return task_id


def result(url: str, dialect: str, task_id: int) -> tuple[int, JsonObject]:
    """getTaskResult until the task is no longer processing."""
    for _ in range(POLLS):
        status, answer = call(
            url, f"{dialect}/getTaskResult".lstrip("/"), {"clientKey": KEY, "taskId": task_id}
        )
        if answer.get("status") != "processing":
            return status, answer
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} still processing after {POLLS} polls")


def assert_error(answer: tuple[int, JsonObject], code: str) -> None:
    status, data = answer
    # The three answer their errors with HTTP 200, the error in the body.
    assert (status, data["errorCode"]) == (200, code), data
    assert set(data) == OK_KEYS and data["errorId"] == 1
    assert isinstance(data["errorDescription"], str) and data["errorDescription"]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_each_dialect_answers_an_integer_id_then_the_text_through_getTaskResult(
    url: str, dialect: str
) -> None:
    first, second = create(url, dialect, task()), create(url, dialect, task())
    # Ids above 2**32, as 2Captcha's are, for every dialect.
    assert FIRST_TASK_ID <= first < second and first > 2**32
    status, answer = result(url, dialect, first)
    assert status == 200
    assert answer["solution"] == {"text": "ab12"}
    assert (answer["errorId"], answer["status"], answer["taskId"]) == (0, "ready", first)
    extra = set(answer) - {"errorId", "status", "solution", "taskId"}
    if dialect == "capmonster":
        assert extra == set()
    else:
        assert extra == {"cost", "createTime", "endTime", "solveCount"}
        assert answer["cost"] == "0"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_numeric_one_reads_digits_only(url: str, dialect: str) -> None:
    task_id = create(url, dialect, task(numeric=1))
    assert result(url, dialect, task_id)[1]["solution"] == {"text": "12"}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_an_image_without_text_is_unsolvable_at_getTaskResult(url: str, dialect: str) -> None:
    task_id = create(url, dialect, task(b64(captcha_image("blurred"))))
    assert_error(result(url, dialect, task_id), "ERROR_CAPTCHA_UNSOLVABLE")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_balance_and_reports_answer_in_each_dialect(url: str, dialect: str) -> None:
    status, balance = call(url, f"{dialect}/getBalance", {"clientKey": KEY})
    assert (status, balance) == (200, {"errorId": 0, "balance": ocr_server.LOCAL_BALANCE})
    task_id = create(url, dialect, task())
    result(url, dialect, task_id)
    for method in SERVER_DIALECTS[dialect].report_methods:
        report = call(url, f"{dialect}/{method}", {"clientKey": KEY, "taskId": task_id})
        assert report == (200, {"errorId": 0, "status": "success"})
        unknown = call(url, f"{dialect}/{method}", {"clientKey": KEY, "taskId": 12})
        assert_error(unknown, "ERROR_NO_SUCH_CAPCHA_ID")
    # The report each service documents, and no other.
    methods = {
        "anticaptcha": "reportIncorrectImageCaptcha",
        "capmonster": "reportIncorrectImageCaptcha",
        "2captcha": "reportIncorrect",
    }
    assert methods[dialect] in SERVER_DIALECTS[dialect].report_methods
    assert_error(call(url, f"{dialect}/feedbackTask", {"clientKey": KEY}), "ERROR_NO_SUCH_METHOD")


def _too_big(dialect: str) -> str:
    return b64(PNG + b"\0" * SERVER_DIALECTS[dialect].max_image_bytes)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(
    ("method", "payload", "code"),
    [
        ("createTask", {**task(), "clientKey": "another key"}, "ERROR_KEY_DOES_NOT_EXIST"),
        ("getBalance", {}, "ERROR_KEY_DOES_NOT_EXIST"),
        ("createTask", {"clientKey": KEY}, "ERROR_TASK_ABSENT"),
        ("createTask", task(type="RecaptchaV2Task"), "ERROR_TASK_NOT_SUPPORTED"),
        ("createTask", task(""), "ERROR_ZERO_CAPTCHA_FILESIZE"),
        ("createTask", task(b64(PNG[:99])), "ERROR_ZERO_CAPTCHA_FILESIZE"),
        ("createTask", task("too-big"), "ERROR_TOO_BIG_CAPTCHA_FILESIZE"),
        ("getTaskResult", {"clientKey": KEY, "taskId": 1}, "ERROR_NO_SUCH_CAPCHA_ID"),
        (
            "getTaskResult",
            {"clientKey": KEY, "taskId": str(FIRST_TASK_ID)},
            "ERROR_NO_SUCH_CAPCHA_ID",
        ),
        ("getTaskResult", {"clientKey": KEY, "taskId": True}, "ERROR_NO_SUCH_CAPCHA_ID"),
        ("solveNow", {"clientKey": KEY}, "ERROR_NO_SUCH_METHOD"),
    ],
)
def test_requests_get_the_dialects_own_error_codes(
    url: str, dialect: str, method: str, payload: JsonObject, code: str
) -> None:
    if payload.get("task", {}).get("body") == "too-big":
        payload = task(_too_big(dialect))
    assert_error(call(url, f"{dialect}/{method}", payload), code)


@pytest.mark.parametrize(
    ("dialect", "code"),
    [
        ("anticaptcha", "ERROR_IMAGE_TYPE_NOT_SUPPORTED"),
        ("2captcha", "ERROR_IMAGE_TYPE_NOT_SUPPORTED"),
        ("capmonster", "ERROR_CAPTCHA_UNSOLVABLE"),
    ],
)
def test_a_body_that_is_not_base64_gets_the_dialects_unreadable_code(
    url: str, dialect: str, code: str
) -> None:
    assert SERVER_DIALECTS[dialect].unreadable_code == code
    assert_error(call(url, f"{dialect}/createTask", task("not base64!" * 20)), code)


@pytest.mark.parametrize("dialect", ["anticaptcha", "2captcha"])
def test_formats_the_service_does_not_read_are_refused(url: str, dialect: str) -> None:
    bmp = captcha_image("ab12", "bmp")
    assert_error(
        call(url, f"{dialect}/createTask", task(b64(bmp))), "ERROR_IMAGE_TYPE_NOT_SUPPORTED"
    )


def test_only_2captcha_takes_a_data_uri_body(url: str) -> None:
    data_uri = f"data:image/png;base64,{b64(PNG)}"
    task_id = create(url, "2captcha", task(data_uri))
    assert result(url, "2captcha", task_id)[1]["solution"] == {"text": "ab12"}
    assert_error(
        call(url, "anticaptcha/createTask", task(data_uri)), "ERROR_IMAGE_TYPE_NOT_SUPPORTED"
    )


def test_capmonster_refuses_a_reading_under_its_recognizing_threshold(url: str) -> None:
    # The stand-in engine is 85 % sure of every reading.
    refused = create(url, "capmonster", task(recognizingThreshold=90))
    assert_error(result(url, "capmonster", refused), "ERROR_CAPTCHA_UNSOLVABLE")
    solved = create(url, "capmonster", task(recognizingThreshold=80, capMonsterModule="universal"))
    assert result(url, "capmonster", solved)[1]["solution"] == {"text": "ab12"}
    # The SDK's spelling of the module field is read too: "number" reads digits only.
    sdk = create(url, "capmonster", task(CapMonsterModule="number"))
    assert result(url, "capmonster", sdk)[1]["solution"] == {"text": "12"}


def test_capsolver_stays_at_the_root_and_is_under_its_prefix_too(url: str) -> None:
    for path in ("createTask", "capsolver/createTask"):
        status, answer = call(url, path, task())
        assert (status, answer["status"], answer["solution"]["text"]) == (200, "ready", "ab12")
        assert isinstance(answer["taskId"], str)
    status, unknown = call(url, "solveNow", {"clientKey": KEY})
    assert (status, unknown["errorCode"]) == (400, "ERROR_BAD_REQUEST")
    assert "/anticaptcha/" in unknown["errorDescription"]


def test_serve_protocol_answers_one_dialect_at_the_root() -> None:
    argv = [EMBEDDED, "--require-key", KEY, "--protocol", "2captcha"]
    with running_server(argv, env=server_env()) as url:
        task_id = create(url, "", task())
        assert result(url, "", task_id)[1]["solution"] == {"text": "ab12"}
        assert call(url, "reportIncorrect", {"clientKey": KEY, "taskId": task_id})[0] == 200
        assert_error(call(url, "feedbackTask", {"clientKey": KEY}), "ERROR_NO_SUCH_METHOD")
        # The others keep their prefixes.
        status, answer = call(url, "capsolver/createTask", task())
        assert (status, answer["solution"]["text"]) == (200, "ab12")
        assert create(url, "anticaptcha", task()) >= FIRST_TASK_ID


def test_serve_refuses_an_unknown_protocol() -> None:
    done = run_command("serve", "--protocol", "deathbycaptcha", text=True, timeout=60)
    assert done.returncode == 2
    assert "invalid choice: 'deathbycaptcha'" in done.stderr
    with pytest.raises(ValueError, match="protocol must be one of capsolver, anticaptcha"):
        ocr_server.start_server(GateEngine(), protocol="deathbycaptcha")


@pytest_twisted.ensureDeferred
async def test_a_task_is_processing_while_its_image_is_read() -> None:
    engine = GateEngine()
    server = ocr_server.start_server(engine, workers=1)
    try:
        payload = task(b64(b"x" * 120))
        created = await treq.post(f"{server.url}/capmonster/createTask", json=payload, timeout=30)
        task_id = (await created.json())["taskId"]
        poll = {"clientKey": KEY, "taskId": task_id}
        pending = await treq.post(f"{server.url}/capmonster/getTaskResult", json=poll, timeout=30)
        assert await pending.json() == {"errorId": 0, "status": "processing"}
        engine.release.set()
        while True:
            polled = await treq.post(
                f"{server.url}/capmonster/getTaskResult", json=poll, timeout=30
            )
            answer = await polled.json()
            if answer["status"] != "processing":
                break
    finally:
        engine.release.set()
        await server.stop()
    assert answer == {
        "errorId": 0,
        "status": "ready",
        "solution": {"text": "x" * 120},
        "taskId": task_id,
    }
