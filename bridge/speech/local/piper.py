"""Embedded text-to-speech with Piper, streamed sentence by sentence.

A reply is spoken as soon as its first sentence is complete, while the language model is still
writing the rest. Sentences are synthesised in the runtime's TTS pool (Piper runs ~15x faster
than real time here), a couple ahead of playout so consecutive sentences follow without a gap.
Finished sentences go into a prompt cache, as real IVRs do: fixed dialplan prompts ("Please hold
while I transfer you.") are synthesised once per process, not once per call.

This voice's model has no phoneme-alignment output, so chunks carry no word marks and the playout
estimates how much of a cut-off chunk was heard.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator

import numpy as np

from bridge.media.frame import AudioFrame
from bridge.speech.base import TTS, SpeechChunk, SpeechError
from bridge.speech.local.runtime import LocalRuntime, get_runtime

Audio = tuple[np.ndarray, ...]  # one read-only int16 array per Piper chunk of a sentence

# Sentence ends: terminal punctuation (plus closing quotes/brackets) followed by whitespace, or a
# line break. Requiring the whitespace is what keeps "3." of "3.5" waiting for more text.
_BOUNDARY = re.compile(r"([.!?…]+[\"'”’)\]]*)\s+|\s*\n\s*")
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "vs", "etc", "e.g", "i.e", "a.m", "p.m"}
)


class SentenceSplitter:
    """Cuts streamed text into sentences, holding an incomplete tail until more text comes.

    A tail longer than ``max_chars`` without a sentence end is cut at the last comma (or space)
    so a run-on reply does not delay the first audio indefinitely.
    """

    def __init__(self, max_chars: int = 200) -> None:
        self.max_chars = max_chars
        self._tail = ""

    def feed(self, text: str) -> list[str]:
        self._tail += text
        sentences: list[str] = []
        start = 0
        for match in _BOUNDARY.finditer(self._tail):
            end_mark = match.group(1)
            if end_mark == "." and _is_abbreviation(self._tail[start : match.start()]):
                continue
            sentences.append(self._tail[start : match.end()])
            start = match.end()
        self._tail = self._tail[start:]
        while len(self._tail) > self.max_chars:
            cut = max(self._tail.rfind(sep, 0, self.max_chars) for sep in (", ", "; ", ": "))
            if cut <= 0:
                cut = self._tail.rfind(" ", 0, self.max_chars)
            cut = cut + 1 if cut > 0 else self.max_chars
            sentences.append(self._tail[:cut])
            self._tail = self._tail[cut:]
        return _speakable(sentences)

    def flush(self) -> list[str]:
        """The incomplete tail, once the text has ended."""
        tail, self._tail = self._tail, ""
        return _speakable([tail])


def _is_abbreviation(text_before_period: str) -> bool:
    words = text_before_period.split()
    if not words:
        return False
    word = words[-1].lstrip("\"'“‘([")
    return word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isupper())


def _speakable(pieces: list[str]) -> list[str]:
    """Pieces with normalised spacing that contain something to say ("..." gives no audio)."""
    normalised = (" ".join(piece.split()) for piece in pieces)
    return [piece for piece in normalised if any(char.isalnum() for char in piece)]


class PromptCache:
    """Least-recently-used synthesised sentences, bounded by their total audio bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.bytes = 0
        self._entries: OrderedDict[tuple[str, str], Audio] = OrderedDict()
        self._lock = threading.Lock()  # shared by every call's synthesis

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, str]) -> Audio | None:
        with self._lock:
            audio = self._entries.get(key)
            if audio is None:
                self.misses += 1
                return None
            self.hits += 1
            self._entries.move_to_end(key)
            return audio

    def put(self, key: tuple[str, str], audio: Audio) -> None:
        size = sum(part.nbytes for part in audio)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= sum(part.nbytes for part in old)
            self._entries[key] = audio
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= sum(part.nbytes for part in evicted)


# What the sentence reader hands the speaker: a sentence and its synthesis, the end of the text
# (None), or the error the text source raised.
_Item = tuple[str, asyncio.Task[Audio]] | Exception | None


