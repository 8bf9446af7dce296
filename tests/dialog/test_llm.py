"""The LLM dialog against a local OpenAI-compatible streaming server (scripted tokens, delays),
and webhooks against a local HTTP server: streaming into sentences, heard-text accounting on
barge-in, tools mapped to dialplan actions, failures spoken without dropping the call."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bridge.dialog.base import CallerText, CallStarted, DialogEvent, DialogOutput, Hangup, Say
from bridge.dialog.engine import FlowDialog, build_dialog
from bridge.dialog.llm import Context, SentenceSplitter, estimate_tokens
from tests.dialog.conftest import show, text_chunk, tool_chunk

ASSISTANT = """
name: a
variables: {company: Acme}
llm:
  base_url: BASE_URL
  model: test-model
  api_key_env: TEST_LLM_KEY
  system_prompt: You help {{ company }} callers.
  first_token_timeout_s: 0.5
  timeout_s: 3
  fallback: Sorry, try again.
  tools:
    - {name: check_order, description: Look up, parameters: {order_number: digits}, webhook: order}
    - {name: agent, description: A person, goto: handoff}
    - {name: end_call, description: Hang up, hangup: caller-done}
webhooks:
  order: {url: "BACKEND/orders/{{ order_number }}", result: order, timeout_s: 0.3}
start: chat
steps:
  chat:
    say: Hi.
    llm: {}
  handoff:
    say: Transferring.
    transfer: sip:agent@pbx.test
