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
    parser.add_argument("--sip-host", help="SIP listen/advertised address (overrides sip.host)")
    parser.add_argument("--sip-port", type=int, help="SIP port, UDP and TCP (overrides sip.port)")
    parser.add_argument("--rtp-ports", help="RTP port range LOW-HIGH (overrides sip.rtp_ports)")
    parser.add_argument(
        "--media-workers",
        type=int,
        help="processes that run SIP calls, 0 for this one (overrides sip.media_workers)",
    )
    parser.set_defaults(func=_serve)


def _dial_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("dial", help="place one outbound SIP call through a bridge")
    parser.add_argument("to", help="sip:user@host[:port] (must match sip.outbound_targets)")
    parser.add_argument("--dialplan", help="dialplan the call runs (default: the bridge's)")
    parser.add_argument("--from", dest="from_user", help="From user of the call")
    parser.add_argument(
        "--var",
        dest="variables",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a dialplan variable for the call (repeatable)",
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML config file")
    parser.add_argument("--server", help="bridge HTTP base URL (default: from http.host/port)")
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to follow the call")
    parser.set_defaults(func=_dial)


def _campaign_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from bridge.campaign.client import add_arguments

    parser = subparsers.add_parser("campaign", help="create and steer a running bridge's campaigns")
    add_arguments(parser)
    parser.set_defaults(func=_campaign)


def _check_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("check", help="validate every dialplan in a folder")
    parser.add_argument("directory", nargs="?", type=Path, default=None, help="default: config's")
    parser.add_argument("--config", type=Path, default=None, help="YAML config file")
    parser.set_defaults(func=_check)


def apply_overrides(config: Config, args: argparse.Namespace) -> Config:
    if args.http_host is not None:
        config.http.host = args.http_host
    if args.http_port is not None:
        config.http.port = args.http_port
    if args.records_dir is not None:
        config.records.dir = args.records_dir
    if args.ice_host:
        config.webrtc.ice_hosts = list(args.ice_host)
    if args.sip_host is not None:
        config.sip.host = args.sip_host
    if args.sip_port is not None:
        config.sip.port = args.sip_port
    if args.rtp_ports is not None:
        config.sip.rtp_ports = args.rtp_ports
    if args.media_workers is not None:
        config.sip.media_workers = args.media_workers
    if args.rtp_ports is not None or args.media_workers is not None:
        problem = config.sip.validate()
        if problem:
            raise ConfigError(f"--{problem.split(':')[0].replace('_', '-')}: {problem}")
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


def _check(args: argparse.Namespace) -> int:
    """Print ``file:line: message`` for every problem; exit 1 if there is any."""
    from bridge.dialog.library import check_directory

    directory = args.directory or Path(_load(args).dialog.dialplans_dir)
    problems = check_directory(directory)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{directory}: all dialplans valid", file=sys.stderr)
    return 1 if problems else 0


def _dial(args: argparse.Namespace) -> int:
    from bridge.sip.dial import dial

    bad = [v for v in args.variables if "=" not in v or not v.partition("=")[0]]
    if bad:
        print(f"bridge dial: --var {bad[0]!r}: expected NAME=VALUE", file=sys.stderr)
        return 2
    server = _server(args)
    variables = dict(v.partition("=")[::2] for v in args.variables)
    return dial(
        server,
        args.to,
        dialplan=args.dialplan,
        from_user=args.from_user,
        variables=variables,
        wait=args.wait,
    )


def _server(args: argparse.Namespace) -> str:
    """``--server``, or the bridge the config file describes."""
    if args.server is not None:
        return str(args.server)
    http = _load(args).http
    return f"http://{http.host}:{http.port}"


def _campaign(args: argparse.Namespace) -> int:
    from bridge.campaign.client import run

    return run(_server(args), args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridge", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _serve_parser(subparsers)
    _dial_parser(subparsers)
    _campaign_parser(subparsers)
    _check_parser(subparsers)
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
