"""A CapSolver-compatible API mock with fault injection, for tests and benchmarks.

Run ``python capsolver_mock.py [--key KEY]``: it binds 127.0.0.1 on a free port and prints
its URL as the first line of stdout.

It answers ``/createTask`` (``ImageToTextTask``), ``/getBalance`` and ``/feedbackTask``
like CapSolver. The answer to an image is the text of its PNG ``captcha-answer`` tEXt
chunk when there is one (the test sites embed it); else the text colour-coded in its pixels
when it has one (see color_code.py: the browser test site draws it, because a screenshot of
a captcha element keeps no tEXt chunk); else a text derived from its SHA-256.

Control endpoints, for the tests:
- ``POST /_config`` JSON ``{"latency": s, "balance": usd, "key": str, "faults": [rule...]}``
  where a rule is ``{"fault": kind, "method": "createTask" (or "*": any), "every": n, "count": n,
  "code": "ERROR_...", "status": n, "seconds": s}``: the fault applies to call number
  ``i`` of that method (1-based) when ``i % every == 0``, at most ``count`` times.
  createTask rules can also pick images: ``"answer_prefix": str`` (only images whose
  answer starts with it), ``"per_image": n`` (at most n times for one image); and
  ``"probability": p`` applies a rule to a random share of the calls it matches.
  The first rule that matches a call applies.
  Kinds: error, http, not_json, echo (an HTML error page, HTTP ``status`` default 502,
  quoting the request body as some gateways do), nested (a JSON body nested ``depth``
  levels deep), no_error_id, no_solution, empty_text, wrong_text, long_text (a 1 MB
  solution.text), huge_confidence (a 401-digit solution.confidence),
  pending (createTask answers ``status`` ``processing`` with a taskId and no solution; the
  task is ready after ``polls`` getTaskResult calls, default 1; ``"never": true`` keeps
  it pending), huge
  (a body of 30 MB, streamed), reset (connection closed before any answer), drop_mid
  (headers and the start of the body, then a reset), latency (``seconds`` more), refuse (an outage:
  the mock closes every API connection and stops listening for ``seconds``, default 0.05,
  so that new connections are refused, then listens on the same port again).
- ``GET /_calls``: every API call received, ``[{"method", "body", "at"}]``.
- ``GET /_stats``: ``{"max_in_flight": n, "applied": [n per rule], "outages": n}``: the most
  API calls answered at once, how many calls each fault rule was applied to, outages begun.
- ``POST /_reset``: forget calls and configuration.

``--port N`` listens on that port (a mock started again where a killed one listened);
``--calls-log PATH`` appends one JSON line per API call as it arrives (``method``, and for
createTask the image's ``sha256``), flushed at once, so that the calls of a mock that was
killed can still be counted; a createTask answered with an error (which creates no task)
gets a second line with ``"refused": true``, and one answered with its solution a line
``{"method": "answered", "sha256": ...}`` once the answer is written (the bill of a service
that charges an answer delivered).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import socket
import struct
import time
import uuid
import weakref
from typing import Any

from color_code import read_color_code
from png_text import embedded_answer
from twisted.internet import reactor, task
from twisted.internet.interfaces import IListeningPort, IPullProducer
from twisted.web import resource, server
from zope.interface import implementer

API_METHODS = ("createTask", "getBalance", "feedbackTask", "getTaskResult")
HUGE_BODY_SIZE = 30 * 1024 * 1024


def answer_for(image: bytes) -> str:
    embedded = embedded_answer(image)
    if embedded:
        return embedded
    coded = read_color_code(image)
    if coded:
        return coded
    return "t" + hashlib.sha256(image).hexdigest()[:7]


class MockState:
    def __init__(self, key: str | None, latency: float, calls_log: str | None = None) -> None:
        self.calls_log = open(calls_log, "a") if calls_log else None  # noqa: SIM115
        self.default_key = key
        self.default_latency = latency
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        self.key = self.default_key
        self.latency = self.default_latency
        self.balance = 10.0
        self.price = 0.0004
        self.faults: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self.applied: dict[int, int] = {}
        self.applied_to_image: dict[tuple[int, str], int] = {}
        self.task_ids: set[str] = set()
        # Tasks answered "processing": id -> [answer text, getTaskResult calls still pending]
        self.pending: dict[str, list[Any]] = {}
        self.max_in_flight = 0
        self.outages = 0
        self.random = random.Random(0)

    def fault_for(self, method: str, answer: str | None) -> dict[str, Any] | None:
        """The rule to apply to this call; ``answer`` is the image's, for createTask."""
        number = self.counts[method]
        for index, rule in enumerate(self.faults):
            if rule.get("method", "createTask") not in ("*", method):
                continue
            if number % int(rule.get("every", 1)) != 0:
                continue
            if "count" in rule and self.applied.get(index, 0) >= int(rule["count"]):
                continue
            prefix = rule.get("answer_prefix")
            if prefix is not None and (answer is None or not answer.startswith(prefix)):
                continue
            image_key = (index, answer or "")
            if "per_image" in rule and self.applied_to_image.get(image_key, 0) >= int(
                rule["per_image"]
            ):
                continue
            if "probability" in rule and self.random.random() >= float(rule["probability"]):
                continue
            self.applied[index] = self.applied.get(index, 0) + 1
            self.applied_to_image[image_key] = self.applied_to_image.get(image_key, 0) + 1
            return rule
        return None