"""


@pytest.fixture
async def assistant(make_plan, llm_server, backend, session) -> FlowDialog:
    text = ASSISTANT.replace("BASE_URL", llm_server.base_url).replace("BACKEND", backend.url)
    dialog = build_dialog(make_plan(text), session)
    assert await turn(dialog, CallStarted()) == ["say:Hi."]
    return dialog


async def turn(dialog: FlowDialog, event: DialogEvent) -> list[str]:
    """One turn as a call plays it: every sentence heard in full."""
    outputs: list[str] = []
    async for output in dialog.respond(event):
        outputs.append(show(output))
        if isinstance(output, Say):
            dialog.bot_turn_heard(output.text, output.text, interrupted=False)
    return outputs


@pytest.mark.parametrize(
    ("chunks", "sentences"),
    [
        (["Hello there. How are", " you today?"], ["Hello there.", "How are you today?"]),
        (["Sure. ", "Your order is on its way."], ["Sure. Your order is on its way."]),
        (["It costs 3.5 euros. Ok"], ["It costs 3.5 euros.", "Ok"]),
        (["您好！我可以", "帮您查询订单。"], ["您好！我可以帮您查询订单。"]),
        (["第一句话说完了。", "第二句。"], ["第一句话说完了。", "第二句。"]),
        (["a" * 170 + ", and more"], ["a" * 170 + ",", "and more"]),
    ],
    ids=["two sentences", "short one waits", "decimal point", "cjk short", "cjk", "run-on"],
)
def test_sentence_splitter(chunks: list[str], sentences: list[str]) -> None:
    splitter = SentenceSplitter()
    out = [s for chunk in chunks for s in splitter.feed(chunk)]
    rest = splitter.flush()
    assert [*out, *([rest] if rest else [])] == sentences


def test_context_keeps_the_last_turns_within_the_token_budget() -> None:
    context = Context(max_turns=2, max_tokens=1000)
    for n in range(3):
        context.add_user(f"question {n}")
        context.add_spoken(f"answer {n}")
    wired = context.wire("system")
    assert [m["content"] for m in wired] == [
        "system",
        "question 1",
        "answer 1",
        "question 2",
        "answer 2",
    ]

    tight = Context(max_turns=10, max_tokens=estimate_tokens("system") + 40)
    tight.add_user("x" * 200)
    tight.add_user("the latest question")
    assert [m["content"] for m in tight.wire("system")] == ["system", "the latest question"]


def test_context_keeps_what_was_heard() -> None:
    context = Context(max_turns=10, max_tokens=1000)
    context.add_spoken("First sentence.")
    context.add_spoken("Second sentence here.")
    context.heard("First sentence.", "First sentence.", interrupted=False)
    assert context.messages[0].text == "First sentence. Second sentence here."  # still playing
    context.heard("Second sentence here.", "Second", interrupted=True)
    assert context.messages[0].text == "First sentence. Second"
    assert context.messages[0].interrupted


async def test_first_audio_plays_before_the_llm_has_finished(assistant, llm_server) -> None:
    llm_server.scripts = [
        [
            (0.0, text_chunk("Hello there, ")),
            (0.05, text_chunk("I can help with that. ")),
            (1.0, text_chunk("Here is the rest ")),
            (0.1, text_chunk("of a long answer.")),
        ]
    ]
    started = time.monotonic()
    outputs = assistant.respond(CallerText("Can you help?"))
    first = await anext(outputs)
    first_at = time.monotonic()
    rest = [output async for output in outputs]

    assert first == Say("Hello there, I can help with that.")
    assert rest == [Say("Here is the rest of a long answer.")]
    assert first_at - started < 0.6
    assert llm_server.last_chunk_at - first_at > 0.8  # the model was still writing
    request = llm_server.requests[0]
    assert request["stream"] is True and request["model"] == "test-model"
    assert request["messages"][0] == {"role": "system", "content": "You help Acme callers."}
    assert request["messages"][1:] == [
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Can you help?"},
    ]


async def test_barge_in_keeps_exactly_the_heard_text(assistant, llm_server) -> None:
    llm_server.scripts = [
        [
            (0.0, text_chunk("Your order has shipped. It will arrive")),
            (0.3, text_chunk(" on Tuesday. ")),
            (1.5, text_chunk("Anything else?")),
        ],
        [(0.0, text_chunk("It left our warehouse yesterday."))],
    ]
    outputs = assistant.respond(CallerText("Where is my order?"))
    first = await anext(outputs)
    second = await anext(outputs)
    assert (first, second) == (Say("Your order has shipped."), Say("It will arrive on Tuesday."))
    # The caller talks over the second sentence: the call closes the stream, then reports
    # what the playout actually got out.
    await outputs.aclose()
    assistant.bot_turn_heard(first.text, first.text, interrupted=False)
    assistant.bot_turn_heard(second.text, "It will", interrupted=True)
    await asyncio.sleep(0.3)
    assert llm_server.completed == 0  # generation was cancelled, not read to the end

    reply = assistant.context.messages[-1]
    assert (reply.role, reply.text, reply.interrupted) == (
        "assistant",
        "Your order has shipped. It will",
        True,
    )
    assert await turn(assistant, CallerText("When exactly?")) == [
        "say:It left our warehouse yesterday."
    ]
    assert llm_server.requests[1]["messages"][-3:] == [
        {"role": "user", "content": "Where is my order?"},
        {"role": "assistant", "content": "Your order has shipped. It will"},
        {"role": "user", "content": "When exactly?"},
    ]


async def test_barge_in_before_a_word_was_heard_leaves_no_assistant_text(
    assistant, llm_server
) -> None:
    llm_server.scripts = [[(0.0, text_chunk("Let me think about that. ")), (2.0, text_chunk("x"))]]
    outputs = assistant.respond(CallerText("Hmm?"))
    first = await anext(outputs)
    await outputs.aclose()
    assistant.bot_turn_heard(first.text, "", interrupted=True)
    assert assistant.context.messages[-1].text == ""
    wired = assistant.context.wire("s")
    assert wired[-1] == {"role": "user", "content": "Hmm?"}


async def test_webhook_tool(assistant, llm_server, backend) -> None:
    llm_server.scripts = [
        [(0.0, tool_chunk("call-1", "check_order", {"order_number": "123456"}))],
        [(0.0, text_chunk("Good news: it has shipped."))],
    ]
    assert await turn(assistant, CallerText("Order 123456?")) == ["say:Good news: it has shipped."]
    assert backend.requests == ["/orders/123456"]
    assert llm_server.requests[0]["tools"][0]["function"]["name"] == "check_order"
    messages: list[dict[str, Any]] = llm_server.requests[1]["messages"]
    assert messages[-2]["tool_calls"][0]["function"]["name"] == "check_order"
    assert messages[-1]["role"] == "tool" and messages[-1]["tool_call_id"] == "call-1"
    assert '"status": "shipped"' in messages[-1]["content"]
    assert assistant.flow.variables["order"]["status"] == "shipped"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (
            [(0.0, text_chunk("Let me get someone. ")), (0.0, tool_chunk("c", "agent", {}))],
            ["say:Let me get someone.", "say:Transferring.", "transfer:sip:agent@pbx.test"],
        ),
        (
            [(0.0, text_chunk("Goodbye now. ")), (0.0, tool_chunk("c", "end_call", {}))],
            ["say:Goodbye now.", "hangup:caller-done"],
        ),
        (
            [(0.0, tool_chunk("c", "no_such_tool", {}))],
            ["say:No script."],  # told the tool is unknown, the model answers again
        ),
    ],
    ids=["hand-off to a scripted step", "hang up", "unknown tool"],
)
async def test_flow_tools(assistant, llm_server, script, expected: list[str]) -> None:
    llm_server.scripts = [script]
    assert await turn(assistant, CallerText("Please.")) == expected


@pytest.mark.parametrize(
    "failure",
    [500, [(1.0, text_chunk("Too late."))]],
    ids=["http error", "no first token in time"],
)
async def test_llm_failure_is_spoken_and_the_call_goes_on(assistant, llm_server, failure) -> None:
    llm_server.scripts = [failure, [(0.0, text_chunk("Back again."))]]
    assert await turn(assistant, CallerText("Hello?")) == ["say:Sorry, try again."]
    assert not assistant.flow.ended
    assert await turn(assistant, CallerText("Hello?")) == ["say:Back again."]


WEBHOOK_PLAN = """
name: w
start: ask
steps:
  ask:
    say: Number?
    collect: {slot: order_number, type: digits, min_length: 6}
    goto: lookup
  lookup:
    say: Checking.
    webhook: order
    on_error: failed
    goto: found
  found: {say: "It is {{ order.status }}.", hangup: done}
  failed: {say: "Failed: {{ webhook_error }}.", hangup: failed}
