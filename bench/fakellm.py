"""A fake OpenAI-compatible HTTP server for the test suite and the benchmarks.

Run ``python -m bench.fakellm --port 0``: it prints ``FAKELLM_PORT=<port>`` and serves
``/v1/chat/completions`` and ``/v1/embeddings`` until SIGTERM/SIGINT. Tests script answers
and faults through ``/_control/*``; :class:`FakeLLM` is a stdlib-only handle on such a
subprocess (aiohttp is imported by the server side only).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import json
import math
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

EMBEDDING_DIM = 16
TIMEOUT_SLEEP_S = 60.0
CONFIG_KEYS = ("latency_ms", "fault_rates", "retry_after", "answers", "default_reply")
ITEM_KINDS = ("status", "timeout", "reply", "tool_calls")
SECRET_HEADERS = frozenset({"authorization", "api-key", "x-api-key"})
MODEL_PATHS = ("/v1/chat/completions", "/chat/completions", "/v1/embeddings", "/embeddings")
# status -> (OpenAI error type, error code, default message)
ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached."),
    500: ("server_error", None, "The server had an error."),
    503: ("server_error", None, "The server is overloaded."),
    504: ("server_error", "timeout", "Scripted timeout elapsed."),
}


@dataclass
class Outcome:
    """An answer to send: HTTP status, JSON body, extra headers, and the wait before it."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def error_outcome(status: int, message: str | None = None, headers: Any = None) -> Outcome:
    """An OpenAI-style error answer ``{"error": {...}}`` for ``status``."""
    fallback = ("server_error" if status >= 500 else "invalid_request_error", None, "Error.")
    kind, code, default = ERRORS.get(status, fallback)
    error = {"message": f"{message or default} (fakellm)", "type": kind, "code": code}
    return Outcome(status, {"error": error}, {str(k): str(v) for k, v in (headers or {}).items()})


def content_text(content: Any) -> str:
    """Text of a message content: a string, a list of parts, or null."""
    if isinstance(content, list):
        return " ".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def messages_text(messages: list[Any], role: str | None = None) -> list[str]:
    """Texts of the messages (of one role, if given), in order."""
    dicts = [m for m in messages if isinstance(m, dict)]
    return [content_text(m.get("content")) for m in dicts if role in (None, m.get("role"))]


def count_words(text: str) -> int:
    """The token count used in usage: whitespace-separated words, at least 1."""
    return max(1, len(text.split()))


def embed(text: str) -> list[float]:
    """A unit vector of signed hashed lowercased words: shared words give high cosine."""
    vec = [0.0] * EMBEDDING_DIM
    for word in re.findall(r"\w+", text.lower()):
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        vec[h % EMBEDDING_DIM] += 1.0 if (h >> 32) & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vec))
    return [x / norm for x in vec] if norm else [1.0] + [0.0] * (EMBEDDING_DIM - 1)


def encode(vector: list[float], as_base64: bool) -> list[float] | str:
    """A vector as floats, or as base64 of little-endian float32 (OpenAI's base64 format)."""
    if not as_base64:
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def validate_config(patch: Any) -> dict[str, Any]:
    """Check a config patch; raise ValueError saying what is wrong."""
    if not isinstance(patch, dict) or set(patch) - set(CONFIG_KEYS):
        raise ValueError(f"unknown config keys in {patch!r}; known: {list(CONFIG_KEYS)}")
    for key, rate in (patch.get("fault_rates") or {}).items():
        if not (key == "timeout" or str(key).isdigit()) or not 0 <= float(rate) <= 1:
            raise ValueError(f"fault_rates needs 'timeout' or a status -> rate in [0, 1]: {key}")
    return patch


def validate_item(item: Any) -> dict[str, Any]:
    """Check one script item; raise ValueError unless it is exactly one known kind."""
    if not isinstance(item, dict) or sum(k in item for k in ITEM_KINDS) != 1:
        raise ValueError(f"script item {item!r} needs exactly one of {list(ITEM_KINDS)}")
    return {**item, "times": int(item.get("times", 1))}


