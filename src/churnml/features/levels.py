"""Membership levels: a state machine over each customer's orders, and its features at a date.

A customer joins the base level (``normal``) with their first order. The other levels
(``silver``, ``gold``, ``diamond`` by default, :class:`LevelRule`) are earned, kept and lost by
these rules, all on whole days (UTC):

- **Upgrade.** At the end of each day with an order, the customer's *qualifying period* is the
  ``qualifying_days`` days ending that day. The highest level whose ``min_spend`` (net spend of
  the period: purchases less refunds, in the currency of ``amount``) and ``min_repurchases``
  (purchases in the period other than the customer's first purchase ever) are both met is the
  qualified level; if it is above the current level, the customer moves up that day, valid for
  ``validity_days`` (valid to, exclusive: ``valid_from + validity_days``). Qualifying again for
  the level one holds does not renew it early.
- **Expiry.** On the day a level above the base expires, the qualifying period is the
  ``qualifying_days`` days before it. Qualifying for the level (or higher) renews it for another
  ``validity_days`` (``renewal``); otherwise a level with an extension rule whose
  ``extension_repurchases`` are met in that period is kept ``extension_days`` longer
  (``extension``, once per term: at the end of an extension only a renewal keeps the level);
  otherwise the customer moves down to the level the period qualifies for (``downgrade``), valid
  for ``validity_days`` unless it is the base level, which never expires.
- A refund lowers the net spend of the period it is dated in; it never takes back a level already
  earned. A level held for no whole day (an expiry and an upgrade on the same day) is left out of
  the history.
- **Points.** Each order earns ``points_per_unit`` points per currency unit of its net value,
  truncated to whole points (a refund takes back points the same way). Points expire
  ``points_validity_days`` after the day they were earned (0: never). The data contract has no
  redemptions, so none is subtracted: the balance is the points earned in the validity window
  (at least 0), and :func:`points_value` says what it is worth in whole blocks of
  ``redeem_points`` points at ``redeem_value`` each.

Whatever cannot be a query (the path of levels depends on every earlier step) runs per customer
in Python over orders rolled up by :func:`churnml.features.build.roll_up_orders`, on the driver
for DuckDB and on Spark's executors through ``applyInPandas`` (customers grouped into buckets by
a hash of their id). Orders after ``as_of`` are never read, so nothing later can change a level
at ``as_of``.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
from dataclasses import dataclass, field, fields
from typing import Any, Iterator, Mapping

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd

from churnml.errors import UserValueError
from churnml.features.dates import as_date

# churnml.features.build imports this module for LevelConfig: its functions are imported where used.

HISTORY_COLUMNS = ("customer_id", "level", "valid_from", "valid_to", "reason")
REASONS = ("first order", "upgrade", "renewal", "extension", "downgrade")
LEVEL_FEATURES = (
    "membership_level", "membership_level_rank", "days_at_level", "next_level_spend_gap",
    "next_level_repurchase_gap", "days_to_level_expiry", "downgrade_at_risk", "points_balance",
)
# Order values are compared to a millionth of the currency unit: the engines sum an order's lines
# in different orders, and the last bits of a sum must not decide a level or a point.
VALUE_DECIMALS = 6
FEATURES_SCHEMA = (
    "customer_id string, membership_level string, membership_level_rank bigint, days_at_level double, "
    "next_level_spend_gap double, next_level_repurchase_gap double, days_to_level_expiry double, "
    "downgrade_at_risk boolean, points_balance double"
)
HISTORY_SCHEMA = "customer_id string, level string, valid_from date, valid_to date, reason string"


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LevelRule:
    """What earns and keeps one level above the base.

    Parameters
    ----------
    min_spend : float
        Net spend in the qualifying period, currency of ``amount``.
    min_repurchases : int
        Repurchases (purchases other than the first ever) in the qualifying period.
    extension_repurchases : int
        At expiry without a renewal, this many repurchases in the qualifying period keep the
        level ``extension_days`` longer; 0: no extension.
    extension_days : int
    """

    min_spend: float
    min_repurchases: int
    extension_repurchases: int = 0
    extension_days: int = 0


def _default_rules() -> dict[str, LevelRule]:
    # Sized for the demo shop, where the median customer spends about 220 a year over 5-6
    # orders: about a third reach silver or higher, a tenth gold or higher, 2-3% diamond.
    return {
        "silver": LevelRule(min_spend=300.0, min_repurchases=2),
        "gold": LevelRule(min_spend=800.0, min_repurchases=5, extension_repurchases=6, extension_days=90),
        "diamond": LevelRule(min_spend=2000.0, min_repurchases=10, extension_repurchases=12, extension_days=90),
    }


@dataclass(frozen=True)
class LevelConfig:
    """Membership levels and points (``features.levels`` in the Hydra config).

    Off by default (``enabled``): levels describe a loyalty program the shop runs, and shown to a
    retention team they must be that program's rules; on the demo shop they do not improve the
    models (README, "Membership levels"), and their state machine about doubles the time of a
    feature build. ``rules`` maps each level above ``base_level`` to its :class:`LevelRule`; the levels rank by
    their thresholds, which must not decrease in either spend or repurchases from one level to
    the next. Days are whole days; amounts are in the currency of ``amount``.
    """

    enabled: bool = False
    base_level: str = "normal"
    rules: Mapping[str, LevelRule] = field(default_factory=_default_rules)
    qualifying_days: int = 365
    validity_days: int = 365
    # A member whose level expires within this many days and who has not yet met what keeps it
    # is at risk of a downgrade.
    notice_days: int = 60
    points_per_unit: float = 1.0
    points_validity_days: int = 365
    redeem_points: int = 100
    redeem_value: float = 10.0

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> "LevelConfig":
        """Build from the ``features.levels`` config node (rules as mappings of their fields).

        Raises
        ------
        churnml.errors.UserValueError
            For an unknown key or a rule the levels cannot work with (see :meth:`__post_init__`).
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise UserValueError(f"features.levels has unknown keys {unknown}: use {sorted(known)}")
        values = dict(settings)
        if "rules" in values:
            rules = {}
            for name, rule in dict(values["rules"]).items():
                if isinstance(rule, LevelRule):
                    rules[name] = rule
                    continue
                rule_keys = {f.name for f in fields(LevelRule)}
                wrong = sorted(set(rule) - rule_keys)
                if wrong or not {"min_spend", "min_repurchases"} <= set(rule):
                    raise UserValueError(f"features.levels.rules.{name} needs min_spend and min_repurchases "
                                         f"and takes only {sorted(rule_keys)}; got {sorted(rule)}")
                rules[name] = LevelRule(**rule)
            values["rules"] = rules
        return cls(**values)

    def __post_init__(self) -> None:
        """Refuse rules that cannot rank or run.

        Raises
        ------
        churnml.errors.UserValueError
            Naming the key under ``features.levels`` and what it takes.
        """
        where = "features.levels"
        for key in ("qualifying_days", "validity_days", "redeem_points"):
            if getattr(self, key) <= 0:
                raise UserValueError(f"{where}.{key}={getattr(self, key)}: give a positive number")
        for key in ("notice_days", "points_per_unit", "points_validity_days", "redeem_value"):
            if getattr(self, key) < 0:
                raise UserValueError(f"{where}.{key}={getattr(self, key)}: give 0 or more")
        if self.base_level in self.rules:
            raise UserValueError(f"{where}.rules.{self.base_level}: the base level has no rule; "
                                 f"rename it or change {where}.base_level")
        previous = None
        for name, rule in self.ranked_rules():
            if rule.min_spend < 0 or rule.min_repurchases < 0 or rule.extension_repurchases < 0 or rule.extension_days < 0:
                raise UserValueError(f"{where}.rules.{name}: thresholds and extensions must be 0 or more")
            if rule.extension_repurchases > 0 and rule.extension_days <= 0:
                raise UserValueError(f"{where}.rules.{name}: extension_repurchases={rule.extension_repurchases} "
                                     "needs extension_days > 0 (or set extension_repurchases=0 for no extension)")
            if previous is not None and rule.min_repurchases < previous[1].min_repurchases:
                raise UserValueError(
                    f"{where}.rules.{name} needs more spend but fewer repurchases than {previous[0]}: "
                    "each level must need at least the spend and the repurchases of the level below")
            if previous is not None and (rule.min_spend, rule.min_repurchases) == (previous[1].min_spend,
                                                                                   previous[1].min_repurchases):
                raise UserValueError(f"{where}.rules.{name} and {previous[0]} have the same thresholds: "
                                     "give each level its own")
            previous = (name, rule)

    def ranked_rules(self) -> list[tuple[str, LevelRule]]:
        """The levels above the base with their rules, lowest first (by spend, then repurchases)."""
        return sorted(self.rules.items(), key=lambda item: (item[1].min_spend, item[1].min_repurchases))

    @property
    def levels(self) -> tuple[str, ...]:
        """Every level, lowest (the base) first: a level's rank is its position here."""
        return (self.base_level, *(name for name, _ in self.ranked_rules()))


