"""The ``scrapy-capsolver-ocr`` command, also run as ``python -m scrapy_capsolver_ocr``.

``serve`` runs the local CapSolver-compatible OCR server (:mod:`scrapy_capsolver_ocr.server.app`);
``solve`` and ``balance`` make one API call each (:mod:`scrapy_capsolver_ocr.cli.api_commands`);
``providers`` shows each configured service, its breaker and its balance
(:mod:`scrapy_capsolver_ocr.cli.provider_commands`); ``calibrate`` measures the local engine
on labelled captchas
(:mod:`scrapy_capsolver_ocr.engines.local.calibration`); ``fleet status`` and
``fleet reset-budget`` read and reset what a fleet of crawl processes shares in Redis
(:mod:`scrapy_capsolver_ocr.cli.fleet_commands`); ``learn train`` and ``learn eval`` train and
measure a site's learnt reader (:mod:`scrapy_capsolver_ocr.cli.learn_commands`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, TypeVar, cast

from ..api.registry import PROVIDER_KINDS
from ..checks import (
    check_charset,
    check_confidence,
    check_length,
    check_score,
    check_sentinel,
    check_text,
)
from ..engines.local import OcrUnavailableError, require_ddddocr
from ..server import app as ocr_server
from ..server import http as ocr_server_http
from ..settings import DEFAULT_API_URL, SolverSettings
from ..state.fleet import EXTRA_HINT
from . import api_commands, learn_commands
from .arguments import positive_int

#: Read by ``serve`` when ``--require-key`` is not given: a key on the command line would show
#: in the process list.
REQUIRE_KEY_ENV = "CAPSOLVER_OCR_REQUIRE_KEY"
#: The Redis of ``fleet``, as the crawls' setting of the same name.
REDIS_URL_ENV = "CAPSOLVER_REDIS_URL"
REDIS_SENTINELS_ENV = "CAPSOLVER_REDIS_SENTINELS"
REDIS_CLUSTER_ENV = "CAPSOLVER_REDIS_CLUSTER"
#: The API key of ``solve`` and ``balance``, and (optionally) their API URL.
API_KEY_ENV = "CAPSOLVER_API_KEY"
API_URL_ENV = "CAPSOLVER_API_URL"

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = build_parser().parse_args(argv)
    status: int = args.run(args)
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scrapy-capsolver-ocr",
        description="Tools for scrapy-capsolver-ocr, the Scrapy captcha solver.",
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_serve(commands)
    _add_solve(commands)
    _add_balance(commands)
    _add_providers(commands)
    _add_fleet(commands)
    _add_calibrate(commands)
    learn_commands.add_learn(commands)
    return parser


def _add_providers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    providers = commands.add_parser(
        "providers",
        help="show each solving service, its circuit breaker and its balance",
        description=(
            "Show each service of CAPSOLVER_PROVIDERS in order of preference (the Scrapy "
            "project's settings when run inside a project, else CapSolver alone from "
            f"${API_KEY_ENV} and ${API_URL_ENV}): its URL, its key masked, its circuit "
            "breaker in the fleet's Redis (healthy, cooling down, probing) and its balance."
        ),
    )
    providers.add_argument(
        "--redis-url",
        default=os.environ.get(REDIS_URL_ENV),
        help=f"the fleet's Redis (default: ${REDIS_URL_ENV}, else the project's setting)",
    )
    providers.add_argument(
        "--fleet", help="the fleet's name (default: CAPSOLVER_FLEET, else every fleet)"
    )
    providers.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        help="seconds per balance call (default: %(default)g)",
    )
    providers.add_argument("--json", action="store_true", help="print JSON")
    providers.set_defaults(run=_providers)


def _providers(args: argparse.Namespace) -> int:
    from . import provider_commands

    _configure_logging("CRITICAL")
    try:
        config, source = provider_commands.configured()
    except api_commands.CommandError as exc:
        return _fail("providers", exc)
    breakers: dict[str, list[provider_commands.Breaker]] = {}
    redis_url = args.redis_url or config.redis_url
    if not redis_url:
        note: str | None = f"in each crawl's memory (no {REDIS_URL_ENV}: not shared)"
    else:
        try:
            from . import fleet_commands
        except ImportError as exc:  # redis-py, the one library fleet mode needs
            note = f"unreadable: {exc}: {EXTRA_HINT}"
        else:
            note = _read_breakers(fleet_commands, redis_url, args, config, breakers)
    services = provider_commands.statuses(config, args.timeout)
    for service in services:
        service.breakers = breakers.get(service.name, [])
    if args.json:
        print(provider_commands.as_json(services, source, note), flush=True)
    else:
        print(provider_commands.text(services, source, note or ""), flush=True)
    return 0


def _add_fleet(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fleet = commands.add_parser(
        "fleet",
        help="show or reset what a fleet of crawl processes shares in Redis",
        description="Fleet mode (CAPSOLVER_REDIS_URL): read or reset a fleet's shared state.",
    )
    actions = fleet.add_subparsers(title="actions", required=True, metavar="ACTION")
    status = actions.add_parser(
        "status",
        help="budget used, limit and reset time, calls in flight, pause, cached answers",
    )
    status.add_argument("--fleet", help="the fleet's name (default: every fleet)")
    status.set_defaults(run=_fleet_status)
    reset = actions.add_parser(
        "reset-budget", help="start the count of CAPSOLVER_MAX_TASKS again for a fleet"
    )
    reset.add_argument("--fleet", required=True, help="the fleet's name")
    reset.set_defaults(run=_fleet_reset_budget)
    for parser in (status, reset):
        parser.add_argument(
            "--redis-url",
            default=os.environ.get(REDIS_URL_ENV),
            required=not os.environ.get(REDIS_URL_ENV),
            help=f"redis://, rediss:// or unix:// URL (default: ${REDIS_URL_ENV})",
        )
        parser.add_argument(
            "--redis-sentinel",
            action="append",
            metavar="HOST:PORT",
            default=None,
            help="a sentinel watching the master the URL's host names; repeat for each "
            f"(default: ${REDIS_SENTINELS_ENV}, comma-separated)",
        )
        parser.add_argument(
            "--redis-cluster",
            action="store_true",
            default=os.environ.get(REDIS_CLUSTER_ENV, "").lower() in ("1", "true", "yes"),
            help=f"the URL names a node of a Redis Cluster (default: ${REDIS_CLUSTER_ENV})",
        )


def _read_breakers(
    fleet_commands: Any,
    redis_url: str,
    args: argparse.Namespace,
    config: SolverSettings,
    into: dict[str, Any],
) -> str | None:
    """Read the breakers of ``config``'s services into ``into``; a note when there are none
    to show, or why they cannot be read."""
    from . import provider_commands

    names = [entry.name for entry in config.providers]
    fleet = args.fleet or config.fleet
    # The project's Sentinel or Cluster settings go with the project's URL only.
    own = not args.redis_url
    try:
        into.update(
            fleet_commands.run(
                redis_url,
                lambda redis: provider_commands.read_breakers(redis, fleet, names),
                sentinels=config.redis_sentinels if own else (),
                cluster=config.redis_cluster and own,
            )
        )
    except fleet_commands.FleetCommandError as exc:
        return f"unreadable: {exc}"
    return None if any(into.values()) else "healthy (no fleet has used this Redis yet)"


def _fleet_status(args: argparse.Namespace) -> int:
    return _fleet_command("status", args)


def _fleet_reset_budget(args: argparse.Namespace) -> int:
    return _fleet_command("reset_budget", args)


def _fleet_command(action: str, args: argparse.Namespace) -> int:
    name = f"fleet {action.replace('_', '-')}"
    try:
        from . import fleet_commands
    except ImportError as exc:  # redis-py, the one library fleet mode needs
        return _fail(name, ImportError(f"{exc}: {EXTRA_HINT}"))
    command = getattr(fleet_commands, action)
    try:
        entries = args.redis_sentinel
        if entries is None:
            entries = [s for s in os.environ.get(REDIS_SENTINELS_ENV, "").split(",") if s.strip()]
        sentinels = tuple(check_sentinel("--redis-sentinel", s) for s in entries)
        output = fleet_commands.run(
            args.redis_url,
            lambda redis: command(redis, args.fleet),
            sentinels=sentinels,
            cluster=args.redis_cluster,
        )
    except (fleet_commands.FleetCommandError, ValueError) as exc:
        return _fail(name, exc)
    print(output, flush=True)
    return 0


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="run a local CapSolver-compatible server that reads image captchas offline",
        description=(
            "Serve CapSolver's createTask (ImageToTextTask), getTaskResult, getBalance and "
            "feedbackTask on this machine, reading images with ddddocr; Anti-Captcha's, "
            "CapMonster Cloud's and 2Captcha's dialects under /anticaptcha/, /capmonster/ "
            "and /2captcha/. The first line on stdout is the server's URL, printed once the "
            "port is bound."
        ),
    )
    serve.add_argument("--host", default=ocr_server.DEFAULT_HOST, help="default: %(default)s")
    serve.add_argument(
        "--protocol",
        choices=ocr_server.PROTOCOLS,
        default=ocr_server.CAPSOLVER,
        help=(
            "the dialect answered at the root (default: %(default)s); every dialect is "
            "also answered under its own prefix, such as /anticaptcha/createTask"
        ),
    )
    serve.add_argument(
        "--port",
        type=_port,
        default=ocr_server.DEFAULT_PORT,
        help="default: %(default)s, a free port",
    )
    serve.add_argument(
        "--workers",
        type=positive_int,
        default=ocr_server.DEFAULT_WORKERS,
        help="images read at the same time, in threads (default: %(default)s)",
    )
    serve.add_argument(
        "--require-key",
        metavar="KEY",
        default=os.environ.get(REQUIRE_KEY_ENV) or None,
        help=(
            "answer ERROR_KEY_DENIED_ACCESS to requests with another clientKey "
            f"(default: ${REQUIRE_KEY_ENV}; unset: any key is accepted)"
        ),
    )
    for option, metavar, kind, default, meaning in _SERVE_LIMITS:
        serve.add_argument(option, metavar=metavar, type=kind, default=default, help=meaning)
    serve.add_argument("--log-level", choices=_LOG_LEVELS, default="INFO")
    serve.set_defaults(run=_serve)


def _add_solve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    solve = commands.add_parser(
        "solve",
        help="solve one captcha image and print its text",
        description=(
            "Send IMAGE to CapSolver's createTask (ImageToTextTask), another service's "
            "(--provider), or any compatible server, and print the text. The key comes from "
            f"${API_KEY_ENV} (another provider's: its own variable)."
        ),
    )
    solve.add_argument(
        "image", metavar="IMAGE", help="a PNG, JPEG, GIF, BMP or WEBP file; - reads stdin"
    )
    solve.add_argument(
        "--module",
        type=_checked("--module", check_text),
        help="the service's module: CapSolver common, number, ...; CapMonster yandex, ...",
    )
    solve.add_argument(
        "--score",
        type=_checked("--score", check_score),
        help="0.8 .. 1.0 (CapSolver; CapMonster: its recognizingThreshold in percent)",
    )
    solve.add_argument(
        "--retries",
        type=_non_negative_int,
        default=1,
        help="retries when the API is busy or unreachable (default: %(default)s)",
    )
    _add_api_options(solve)
    solve.set_defaults(run=_solve)


def _add_balance(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    balance = commands.add_parser(
        "balance",
        help="print the account balance in USD",
        description=(
            f"Print the balance from getBalance. The key comes from ${API_KEY_ENV} (another "
            "provider's: its own variable)."
        ),
    )
    _add_api_options(balance)
    balance.set_defaults(run=_balance)


def _add_calibrate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    calibrate = commands.add_parser(
        "calibrate",
        help="measure the local OCR engine on labelled captchas and choose its threshold",
        description=(
            "Read every image of DIR with the local OCR engine (the ocr extra), its answer "
            "being in its file name (ANSWER.png or NUMBER_ANSWER.png), and print, per "
            "confidence threshold, the share answered locally and how many of those were "
            "right (ignoring case), then the lowest threshold reaching --precision: the "
            "value for CAPSOLVER_LOCAL_MIN_CONFIDENCE. 100 to 200 captchas saved from the "
            "site, with their answers, are enough."
        ),
    )
    calibrate.add_argument("directory", metavar="DIR", help="a folder of labelled images")
    calibrate.add_argument(
        "--precision",
        type=_checked("--precision", check_confidence),
        default=0.95,
        help="share of local answers that must be right (default: %(default)s)",
    )
    calibrate.add_argument(
        "--length",
        type=_checked("--length", check_length),
        help="the answers' length (default: the labels' lengths)",
    )
    calibrate.add_argument(
        "--charset",
        type=_checked("--charset", check_charset),
        help="the characters answers may contain (default: the labels' characters)",
    )
    calibrate.add_argument(
        "--workers",
        type=positive_int,
        default=2,
        help="images read at the same time, in threads (default: %(default)s)",
    )
    calibrate.set_defaults(run=_calibrate)


def _add_api_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--provider",
        choices=list(PROVIDER_KINDS),
        default="capsolver",
        help=(
            "the solving service (default: %(default)s); its key comes from its own "
            "variable: "
            + ", ".join(f"{name} ${kind.key_variable}" for name, kind in PROVIDER_KINDS.items())
        ),
    )
    parser.add_argument(
        "--api-url",
        help=(
            "the service's base URL, or a compatible server such as `scrapy-capsolver-ocr "
            f"serve` (default: CapSolver ${API_URL_ENV}, else {DEFAULT_API_URL}; another "
            "provider's own URL)"
        ),
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=30.0, help="seconds per call (default: %(default)g)"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log each call and retry on stderr"
    )


def _solve(args: argparse.Namespace) -> int:
    try:
        api_commands.check_honoured(args.provider, args.module, args.score)
        config = _api_config(args)
        if args.image == "-":
            image, source = _read_image(sys.stdin.buffer, "stdin", config.max_image_size), "stdin"
        else:
            with open(args.image, "rb") as file:
                image, source = _read_image(file, args.image, config.max_image_size), args.image
    except (OSError, api_commands.CommandError) as exc:
        return _fail("solve", exc)
    command = api_commands.solve_command(image, source, args.module, args.score)
    return api_commands.run("solve", config, command)


def _read_image(stream: BinaryIO, source: str, max_size: int) -> bytes:
    # One byte over the limit tells a file that is too large from one that just fits,
    # without reading all of it: /dev/zero or an endless pipe would never end.
    image = stream.read(max_size + 1)
    if len(image) > max_size:
        raise api_commands.CommandError(
            f"{source}: over {max_size} bytes (CAPSOLVER_MAX_IMAGE_SIZE): not a captcha image"
        )
    return image


def _balance(args: argparse.Namespace) -> int:
    try:
        config = _api_config(args)
    except api_commands.CommandError as exc:
        return _fail("balance", exc)
    return api_commands.run("balance", config, api_commands.balance_command)


def _api_config(args: argparse.Namespace) -> SolverSettings:
    # Without --verbose the solver's own log lines would repeat the one-line error.
    _configure_logging("DEBUG" if args.verbose else "CRITICAL")
    retries: int = getattr(args, "retries", 0)
    return api_commands.solver_settings(api_url(args), args.timeout, retries, args.provider)


def api_url(args: argparse.Namespace) -> str:
    """The base URL ``solve`` and ``balance`` call: ``--api-url``, else CapSolver's
    ``$CAPSOLVER_API_URL`` or its URL, else another provider's own URL."""
    if args.api_url:
        return str(args.api_url)
    if args.provider == "capsolver":
        return os.environ.get(API_URL_ENV) or DEFAULT_API_URL
    return PROVIDER_KINDS[args.provider].default_url


