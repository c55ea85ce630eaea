#!/usr/bin/env bash
# The demo, from a fresh clone: captcha logins on a local demo site, solved by a local OCR
# server, with no account and no internet beyond installing packages.
#
#   bash scripts/demo.sh [--logins N] [--digits] [--browser] [--spider NAME] [--local-first]
#                        [--fleet N] [--failover] [-v]
#
# Sets up .venv (Python 3.10+; reused when present), then runs example_project/run_demo.py,
# which starts the servers on free loopback ports, crawls, prints a summary and stops the
# servers. With CAPSOLVER_API_KEY set, captchas go to CapSolver's cloud instead. With
# --local-first each captcha is read on this machine first, and only the ones the engine is
# not sure of go to the API. With --failover two local servers stand in for two services and
# the preferred one is killed partway through the crawl, then started again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
extras=demo
modules="captcha, ddddocr, form2request, hiredis, redis, scrapy_redis, scrapy_capsolver_ocr"
for arg in "$@"; do
    case "$arg" in
        --browser | browser_login | --spider=browser_login)
            # Chromium itself: CHROMIUM_PATH, Debian's, or `playwright install chromium`.
            extras=demo,playwright
            modules="$modules, scrapy_playwright"
            ;;
    esac
done

if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
        echo "The demo needs Python 3.10 or newer as $PYTHON (set PYTHON=... to use another)." >&2
        exit 1
    fi
    echo "Creating .venv..."
    "$PYTHON" -m venv .venv
fi
# Installed once: later runs start at once (delete .venv, or run pip yourself, to update it).
if ! .venv/bin/python - 2>/dev/null <<PY
import sys
from pathlib import Path

import $modules

# The plugin must be this checkout, installed in editable mode.
sys.exit(Path(scrapy_capsolver_ocr.__file__).resolve().parents[1] != Path.cwd().resolve())
PY
then
    echo "Installing the plugin and the demo's packages into .venv (about a minute)..."
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"
fi

# The demo runs in the background so that a kill of this script reaches it too (as SIGTERM);
# Ctrl-C reaches it from the terminal directly. Either way it stops the crawl, then its
# servers, before it exits.
.venv/bin/python example_project/run_demo.py "$@" &
demo=$!
trap 'kill -TERM "$demo" 2>/dev/null || true' TERM HUP
trap ':' INT
status=0
wait "$demo" || status=$?
# A trapped signal ends the first wait early: wait for the demo to finish stopping.
while kill -0 "$demo" 2>/dev/null; do
    wait "$demo" || status=$?
done
exit "$status"
