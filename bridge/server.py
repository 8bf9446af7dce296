"""Composition: engines, dialplans and the call registry, served over HTTP, WebRTC and SIP.

`Bridge` is the transport-independent core every front door (WebRTC signalling, the SIP front
door) uses to create calls; `serve()` runs HTTP and SIP side by side until stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
import uuid
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bridge.call import Call, CallSettings, Notify
from bridge.campaign import api as campaign_api
from bridge.campaign.service import CampaignService, open_campaigns
from bridge.config import Config
from bridge.dialog.dialplan import Dialplan
from bridge.dialog.engine import build_dialog
from bridge.dialog.library import DialplanLibrary
from bridge.media.recorder import CallRecord
from bridge.sip import api as sip_api
from bridge.sip.front import SipFront
from bridge.speech.base import text_once
from bridge.speech.factory import SpeechEngines, build_engines, dashscope_settings
from bridge.webrtc import signalling
from bridge.webrtc.appkeys import BRIDGE
from bridge.webrtc.ice import use_ice_host_addresses

log = logging.getLogger(__name__)


class Bridge:
    """Shared state of one bridge process."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.dialplans = DialplanLibrary(Path(config.dialog.dialplans_dir))
        self.records_dir = Path(config.records.dir)
        self.calls: dict[str, Call] = {}
        self.worker_calls = 0
        """Calls running in SIP media worker processes (they count toward capacity too)."""
        self.engines: SpeechEngines | None = None
        # VAD inference for every call, off the event loop; one thread keeps frames in order.
        self.vad_executor = ThreadPoolExecutor(1, thread_name_prefix="vad")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._http: aiohttp.ClientSession | None = None  # dialplan webhooks and LLM requests

    @property
    def ready(self) -> bool:
        return self.engines is not None

    async def load_engines(self) -> None:
        """Load models off the event loop; /healthz turns green when this returns."""
        engines = await build_engines(self.config.speech)
        await self.warm_prompts(engines)
        await engines.warm()
        self.engines = engines
        # Models and startup state live for good: take them out of the collector's scans, so
        # its older-generation passes stay short enough not to delay the 20 ms media clock.
        gc.freeze()
        log.info("speech engines ready")

    async def warm_prompts(self, engines: SpeechEngines) -> None:
        """Synthesise every dialplan's fixed prompts once, so callers never wait for them
        (into the embedded voice's cache: a cloud voice is not cached, only billed)."""
        started = time.monotonic()
        texts = {
            text for name in self.dialplans.names() for text in self.dialplans.get(name).prompts()
        }
        for text in sorted(texts):
            async for _ in engines.prompt_tts.synthesize(text_once(text)):
                pass
        log.info("%d prompts synthesised in %.1f s", len(texts), time.monotonic() - started)

    def at_capacity(self) -> bool:
        return len(self.calls) + self.worker_calls >= self.config.calls.max_concurrent

    async def create_call(
        self,
        *,
        channel: str,
        dialplan: Dialplan,
        output_rate: int,
        notify: Notify,
        remote: str,
        variables: dict[str, str] | None = None,
    ) -> Call:
        """A call running ``dialplan``; ``variables`` (an outbound call's, e.g. a campaign
        contact's columns) are given to it beside ``call`` (id, channel, remote).

        The record's folder and files are created in a worker thread: file-system calls take a
        millisecond or more, and calls start while other calls' media runs on this loop."""
        assert self.engines is not None, "create_call before engines are loaded"
        call_id = uuid.uuid4().hex[:12]
        record = await asyncio.to_thread(
            CallRecord.open,
            self.records_dir,
            call_id,
            self.config.records.sample_rate,
            {
                "call_id": call_id,
                "channel": channel,
                "dialplan": dialplan.name,
                "remote": remote,
                "started": datetime.now(UTC).isoformat(),
            },
        )
        speech = self.config.speech
        dialog = build_dialog(
            dialplan,
            self.http_session(),
            variables={
                **(variables or {}),
                "call": {"id": call_id, "channel": channel, "remote": remote},
            },
            llm_base_url=self.config.dialog.llm_base_url,
            llm_model=self.config.dialog.llm_model,
        )
        call = Call(
            call_id=call_id,
            dialog=dialog,
            asr=self.engines.asr,
            tts=self.engines.tts,
            record=record,
            output_rate=output_rate,
            settings=CallSettings(
                vad_engine=speech.vad.engine,
                vad_threshold=speech.vad.threshold,
                vad_min_speech_ms=speech.vad.min_speech_ms,
                vad_min_silence_ms=speech.vad.min_silence_ms,
                language=dialplan.language or speech.asr.language,
                voice=dialplan.voice or speech.tts.voice,
                no_media_timeout_s=self.config.calls.no_media_timeout_s,
                max_duration_s=self.config.calls.max_duration_s,
            ),
            notify=notify,
            vad_executor=self.vad_executor,
        )
        self.calls[call_id] = call
        return call

    def http_session(self) -> aiohttp.ClientSession:
        """One connection pool for every call's webhooks and LLM streams."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    def abandon_call(self, call: Call, reason: str) -> None:
        """A call whose set-up failed before it ran: still leave its record behind."""
        self.calls.pop(call.call_id, None)
        call.record.close(reason, {})

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a background task the bridge keeps a reference to (and cancels on shutdown)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def forget_call(self, call: Call) -> None:
        self.calls.pop(call.call_id, None)

    async def shutdown(self) -> None:
        for call in list(self.calls.values()):
            call.hangup("shutdown")
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)
        for task in list(self._tasks):
            task.cancel()
        self.vad_executor.shutdown(wait=False, cancel_futures=True)
        if self._http is not None:
            await self._http.close()

    def reload_dialplans(self) -> None:
        """Take in edited dialplans that check clean (on SIGHUP); broken edits are only logged."""
        for problem in self.dialplans.reload():
            log.error("dialplan not reloaded: %s", problem)


async def healthz(request: web.Request) -> web.Response:
    bridge: Bridge = request.app[BRIDGE]
    if not bridge.ready:
        return web.json_response({"status": "loading"}, status=503)
    return web.json_response({"status": "ok", "calls": len(bridge.calls) + bridge.worker_calls})


def cors_middleware(origins: list[str]) -> Any:
    """Let the widget be embedded on other sites' pages (configured origins only)."""

    def allow(origin: str | None, headers: Any) -> None:
        if origin and ("*" in origins or origin in origins):
            headers["Access-Control-Allow-Origin"] = "*" if "*" in origins else origin
            headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            headers["Access-Control-Allow-Headers"] = "Content-Type"

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and origin:
            response: web.StreamResponse = web.Response(status=204)
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                allow(origin, exc.headers)
                raise
        allow(origin, response.headers)
        return response

    return middleware


