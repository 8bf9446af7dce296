"""The embeddable widget in real headless Chromium, against a stub bridge (no real server).

The stub serves ``bridge/webrtc/static/`` plus ``/api/webrtc/config`` and
``/api/webrtc/offer``; the offer is answered by an aiortc peer that plays a 440 Hz tone,
listens to the browser's (fake, WAV-fed) microphone and sends a scripted transcript over
the page's "events" data channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import math
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aioice.ice
import av
import numpy as np
import pytest
from aiohttp import web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from tests.peers.chromium import Chromium, Page, find_chromium

pytestmark = [pytest.mark.peer, pytest.mark.timeout(120)]

STATIC_DIR = Path(__file__).resolve().parents[2] / "bridge" / "webrtc" / "static"
TEST_IDS = ("start-call", "hang-up", "mic-level", "call-state", "transcript")

BOT_FULL = "Hello! How can I help you today?"
BOT_HEARD = "Hello! How can I"
CALLER_FINAL = "I need help with my order"
BOT_SECOND = "Sure, let me look that up."


def said(who: str, text: str, final: bool, turn_id: str, interrupted: bool = False) -> dict:
    return {
        "type": "transcript",
        "who": who,
        "text": text,
        "final": final,
        "turn_id": turn_id,
        "interrupted": interrupted,
    }


# What the stub bot "says" over the data channel once the call is up: a bot turn the
# caller barges into, the caller's partial then final, and an uninterrupted bot turn.
SCRIPT: list[dict[str, Any]] = [
    {"type": "state", "state": "speaking"},
    said("bot", BOT_FULL, False, "b1"),
    said("caller", "I need", False, "c1"),
    said("bot", BOT_HEARD, True, "b1", interrupted=True),
    {"type": "state", "state": "listening"},
    said("caller", CALLER_FINAL, True, "c1"),
    said("bot", BOT_SECOND, False, "b2"),
    said("bot", BOT_SECOND, True, "b2"),
]

# JS helpers: the widget lives in the open shadow root of #voice-bridge-widget.
ROOT = "document.getElementById('voice-bridge-widget').shadowRoot"


def q(test_id: str) -> str:
    return f"{ROOT}.querySelector('[data-testid=\"{test_id}\"]')"


INBOUND_AUDIO_ENERGY = """(async () => {
    const pc = window.VoiceBridge.peerConnection;
    if (!pc) return 0;
    let energy = 0;
    (await pc.getStats()).forEach(r => {
        if (r.type === 'inbound-rtp' && r.kind === 'audio') energy = r.totalAudioEnergy || 0;
    });
    return energy;
})()"""


# --------------------------------------------------------------------------------------
# Stub bridge
# --------------------------------------------------------------------------------------


class ToneTrack(MediaStreamTrack):
    """A real-time paced sine tone, 20 ms frames of 48 kHz mono s16."""

    kind = "audio"

    def __init__(self, frequency: float = 440.0, rate: int = 48000) -> None:
        super().__init__()
        self.frequency = frequency
        self.rate = rate
        self._pts = 0
        self._started: float | None = None

    async def recv(self) -> av.AudioFrame:
        samples = self.rate // 50
        if self._started is None:
            self._started = time.monotonic()
        delay = self._started + self._pts / self.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = (np.arange(samples) + self._pts) / self.rate
        pcm = (0.3 * 32767 * np.sin(2 * math.pi * self.frequency * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, self.rate)
        self._pts += samples
        return frame


class StubBridge:
    """Just enough of the bridge's HTTP API for the widget, answered by aiortc."""

    def __init__(self, *, cors: bool = False) -> None:
        self.cors = cors
        self.offers: list[dict[str, Any]] = []
        self.peers: list[RTCPeerConnection] = []
        self.channels: list[Any] = []
        self.mic_peak_rms = 0.0
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- HTTP --------------------------------------------------------------------------

    @web.middleware
    async def _cors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not self.cors:
            return await handler(request)
        if request.method == "OPTIONS":
            response: web.StreamResponse = web.Response(status=204)
        else:
            response = await handler(request)
        response.headers["Access-Control-Allow-Origin"] = request.headers.get("Origin", "*")
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type"
        response.headers["Vary"] = "Origin"
        return response

    async def _index(self, _: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def _config(self, _: web.Request) -> web.Response:
        return web.json_response({"iceServers": []})

    async def _offer(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        if body.get("type") != "offer" or not isinstance(body.get("sdp"), str):
            return web.json_response({"error": "expected an SDP offer"}, status=400)
        self.offers.append(body)
        if body.get("dialplan") not in (None, "customer-service"):
            return web.json_response(
                {"error": f"unknown dialplan {body['dialplan']!r}"}, status=404
            )

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.peers.append(pc)
        pc.on("datachannel", self._on_datachannel)
        pc.on("track", self._on_track)

        @pc.on("connectionstatechange")
        async def _closed() -> None:
            if pc.connectionState in ("failed", "closed"):
                await pc.close()

        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="offer"))
        pc.addTrack(ToneTrack())  # reuses the transceiver the browser's mic offered
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response(
            {"sdp": pc.localDescription.sdp, "type": "answer", "call_id": f"stub-{len(self.peers)}"}
        )

    # -- media and events --------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_datachannel(self, channel: Any) -> None:
        assert channel.label == "events"
        self.channels.append(channel)
        if channel.readyState == "open":
            self._spawn(self._play_script(channel))
        else:
            channel.on("open", lambda: self._spawn(self._play_script(channel)))

    async def _play_script(self, channel: Any) -> None:
        for message in SCRIPT:
            await asyncio.sleep(0.15)
            if channel.readyState != "open":
                return
            channel.send(json.dumps(message))

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._listen(track))

    async def _listen(self, track: MediaStreamTrack) -> None:
        """Track how loud the caller's microphone arrives, to prove audio flows upstream."""
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                pcm = frame.to_ndarray().astype(np.float64) / 32768.0
                rms = float(np.sqrt(np.mean(pcm * pcm))) if pcm.size else 0.0
                self.mic_peak_rms = max(self.mic_peak_rms, rms)

    async def broadcast(self, message: dict[str, Any]) -> None:
        for channel in self.channels:
            if channel.readyState == "open":
                channel.send(json.dumps(message))

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(middlewares=[self._cors])
        app.router.add_get("/", self._index)
        app.router.add_static("/static", STATIC_DIR)
        app.router.add_get("/api/webrtc/config", self._config)
        app.router.add_post("/api/webrtc/offer", self._offer)
        app.router.add_route("OPTIONS", "/api/webrtc/{tail:.*}", self._config)  # CORS preflight
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def close(self) -> None:
        for pc in self.peers:
            await pc.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()


