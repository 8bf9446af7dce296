"""Campaign tests reuse the SIP tests' in-process bridge."""

from tests.sip.conftest import sip_bridge  # noqa: F401
