"""Point-in-time customer features at a cutoff date, as Ibis expressions.

Every function takes the cutoff explicitly and reads events with ``ts`` on or before the cutoff
day only, so data after the cutoff cannot change a feature. The expressions run unchanged on any
Ibis backend (DuckDB by default, PySpark for large data).

Time is measured in days. A purchase on the cutoff day has recency 0; the window "last 30 days"
covers the cutoff day and the 29 days before it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import ibis
import ibis.expr.datatypes as idt
import ibis.expr.types as ir
import pandas as pd

from churnml.features.dates import as_date
from churnml.features.levels import LevelConfig, add_level_features
from churnml.features.segments import (
    ANNUAL_REFUND,
    SegmentConfig,
    SegmentNorms,
    add_segments,
    float_literal,
    known_number,
    lifetime_value,
    segment_norm_aggregates,
    segment_norms,
)
from churnml.features.surveys import is_detractor, is_promoter, latest_answers
from churnml.io.load import Dataset

SECONDS_PER_DAY = 86_400.0
MICROSECONDS_PER_SECOND = 1_000_000.0
UNIX_EPOCH = dt.datetime(1970, 1, 1)
DAYS_PER_MONTH = 365.25 / 12
WARNING_FLAGS = ("no_repurchase_3m", "order_value_drop_40", "low_interaction")


@dataclass(frozen=True)
class FeatureConfig:
    """Windows and thresholds of the feature set (``features`` in the Hydra config)."""

    windows_days: tuple[int, ...] = (30, 90, 180, 365)
    no_repurchase_days: int = 90
    order_value_window_days: int = 90
    order_value_drop: float = 0.4
    interaction_window_days: int = 90
    low_interaction_ratio: float = 0.5
    peer_column: str | None = None
    interaction_kinds: tuple[str, ...] = ("login", "visit", "email_open", "support_ticket")
    segments: SegmentConfig = field(default_factory=SegmentConfig)
    levels: LevelConfig = field(default_factory=LevelConfig)

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> "FeatureConfig":
        """Build from the ``features`` config node; keys outside the feature set are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in settings.items() if k in known}
        for key in ("windows_days", "interaction_kinds"):
            if key in values:
                values[key] = tuple(values[key])
        if "segments" in values:
            values["segments"] = SegmentConfig.from_dict(values["segments"])
        if "levels" in values and not isinstance(values["levels"], LevelConfig):
            values["levels"] = LevelConfig.from_dict(values["levels"])
        return cls(**values)

    def __post_init__(self) -> None:
        if not self.windows_days or sorted(self.windows_days) != list(self.windows_days):
            raise ValueError(f"features.windows_days must be increasing, got {self.windows_days}")
        if min(self.windows_days) <= 0:
            raise ValueError("features.windows_days must be positive")


def day_start(day: dt.date) -> dt.datetime:
    """Midnight at the start of ``day``."""
    return dt.datetime.combine(day, dt.time())


def epoch_day(day: dt.date) -> int:
    """Days from 1970-01-01 to ``day``."""
    return (day - dt.date(1970, 1, 1)).days


def _days(ts: ir.TimestampValue) -> ir.FloatingValue:
    # Not epoch_seconds(): on Spark it drops the fraction of a second. Microseconds as float64 also
    # keep Spark out of DECIMAL arithmetic (it reads 86400.0 as a decimal literal), and dividing
    # by 1e6 then by a day's seconds gives DuckDB's epoch() / 86400 to the last bit.
    micros = ts.delta(ibis.literal(UNIX_EPOCH), unit="microsecond").cast("float64")
    return micros / MICROSECONDS_PER_SECOND / SECONDS_PER_DAY


def whole_day(ts: ir.TimestampValue) -> ir.IntegerValue:
    """The day of a timestamp as whole days since 1970-01-01 (an integer expression, UTC), the
    same on every engine Ibis compiles to."""
    return _days(ts).floor()


def events_until(table: ir.Table, cutoff: dt.date) -> ir.Table:
    """Rows of an event table with ``ts`` on or before the cutoff day."""
    return table.filter(table.ts < day_start(cutoff + dt.timedelta(days=1)))


