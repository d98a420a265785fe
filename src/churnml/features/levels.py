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

Whatever cannot be a query (the path of levels depends on every earlier step) runs customer by
customer in one loop compiled by numba (on first use; numba's cache keeps it for the next
process), over the orders rolled up by :func:`churnml.features.build.roll_up_orders` and summed
by customer and day in flat arrays: on the driver for DuckDB and on Spark's executors through
``applyInPandas`` (customers grouped into buckets by a hash of their id). Spend is summed in
whole millionths of the currency unit, so sums are exact in any order and a threshold met
exactly is met. Orders after ``as_of`` are never read, so nothing later can change a level at
``as_of``. tests/test_levels_reference.py keeps the rules written one customer and one day at a
time in plain Python, and checks the compiled loop against them.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping

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
    models (README, "Membership levels"), and they add to a feature build a second roll-up of the
    lines to orders, brought out of the engine to the compiled state machine. ``rules`` maps each
    level above ``base_level`` to its :class:`LevelRule`; the levels rank by their thresholds, which must not decrease in either spend or repurchases from one level to
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
    from churnml.features.build import events_until, roll_up_orders

    return level_orders_of(roll_up_orders(events_until(transactions, as_date(as_of))))


def level_orders_of(orders: ir.Table) -> ir.Table:
    """:func:`level_orders` of orders already rolled up from their lines
    (:func:`churnml.features.build.roll_up_orders`: ``customer_id``, ``ts``, ``gross``, ``refund``)."""
    from churnml.features.build import whole_day

    return orders.select(
        "customer_id",
        day=whole_day(orders.ts).cast("int64"),
        net=(orders.gross - orders.refund).cast("float64"),
        purchase=orders.gross > 0,
    )


# --------------------------------------------------------------------------------------------
# The state machine (every customer, compiled)
# --------------------------------------------------------------------------------------------

# Reason codes of the kernel: positions in REASONS.
_FIRST, _UPGRADE, _RENEWAL, _EXTENSION, _DOWNGRADE = range(len(REASONS))
# A day that is none (no expiry): far below any day the data can hold.
_NO_DAY = np.iinfo(np.int64).min
# The columns of the kernel's history rows.
_CUSTOMER, _RANK, _FROM, _TO, _REASON = range(5)


