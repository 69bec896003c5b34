"""A small webhook receiver for the notification tests: a threaded HTTP
server on 127.0.0.1 that records every POST (arrival time, path, headers,
body, parsed JSON and the status it answered) and can be scripted to fail:
the first N requests get a given status (503 by default), every request gets
a fixed status (e.g. 400), or requests are left unanswered for a while
(a hanging receiver).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Delivery:
    at: float  # time.monotonic() on arrival
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    status: int  # what the receiver answered
    json: Any = field(default=None)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    @property
    def event(self) -> str | None:
        """The `event` of a generic JSON payload."""
        return self.json.get("event") if isinstance(self.json, dict) else None

    @property
    def request_id(self) -> str | None:
        if isinstance(self.json, dict) and isinstance(self.json.get("request"), dict):
            return self.json["request"].get("id")
        return None


class WebhookReceiver:
    """Records POSTs to any path. Script it with fail_first(), always() or
    hang(); read what arrived with deliveries / wait_for()."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._cond = threading.Condition()
        self._fail_left = 0
        self._fail_status = 503
        self._status = 200
        self._hang = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                arrived = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, hang = receiver._next_status()
                try:
                    parsed = json.loads(body) if body else None
                except ValueError:
                    parsed = None
                delivery = Delivery(
                    arrived, self.path, {k.lower(): v for k, v in self.headers.items()}, body, status, parsed
                )
                with receiver._cond:
                    receiver.deliveries.append(delivery)
                    receiver._cond.notify_all()
                if hang:
                    time.sleep(hang)
                answer = b"ok" if status < 300 else b"scripted failure"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    pass  # the sender gave up (timeout) while we hung

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # -- lifecycle

    def start(self) -> "WebhookReceiver":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- scripting

    def fail_first(self, n: int, status: int = 503) -> None:
        """Answer the next n requests with `status`, then 200 again."""
        with self._cond:
            self._fail_left = n
            self._fail_status = status

    def always(self, status: int) -> None:
        """Answer every request with `status` (after any fail_first)."""
        with self._cond:
            self._status = status

    def hang(self, seconds: float) -> None:
        """Hold every request this long before answering."""
        with self._cond:
            self._hang = seconds

    def _next_status(self) -> tuple[int, float]:
        with self._cond:
            if self._fail_left > 0:
                self._fail_left -= 1
                return self._fail_status, self._hang
            return self._status, self._hang

    # -- reading

    def all(self) -> list[Delivery]:
        with self._cond:
            return list(self.deliveries)

    def matching(self, event: str | None = None, request_id: str | None = None) -> list[Delivery]:
        return [
            d
            for d in self.all()
            if (event is None or d.event == event) and (request_id is None or d.request_id == request_id)
        ]

    def wait_for(
        self,
        predicate: Callable[[list[Delivery]], Any] | None = None,
        *,
        event: str | None = None,
        request_id: str | None = None,
        count: int = 1,
        timeout: float = 10,
    ) -> Any:
        """Wait until `predicate(deliveries)` is truthy (default: at least
        `count` deliveries of `event` about `request_id`); return its value
        (default: the matching deliveries)."""
        if predicate is None:

            def predicate(_all: list[Delivery]):
                found = self.matching(event, request_id)
                return found if len(found) >= count else None

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(list(self.deliveries))
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(d.status, d.event or d.text[:80]) for d in self.deliveries]
                    raise AssertionError(
                        f"webhook receiver: no {count}x {event or 'delivery'} for {request_id} "
                        f"within {timeout}s; received {seen}"
                    )
                self._cond.wait(min(left, 0.2))
