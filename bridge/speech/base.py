"""The small interfaces every speech engine implements: embedded engines and cloud clients alike.

A recogniser is opened once per call as a stream: audio goes in as it arrives, partial and final
transcripts come out. A synthesiser takes a stream of text (so an LLM's tokens can be spoken
before it finishes) and yields audio chunks, each tagged with the text it voices, so the call can
tell exactly what the caller heard when playout is cut off by barge-in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field

from bridge.media.frame import AudioFrame


class SpeechError(Exception):
    """A speech engine failed; the call decides whether to retry, fall back or apologise."""


@dataclass(frozen=True, slots=True)
class Transcript:
    """A recognition result. Partials are snapshots of the current sentence, not deltas."""

    text: str
    is_final: bool
    start_ms: int = 0  # from the start of the stream's audio
    end_ms: int = 0
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class WordMark:
    """A word and where it ends in the chunk's audio (for exact heard-text accounting)."""

    word: str
    end_ms: int


@dataclass(frozen=True, slots=True)
class SpeechChunk:
    """Synthesised audio plus the text it voices (``""`` when it continues earlier text)."""

    audio: AudioFrame
    text: str = ""
    words: tuple[WordMark, ...] = field(default_factory=tuple)


class ASRStream(ABC):
    """One call's recognition session. Cloud streams also expose ``metrics`` (a
    ``StreamMetrics``: latency, billed audio seconds) for the call record."""

    @abstractmethod
    def push(self, frame: AudioFrame) -> None:
        """Feed caller audio at the recogniser's ``sample_rate``; returns at once.

        Called for every frame of every call as it arrives, so it costs no task switch: the
        stream buffers the audio (bounded: each implementation says what it drops when full)
        and works on it, or sends it, from its own task at its own pace.
        """

    @abstractmethod
    def results(self) -> AsyncIterator[Transcript]:
        """Transcripts as they come; ends after :meth:`close` has flushed the last one."""

    @abstractmethod
    async def close(self) -> None:
        """Flush pending audio into final results, then end :meth:`results`."""


class ASR(ABC):
    """A recogniser: one instance per process, shared by all calls."""

    sample_rate: int

    @abstractmethod
    async def open_stream(self, language: str = "en") -> ASRStream: ...


class TTS(ABC):
    """A synthesiser: one instance per process, shared by all calls."""

    sample_rate: int
    #: Cloud engines take ``metrics=`` (a ``StreamMetrics`` they fill in) in :meth:`synthesize`,
    #: so each call can record latency and billed usage per utterance.
    metered: bool = False

    @abstractmethod
    def synthesize(
        self, text: AsyncIterable[str], voice: str | None = None
    ) -> AsyncIterator[SpeechChunk]:
        """Speak text as it streams in.

        Closing the returned iterator (``aclose()``, or cancelling the task that iterates it)
        cancels the synthesis at once, including any work already queued for it.
        """


async def text_once(text: str) -> AsyncIterator[str]:
    """Adapt a whole text to the streaming ``TTS.synthesize`` input."""
    yield text
