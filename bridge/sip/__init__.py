"""SIP signalling (RFC 3261) for the bridge: sans-I/O protocol core plus thin asyncio adapters.

Start from :class:`bridge.sip.endpoint.SipEndpoint` and the events in :mod:`bridge.sip.events`.
"""
