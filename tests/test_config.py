"""Config errors name the file, the line and the key; good files load with their values."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.cli import apply_overrides, build_parser
from bridge.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http:\n  port: eighty\n", ":2: http.port: expected an integer, got 'eighty'"),
        ("http:\n  port: true\n", ":2: http.port: expected an integer"),
        ("http:\n  prot: 1\n", ":2: http.prot: unknown key (expected one of: "),
        ("speech:\n  vad:\n    engine: foo\n", ":3: speech.vad.engine: expected one of"),
        ("http: [1]\n", ":1: http: expected a mapping"),
        ("webrtc:\n  ice_hosts: 127.0.0.1\n", ":2: webrtc.ice_hosts: expected a list"),
        ("speech:\n  vad:\n    threshold: high\n", ":3: speech.vad.threshold: expected a number"),
        ("a: [\n", ": invalid YAML"),
        ("- 1\n", ":1: (top level): expected a mapping"),
        ("campaigns:\n  number_uri: sip:x@y\n", ":2: campaigns: number_uri: must contain {number}"),
        ("campaigns:\n  default_timezone: Mars\n", "default_timezone: unknown time zone 'Mars'"),
        ("sip:\n  answer_delay_ms: -5\n", ":2: sip: answer_delay_ms: must be 0 or more, got -5"),
        ("sip:\n  media_workers: -1\n", ":2: sip: media_workers: must be 0 or more, got -1"),
    ],
)
def test_errors_point_at_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(str(path))
    assert expected in str(error.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_default_config_loads() -> None:
    config = load_config(REPO / "config" / "default.yaml")
    assert config.http.port == 8080
    assert config.speech.tts.voice is None
    assert config.webrtc.ice_servers == []  # no public STUN unless configured


def test_command_line_overrides_config() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--http-host", "0.0.0.0",
            "--http-port", "9000",
            "--records-dir", "/srv/records",
            "--ice-host", "127.0.0.1",
            "--ice-host", "10.0.0.5",
        ]
    )  # fmt: skip
    config = apply_overrides(load_config(REPO / "config" / "default.yaml"), args)
    assert (config.http.host, config.http.port) == ("0.0.0.0", 9000)
    assert config.records.dir == "/srv/records"
    assert config.webrtc.ice_hosts == ["127.0.0.1", "10.0.0.5"]
