"""RTP port allocation."""

from __future__ import annotations

import pytest

from bridge.sip.ports import PortAllocator, PortsExhausted


@pytest.mark.parametrize(
    ("start", "end", "ports"),
    [(40000, 40006, [40000, 40002, 40004]), (40001, 40006, [40002, 40004]), (40000, 40001, [])],
)
def test_allocates_even_ports(start: int, end: int, ports: list[int]) -> None:
    allocator = PortAllocator(start, end)
    assert [allocator.allocate() for _ in ports] == ports
    with pytest.raises(PortsExhausted):
        allocator.allocate()


def test_release_makes_port_reusable_last() -> None:
    allocator = PortAllocator(40000, 40006)
    first = allocator.allocate()
    allocator.release(first)
    allocator.release(first)  # double release is harmless
    assert [allocator.allocate() for _ in range(3)] == [40002, 40004, 40000]
    assert allocator.in_use == 3
