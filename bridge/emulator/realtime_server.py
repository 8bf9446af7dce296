"""Sans-I/O server side of the realtime protocol: Qwen-TTS, Qwen3-ASR and Qwen-Omni realtime.

One :class:`RealtimeServer` per socket (one socket = one session). Like the task server it
returns actions; the adapter runs the engines and reports back through the ``on_*`` methods.
Omni is recognition and synthesis in one session: the caller is transcribed, answered by a
fixed rule (``reply``, else an echo), and the answer spoken; caller speech during an answer
cancels it (barge-in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bridge.emulator.task_server import Audio, Close, Send
from bridge.speech.base import Transcript
from bridge.speech.dashscope import realtime_protocol as rp
from bridge.speech.dashscope.errors import ProtocolError
from bridge.speech.dashscope.text import SentenceSplitter, billed_characters

TTS_DEFAULTS: dict[str, Any] = {
    "voice": "Cherry",
    "mode": "server_commit",
    "language_type": "Auto",
    "response_format": "pcm",
    "sample_rate": 24000,
}
ASR_DEFAULTS: dict[str, Any] = {
    "modalities": ["text"],
    "input_audio_format": "pcm",
    "sample_rate": 16000,
    "input_audio_transcription": {},
    "turn_detection": {"type": "server_vad", "threshold": 0.2, "silence_duration_ms": 800},
}
OMNI_DEFAULTS: dict[str, Any] = {
    "modalities": ["text", "audio"],
    "voice": "Cherry",
    "input_audio_format": "pcm16",
    "output_audio_format": "pcm24",
    "instructions": "",
    "input_audio_transcription": {"model": "gummy-realtime-v1"},
    "turn_detection": {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 800,
        "create_response": True,
        "interrupt_response": True,
    },
}


@dataclass(frozen=True, slots=True)
class Respond:
    """Synthesise ``text`` as one response (Omni text-only sessions: ``audio`` is False)."""

    response_id: str
    item_id: str
    text: str
    audio: bool = True


@dataclass(frozen=True, slots=True)
class CancelResponse:
    pass


@dataclass(frozen=True, slots=True)
class OpenRecognition:
    language: str


@dataclass(frozen=True, slots=True)
class EndRecognition:
    pass


Action = Send | Close | Respond | CancelResponse | OpenRecognition | EndRecognition | Audio


class RealtimeServer:
    def __init__(self, model: str, reply: str | None = None) -> None:
        self.model = model
        self.kind = "omni" if "omni" in model else "asr" if "asr" in model else "tts"
        defaults = {"asr": ASR_DEFAULTS, "omni": OMNI_DEFAULTS, "tts": TTS_DEFAULTS}[self.kind]
        self.session: dict[str, Any] = {
            "id": rp.new_id("sess"),
            "object": "realtime.session",
            "model": model,
            **defaults,
        }
        self.text = ""
        self.splitter = SentenceSplitter()
        self.pending = 0  # responses queued or running
        self.started = False  # a response or audio has been seen: the config is fixed
        self.finishing = False
        self.closed = False
        self.item_id: str | None = None
        self.item_start = 0
        self.finals: list[str] = []
        self.audio_since_commit = False
        self.committing = False  # manual mode: a committed buffer is being recognised
        self.recognising = False  # a recognition stream is open
        self.clearing = False  # the buffer was cleared: drop what its stream still reports
        self.reply = reply
        self.heard = ""  # Omni: the caller's last utterance, which the next response answers
        self.want_response = False  # Omni: response.create while a commit is recognised

    @property
    def manual(self) -> bool:
        return self.kind != "tts" and not self.session.get("turn_detection")

    def start(self) -> list[Action]:
        actions: list[Action] = [Send(rp.encode("session.created", session=self.session))]
        if self.kind != "tts":
            actions.append(self._open())
        return actions

    def receive(self, data: str | bytes) -> list[Action]:
        if self.closed:
            return []
        try:
            event = rp.decode(data)
        except ProtocolError as exc:
            return [Send(rp.error_event("invalid_value", str(exc)))]
        kind, event_id = event["type"], str(event.get("event_id", ""))
        handler = getattr(self, "_on_" + kind.replace(".", "_"), None)
        if handler is None or self.finishing:
            why = "session is finishing" if self.finishing else f"unknown event {kind}"
            return [Send(rp.error_event("invalid_value", why, event_id=event_id))]
        return handler(event, event_id)

    # -- client events --------------------------------------------------------------------

    def _on_session_update(self, event: dict[str, Any], event_id: str) -> list[Action]:
        update = event.get("session")
        if not isinstance(update, dict):
            return [
                Send(
                    rp.error_event("invalid_value", "session must be an object", event_id=event_id)
                )
            ]
        if self.started:
            message = "Session update error: session already started or finished or failed."
            return [Send(rp.error_event("invalid_value", message, event_id=event_id))]
        self.session.update(
            {k: v for k, v in update.items() if v is not None or k == "turn_detection"}
        )
        return [Send(rp.encode("session.updated", session=self.session))]

    def _on_input_text_buffer_append(self, event: dict[str, Any], event_id: str) -> list[Action]:
        text = event.get("text")
        if self.kind != "tts" or not isinstance(text, str):
            return [Send(rp.error_event("invalid_value", "append needs text", event_id=event_id))]
        self.text += text
        if self.session.get("mode") == "server_commit":
            return self._respond(self.splitter.feed(text), clear=False)
        return []

    def _on_input_text_buffer_commit(self, event: dict[str, Any], event_id: str) -> list[Action]:
        if self.kind != "tts" or not self.text.strip():
            return [
                Send(
                    rp.error_event("invalid_value", "input text buffer is empty", event_id=event_id)
                )
            ]
        item_id = rp.new_id("item")
        committed = Send(rp.encode("input_text_buffer.committed", item_id=item_id))
        if self.session.get("mode") == "server_commit":
            return [committed, *self._respond([self.splitter.flush()])]
        return [committed, *self._respond([self.text])]

    def _on_input_text_buffer_clear(self, event: dict[str, Any], event_id: str) -> list[Action]:
        self.text, self.splitter = "", SentenceSplitter()
        return [Send(rp.encode("input_text_buffer.cleared"))]

    def _on_response_cancel(self, event: dict[str, Any], event_id: str) -> list[Action]:
        if self.pending == 0:
            return [Send(rp.error_event("invalid_value", "no active response", event_id=event_id))]
        return [CancelResponse()]

    def _on_input_audio_buffer_append(self, event: dict[str, Any], event_id: str) -> list[Action]:
        audio = event.get("audio")
        if self.kind == "tts" or not isinstance(audio, str):
            return [Send(rp.error_event("invalid_value", "append needs audio", event_id=event_id))]
        data = rp.unb64(audio)
        self.started = self.audio_since_commit = True
        samples = np.frombuffer(data[: len(data) // 2 * 2], np.int16)
        return [Audio(self.session["id"], samples, int(self.session.get("sample_rate") or 16000))]

    def _on_input_audio_buffer_commit(self, event: dict[str, Any], event_id: str) -> list[Action]:
        if not self.manual:
            return [
                Send(rp.error_event("invalid_value", "commit needs manual mode", event_id=event_id))
            ]
        if not self.audio_since_commit:
            return [
                Send(
                    rp.error_event(
                        "invalid_value", "input audio buffer is empty", event_id=event_id
                    )
                )
            ]
        return self._commit_audio()

    def _on_input_audio_buffer_clear(self, event: dict[str, Any], event_id: str) -> list[Action]:
        if self.kind == "tts":
            return [Send(rp.error_event("invalid_value", "no audio buffer", event_id=event_id))]
        actions: list[Action] = [Send(rp.encode("input_audio_buffer.cleared"))]
        self.audio_since_commit, self.finals, self.item_id = False, [], None
        if self.recognising and not self.committing:
            self.clearing = True
            actions.append(EndRecognition())
        return actions

    def _on_response_create(self, event: dict[str, Any], event_id: str) -> list[Action]:
        if self.kind != "omni":
            return [Send(rp.error_event("invalid_value", "unknown event", event_id=event_id))]
        if self.committing:
            self.want_response = True  # answered once the committed audio is recognised
            return []
        return self._answer()

    def _on_session_finish(self, event: dict[str, Any], event_id: str) -> list[Action]:
        self.finishing = True
        if self.kind == "omni":
            return [] if self.committing else [EndRecognition()]
        if self.kind == "asr":
            if not self.manual:
                return [EndRecognition()]
            if self.audio_since_commit:
                return self._commit_audio()
            return [] if self.committing else self._finished()
        actions = self._respond([self.splitter.flush()])
        return actions or (self._finished() if self.pending == 0 else [])

    # -- engine output --------------------------------------------------------------------

    def on_response_begin(self, response: Respond) -> list[Action]:
        r = self._response(response, "in_progress", [])
        item = self._item(response, "in_progress")
        part = {"type": "audio", "text": ""} if response.audio else {"type": "text", "text": ""}
        ids = {"response_id": response.response_id, "output_index": 0}
        actions: list[Action] = [
            Send(rp.encode("response.created", response=r)),
            Send(rp.encode("response.output_item.added", **ids, item=item)),
            Send(
                rp.encode(
                    "response.content_part.added",
                    **ids,
                    item_id=response.item_id,
                    content_index=0,
                    part=part,
                )
            ),
        ]
        if self.kind == "omni":  # the answer's text comes before its audio
            kind = "response.audio_transcript.delta" if response.audio else "response.text.delta"
            ids["item_id"] = response.item_id
            actions.append(Send(rp.encode(kind, **ids, content_index=0, delta=response.text)))
        return actions

    def on_response_audio(self, response: Respond, pcm: bytes) -> list[Action]:
        ids = {"response_id": response.response_id, "item_id": response.item_id}
        delta = rp.b64(pcm)
        return [
            Send(
                rp.encode(
                    "response.audio.delta", **ids, output_index=0, content_index=0, delta=delta
                )
            )
        ]

    def on_response_end(self, response: Respond, status: str = "completed") -> list[Action]:
        self.pending -= 1
        ids = {"response_id": response.response_id, "item_id": response.item_id, "output_index": 0}
        item = self._item(response, "completed" if status == "completed" else "incomplete")
        item["content"] = [{"type": "audio", "text": ""}]
        r = self._response(response, status, [item])
        r["usage"] = self._usage(response)
        actions: list[Action] = []
        if self.kind == "omni":
            done, field = (
                ("response.audio_transcript.done", "transcript")
                if response.audio
                else ("response.text.done", "text")
            )
            actions.append(Send(rp.encode(done, **ids, content_index=0, **{field: response.text})))
        if response.audio:
            actions.append(Send(rp.encode("response.audio.done", **ids, content_index=0)))
        actions += [
            Send(
                rp.encode(
                    "response.content_part.done",
                    **ids,
                    content_index=0,
                    part={"type": "audio", "text": ""},
                )
            ),
            Send(
                rp.encode(
                    "response.output_item.done",
                    response_id=response.response_id,
                    output_index=0,
                    item=item,
                )
            ),
            Send(rp.encode("response.done", response=r)),
        ]
        if self.finishing:
            actions += self._finish_when_idle()
        return actions

    def on_transcript(self, transcript: Transcript) -> list[Action]:
        if not transcript.text or self.clearing:
            return []
        actions: list[Action] = []
        if self.item_id is None:
            self.item_id = rp.new_id("item")
            self.item_start = transcript.start_ms
            if not self.manual:
                if self.kind == "omni" and self.pending and self._turn("interrupt_response"):
                    actions.append(CancelResponse())  # barge-in: the caller talks over it
                actions.append(
                    Send(
                        rp.encode(
                            "input_audio_buffer.speech_started",
                            audio_start_ms=transcript.start_ms,
                            item_id=self.item_id,
                        )
                    )
                )
            item = {
                "id": self.item_id,
                "object": "realtime.item",
                "type": "message",
                "status": "in_progress",
                "role": "user",
                "content": [],
            }
            actions.append(Send(rp.encode("conversation.item.created", item=item)))
        if not transcript.is_final:
            if self.kind == "omni":
                return actions  # Omni reports the caller's words only when complete
            stash = transcript.text
            if self.finals:
                stash = " ".join([*self.finals, stash])
            actions.append(Send(self._text_event("text", text="", stash=stash)))
            return actions
        if self.manual:
            self.finals.append(transcript.text)
            return actions
        item_id = self.item_id
        actions += [
            Send(
                rp.encode(
                    "input_audio_buffer.speech_stopped",
                    audio_end_ms=transcript.end_ms,
                    item_id=item_id,
                )
            ),
            Send(rp.encode("input_audio_buffer.committed", item_id=item_id)),
            Send(self._text_event("completed", transcript=transcript.text)),
        ]
        self.item_id, self.heard = None, transcript.text
        if self.kind == "omni" and not self.finishing and self._turn("create_response"):
            actions += self._answer()
        return actions

    def on_recognition_done(self) -> list[Action]:
        committed = self.committing
        self.committing = self.recognising = False
        actions: list[Action] = []
        if self.clearing:
            self.clearing = False
        elif self.manual and (committed or self.finals):
            if self.item_id is None:
                self.item_id = rp.new_id("item")
            self.heard = " ".join(self.finals)
            actions.append(Send(self._text_event("completed", transcript=self.heard)))
            self.finals, self.item_id = [], None
            if self.want_response and not self.finishing:
                self.want_response = False
                actions += self._answer()
        if self.finishing:
            return actions + self._finish_when_idle()
        return [*actions, self._open()]

    def fail(self, code: str, message: str) -> list[Action]:
        self.closed = True
        return [Send(rp.error_event(code, message, fatal=True)), Close(1011, "server error")]

    # -- helpers --------------------------------------------------------------------------

    def _commit_audio(self) -> list[Action]:
        self.audio_since_commit = False
        self.committing = True
        item_id = self.item_id or rp.new_id("item")
        self.item_id = item_id
        return [Send(rp.encode("input_audio_buffer.committed", item_id=item_id)), EndRecognition()]

    def _respond(self, texts: list[str], clear: bool = True) -> list[Action]:
        actions: list[Action] = []
        audio = "audio" in (self.session.get("modalities") or ["audio"])
        for text in map(str.strip, texts):
            if text:
                self.pending += 1
                self.started = True
                actions.append(Respond(rp.new_id("resp"), rp.new_id("item"), text, audio))
        if clear:
            self.text = ""
        return actions

    def _answer(self) -> list[Action]:
        """Omni's reply to what the caller last said: the configured one, else an echo."""
        if self.reply:
            return self._respond([self.reply])
        return self._respond([f"You said: {self.heard}" if self.heard else "I am listening."])

    def _turn(self, flag: str) -> bool:
        """A server VAD option that defaults to on (``create_response``, ``interrupt_response``)."""
        return bool((self.session.get("turn_detection") or {}).get(flag, True))

    def _open(self) -> OpenRecognition:
        self.recognising = True
        return OpenRecognition(self._language())

    def _usage(self, response: Respond) -> dict[str, Any]:
        if self.kind != "omni":
            return {"characters": billed_characters(response.text)}
        words = len(response.text.split())  # an estimate: the emulator has no tokenizer
        return {
            "total_tokens": 2 * words,
            "input_tokens": words,
            "output_tokens": words,
            "input_tokens_details": {"text_tokens": 0, "audio_tokens": words},
            "output_tokens_details": {"text_tokens": words, "audio_tokens": 0},
        }

    def _finish_when_idle(self) -> list[Action]:
        if self.closed or self.pending or self.recognising:
            return []
        return self._finished()

    def _finished(self) -> list[Action]:
        self.closed = True
        return [Send(rp.encode("session.finished")), Close(1000, "session finished")]

    def _language(self) -> str:
        transcription = self.session.get("input_audio_transcription") or {}
        return str(transcription.get("language") or "en")

    def _text_event(self, suffix: str, **fields: Any) -> str:
        name = "conversation.item.input_audio_transcription." + suffix
        extra = {"language": self._language(), "emotion": "neutral"}
        return rp.encode(name, item_id=self.item_id, content_index=0, **fields, **extra)

    def _response(self, response: Respond, status: str, output: list[Any]) -> dict[str, Any]:
        return {
            "id": response.response_id,
            "object": "realtime.response",
            "conversation_id": "",
            "status": status,
            "modalities": ["text", "audio"],
            "voice": self.session.get("voice"),
            "output": output,
        }

    def _item(self, response: Respond, status: str) -> dict[str, Any]:
        return {
            "id": response.item_id,
            "object": "realtime.item",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [],
        }