async def serve_host_page(html: str) -> tuple[web.AppRunner, str]:
    """A third-party site on its own origin (different port) that embeds the widget."""

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/"


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


def write_tone_wav(path: Path, *, seconds: float = 20.0, rate: int = 48000) -> Path:
    """48 kHz mono 16-bit 660 Hz tone: the fake microphone's input."""
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.5 * 32767 * np.sin(2 * math.pi * 660.0 * t)).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.tobytes())
    return path


@pytest.fixture
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    # aioice leaves out 127.0.0.1 from host candidates; the only network here is loopback.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda *_a, **_k: ["127.0.0.1"])


@pytest.fixture
async def stub(loopback_ice: None) -> AsyncIterator[StubBridge]:
    bridge = StubBridge()
    await bridge.start()
    try:
        yield bridge
    finally:
        await bridge.close()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Chromium]:
    find_chromium()  # skip (or fail under CI=true) before writing anything
    async with Chromium(fake_audio_wav=write_tone_wav(tmp_path / "mic.wav")) as chromium:
        yield chromium


async def wait_state(page: Page, state: str, timeout: float = 20.0) -> None:
    try:
        await page.wait_for(
            f"window.VoiceBridge && window.VoiceBridge.state === {state!r}", timeout=timeout
        )
    except TimeoutError:
        status = await page.evaluate(f"{q('call-state')}.textContent")
        raise AssertionError(f"widget never reached {state!r}; status line: {status!r}") from None


async def transcript_lines(page: Page) -> list[dict[str, Any]]:
    return await page.evaluate(
        f"""Array.from({q("transcript")}.querySelectorAll('[data-who]')).map(el => ({{
            who: el.dataset.who, turn: el.dataset.turnId, final: el.dataset.final,
            interrupted: el.dataset.interrupted,
            text: el.querySelector('.vbw-text').textContent,
            unheard: (el.querySelector('s') || {{}}).textContent || '',
            all: el.textContent}}))"""
    )


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