@functools.cache
def _level_kernel() -> Callable[..., tuple]:
    """The state machine over every customer's days (numba, compiled on first use).

    One function without helpers: numba's on-disk cache misses for a function that calls other
    compiled functions through a closure, so the window sums and the moves are written inline.
    """
    import numba

    # cache: the compiled machine is kept in __pycache__, which saves the next process (a Spark
    # executor's among them) the compilation.
    @numba.njit(nogil=True, cache=True)
    def kernel(days, micros, purchase, order, starts, as_of_day, points_per_unit, min_spend, min_repurchases,
               extension_repurchases, extension_days, qualifying_days, validity_days, notice_days,
               points_validity_days):
        n_codes = len(starts) - 1
        top = len(min_spend)
        longest = 0
        for c in range(n_codes):
            longest = max(longest, starts[c + 1] - starts[c])
        # One customer's days with orders, what each day holds, and running totals (entry j: the
        # sum of the days before day j).
        own_days = np.zeros(longest, np.int64)
        day_nets = np.zeros(longest, np.int64)
        day_repurchases = np.zeros(longest, np.int64)
        day_points = np.zeros(longest, np.float64)
        net_totals = np.zeros(longest + 1, np.int64)
        repurchase_totals = np.zeros(longest + 1, np.int64)
        point_totals = np.zeros(longest + 1, np.float64)
        rows = np.empty((2 * n_codes + 16, 5), np.int64)
        n_rows = 0
        present = np.empty(n_codes, np.int64)
        ranks = np.empty(n_codes, np.int64)
        days_at_level = np.empty(n_codes, np.float64)
        spend_gaps = np.full(n_codes, np.nan)
        repurchase_gaps = np.full(n_codes, np.nan)
        expiry_days = np.full(n_codes, np.nan)
        at_risk = np.zeros(n_codes, np.bool_)
        balances = np.empty(n_codes, np.float64)
        k = 0
        for c in range(n_codes):
            # The customer's orders (by day) summed by day; orders after as_of are not read.
            n, purchases = 0, 0
            for p in range(starts[c], starts[c + 1]):
                i = order[p]
                if days[i] > as_of_day:
                    continue
                if n == 0 or own_days[n - 1] != days[i]:
                    own_days[n], day_nets[n], day_repurchases[n], day_points[n] = days[i], 0, 0, 0.0
                    n += 1
                day_nets[n - 1] += micros[i]
                # The first purchase ever is no repurchase.
                if purchase[i]:
                    if purchases > 0:
                        day_repurchases[n - 1] += 1
                    purchases += 1
                # Truncated toward zero, so a refund takes back the points its value earned.
                day_points[n - 1] += np.trunc(micros[i] / 1e6 * points_per_unit)
            if n == 0:
                continue
            own = own_days[:n]
            for j in range(n):
                net_totals[j + 1] = net_totals[j] + day_nets[j]
                repurchase_totals[j + 1] = repurchase_totals[j] + day_repurchases[j]
                point_totals[j + 1] = point_totals[j] + day_points[j]
            if n_rows == rows.shape[0]:
                bigger = np.empty((2 * rows.shape[0], 5), np.int64)
                bigger[:n_rows] = rows[:n_rows]
                rows = bigger
            first_row = n_rows
            rows[n_rows, _CUSTOMER], rows[n_rows, _RANK], rows[n_rows, _FROM] = c, 0, own[0]
            rows[n_rows, _TO], rows[n_rows, _REASON] = _NO_DAY, _FIRST
            n_rows += 1
            rank, expiry, extended, j = 0, _NO_DAY, False, 0
            while True:
                # The next event: an expiry on or before the next day with an order (or as_of),
                # else that day's orders.
                next_day = own[j] if j < n else as_of_day
                if expiry != _NO_DAY and expiry <= next_day:
                    day = expiry
                    start = np.searchsorted(own, day - qualifying_days, side="left")
                    stop = np.searchsorted(own, day - 1, side="right")
                    spend = (net_totals[stop] - net_totals[start]) / 1e6
                    count = repurchase_totals[stop] - repurchase_totals[start]
                    qualified = 0
                    while qualified < top and spend >= min_spend[qualified] and count >= min_repurchases[qualified]:
                        qualified += 1
                    if qualified >= rank:
                        new_rank, reason = qualified, _RENEWAL if qualified == rank else _UPGRADE
                        expiry, extended = day + validity_days, False
                    elif not extended and 0 < extension_repurchases[rank - 1] <= count:
                        new_rank, reason = rank, _EXTENSION
                        expiry, extended = day + extension_days[rank - 1], True
                    else:
                        new_rank, reason = qualified, _DOWNGRADE
                        expiry, extended = (day + validity_days if qualified > 0 else _NO_DAY), False
                elif j < n:
                    day = own[j]
                    j += 1
                    if rank == top:
                        continue
                    start = np.searchsorted(own, day - qualifying_days + 1, side="left")
                    spend = (net_totals[j] - net_totals[start]) / 1e6
                    count = repurchase_totals[j] - repurchase_totals[start]
                    qualified = rank
                    while qualified < top and spend >= min_spend[qualified] and count >= min_repurchases[qualified]:
                        qualified += 1
                    if qualified == rank:
                        continue
                    new_rank, reason = qualified, _UPGRADE
                    expiry, extended = day + validity_days, False
                else:
                    break
                # A level held for no whole day (moved from on the day it began) is left out.
                if rows[n_rows - 1, _FROM] == day:
                    n_rows -= 1
                else:
                    rows[n_rows - 1, _TO] = day
                if n_rows == rows.shape[0]:
                    bigger = np.empty((2 * rows.shape[0], 5), np.int64)
                    bigger[:n_rows] = rows[:n_rows]
                    rows = bigger
                rows[n_rows, _CUSTOMER], rows[n_rows, _RANK], rows[n_rows, _FROM] = c, new_rank, day
                rows[n_rows, _TO], rows[n_rows, _REASON] = _NO_DAY, reason
                n_rows += 1
                rank = new_rank
            rows[n_rows - 1, _TO] = expiry

            # The features at as_of.
            ranks[k] = rank
            stint = n_rows - 1
            while stint > first_row and rows[stint - 1, _RANK] == rank:
                stint -= 1
            days_at_level[k] = as_of_day - rows[stint, _FROM]
            stop = n
            if rank < top:
                start = np.searchsorted(own, as_of_day - qualifying_days + 1, side="left")
                spend = (net_totals[stop] - net_totals[start]) / 1e6
                count = repurchase_totals[stop] - repurchase_totals[start]
                gap = min_spend[rank] - spend
                spend_gaps[k] = gap if gap > 0.0 else 0.0
                repurchase_gaps[k] = max(0, min_repurchases[rank] - count)
            if expiry != _NO_DAY:
                expiry_days[k] = expiry - as_of_day
                # The orders so far that will still be in the qualifying period at expiry.
                start = np.searchsorted(own, expiry - qualifying_days, side="left")
                spend = (net_totals[stop] - net_totals[start]) / 1e6
                count = repurchase_totals[stop] - repurchase_totals[start]
                keeps = spend >= min_spend[rank - 1] and count >= min_repurchases[rank - 1]
                extends = not extended and 0 < extension_repurchases[rank - 1] <= count
                at_risk[k] = expiry - as_of_day <= notice_days and not (keeps or extends)
            first_point_day = as_of_day - points_validity_days + 1 if points_validity_days else own[0]
            start = np.searchsorted(own, first_point_day, side="left")
            balance = point_totals[stop] - point_totals[start]
            balances[k] = balance if balance > 0.0 else 0.0
            present[k] = c
            k += 1
        return (rows[:n_rows], present[:k], ranks[:k], days_at_level[:k], spend_gaps[:k], repurchase_gaps[:k],
                expiry_days[:k], at_risk[:k], balances[:k])

    return kernel


