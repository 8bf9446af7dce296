"""SIP URIs (RFC 3261 §19.1): just enough structure to route, match users and pick a transport."""

from __future__ import annotations

from dataclasses import dataclass, replace

from bridge.sip.headers import (
    Params,
    format_params,
    get_param,
    parse_params,
    set_param,
    split_hostport,
)


@dataclass(frozen=True, slots=True)
class SipUri:
    host: str
    user: str | None = None
    port: int | None = None
    scheme: str = "sip"
    params: Params = ()
    headers: str = ""

    @classmethod
    def parse(cls, text: str) -> SipUri:
        """Parse ``sip:user@host:port;params?headers``; raise ``ValueError`` when malformed."""
        scheme, sep, rest = text.strip().partition(":")
        scheme = scheme.lower()
        if not sep or scheme not in ("sip", "sips"):
            raise ValueError(f"not a SIP URI: {text!r}")
        rest, _, headers = rest.partition("?")
        user: str | None = None
        if "@" in rest:
            user, _, rest = rest.rpartition("@")
            user = user.partition(":")[0]  # a password in a URI is never used
        hostport, _, param_text = rest.partition(";")
        host, port = split_hostport(hostport)
        return cls(host, user, port, scheme, parse_params(param_text), headers)

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        headers = f"?{self.headers}" if self.headers else ""
        return f"{self.scheme}:{user}{self.host}{port}{format_params(self.params)}{headers}"

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    @property
    def transport(self) -> str:
        return (self.param("transport") or "udp").lower()


@dataclass(frozen=True, slots=True)
class NameAddress:
    """``"Display" <uri>;params`` as in From, To, Contact and Route; params belong to the header."""

    uri: SipUri
    display: str = ""
    params: Params = ()

    @classmethod
    def parse(cls, text: str) -> NameAddress:
        text = text.strip()
        if "<" in text:
            display, _, rest = text.partition("<")
            uri_text, sep, param_text = rest.partition(">")
            if not sep:
                raise ValueError(f"unterminated <: {text!r}")
            display = display.strip()
        else:  # addr-spec form: parameters after the URI are header parameters
            uri_text, _, param_text = text.partition(";")
            display = ""
        return cls(SipUri.parse(uri_text), display, parse_params(param_text.lstrip(" ;")))

    def __str__(self) -> str:
        display = f"{self.display} " if self.display else ""
        return f"{display}<{self.uri}>{format_params(self.params)}"

    @property
    def tag(self) -> str | None:
        return get_param(self.params, "tag")

    def with_tag(self, tag: str) -> NameAddress:
        return replace(self, params=set_param(self.params, "tag", tag))
