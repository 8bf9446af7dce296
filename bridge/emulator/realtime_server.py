"""Sans-I/O server side of the realtime protocol: Qwen-TTS realtime and Qwen3-ASR realtime.

One :class:`RealtimeServer` per socket (one socket = one session). Like the task server it
returns actions; the adapter runs the engines and reports back through the ``on_*`` methods.
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


@dataclass(frozen=True, slots=True)
class Respond:
    """Synthesise ``text`` as one response."""

    response_id: str
    item_id: str
    text: str


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
    def __init__(self, model: str) -> None:
        self.model = model
        self.kind = "asr" if "asr" in model else "tts"
        defaults = ASR_DEFAULTS if self.kind == "asr" else TTS_DEFAULTS
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

    @property
    def manual(self) -> bool:
        return self.kind == "asr" and not self.session.get("turn_detection")

    def start(self) -> list[Action]:
        actions: list[Action] = [Send(rp.encode("session.created", session=self.session))]
        if self.kind == "asr":
            actions.append(OpenRecognition(self._language()))
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
        if self.kind != "asr" or not isinstance(audio, str):
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

    def _on_session_finish(self, event: dict[str, Any], event_id: str) -> list[Action]:
        self.finishing = True
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
        part = {"type": "audio", "text": ""}
        ids = {"response_id": response.response_id, "output_index": 0}
        return [
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
        r["usage"] = {"characters": billed_characters(response.text)}
        actions: list[Action] = [
            Send(rp.encode("response.audio.done", **ids, content_index=0)),
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
        if self.finishing and self.pending == 0:
            actions += self._finished()
        return actions

    def on_transcript(self, transcript: Transcript) -> list[Action]:
        if not transcript.text:
            return []
        actions: list[Action] = []
        if self.item_id is None:
            self.item_id = rp.new_id("item")
            self.item_start = transcript.start_ms
            if not self.manual:
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
        self.item_id = None
        return actions

    def on_recognition_done(self) -> list[Action]:
        self.committing = False
        actions: list[Action] = []
        if self.manual:
            if self.item_id is None:
                self.item_id = rp.new_id("item")
            actions.append(Send(self._text_event("completed", transcript=" ".join(self.finals))))
            self.finals, self.item_id = [], None
        if self.finishing:
            return actions + self._finished()
        return [*actions, OpenRecognition(self._language())]

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
        for text in map(str.strip, texts):
            if text:
                self.pending += 1
                self.started = True
                actions.append(Respond(rp.new_id("resp"), rp.new_id("item"), text))
        if clear:
            self.text = ""
        return actions

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
