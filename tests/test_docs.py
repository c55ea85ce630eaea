"""The reference pages under docs/ say what the code does: every setting with its real default
and type, every stat, meta key, ``solve_image`` option, error class and close reason, and
nothing the code no longer has. The README stays a short front door whose links all lead
somewhere."""

from __future__ import annotations

import ast
import inspect
import os
import re
from ast import literal_eval
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from scrapy.settings import BaseSettings

import scrapy_capsolver_ocr
from scrapy_capsolver_ocr import errors
from scrapy_capsolver_ocr.settings import SolverSettings
from scrapy_capsolver_ocr.solving.options import SolveOptions

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PACKAGE = ROOT / "scrapy_capsolver_ocr"
README_MAX_LINES = 300
#: Pages that other parts of the same change write (the layout, the Redis options): a link
#: to one of them may point nowhere until it lands; once it exists it is checked like any.
PAGES_WRITTEN_ELSEWHERE: set[Path] = set()


def table(page: Path, heading: str | None = None) -> list[list[str]]:
    """The rows (cells, stripped) of the first table of ``page``, or of the first one after
    the heading ``heading``; the header and its rule are left out."""
    lines = page.read_text().splitlines()
    if heading is not None:
        lines = lines[lines.index(heading) + 1 :]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def first_column_names(rows: list[list[str]]) -> list[str]:
    """The code spans of each row's first cell (a cell may name several)."""
    return [name for row in rows for name in code_spans(row[0])]


# Settings


class RecordingSettings(BaseSettings):
    """Settings that remember the default each ``CAPSOLVER_*`` setting was read with."""

    def __init__(self) -> None:
        super().__init__()
        self.defaults: dict[str, Any] = {}

    def get(self, name: Any, default: Any = None) -> Any:
        if isinstance(name, str) and name.startswith("CAPSOLVER_"):
            self.defaults.setdefault(name, default)
        return super().get(name, default)


def read_defaults() -> dict[str, Any]:
    settings = RecordingSettings()
    SolverSettings.from_settings(settings)
    return settings.defaults


def documented_default(cell: str) -> Any:
    """The value a default cell of docs/settings.md states, for this machine."""
    if cell.startswith("unset"):
        return None
    per_cores = re.fullmatch(r"`(.+?)` \(`(.+?)` on (\d+) cores or fewer\)", cell)
    if per_cores:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        many, few, limit = per_cores.groups()
        return literal_eval(few if (cores or 1) <= int(limit) else many)
    literal = re.fullmatch(r"`([^`]+)`", cell)
    assert literal, f"a default must be a `literal` or start with 'unset', not {cell!r}"
    return literal_eval(literal.group(1))


def code_type(name: str, default: Any) -> str:
    """The type docs/settings.md must state for ``name``: its field's in SolverSettings."""
    annotations = {field.name: str(field.type) for field in fields(SolverSettings)}
    annotation = annotations.get(name.removeprefix("CAPSOLVER_").lower())
    if annotation is None:  # read, not kept (CAPSOLVER_ENABLED)
        return type(default).__name__
    annotation = annotation.removesuffix(" | None")
    return {
        "ApiKey": "str",
        "tuple[re.Pattern[str], ...]": "list of str",
        # host:port strings, kept as (host, port) pairs once checked
        "tuple[tuple[str, int], ...]": "list of str",
        # CAPSOLVER_PROVIDERS: dicts, kept as ProviderEntry once checked
        "tuple[ProviderEntry, ...]": "list of dict",
    }.get(annotation, annotation)


def test_every_setting_is_documented_with_its_type_and_real_default() -> None:
    defaults = read_defaults()
    rows = {code_spans(row[0])[0]: row for row in table(DOCS / "settings.md")}
    assert sorted(rows) == sorted(defaults), (
        "docs/settings.md lists other settings than the code reads"
    )
    for name, (_, type_cell, default_cell, meaning) in rows.items():
        assert meaning, name
        assert documented_default(default_cell) == defaults[name], name
        assert type_cell == code_type(name, defaults[name]), name


def test_settings_table_is_read_from_the_page() -> None:
    # The checks above must not pass on an empty or misparsed table.
    rows = table(DOCS / "settings.md")
    assert len(rows) == len(read_defaults()) >= 37
    assert documented_default("`2` (`1` on 2 cores or fewer)") in (1, 2)
    with pytest.raises(AssertionError):
        documented_default("30 seconds")


# Stats


def stats_in_code() -> tuple[set[str], set[str]]:
    """The stat names the package writes or reads: whole names, and the fixed beginnings of
    names built with an f-string (``capsolver/failed/{name}``)."""
    names: set[str] = set()
    prefixes: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        inside_fstrings = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                first = node.values[0] if node.values else None
                if isinstance(first, ast.Constant) and str(first.value).startswith("capsolver/"):
                    prefixes.add(first.value)
                inside_fstrings.update(id(value) for value in node.values)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and id(node) not in inside_fstrings
                and isinstance(node.value, str)
                and re.fullmatch(r"capsolver/[a-z_]+(/[a-z_]+)*", node.value)
            ):
                names.add(node.value)
    return names, prefixes


