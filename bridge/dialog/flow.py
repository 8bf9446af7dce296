"""A dialplan's scripted flow as a state machine: caller events in, effects out, no I/O.

`Flow` walks steps until one waits for the caller (listen, collect, llm), needs a webhook or
the answering-machine verdict (amd), or hangs up. The work it cannot do itself comes out as
effects for the dialog to carry out and feed back: `Fetch` (then `webhook_done`), `Converse`
(an LLM turn; its tool calls come back through `tool`) and `DetectMachine` (the call answers
with a `MachineDetected` event). Keeping this pure makes every branch testable with plain
events and no clock: silence arrives as a `NoInput` event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from bridge.dialog.base import (
    CallerDigits,
    CallerText,
    CallStarted,
    DetectMachine,
    DialogEvent,
    Hangup,
    MachineDetected,
    NoInput,
    Say,
    Transfer,
)
from bridge.dialog.dialplan import Collect, Dialplan, Listen, LlmStep, LlmTool, Step
from bridge.dialog.nlu import keyed_slot, match_intent, parse_slot, yes_no
from bridge.dialog.template import lookup, render, render_prompt
from bridge.dialog.webhook import WebhookRequest, WebhookResult, build_request

log = logging.getLogger(__name__)

MAX_CHAIN = 50  # steps run for one event before the flow is declared to be looping


@dataclass(frozen=True, slots=True)
class Fetch:
    """Perform this webhook request and report with `Flow.webhook_done`."""

    request: WebhookRequest


@dataclass(frozen=True, slots=True)
class Converse:
    """Hand the caller's last turn to the LLM; report its tool calls with `Flow.tool`."""

    instructions: str


Effect = Say | Hangup | Transfer | Fetch | Converse | DetectMachine


