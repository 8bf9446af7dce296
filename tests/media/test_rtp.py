import pytest

from bridge.media.rtp import RtpError, RtpPacket, RtpPacketizer, seq_diff, ts_diff

BASIC = bytes.fromhex("80 00 1234 0000abcd 11223344") + b"\xff" * 4


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            BASIC,
            RtpPacket(0, 0x1234, 0xABCD, 0x11223344, b"\xff" * 4),
        ),
        (  # marker, PT 101, two CSRCs
            bytes.fromhex("82 e5 ffff ffffffff 00000001 00000002 00000003") + b"ab",
            RtpPacket(101, 0xFFFF, 0xFFFFFFFF, 1, b"ab", marker=True, csrc=(2, 3)),
        ),
        (  # one-byte-header extension (0xBEDE) with one word
            bytes.fromhex("90 08 0001 00000002 00000003 bede0001 10ff0000") + b"xyz",
            RtpPacket(8, 1, 2, 3, b"xyz", extension_profile=0xBEDE, extension=b"\x10\xff\0\0"),
        ),
        (  # padding of 3 bytes (two zeros + count)
            bytes.fromhex("a0 00 0001 00000002 00000003") + b"pay" + b"\0\0\x03",
            RtpPacket(0, 1, 2, 3, b"pay", padding=3),
        ),
        (  # everything at once, empty payload
            bytes.fromhex("b1 80 0001 00000002 00000003 00000004 10000000 01"),
            RtpPacket(0, 1, 2, 3, marker=True, csrc=(4,), extension_profile=0x1000, padding=1),
        ),
    ],
    ids=["basic", "marker-csrc", "extension", "padding", "all-flags"],
)
def test_parse_and_serialize_round_trip(data: bytes, expected: RtpPacket) -> None:
    assert RtpPacket.parse(data) == expected
    assert expected.serialize() == data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (BASIC[:11], "too short"),
        (b"\x40" + BASIC[1:], "version 1"),
        (bytes([0xA0]) + BASIC[1:-1] + b"\x00", "bad padding"),
        (bytes([0xA0]) + BASIC[1:-1] + b"\x40", "bad padding"),
        (bytes([0x82]) + BASIC[1:], "truncated CSRC"),
        (bytes([0x90]) + BASIC[1:12] + b"\xbe\xde", "truncated header extension"),
        (bytes([0x90]) + BASIC[1:12] + bytes.fromhex("bede0002 00000000"), "2 words"),
    ],
    ids=["short", "version", "zero-padding", "padding-overflow", "csrc", "ext-header", "ext-data"],
)
def test_parse_rejects_malformed(data: bytes, message: str) -> None:
    with pytest.raises(RtpError, match=message):
        RtpPacket.parse(data)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"payload_type": 128}, "payload type"),
        ({"sequence_number": 65536}, "sequence"),
        ({"timestamp": -1}, "timestamp"),
        ({"csrc": tuple(range(16))}, "15 CSRCs"),
        ({"extension_profile": 1, "extension": b"abc"}, "multiple of 4"),
        ({"extension": b"abcd"}, "needs a profile"),
        ({"padding": 256}, "padding"),
    ],
)
def test_invalid_fields_raise(fields: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"payload_type": 0, "sequence_number": 0, "timestamp": 0, "ssrc": 0}
    with pytest.raises(RtpError, match=message):
        RtpPacket(**(base | fields))


def test_rtp_error_is_a_value_error() -> None:
    assert issubclass(RtpError, ValueError)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [(5, 3, 2), (3, 5, -2), (0, 65535, 1), (65535, 0, -1), (32767, 0, 32767), (32768, 0, -32768)],
)
def test_seq_diff(a: int, b: int, expected: int) -> None:
    assert seq_diff(a, b) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [(160, 0, 160), (0, 0xFFFFFF60, 160), (0xFFFFFF60, 0, -160), (0, 1 << 31, -(1 << 31))],
)
def test_ts_diff(a: int, b: int, expected: int) -> None:
    assert ts_diff(a, b) == expected


def test_packetizer_numbers_are_continuous_across_wrap() -> None:
    packetizer = RtpPacketizer(0, ssrc=7, sequence_number=65535, timestamp=0xFFFFFFFF - 159)
    packets = [packetizer.packetize(b"x" * 160, 160) for _ in range(3)]
    assert [(p.sequence_number, p.timestamp, p.marker) for p in packets] == [
        (65535, 0xFFFFFF60, True),
        (0, 0, False),
        (1, 160, False),
    ]
    assert {p.ssrc for p in packets} == {7}


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        # "send" / "send+" / "send-": default, forced and suppressed marker; "talkspurt";
        # "advance N": skip N samples of silence. Expected: (seq, ts, marker) per packet sent.
        (["send", "send"], [(100, 1000, True), (101, 1160, False)]),
        (
            ["send", "advance 800", "talkspurt", "send"],
            [(100, 1000, True), (101, 1960, True)],
        ),
        (["send-", "send+"], [(100, 1000, False), (101, 1160, True)]),
        (["talkspurt", "send-", "send"], [(100, 1000, False), (101, 1160, False)]),
    ],
    ids=["first-packet-marked", "talkspurt-after-silence", "explicit-marker", "explicit-clears"],
)
def test_packetizer_marker_and_silence(
    script: list[str], expected: list[tuple[int, int, bool]]
) -> None:
    packetizer = RtpPacketizer(0, ssrc=1, sequence_number=100, timestamp=1000)
    markers = {"send": None, "send+": True, "send-": False}
    sent = []
    for step in script:
        if step in markers:
            sent.append(packetizer.packetize(b"\0" * 160, 160, marker=markers[step]))
        elif step == "talkspurt":
            packetizer.start_talkspurt()
        else:
            packetizer.advance(int(step.split()[1]))
    assert [(p.sequence_number, p.timestamp, p.marker) for p in sent] == expected


def test_packetizer_payload_type_override_and_zero_samples_keep_timestamp() -> None:
    packetizer = RtpPacketizer(0, ssrc=1, sequence_number=0, timestamp=500)
    events = [packetizer.packetize(b"evnt", 0, payload_type=101) for _ in range(2)]
    assert [(p.payload_type, p.sequence_number, p.timestamp) for p in events] == [
        (101, 0, 500),
        (101, 1, 500),
    ]
    assert packetizer.packetize(b"", 160).payload_type == 0


def test_packetizer_random_start_and_round_trip() -> None:
    packetizer = RtpPacketizer(8)
    packet = packetizer.packetize(b"abc", 3)
    assert RtpPacket.parse(packet.serialize()) == packet


def test_packetize_bytes_is_packetize_then_serialize() -> None:
    fast, slow = (
        RtpPacketizer(8, ssrc=9, sequence_number=65535, timestamp=2**32 - 160) for _ in "ab"
    )
    for i in range(3):
        if i == 2:  # the first packet carries the marker, then one after a talk-spurt start
            fast.start_talkspurt()
            slow.start_talkspurt()
        assert (
            fast.packetize_bytes(bytes([i]) * 160, 160)
            == slow.packetize(bytes([i]) * 160, 160).serialize()
        )
    assert (fast.sequence_number, fast.timestamp) == (2, 320)
