"""The bundled CapSolver-compatible OCR server (``scrapy-capsolver-ocr serve``): the
protocol (:mod:`.protocol`), its HTTP layer and limits (:mod:`.http`), and the running
server around the local engine (:mod:`.app`)."""
