"""One spider per way of solving a captcha with scrapy-capsolver-ocr; ``logins`` has what they
share (sessions, scraping the protected items, the record of every login)."""