def window_start(cutoff: dt.date, days: int) -> dt.datetime:
    """First instant of the window of ``days`` days that ends with the cutoff day."""
    return day_start(cutoff - dt.timedelta(days=days - 1))


def roll_up_orders(lines: ir.Table, breadth: Mapping[str, list[Any]] | None = None) -> ir.Table:
    """Transaction lines rolled up to orders, one row per order.

    Lines of one order share ``order_id``, and a line whose ``order_id`` is missing is an order
    of its own; without that column, lines of a customer with the same timestamp form one order.
    ``gross`` is the order's positive value, ``refund`` its returns (both in the currency of
    ``amount``). ``breadth`` (a column and its listed values, see :func:`breadth_values`) adds the
    mask of the column's values on the order's purchase lines (bit ``i`` for ``values[i]``).
    """
    if "order_id" not in lines.columns:
        return _orders_by(lines, "ts", breadth)
    # Grouped by a missing order_id, every such line of a customer would fall into one order.
    orders = _orders_by(lines.filter(lines.order_id.notnull()), "order_id", breadth)
    single = lines.filter(lines.order_id.isnull())
    is_purchase = single.amount > 0
    # The aggregates of _orders_by over one line each (a sum "where amount > 0" of no line is null).
    alone: dict[str, ir.Value] = {
        "gross": single.amount.clip(lower=0),
        "refund": (-single.amount).clip(lower=0),
        "ts": single.ts,
    }
    if "quantity" in single.columns:
        alone["quantity"] = is_purchase.ifelse(single.quantity, ibis.null("float64"))
    for column, values in (breadth or {}).items():
        alone[_mask_name(column)] = is_purchase.ifelse(_value_bit(single[column], values), ibis.null("int64"))
    lone_orders = single.select("customer_id", "order_id", **alone).select(*orders.columns)
    return orders.union(lone_orders)


def _orders_by(lines: ir.Table, key: str, breadth: Mapping[str, list[Any]] | None) -> ir.Table:
    is_purchase = lines.amount > 0
    aggs = {
        "gross": lines.amount.clip(lower=0).sum(),
        "refund": (-lines.amount).clip(lower=0).sum(),
    }
    if key != "ts":
        aggs["ts"] = lines.ts.min()
    if "quantity" in lines.columns:
        aggs["quantity"] = lines.quantity.sum(where=is_purchase)
    for column, values in (breadth or {}).items():
        aggs[_mask_name(column)] = _bit_or(_value_bit(lines[column], values), where=is_purchase)
    return lines.group_by(["customer_id", key]).aggregate(**aggs)


def _mask_name(column: str) -> str:
    return f"_{column}_mask"


def orders_until(transactions: ir.Table, cutoff: dt.date, breadth: Mapping[str, list[Any]] | None = None) -> ir.Table:
    """Orders from transaction lines on or before the cutoff day."""
    return roll_up_orders(events_until(transactions, cutoff), breadth)


