"""Evaluating groups of test windows apart (one per frequency in the pipeline) and combining them:
each group's mean execution curve is its own, and the combined arrays put every window back."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch
from torch.utils.data import Subset

from lem_model import LargeExecutionModel, LEMConfig
from lem_model.config import SMALL_SIZE
from lem_model.evaluate import EvalArrays, evaluate
from lem_model.window_dataset import WindowDataset
from lem_pipeline.windows import read_index


def test_groups_have_their_own_mean_allocation_and_combine_back(small_equity_windows):
    test = WindowDataset(small_equity_windows, "test")
    symbols = read_index(small_equity_windows, "test")["symbol"].to_numpy()
    groups = {s: np.nonzero(symbols == s)[0] for s in ("AAPL", "KO")}
    assert all(len(rows) > 10 for rows in groups.values())
    torch.manual_seed(0)
    meta = test.meta
    model = LargeExecutionModel(LEMConfig.for_windows(meta, SMALL_SIZE)).eval()
    with torch.no_grad():  # perturb the symmetric start so schedules differ by window
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.project_constraints()
    whole = evaluate(model, test, min_rate=1 / 144)
    parts = {s: evaluate(model, Subset(test, rows.tolist()), min_rate=1 / 144) for s, rows in groups.items()}
    x, _, _ = test.gather(np.arange(len(test)))
    with torch.no_grad():
        alloc = model(torch.from_numpy(x), torch.full((len(test),), 1 / 144), torch.ones(len(test))).double().numpy()
    for s, rows in groups.items():
        np.testing.assert_allclose(parts[s].mean_alloc, alloc[rows].mean(axis=0), atol=1e-6)
    assert not np.allclose(parts["AAPL"].mean_alloc, parts["KO"].mean_alloc, atol=1e-6)
    combined = EvalArrays.combine([(groups[s], parts[s]) for s in groups])
    for name in ("model_bps", "rule_bps", "twap_volume_bps", "twap_notional_bps"):
        np.testing.assert_allclose(getattr(combined, name), getattr(whole, name), rtol=1e-5, atol=1e-3)
    # The parts ran in other batches than the whole, and float32 kernels may round by batch (up
    # to 1.5e-8 on one CPU, 0 on another): equal to that rounding, far below the groups' curves'
    # own difference, which a combination that lost or repeated a group would show.
    np.testing.assert_allclose(combined.mean_alloc, whole.mean_alloc, rtol=0, atol=1e-7)
    assert combined.all_finite and combined.max_sum_error < 1e-5
    assert pl.Series(symbols).n_unique() == 2
