"""The Scrapy integration: the add-on, the downloader middleware and what it does with a
request (its meta parsed once, page and browser captchas, the answer injected into the
follow-up form, refused answers solved again, request slots lent to waiting solves, the
progress line)."""
