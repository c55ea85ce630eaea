"""Anti-Captcha's dialect (also CapMonster's and 2Captcha's) with scripted errors, for the
error paths a real crawl meets that the bundled OCR server never answers: no slot, a poller
asked to wait, a ban.

Run ``python scripted_dialect.py --key KEY [--create-errors CODES] [--poll-errors CODES]``:
binds 127.0.0.1 on a free port, prints its URL.

- ``POST /createTask``: answers the next code of ``--create-errors`` (comma-separated) as an
  error while any is left, then ``{"errorId": 0, "taskId": <integer beyond 2**32>}``.
- ``POST /getTaskResult``: the next code of ``--poll-errors`` while any is left, then the
  task ready with the answer embedded in its PNG.
- ``POST /getBalance``: ``{"errorId": 0, "balance": 5}``.
- ``GET /_calls``: every call's method, in order.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from png_text import embedded_answer

FIRST_ID = 74_372_499_131


class Service:
    def __init__(self, key: str, create_errors: list[str], poll_errors: list[str]) -> None:
        self.key = key
        self.lock = threading.Lock()
        self.calls: list[str] = []
        self.create_errors = deque(create_errors)
        self.poll_errors = deque(poll_errors)
        self.tasks: dict[int, str] = {}

    def answer(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.calls.append(method)
            if body.get("clientKey") != self.key:
                return _error("ERROR_KEY_DOES_NOT_EXIST")
            if method == "getBalance":
                return {"errorId": 0, "balance": 5}
            if method == "createTask":
                if self.create_errors:
                    return _error(self.create_errors.popleft())
                task_id = FIRST_ID + len(self.tasks)
                image = base64.b64decode(body["task"]["body"])
                self.tasks[task_id] = embedded_answer(image) or "?"
                return {"errorId": 0, "taskId": task_id}
            if method != "getTaskResult":
                return _error("ERROR_NO_SUCH_METHOD")
            task_id = body.get("taskId")
            if task_id not in self.tasks:
                return _error("ERROR_NO_SUCH_CAPCHA_ID")
            if self.poll_errors:
                return _error(self.poll_errors.popleft())
            return {"errorId": 0, "status": "ready", "solution": {"text": self.tasks[task_id]}}


def _error(code: str) -> dict[str, Any]:
    return {"errorId": 1, "errorCode": code, "errorDescription": "scripted"}


def handler(service: Service) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real services

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length))
            self._send(service.answer(self.path.strip("/"), body))

        def do_GET(self) -> None:
            with service.lock:
                self._send(list(service.calls))

        def _send(self, answer: Any) -> None:
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"scripted_dialect: {format % args}\n")

    return Handler


def _codes(text: str) -> list[str]:
    return [code for code in text.split(",") if code]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key", required=True)
    parser.add_argument("--create-errors", type=_codes, default=[])
    parser.add_argument("--poll-errors", type=_codes, default=[])
    args = parser.parse_args()
    service = Service(args.key, args.create_errors, args.poll_errors)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(service))
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
