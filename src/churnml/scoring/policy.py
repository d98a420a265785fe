"""Scoring policy: risk bands on the churn probability, value segments at scoring time and the
playbook that turns tier, segment and band into a recommended action."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from churnml.features.segments import TIERS, VALUE_SEGMENTS

log = logging.getLogger(__name__)

RISK_BANDS = ("high", "medium", "low")
# The columns a playbook rule can name, with lists of allowed values.
RULE_CONDITIONS = ("tier", "value_segment", "predicted_value_segment", "risk_band")
# Who gets reasons: everyone, the high and medium risk bands, or the riskiest share.
REASONS_FOR = ("all", "actionable", "top_fraction")


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
        ``True``: only customers past their usual gap between purchases (``recency_days >
        usual_gap_days``, see :func:`days_past_usual_gap`); ``False``: only those within it (or
        without a usual gap: no purchase yet).
    downgrade_at_risk : bool, optional
        ``True``: only members whose level expires soon without what keeps it
        (:mod:`churnml.features.levels`); ``False``: only those who are not.
    """

    name: str
    action: str
    tier: tuple[str, ...] | None = None
    value_segment: tuple[str, ...] | None = None
    predicted_value_segment: tuple[str, ...] | None = None
    risk_band: tuple[str, ...] | None = None
    overdue: bool | None = None
    downgrade_at_risk: bool | None = None

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
        """Build rule ``name`` from its config node; unknown keys and a missing action raise ValueError."""
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