def test_every_stat_is_documented() -> None:
    names, prefixes = stats_in_code()
    documented = first_column_names(table(DOCS / "stats.md"))
    documented_names = {name for name in documented if "<" not in name}
    documented_prefixes = {name.partition("<")[0] for name in documented if "<" in name}
    assert names == documented_names
    assert prefixes == documented_prefixes
    assert "capsolver/task_count" in names and "capsolver/failed/" in prefixes


# Errors and close reasons


def test_every_error_class_is_documented() -> None:
    public = {
        name
        for name in scrapy_capsolver_ocr.__all__
        if inspect.isclass(cls := getattr(scrapy_capsolver_ocr, name))
        and issubclass(cls, errors.CaptchaSolveError)
    }
    rows = table(DOCS / "errors.md", "## Error classes")
    documented = [code_spans(row[0])[0] for row in rows]
    assert sorted(documented) == sorted(public)
    for row in rows:
        # "(a CaptchaTransientError)": the parent named is the real one.
        parent = re.search(r"\(a `(\w+)`\)", row[0])
        if parent:
            cls = getattr(scrapy_capsolver_ocr, code_spans(row[0])[0])
            assert cls.__bases__[0].__name__ == parent.group(1), row[0]
    advice = first_column_names(table(DOCS / "errors.md", "## What an errback should do"))
    assert set(public) - {"CaptchaSolveError"} <= set(advice)


def test_every_close_reason_is_documented() -> None:
    reasons = {value for name, value in vars(errors).items() if name.startswith("CLOSE_")}
    documented = first_column_names(table(DOCS / "errors.md", "## Close reasons"))
    assert sorted(documented) == sorted(reasons)


# Meta keys and solve_image options

#: The plugin's own meta keys, and Scrapy's cookie session, which names a captcha's session.
OUR_META_KEY = re.compile(r"solve_image|captcha_[a-z_]+|cookiejar")


def meta_keys_in_code() -> set[str]:
    """Constant keys the package reads or writes on a request's meta (``meta[...]``,
    ``meta.get(...)``, ``meta.pop(...)``, ``... in meta``, ``replace(meta={...})``)."""

    def is_meta(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id == "meta") or (
            isinstance(node, ast.Attribute) and node.attr == "meta"
        )

    keys: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            key: ast.AST | None = None
            if isinstance(node, ast.Subscript) and is_meta(node.value):
                key = node.slice
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("get", "pop", "setdefault")
                and is_meta(node.func.value)
                and node.args
            ):
                key = node.args[0]
            elif isinstance(node, ast.Compare) and any(is_meta(c) for c in node.comparators):
                key = node.left
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                keys.add(key.value)
    return {key for key in keys if OUR_META_KEY.fullmatch(key)}


def test_every_meta_key_is_documented() -> None:
    keys = meta_keys_in_code()
    documented = first_column_names(table(DOCS / "requests.md", "## Meta keys"))
    assert sorted(documented) == sorted(keys)
    assert {"solve_image", "captcha_field", "captcha_retry_if", "captcha_text"} <= keys


def test_every_solve_image_option_is_documented() -> None:
    options = {field.name for field in fields(SolveOptions)}
    documented = first_column_names(table(DOCS / "requests.md", "## `solve_image` options"))
    assert sorted(documented) == sorted(options)


# The README and the links


def test_readme_is_a_short_front_door() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < README_MAX_LINES
    text = "\n".join(lines)
    # The two commands, exactly as .ci/run and the demo name them.
    assert "bash scripts/demo.sh" in text and "bash scripts/test.sh" in text
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md")), ROOT / "example_project" / "README.md"]


def without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of ``page``."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", without_code_blocks(page.read_text()), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(slug)
    return found


def links(page: Path) -> list[str]:
    text = without_code_blocks(page.read_text())
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", markdown_files(), ids=lambda page: page.name)
def test_relative_links_lead_to_existing_files_and_headings(page: Path) -> None:
    for link in links(page):
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if target in PAGES_WRITTEN_ELSEWHERE and not target.exists():
            assert not anchor, f"{page.name}: {link} points into a page not written yet"
            continue
        assert target.exists(), f"{page.name}: {link} points nowhere"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target), f"{page.name}: {link}: no such heading"


def test_readme_links_every_reference_page() -> None:
    linked = {
        (ROOT / link.partition("#")[0]).resolve()
        for link in links(ROOT / "README.md")
        if not re.match(r"[a-z]+:", link)
    }
    pages = set(DOCS.glob("*.md")) | PAGES_WRITTEN_ELSEWHERE | {ROOT / "CHANGELOG.md"}
    assert pages <= linked, sorted(str(page.relative_to(ROOT)) for page in pages - linked)


def test_link_checks_see_the_links() -> None:
    readme_links = links(ROOT / "README.md")
    assert "docs/settings.md" in readme_links
    assert "solve_image-options" in anchors(DOCS / "requests.md")
    assert "pause-and-resume-jobdir" in anchors(DOCS / "requests.md")