async def test_demo_page_renders_widget_inline(stub: StubBridge, browser: Chromium) -> None:
    page = await browser.new_page(stub.url + "/")
    assert await page.evaluate("document.title") == "Voice bot"
    await page.wait_for(f"!!{ROOT}")
    for test_id in TEST_IDS:
        assert await page.evaluate(f"!!{q(test_id)}"), f"missing data-testid={test_id}"
    host = "document.getElementById('voice-bridge-widget')"
    assert await page.evaluate(f"{host}.dataset.mode") == "inline"
    assert await page.evaluate("window.VoiceBridge.state") == "idle"
    assert await page.evaluate(f"{q('call-state')}.dataset.state") == "idle"
    assert await page.evaluate(f"{q('start-call')}.disabled") is False
    assert await page.evaluate(f"{q('hang-up')}.disabled") is True
    assert await page.evaluate("window.VoiceBridge.transcript()") == []
    assert await page.evaluate("window.VoiceBridge.config.dialplan") == "customer-service"
    assert await page.evaluate("window.VoiceBridge.config.bridgeUrl") == stub.url
    snippet = await page.evaluate("document.querySelector('pre').textContent")
    assert f'src="{stub.url}/static/widget.js"' in snippet
    assert page.exceptions == [], browser.diagnostics()


async def test_call_connects_streams_audio_and_shows_transcript(
    stub: StubBridge, browser: Chromium
) -> None:
    page = await browser.new_page(stub.url + "/")
    await page.wait_for(f"!!{q('start-call')}")
    await page.click(q("start-call"))
    await wait_state(page, "connected")
    assert stub.offers[-1]["dialplan"] == "customer-service"
    assert await page.evaluate(f"{q('hang-up')}.disabled") is False

    # The fake microphone (a loud 660 Hz WAV) drives the level meter ...
    await page.wait_for(f"Number({q('mic-level')}.dataset.level) > 0.3", timeout=10)
    # ... and reaches the stub bridge through WebRTC.
    for _ in range(100):
        if stub.mic_peak_rms > 0.01:
            break
        await asyncio.sleep(0.1)
    assert stub.mic_peak_rms > 0.01, "stub bridge received only silence from the page"

    # The stub's 440 Hz tone arrives and is played out.
    energy = await page.wait_for(f"{INBOUND_AUDIO_ENERGY}.then(e => e > 0 && e)", timeout=15)
    assert energy > 0

    # Transcript: partials replaced by turn_id, the interrupted bot turn visibly marked.
    await page.wait_for(
        "window.VoiceBridge.transcript().filter(e => e.final).length === 3", timeout=10
    )
    lines = await transcript_lines(page)
    assert [(line["who"], line["turn"]) for line in lines] == [
        ("bot", "b1"),
        ("caller", "c1"),
        ("bot", "b2"),
    ], lines
    interrupted, caller, second = lines
    assert interrupted["text"] == BOT_HEARD
    assert interrupted["interrupted"] == "true"
    assert interrupted["unheard"] == BOT_FULL[len(BOT_HEARD) :]
    assert "(interrupted)" in interrupted["all"]
    assert caller["text"] == CALLER_FINAL and caller["final"] == "true"
    assert second["text"] == BOT_SECOND and second["interrupted"] == "false"
    entries = await page.evaluate("window.VoiceBridge.transcript()")
    assert entries[0]["who"] == "bot" and entries[0]["interrupted"] is True
    assert entries[0]["spokenText"] == BOT_FULL

    # Hang up: UI ends, microphone and peer connection released, the stub sees it go.
    await page.click(q("hang-up"))
    await wait_state(page, "ended")
    assert await page.evaluate("window.VoiceBridge.peerConnection") is None
    assert "hung up" in await page.evaluate(f"{q('call-state')}.textContent")
    assert await page.evaluate(f"{q('start-call')}.disabled") is False
    assert await page.evaluate(f"Number({q('mic-level')}.dataset.level)") == 0
    for _ in range(100):
        if stub.peers[-1].connectionState in ("closed", "failed"):
            break
        await asyncio.sleep(0.1)
    assert stub.peers[-1].connectionState in ("closed", "failed")
    assert page.exceptions == [], browser.diagnostics()


