"""Data-parallel training of one dataset's windows under torchrun (torch DDP):

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=K -m lem_pipeline.train_ddp \\
        --windows data/windows/equity --out data/models/equity-ddp [--preset demo] [--epochs E]

Every rank trains on its DistributedSampler shard; gradients are averaged by DDP. Rank 0 alone
writes the training state, the final model and the MLflow run (``LEM_MLFLOW_URI`` /
``LEM_MLFLOW_DIR``). The model and the run are built exactly as the training assets build them
(lem_pipeline.model_training). The training state is kept under ``--out`` by the training's key
(model, training config, windows): a run killed and started again resumes from its last saved
epoch in the same MLflow run, and a run of another config or other windows into the same
``--out`` trains afresh. The state is removed once the model is saved.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
from pathlib import Path

import mlflow
import torch.distributed as dist

from lem_model.fileio import atomic_write_text
from lem_model.saved_model import weights_digest
from lem_model.train import train
from lem_pipeline import settings
from lem_pipeline.model_training import (RUN_FILE, build_model, log_missing_epochs, resumable_run,
                                         tracked_training, training_key, windows_splits)
from lem_pipeline.presets import get_preset
from lem_pipeline.tracking import MLflowTracking
from lem_pipeline.trained_model import save_trained

EXPERIMENT = "lem-ddp"
STATE_DIR = "training_state"  # under --out, one folder per training key
RESULT_FILE = "result.json"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--preset", default=os.environ.get(settings.PRESET, settings.DEFAULT_PRESET))
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--digest-file", type=Path, help="write this rank's final parameter digest here (tests)")
    args = ap.parse_args(argv)
    preset = get_preset(args.preset)
    tcfg = dataclasses.replace(preset.training, progress=False,
                               **{k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size)) if v})
    train_set, val_set = windows_splits(args.windows)
    model = build_model(train_set.meta, preset.model, tcfg.seed, preset.allocator)
    state_dir = args.out / STATE_DIR / training_key(model.cfg, tcfg, args.windows)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank:
        tracking = MLflowTracking.from_environment()
        tracking.fail_dead_runs([EXPERIMENT])
        resume_id = resumable_run(state_dir, tracking)
        tracked = tracked_training(tracking, EXPERIMENT, model, tcfg, train_set.meta,
                                   tags={"world_size": os.environ.get("WORLD_SIZE", "1")},
                                   params={"preset": preset.name}, resume_run_id=resume_id)
    else:
        tracked = contextlib.nullcontext()
    with tracked as run:
        if main_rank:
            atomic_write_text(state_dir / RUN_FILE, run.info.run_id)
        result = train(model, train_set, val_set, tcfg, state_dir, resume=True,
                       on_epoch_end=(lambda e, m: mlflow.log_metrics(m, step=e)) if main_rank else None)
        if args.digest_file:
            args.digest_file.write_text(weights_digest(model))
        if main_rank:
            if resume_id is not None:  # also a kill after the last epoch was saved: nothing left to train
                log_missing_epochs(run.info.run_id, result.history)
            save_trained(model.cpu(), args.windows, args.out / "model", run.info.run_id)
            atomic_write_text(args.out / RESULT_FILE, json.dumps({"best_epoch": result.best_epoch,
                                                                  "best_val_loss": result.best_val_loss,
                                                                  "run_id": run.info.run_id}))
            shutil.rmtree(state_dir, ignore_errors=True)  # the model is saved: its resumable state is done with
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
