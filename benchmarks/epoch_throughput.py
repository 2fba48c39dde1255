"""One training epoch of a windows directory, through lem_model.train itself (gathering
DataLoader, train step, validation, training-state save): samples/s, and what one epoch of the
paper's 959,000 crypto windows would take at that rate.

The train-step benchmark (model_throughput.py) times one batch held on the device against a
baseline in the same run; this one is an absolute time: what a real epoch pays around the step
(CUDA-graph capture, validation and the state save included; the CUDA context is created
before the clock starts). Run it where the training would run (a GPU), on the
paper_dow windows built by the pipeline (``lem run --preset paper_dow`` materialises them;
lem_pipeline.windows.build_windows writes the same directory):

    python benchmarks/epoch_throughput.py --windows DIR [--cuda-graphs] [--compile] [--size paper]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.utils.data import Subset

from lem_model import LargeExecutionModel, LEMConfig
from lem_model.config import PAPER_SIZE, SMALL_SIZE
from lem_model.devices import resolve_device
from lem_model.train import TrainConfig, train
from lem_model.window_dataset import WindowDataset

PAPER_CRYPTO_WINDOWS = 959_000  # the paper's crypto training set (section 4.1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", required=True, help="a windows directory (lem_pipeline.windows layout)")
    ap.add_argument("--size", choices=["paper", "small"], default="paper")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--samples", type=int, default=None, help="train windows in the epoch (default: all)")
    ap.add_argument("--val-batches", type=int, default=4, help="validation batches after the epoch")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cuda-graphs", action="store_true")
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()

    size = PAPER_SIZE if args.size == "paper" else SMALL_SIZE
    train_set = WindowDataset(args.windows, "train")
    model = LargeExecutionModel(LEMConfig.for_windows(train_set.meta, size))
    val_set = WindowDataset(args.windows, "val")
    val_set = Subset(val_set, range(min(len(val_set), args.val_batches * args.batch_size)))
    samples = min(args.samples or len(train_set), len(train_set))
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, samples_per_epoch=samples, device=args.device,
                      cuda_graphs=args.cuda_graphs, compile=args.compile, progress=False)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.empty(1, device=device)  # the context: once per process, not the epoch's cost
        torch.cuda.synchronize(device)
    with tempfile.TemporaryDirectory() as state_dir:
        t0 = time.perf_counter()
        result = train(model, train_set, val_set, cfg, state_dir, resume=False)
        seconds = time.perf_counter() - t0
    rate = samples / seconds
    print(f"{args.windows}: {samples:,} train windows ({len(train_set):,} in the split), {args.size} model, "
          f"batch {args.batch_size}, device {result.device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if result.device.startswith('cuda') else ''}, "
          f"cuda_graphs={args.cuda_graphs}, compiled={args.compile}")
    print(f"  one epoch, validation and state save included: {seconds:.1f} s, {rate:,.0f} train samples/s, "
          f"loss {result.history[-1]['loss']:.4f}, val_loss {result.history[-1]['val_loss']:.4f}")
    print(f"  projected epoch of the paper's {PAPER_CRYPTO_WINDOWS:,} crypto windows: "
          f"{PAPER_CRYPTO_WINDOWS / rate / 60:.1f} min")


if __name__ == "__main__":
    main()
