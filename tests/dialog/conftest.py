"""Dialog test helpers: plans from YAML text, and local HTTP servers (webhooks, a scripted LLM)."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.dialog.base import Hangup, Say, Transfer
from bridge.dialog.dialplan import Dialplan
from bridge.dialog.flow import Converse, Effect, Fetch
from bridge.dialog.library import load_dialplan


@pytest.fixture
def make_plan(tmp_path: Path) -> Callable[[str], Dialplan]:
    """A checked dialplan from YAML text (dedented); fails the test if the text is invalid."""

    def make(text: str) -> Dialplan:
        path = tmp_path / "plan.yaml"
        path.write_text(textwrap.dedent(text))
        return load_dialplan(path)

    return make


def show(effect: Effect) -> str:
    """An effect as a short string, so flow tables stay readable."""
    if isinstance(effect, Say):
        flags = "" if effect.barge_in else "(keys)" if effect.keys_interrupt else "(locked)"
        return f"say{flags}:{effect.text}"
    if isinstance(effect, Hangup):
        return f"hangup:{effect.reason}"
    if isinstance(effect, Transfer):
        return f"transfer:{effect.target}"
    if isinstance(effect, Fetch):
        return f"fetch:{effect.request.method} {effect.request.url}"
    assert isinstance(effect, Converse)
    return "converse"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@dataclass
class Backend:
    """A webhook server: GET /orders/{n} answers from ``orders``; /slow never in time."""

    url: str = ""
    orders: dict[str, dict[str, str]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    state = Backend(orders={"123456": {"status": "shipped", "detail": "It arrives tomorrow."}})

    async def order(request: web.Request) -> web.Response:
        state.requests.append(request.path_qs)
        number = request.match_info["number"]
        if number == "500500":
            return web.Response(status=500, text="database down")
        if number == "999999":
            await asyncio.sleep(2)
        found = state.orders.get(number)
        if found is None:
            return web.json_response({"error": "no such order"}, status=404)
        return web.json_response(found)

    app = web.Application()
    app.router.add_get("/orders/{number}", order)
    runner, state.url = await serve(app)
    try:
        yield state
    finally:
        await runner.cleanup()


def text_chunk(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


def tool_chunk(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    args = json.dumps(arguments)
    call = {"index": 0, "id": call_id, "type": "function"}
    return {
        "choices": [
            {"index": 0, "delta": {"tool_calls": [call | {"function": {"name": name}}]}},
        ],
        # The arguments arrive in a second delta, as real servers stream them.
        "_then": {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": args}}]},
                }
            ]
        },
    }


Script = list[tuple[float, dict[str, Any]]] | int  # (delay before, chunk) pairs, or an HTTP status


@dataclass
class ScriptedLlm:
    """An OpenAI-compatible streaming endpoint that plays one script per request."""

    base_url: str = ""
    scripts: list[Script] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    last_chunk_at: float = 0.0  # monotonic time the last chunk of a reply was written
    completed: int = 0  # replies streamed to the end ([DONE] written)


@pytest.fixture
async def llm_server() -> AsyncIterator[ScriptedLlm]:
    state = ScriptedLlm()

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        state.requests.append(body)
        script = state.scripts.pop(0) if state.scripts else [(0, text_chunk("No script."))]
        if isinstance(script, int):
            return web.Response(status=script, text="scripted failure")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for delay, chunk in script:
            await asyncio.sleep(delay)
            for part in (chunk, chunk.get("_then")):
                if part:
                    data = {k: v for k, v in part.items() if k != "_then"}
                    await response.write(f"data: {json.dumps(data)}\n\n".encode())
            state.last_chunk_at = time.monotonic()
        await response.write(b"data: [DONE]\n\n")
        state.completed += 1
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner, url = await serve(app)
    state.base_url = url + "/v1"
    try:
        yield state
    finally:
        await runner.cleanup()
