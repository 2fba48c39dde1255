"""``lem``: the command line for the README's main command and for the desk. Each subcommand
lives in lem_pipeline.commands.

A user's mistake (lem_pipeline.errors.UserError) ends the command with one line on stderr,
``lem <command>: <what is wrong>``, and exit status 2; ``lem --debug ...`` shows its traceback
instead. Any other exception is a bug and raises as usual."""

from __future__ import annotations

import argparse
import sys

from lem_pipeline.commands import evaluate, lookahead, results, run, schedule
from lem_pipeline.errors import UserError

USER_ERROR_STATUS = 2  # as argparse's own usage errors


class _Parser(argparse.ArgumentParser):
    """argparse's usage errors in the same one-line form (its subparsers are of this class too)."""

    def error(self, message: str):
        self.exit(USER_ERROR_STATUS, f"{self.prog}: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="lem", description="Large Execution Models: pipeline and desk tools")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (run, lookahead, results, schedule, evaluate):
        command.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        if args.debug:
            raise
        print(f"lem {args.command}: {' '.join(str(e).split())}", file=sys.stderr)
        return USER_ERROR_STATUS


if __name__ == "__main__":
    sys.exit(main())
