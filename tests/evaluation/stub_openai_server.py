"""A tiny OpenAI-compatible chat server for judge failure-mode tests; behaviour is chosen by the model name."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _reply(content: str, top_logprobs: list[dict] | None) -> dict:
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "length"}
    choice["logprobs"] = {"content": [{"token": content, "logprob": 0.0, "top_logprobs": top_logprobs}]} \
        if top_logprobs is not None else None
    return {"id": "stub", "object": "chat.completion", "choices": [choice]}


class StubHandler(BaseHTTPRequestHandler):
    calls: dict[str, int] = {}
    lock = threading.Lock()

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: dict | str, headers: dict | None = None) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        payload = json.loads(self.rfile.read(length))
        mode = payload["model"]
        with self.lock:
            count = self.calls.get(mode, 0)
            self.calls[mode] = count + 1
        top = [{"token": "80", "logprob": -0.5}, {"token": "90", "logprob": -1.5}, {"token": "The", "logprob": -3.0}]
        if mode == "good":
            self._send(200, _reply("80", top))
        elif mode == "no-logprobs-number":
            self._send(200, _reply("85", None))
        elif mode == "no-logprobs-text":
            self._send(200, _reply("I cannot rate this.", None))
        elif mode == "words":
            self._send(200, _reply("The", [{"token": "The", "logprob": -0.1}, {"token": "I", "logprob": -2.5}]))
        elif mode == "slow":
            time.sleep(2.0)
            self._send(200, _reply("80", top))
        elif mode == "rate-limit-once":
            if count == 0:
                self._send(429, {"error": "slow down"}, {"Retry-After": "0.2"})
            else:
                self._send(200, _reply("80", top))
        elif mode == "server-error-once":
            if count == 0:
                self._send(500, {"error": "boom"})
            else:
                self._send(200, _reply("80", top))
        elif mode == "bad-request":
            self._send(400, {"error": "unknown parameter"})
        elif mode == "not-json":
            self._send(200, "<html>oops</html>")
        else:
            self._send(404, {"error": f"unknown stub mode {mode}"})


def start_stub_server() -> tuple[ThreadingHTTPServer, str]:
    """Start the stub on a free local port; return the server and its base URL (ending in /v1)."""
    StubHandler.calls = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"
