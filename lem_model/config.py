"""LEMConfig: the one dataclass every module of the model takes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal


@dataclass(frozen=True)
class LEMConfig:
    """Shapes and switches of a Large Execution Model.

    ``n_features`` (D) counts every column of ``x``, the normalised VWAP and volume included (the
    last two). The defaults are the paper's configuration (section 3.4).

    Switches that default to the reference ``lems`` 0.1.1 behaviour:
      - ``causal=True`` is our fix (docs/DESIGN.md, "Windows, alignment and causality"): step k
        decides from bars before it. ``False`` reproduces the reference's one-bar look-ahead,
        kept only to measure what it is worth.
      - ``base_curve_norm="models"``: the reference normalises the base curves over the
        minimum-duration axis; ``"steps"`` normalises each curve over its execution steps.
      - ``nto_price_curve="cumulative_notional"``: the reference feeds the notional orders'
        cumulative notional where it means their average price; ``"average_price"`` fixes it.
      - ``fused_init="tiled"``: all fused paths start identical as in the reference;
        ``"independent"`` draws each path's weights separately.
      - ``finish_gate=False``: each step allocates the reference's proposal (at most about 0.225
        of the order); ``True`` adds a gate per head and path that can take any share of the
        remainder up to all of it (lem_model.allocation.finish_gate), initialised nearly shut
        (logit ``gate_bias``).
      - ``rule_signal=False``: with the finish gate, ``True`` adds to each gate's logit a learnt
        multiple of the early-stop rule's signal, the last traded bar's price against the
        average price paid so far, in bps (lem_model.model, ``rule_weight``). The allocators
        see both prices among inputs of order 1, where a 20 bps difference is 0.002: too small
        to learn a threshold on in a CPU budget. The multiple starts at ``rule_signal_init``
        per side (0: no prior; 1: the rule's decision, give or take the gate's bias). The
        signal enters the logit divided by ``rule_signal_scale`` (bps per unit of logit), so a
        unit of the network's own gate output moves the threshold by that many bps.
      - ``rule_prior="rule"``: the gate starts as the rule give or take its bias; ``"fitted"``
        starts it as the rule with a threshold per head and side fitted on the training windows
        (lem_model.baselines.fit_stop_thresholds; lem_model.train sets it before the first
        epoch, :meth:`LargeExecutionModel.set_stop_thresholds`), kept in the state dict as
        ``stop_thresholds`` so an evaluation can score that fitted rule beside the model.
      - ``match_forecast=False``: the Match head proposes like the others; ``True`` makes its
        VWAP orders' proposal at step s the share of the remainder that a causal volume forecast
        times a static curve gives bar s, c_s F_s / sum_{t>=s} c_t F_t (lem_model.baselines:
        volume_forecasts with ``match_forecast_level`` and ``match_forecast_phi``, chosen on the
        training windows by benchmarks/volume_forecast_baseline.py), times the network's factor.
        The curve (``match_curve``) starts as the training windows' minimum-variance curve
        (lem_model.train sets it before the first epoch). Trained without it, the head learned
        that curve alone and ignored its inputs (docs/DESIGN.md).
    """

    n_features: int = 7
    lookback: int = 120
    n_ahead: int = 12
    hidden_size: int = 200
    num_embedding: int = 20
    num_heads: int = 8
    fused_hidden: int = 100
    rnn_layers: int = 2
    max_scale_factor: float = 1.5
    min_scale_factor: float = 0.5
    soft_clip_scale: float = 10.0
    causal: bool = True
    base_curve_norm: Literal["models", "steps"] = "models"
    nto_price_curve: Literal["cumulative_notional", "average_price"] = "cumulative_notional"
    fused_init: Literal["tiled", "independent"] = "tiled"
    finish_gate: bool = False
    gate_bias: float = -4.0
    rule_signal: bool = False
    rule_signal_init: float = 1.0
    rule_signal_scale: float = 1.0
    rule_prior: Literal["rule", "fitted"] = "rule"
    match_forecast: bool = False
    match_forecast_level: int = 60
    match_forecast_phi: float = 0.5

    def __post_init__(self) -> None:
        if self.rule_signal and not self.finish_gate:
            raise ValueError("rule_signal feeds the finish gate: it needs finish_gate=True")
        if self.rule_prior == "fitted" and not self.rule_signal:
            raise ValueError("rule_prior='fitted' sets the rule signal's thresholds: it needs rule_signal=True")
        if self.rule_signal_scale <= 0:
            raise ValueError(f"rule_signal_scale must be > 0 (bps per unit of logit), got {self.rule_signal_scale}")
        if self.n_ahead < 2:
            raise ValueError(f"n_ahead must be >= 2 (the last step takes the remainder), got {self.n_ahead}")
        if self.n_features < 3:
            raise ValueError(f"n_features must count at least one feature plus price and volume, got {self.n_features}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}")
        if self.lookback < 1:
            raise ValueError(f"lookback must be >= 1, got {self.lookback}")
        if self.match_forecast and not 1 <= self.match_forecast_level <= self.lookback:
            raise ValueError(f"match_forecast_level must be in 1..lookback ({self.lookback}), "
                             f"got {self.match_forecast_level}")
        if self.match_forecast and not 0 <= self.match_forecast_phi <= 1:
            raise ValueError(f"match_forecast_phi must be in [0, 1], got {self.match_forecast_phi}")

    @property
    def seq_len(self) -> int:
        """Length of ``x``: the lookback plus the execution bars before the last one."""
        return self.lookback + self.n_ahead - 1

    @property
    def n_models(self) -> int:
        """J = N + 1: one head per minimum duration 1..N, then "match the benchmark"."""
        return self.n_ahead + 1

    @classmethod
    def for_windows(cls, meta: dict, size: ModelSize, allocator: AllocatorSwitches | None = None,
                    **switches) -> LEMConfig:
        """The config of a model trained on the windows described by ``meta`` (their meta.json),
        at ``size``, with the ``allocator`` switches (default the reference's)."""
        return cls(n_features=len(meta["features"]), lookback=meta["config"]["lookback"],
                   n_ahead=meta["config"]["n_ahead"], **asdict(size), **asdict(allocator or AllocatorSwitches()),
                   **switches)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LEMConfig:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"not a LEMConfig: a JSON {type(data).__name__}, not an object")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown LEMConfig fields {sorted(unknown)}")
        # A hand-edited file: each value of the kind its default is ("n_ahead": "12" is no horizon).
        kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}
        wrong = []
        for f in fields(cls):
            default = f.default
            if f.name in data and type(default) in kinds:
                value = data[f.name]
                if not isinstance(value, kinds[type(default)]) or (type(default) is not bool and isinstance(value, bool)):
                    wrong.append(f"{f.name} {value!r}, not of type {type(default).__name__}")
        if wrong:
            raise ValueError(f"LEMConfig fields of the wrong kind: {', '.join(wrong)}")
        return cls(**data)


