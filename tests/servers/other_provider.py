"""A solving service that is not CapSolver, for the provider seam's tests: the envelope all
four documented services share (``clientKey``, ``errorId``, ``errorCode``, createTask and
getTaskResult), in a dialect of its own inside it.

Run ``python other_provider.py --key KEY``: binds 127.0.0.1 on a free port, prints its URL.

- ``POST /createTask`` ``{"clientKey", "task": {"type": "ImageText", "png64", ...}}``
  answers only ``{"errorId": 0, "taskId": <integer>}``: the text comes from polling.
- ``POST /getTaskResult`` ``{"clientKey", "taskId": <integer>}``: ``{"errorId": 0, "status":
  "queued"}`` on the first poll of each task, then ``{"errorId": 0, "status": "done",
  "solution": {"value": ...}}``. An image whose embedded answer is ``blurred`` ends with
  ``errorCode`` ``CANNOT_READ``; a task id as text is ``NO_SUCH_TASK``.
- ``POST /getFunds``: ``{"errorId": 0, "funds": "2.50"}`` (a number as text).
- ``POST /reportIncorrect`` ``{"clientKey", "taskId": <integer>}``: ``{"errorId": 0}``.
- Any other key: ``errorCode`` ``WHO_ARE_YOU``. ``GET /_calls``: every call's method and
  body, the key left out.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from png_text import embedded_answer

UNREADABLE = "blurred"


class Service:
    def __init__(self, key: str) -> None:
        self.key = key
        self.lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []
        self.tasks: dict[int, str] = {}
        self.polled: set[int] = set()

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        method = path.lstrip("/")
        with self.lock:
            self.calls.append(
                {"method": method, "body": {k: v for k, v in body.items() if k != "clientKey"}}
            )
            if body.get("clientKey") != self.key:
                return _error("WHO_ARE_YOU")
            if method == "getFunds":
                return {"errorId": 0, "funds": "2.50"}
            if method == "createTask":
                task = body.get("task")
                if not isinstance(task, dict) or task.get("type") != "ImageText":
                    return _error("BAD_TASK")
                task_id = 1000 + len(self.tasks)
                self.tasks[task_id] = embedded_answer(base64.b64decode(task["png64"])) or "?"
                return {"errorId": 0, "taskId": task_id}
            task_id = body.get("taskId")
            if not isinstance(task_id, int) or task_id not in self.tasks:
                return _error("NO_SUCH_TASK")
            if method == "reportIncorrect":
                return {"errorId": 0}
            if method != "getTaskResult":
                return _error("NO_SUCH_METHOD")
            if task_id not in self.polled:
                self.polled.add(task_id)
                return {"errorId": 0, "status": "queued"}
            text = self.tasks[task_id]
            if text == UNREADABLE:
                return _error("CANNOT_READ")
            return {"errorId": 0, "status": "done", "solution": {"value": text}}


def _error(code: str) -> dict[str, Any]:
    return {"errorId": 1, "errorCode": code}


def handler(service: Service) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # Keep-alive, as the real services: under HTTP/1.0 every answer closes the connection
        # and the client's pool would meet closed connections it cannot resend a task on.
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError:
                body = None
            if not isinstance(body, dict):
                self._send(400, _error("NOT_JSON"))
                return
            self._send(200, service.answer(self.path, body))

        def do_GET(self) -> None:
            if self.path != "/_calls":
                self._send(404, {})
                return
            with service.lock:
                self._send(200, list(service.calls))

        def _send(self, status: int, answer: Any) -> None:
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"other_provider: {format % args}\n")

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key", required=True, help="the only clientKey accepted")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(Service(args.key)))
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
