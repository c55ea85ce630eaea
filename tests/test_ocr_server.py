"""The local CapSolver-compatible OCR server (``scrapy-capsolver-ocr serve``), over HTTP."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import pytest_twisted
import treq
from captcha.image import ImageCaptcha
from ocr_server_helpers import (
    FAKE_SERVER,
    KEY,
    OK_KEYS,
    SERVE,
    GateEngine,
    JsonObject,
    RecordingEngine,
    assert_error,
    b64,
    call,
    clean_png,
    image_held,
    image_task,
    server_env,
)
from PIL import Image
from scrapy.settings import Settings
from servers.image_bombs import png_bomb
from servers.process import running_server
from twisted.python.threadpool import ThreadPool

from scrapy_capsolver_ocr.cli import commands as cli
from scrapy_capsolver_ocr.server import app as ocr_server
from scrapy_capsolver_ocr.server.http import parse_json
from scrapy_capsolver_ocr.server.protocol import ApiError, LocalCapSolver, read_task
from scrapy_capsolver_ocr.settings import SolverSettings

CREATE_TASK_KEYS = OK_KEYS | {"status", "solution", "taskId"}


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
    assert set(answer["solution"]) == {"text", "confidence"}
    assert isinstance(answer["solution"]["text"], str) and answer["solution"]["text"]
    assert 0.0 <= answer["solution"]["confidence"] <= 1.0
    uuid.UUID(answer["taskId"])


def test_reads_the_text_of_a_clean_image_and_says_how_sure_it_is(ocr_url: str) -> None:
    status, answer = call(ocr_url, "createTask", image_task(b64(clean_png("AB12")), score=0.9))
    assert status == 200
    # The model is sure of the letters, not of their case: sites compare ignoring case.
    assert answer["solution"]["text"].upper() == "AB12"
    assert answer["solution"]["confidence"] > 0.9


def test_number_module_reads_digits_only(ocr_url: str) -> None:
    status, answer = call(
        ocr_url, "createTask", image_task(b64(clean_png("4821")), module="number")
    )
    assert (status, answer["solution"]["text"]) == (200, "4821")
    assert answer["solution"]["confidence"] > 0.9
    # Letters read as digits are no sure answer.
    status, answer = call(
        ocr_url, "createTask", image_task(b64(clean_png("AB12")), module="number")
    )
    assert status == 200 and answer["solution"]["text"].isdigit()
    assert answer["solution"]["confidence"] < 0.1


def test_image_without_text_is_unsolvable(ocr_url: str) -> None:
    answer = call(ocr_url, "createTask", image_task(b64(clean_png(""))))
    assert_error(answer, 400, "ERROR_CAPTCHA_UNSOLVABLE")


PNG = clean_png("4821")


REQUEST_ERRORS = {
    # id: (method, request body or JSON, HTTP status, errorCode)
    "bad-json": ("createTask", b"{not json", 400, "ERROR_BAD_REQUEST"),
    "json-not-object": ("createTask", b"[1, 2]", 400, "ERROR_BAD_REQUEST"),
    "empty-body": ("getBalance", b"", 400, "ERROR_BAD_REQUEST"),
    "not-utf8": ("getBalance", b'{"clientKey": "\xff"}', 400, "ERROR_BAD_REQUEST"),
    "nested-json": ("createTask", b"[" * 100_000 + b"]" * 100_000, 400, "ERROR_BAD_REQUEST"),
    "unknown-method": ("solveEverything", {"clientKey": KEY}, 400, "ERROR_BAD_REQUEST"),
    "no-task": ("createTask", {"clientKey": KEY}, 400, "ERROR_INVALID_TASK_DATA"),
    "no-body": (
        "createTask",
        {"task": {"type": "ImageToTextTask"}},
        400,
        "ERROR_INVALID_TASK_DATA",
    ),
    "no-type": ("createTask", {"task": {"body": b64(PNG)}}, 400, "ERROR_INVALID_TASK_DATA"),
    "empty-body-field": ("createTask", image_task(""), 400, "ERROR_INVALID_TASK_DATA"),
    "bad-base64": ("createTask", image_task("not base64!"), 400, "ERROR_PARSE_IMAGE_FAIL"),
    "data-uri-prefix": (
        "createTask",
        image_task("data:image/png;base64," + b64(PNG)),
        400,
        "ERROR_PARSE_IMAGE_FAIL",
    ),
    "newline-in-base64": (
        "createTask",
        image_task(b64(PNG)[:40] + "\n" + b64(PNG)[40:]),
        400,
        "ERROR_PARSE_IMAGE_FAIL",
    ),
    "batch-images": (
        "createTask",
        {"task": {"type": "ImageToTextTask", "module": "number", "images": [b64(PNG)]}},
        400,
        "ERROR_INVALID_TASK_DATA",
    ),
    "not-an-image": (
        "createTask",
        image_task(b64(b"plain text, no image")),
        400,
        "ERROR_INVALID_IMAGE",
    ),
    "truncated-image": ("createTask", image_task(b64(PNG[:100])), 400, "ERROR_INVALID_IMAGE"),
    "unknown-task-type": (
        "createTask",
        {"task": {"type": "ReCaptchaV2Task", "websiteURL": "https://example.com"}},
        400,
        "ERROR_TASK_NOT_SUPPORTED",
    ),
    "feedback-unknown-task-id": (
        "feedbackTask",
        {"taskId": str(uuid.uuid4())},
        400,
        "ERROR_TASKID_INVALID",
    ),
    "feedback-no-task-id": (
        "feedbackTask",
        {"result": {"invalid": True}},
        400,
        "ERROR_TASKID_INVALID",
    ),
    "result-unknown-task-id": (
        "getTaskResult",
        {"clientKey": KEY, "taskId": str(uuid.uuid4())},
        400,
        "ERROR_TASKID_INVALID",
    ),
    "result-no-task-id": ("getTaskResult", {"clientKey": KEY}, 400, "ERROR_TASKID_INVALID"),
    "result-task-id-not-string": (
        "getTaskResult",
        {"clientKey": KEY, "taskId": 12},
        400,
        "ERROR_TASKID_INVALID",
    ),
}


@pytest.mark.parametrize(
    ("method", "raw", "status", "code"), REQUEST_ERRORS.values(), ids=REQUEST_ERRORS.keys()
)
def test_request_errors_get_capsolver_error_answers(
    ocr_url: str, method: str, raw: bytes | JsonObject, status: int, code: str
) -> None:
    if isinstance(raw, bytes):
        answer = call(ocr_url, method, raw=raw)
    else:
        answer = call(ocr_url, method, raw)
    assert_error(answer, status, code)


WRONG_FIELDS = {
    # id: (the field as a request names it, the request)
    "score-string": ("task.score", image_task(b64(PNG), score="0.9")),
    "score-boolean": ("task.score", image_task(b64(PNG), score=True)),
    "score-below-range": ("task.score", image_task(b64(PNG), score=0.5)),
    "score-above-range": ("task.score", image_task(b64(PNG), score=1.5)),
    "score-huge": ("task.score", image_task(b64(PNG), score=10**300)),
    "module-number": ("task.module", image_task(b64(PNG), module=7)),
    "module-list": ("task.module", image_task(b64(PNG), module=["number"])),
    "website-url-number": ("task.websiteURL", image_task(b64(PNG), websiteURL=5)),
    "body-number": ("task.body", image_task(123)),
    "body-object": ("task.body", image_task({"data": b64(PNG)})),
    "type-number": ("task.type", {"task": {"type": 5, "body": b64(PNG)}}),
    "app-id-zero": ("appId", {**image_task(b64(PNG)), "appId": 0}),
}


@pytest.mark.parametrize(("field", "request_json"), WRONG_FIELDS.values(), ids=WRONG_FIELDS.keys())
def test_wrong_field_types_are_invalid_task_data_naming_the_field(
    ocr_url: str, field: str, request_json: JsonObject
) -> None:
    answer = call(ocr_url, "createTask", request_json)
    assert_error(answer, 400, "ERROR_INVALID_TASK_DATA")
    assert field in answer[1]["errorDescription"]


@pytest.mark.parametrize(
    "fields",
    [{"score": 0.8}, {"score": 1}, {"module": None, "websiteURL": None}, {"module": ""}],
    ids=["score-low-end", "score-integer-high-end", "nulls-are-absent", "empty-module"],
)
def test_optional_fields_within_their_types_are_accepted(fake_url: str, fields: JsonObject) -> None:
    status, answer = call(fake_url, "createTask", image_task(b64(b"four"), **fields))
    assert (status, answer["solution"]) == (200, {"text": "common:4"})


def test_get_task_result_answers_the_ready_task(ocr_url: str) -> None:
    _, created = call(ocr_url, "createTask", image_task(b64(clean_png("AB12"))))
    request = {"clientKey": KEY, "taskId": created["taskId"]}
    assert call(ocr_url, "getTaskResult", request) == (200, created)
    assert created["status"] == "ready"
    assert created["solution"]["text"].upper() == "AB12"


@pytest.mark.parametrize("verb", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize("path", ["createTask", "getBalance", "nowhere"])
def test_other_http_verbs_get_a_json_error(fake_url: str, verb: str, path: str) -> None:
    assert_error(call(fake_url, path, raw=b"", verb=verb), 400, "ERROR_BAD_REQUEST")


def test_images_declaring_too_many_pixels_are_refused(ocr_url: str) -> None:
    for image in (png_bomb(50000, 50000, rows=1), png_bomb(1001, 1000, rows=1)):
        answer = call(ocr_url, "createTask", image_task(b64(image)))
        assert_error(answer, 400, "ERROR_INVALID_IMAGE")
        assert "--max-pixels" in answer[1]["errorDescription"]


def test_images_the_header_check_cannot_read_are_capped_by_the_engine(ocr_url: str) -> None:
    # TIFF: a format whose size only the decoder reads; it stops before the pixels.
    picture = Image.new("1", (1001, 1000), 1)
    out = io.BytesIO()
    picture.save(out, format="TIFF", compression="packbits")
    answer = call(ocr_url, "createTask", image_task(b64(out.getvalue())))
    assert_error(answer, 400, "ERROR_INVALID_IMAGE")
    assert "1001x1000 pixels" in answer[1]["errorDescription"]


def test_strips_too_wide_for_the_model_are_refused_by_the_engine(ocr_url: str) -> None:
    # 1,000,000 pixels, within the cap, but 64000 px wide once scaled to the model's height.
    answer = call(ocr_url, "createTask", image_task(b64(png_bomb(100_000, 10))))
    assert_error(answer, 400, "ERROR_INVALID_IMAGE")
    assert "scaled to 64 px high" in answer[1]["errorDescription"]


def test_the_official_sdk_solves_through_the_server(
    ocr_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    capsolver = pytest.importorskip("capsolver", reason="the official SDK: pip install capsolver")
    monkeypatch.setattr(capsolver, "api_base", ocr_url)
    monkeypatch.setattr(capsolver, "api_key", KEY)
    solution = capsolver.solve({"type": "ImageToTextTask", "body": b64(clean_png("AB12"))})
    assert set(solution) == {"text", "confidence"}
    assert solution["text"].upper() == "AB12"
    with pytest.raises(capsolver.error.InvalidRequestError, match="base64"):
        capsolver.solve({"type": "ImageToTextTask", "body": "not base64!"})


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
    assert (status, answer["solution"]["text"]) == (200, "4821")
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


@pytest.mark.parametrize(
    "option",
    [
        ["--workers", "0"],
        ["--port", "70000"],
        ["--port", "x"],
        ["--max-body", "0"],
        ["--max-pixels", "x"],
        ["--idle-timeout", "0"],
        ["--request-timeout", "-1"],
        ["--max-connections", "0"],
    ],
)
def test_serve_refuses_bad_options(option: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", *option])
    assert exit_info.value.code == 2


@pytest_twisted.ensureDeferred
async def test_start_server_reads_off_the_reactor_thread() -> None:
    engine = GateEngine()
    async with image_held(engine, require_key=KEY) as (url, solving):
        # The image is being read, yet the reactor answers.
        balance = await treq.post(f"{url}/getBalance", json={"clientKey": KEY})
        assert balance.code == 200
        await balance.content()
        engine.release.set()
        response = await solving
        answer = await response.json()
    assert (response.code, answer["solution"]) == (200, {"text": "ok"})
    assert threading.main_thread().name not in engine.threads


async def post(url: str, method: str, body: bytes) -> tuple[int, JsonObject]:
    response = await treq.post(f"{url}/{method}", data=body, timeout=30)
    return response.code, await response.json()


@pytest_twisted.ensureDeferred
async def test_nested_json_is_a_bad_request_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = ocr_server.start_server(RecordingEngine())
    try:
        with caplog.at_level(logging.DEBUG):
            answer = await post(server.url, "createTask", b"[" * 100_000 + b"]" * 100_000)
    finally:
        await server.stop()
    assert_error(answer, 400, "ERROR_BAD_REQUEST")
    assert "nested" in answer[1]["errorDescription"]
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []


@pytest_twisted.ensureDeferred
async def test_pixel_cap_refuses_before_the_engine_sees_the_image() -> None:
    engine = RecordingEngine()
    server = ocr_server.start_server(engine, max_pixels=100 * 100)
    at_limit, over = png_bomb(100, 100), png_bomb(101, 100, rows=1)
    try:
        refused = await post(server.url, "createTask", json.dumps(image_task(b64(over))).encode())
        read = await post(server.url, "createTask", json.dumps(image_task(b64(at_limit))).encode())
    finally:
        await server.stop()
    assert_error(refused, 400, "ERROR_INVALID_IMAGE")
    assert "101x100 pixels" in refused[1]["errorDescription"]
    assert read[0] == 200
    assert engine.images == [at_limit]


@pytest_twisted.ensureDeferred
async def test_the_task_memory_keeps_the_latest_answers_only() -> None:
    from twisted.internet import reactor

    pool = ThreadPool(minthreads=0, maxthreads=1)
    pool.start()
    api = LocalCapSolver(RecordingEngine(), pool, reactor, max_pixels=10**6, remembered_tasks=2)
    try:
        answers = [await api.create_task(image_task(b64(PNG))) for _ in range(3)]
    finally:
        pool.stop()
    task_ids = [answer["taskId"] for answer in answers]
    with pytest.raises(ApiError) as forgotten:
        api.get_task_result({"taskId": task_ids[0]})
    assert forgotten.value.code == "ERROR_TASKID_INVALID"
    assert [api.get_task_result({"taskId": task_id}) for task_id in task_ids[1:]] == answers[1:]


def test_read_task_treats_nulls_as_absent_and_defaults_the_module() -> None:
    task = image_task(b64(PNG), module=None, score=None, websiteURL=None)
    assert read_task(task) == (PNG, "common")
    assert read_task(image_task(b64(PNG), module="number", score=0.95)) == (PNG, "number")


def test_parse_json_refuses_what_is_not_a_json_object() -> None:
    for body in (b"[" * 100_000, b"\xff", b"3", b"1" * 5000):
        with pytest.raises(ApiError) as refused:
            parse_json(body)
        assert refused.value.code == "ERROR_BAD_REQUEST"
    assert parse_json(b'{"taskId": "x"}') == {"taskId": "x"}


def test_the_default_pixel_cap_is_the_plugins() -> None:
    plugin_default = SolverSettings.from_settings(Settings()).max_image_pixels
    assert plugin_default == ocr_server.DEFAULT_MAX_PIXELS
    assert cli.build_parser().parse_args(["serve"]).max_pixels == plugin_default
