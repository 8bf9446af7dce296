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
from bridge.speech.dashscope.fallback import ApologyTTS, FallbackASR, FallbackTTS
from bridge.speech.dashscope.metrics import StreamMetrics
from bridge.speech.dashscope.qwen_asr import QwenASR, QwenASRParams
from bridge.speech.dashscope.qwen_tts import QwenTTS, QwenTTSParams
from bridge.speech.dashscope.settings import DashScopeSettings
from bridge.speech.dashscope.tts import CosyVoiceParams, CosyVoiceTTS

__all__ = [
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
