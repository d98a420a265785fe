"""Loyalty tiers, value x potential segments and lifetime value: the one owner of their vocabulary.

The Ibis functions add columns to a feature table and work on any Ibis backend; the value segment
also has a score-time view (:func:`predicted_value_segment`), with potential read from the
repurchase model instead of the recent buying rate.

Tiers (:func:`loyalty_tier`) are read on the tier year, the 365 days ending on ``as_of``: its net
spend, the repurchases in it and the interaction rate. Every rule is a conjunction, and the
first rule a customer meets, in the order of :data:`TIER_PRECEDENCE`, is their tier:

- ``new``: first purchase within the last ``new_days`` days, whatever else;
- ``one_time``: a single purchase ever, made before that (never repurchased);
- ``core`` / ``potential`` / ``basic``: annual spend, repurchases and interactions per month
  all at least the tier's minimums;
- ``dormant``: annual spend under basic's minimum, no purchase and no interaction in the last
  ``dormant_days`` days;
- ``occasional``: none of the above (the fallback: repeat customers below basic who still
  buy or interact).

Spend and repurchase minimums are ``absolute`` (currency of ``amount``, counts) or ``relative``
to the shop: quantiles of the annual spend and repurchases of the customers who bought in the
tier year, at the same ``as_of``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd

from churnml.errors import UserValueError

# From the lowest churn risk to the highest, as reasons rank them (the order of the demo shop's
# 90-day churn rates by tier: new customers, who just bought, churn less than basic ones).
TIERS = ("core", "potential", "new", "basic", "occasional", "one_time", "dormant")
# The order the rules are tried in: the first one a customer meets is their tier.
TIER_PRECEDENCE = ("new", "one_time", "core", "potential", "basic", "dormant", "occasional")
RANKED_TIERS = ("core", "potential", "basic")
THRESHOLD_KINDS = ("absolute", "relative")
TIER_YEAR_DAYS = 365
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
    """The minimums a customer meets, all at once, to reach a ranked tier (core, potential, basic).

    Parameters
    ----------
    min_annual_spend : float
        ``thresholds=absolute``: net spend of the tier year, in the currency of ``amount``.
    min_repurchases : int
        ``thresholds=absolute``: purchases in the tier year that are not the customer's first.
    min_interactions_per_month : float
        Interactions per month (over ``features.interaction_window_days``), under either kind of
        thresholds; 0 requires nothing. Not applied without an interactions table.
    spend_quantile, repurchases_quantile : float
        ``thresholds=relative``: levels in [0, 1]; the minimum is that quantile (interpolated) of
        the annual spend, resp. repurchases, of the customers who bought in the tier year.
    """

    min_annual_spend: float = 0.0
    min_repurchases: int = 0
    min_interactions_per_month: float = 0.0
    spend_quantile: float = 0.0
    repurchases_quantile: float = 0.0


# (absolute minimums, relative quantile levels) of each ranked tier, by default.
DEFAULT_TIER_RULES = {
    "core": TierRule(5000.0, 4, 2.0, spend_quantile=0.8, repurchases_quantile=0.8),
    "potential": TierRule(2000.0, 2, 1.0, spend_quantile=0.5, repurchases_quantile=0.5),
    "basic": TierRule(500.0, 1, 0.0, spend_quantile=0.2, repurchases_quantile=0.2),
}


@dataclass(frozen=True)
class SegmentConfig:
    """Tier rules, value/potential split and the LTV horizon (``features.segments``).

    Raises
    ------
    churnml.errors.UserValueError
        For an unknown ``thresholds`` kind, a negative minimum or number of days, a quantile
        outside [0, 1], or ranked tiers whose minimums do not descend from core to basic.
    """

    # absolute: the TierRule minimums, in currency; relative: quantiles of the shop's tier year.
    thresholds: str = "relative"
    core: TierRule = field(default_factory=lambda: DEFAULT_TIER_RULES["core"])
    potential: TierRule = field(default_factory=lambda: DEFAULT_TIER_RULES["potential"])
    basic: TierRule = field(default_factory=lambda: DEFAULT_TIER_RULES["basic"])
    # Dormant: no purchase and no interaction in this many days (and annual spend under basic's).
    dormant_days: int = 180
    # New: first purchase within this many days (0: no customer is new).
    new_days: int = 90
    ltv_expected_years: float = 3.0
    # Purchases per year are observed over at least this many days, so a customer's first order
    # does not extrapolate to a frantic yearly rate.
    min_rate_exposure_days: int = 90
    value_quantile: float = 0.5

    def __post_init__(self) -> None:
        where = "features.segments"
        if self.thresholds not in THRESHOLD_KINDS:
            raise UserValueError(f"{where}.thresholds={self.thresholds} is not one of "
                                 f"{', '.join(THRESHOLD_KINDS)}: use one of them")
        for key in ("dormant_days", "new_days", "min_rate_exposure_days"):
            if getattr(self, key) < 0:
                raise UserValueError(f"{where}.{key}={getattr(self, key)}: give a number of days, 0 or more")
        if self.dormant_days == 0:
            raise UserValueError(f"{where}.dormant_days=0: give a positive number of days (180 by default)")
        for tier in RANKED_TIERS:
            rule = getattr(self, tier)
            for key in ("min_annual_spend", "min_repurchases", "min_interactions_per_month"):
                if getattr(rule, key) < 0:
                    raise UserValueError(f"{where}.{tier}.{key}={getattr(rule, key)}: give a minimum of 0 or more")
            for key in ("spend_quantile", "repurchases_quantile"):
                if not 0.0 <= getattr(rule, key) <= 1.0:
                    raise UserValueError(f"{where}.{tier}.{key}={getattr(rule, key)}: give a quantile level in [0, 1]")
        # A higher tier with a lower minimum would take the lower tier's customers: refuse it.
        compared = ("min_interactions_per_month",) + (
            ("spend_quantile", "repurchases_quantile") if self.thresholds == "relative"
            else ("min_annual_spend", "min_repurchases"))
        for higher, lower in zip(RANKED_TIERS, RANKED_TIERS[1:]):
            for key in compared:
                high, low = getattr(getattr(self, higher), key), getattr(getattr(self, lower), key)
                if high < low:
                    raise UserValueError(f"{where}.{higher}.{key}={high} is below {where}.{lower}.{key}={low}: "
                                         f"give {higher} a minimum at least {lower}'s")

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> "SegmentConfig":
        """Build from the ``features.segments`` config node (tiers as mappings of their minimums).

        Raises
        ------
        churnml.errors.UserValueError
            For a key a tier rule does not know, or a value :class:`SegmentConfig` refuses.
        """
        values = dict(settings)
        for tier in RANKED_TIERS:
            if tier in values and not isinstance(values[tier], TierRule):
                given = dict(values[tier])
                unknown = sorted(set(given) - set(TierRule.__dataclass_fields__))
                if unknown:
                    raise UserValueError(f"features.segments.{tier} has unknown keys {unknown}: "
                                         f"use {sorted(TierRule.__dataclass_fields__)}")
                values[tier] = TierRule(**{**DEFAULT_TIER_RULES[tier].__dict__, **given})
        return cls(**values)


def annual_spend(table: ir.Table) -> ir.FloatingValue:
    """Net spend of the tier year: purchases less the refunds dated in it, at least 0 (currency)."""
    if "spend_365d" not in table.columns or "orders_365d" not in table.columns:
        raise ValueError("tiers need the 365-day window: keep 365 in features.windows_days")
    spend = table.spend_365d
    if ANNUAL_REFUND in table.columns:
        spend = (spend - table[ANNUAL_REFUND].fill_null(0.0)).clip(lower=0.0)
    return spend


def annual_repurchases(table: ir.Table) -> ir.IntegerValue:
    """Purchases in the tier year less the customer's first purchase when it falls in the year."""
    first_in_year = (table.purchase_age_days < TIER_YEAR_DAYS).fill_null(False)
    return (table.orders_365d - first_in_year.ifelse(1, 0)).clip(lower=0)


