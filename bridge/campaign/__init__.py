"""Outbound campaigns: contact lists dialled through the SIP front door under rules (concurrency,
calls per second, calling hours, retries, do-not-call), with durable per-attempt state."""
