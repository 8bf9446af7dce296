"""Whole calls over WebRTC with a real aiortc peer, on the embedded engines.

Assertions are on what the caller hears: the bot audio the peer received is transcribed with the
embedded recogniser, and barge-in is timed from the moment the caller's speech left the peer.
"""

from __future__ import annotations

import asyncio
import wave

import numpy as np
import pytest

from tests.e2e.webrtc_caller import RATE, WebRtcCaller, call_record, is_bot_final

pytestmark = pytest.mark.slow


async def test_greeting_and_intent_answer(bridge_server, speak, transcribe) -> None:
    base_url, bridge = bridge_server
    caller = WebRtcCaller(base_url)
    await caller.connect()
    try:
        greeting = await caller.wait_event(is_bot_final, timeout=60)
        assert greeting["interrupted"] is False
        await asyncio.sleep(0.5)
        caller.mic.say(speak("What are your opening hours?", RATE))
        await caller.wait_event(
            lambda e: is_bot_final(e) and e is not greeting and "open" in str(e.get("text")),
            timeout=60,
        )
        heard = transcribe(caller.received.samples(), RATE).lower()
    finally:
        await caller.close()

    assert "thank you for calling" in heard
    assert "monday to friday" in heard or "nine in the morning" in heard

    folder, lines, meta = await call_record(bridge, caller.call_id)
    caller_lines = [x for x in lines if x["who"] == "caller" and "text" in x]
    assert any("hours" in x["text"].lower() for x in caller_lines)
    bot_lines = [x for x in lines if x["who"] == "bot"]
    assert bot_lines[0]["interrupted"] is False
    assert bot_lines[0]["heard"] == bot_lines[0]["text"]
    with wave.open(str(folder / "recording.wav")) as wav:
        assert wav.getnchannels() == 2
        audio = np.frombuffer(wav.readframes(wav.getnframes()), np.int16).reshape(-1, 2)
    assert np.abs(audio[:, 0]).max() > 1000, "caller channel is silent"
    assert np.abs(audio[:, 1]).max() > 1000, "bot channel is silent"
    assert meta["end_reason"] in {"hangup", "peer-gone"}


async def test_barge_in_stops_the_greeting(bridge_server, speak, transcribe) -> None:
    base_url, bridge = bridge_server
    caller = WebRtcCaller(base_url)
    await caller.connect()
    try:
        # Well into the greeting.
        await caller.say_into_greeting(speak("What are your opening hours?", RATE), after=1.5)
        cut = await caller.wait_event(is_bot_final, timeout=30)
        onset = caller.mic.speech_started_at[0]
        answer = await caller.wait_event(
            lambda e: is_bot_final(e) and e is not cut and "open" in str(e.get("text")),
            timeout=60,
        )
    finally:
        await caller.close()

    # The greeting was cut, and the dialog knows only the part the caller heard.
    assert cut["interrupted"] is True
    said, heard = str(cut["said"]), str(cut["text"])
    assert heard and said.startswith(heard) and len(heard) < len(said) // 2
    assert answer["interrupted"] is False

    # Bot audio stops soon after the caller starts talking: the first silent stretch after
    # onset starts within the bound (VAD onset + flush + network/jitter buffers).
    loud = [t for t in caller.received.loud_frames() if t > onset]
    greeting_tail = [t for t in loud if t < onset + 2.0 and not _after_gap(loud, t)]
    last_greeting_frame = max(greeting_tail, default=onset)
    assert last_greeting_frame - onset < 0.6, f"bot kept talking {last_greeting_frame - onset:.3f}s"

    _, lines, _ = await call_record(bridge, caller.call_id)
    greeting = next(x for x in lines if x["who"] == "bot")
    assert greeting["interrupted"] is True and greeting["heard"] == heard


def _after_gap(times: list[float], t: float, gap: float = 0.3) -> bool:
    """Whether ``t`` comes after a silence of ``gap`` s (i.e. belongs to the bot's next turn)."""
    earlier = [x for x in times if x < t]
    return bool(earlier) and any(
        b - a > gap for a, b in zip(earlier, [*earlier[1:], t], strict=True)
    )


async def test_vanished_peer_ends_the_call_and_keeps_its_record(bridge_server) -> None:
    base_url, bridge = bridge_server
    bridge.config.calls.no_media_timeout_s = 2.0
    caller = WebRtcCaller(base_url)
    await caller.connect()
    try:
        await caller.wait_event(lambda e: e.get("type") == "state", timeout=60)
        caller.mic.stop()  # the caller's audio stops arriving, nobody says goodbye
        folder, lines, meta = await call_record(bridge, caller.call_id, timeout=15)
    finally:
        await caller.close()
    assert meta["end_reason"] == "no-media"
    greeting = next(x for x in lines if x["who"] == "bot")
    assert greeting["interrupted"] is True  # cut by the hang-up, and recorded as such
    assert lines[-1]["who"] == "system" and lines[-1]["text"] == "call ended: no-media"
    with wave.open(str(folder / "recording.wav")) as wav:
        assert wav.getnchannels() == 2 and wav.getnframes() > 0
    assert not bridge.calls