@dataclass(frozen=True)
class SegmentNorms:
    """The numbers of :func:`add_segments` that depend on every customer at one ``as_of``.

    Given to :func:`add_segments`, they replace its window functions over the whole table, so
    that the segments of one customer computed on their own rows equal their row of the whole
    table (:func:`segment_norm_aggregates` computes them).

    Attributes
    ----------
    tier_minimums : mapping of str to (float or None, float or None), optional
        ``thresholds=relative``: each ranked tier's (annual spend, repurchases) minimums, None
        where no customer bought in the tier year; None for ``absolute`` thresholds.
    ltv_threshold : float, optional
        The ``value_quantile`` of every customer's LTV (currency); None without a known LTV.
    """

    tier_minimums: Mapping[str, tuple[float | None, float | None]] | None = None
    ltv_threshold: float | None = None


def tier_quantile_inputs(table: ir.Table) -> tuple[ir.FloatingValue, ir.FloatingValue]:
    """The annual spend and repurchases that relative tier minimums are quantiles of: those of
    the customers with a purchase in the tier year, null for the others."""
    bought = table.orders_365d > 0
    # Null outside the population: quantiles skip nulls (a FILTER clause would not run on Spark windows).
    spend = bought.ifelse(annual_spend(table), ibis.null("float64"))
    repurchases = bought.ifelse(annual_repurchases(table).cast("float64"), ibis.null("float64"))
    return spend, repurchases


