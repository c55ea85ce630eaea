"""The ``solve`` and ``balance`` commands, run as a user runs them: in a subprocess."""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import captcha
import pytest
from conftest import API_KEY, CapSolverMock, closed_port_url, run_command
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo
from servers.process import running_server

from scrapy_capsolver_ocr.cli import commands as cli

FONT = str(Path(captcha.__file__).parent / "data" / "DroidSansMono.ttf")
LOCAL_KEY = "local-cli-key"


def png(text: str, *, embed: bool = False) -> bytes:
    """Black ``text`` on white; with ``embed``, also in the tEXt chunk the mock answers."""
    picture = Image.new("RGB", (160, 60), "white")
    ImageDraw.Draw(picture).text((10, 8), text, fill="black", font=ImageFont.truetype(FONT, 40))
    info = PngInfo()
    if embed:
        info.add_text("captcha-answer", text)
    out = io.BytesIO()
    picture.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def run_cli(
    *args: str,
    key: str | None = API_KEY,
    stdin: bytes | BinaryIO | None = None,
    api_url: str = "",
) -> subprocess.CompletedProcess[str]:
    """``python -m scrapy_capsolver_ocr ARGS`` with only the key (and ``$CAPSOLVER_API_URL``)
    this test gives it; ``stdin`` is the bytes or the file it reads."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in (cli.API_KEY_ENV, cli.API_URL_ENV)
    }
    if key is not None:
        env[cli.API_KEY_ENV] = key
    if api_url:
        env[cli.API_URL_ENV] = api_url
    piped = isinstance(stdin, bytes)
    result = run_command(
        *args, timeout=120, env=env, input=stdin if piped else None, stdin=None if piped else stdin
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], command: str) -> str:
    assert result.returncode == 1, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"scrapy-capsolver-ocr {command}: ")
    assert API_KEY not in result.stderr
    return lines[0]


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "captcha.png"
    path.write_bytes(png("X7K2", embed=True))
    return path


def test_solve_prints_the_text(capsolver: CapSolverMock, image_file: Path) -> None:
    result = run_cli("solve", str(image_file), "--api-url", capsolver.url)
    assert (result.returncode, result.stdout, result.stderr) == (0, "X7K2\n", "")
    [call] = capsolver.calls()
    assert call["body"]["task"].keys() == {"type", "body"}


def test_solve_sends_module_and_score(capsolver: CapSolverMock, image_file: Path) -> None:
    args = ["--module", "number", "--score", "0.9", "--api-url", capsolver.url]
    result = run_cli("solve", str(image_file), *args)
    assert (result.returncode, result.stdout) == (0, "X7K2\n")
    [call] = capsolver.calls()
    task = call["body"]["task"]
    assert (task["module"], task["score"]) == ("number", 0.9)


def test_solve_reads_standard_input(capsolver: CapSolverMock) -> None:
    result = run_cli("solve", "-", "--api-url", capsolver.url, stdin=png("Q9", embed=True))
    assert (result.returncode, result.stdout) == (0, "Q9\n")


def test_api_url_comes_from_the_environment_unless_given(
    capsolver: CapSolverMock, image_file: Path
) -> None:
    result = run_cli("solve", str(image_file), api_url=capsolver.url)
    assert (result.returncode, result.stdout) == (0, "X7K2\n")
    flag_wins = run_cli("balance", "--api-url", capsolver.url, api_url=closed_port_url())
    assert flag_wins.returncode == 0


def test_balance_prints_the_balance(capsolver: CapSolverMock) -> None:
    capsolver.configure(balance=12.3456)
    result = run_cli("balance", "--api-url", capsolver.url)
    assert (result.returncode, result.stdout, result.stderr) == (0, "12.3456\n", "")


@pytest.mark.parametrize("command", ["solve", "balance"])
def test_no_key_is_a_one_line_error(
    capsolver: CapSolverMock, image_file: Path, command: str
) -> None:
    args = [str(image_file)] if command == "solve" else []
    result = run_cli(command, *args, "--api-url", capsolver.url, key=None)
    line = assert_one_line_error(result, command)
    assert "CAPSOLVER_API_KEY" in line
    assert capsolver.calls(method=None) == []


@pytest.mark.parametrize("command", ["solve", "balance"])
def test_bad_key_is_a_one_line_error(
    capsolver: CapSolverMock, image_file: Path, command: str
) -> None:
    args = [str(image_file)] if command == "solve" else []
    result = run_cli(command, *args, "--api-url", capsolver.url, key="CAP-wrong-key-0000000000")
    line = assert_one_line_error(result, command)
    assert "ERROR_KEY_DENIED_ACCESS" in line
    assert "CAP-wrong-key" not in line


@pytest.mark.parametrize("command", ["solve", "balance"])
def test_unreachable_api_is_a_one_line_error(image_file: Path, command: str) -> None:
    args = [str(image_file), "--retries", "0"] if command == "solve" else []
    result = run_cli(command, *args, "--api-url", closed_port_url())
    line = assert_one_line_error(result, command)
    assert "ConnectionRefusedError" in line


def test_busy_api_is_retried_then_reported(capsolver: CapSolverMock, image_file: Path) -> None:
    capsolver.configure(faults=[{"fault": "http", "status": 503}])
    result = run_cli("solve", str(image_file), "--retries", "1", "--api-url", capsolver.url)
    assert "HTTP 503" in assert_one_line_error(result, "solve")
    assert len(capsolver.calls()) == 2


def test_not_an_image_fails_without_an_api_call(capsolver: CapSolverMock, tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text("<html>blocked</html>")
    result = run_cli("solve", str(page), "--api-url", capsolver.url)
    assert "not a PNG, JPEG, GIF, BMP or WEBP image" in assert_one_line_error(result, "solve")
    assert capsolver.calls(method=None) == []


MAX_IMAGE_SIZE = 1_048_576  # CAPSOLVER_MAX_IMAGE_SIZE's default


def test_endless_input_is_refused_after_the_size_limit(capsolver: CapSolverMock) -> None:
    with open("/dev/zero", "rb") as zeros:
        from_stdin = run_cli("solve", "-", "--api-url", capsolver.url, stdin=zeros)
    from_file = run_cli("solve", "/dev/zero", "--api-url", capsolver.url)
    assert assert_one_line_error(from_stdin, "solve").endswith(
        f"stdin: over {MAX_IMAGE_SIZE} bytes (CAPSOLVER_MAX_IMAGE_SIZE): not a captcha image"
    )
    assert f"/dev/zero: over {MAX_IMAGE_SIZE} bytes" in assert_one_line_error(from_file, "solve")
    assert capsolver.calls(method=None) == []


def test_a_file_of_the_size_limit_is_read_whole(capsolver: CapSolverMock, tmp_path: Path) -> None:
    at_limit, over = tmp_path / "at-limit.bin", tmp_path / "over.bin"
    at_limit.write_bytes(b"<html>" + b" " * (MAX_IMAGE_SIZE - 6))
    over.write_bytes(at_limit.read_bytes() + b" ")
    read = run_cli("solve", str(at_limit), "--api-url", capsolver.url)
    assert "not a PNG, JPEG, GIF, BMP or WEBP image" in assert_one_line_error(read, "solve")
    refused = run_cli("solve", "-", "--api-url", capsolver.url, stdin=over.read_bytes())
    assert "stdin: over 1048576 bytes" in assert_one_line_error(refused, "solve")


def test_missing_file_is_a_one_line_error(capsolver: CapSolverMock, tmp_path: Path) -> None:
    missing = tmp_path / "nothing.png"
    result = run_cli("solve", str(missing), "--api-url", capsolver.url)
    assert assert_one_line_error(result, "solve").endswith(f"{missing}: No such file or directory")


def test_plain_http_to_another_host_is_refused(image_file: Path) -> None:
    result = run_cli("solve", str(image_file), "--api-url", "http://api.example.com")
    assert "CAPSOLVER_API_URL" in assert_one_line_error(result, "solve")


@pytest.mark.parametrize(
    ("option", "value"), [("--score", "0.5"), ("--score", "x"), ("--module", " ")]
)
def test_bad_options_are_usage_errors(image_file: Path, option: str, value: str) -> None:
    result = run_cli("solve", str(image_file), option, value)
    assert result.returncode == 2
    assert f"argument {option}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def local_ocr_url() -> Iterator[str]:
    pytest.importorskip("ddddocr", reason='the OCR extra: pip install ".[ocr]"')
    env = {**os.environ, cli.REQUIRE_KEY_ENV: LOCAL_KEY}
    with running_server(["-m", "scrapy_capsolver_ocr", "serve", "--port", "0"], env=env) as url:
        yield url


def test_solve_and_balance_with_the_local_ocr_server(local_ocr_url: str, tmp_path: Path) -> None:
    image_file = tmp_path / "clean.png"
    image_file.write_bytes(png("AB12"))
    solved = run_cli("solve", str(image_file), "--api-url", local_ocr_url, key=LOCAL_KEY)
    assert (solved.returncode, solved.stdout.upper()) == (0, "AB12\n")
    image_file.write_bytes(png("4821"))
    number = run_cli(
        "solve", str(image_file), "--module", "number", "--api-url", local_ocr_url, key=LOCAL_KEY
    )
    assert (number.returncode, number.stdout) == (0, "4821\n")
    balance = run_cli("balance", "--api-url", local_ocr_url, key=LOCAL_KEY)
    assert (balance.returncode, balance.stdout) == (0, "1000000.0000\n")
    refused = run_cli("balance", "--api-url", local_ocr_url, key="another-key")
    assert "ERROR_KEY_DENIED_ACCESS" in assert_one_line_error(refused, "balance")
