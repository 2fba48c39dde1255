"""``lem``: the command line for the desk and for the README's main command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _cmd_run(args: argparse.Namespace) -> int:
    os.environ["LEM_PRESET"] = args.preset
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path("dagster_home").resolve())))
    home.mkdir(parents=True, exist_ok=True)
    import dagster as dg

    from lem_pipeline.definitions import build_definitions
    from lem_pipeline.presets import get_preset
    from lem_pipeline.runner import run_partitions

    preset = get_preset(args.preset)
    defs = build_definitions(preset)
    instance = dg.DagsterInstance.get()
    jobs = [j for j, has in (("crypto_ingest_job", preset.streams), ("equity_ingest_job", preset.tickers)) if has]
    jobs.append("features_job")
    jobs += [j for j, has in (("crypto_training_job", preset.streams), ("equity_training_job", preset.tickers)) if has]
    print(f"lem run: preset {preset.name!r} ({preset.description}); DAGSTER_HOME={home}", flush=True)
    failed = 0
    for job in jobs:
        summary = run_partitions(defs, job, instance, progress=not args.quiet)
        print(f"{job}: {len(summary.succeeded)} runs succeeded, {len(summary.failed)} failed", flush=True)
        for key, message in list(summary.failed.items())[:10]:
            print(f"  {key}: {message}", file=sys.stderr)
        failed += len(summary.failed)
        if summary.failed:
            break  # downstream jobs would read incomplete inputs
    if failed:
        print(f"lem run: {failed} runs failed. If a source cannot be reached, point LEM_BINANCE_URL / "
              "LEM_YAHOO_DIR at a local mirror (see README).", file=sys.stderr)
        return 1
    print("lem run: done. Look at the runs with `dagster dev -w workspace.yaml`.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lem", description="Large Execution Models: pipeline and desk tools")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialise the preset's asset graph on the local Dagster instance")
    run.add_argument("--preset", default=os.environ.get("LEM_PRESET", "demo"))
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=_cmd_run)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
