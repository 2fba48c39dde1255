"""Data-parallel training of one dataset's windows under torchrun (torch DDP):

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=K -m lem_pipeline.train_ddp \\
        --windows data/windows/equity --out data/models/equity-ddp [--preset demo] [--epochs E]

Every rank trains on its DistributedSampler shard; gradients are averaged by DDP. Rank 0 alone
writes the checkpoints, the final model and the MLflow run (``LEM_MLFLOW_URI`` / ``LEM_MLFLOW_DIR``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import mlflow
import torch
import torch.distributed as dist

from lem_model import LargeExecutionModel, LEMConfig
from lem_model.checkpoint import save_model
from lem_model.data import WindowDataset
from lem_model.train import seed_everything, train
from lem_pipeline.presets import get_preset
from lem_pipeline.tracking import default_tracking, git_commit


def parameter_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--preset", default=os.environ.get("LEM_PRESET", "demo"))
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--digest-file", type=Path, help="write this rank's final parameter digest here (tests)")
    args = ap.parse_args(argv)
    preset = get_preset(args.preset)
    tcfg = dataclasses.replace(preset.training, progress=False,
                               **{k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size)) if v})
    train_set, val_set = WindowDataset(args.windows, "train"), WindowDataset(args.windows, "val")
    w = train_set.meta["config"]
    mcfg = LEMConfig(n_features=len(train_set.meta["features"]), lookback=w["lookback"], n_ahead=w["n_ahead"],
                     **dataclasses.asdict(preset.model))
    seed_everything(tcfg.seed)
    model = LargeExecutionModel(mcfg)
    rank = int(os.environ.get("RANK", "0"))
    run = None
    if rank == 0:
        tracking = default_tracking()
        tracking.experiment_id("lem-ddp")
        mlflow.set_tracking_uri(tracking.tracking_uri)
        run = mlflow.start_run(experiment_id=tracking.experiment_id("lem-ddp"),
                               tags={"git.commit": git_commit(), "world_size": os.environ.get("WORLD_SIZE", "1")})
        mlflow.log_params({f"model.{k}": v for k, v in dataclasses.asdict(mcfg).items()}
                          | {f"train.{k}": v for k, v in dataclasses.asdict(tcfg).items()})
    result = train(model, train_set, val_set, tcfg, args.out / "checkpoints", resume=True,
                   on_epoch_end=(lambda e, m: mlflow.log_metrics(m, step=e)) if rank == 0 else None)
    if args.digest_file:
        args.digest_file.write_text(parameter_digest(model))
    if rank == 0:
        save_model(model.cpu(), args.out / "best")
        (args.out / "result.json").write_text(json.dumps({"best_epoch": result.best_epoch,
                                                          "best_val_loss": result.best_val_loss,
                                                          "run_id": run.info.run_id}))
        mlflow.end_run()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