@dataclass(frozen=True)
class ModelSize:
    """The LEM's widths: what a deployment chooses. Lookback, horizon and feature count are not
    chosen; they come from the windows the model is trained on (:meth:`LEMConfig.for_windows`)."""

    hidden_size: int = 200
    num_embedding: int = 20
    num_heads: int = 8
    fused_hidden: int = 100


@dataclass(frozen=True)
class AllocatorSwitches:
    """The allocation head's switches, as a deployment chooses them together (the fields of
    :class:`LEMConfig` of the same names say what each does). The defaults are the reference's."""

    fused_init: Literal["tiled", "independent"] = "tiled"
    finish_gate: bool = False
    rule_signal: bool = False
    rule_prior: Literal["rule", "fitted"] = "rule"
    rule_signal_scale: float = 1.0
    match_forecast: bool = False


# Issue 11's head: the finish gate, heads drawn independently, started as the early-stop rule with
# thresholds fitted on the training windows; 16 bps of the rule's signal per unit of gate logit.
FITTED_RULE_GATE = AllocatorSwitches(fused_init="independent", finish_gate=True, rule_signal=True,
                                     rule_prior="fitted", rule_signal_scale=16.0)
# And the Match head started as the causal volume forecast times the minimum-variance curve.
FORECAST_MATCH_GATE = replace(FITTED_RULE_GATE, match_forecast=True)

PAPER_SIZE = ModelSize()  # the paper's section 3.4
SMALL_SIZE = ModelSize(hidden_size=32, num_embedding=8, num_heads=4, fused_hidden=32)  # the reference's test size

# Whole configurations at those sizes, on the reference's windows (7 features, horizon 12).
SMALL = LEMConfig(n_features=7, lookback=30, n_ahead=12, **asdict(SMALL_SIZE))
PAPER = LEMConfig(n_features=7, lookback=120, n_ahead=12, **asdict(PAPER_SIZE))
