"""Loyalty tiers, value x potential segments and lifetime value: the one owner of their vocabulary.

The Ibis functions add columns to a feature table and work on any Ibis backend; the value segment
also has a score-time view (:func:`predicted_value_segment`), with potential read from the
repurchase model instead of the recent buying rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd

TIERS = ("core", "potential", "basic", "dormant")
# Refunds dated in the tier window, kept beside the window's spend so that tiers rank net value.
ANNUAL_REFUND = "_refund_365d"
VALUE_SEGMENTS = (
    "high_value_high_potential",
    "high_value_low_potential",
    "low_value_high_potential",
    "low_value_low_potential",
)


@dataclass(frozen=True)
class TierRule:
    """Minimums a customer meets to reach a tier (spend over the last 365 days)."""

    min_annual_spend: float
    min_repurchases: int
    min_interactions_per_month: float = 0.0


@dataclass(frozen=True)
class SegmentConfig:
    """Tier thresholds, value/potential split and the LTV horizon."""

    core: TierRule = field(default_factory=lambda: TierRule(5000.0, 4, 2.0))
    potential: TierRule = field(default_factory=lambda: TierRule(2000.0, 2, 1.0))
    basic: TierRule = field(default_factory=lambda: TierRule(500.0, 1, 0.0))
    dormant_days: int = 180
    ltv_expected_years: float = 3.0
    # Purchases per year are observed over at least this many days, so a customer's first order
    # does not extrapolate to a frantic yearly rate.
    min_rate_exposure_days: int = 90
    value_quantile: float = 0.5

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> "SegmentConfig":
        """Build from the ``features.segments`` config node (tiers as mappings of their minimums)."""
        values = dict(settings)
        for tier in ("core", "potential", "basic"):
            if tier in values and not isinstance(values[tier], TierRule):
                values[tier] = TierRule(**values[tier])
        return cls(**values)


def _annual_columns(table: ir.Table) -> tuple[ir.Value, ir.Value]:
    """Net spend of the last 365 days (purchases less the refunds dated in them, at least 0) and
    repurchases in them."""
    if "spend_365d" not in table.columns or "orders_365d" not in table.columns:
        raise ValueError("tiers need the 365-day window: keep 365 in features.windows_days")
    spend, orders = table.spend_365d, table.orders_365d
    if ANNUAL_REFUND in table.columns:
        spend = (spend - table[ANNUAL_REFUND].fill_null(0.0)).clip(lower=0.0)
    first_in_year = (table.tenure_days < 365) & (table.frequency > 0)
    repurchases = (orders - first_in_year.ifelse(1, 0)).clip(lower=0)
    return spend, repurchases


def loyalty_tier(table: ir.Table, config: SegmentConfig, has_interactions: bool) -> ir.StringValue:
    """core / potential / basic / dormant, by the thresholds in ``config``.

    Without an interactions table the interaction minimums cannot be checked and are skipped.
    """
    spend, repurchases = _annual_columns(table)
    rate = table.interactions_per_month if has_interactions else None

    def meets(rule: TierRule) -> ir.BooleanValue:
        ok = (spend >= rule.min_annual_spend) & (repurchases >= rule.min_repurchases)
        if rate is not None and rule.min_interactions_per_month > 0:
            ok = ok & (rate >= rule.min_interactions_per_month)
        return ok

    inactive = table.recency_days.isnull() | (table.recency_days >= config.dormant_days)
    dormant = inactive | (spend < config.basic.min_annual_spend)
    return ibis.cases(
        (dormant, "dormant"),
        (meets(config.core), "core"),
        (meets(config.potential), "potential"),
        else_="basic",
    )


def purchases_per_year(table: ir.Table, config: SegmentConfig) -> ir.FloatingValue:
    """Orders of the last 365 days per year known, the exposure at least ``min_rate_exposure_days``."""
    exposure = ibis.greatest(ibis.least(table.tenure_days + 1, 365), config.min_rate_exposure_days)
    return table.orders_365d * 365.0 / exposure


def net_order_value(table: ir.Table) -> ir.FloatingValue:
    """Net spend (purchases less refunds, at least 0) per order; 0 without orders.

    An order cancelled in full adds an order and no value, whatever id its cancellation carries.
    """
    return (table.net_spend.clip(lower=0.0) / table.frequency.nullif(0)).fill_null(0.0)


def lifetime_value(table: ir.Table, config: SegmentConfig) -> ir.FloatingValue:
    """Net order value x purchases per year x expected remaining years (currency of ``amount``).

    Needs ``net_spend``, ``frequency``, ``orders_365d`` and ``tenure_days``.
    """
    return net_order_value(table) * purchases_per_year(table, config) * config.ltv_expected_years


def value_segment(ltv: ir.FloatingValue, recent_trend: ir.FloatingValue, threshold: ir.FloatingValue) -> ir.StringValue:
    """Value (LTV against the peers' quantile) x potential (buying at least as often lately).

    An LTV of 0 is never high value, even where most customers have none and the quantile is 0.
    """
    high_value = (ltv >= threshold) & (ltv > 0)
    high_potential = recent_trend.fill_null(0.0) >= 1.0
    return ibis.cases(
        (high_value & high_potential, VALUE_SEGMENTS[0]),
        (high_value, VALUE_SEGMENTS[1]),
        (high_potential, VALUE_SEGMENTS[2]),
        else_=VALUE_SEGMENTS[3],
    )


def add_segments(table: ir.Table, config: SegmentConfig, has_interactions: bool) -> ir.Table:
    """Add ``tier``, ``purchases_per_year``, ``ltv`` and ``value_segment``."""
    table = table.mutate(
        tier=loyalty_tier(table, config, has_interactions),
        purchases_per_year=purchases_per_year(table, config),
        ltv=lifetime_value(table, config),
    )
    trend_column = next((c for c in table.columns if c.startswith("orders_trend_") and c.endswith("_365")), None)
    trend = table[trend_column] if trend_column else ibis.literal(1.0)
    threshold = table.ltv.quantile(config.value_quantile).over(ibis.window())
    return table.mutate(value_segment=value_segment(table.ltv, trend, threshold))


@dataclass(frozen=True)
class ValueThresholds:
    """The medians that split value (LTV) and potential (repurchase probability)."""

    ltv: float
    repurchase_probability: float


def value_thresholds(ltv: pd.Series | np.ndarray, repurchase_probability: pd.Series | np.ndarray) -> ValueThresholds:
    """Median LTV (missing counts as 0) and median repurchase probability of the customers scored."""
    value = np.nan_to_num(np.asarray(ltv, dtype=float), nan=0.0)
    potential = np.asarray(repurchase_probability, dtype=float)
    if value.size == 0:
        return ValueThresholds(np.nan, np.nan)
    return ValueThresholds(float(np.median(value)), float(np.median(potential)))


def predicted_value_segment(
    ltv: pd.Series | np.ndarray,
    repurchase_probability: pd.Series | np.ndarray,
    thresholds: ValueThresholds | None = None,
) -> np.ndarray:
    """Value x predicted potential, the score-time view of :func:`value_segment` (same vocabulary).

    Value is high when LTV is above the median LTV of the customers scored, potential is high when
    the repurchase probability is above the median repurchase probability. "Above", not "at
    least": when most customers have no LTV the median is 0, and 0 is not high value. Scoring in
    pieces (one Spark partition at a time) passes the whole population's ``thresholds``.
    """
    value = np.nan_to_num(np.asarray(ltv, dtype=float), nan=0.0)
    potential = np.asarray(repurchase_probability, dtype=float)
    if value.size == 0:
        return np.array([], dtype=object)
    thresholds = thresholds or value_thresholds(value, potential)
    high_value = value > thresholds.ltv
    high_potential = potential > thresholds.repurchase_probability
    return np.select(
        [high_value & high_potential, high_value, high_potential],
        list(VALUE_SEGMENTS[:3]),
        default=VALUE_SEGMENTS[3],
    ).astype(object)
