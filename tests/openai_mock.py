"""A scripted OpenAI-compatible server on loopback, for fault tests (stdlib only).

Each request takes the next action of the script (``ok`` once the script is spent): ``ok`` answers;
``429`` / ``503`` refuse (``429:2`` adds ``Retry-After: 2``); ``slow`` answers after ``delay``
seconds; ``drop`` closes the connection without a reply; ``malformed`` sends truncated JSON;
``no_usage`` a body without ``usage``; ``400`` a refusal that is not worth retrying. An answer's text
is ``reply(prompt)`` and its usage a fixed function of the prompt (``usage_of``), so a test knows
what every successful reply must have cost.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COMPLETION_TOKENS = 3


def usage_of(prompt: str) -> dict[str, int]:
    return {"prompt_tokens": len(prompt.encode()) // 4 + 1, "completion_tokens": COMPLETION_TOKENS}


def answer_of(prompt: str) -> str:
    """The sum of the numbers in the prompt's last question: a right answer for chain_sum."""
    question = prompt.rsplit("Question:", 1)[-1]
    numbers = [int(x) for x in question.replace("+", " + ").replace("-", " -").split() if x.lstrip("-").isdigit()]
    return f" #### {sum(numbers)}"


class MockServer:
    def __init__(self, *, delay: float = 1.0, reply: Callable[[str], str] = answer_of) -> None:
        self.delay, self.reply = delay, reply
        self.script: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.actions: list[str] = []
        self.auth: list[str | None] = []  # the Authorization header of every request
        self.default = "ok"
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> MockServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def then(self, actions: Iterable[str]) -> None:
        with self._lock:
            self.script.extend(actions)

    def _next(self, body: dict[str, Any]) -> str:
        with self._lock:
            self.requests.append(body)
            action = self.script.pop(0) if self.script else self.default
            self.actions.append(action)
            return action

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        mock = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                mock.auth.append(self.headers.get("authorization"))
                mock.respond(self, body, mock._next(body))

        return Handler

    def respond(self, handler: BaseHTTPRequestHandler, body: dict[str, Any], action: str) -> None:
        if action == "drop":
            handler.close_connection = True
            handler.connection.close()
            return
        if action == "slow":
            time.sleep(self.delay)
        code, _, after = action.partition(":")
        if code in ("429", "503", "400"):
            self._send(handler, int(code), json.dumps({"error": {"message": f"mock {code}"}}).encode(),
                       {"Retry-After": after} if after else {})
            return
        payload = self.completion(body)
        if action == "no_usage":
            payload.pop("usage")
        data = json.dumps(payload).encode()
        self._send(handler, 200, data[: len(data) // 2] if action == "malformed" else data, {})

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        chat = "messages" in body
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        n = int(body.get("n") or 1)
        text = self.reply(prompt)
        choice = ({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        usage = usage_of(prompt)
        usage["completion_tokens"] *= n
        return {"id": "x", "object": "chat.completion" if chat else "text_completion", "model": body["model"],
                "choices": [{**choice, "index": i, "finish_reason": "stop", "logprobs": None} for i in range(n)],
                "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}}

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, code: int, data: bytes, headers: dict[str, str]) -> None:
        try:
            handler.send_response(code)
            handler.send_header("content-type", "application/json")
            handler.send_header("content-length", str(len(data)))
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout): fine
            pass


def served_config(url: str, **overrides: Any) -> dict[str, Any]:
    """A tiny math run whose training prompts a served model answers: a random 1-layer student,
    two iterations of 2 selected answers, parts of 3 prompts, few tokens each."""
    config: dict[str, Any] = {
        "name": "served", "seed": 0,
        "task": {"kind": "math", "levels": [{"name": "add1", "dataset": "chain_sum", "params": {
            "min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}}],
            "train_size": 16, "eval_size": 2, "shots": 1},
        "model": {"kind": "tiny", "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 128, "vocab_size": 100,
                  "seed_problems": 20},
        "generator": {"kind": "openai", "model": "smollm2", "base_url": url, "max_tokens": 12, "temperature": 0.7,
                      "stop": ["\n"], "concurrency": 2, "backoff": 0.05, "max_retries": 2, "timeout": 60.0,
                      "bf16": False},
        "learner": {"kind": "sft", "batch_size": 4, "bf16": False},
        "selector": {"kind": "passed"},
        "schedule": {"kind": "constant", "n0": 2},
        "budget": {"total": 20_000, "unit": "tokens",
                   "costs": {"generate": {"tokens": 1.0}, "train": {"tokens": 1.0}}},
        "loop": {"max_iterations": 2, "chunk_size": 3, "store_candidates": "all"},
    }
    config.update(overrides)
    return config
