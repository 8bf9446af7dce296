import pytest

from bridge.media.dtmf import (
    DIGITS,
    DtmfReceiver,
    DtmfSender,
    TelephoneEvent,
    digit_to_event,
    event_to_digit,
)
from bridge.media.rtp import RtpPacketizer


@pytest.mark.parametrize(
    ("payload", "event"),
    [
        (bytes.fromhex("05 0a 00a0"), TelephoneEvent(5, False, 10, 160)),
        (bytes.fromhex("0b 8a 0320"), TelephoneEvent(11, True, 10, 800)),
        (bytes.fromhex("0f bf ffff"), TelephoneEvent(15, True, 63, 65535)),
        (bytes.fromhex("10 00 0000"), TelephoneEvent(16, False, 0, 0)),
    ],
    ids=["digit-5", "hash-end", "D-max-fields", "flash"],
)
def test_payload_round_trip(payload: bytes, event: TelephoneEvent) -> None:
    assert TelephoneEvent.parse(payload) == event
    assert event.serialize() == payload


def test_reserved_bit_is_ignored_and_short_payload_rejected() -> None:
    assert TelephoneEvent.parse(bytes.fromhex("01 4a 0000")) == TelephoneEvent(1, False, 10, 0)
    with pytest.raises(ValueError, match="4 bytes"):
        TelephoneEvent.parse(b"\x01\x0a\x00")


@pytest.mark.parametrize(
    "fields", [{"event": 256}, {"event": 1, "volume": 64}, {"event": 1, "duration": 1 << 16}]
)
def test_field_ranges(fields: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="out of range"):
        TelephoneEvent(**fields)


@pytest.mark.parametrize(
    ("digit", "event"),
    [("0", 0), ("9", 9), ("*", 10), ("#", 11), ("A", 12), ("d", 15)],
)
def test_digit_event_mapping(digit: str, event: int) -> None:
    assert digit_to_event(digit) == event
    assert event_to_digit(event) == digit.upper()


@pytest.mark.parametrize("bad", ["E", "", "12", " "])
def test_bad_digit(bad: str) -> None:
    with pytest.raises(ValueError, match="not a DTMF digit"):
        digit_to_event(bad)


@pytest.mark.parametrize("event", [16, 32, 255])
def test_non_dtmf_events_have_no_digit(event: int) -> None:
    assert event_to_digit(event) is None


def event(code: int, end: bool = False, duration: int = 160) -> bytes:
    return TelephoneEvent(code, end, 10, duration).serialize()


@pytest.mark.parametrize(
    ("packets", "digits"),
    [
        (  # a normal press: start, updates, three ends
            [(1000, event(1)), (1000, event(1, duration=320)), *[(1000, event(1, True, 800))] * 3],
            ["1"],
        ),
        (  # the same key twice: only the timestamp tells the presses apart
            [(1000, event(5)), (1000, event(5, True)), (2600, event(5)), (2600, event(5, True))],
            ["5", "5"],
        ),
        (  # start and updates lost: the end packets alone still give the digit, once
            [(1000, event(11, True, 800))] * 3,
            ["#"],
        ),
        (  # an old repeated end arriving after the next press began is a straggler
            [(1000, event(2)), (2600, event(3)), (1000, event(2, True)), (2600, event(3, True))],
            ["2", "3"],
        ),
        (  # timestamps wrap between presses
            [(0xFFFFFF00, event(7)), (0xFFFFFF00, event(7, True)), (0x200, event(8))],
            ["7", "8"],
        ),
        (  # non-DTMF events are consumed silently
            [(1000, event(16)), (1000, event(16, True)), (2000, event(12))],
            ["A"],
        ),
    ],
    ids=["one-press", "repeat-key", "only-ends", "straggler", "ts-wrap", "flash"],
)
def test_receiver_reports_each_press_once(
    packets: list[tuple[int, bytes]], digits: list[str]
) -> None:
    receiver = DtmfReceiver()
    got = [receiver.feed(ts, payload) for ts, payload in packets]
    assert [d for d in got if d is not None] == digits


@pytest.mark.parametrize(
    ("duration_ms", "durations"),
    [
        (100, [160, 320, 480, 640, 800, 800, 800]),
        (50, [160, 320, 400, 400, 400]),
        (10, [80, 80, 80]),
    ],
)
def test_sender_packet_train(duration_ms: int, durations: list[int]) -> None:
    packetizer = RtpPacketizer(0, ssrc=9, sequence_number=65534, timestamp=4000)
    train = DtmfSender(packetizer, 101).packets("#", duration_ms)
    events = [TelephoneEvent.parse(p.payload) for p in train]

    assert [e.duration for e in events] == durations
    assert [e.end for e in events] == [False] * (len(durations) - 3) + [True] * 3
    assert {(e.event, e.volume) for e in events} == {(11, 10)}
    assert [p.marker for p in train] == [True] + [False] * (len(train) - 1)
    assert {(p.payload_type, p.timestamp, p.ssrc) for p in train} == {(101, 4000, 9)}
    assert [p.sequence_number for p in train] == [(65534 + i) % 65536 for i in range(len(train))]
    # Audio after the event continues at real time: one packet interval per packet sent.
    after = packetizer.packetize(b"\0" * 160, 160, marker=False)
    assert (after.sequence_number, after.timestamp) == (
        (65534 + len(train)) % 65536,
        4000 + len(train) * 160,
    )


@pytest.mark.parametrize("digit", list(DIGITS))
def test_sender_to_receiver(digit: str) -> None:
    packetizer = RtpPacketizer(101, ssrc=1, sequence_number=0, timestamp=0)
    sender = DtmfSender(packetizer)
    receiver = DtmfReceiver()
    got = [
        receiver.feed(p.timestamp, p.payload) for _ in range(2) for p in sender.packets(digit, 60)
    ]
    assert [d for d in got if d] == [digit, digit]
