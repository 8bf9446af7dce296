"""Typed configuration loaded from YAML (``config/*.yaml``).

Operators edit these files by hand, so every error names the file, the line and the dotted key
(``config/default.yaml:7: http.port: expected an integer, got 'eighty'``), and unknown keys are
errors rather than silently ignored typos.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bridge.sip.uri import SipUri
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
    # Inbound audio frames aiortc holds before decoding (its default is 4 = 80 ms). Caller
    # audio feeds the VAD and recogniser, so low latency (fast barge-in) beats smoothness.
    uplink_prefetch_frames: int = 1


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
    provider: Literal["local", "dashscope"] = "local"
    language: str = "en"
    endpoint_silence_ms: int = 450
    # Silence after which the embedded recogniser starts its final decode ahead of the endpoint
    # (discarded if the caller goes on): shorter answers sooner, at some wasted decodes.
    speculate_after_ms: int = 200
    partial_interval_ms: int = 700


@dataclass
class TtsConfig:
    provider: Literal["local", "dashscope"] = "local"
    voice: str | None = None  # None: the provider's default voice
    prompt_cache_mb: int = 64


DASHSCOPE_ASR_MODELS = ("fun-asr", "paraformer-", "qwen3-asr-")
DASHSCOPE_TTS_MODELS = ("cosyvoice-", "qwen3-tts-", "qwen-tts-")


@dataclass
class DashScopeAsrConfig:
    model: str = "fun-asr-realtime"
    sample_rate: int | None = None  # None: 8000 for *-8k-* models, else 16000
    vocabulary_id: str | None = None  # hot words (Fun-ASR/Paraformer)
    max_sentence_silence_ms: int | None = None  # Fun-ASR/Paraformer endpointing, 200-6000

    def validate(self) -> str | None:
        if not self.model.startswith(DASHSCOPE_ASR_MODELS):
            return f"model: {self.model!r} is not one of {', '.join(DASHSCOPE_ASR_MODELS)}*"
        return None


@dataclass
class DashScopeTtsConfig:
    model: str = "cosyvoice-v3-flash"
    voice: str | None = None  # None: longanyang (CosyVoice), Cherry (Qwen-TTS)
    sample_rate: int | None = None  # None: 16000 (CosyVoice), 24000 (Qwen-TTS)
    speech_rate: float = 1.0
    volume: int = 50

    def validate(self) -> str | None:
        if not self.model.startswith(DASHSCOPE_TTS_MODELS):
            return f"model: {self.model!r} is not one of {', '.join(DASHSCOPE_TTS_MODELS)}*"
        return None


@dataclass
class DashScopeFallbackConfig:
    # After `retries` failed attempts: the embedded engines carry on, or the caller hears
    # `apology`: in place of the failed bot turn (TTS), or when the recogniser is lost mid-call
    # (which then falls back to embedded, or ends the call if `hang_up_after_apology`).
    policy: Literal["embedded", "apology"] = "embedded"
    retries: int = 1
    apology: str = "I am sorry, I am having trouble speaking right now. Please try again later."
    hang_up_after_apology: bool = False


@dataclass
class DashScopeConfig:
    """Used by providers set to ``dashscope``; the API key comes only from DASHSCOPE_API_KEY."""

    region: str | None = None  # None: DASHSCOPE_REGION, else beijing
    base_url: str | None = None  # None: DASHSCOPE_BASE_URL, else the region's gateway
    workspace: str | None = None  # None: DASHSCOPE_WORKSPACE
    pool_size: int = 2  # warm sockets per service
    asr: DashScopeAsrConfig = field(default_factory=DashScopeAsrConfig)
    tts: DashScopeTtsConfig = field(default_factory=DashScopeTtsConfig)
    fallback: DashScopeFallbackConfig = field(default_factory=DashScopeFallbackConfig)


@dataclass
class SpeechConfig:
    asr: AsrConfig = field(default_factory=AsrConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    cpu_threads: int = 1  # threads one Whisper decode may use
    dashscope: DashScopeConfig = field(default_factory=DashScopeConfig)


@dataclass
class DialogConfig:
    dialplans_dir: str = "dialplans"
    default_dialplan: str = "customer-service"
    reload_interval_s: float = 2.0  # how often changed dialplans are picked up; 0: SIGHUP only
    # Override every dialplan's LLM endpoint and model (e.g. a local OpenAI-compatible server).
    llm_base_url: str | None = None
    llm_model: str | None = None


@dataclass
class CallsConfig:
    max_concurrent: int = 50
    max_duration_s: float = 3600.0
    # A peer that sends no audio for this long is gone (vanished browser, dead phone line).
    no_media_timeout_s: float = 20.0


@dataclass
class SipRateLimitConfig:
    per_second: float = 5.0  # new requests (outside calls) per source per second...
    burst: float = 20.0  # ...after a burst of this many
    reply_status: int | None = None  # None: drop silently (best against scanners); or 503


@dataclass
class SipAuthConfig:
    realm: str = "bridge"
    # user -> name of the environment variable holding the password (never the password itself)
    users: dict[str, str] = field(default_factory=dict)
    # offered strongest first; old phones (and sipp) answer only the first, and only MD5
    algorithms: list[Literal["SHA-256", "MD5"]] = field(default_factory=lambda: ["SHA-256", "MD5"])


@dataclass
class SipRegistrationConfig:
    """A trunk the bridge registers with, so calls to ``user@domain`` are sent to it."""

    registrar: str  # sip:host[:port] the REGISTER goes to (also its Request-URI)
    user: str  # address-of-record user; the trunk's INVITEs then name this user
    domain: str | None = None  # address-of-record domain; None: the registrar's host
    auth_username: str | None = None  # digest username; None: user
    password_env: str | None = None  # environment variable holding the password (never inline)
    expires: int = 3600  # seconds asked for; the registrar may grant less or demand more (423)
    transport: Literal["udp", "tcp"] = "udp"

    def validate(self) -> str | None:
        try:
            uri = SipUri.parse(self.registrar)
        except ValueError:
            return f"registrar: {self.registrar!r} is not a SIP URI (sip:host[:port])"
        if uri.user or uri.params or uri.headers:
            return f"registrar: {self.registrar!r} must be just sip:host[:port]"
        if self.expires <= 0:
            return "expires: must be a positive number of seconds"
        return None


@dataclass
class SipConfig:
    enabled: bool = True
    host: str = "127.0.0.1"  # listen address, also advertised in Via/Contact/SDP
    port: int = 5060
    transports: list[Literal["udp", "tcp"]] = field(default_factory=lambda: ["udp", "tcp"])
    media_address: str | None = None  # SDP c= address when it differs from host
    rtp_ports: str = "40000-40999"  # LOW-HIGH, even ports used for RTP
    codecs: list[Literal["PCMU", "PCMA"]] = field(default_factory=lambda: ["PCMU", "PCMA"])
    max_calls: int = 50
    retry_after_s: int = 30  # sent with 503 when at capacity
    routes: dict[str, str] = field(default_factory=dict)  # called user -> dialplan
    allow_list: list[str] = field(default_factory=list)  # source CIDRs; empty allows everyone
    refused_status: int | None = 403  # reply to sources outside allow_list; None drops
    rate_limit: SipRateLimitConfig = field(default_factory=SipRateLimitConfig)
    auth: SipAuthConfig = field(default_factory=SipAuthConfig)
    # Where calls may be sent (fnmatch patterns on the whole URI); empty allows nowhere.
    transfer_targets: list[str] = field(default_factory=list)
    outbound_targets: list[str] = field(default_factory=list)
    outbound_from: str = "bridge"
    no_rtp_timeout_s: float = 20.0
    # Ring this long (180 sent at once) before answering, so callers can still CANCEL.
    answer_delay_ms: int = 0
    # Worker processes that run answered SIP calls (each loads its own speech engines), so
    # calls use every core; 0 runs them in the bridge's own process.
    media_workers: int = 0
    registrations: list[SipRegistrationConfig] = field(default_factory=list)
    # Session timers (RFC 4028): the shortest interval we accept (shorter gets 422), and the
    # one our outbound INVITEs ask for (and we ask of callers that support timers, asking none).
    min_se_s: int = 90
    session_expires_s: int = 1800

    def validate(self) -> str | None:
        if self.min_se_s < 1:
            return f"min_se_s: must be 1 or more, got {self.min_se_s}"
        if self.session_expires_s < self.min_se_s:
            return f"session_expires_s: must be at least min_se_s ({self.min_se_s})"
        try:
            low, high = self.rtp_port_range
        except ValueError:
            return f"rtp_ports: expected LOW-HIGH, got {self.rtp_ports!r}"
        if not 1024 <= low < high <= 65536 or high - low < 2:
            return f"rtp_ports: {self.rtp_ports!r} is not a range of ports 1024-65535"
        if not self.transports:
            return "transports: name at least one of udp, tcp"
        if "udp" not in self.transports:
            return "transports: udp is required (tcp is optional)"
        if self.media_workers < 0:
            return f"media_workers: must be 0 or more, got {self.media_workers}"
        if self.answer_delay_ms < 0:
            return f"answer_delay_ms: must be 0 or more, got {self.answer_delay_ms}"
        for cidr in self.allow_list:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                return f"allow_list: {cidr!r} is not an address or CIDR network"
        return None

    @property
    def rtp_port_range(self) -> tuple[int, int]:
        low, _, high = self.rtp_ports.partition("-")
        return int(low), int(high)


@dataclass
class CampaignsConfig:
    """Outbound campaigns (bridge/campaign): where their state lives and how they dial."""

    enabled: bool = True  # needs sip.enabled; campaigns dial through the SIP front door
    dir: str = "campaigns"  # SQLite database (WAL) of campaigns, contacts and attempts
    redis_url: str | None = None  # redis://host:port/db: share campaigns between instances
    # Names this process's attempts, so a restart recovers exactly the ones it left in flight;
    # instances sharing campaigns (redis_url) need distinct names.
    instance: str = "local"
    ring_timeout_s: float = 30.0  # an unanswered campaign call is cancelled: "no-answer"
    default_timezone: str = "UTC"  # for contacts without a timezone column
    # Turns a phone number in a contact list into a SIP URI: "sip:{number}@trunk.example.com";
    # null: contacts must give SIP URIs.
    number_uri: str | None = None
    poll_s: float = 1.0  # how often state changed elsewhere (other instances) is looked at

    def validate(self) -> str | None:
        if self.ring_timeout_s <= 0:
            return "ring_timeout_s: must be more than 0"
        if self.poll_s <= 0:
            return "poll_s: must be more than 0"
        if self.number_uri is not None and "{number}" not in self.number_uri:
            return "number_uri: must contain {number}, e.g. sip:{number}@trunk.example.com"
        if not self.instance:
            return "instance: must not be empty"
        try:
            ZoneInfo(self.default_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            return f"default_timezone: unknown time zone {self.default_timezone!r}"
        return None


@dataclass
class Config:
    http: HttpConfig = field(default_factory=HttpConfig)
    webrtc: WebRtcConfig = field(default_factory=WebRtcConfig)
    records: RecordsConfig = field(default_factory=RecordsConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    dialog: DialogConfig = field(default_factory=DialogConfig)
    calls: CallsConfig = field(default_factory=CallsConfig)
    sip: SipConfig = field(default_factory=SipConfig)
    campaigns: CampaignsConfig = field(default_factory=CampaignsConfig)
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
