"""An example Scrapy project that logs in through image captchas with scrapy-capsolver-ocr."""