def order_features(
    transactions: ir.Table, cutoff: dt.date, config: FeatureConfig, breadth: Mapping[str, list[Any] | None] | None = None
) -> ir.Table:
    """Recency, frequency, value, windows, gaps, refunds and order-value trend per customer.

    ``breadth`` holds each breadth column's distinct values (see :func:`breadth_values`). The
    breadth of a column with listed values (``n_categories``, ``n_channels``) is counted here:
    the masks of its values travel through the order roll-up, which spares a pass of its own
    over the lines; :func:`line_features` counts the columns whose values are too many to list.
    """
    listed = {c: v for c, v in (breadth or {}).items() if v is not None and c in transactions.columns}
    orders = orders_until(transactions, cutoff, listed)
    is_purchase = orders.gross > 0
    orders = orders.mutate(is_purchase=is_purchase, day=_days(orders.ts))
    by_customer = ibis.window(group_by=[orders.customer_id, orders.is_purchase], order_by=orders.ts)
    # One window pass gives each gap and marks the latest order, whose gap is the last gap.
    orders = orders.mutate(
        gap=orders.day - orders.day.lag().over(by_customer),
        is_latest=orders.day.lead().over(by_customer).isnull(),
    )
    purchase = orders.is_purchase
    gap = orders.gap
    recent_days = config.order_value_window_days
    recent_start = window_start(cutoff, recent_days)
    previous_start = window_start(cutoff, 2 * recent_days)
    aggs: dict[str, ir.Scalar] = {
        "first_seen_ts": orders.ts.min(),
        "n_orders": orders.gross.count(where=purchase),
        "first_purchase_ts": orders.ts.min(where=purchase),
        "last_purchase_ts": orders.ts.max(where=purchase),
        "monetary_total": orders.gross.sum(where=purchase),
        "max_order_value": orders.gross.max(where=purchase),
        "refund_amount": orders.refund.sum(),
        "n_refunds": orders.refund.count(where=orders.refund > 0),
        ANNUAL_REFUND: orders.refund.sum(where=orders.ts >= window_start(cutoff, 365)),
        "gap_sum_sq": (gap * gap).sum(where=purchase),
        "gap_count": gap.count(where=purchase),
        "last_gap_days": gap.max(where=purchase & orders.is_latest),
        "_recent_spend": orders.gross.sum(where=purchase & (orders.ts >= recent_start)),
        "_recent_orders": orders.gross.count(where=purchase & (orders.ts >= recent_start)),
        "_previous_spend": orders.gross.sum(
            where=purchase & (orders.ts >= previous_start) & (orders.ts < recent_start)
        ),
        "_previous_orders": orders.gross.count(
            where=purchase & (orders.ts >= previous_start) & (orders.ts < recent_start)
        ),
    }
    if "quantity" in orders.columns:
        aggs["_quantity"] = orders.quantity.sum(where=purchase)
    for column in listed:
        aggs[_mask_name(column)] = _bit_or(orders[_mask_name(column)])
    for days in config.windows_days:
        inside = purchase & (orders.ts >= window_start(cutoff, days))
        aggs[f"orders_{days}d"] = orders.gross.count(where=inside)
        aggs[f"spend_{days}d"] = orders.gross.sum(where=inside)
    per_customer = orders.group_by("customer_id").aggregate(**aggs)
    breadth_counts = {BREADTH_COLUMNS[c]: _bit_count(per_customer[_mask_name(c)], len(v)) for c, v in listed.items()}
    return _derive_order_features(per_customer, cutoff, config, breadth_counts)


def _derive_order_features(
    t: ir.Table, cutoff: dt.date, config: FeatureConfig, extra: Mapping[str, ir.Value] | None = None
) -> ir.Table:
    today = epoch_day(cutoff)
    n = t.n_orders
    zero = ibis.literal(0.0)
    spend = {f"spend_{d}d": t[f"spend_{d}d"].fill_null(zero) for d in config.windows_days}
    span_days = _days(t.last_purchase_ts) - _days(t.first_purchase_ts)
    mean_gap = (n >= 2).ifelse(span_days / (n - 1).cast("float64"), ibis.null("float64"))
    gap_var = t.gap_sum_sq / t.gap_count.nullif(0) - mean_gap * mean_gap
    recency = today - whole_day(t.last_purchase_ts)
    tenure = today - whole_day(t.first_seen_ts)
    monetary = t.monetary_total.fill_null(zero)
    aov = monetary / n.nullif(0)
    recent_aov = t._recent_spend / t._recent_orders.nullif(0)
    previous_aov = t._previous_spend / t._previous_orders.nullif(0)
    derived: dict[str, ir.Value] = {
        "recency_days": recency.cast("float64"),
        "tenure_days": tenure.cast("float64"),
        "frequency": n,
        "repeat_orders": (n - 1).clip(lower=0),
        "monetary_total": monetary,
        "avg_order_value": aov,
        "max_order_value": t.max_order_value,
        "purchase_span_days": (whole_day(t.last_purchase_ts) - whole_day(t.first_purchase_ts)).cast("float64"),
        "purchase_age_days": (today - whole_day(t.first_purchase_ts)).cast("float64"),
        "mean_gap_days": mean_gap,
        "gap_std_days": (t.gap_count >= 2).ifelse(gap_var.clip(lower=0).sqrt(), ibis.null("float64")),
        "last_gap_days": t.last_gap_days,
        "days_overdue": recency - mean_gap,
        "overdue_ratio": recency / mean_gap.nullif(0),
        "refund_amount": t.refund_amount.fill_null(zero),
        "n_refunds": t.n_refunds,
        "refund_rate": t.refund_amount.fill_null(zero) / monetary.nullif(0),
        "net_spend": monetary - t.refund_amount.fill_null(zero),
        ANNUAL_REFUND: t[ANNUAL_REFUND].fill_null(zero),
        "aov_recent": recent_aov,
        "aov_previous": previous_aov,
        "aov_change": recent_aov / previous_aov.nullif(0) - 1,
    }
    if "_quantity" in t.columns:
        derived["items_per_order"] = t._quantity / n.nullif(0)
    for days in config.windows_days:
        derived[f"orders_{days}d"] = t[f"orders_{days}d"]
        derived[f"spend_{days}d"] = spend[f"spend_{days}d"]
    for short, long in zip(config.windows_days, config.windows_days[1:]):
        derived[f"orders_trend_{short}_{long}"] = _rate_ratio(t[f"orders_{short}d"], short, t[f"orders_{long}d"], long, tenure + 1)
        derived[f"spend_trend_{short}_{long}"] = _rate_ratio(spend[f"spend_{short}d"], short, spend[f"spend_{long}d"], long, tenure + 1)
    derived["no_repurchase_3m"] = recency.isnull() | (recency >= config.no_repurchase_days)
    derived["order_value_drop_40"] = (recent_aov < (1 - config.order_value_drop) * previous_aov).fill_null(False)
    return t.select("customer_id", "first_seen_ts", "first_purchase_ts", "last_purchase_ts", **derived, **(extra or {}))


