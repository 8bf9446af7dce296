"""Contact import: every bad row reported with its line and reason, good rows kept as given."""

from __future__ import annotations

import pytest

from bridge.campaign.contacts import ImportRules, destination, parse_csv, parse_list
from bridge.campaign.model import RowProblem
from bridge.sip.protection import DestinationPolicy

RULES = ImportRules(
    DestinationPolicy(["sip:*@127.0.0.1", "sip:*@trunk.example.com"]).allows,
    default_timezone="Europe/Paris",
    number_uri="sip:{number}@trunk.example.com",
)


def test_good_csv_becomes_contacts_with_variables() -> None:
    text = (
        "to,name,appointment,timezone\n"
        "sip:alice@127.0.0.1:5070,Alice,Monday 10:00,America/New_York\n"
        "+1 (555) 010-0199,Bob,Tuesday 11:00,\n"
    )
    contacts, problems = parse_csv(text, RULES)
    assert problems == []
    assert [(c.line, c.to, c.timezone) for c in contacts] == [
        (2, "sip:alice@127.0.0.1:5070", "America/New_York"),
        (3, "sip:+15550100199@trunk.example.com", "Europe/Paris"),
    ]
    assert contacts[0].variables == {"name": "Alice", "appointment": "Monday 10:00"}


def test_every_bad_row_is_reported_with_its_line() -> None:
    text = (
        "To,Name,TimeZone\n"  # header names are case-insensitive
        "sip:a@127.0.0.1,A,UTC\n"
        ",empty,UTC\n"
        "sip:@127.0.0.1,nouser,UTC\n"
        "12,short,UTC\n"
        "call me maybe,words,UTC\n"
        "sip:b@127.0.0.1,B,Mars/Olympus\n"
        "sip:c@10.0.0.9,C,UTC\n"
        "sip:a@127.0.0.1,again,UTC\n"
        "sip:d@127.0.0.1,D\n"
        "sip:e@127.0.0.1,E,UTC,extra\n"
        "\n"  # blank lines are skipped, not errors
        "sip:f@127.0.0.1,F,UTC\n"
    )
    contacts, problems = parse_csv(text, RULES)
    assert [c.line for c in contacts] == [2, 13]
    assert problems == [
        RowProblem(3, "'to' is empty"),
        RowProblem(4, "'sip:@127.0.0.1' is not a valid SIP URI (sip:user@host[:port])"),
        RowProblem(5, "'12' is not a phone number (3 to 15 digits)"),
        RowProblem(6, "'call me maybe' is neither a SIP URI nor a phone number"),
        RowProblem(7, "unknown time zone 'Mars/Olympus'"),
        RowProblem(8, "sip:c@10.0.0.9 is not allowed by sip.outbound_targets"),
        RowProblem(9, "duplicate of line 2 (sip:a@127.0.0.1)"),
        RowProblem(10, "missing value for column 'timezone'"),
        RowProblem(11, "more fields than the 3 columns"),
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("name,phone\nA,sip:a@127.0.0.1\n", "missing column 'to'"),
        ("", "missing column 'to'"),
        ("to,name,name\nsip:a@127.0.0.1,A,B\n", "column names must be unique"),
    ],
)
def test_file_wide_problems_are_on_line_1(text: str, problem: str) -> None:
    contacts, problems = parse_csv(text, RULES)
    assert contacts == []
    assert len(problems) == 1 and problems[0].line == 1 and problem in problems[0].reason


def test_quoted_fields_span_lines_and_lines_still_count() -> None:
    text = 'to,note\nsip:a@127.0.0.1,"two\nlines"\nnot a uri,x\n'
    contacts, problems = parse_csv(text, RULES)
    assert contacts[0].variables == {"note": "two\nlines"}
    assert problems == [RowProblem(4, "'not a uri' is neither a SIP URI nor a phone number")]


def test_phone_numbers_need_a_uri_template() -> None:
    rules = ImportRules(RULES.allows)
    contacts, problems = parse_csv("to\n+15550100199\n", rules)
    assert contacts == []
    assert "needs campaigns.number_uri" in problems[0].reason
    assert destination("0049 30 1234567", "sip:{number}@x") == "sip:0049301234567@x"


def test_json_list() -> None:
    items = [
        {"to": "sip:a@127.0.0.1", "timezone": "UTC", "variables": {"name": "A"}, "tier": 2},
        "sip:b@127.0.0.1",
        {"to": "sip:c@127.0.0.1", "variables": ["x"]},
        {"to": "sip:d@127.0.0.1", "name": {"nested": True}},
        {"to": "sip:a@127.0.0.1"},
        {"to": "sip:e@10.1.1.1"},
    ]
    contacts, problems = parse_list(items, RULES)
    assert [(c.line, c.to, c.variables) for c in contacts] == [
        (1, "sip:a@127.0.0.1", {"name": "A", "tier": "2"})
    ]
    assert [p.line for p in problems] == [2, 3, 4, 5, 6]
    assert problems[0].reason == "a contact must be a JSON object"
    assert problems[1].reason == "'variables' must be an object"
    assert problems[2].reason == "'name': expected a string or number"
    assert problems[3].reason.startswith("duplicate of line 1")
    assert "not allowed" in problems[4].reason
