"""Session timer negotiation and deadlines (RFC 4028), and their configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import ConfigError, load_config
from bridge.sip.headers import Headers
from bridge.sip.session_timer import (
    SessionTimer,
    TooSmall,
    negotiate_as_uac,
    negotiate_as_uas,
    parse_session_expires,
)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("1800", (1800, None)),
        (" 90 ; refresher=UAS", (90, "uas")),
        ("120;foo;refresher=uac", (120, "uac")),
    ],
)
def test_parse_session_expires(value: str, parsed: tuple[int, str | None]) -> None:
    assert parse_session_expires(value) == parsed


@pytest.mark.parametrize("value", ["", "-5", "0", "ninety", "90;refresher=both", "12345678901"])
def test_malformed_session_expires(value: str) -> None:
    with pytest.raises(ValueError):
        parse_session_expires(value)


@pytest.mark.parametrize(
    ("headers", "interval", "ours", "header"),
    [
        ([("Session-Expires", "1800"), ("Supported", "timer")], 1800, False, "1800;refresher=uac"),
        ([("Session-Expires", "1800")], 1800, True, "1800;refresher=uas"),  # it cannot refresh
        ([("Session-Expires", "90;refresher=uac")], 90, True, "90;refresher=uas"),  # nor here
        (
            [("Session-Expires", "600;refresher=uas"), ("Supported", "timer")],
            600,
            True,
            "600;refresher=uas",
        ),
    ],
)
def test_uas_negotiation(
    headers: list[tuple[str, str]], interval: int, ours: bool, header: str
) -> None:
    timer = negotiate_as_uas(Headers(headers), 90)
    assert timer is not None and (timer.interval, timer.ours) == (interval, ours)
    assert timer.header(we_send_request=False) == header


def test_uas_negotiation_without_or_below_the_minimum() -> None:
    assert negotiate_as_uas(Headers([("Supported", "timer")]), 90) is None
    with pytest.raises(TooSmall) as error:
        negotiate_as_uas(Headers([("Session-Expires", "89")]), 90)
    assert error.value.min_se == 90


def test_uac_negotiation() -> None:
    timer = negotiate_as_uac(Headers([("Session-Expires", "300;refresher=uac")]))
    assert (
        timer is not None
        and timer.ours
        and timer.header(we_send_request=True) == "300;refresher=uac"
    )
    timer = negotiate_as_uac(Headers([("Session-Expires", "300;refresher=uas")]))
    assert timer is not None and not timer.ours
    assert negotiate_as_uac(Headers()) is None


def test_refresher_refreshes_at_half_then_gives_up_before_expiry() -> None:
    timer = SessionTimer(90, ours=True)
    timer.restart(10.0)
    assert timer.deadline == 55.0 and timer.due(54.9) is None
    assert timer.due(55.0) == "refresh"
    assert timer.deadline == 70.0 and timer.due(69.0) is None  # 90 - min(32, 30) from the start
    assert timer.due(70.0) == "expire"
    timer.restart(60.0)
    assert timer.deadline == 105.0


def test_margin_is_at_most_32_seconds() -> None:
    timer = SessionTimer(1800, ours=False)
    timer.restart(0.0)
    assert timer.deadline == 1768.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sip:\n  min_se_s: 0\n", "sip: min_se_s: must be 1 or more, got 0"),
        (
            "sip:\n  min_se_s: 120\n  session_expires_s: 100\n",
            "sip: session_expires_s: must be at least min_se_s (120)",
        ),
    ],
)
def test_config_names_the_bad_field(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_config(path)
