"""``python -m scrapy_capsolver_ocr``: the same as the ``scrapy-capsolver-ocr`` command."""

from scrapy_capsolver_ocr.cli import main

raise SystemExit(main())
