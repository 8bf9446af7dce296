"""Providers are configuration: the factory builds the configured DashScope clients around the
embedded engines, refuses to start without a key, and per-stream figures add up per call."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import ConfigError, SpeechConfig, load_config
from bridge.emulator.faults import Faults
from bridge.emulator.server import Emulator
from bridge.speech.base import text_once
from bridge.speech.dashscope import (
    Apology,
    ApologyTTS,
    CosyVoiceTTS,
    FallbackASR,
    FallbackTTS,
    FunASR,
    QwenASR,
    QwenTTS,
    StreamMetrics,
)
from bridge.speech.dashscope.metrics import combined, summary
from bridge.speech.factory import SpeechEngines, dashscope_settings, with_providers
from tests.dashscope.conftest import KEY
from tests.emulator.fakes import FixedASR, ToneTTS

REPO = Path(__file__).resolve().parents[2]


def dashscope_config(base_url: str | None = None) -> SpeechConfig:
    config = SpeechConfig()
    config.asr.provider = config.tts.provider = "dashscope"
    config.dashscope.base_url = base_url
    return config


@pytest.fixture
def embedded() -> SpeechEngines:
    return SpeechEngines(asr=FixedASR(), tts=ToneTTS())


def test_missing_key_names_the_config_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    config = SpeechConfig()
    config.tts.provider = "dashscope"
    with pytest.raises(ConfigError, match=r"^speech\.tts\.provider is 'dashscope' but DASHSCOPE"):
        dashscope_settings(config)
    assert dashscope_settings(SpeechConfig()) is None  # local providers need no key


def test_bad_region_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    config = dashscope_config()
    config.dashscope.region = "atlantis"
    with pytest.raises(ConfigError, match=r"speech\.dashscope\.region: unknown DashScope region"):
        dashscope_settings(config)


def test_config_values_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    monkeypatch.setenv("DASHSCOPE_BASE_URL", "ws://127.0.0.1:1")
    settings = dashscope_settings(dashscope_config("ws://127.0.0.1:2"))
    assert settings is not None and settings.inference_url.startswith("ws://127.0.0.1:2/")
    assert KEY not in repr(settings)


def test_shipped_dashscope_configs_load() -> None:
    for name in ("dashscope.yaml", "emulator.yaml"):
        speech = load_config(REPO / "config" / name).speech
        assert (speech.asr.provider, speech.tts.provider) == ("dashscope", "dashscope")
    assert load_config(REPO / "config" / "emulator.yaml").speech.dashscope.base_url


def test_unknown_model_is_a_config_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("speech:\n  dashscope:\n    tts:\n      model: whisper-1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:4: speech\.dashscope\.tts: model: 'whisper"):
        load_config(path)


async def test_builds_the_configured_clients(
    monkeypatch: pytest.MonkeyPatch, embedded: SpeechEngines
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    config = dashscope_config("ws://127.0.0.1:9")
    engines = await with_providers(config, embedded)
    assert isinstance(engines.asr, FallbackASR) and isinstance(engines.asr.primary, FunASR)
    assert isinstance(engines.tts, FallbackTTS) and isinstance(engines.tts.primary, CosyVoiceTTS)
    assert engines.tts.fallback is embedded.tts and engines.asr.fallback is embedded.asr
    assert engines.prompt_tts is embedded.tts  # start-up warms the embedded cache, bills nothing

    config.dashscope.asr.model = "paraformer-realtime-8k-v2"
    assert (await with_providers(config, embedded)).asr.sample_rate == 8000

    config.dashscope.asr.model = "qwen3-asr-flash-realtime"
    config.dashscope.tts.model = "qwen3-tts-flash-realtime"
    config.dashscope.fallback.policy = "apology"
    engines = await with_providers(config, embedded)
    assert isinstance(engines.asr, FallbackASR) and isinstance(engines.asr.primary, QwenASR)
    assert isinstance(engines.tts, FallbackTTS) and isinstance(engines.tts.primary, QwenTTS)
    assert isinstance(engines.tts.fallback, ApologyTTS)
    assert engines.asr.apology == Apology(config.dashscope.fallback.apology, hang_up=False)
    assert engines.tts.sample_rate == 24000

    config.dashscope.tts.model = "cosyvoice-v3-flash"
    config.dashscope.tts.sample_rate = 12345
    with pytest.raises(ConfigError, match=r"speech\.dashscope: CosyVoice sample_rate"):
        await with_providers(config, embedded)


async def test_local_providers_are_returned_as_is(embedded: SpeechEngines) -> None:
    assert await with_providers(SpeechConfig(), embedded) is embedded


async def test_apology_policy_replaces_a_failed_turn(
    monkeypatch: pytest.MonkeyPatch, emulator: Emulator, embedded: SpeechEngines
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    config = dashscope_config(emulator.base_url)
    config.dashscope.fallback.policy = "apology"
    config.dashscope.fallback.apology = "Sorry."
    engines = await with_providers(config, embedded)
    emulator.faults = Faults(handshake_status=503)
    metrics = StreamMetrics()
    chunks = [
        c
        async for c in engines.tts.synthesize(  # type: ignore[call-arg]
            text_once("A long answer that will never be heard."), metrics=metrics
        )
    ]
    assert [c.text for c in chunks if c.text] == ["Sorry."]
    assert metrics.failures == 2  # the first attempt and its retry
    assert {c.audio.sample_rate for c in chunks} == {engines.tts.sample_rate}


async def test_fallback_asr_stream_reports_every_cloud_stream(
    monkeypatch: pytest.MonkeyPatch, emulator: Emulator, embedded: SpeechEngines
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    engines = await with_providers(dashscope_config(emulator.base_url), embedded)
    stream = await engines.asr.open_stream("en")
    await stream.close()
    metrics = stream.metrics  # type: ignore[attr-defined]
    assert isinstance(metrics, StreamMetrics)
    assert metrics.tasks == 1 and metrics.failures == 0


def test_summary_adds_usage_and_lists_latencies() -> None:
    a = StreamMetrics(started_at=1.0, first_packet_at=1.2, finished_at=3.0, audio_seconds=4.0)
    a.billed_characters, a.tasks = 10, 1
    b = StreamMetrics(started_at=5.0, first_packet_at=5.1, audio_seconds=1.0, failures=1)
    b.billed_characters, b.tasks = 5, 2
    figures = summary([a, b])
    assert figures["first_packet_ms"] == [200.0, 100.0]
    assert figures["rtf"] == [0.5]  # b never finished
    assert figures["billed_characters"] == 15 and figures["tasks"] == 3
    assert figures["failures"] == 1 and figures["streams"] == 2
    both = combined([a, b])
    assert both.first_packet_latency == pytest.approx(0.2) and both.finished_at == 3.0
