"""Digest authentication, both sides."""

from __future__ import annotations

import pytest

from bridge.sip.auth import (
    AuthResult,
    DigestVerifier,
    authorize,
    digest_response,
    parse_auth_header,
)


def test_rfc2617_example_vector() -> None:
    response = digest_response(
        algorithm="MD5",
        username="Mufasa",
        password="Circle Of Life",
        realm="testrealm@host.com",
        method="GET",
        uri="/dir/index.html",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


def test_parse_auth_header_keeps_commas_in_quotes() -> None:
    scheme, params = parse_auth_header('Digest realm="a, b", qop="auth,auth-int", nc=00000001')
    assert scheme == "Digest"
    assert params == {"realm": "a, b", "qop": "auth,auth-int", "nc": "00000001"}


VERIFIER = DigestVerifier("bridge", {"alice": "secret"}, nonce_ttl=60.0, secret=b"k" * 32)
URI = "sip:bot@127.0.0.1"


@pytest.mark.parametrize(
    ("challenge_index", "password", "method", "checked_at", "expected"),
    [
        (0, "secret", "INVITE", 10.0, AuthResult.OK),  # SHA-256
        (1, "secret", "INVITE", 10.0, AuthResult.OK),  # MD5
        (0, "wrong", "INVITE", 10.0, AuthResult.FAILED),
        (0, "secret", "BYE", 10.0, AuthResult.FAILED),  # answer was computed for INVITE
        (0, "secret", "INVITE", 100.0, AuthResult.STALE),
    ],
)
def test_round_trip(
    challenge_index: int, password: str, method: str, checked_at: float, expected: AuthResult
) -> None:
    challenge = VERIFIER.challenges(now=0.0)[challenge_index]
    header = authorize(challenge, method="INVITE", uri=URI, username="alice", password=password)
    assert VERIFIER.check(method, header, checked_at) is expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic YWxpY2U6c2VjcmV0",
        'Digest username="alice", realm="bridge", nonce="forged.0", uri="x", response="0"',
        'Digest username="bob", realm="bridge", nonce="1.2", response="0"',
    ],
)
def test_rejects_bad_credentials(header: str | None) -> None:
    assert VERIFIER.check("INVITE", header, 0.0) is AuthResult.FAILED


def test_stale_challenge_and_algorithms() -> None:
    challenges = VERIFIER.challenges(now=0.0, stale=True)
    assert ["SHA-256" in challenges[0], "MD5" in challenges[1]] == [True, True]
    assert all("stale=true" in c and 'qop="auth"' in c for c in challenges)


@pytest.mark.parametrize(
    "challenge",
    [
        'Basic realm="x"',
        'Digest realm="x", nonce="n", algorithm=SHA-512',
        'Digest realm="x"',
        'Digest realm="x", nonce="n", qop="auth-int"',
    ],
)
def test_unanswerable_challenges(challenge: str) -> None:
    with pytest.raises(ValueError):
        authorize(challenge, method="INVITE", uri=URI, username="a", password="b")


def test_answer_without_qop_and_with_opaque() -> None:
    header = authorize(
        'Digest realm="r", nonce="n", opaque="o"',
        method="REGISTER",
        uri=URI,
        username="u",
        password="p",
    )
    _, params = parse_auth_header(header)
    assert params["opaque"] == "o" and "qop" not in params
    assert params["response"] == digest_response(
        algorithm="MD5",
        username="u",
        password="p",
        realm="r",
        method="REGISTER",
        uri=URI,
        nonce="n",
        qop=None,
    )