@dataclass(frozen=True)
class _CustomerOrders:
    """Orders grouped by customer in flat arrays: customer ``c``'s orders, by day, are at the
    positions ``order[starts[c]:starts[c + 1]]`` of ``days`` (days since 1970-01-01), ``micros``
    (net value in millionths of the currency unit) and ``purchase``; ``customer_ids`` every id,
    ascending as text (an Arrow array, or a numpy array of ``str``)."""

    customer_ids: Any
    starts: np.ndarray
    order: np.ndarray
    days: np.ndarray
    micros: np.ndarray
    purchase: np.ndarray


def _micros(net: np.ndarray) -> np.ndarray:
    # Millionths of the currency unit as integers: sums in any order are exact, so a threshold
    # met exactly is met and every engine's rows give the same levels.
    return np.rint(net * 10**VALUE_DECIMALS).astype(np.int64)


def _grouped_orders(orders: pd.DataFrame) -> _CustomerOrders:
    """:class:`_CustomerOrders` of a frame of :func:`level_orders` in any row order."""
    days = orders["day"].to_numpy(dtype=np.int64)
    # Ids as text, compared as written (equal texts are one customer whatever their type was):
    # encoded by value, then only the distinct values are made text and sorted.
    codes, values = pd.factorize(orders["customer_id"], use_na_sentinel=False)
    text_codes, customer_ids = pd.factorize(pd.Index(values).astype(str), sort=True)
    codes = text_codes[codes]
    # By customer and day (the order within a day changes none of the day's sums).
    first_day, span = (days.min(), days.max() - days.min() + 1) if len(days) else (0, 1)
    if span * len(customer_ids) < 2**62:
        key = codes * span
        key += days
        key -= first_day
        order = np.argsort(key)
        del key
    else:
        order = np.lexsort((days, codes))
    starts = np.zeros(len(customer_ids) + 1, dtype=np.int64)
    np.cumsum(np.bincount(codes, minlength=len(customer_ids)), out=starts[1:])
    return _CustomerOrders(np.asarray(customer_ids, dtype=object), starts, order, days,
                           _micros(orders["net"].to_numpy(dtype=float)), orders["purchase"].to_numpy(dtype=bool))