def build_app(
    bridge: Bridge, sip: SipFront | None = None, campaigns: CampaignService | None = None
) -> web.Application:
    app = web.Application(
        client_max_size=bridge.config.http.max_body_bytes,
        middlewares=[cors_middleware(bridge.config.http.cors_origins)],
    )
    app[BRIDGE] = bridge
    app.router.add_get("/healthz", healthz)
    signalling.add_routes(app)
    if sip is not None:
        sip_api.add_routes(app, sip)
    if campaigns is not None:
        campaign_api.add_routes(app, campaigns)
    return app


def reload_dialplans(bridge: Bridge, sip: SipFront | None) -> None:
    bridge.reload_dialplans()
    if sip is not None:
        sip.reload_dialplans()


async def serve(config: Config) -> None:
    """Run the bridge until SIGINT/SIGTERM."""
    dashscope_settings(config.speech)  # a missing key is a ConfigError before any port is bound
    use_ice_host_addresses(config.webrtc.ice_hosts)
    bridge = Bridge(config)
    sip = SipFront(bridge, config.sip) if config.sip.enabled else None
    campaigns = None
    if sip is not None and config.campaigns.enabled:
        campaigns = await open_campaigns(config, bridge, sip)
    runner = web.AppRunner(build_app(bridge, sip, campaigns), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.http.host, config.http.port)
    await site.start()
    log.info("HTTP listening on http://%s:%d", config.http.host, config.http.port)
    if sip is not None:
        await sip.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError, AttributeError):  # no SIGHUP on Windows
        loop.add_signal_handler(signal.SIGHUP, reload_dialplans, bridge, sip)
    interval = config.dialog.reload_interval_s
    watcher = asyncio.create_task(bridge.dialplans.watch(interval)) if interval > 0 else None
    loader = asyncio.create_task(bridge.load_engines())

    def on_loaded(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("cannot load speech engines: %s", task.exception())
            failed.append(task.exception())
            stop.set()
        elif not task.cancelled() and campaigns is not None:  # dial once calls can be served
            dialling.append(asyncio.create_task(campaigns.run(), name="campaigns"))

    failed: list[BaseException | None] = []
    dialling: list[asyncio.Task[None]] = []
    loader.add_done_callback(on_loaded)
    try:
        await stop.wait()
    finally:
        loader.cancel()
        if watcher is not None:
            watcher.cancel()
        if campaigns is not None:  # calls still in flight are recovered as interrupted
            for task in dialling:
                task.cancel()
            await campaigns.close(grace_s=0)
        if sip is not None:
            await sip.close()
        await bridge.shutdown()
        await runner.cleanup()
    if failed:
        raise SystemExit(1)
