"""``lem``: the command line for the README's main command and for the desk. Each subcommand
lives in lem_pipeline.commands."""

from __future__ import annotations

import argparse
import sys

from lem_pipeline.commands import lookahead, results, run, schedule


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lem", description="Large Execution Models: pipeline and desk tools")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (run, lookahead, results, schedule):
        command.add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
