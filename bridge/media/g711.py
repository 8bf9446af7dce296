"""G.711 µ-law / A-law codecs and the small codec registry SDP negotiation picks from.

Both laws are memoryless per-sample maps, so the whole codec is two lookup tables: the
encoder table is built once at import by running the classic segment/quantiser algorithm
(the Sun reference code that ``audioop`` also uses) over all 65,536 int16 inputs with numpy,
and encoding is a single fancy-index. That keeps us bit-exact with every other G.711 stack
without a per-sample Python loop or the ``audioop`` module, which Python 3.13 removed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

_ALL_INT16 = np.arange(-32768, 32768, dtype=np.int32)
_ALL_CODES = np.arange(256, dtype=np.int32)

_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159  # in the 14-bit domain
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _build_ulaw_encode() -> np.ndarray:
    pcm = _ALL_INT16 >> 2  # µ-law quantises a 14-bit magnitude
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, mag)  # first segment whose end >= mag
    code = (seg << 4) | ((mag >> (seg + 1)) & 0xF)
    return (np.where(seg >= 8, 0x7F, code) ^ mask).astype(np.uint8)


def _build_alaw_encode() -> np.ndarray:
    pcm = _ALL_INT16 >> 3  # A-law quantises a 13-bit magnitude
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(_ALAW_SEG_END, mag)
    shift = np.where(seg < 2, 1, seg)
    code = (seg << 4) | ((mag >> shift) & 0xF)
    return (np.where(seg >= 8, 0x7F, code) ^ mask).astype(np.uint8)


def _build_ulaw_decode() -> np.ndarray:
    u = ~_ALL_CODES & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _build_alaw_decode() -> np.ndarray:
    a = _ALL_CODES ^ 0x55
    seg = (a & 0x70) >> 4
    t = ((a & 0x0F) << 4) + np.where(seg == 0, 8, 0x108)
    t = t << np.maximum(seg - 1, 0)
    return np.where(a & 0x80, t, -t).astype(np.int16)


# Encoder tables are indexed by the int16 sample reinterpreted as uint16, which is where
# ``take(..., mode="wrap")`` puts a negative sample without a view.
_ULAW_ENC = np.roll(_build_ulaw_encode(), -32768)
_ALAW_ENC = np.roll(_build_alaw_encode(), -32768)
_ULAW_DEC = _build_ulaw_decode()
_ALAW_DEC = _build_alaw_decode()
# Every packet goes through here: dtype objects spare numpy converting a type on each call.
_INT16 = np.dtype(np.int16)
_UINT8 = np.dtype(np.uint8)


def _encode(table: np.ndarray, pcm: np.ndarray) -> bytes:
    return table.take(np.asarray(pcm, _INT16), mode="wrap").tobytes()  # take: half []'s cost


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """int16 PCM -> one µ-law byte per sample."""
    return _encode(_ULAW_ENC, pcm)


def ulaw_decode(data: bytes) -> np.ndarray:
    """µ-law bytes -> int16 PCM (a fresh array)."""
    return _ULAW_DEC.take(np.frombuffer(data, _UINT8))


def alaw_encode(pcm: np.ndarray) -> bytes:
    """int16 PCM -> one A-law byte per sample."""
    return _encode(_ALAW_ENC, pcm)


def alaw_decode(data: bytes) -> np.ndarray:
    """A-law bytes -> int16 PCM (a fresh array)."""
    return _ALAW_DEC.take(np.frombuffer(data, _UINT8))


@dataclass(frozen=True, slots=True)
class Codec:
    """What SDP needs to offer a codec (rtpmap name, static payload type, clock rate) plus
    the functions that move audio in and out of it, so callers never switch on names."""

    name: str
    payload_type: int
    clock_rate: int
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes], np.ndarray]


PCMU = Codec("PCMU", 0, 8000, ulaw_encode, ulaw_decode)
PCMA = Codec("PCMA", 8, 8000, alaw_encode, alaw_decode)

_CODECS = (PCMU, PCMA)


def codec_by_name(name: str) -> Codec | None:
    """Look up an rtpmap encoding name; SDP says these compare case-insensitively."""
    return next((c for c in _CODECS if c.name.lower() == name.lower()), None)


def codec_by_payload_type(payload_type: int) -> Codec | None:
    """Look up a static payload type (used when an SDP offer omits the rtpmap line)."""
    return next((c for c in _CODECS if c.payload_type == payload_type), None)
