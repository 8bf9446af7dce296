"""Telephony and real-time media bridge for voice bots."""

__version__ = "0.1.0"