@dataclass(frozen=True)
class PopulationNorms:
    """The numbers of the feature table at one cutoff that depend on every customer.

    :func:`build_features` computes them with window functions over the whole table; given them
    (:func:`population_norms`), it uses them as constants instead, so that the features of one
    customer computed on their own events equal that customer's row of the whole population's
    table (the online scorer recomputes a customer this way).

    Attributes
    ----------
    interactions_per_month : float, optional
        The mean interactions per month of every customer (``peer_interactions_per_month``
        without ``features.peer_column``); None without interactions.
    interactions_per_month_by_peer : mapping, optional
        With ``features.peer_column``: the mean of each value of that column (key None for the
        customers without one). A customer with a value the population lacks is a peer group
        of their own.
    usual_gap_days : float, optional
        The median mean gap between purchases of the customers with two or more (days), the
        usual gap of those with one (:func:`usual_gap`); None when no customer has two.
    segments : SegmentNorms
        The relative tier minimums and the LTV threshold of the value segment.
    """

    interactions_per_month: float | None = None
    interactions_per_month_by_peer: Mapping[Any, float | None] | None = None
    usual_gap_days: float | None = None
    segments: SegmentNorms = field(default_factory=SegmentNorms)


def usual_gap(table: ir.Table, norms: PopulationNorms | None = None) -> ir.FloatingValue:
    """The gap, in days, a customer usually leaves between purchases: their own mean gap with two
    purchases or more; with one, the peers' (the median mean gap of the customers in ``table``
    with two or more, so ``table`` must be the whole population at one ``as_of``, unless
    ``norms`` gives it); null without a purchase, or when no customer has two.

    A customer is *within their usual gap* while ``recency_days <= usual_gap_days``.
    """
    peers = (table.mean_gap_days.quantile(0.5).over(ibis.window()) if norms is None
             else float_literal(norms.usual_gap_days))
    return ibis.cases(
        (table.frequency >= 2, table.mean_gap_days),
        (table.frequency == 1, peers),
        else_=ibis.null("float64"),
    )


def _rate_ratio(
    short_value: ir.NumericValue, short_days: int, long_value: ir.NumericValue, long_days: int, age_days: ir.NumericValue
) -> ir.FloatingValue:
    """Daily rate in the short window over the daily rate in the long one (1 = steady).

    Each rate is taken over the part of its window the customer has been known for, so a new
    customer is not mistaken for an accelerating one.
    """
    short_rate = short_value / ibis.least(short_days, age_days)
    long_rate = long_value / ibis.least(long_days, age_days)
    return short_rate / long_rate.nullif(0)


