"""Scoring policy: risk bands on the churn probability, value segments at scoring time and the
playbook that turns tier, segment and band into a recommended action."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from churnml.features.segments import TIERS, VALUE_SEGMENTS

log = logging.getLogger(__name__)

RISK_BANDS = ("high", "medium", "low")
# The columns a playbook rule can name, with lists of allowed values.
RULE_CONDITIONS = ("tier", "value_segment", "predicted_value_segment", "risk_band")


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RiskBands:
    """Churn-probability thresholds: ``high`` at or above ``high``, ``medium`` at or above
    ``medium``, ``low`` below it."""

    high: float = 0.6
    medium: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.medium <= self.high <= 1.0:
            raise ValueError(f"risk bands need 0 <= medium <= high <= 1, got medium={self.medium}, high={self.high}")


@dataclass(frozen=True)
class PlaybookRule:
    """One playbook line: an action and the conditions a customer must meet for it.

    A condition left as ``None`` matches everyone; a rule with no conditions matches every row.

    Parameters
    ----------
    name : str
        Rule name, for messages.
    action : str
        What the retention team should do.
    tier, value_segment, predicted_value_segment, risk_band : tuple of str, optional
        Allowed values of those columns.
    overdue : bool, optional
        ``True``: only customers whose next purchase is overdue (``days_overdue > 0``);
        ``False``: only those who are not.
    """

    name: str
    action: str
    tier: tuple[str, ...] | None = None
    value_segment: tuple[str, ...] | None = None
    predicted_value_segment: tuple[str, ...] | None = None
    risk_band: tuple[str, ...] | None = None
    overdue: bool | None = None

    def __post_init__(self) -> None:
        allowed = {"tier": TIERS, "value_segment": VALUE_SEGMENTS, "predicted_value_segment": VALUE_SEGMENTS,
                   "risk_band": RISK_BANDS}
        for column, known in allowed.items():
            values = getattr(self, column)
            if values is None:
                continue
            if isinstance(values, str):
                raise ValueError(f"playbook rule '{self.name}': {column} must be a list, got '{values}'")
            unknown = sorted(set(values) - set(known))
            if unknown:
                raise ValueError(f"playbook rule '{self.name}': unknown {column} {unknown}; known: {list(known)}")

    @classmethod
    def from_dict(cls, name: str, settings: Mapping[str, Any]) -> "PlaybookRule":
        known = {f.name for f in fields(cls)} - {"name"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"playbook rule '{name}' has unknown keys {unknown}; use {sorted(known)}")
        if not settings.get("action"):
            raise ValueError(f"playbook rule '{name}' needs an action")
        values = dict(settings)
        for key in RULE_CONDITIONS:
            if values.get(key) is not None and not isinstance(values[key], str):
                values[key] = tuple(values[key])
        return cls(name=name, **values)


DEFAULT_PLAYBOOK = (
    PlaybookRule("high_value_at_risk", "dedicated account manager",
                 predicted_value_segment=("high_value_high_potential", "high_value_low_potential"), risk_band=("high",)),
    PlaybookRule("win_back", "win-back offer", tier=("dormant",)),
    PlaybookRule("replenishment", "replenishment reminder", overdue=True, risk_band=("high", "medium")),
    PlaybookRule("upgrade", "upgrade offer", tier=("potential",)),
    PlaybookRule("loyalty", "loyalty reward", tier=("core",), risk_band=("low",)),
)
DEFAULT_ACTION = "nurture email"


@dataclass(frozen=True)
class ScoringConfig:
    """How scores become bands, reasons and actions (``score`` in the Hydra config)."""

    risk_bands: RiskBands = field(default_factory=RiskBands)
    n_reasons: int = 3
    playbook: tuple[PlaybookRule, ...] = DEFAULT_PLAYBOOK
    default_action: str = DEFAULT_ACTION
    # Contributions are computed this many rows at a time, which bounds their memory.
    batch_size: int = 200_000
    # Score small LightGBM trees through exact lookup tables (checked against the model each run).
    tabulate_trees: bool = True
    # Threads for the tabulated trees; None = all cores.
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.n_reasons < 1:
            raise ValueError(f"score.reasons must be at least 1, got {self.n_reasons}")
        if self.batch_size < 1:
            raise ValueError(f"score.batch_size must be positive, got {self.batch_size}")

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> "ScoringConfig":
        """Build from the ``score`` config node; keys that are not about scores are ignored."""
        values: dict[str, Any] = {}
        if settings.get("risk_bands") is not None:
            values["risk_bands"] = RiskBands(**settings["risk_bands"])
        if settings.get("reasons") is not None:
            values["n_reasons"] = int(settings["reasons"])
        if settings.get("playbook") is not None:
            values["playbook"] = tuple(PlaybookRule.from_dict(name, rule) for name, rule in settings["playbook"].items())
        if settings.get("default_action"):
            values["default_action"] = str(settings["default_action"])
        if settings.get("batch_size"):
            values["batch_size"] = int(settings["batch_size"])
        if settings.get("tabulate_trees") is not None:
            values["tabulate_trees"] = bool(settings["tabulate_trees"])
        if settings.get("threads"):
            values["threads"] = int(settings["threads"])
        return cls(**values)

# --------------------------------------------------------------------------------------------
# Bands, segments, actions
# --------------------------------------------------------------------------------------------


def risk_band(churn_probability: pd.Series | np.ndarray, bands: RiskBands = RiskBands()) -> np.ndarray:
    """``high`` / ``medium`` / ``low`` for each churn probability."""
    p = np.asarray(churn_probability, dtype=float)
    return np.where(p >= bands.high, "high", np.where(p >= bands.medium, "medium", "low")).astype(object)


def recommend_actions(
    rows: pd.DataFrame, playbook: Sequence[PlaybookRule] = DEFAULT_PLAYBOOK, default_action: str = DEFAULT_ACTION
) -> np.ndarray:
    """The action of the first playbook rule each row matches, else ``default_action``.

    Parameters
    ----------
    rows : pandas.DataFrame
        Columns ``tier``, ``value_segment``, ``predicted_value_segment``, ``risk_band`` and, for rules about overdue
        purchases, ``days_overdue`` (missing counts as not overdue).
    """
    actions = np.full(len(rows), None, dtype=object)
    undecided = np.ones(len(rows), dtype=bool)
    overdue = None
    for rule in playbook:
        match = undecided.copy()
        for column in RULE_CONDITIONS:
            allowed = getattr(rule, column)
            if allowed is not None:
                match &= rows[column].isin(allowed).to_numpy()
        if rule.overdue is not None:
            if overdue is None:
                overdue = (pd.to_numeric(rows["days_overdue"], errors="coerce").fillna(0.0) > 0).to_numpy()
            match &= overdue if rule.overdue else ~overdue
        actions[match] = rule.action
        undecided &= ~match
    actions[undecided] = default_action
    return actions


# --------------------------------------------------------------------------------------------
