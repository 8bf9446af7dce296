"""The RTP leg's socket adapter, on a real loopback socket."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np

from bridge.config import Config
from bridge.media.g711 import ulaw_encode
from bridge.media.rtp import RtpPacketizer
from bridge.server import Bridge
from bridge.sip.rtp_session import MediaClock, RtpLeg, RtpSettings
from bridge.sip.sdp import NegotiatedMedia
from bridge.speech.factory import SpeechEngines
from tests.emulator.fakes import FixedASR, ToneTTS
from tests.sip.sipp import free_port

REPO = Path(__file__).resolve().parents[2]


async def test_drain_reads_every_waiting_datagram(tmp_path: Path) -> None:
    """What a late tick relies on: packets queued while the loop was busy are all read at once,
    not one per loop iteration, and draining an empty socket returns at once."""
    config = Config()
    config.dialog.dialplans_dir = str(REPO / "dialplans")
    config.records.dir = str(tmp_path)
    bridge = Bridge(config)
    bridge.engines = SpeechEngines(asr=FixedASR(), tts=ToneTTS())
    call = await bridge.create_call(
        channel="sip",
        dialplan=bridge.dialplans.get(config.dialog.default_dialplan),
        output_rate=8000,
        notify=lambda _: None,
        remote="127.0.0.1",
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as caller:
        caller.bind(("127.0.0.1", 0))
        media = NegotiatedMedia(
            "PCMU", 0, 8000, 101, 20, "127.0.0.1", caller.getsockname()[1], "sendrecv"
        )
        port = free_port()
        leg = RtpLeg(call, media, "127.0.0.1", port, RtpSettings(), MediaClock())
        await leg.start()
        try:
            packetizer = RtpPacketizer(0)
            payload = ulaw_encode(np.full(160, 4000, np.int16))
            for _ in range(5):
                caller.sendto(packetizer.packetize_bytes(payload, 160), ("127.0.0.1", port))
            time.sleep(0.05)  # the loop is busy: its reader callback does not run meanwhile
            leg.drain()
            assert leg.session.counters.received == 5
            leg.drain()
            assert leg.session.counters.received == 5
        finally:
            leg.close()
            call.record.close("test", {})
