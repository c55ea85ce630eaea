"""CapSolver's API on the wire: one HTTP call over treq, the ``ImageToTextTask`` body and
answer, and what each error code means for a crawl."""