# A win-back offer goes to dormant customers past their usual gap only: a customer who buys twice
# a year is not lost after six silent months.
DEFAULT_PLAYBOOK = (
    PlaybookRule("high_value_at_risk", "dedicated account manager",
                 predicted_value_segment=("high_value_high_potential", "high_value_low_potential"), risk_band=("high",)),
    PlaybookRule("win_back", "win-back offer", tier=("dormant",), overdue=True),
    PlaybookRule("renewal_reminder", "renewal reminder", downgrade_at_risk=True),
    PlaybookRule("welcome", "welcome series", tier=("new",)),
    PlaybookRule("second_purchase", "second-purchase offer", tier=("one_time",), overdue=True),
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
    # Customers who get reasons (see rows_with_reasons); the others get empty reason columns.
    reasons_for: str = "all"
    # For reasons_for="top_fraction": the share of customers, the riskiest, who get reasons.
    reasons_top_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.n_reasons < 1:
            raise ValueError(f"score.reasons must be at least 1, got {self.n_reasons}")
        if self.batch_size < 1:
            raise ValueError(f"score.batch_size must be positive, got {self.batch_size}")
        if self.reasons_for not in REASONS_FOR:
            raise ValueError(f"score.reasons_for must be one of {', '.join(REASONS_FOR)}; got '{self.reasons_for}'")
        if not 0.0 < self.reasons_top_fraction <= 1.0:
            raise ValueError(f"score.reasons_top_fraction must be in (0, 1], got {self.reasons_top_fraction}")

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
        if settings.get("reasons_for") is not None:
            values["reasons_for"] = str(settings["reasons_for"])
        if settings.get("reasons_top_fraction") is not None:
            values["reasons_top_fraction"] = float(settings["reasons_top_fraction"])
        return cls(**values)

# --------------------------------------------------------------------------------------------
# Bands, segments, actions
# --------------------------------------------------------------------------------------------


def risk_band(churn_probability: pd.Series | np.ndarray, bands: RiskBands = RiskBands()) -> np.ndarray:
    """``high`` / ``medium`` / ``low`` for each churn probability."""
    p = np.asarray(churn_probability, dtype=float)
    return np.where(p >= bands.high, "high", np.where(p >= bands.medium, "medium", "low")).astype(object)


# Bands whose reasons are what lowers the risk (what keeps the customer) rather than what raises it.
KEEPING_BANDS = ("low",)


def reason_signs(churn_probability: pd.Series | np.ndarray, bands: RiskBands = RiskBands()) -> np.ndarray:
    """Which way each customer's reasons point: 1 (what raises the churn risk most) for the high
    and medium bands, -1 (what lowers it most: what keeps them) for the low band."""
    keeping = np.isin(risk_band(churn_probability, bands), KEEPING_BANDS)
    return np.where(keeping, -1.0, 1.0)


# Who gets reasons
# --------------------------------------------------------------------------------------------


def top_count(n_rows: int, fraction: float) -> int:
    """How many rows ``reasons_for="top_fraction"`` gives reasons: ``ceil(fraction * n_rows)``,
    the product first rounded to 6 decimals (so that 0.7 of 10 rows is 7, not 8 for 0.7's
    binary rounding). At least one row when there are any, since ``fraction > 0``."""
    return min(n_rows, math.ceil(round(fraction * n_rows, 6)))


def riskiest_rows(churn_probability: np.ndarray, fraction: float) -> np.ndarray:
    """Positions (ascending) of the :func:`top_count` rows of highest churn probability.

    Ties go to the earlier row (customer order), so the choice is the same at every run; a
    missing probability counts as the lowest.
    """
    p = np.nan_to_num(np.asarray(churn_probability, dtype=float), nan=-np.inf)
    order = np.argsort(-p, kind="stable")
    return np.sort(order[:top_count(len(p), fraction)])


@dataclass(frozen=True)
class ReasonCut:
    """Where ``reasons_for="top_fraction"`` stops in a whole population, for scoring it in pieces.

    A customer gets reasons when their churn probability is above ``probability``, or equal to
    it and their ``customer_id`` is not after ``last_customer`` (ties go to earlier customers).
    """

    probability: float
    last_customer: Any = None


def reason_cut(churn_probability: np.ndarray, customer_ids: Any, fraction: float) -> ReasonCut:
    """The :class:`ReasonCut` that gives reasons to the rows :func:`riskiest_rows` chooses.

    Parameters
    ----------
    churn_probability : numpy.ndarray
        ``(customers,)``: every customer's churn probability, in customer order.
    customer_ids : array-like
        ``(customers,)``: their ids, ascending.
    fraction : float
        ``score.reasons_top_fraction``.
    """
    p = np.nan_to_num(np.asarray(churn_probability, dtype=float), nan=-np.inf)
    ids = np.asarray(customer_ids, dtype=object)
    rows = riskiest_rows(p, fraction)
    if not len(rows):
        return ReasonCut(np.inf)
    lowest = float(p[rows].min())
    return ReasonCut(lowest, ids[rows[p[rows] == lowest][-1]])


def rows_with_reasons(config: ScoringConfig, churn_probability: np.ndarray, customer_ids: Any = None,
                      cut: ReasonCut | None = None) -> np.ndarray | None:
    """Positions (ascending) of the customers who get reasons under ``config.reasons_for``.

    - ``all``: None, meaning every customer.
    - ``actionable``: those in the high or medium risk band (churn probability at least
      ``config.risk_bands.medium``).
    - ``top_fraction``: the ``ceil(reasons_top_fraction * n)`` customers of highest churn
      probability (:func:`top_count`), ties to the earlier customer; with ``cut``, those the
      whole population's cut chooses (then ``customer_ids`` is needed).

    Parameters
    ----------
    config : ScoringConfig
    churn_probability : numpy.ndarray
        ``(customers,)``, in customer order.
    customer_ids : array-like, optional
        ``(customers,)``, ascending; only read with ``cut``.
    cut : ReasonCut, optional
        For ``top_fraction`` when the customers are one piece of the population.
    """
    p = np.asarray(churn_probability, dtype=float)
    if config.reasons_for == "all":
        return None
    if config.reasons_for == "actionable":
        return np.flatnonzero(p >= config.risk_bands.medium)
    if cut is None:
        return riskiest_rows(p, config.reasons_top_fraction)
    p = np.nan_to_num(p, nan=-np.inf)
    ids = pd.Series(np.asarray(customer_ids, dtype=object)).astype(str)
    tied = (p == cut.probability) & (ids <= str(cut.last_customer)).to_numpy() if cut.last_customer is not None else False
    return np.flatnonzero((p > cut.probability) | tied)


def days_past_usual_gap(features: pd.DataFrame) -> np.ndarray:
    """Days since the last purchase less the customer's usual gap (positive: past it), NaN without one.

    Parameters
    ----------
    features : pandas.DataFrame
        ``recency_days`` and ``usual_gap_days`` (:func:`churnml.features.build.usual_gap`); a
        feature table without ``usual_gap_days`` (written by an older churnml) gives
        ``days_overdue``, the same for customers with two purchases or more and NaN for the others.

    Returns
    -------
    numpy.ndarray
        ``(customers,)`` float64, in days.
    """
    if "usual_gap_days" in features and "recency_days" in features:
        recency = pd.to_numeric(features["recency_days"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        gap = pd.to_numeric(features["usual_gap_days"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        return recency - gap
    if "days_overdue" in features:
        return pd.to_numeric(features["days_overdue"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return np.full(len(features), np.nan)


def recommend_actions(
    rows: pd.DataFrame, playbook: Sequence[PlaybookRule] = DEFAULT_PLAYBOOK, default_action: str = DEFAULT_ACTION
) -> np.ndarray:
    """The action of the first playbook rule each row matches, else ``default_action``.

    Parameters
    ----------
    rows : pandas.DataFrame
        Columns ``tier``, ``value_segment``, ``predicted_value_segment``, ``risk_band`` and, for rules about overdue
        purchases, ``days_past_usual_gap`` (:func:`days_past_usual_gap`; missing counts as within the gap);
        for rules about levels, ``downgrade_at_risk`` (missing or absent counts as not at risk).

    Returns
    -------
    numpy.ndarray
        ``(rows,)`` object: one action per row.
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
                overdue = (pd.to_numeric(rows["days_past_usual_gap"], errors="coerce").fillna(0.0) > 0).to_numpy()
            match &= overdue if rule.overdue else ~overdue
        if rule.downgrade_at_risk is not None:
            at_risk = (rows["downgrade_at_risk"].fillna(False).to_numpy(dtype=bool) if "downgrade_at_risk" in rows
                       else np.zeros(len(rows), dtype=bool))
            match &= at_risk if rule.downgrade_at_risk else ~at_risk
        actions[match] = rule.action
        undecided &= ~match
    actions[undecided] = default_action
    return actions


# --------------------------------------------------------------------------------------------
