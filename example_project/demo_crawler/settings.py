"""Settings of the example project: the plugin is enabled exactly as in any other project."""

from __future__ import annotations

import os

BOT_NAME = "demo_crawler"
SPIDER_MODULES = ["demo_crawler.spiders"]
NEWSPIDER_MODULE = "demo_crawler.spiders"

# scrapy-capsolver-ocr, in one line.
ADDONS = {"scrapy_capsolver_ocr.Addon": 500}
# The key comes from the CAPSOLVER_API_KEY environment variable. CapSolver's cloud is the
# default; CAPSOLVER_API_URL=http://127.0.0.1:PORT points the crawl at a local OCR server
# (`scrapy-capsolver-ocr serve`), which needs no account.
CAPSOLVER_API_URL = os.environ.get("CAPSOLVER_API_URL") or "https://api.capsolver.com"
# Attempts per login before giving up, in every spider. Offline OCR reads about 6 in 10 of
# the demo site's default captchas: 5 attempts let all but about 1 login in 100 through.
CAPSOLVER_MAX_ATTEMPTS = 5
# A ceiling on paid createTask calls per crawl, should a site reject every answer.
CAPSOLVER_MAX_TASKS = 500
CAPSOLVER_LOGSTATS_INTERVAL = 30

# The site to log in to, and the account. The spiders are written for the demo site's pages
# (example_project/demo_site); README.md says what to change for another site.
DEMO_SITE_URL = os.environ.get("DEMO_SITE_URL") or "http://127.0.0.1:8080"
DEMO_USERNAME = os.environ.get("DEMO_USERNAME") or "demo"
DEMO_PASSWORD = os.environ.get("DEMO_PASSWORD") or "demo"

ROBOTSTXT_OBEY = True
CONCURRENT_REQUESTS = 16
CONCURRENT_REQUESTS_PER_DOMAIN = 16
TELNETCONSOLE_ENABLED = False
# The spiders tell the story of each login at INFO; `-L DEBUG` shows every request too.
LOG_LEVEL = "INFO"
FEED_EXPORT_ENCODING = "utf-8"
