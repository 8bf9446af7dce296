"""Codecs for the SIP tests, from the media layer's registry."""

from __future__ import annotations

from bridge.media.g711 import PCMA, PCMU
from bridge.sip.sdp import RtpCodec

CODECS: tuple[RtpCodec, ...] = (PCMU, PCMA)
