"""``balance`` and ``solve`` with ``--provider``: each service's key from its own variable,
``--api-url`` over its default URL, against the bundled server's prefixes."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SERVERS, closed_port_url, run_command
from ocr_server_helpers import SERVE, clean_png, server_env
from scrapy.utils.defer import maybe_deferred_to_future
from servers.image_site import captcha_image
from servers.process import running_server
from test_state import on_reactor, redis_states, sleep
from twisted.internet.threads import deferToThread

from scrapy_capsolver_ocr.api.registry import PROVIDER_KINDS
from scrapy_capsolver_ocr.cli import commands as cli
from scrapy_capsolver_ocr.state.base import StateLimits

KEY = "PROVIDER-0123456789abcdef0123456789SECRET"
VARIABLES = [kind.key_variable for kind in PROVIDER_KINDS.values()]
DIALECTS = ("anticaptcha", "capmonster", "2captcha")


@pytest.fixture(scope="module")
def ocr_url() -> Iterator[str]:
    argv = [str(SERVERS / "embedded_ocr_server.py"), "--require-key", KEY]
    with running_server(argv, env=server_env()) as url:
        yield url


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "captcha.png"
    path.write_bytes(captcha_image("ab12"))
    return path


def run_cli(*args: str, **keys: str) -> subprocess.CompletedProcess[str]:
    """The command with only the keys given here (by variable name) in its environment."""
    env = {name: value for name, value in os.environ.items() if name not in VARIABLES}
    env.pop("CAPSOLVER_API_URL", None)
    result = run_command(*args, timeout=120, env={**env, **keys})
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def one_line_error(result: subprocess.CompletedProcess[str], command: str) -> str:
    assert (result.returncode, result.stdout) == (1, ""), result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"scrapy-capsolver-ocr {command}: ")
    assert "SECRET" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_balance_and_solve_go_to_the_provider_named(
    ocr_url: str, image_file: Path, dialect: str
) -> None:
    variable = PROVIDER_KINDS[dialect].key_variable
    api = ["--provider", dialect, "--api-url", f"{ocr_url}/{dialect}"]
    balance = run_cli("balance", *api, **{variable: KEY})
    assert (balance.returncode, balance.stdout, balance.stderr) == (0, "1000000.0000\n", "")
    solved = run_cli("solve", str(image_file), *api, **{variable: KEY})
    assert (solved.returncode, solved.stdout, solved.stderr) == (0, "ab12\n", "")


def test_capsolver_stays_the_default(ocr_url: str, image_file: Path) -> None:
    solved = run_cli("solve", str(image_file), "--api-url", ocr_url, CAPSOLVER_API_KEY=KEY)
    assert (solved.returncode, solved.stdout) == (0, "ab12\n")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_another_services_key_is_never_sent(ocr_url: str, dialect: str) -> None:
    variable = PROVIDER_KINDS[dialect].key_variable
    url = f"{ocr_url}/{dialect}"
    # Only CapSolver's key is set: the command refuses rather than send it elsewhere.
    result = run_cli("balance", "--provider", dialect, "--api-url", url, CAPSOLVER_API_KEY=KEY)
    line = one_line_error(result, "balance")
    assert line.endswith(f"set the {variable} environment variable.")


@pytest.mark.parametrize(
    ("dialect", "variable"),
    [
        ("anticaptcha", "ANTICAPTCHA_API_KEY"),
        ("capmonster", "CAPMONSTER_API_KEY"),
        ("2captcha", "TWOCAPTCHA_API_KEY"),
    ],
)
def test_a_refused_key_is_a_one_line_error_naming_the_variable(
    ocr_url: str, image_file: Path, dialect: str, variable: str
) -> None:
    wrong = {variable: "WRONG-0123456789abcdef0123456789SECRET"}
    api = ["--provider", dialect, "--api-url", f"{ocr_url}/{dialect}"]
    for command in (["balance"], ["solve", str(image_file)]):
        line = one_line_error(run_cli(*command, *api, **wrong), command[0])
        assert "answered ERROR_KEY_DOES_NOT_EXIST" in line
        assert f"check {variable}" in line


def test_solve_refuses_an_option_the_provider_cannot_honour(image_file: Path) -> None:
    # Refused before any call: nothing listens at this URL.
    api = ["--api-url", closed_port_url()]
    line = one_line_error(
        run_cli("solve", str(image_file), "--provider", "2captcha", "--module", "number", *api),
        "solve",
    )
    assert line.endswith("2Captcha cannot honour --module; leave it out")
    line = one_line_error(
        run_cli("solve", str(image_file), "--provider", "anticaptcha", "--score", "0.9", *api),
        "solve",
    )
    assert line.endswith("Anti-Captcha cannot honour --score; leave it out")


def test_capmonster_takes_its_own_module_and_the_score(ocr_url: str, image_file: Path) -> None:
    api = ["--provider", "capmonster", "--api-url", f"{ocr_url}/capmonster"]
    args = ["solve", str(image_file), "--module", "universal", "--score", "0.8", *api]
    solved = run_cli(*args, CAPMONSTER_API_KEY=KEY)
    assert (solved.returncode, solved.stdout) == (0, "ab12\n")
    # The stand-in engine is 85 % sure: a threshold of 90 is refused, as CapMonster does.
    args = ["solve", str(image_file), "--score", "0.9", "--retries", "0", *api]
    line = one_line_error(run_cli(*args, CAPMONSTER_API_KEY=KEY), "solve")
    assert "CapMonster Cloud answered ERROR_CAPTCHA_UNSOLVABLE" in line


@pytest.mark.parametrize("name", list(PROVIDER_KINDS))
def test_each_provider_defaults_to_its_own_url(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Read from the parsed options only: no call goes anywhere.
    monkeypatch.setenv("CAPSOLVER_API_URL", "http://127.0.0.1:9/capsolver-only")
    args = cli.build_parser().parse_args(["balance", "--provider", name])
    expected = PROVIDER_KINDS[name].default_url
    if name == "capsolver":
        expected = "http://127.0.0.1:9/capsolver-only"
    assert cli.api_url(args) == expected
    given = cli.build_parser().parse_args(["balance", "--provider", name, "--api-url", "u"])
    assert cli.api_url(given) == "u"


def test_an_unknown_provider_is_a_usage_error() -> None:
    result = run_cli("balance", "--provider", "deathbycaptcha")
    assert result.returncode == 2
    assert "invalid choice: 'deathbycaptcha'" in result.stderr


@pytest.fixture(scope="module")
def serve_url() -> Iterator[str]:
    """`scrapy-capsolver-ocr serve` itself, reading with ddddocr."""
    pytest.importorskip("ddddocr", reason='the OCR extra: pip install ".[ocr]"')
    with running_server(SERVE, env=server_env(**{cli.REQUIRE_KEY_ENV: KEY})) as url:
        yield url


@pytest.mark.parametrize("dialect", DIALECTS)
def test_serve_reads_real_captchas_in_every_dialect(
    serve_url: str, tmp_path: Path, dialect: str
) -> None:
    image_file = tmp_path / "clean.png"
    image_file.write_bytes(clean_png("AB12"))
    api = ["--provider", dialect, "--api-url", f"{serve_url}/{dialect}"]
    variable = PROVIDER_KINDS[dialect].key_variable
    solved = run_cli("solve", str(image_file), *api, **{variable: KEY})
    # The model is sure of the letters, not of their case: sites compare ignoring case.
    assert (solved.returncode, solved.stdout.upper(), solved.stderr) == (0, "AB12\n", "")


# providers: each configured service, its breaker and its balance


WRONG = "WRONG-0123456789abcdef0123456789SECRET"


def project(tmp_path: Path, **settings: object) -> Path:
    """A Scrapy project in ``tmp_path`` whose settings module holds ``settings``."""
    (tmp_path / "scrapy.cfg").write_text("[settings]\ndefault = proj.settings\n")
    package = tmp_path / "proj"
    package.mkdir()
    (package / "__init__.py").write_text("")
    lines = [f"{name} = {value!r}" for name, value in settings.items()]
    (package / "settings.py").write_text("BOT_NAME = 'proj'\n" + "\n".join(lines) + "\n")
    return tmp_path


def two_services(ocr_url: str) -> list[dict[str, str]]:
    # CapSolver first, at the server's root; Anti-Captcha second, with a key it refuses.
    return [
        {"name": "capsolver", "api_key": KEY, "api_url": ocr_url},
        {"name": "anticaptcha", "api_key": WRONG, "api_url": f"{ocr_url}/anticaptcha"},
    ]


def run_providers(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {name: value for name, value in os.environ.items() if name not in VARIABLES}
    for name in ("CAPSOLVER_API_URL", "CAPSOLVER_REDIS_URL", "SCRAPY_SETTINGS_MODULE"):
        clean.pop(name, None)
    result = run_command("providers", *args, timeout=120, env={**clean, **env}, cwd=cwd)
    out = subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )
    assert "SECRET" not in out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    return out


def test_providers_lists_the_projects_services_in_order(ocr_url: str, tmp_path: Path) -> None:
    cwd = project(tmp_path, CAPSOLVER_PROVIDERS=two_services(ocr_url))
    result = run_providers(cwd)
    assert (result.returncode, result.stderr) == (0, ""), result
    lines = result.stdout.splitlines()
    assert lines[0] == "Solving services from the project's settings, in order of preference:"
    assert lines[1:6] == [
        "1. capsolver",
        f"   url:     {ocr_url}",
        "   key:     ApiKey('...CRET')",
        "   breaker: in each crawl's memory (no CAPSOLVER_REDIS_URL: not shared)",
        "   balance: 1000000.0000 USD",
    ]
    assert lines[6:9] == ["2. anticaptcha", f"   url:     {ocr_url}/anticaptcha", lines[8]]
    # The refused key is that service's line, named by its own variable; never the command's end.
    assert lines[10].startswith("   balance: unavailable: Anti-Captcha answered ERROR_KEY_DOES")
    assert "check ANTICAPTCHA_API_KEY" in lines[10]
    assert len(lines) == 11


@pytest.mark.asyncio_reactor  # the breaker is opened through this process's fleet state
@on_reactor
async def test_providers_json_reads_breakers_from_the_fleets_redis(
    ocr_url: str, tmp_path: Path, redis_url: str
) -> None:
    cwd = project(
        tmp_path, CAPSOLVER_PROVIDERS=two_services(ocr_url), CAPSOLVER_REDIS_URL=redis_url
    )
    async with redis_states(redis_url, StateLimits(), opened=1) as (state,):
        # CapSolver had an outage a moment ago; Anti-Captcha's cool-down is over.
        await state.route_failed("capsolver", 60.0)
        await state.route_failed("anticaptcha", 0.05)
        await sleep(0.2)
        fleet = state.keys.fleet
        # In a thread: the command takes seconds, and the reactor keeps the state's leases.
        result = await maybe_deferred_to_future(
            deferToThread(run_providers, cwd, "--json", "--fleet", fleet)
        )
        # Read only: the command took no probe.
        assert await state.route_leave("anticaptcha", 30.0) == "probe"
    assert (result.returncode, result.stderr) == (0, ""), result
    said = json.loads(result.stdout)
    assert (said["source"], said["breakers_note"]) == ("project", None)
    capsolver, anticaptcha = said["providers"]
    assert capsolver["name"] == "capsolver" and capsolver["key"] == "ApiKey('...CRET')"
    [breaker] = capsolver["breakers"]
    assert (breaker["fleet"], breaker["state"]) == (fleet, "cooling down")
    assert 0 < breaker["cooling_down_for"] <= 60
    assert (capsolver["balance"], capsolver["balance_error"]) == (1000000.0, None)
    assert anticaptcha["breakers"] == [{"fleet": fleet, "state": "probing", "cooling_down_for": 0}]
    assert anticaptcha["balance"] is None
    assert "ERROR_KEY_DOES_NOT_EXIST" in anticaptcha["balance_error"]


def test_providers_text_names_each_fleets_breaker(redis_url: str, tmp_path: Path) -> None:
    # Outside a project: CapSolver alone from the environment; nothing listens at its URL.
    url = closed_port_url()
    result = run_providers(
        tmp_path,
        "--redis-url",
        redis_url,
        "--fleet",
        "no-such-fleet",
        CAPSOLVER_API_KEY=KEY,
        CAPSOLVER_API_URL=url,
    )
    assert (result.returncode, result.stderr) == (0, ""), result
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Solving services from CAPSOLVER_API_KEY and CAPSOLVER_API_URL")
    assert lines[1:4] == ["1. capsolver", f"   url:     {url}", "   key:     ApiKey('...CRET')"]
    assert lines[4].startswith("   breaker: unreadable: No fleet named 'no-such-fleet'")
    assert lines[5].startswith("   balance: unavailable: CapSolver getBalance failed:")
    assert "Connection refused" in lines[5]


def test_providers_says_why_a_redis_cannot_be_read(tmp_path: Path) -> None:
    closed = closed_port_url().replace("http://", "redis://")
    result = run_providers(tmp_path, "--json", CAPSOLVER_REDIS_URL=closed)
    assert result.returncode == 0, result
    said = json.loads(result.stdout)
    assert said["source"] == "environment"
    assert said["breakers_note"].startswith(f"unreadable: Redis at {closed}")
    [capsolver] = said["providers"]
    assert (capsolver["key"], capsolver["breakers"], capsolver["balance"]) == ("none", None, None)
    assert capsolver["balance_error"].startswith("No CapSolver API key: set the CAPSOLVER_API_KEY")


def test_providers_refuses_a_projects_bad_setting_in_one_line(tmp_path: Path) -> None:
    cwd = project(tmp_path, CAPSOLVER_PROVIDERS=[{"name": "deathbycaptcha", "api_key": WRONG}])
    result = run_providers(cwd)
    line = one_line_error(result, "providers")
    assert "CAPSOLVER_PROVIDERS entry 1: unknown provider name 'deathbycaptcha'" in line


def test_providers_says_when_the_plugin_is_off_in_the_project(tmp_path: Path) -> None:
    line = one_line_error(run_providers(project(tmp_path, CAPSOLVER_ENABLED=False)), "providers")
    assert line.endswith("the plugin is off in this project: CAPSOLVER_ENABLED is False")


def test_providers_text_says_each_breaker_state() -> None:
    from scrapy_capsolver_ocr.cli.provider_commands import Breaker, ServiceStatus, text

    service = ServiceStatus("capsolver", "http://127.0.0.1:9", "ApiKey('...CRET')", 1.5)
    service.breakers = [
        Breaker.from_open_for("shop", 41.23),
        Breaker.from_open_for("news", 0.0),
        Breaker.from_open_for("jobs", None),
    ]
    lines = text([service], "project", "").splitlines()
    assert lines[4] == (
        "   breaker: cooling down for 41.2 s (fleet shop); probing (fleet news); "
        "healthy (fleet jobs)"
    )
    assert lines[5] == "   balance: 1.5000 USD"
