"""RTCP packets against byte layouts worked out by hand from RFC 3550 §6.4-6.6, and the
report-block counters of its appendix A.3."""

from __future__ import annotations

import pytest

from bridge.media.rtcp import (
    Bye,
    ReceiverReport,
    ReceptionStats,
    ReportBlock,
    RtcpError,
    RtcpPacket,
    SenderReport,
    SourceDescription,
    middle32,
    ntp_timestamp,
    parse,
    serialize,
)

UNIX_EPOCH_NTP = 0x83AA7E80 << 32  # 1970-01-01 on the NTP clock (seconds since 1900)

TABLE: list[tuple[str, RtcpPacket, str]] = [
    (
        "RR, one block, cumulative lost -1 (a duplicate), wrapped once",
        ReceiverReport(
            0x01020304,
            (ReportBlock(0x0A0B0C0D, 0x40, -1, 0x0001FFFF, 0x10, 0x11223344, 0x00010000),),
        ),
        "81c90007 01020304 0a0b0c0d 40ffffff 0001ffff 00000010 11223344 00010000",
    ),
    (
        "SR without blocks",
        SenderReport(1, UNIX_EPOCH_NTP, 160, 2, 320),
        "80c80006 00000001 83aa7e80 00000000 000000a0 00000002 00000140",
    ),
    (
        "SDES CNAME, the end item padded to a word",
        SourceDescription(1, "ab"),
        "81ca0003 00000001 01026162 00000000",
    ),
    ("BYE with a reason", Bye((1,), "bye"), "81cb0002 00000001 03627965"),
]


@pytest.mark.parametrize(("packet", "wire"), [row[1:] for row in TABLE], ids=[r[0] for r in TABLE])
def test_packets_match_the_rfc_layout(packet: RtcpPacket, wire: str) -> None:
    data = bytes.fromhex(wire.replace(" ", ""))
    assert serialize([packet]) == data
    assert parse(data) == [packet]


def test_compound_packet_round_trips_and_skips_unknown_types() -> None:
    report = ReceiverReport(7, (ReportBlock(9, 0, 3, 70000, 12),))
    app = bytes.fromhex("80cc0002 00000007 74657374".replace(" ", ""))  # APP "test"
    data = serialize([report]) + app + serialize([SourceDescription(7, "bridge@127.0.0.1")])
    assert parse(data) == [report, SourceDescription(7, "bridge@127.0.0.1")]
    assert parse(app) == []  # valid, with nothing for us (baresip pings this way)


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        ("40c90001 00000001", "version 1"),
        ("80c9", "truncated"),
        ("81c90002 00000001 00000000", "too short"),  # announces a block it does not carry
        ("80c90005 00000001", "runs past"),
        ("a0c90001 00000009", "padding"),  # padding count 9 > the 4 bytes of the body
    ],
)
def test_malformed_packets_are_refused_precisely(wire: str, error: str) -> None:
    with pytest.raises(RtcpError, match=error):
        parse(bytes.fromhex(wire.replace(" ", "")))


def test_ntp_time_and_its_middle_bits() -> None:
    assert ntp_timestamp(0.0) == UNIX_EPOCH_NTP
    assert ntp_timestamp(1.5) == UNIX_EPOCH_NTP + (1 << 32) + (1 << 31)
    assert middle32(UNIX_EPOCH_NTP + (1 << 31)) == 0x7E808000


def test_reception_stats_count_loss_across_the_wrap() -> None:
    stats = ReceptionStats(ssrc=5)
    for seq in (65534, 65535, 0, 2, 1):  # 1 comes late: not lost after all
        stats.received(seq)
    stats.received(1)  # a duplicate counts as received, as RFC 3550 A.3 notes
    stats.sender_report(SenderReport(5, UNIX_EPOCH_NTP + (3 << 32), 0, 0, 0), arrival=10.0)
    block = stats.report_block(now=10.5, jitter=40)
    # expected 65538 - 65534 + 1 = 5, received 6: cumulative -1, nothing lost this interval
    assert block == ReportBlock(5, 0, -1, 0x00010002, 40, 0x7E830000, 32768)
    for seq in (3, 6):  # 4 and 5 lost
        stats.received(seq)
    block = stats.report_block(now=11.0, jitter=40)
    assert (block.fraction_lost, block.cumulative_lost, block.highest_seq) == (
        (2 << 8) // 4,
        1,
        0x00010006,
    )