def image_of(body: Any) -> bytes | None:
    """The image of a createTask body, or None when the body has none."""
    task_data = body.get("task") if isinstance(body, dict) else None
    encoded = task_data.get("body") if isinstance(task_data, dict) else None
    if not isinstance(encoded, str):
        return None
    try:
        return base64.b64decode(encoded, validate=True) or None
    except ValueError:  # binascii.Error included
        return None


class ApiPort:
    """The listening port and its open connections, so that an outage can close both."""

    def __init__(self, site: server.Site, state: MockState) -> None:
        self.site = site
        self.state = state
        self.port: IListeningPort | None = None
        self.number = 0
        self.connections: weakref.WeakSet[Any] = weakref.WeakSet()
        build = site.buildProtocol

        def build_tracked(addr: Any) -> Any:
            protocol = build(addr)
            self.connections.add(protocol)
            return protocol

        site.buildProtocol = build_tracked  # type: ignore[method-assign]

    def listen(self) -> None:
        self.port = reactor.listenTCP(self.number, self.site, interface="127.0.0.1")
        self.number = self.port.getHost().port

    def outage(self, seconds: float) -> None:
        """Close every connection and refuse new ones for ``seconds``."""
        for protocol in list(self.connections):
            # Site wraps each HTTPChannel; the channel holds the transport.
            transport = getattr(getattr(protocol, "_channel", protocol), "transport", None)
            if transport is not None:
                transport.abortConnection()
        if self.port is None:
            return  # already down: this call only loses its connection
        self.state.outages += 1
        port, self.port = self.port, None
        stopped = port.stopListening()
        stopped.addCallback(lambda _: task.deferLater(reactor, seconds, self.listen))


@implementer(IPullProducer)
class HugeBody:
    """Writes a JSON answer of ``size`` bytes in chunks, as a server that will not stop
    talking would, without holding it all in memory."""

    CHUNK = b"x" * 65536

    def __init__(self, request: Any, size: int) -> None:
        self.request = request
        self.left = size
        request.write(b'{"errorId": 0, "pad": "')
        request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self.left > 0:
            chunk = self.CHUNK[: self.left]
            self.left -= len(chunk)
            self.request.write(chunk)
            return
        self.request.unregisterProducer()
        self.request.write(b'"}')
        self.request.finish()

    def stopProducing(self) -> None:
        self.left = 0


def error(code: str, description: str = "", status: int = 400) -> tuple[int, dict[str, Any]]:
    return status, {"errorId": 1, "errorCode": code, "errorDescription": description or code}


