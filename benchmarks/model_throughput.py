"""Forward and train-step throughput of the LEM, small config at batch 64 and paper config at
batch 256, on the CPU with 2 threads (or on CUDA with bf16 autocast when --device cuda).

A train step is forward, lem_loss, backward and an Adam step (plus the constraint projection).
When the reference ``lems`` 0.1.1 is importable (``pip install lems==0.1.1 keras tkan`` in a
separate environment, Keras on the torch backend), it is timed on the same inputs in the same
run and the ratio printed; otherwise the numbers the issue measured for it on this machine
(172 and 25 train samples/s) are shown as the baseline.

    python benchmarks/model_throughput.py [--device cpu|cuda] [--steps 5] [--profile 15]

``--profile K`` also runs ``torch.profiler`` over a few of our train steps per config and prints
the K operators with the most self time and their share of the step: where the time goes, so a
speed-up starts from the profile (issue 10).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import torch

from lem_model import LargeExecutionModel
from lem_model.config import PAPER, SMALL, LEMConfig
from lem_model.loss import lem_loss

REFERENCE_TRAIN_SAMPLES_PER_S = {"small": 172.0, "paper": 25.0}  # lems 0.1.1, Keras 3.15 on torch, 2 threads


def make_batch(cfg: LEMConfig, batch: int, device: str):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.seq_len, cfg.n_features, generator=g)
    x[..., -2] = 1 + 0.01 * torch.randn(batch, cfg.seq_len, generator=g).cumsum(1)
    x[..., -1] = torch.rand(batch, cfg.seq_len, generator=g)
    vol = torch.rand(batch, cfg.n_ahead, generator=g)
    px = 1 + 0.01 * torch.randn(batch, cfg.n_ahead, generator=g).cumsum(1)
    rmin = torch.full((batch,), 1.0 / cfg.n_ahead**2)
    rmax = torch.ones(batch)
    return [t.to(device) for t in (x, rmin, rmax, vol, px)]


def timed(fn, steps: int, device: str) -> float:
    fn()  # warm-up (allocator, lazy init)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def train_step_fn(cfg: LEMConfig, batch: int, device: str, compiled: bool = False):
    """(model, forward, train_step) on a fixed random batch: what is timed and profiled."""
    torch.manual_seed(0)
    model = LargeExecutionModel(cfg).to(device)
    if compiled:
        model.compile_recurrence()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    x, rmin, rmax, vol, px = make_batch(cfg, batch, device)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext)

    @torch.no_grad()
    def forward():
        with amp():
            model(x, rmin, rmax)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with amp():
            alloc = model(x, rmin, rmax)
        loss = lem_loss(alloc.float(), vol, px)
        loss.backward()
        opt.step()
        model.project_constraints()

    return model, forward, train_step


def bench_ours(cfg: LEMConfig, batch: int, steps: int, device: str, compiled: bool = False) -> tuple[float, float]:
    model, forward, train_step = train_step_fn(cfg, batch, device, compiled)
    model.eval()
    fwd = batch / timed(forward, steps, device)
    model.train()
    train = batch / timed(train_step, steps, device)
    return fwd, train


def profile_ours(cfg: LEMConfig, batch: int, steps: int, device: str, top: int) -> list[tuple[str, float, float]]:
    """The ``top`` operators by self time over ``steps`` train steps (after one warm-up):
    (name, self milliseconds per step, share of all self time)."""
    from torch.profiler import ProfilerActivity, profile

    model, _, train_step = train_step_fn(cfg, batch, device)
    model.train()
    train_step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            train_step()
    events = prof.key_averages()
    attr = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, attr) for e in events) or 1.0
    ranked = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:top]
    return [(e.key, getattr(e, attr) / 1e3 / steps, getattr(e, attr) / total) for e in ranked]


def bench_reference(cfg: LEMConfig, batch: int, steps: int) -> tuple[float, float] | None:
    """Time lems 0.1.1 (Keras) on the same shapes, if it is installed."""
    try:
        os.environ.setdefault("KERAS_BACKEND", "torch")
        import keras
        import numpy as np
        from lems.data_formater import add_config_to_y
        from lems.loss import lem_loss as ref_loss
        from lems.models import LargeExecutionModel as RefLEM
    except ImportError:
        return None
    x, rmin, rmax, vol, px = (t.numpy() for t in make_batch(cfg, batch, "cpu"))
    model = RefLEM(lookback=cfg.lookback, n_ahead=cfg.n_ahead, hidden_size=cfg.hidden_size,
                   hidden_rnn_layer=cfg.rnn_layers, num_heads=cfg.num_heads, num_embedding=cfg.num_embedding,
                   fused_mlp_hidden_dim=cfg.fused_hidden)
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss=ref_loss)
    inputs = [x, rmin[:, None], rmax[:, None]]
    y = add_config_to_y(np.stack([vol, px], -1))
    model.fit(inputs, y, batch_size=batch, epochs=1, verbose=0)
    t0 = time.perf_counter()
    model.fit([np.concatenate([a] * steps) for a in inputs], np.concatenate([y] * steps), batch_size=batch, epochs=1,
              verbose=0, shuffle=False)
    train = batch * steps / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    model.predict(inputs, batch_size=batch, verbose=0)
    fwd = batch / (time.perf_counter() - t0)
    return fwd, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--only", choices=["small", "paper"], default=None)
    ap.add_argument("--compile", action="store_true", help="also time with the TKAN step compiled (torch.compile)")
    ap.add_argument("--profile", type=int, default=0, metavar="K",
                    help="also print the K operators with the most self time in our train step, per config")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads")
    print(f"{'config':8} {'mode':8} {'batch':>5} {'forward/s':>10} {'train/s':>9} {'ref train/s':>15} {'ratio':>6}")
    for name, cfg, batch in (("small", SMALL, 64), ("paper", PAPER, 256)):
        if args.only and name != args.only:
            continue
        ref = bench_reference(cfg, batch, args.steps) if args.device == "cpu" else None
        ref_train = ref[1] if ref else REFERENCE_TRAIN_SAMPLES_PER_S[name]
        source = "measured now" if ref else "issue's figure"
        for mode in ("eager", "compiled") if args.compile else ("eager",):
            fwd, train = bench_ours(cfg, batch, args.steps, args.device, compiled=mode == "compiled")
            print(f"{name:8} {mode:8} {batch:5d} {fwd:10.1f} {train:9.1f} {ref_train:6.1f} ({source}) "
                  f"{train / ref_train:5.2f}x")
        if args.profile:
            print(f"  {name}: top {args.profile} operators by self time per train step (eager, batch {batch})")
            for op, ms, share in profile_ours(cfg, batch, args.steps, args.device, args.profile):
                print(f"    {share:6.1%} {ms:9.2f} ms  {op}")


if __name__ == "__main__":
    main()
