"""The shipped example dialplans over WebRTC with the embedded engines and an aiortc caller:
the customer-service order lookup (speech, slot confirmation, webhook), and the LLM-first
assistant against a local scripted OpenAI-compatible server, including a barge-in that must
leave exactly the heard words in the model's context."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, loopback_config, running_bridge
from tests.dialog.conftest import backend, llm_server, text_chunk  # noqa: F401 (fixtures)
from tests.e2e.webrtc_caller import RATE, WebRtcCaller, is_bot_final

pytestmark = pytest.mark.slow


def _said(fragment: str):
    return lambda e: is_bot_final(e) and fragment in str(e.get("said", "")).lower()


async def test_customer_service_order_lookup(
    tmp_path: Path,
    speech_engines,
    speak,
    backend,  # noqa: F811
) -> None:
    plans = tmp_path / "dialplans"
    shutil.copytree(REPO / "dialplans", plans)
    for path in plans.glob("*.yaml"):
        path.write_text(path.read_text().replace("http://127.0.0.1:8099", backend.url))
    config = loopback_config(tmp_path)
    config.dialog.dialplans_dir = str(plans)
    async with running_bridge(config, speech_engines) as (base_url, _):
        caller = WebRtcCaller(base_url, dialplan="support")
        await caller.connect()
        try:
            await caller.wait_event(_said("thank you for calling"), timeout=60)
            caller.mic.say(speak("I would like to check on my order.", RATE))
            await caller.wait_event(_said("order number"), timeout=60)
            caller.mic.say(speak("One two three four five six.", RATE))
            await caller.wait_event(_said("is that right"), timeout=60)
            caller.mic.say(speak("Yes.", RATE))
            status = await caller.wait_event(_said("is shipped"), timeout=60)
        finally:
            await caller.close()
    assert status["said"] == "Order 1 2 3 4 5 6 is shipped. It arrives tomorrow."
    assert backend.requests == ["/orders/123456"]


async def test_assistant_llm_reply_and_barge_in(
    tmp_path: Path,
    speech_engines,
    speak,
    llm_server,  # noqa: F811
) -> None:
    llm_server.scripts = [
        [
            (0.0, text_chunk("Let me check that for you. ")),
            (0.3, text_chunk("Your order has shipped, and it will arrive tomorrow morning ")),
            (0.1, text_chunk("at the latest, packed in a plain brown box with a blue label. ")),
            (0.1, text_chunk("Is there anything else I can help you with today?")),
        ],
        [(0.0, text_chunk("Of course. Thank you for calling, goodbye."))],
    ]
    config = loopback_config(tmp_path)
    config.dialog.llm_base_url = llm_server.base_url
    async with running_bridge(config, speech_engines) as (base_url, _):
        caller = WebRtcCaller(base_url, dialplan="assistant")
        await caller.connect()
        try:
            await caller.wait_event(_said("how can i help"), timeout=60)
            await asyncio.sleep(0.3)
            caller.mic.say(speak("Where is my order?", RATE))
            first = await caller.wait_event(_said("let me check"), timeout=60)
            await caller.wait_event(
                lambda e: e.get("who") == "bot" and "shipped" in str(e.get("text")), timeout=30
            )
            await asyncio.sleep(1.5)  # into the second sentence
            caller.mic.say(speak("Thanks, that is all.", RATE))
            cut = await caller.wait_event(
                lambda e: is_bot_final(e) and bool(e.get("interrupted")), timeout=30
            )
            await caller.wait_event(_said("goodbye"), timeout=60)
        finally:
            await caller.close()

    assert first["interrupted"] is False
    heard = str(cut["text"])
    assert heard and str(cut["said"]).startswith(heard) and heard != cut["said"]
    first_request, second_request = llm_server.requests[:2]
    assert "order" in first_request["messages"][-1]["content"].lower()
    # The model is told exactly what the caller heard of its interrupted answer.
    assistant, user = second_request["messages"][-2:]
    assert assistant == {"role": "assistant", "content": f"{first['said']} {heard}"}
    assert user["role"] == "user" and "all" in user["content"].lower()
