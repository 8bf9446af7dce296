from __future__ import annotations

import argparse

from bridge.emulator.cli import add_parser, faults_from_args, run
from bridge.emulator.faults import Faults


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bridge")
    add_parser(parser.add_subparsers())
    return parser.parse_args(["emulate", *argv])


def test_emulate_subcommand_and_fault_flags() -> None:
    args = parse("--port", "9000", "--api-key", "k", "--handshake-status", "429", "--rtf", "2")
    assert args.func is run and args.port == 9000 and args.host == "127.0.0.1"
    assert faults_from_args(args) == Faults(handshake_status=429, rtf=2.0)
