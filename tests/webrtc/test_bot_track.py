"""The bot's WebRTC track: a steady 20 ms grid while speaking, and a turn's first frame sent as
soon as its audio is queued rather than at the silent grid's next tick."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from bridge.call import Call, CallSettings
from bridge.dialog.base import CallStarted, Say
from bridge.media.frame import AudioFrame
from bridge.media.playout import Playout, PlayoutClock
from bridge.media.recorder import CallRecord
from bridge.speech.base import SpeechChunk
from bridge.webrtc.peer import WEBRTC_RATE, BotAudioTrack
from tests.test_call import LoudnessVad, ScriptedAsr, ScriptedDialog, ToneTts

pytestmark = pytest.mark.timeout(10)


def test_clock_restart_anchors_a_fresh_grid() -> None:
    clock = PlayoutClock(0.020)
    clock.tick(100.0)
    clock.tick(100.020)
    clock.restart(100.027)
    assert clock.time_to_next(100.027) == 0
    assert clock.tick(100.027) == 0
    assert clock.deadline(3) == pytest.approx(100.087)


async def test_a_talkspurt_starts_only_with_the_next_utterance_audio() -> None:
    playout = Playout(8000)
    playout.begin_utterance("a")
    playout.begin_utterance("b")
    waiter = asyncio.create_task(playout.wait_for_start())
    tone = SpeechChunk(AudioFrame(np.full(800, 3000, np.int16), 8000), "word")
    playout.push("b", tone)  # audio, but "a" comes first and has none yet
    await asyncio.sleep(0.01)
    assert not waiter.done() and not playout.starting
    playout.push("a", tone)
    await asyncio.wait_for(waiter, 1)
    playout.next_frame()
    assert playout.speaking and not playout.starting


async def test_first_frame_of_a_turn_goes_out_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bridge.call.Vad", LoudnessVad)
    thinking = asyncio.Event()  # the dialog answers when the test says so
    call = Call(
        call_id="c1",
        dialog=ScriptedDialog({CallStarted: [thinking, Say("hello there")]}),
        asr=ScriptedAsr(),
        tts=ToneTts(),
        record=CallRecord.open(tmp_path, "c1", 8000, {"channel": "test"}),
        output_rate=WEBRTC_RATE,
        settings=CallSettings(),
        notify=lambda note: None,
    )
    running = asyncio.create_task(call.run())
    track = BotAudioTrack(call)
    try:
        for _ in range(3):
            silence = await track.recv()
            assert not silence.to_ndarray().any()
        silent_grid = track._clock.deadline(0)
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.005)  # into the interval: the silent grid's next tick is ahead
        answered_at = loop.time()
        thinking.set()
        first = await track.recv()
        assert first.to_ndarray().any()
        talkspurt = track._clock.deadline(0)
        assert talkspurt >= answered_at and talkspurt != silent_grid  # not the old grid's tick
        for _ in range(3):  # while speaking, frames stay on the talkspurt's grid
            assert (await track.recv()).to_ndarray().any()
        assert track._clock.deadline(0) == talkspurt
    finally:
        call.hangup("test-done")
        await asyncio.wait_for(running, 5)
