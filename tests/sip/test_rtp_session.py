"""The RTP leg's sans-I/O core: latching, filtering, DTMF, hold, ptime and the RTP timeout."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import replace

import numpy as np
import pytest

from bridge.media.dtmf import DtmfSender
from bridge.media.frame import AudioFrame
from bridge.media.g711 import ulaw_encode
from bridge.media.rtcp import (
    ReceiverReport,
    SenderReport,
    SourceDescription,
    middle32,
    ntp_timestamp,
    parse,
    serialize,
)
from bridge.media.rtp import RtpPacket, RtpPacketizer
from bridge.sip.rtp_session import MediaClock, RtpSession, RtpSettings
from bridge.sip.sdp import NegotiatedMedia

MEDIA = NegotiatedMedia("PCMU", 0, 8000, 101, 20, "127.0.0.1", 40000, "sendrecv")
SDP_ADDR = ("127.0.0.1", 40000)
NAT_ADDR = ("127.0.0.1", 45678)


def _session(media: NegotiatedMedia = MEDIA, timeout: float = 5.0) -> RtpSession:
    return RtpSession(media, 0.0, RtpSettings(no_rtp_timeout_s=timeout))


def _audio(packetizer: RtpPacketizer, level: int = 8000) -> bytes:
    return packetizer.packetize(ulaw_encode(np.full(160, level, np.int16)), 160).serialize()


def _bot(level: int = 1000) -> AudioFrame:
    return AudioFrame(np.full(160, level, np.int16), 8000)


def test_sends_to_sdp_address_then_latches_to_the_real_source() -> None:
    session = _session()
    assert session.remote == SDP_ADDR
    sender = RtpPacketizer(0)
    session.receive(_audio(sender), NAT_ADDR, 0.01)
    assert session.remote == NAT_ADDR and session.latched
    # Once latched, packets from elsewhere are not media of this call.
    session.receive(_audio(RtpPacketizer(0)), ("127.0.0.1", 9), 0.02)
    assert session.remote == NAT_ADDR and session.counters.ignored == 1


def test_unknown_payload_types_and_garbage_do_not_latch() -> None:
    session = _session()
    session.receive(RtpPacketizer(18).packetize(b"x" * 20, 160).serialize(), NAT_ADDR, 0.0)
    session.receive(b"\x00junk", NAT_ADDR, 0.0)
    assert not session.latched and session.counters.ignored == 2


def test_audio_goes_through_the_jitter_buffer_to_the_caller() -> None:
    session = _session()
    sender = RtpPacketizer(0)
    heard = []
    for tick in range(20):
        now = tick * 0.02
        session.receive(_audio(sender), SDP_ADDR, now)
        heard.append(session.caller_audio(now + 0.001))
    assert all(f.num_samples == 160 and f.sample_rate == 8000 for f in heard)
    assert heard[0].rms() == 0  # silence while the buffer fills
    assert heard[-1].rms() > 5000


def test_rtcp_reports_what_we_heard_and_learns_the_round_trip() -> None:
    session = _session()
    caller = RtpPacketizer(0, ssrc=77, sequence_number=65530)
    for tick in range(10):
        if tick != 4:  # one packet lost
            session.receive(_audio(caller), NAT_ADDR, tick * 0.02)
        else:
            caller.packetize(b"", 160)
        session.outbound(_bot)
    (sr, sdes) = parse(session.rtcp.report(wall=1000.0, now=0.2))
    assert isinstance(sr, SenderReport) and (sr.packets, sr.octets) == (10, 1600)
    assert sr.ntp == ntp_timestamp(1000.0) and isinstance(sdes, SourceDescription)
    (block,) = sr.reports
    assert (block.ssrc, block.cumulative_lost, block.highest_seq) == (77, 1, 65530 + 9)
    assert block.fraction_lost == 256 // 10
    # The caller echoes our SR's time 50 ms later, having held it 20 ms: a 30 ms round trip.
    echo = replace(block, ssrc=sr.ssrc, lsr=middle32(sr.ntp), dlsr=65536 * 20 // 1000)
    reply = serialize([ReceiverReport(77, (echo,)), SourceDescription(77, "caller")])
    session.rtcp_received(reply, ("127.0.0.2", 9), wall=1000.05, now=0.25)  # another host
    session.rtcp_received(reply, (NAT_ADDR[0], 45679), wall=1000.05, now=0.25)
    stats = session.rtcp.stats()
    assert stats["rtt_ms"] == pytest.approx(30, abs=0.1)
    assert (stats["received"], stats["ignored"], stats["peer_cumulative_lost"]) == (1, 1, 1)
    assert session.rtcp_remote == (NAT_ADDR[0], 45679)


def test_telephone_events_become_digits_once_per_key_press() -> None:
    session = _session()
    packetizer = RtpPacketizer(0)
    digits = [
        session.receive(p.serialize(), SDP_ADDR, 0.0)
        for key in "5#"
        for p in DtmfSender(packetizer, 101).packets(key)
    ]
    assert [d for d in digits if d] == ["5", "#"]
    assert session.counters.digits == 2


def test_packets_carry_ptime_of_audio_with_continuous_numbers() -> None:
    session = _session(replace(MEDIA, ptime=40))
    packets = [session.outbound(_bot) for _ in range(6)]
    sent = [RtpPacket.parse(p) for p in packets if p is not None]
    assert [p is None for p in packets] == [True, False] * 3
    assert [len(p.payload) for p in sent] == [320] * 3
    pairs = list(itertools.pairwise(sent))
    assert [(b.sequence_number - a.sequence_number) % 65536 for a, b in pairs] == [1, 1]
    assert [b.timestamp - a.timestamp for a, b in pairs] == [320, 320]
    assert sent[0].marker and not sent[1].marker


def test_hold_stops_sending_and_resume_keeps_time_and_marks_the_talkspurt() -> None:
    session = _session()
    first = RtpPacket.parse(session.outbound(_bot) or b"")
    session.update(replace(MEDIA, direction="recvonly"), 1.0)  # the peer put us on hold
    assert [session.outbound(_bot) for _ in range(3)] == [None] * 3
    session.update(MEDIA, 2.0)
    resumed = RtpPacket.parse(session.outbound(_bot) or b"")
    assert resumed.timestamp - first.timestamp == 4 * 160
    assert (resumed.sequence_number - first.sequence_number) % 65536 == 1
    assert resumed.marker


def test_bot_audio_waits_for_a_late_offers_answer() -> None:
    pulled: list[AudioFrame] = []

    def pull() -> AudioFrame:
        pulled.append(_bot())
        return pulled[-1]

    session = _session(replace(MEDIA, remote_addr="0.0.0.0", remote_port=0, direction="recvonly"))
    assert [session.outbound(pull) for _ in range(3)] == [None] * 3
    assert pulled == []  # nothing of the greeting is used up before the caller can hear it
    session.update(MEDIA, 1.0)  # the ACK's answer
    first = RtpPacket.parse(session.outbound(pull) or b"")
    assert len(pulled) == 1 and first.marker


def test_no_rtp_times_out_except_while_the_peer_is_not_sending() -> None:
    session = _session(timeout=5.0)
    assert not session.timed_out(4.9) and session.timed_out(5.1)
    session.update(replace(MEDIA, direction="sendonly"), 5.2)  # peer holds: it sends nothing
    assert not session.timed_out(60.0)
    session.update(MEDIA, 60.0)
    assert not session.timed_out(64.0) and session.timed_out(65.1)


def test_codec_change_and_new_address_apply_at_once() -> None:
    session = _session()
    session.receive(_audio(RtpPacketizer(0)), NAT_ADDR, 0.0)
    pcma = replace(MEDIA, codec="PCMA", payload_type=8, remote_port=40002)
    session.update(pcma, 1.0)
    assert session.remote == ("127.0.0.1", 40002) and not session.latched
    assert RtpPacket.parse(session.outbound(_bot) or b"").payload_type == 8
    session.receive(_audio(RtpPacketizer(0)), NAT_ADDR, 1.1)  # PCMU is no longer agreed
    assert not session.latched


class _TickLog:
    """Stands in for an RTP leg on the shared clock and records what it was asked to do."""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        self.name, self.log = name, log

    def send_tick(self, deadline: float, skipped: int) -> None:
        self.log.append(("send", self.name))

    def receive_tick(self, now: float) -> None:
        self.log.append(("receive", self.name))

    def drain(self) -> None:
        self.log.append(("drain", self.name))

    def prepare_tick(self) -> None:
        self.log.append(("prepare", self.name))


def _join_two(clock: MediaClock, log: list[tuple[str, str]]) -> list[_TickLog]:
    legs = [_TickLog("a", log), _TickLog("b", log)]
    for leg in legs:
        clock.join(leg)  # type: ignore[arg-type]
    return legs


async def test_media_clock_sends_then_receives_then_builds_the_next_packets() -> None:
    """Every leg's send comes first (only system calls), then every leg's caller audio, then
    the packets for the next tick; the clock stops when no leg is left."""
    clock = MediaClock()
    log: list[tuple[str, str]] = []
    legs = _join_two(clock, log)
    await asyncio.sleep(0.07)
    for leg in legs:
        clock.leave(leg)  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert clock._task is None
    log = [entry for entry in log if entry[0] != "drain"]  # a late tick on a busy machine
    ticks = [log[i : i + 6] for i in range(0, len(log), 6)]
    assert len(ticks) >= 2
    expected = [("send", "a"), ("send", "b"), ("receive", "a"), ("receive", "b")]
    assert all(tick == [*expected, ("prepare", "a"), ("prepare", "b")] for tick in ticks)


async def test_a_late_tick_reads_the_sockets_before_playing() -> None:
    """After the process was busy, packets that arrived meanwhile are read before the caller's
    frames are taken, so the stall does not turn into concealment of audio already here."""
    clock = MediaClock()
    log: list[tuple[str, str]] = []
    legs = _join_two(clock, log)
    await asyncio.sleep(0.05)
    on_time = len(log)
    asyncio.get_running_loop().call_soon(time.sleep, 0.05)  # the loop is busy for 50 ms
    await asyncio.sleep(0.05)
    for leg in legs:
        clock.leave(leg)  # type: ignore[arg-type]
    late = log.index(("drain", "a"), on_time)
    assert log[late - 2 : late + 4] == [
        ("send", "a"),
        ("send", "b"),
        ("drain", "a"),
        ("receive", "a"),
        ("drain", "b"),
        ("receive", "b"),
    ]
