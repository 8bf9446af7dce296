"""The dialplan schema: what a YAML file in ``dialplans/`` may say.

A dialplan names the calls it serves, their language and voice, and a flow of named steps. A step
runs, in order: ``set`` (variables), ``say`` (a prompt: text, SSML or a template), one action
(``listen``, ``collect``, ``webhook``, ``transfer``, ``hangup``, ``llm``, ``branch``, ``amd``), then
``goto``. Steps that wait for the caller (listen, collect, llm) share the reprompt settings.
Loading checks types and keys (`bridge.typedyaml`); `bridge.dialog.check` checks the meaning.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

from bridge.campaign.amd import AmdSettings
from bridge.dialog.template import lookup, placeholders, render_prompt
from bridge.typedyaml import Located


class DialplanError(ValueError):
    """A dialplan file is invalid (message names file:line and key) or unknown."""


@dataclass
class Serves(Located):
    """Which calls run this dialplan besides those asking for it by name."""

    webrtc: list[str] = field(default_factory=list)  # the offer's ``dialplan`` field
    sip: list[str] = field(default_factory=list)  # the called user or number


@dataclass
class Reprompts(Located):
    """How a step that waits for the caller copes with silence and with unusable answers."""

    no_input: list[str] = field(default_factory=list)  # said in turn; empty: repeat the prompt
    no_match: list[str] = field(default_factory=list)
    max_attempts: int = 3  # failed turns (silence or no match) before on_failure
    on_failure: str | None = None  # step; None: say goodbye and hang up
    timeout_s: float | None = None  # silence before no-input; None: the dialplan's


@dataclass
class Intent(Located):
    name: str
    goto: str
    keywords: list[str] = field(default_factory=list)  # whole words or phrases
    patterns: list[str] = field(default_factory=list)  # regexes; named groups set variables
    examples: list[str] = field(default_factory=list)  # phrases matched by word overlap


@dataclass
class Listen(Reprompts):
    intents: list[Intent] = field(default_factory=list)
    dtmf: dict[str, str] = field(default_factory=dict)  # key -> step (a DTMF menu)
    otherwise: str | None = None  # step for speech no intent matched (e.g. an llm step)


SlotType = Literal["digits", "number", "yes_no", "text"]


@dataclass
class Collect(Reprompts):
    slot: str = ""  # variable the value goes into
    type: SlotType = "text"
    min_length: int = 1  # digits and text
    max_length: int | None = None  # keyed digits end when this many have been pressed
    minimum: float | None = None  # number
    maximum: float | None = None
    pattern: str | None = None  # a regex the whole value must match
    terminator: str = "#"  # DTMF key ending digit entry early
    confirm: str | None = None  # prompt reading the value back; the caller answers yes or no


@dataclass
class LlmStep(Reprompts):
    instructions: str = ""  # added to the system prompt while this step runs


@dataclass
class Branch(Located):
    variable: str  # dotted name, e.g. order.status
    cases: dict[str, str] = field(default_factory=dict)  # value -> step; else the step's goto


@dataclass
class AmdStep(AmdSettings, Located):
    """Answering-machine detection (thresholds: `AmdSettings`); the result is ``amd.result``
    (human, machine, unknown) with ``amd.cause`` and ``amd.beep``."""

    on_human: str | None = None  # step; None: goto
    on_machine: str | None = None
    on_unknown: str | None = None  # None: as on_human (most dialers talk when unsure)


@dataclass
class Step(Located):
    set: dict[str, str] = field(default_factory=dict)  # name -> template
    say: str | None = None
    barge_in: bool | None = None  # None: the dialplan's
    dtmf_barge_in: bool | None = None  # None: as barge_in
    listen: Listen | None = None
    collect: Collect | None = None
    webhook: str | None = None  # name in the dialplan's webhooks
    transfer: str | None = None  # target (template): sip:agent@host, or a name the page knows
    hangup: str | None = None  # reason
    llm: LlmStep | None = None
    branch: Branch | None = None
    amd: AmdStep | None = None
    on_error: str | None = None  # webhook or LLM failure; None: carry on to goto
    goto: str | None = None

    ACTIONS = ("listen", "collect", "webhook", "transfer", "hangup", "llm", "branch", "amd")

    def actions(self) -> list[str]:
        return [name for name in self.ACTIONS if getattr(self, name) is not None]

    @property
    def waits(self) -> Listen | Collect | LlmStep | None:
        """The reprompt settings of a step that waits for the caller."""
        return self.listen or self.collect or self.llm


@dataclass
class Webhook(Located):
    url: str  # template; variables are URL-encoded
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    headers: dict[str, str] = field(default_factory=dict)  # templates; ${ENV} not supported
    body: dict[str, str] | None = None  # JSON object of templates
    timeout_s: float = 3.0
    result: str | None = None  # variable for the JSON reply; None: the webhook's name


@dataclass
class LlmTool(Located):
    """A function the LLM may call, mapped to a dialplan action."""

    name: str
    description: str
    parameters: dict[str, str] = field(default_factory=dict)  # name -> description (strings)
    goto: str | None = None  # hand the call to a scripted step
    webhook: str | None = None  # call it; the reply goes back to the LLM
    transfer: str | None = None
    hangup: str | None = None

    ACTIONS = ("goto", "webhook", "transfer", "hangup")

    def actions(self) -> list[str]:
        return [name for name in self.ACTIONS if getattr(self, name) is not None]


@dataclass
class LlmConfig(Located):
    """An OpenAI-compatible chat endpoint (DashScope compatible mode by default)."""

    base_url: str = "https://dashscope.aliyuncs.com/compatible-mode/v1"
    model: str = "qwen-plus"
    api_key_env: str = "DASHSCOPE_API_KEY"  # the key itself never goes in a file
    system_prompt: str = "You are a helpful voice assistant. Answer briefly."
    temperature: float = 0.3
    max_tokens: int = 300
    first_token_timeout_s: float = 8.0
    timeout_s: float = 30.0
    max_turns: int = 20  # caller turns kept in the context
    max_context_tokens: int = 4000  # estimated; oldest turns go first
    fallback: str = "Sorry, I am having trouble answering right now. Could you say that again?"
    tools: list[LlmTool] = field(default_factory=list)


@dataclass
class Dialplan(Located):
    name: str = ""
    description: str = ""
    serves: Serves = field(default_factory=Serves)
    language: str | None = None  # None: the recogniser's configured language
    voice: str | None = None  # None: the TTS's configured voice
    barge_in: bool = True
    no_input_timeout_s: float = 6.0
    variables: dict[str, str] = field(default_factory=dict)
    start: str = "start"
    goodbye: str = "Thank you for calling. Goodbye."  # said before hanging up on failure
    steps: dict[str, Step] = field(default_factory=dict)
    webhooks: dict[str, Webhook] = field(default_factory=dict)
    llm: LlmConfig | None = None
    source: str = field(default="", init=False, compare=False)  # the file it came from

    def prompts(self) -> list[str]:
        """Every prompt that needs no call variables, as spoken (synthesised ahead of calls)."""
        texts = [self.goodbye, self.llm.fallback if self.llm else None]
        for step in self.steps.values():
            texts.append(step.say)
            if step.waits is not None:
                texts += [*step.waits.no_input, *step.waits.no_match]
            if step.collect is not None:
                texts.append(step.collect.confirm)
        # A variable may also take constant values that steps ``set`` (e.g. a menu prompt that
        # changes after the first turn): every such value is a prompt the caller can hear.
        values: dict[str, list[object]] = {}
        for name in {name for text in texts if text for name, _ in placeholders(text)}:
            candidates = [lookup(self.variables, name)]
            candidates += [
                step.set[name]
                for step in self.steps.values()
                if name in step.set and not placeholders(step.set[name])
            ]
            values[name] = [value for value in candidates if value is not None]
        spoken: set[str] = set()
        for text in filter(None, texts):
            names = sorted({name for name, _ in placeholders(text)})
            for combination in itertools.product(*(values[name] for name in names)):
                variables = {**self.variables, **dict(zip(names, combination, strict=True))}
                spoken.add(render_prompt(text, variables))
        return sorted(spoken)
