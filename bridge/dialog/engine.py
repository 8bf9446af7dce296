"""The dialog a call talks to: runs a dialplan's flow and does its I/O (webhooks, the LLM).

`Flow` decides; this class carries out what it cannot do itself and feeds the outcome back.
Effects still due when the caller barges in survive into the next turn — the prompts they cut are
dropped, but a webhook in flight is simply made again, and a transfer or hang-up still happens.
Everything the bot says and the caller says goes into one `Context`, so the LLM, when it takes
over, knows what the scripted part already said (as far as the caller heard it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from bridge.dialog.base import (
    CallerDigits,
    CallerText,
    Dialog,
    DialogEvent,
    DialogOutput,
    Hangup,
    Say,
)
from bridge.dialog.dialplan import Dialplan, LlmConfig
from bridge.dialog.flow import Converse, Effect, Fetch, Flow, input_text
from bridge.dialog.llm import ChatClient, Context, LlmError, SentenceSplitter, ToolCall, tool_specs
from bridge.dialog.template import render
from bridge.dialog.webhook import perform

log = logging.getLogger(__name__)

MAX_TOOL_ROUNDS = 4  # model → webhook → model ... within one caller turn


class FlowDialog(Dialog):
    """One call running a dialplan (scripted steps, LLM steps, or both)."""

    def __init__(
        self,
        plan: Dialplan,
        session: aiohttp.ClientSession,
        *,
        llm: LlmConfig | None = None,
        variables: dict[str, Any] | None = None,
    ) -> None:
        self.flow = Flow(plan, variables)
        self._given = dict(self.flow.variables)
        self.llm = llm or plan.llm
        self.session = session
        limits = self.llm or LlmConfig()
        self.context = Context(limits.max_turns, limits.max_context_tokens)
        self._due: deque[Effect] = deque()

    def no_input_timeout(self) -> float | None:
        return self.flow.no_input_timeout

    def hangup_due(self) -> Hangup | None:
        return next((e for e in self._due if isinstance(e, Hangup)), None)

    def collected(self) -> dict[str, Any]:
        """The variables the flow set or changed during the call (a campaign keeps them)."""
        return {
            name: value
            for name, value in self.flow.variables.items()
            if name not in self._given or self._given[name] != value
        }

    def bot_turn_heard(self, said: str, heard: str, interrupted: bool) -> None:
        self.context.heard(said, heard, interrupted)

    async def respond(self, event: DialogEvent) -> AsyncIterator[DialogOutput]:
        self._due = deque(e for e in self._due if not isinstance(e, Say))
        if isinstance(event, CallerText | CallerDigits):
            self.context.add_user(input_text(event))
        self._due.extend(self.flow.handle(event))
        while self._due:
            effect = self._due[0]
            if isinstance(effect, Fetch):
                result = await perform(self.session, effect.request)
                self._due.popleft()  # only now: a fetch cut by barge-in is made again
                self._due.extend(self.flow.webhook_done(result))
                continue
            self._due.popleft()
            if isinstance(effect, Converse):
                async for output in self._converse(effect):
                    yield output
            else:
                yield self._spoken(effect) if isinstance(effect, Say) else effect

    def _spoken(self, say: Say) -> Say:
        self.context.add_spoken(say.text)
        return say

    async def _converse(self, converse: Converse) -> AsyncIterator[DialogOutput]:
        """One LLM turn: sentences as they come, tool calls carried out, until it has answered."""
        llm = self.llm
        assert llm is not None, "llm step in a dialplan without llm settings"
        client = ChatClient(self.session, llm)
        system = render(llm.system_prompt, self.flow.variables)
        if converse.instructions:
            system += "\n\n" + render(converse.instructions, self.flow.variables)
        tools = {tool.name: tool for tool in llm.tools}
        specs = tool_specs(llm.tools)
        for _ in range(MAX_TOOL_ROUNDS):
            splitter = SentenceSplitter()
            calls: list[ToolCall] = []
            try:
                async for item in client.stream(self.context.wire(system), specs):
                    if isinstance(item, ToolCall):
                        calls.append(item)
                        continue
                    for sentence in splitter.feed(item):
                        yield self._spoken(Say(sentence))
                rest = splitter.flush()
                if rest:
                    yield self._spoken(Say(rest))
            except LlmError as exc:
                log.warning("dialplan %s: LLM failed: %s", self.flow.plan.name, exc)
                yield self._spoken(Say(llm.fallback))
                self._due.extend(self.flow.llm_failed())
                return
            if not calls:
                return
            self.context.add_tool_calls(calls)
            for call in calls:
                tool = tools.get(call.name)
                if tool is None:
                    self.context.add_tool_result(call.id, json.dumps({"error": "unknown tool"}))
                elif tool.webhook is not None:
                    result = await perform(self.session, self.flow.fetch(tool, call.arguments))
                    self.flow.tool_result(tool, result)
                    reply = result.data if result.ok else {"error": result.error}
                    self.context.add_tool_result(call.id, json.dumps(reply))
                else:
                    log.info("dialplan %s: LLM called %s", self.flow.plan.name, call.name)
                    self.context.add_tool_result(call.id, json.dumps({"ok": True}))
                    self._due.extend(self.flow.tool(tool, call.arguments))
            if self._due or self.flow.ended:
                return  # the flow took over: a hand-off, transfer or hang-up
        yield self._spoken(Say(llm.fallback))


def build_dialog(
    plan: Dialplan,
    session: aiohttp.ClientSession,
    *,
    variables: dict[str, Any] | None = None,
    llm_base_url: str | None = None,
    llm_model: str | None = None,
) -> FlowDialog:
    """The dialog for one call; the endpoint overrides come from the bridge's configuration."""
    llm = plan.llm
    if llm is not None and (llm_base_url or llm_model):
        llm = dataclasses.replace(
            llm, base_url=llm_base_url or llm.base_url, model=llm_model or llm.model
        )
    return FlowDialog(plan, session, llm=llm, variables=variables)
