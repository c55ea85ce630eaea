"""One crawl process of a fleet with the ``backup`` service registered (failover_kinds.py):
``python failover_crawl.py JOB.json``, as fleet_crawl.py."""

from __future__ import annotations

import sys

import failover_kinds
from fleet_crawl import main

if __name__ == "__main__":
    failover_kinds.register()
    main(sys.argv[1])
