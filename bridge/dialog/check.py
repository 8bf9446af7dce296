"""What makes a well-typed dialplan still wrong: the checks behind ``bridge check``.

Loading (`bridge.typedyaml`) already rejects unknown keys and wrong types. These checks need the
whole file: a ``goto`` naming no step, a step nothing leads to, a listening step with no prompt,
a regex that does not compile, a tool mapped to two actions. Each problem carries its line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from bridge.dialog.dialplan import Dialplan, Step
from bridge.dialog.template import FILTERS, is_ssml, placeholders, ssml_problem
from bridge.typedyaml import Located

DTMF_KEYS = set("0123456789*#")
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    message: str


def problems(plan: Dialplan) -> list[Problem]:
    """Every problem in ``plan``, in file order."""
    found = [*_plan_problems(plan)]
    for name, step in plan.steps.items():
        found += _step_problems(plan, name, step)
    found += _unreachable(plan)
    return sorted(found, key=lambda p: p.line)


def _at(where: Located, key: str, message: str) -> Problem:
    return Problem(where.line_of(key), message)


def _plan_problems(plan: Dialplan) -> Iterator[Problem]:
    if not plan.name:
        yield Problem(1, "name: missing dialplan name")
    if not plan.steps:
        yield _at(plan, "steps", "steps: a dialplan needs at least one step")
    elif plan.start not in plan.steps:
        yield _at(plan, "start", f"start: unknown step {plan.start!r}")
    yield from _prompt_problems(plan, "goodbye", plan.goodbye, "goodbye")
    for name, hook in plan.webhooks.items():
        if not re.match(r"^https?://", hook.url):
            yield _at(hook, "url", f"webhooks.{name}.url: expected an http:// or https:// URL")
        if hook.timeout_s <= 0:
            yield _at(hook, "timeout_s", f"webhooks.{name}.timeout_s: must be positive")
    if plan.llm is None:
        return
    seen: set[str] = set()
    for tool in plan.llm.tools:
        where = f"llm.tools.{tool.name}"
        if not TOOL_NAME.match(tool.name):
            yield _at(tool, "name", f"{where}: a tool name is letters, digits, _ and - only")
        if tool.name in seen:
            yield _at(tool, "name", f"{where}: duplicate tool name")
        seen.add(tool.name)
        if len(tool.actions()) != 1:
            yield _at(tool, "", f"{where}: needs exactly one of {', '.join(tool.ACTIONS)}")
        if tool.goto is not None and tool.goto not in plan.steps:
            yield _at(tool, "goto", f"{where}.goto: unknown step {tool.goto!r}")
        if tool.webhook is not None and tool.webhook not in plan.webhooks:
            yield _at(tool, "webhook", f"{where}.webhook: unknown webhook {tool.webhook!r}")


def _prompt_problems(where: Located, key: str, text: str | None, label: str) -> Iterator[Problem]:
    if text is None:
        return
    if not text.strip():
        yield _at(where, key, f"{label}: empty prompt")
    for _, filter_name in placeholders(text):
        if filter_name and filter_name not in FILTERS:
            yield _at(where, key, f"{label}: unknown filter {filter_name!r}")
    if is_ssml(text):
        problem = ssml_problem(text)
        if problem:
            yield _at(where, key, f"{label}: {problem}")


def _step_problems(plan: Dialplan, name: str, step: Step) -> Iterator[Problem]:
    at = f"steps.{name}"
    actions = step.actions()
    if len(actions) > 1:
        yield _at(step, actions[1], f"{at}: more than one action ({', '.join(actions)})")
    if not actions and step.goto is None:
        yield _at(step, "", f"{at}: dead end: add a goto, or hangup to end the call")
    for key, target in _targets(step):
        if target not in plan.steps:
            yield Problem(key[0].line_of(key[1]), f"{at}.{key[1]}: unknown step {target!r}")
    yield from _prompt_problems(step, "say", step.say, f"{at}.say")
    if step.webhook is not None and step.webhook not in plan.webhooks:
        yield _at(step, "webhook", f"{at}.webhook: unknown webhook {step.webhook!r}")
    if step.llm is not None and plan.llm is None:
        yield _at(step, "llm", f"{at}.llm: the dialplan has no 'llm' section")
    amd = step.amd
    if amd is not None and step.goto is None and not (amd.on_human and amd.on_machine):
        yield _at(amd, "", f"{at}.amd: set on_human and on_machine (or a goto for the rest)")
    waits = step.waits
    if waits is None:
        return
    if waits.max_attempts < 1:
        yield _at(waits, "max_attempts", f"{at}: max_attempts must be at least 1")
    for key in ("no_input", "no_match"):
        for text in getattr(waits, key):
            yield from _prompt_problems(waits, key, text, f"{at}.{key}")
    if step.llm is None and not step.say:
        yield _at(step, "", f"{at}: missing prompt: a step that waits for the caller needs 'say'")
    if step.listen is not None:
        yield from _listen_problems(at, step)
    if step.collect is not None:
        collect = step.collect
        if not collect.slot:
            yield _at(collect, "", f"{at}.collect: missing 'slot' (the variable to fill)")
        if collect.pattern is not None:
            yield from _regex_problems(collect, "pattern", collect.pattern, f"{at}.collect")
        if collect.terminator not in DTMF_KEYS:
            yield _at(collect, "terminator", f"{at}.collect.terminator: not a DTMF key")
        yield from _prompt_problems(collect, "confirm", collect.confirm, f"{at}.collect.confirm")


def _listen_problems(at: str, step: Step) -> Iterator[Problem]:
    listen = step.listen
    assert listen is not None
    if not (listen.intents or listen.dtmf or listen.otherwise):
        yield _at(listen, "", f"{at}.listen: nothing to listen for (intents, dtmf or otherwise)")
    for key in listen.dtmf:
        if len(key) != 1 or key not in DTMF_KEYS:
            yield _at(listen, "dtmf", f"{at}.listen.dtmf: {key!r} is not a DTMF key")
    names: set[str] = set()
    for intent in listen.intents:
        where = f"{at}.listen.intents.{intent.name}"
        if intent.name in names:
            yield _at(intent, "name", f"{where}: duplicate intent name")
        names.add(intent.name)
        if not (intent.keywords or intent.patterns or intent.examples):
            yield _at(intent, "", f"{where}: no keywords, patterns or examples")
        for pattern in intent.patterns:
            yield from _regex_problems(intent, "patterns", pattern, where)


def _regex_problems(where: Located, key: str, pattern: str, label: str) -> Iterator[Problem]:
    try:
        re.compile(pattern)
    except re.error as exc:
        yield _at(where, key, f"{label}: bad regex {pattern!r}: {exc}")


def _targets(step: Step) -> Iterator[tuple[tuple[Located, str], str]]:
    """Every step name ``step`` can lead to, with where it is written."""
    for key in ("goto", "on_error"):
        if getattr(step, key) is not None:
            yield (step, key), getattr(step, key)
    if step.waits is not None and step.waits.on_failure is not None:
        yield (step.waits, "on_failure"), step.waits.on_failure
    if step.listen is not None:
        listen = step.listen
        for intent in listen.intents:
            yield (intent, "goto"), intent.goto
        for target in listen.dtmf.values():
            yield (listen, "dtmf"), target
        if listen.otherwise is not None:
            yield (listen, "otherwise"), listen.otherwise
    if step.branch is not None:
        for target in step.branch.cases.values():
            yield (step.branch, "cases"), target
    if step.amd is not None:
        for key in ("on_human", "on_machine", "on_unknown"):
            if getattr(step.amd, key) is not None:
                yield (step.amd, key), getattr(step.amd, key)


def _unreachable(plan: Dialplan) -> Iterator[Problem]:
    if plan.start not in plan.steps:
        return
    tool_targets = [t.goto for t in plan.llm.tools if t.goto] if plan.llm else []
    reached: set[str] = set()
    todo = [plan.start]
    while todo:
        name = todo.pop()
        if name in reached or name not in plan.steps:
            continue
        reached.add(name)
        step = plan.steps[name]
        todo += [target for _, target in _targets(step)]
        if step.llm is not None:
            todo += tool_targets
    for name, step in plan.steps.items():
        if name not in reached:
            yield _at(step, "", f"steps.{name}: unreachable step (nothing leads to it)")
