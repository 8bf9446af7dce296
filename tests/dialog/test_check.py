"""``bridge check`` and the dialplan library: broken files reported as file:line: message,
routing by name and ``serves``, and reloads that never swap in a broken file."""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.dialog.dialplan import DialplanError
from bridge.dialog.library import DialplanLibrary, check_directory

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
name: good
start: menu
steps:
  menu:
    say: Hello.
    listen:
      intents:
        - {name: bye, keywords: [bye], goto: bye}
  bye:
    say: Bye.
    hangup: done
"""

# (file text, line, message fragment): each file has exactly one problem.
BROKEN = {
    "unknown step": (
        GOOD.replace("    listen:\n", "    listen:\n      dtmf: {'1': nowhere}\n"),
        7,
        "steps.menu.dtmf: unknown step 'nowhere'",
    ),
    "unreachable step": (GOOD + "  orphan: {say: Hi., hangup: x}\n", 12, "unreachable step"),
    "missing prompt": (GOOD.replace("    say: Hello.\n", ""), 4, "missing prompt"),
    "bad regex": (
        GOOD.replace("keywords: [bye]", "patterns: ['(bye']"),
        8,
        "bad regex '(bye'",
    ),
    "unknown start": (GOOD.replace("start: menu", "start: main"), 2, "start: unknown step 'main'"),
    "unknown key": (GOOD.replace("say: Bye.", "sya: Bye."), 10, "unknown key"),
    "wrong type": (
        GOOD.replace("    listen:\n", "    listen:\n      max_attempts: lots\n"),
        7,
        "expected an integer, got 'lots'",
    ),
    "two actions": (
        GOOD.replace("hangup: done", "hangup: done\n    transfer: x"),
        11,
        "more than one action",
    ),
    "dead end": (GOOD.replace("    hangup: done\n", ""), 9, "dead end"),
    "unknown webhook": (
        GOOD.replace("hangup: done", "webhook: lookup\n    goto: menu"),
        11,
        "unknown webhook 'lookup'",
    ),
    "bad dtmf key": (
        GOOD.replace("    listen:\n", "    listen:\n      dtmf: {x: bye}\n"),
        7,
        "'x' is not a DTMF key",
    ),
    "llm step without llm settings": (
        GOOD.replace("hangup: done", "llm: {}"),
        11,
        "no 'llm' section",
    ),
    "invalid SSML": (GOOD.replace("say: Bye.", "say: <speak>Bye.</spek>"), 10, "invalid SSML"),
    "unknown template filter": (
        GOOD.replace("say: Bye.", "say: '{{ x | loud }}'"),
        10,
        "unknown filter",
    ),
    "collect without slot": (
        GOOD.replace("hangup: done", "collect: {type: digits}\n    goto: menu"),
        11,
        "missing 'slot'",
    ),
    "tool with two actions": (
        GOOD + "llm:\n  tools:\n    - {name: t, description: d, goto: bye, hangup: x}\n",
        14,
        "needs exactly one of",
    ),
    "invalid YAML": (GOOD.replace("say: Hello.", "say: [Hello"), 6, "invalid YAML"),
}


@pytest.mark.parametrize(("text", "line", "message"), BROKEN.values(), ids=BROKEN.keys())
def test_check_reports_file_line_and_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, line: int, message: str
) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    assert main(["check", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1, out
    assert out[0].startswith(f"{path}:{line}: "), out[0]
    assert message in out[0]


def test_check_reports_every_problem_of_every_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(BROKEN["unknown step"][0])
    (tmp_path / "b.yaml").write_text(BROKEN["bad regex"][0].replace("name: good", "name: b"))
    (tmp_path / "c.yaml").write_text(GOOD.replace("name: good", "name: c"))
    found = check_directory(tmp_path)
    assert [Path(p.split(":")[0]).name for p in found] == ["a.yaml", "b.yaml"]


def test_check_finds_clashes_between_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD + "serves: {webrtc: [help]}\n")
    (tmp_path / "b.yaml").write_text(GOOD + "serves: {webrtc: [help]}\n")
    found = check_directory(tmp_path)
    assert any("name: 'good' is already used" in p for p in found)
    assert any("serves.webrtc: 'help' is already used" in p for p in found)


def test_the_shipped_dialplans_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(REPO / "dialplans")]) == 0
    assert capsys.readouterr().out == ""


def test_server_refuses_an_invalid_folder(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(BROKEN["unknown step"][0])
    with pytest.raises(DialplanError, match=r"a\.yaml:7: .*unknown step"):
        DialplanLibrary(tmp_path)


def test_routing_by_name_and_serves() -> None:
    library = DialplanLibrary(REPO / "dialplans")
    assert library.find("webrtc", "customer-service").name == "customer-service"
    assert library.find("webrtc", "support").name == "customer-service"
    assert library.find("sip", "200").name == "assistant"
    assert library.find("sip", "reminder").name == "appointment-reminder"
    with pytest.raises(DialplanError):
        library.find("webrtc", "nobody")


def _touch(path: Path, text: str) -> None:
    """Write ``text`` with a new mtime even within the file system's timestamp resolution."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(textwrap.dedent(text))
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_reload_swaps_valid_files_and_keeps_the_rest(tmp_path: Path) -> None:
    plan_file = tmp_path / "good.yaml"
    _touch(plan_file, GOOD)
    library = DialplanLibrary(tmp_path)
    running = library.get("good")  # a call in progress holds this object

    _touch(plan_file, GOOD.replace("say: Hello.", "say: Hello again."))
    assert library.reload() == []
    assert library.get("good").steps["menu"].say == "Hello again."
    assert running.steps["menu"].say == "Hello."

    _touch(plan_file, BROKEN["unknown step"][0])
    problems = library.reload()
    assert len(problems) == 1 and "unknown step" in problems[0]
    assert library.get("good").steps["menu"].say == "Hello again."  # the last good version

    _touch(tmp_path / "other.yaml", GOOD.replace("name: good", "name: other"))
    assert library.reload() == []
    assert library.names() == ["good", "other"]

    (tmp_path / "other.yaml").unlink()
    assert library.reload() == []
    assert library.names() == ["good"]


def test_reload_rejects_a_clash(tmp_path: Path) -> None:
    _touch(tmp_path / "a.yaml", GOOD)
    library = DialplanLibrary(tmp_path)
    _touch(tmp_path / "b.yaml", GOOD)  # the same name again
    assert any("already used" in p for p in library.reload())
    assert library.names() == ["good"]


async def test_the_watcher_reloads_without_holding_up_the_event_loop(tmp_path: Path) -> None:
    """An edit picked up while calls run: the (slow) parse happens off the loop, whose other
    work keeps its turn, and the edited plan is served once it checks clean."""
    plan_file = tmp_path / "good.yaml"
    _touch(plan_file, GOOD)
    library = DialplanLibrary(tmp_path)
    padding = "".join(f"# note {i}: {'x' * 60}\n" for i in range(40_000))  # slow to scan
    _touch(plan_file, padding + GOOD.replace("say: Hello.", "say: Hello again."))
    watcher = asyncio.create_task(library.watch(0.001))
    gaps: list[float] = []
    started = last = time.monotonic()
    try:
        while library.get("good").steps["menu"].say != "Hello again.":
            assert time.monotonic() - started < 30, "the edit was never picked up"
            await asyncio.sleep(0.002)
            gaps.append(time.monotonic() - last)
            last = time.monotonic()
    finally:
        watcher.cancel()
    took = time.monotonic() - started
    assert took > 0.3  # the reload was long enough for a stall to show
    assert max(gaps) < took / 2  # a reload on the loop would be one gap as long as all of it
