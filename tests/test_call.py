"""One call's pipeline (`bridge.call.Call`) on its own: no network, no models, no audio clock.

A fake recogniser yields the transcripts a test hands it, a fake synthesiser speaks 100 ms of
tone per word, a loudness VAD turns speech on and off exactly where the test puts it, and the
test pulls bot frames itself as the transport's 20 ms clock would. So "the caller heard five
words" means exactly 25 frames were pulled.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from bridge.call import CALLER_QUEUE_FRAMES, Call, CallSettings
from bridge.dialog.base import (
    CallerDigits,
    CallerText,
    CallStarted,
    Dialog,
    DialogEvent,
    DialogOutput,
    Hangup,
    NoInput,
    Say,
    Transfer,
)
from bridge.media.frame import AudioFrame
from bridge.media.recorder import CallRecord
from bridge.media.vad import SpeechEnded, SpeechStarted, VadEvent
from bridge.speech.base import ASR, TTS, ASRStream, SpeechChunk, SpeechError, Transcript

RATE = 8000  # synthesis, playout and record
ASR_RATE = 16000
WORD_SAMPLES = RATE // 10  # 100 ms a word: five frames
EIGHT = "one two three four five six seven eight"


class LoudnessVad:
    """Any frame louder than silence is speech, so events land exactly where a test puts them."""

    costly = False

    def __init__(self, sample_rate: int, **_: object) -> None:
        self.speaking = False

    def process(self, frame: AudioFrame) -> list[VadEvent]:
        loud = frame.rms() > 100
        if loud == self.speaking:
            return []
        self.speaking = loud
        at_ms = frame.timestamp * 1000 // frame.sample_rate
        return [SpeechStarted(at_ms) if loud else SpeechEnded(at_ms)]


class ScriptedStream(ASRStream):
    """Yields what the test queues: transcripts, or an exception to raise mid-call."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Transcript | Exception | None] = asyncio.Queue()
        self.pushed: list[AudioFrame] = []

    def push(self, frame: AudioFrame) -> None:
        self.pushed.append(frame)

    async def results(self) -> AsyncIterator[Transcript]:
        while (item := await self.queue.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item

    async def close(self) -> None:
        self.queue.put_nowait(None)


class ScriptedAsr(ASR):
    sample_rate = ASR_RATE

    def __init__(self, *, opens: bool = True) -> None:
        self.opens = opens
        self.stream = ScriptedStream()

    async def open_stream(self, language: str = "en") -> ASRStream:
        if not self.opens:
            raise SpeechError("recogniser unavailable")
        return self.stream


class ToneTts(TTS):
    """One chunk of tone per word, tagged with the word, so heard text follows frames played."""

    sample_rate = RATE

    async def synthesize(  # type: ignore[override]
        self, text: AsyncIterable[str], voice: str | None = None
    ) -> AsyncIterator[SpeechChunk]:
        async for piece in text:
            for word in piece.split():
                await asyncio.sleep(0)
                yield SpeechChunk(AudioFrame(np.full(WORD_SAMPLES, 3000, np.int16), RATE), word)


Script = list[DialogOutput | asyncio.Event]  # an Event: the dialog is still working (an LLM)


@dataclass
class ScriptedDialog(Dialog):
    """Answers each kind of event with its script; remembers what it was told and what was cut."""

    scripts: dict[type, Script]
    no_input_s: float | None = None
    events: list[DialogEvent] = field(default_factory=list)
    heard: list[tuple[str, str, bool]] = field(default_factory=list)
    cut: list[DialogEvent] = field(default_factory=list)
    unsaid: Script = field(default_factory=list)  # what the current turn has still to yield

    async def respond(self, event: DialogEvent) -> AsyncIterator[DialogOutput]:
        self.events.append(event)
        self.unsaid = list(self.scripts.get(type(event), []))
        try:
            while self.unsaid:
                item = self.unsaid[0]
                if isinstance(item, asyncio.Event):
                    await item.wait()
                else:
                    yield item
                self.unsaid.pop(0)
        except (GeneratorExit, asyncio.CancelledError):
            self.cut.append(event)
            raise

    def hangup_due(self) -> Hangup | None:
        """Like a dialplan: a scripted hang-up the turn has not reached yet is owed."""
        return next((x for x in self.unsaid if isinstance(x, Hangup)), None)

    def bot_turn_heard(self, said: str, heard: str, interrupted: bool) -> None:
        self.heard.append((said, heard, interrupted))

    def no_input_timeout(self) -> float | None:
        return self.no_input_s

    def got(self, kind: type) -> bool:
        return any(isinstance(event, kind) for event in self.events)


@dataclass
class Running:
    """A call running in the test's loop, with the test as its transport."""

    call: Call
    dialog: ScriptedDialog
    asr: ScriptedAsr
    task: asyncio.Task[str]
    notes: list[dict[str, object]]
    caller_samples: int = 0

    async def play(self, frames: int) -> None:
        """Pull ``frames`` bot frames, letting the call's tasks run between them."""
        for _ in range(frames):
            self.call.pull_bot_frame()
            await asyncio.sleep(0)

    async def synthesised(self, words: int) -> None:
        """Wait until ``words`` words of bot audio are queued (the fake TTS is instant)."""
        await until(lambda: self.call.playout.queued_ms >= words * 100)

    def caller(self, *, loud: bool, frames: int = 1) -> None:
        """Feed caller audio: tone (speech to the VAD) or silence."""
        size = ASR_RATE // 50
        for _ in range(frames):
            samples = np.full(size, 3000 if loud else 0, np.int16)
            self.call.feed_caller_audio(AudioFrame(samples, ASR_RATE, self.caller_samples))
            self.caller_samples += size

    async def end(self) -> str:
        self.call.hangup("test-done")
        return await asyncio.wait_for(self.task, 5)

    def record(self) -> list[dict[str, object]]:
        lines = (self.call.record.path / "transcript.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    def bot_record(self) -> list[dict[str, object]]:
        return [x for x in self.record() if x["who"] == "bot"]

    def summary(self) -> dict[str, object]:
        return json.loads((self.call.record.path / "call.json").read_text())


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


StartCall = Callable[..., Running]


def open_call(tmp_path: Path, dialog: Dialog, asr: ASR) -> tuple[Call, list[dict[str, object]]]:
    """A call speaking the fake TTS at RATE, and the list its notifications go to."""
    notes: list[dict[str, object]] = []
    call = Call(
        call_id="c1",
        dialog=dialog,
        asr=asr,
        tts=ToneTts(),
        record=CallRecord.open(tmp_path, "c1", RATE, {"channel": "test"}),
        output_rate=RATE,
        settings=CallSettings(),
        notify=notes.append,
    )
    return call, notes


@pytest.fixture
async def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StartCall]:
    """Start a call on a dialog (and recogniser); any still running is hung up afterwards."""
    monkeypatch.setattr("bridge.call.Vad", LoudnessVad)
    running: list[Running] = []

    def begin(dialog: ScriptedDialog, asr: ScriptedAsr | None = None) -> Running:
        asr = asr or ScriptedAsr()
        call, notes = open_call(tmp_path, dialog, asr)
        running.append(Running(call, dialog, asr, asyncio.create_task(call.run()), notes))
        return running[-1]

    yield begin
    for call in running:
        if not call.task.done():
            await call.end()


async def test_barge_in_flushes_playout_cancels_the_turn_and_keeps_the_heard_words(
    start: StartCall,
) -> None:
    still_thinking = asyncio.Event()  # never set: the reply is still being generated
    dialog = ScriptedDialog({CallStarted: [Say(EIGHT), still_thinking, Say("never said")]})
    running = start(dialog)
    await running.synthesised(8)
    await running.play(25)  # five words of eight

    running.caller(loud=True)
    await until(lambda: running.call.metrics.bot_interruptions == 1)
    assert not running.call.playout.speaking and running.call.playout.queued_ms == 0
    assert running.call.pull_bot_frame().rms() == 0  # nothing of the bot after the flush
    await until(lambda: bool(dialog.cut))
    assert dialog.cut == [CallStarted()]
    assert dialog.heard == [(EIGHT, "one two three four five", True)]
    assert len(running.call.metrics.barge_in_ms) == 1

    await running.end()
    (bot,) = running.bot_record()
    assert bot["text"] == EIGHT and bot["heard"] == "one two three four five"
    assert bot["interrupted"] is True


async def test_uninterruptible_prompt_is_not_cut_and_the_answer_waits_for_its_end(
    start: StartCall,
) -> None:
    dialog = ScriptedDialog(
        {CallStarted: [Say(EIGHT, barge_in=False)], CallerText: [Say("an answer")]}
    )
    running = start(dialog)
    await running.synthesised(8)
    await running.play(10)

    running.caller(loud=True, frames=5)
    running.asr.stream.queue.put_nowait(Transcript("what about my order", is_final=True))
    await until(lambda: dialog.got(CallerText))
    await running.play(5)
    assert running.call.metrics.bot_interruptions == 0
    assert dialog.heard == []  # still speaking the notice
    await running.play(40)

    await until(lambda: len(dialog.heard) == 2)
    assert dialog.heard == [(EIGHT, EIGHT, False), ("an answer", "an answer", False)]
    await running.end()
    notice, answer = running.bot_record()
    assert float(answer["start"]) >= float(notice["end"])  # type: ignore[arg-type]


async def test_no_input_fires_after_the_silence_the_dialog_asks_for(start: StartCall) -> None:
    dialog = ScriptedDialog(
        {CallStarted: [Say("hello")], NoInput: [Say("are you there")]}, no_input_s=0.2
    )
    running = start(dialog)
    await running.synthesised(1)
    await asyncio.sleep(0.4)
    assert not dialog.got(NoInput)  # the wait starts once the prompt has been heard

    await running.play(5)
    loop = asyncio.get_running_loop()
    played_at = loop.time()
    await until(lambda: dialog.got(NoInput))
    assert loop.time() - played_at >= 0.19
    assert dialog.events == [CallStarted(), NoInput()]


async def test_caller_speech_stops_the_no_input_timer_until_it_ends(start: StartCall) -> None:
    dialog = ScriptedDialog({CallStarted: [Say("hello")]}, no_input_s=0.2)
    running = start(dialog)
    await running.synthesised(1)
    await running.play(5)

    running.caller(loud=True)
    await asyncio.sleep(0.5)
    assert not dialog.got(NoInput)
    # Speech that gave no text (a cough) starts the wait again.
    running.caller(loud=False)
    await until(lambda: dialog.got(NoInput))


@pytest.mark.parametrize(
    ("barge_in", "dtmf_barge_in", "cut"),
    [
        (True, None, True),
        (False, None, False),
        (False, True, True),  # a notice speech cannot cut, keys can ("press 1 to skip")
        (True, False, False),
    ],
)
async def test_dtmf_barge_in_policy(
    start: StartCall, barge_in: bool, dtmf_barge_in: bool | None, cut: bool
) -> None:
    dialog = ScriptedDialog(
        {
            CallStarted: [Say(EIGHT, barge_in=barge_in, dtmf_barge_in=dtmf_barge_in)],
            CallerDigits: [Say("you pressed one")],
        }
    )
    running = start(dialog)
    await running.synthesised(8)
    await running.play(10)  # two words

    running.call.dtmf("1")
    await until(lambda: dialog.got(CallerDigits))
    await running.play(50)
    await until(lambda: len(dialog.heard) == 2)
    prompt = (EIGHT, "one two", True) if cut else (EIGHT, EIGHT, False)
    assert dialog.heard == [prompt, ("you pressed one", "you pressed one", False)]
    await running.end()
    assert [x["dtmf"] for x in running.record() if "dtmf" in x] == ["1"]


async def test_hangs_up_once_the_last_prompt_has_played(start: StartCall) -> None:
    dialog = ScriptedDialog({CallStarted: [Say("goodbye and thanks"), Hangup("done")]})
    running = start(dialog)
    await running.synthesised(3)
    await running.play(10)
    await asyncio.sleep(0.05)
    assert not running.task.done()  # a third of the goodbye still to play

    await running.play(5)
    assert await asyncio.wait_for(running.task, 2) == "done"
    (bot,) = running.bot_record()
    assert bot["heard"] == "goodbye and thanks" and bot["interrupted"] is False
    assert running.summary()["end_reason"] == "done"
    assert running.notes[-1] == {"type": "hangup", "reason": "done"}


async def test_barge_in_on_the_goodbye_still_hangs_up(start: StartCall) -> None:
    dialog = ScriptedDialog({CallStarted: [Say(EIGHT), Hangup("done")]})
    running = start(dialog)
    await running.synthesised(8)
    await running.play(15)

    running.caller(loud=True)  # talks over the goodbye, then says nothing more
    assert await asyncio.wait_for(running.task, 2) == "done"
    (bot,) = running.bot_record()
    assert bot["interrupted"] is True and bot["heard"] == "one two three"


async def test_transfer_waits_until_the_prompt_before_it_has_played(start: StartCall) -> None:
    target = "sip:agent@example.com"
    dialog = ScriptedDialog({CallStarted: [Say("putting you through"), Transfer(target)]})
    running = start(dialog)
    await running.synthesised(3)
    await running.play(10)
    await asyncio.sleep(0.05)
    assert {"type": "transfer", "target": target} not in running.notes

    await running.play(5)
    await until(lambda: {"type": "transfer", "target": target} in running.notes)
    await running.end()
    said, moved = [x for x in running.record() if "heard" in x or "transfer" in x]
    assert said["heard"] == "putting you through" and moved["transfer"] == target


async def test_caller_audio_waits_for_the_recogniser_to_open_the_oldest_dropped(
    start: StartCall,
) -> None:
    running = start(ScriptedDialog({}))
    running.caller(loud=False, frames=CALLER_QUEUE_FRAMES + 3)  # before the call's task runs
    await until(lambda: bool(running.asr.stream.pushed))
    running.caller(loud=False)  # once open, straight to the recogniser
    frame = ASR_RATE // 50
    pushed = [f.timestamp // frame for f in running.asr.stream.pushed]
    assert pushed == list(range(3, CALLER_QUEUE_FRAMES + 4))
    assert running.call.metrics.caller_frames_dropped == 3


async def test_record_is_written_when_the_recogniser_cannot_open(start: StartCall) -> None:
    running = start(ScriptedDialog({CallStarted: [Say("hello")]}), ScriptedAsr(opens=False))
    assert await asyncio.wait_for(running.task, 5) == "error"
    assert running.summary()["end_reason"] == "error"
    assert [x["text"] for x in running.record()] == ["call ended: error"]
    assert running.notes == [{"type": "hangup", "reason": "error"}]


async def test_record_is_written_when_recognition_fails_mid_call(start: StartCall) -> None:
    running = start(ScriptedDialog({CallStarted: [Say(EIGHT)]}))
    await running.synthesised(8)
    await running.play(10)

    running.asr.stream.queue.put_nowait(SpeechError("connection reset"))
    assert await asyncio.wait_for(running.task, 5) == "error"
    greeting, ended = running.record()
    assert greeting["heard"] == "one two" and greeting["interrupted"] is True
    assert ended == {"who": "system", "text": "call ended: error", "start": ended["start"]}
    summary = running.summary()
    assert summary["end_reason"] == "error" and summary["metrics"]["bot_utterances"] == 1  # type: ignore[index]
