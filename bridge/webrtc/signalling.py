"""HTTP routes for browser calls: the widget, its config, and the SDP offer/answer exchange.

Every bad request gets a 4xx with a JSON body naming the problem (and a log line); nothing a
browser sends can take down the server or another call.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from bridge.dialog.dialplan import DialplanError
from bridge.webrtc.appkeys import BRIDGE
from bridge.webrtc.peer import (
    WEBRTC_RATE,
    BotAudioTrack,
    pump_caller_audio,
    set_uplink_prefetch,
)

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
ICE_GATHERING_TIMEOUT_S = 10.0
# Messages for the page that arrive before its data channel opens; later ones drop the oldest.
PENDING_EVENTS_MAX = 100


def json_error(status: int, message: str, **headers: str) -> web.Response:
    log.warning("HTTP %d: %s", status, message)
    return web.json_response({"error": message}, status=status, headers=headers)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def webrtc_config(request: web.Request) -> web.Response:
    bridge = request.app[BRIDGE]
    servers = [{"urls": url} for url in bridge.config.webrtc.ice_servers]
    return web.json_response({"iceServers": servers})


async def offer(request: web.Request) -> web.Response:
    """Answer a browser's SDP offer and start its call."""
    bridge = request.app[BRIDGE]
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = bridge.config.http.max_body_bytes
        return json_error(413, f"request body larger than {limit} bytes")
    try:
        params = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return json_error(400, f"body is not valid JSON: {exc}")
    problem = _offer_problem(params)
    if problem:
        return json_error(400, problem)
    dialplan_name = params.get("dialplan") or bridge.config.dialog.default_dialplan
    try:
        plan = bridge.dialplans.find("webrtc", dialplan_name)
    except DialplanError as exc:
        return json_error(404, str(exc))
    if not bridge.ready:
        return json_error(503, "speech engines are still loading", **{"Retry-After": "5"})
    if bridge.at_capacity():
        return json_error(503, "too many concurrent calls", **{"Retry-After": "10"})

    ice_servers = [RTCIceServer(urls=url) for url in bridge.config.webrtc.ice_servers]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers))
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=params["sdp"], type="offer"))
    except Exception as exc:  # aiortc raises ValueError and friends on malformed SDP
        await pc.close()
        return json_error(400, f"invalid SDP offer: {exc}")

    channel_holder: list[object] = []
    pending: list[str] = []

    def notify(event: dict[str, object]) -> None:
        message = json.dumps(event)
        channel = channel_holder[0] if channel_holder else None
        if channel is not None and channel.readyState == "open":  # type: ignore[attr-defined]
            channel.send(message)  # type: ignore[attr-defined]
        elif len(pending) < PENDING_EVENTS_MAX:
            pending.append(message)

    call = await bridge.create_call(
        channel="webrtc",
        dialplan=plan,
        output_rate=WEBRTC_RATE,
        notify=notify,
        remote=request.remote or "",
    )

    @pc.on("datachannel")
    def on_datachannel(channel: object) -> None:
        if getattr(channel, "label", "") != "events":
            return
        channel_holder.append(channel)

        @channel.on("open")  # type: ignore[attr-defined]
        def flush_pending() -> None:
            while pending:
                channel.send(pending.pop(0))  # type: ignore[attr-defined]

        if channel.readyState == "open":  # type: ignore[attr-defined]
            flush_pending()

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            call.hangup("peer-gone" if pc.connectionState == "failed" else "hangup")

    try:
        pc.addTrack(BotAudioTrack(call))
        answer = await pc.createAnswer()
        await asyncio.wait_for(pc.setLocalDescription(answer), ICE_GATHERING_TIMEOUT_S)
    except Exception as exc:
        await pc.close()
        bridge.abandon_call(call, "setup-failed")
        return json_error(400, f"cannot answer this offer: {exc}")

    async def run_call() -> None:
        try:
            await call.run()
        finally:
            bridge.forget_call(call)
            await pc.close()

    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio":
            set_uplink_prefetch(transceiver.receiver, bridge.config.webrtc.uplink_prefetch_frames)
            bridge.spawn(pump_caller_audio(transceiver.receiver.track, call))
    bridge.spawn(run_call())
    return web.json_response(
        {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "call_id": call.call_id}
    )


def _offer_problem(params: object) -> str | None:
    if not isinstance(params, dict):
        return "body must be a JSON object"
    if params.get("type") != "offer":
        return "field 'type' must be \"offer\""
    sdp = params.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        return "field 'sdp' must be a non-empty string"
    if "m=audio" not in sdp:
        return "offer has no audio media section (m=audio)"
    dialplan = params.get("dialplan")
    if dialplan is not None and not isinstance(dialplan, str):
        return "field 'dialplan' must be a string"
    return None


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/api/webrtc/config", webrtc_config)
    app.router.add_post("/api/webrtc/offer", offer)
    app.router.add_static("/static/", STATIC_DIR)