class PiperTTS(TTS):
    """Piper with the bundled US English voice; one instance per process."""

    sample_rate = 22050

    def __init__(
        self,
        runtime: LocalRuntime | None = None,
        *,
        cache_bytes: int = 16 * 2**20,
        lookahead: int = 2,
        max_sentence_chars: int = 200,
    ) -> None:
        """At most ``lookahead`` + 1 sentences are synthesised ahead of the one being played
        (reading the text waits meanwhile); ``cache_bytes`` of audio (16 MiB ≈ 6 min) stay
        cached."""
        self._runtime = runtime or get_runtime()
        self.voice = self._runtime.piper_voice_name
        self.cache = PromptCache(cache_bytes)
        self._lookahead = lookahead
        self._max_sentence_chars = max_sentence_chars

    def synthesize(
        self, text: AsyncIterable[str], voice: str | None = None
    ) -> AsyncIterator[SpeechChunk]:
        if voice not in (None, self.voice):
            raise SpeechError(f"unknown Piper voice {voice!r} (installed: {self.voice!r})")
        return self._speak(text)

    async def _speak(self, text: AsyncIterable[str]) -> AsyncIterator[SpeechChunk]:
        ready: asyncio.Queue[_Item] = asyncio.Queue(self._lookahead)
        reader = asyncio.create_task(self._read(text, ready))
        timestamp = 0
        try:
            while (item := await ready.get()) is not None:
                if isinstance(item, Exception):
                    raise SpeechError(f"text source failed: {item}") from item
                sentence, synthesis = item
                for index, samples in enumerate(await synthesis):
                    frame = AudioFrame(samples, self.sample_rate, timestamp)
                    timestamp = frame.end_timestamp
                    yield SpeechChunk(frame, sentence if index == 0 else "")
        finally:
            # Stop reading text, and drop queued sentences: unstarted syntheses never run.
            reader.cancel()
            while not ready.empty():
                item = ready.get_nowait()
                if isinstance(item, tuple):
                    _discard(item[1])

    async def _read(self, text: AsyncIterable[str], ready: asyncio.Queue[_Item]) -> None:
        """Split the text into sentences and start synthesising each as soon as it is complete."""
        splitter = SentenceSplitter(self._max_sentence_chars)
        try:
            async for piece in text:
                for sentence in splitter.feed(piece):
                    await self._enqueue(sentence, ready)
            for sentence in splitter.flush():
                await self._enqueue(sentence, ready)
        except Exception as exc:
            await ready.put(exc)
        else:
            await ready.put(None)

    async def _enqueue(self, sentence: str, ready: asyncio.Queue[_Item]) -> None:
        synthesis = asyncio.create_task(self._render(sentence))
        try:
            await ready.put((sentence, synthesis))
        except BaseException:
            _discard(synthesis)
            raise

    async def _render(self, sentence: str) -> Audio:
        key = (self.voice, sentence)
        audio = self.cache.get(key)
        if audio is None:
            try:
                audio = await self._runtime.tts_pool.run(lambda: self._synthesize(sentence))
            except SpeechError:
                raise
            except Exception as exc:
                raise SpeechError(f"Piper failed on {sentence!r}: {exc}") from exc
            self.cache.put(key, audio)
        return audio

    def _synthesize(self, sentence: str) -> Audio:
        """Blocking: runs in the TTS pool."""
        chunks = list(self._runtime.piper().synthesize(sentence))
        audio = []
        for chunk in chunks:
            if chunk.sample_rate != self.sample_rate:
                raise SpeechError(f"Piper voice speaks at {chunk.sample_rate} Hz")
            samples = chunk.audio_int16_array
            samples.flags.writeable = False  # shared through the cache
            audio.append(samples)
        return tuple(audio)


def _discard(task: asyncio.Task[Audio]) -> None:
    """Cancel a synthesis nobody will play, without leaving its error unretrieved."""
    if task.done():
        if not task.cancelled():
            task.exception()
    else:
        task.cancel()
