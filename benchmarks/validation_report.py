"""The per-cell lines the validation benchmarks print, from lem_model alone (no pipeline
dependencies), so they run on a GPU host whose python holds torch and numpy only."""

from __future__ import annotations

import numpy as np

from lem_model.evaluate import SIDES, EvalArrays
from lem_model.paired import advantage
from lem_model.vocabulary import OrderKind, Target


def print_advantages(ev: EvalArrays, baseline_bps: np.ndarray, label: str) -> None:
    """Per side, one line: the mean advantage in bps over ``baseline_bps`` (positive: the LEM is
    better) at each minimum period, VWAP orders in volume (the vs_rule table's cells)."""
    for side_name, kind, _ in SIDES:
        side = OrderKind(kind).side
        adv = [advantage(ev.model_bps[:, m, kind, Target.VOLUME], baseline_bps[:, m, kind, Target.VOLUME], side).mean()
               for m in range(ev.n_ahead)]
        print(f"  {side_name:4} vs {label:11} " + " ".join(f"{a:6.2f}" for a in adv))
