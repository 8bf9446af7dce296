"""The ``bridge`` command: serve calls, and the tools around it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from bridge.config import Config, ConfigError, load_config

DEFAULT_CONFIG = Path("config/default.yaml")


def _serve_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("serve", help="run the bridge (HTTP/WebRTC)")
    parser.add_argument("--config", type=Path, default=None, help="YAML config file")
    parser.add_argument("--http-host", help="HTTP listen address (overrides http.host)")
    parser.add_argument("--http-port", type=int, help="HTTP port (overrides http.port)")
    parser.add_argument("--records-dir", help="where call records go (overrides records.dir)")
    parser.add_argument(
        "--ice-host",
        action="append",
        default=None,
        help="address to gather ICE candidates on; repeat for several (overrides webrtc.ice_hosts)",
    )
    parser.set_defaults(func=_serve)


def apply_overrides(config: Config, args: argparse.Namespace) -> Config:
    if args.http_host is not None:
        config.http.host = args.http_host
    if args.http_port is not None:
        config.http.port = args.http_port
    if args.records_dir is not None:
        config.records.dir = args.records_dir
    if args.ice_host:
        config.webrtc.ice_hosts = list(args.ice_host)
    return config


def _load(args: argparse.Namespace) -> Config:
    path = args.config
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    return load_config(path)


def _serve(args: argparse.Namespace) -> int:
    from bridge.dialog.dialplan import DialplanError
    from bridge.server import serve

    config = apply_overrides(_load(args), args)
    try:
        asyncio.run(serve(config))
    except DialplanError as exc:
        logging.error("%s", exc)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridge", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _serve_parser(subparsers)
    try:
        from bridge.emulator.cli import add_parser as add_emulator
    except ImportError:
        pass
    else:
        add_emulator(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        logging.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