def _fail(command: str, exc: Exception) -> int:
    message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if isinstance(exc, OSError) and exc.filename:
        message = f"{exc.filename}: {message}"
    return api_commands.report_failure(command, message)


def _serve(args: argparse.Namespace) -> int:
    try:
        engine = ocr_server.DdddOcrEngine(args.max_pixels)
    except ocr_server.OcrUnavailableError as exc:
        return _fail("serve", exc)
    _configure_logging(args.log_level)
    from twisted.internet.error import CannotListenError

    try:
        ocr_server.serve(engine, **serve_options(args))
    except CannotListenError as exc:
        return _fail("serve", exc)
    return 0


def serve_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`~scrapy_capsolver_ocr.server.app.start_server` that
    the options of ``serve`` ask for."""
    return {
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "require_key": args.require_key,
        "max_pixels": args.max_pixels,
        "protocol": args.protocol,
        "limits": ocr_server.ServerLimits(
            max_body=args.max_body,
            idle_timeout=args.idle_timeout,
            request_timeout=args.request_timeout,
            max_connections=args.max_connections,
        ),
    }


def _calibrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        require_ddddocr("calibrate")
    except OcrUnavailableError as exc:
        return _fail("calibrate", exc)
    from ..engines.local.calibration import CalibrationError, calibrate

    try:
        lines, _ = calibrate(
            Path(args.directory), args.precision, args.length, args.charset, args.workers
        )
    except (CalibrationError, OSError) as exc:
        return _fail("calibrate", exc)
    print("\n".join(lines), flush=True)
    return 0


def _configure_logging(level: str) -> None:
    from twisted.logger import ILogObserver, STDLibLogObserver, globalLogBeginner

    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s [%(name)s] %(levelname)s: %(message)s"
    )
    # Twisted's own messages then go to stderr like ours; stdout stays for the URL line.
    observer = cast(ILogObserver, STDLibLogObserver())  # a zope interface, opaque to mypy
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def _checked(option: str, check: Callable[[str, Any], T]) -> Callable[[str], T]:
    """An argparse ``type`` from one of the settings' checks, so an option and its setting
    accept the same values and say so in the same words."""

    def convert(text: str) -> T:
        try:
            return check(option, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 (a free port) to 65535, got {value}")
    return value


#: The options of ``serve`` that bound what clients may ask: option, metavar, type, default,
#: meaning.
_SERVE_LIMITS: list[tuple[str, str | None, Callable[[str], Any], Any, str]] = [
    (
        "--max-pixels",
        None,
        positive_int,
        ocr_server.DEFAULT_MAX_PIXELS,
        "images whose header declares more pixels are refused before decoding "
        "(default: %(default)s, as CAPSOLVER_MAX_IMAGE_PIXELS)",
    ),
    (
        "--max-body",
        "BYTES",
        positive_int,
        ocr_server_http.DEFAULT_MAX_BODY,
        "larger request bodies are refused unread (default: %(default)s)",
    ),
    (
        "--request-timeout",
        "SECONDS",
        _seconds,
        ocr_server_http.DEFAULT_REQUEST_TIMEOUT,
        "time a client has to send a whole request once it starts (default: %(default)g)",
    ),
    (
        "--idle-timeout",
        "SECONDS",
        _seconds,
        ocr_server_http.DEFAULT_IDLE_TIMEOUT,
        "close connections silent this long between requests (default: %(default)g)",
    ),
    (
        "--max-connections",
        None,
        positive_int,
        None,
        "open connections at most; over it, the longest-idle one is closed "
        "(default: the open-file limit less 64)",
    ),
]
