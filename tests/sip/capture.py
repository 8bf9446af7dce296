"""What really crossed loopback: UDP datagrams captured on ``lo`` with a raw packet socket.

Used where a peer cannot report what it received (sipp counts no incoming RTP). A packet
socket needs root, as in CI; elsewhere the test skips, like sipp's pcap player.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Container
from dataclasses import dataclass
from types import TracebackType

import pytest

from tests.peers.availability import in_ci

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
UDP = 17


@dataclass(frozen=True)
class Datagram:
    source: tuple[str, int]
    destination: tuple[str, int]
    payload: bytes


class LoopbackCapture:
    """Collects, while open, every UDP/IPv4 datagram on ``lo`` from or to one of ``ports``."""

    def __init__(self, ports: Container[int]) -> None:
        self.ports = ports
        self.datagrams: list[Datagram] = []
        self._socket: socket.socket | None = None

    async def __aenter__(self) -> LoopbackCapture:
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            message = "capturing on loopback needs root (a raw packet socket)"
            pytest.fail(message) if in_ci() else pytest.skip(message)
        sock.bind(("lo", 0))
        sock.setblocking(False)
        self._socket = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.sleep(0.05)  # what is in flight
        if self._socket is not None:
            self._read()
            asyncio.get_running_loop().remove_reader(self._socket.fileno())
            self._socket.close()
            self._socket = None

    def _read(self) -> None:
        assert self._socket is not None
        while True:
            try:
                frame, address = self._socket.recvfrom(65536)
            except BlockingIOError:
                return
            if address[2] == socket.PACKET_OUTGOING:  # each packet is seen leaving, then arriving
                continue
            datagram = _udp(frame)
            if datagram and (
                datagram.source[1] in self.ports or datagram.destination[1] in self.ports
            ):
                self.datagrams.append(datagram)


def _udp(frame: bytes) -> Datagram | None:
    """The UDP datagram in an Ethernet frame (loopback has an all-zero Ethernet header)."""
    if len(frame) < 42 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return None
    ip = frame[14:]
    header = (ip[0] & 0x0F) * 4
    if ip[9] != UDP:
        return None
    source, destination = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    sport, dport, length = struct.unpack_from("!HHH", ip, header)
    payload = ip[header + 8 : header + length]
    return Datagram((source, sport), (destination, dport), payload)
