"""First-packet latency through the emulator with no added latency (figures printed with -s)."""

from __future__ import annotations

import statistics

import pytest

from bridge.speech.base import text_once
from bridge.speech.dashscope.settings import DashScopeSettings
from bridge.speech.dashscope.tts import CosyVoiceTTS

pytestmark = pytest.mark.timeout(60)


async def test_warm_pool_first_packet_latency(settings: DashScopeSettings) -> None:
    tts = CosyVoiceTTS(settings, pool_size=1)
    await tts.pool.warm()
    latencies = []
    for _ in range(30):
        [c async for c in tts.synthesize(text_once("Hello there, how can I help?"))]
        latencies.append(tts.last_metrics.first_packet_latency)
    await tts.aclose()
    latencies.sort()
    p50, p95 = statistics.median(latencies), latencies[int(0.95 * len(latencies)) - 1]
    print(f"CosyVoice via emulator (tone engine): p50={p50 * 1000:.1f} ms p95={p95 * 1000:.1f} ms")
    assert p95 < 0.25
