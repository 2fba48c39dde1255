"""``lem run``: the README's main command. Materialises the preset's whole graph (ingest,
features, training, evaluation) on the local instance, job by job, stopping at the first job
with a failed run (what follows would read incomplete inputs)."""

from __future__ import annotations

import argparse
import sys

from lem_pipeline.commands.local import add_preset_argument, open_local
from lem_pipeline.local_runs import run_partitions


def main_jobs(preset) -> list[str]:
    jobs = [j for j, has in (("crypto_ingest_job", preset.streams), ("equity_ingest_job", preset.tickers)) if has]
    jobs.append("features_job")
    jobs += [j for j, has in (("crypto_training_job", preset.streams), ("equity_training_job", preset.tickers)) if has]
    return jobs


def run_jobs(command: str, jobs: list[str], args: argparse.Namespace) -> int:
    local = open_local(args.preset)
    print(f"lem {command}: preset {local.preset.name!r} ({local.preset.description}); DAGSTER_HOME={local.home}",
          flush=True)
    for job in jobs:
        summary = run_partitions(local.defs, job, local.instance, progress=not args.quiet)
        print(f"{job}: {len(summary.succeeded)} runs succeeded, {len(summary.failed)} failed", flush=True)
        for key, message in list(summary.failed.items())[:10]:
            print(f"  {key}: {message}", file=sys.stderr)
        if summary.failed:
            print(f"lem {command}: {len(summary.failed)} runs failed. If a source cannot be reached, point "
                  "LEM_BINANCE_URL / LEM_YAHOO_DIR at a local mirror (see README).", file=sys.stderr)
            return 1
    print(f"lem {command}: done. Look at the runs with `dagster dev -w workspace.yaml`.")
    return 0


def run(args: argparse.Namespace) -> int:
    from lem_pipeline.presets import get_preset

    return run_jobs("run", main_jobs(get_preset(args.preset)), args)


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="materialise the preset's asset graph on the local Dagster instance")
    add_preset_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
