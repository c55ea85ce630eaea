"""The bundled CapSolver-compatible OCR server (``scrapy-capsolver-ocr serve``): CapSolver's
protocol (:mod:`.protocol`), Anti-Captcha's, CapMonster Cloud's and 2Captcha's dialect
(:mod:`.polled`), the HTTP layer and limits (:mod:`.http`), and the running server around the
local engine (:mod:`.app`)."""
