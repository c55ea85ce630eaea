"""``learn status``: what a crawl has learnt so far, per site: labels stored, the model
version read with, its held-out accuracy, its threshold and the share of the site's
captchas it answers at that threshold (coverage).

It reads the learn directory a crawl writes (``CAPSOLVER_LEARN_DIR``, else the project's
``.scrapy/capsolver-learn``), or a fleet's Redis with ``--redis-url``. It runs outside any
crawl: the files are read directly, and Redis through redis-py on an asyncio loop of its own.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scrapy.utils.project import data_path

from ..engines.learnt.labels import LabelFiles, LearnKeys, SiteLabels
from ..engines.learnt.shelf import ModelFiles

#: The learn directory of a crawl, as the setting of the same name.
LEARN_DIR_ENV = "CAPSOLVER_LEARN_DIR"
REDIS_URL_ENV = "CAPSOLVER_REDIS_URL"


class LearnStatusError(Exception):
    """A failure to report in one line."""


@dataclass(frozen=True)
class SiteStatus:
    """One site's line of ``learn status``."""

    site: str
    labels: int = 0
    bytes: int = 0
    version: int | None = None
    heldout_accuracy: float | None = None
    threshold: float | None = None
    coverage: float | None = None
    #: Why the model's figures are missing (a file that would not load).
    problem: str | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``learn status``, for whoever registers the command."""
    parser.add_argument(
        "--learn-dir",
        default=os.environ.get(LEARN_DIR_ENV),
        help=f"the crawl's learn directory (default: ${LEARN_DIR_ENV}, else the project's "
        ".scrapy/capsolver-learn)",
    )
    parser.add_argument(
        "--redis-url",
        default=None,
        help="read a fleet's labels and models in this Redis instead (redis://, rediss:// "
        "or unix://)",
    )
    parser.add_argument("--fleet", help="the fleet's name (default: every fleet that learns)")
    parser.add_argument(
        "--redis-cluster", action="store_true", help="the URL names a node of a Redis Cluster"
    )
    parser.set_defaults(run=learn_status)


def learn_status(args: argparse.Namespace) -> int:
    """Print each site's labels and model; 1 with a one-line message when it cannot."""
    try:
        if args.redis_url:
            lines = _fleet_lines(args.redis_url, args.fleet, args.redis_cluster)
        else:
            lines = _disk_lines(learn_directory(args.learn_dir))
    except (LearnStatusError, ValueError, OSError) as exc:
        print(f"learn status: {exc}", file=sys.stderr, flush=True)
        return 1
    print("\n".join(lines), flush=True)
    return 0


def learn_directory(given: str | None) -> Path:
    return Path(given) if given else Path(data_path("capsolver-learn"))


def _disk_lines(directory: Path) -> list[str]:
    if not directory.is_dir():
        raise LearnStatusError(f"no learn directory at {directory} (nothing learnt yet?)")
    labels = LabelFiles(directory / "labels", max_bytes=sys.maxsize).sites()
    models = ModelFiles(directory / "models")
    statuses = site_statuses(labels, models.published(), models.fetch)
    return describe(statuses, f"Learn directory {directory}")


def site_statuses(
    labels: list[SiteLabels],
    versions: dict[str, int],
    model_file: Callable[[str, int], Path | None],
) -> list[SiteStatus]:
    """Every site with labels or a model, its model's figures read from its file."""
    by_site = {entry.site: entry for entry in labels}
    statuses = []
    for site in sorted(set(by_site) | set(versions)):
        stored = by_site.get(site)
        status = SiteStatus(site, stored.labels if stored else 0, stored.bytes if stored else 0)
        version = versions.get(site)
        if version is not None:
            status = _with_model(status, version, model_file(site, version))
        statuses.append(status)
    return statuses


def _with_model(status: SiteStatus, version: int, path: Path | None) -> SiteStatus:
    from dataclasses import replace

    if path is None:
        return replace(status, version=version, problem="its file is gone")
    try:
        from ..engines.learnt.model import LearntModel

        model = LearntModel.load(path)
    except ImportError as exc:
        return replace(status, version=version, problem=f"cannot be read here: {exc}")
    except (ValueError, OSError) as exc:
        return replace(status, version=version, problem=str(exc))
    return replace(
        status,
        version=version,
        heldout_accuracy=model.heldout_accuracy,
        threshold=model.threshold,
        coverage=model.coverage,
    )


def describe(statuses: list[SiteStatus], where: str) -> list[str]:
    """The lines printed for ``statuses``, under a heading naming ``where``."""
    if not statuses:
        return [f"{where}: no labels and no model yet."]
    lines = [where]
    for status in statuses:
        lines.append(f"  {status.site or '(no site)'}")
        lines.append(f"    labels stored:     {status.labels} ({status.bytes / 1e6:.1f} MB)")
        if status.version is None:
            lines.append("    model:             none yet")
            continue
        if status.problem is not None:
            lines.append(f"    model:             v{status.version}, refused: {status.problem}")
            continue
        lines.append(f"    model:             v{status.version}")
        lines.append(f"    held-out accuracy: {_percent(status.heldout_accuracy)}")
        if status.threshold is None:
            lines.append("    threshold:         none (it answers nothing locally)")
        else:
            lines.append(f"    threshold:         {status.threshold:.3f}")
            lines.append(f"    coverage:          {_percent(status.coverage)} answered locally")
    return lines


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _fleet_lines(url: str, fleet: str | None, cluster: bool) -> list[str]:
    # redis-py only when a Redis is asked for: the disk needs no extra.
    from ..engines.learnt.labels import RedisLabelStore
    from . import fleet_commands

    async def read(redis: fleet_commands.FleetRedis) -> list[str]:
        names = [fleet] if fleet else await fleet_commands.fleet_names(redis, ":learn:sites")
        if not names:
            return [f"No fleet has learnt in this Redis ({redis.target.describe()}) yet."]
        lines: list[str] = []
        with tempfile.TemporaryDirectory(prefix="capsolver-learn-status-") as scratch:
            for name in names:
                keys = LearnKeys(f"{redis.prefix}fleet:{name}:")
                labels = await RedisLabelStore(redis.client, keys, sys.maxsize).sites()
                models = await _fleet_models(redis.client, keys)
                files = _write_models(Path(scratch), models)
                versions = {site: version for site, (version, _) in models.items()}
                statuses = site_statuses(labels, versions, _written(files))
                lines += describe(statuses, f"Fleet {name}")
        return lines

    try:
        return fleet_commands.run(url, read, cluster=cluster)
    except fleet_commands.FleetCommandError as exc:
        raise LearnStatusError(str(exc)) from None


async def _fleet_models(client: Any, keys: LearnKeys) -> dict[str, tuple[int, bytes]]:
    versions = await client.hgetall(keys.versions)
    sites = await client.hgetall(keys.sites)
    models = {}
    for key, version in versions.items():
        data = await client.hget(keys.models, key)
        if key in sites and data is not None:
            models[sites[key].decode()] = (int(version), data)
    return models


def _written(files: dict[str, Path]) -> Callable[[str, int], Path | None]:
    return lambda site, _version: files.get(site)


def _write_models(folder: Path, models: dict[str, tuple[int, bytes]]) -> dict[str, Path]:
    files = {}
    for number, (site, (version, data)) in enumerate(sorted(models.items())):
        path = folder / f"{number}-v{version}.onnx"
        path.write_bytes(data)
        files[site] = path
    return files
