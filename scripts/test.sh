#!/usr/bin/env bash
# The whole test suite, from a fresh clone: sets up the environments it needs, then runs
# lint, types and the tests on the newest Scrapy (asyncio and epoll reactors) and on the
# oldest supported Scrapy (2.13), with a real Chromium for the scrapy-playwright tests.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
OLDEST_SCRAPY="scrapy==2.13.*"

setup_env() {  # setup_env DIR PIP_ARGS...: a virtualenv with the project and its test extras
    local dir=$1
    shift
    [ -x "$dir/bin/python" ] || "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@"
}

find_chromium() {  # prints a Chromium executable, installing one when there is none
    local candidate
    for candidate in "${CHROMIUM_PATH:-}" /usr/lib/chromium/chromium /usr/bin/chromium; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return
        fi
    done
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "Installing Debian's chromium for the browser tests..." >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
        echo /usr/lib/chromium/chromium
        return
    fi
    echo "Installing Playwright's own Chromium for the browser tests..." >&2
    .venv/bin/python -m playwright install chromium >&2
    .venv/bin/python -c "from playwright.sync_api import sync_playwright
with sync_playwright() as p: print(p.chromium.executable_path)"
}

find_redis() {  # find_redis NAME: prints redis-server (redis-sentinel, redis-cli) for the fleet
    # tests, installing Debian's redis-server and redis-sentinel when there is none
    local name=${1:-redis-server} candidate variable
    variable=$(echo "$name" | tr 'a-z-' 'A-Z_')
    for candidate in "${!variable:-}" "$(command -v "$name" || true)"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return
        fi
    done
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "Installing Debian's redis-server and redis-sentinel for the fleet tests..." >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-sentinel >&2
        command -v "$name"
        return
    fi
    # No server to start: REDIS_URL may name one; otherwise the fleet tests skip (CI=true: fail).
    echo ""
}

echo "== environments"
setup_env .venv -e ".[test,playwright,ocr,learn]"
setup_env .venv-scrapy213 "$OLDEST_SCRAPY" -e ".[test,playwright,ocr,learn]"
CHROMIUM_PATH=$(find_chromium)
export CHROMIUM_PATH
echo "Chromium: $CHROMIUM_PATH"
REDIS_SERVER=$(find_redis redis-server)
REDIS_SENTINEL=$(find_redis redis-sentinel)
REDIS_CLI=$(find_redis redis-cli)
export REDIS_SERVER REDIS_SENTINEL REDIS_CLI
echo "redis-server: ${REDIS_SERVER:-none (REDIS_URL=${REDIS_URL:-unset})}"
echo "redis-sentinel: ${REDIS_SENTINEL:-none}, redis-cli: ${REDIS_CLI:-none}"

echo "== lint and types"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy

echo "== tests: newest Scrapy, asyncio reactor"
.venv/bin/python -m pytest "$@"

# Deselected by name, so that nothing skips quietly: the browser tests and fleet mode in the
# test process (redis.asyncio) need the asyncio reactor; that fleet mode refuses another
# reactor with a clear message is tested in this pass.
echo "== tests: newest Scrapy, epoll reactor (browser and in-process fleet tests need asyncio)"
.venv/bin/python -m pytest --reactor=default -m "not playwright and not asyncio_reactor" "$@"

echo "== tests: Scrapy 2.13, asyncio reactor"
.venv-scrapy213/bin/python -m pytest "$@"
