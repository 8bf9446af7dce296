"""``bridge emulate``: run the local DashScope emulator on the embedded engines."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

from bridge.emulator.faults import Faults
from bridge.emulator.server import Emulator

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "emulate",
        help="serve DashScope's speech WebSocket protocols locally (offline tests)",
        description="Local DashScope emulator on /api-ws/v1/inference and /api-ws/v1/realtime, "
        "backed by the embedded Whisper/Piper engines. Faults can also be changed at run time "
        "with POST /emulator/faults (JSON, same Bearer key).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", required=True, help="key clients must send as Bearer")
    parser.add_argument(
        "--omni-reply", help="what Qwen-Omni answers every turn (default: echoes the caller)"
    )
    faults = parser.add_argument_group("faults")
    faults.add_argument("--first-packet-delay", type=float, default=0.0, metavar="SECONDS")
    faults.add_argument("--fail-after-frames", type=int, metavar="N")
    faults.add_argument("--drop-after-frames", type=int, metavar="N")
    faults.add_argument("--handshake-status", type=int, choices=(401, 403, 429, 503))
    faults.add_argument("--handshake-failures", type=int, metavar="N")
    faults.add_argument("--rtf", type=float, help="pace synthesized audio (>1 = slower)")
    parser.set_defaults(func=run)


def faults_from_args(args: argparse.Namespace) -> Faults:
    return Faults(
        first_packet_delay=args.first_packet_delay,
        fail_after_frames=args.fail_after_frames,
        drop_after_frames=args.drop_after_frames,
        handshake_status=args.handshake_status,
        handshake_failures=args.handshake_failures,
        rtf=args.rtf,
    )


def run(args: argparse.Namespace) -> int:
    async def serve() -> None:
        emulator = Emulator(
            api_key=args.api_key,
            host=args.host,
            port=args.port,
            faults=faults_from_args(args),
            omni_reply=args.omni_reply,
        )
        async with emulator:
            log.info("DashScope emulator on %s", emulator.base_url)
            print(f"DashScope emulator listening on {emulator.base_url}", flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0
