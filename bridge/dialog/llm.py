"""Free conversation: an OpenAI-compatible streaming chat endpoint, spoken as it is generated.

Any endpoint speaking the OpenAI chat-completions protocol works (DashScope's compatible mode
for Qwen, vLLM, Ollama...). Three things matter on a phone line:

* Latency: tokens are cut into sentences (`SentenceSplitter`) so the first one is synthesised
  and played while the model is still writing the rest. The HTTP stream is read by its own task,
  so the model never waits on the TTS and a stalled stream cannot cancel the caller's audio.
* Truth: the `Context` keeps what the caller actually heard. Each spoken sentence is confirmed
  by the playout's report; a barge-in leaves exactly the heard words in the assistant message,
  which is marked ``interrupted``.
* Bounded cost: the context keeps the last ``max_turns`` caller turns and drops the oldest ones
  while the estimated token count exceeds ``max_context_tokens``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from bridge.dialog.dialplan import LlmConfig, LlmTool


class LlmError(Exception):
    """The model could not give an answer (HTTP error, timeout, malformed stream)."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


# --- sentences -----------------------------------------------------------------------------

_CJK_END = "。！？；"
_LATIN_END = ".!?;:"


class SentenceSplitter:
    """Cuts streamed text into chunks worth synthesising on their own.

    A Latin sentence ends at ``.!?;:`` followed by a space (so "3.5" and "e.g.x" stay whole);
    CJK punctuation ends one at once. Chunks shorter than ``min_chars`` (a CJK character counting
    as three) wait for the next sentence
    ("Sure." alone sounds clipped), and a run-on longer than ``max_chars`` is cut at a comma.
    """

    def __init__(self, min_chars: int = 12, max_chars: int = 160) -> None:
        self.min_chars = min_chars
        self.max_chars = max_chars
        self._buffer = ""

    def feed(self, text: str) -> list[str]:
        self._buffer += text
        out: list[str] = []
        start = 0
        for i, ch in enumerate(self._buffer):
            at_end = ch in _CJK_END or (
                ch in _LATIN_END and i + 1 < len(self._buffer) and self._buffer[i + 1].isspace()
            )
            long_clause = ch in ",，" and i - start >= self.max_chars
            chunk = self._buffer[start : i + 1].strip()
            if (at_end or long_clause) and _weight(chunk) >= self.min_chars:
                out.append(chunk)
                start = i + 1
        self._buffer = self._buffer[start:]
        return out

    def flush(self) -> str | None:
        rest, self._buffer = self._buffer.strip(), ""
        return rest or None


def _weight(text: str) -> int:
    """Length in Latin characters: a CJK character says about as much as a short word."""
    return sum(3 if ord(ch) >= 0x2E80 else 1 for ch in text)


# --- context -------------------------------------------------------------------------------


@dataclass
class _Piece:
    """One spoken sentence; ``heard`` stays None until the playout reports on it."""

    said: str
    heard: str | None = None
    interrupted: bool = False


@dataclass
class Message:
    role: Literal["user", "assistant", "tool"]
    content: str = ""  # user and tool messages
    pieces: list[_Piece] = field(default_factory=list)  # assistant: what was spoken
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str = ""

    @property
    def text(self) -> str:
        """What the other side got: for the assistant, the heard words (or all, while playing)."""
        if self.role != "assistant":
            return self.content
        parts = (p.said if p.heard is None else p.heard for p in self.pieces)
        return " ".join(part for part in parts if part)

    @property
    def interrupted(self) -> bool:
        return any(piece.interrupted for piece in self.pieces)

    def wire(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role, "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
                }
                for call in self.tool_calls
            ]
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        return message


def estimate_tokens(text: str) -> int:
    """Rough count (about 4 Latin characters, or 1 CJK character, per token)."""
    return 1 + math.ceil(sum(1.0 if ord(ch) >= 0x2E80 else 0.25 for ch in text))


