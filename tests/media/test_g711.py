import importlib
import warnings
from collections.abc import Callable

import numpy as np
import pytest

from bridge.media.g711 import (
    PCMA,
    PCMU,
    Codec,
    alaw_decode,
    alaw_encode,
    codec_by_name,
    codec_by_payload_type,
    ulaw_decode,
    ulaw_encode,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        audioop = importlib.import_module("audioop")  # stdlib up to 3.12, audioop-lts after
    except ImportError:
        audioop = None

needs_audioop = pytest.mark.skipif(audioop is None, reason="no audioop reference available")

Encode = Callable[[np.ndarray], bytes]
Decode = Callable[[bytes], np.ndarray]

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))
LAWS = [
    pytest.param(ulaw_encode, ulaw_decode, "lin2ulaw", "ulaw2lin", id="ulaw"),
    pytest.param(alaw_encode, alaw_decode, "lin2alaw", "alaw2lin", id="alaw"),
]


@needs_audioop
@pytest.mark.parametrize(("encode", "decode", "ref_encode", "ref_decode"), LAWS)
def test_bit_exact_with_audioop(
    encode: Encode, decode: Decode, ref_encode: str, ref_decode: str
) -> None:
    assert encode(ALL_INT16) == getattr(audioop, ref_encode)(ALL_INT16.tobytes(), 2)
    expected = np.frombuffer(getattr(audioop, ref_decode)(ALL_CODES, 2), np.int16)
    decoded = decode(ALL_CODES)
    assert decoded.dtype == np.int16
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize(
    ("encode", "decode", "codes", "levels"),
    [
        (ulaw_encode, ulaw_decode, b"\xff\xce\x4e\x80\x00", [0, 988, -988, 32124, -32124]),
        (alaw_encode, alaw_decode, b"\xd5\xfa\x7a\xaa\x2a", [8, 1008, -1008, 32256, -32256]),
    ],
    ids=["ulaw", "alaw"],
)
def test_known_values(encode: Encode, decode: Decode, codes: bytes, levels: list[int]) -> None:
    assert encode(np.array([0, 1000, -1000, 32767, -32768], np.int16)) == codes
    np.testing.assert_array_equal(decode(codes), levels)
    # Every decoded level is a reconstruction point, so transcoding twice is lossless.
    all_levels = decode(ALL_CODES)
    np.testing.assert_array_equal(decode(encode(all_levels)), all_levels)


@pytest.mark.parametrize(
    ("name", "payload_type", "expected"),
    [("PCMU", 0, PCMU), ("pcma", 8, PCMA), ("opus", 111, None)],
)
def test_registry(name: str, payload_type: int, expected: Codec | None) -> None:
    assert codec_by_name(name) is expected
    assert codec_by_payload_type(payload_type) is expected


@pytest.mark.parametrize("codec", [PCMU, PCMA], ids=lambda c: c.name)
def test_codec_round_trip_within_quantisation(codec: Codec) -> None:
    pcm = (8000 * np.sin(np.arange(160) * 2 * np.pi * 440 / 8000)).astype(np.int16)
    payload = codec.encode(pcm)
    assert codec.clock_rate == 8000 and len(payload) == 160
    assert np.max(np.abs(codec.decode(payload).astype(int) - pcm)) <= 256
