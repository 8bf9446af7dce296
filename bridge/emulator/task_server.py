"""Sans-I/O server side of the DashScope task protocol (CosyVoice TTS, Fun-ASR/Paraformer ASR).

One :class:`TaskServer` per connection. It takes parsed client messages plus the current time
and returns actions: messages to send, a close, or work for the speech engines. The asyncio
adapter runs the engines and reports their output back through the ``on_*`` methods, which
return the events to send. Timers are driven by :meth:`TaskServer.tick`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from bridge.speech.base import Transcript
from bridge.speech.dashscope import task_protocol as tp
from bridge.speech.dashscope.errors import ProtocolError
from bridge.speech.dashscope.text import SentenceSplitter, billed_characters, strip_ssml

TTS_MODELS = ("cosyvoice-", "sambert-")
ASR_MODELS = ("paraformer-", "fun-asr")
TTS_FORMATS = ("pcm", "wav", "default")
TTS_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
MESSAGE_CHAR_LIMIT = 20_000
TASK_CHAR_LIMIT = 200_000
SILENCE_RMS = 100.0  # int16 level below which ASR input counts as silence


@dataclass(frozen=True, slots=True)
class Timers:
    """Server timeouts (documented values; tests shrink them)."""

    text_gap: float = 23.0  # TTS: no text and no audio out
    no_audio: float = 60.0  # ASR: no audio in
    idle: float = 60.0  # socket without a task
    silent_audio: float = 60.0  # ASR: continuous silent audio without heartbeat
    heartbeat_every: float = 10.0  # ASR: heartbeat result per this much silent audio


@dataclass(frozen=True, slots=True)
class Send:
    data: str | bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int = 1000
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StartSynthesis:
    task_id: str
    voice: str
    sample_rate: int
    format: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Speak:
    task_id: str
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class EndSynthesis:
    task_id: str
    cancel: bool = False


@dataclass(frozen=True, slots=True)
class StartRecognition:
    task_id: str
    sample_rate: int
    language: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Audio:
    task_id: str
    samples: np.ndarray = field(compare=False)
    sample_rate: int


@dataclass(frozen=True, slots=True)
class EndRecognition:
    task_id: str


@dataclass(frozen=True, slots=True)
class Abandon:
    """Stop engine work for a task without sending anything more for it (pre-emption, failure)."""

    task_id: str


Action = (
    Send
    | Close
    | StartSynthesis
    | Speak
    | EndSynthesis
    | StartRecognition
    | Audio
    | EndRecognition
    | Abandon
)


class State(Enum):
    IDLE = "idle"
    RUNNING = "running"
    FINISHING = "finishing"
    CLOSED = "closed"


class _Failure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(slots=True)
class _Task:
    task_id: str
    kind: str  # "tts" | "asr"
    model: str
    parameters: dict[str, Any]
    splitter: SentenceSplitter = field(default_factory=SentenceSplitter)
    ssml: bool = False
    texts: int = 0
    chars_in: int = 0
    chars_billed: int = 0
    sentences: int = 0
    sample_rate: int = 16000
    wav_checked: bool = False
    audio_ms: float = 0.0
    silent_ms: float = 0.0
    next_heartbeat_ms: float = 0.0
    sentence_id: int = 1
    last_words: list[dict[str, Any]] = field(default_factory=list)


class TaskServer:
    """Server state for one task-protocol connection."""

    def __init__(self, now: float, timers: Timers | None = None, words_in_end: bool = True):
        self.timers = timers or Timers()
        self.words_in_end = words_in_end
        self.state = State.IDLE
        self.task: _Task | None = None
        self.used_ids: set[str] = set()
        self.idle_since = now
        self.last_activity = now

    # -- client input -------------------------------------------------------------------

    def receive_text(self, text: str, now: float) -> list[Action]:
        if self.state is State.CLOSED:
            return []
        try:
            directive = tp.parse_directive(text)
        except ProtocolError as exc:
            return self._malformed(str(exc))
        self.last_activity = now
        try:
            if directive.action == tp.RUN:
                return self._run(directive)
            if self.task is None or directive.task_id != self.task.task_id:
                raise _Failure("InvalidParameter", f"{directive.action} for unknown task")
            if self.state is not State.RUNNING:
                raise _Failure("InvalidParameter", f"{directive.action} after finish-task")
            if directive.action == tp.CONTINUE:
                return self._continue(directive.payload)
            return self._finish(directive.payload)
        except _Failure as failure:
            return self.fail(failure.code, failure.message)

    def receive_binary(self, data: bytes, now: float) -> list[Action]:
        if self.state is State.CLOSED:
            return []
        task = self.task
        if task is None or self.state is not State.RUNNING or task.kind != "asr":
            return self.fail("InvalidParameter", "binary frame outside a running ASR task")
        self.last_activity = now
        if not task.wav_checked:
            task.wav_checked = True
            data = _strip_wav_header(data)
        samples = np.frombuffer(data[: len(data) // 2 * 2], np.int16)
        ms = 1000.0 * samples.size / task.sample_rate
        task.audio_ms += ms
        quiet = (
            samples.size == 0
            or float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) < SILENCE_RMS
        )
        task.silent_ms = task.silent_ms + ms if quiet else 0.0
        actions: list[Action] = [Audio(task.task_id, samples, task.sample_rate)]
        if quiet and task.parameters.get("heartbeat"):
            if task.silent_ms >= task.next_heartbeat_ms + 1000 * self.timers.heartbeat_every:
                task.next_heartbeat_ms = task.silent_ms
                actions.append(Send(self._heartbeat(task)))
        elif quiet and task.silent_ms >= 1000 * self.timers.silent_audio:
            return self.fail("ResponseTimeout", "Response timeout!")
        if not quiet:
            task.next_heartbeat_ms = 0.0
        return actions

    def tick(self, now: float) -> list[Action]:
        """Fire the documented timeouts."""
        if self.state is State.IDLE and now - self.idle_since >= self.timers.idle:
            self.state = State.CLOSED
            return [Close(1000, "idle timeout")]
        task = self.task
        if task is None or self.state is not State.RUNNING:
            return []
        gap = now - self.last_activity
        if task.kind == "tts" and gap >= self.timers.text_gap:
            return self.fail("RequestTimeout", "request timeout after 23 seconds")
        if task.kind == "asr" and gap >= self.timers.no_audio:
            return self.fail("ResponseTimeout", "Response timeout!")
        return []

    # -- engine output ------------------------------------------------------------------

    def current(self, task_id: str) -> _Task | None:
        task = self.task
        if task is None or task.task_id != task_id or self.state is State.CLOSED:
            return None
        return task

    def on_sentence_begin(self, task_id: str, index: int, text: str, now: float) -> list[Action]:
        if self.current(task_id) is None:
            return []
        self.last_activity = now
        output = {"type": "sentence-begin", "original_text": text}
        output["sentence"] = {"index": index, "words": []}
        return [Send(self._event(tp.GENERATED, {"output": output}))]

    def on_sentence_audio(self, task_id: str, index: int, pcm: bytes, now: float) -> list[Action]:
        if self.current(task_id) is None:
            return []
        self.last_activity = now
        output = {"type": "sentence-synthesis", "sentence": {"index": index, "words": []}}
        return [Send(self._event(tp.GENERATED, {"output": output})), Send(pcm)]

    def on_sentence_end(
        self, task_id: str, index: int, text: str, words: list[dict[str, Any]], now: float
    ) -> list[Action]:
        task = self.current(task_id)
        if task is None:
            return []
        self.last_activity = now
        task.chars_billed += billed_characters(text)
        task.last_words = words
        sentence = {"index": index, "words": words if self.words_in_end else []}
        output = {"type": "sentence-end", "original_text": text, "sentence": sentence}
        usage = {"characters": task.chars_billed}
        return [Send(self._event(tp.GENERATED, {"output": output, "usage": usage}))]

    def on_transcript(self, task_id: str, transcript: Transcript) -> list[Action]:
        task = self.current(task_id)
        if task is None or not transcript.text:
            return []
        sentence: dict[str, Any] = {
            "begin_time": transcript.start_ms,
            "end_time": transcript.end_ms if transcript.is_final else None,
            "text": transcript.text,
            "heartbeat": False,
            "sentence_end": transcript.is_final,
            "sentence_id": task.sentence_id,
            "words": _words(transcript) if transcript.is_final else [],
        }
        usage = None
        if transcript.is_final:
            task.sentence_id += 1
            seconds = max(0, transcript.end_ms - transcript.start_ms) / 1000
            usage = {"duration": max(1, math.ceil(seconds))}
        return [Send(self._event(tp.GENERATED, {"output": {"sentence": sentence}, "usage": usage}))]

    def on_engine_done(self, task_id: str, now: float) -> list[Action]:
        """All audio/results of a finished (or cancelled) task have been delivered."""
        task = self.current(task_id)
        if task is None or self.state is not State.FINISHING:
            return []
        if task.kind == "tts":
            sentence = {"index": max(0, task.sentences - 1), "words": task.last_words}
            payload: dict[str, Any] = {
                "output": {"sentence": sentence},
                "usage": {"characters": task.chars_billed},
            }
            attributes = {"request_uuid": tp.new_task_id()}
        else:
            payload, attributes = {"output": {}, "usage": None}, {}
        message = tp.Event(tp.FINISHED, task.task_id, payload, attributes).encode()
        self.state, self.task, self.idle_since = State.IDLE, None, now
        return [Send(message)]

    def fail(self, code: str, message: str) -> list[Action]:
        """``task-failed`` then close: a failed connection is never reused."""
        if self.state is State.CLOSED:
            return []
        task_id = self.task.task_id if self.task else ""
        self.state = State.CLOSED
        event = tp.Event(tp.FAILED, task_id, {}, {}, code, message).encode()
        actions: list[Action] = [Send(event)]
        if task_id:
            actions.append(Abandon(task_id))
        return [*actions, Close(1000, "task failed")]

    # -- directives ---------------------------------------------------------------------

    def _malformed(self, reason: str) -> list[Action]:
        self.state = State.CLOSED
        actions: list[Action] = [Abandon(self.task.task_id)] if self.task else []
        return [*actions, Close(1007, reason[:100])]

    def _run(self, directive: tp.Directive) -> list[Action]:
        payload = directive.payload
        params = payload.get("parameters", {})
        if not isinstance(payload.get("input"), dict) or not isinstance(params, dict):
            return self._malformed("run-task needs payload.input and payload.parameters objects")
        actions: list[Action] = []
        if self.task is not None:  # pre-emption: the old task ends silently
            actions.append(Abandon(self.task.task_id))
            self.task = None
        model = str(payload.get("model", ""))
        kind = "tts" if payload.get("task") == "tts" else "asr"
        families = TTS_MODELS if kind == "tts" else ASR_MODELS
        task = _Task(directive.task_id, kind, model, params)
        self.task, self.state = task, State.RUNNING
        if directive.task_id in self.used_ids:
            raise _Failure("InvalidParameter", "task_id already used on this connection")
        self.used_ids.add(directive.task_id)
        if not model.startswith(families):
            raise _Failure("Model.NotExist", f"Model not found: {model}")
        started = Send(tp.Event(tp.STARTED, task.task_id).encode())
        if kind == "tts":
            return [*actions, *self._start_tts(task, started)]
        return [*actions, *self._start_asr(task, started)]

    def _start_tts(self, task: _Task, started: Send) -> list[Action]:
        params = task.parameters
        fmt = str(params.get("format", "mp3")).lower()
        rate = int(params.get("sample_rate") or 22050)
        if not params.get("voice") and not task.model.startswith("sambert-"):
            raise _Failure("InvalidParameter", "voice is required")
        if fmt not in TTS_FORMATS:
            raise _Failure("InvalidParameter", f"format {fmt} is not supported by this emulator")
        if rate not in TTS_RATES:
            raise _Failure("InvalidParameter", f"sample_rate {rate} is not supported")
        task.ssml = bool(params.get("enable_ssml"))
        task.sample_rate = rate
        voice = str(params.get("voice") or task.model)
        start = StartSynthesis(task.task_id, voice, rate, "pcm" if fmt == "pcm" else "wav", params)
        return [started, start]

    def _start_asr(self, task: _Task, started: Send) -> list[Action]:
        params = task.parameters
        rate = int(params.get("sample_rate") or 16000)
        if str(params.get("format", "pcm")).lower() not in ("pcm", "wav"):
            raise _Failure("UNSUPPORTED_FORMAT", "this emulator accepts pcm and wav only")
        if "8k" in task.model and rate != 8000:
            raise _Failure("InvalidParameter", f"{task.model} needs sample_rate 8000")
        task.sample_rate = rate
        hints = params.get("language_hints") or ["en"]
        return [started, StartRecognition(task.task_id, rate, str(hints[0]), params)]

    def _continue(self, payload: dict[str, Any]) -> list[Action]:
        task = self.task
        assert task is not None
        input_ = payload.get("input")
        if not isinstance(input_, dict):
            raise _Failure("InvalidParameter", "task can not be null")
        if task.kind == "asr":
            return []  # context updates are accepted and ignored
        if input_.get("flush"):
            return self._speak(task, [task.splitter.flush()])
        text = input_.get("text")
        if not isinstance(text, str) or not text:
            raise _Failure("InvalidParameter", "Parameter invalid: text is null")
        task.texts += 1
        if task.ssml and task.texts > 1:
            raise _Failure("InvalidParameter", "Text request limit violated, expected 1.")
        chars = billed_characters(strip_ssml(text) if task.ssml else text)
        task.chars_in += chars
        if chars > MESSAGE_CHAR_LIMIT or task.chars_in > TASK_CHAR_LIMIT:
            raise _Failure("InvalidParameter", "text is too long")
        if task.ssml:
            return self._speak(task, [strip_ssml(text)])
        return self._speak(task, task.splitter.feed(text))

    def _finish(self, payload: dict[str, Any]) -> list[Action]:
        task = self.task
        assert task is not None
        input_ = payload.get("input")
        if not isinstance(input_, dict):
            raise _Failure("InvalidParameter", "task can not be null")
        cancel = input_.get("directive") == "cancel"
        actions: list[Action] = []
        if task.kind == "tts" and not cancel:
            actions = self._speak(task, [task.splitter.flush()])
        self.state = State.FINISHING
        if task.kind == "tts":
            return [*actions, EndSynthesis(task.task_id, cancel)]
        return [EndRecognition(task.task_id)]

    def _speak(self, task: _Task, sentences: list[str]) -> list[Action]:
        actions: list[Action] = []
        for sentence in map(str.strip, sentences):
            if sentence:
                actions.append(Speak(task.task_id, task.sentences, sentence))
                task.sentences += 1
        return actions

    def _event(self, name: str, payload: dict[str, Any]) -> str:
        assert self.task is not None
        return tp.Event(name, self.task.task_id, payload).encode()

    def _heartbeat(self, task: _Task) -> str:
        sentence = {"begin_time": 0, "end_time": None, "text": "", "heartbeat": True}
        sentence |= {"sentence_end": False, "sentence_id": 0, "words": []}
        return self._event(tp.GENERATED, {"output": {"sentence": sentence}, "usage": None})


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if samples.size else 0.0


def _strip_wav_header(data: bytes) -> bytes:
    """The SDK streams whole WAV files: drop the RIFF header from the first frame."""
    if not data.startswith(b"RIFF"):
        return data
    at = data.find(b"data", 12)
    return data[at + 8 :] if at >= 0 else b""


def _words(transcript: Transcript) -> list[dict[str, Any]]:
    """Spread the sentence's words over its time span (the engine gives no word times)."""
    tokens = transcript.text.split()
    if not tokens:
        return []
    span = max(0, transcript.end_ms - transcript.start_ms) / len(tokens)
    words = []
    for i, token in enumerate(tokens):
        core = token.rstrip(",.!?;:，。！？；：")
        words.append(
            {
                "begin_time": int(transcript.start_ms + i * span),
                "end_time": int(transcript.start_ms + (i + 1) * span),
                "text": core,
                "punctuation": token[len(core) :],
            }
        )
    return words