webhooks:
  order: {url: "BACKEND/orders/{{ order_number }}", result: order, timeout_s: 0.3}
"""


@pytest.mark.parametrize(
    ("number", "outcome"),
    [
        ("123456", ["say:It is shipped.", "hangup:done"]),
        ("500500", ["say:Failed: HTTP 500.", "hangup:failed"]),
        ("404404", ["say:Failed: HTTP 404.", "hangup:failed"]),
        ("999999", ["say:Failed: no reply within 0.3 s.", "hangup:failed"]),
    ],
    ids=["ok", "server error", "not found", "timeout"],
)
async def test_webhook_step(make_plan, backend, session, number: str, outcome) -> None:
    dialog = build_dialog(make_plan(WEBHOOK_PLAN.replace("BACKEND", backend.url)), session)
    assert await turn(dialog, CallStarted()) == ["say:Number?"]
    assert await turn(dialog, CallerText(number)) == ["say:Checking.", *outcome]
    assert backend.requests == [f"/orders/{number}"]


async def test_a_lookup_cut_by_barge_in_is_made_again(make_plan, backend, session) -> None:
    dialog = build_dialog(make_plan(WEBHOOK_PLAN.replace("BACKEND", backend.url)), session)
    await turn(dialog, CallStarted())
    outputs = dialog.respond(CallerText("999999"))
    assert await anext(outputs) == Say("Checking.")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(outputs), 0.1)  # the caller barges in during the lookup
    result: list[DialogOutput] = [o async for o in dialog.respond(CallerText("hello?"))]
    assert result == [Say("Failed: no reply within 0.3 s."), Hangup("failed")]
    assert backend.requests == ["/orders/999999", "/orders/999999"]


async def test_a_goodbye_cut_by_barge_in_still_owes_its_hang_up(make_plan, session) -> None:
    plan = make_plan(
        """
        name: bye
        start: bye
        steps:
          bye: {say: "Thanks for calling, goodbye.", hangup: done}
        """
    )
    dialog = build_dialog(plan, session)
    outputs = dialog.respond(CallStarted())
    assert dialog.hangup_due() is None
    assert await anext(outputs) == Say("Thanks for calling, goodbye.")
    await outputs.aclose()  # the caller talks over the goodbye
    assert dialog.hangup_due() == Hangup("done")