class State:
    """The server's state and decisions; knows nothing about HTTP."""

    def __init__(self, latency_ms: float = 0.0, seed: int = 0) -> None:
        self.default_latency_ms, self.seed, self.generation = latency_ms, seed, 0
        self.reset()

    def reset(self) -> None:
        """Forget script, stats and requests; restore the default config; re-seed the RNG."""
        self.config: dict[str, Any] = dict.fromkeys(CONFIG_KEYS)
        self.config.update(latency_ms=self.default_latency_ms, fault_rates={}, answers={})
        self.script: list[dict[str, Any]] = []
        self.rng = random.Random(self.seed)
        self.generation += 1
        self.total = self.in_flight = self.max_in_flight = 0
        self.by_status: Counter[str] = Counter()
        self.arrivals: deque[float] = deque(maxlen=200_000)
        self.bodies: deque[dict[str, Any]] = deque(maxlen=1_000)
        self.completion_ids, self.call_ids = itertools.count(1), itertools.count(1)

    def record(self, path: str, headers: Any, body: Any) -> int:
        """Count and keep an arriving request (never a raw key); return the generation."""
        now, auth = time.time(), headers.get("Authorization")
        self.total += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.arrivals.append(now)
        kept = {k: v for k, v in headers.items() if k.lower() not in SECRET_HEADERS}
        digest = hashlib.sha256(auth.encode()).hexdigest() if auth is not None else None
        self.bodies.append(
            {
                "time": now,
                "path": path,
                "body": body,
                "headers": kept,
                "has_authorization": auth is not None,
                "auth_sha256": digest,
            }
        )
        return self.generation

    def answered(self, status: int | None, generation: int) -> None:
        """Count an answer (None: the client left first), unless a reset came in between."""
        if generation == self.generation:
            self.in_flight -= 1
            self.by_status["disconnected" if status is None else str(status)] += 1

    def stats(self) -> dict[str, Any]:
        """Counters and arrival timestamps, ready for JSON."""
        return {
            "total": self.total,
            "by_status": self.by_status,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "script_pending": len(self.script),
            "arrivals": list(self.arrivals),
        }

    def take_script(self, text: str) -> dict[str, Any] | None:
        """Use the first item whose ``match`` occurs in text; drop it once ``times`` is 0."""
        for index, item in enumerate(self.script):
            if item.get("match", "") in text:
                item["times"] -= 1
                if item["times"] <= 0:
                    del self.script[index]
                return item
        return None

    def draw_fault(self) -> str | None:
        """A key of ``fault_rates`` drawn with the seeded RNG, or None."""
        rates = self.config.get("fault_rates") or {}
        draw, total = (self.rng.random() if rates else 1.0), 0.0
        for key, rate in rates.items():
            total += float(rate)
            if draw < total:
                return str(key)
        return None

    def chat(self, body: Any) -> Outcome:
        """The answer to a chat completion request: script, else fault, else default."""
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self.delayed(error_outcome(400, "Body must be JSON with a 'messages' list."))
        if body.get("stream"):
            return self.delayed(error_outcome(400, "Streaming (stream: true) is not supported."))
        item = self.take_script("\n".join(messages_text(body["messages"])))
        if item is not None:
            return self.scripted(item, body)
        fault = self.draw_fault()
        if fault == "timeout":
            return Outcome(504, error_outcome(504).body, delay_s=TIMEOUT_SLEEP_S)
        if fault is not None:
            retry = self.config.get("retry_after")
            headers = {"Retry-After": retry} if fault == "429" and retry else {}
            return self.delayed(error_outcome(int(fault), None, headers))
        return self.delayed(self.completion(body, self.default_reply(body["messages"])))

    def scripted(self, item: dict[str, Any], body: dict[str, Any]) -> Outcome:
        """The answer a script item asks for."""
        if item.get("timeout"):
            return Outcome(504, error_outcome(504).body, delay_s=TIMEOUT_SLEEP_S)
        if "status" in item:
            outcome = error_outcome(int(item["status"]), item.get("message"), item.get("headers"))
        elif "tool_calls" in item:
            outcome = self.completion(body, None, item["tool_calls"], item.get("usage"))
        else:
            outcome = self.completion(body, str(item["reply"]), None, item.get("usage"))
        return self.delayed(outcome, item.get("latency_ms"))

    def delayed(self, outcome: Outcome, latency_ms: float | None = None) -> Outcome:
        """Set the wait before answering: the override, else config ``latency_ms``."""
        if latency_ms is None:
            latency_ms = self.config.get("latency_ms") or 0
        outcome.delay_s = float(latency_ms) / 1000.0
        return outcome

    def default_reply(self, messages: list[Any]) -> str:
        """The first ``answers`` key in the last user text wins; else default_reply or echo."""
        text = (messages_text(messages, "user") or [""])[-1]
        for key, reply in (self.config.get("answers") or {}).items():
            if key in text:
                return str(reply)
        default = self.config.get("default_reply")
        return text if default is None else str(default)

    def completion(
        self, body: dict[str, Any], reply: str | None, calls: Any = None, usage: Any = None
    ) -> Outcome:
        """A ``chat.completion`` with either a reply or tool calls."""
        message: dict[str, Any] = {"role": "assistant", "content": reply}
        if calls:
            message["tool_calls"] = [self.tool_call(call) for call in calls]
        out = reply or " ".join(c["function"]["arguments"] for c in message.get("tool_calls", []))
        prompt = count_words(" ".join(messages_text(body["messages"])))
        counted = {"prompt_tokens": prompt, "completion_tokens": count_words(out)} | (usage or {})
        counted.setdefault("total_tokens", counted["prompt_tokens"] + counted["completion_tokens"])
        finish = "tool_calls" if calls else "stop"
        return Outcome(
            200,
            {
                "id": f"chatcmpl-fake{next(self.completion_ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": counted,
            },
        )

    def tool_call(self, call: dict[str, Any]) -> dict[str, Any]:
        """One OpenAI tool call; ``arguments`` JSON-encoded unless already a string."""
        args = call.get("arguments", {})
        encoded = args if isinstance(args, str) else json.dumps(args)
        function = {"name": call["name"], "arguments": encoded}
        return {"id": f"call_{next(self.call_ids)}", "type": "function", "function": function}

    def embeddings(self, body: Any) -> Outcome:
        """One hashed bag-of-words vector per input (a string, strings or token lists)."""
        raw = body.get("input") if isinstance(body, dict) else None
        if not raw:
            return self.delayed(error_outcome(400, "Body must be JSON with a non-empty 'input'."))
        texts = [raw] if isinstance(raw, str) or isinstance(raw[0], int) else raw
        texts = [t if isinstance(t, str) else " ".join(map(str, t)) for t in texts]
        b64 = body.get("encoding_format") == "base64"
        vectors = [encode(embed(t), b64) for t in texts]
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        tokens = sum(count_words(t) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        answer = {"object": "list", "data": data, "model": body.get("model", "fake-embedding")}
        return self.delayed(Outcome(200, answer | {"usage": usage}))


class Handlers:
    """The aiohttp request handlers over a :class:`State`."""

    def __init__(self, state: State, web: Any) -> None:
        self.state, self.web = state, web

    def respond(self, status: int, payload: Any, headers: Any = None) -> Any:
        return self.web.json_response(payload, status=status, headers=headers)

    async def model_call(self, request: Any) -> Any:
        """Record, decide, wait, answer; a client that leaves first is counted as such."""
        try:
            body = await request.json()
        except ValueError:
            body = None
        generation = self.state.record(request.path, request.headers, body)
        chat = request.path.endswith("/chat/completions")
        outcome = self.state.chat(body) if chat else self.state.embeddings(body)
        try:
            if outcome.delay_s:
                await asyncio.sleep(outcome.delay_s)
        except asyncio.CancelledError:
            self.state.answered(None, generation)
            raise
        self.state.answered(outcome.status, generation)
        return self.respond(outcome.status, outcome.body, outcome.headers)

    async def control(self, request: Any) -> Any:
        """POST /_control/{config,script,reset}; a bad body gets a 400 saying why."""
        action, state = request.match_info["action"], self.state
        try:
            payload = await request.json() if request.can_read_body else None
            if action == "config":
                state.config.update(validate_config(payload))
                return self.respond(200, state.config)
            if action == "script":
                if not isinstance(payload, list):
                    raise ValueError("script must be a JSON list of items")
                state.script.extend([validate_item(item) for item in payload])
                return self.respond(200, {"pending": len(state.script)})
        except ValueError as exc:
            return self.respond(400, error_outcome(400, f"{action}: {exc}").body)
        state.reset()
        return self.respond(200, {"ok": True})

    async def snapshot(self, request: Any) -> Any:
        """GET /_control/stats or /_control/requests."""
        if request.match_info["what"] == "stats":
            return self.respond(200, self.state.stats())
        return self.respond(200, list(self.state.bodies))

    def app(self) -> Any:
        web = self.web
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes([web.post(path, self.model_call) for path in MODEL_PATHS])
        app.add_routes([web.post("/_control/{action:config|script|reset}", self.control)])
        app.add_routes([web.get("/_control/{what:stats|requests}", self.snapshot)])
        return app


async def serve(host: str, port: int, latency_ms: float, seed: int) -> None:
    """Serve until SIGTERM/SIGINT, after printing the bound port on stdout."""
    from aiohttp import web  # lazy: the FakeLLM handle (tests) needs the stdlib only

    app = Handlers(State(latency_ms, seed), web).app()
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    await web.SockSite(runner, sock, backlog=2048).start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"FAKELLM_PORT={sock.getsockname()[1]}", flush=True)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fakellm", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.latency_ms, args.seed))


