"""The scripted flow, table-driven: caller events (text, DTMF, silence, webhook outcomes) in, and
exactly what the bot says and does out — every action, reprompt and failure branch."""

from __future__ import annotations

import pytest

from bridge.dialog.base import CallerDigits, CallerText, CallStarted, DialogEvent, NoInput
from bridge.dialog.flow import Flow
from bridge.dialog.webhook import WebhookResult
from tests.dialog.conftest import show

MENU = r"""
name: menu
variables: {company: Acme}
webhooks:
  order: {url: "http://hooks.test/orders/{{ order_number }}", result: order}
start: menu
steps:
  menu:
    say: Welcome to {{ company }}.
    listen:
      intents:
        - {name: hours, keywords: [hours, open], goto: hours}
        - {name: order_no, patterns: ['order (?P<order_number>\d{4})'], goto: lookup}
        - {name: order, examples: [where is my parcel], goto: ask_order}
        - {name: notice, keywords: [notice], goto: notice}
      dtmf: {"1": hours, "2": ask_order, "0": agent}
      no_input: ["Still there?"]
      no_match: ["Pardon?", "Once more?"]
      max_attempts: 3
      on_failure: agent
  hours:
    set: {topic: hours}
    say: Open all day ({{ topic }}).
    goto: bye
  notice:
    say: A notice.
    barge_in: false
    dtmf_barge_in: true
    goto: legal
  legal:
    say: Legal text.
    barge_in: false
    goto: bye
  ask_order:
    say: Your order number?
    collect:
      slot: order_number
      type: digits
      min_length: 4
      max_length: 4
      confirm: "You said {{ order_number | digits }}?"
      max_attempts: 2
      on_failure: agent
    goto: lookup
  lookup:
    say: Checking.
    webhook: order
    on_error: failed
    goto: status
  status:
    say: It is {{ order.status }}.
    branch: {variable: order.status, cases: {shipped: bye, lost: agent}}
    goto: menu_again
  menu_again:
    say: Anything else?
    hangup: asked
  failed:
    say: "Lookup failed: {{ webhook_error }}."
    goto: agent
  agent:
    say: Transferring.
    transfer: sip:agent@pbx.test
  bye:
    say: Bye.
    hangup: done
"""

WELCOME = "say:Welcome to Acme."
FETCH_1234 = "fetch:GET http://hooks.test/orders/1234"
TO_AGENT = ["say:Transferring.", "transfer:sip:agent@pbx.test"]
OK = WebhookResult(True, 200, {"status": "shipped"})

Script = list[tuple[DialogEvent | WebhookResult, list[str]]]

