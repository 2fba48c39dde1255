"""What the tables' metric rewards (README, "What the table metric rewards"): each order is scored
against the VWAP of the bars it executed on, a benchmark that moves with the order's own duration.
On a random walk no causal schedule has an edge, yet the one-line early-stop rule beats TWAP by
tens of bps on that metric, and by nothing against the arrival price once the two sides are
averaged (summary.json's ``vs_rule_arrival`` / ``vs_twap_arrival``, side BOTH)."""

from __future__ import annotations

import numpy as np
import torch

from lem_model.baselines import early_stop_rule
from lem_model.metrics import percent_difference
from lem_model.paired import advantage, paired
from lem_model.vocabulary import OrderKind, Side, Target


def test_on_a_random_walk_the_rule_beats_twap_on_the_tables_metric_and_not_against_arrival():
    B, N, sigma = 6000, 12, 0.015
    g = torch.Generator().manual_seed(0)
    log_price = torch.cumsum(sigma * torch.randn(B, N + 1, generator=g, dtype=torch.float64), 1)
    prices, arrival = torch.exp(log_price[:, 1:]), torch.exp(log_price[:, 0])
    volumes = torch.ones(B, N, dtype=torch.float64)
    alloc = early_stop_rule(prices, N + 1)  # head N: plain TWAP
    table = (percent_difference(alloc, volumes, prices, soft_alpha=None, bench_eps_numerator=False) * 100)[..., Target.VOLUME]
    a = alloc[..., Target.VOLUME]
    vs_arrival = ((a * prices.view(B, N, 1, 1)).sum(1) / arrival.view(B, 1, 1) - 1) * 1e4
    dates = np.arange(B)  # independent windows
    j = 5  # minimum period 6
    on_table, on_arrival = [], []
    for kind, side in ((OrderKind.BUY_VWAP, Side.BUY), (OrderKind.SELL_VWAP, Side.SELL)):
        on_table.append(advantage(table[:, j, kind].numpy(), table[:, N, kind].numpy(), side))
        on_arrival.append(advantage(vs_arrival[:, j, kind].numpy(), vs_arrival[:, N, kind].numpy(), side))
        assert paired(on_table[-1], dates, min_block=N).ci95[0] > 25.0  # an "edge" of about 34 bps, from nothing
    both_table = paired((on_table[0] + on_table[1]) / 2, dates, min_block=N)
    both_arrival = paired((on_arrival[0] + on_arrival[1]) / 2, dates, min_block=N)
    assert both_table.ci95[0] > 25.0
    assert both_arrival.ci95[0] < 0 < both_arrival.ci95[1] and abs(both_arrival.mean) < 2.0
