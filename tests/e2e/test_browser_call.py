"""A real browser calls the real bridge: headless Chromium, its fake microphone, the widget page.

The page is loaded from the bridge (``GET /``), the call button is pressed like a user would, and
the page's own transcript must show the bot's greeting, the caller's words and the bot's answer.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from tests.peers.chromium import Chromium

pytestmark = [pytest.mark.peer, pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = "document.getElementById('voice-bridge-widget').shadowRoot"
RATE = 48000


def q(test_id: str) -> str:
    return f"{ROOT}.querySelector('[data-testid=\"{test_id}\"]')"


def transcript_contains(who: str, words: str) -> str:
    return (
        f"window.VoiceBridge.transcript().some(l => l.who === '{who}' "
        f"&& l.text.toLowerCase().includes('{words}'))"
    )


def write_microphone(path: Path, speech: np.ndarray) -> None:
    """Silence while the greeting plays out, then the caller's question, then silence.

    The greeting lasts about 9 s from the click. The question starts 14 s after the microphone
    opens, so a slow connection does not make the caller talk over it: the browser's echo
    canceller may then swallow the question, which is the browser's doing, not the bridge's.
    """
    silence = np.zeros(RATE * 14, np.int16)
    audio = np.concatenate([silence, speech, np.zeros(RATE * 4, np.int16)])
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(audio.tobytes())


def bridge_transcripts(records: Path) -> str:
    """What the bridge wrote down, for a failure report: the page only shows its own view."""
    lines = [f"{path}:\n{path.read_text()}" for path in sorted(records.glob("*/transcript.jsonl"))]
    return "bridge transcripts:\n" + ("\n".join(lines) or "(none)")


async def test_browser_hears_greeting_and_answer(bridge_server, speak, tmp_path: Path) -> None:
    base_url, _bridge = bridge_server
    mic = tmp_path / "caller.wav"
    write_microphone(mic, speak("What are your opening hours?", RATE))
    async with Chromium(fake_audio_wav=mic) as browser:
        try:
            await converse(browser, base_url)
        except TimeoutError as error:
            raise TimeoutError(f"{error}\n{bridge_transcripts(tmp_path / 'records')}") from None


async def converse(browser: Chromium, base_url: str) -> None:
    """Call from the widget, hear the greeting, ask, hear the answer, hang up."""
    page = await browser.new_page(base_url + "/")
    await page.wait_for(f"{q('start-call')} !== null", timeout=10)
    await page.click(q("start-call"))
    await page.wait_for("window.VoiceBridge.state === 'connected'", timeout=20)
    await page.wait_for(transcript_contains("bot", "thank you for calling"), timeout=20)
    # The DOM shows it too, not only the widget's model of it.
    text = await page.evaluate(f"{q('transcript')}.textContent")
    assert "thank you for calling" in text.lower()
    await page.wait_for(transcript_contains("caller", "hours"), timeout=40)
    await page.wait_for(transcript_contains("bot", "monday to friday"), timeout=30)
    await page.click(q("hang-up"))
    await page.wait_for("window.VoiceBridge.state === 'ended'", timeout=10)