def tier_minimums(table: ir.Table, config: SegmentConfig,
                  norms: SegmentNorms | None = None) -> dict[str, tuple[ir.NumericValue, ir.NumericValue]]:
    """Each ranked tier's (annual spend, repurchases) minimums.

    ``absolute``: the rules' numbers. ``relative``: the rules' quantiles of the annual spend and
    repurchases of the customers with a purchase in the tier year, over the whole table (a
    window over every row: run it on the feature table of one ``as_of``), or the population's
    numbers in ``norms``. Without such a customer the relative minimums are null, and no
    customer meets them.
    """
    if config.thresholds == "absolute":
        return {tier: (ibis.literal(float(getattr(config, tier).min_annual_spend)),
                       ibis.literal(float(getattr(config, tier).min_repurchases))) for tier in RANKED_TIERS}
    if norms is not None:
        if norms.tier_minimums is None:
            raise ValueError("relative tier minimums need the population's numbers: norms.tier_minimums is None")
        return {tier: tuple(float_literal(value) for value in norms.tier_minimums[tier]) for tier in RANKED_TIERS}
    spend, repurchases = tier_quantile_inputs(table)
    everyone = ibis.window()
    return {tier: (spend.quantile(getattr(config, tier).spend_quantile).over(everyone),
                   repurchases.quantile(getattr(config, tier).repurchases_quantile).over(everyone))
            for tier in RANKED_TIERS}


def float_literal(value: float | None) -> ir.FloatingValue:
    """A population's number as a float64 constant of a query (null when unknown), to the last bit.

    Written as text cast to a double: a number literal in SQL is a DECIMAL on DuckDB, and its
    conversion to a double is not always the nearest double (1.430561844344688 comes back one
    bit off), while every engine parses text to the nearest one.
    """
    if value is None:
        return ibis.null("float64")
    return ibis.literal(repr(float(value))).cast("float64")


def segment_norm_aggregates(table: ir.Table, config: SegmentConfig) -> dict[str, ir.Scalar]:
    """The aggregates over every row of ``table`` that :class:`SegmentNorms` holds, named
    ``<tier>_spend``, ``<tier>_repurchases`` (relative thresholds) and ``ltv_threshold``: the
    same quantiles (the engine's, interpolated) as :func:`add_segments`' windows. ``table``
    needs ``ltv`` besides the tier columns."""
    aggregates: dict[str, ir.Scalar] = {}
    if config.thresholds == "relative":
        spend, repurchases = tier_quantile_inputs(table)
        for tier in RANKED_TIERS:
            aggregates[f"{tier}_spend"] = spend.quantile(getattr(config, tier).spend_quantile)
            aggregates[f"{tier}_repurchases"] = repurchases.quantile(getattr(config, tier).repurchases_quantile)
    aggregates["ltv_threshold"] = table.ltv.quantile(config.value_quantile)
    return aggregates


