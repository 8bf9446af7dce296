"""HTTP Digest authentication for SIP (RFC 2617, RFC 8760: MD5 and SHA-256, qop=auth).

Both sides are plain functions of their inputs: :class:`DigestVerifier` challenges and checks
inbound requests with stateless, self-expiring nonces (an HMAC over the issue time), and
:func:`authorize` answers a challenge for requests we send.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from bridge.sip.headers import split_outside_quotes

HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
_QUOTED = ("realm", "nonce", "uri", "response", "cnonce", "opaque", "username", "qop-options")


def parse_auth_header(value: str) -> tuple[str, dict[str, str]]:
    """``Digest a="x", b=y`` → ``("Digest", {"a": "x", "b": "y"})`` (names lower-cased)."""
    scheme, _, rest = value.strip().partition(" ")
    params: dict[str, str] = {}
    for item in split_outside_quotes(rest, ","):
        name, eq, raw = item.partition("=")
        if eq:
            raw = raw.strip()
            if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                raw = raw[1:-1].replace('\\"', '"')
            params[name.strip().lower()] = raw
    return scheme, params


def _format(scheme: str, params: Mapping[str, str], quoted: tuple[str, ...] = _QUOTED) -> str:
    items = [f'{k}="{v}"' if k in quoted else f"{k}={v}" for k, v in params.items()]
    return f"{scheme} " + ", ".join(items)


def _hash(algorithm: str, text: str) -> str:
    return HASHES[algorithm](text.encode()).hexdigest()


def digest_response(
    *,
    algorithm: str,
    username: str,
    password: str,
    realm: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None,
    nc: str = "",
    cnonce: str = "",
) -> str:
    """The ``response`` value of RFC 2617 §3.2.2.1 (qop=auth or none)."""
    ha1 = _hash(algorithm, f"{username}:{realm}:{password}")
    ha2 = _hash(algorithm, f"{method}:{uri}")
    if qop:
        return _hash(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _hash(algorithm, f"{ha1}:{nonce}:{ha2}")


def authorize(
    challenge: str,
    *,
    method: str,
    uri: str,
    username: str,
    password: str,
    nc: int = 1,
    cnonce: str | None = None,
) -> str:
    """The Authorization / Proxy-Authorization value answering a WWW/Proxy-Authenticate one.

    Raises ``ValueError`` for a challenge we cannot answer (not Digest, unknown algorithm,
    or a qop other than ``auth``).
    """
    scheme, params = parse_auth_header(challenge)
    algorithm = params.get("algorithm", "MD5").upper()
    if scheme.lower() != "digest" or algorithm not in HASHES or "nonce" not in params:
        raise ValueError(f"cannot answer challenge {challenge!r}")
    qops = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
    if qops and "auth" not in qops:
        raise ValueError("only qop=auth is supported")
    qop = "auth" if qops else None
    nc_text, cnonce = f"{nc:08x}", cnonce or secrets.token_hex(8)
    answer = {"username": username, "realm": params.get("realm", ""), "nonce": params["nonce"]}
    answer["uri"] = uri
    answer["response"] = digest_response(
        algorithm=algorithm,
        username=username,
        password=password,
        realm=answer["realm"],
        method=method,
        uri=uri,
        nonce=params["nonce"],
        qop=qop,
        nc=nc_text,
        cnonce=cnonce,
    )
    answer["algorithm"] = algorithm
    if qop:
        answer |= {"qop": qop, "nc": nc_text, "cnonce": cnonce}
    if "opaque" in params:
        answer["opaque"] = params["opaque"]
    return _format("Digest", answer)


class AuthResult(Enum):
    OK = "ok"
    FAILED = "failed"  # missing, malformed or wrong: challenge again
    STALE = "stale"  # right password, expired nonce: challenge with stale=true


@dataclass
class DigestVerifier:
    """Checks requests against ``passwords`` (user → password) in ``realm``."""

    realm: str
    passwords: Mapping[str, str]
    nonce_ttl: float = 300.0
    algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    secret: bytes = b""

    def __post_init__(self) -> None:
        self.secret = self.secret or secrets.token_bytes(32)

    def challenges(self, now: float, stale: bool = False) -> list[str]:
        """WWW-Authenticate values, strongest algorithm first (RFC 8760 §2.4)."""
        params = {"realm": self.realm, "nonce": self._nonce(now), "qop": "auth"}
        if stale:
            params["stale"] = "true"
        return [
            _format("Digest", {**params, "algorithm": a}, ("realm", "nonce", "qop"))
            for a in self.algorithms
        ]

    def check(self, method: str, authorization: str | None, now: float) -> AuthResult:
        if not authorization:
            return AuthResult.FAILED
        scheme, params = parse_auth_header(authorization)
        algorithm = params.get("algorithm", "MD5").upper()
        password = self.passwords.get(params.get("username", ""))
        if (
            scheme.lower() != "digest"
            or algorithm not in self.algorithms
            or password is None
            or params.get("realm") != self.realm
            or not self._nonce_is_ours(params.get("nonce", ""))
        ):
            return AuthResult.FAILED
        expected = digest_response(
            algorithm=algorithm,
            username=params["username"],
            password=password,
            realm=self.realm,
            method=method,
            uri=params.get("uri", ""),
            nonce=params["nonce"],
            qop=params.get("qop"),
            nc=params.get("nc", ""),
            cnonce=params.get("cnonce", ""),
        )
        if not hmac.compare_digest(expected, params.get("response", "")):
            return AuthResult.FAILED
        issued = int(params["nonce"].partition(".")[0], 16) / 1000
        return AuthResult.OK if now - issued <= self.nonce_ttl else AuthResult.STALE

    def _nonce(self, now: float) -> str:
        stamp = f"{int(now * 1000):x}"
        return f"{stamp}.{self._sign(stamp)}"

    def _sign(self, stamp: str) -> str:
        return hmac.new(self.secret, stamp.encode(), hashlib.sha256).hexdigest()[:32]

    def _nonce_is_ours(self, nonce: str) -> bool:
        stamp, _, signature = nonce.partition(".")
        valid_stamp = bool(stamp) and all(c in "0123456789abcdef" for c in stamp)
        return valid_stamp and hmac.compare_digest(signature, self._sign(stamp))
