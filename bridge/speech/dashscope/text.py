"""Text rules shared by the TTS clients and the emulator: sentence splitting and billing."""

from __future__ import annotations

import re

# A sentence ends at CJK terminal punctuation, a newline, or Latin terminal punctuation
# followed by whitespace (so "3.14" or "e.g.x" are not split).
_SENTENCE_END = re.compile(r"[。！？；!?;]+[\"'”’)）]*|[.…]+[\"'”’)]*(?=\s)|\n+")
_TAGS = re.compile(r"<[^>]*>")


def billed_characters(text: str) -> int:
    """DashScope's character count: CJK ideographs count 2, everything else 1."""
    return sum(2 if _is_cjk(ch) else 1 for ch in text)


def strip_ssml(text: str) -> str:
    """The spoken text of an SSML document (tags removed, whitespace collapsed)."""
    return " ".join(_TAGS.sub(" ", text).split())


def _is_cjk(ch: str) -> bool:
    code = ord(ch)
    return 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF


class SentenceSplitter:
    """Turns arbitrarily split text (LLM tokens) into complete sentences as soon as they close.

    Sentences keep their surrounding whitespace so that re-joining them gives the input back
    (a server that splits again then sees the same text).

    ``max_chars`` bounds a run-on sentence: it is cut at the last space (or hard) so speech can
    start before the text stream finishes.
    """

    def __init__(self, max_chars: int = 300) -> None:
        self.max_chars = max_chars
        self._buffer = ""

    def feed(self, text: str) -> list[str]:
        self._buffer += text
        out: list[str] = []
        while True:
            match = _SENTENCE_END.search(self._buffer)
            if match is None:
                break
            sentence, self._buffer = self._buffer[: match.end()], self._buffer[match.end() :]
            if sentence.strip():
                out.append(sentence)
        while len(self._buffer) > self.max_chars:
            cut = self._buffer.rfind(" ", 0, self.max_chars)
            cut = cut if cut > 0 else self.max_chars
            head, self._buffer = self._buffer[:cut], self._buffer[cut:]
            if head.strip():
                out.append(head)
        return out

    def flush(self) -> str:
        """The unfinished tail (spoken at the end of a turn)."""
        rest, self._buffer = self._buffer, ""
        return rest if rest.strip() else ""

    @property
    def pending(self) -> str:
        return self._buffer