HOST_PAGE = """<!doctype html>
<html><head><title>Some other shop</title>
<style>
  /* Hostile host styles: must not reach into the widget. */
  button {{ display: none !important; }}
  div {{ color: red; font-size: 40px; }}
</style></head>
<body>
  <h1>Welcome to another site</h1>
  <script src="{bridge}/static/widget.js" data-bridge-url="{bridge}"
          data-dialplan="{dialplan}" data-audio-processing="off"></script>
</body></html>
"""


async def test_embed_works_cross_origin_with_cors(stub: StubBridge, browser: Chromium) -> None:
    runner, host_url = await serve_host_page(
        HOST_PAGE.format(bridge=stub.url, dialplan="customer-service")
    )
    try:
        page = await browser.new_page(host_url)
        assert await page.evaluate("location.origin") != stub.url
        await page.wait_for(f"!!{q('start-call')}")
        host = "document.getElementById('voice-bridge-widget')"
        assert await page.evaluate(f"{host}.dataset.mode") == "floating"
        assert await page.evaluate(f"getComputedStyle({host}).position") == "fixed"
        assert await page.evaluate("window.VoiceBridge.config.audioProcessing") is False

        # Without CORS headers the browser refuses; the widget says so instead of hanging.
        stub.cors = False
        await page.click(q("start-call"))
        await wait_state(page, "error")
        assert "CORS" in await page.evaluate(f"{q('call-state')}.textContent")

        stub.cors = True
        await page.click(q("start-call"))
        await wait_state(page, "connected")
        settings = await page.evaluate(
            "window.VoiceBridge.peerConnection.getSenders()[0].track.getSettings()"
        )
        assert settings.get("echoCancellation") is False
        assert settings.get("autoGainControl") is False
        assert settings.get("noiseSuppression") is False
        await page.wait_for(
            f"window.VoiceBridge.transcript().some(e => e.text === {BOT_SECOND!r} && e.final)"
        )
        await page.wait_for(f"Number({q('mic-level')}.dataset.level) > 0.3", timeout=10)

        # The bot ends the call: the widget shows the server's reason.
        await stub.broadcast({"type": "hangup", "reason": "bot finished the conversation"})
        await wait_state(page, "ended")
        status = await page.evaluate(f"{q('call-state')}.textContent")
        assert "bot finished the conversation" in status
        assert page.exceptions == [], browser.diagnostics()
    finally:
        await runner.cleanup()


async def test_rejected_offer_and_early_hang_up(stub: StubBridge, browser: Chromium) -> None:
    stub.cors = True
    runner, host_url = await serve_host_page(HOST_PAGE.format(bridge=stub.url, dialplan="nope"))
    try:
        page = await browser.new_page(host_url)
        await page.wait_for(f"!!{q('start-call')}")
        assert await page.evaluate("window.VoiceBridge.start()") == "error"
        status = await page.evaluate(f"{q('call-state')}.textContent")
        assert "unknown dialplan 'nope'" in status, status
        assert await page.evaluate("window.VoiceBridge.error") == "unknown dialplan 'nope'"
        assert await page.evaluate("window.VoiceBridge.peerConnection") is None
        assert await page.evaluate(f"{q('start-call')}.disabled") is False

        # Hanging up while still connecting settles start() and releases everything,
        # including a microphone granted only after the hang-up.
        await page.evaluate(
            """(() => {
                const md = navigator.mediaDevices, gum = md.getUserMedia.bind(md);
                md.getUserMedia = c => gum(c).then(s => (window.lateMic = s));
            })()"""
        )
        settled = await page.evaluate(
            "(() => { const p = VoiceBridge.start(); VoiceBridge.hangup(); return p; })()"
        )
        assert settled == "ended"
        await page.wait_for("window.lateMic !== undefined")  # getUserMedia resolved late
        await page.wait_for("window.lateMic.getTracks().every(t => t.readyState === 'ended')")
        assert await page.evaluate("window.VoiceBridge.state") == "ended"
        assert await page.evaluate("window.VoiceBridge.peerConnection") is None
        assert page.exceptions == [], browser.diagnostics()
    finally:
        await runner.cleanup()