MENU_CASES: dict[str, Script] = {
    "intent by keyword, set, say, hangup": [
        (CallStarted(), [WELCOME]),
        (
            CallerText("When are you open?"),
            ["say:Open all day (hours).", "say:Bye.", "hangup:done"],
        ),
        (CallerText("hello?"), []),  # the flow has ended
    ],
    "dtmf menu": [
        (CallStarted(), [WELCOME]),
        (CallerDigits("1"), ["say:Open all day (hours).", "say:Bye.", "hangup:done"]),
    ],
    "dtmf key not in the menu is a no-match": [
        (CallStarted(), [WELCOME]),
        (CallerDigits("9"), ["say:Pardon?"]),
        (CallerDigits("0"), TO_AGENT),
    ],
    "no-match reprompts in turn, then on_failure": [
        (CallStarted(), [WELCOME]),
        (CallerText("blah"), ["say:Pardon?"]),
        (CallerText("blah"), ["say:Once more?"]),
        (CallerText("blah"), TO_AGENT),
    ],
    "silence and misses count together": [
        (CallStarted(), [WELCOME]),
        (NoInput(), ["say:Still there?"]),
        (CallerText("blah"), ["say:Once more?"]),
        (NoInput(), TO_AGENT),
    ],
    "regex intent fills a variable and runs a webhook": [
        (CallStarted(), [WELCOME]),
        (CallerText("my order 1234 please"), ["say:Checking.", FETCH_1234]),
        (CallerText("hurry up"), []),  # the lookup decides what comes next
        (OK, ["say:It is shipped.", "say:Bye.", "hangup:done"]),
    ],
    "example phrase intent, keyed digits, confirmed by voice": [
        (CallStarted(), [WELCOME]),
        (CallerText("where's my parcel"), ["say:Your order number?"]),
        (CallerDigits("1"), []),
        (CallerDigits("23"), []),
        (CallerDigits("4"), ["say:You said 1 2 3 4?"]),  # max_length reached
        (CallerText("yes that's right"), ["say:Checking.", FETCH_1234]),
    ],
    "spoken digits, rejected at confirmation, asked again": [
        (CallStarted(), [WELCOME]),
        (CallerDigits("2"), ["say:Your order number?"]),
        (CallerText("one two three four"), ["say:You said 1 2 3 4?"]),
        (CallerText("no"), ["say:Your order number?"]),
        (CallerText("5 6 7 8"), ["say:You said 5 6 7 8?"]),
        (CallerDigits("1"), ["say:Checking.", "fetch:GET http://hooks.test/orders/5678"]),
    ],
    "unclear confirmation repeats the question": [
        (CallStarted(), [WELCOME]),
        (CallerDigits("2"), ["say:Your order number?"]),
        (CallerText("double one two three"), ["say:You said 1 1 2 3?"]),
        (CallerText("hmm"), ["say:You said 1 1 2 3?"]),
        (CallerDigits("1"), ["say:Checking.", "fetch:GET http://hooks.test/orders/1123"]),
    ],
    "keys: star clears, hash ends early, a pause takes what was keyed": [
        (CallStarted(), [WELCOME]),
        (CallerDigits("2"), ["say:Your order number?"]),
        (CallerDigits("9*12#"), ["say:Your order number?"]),  # two digits: too short
        (CallerDigits("123"), []),
        (NoInput(), TO_AGENT),  # three digits: too short again, and the last attempt
    ],
    "invalid slot values until on_failure": [
        (CallStarted(), [WELCOME]),
        (CallerDigits("2"), ["say:Your order number?"]),
        (CallerText("twelve"), ["say:Your order number?"]),
        (CallerText("one two"), TO_AGENT),
    ],
    "webhook failure branch": [
        (CallStarted(), [WELCOME]),
        (CallerText("order 1234"), ["say:Checking.", FETCH_1234]),
        (WebhookResult(False, error="HTTP 500"), ["say:Lookup failed: HTTP 500.", *TO_AGENT]),
    ],
    "branch on a webhook result": [
        (CallStarted(), [WELCOME]),
        (CallerText("order 1234"), ["say:Checking.", FETCH_1234]),
        (WebhookResult(True, 200, {"status": "LOST"}), ["say:It is LOST.", *TO_AGENT]),
    ],
    "branch default is the goto": [
        (CallStarted(), [WELCOME]),
        (CallerText("order 1234"), ["say:Checking.", FETCH_1234]),
        (
            WebhookResult(True, 200, {"status": "packing"}),
            ["say:It is packing.", "say:Anything else?", "hangup:asked"],
        ),
    ],
    "barge-in policy per step": [
        (CallStarted(), [WELCOME]),
        (
            CallerText("the notice"),
            ["say(keys):A notice.", "say(locked):Legal text.", "say:Bye.", "hangup:done"],
        ),
    ],
}


@pytest.mark.parametrize("script", MENU_CASES.values(), ids=MENU_CASES.keys())
def test_menu_flow(make_plan, script: Script) -> None:
    run(Flow(make_plan(MENU)), script)