BREADTH_COLUMNS = {"category": "n_categories", "channel": "n_channels"}
# Up to this many distinct values a column's breadth is counted with one bit per value in a 64-bit
# mask (counting the top bit takes a remainder by the next power of two, which must fit in int64);
# beyond it (thousands of product categories), with a grouped DISTINCT.
MAX_FLAGGED_VALUES = 62


@ibis.udf.agg.builtin(name="bit_or")
def _bit_or(bits: idt.int64) -> idt.int64:
    """Bitwise OR of the bits (DuckDB and Spark SQL ``bit_or``)."""


def _value_bit(column: ir.Value, values: list[Any]) -> ir.IntegerValue:
    """``2 ** position`` of the column's value among ``values``, 0 for any other value."""
    return ibis.cases(*((column == v, 1 << i) for i, v in enumerate(values)), else_=0).cast("int64")


def _bit_count(mask: ir.IntegerValue, n_bits: int) -> ir.IntegerValue:
    """How many of the lowest ``n_bits`` bits of ``mask`` are set (0 for a null mask)."""
    mask = mask.fill_null(0)
    # Integer remainders only: a division would go through float64 and lose the high bits.
    # ifelse rather than a cast: PostgreSQL casts a boolean to int4 only, never to bigint.
    bits = [((mask % (1 << (i + 1))) >= (1 << i)).ifelse(1, 0).cast("int64") for i in range(n_bits)]
    return sum(bits[1:], bits[0]) if bits else ibis.literal(0, type="int64")


def breadth_values(transactions: ir.Table, column: str, limit: int = MAX_FLAGGED_VALUES) -> list[Any] | None:
    """The distinct non-null values of ``column`` on purchase lines, or None when there are more than ``limit``.

    The values only name what to count; counting keeps to each cutoff, so values that first
    appear after a cutoff change no feature at it.
    """
    purchases = transactions.filter(transactions.amount > 0, transactions[column].notnull())
    values = purchases.select(column).distinct().limit(limit + 1).to_pyarrow().column(0).to_pylist()
    return sorted(values) if len(values) <= limit else None


def dataset_breadth_values(dataset: Dataset) -> dict[str, list[Any] | None]:
    """:func:`breadth_values` of each breadth column of the data set's transactions, queried once
    per data set and kept in ``dataset.facts`` (a snapshot table builds features at many cutoffs)."""
    cached = dataset.facts.setdefault("breadth_values", {})
    for column in BREADTH_COLUMNS:
        if column in dataset.transactions.columns and column not in cached:
            cached[column] = breadth_values(dataset.transactions, column)
    return dict(cached)


def line_features(
    transactions: ir.Table, cutoff: dt.date, values: Mapping[str, list[Any] | None] | None = None
) -> ir.Table | None:
    """Breadth of the columns whose values are too many to list (``values[column]`` None, see
    :func:`breadth_values`; every breadth column when ``values`` is None): how many distinct
    values a customer's purchase lines have, by a grouped DISTINCT. Columns with listed values
    are counted by :func:`order_features`; None when no column is left.
    """
    present = [c for c in BREADTH_COLUMNS if c in transactions.columns]
    unlisted = [c for c in present if (values or {}).get(c) is None]
    if not unlisted:
        return None
    past = events_until(transactions, cutoff)
    # Distinct combinations first: one grouped pass instead of a COUNT(DISTINCT) per column.
    combos = past.filter(past.amount > 0).select("customer_id", *unlisted).distinct()
    return combos.group_by("customer_id").aggregate(**{BREADTH_COLUMNS[c]: combos[c].nunique() for c in unlisted})


def interaction_features(interactions: ir.Table, cutoff: dt.date, config: FeatureConfig) -> ir.Table:
    """Interaction counts, counts per kind, and days since the last interaction."""
    past = events_until(interactions, cutoff)
    window = config.interaction_window_days
    in_window = past.ts >= window_start(cutoff, window)
    aggs: dict[str, ir.Scalar] = {
        "n_interactions": past.count(),
        "first_interaction_ts": past.ts.min(),
        "last_interaction_ts": past.ts.max(),
        f"interactions_{window}d": past.kind.count(where=in_window),
    }
    for days in (d for d in config.windows_days if d != window):
        aggs[f"interactions_{days}d"] = past.kind.count(where=past.ts >= window_start(cutoff, days))
    for kind in config.interaction_kinds:
        aggs[f"{kind}_{window}d"] = past.kind.count(where=in_window & (past.kind == kind))
    return past.group_by("customer_id").aggregate(**aggs)