def points_value(balance: float | np.ndarray | pd.Series, config: LevelConfig = LevelConfig()) -> Any:
    """What a points balance redeems for: whole blocks of ``redeem_points`` at ``redeem_value``
    each (currency of ``amount``); with the defaults 250 points are worth 20."""
    blocks = np.floor(np.maximum(np.asarray(balance, dtype=float), 0.0) / config.redeem_points)
    value = blocks * config.redeem_value
    return float(value) if np.ndim(value) == 0 else value


# --------------------------------------------------------------------------------------------
# Orders
# --------------------------------------------------------------------------------------------


def level_orders(transactions: ir.Table, as_of: str | dt.date) -> ir.Table:
    """The orders the levels read: one row per order on or before ``as_of``.

    Returns
    -------
    ibis.expr.types.Table
        ``customer_id``; ``day`` (int64, days since 1970-01-01 of the order's first line);
        ``net`` (float64, purchases less refunds of the order); ``purchase`` (bool: the order
        has a positive line).
    """
    from churnml.features.build import _whole_day, events_until, roll_up_orders

    orders = roll_up_orders(events_until(transactions, as_date(as_of)))
    return orders.select(
        "customer_id",
        day=_whole_day(orders.ts).cast("int64"),
        net=(orders.gross - orders.refund).cast("float64"),
        purchase=orders.gross > 0,
    )