class Context:
    """The conversation as the caller experienced it, and its bounded wire form."""

    def __init__(self, max_turns: int, max_tokens: int) -> None:
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.messages: list[Message] = []
        self._unconfirmed: deque[_Piece] = deque()

    def add_user(self, text: str) -> None:
        self.messages.append(Message("user", text))

    def add_spoken(self, said: str) -> None:
        """The bot is saying ``said`` (a scripted prompt or an LLM sentence)."""
        last = self.messages[-1] if self.messages else None
        if last is None or last.role != "assistant" or last.tool_calls:
            last = Message("assistant")
            self.messages.append(last)
        piece = _Piece(said)
        last.pieces.append(piece)
        self._unconfirmed.append(piece)

    def heard(self, said: str, heard: str, interrupted: bool) -> None:
        """The playout's report on one utterance, matched to the oldest unconfirmed sentence."""
        for piece in self._unconfirmed:
            if piece.said == said:
                piece.heard, piece.interrupted = heard, interrupted
                self._unconfirmed.remove(piece)
                return

    def add_tool_calls(self, calls: list[ToolCall]) -> None:
        last = self.messages[-1] if self.messages else None
        if last is None or last.role != "assistant" or last.tool_calls:
            last = Message("assistant")
            self.messages.append(last)
        last.tool_calls = list(calls)

    def add_tool_result(self, call_id: str, content: str) -> None:
        self.messages.append(Message("tool", content, tool_call_id=call_id))

    def wire(self, system: str) -> list[dict[str, Any]]:
        """Messages for the next request: the system prompt, then the most recent turns."""
        turns: list[list[Message]] = [[]]
        for message in self.messages:
            if message.role == "user":
                turns.append([])
            turns[-1].append(message)
        turns = [turn for turn in turns if turn][-self.max_turns :]
        wired = [
            [m.wire() for m in turn if m.text or m.role != "assistant" or m.tool_calls]
            for turn in turns
        ]
        budget = self.max_tokens - estimate_tokens(system)
        sizes = [sum(estimate_tokens(m["content"]) for m in turn) for turn in wired]
        while len(wired) > 1 and sum(sizes) > budget:
            wired.pop(0)
            sizes.pop(0)
        return [{"role": "system", "content": system}, *(m for turn in wired for m in turn)]


# --- the endpoint --------------------------------------------------------------------------


def tool_specs(tools: list[LlmTool]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": {
                    "type": "object",
                    "properties": {
                        name: {"type": "string", "description": description}
                        for name, description in tool.parameters.items()
                    },
                    "required": list(tool.parameters),
                },
            },
        }
        for tool in tools
    ]


class ChatClient:
    """Streams one chat completion: text deltas, then the tool calls (assembled from deltas)."""

    def __init__(self, session: aiohttp.ClientSession, config: LlmConfig) -> None:
        self.session = session
        self.config = config

    async def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[str | ToolCall]:
        """Yield text as it arrives, then tool calls; raise `LlmError` on any failure.

        The HTTP stream is read by a task of its own, so its timeouts cannot fire into whatever
        the consumer is awaiting, and closing this iterator stops the generation at once.
        """
        queue: asyncio.Queue[str | ToolCall | BaseException | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read(messages, tools, queue.put_nowait))
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        put: Callable[[str | ToolCall | BaseException | None], None],
    ) -> None:
        config = self.config
        payload: dict[str, Any] = {
            "model": config.model,
            "messages": messages,
            "stream": True,
            "temperature": config.temperature,
            "max_tokens": config.max_tokens,
        }
        if tools:
            payload["tools"] = tools
        key = os.environ.get(config.api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        url = config.base_url.rstrip("/") + "/chat/completions"
        calls: dict[int, dict[str, str]] = {}
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(config.first_token_timeout_s) as deadline:
                async with self.session.post(url, json=payload, headers=headers) as response:
                    if response.status != 200:
                        detail = (await response.text())[:200]
                        raise LlmError(f"HTTP {response.status}: {detail}")
                    first = True
                    async for chunk in _events(response):
                        if first:
                            deadline.reschedule(loop.time() + config.timeout_s)
                            first = False
                        for choice in chunk.get("choices") or []:
                            delta = choice.get("delta") or {}
                            if delta.get("content"):
                                put(delta["content"])
                            for part in delta.get("tool_calls") or []:
                                _merge_tool_call(calls.setdefault(part.get("index", 0), {}), part)
            for index in sorted(calls):
                put(_tool_call(calls[index]))
            put(None)
        except TimeoutError:
            put(LlmError("the model took too long"))
        except (aiohttp.ClientError, ValueError, LlmError) as exc:
            put(exc if isinstance(exc, LlmError) else LlmError(f"{type(exc).__name__}: {exc}"))


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream, up to ``[DONE]``."""
    async for raw in response.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        yield json.loads(data)


def _merge_tool_call(call: dict[str, str], part: dict[str, Any]) -> None:
    function = part.get("function") or {}
    if part.get("id"):
        call["id"] = part["id"]
    if function.get("name"):
        call.setdefault("name", function["name"])  # some servers repeat it in every delta
    call["arguments"] = call.get("arguments", "") + (function.get("arguments") or "")


def _tool_call(call: dict[str, str]) -> ToolCall:
    try:
        arguments = json.loads(call.get("arguments") or "{}")
    except ValueError:
        arguments = {}
    if not isinstance(arguments, dict):
        arguments = {}
    return ToolCall(call.get("id", ""), call.get("name", ""), arguments)
