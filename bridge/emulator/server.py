"""The emulator's HTTP side: routes, handshake auth and faults, the JSON control endpoint."""

from __future__ import annotations

import hmac
import json
import logging
import time

from aiohttp import web

from bridge.emulator.faults import Faults
from bridge.emulator.task_handler import TaskConnection
from bridge.emulator.task_server import Timers
from bridge.speech.base import ASR, TTS

log = logging.getLogger(__name__)


def default_engines() -> tuple[ASR, TTS]:
    """The embedded engines (models load once per process)."""
    from bridge.speech.local.piper import PiperTTS
    from bridge.speech.local.whisper import WhisperASR

    return WhisperASR(), PiperTTS()


class Emulator:
    """A local DashScope: ``/api-ws/v1/inference[/]`` and ``/api-ws/v1/realtime?model=…``.

    Speech is produced and recognised by the injected engines. ``faults`` can be changed at
    run time with ``POST /emulator/faults`` (same Bearer key as the speech endpoints).
    """

    def __init__(
        self,
        asr: ASR | None = None,
        tts: TTS | None = None,
        *,
        api_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        timers: Timers | None = None,
        words_in_end: bool = True,
        asr_speed: float = 1.0,
        omni_reply: str | None = None,
    ) -> None:
        if asr is None or tts is None:
            default_asr, default_tts = default_engines()
            asr, tts = asr or default_asr, tts or default_tts
        self.asr, self.tts = asr, tts
        self.api_key = api_key
        self.host, self.port = host, port
        self.faults = faults or Faults()
        self.timers = timers or Timers()
        self.words_in_end = words_in_end
        self.asr_speed = asr_speed  # how much faster than real time recognition may run
        self.omni_reply = omni_reply  # what Omni answers every turn; None: "You said: …"
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self.handshakes = 0  # WebSocket upgrades accepted
        self.tasks_started = 0  # task-protocol tasks that reached task-started
        self.last_disconnect = 0.0  # when a client socket last ended (monotonic clock)

    @property
    def base_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def inference_url(self) -> str:
        return self.base_url + "/api-ws/v1/inference"

    @property
    def realtime_url(self) -> str:
        return self.base_url + "/api-ws/v1/realtime"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api-ws/v1/inference", self._inference)
        app.router.add_get("/api-ws/v1/inference/", self._inference)
        app.router.add_get("/api-ws/v1/realtime", self._realtime)
        app.router.add_get("/emulator/faults", self._get_faults)
        app.router.add_post("/emulator/faults", self._set_faults)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if self.port == 0 and server is not None and server.sockets:  # type: ignore[union-attr]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"emulator stopping")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            token = request.query.get("api_key", "")
        return hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    def _refusal(self, request: web.Request) -> web.Response | None:
        status = self.faults.take_handshake_fault()
        if status is not None:
            return web.Response(status=status, text=f"emulated handshake failure {status}")
        if not self.authorized(request):
            return web.Response(status=401, text="Unauthorized, invalid API key")
        return None

    async def _inference(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        ws = await self._upgrade(request)
        try:
            await TaskConnection(self, request, ws).run()
        finally:
            self._sockets.discard(ws)
            self.last_disconnect = time.monotonic()
        return ws

    async def _realtime(self, request: web.Request) -> web.StreamResponse:
        from bridge.emulator.realtime_handler import RealtimeConnection

        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        ws = await self._upgrade(request)
        try:
            await RealtimeConnection(self, request, ws, request.query.get("model", "")).run()
        finally:
            self._sockets.discard(ws)
            self.last_disconnect = time.monotonic()
        return ws

    async def _upgrade(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        self._sockets.add(ws)
        self.handshakes += 1
        return ws

    async def _get_faults(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return web.Response(status=401)
        return web.json_response(self.faults.to_json())

    async def _set_faults(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return web.Response(status=401)
        try:
            self.faults = Faults.from_json(await request.json())
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        log.info("emulator faults set: %s", self.faults)
        return web.json_response(self.faults.to_json())
