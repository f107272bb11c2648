"""The `bardterm` command: the TUI when no subcommand is given, else generate, decoders, plugins, train, eval.

Each subcommand lives in the module that owns its work and exposes `add_parser(subparsers)`, which sets
`func` on its parser. Heavy imports (torch, transformers, textual) happen inside those functions so that
`bardterm --help` and the TUI start fast.
"""

from __future__ import annotations

import argparse
import os
import sys

from bardterm import __version__
from bardterm.errors import BardtermError


def build_parser() -> argparse.ArgumentParser:
    from bardterm import config, generate_cli, hub_cli, tui
    from bardterm.training import cli as training_cli

    parser = argparse.ArgumentParser(
        prog="bardterm",
        description="A terminal home for small language models. With no subcommand, opens the chat and composer.",
    )
    parser.add_argument("--version", action="version", version=f"bardterm {__version__}")
    tui.add_arguments(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    generate_cli.add_parsers(subparsers)
    hub_cli.add_parsers(subparsers)
    config.add_parsers(subparsers)
    training_cli.add_parsers(subparsers)
    parser.set_defaults(func=tui.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    first_process = not int(os.environ.get("RANK") or 0)  # several training processes: rank 0 speaks for all
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "decoder_flags", False):
            parser.parse_args(argv)  # reports the unknown argument the usual argparse way, then exits
        args.extra = extra
        return args.func(args) or 0
    except BardtermError as error:
        if first_process:
            print(f"bardterm: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if first_process:
            print("bardterm: interrupted", file=sys.stderr)
        return 130