def _sorted_orders(orders: Any) -> _CustomerOrders | None:
    """:class:`_CustomerOrders` of an Arrow table of :func:`level_orders` that the engine sorted
    by ``customer_id`` (text) and ``day``: no encoding or sorting left to do. None when its ids
    are not ascending as Python compares text (an engine collating otherwise)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = orders.column("customer_id").combine_chunks().cast(pa.string())
    n = len(ids)
    changes = np.ones(n, dtype=bool)
    if n > 1:
        changes[1:] = pc.not_equal(ids.slice(1), ids.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    firsts = np.flatnonzero(changes)
    customer_ids = ids.take(pa.array(firsts))
    if len(customer_ids) > 1 and not pc.all(pc.less(customer_ids.slice(0, len(customer_ids) - 1),
                                                     customer_ids.slice(1))).as_py():
        return None
    starts = np.append(firsts, n).astype(np.int64)
    net = orders.column("net").to_numpy().astype(float, copy=False)
    return _CustomerOrders(customer_ids, starts, np.arange(n, dtype=np.int64),
                           orders.column("day").to_numpy().astype(np.int64, copy=False), _micros(net),
                           orders.column("purchase").to_numpy().astype(bool, copy=False))


@dataclass(frozen=True)
class _Walk:
    """Every customer walked through the levels up to ``as_of``.

    ``customer_ids`` every id of the orders, ascending (text: Arrow or numpy); ``present`` the
    positions in it of the customers with an order on or before ``as_of``, ascending;
    ``history`` int64 rows of (position in ``customer_ids``, rank, valid_from day, valid_to day
    or ``_NO_DAY``, reason code); ``features`` one array per present customer for each of
    ``membership_level_rank``, ``days_at_level`` and the columns after it.
    """

    customer_ids: Any
    present: np.ndarray
    history: np.ndarray
    features: dict[str, np.ndarray]


def _walk(orders: _CustomerOrders, as_of_day: int, config: LevelConfig) -> _Walk | None:
    """Every customer's orders on or before ``as_of_day`` summed by day and run through the
    kernel; None without such orders."""
    if not (orders.days <= as_of_day).any():
        return None
    rules = [rule for _, rule in config.ranked_rules()]
    history, present, *columns = _level_kernel()(
        orders.days, orders.micros, orders.purchase, orders.order, orders.starts, np.int64(as_of_day),
        float(config.points_per_unit),
        np.array([rule.min_spend for rule in rules], dtype=np.float64),
        np.array([rule.min_repurchases for rule in rules], dtype=np.int64),
        np.array([rule.extension_repurchases for rule in rules], dtype=np.int64),
        np.array([rule.extension_days for rule in rules], dtype=np.int64),
        np.int64(config.qualifying_days), np.int64(config.validity_days), np.int64(config.notice_days),
        np.int64(config.points_validity_days))
    names = ("membership_level_rank", "days_at_level", "next_level_spend_gap", "next_level_repurchase_gap",
             "days_to_level_expiry", "downgrade_at_risk", "points_balance")
    return _Walk(orders.customer_ids, present, history, dict(zip(names, columns)))


EPOCH = dt.date(1970, 1, 1)


def _day(date: str | dt.date) -> int:
    """Days from 1970-01-01 to ``date``."""
    return (as_date(date) - EPOCH).days


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
    return _history_frame(_walk(_grouped_orders(orders), _day(as_of), config), config)


def _history_frame(walk: _Walk | None, config: LevelConfig) -> pd.DataFrame:
    # Object columns (text and datetime.date, None for no expiry), as the frame functions give them.
    return _history_arrow(walk, config).to_pandas(date_as_object=True).astype(object)


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
    return _features_frame(_walk(_grouped_orders(orders), _day(as_of), config), config)


def _features_frame(walk: _Walk | None, config: LevelConfig) -> pd.DataFrame:
    dtypes = {"customer_id": object, "membership_level": object, "membership_level_rank": np.int64,
              "days_at_level": float, "next_level_spend_gap": float, "next_level_repurchase_gap": float,
              "days_to_level_expiry": float, "downgrade_at_risk": bool, "points_balance": float}
    if walk is None:
        return pd.DataFrame({column: pd.Series(dtype=dtype) for column, dtype in dtypes.items()})
    ranks = walk.features["membership_level_rank"]
    ids = np.asarray(walk.customer_ids, dtype=object)
    frame = pd.DataFrame({"customer_id": pd.Series(ids[walk.present], dtype=object, copy=False),
                          "membership_level": pd.Series(np.array(config.levels, dtype=object)[ranks], dtype=object,
                                                        copy=False), **walk.features})
    return frame.astype(dtypes)


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


def _on_spark(orders: ir.Table, as_of: dt.date, config: LevelConfig, kind: str) -> ir.Table:
    """The history or the features of :func:`level_orders` computed by Spark's executors, as an Ibis view."""
    from functools import partial

    from ibis.util import gen_name
    from pyspark.sql import functions as F

    from churnml.io.spark import spark_frame

    con = orders.get_backend()
    orders = spark_frame(con, orders)
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
    as_of = as_date(as_of)
    if _is_spark(transactions):
        return _on_spark(level_orders(transactions, as_of), as_of, config, "features")
    frame = _features_frame(_walk(_engine_orders(level_orders(transactions, as_of)), _day(as_of), config), config)
    return ibis.memtable(frame, schema=_features_ibis_schema())


