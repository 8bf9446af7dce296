"""Where an answered SIP call runs: its pipeline (:class:`Call`) and its RTP leg, as one unit.

:class:`SipFront` keeps the signalling and drives each call through a small handle (hang up,
DTMF, new media, transfer progress, wait for the outcome), so the same front door works whether
calls run in its own process (:class:`LocalCallHost`) or spread over media worker processes
(``bridge.sip.media_workers``), where each worker runs a :class:`LocalCallHost` of its own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bridge.call import Call
from bridge.config import SipConfig
from bridge.dialog.dialplan import DialplanError
from bridge.dialog.engine import FlowDialog
from bridge.sip.rtp_session import MediaClock, RtpLeg, RtpSettings
from bridge.sip.sdp import NegotiatedMedia

if TYPE_CHECKING:
    from bridge.server import Bridge

log = logging.getLogger(__name__)

G711_RATE = 8000

CallRequests = Callable[[str, dict[str, object]], None]
"""What a running call asks of the SIP side, by SIP call id: ``{"type": "hangup"}`` or
``{"type": "transfer", "target": ...}`` (the call's notify messages)."""

REQUEST_TYPES = frozenset({"hangup", "transfer"})
"""The notify messages the SIP side acts on; the rest (transcripts, playout state) are for a
browser's screen, so a media worker does not send them to the main process."""


@dataclass(frozen=True)
class CallSpec:
    """Everything needed to run one answered SIP call (picklable: it may cross processes)."""

    sip_id: str
    media: NegotiatedMedia
    rtp_port: int
    dialplan: str
    remote: str
    variables: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CallOutcome:
    """How a call ended, and what its dialplan collected (an outbound call reports it)."""

    reason: str
    collected: dict[str, Any] = field(default_factory=dict)


class CallSetupFailed(Exception):
    """The call could not start (its RTP port could not be bound, its dialplan is gone)."""


class CallHandle(Protocol):
    """What the SIP side can do to a running call, wherever it runs."""

    @property
    def record_id(self) -> str: ...

    def hangup(self, reason: str) -> None: ...

    def dtmf(self, digit: str) -> None: ...

    def update(self, media: NegotiatedMedia) -> None: ...

    def transfer_refused(self, target: str) -> None: ...

    def transfer_progress(self, status: int, reason: str, final: bool) -> None: ...

    async def outcome(self) -> CallOutcome: ...


class CallHost(Protocol):
    """Runs calls for the SIP front door."""

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def start_call(self, spec: CallSpec, requests: CallRequests) -> CallHandle:
        """Bind the call's RTP port and start it; raises :class:`CallSetupFailed`."""
        ...

    def reload_dialplans(self) -> None: ...

    async def close(self) -> None: ...


class HostedCall:
    """A call and its RTP leg, running in this process."""

    def __init__(self, bridge: Bridge, call: Call, leg: RtpLeg) -> None:
        self._bridge = bridge
        self.call = call
        self.leg = leg
        self._task: asyncio.Task[CallOutcome] | None = None

    @property
    def record_id(self) -> str:
        return self.call.call_id

    @property
    def record_path(self) -> Path:
        return self.call.record.path

    def run(self) -> None:
        self._task = self._bridge.spawn(self._run())

    async def outcome(self) -> CallOutcome:
        assert self._task is not None, "outcome() before run()"
        return await asyncio.shield(self._task)

    def hangup(self, reason: str) -> None:
        self.call.hangup(reason)

    def dtmf(self, digit: str) -> None:
        self.call.dtmf(digit)

    def update(self, media: NegotiatedMedia) -> None:
        self.leg.update(media)

    def transfer_refused(self, target: str) -> None:
        self.call.record.add_event({"who": "system", "transfer_refused": target})

    def transfer_progress(self, status: int, reason: str, final: bool) -> None:
        self.call.record.add_event({"who": "system", "transfer_status": status, "reason": reason})
        if final and 200 <= status < 300:
            self.call.hangup("transferred")
        elif final:
            log.warning("call %s: transfer failed: %d %s", self.record_id, status, reason)

    async def _run(self) -> CallOutcome:
        media = asyncio.create_task(self.leg.run(), name=f"{self.record_id}-rtp")
        try:
            reason = await self.call.run()
        finally:
            media.cancel()
            self.leg.close()
            self._bridge.forget_call(self.call)
        dialog = self.call.dialog
        collected = dialog.collected() if isinstance(dialog, FlowDialog) else {}
        return CallOutcome(reason, collected)


class LocalCallHost:
    """Runs SIP calls in this process, all their RTP legs on one shared media clock."""

    def __init__(self, bridge: Bridge, config: SipConfig) -> None:
        self.bridge = bridge
        self.config = config
        self.settings = RtpSettings(no_rtp_timeout_s=config.no_rtp_timeout_s)
        self.clock = MediaClock()

    @property
    def ready(self) -> bool:
        return self.bridge.ready

    async def start(self) -> None:
        """Nothing to start: calls run on this process's loop."""

    async def start_call(self, spec: CallSpec, requests: CallRequests) -> HostedCall:
        try:
            plan = self.bridge.dialplans.get(spec.dialplan)
        except DialplanError as exc:
            raise CallSetupFailed(f"dialplan {spec.dialplan!r}: {exc}") from exc
        call = await self.bridge.create_call(
            channel="sip",
            dialplan=plan,
            output_rate=G711_RATE,
            notify=functools.partial(requests, spec.sip_id),
            remote=spec.remote,
            variables=spec.variables,
        )
        leg = RtpLeg(call, spec.media, self.config.host, spec.rtp_port, self.settings, self.clock)
        try:
            await leg.start()
        except OSError as exc:
            self.bridge.abandon_call(call, "setup-failed")
            raise CallSetupFailed(f"cannot bind RTP port {spec.rtp_port}: {exc}") from exc
        hosted = HostedCall(self.bridge, call, leg)
        hosted.run()
        return hosted

    def reload_dialplans(self) -> None:
        """The bridge's own library is reloaded by its owner (SIGHUP, the watcher)."""

    async def close(self) -> None:
        """Calls end with the bridge (``Bridge.shutdown``)."""