# --------------------------------------------------------------------------------------------
# The state machine (one customer)
# --------------------------------------------------------------------------------------------


@dataclass
class _Customer:
    """One customer's days with orders (ascending) with running totals of what they hold, and
    where the levels took them."""

    days: list[int]
    net_totals: list[float]  # net spend of the days before each day (one more entry than days)
    repurchase_totals: list[int]
    point_totals: list[float]
    rows: list[list[Any]] = field(default_factory=list)  # [rank, valid_from, reason]
    rank: int = 0
    expiry: int | None = None
    extended: bool = False

    def _span(self, first: int, last: int) -> tuple[int, int]:
        return bisect.bisect_left(self.days, first), bisect.bisect_right(self.days, last)

    def window(self, first: int, last: int) -> tuple[float, int]:
        """Net spend and repurchases of the days ``[first, last]``."""
        start, stop = self._span(first, last)
        # Every value has at most VALUE_DECIMALS decimals, so rounding the difference of the
        # running totals gives the exact sum back: a threshold met exactly is met.
        spend = round(self.net_totals[stop] - self.net_totals[start], VALUE_DECIMALS)
        return spend, self.repurchase_totals[stop] - self.repurchase_totals[start]

    def point_sum(self, first: int, last: int) -> float:
        start, stop = self._span(first, last)
        return self.point_totals[stop] - self.point_totals[start]

    def move(self, rank: int, day: int, reason: str) -> None:
        if self.rows and self.rows[-1][1] == day:
            self.rows.pop()
        self.rows.append([rank, day, reason])
        self.rank = rank


def _qualified(spend: float, repurchases: int, rules: list[LevelRule], above: int = 0) -> int:
    """The rank of the highest level that ``spend`` and ``repurchases`` meet, or ``above`` when
    they do not meet the level just above it (thresholds never decrease with the rank)."""
    rank = above
    while rank < len(rules) and spend >= rules[rank].min_spend and repurchases >= rules[rank].min_repurchases:
        rank += 1
    return rank


def _expire(customer: _Customer, config: LevelConfig, rules: list[LevelRule]) -> None:
    """Renew, extend or downgrade the level that expires on ``customer.expiry``."""
    day = customer.expiry
    spend, repurchases = customer.window(day - config.qualifying_days, day - 1)
    qualified = _qualified(spend, repurchases, rules)
    rule = rules[customer.rank - 1]
    if qualified >= customer.rank:
        reason = "renewal" if qualified == customer.rank else "upgrade"
        customer.move(qualified, day, reason)
        customer.expiry, customer.extended = day + config.validity_days, False
    elif not customer.extended and 0 < rule.extension_repurchases <= repurchases:
        customer.move(customer.rank, day, "extension")
        customer.expiry, customer.extended = day + rule.extension_days, True
    else:
        customer.move(qualified, day, "downgrade")
        customer.expiry = day + config.validity_days if qualified else None
        customer.extended = False


