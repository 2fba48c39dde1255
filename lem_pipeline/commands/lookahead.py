"""``lem lookahead``: after ``lem run``, materialise ``equity_lookahead_evaluation`` (the
reference's one-bar look-ahead, trained and evaluated on the same windows), for ``lem results``."""

from __future__ import annotations

import argparse

from lem_pipeline.commands.local import add_preset_argument
from lem_pipeline.commands.run import run_jobs
from lem_pipeline.errors import UserError


def lookahead(args: argparse.Namespace) -> int:
    from lem_pipeline.presets import get_preset

    if not get_preset(args.preset).tickers:
        raise UserError(f"preset {args.preset!r} has no equity tickers; the look-ahead measurement is made on "
                        "the equity model")
    return run_jobs("lookahead", ["lookahead_job"], args)


def add_parser(sub) -> None:
    p = sub.add_parser("lookahead", help="after `lem run`: train and evaluate the equity LEM with the reference's "
                                         "look-ahead, to measure what it is worth")
    add_preset_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=lookahead)
