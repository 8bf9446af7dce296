"""Media worker processes: answered SIP calls spread over several processes, so several cores.

One Python process runs one event loop on one core, and every call's 20 ms media work (RTP,
jitter buffer, VAD, recording, the pipeline) runs on it. With ``sip.media_workers: N`` the main
process keeps the work that is light and shared (SIP signalling, HTTP, WebRTC, campaigns) and
hands each answered SIP call to the worker with the fewest calls. A worker is a fresh
interpreter (spawned, not forked: the speech runtimes' threads do not survive a fork) that loads
its own speech engines and runs its calls on a :class:`LocalCallHost`, as the main process does
when there are no workers.

Main and worker talk over a socketpair in pickled messages with a 4-byte length prefix (both
ends are our own code). A few messages per call cross it, never media. Losing a worker ends its
calls with the reason ``media-worker-lost`` (the main process sends their BYEs) and starts a new
worker; a worker that loses the main process ends its calls, writing their records, and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from bridge.config import Config
from bridge.media.recorder import end_orphaned
from bridge.sip.call_host import (
    REQUEST_TYPES,
    CallOutcome,
    CallRequests,
    CallSetupFailed,
    CallSpec,
    HostedCall,
    LocalCallHost,
)
from bridge.sip.sdp import NegotiatedMedia

if TYPE_CHECKING:
    from bridge.server import Bridge
    from bridge.speech.factory import SpeechEngines

log = logging.getLogger(__name__)

EngineFactory = Callable[[Config], Awaitable["SpeechEngines"]]
"""Builds a worker's speech engines (a module-level function, so it can cross to the worker);
without one, a worker loads the configured engines as ``bridge serve`` does."""

RESPAWN_DELAY_S = 1.0  # after a worker is lost; doubles while new ones fail before ready
RESPAWN_DELAY_MAX_S = 30.0
WORKER_LOST = "media-worker-lost"
STOP_GRACE_S = 15.0  # for workers to end their calls and write their records at shutdown
_LENGTH = struct.Struct("!I")
_SPAWN = multiprocessing.get_context("spawn")


# --- messages ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StartCall:
    spec: CallSpec


CallOp = Literal["hangup", "dtmf", "update", "transfer_refused", "transfer_progress"]


@dataclass(frozen=True)
class CallCommand:
    """One of the :class:`CallHandle` operations, for the call ``sip_id``."""

    sip_id: str
    op: CallOp
    args: tuple[object, ...]


@dataclass(frozen=True)
class Control:
    what: Literal["reload", "stop"]


@dataclass(frozen=True)
class WorkerReady:
    pid: int


@dataclass(frozen=True)
class CallStarted:
    sip_id: str
    record_id: str
    record_path: Path


@dataclass(frozen=True)
class CallNotStarted:
    sip_id: str
    error: str


@dataclass(frozen=True)
class CallRequest:
    sip_id: str
    message: dict[str, object]


@dataclass(frozen=True)
class CallFinished:
    sip_id: str
    outcome: CallOutcome


CALL_OPS = frozenset(get_args(CallOp))


def _send(writer: asyncio.StreamWriter, message: object) -> None:
    if not writer.is_closing():
        data = pickle.dumps(message)
        writer.write(_LENGTH.pack(len(data)) + data)


async def _receive(reader: asyncio.StreamReader) -> object:
    (size,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    return pickle.loads(await reader.readexactly(size))


# --- the main process's side --------------------------------------------------------------


@dataclass(eq=False)
class _Worker:
    index: int
    process: multiprocessing.process.BaseProcess
    writer: asyncio.StreamWriter
    calls: dict[str, RemoteCall] = field(default_factory=dict)
    ready: bool = False

    def send(self, message: object) -> None:
        _send(self.writer, message)


class RemoteCall:
    """A call running in a worker: the :class:`CallHandle` the SIP front door drives."""

    def __init__(self, worker: _Worker, sip_id: str, requests: CallRequests) -> None:
        self.worker = worker
        self.sip_id = sip_id
        self.requests = requests
        loop = asyncio.get_running_loop()
        self.started: asyncio.Future[CallStarted] = loop.create_future()
        self.finished: asyncio.Future[CallOutcome] = loop.create_future()

    @property
    def record_id(self) -> str:
        return self.started.result().record_id

    def hangup(self, reason: str) -> None:
        self._command("hangup", reason)

    def dtmf(self, digit: str) -> None:
        self._command("dtmf", digit)

    def update(self, media: NegotiatedMedia) -> None:
        self._command("update", media)

    def transfer_refused(self, target: str) -> None:
        self._command("transfer_refused", target)

    def transfer_progress(self, status: int, reason: str, final: bool) -> None:
        self._command("transfer_progress", status, reason, final)

    async def outcome(self) -> CallOutcome:
        return await asyncio.shield(self.finished)

    def _command(self, op: CallOp, *args: object) -> None:
        if not self.finished.done():
            self.worker.send(CallCommand(self.sip_id, op, args))

    def lost(self) -> Path | None:
        """The worker died: the call is over, and the caller must hear so (a BYE). Returns
        the folder of the record the worker could not finish."""
        if not self.started.done():
            self.started.set_exception(CallSetupFailed("the media worker was lost"))
            self.started.exception()  # retrieved: start_call may no longer be waiting
            return None
        if self.finished.done():
            return None
        self.finished.set_result(CallOutcome(WORKER_LOST))
        self.requests(self.sip_id, {"type": "hangup", "reason": WORKER_LOST})
        return self.started.result().record_path


class MediaWorkers:
    """Worker processes that run SIP calls (a :class:`CallHost`), the fewest-calls one first."""

    def __init__(self, bridge: Bridge, count: int, make_engines: EngineFactory | None = None):
        self.bridge = bridge
        self.count = count
        self.make_engines = make_engines
        self._workers: dict[int, _Worker] = {}
        self._listeners: set[asyncio.Task[None]] = set()
        self._respawn_delay = RESPAWN_DELAY_S
        self._closing = False

    @property
    def ready(self) -> bool:
        return self.ready_workers > 0

    @property
    def ready_workers(self) -> int:
        return sum(worker.ready for worker in self._workers.values())

    def status(self) -> list[dict[str, object]]:
        """Each worker's process id, readiness and number of calls, for the status API."""
        return [
            {"index": w.index, "pid": w.process.pid, "ready": w.ready, "calls": len(w.calls)}
            for w in sorted(self._workers.values(), key=lambda w: w.index)
        ]

    async def start(self) -> None:
        """Start every worker; they take calls once their engines are loaded."""
        for index in range(self.count):
            await self._spawn(index)

    async def start_call(self, spec: CallSpec, requests: CallRequests) -> RemoteCall:
        ready = [worker for worker in self._workers.values() if worker.ready]
        if not ready:
            raise CallSetupFailed("no media worker is ready")
        worker = min(ready, key=lambda w: len(w.calls))
        call = RemoteCall(worker, spec.sip_id, requests)
        worker.calls[spec.sip_id] = call
        self.bridge.worker_calls += 1
        worker.send(StartCall(spec))
        try:
            await call.started
        except CallSetupFailed:
            self._forget(worker, spec.sip_id)
            raise
        return call

    def reload_dialplans(self) -> None:
        for worker in self._workers.values():
            worker.send(Control("reload"))

    async def close(self) -> None:
        """Stop the workers: each ends its calls and writes their records first."""
        self._closing = True
        for worker in self._workers.values():
            worker.send(Control("stop"))
        if self._listeners:
            await asyncio.wait(list(self._listeners), timeout=STOP_GRACE_S)
        for worker in list(self._workers.values()):
            await asyncio.to_thread(_end_process, worker.process)

    async def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair()
        process = _SPAWN.Process(
            target=run_worker,
            args=(self.bridge.config, self.make_engines, theirs, index, log.getEffectiveLevel()),
            name=f"media-worker-{index}",
            daemon=True,
        )
        await asyncio.to_thread(process.start)
        theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        worker = _Worker(index, process, writer)
        self._workers[index] = worker
        listener = asyncio.create_task(self._listen(worker, reader), name=process.name)
        self._listeners.add(listener)
        listener.add_done_callback(self._listeners.discard)

    async def _listen(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                self._on_message(worker, await _receive(reader))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._lost(worker)

    def _on_message(self, worker: _Worker, message: object) -> None:
        if isinstance(message, WorkerReady):
            worker.ready = True
            self._respawn_delay = RESPAWN_DELAY_S
            log.info("media worker %d ready (pid %d)", worker.index, message.pid)
            return
        if not isinstance(message, CallStarted | CallNotStarted | CallRequest | CallFinished):
            log.error("media worker %d sent %r", worker.index, message)
            return
        call = worker.calls.get(message.sip_id)
        if call is None:
            return
        if isinstance(message, CallStarted):
            call.started.set_result(message)
        elif isinstance(message, CallNotStarted):
            call.started.set_exception(CallSetupFailed(message.error))
        elif isinstance(message, CallRequest):
            call.requests(message.sip_id, message.message)
        else:
            self._forget(worker, message.sip_id)
            call.finished.set_result(message.outcome)

    def _forget(self, worker: _Worker, sip_id: str) -> None:
        if worker.calls.pop(sip_id, None) is not None:
            self.bridge.worker_calls -= 1

    def _lost(self, worker: _Worker) -> None:
        worker.ready = False
        worker.writer.close()
        calls = list(worker.calls.values())
        orphans = []
        for call in calls:
            self._forget(worker, call.sip_id)
            if (record := call.lost()) is not None:
                orphans.append(record)
        if orphans:
            self.bridge.spawn(asyncio.to_thread(_end_orphaned, orphans))
        if self._closing:
            return
        log.error(
            "media worker %d (pid %s) was lost with %d calls; starting another in %.0f s",
            worker.index,
            worker.process.pid,
            len(calls),
            self._respawn_delay,
        )
        delay, self._respawn_delay = (
            self._respawn_delay,
            min(self._respawn_delay * 2, RESPAWN_DELAY_MAX_S),
        )
        asyncio.get_running_loop().call_later(delay, self._respawn, worker)

    def _respawn(self, worker: _Worker) -> None:
        if self._closing or self._workers.get(worker.index) is not worker:
            return
        task = asyncio.create_task(self._replace(worker), name=f"respawn-{worker.index}")
        self._listeners.add(task)
        task.add_done_callback(self._listeners.discard)

    async def _replace(self, worker: _Worker) -> None:
        await asyncio.to_thread(_end_process, worker.process)
        await self._spawn(worker.index)


def _end_orphaned(records: list[Path]) -> None:
    for path in records:
        try:
            end_orphaned(path, WORKER_LOST)
        except (OSError, ValueError) as exc:
            log.error("cannot close the record %s: %s", path, exc)


def _end_process(process: multiprocessing.process.BaseProcess) -> None:
    """Reap a worker, killing it if it does not exit by itself (blocking: run in a thread)."""
    process.join(STOP_GRACE_S)
    if process.is_alive():
        process.kill()
        process.join()


# --- the worker process's side ------------------------------------------------------------


def run_worker(
    config: Config,
    make_engines: EngineFactory | None,
    channel: socket.socket,
    index: int,
    log_level: int,
) -> None:
    """A worker process's main: serve calls the main process hands over until told to stop
    or the main process is gone. Signals are the main process's business: it stops us."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=log_level,
        format=f"%(asctime)s %(levelname)s media-worker-{index} %(name)s: %(message)s",
    )
    asyncio.run(_serve(config, make_engines, channel))


async def _serve(
    config: Config, make_engines: EngineFactory | None, channel: socket.socket
) -> None:
    from bridge.server import Bridge  # the server imports this module

    reader, writer = await asyncio.open_unix_connection(sock=channel)
    bridge = Bridge(config)
    if make_engines is None:
        await bridge.load_engines()
    else:
        bridge.engines = await make_engines(config)
        gc.freeze()  # as Bridge.load_engines does
    host = LocalCallHost(bridge, config.sip)
    calls: dict[str, HostedCall] = {}
    interval = config.dialog.reload_interval_s
    watcher = asyncio.create_task(bridge.dialplans.watch(interval)) if interval > 0 else None

    def requests(sip_id: str, message: dict[str, object]) -> None:
        if message.get("type") in REQUEST_TYPES:
            _send(writer, CallRequest(sip_id, message))

    async def run_call(spec: CallSpec) -> None:
        try:
            call = await host.start_call(spec, requests)
        except CallSetupFailed as exc:
            _send(writer, CallNotStarted(spec.sip_id, str(exc)))
            return
        calls[spec.sip_id] = call
        _send(writer, CallStarted(spec.sip_id, call.record_id, call.record_path))
        try:
            outcome = await call.outcome()
        finally:
            del calls[spec.sip_id]
        _send(writer, CallFinished(spec.sip_id, outcome))

    _send(writer, WorkerReady(os.getpid()))
    try:
        while True:
            try:
                message = await _receive(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                log.warning("the main process is gone: ending %d calls", len(calls))
                break
            if isinstance(message, StartCall):
                bridge.spawn(run_call(message.spec))
            elif isinstance(message, CallCommand) and message.op in CALL_OPS:
                if (call := calls.get(message.sip_id)) is not None:
                    getattr(call, message.op)(*message.args)
            elif message == Control("reload"):
                bridge.reload_dialplans()
            elif message == Control("stop"):
                break
    finally:
        if watcher is not None:
            watcher.cancel()
        for call in list(calls.values()):
            call.hangup("shutdown")
        await bridge.shutdown()
        with contextlib.suppress(Exception):
            await writer.drain()
        writer.close()