def _run(customer: _Customer, as_of_day: int, config: LevelConfig, rules: list[LevelRule]) -> _Customer:
    """Walk the customer's days up to ``as_of_day``, leaving the history in ``customer.rows``."""
    customer.move(0, customer.days[0], "first order")
    for day in customer.days:
        while customer.expiry is not None and customer.expiry <= day:
            _expire(customer, config, rules)
        if customer.rank == len(rules):
            continue
        qualified = _qualified(*customer.window(day - config.qualifying_days + 1, day), rules, customer.rank)
        if qualified > customer.rank:
            customer.move(qualified, day, "upgrade")
            customer.expiry, customer.extended = day + config.validity_days, False
    while customer.expiry is not None and customer.expiry <= as_of_day:
        _expire(customer, config, rules)
    return customer


def _customers(orders: pd.DataFrame, as_of_day: int, config: LevelConfig) -> Iterator[tuple[str, _Customer]]:
    """Each customer's days (orders on or before ``as_of_day`` summed by day), walked through the levels."""
    orders = orders[orders["day"] <= as_of_day]
    if orders.empty:
        return
    nets = orders["net"].to_numpy(dtype=float).round(VALUE_DECIMALS)
    # Sorted down to the value, so that every engine's rows give the same sums in the same order.
    frame = pd.DataFrame({
        "customer_id": orders["customer_id"].astype(str).to_numpy(dtype=object),
        "day": orders["day"].to_numpy(dtype=np.int64),
        "net": nets,
        "purchase": orders["purchase"].to_numpy(dtype=bool),
    }).sort_values(["customer_id", "day", "net"], kind="stable", ignore_index=True)
    ids = frame["customer_id"].to_numpy(dtype=object)
    days = frame["day"].to_numpy(dtype=np.int64)
    nets = frame["net"].to_numpy(dtype=float)
    purchase = frame["purchase"].to_numpy(dtype=bool)
    n = len(frame)
    new_customer = np.r_[True, ids[1:] != ids[:-1]]
    # Purchases up to each row within its customer: the first purchase ever is no repurchase.
    purchases_so_far = np.cumsum(purchase)
    first_row = np.maximum.accumulate(np.where(new_customer, np.arange(n), 0))
    within = purchases_so_far - purchases_so_far[first_row] + purchase[first_row]
    repurchase = (purchase & (within > 1)).astype(np.int64)
    # np.trunc: toward zero, so a refund takes back the points its value earned.
    points = np.trunc(nets * config.points_per_unit)
    day_starts = np.flatnonzero(new_customer | np.r_[True, days[1:] != days[:-1]])
    day_nets = np.add.reduceat(nets, day_starts).round(VALUE_DECIMALS)
    day_repurchases = np.add.reduceat(repurchase, day_starts)
    day_points = np.add.reduceat(points, day_starts)
    customer_starts = np.flatnonzero(new_customer[day_starts])
    customer_stops = np.r_[customer_starts[1:], len(day_starts)]
    day_list, net_list = days[day_starts].tolist(), day_nets.tolist()
    repurchase_list, point_list = day_repurchases.tolist(), day_points.tolist()
    customer_ids = ids[day_starts[customer_starts]]
    rules = [rule for _, rule in config.ranked_rules()]
    for customer_id, start, stop in zip(customer_ids, customer_starts.tolist(), customer_stops.tolist()):
        customer = _Customer(day_list[start:stop],
                             list(itertools.accumulate(net_list[start:stop], initial=0.0)),
                             list(itertools.accumulate(repurchase_list[start:stop], initial=0)),
                             list(itertools.accumulate(point_list[start:stop], initial=0.0)))
        yield customer_id, _run(customer, as_of_day, config, rules)


EPOCH = dt.date(1970, 1, 1)


def _day(date: str | dt.date) -> int:
    """Days from 1970-01-01 to ``date``."""
    return (as_date(date) - EPOCH).days


def _date(day: int | None) -> dt.date | None:
    return None if day is None else EPOCH + dt.timedelta(days=int(day))