def known_number(value: Any) -> float | None:
    """An aggregate's value as a float, None where it is unknown (None or NaN)."""
    return None if value is None or pd.isna(value) else float(value)


def segment_norms(values: Mapping[str, Any], config: SegmentConfig) -> SegmentNorms:
    """:class:`SegmentNorms` from the values of :func:`segment_norm_aggregates` (NaN or None: unknown)."""
    minimums = ({tier: (known_number(values[f"{tier}_spend"]), known_number(values[f"{tier}_repurchases"]))
                 for tier in RANKED_TIERS}
                if config.thresholds == "relative" else None)
    return SegmentNorms(minimums, known_number(values["ltv_threshold"]))


def tier_conditions(table: ir.Table, config: SegmentConfig, has_interactions: bool,
                    norms: SegmentNorms | None = None) -> dict[str, ir.BooleanValue]:
    """Each tier's rule as a boolean column (null where a comparison is unknown, which no tier meets).

    Needs ``spend_365d``, ``orders_365d``, ``frequency``, ``purchase_age_days``,
    ``recency_days`` and, with interactions, ``interactions_per_month`` and
    ``days_since_interaction``. Without an interactions table the interaction conditions (the
    ranked tiers' rate minimums, dormant's "no interaction") cannot be read and are left out.
    ``norms``: the population's relative minimums (see :func:`tier_minimums`).
    """
    spend, repurchases = annual_spend(table), annual_repurchases(table)
    minimums = tier_minimums(table, config, norms)
    conditions: dict[str, ir.BooleanValue] = {
        "new": table.purchase_age_days < config.new_days,
        "one_time": table.frequency == 1,
    }
    for tier in RANKED_TIERS:
        min_spend, min_repurchases = minimums[tier]
        meets = (spend >= min_spend) & (repurchases >= min_repurchases)
        min_rate = getattr(config, tier).min_interactions_per_month
        if has_interactions and min_rate > 0:
            meets = meets & (table.interactions_per_month >= min_rate)
        conditions[tier] = meets
    no_purchase = table.recency_days.isnull() | (table.recency_days >= config.dormant_days)
    # An unknown basic minimum (nobody bought in the year) is one that no spend reaches.
    basic_spend = minimums["basic"][0]
    dormant = (basic_spend.isnull() | (spend < basic_spend)) & no_purchase
    if has_interactions:
        dormant = dormant & (table.days_since_interaction.isnull() | (table.days_since_interaction >= config.dormant_days))
    conditions["dormant"] = dormant
    return conditions


def loyalty_tier(table: ir.Table, config: SegmentConfig, has_interactions: bool,
                 norms: SegmentNorms | None = None) -> ir.StringValue:
    """The first tier of :data:`TIER_PRECEDENCE` whose rule (:func:`tier_conditions`) the
    customer meets; ``occasional`` when they meet none."""
    conditions = tier_conditions(table, config, has_interactions, norms)
    return ibis.cases(*((conditions[tier].fill_null(False), tier) for tier in TIER_PRECEDENCE[:-1]),
                      else_=TIER_PRECEDENCE[-1])


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


def add_segments(table: ir.Table, config: SegmentConfig, has_interactions: bool,
                 norms: SegmentNorms | None = None) -> ir.Table:
    """Add ``tier``, ``purchases_per_year``, ``ltv`` and ``value_segment``.

    The relative tier minimums and the LTV threshold of the value segment are windows over every
    row (run it on the feature table of one ``as_of``), or the population's numbers in ``norms``.
    """
    table = table.mutate(
        tier=loyalty_tier(table, config, has_interactions, norms),
        purchases_per_year=purchases_per_year(table, config),
        ltv=lifetime_value(table, config),
    )
    trend_column = next((c for c in table.columns if c.startswith("orders_trend_") and c.endswith("_365")), None)
    trend = table[trend_column] if trend_column else ibis.literal(1.0)
    threshold = (table.ltv.quantile(config.value_quantile).over(ibis.window()) if norms is None
                 else float_literal(norms.ltv_threshold))
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