class Flow:
    """One call's position in a dialplan, and its variables."""

    def __init__(self, plan: Dialplan, variables: dict[str, Any] | None = None) -> None:
        self.plan = plan
        self.variables: dict[str, Any] = {**plan.variables, **(variables or {})}
        self.step: str | None = None  # the step waiting for the caller or a webhook
        self.ended = False
        self._attempts = 0
        self._digits = ""  # keys pressed so far for a collect
        self._confirming = False
        self._fetching = False

    @property
    def no_input_timeout(self) -> float | None:
        """How long to wait for the caller now; None when the flow is not waiting for them."""
        waits = self._waits()
        if waits is None or self.ended or self._fetching:
            return None
        return waits.timeout_s or self.plan.no_input_timeout_s

    def handle(self, event: DialogEvent) -> list[Effect]:
        if isinstance(event, CallStarted):
            return self._run(self.plan.start)
        if self.ended or self._fetching or self.step is None:
            return []  # a lookup decides where the flow goes; caller input waits for it
        step = self.plan.steps[self.step]
        if isinstance(event, CallerText | CallerDigits):
            self.variables["last_input"] = input_text(event)
        if step.listen is not None:
            return self._listen(step, step.listen, event)
        if step.collect is not None:
            return self._collect(step, step.collect, event)
        if step.llm is not None:
            return self._llm(step, step.llm, event)
        if step.amd is not None and isinstance(event, MachineDetected):
            return self._detected(step, event)
        return []  # e.g. the greeting's words while answering-machine detection runs

    def webhook_done(self, result: WebhookResult) -> list[Effect]:
        assert self.step is not None and self._fetching, "webhook_done without a webhook"
        self._fetching = False
        step = self.plan.steps[self.step]
        assert step.webhook is not None
        if result.ok:
            hook = self.plan.webhooks[step.webhook]
            self.variables[hook.result or step.webhook] = result.data
            return self._run(step.goto)
        log.warning(
            "dialplan %s: webhook %s failed: %s", self.plan.name, step.webhook, result.error
        )
        self.variables["webhook_error"] = result.error
        return self._run(step.on_error or step.goto)

    def tool(self, tool: LlmTool, arguments: dict[str, Any]) -> list[Effect]:
        """Carry out an LLM tool call that maps to a flow action (not webhooks: see `fetch`)."""
        self.variables.update(arguments)
        if tool.goto is not None:
            return self._run(tool.goto)
        if tool.transfer is not None:
            return [Transfer(render(tool.transfer, self.variables))]
        if tool.hangup is not None:
            self.ended = True
            return [Hangup(tool.hangup)]
        return []

    def fetch(self, tool: LlmTool, arguments: dict[str, Any]) -> WebhookRequest:
        """The request for an LLM's webhook tool call (its arguments become variables)."""
        assert tool.webhook is not None
        self.variables.update(arguments)
        return build_request(self.plan.webhooks[tool.webhook], self.variables)

    def tool_result(self, tool: LlmTool, result: WebhookResult) -> None:
        assert tool.webhook is not None
        if result.ok:
            self.variables[self.plan.webhooks[tool.webhook].result or tool.webhook] = result.data

    def llm_failed(self) -> list[Effect]:
        """The LLM could not answer (the dialog already said its fallback)."""
        step = self.plan.steps[self.step] if self.step else None
        if step is not None and step.on_error is not None:
            return self._run(step.on_error)
        return []

    # --- running steps -------------------------------------------------------------------

    def _run(self, name: str | None, answer_now: bool = False) -> list[Effect]:
        """Enter ``name`` and the steps after it until one waits. ``answer_now``: an llm step
        answers the caller's last turn at once (speech a listen step could not place)."""
        out: list[Effect] = []
        for _ in range(MAX_CHAIN):
            if name is None:
                return [*out, *self._end("end-of-flow")]
            step = self.plan.steps[name]
            self.step, self._attempts, self._digits, self._confirming = name, 0, "", False
            for variable, template in step.set.items():
                self.variables[variable] = render(template, self.variables)
            if step.say:
                out.append(self._say(step, step.say))
            if step.webhook is not None:
                self._fetching = True
                request = build_request(self.plan.webhooks[step.webhook], self.variables)
                return [*out, Fetch(request)]
            if step.amd is not None:
                return [*out, DetectMachine(step.amd)]
            if step.llm is not None and answer_now:
                return [*out, Converse(step.llm.instructions)]
            if step.waits is not None:
                return out
            if step.transfer is not None:
                out.append(Transfer(render(step.transfer, self.variables)))
                if step.goto is None:
                    self.ended = True  # the transport ends the call once the caller is moved
                    return out
            if step.hangup is not None:
                self.ended = True
                return [*out, Hangup(step.hangup)]
            name = self._branch(step) if step.branch is not None else step.goto
        log.error("dialplan %s: more than %d steps without waiting", self.plan.name, MAX_CHAIN)
        return [*out, *self._end("flow-loop")]

    def _branch(self, step: Step) -> str | None:
        assert step.branch is not None
        value = lookup(self.variables, step.branch.variable)
        text = "" if value is None else render("{{ v }}", {"v": value})
        return step.branch.cases.get(text.lower(), step.goto)

    def _end(self, reason: str) -> list[Effect]:
        self.ended = True
        return [Hangup(reason)]

    def _say(self, step: Step, template: str) -> Say:
        barge_in = self.plan.barge_in if step.barge_in is None else step.barge_in
        return Say(render_prompt(template, self.variables), barge_in, step.dtmf_barge_in)

    def _waits(self) -> Listen | Collect | LlmStep | None:
        return None if self.step is None else self.plan.steps[self.step].waits

    def _retry(self, step: Step, kind: str, prompt: str | None = None) -> list[Effect]:
        """A turn that got nothing usable: reprompt, or give up after ``max_attempts``."""
        waits = step.waits
        assert waits is not None
        self._attempts += 1
        if self._attempts >= waits.max_attempts:
            log.info("dialplan %s: step %s failed (%s)", self.plan.name, self.step, kind)
            if waits.on_failure is not None:
                return self._run(waits.on_failure)
            self.ended = True
            return [self._say(step, self.plan.goodbye), Hangup(kind)]
        prompts = waits.no_input if kind == "no-input" else waits.no_match
        if prompt is None:
            prompt = prompts[min(self._attempts, len(prompts)) - 1] if prompts else step.say
        return [self._say(step, prompt)] if prompt else []

    # --- waiting steps ---------------------------------------------------------------------

    def _listen(self, step: Step, listen: Listen, event: DialogEvent) -> list[Effect]:
        if isinstance(event, NoInput):
            return self._retry(step, "no-input")
        if isinstance(event, CallerDigits):
            target = listen.dtmf.get(event.digits[:1])
            return self._run(target) if target else self._retry(step, "no-match")
        assert isinstance(event, CallerText)
        match = match_intent(listen.intents, event.text)
        if match is not None:
            log.info("dialplan %s: intent %s", self.plan.name, match.intent.name)
            self.variables.update(match.variables)
            self.variables["intent"] = match.intent.name
            return self._run(match.intent.goto)
        if listen.otherwise is not None:
            return self._run(listen.otherwise, answer_now=True)
        return self._retry(step, "no-match")

    def _collect(self, step: Step, collect: Collect, event: DialogEvent) -> list[Effect]:
        if self._confirming:
            return self._confirm(step, collect, event)
        if isinstance(event, NoInput):
            if self._digits:  # keys pressed, then a pause: take what was keyed
                return self._accept(step, collect, keyed_slot(collect, self._digits))
            return self._retry(step, "no-input")
        if isinstance(event, CallerText):
            return self._accept(step, collect, parse_slot(collect, event.text))
        assert isinstance(event, CallerDigits)
        if collect.type not in ("digits", "number"):
            return self._accept(step, collect, keyed_slot(collect, event.digits))
        for key in event.digits:
            if key == "*":
                self._digits = ""
            elif key == collect.terminator:
                return self._accept(step, collect, keyed_slot(collect, self._digits))
            elif key.isdigit():
                self._digits += key
                if collect.max_length and len(self._digits) >= collect.max_length:
                    return self._accept(step, collect, keyed_slot(collect, self._digits))
        return []

    def _accept(self, step: Step, collect: Collect, value: str | None) -> list[Effect]:
        self._digits = ""
        if value is None:
            return self._retry(step, "no-match")
        self.variables[collect.slot] = value
        if collect.confirm:
            self._confirming = True
            return [self._say(step, collect.confirm)]
        return self._run(step.goto)

    def _confirm(self, step: Step, collect: Collect, event: DialogEvent) -> list[Effect]:
        answer: bool | None = None
        if isinstance(event, CallerText):
            answer = yes_no(event.text)
        elif isinstance(event, CallerDigits):
            answer = {"1": True, "2": False}.get(event.digits[:1])
        if answer:
            return self._run(step.goto)
        if answer is False:  # wrong value: ask for it again
            self._confirming = False
            return self._retry(step, "no-match", step.say)
        assert collect.confirm is not None
        return self._retry(
            step, "no-input" if isinstance(event, NoInput) else "no-match", collect.confirm
        )

    def _detected(self, step: Step, event: MachineDetected) -> list[Effect]:
        amd = step.amd
        assert amd is not None
        self.variables["amd"] = {"result": event.result, "cause": event.cause, "beep": event.beep}
        log.info("dialplan %s: answered by %s (%s)", self.plan.name, event.result, event.cause)
        unknown = amd.on_unknown or amd.on_human
        target = {"human": amd.on_human, "machine": amd.on_machine, "unknown": unknown}
        return self._run(target[event.result] or step.goto)

    def _llm(self, step: Step, llm: LlmStep, event: DialogEvent) -> list[Effect]:
        if isinstance(event, NoInput):
            return self._retry(step, "no-input")
        self._attempts = 0
        return [Converse(llm.instructions)]


def input_text(event: CallerText | CallerDigits) -> str:
    """A caller turn as text (keys pressed become a note the LLM can read)."""
    return event.text if isinstance(event, CallerText) else f"(keyed {event.digits})"
