"""Dialog state (RFC 3261 §12): the tags, CSeq counters, route set and remote target that
every request inside a call needs."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.sip.headers import Headers
from bridge.sip.message import Request, Response
from bridge.sip.uri import NameAddress


@dataclass
class Dialog:
    call_id: str
    local: NameAddress  # our From in requests we send, tag included
    remote: NameAddress
    remote_target: str
    route_set: list[str]
    local_cseq: int
    remote_cseq: int

    @classmethod
    def as_uas(cls, request: Request, local_tag: str) -> Dialog:
        """The dialog an incoming INVITE creates once we answer it with ``local_tag``."""
        return cls(
            request.call_id,
            request.to.with_tag(local_tag),
            request.from_,
            _target(request, request),
            request.headers.get_all("Record-Route"),
            0,
            request.cseq[0],
        )

    @classmethod
    def as_uac(cls, request: Request, response: Response) -> Dialog:
        """The dialog a 2xx (or 1xx with a tag) to our INVITE creates."""
        return cls(
            request.call_id,
            request.from_,
            response.to,
            _target(response, request),
            list(reversed(response.headers.get_all("Record-Route"))),
            request.cseq[0],
            0,
        )

    @property
    def local_tag(self) -> str:
        return self.local.tag or ""

    @property
    def remote_tag(self) -> str:
        return self.remote.tag or ""

    def matches(self, request: Request) -> bool:
        """Whether an incoming request belongs here (Call-ID and both tags)."""
        return (
            request.call_id == self.call_id
            and request.to.tag == self.local_tag
            and request.from_.tag == self.remote_tag
        )

    def accept_cseq(self, request: Request) -> bool:
        """§12.2.2: a lower CSeq than the last one is out of order (answer 500)."""
        number = request.cseq[0]
        if number < self.remote_cseq and request.method not in ("ACK", "CANCEL"):
            return False
        self.remote_cseq = max(self.remote_cseq, number)
        return True

    def request(self, method: str, via: str, contact: str, cseq: int | None = None) -> Request:
        """A new in-dialog request; ACK passes the INVITE's CSeq, others take the next one."""
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        headers = Headers()
        headers.add("Via", via)
        headers.add("Max-Forwards", "70")
        headers.add("From", str(self.local))
        headers.add("To", str(self.remote))
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{cseq} {method}")
        for route in self.route_set:
            headers.add("Route", route)
        headers.add("Contact", contact)
        return Request(headers=headers, method=method, uri=self.remote_target)


def _target(message: Request | Response, fallback: Request) -> str:
    contact = message.contact
    return str(contact.uri) if contact else fallback.uri