def history_from_orders(orders: pd.DataFrame, as_of: str | dt.date, config: LevelConfig = LevelConfig()) -> pd.DataFrame:
    """The level history at ``as_of`` from a frame of :func:`level_orders` (orders after ``as_of`` are ignored).

    Returns
    -------
    pandas.DataFrame
        One row per level held, customers ascending, rows in time order: ``customer_id``,
        ``level``, ``valid_from`` (date), ``valid_to`` (date, exclusive: the next row's
        ``valid_from``; for the latest row the scheduled expiry, which may be after ``as_of``;
        missing for the base level, which never expires), ``reason`` (:data:`REASONS`).
    """
    names = config.levels
    rows = []
    for customer_id, customer in _customers(orders, _day(as_of), config):
        ends = [row[1] for row in customer.rows[1:]] + [customer.expiry]
        rows.extend((customer_id, names[rank], _date(start), _date(end), reason)
                    for (rank, start, reason), end in zip(customer.rows, ends))
    return pd.DataFrame(rows, columns=list(HISTORY_COLUMNS)).astype(
        {"customer_id": object, "level": object, "valid_from": object, "valid_to": object, "reason": object})


def features_from_orders(orders: pd.DataFrame, as_of: str | dt.date, config: LevelConfig = LevelConfig()) -> pd.DataFrame:
    """The level features at ``as_of`` from a frame of :func:`level_orders` (orders after ``as_of`` are ignored).

    Returns
    -------
    pandas.DataFrame
        One row per customer with an order on or before ``as_of``, ascending:

        - ``membership_level`` (text) and ``membership_level_rank`` (0 for the base level);
        - ``days_at_level``: days since the customer reached the level (renewals and
          extensions do not reset it);
        - ``next_level_spend_gap``, ``next_level_repurchase_gap``: what the qualifying period
          ending at ``as_of`` still lacks for the next level (0 when met: the upgrade comes with
          the next order); missing at the top level;
        - ``days_to_level_expiry``: missing for the base level;
        - ``downgrade_at_risk``: the level expires within ``notice_days`` and the orders that
          will count at its expiry do not yet renew or extend it;
        - ``points_balance``: points earned and not expired (:func:`points_value` for their worth).
    """
    as_of_day = _day(as_of)
    names = config.levels
    ranked = config.ranked_rules()
    records = []
    for customer_id, customer in _customers(orders, as_of_day, config):
        rank = customer.rank
        stint = len(customer.rows) - 1
        while stint > 0 and customer.rows[stint - 1][0] == rank:
            stint -= 1
        window = (as_of_day - config.qualifying_days + 1, as_of_day)
        spend_gap = repurchase_gap = expiry_days = np.nan
        if rank < len(ranked):
            rule = ranked[rank][1]
            spend, repurchases = customer.window(*window)
            spend_gap = max(0.0, rule.min_spend - spend)
            repurchase_gap = float(max(0, rule.min_repurchases - repurchases))
        at_risk = False
        if customer.expiry is not None:
            expiry_days = float(customer.expiry - as_of_day)
            rule = ranked[rank - 1][1]
            # The orders so far that will still be in the qualifying period at expiry.
            spend, repurchases = customer.window(customer.expiry - config.qualifying_days, as_of_day)
            keeps = spend >= rule.min_spend and repurchases >= rule.min_repurchases
            extends = not customer.extended and 0 < rule.extension_repurchases <= repurchases
            at_risk = expiry_days <= config.notice_days and not (keeps or extends)
        first_point_day = as_of_day - config.points_validity_days + 1 if config.points_validity_days else customer.days[0]
        balance = max(0.0, customer.point_sum(first_point_day, as_of_day))
        records.append((customer_id, names[rank], rank, float(as_of_day - customer.rows[stint][1]), spend_gap,
                        repurchase_gap, expiry_days, at_risk, balance))
    return pd.DataFrame(records, columns=["customer_id", *LEVEL_FEATURES]).astype({
        "customer_id": object, "membership_level": object, "membership_level_rank": np.int64,
        "days_at_level": float, "next_level_spend_gap": float, "next_level_repurchase_gap": float,
        "days_to_level_expiry": float, "downgrade_at_risk": bool, "points_balance": float,
    })


def levels_at(history: pd.DataFrame | ir.Table, as_of: str | dt.date) -> pd.DataFrame | ir.Table:
    """The row of each customer's history that holds on ``as_of``: ``valid_from <= as_of``, and
    ``as_of < valid_to`` or no ``valid_to``.

    ``history`` (pandas or Ibis, :data:`HISTORY_COLUMNS`) must be computed at ``as_of`` or later:
    a history at an earlier date does not know what happened to levels that expired in between.
    Customers who joined after ``as_of`` have no row.
    """
    day = as_date(as_of)
    if isinstance(history, pd.DataFrame):
        starts = pd.to_datetime(history["valid_from"])
        ends = pd.to_datetime(history["valid_to"])
        holds = (starts <= pd.Timestamp(day)) & (ends.isna() | (ends > pd.Timestamp(day)))
        return history[holds.to_numpy()].reset_index(drop=True)
    when = ibis.literal(day, type="date")
    return history.filter((history.valid_from <= when) & (history.valid_to.isnull() | (history.valid_to > when)))


