"""The appointment reminder called out to sipp far ends: a voicemail greeting with a beep gets a
message that starts after the beep; a person who says "hello?" gets the conversation.

Asserted on what the bridge reports (the outbound call's ``amd``), its call record (transcript,
``metrics.amd``) and the stereo recording's timing: caller's beep on the left, bot on the right.
"""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np
import pytest

from bridge.campaign.amd import AmdSettings, tone_of
from tests.campaign.farend import espeak, silence, typical, write
from tests.sip.calls import callee_scenario, rtp_stream, summary, transcript, wait_for_records
from tests.sip.conftest import SipBridge, StartBridge
from tests.sip.sipp import finish, free_port, start_sipp

pytestmark = [pytest.mark.peer, pytest.mark.slow, pytest.mark.timeout(120)]

REMINDER = "appointment-reminder"


async def _call(running: SipBridge, far_end: Path, tmp_path: Path) -> tuple[object, Path]:
    """Dial a sipp far end playing ``far_end`` from the moment it answers; the outbound call
    once finished, and its record folder."""
    port = free_port()
    scenario = callee_scenario(tmp_path / "callee.xml", rtp_stream(far_end, 0))
    sipp = await start_sipp("-sf", str(scenario), "-p", str(port))
    await asyncio.sleep(0.5)  # let sipp bind
    out = running.front.dial(f"sip:patient@127.0.0.1:{port}", dialplan=REMINDER)
    await asyncio.wait_for(out.finished(), 60)
    result = await finish(sipp)
    assert result.returncode == 0, result.output  # sipp answered and got our BYE
    (folder,) = await wait_for_records(running.records)
    return out, folder


def _stereo(folder: Path) -> tuple[np.ndarray, np.ndarray, int]:
    with wave.open(str(folder / "recording.wav")) as wav:
        rate = wav.getframerate()
        both = np.frombuffer(wav.readframes(wav.getnframes()), np.int16).reshape(-1, 2)
    return both[:, 0].copy(), both[:, 1].copy(), rate


def _beep_end_s(caller: np.ndarray, rate: int) -> float:
    """Where the caller channel's last steady tone of 160 ms or more ends (20 ms resolution)."""
    size = rate // 50
    run, end = 0, None
    for index, i in enumerate(range(0, len(caller) - size, size)):
        if tone_of(caller[i : i + size], rate, AmdSettings()) is not None:
            run += 1
        else:
            end, run = (index / 50 if run >= 8 else end), 0
    assert end is not None, "no beep in the caller channel"
    return end


def _onset_s(audio: np.ndarray, rate: int) -> float:
    """The start of the first 20 ms with sound."""
    size = rate // 50
    for i in range(0, len(audio) - size, size):
        if np.sqrt(np.mean(audio[i : i + size].astype(np.float64) ** 2)) > 300:
            return i / rate
    raise AssertionError("silent channel")


async def test_voicemail_gets_the_message_after_the_beep(
    sip_bridge: StartBridge, tmp_path: Path
) -> None:
    running = await sip_bridge(outbound_targets=["sip:*@127.0.0.1"])
    machine = typical("machine")
    assert machine.beep is not None
    # The recording keeps its line open (silence) while the message is left.
    far_end = write(tmp_path / "voicemail.raw", machine, then=silence(15))
    out, folder = await _call(running, far_end, tmp_path)

    assert out.amd == "machine", out  # type: ignore[attr-defined]
    record = summary(folder)
    assert record["end_reason"] == "voicemail", record
    amd = record["metrics"]["amd"]  # type: ignore[index]
    assert amd["result"] == "machine" and amd["beep_s"] is not None, amd
    lines = transcript(folder)
    (beep,) = [x for x in lines if "beep_hz" in x]
    assert abs(float(beep["beep_hz"]) - machine.beep[2]) <= 50, (beep, machine.beep)
    (message,) = [x for x in lines if x["who"] == "bot"]
    assert str(message["text"]).startswith("Hello, this is Riverside Dental with a reminder")
    assert message["interrupted"] is False, message

    caller, bot, rate = _stereo(folder)
    beep_end = _beep_end_s(caller, rate)
    spoke = _onset_s(bot, rate)
    # Nothing from the bot during the greeting; the message follows the beep promptly.
    assert beep_end <= spoke <= beep_end + 1.5, (beep_end, spoke)


async def test_a_person_gets_the_conversation(sip_bridge: StartBridge, tmp_path: Path) -> None:
    running = await sip_bridge(outbound_targets=["sip:*@127.0.0.1"])
    person = typical("human")
    # "Hello?", then, while the notice plays, the answer to the reminder's question.
    answer = espeak("Yes, I will be there.", "en-us", 160)
    far_end = write(tmp_path / "person.raw", person, then=np.concatenate([answer, silence(20)]))
    out, folder = await _call(running, far_end, tmp_path)

    assert out.amd == "human", out  # type: ignore[attr-defined]
    record = summary(folder)
    assert record["metrics"]["amd"]["result"] == "human", record  # type: ignore[index]
    assert record["end_reason"] == "confirmed", record
    bot = [str(x["text"]) for x in transcript(folder) if x["who"] == "bot"]
    assert bot[0].startswith("This is an automated call from Riverside Dental"), bot
    assert any(text.startswith("Thank you. We look forward") for text in bot), bot
    caller, said, rate = _stereo(folder)
    # The bot waited for the person's "hello?" to end before speaking.
    assert _onset_s(said, rate) > _onset_s(caller, rate) + 0.5
