"""Native asyncio clients for DashScope (Alibaba Cloud Model Studio) speech services."""

from bridge.speech.dashscope.asr import FunASR, RecognitionParams
from bridge.speech.dashscope.errors import (
    AuthError,
    ConnectionLostError,
    DashScopeError,
    ProtocolError,
    RateLimitError,
    TaskFailedError,
)
from bridge.speech.dashscope.fallback import Apology, ApologyTTS, FallbackASR, FallbackTTS
from bridge.speech.dashscope.metrics import StreamMetrics
from bridge.speech.dashscope.omni import OmniParams, OmniSession
from bridge.speech.dashscope.qwen_asr import QwenASR, QwenASRParams
from bridge.speech.dashscope.qwen_tts import QwenTTS, QwenTTSParams
from bridge.speech.dashscope.settings import DashScopeSettings
from bridge.speech.dashscope.tts import CosyVoiceParams, CosyVoiceTTS

__all__ = [
    "Apology",
    "ApologyTTS",
    "AuthError",
    "ConnectionLostError",
    "CosyVoiceParams",
    "CosyVoiceTTS",
    "DashScopeError",
    "DashScopeSettings",
    "FallbackASR",
    "FallbackTTS",
    "FunASR",
    "OmniParams",
    "OmniSession",
    "ProtocolError",
    "QwenASR",
    "QwenASRParams",
    "QwenTTS",
    "QwenTTSParams",
    "RateLimitError",
    "RecognitionParams",
    "StreamMetrics",
    "TaskFailedError",
]