def survey_features(surveys: ir.Table, cutoff: dt.date) -> ir.Table:
    """Each customer's survey answers up to the cutoff day: count, latest time, latest score of
    each kind (see :func:`churnml.features.surveys.latest_answers`)."""
    return latest_answers(events_until(surveys, cutoff))


def to_frame(table: ir.Table) -> pd.DataFrame:
    """A table as pandas, through Arrow.

    Ibis' own ``to_pandas`` re-checks every column in Python, which takes about ten times as long
    for a million customers; the types are the same, except that dates stay ``datetime.date``.
    """
    return table.to_pyarrow().to_pandas()


def build_features(dataset: Dataset, cutoff: str | dt.date, config: FeatureConfig = FeatureConfig(),
                   norms: PopulationNorms | None = None, own: ir.Table | None = None) -> ir.Table:
    """The feature table at ``cutoff``: one row per customer with a transaction on or before it.

    Columns that need interactions, customers or surveys are absent when those tables are
    absent; the membership-level columns (:data:`churnml.features.levels.LEVEL_FEATURES`) are
    absent when ``config.levels.enabled`` is false.

    Parameters
    ----------
    dataset : Dataset
        The events; its ``facts`` (breadth values) are computed on first use and kept.
    cutoff : str or datetime.date
    config : FeatureConfig
    norms : PopulationNorms, optional
        None: the columns that compare a customer with the others (peer interactions, usual gap,
        relative tier minimums, value segment) are windows over every customer of ``dataset``.
        Given (:func:`population_norms` of the whole population at ``cutoff``): those numbers,
        so that ``dataset`` may hold some customers only (one, for the online scorer) and their
        rows equal their rows of the whole table; give it the whole data set's ``facts`` too.
        Required on an engine whose windows compute no quantile (:func:`windows_have_quantiles`).
    own : ibis.expr.types.Table, optional
        :func:`own_features` of ``dataset`` at ``cutoff`` computed already (held in a table), to
        read instead of computing them again (see :func:`population_norms`).

    Raises
    ------
    ValueError
        Without ``norms`` on an engine whose windows compute no quantile (PostgreSQL).
    """
    if norms is None and not windows_have_quantiles(dataset):
        raise ValueError(f"the {getattr(dataset.con, 'name', 'unknown')} engine computes no quantile over a window: "
                         "give build_features the population's norms (population_norms)")
    cutoff = as_date(cutoff)
    table = own_features(dataset, cutoff, config) if own is None else own
    has_interactions = dataset.interactions is not None
    if has_interactions:
        table = _with_peer_interactions(table, config, norms)
    table = table.mutate(usual_gap_days=usual_gap(table, norms))
    table = add_segments(table, config.segments, has_interactions=has_interactions,
                         norms=None if norms is None else norms.segments)
    if config.levels.enabled:
        table = add_level_features(table, dataset.transactions, cutoff, config.levels)
    table = table.mutate(cutoff=ibis.literal(cutoff, type="date"))
    return table.drop("first_seen_ts", "first_purchase_ts", "last_purchase_ts", ANNUAL_REFUND).order_by("customer_id")


def own_features(dataset: Dataset, cutoff: str | dt.date, config: FeatureConfig = FeatureConfig()) -> ir.Table:
    """The columns of :func:`build_features` that read each customer's own events only (no
    population norm, no level), with the timestamps and the tier year's refunds: one row per
    customer with a transaction on or before ``cutoff``."""
    cutoff = as_date(cutoff)
    today = epoch_day(cutoff)
    values = dataset_breadth_values(dataset)
    table = order_features(dataset.transactions, cutoff, config, values)
    lines = line_features(dataset.transactions, cutoff, values)
    if lines is not None:
        table = table.left_join(lines, "customer_id").drop("customer_id_right")
        # A customer with refunds only bought in no category.
        table = table.mutate(**{c: table[c].fill_null(0) for c in lines.columns if c != "customer_id"})
    if dataset.interactions is not None:
        table = _with_interactions(table, interaction_features(dataset.interactions, cutoff, config), today, config)
    if dataset.customers is not None:
        table = _with_customers(table, dataset.customers, cutoff, today)
    if dataset.surveys is not None:
        table = _with_surveys(table, survey_features(dataset.surveys, cutoff), today)
    return table


