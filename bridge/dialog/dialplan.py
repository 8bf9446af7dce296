"""Rule-based dialplans: YAML files in ``dialplans/`` that script a bot without code.

This is the small first form: a greeting, keyword intents with spoken answers (optionally ending
the call), and a fallback that gives up politely after repeated misses. The `Dialog` interface it
implements is the one the richer step-based engine and the LLM dialog implement too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from bridge.dialog.base import (
    CallerDigits,
    CallerText,
    CallStarted,
    Dialog,
    DialogEvent,
    DialogOutput,
    Hangup,
    Say,
)
from bridge.typedyaml import YamlError, load_typed

log = logging.getLogger(__name__)


class DialplanError(ValueError):
    """A dialplan file is invalid (message names file:line and key) or unknown."""


@dataclass
class Intent:
    name: str
    say: str
    keywords: list[str] = field(default_factory=list)
    hangup: bool = False

    def validate(self) -> str | None:
        if not self.keywords:
            return f"intent {self.name!r} has no keywords"
        if not self.say.strip():
            return f"intent {self.name!r} has an empty 'say'"
        return None


@dataclass
class Dialplan:
    name: str = ""
    language: str = "en"
    greeting: str = ""
    greeting_barge_in: bool = True
    intents: list[Intent] = field(default_factory=list)
    fallback: str = "Sorry, I did not catch that."
    max_fallbacks: int = 3
    goodbye: str = "Thank you for calling. Goodbye."

    def validate(self) -> str | None:
        if not self.name:
            return "missing 'name'"
        if not self.greeting.strip():
            return "missing 'greeting'"
        names = [intent.name for intent in self.intents]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            return f"duplicate intent names: {', '.join(duplicates)}"
        return None

    def prompts(self) -> list[str]:
        """Every fixed text the bot may say (synthesised ahead of the first call)."""
        return [self.greeting, *(i.say for i in self.intents), self.fallback, self.goodbye]

    def match(self, text: str) -> Intent | None:
        """The intent with the most keyword hits in ``text`` (file order breaks ties)."""
        words = " " + " ".join(re.findall(r"[a-z0-9']+", text.lower())) + " "
        best: Intent | None = None
        best_hits = 0
        for intent in self.intents:
            hits = sum(1 for keyword in intent.keywords if f" {keyword.lower()} " in words)
            if hits > best_hits:
                best, best_hits = intent, hits
        return best


def load_dialplan(path: Path) -> Dialplan:
    try:
        return load_typed(Dialplan, path)
    except YamlError as exc:
        raise DialplanError(str(exc)) from exc


class DialplanLibrary:
    """Every dialplan in a folder, by name; loaded and validated at start-up."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._plans: dict[str, Dialplan] = {}
        if not directory.is_dir():
            raise DialplanError(f"{directory}: dialplans folder does not exist")
        for path in sorted(directory.glob("*.yaml")):
            plan = load_dialplan(path)
            if plan.name in self._plans:
                raise DialplanError(f"{path}:1: name: dialplan {plan.name!r} is defined twice")
            self._plans[plan.name] = plan

    def names(self) -> list[str]:
        return sorted(self._plans)

    def get(self, name: str) -> Dialplan:
        try:
            return self._plans[name]
        except KeyError:
            raise DialplanError(f"unknown dialplan {name!r}") from None


class DialplanDialog(Dialog):
    """One call walking a `Dialplan`."""

    def __init__(self, plan: Dialplan) -> None:
        self.plan = plan
        self.misses = 0
        self.history: list[tuple[str, str]] = []  # (who, text the other side heard)

    async def respond(self, event: DialogEvent) -> AsyncIterator[DialogOutput]:
        if isinstance(event, CallStarted):
            yield Say(self.plan.greeting, barge_in=self.plan.greeting_barge_in)
            return
        if isinstance(event, CallerDigits):
            text = f"digits {event.digits}"
        elif isinstance(event, CallerText):
            text = event.text
        self.history.append(("caller", text))
        intent = self.plan.match(text)
        if intent is None:
            self.misses += 1
            if self.misses >= self.plan.max_fallbacks:
                yield Say(self.plan.goodbye)
                yield Hangup("no-match")
                return
            yield Say(self.plan.fallback)
            return
        self.misses = 0
        log.info("dialplan %s: intent %s", self.plan.name, intent.name)
        yield Say(intent.say)
        if intent.hangup:
            yield Hangup(f"intent:{intent.name}")

    def bot_turn_heard(self, said: str, heard: str, interrupted: bool) -> None:
        self.history.append(("bot", heard))
