"""Typed configuration loaded from YAML (``config/*.yaml``).

Operators edit these files by hand, so every error names the file, the line and the dotted key
(``config/default.yaml:7: http.port: expected an integer, got 'eighty'``), and unknown keys are
errors rather than silently ignored typos.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bridge.typedyaml import YamlError, load_typed


class ConfigError(ValueError):
    """A configuration problem, already phrased for the operator."""


@dataclass
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 64 * 1024
    cors_origins: list[str] = field(default_factory=lambda: ["*"])


@dataclass
class WebRtcConfig:
    # Addresses to gather ICE host candidates on; empty means every non-loopback interface.
    ice_hosts: list[str] = field(default_factory=list)
    # STUN/TURN URLs offered to aiortc and to browsers; none unless configured.
    ice_servers: list[str] = field(default_factory=list)


@dataclass
class RecordsConfig:
    dir: str = "records"
    sample_rate: int = 16000


@dataclass
class VadConfig:
    engine: Literal["silero", "webrtc"] = "silero"
    threshold: float = 0.5
    min_speech_ms: int = 64
    min_silence_ms: int = 400


@dataclass
class AsrConfig:
    provider: Literal["local"] = "local"
    language: str = "en"
    endpoint_silence_ms: int = 450
    partial_interval_ms: int = 700


@dataclass
class TtsConfig:
    provider: Literal["local"] = "local"
    voice: str | None = None  # None: the engine's default voice
    prompt_cache_mb: int = 64


@dataclass
class SpeechConfig:
    asr: AsrConfig = field(default_factory=AsrConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    cpu_threads: int = 2  # threads one Whisper decode may use


@dataclass
class DialogConfig:
    dialplans_dir: str = "dialplans"
    default_dialplan: str = "customer-service"


@dataclass
class CallsConfig:
    max_concurrent: int = 50
    max_duration_s: float = 3600.0
    # A peer that sends no audio for this long is gone (vanished browser, dead phone line).
    no_media_timeout_s: float = 20.0


@dataclass
class Config:
    http: HttpConfig = field(default_factory=HttpConfig)
    webrtc: WebRtcConfig = field(default_factory=WebRtcConfig)
    records: RecordsConfig = field(default_factory=RecordsConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    dialog: DialogConfig = field(default_factory=DialogConfig)
    calls: CallsConfig = field(default_factory=CallsConfig)
    source: str = field(default="<defaults>", init=False)


def load_config(path: Path | str | None) -> Config:
    """Load a config file; ``None`` gives the built-in defaults."""
    if path is None:
        return Config()
    try:
        config = load_typed(Config, Path(path))
    except YamlError as exc:
        raise ConfigError(str(exc)) from exc
    config.source = str(path)
    return config