# Ibis backends whose window functions compute quantiles. PostgreSQL's percentile_cont is an
# ordered-set aggregate, which it refuses as a window: there the norms come first, as aggregates.
QUANTILE_WINDOW_BACKENDS = frozenset({"duckdb", "pyspark"})


def windows_have_quantiles(dataset: Dataset) -> bool:
    """Whether the data set's engine computes quantiles over windows, as :func:`build_features`
    without norms needs (DuckDB and Spark do; PostgreSQL does not)."""
    return getattr(dataset.con, "name", None) in QUANTILE_WINDOW_BACKENDS


def population_norms(dataset: Dataset, cutoff: str | dt.date, config: FeatureConfig = FeatureConfig(),
                     features: pd.DataFrame | None = None, own: ir.Table | None = None) -> PopulationNorms:
    """The numbers :func:`build_features` compares each customer with (:class:`PopulationNorms`),
    over every customer of ``dataset`` at ``cutoff``.

    The same expressions as its windows, as aggregates of the engine in one query (plus one per
    peer group): quantiles are order statistics, the same as a window's (DuckDB's
    ``quantile_cont`` interpolates alike in both). A mean is a sum of floats, whose last bits
    depend on the order the engine adds them in, which varies between runs; ``features``, the
    feature table :func:`build_features` gave without norms at ``cutoff``, supplies the peer
    means its windows produced instead, so that the norms reproduce that very table.

    The customers' own sums (spend, LTV) have that order too: on an engine without quantile
    windows, give ``own`` (:func:`own_features` held in a table, as
    :func:`churnml.features.snapshots.population_features` does) here and to
    :func:`build_features`, so that a customer whose LTV is the median is compared with the very
    number the median is.

    Returns
    -------
    PopulationNorms

    Raises
    ------
    ValueError
        If the tier year (365 days) is not among ``config.windows_days``.
    """
    cutoff = as_date(cutoff)
    table = own_features(dataset, cutoff, config) if own is None else own
    table = table.mutate(ltv=lifetime_value(table, config.segments))
    aggregates = segment_norm_aggregates(table, config.segments)
    aggregates["usual_gap_days"] = table.mean_gap_days.quantile(0.5)
    has_interactions = dataset.interactions is not None
    if has_interactions and not config.peer_column and features is None:
        aggregates["interactions_per_month"] = table.interactions_per_month.mean()
    values = table.aggregate(**aggregates).to_pyarrow().to_pylist()[0]
    overall, by_peer = values.get("interactions_per_month"), None
    if has_interactions and features is not None:
        peers = features[[config.peer_column] if config.peer_column else []].assign(
            mean=features["peer_interactions_per_month"])
        if config.peer_column:
            first = peers.groupby(config.peer_column, dropna=False, sort=False)["mean"].first()
            by_peer = {None if pd.isna(k) else k: v for k, v in first.items()}
        else:
            overall = peers["mean"].iloc[0] if len(peers) else None
    elif has_interactions and config.peer_column:
        groups = table.group_by(config.peer_column).aggregate(mean=table.interactions_per_month.mean()).to_pyarrow()
        by_peer = dict(zip(groups.column(config.peer_column).to_pylist(), groups.column("mean").to_pylist()))
    return PopulationNorms(
        interactions_per_month=None if config.peer_column else known_number(overall),
        interactions_per_month_by_peer=None if by_peer is None else {k: known_number(v) for k, v in by_peer.items()},
        usual_gap_days=known_number(values["usual_gap_days"]),
        segments=segment_norms(values, config.segments),
    )