class FakeLLM:
    """A handle on a running fakellm subprocess (standard library only)."""

    def __init__(self, process: subprocess.Popen[str], stderr: IO[bytes], port: int) -> None:
        self.process, self._stderr, self.port = process, stderr, port
        self.root_url = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.root_url}/v1"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @classmethod
    def start(cls, *, latency_ms: float = 0, seed: int = 0, timeout: float = 15) -> FakeLLM:
        """Spawn ``python -m bench.fakellm`` from the repo root and wait for its port line."""
        args = f"--port 0 --host 127.0.0.1 --latency-ms {latency_ms} --seed {seed}".split()
        stderr = tempfile.TemporaryFile()
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.fakellm", *args],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        line = read_port_line(process, time.monotonic() + timeout)
        if not line.startswith("FAKELLM_PORT="):
            code = process.poll()
            process.kill()
            process.wait()
            stderr.seek(0)
            why = f"exited with code {code}" if code is not None else f"gave no port in {timeout}s"
            detail = stderr.read().decode(errors="replace")
            raise RuntimeError(f"fakellm {why}; stderr:\n{detail}")
        return cls(process, stderr, int(line.strip().split("=", 1)[1]))

    def stop(self) -> None:
        """SIGTERM the server and wait for it (SIGKILL after 10 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        self._stderr.close()

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        req = urllib.request.Request(self.root_url + path, data, headers, method=method)
        try:
            with self._opener.open(req, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise ValueError(f"fakellm {path}: {exc.read().decode(errors='replace')}") from None

    def configure(self, **kwargs: Any) -> None:
        """Merge keys into the config: latency_ms, fault_rates, retry_after, answers, ..."""
        self._call("POST", "/_control/config", kwargs)

    def script(self, items: list[dict[str, Any]]) -> None:
        """Append scripted answers to the FIFO."""
        self._call("POST", "/_control/script", items)

    def reset(self) -> None:
        """Clear script, stats and requests; restore the config; re-seed the RNG."""
        self._call("POST", "/_control/reset")

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "/_control/stats"))

    def requests(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/_control/requests"))


def read_port_line(process: subprocess.Popen[str], deadline: float) -> str:
    """The first stdout line of the server, or "" if it exits or the deadline passes."""
    assert process.stdout is not None
    while (remaining := deadline - time.monotonic()) > 0:
        if select.select([process.stdout], [], [], remaining)[0]:
            return process.stdout.readline()
    return ""


if __name__ == "__main__":
    main()