# --------------------------------------------------------------------------------------------
# On an engine
# --------------------------------------------------------------------------------------------


def _is_spark(table: ir.Table) -> bool:
    return table.get_backend().name == "pyspark"


def _bucket_pass(kind: str, as_of: dt.date, config: LevelConfig, orders: pd.DataFrame) -> pd.DataFrame:
    """``applyInPandas``: the history or the features of one bucket of customers."""
    frame = (history_from_orders if kind == "history" else features_from_orders)(orders, as_of, config)
    return frame.astype({"customer_id": str}) if len(frame) else frame


def _on_spark(transactions: ir.Table, as_of: dt.date, config: LevelConfig, kind: str) -> ir.Table:
    """The history or the features computed by Spark's executors, as an Ibis view."""
    from functools import partial

    from ibis.util import gen_name
    from pyspark.sql import functions as F

    from churnml.io.spark import spark_frame

    con = transactions.get_backend()
    orders = spark_frame(con, level_orders(transactions, as_of))
    buckets = int(orders.sparkSession.conf.get("spark.sql.shuffle.partitions", "200"))
    # Buckets of customers, not one group each: a pandas call per customer would cost more than its levels.
    grouped = orders.withColumn("_bucket", F.pmod(F.hash("customer_id"), F.lit(buckets))).groupBy("_bucket")
    schema = HISTORY_SCHEMA if kind == "history" else FEATURES_SCHEMA
    result = grouped.applyInPandas(partial(_bucket_pass, kind, as_of, config), schema)
    name = gen_name(f"churnml_levels_{kind}")
    result.createOrReplaceTempView(name)
    return con.table(name)


def level_feature_table(transactions: ir.Table, as_of: str | dt.date, config: LevelConfig = LevelConfig()) -> ir.Table:
    """:func:`features_from_orders` of the transactions at ``as_of``, as a table on their engine.

    On DuckDB the orders come to pandas and the features go back as an in-memory table; on Spark
    the executors compute them (``applyInPandas``) and the result is a lazy view.
    """
    from churnml.features.build import to_frame

    as_of = as_date(as_of)
    if _is_spark(transactions):
        return _on_spark(transactions, as_of, config, "features")
    frame = features_from_orders(to_frame(level_orders(transactions, as_of)), as_of, config)
    return ibis.memtable(frame, schema=_features_ibis_schema())


def _features_ibis_schema() -> ibis.Schema:
    return ibis.schema({
        "customer_id": "string", "membership_level": "string", "membership_level_rank": "int64",
        "days_at_level": "float64", "next_level_spend_gap": "float64", "next_level_repurchase_gap": "float64",
        "days_to_level_expiry": "float64", "downgrade_at_risk": "boolean", "points_balance": "float64",
    })


def level_history(transactions: ir.Table, as_of: str | dt.date, config: LevelConfig = LevelConfig()) -> ir.Table:
    """Every customer's level history at ``as_of`` (:func:`history_from_orders`) as a table on
    the engine of ``transactions``: an in-memory table for DuckDB, a lazy view on Spark.

    Parameters
    ----------
    transactions : ibis.expr.types.Table
        Order lines of the data contract (``customer_id``, ``ts``, ``amount``, optional ``order_id``).
    as_of : str or datetime.date
        Lines after this day are not read.
    config : LevelConfig

    Returns
    -------
    ibis.expr.types.Table
        :data:`HISTORY_COLUMNS`; ``.to_pandas()`` for a frame.
    """
    from churnml.features.build import to_frame

    as_of = as_date(as_of)
    if _is_spark(transactions):
        return _on_spark(transactions, as_of, config, "history")
    frame = history_from_orders(to_frame(level_orders(transactions, as_of)), as_of, config)
    return ibis.memtable(frame, schema=ibis.schema({"customer_id": "string", "level": "string", "valid_from": "date",
                                                    "valid_to": "date", "reason": "string"}))


def add_level_features(table: ir.Table, transactions: ir.Table, as_of: dt.date, config: LevelConfig) -> ir.Table:
    """``table`` (one row per customer) with the level features at ``as_of`` joined on."""
    levels = level_feature_table(transactions, as_of, config)
    return table.left_join(levels, "customer_id").drop("customer_id_right")