def _with_interactions(table: ir.Table, inter: ir.Table, today: int, config: FeatureConfig) -> ir.Table:
    joined = table.left_join(inter, "customer_id").drop("customer_id_right")
    window = config.interaction_window_days
    counts = [c for c in inter.columns if c.endswith("d") and c != "customer_id" and not c.endswith("_ts")]
    joined = joined.mutate(**{c: joined[c].fill_null(0) for c in counts + ["n_interactions"]})
    first_event = ibis.least(joined.first_seen_ts, joined.first_interaction_ts.fill_null(joined.first_seen_ts))
    age_days = today - whole_day(first_event) + 1
    # float64 first: on Spark, integer days / the decimal literal 30.4375 would be rounded decimal.
    rate = joined[f"interactions_{window}d"] / (ibis.least(window, age_days).cast("float64") / DAYS_PER_MONTH)
    shortest = min(config.windows_days)
    trend = (
        _rate_ratio(joined[f"interactions_{shortest}d"], shortest, joined[f"interactions_{window}d"], window, age_days)
        if shortest < window
        else ibis.null("float64")
    )
    joined = joined.mutate(
        interactions_per_month=rate,
        days_since_interaction=(today - whole_day(joined.last_interaction_ts)).cast("float64"),
        interaction_trend=trend,
    )
    return joined.drop("first_interaction_ts", "last_interaction_ts")


def _with_peer_interactions(table: ir.Table, config: FeatureConfig, norms: PopulationNorms | None) -> ir.Table:
    """``peer_interactions_per_month`` (the mean of every customer, or of the customer's
    ``config.peer_column`` group) and ``low_interaction``, placed after ``interaction_trend``.

    Added once the customers' columns are joined, so that the peer column may be one of theirs.
    """
    rate = table.interactions_per_month
    if norms is None:
        peers = ibis.window(group_by=table[config.peer_column]) if config.peer_column else ibis.window()
        peer_mean = rate.mean().over(peers)
    elif config.peer_column:
        group = table[config.peer_column]
        means = dict(norms.interactions_per_month_by_peer or {})
        known = [(group.isnull() if value is None else group == value, float_literal(mean))
                 for value, mean in means.items()]
        # A value the population lacks: the customer is the only member of their group.
        peer_mean = ibis.cases(*known, else_=rate) if known else rate
    else:
        peer_mean = float_literal(norms.interactions_per_month)
    columns = list(table.columns)
    table = table.mutate(
        peer_interactions_per_month=peer_mean,
        low_interaction=rate < config.low_interaction_ratio * peer_mean,
    )
    at = columns.index("interaction_trend") + 1
    return table.select(*columns[:at], "peer_interactions_per_month", "low_interaction", *columns[at:])


def _with_surveys(table: ir.Table, answers: ir.Table, today: int) -> ir.Table:
    """The survey columns: ``n_survey_answers``, ``days_since_survey``, the latest NPS, CSAT and
    CES scores (null without such an answer) and whether the latest NPS answer is a promoter's or
    a detractor's (false without one: unknown is neither)."""
    joined = table.left_join(answers, "customer_id").drop("customer_id_right")
    joined = joined.mutate(
        n_survey_answers=joined.n_survey_answers.fill_null(0),
        days_since_survey=(today - whole_day(joined.last_survey_ts)).cast("float64"),
        last_nps=joined.last_nps.cast("float64"),
        last_csat=joined.last_csat.cast("float64"),
        last_ces=joined.last_ces.cast("float64"),
        nps_promoter=is_promoter(joined.last_nps).fill_null(False),
        nps_detractor=is_detractor(joined.last_nps).fill_null(False),
    )
    return joined.drop("last_survey_ts")


def _with_customers(table: ir.Table, customers: ir.Table, cutoff: dt.date, today: int) -> ir.Table:
    joined = table.left_join(customers, "customer_id").drop("customer_id_right")
    if "signup_ts" in customers.columns:
        # A signup after the cutoff is unknown at the cutoff.
        known = joined.signup_ts < day_start(cutoff + dt.timedelta(days=1))
        since = (today - whole_day(joined.signup_ts)).cast("float64")
        joined = joined.mutate(days_since_signup=known.ifelse(since, ibis.null("float64"))).drop("signup_ts")
    return joined
