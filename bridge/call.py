"""One call, whatever the transport: caller audio in, bot audio out, a dialog in between.

The transport (WebRTC track, SIP/RTP session) only moves audio: it feeds caller frames with
:meth:`Call.feed_caller_audio` and pulls exactly one bot frame per 20 ms tick with
:meth:`Call.pull_bot_frame`. Everything else happens here, in tasks the call owns and ends:

    caller audio ─▶ resample ─┬─▶ VAD ─▶ barge-in
                              ├─▶ ASR stream ─▶ dialog ─▶ TTS ─▶ resample ─▶ playout ─▶ transport
                              └─▶ recording (caller channel)         recording (bot channel) ◀─┘

Barge-in: caller speech while interruptible bot audio is playing flushes the playout at once,
cancels the bot turn (dialog output and synthesis), and tells the dialog what the caller heard.
The call record (transcript, recording, metrics) is written however the call ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from bridge.campaign.amd import (
    AmdEvent,
    AmdSettings,
    AnsweringMachineDetector,
    BeepHeard,
    Verdict,
)
from bridge.dialog.base import (
    CallerDigits,
    CallerText,
    CallStarted,
    DetectMachine,
    Dialog,
    DialogEvent,
    Hangup,
    MachineDetected,
    NoInput,
    Say,
    Transfer,
)
from bridge.media.frame import AudioFrame
from bridge.media.playout import Playout, UtteranceFinished, UtteranceStarted
from bridge.media.recorder import CallRecord
from bridge.media.resample import Resampler
from bridge.media.vad import SpeechEnded, SpeechStarted, Vad, VadEvent
from bridge.speech.base import ASR, TTS, ASRStream, Transcript, text_once
from bridge.speech.dashscope.fallback import Apology, FallbackStream
from bridge.speech.dashscope.metrics import StreamMetrics, summary

log = logging.getLogger(__name__)

Notify = Callable[[dict[str, object]], None]

# Caller audio waiting for the recogniser to open, or for a costly VAD's task; beyond this the
# oldest frames are dropped (the VAD only falls this far behind when the machine is overloaded,
# and stale audio is useless).
CALLER_QUEUE_FRAMES = 50


@dataclass
class CallSettings:
    vad_engine: str = "silero"
    vad_threshold: float = 0.5
    vad_min_speech_ms: int = 64
    vad_min_silence_ms: int = 400
    language: str = "en"
    voice: str | None = None
    no_media_timeout_s: float = 20.0
    max_duration_s: float = 3600.0


@dataclass
class CallMetrics:
    """What the call record and the benchmark report about one call."""

    # Caller stops speaking → first frame of the bot's answer sent.
    turn_latency_ms: list[float] = field(default_factory=list)
    # Caller starts speaking over the bot → last frame of the bot sent.
    barge_in_ms: list[float] = field(default_factory=list)
    caller_frames_dropped: int = 0
    asr_finals: int = 0
    bot_utterances: int = 0
    bot_interruptions: int = 0
    extra: dict[str, Callable[[], object]] = field(default_factory=dict)
    """Transport metrics by name, read when the record is written (e.g. the RTP leg's stats)."""
    # Cloud engines' figures: the call's recognition stream, and one per bot utterance.
    asr_streams: list[StreamMetrics] = field(default_factory=list)
    tts_streams: list[StreamMetrics] = field(default_factory=list)
    amd: dict[str, object] = field(default_factory=dict)  # answering-machine detection

    def as_dict(self) -> dict[str, object]:
        return {
            "turn_latency_ms": [round(x, 1) for x in self.turn_latency_ms],
            "barge_in_ms": [round(x, 1) for x in self.barge_in_ms],
            "caller_frames_dropped": self.caller_frames_dropped,
            "asr_finals": self.asr_finals,
            "bot_utterances": self.bot_utterances,
            "bot_interruptions": self.bot_interruptions,
            **{name: read() for name, read in self.extra.items()},
            **self._speech(),
            **({"amd": self.amd} if self.amd else {}),
        }

    def _speech(self) -> dict[str, object]:
        if not (self.asr_streams or self.tts_streams):
            return {}  # embedded engines: nothing billed, no network latency
        return {"speech": {"asr": summary(self.asr_streams), "tts": summary(self.tts_streams)}}


class Call:
    """The pipeline of one call. Create, then ``await run()``; it returns the end reason."""

    def __init__(
        self,
        *,
        call_id: str,
        dialog: Dialog,
        asr: ASR,
        tts: TTS,
        record: CallRecord,
        output_rate: int,
        settings: CallSettings,
        notify: Notify,
        vad_executor: Executor | None = None,
    ) -> None:
        self.call_id = call_id
        self.dialog = dialog
        self.asr = asr
        self.tts = tts
        self.record = record
        self.settings = settings
        self.notify = notify
        self.metrics = CallMetrics()
        self.playout = Playout(output_rate)
        self._vad = Vad(
            asr.sample_rate,
            engine=settings.vad_engine,  # type: ignore[arg-type]
            threshold=settings.vad_threshold,
            min_speech_ms=settings.vad_min_speech_ms,
            min_silence_ms=settings.vad_min_silence_ms,
        )
        # A cheap VAD runs as each frame arrives; a costly one in the executor, from its task.
        self._vad_executor = vad_executor if self._vad.costly else None
        self._asr_stream: ASRStream | None = None  # open: caller audio goes straight to it
        self._early: deque[AudioFrame] = deque(maxlen=CALLER_QUEUE_FRAMES)  # before it opens
        self._vad_queue: deque[AudioFrame] = deque(maxlen=CALLER_QUEUE_FRAMES)
        self._vad_waiter: asyncio.Future[None] | None = None  # the VAD task, waiting for audio
        self._uplink_resampler: Resampler | None = None
        self._uplink_rate = 0
        self._started = time.monotonic()
        self._last_caller_audio = self._started
        self._ended = asyncio.Event()
        self._end_reason = ""
        self._bot_task: asyncio.Task[None] | None = None
        self._utterances: dict[str, asyncio.Future[UtteranceFinished]] = {}
        self._utterance_started_at: dict[str, float] = {}
        self._utterance_text: dict[str, str] = {}
        self._current_utterance = ""  # the one playing
        self._keys_cannot_cut: set[str] = set()  # utterances DTMF does not interrupt
        self._no_input: asyncio.Task[None] | None = None
        self._caller_speech_ended_at: float | None = None
        self._last_bot_frame_at = self._started
        self._caller_samples_seen = 0
        self._amd: AnsweringMachineDetector | None = None
        self._amd_start_ms = 0.0  # caller stream time detection started at
        self._amd_until_ms: float | None = None  # caller speech before this was the greeting

    # --- transport side -------------------------------------------------------------------

    def feed_caller_audio(self, frame: AudioFrame) -> None:
        """Take a frame of caller audio; never blocks.

        The per-frame work (resampling, recording, a cheap VAD, answering-machine detection,
        the recogniser's non-blocking push) happens here, so a call costs no task wake-up per
        frame; only a costly VAD waits for its own task (the oldest frame is dropped when full).
        """
        self._last_caller_audio = time.monotonic()
        if self._ended.is_set():
            return  # the recogniser is closing
        frame = self._to_asr_rate(frame)
        self.record.write_audio("caller", frame, self._caller_samples_seen / frame.sample_rate)
        self._caller_samples_seen += frame.num_samples
        if self._vad_executor is None:
            events = self._vad.process(frame)
            if events or self._amd is not None:  # usually neither: nothing to act on
                self._heard(frame, events)
        else:
            self._queue_for_vad(frame)
        stream = self._asr_stream
        if stream is None:
            self._hold(self._early, frame)
            return
        try:
            stream.push(frame)
        except Exception:
            log.exception("call %s: recogniser refused audio", self.call_id)
            self.hangup("error")

    def _hold(self, queue: deque[AudioFrame], frame: AudioFrame) -> None:
        if len(queue) == CALLER_QUEUE_FRAMES:
            self.metrics.caller_frames_dropped += 1  # the append drops the oldest
        queue.append(frame)

    def _queue_for_vad(self, frame: AudioFrame) -> None:
        self._hold(self._vad_queue, frame)
        # A future rather than an asyncio.Queue: this runs for every frame of every call.
        waiter, self._vad_waiter = self._vad_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pull_bot_frame(self) -> AudioFrame:
        """The bot's next 20 ms frame; the transport calls this once per tick of its clock."""
        speaking = self.playout.speaking
        frame = self.playout.next_frame()
        now = time.monotonic()
        if speaking:
            self._last_bot_frame_at = now
        self.record.write_audio("bot", frame, now - self._started)
        self._handle_playout_events(now)
        return frame

    def hangup(self, reason: str) -> None:
        """End the call (peer hung up, transport failed, operator request)."""
        if not self._ended.is_set():
            self._end_reason = reason
            self._ended.set()

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> str:
        """Run until the call ends; always closes the call record."""
        log.info("call %s: started", self.call_id)
        asr_stream = None
        tasks: list[asyncio.Task[None]] = []
        try:
            asr_stream = await self.asr.open_stream(self.settings.language)
            if isinstance(asr_stream, FallbackStream):
                asr_stream.on_apology = self._apologise
            while self._early and not self.ended:
                asr_stream.push(self._early.popleft())
            self._asr_stream = asr_stream
            tasks = [
                asyncio.create_task(self._recognised(asr_stream), name=f"{self.call_id}-asr"),
                asyncio.create_task(self._watchdog(), name=f"{self.call_id}-watchdog"),
            ]
            if self._vad_executor is not None:
                tasks.append(asyncio.create_task(self._costly_vad(), name=f"{self.call_id}-vad"))
            for task in tasks:
                task.add_done_callback(self._on_task_done)
            self._start_bot_turn(CallStarted())
            await self._ended.wait()
        except Exception:
            log.exception("call %s: failed", self.call_id)
            self.hangup("error")
        finally:
            await self._shutdown(tasks, asr_stream)
        return self._end_reason

    async def _shutdown(self, tasks: list[asyncio.Task[None]], asr_stream: object) -> None:
        self._stop_no_input()
        self.playout.flush("hangup")
        self._handle_playout_events(time.monotonic())
        await self._cancel_bot_turn()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if asr_stream is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asr_stream.close(), 5)  # type: ignore[attr-defined]
            stream_metrics = getattr(asr_stream, "metrics", None)
            if isinstance(stream_metrics, StreamMetrics):
                self.metrics.asr_streams.append(stream_metrics)
        self.record.add_event(
            {"who": "system", "text": f"call ended: {self._end_reason}", "start": self._now()}
        )
        await self.record.aclose(self._end_reason, self.metrics.as_dict())
        self.notify({"type": "hangup", "reason": self._end_reason})
        log.info("call %s: ended (%s)", self.call_id, self._end_reason)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("call %s: task %s failed: %r", self.call_id, task.get_name(), exc)
            self.hangup("error")

    async def _watchdog(self) -> None:
        """Hang up calls whose peer went silent at the transport level, or that run too long."""
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if now - self._last_caller_audio > self.settings.no_media_timeout_s:
                self.hangup("no-media")
            elif now - self._started > self.settings.max_duration_s:
                self.hangup("max-duration")

    # --- uplink ---------------------------------------------------------------------------

    async def _costly_vad(self) -> None:
        """Run a costly VAD in the executor, frame by frame, off the transport's tick."""
        loop = asyncio.get_running_loop()
        queue = self._vad_queue
        while True:
            while not queue:
                self._vad_waiter = loop.create_future()
                await self._vad_waiter
            frame = queue.popleft()
            events = await loop.run_in_executor(self._vad_executor, self._vad.process, frame)
            self._heard(frame, events)

    def _heard(self, frame: AudioFrame, events: list[VadEvent]) -> None:
        """Act on the VAD's verdict on a frame: barge-in, end of turn, machine detection."""
        # The VAD confirms a change only after a stretch of speech or silence: date each
        # event back to when that audio arrived, i.e. when the caller started or stopped.
        audio_now_ms = frame.end_timestamp * 1000 / frame.sample_rate
        for event in events:
            happened_at = time.monotonic() - max(0.0, (audio_now_ms - event.at_ms) / 1000)
            if isinstance(event, SpeechStarted):
                self._on_caller_speech_started(happened_at)
            elif isinstance(event, SpeechEnded):
                self._caller_speech_ended_at = happened_at
                if self._bot_task is None or self._bot_task.done():
                    self._arm_no_input()  # restarts the wait if the speech gave no text
        if self._amd is not None:
            speech = self._vad.probability >= self._vad.threshold
            self._on_amd(self._amd.feed(frame, speech))

    def _to_asr_rate(self, frame: AudioFrame) -> AudioFrame:
        if frame.sample_rate != self._uplink_rate:
            self._uplink_rate = frame.sample_rate
            self._uplink_resampler = Resampler(frame.sample_rate, self.asr.sample_rate)
        assert self._uplink_resampler is not None
        return self._uplink_resampler.process_frame(frame)

    def _on_caller_speech_started(self, onset: float) -> None:
        self._caller_speech_ended_at = None
        self._stop_no_input()
        if not (self.playout.speaking and self.playout.interruptible):
            return
        log.info("call %s: barge-in", self.call_id)
        self.metrics.bot_interruptions += 1
        self.playout.flush("barge-in")
        self._handle_playout_events(time.monotonic())
        # Nothing of the bot is sent after the flush: its last frame went out before it.
        self.metrics.barge_in_ms.append((self._last_bot_frame_at - onset) * 1000)
        if self._bot_task is not None:
            self._bot_task.cancel()

    # --- recognition → dialog --------------------------------------------------------------

    async def _recognised(self, asr_stream: object) -> None:
        turn_id = uuid.uuid4().hex[:8]
        results: AsyncIterator[Transcript] = asr_stream.results()  # type: ignore[attr-defined]
        async for result in results:
            text = result.text.strip()
            if not text:
                continue
            self.notify(
                {
                    "type": "transcript",
                    "who": "caller",
                    "text": text,
                    "final": result.is_final,
                    "turn_id": turn_id,
                    "interrupted": False,
                }
            )
            if not result.is_final:
                continue
            self.metrics.asr_finals += 1
            self.record.add_event(
                {
                    "who": "caller",
                    "text": text,
                    "start": round(result.start_ms / 1000, 3),
                    "end": round(result.end_ms / 1000, 3),
                    "interrupted": False,
                }
            )
            turn_id = uuid.uuid4().hex[:8]
            if not self._greeting_words(text, result.start_ms):
                self._start_bot_turn(CallerText(text))

    # --- answering-machine detection ----------------------------------------------------------

    def _detect_machine(self, settings: AmdSettings) -> None:
        self._amd = AnsweringMachineDetector(settings)
        self._amd_start_ms = self._caller_samples_seen * 1000 / self.asr.sample_rate

    def _greeting_words(self, text: str, start_ms: int) -> bool:
        """Whether caller words belong to the detection (the greeting), not to the dialog."""
        if self._amd is not None:
            self._on_amd(self._amd.hear(text))
            return True
        return self._amd_until_ms is not None and start_ms < self._amd_until_ms

    def _on_amd(self, events: list[AmdEvent]) -> None:
        def at(ms: int) -> float:  # call time, as the caller channel of the recording
            return round((self._amd_start_ms + ms) / 1000, 3)

        for event in events:
            if isinstance(event, Verdict):
                self.record.add_event(
                    {
                        "who": "system",
                        "amd": event.result,
                        "cause": event.cause,
                        "start": at(event.at_ms),
                    }
                )
                self.notify({"type": "amd", "result": event.result, "cause": event.cause})
            elif isinstance(event, BeepHeard):
                self.record.add_event(
                    {
                        "who": "system",
                        "beep_hz": round(event.frequency_hz),
                        "start": at(event.start_ms),
                        "end": at(event.end_ms),
                    }
                )
            else:
                self._amd = None
                self._amd_until_ms = self._amd_start_ms + event.at_ms
                verdict = event.verdict
                self.metrics.amd = {
                    "result": verdict.result,
                    "cause": verdict.cause,
                    "verdict_s": at(verdict.at_ms),
                    "beep_s": at(event.beep.end_ms) if event.beep else None,
                    "finished_s": at(event.at_ms),
                }
                self._start_bot_turn(
                    MachineDetected(verdict.result, verdict.cause, event.beep is not None)
                )

    def dtmf(self, digits: str) -> None:
        """Digits from the transport (RFC 4733, SIP INFO)."""
        self.record.add_event({"who": "caller", "dtmf": digits, "start": self._now()})
        self._start_bot_turn(CallerDigits(digits))

    # --- bot turns --------------------------------------------------------------------------

    def _start_bot_turn(self, event: DialogEvent) -> None:
        self._stop_no_input()
        previous = self._bot_task
        generating = previous is not None and not previous.done()
        # The turn may be fully synthesised yet still playing: keys pressed over it cut it too.
        if (generating or self.playout.speaking) and self._may_cut(event):
            # The caller said something new before the bot finished: answer the new thing.
            self.playout.flush("superseded")
            self._handle_playout_events(time.monotonic())
            if previous is not None:
                previous.cancel()
        self._bot_task = asyncio.create_task(self._bot_turn(event, previous))

    def _may_cut(self, event: DialogEvent) -> bool:
        """Whether ``event`` ends the bot's turn early; if not, it is answered after the turn
        (an uninterruptible prompt such as a legal notice plays to its end)."""
        if not self.playout.speaking:
            return True
        if isinstance(event, CallerDigits):
            return self._current_utterance not in self._keys_cannot_cut
        return self.playout.interruptible

    def _arm_no_input(self) -> None:
        """Wait for the caller as long as the dialog asks (after the bot has finished)."""
        self._stop_no_input()
        timeout = self.dialog.no_input_timeout()
        if timeout is not None and not self.ended:
            self._no_input = asyncio.create_task(self._no_input_after(timeout))

    async def _no_input_after(self, timeout: float) -> None:
        await self._wait_played()
        await asyncio.sleep(timeout)
        self._no_input = None
        self._start_bot_turn(NoInput())

    def _stop_no_input(self) -> None:
        if self._no_input is not None:
            self._no_input.cancel()
            self._no_input = None

    def _apologise(self, apology: Apology) -> None:
        """The cloud recogniser is lost (``apology`` policy): once the bot's turn is over, tell
        the caller, then go on with the embedded recogniser or end the call, as configured."""
        log.warning("call %s: recognition fell back; apologising", self.call_id)
        self.record.add_event({"who": "system", "text": "recognition failed", "start": self._now()})
        self._bot_task = asyncio.create_task(self._apology_turn(apology, self._bot_task))

    async def _apology_turn(self, apology: Apology, previous: asyncio.Task[None] | None) -> None:
        if previous is not None and not previous.done():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await previous
        await self._say(Say(apology.text))
        await self._wait_played()
        if apology.hang_up:
            self.hangup("speech-service-failed")
        elif self._bot_task is asyncio.current_task():
            self._arm_no_input()

    async def _cancel_bot_turn(self) -> None:
        task = self._bot_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _bot_turn(self, event: DialogEvent, previous: asyncio.Task[None] | None) -> None:
        if previous is not None and not previous.done():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await previous
            self._stop_no_input()  # armed by the turn just finished; this one answers instead
        outputs = self.dialog.respond(event)
        try:
            async for output in outputs:
                if isinstance(output, Say):
                    await self._say(output)
                elif isinstance(output, Transfer):
                    await self._wait_played()  # "putting you through" is heard before the move
                    self.record.add_event({"who": "system", "transfer": output.target})
                    self.notify({"type": "transfer", "target": output.target})
                elif isinstance(output, DetectMachine):
                    self._detect_machine(output.settings)
                elif isinstance(output, Hangup):
                    await self._wait_played()
                    self.hangup(output.reason)
                    return
            if self._bot_task is asyncio.current_task():
                self._arm_no_input()
        except asyncio.CancelledError:
            if (due := self.dialog.hangup_due()) is not None:
                self.hangup(due.reason)
            raise
        except Exception:
            log.exception("call %s: bot turn failed", self.call_id)
        finally:
            await outputs.aclose()  # type: ignore[attr-defined]

    async def _say(self, say: Say) -> None:
        utterance_id = uuid.uuid4().hex[:8]
        self._utterances[utterance_id] = asyncio.get_running_loop().create_future()
        self._utterance_text[utterance_id] = say.text
        if not say.keys_interrupt:
            self._keys_cannot_cut.add(utterance_id)
        self.playout.begin_utterance(utterance_id, barge_in=say.barge_in)
        resampler = Resampler(self.tts.sample_rate, self.playout.sample_rate)
        if self.tts.metered:
            self.metrics.tts_streams.append(metrics := StreamMetrics())
            chunks = self.tts.synthesize(  # type: ignore[call-arg]
                text_once(say.text), voice=self.settings.voice, metrics=metrics
            )
        else:
            chunks = self.tts.synthesize(text_once(say.text), voice=self.settings.voice)
        try:
            async for chunk in chunks:
                audio = resampler.process_frame(chunk.audio)
                await self.playout.wait_for_space()
                self.playout.push(utterance_id, type(chunk)(audio, chunk.text, chunk.words))
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
            self.playout.end_utterance(utterance_id)

    async def _wait_played(self) -> None:
        pending = [f for f in self._utterances.values() if not f.done()]
        if pending:
            await asyncio.wait(pending)

    def _handle_playout_events(self, now: float) -> None:
        for event in self.playout.pop_events():
            self._on_playout_event(event, now)

    def _on_playout_event(self, event: UtteranceStarted | UtteranceFinished, now: float) -> None:
        if isinstance(event, UtteranceStarted):
            self._current_utterance = event.id
            self._utterance_started_at[event.id] = now
            self.metrics.bot_utterances += 1
            if self._caller_speech_ended_at is not None:
                self.metrics.turn_latency_ms.append((now - self._caller_speech_ended_at) * 1000)
                self._caller_speech_ended_at = None
            self.notify({"type": "state", "state": "speaking"})
            self.notify(
                {
                    "type": "transcript",
                    "who": "bot",
                    "text": self._utterance_text.get(event.id, ""),
                    "final": False,
                    "turn_id": event.id,
                    "interrupted": False,
                }
            )
            return
        started = self._utterance_started_at.pop(event.id, now)
        said = self._utterance_text.pop(event.id, event.said)
        self._keys_cannot_cut.discard(event.id)
        self.notify(
            {
                "type": "transcript",
                "who": "bot",
                "text": event.heard,
                "said": said,
                "final": True,
                "turn_id": event.id,
                "interrupted": event.interrupted,
            }
        )
        self.notify({"type": "state", "state": "listening"})
        self.record.add_event(
            {
                "who": "bot",
                "text": said,
                "heard": event.heard,
                "start": round(started - self._started, 3),
                "end": round(now - self._started, 3),
                "interrupted": event.interrupted,
            }
        )
        self.dialog.bot_turn_heard(said, event.heard, event.interrupted)
        future = self._utterances.pop(event.id, None)
        if future is not None and not future.done():
            future.set_result(event)

    def _now(self) -> float:
        return round(time.monotonic() - self._started, 3)
