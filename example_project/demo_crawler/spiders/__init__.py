"""One spider per way of solving a captcha with scrapy-capsolver-ocr; ``logins`` has what they
share (sessions, scraping the protected items, the record of every login)."""

import importlib

# `scrapy list` imports every spider: name what is missing rather than show a traceback.
for _module in ("form2request", "scrapy_redis"):
    try:
        importlib.import_module(_module)
    except ImportError:
        raise ImportError(
            f"The example project's spiders need {_module}, from the plugin's demo extra: "
            "pip install -r example_project/requirements.txt (or bash scripts/demo.sh)"
        ) from None
