"""Forward and train-step throughput of the LEM, small config at batch 64 and paper config at
batch 256, on the CPU with 2 threads (or on CUDA with bf16 autocast when --device cuda).

A train step is what lem_model.train runs per batch (its make_train_step): forward, lem_loss,
backward, gradient clipping, the fused Adam step and the constraint projection. On CUDA,
``--cuda-graphs`` also times that step replayed as one CUDA graph.
With ``--reference-python`` (the python of a virtualenv holding ``lems`` 0.1.1, see
benchmarks/reference_lems.py) the reference is timed on the same inputs in the same run (in a
child process, with the same allocator settings and warm-up as ours) and the ratio printed;
without it, a CPU run prints our numbers and no ratio: a figure measured on another day is no
baseline. The benchmark refuses to time while another process is using the CPU.

    python benchmarks/model_throughput.py --reference-python ../lems-ref/bin/python [--steps 5] [--profile 15]

``--profile K`` also runs ``torch.profiler`` over a few of our train steps per config and prints
the K operators with the most self time and their share of the step: where the time goes, so a
speed-up starts from the profile (issue 10). ``--breakdown`` splits an eager step by part of the
model, and into a fixed part (per-operator overhead, whatever the batch) and a cost per sample.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict

import numpy as np
import torch

from lem_model import LargeExecutionModel
from lem_model.config import PAPER, SMALL, LEMConfig
from lem_model.cuda_graphs import GraphedTrainStep
from lem_model.devices import autocast, keep_freed_memory, keep_freed_memory_env
from lem_model.train import TrainConfig, adam, make_train_step, objective

# Steps run before the clock starts, on both sides (benchmarks/reference_lems.py takes it as an
# argument): allocator and lazy initialisation, Keras's tracing.
WARMUP = 2


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
    for _ in range(WARMUP):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def train_step_fn(cfg: LEMConfig, batch: int, device: str, mode: str = "eager"):
    """(model, forward, train_step) on a fixed random batch: what is timed and profiled. The
    step is lem_model.train's own (make_train_step, the reference objective); ``mode``
    "eager", or "compiled" (LargeExecutionModel.compile) and/or "graphed" (the step replayed as a
    CUDA graph, lem_model.cuda_graphs; CUDA only), e.g. "compiled+graphed"."""
    torch.manual_seed(0)
    dev = torch.device(device)
    model = LargeExecutionModel(cfg).to(dev)
    graphs = "graphed" in mode
    if "compiled" in mode:
        model.compile()
    opt = adam(model.parameters(), lr=1e-5, capturable_on=dev if graphs else None)
    x, rmin, rmax, vol, px = make_batch(cfg, batch, device)
    step = make_train_step(model, opt, TrainConfig(objective="reference", compile="compiled" in mode), dev)
    graphed = GraphedTrainStep(step, model, opt) if graphs else None

    @torch.no_grad()
    def forward():
        with autocast(dev):
            model(x, rmin, rmax)

    def train_step():
        if graphed is not None:
            graphed((x, vol, px))
            return
        opt.zero_grad(set_to_none=True)
        step(x, vol, px)

    return model, forward, train_step


def bench_ours(cfg: LEMConfig, batch: int, steps: int, device: str, mode: str = "eager") -> tuple[float, float]:
    model, forward, train_step = train_step_fn(cfg, batch, device, mode)
    model.eval()
    fwd = batch / timed(forward, steps, device)
    model.train()
    train = batch / timed(train_step, steps, device)
    return fwd, train


def profile_ours(cfg: LEMConfig, batch: int, steps: int, device: str, top: int, mode: str = "eager"
                 ) -> list[tuple[str, float, float]]:
    """The ``top`` operators by self time over ``steps`` train steps in ``mode`` (after one
    warm-up): (name, self milliseconds per step, share of all self time)."""
    from torch.profiler import ProfilerActivity, profile

    model, _, train_step = train_step_fn(cfg, batch, device, mode)
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


def breakdown_ours(cfg: LEMConfig, batch: int, steps: int, device: str) -> list[tuple[str, float]]:
    """Where an eager train step's time goes, milliseconds per step: the context network forward
    and backward, the execution head with the objective forward and backward (the context's
    output held fixed), gradient clipping with Adam and the projection, the whole step; then the
    whole step at half the batch, and from the two its fixed part (what a step costs whatever
    its batch: per-operator overhead) and its cost per sample."""
    model, _, train_step = train_step_fn(cfg, batch, device)
    model.train()
    dev = torch.device(device)
    x, rmin, rmax, vol, px = make_batch(cfg, batch, device)
    L, N = cfg.lookback, cfg.n_ahead
    rows = torch.arange(L - 1, L + N - 2, device=dev)  # the rows the allocators read (causal)

    def context() -> None:
        A, _, _ = model.context(x, rmin, rmax, rows)
        A.sum().backward()

    with torch.no_grad():
        fixed = model.context(x, rmin, rmax, rows)
    fixed[0].requires_grad_(True)

    def head() -> None:
        model.context = lambda *args, **kwargs: fixed  # an instance attribute: the class's is untouched
        try:
            objective(model(x, rmin, rmax), vol, px, TrainConfig(objective="reference")).backward()
        finally:
            del model.context

    opt = adam(model.parameters(), lr=1e-5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)

    def update() -> None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        model.project_constraints()

    ms = {name: 1e3 * timed(fn, steps, device) for name, fn in
          (("context forward+backward", context), ("head+objective forward+backward", head),
           ("clip+Adam+projection", update), (f"train step, batch {batch}", train_step))}
    half = batch // 2
    _, _, half_step = train_step_fn(cfg, half, device)
    ms[f"train step, batch {half}"] = 1e3 * timed(half_step, steps, device)
    per_sample = (ms[f"train step, batch {batch}"] - ms[f"train step, batch {half}"]) / (batch - half)
    ms["fixed part of a step"] = ms[f"train step, batch {batch}"] - per_sample * batch
    ms["per sample"] = per_sample
    return list(ms.items())


def bench_reference(cfg: LEMConfig, batch: int, steps: int, python: str, threads: int) -> tuple[float, float]:
    """Time lems 0.1.1 on the same inputs, in its own virtualenv (benchmarks/reference_lems.py)."""
    x, rmin, rmax, vol, px = (t.numpy() for t in make_batch(cfg, batch, "cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "inputs.npz")
        np.savez(path, x=x, min_rate=rmin, max_rate=rmax, volumes=vol, prices=px)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_lems.py")
        # Both sides keep freed memory (devices.keep_freed_memory): the ratio is the code's.
        done = subprocess.run([python, script, path, json.dumps(asdict(cfg)), str(steps), str(threads), str(WARMUP)],
                              capture_output=True, text=True, env={**os.environ, **keep_freed_memory_env()})
    if done.returncode:
        sys.exit(f"the reference benchmark failed under {python}:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return out["forward"], out["train"]


def busy_processes(window_s: float = 1.0, threshold: float = 0.2) -> list[str]:
    """Other processes that used more than ``threshold`` of a core over ``window_s`` seconds
    (read from /proc): two torch processes on a small machine slow each other 10-100x, so a
    timing taken beside one is void."""
    def cpu_ticks() -> dict[int, tuple[str, int]]:
        ticks = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks[int(pid)] = (name, int(fields[11]) + int(fields[12]))  # utime + stime
        return ticks

    if not os.path.isdir("/proc"):
        return []
    before = cpu_ticks()
    time.sleep(window_s)
    after = cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    return [f"{name} (pid {pid}, {100 * (t - before[pid][1]) / hz / window_s:.0f}% of a core)"
            for pid, (name, t) in after.items()
            if pid in before and (t - before[pid][1]) / hz / window_s > threshold]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--only", choices=["small", "paper"], default=None)
    ap.add_argument("--compile", action="store_true", help="also time with the model compiled (LargeExecutionModel.compile)")
    ap.add_argument("--cuda-graphs", action="store_true", help="also time the train step replayed as a CUDA graph (CUDA only)")
    ap.add_argument("--profile", type=int, default=0, metavar="K",
                    help="also print the K operators with the most self time in our train step, per config")
    ap.add_argument("--breakdown", action="store_true",
                    help="also print where an eager train step's time goes (context, head, update; fixed part and "
                         "per-sample cost), per config")
    ap.add_argument("--reference-python", default=None, metavar="PYTHON",
                    help="the python of a virtualenv with lems 0.1.1 (benchmarks/reference_lems.py): time the "
                         "reference on the same inputs in this run")
    ap.add_argument("--allow-busy", action="store_true",
                    help="report even when another process is using the CPU (the numbers are then void)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as lem_model.train does
    if args.device == "cpu":
        busy = busy_processes()
        if busy:
            message = "another process is using the CPU; timings beside it are void: " + "; ".join(busy)
            if not args.allow_busy:
                sys.exit(f"refusing to time: {message} (--allow-busy to time anyway)")
            print(f"WARNING: {message}")
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads")
    print(f"{'config':8} {'mode':16} {'batch':>5} {'forward/s':>10} {'train/s':>9} {'ref train/s':>26} {'ratio':>6}")
    for name, cfg, batch in (("small", SMALL, 64), ("paper", PAPER, 256)):
        if args.only and name != args.only:
            continue
        ref_train, source = None, "-"
        if args.device == "cuda":
            source = "our eager"  # no GPU reference: the ratio is against our eager, this run
        elif args.reference_python:
            ref_fwd, ref_train = bench_reference(cfg, batch, args.steps, args.reference_python, args.threads)
            source = "measured now"
            print(f"{name:8} {'lems':16} {batch:5d} {ref_fwd:10.1f} {ref_train:9.1f}")
        modes = ["eager"] + ["compiled"] * args.compile
        if args.cuda_graphs and args.device == "cuda":
            modes += ["graphed"] + ["compiled+graphed"] * args.compile
        for mode in modes:
            fwd, train = bench_ours(cfg, batch, args.steps, args.device, mode)
            if args.device == "cuda":
                ref_train = ref_train or train  # the first mode, eager
            ratio = f"{ref_train:9.1f} ({source:>14}) {train / ref_train:5.2f}x" if ref_train else f"{'-':>26} {'-':>6}"
            print(f"{name:8} {mode:16} {batch:5d} {fwd:10.1f} {train:9.1f} {ratio}")
        if args.breakdown:
            print(f"  {name}: an eager train step's time, milliseconds per step")
            for part, ms in breakdown_ours(cfg, batch, args.steps, args.device):
                print(f"    {ms:9.2f}  {part}")
        for mode in modes if args.profile else ():
            print(f"  {name}: top {args.profile} operators by self time per train step ({mode}, batch {batch})")
            for op, ms, share in profile_ours(cfg, batch, min(args.steps, 5), args.device, args.profile, mode):
                print(f"    {share:6.1%} {ms:9.2f} ms  {op}")


if __name__ == "__main__":
    main()
