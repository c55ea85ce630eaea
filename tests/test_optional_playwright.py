"""scrapy-playwright is an optional extra: without it the plugin imports and solves."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import API_KEY, CapSolverMock

from scrapy_capsolver_ocr import CaptchaOptionsError

# Runs in a fresh interpreter where importing playwright or scrapy-playwright fails, as if
# they were not installed: a None entry in sys.modules makes every import of it raise.
WITHOUT_PLAYWRIGHT = """
import json, sys
for name in ("playwright", "scrapy_playwright"):
    sys.modules[name] = None

import scrapy
from scrapy.crawler import CrawlerProcess
from scrapy_capsolver_ocr import CaptchaOptionsError, solve_page_captcha

api_url, image_url, key = sys.argv[1:]
outcome = {}

class Spider(scrapy.Spider):
    name = "no_browser"

    async def start(self):
        yield scrapy.Request(image_url, meta={"solve_image": True}, callback=self.solved)
        yield scrapy.Request(
            image_url + "?browser",
            meta={"playwright": True, "solve_image": {"selector": "img"}},
            errback=self.refused,
        )

    def solved(self, response):
        outcome["text"] = response.meta["captcha_text"]

    def refused(self, failure):
        outcome["refused"] = [type(failure.value).__name__, str(failure.value)]

process = CrawlerProcess({
    "ADDONS": {"scrapy_capsolver_ocr.Addon": 500},
    "CAPSOLVER_API_URL": api_url,
    "CAPSOLVER_API_KEY": key,
    "LOG_LEVEL": "WARNING",
    "TELNETCONSOLE_ENABLED": False,
})
process.crawl(Spider)
process.start()
outcome["playwright_loaded"] = sorted(
    name for name, module in sys.modules.items()
    if module is not None and name.split(".")[0] in ("playwright", "scrapy_playwright")
)
print(json.dumps(outcome))
"""


def test_plugin_imports_and_solves_without_playwright(
    capsolver: CapSolverMock, image_site: str
) -> None:
    image_url = f"{image_site}/captcha/nobr.png"
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_PLAYWRIGHT, capsolver.url, image_url, API_KEY],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    outcome = json.loads(run.stdout.splitlines()[-1])

    assert outcome["text"] == "nobr"
    name, message = outcome["refused"]
    assert name == CaptchaOptionsError.__name__
    assert 'pip install "scrapy-capsolver-ocr[playwright]"' in message
    assert outcome["playwright_loaded"] == []


def test_importing_the_plugin_does_not_import_playwright() -> None:
    script = (
        "import sys, scrapy_capsolver_ocr\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in "
        "('playwright', 'scrapy_playwright')))"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
