from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bridge.emulator.server import Emulator
from bridge.speech.dashscope.settings import DashScopeSettings
from tests.emulator.fakes import FixedASR, ToneTTS

KEY = "sk-test-emulator"


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(FixedASR(), ToneTTS(), api_key=KEY, asr_speed=20) as emu:
        yield emu


@pytest.fixture
def settings(emulator: Emulator) -> DashScopeSettings:
    return DashScopeSettings(api_key=KEY, base_url=emulator.base_url, backoff_initial=0.05)
