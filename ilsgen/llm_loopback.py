"""A loopback OpenAI-compatible chat endpoint with a set latency, for benchmarks and tests.

    python -m ilsgen.llm_loopback --port 8123 --latency 0.5 [--jitter 0.5] [--max-concurrent 64]

POST /v1/chat/completions answers one valid structured finding (an effusion in sentence 0)
after `latency` seconds (with `jitter` j: uniform in latency x [1 - j, 1 + j], the same mean,
like answers of different lengths). With `max_concurrent`, at most that many requests are worked on at
once and the others queue, like a real server's batch limit. GET /stats returns the number
of requests and the peak number in flight (`peak`), and resets both; `fail = True` on the
state makes every request a 500. No model, no data:
it measures the client, never a language model.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = {"findings": [{"entity": "effusion", "sent_idx": 0, "lesion": "effusion", "present": True,
                        "certainty": "definite", "locations": ["left lung base"]}]}


def completion(content: str) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "loopback",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                    "finish_reason": "stop"}]}).encode()


class LoopbackLLM:
    """The server state: latency, the optional work cap, counters."""

    def __init__(self, latency: float = 0.5, max_concurrent: int = 0, jitter: float = 0.0):
        self.latency, self.jitter = latency, jitter
        self.slots = threading.BoundedSemaphore(max_concurrent) if max_concurrent > 0 else None
        self.lock = threading.Lock()
        self.requests = self.now = self.peak = 0
        self.fail = False  # True: every request gets a 500 (a server in trouble)

    def work(self) -> bytes:
        with self.lock:
            self.requests += 1
            self.now += 1
            self.peak = max(self.peak, self.now)
        delay = self.latency * (1 + self.jitter * random.uniform(-1, 1)) if self.jitter else self.latency
        try:
            if self.slots is not None:
                with self.slots:
                    time.sleep(delay)
            else:
                time.sleep(delay)
        finally:
            with self.lock:
                self.now -= 1
        return completion(json.dumps(ANSWER))

    def stats(self) -> dict[str, int]:
        with self.lock:
            out = {"requests": self.requests, "peak": self.peak}
            self.requests = self.peak = 0
        return out

    def handler(self):
        state = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the client reuses its connections

            def log_message(self, *a):  # quiet
                pass

            def _send(self, payload: bytes, status: int = 200) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._send(json.dumps(state.stats()).encode())

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if state.fail:
                    self._send(b'{"error": {"message": "unavailable"}}', 500)
                else:
                    self._send(state.work())

        return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # 256 clients connect at once


def start(latency: float = 0.5, max_concurrent: int = 0, port: int = 0) -> tuple[ThreadingHTTPServer, LoopbackLLM]:
    """Serve on 127.0.0.1 in a daemon thread; returns (server, state). `server.shutdown()` stops it."""
    state = LoopbackLLM(latency, max_concurrent)
    server = _Server(("127.0.0.1", port), state.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--max-concurrent", type=int, default=0)
    ap.add_argument("--jitter", type=float, default=0.0)
    a = ap.parse_args()
    _Server(("127.0.0.1", a.port), LoopbackLLM(a.latency, a.max_concurrent, a.jitter).handler()).serve_forever()


if __name__ == "__main__":
    main()