def _engine_orders(orders: ir.Table) -> _CustomerOrders:
    """A table of :func:`level_orders` brought from its engine (not Spark) to the state machine,
    sorted there by customer and day."""
    fetched = orders.order_by("customer_id", "day").to_pyarrow()
    grouped = _sorted_orders(fetched)
    return grouped if grouped is not None else _grouped_orders(fetched.to_pandas())


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
    return level_history_of_orders(level_orders(transactions, as_of), as_of, config)


def level_history_of_orders(orders: ir.Table, as_of: str | dt.date, config: LevelConfig = LevelConfig()) -> ir.Table:
    """:func:`level_history` from a table of :func:`level_orders` (or :func:`level_orders_of`) on
    its engine, for a caller that has rolled the lines up already; orders after ``as_of`` are
    not read."""
    as_of = as_date(as_of)
    if _is_spark(orders):
        return _on_spark(orders, as_of, config, "history")
    return ibis.memtable(_history_arrow(_walk(_engine_orders(orders), _day(as_of), config), config))


def _history_arrow(walk: _Walk | None, config: LevelConfig) -> Any:
    """The rows of :func:`history_from_orders` as an Arrow table, built without a Python object per value."""
    import pyarrow as pa

    rows = walk.history if walk is not None else np.empty((0, 5), dtype=np.int64)
    ids = walk.customer_ids if walk is not None else pa.array([], pa.string())
    if not isinstance(ids, pa.Array):
        ids = pa.array(ids, pa.string())

    def dates(days: np.ndarray) -> pa.Array:
        missing = days == _NO_DAY
        return pa.array(np.where(missing, 0, days).astype(np.int32), pa.date32(), mask=missing)

    return pa.table({
        "customer_id": ids.take(pa.array(rows[:, _CUSTOMER])),
        "level": pa.array(config.levels, pa.string()).take(pa.array(rows[:, _RANK])),
        "valid_from": dates(rows[:, _FROM]),
        "valid_to": dates(rows[:, _TO]),
        "reason": pa.array(REASONS, pa.string()).take(pa.array(rows[:, _REASON])),
    })


def add_level_features(table: ir.Table, transactions: ir.Table, as_of: dt.date, config: LevelConfig) -> ir.Table:
    """``table`` (one row per customer) with the level features at ``as_of`` joined on."""
    levels = level_feature_table(transactions, as_of, config)
    return table.left_join(levels, "customer_id").drop("customer_id_right")
