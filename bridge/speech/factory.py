"""Build the speech engines the config asks for (one set per process, shared by all calls)."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.config import SpeechConfig
from bridge.speech.base import ASR, TTS
from bridge.speech.local.piper import PiperTTS
from bridge.speech.local.runtime import LocalRuntime, RuntimeConfig
from bridge.speech.local.whisper import WhisperASR, WhisperSettings


@dataclass(frozen=True, slots=True)
class SpeechEngines:
    asr: ASR
    tts: TTS


async def build_engines(config: SpeechConfig) -> SpeechEngines:
    """Load the configured engines; returns once their models are in memory."""
    runtime = LocalRuntime(RuntimeConfig(whisper_cpu_threads=config.cpu_threads))
    await runtime.preload()
    asr = WhisperASR(
        runtime,
        WhisperSettings(
            vad_engine=config.vad.engine,
            vad_threshold=config.vad.threshold,
            endpoint_ms=config.asr.endpoint_silence_ms,
            partial_interval_ms=config.asr.partial_interval_ms,
        ),
    )
    tts = PiperTTS(runtime, cache_bytes=config.tts.prompt_cache_mb * 2**20)
    return SpeechEngines(asr=asr, tts=tts)
