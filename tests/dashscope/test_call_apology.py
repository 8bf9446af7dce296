"""The ``apology`` policy when the cloud recogniser fails mid-call: the caller hears the apology,
then the call goes on with the embedded recogniser, or ends, as configured."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.dialog.base import CallerText, CallStarted, Say
from bridge.emulator.faults import Faults
from bridge.emulator.server import Emulator
from bridge.speech.dashscope import Apology, FallbackASR, FunASR
from bridge.speech.dashscope.settings import DashScopeSettings
from tests.emulator.fakes import FixedASR
from tests.test_call import LoudnessVad, Running, ScriptedDialog, open_call, until

pytestmark = pytest.mark.timeout(30)
SORRY = "Sorry I cannot hear you"


async def talk(running: Running, *, loud: bool, frames: int) -> None:
    """Caller audio in 20 ms frames, with bot frames pulled alongside as the transport would."""
    for _ in range(frames):
        running.caller(loud=loud)
        await running.play(1)
        await asyncio.sleep(0.002)


async def play_until(running: Running, predicate: Callable[[], bool]) -> None:
    """Pull bot frames (the transport's clock) until ``predicate`` holds."""
    for _ in range(500):
        if predicate():
            return
        await running.play(1)
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached in time")


def bot_said(running: Running) -> list[str]:
    return [str(n["said"]) for n in running.notes if n.get("who") == "bot" and n.get("final")]


@pytest.mark.parametrize("hang_up", [False, True])
async def test_lost_recogniser_is_apologised_for(
    emulator: Emulator,
    settings: DashScopeSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    hang_up: bool,
) -> None:
    monkeypatch.setattr("bridge.call.Vad", LoudnessVad)
    emulator.faults = Faults(fail_after_frames=3)  # every recognition task fails after 300 ms
    primary = FunASR(settings)
    asr = FallbackASR(primary, FixedASR("local words"), apology=Apology(SORRY, hang_up=hang_up))
    dialog = ScriptedDialog({CallStarted: [Say("hello")], CallerText: [Say("got it")]})
    call, notes = open_call(tmp_path, dialog, asr)
    running = Running(call, dialog, None, asyncio.create_task(call.run()), notes)  # type: ignore[arg-type]
    try:
        await play_until(running, lambda: bot_said(running) == ["hello"])
        await talk(running, loud=True, frames=50)  # 1 s: the task and its retry both fail
        await until(lambda: len(asr.failures) == 2, timeout=5)
        await talk(running, loud=False, frames=40)
        await play_until(running, lambda: SORRY in bot_said(running))
        if hang_up:
            assert await asyncio.wait_for(running.task, 5) == "speech-service-failed"
        else:  # the embedded recogniser heard the caller (replayed audio): the dialog answers
            await play_until(running, lambda: "got it" in bot_said(running))
            assert CallerText("local words") in dialog.events
            assert await running.end() == "test-done"
    finally:
        if not running.task.done():
            await running.end()
        await primary.aclose()
    heard = [e["heard"] for e in running.bot_record()]
    assert heard[:2] == ["hello", SORRY]
    assert {"who": "system", "text": "recognition failed"}.items() <= running.record()[1].items()
