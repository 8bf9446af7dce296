"""Dialplans: loading errors with file:line, intent matching, and the dialog's turns."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.dialog.base import CallerDigits, CallerText, CallStarted, Hangup, Say
from bridge.dialog.dialplan import DialplanDialog, DialplanError, DialplanLibrary, load_dialplan

REPO = Path(__file__).resolve().parents[2]

PLAN = """\
name: test
greeting: Hello there.
intents:
  - name: hours
    keywords: [hours, open]
    say: We are open all day.
  - name: bye
    keywords: [bye, "that's all"]
    say: Goodbye.
    hangup: true
fallback: Pardon?
max_fallbacks: 2
"""


@pytest.fixture
def plan(tmp_path: Path):
    path = tmp_path / "test.yaml"
    path.write_text(PLAN)
    return load_dialplan(path)


async def outputs(dialog: DialplanDialog, event) -> list:
    return [o async for o in dialog.respond(event)]


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("When are you open?", "hours"),
        ("what are your HOURS", "hours"),
        ("ok that's all bye", "bye"),
        ("bye", "bye"),
        ("goodbye", None),  # whole words only
        ("reopen", None),
        ("", None),
    ],
)
def test_intent_matching(plan, text: str, intent: str | None) -> None:
    match = plan.match(text)
    assert (match.name if match else None) == intent


async def test_dialog_turns(plan) -> None:
    dialog = DialplanDialog(plan)
    assert await outputs(dialog, CallStarted()) == [Say("Hello there.")]
    assert await outputs(dialog, CallerText("are you open")) == [Say("We are open all day.")]
    assert await outputs(dialog, CallerText("mumble")) == [Say("Pardon?")]
    # The second miss in a row gives up politely.
    assert await outputs(dialog, CallerDigits("7")) == [
        Say(plan.goodbye),
        Hangup("no-match"),
    ]


async def test_hangup_intent(plan) -> None:
    dialog = DialplanDialog(plan)
    assert await outputs(dialog, CallerText("bye")) == [Say("Goodbye."), Hangup("intent:bye")]


def test_dialog_remembers_what_was_heard(plan) -> None:
    dialog = DialplanDialog(plan)
    dialog.bot_turn_heard("Hello there.", "Hello", interrupted=True)
    assert dialog.history == [("bot", "Hello")]


INTENT = "name: x\ngreeting: hi\nintents:\n  - name: a\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("greeting: hi\n", ":1: (top level): missing 'name'"),
        ("name: x\n", ":1: (top level): missing 'greeting'"),
        (INTENT + "    say: s\n", ":4: intents: intent 'a' has no keywords"),
        (INTENT + "    keywords: [k]\n", ":4: intents: missing required key 'say'"),
        ("name: x\ngreeting: hi\nintents:\n  - nam: a\n", ":4: intents.nam: unknown key"),
        ("name: x\ngreeting: hi\nmax_fallbacks: many\n", ":3: max_fallbacks: expected an integer"),
    ],
)  # fmt: skip
def test_invalid_dialplans_name_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(DialplanError) as error:
        load_dialplan(path)
    assert str(error.value).startswith(str(path))
    assert expected in str(error.value)


def test_library_loads_shipped_dialplans_and_rejects_unknown_names() -> None:
    library = DialplanLibrary(REPO / "dialplans")
    assert "customer-service" in library.names()
    assert library.get("customer-service").match("opening hours").name == "opening_hours"
    with pytest.raises(DialplanError, match="unknown dialplan 'nope'"):
        library.get("nope")


def test_library_rejects_duplicate_names(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: same\ngreeting: hi\n")
    (tmp_path / "b.yaml").write_text("name: same\ngreeting: hi\n")
    with pytest.raises(DialplanError, match="defined twice"):
        DialplanLibrary(tmp_path)
