"""What the user agent tells the application about calls, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from bridge.sip.sdp import NegotiatedMedia, SessionDescription
from bridge.sip.transaction import Address


class CallControl(Protocol):
    """Where :class:`IncomingCall` sends the application's decision (the running endpoint)."""

    def answer(self, call_id: str) -> None: ...

    def reject(self, call_id: str, status: int = 486) -> None: ...


@dataclass(frozen=True)
class IncomingCall:
    """A new inbound call, already ringing; our SDP is ready for ``answer()``.

    A late offer (an INVITE without SDP) has no ``remote_sdp``: ``local_sdp`` is then our offer
    and ``media`` provisional (listening, nowhere to send) until the caller's answer arrives in
    the ACK as a :class:`MediaUpdated`.
    """

    call_id: str
    from_uri: str
    to_uri: str
    request_uri_user: str | None
    remote_sdp: SessionDescription | None
    local_sdp: SessionDescription
    media: NegotiatedMedia
    local_rtp_port: int
    source: Address
    control: CallControl | None = field(default=None, repr=False, compare=False)

    @property
    def remote_rtp_addr(self) -> tuple[str, int]:
        return self.media.remote_addr, self.media.remote_port

    def answer(self) -> None:
        self._control().answer(self.call_id)

    def reject(self, status: int = 486) -> None:
        self._control().reject(self.call_id, status)

    def _control(self) -> CallControl:
        if self.control is None:
            raise RuntimeError("this event is not attached to a running endpoint")
        return self.control


@dataclass(frozen=True)
class CallProgress:
    """A provisional response to our INVITE (100, 180, 183...)."""

    call_id: str
    status: int
    reason: str


@dataclass(frozen=True)
class CallAnswered:
    """Our outbound call was answered; media is agreed."""

    call_id: str
    media: NegotiatedMedia
    local_rtp_port: int


@dataclass(frozen=True)
class CallFailed:
    """Our outbound call ended before it was answered (486, 487, 408 on timeout...)."""

    call_id: str
    status: int
    reason: str


@dataclass(frozen=True)
class CallEnded:
    """An established (or ringing inbound) call is over; its RTP port is free again."""

    call_id: str
    reason: str


@dataclass(frozen=True)
class MediaUpdated:
    """A re-INVITE changed the media (hold/resume, codec or address), or the ACK brought the
    answer to the offer our 200 made for a late-offer INVITE."""

    call_id: str
    media: NegotiatedMedia


@dataclass(frozen=True)
class DtmfInfo:
    """A digit sent with SIP INFO (application/dtmf-relay or application/dtmf)."""

    call_id: str
    digit: str
    duration_ms: int | None = None


@dataclass(frozen=True)
class TransferProgress:
    """How a blind transfer we asked for is going: the REFER's response, then the transfer
    target's status lines from NOTIFY. ``final`` is set on the last report (success or not)."""

    call_id: str
    status: int
    reason: str
    final: bool


Event = (
    IncomingCall
    | CallProgress
    | CallAnswered
    | CallFailed
    | CallEnded
    | MediaUpdated
    | DtmfInfo
    | TransferProgress
)