SLOTS = """
name: slots
start: age
steps:
  age:
    say: Age?
    collect: {slot: age, type: number, minimum: 18, maximum: 120}
    goto: name
  name:
    say: Age {{ age }}. Name?
    collect: {slot: name, type: text, min_length: 2}
    goto: sure
  sure:
    say: Sure, {{ name }}?
    collect: {slot: sure, type: yes_no, no_match: ["Yes or no?"]}
    goto: done
  done:
    say: Answer {{ sure }}.
    hangup: done
"""

SLOT_CASES: dict[str, Script] = {
    "number, text and yes/no by voice": [
        (CallStarted(), ["say:Age?"]),
        (CallerText("I am twenty five"), ["say:Age 25. Name?"]),
        (CallerText("Jo Smith"), ["say:Sure, Jo Smith?"]),
        (CallerText("yeah"), ["say:Answer yes.", "hangup:done"]),
    ],
    "number out of range, hundreds in words": [
        (CallStarted(), ["say:Age?"]),
        (CallerText("seventeen"), ["say:Age?"]),
        (CallerText("one hundred and five"), ["say:Age 105. Name?"]),
    ],
    "keyed number, short text, keyed no": [
        (CallStarted(), ["say:Age?"]),
        (CallerDigits("42#"), ["say:Age 42. Name?"]),
        (CallerText("J"), ["say:Age 42. Name?"]),
        (CallerText("Al"), ["say:Sure, Al?"]),
        (CallerText("maybe"), ["say:Yes or no?"]),
        (CallerDigits("2"), ["say:Answer no.", "hangup:done"]),
    ],
    "negation wins over yes words": [
        (CallStarted(), ["say:Age?"]),
        (CallerText("30"), ["say:Age 30. Name?"]),
        (CallerText("Bo"), ["say:Sure, Bo?"]),
        (CallerText("not correct"), ["say:Answer no.", "hangup:done"]),
    ],
    "no on_failure: goodbye after max_attempts (silence)": [
        (CallStarted(), ["say:Age?"]),
        (NoInput(), ["say:Age?"]),
        (NoInput(), ["say:Age?"]),
        (NoInput(), ["say:Thank you for calling. Goodbye.", "hangup:no-input"]),
    ],
    "no on_failure: goodbye after max_attempts (no match)": [
        (CallStarted(), ["say:Age?"]),
        (CallerText("old"), ["say:Age?"]),
        (CallerText("very old"), ["say:Age?"]),
        (CallerText("ancient"), ["say:Thank you for calling. Goodbye.", "hangup:no-match"]),
    ],
}


@pytest.mark.parametrize("script", SLOT_CASES.values(), ids=SLOT_CASES.keys())
def test_slot_flow(make_plan, script: Script) -> None:
    run(Flow(make_plan(SLOTS)), script)


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ("a: {say: A., goto: b}\n  b: {goto: a}", "hangup:flow-loop"),
        ("a: {branch: {variable: x, cases: {y: a}}}", "hangup:end-of-flow"),
    ],
    ids=["loop", "branch without a match or goto"],
)
def test_flow_that_cannot_go_on_hangs_up(make_plan, steps: str, expected: str) -> None:
    flow = Flow(make_plan(f"name: t\nstart: a\nsteps:\n  {steps}\n"))
    assert [show(e) for e in flow.handle(CallStarted())][-1] == expected
    assert flow.ended


@pytest.mark.parametrize(
    ("step", "timeout"),
    [("menu", 6.0), ("ask_order", 6.0), ("bye", None)],
)
def test_no_input_timeout_only_while_waiting(make_plan, step: str, timeout: float | None) -> None:
    flow = Flow(make_plan(MENU))
    flow.handle(CallStarted())
    if step == "ask_order":
        flow.handle(CallerDigits("2"))
    elif step == "bye":
        flow.handle(CallerDigits("1"))
    assert flow.no_input_timeout == timeout


def run(flow: Flow, script: Script) -> None:
    for number, (event, expected) in enumerate(script):
        if isinstance(event, WebhookResult):
            effects = flow.webhook_done(event)
        else:
            effects = flow.handle(event)
        assert [show(e) for e in effects] == expected, f"event {number}: {event}"