class Api(resource.Resource):
    isLeaf = True

    def __init__(self, state: MockState) -> None:
        super().__init__()
        self.state = state
        self.api_port: ApiPort | None = None

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        if request.path == b"/_calls":
            return json.dumps(self.state.calls).encode()
        if request.path == b"/_stats":
            applied = [self.state.applied.get(i, 0) for i in range(len(self.state.faults))]
            stats = {
                "max_in_flight": self.state.max_in_flight,
                "applied": applied,
                "outages": self.state.outages,
            }
            return json.dumps(stats).encode()
        request.setResponseCode(404)
        return b"not found"

    def render_POST(self, request: Any) -> Any:
        path = request.path.decode().strip("/")
        raw = request.content.read()
        request.echoed = raw
        if path == "_reset":
            self.state.reset()
            return b"{}"
        if path == "_config":
            config = json.loads(raw)
            for name in ("latency", "balance", "key", "faults", "price"):
                if name in config:
                    setattr(self.state, name, config[name])
            return b"{}"
        if path not in API_METHODS:
            request.setResponseCode(404)
            return b"<html>not found</html>"
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.state.counts[path] = self.state.counts.get(path, 0) + 1
        self.state.calls.append({"method": path, "body": body, "at": time.time()})
        if self.state.calls_log is not None:
            image = image_of(body) if path == "createTask" else None
            digest = hashlib.sha256(image).hexdigest() if image else ""
            line = {"method": path, "sha256": digest, "at": time.time()}
            self.state.calls_log.write(json.dumps(line) + "\n")
            self.state.calls_log.flush()
        self.state.in_flight += 1
        self.state.max_in_flight = max(self.state.max_in_flight, self.state.in_flight)
        request.notifyFinish().addBoth(self.finished)
        image = image_of(body) if path == "createTask" else None
        rule = self.state.fault_for(path, answer_for(image) if image else None)
        delay = self.state.latency
        if rule is not None and rule["fault"] == "latency":
            delay += float(rule["seconds"])
            rule = None
        if delay > 0:
            later = task.deferLater(reactor, delay, self.respond, request, path, body, rule)
            request.notifyFinish().addErrback(lambda _: later.cancel())
            later.addErrback(lambda _: None)
            return server.NOT_DONE_YET
        self.respond(request, path, body, rule)
        return server.NOT_DONE_YET

    def finished(self, _: Any) -> None:
        self.state.in_flight -= 1

    def respond(self, request: Any, path: str, body: Any, rule: dict[str, Any] | None) -> None:
        if rule is not None and self.inject(request, rule):
            if rule["fault"] in ("http", "echo", "not_json"):
                self.log_refused(path, body)
            return
        status, answer = self.answer(path, body, rule)
        if answer.get("errorId"):
            self.log_refused(path, body)
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.write(json.dumps(answer).encode())
        request.finish()
        if path == "createTask" and answer.get("solution"):
            self.log_answered(body)

    def log_answered(self, body: Any) -> None:
        """A createTask answered with its solution (for ``--calls-log``)."""
        image = image_of(body)
        if self.state.calls_log is not None and image:
            line = {"method": "answered", "sha256": hashlib.sha256(image).hexdigest()}
            self.state.calls_log.write(json.dumps(line) + "\n")
            self.state.calls_log.flush()

    def log_refused(self, path: str, body: Any) -> None:
        """A createTask answered with an error: it created no task (for ``--calls-log``)."""
        image = image_of(body) if path == "createTask" else None
        if self.state.calls_log is not None and image:
            line = {"method": path, "sha256": hashlib.sha256(image).hexdigest(), "refused": True}
            self.state.calls_log.write(json.dumps(line) + "\n")
            self.state.calls_log.flush()

    def inject(self, request: Any, rule: dict[str, Any]) -> bool:
        """Apply a transport-level fault; False when the fault shapes the JSON instead."""
        kind = rule["fault"]
        if kind == "reset":
            request.transport.abortConnection()
        elif kind == "drop_mid":
            request.setHeader(b"content-length", b"1000")
            request.write(b'{"errorId": 0, "solu')
            # Linger 0: the close after the start of the answer is out is a reset (RST).
            linger = struct.pack("ii", 1, 0)
            request.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            request.transport.loseConnection()
        elif kind == "http":
            request.setResponseCode(int(rule["status"]))
            request.setHeader(b"content-type", b"text/html")
            request.write(b"<html><body>upstream trouble</body></html>")
            request.finish()
        elif kind == "echo":
            # A gateway error page that quotes the request it could not forward.
            request.setResponseCode(int(rule.get("status", 502)))
            request.setHeader(b"content-type", b"text/html")
            request.write(
                b"<html><body>Bad gateway for request: " + request.echoed + b"</body></html>"
            )
            request.finish()
        elif kind == "nested":
            request.setHeader(b"content-type", b"application/json")
            depth = int(rule.get("depth", 100_000))
            request.write(b"[" * depth + b"]" * depth)
            request.finish()
        elif kind == "not_json":
            request.setHeader(b"content-type", b"text/html")
            request.write(b"<html><body>maintenance</body></html>")
            request.finish()
        elif kind == "huge":
            request.setHeader(b"content-type", b"application/json")
            HugeBody(request, HUGE_BODY_SIZE)
        elif kind == "refuse":
            assert self.api_port is not None
            self.api_port.outage(float(rule.get("seconds", 0.05)))
        else:
            return False
        return True

    def answer(
        self, path: str, body: Any, rule: dict[str, Any] | None
    ) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict):
            return error("ERROR_INVALID_TASK_DATA", "body is not a JSON object")
        if self.state.key is not None and body.get("clientKey") != self.state.key:
            return error("ERROR_KEY_DENIED_ACCESS", "key denied", status=401)
        if rule is not None and rule["fault"] == "error":
            code = rule["code"]
            status = int(rule.get("status", 401 if "KEY" in code else 400))
            return error(code, rule.get("description", ""), status=status)
        if path == "getBalance":
            return 200, {"errorId": 0, "balance": self.state.balance, "packages": []}
        if path == "feedbackTask":
            if body.get("taskId") not in self.state.task_ids:
                return error("ERROR_TASKID_INVALID", "unknown taskId")
            return 200, {"errorId": 0, "errorCode": "", "errorDescription": "", "message": "ok"}
        if path == "getTaskResult":
            return self.task_result(body)
        return self.create_task(body, rule)

    def task_result(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        task_id = body.get("taskId")
        entry = self.state.pending.get(task_id) if isinstance(task_id, str) else None
        if entry is None:
            return error("ERROR_TASKID_INVALID", "unknown taskId")
        text, polls_left = entry
        if polls_left is None or polls_left > 0:
            if polls_left is not None:
                entry[1] = polls_left - 1
            return 200, {"errorId": 0, "status": "processing", "taskId": task_id}
        return 200, {
            "errorId": 0,
            "errorCode": "",
            "errorDescription": "",
            "status": "ready",
            "solution": {"text": text},
            "taskId": task_id,
        }

    def create_task(
        self, body: dict[str, Any], rule: dict[str, Any] | None
    ) -> tuple[int, dict[str, Any]]:
        task_data = body.get("task")
        if not isinstance(task_data, dict) or task_data.get("type") != "ImageToTextTask":
            return error("ERROR_TASK_NOT_SUPPORTED", "only ImageToTextTask")
        try:
            image = base64.b64decode(task_data.get("body") or "", validate=True)
        except (ValueError, TypeError):
            return error("ERROR_INVALID_TASK_DATA", "body is not base64")
        if not image:
            return error("ERROR_INVALID_TASK_DATA", "missing body data")
        task_id = str(uuid.uuid4())
        self.state.task_ids.add(task_id)
        if self.state.price:  # price 0: a balance configured as no number stays as it is
            self.state.balance = round(self.state.balance - self.state.price, 6)
        kind = rule["fault"] if rule else None
        if kind == "no_error_id":
            return 200, {"status": "ready", "solution": {"text": answer_for(image)}}
        if kind == "no_solution":
            return 200, {"errorId": 0, "status": "ready", "taskId": task_id}
        if kind == "pending":
            polls = None if rule and rule.get("never") else int((rule or {}).get("polls", 1))
            self.state.pending[task_id] = [answer_for(image), polls]
            return 200, {"errorId": 0, "status": "processing", "taskId": task_id}
        text = answer_for(image)
        if kind == "empty_text":
            text = ""
        elif kind == "wrong_text":
            text = "wrong" + text[::-1]
        elif kind == "long_text":
            text = text * (1_000_000 // len(text))
        solution: dict[str, Any] = {"text": text}
        if kind == "huge_confidence":
            solution["confidence"] = 10**400
        return 200, {
            "errorId": 0,
            "errorCode": "",
            "errorDescription": "",
            "status": "ready",
            "solution": solution,
            "taskId": task_id,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key", default=None, help="the only clientKey accepted")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--calls-log", default=None, help="append every API call here")
    args = parser.parse_args()
    state = MockState(args.key, args.latency, args.calls_log)
    api = Api(state)
    site = server.Site(api)
    site.displayTracebacks = False
    site.noisy = False
    api.api_port = ApiPort(site, state)
    api.api_port.number = args.port
    api.api_port.listen()
    print(f"http://127.0.0.1:{api.api_port.number}", flush=True)
    reactor.run()


if __name__ == "__main__":
    # Logging every request would slow the benchmarks down for nothing.
    server.Site.log = lambda self, request: None  # type: ignore[method-assign]
    main()
