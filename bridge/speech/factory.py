"""Build the speech engines the config asks for (one set per process, shared by all calls).

The embedded engines are always loaded: they are the ``local`` providers, and the fallback that
keeps a call talking when a ``dashscope`` provider fails mid-call.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from bridge.config import ConfigError, SpeechConfig
from bridge.speech.base import ASR, TTS
from bridge.speech.dashscope import (
    Apology,
    ApologyTTS,
    CosyVoiceParams,
    CosyVoiceTTS,
    DashScopeSettings,
    FallbackASR,
    FallbackTTS,
    FunASR,
    QwenASR,
    QwenASRParams,
    QwenTTS,
    QwenTTSParams,
    RecognitionParams,
)
from bridge.speech.local.piper import PiperTTS
from bridge.speech.local.runtime import LocalRuntime, RuntimeConfig
from bridge.speech.local.whisper import WhisperASR, WhisperSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SpeechEngines:
    asr: ASR
    tts: TTS
    # The embedded synthesiser, whose prompt cache start-up fills (a cloud voice has no cache,
    # so warming it would only bill characters); None when ``tts`` is that engine.
    embedded_tts: TTS | None = None

    @property
    def prompt_tts(self) -> TTS:
        return self.embedded_tts or self.tts

    async def warm(self) -> None:
        """Open the cloud voice's sockets (and start its first task) now, so the first call's
        first packet pays no handshake; a service that cannot be reached is only logged, as
        calls fall back without it."""
        tts = self.tts.primary if isinstance(self.tts, FallbackTTS) else self.tts
        if isinstance(tts, CosyVoiceTTS):
            await tts.warm()
            log.info("CosyVoice: %d warm socket(s) ready", tts.ready_sockets)


async def build_engines(config: SpeechConfig) -> SpeechEngines:
    """Load the configured engines; returns once their models are in memory."""
    settings = dashscope_settings(config)  # a missing key fails before minutes of model loading
    runtime = LocalRuntime(RuntimeConfig(whisper_cpu_threads=config.cpu_threads))
    await runtime.preload()
    asr = WhisperASR(
        runtime,
        WhisperSettings(
            vad_engine=config.vad.engine,
            vad_threshold=config.vad.threshold,
            endpoint_ms=config.asr.endpoint_silence_ms,
            speculate_after_ms=config.asr.speculate_after_ms,
            partial_interval_ms=config.asr.partial_interval_ms,
        ),
    )
    tts = PiperTTS(runtime, cache_bytes=config.tts.prompt_cache_mb * 2**20)
    return await with_providers(config, SpeechEngines(asr=asr, tts=tts), settings)


def uses_dashscope(config: SpeechConfig) -> bool:
    return "dashscope" in (config.asr.provider, config.tts.provider)


def dashscope_settings(config: SpeechConfig) -> DashScopeSettings | None:
    """Connection settings when a provider is ``dashscope``; the key only ever comes from the
    environment, so it never sits in a config file or a call record."""
    if not uses_dashscope(config):
        return None
    if not os.environ.get("DASHSCOPE_API_KEY"):
        keys = [
            f"speech.{name}.provider"
            for name, provider in (("asr", config.asr.provider), ("tts", config.tts.provider))
            if provider == "dashscope"
        ]
        verb = "are" if len(keys) > 1 else "is"
        raise ConfigError(
            f"{' and '.join(keys)} {verb} 'dashscope' but DASHSCOPE_API_KEY is not set "
            "(export the key of the region/workspace in speech.dashscope)"
        )
    ds = config.dashscope
    settings = DashScopeSettings.from_env(
        **_given(region=ds.region, base_url=ds.base_url, workspace=ds.workspace)
    )
    try:
        settings.host  # noqa: B018 - validates region/workspace now, not on the first call
    except ValueError as exc:
        raise ConfigError(f"speech.dashscope.region: {exc}") from None
    return settings


async def with_providers(
    config: SpeechConfig, embedded: SpeechEngines, settings: DashScopeSettings | None = None
) -> SpeechEngines:
    """The configured providers, each cloud one wrapped with ``embedded`` as its fallback."""
    if not uses_dashscope(config):
        return embedded
    settings = settings or dashscope_settings(config)
    assert settings is not None
    section = config.dashscope
    retries = section.fallback.retries
    asr, tts = embedded.asr, embedded.tts
    try:
        if config.asr.provider == "dashscope":
            policy = section.fallback
            apology = None
            if policy.policy == "apology":
                apology = Apology(policy.apology, hang_up=policy.hang_up_after_apology)
            asr = FallbackASR(_cloud_asr(config, settings), embedded.asr, retries, apology=apology)
        if config.tts.provider == "dashscope":
            fallback = embedded.tts
            if section.fallback.policy == "apology":
                fallback = await ApologyTTS.render(embedded.tts, section.fallback.apology)
            tts = FallbackTTS(_cloud_tts(config, settings), fallback, retries)
    except ValueError as exc:  # parameter checks of the clients
        raise ConfigError(f"speech.dashscope: {exc}") from None
    embedded_tts = embedded.tts if tts is not embedded.tts else None
    return SpeechEngines(asr=asr, tts=tts, embedded_tts=embedded_tts)


def _cloud_asr(config: SpeechConfig, settings: DashScopeSettings) -> ASR:
    params = config.dashscope.asr
    if params.model.startswith("qwen3-asr-"):
        qwen = _given(model=params.model, sample_rate=params.sample_rate)
        return QwenASR(settings, QwenASRParams(**qwen))
    fun = _given(
        model=params.model,
        sample_rate=params.sample_rate,
        vocabulary_id=params.vocabulary_id,
        max_sentence_silence=params.max_sentence_silence_ms,
    )
    return FunASR(settings, RecognitionParams(**fun), pool_size=config.dashscope.pool_size)


def _cloud_tts(config: SpeechConfig, settings: DashScopeSettings) -> TTS:
    params = config.dashscope.tts
    common = _given(
        model=params.model, voice=params.voice, sample_rate=params.sample_rate, volume=params.volume
    )
    if params.model.startswith("cosyvoice-"):
        cosy = CosyVoiceParams(**common, rate=params.speech_rate)
        return CosyVoiceTTS(settings, cosy, pool_size=config.dashscope.pool_size, start_ahead=True)
    return QwenTTS(settings, QwenTTSParams(**common, speech_rate=params.speech_rate))


def _given(**values: Any) -> dict[str, Any]:
    """Only the values the config sets, so the clients' own defaults apply to the rest."""
    return {name: value for name, value in values.items() if value is not None}
