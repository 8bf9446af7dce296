"""A local, protocol-faithful DashScope speech emulator backed by the embedded engines."""

from bridge.emulator.faults import Faults
from bridge.emulator.server import Emulator
from bridge.emulator.task_server import Timers

__all__ = ["Emulator", "Faults", "Timers"]
