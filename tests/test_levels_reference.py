"""The compiled level machine against a plain Python reading of the rules.

:func:`reference_history` and :func:`reference_features` are the rules of
:mod:`churnml.features.levels` written one customer and one day at a time, as the module ran them
before the machine was compiled: the oracle for random customers, where the hand-computed cases
of tests/test_levels.py cannot go. The random customers have refunds, cancelled orders, several
orders a day, orders on the day of ``as_of`` and after it, days before 1970, and amounts that meet
thresholds exactly only when summed to the millionth.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from churnml.features.levels import LevelConfig, LevelRule, features_from_orders, history_from_orders

EPOCH = dt.date(1970, 1, 1)


# --------------------------------------------------------------------------------------------
# The reference
# --------------------------------------------------------------------------------------------


@dataclass
class Customer:
    """One customer's days with orders (ascending), running totals of what they hold (one more
    entry than days), and where the levels took them."""

    days: list[int]
    net_totals: list[float]
    repurchase_totals: list[int]
    point_totals: list[float]
    rows: list[list] = field(default_factory=list)  # [rank, valid_from, reason]
    rank: int = 0
    expiry: int | None = None
    extended: bool = False

    def span(self, first: int, last: int) -> tuple[int, int]:
        return bisect.bisect_left(self.days, first), bisect.bisect_right(self.days, last)

    def window(self, first: int, last: int) -> tuple[float, int]:
        """Net spend (to the millionth) and repurchases of the days ``[first, last]``."""
        start, stop = self.span(first, last)
        return round(self.net_totals[stop] - self.net_totals[start], 6), self.repurchase_totals[stop] - self.repurchase_totals[start]

    def point_sum(self, first: int, last: int) -> float:
        start, stop = self.span(first, last)
        return self.point_totals[stop] - self.point_totals[start]

    def move(self, rank: int, day: int, reason: str) -> None:
        if self.rows and self.rows[-1][1] == day:  # a level held for no whole day
            self.rows.pop()
        self.rows.append([rank, day, reason])
        self.rank = rank


def qualified(spend: float, repurchases: int, rules: list[LevelRule], above: int = 0) -> int:
    rank = above
    while rank < len(rules) and spend >= rules[rank].min_spend and repurchases >= rules[rank].min_repurchases:
        rank += 1
    return rank


def expire(customer: Customer, config: LevelConfig, rules: list[LevelRule]) -> None:
    day = customer.expiry
    spend, repurchases = customer.window(day - config.qualifying_days, day - 1)
    earned = qualified(spend, repurchases, rules)
    rule = rules[customer.rank - 1]
    if earned >= customer.rank:
        customer.move(earned, day, "renewal" if earned == customer.rank else "upgrade")
        customer.expiry, customer.extended = day + config.validity_days, False
    elif not customer.extended and 0 < rule.extension_repurchases <= repurchases:
        customer.move(customer.rank, day, "extension")
        customer.expiry, customer.extended = day + rule.extension_days, True
    else:
        customer.move(earned, day, "downgrade")
        customer.expiry, customer.extended = (day + config.validity_days if earned else None), False


def walk(orders: pd.DataFrame, as_of_day: int, config: LevelConfig) -> dict[str, Customer]:
    """Every customer with an order on or before ``as_of_day``, walked through the levels."""
    rules = [rule for _, rule in config.ranked_rules()]
    customers = {}
    kept = orders[orders["day"] <= as_of_day]
    for customer_id, own in kept.groupby(kept["customer_id"].astype(str), sort=True):
        own = own.sort_values("day", kind="stable")
        by_day: dict[int, list[float]] = {}
        purchases = 0
        for day, net, purchase in zip(own["day"], own["net"], own["purchase"]):
            net = round(float(net), 6)
            repurchase = bool(purchase) and purchases > 0
            purchases += bool(purchase)
            total = by_day.setdefault(int(day), [0.0, 0, 0.0])
            total[0], total[1], total[2] = total[0] + net, total[1] + repurchase, total[2] + math.trunc(net * config.points_per_unit)
        days = sorted(by_day)
        customer = Customer(days, [0.0], [0], [0.0])
        for day in days:
            customer.net_totals.append(customer.net_totals[-1] + round(by_day[day][0], 6))
            customer.repurchase_totals.append(customer.repurchase_totals[-1] + by_day[day][1])
            customer.point_totals.append(customer.point_totals[-1] + by_day[day][2])
        customer.move(0, days[0], "first order")
        for day in days:
            while customer.expiry is not None and customer.expiry <= day:
                expire(customer, config, rules)
            if customer.rank == len(rules):
                continue
            earned = qualified(*customer.window(day - config.qualifying_days + 1, day), rules, customer.rank)
            if earned > customer.rank:
                customer.move(earned, day, "upgrade")
                customer.expiry, customer.extended = day + config.validity_days, False
        while customer.expiry is not None and customer.expiry <= as_of_day:
            expire(customer, config, rules)
        customers[customer_id] = customer
    return customers


def date(day: int | None) -> dt.date | None:
    return None if day is None else EPOCH + dt.timedelta(days=day)


def reference_history(orders: pd.DataFrame, as_of_day: int, config: LevelConfig) -> list[tuple]:
    names = config.levels
    rows = []
    for customer_id, customer in walk(orders, as_of_day, config).items():
        ends = [row[1] for row in customer.rows[1:]] + [customer.expiry]
        rows.extend((customer_id, names[rank], date(start), date(end), reason)
                    for (rank, start, reason), end in zip(customer.rows, ends))
    return rows


def reference_features(orders: pd.DataFrame, as_of_day: int, config: LevelConfig) -> list[tuple]:
    ranked = config.ranked_rules()
    records = []
    for customer_id, customer in walk(orders, as_of_day, config).items():
        rank = customer.rank
        stint = len(customer.rows) - 1
        while stint > 0 and customer.rows[stint - 1][0] == rank:
            stint -= 1
        spend_gap = repurchase_gap = expiry_days = math.nan
        if rank < len(ranked):
            spend, repurchases = customer.window(as_of_day - config.qualifying_days + 1, as_of_day)
            spend_gap = max(0.0, ranked[rank][1].min_spend - spend)
            repurchase_gap = float(max(0, ranked[rank][1].min_repurchases - repurchases))
        at_risk = False
        if customer.expiry is not None:
            expiry_days = float(customer.expiry - as_of_day)
            rule = ranked[rank - 1][1]
            spend, repurchases = customer.window(customer.expiry - config.qualifying_days, as_of_day)
            keeps = spend >= rule.min_spend and repurchases >= rule.min_repurchases
            extends = not customer.extended and 0 < rule.extension_repurchases <= repurchases
            at_risk = expiry_days <= config.notice_days and not (keeps or extends)
        first = as_of_day - config.points_validity_days + 1 if config.points_validity_days else customer.days[0]
        records.append((customer_id, config.levels[rank], rank, float(as_of_day - customer.rows[stint][1]), spend_gap,
                        repurchase_gap, expiry_days, at_risk, max(0.0, customer.point_sum(first, as_of_day))))
    return records


# --------------------------------------------------------------------------------------------
# Random customers
# --------------------------------------------------------------------------------------------

# Short periods, so that a few hundred days go through every rule many times.
SHORT = LevelConfig(
    enabled=True,
    rules={"silver": LevelRule(100.0, 1), "gold": LevelRule(250.0, 3, extension_repurchases=4, extension_days=20),
           "diamond": LevelRule(500.0, 6, extension_repurchases=7, extension_days=90)},
    qualifying_days=60, validity_days=45, notice_days=15, points_per_unit=1.5, points_validity_days=40,
)
ONE_LEVEL = LevelConfig(enabled=True, rules={"member": LevelRule(0.3, 0)}, qualifying_days=7, validity_days=1,
                        notice_days=0, points_per_unit=10.0, points_validity_days=0)
START = -200  # days before 1970 too


def random_orders(seed: int, n_customers: int = 250) -> pd.DataFrame:
    """Orders of :func:`churnml.features.levels.level_orders`' shape for random customers."""
    rng = np.random.default_rng(seed)
    # Amounts that reach the thresholds exactly only when summed to the millionth (0.1 + 0.2),
    # round amounts that reach them exactly, and ordinary ones.
    amounts = np.array([0.1, 0.2, 12.5, 25.0, 33.333333, 33.333334, 50.0, 100.0, 150.0, 0.0])
    rows = []
    for i in range(n_customers):
        day = START + int(rng.integers(0, 300))
        for _ in range(int(rng.integers(1, 40))):
            day += int(rng.choice([0, 0, 1, 5, 15, 44, 45, 46, 60, 100]))
            kind = rng.random()
            if kind < 0.12:  # a refund
                rows.append((f"c{i:03d}", day, -float(rng.choice(amounts[:-1])), False))
            elif kind < 0.16:  # cancelled in full: a purchase of no value
                rows.append((f"c{i:03d}", day, 0.0, True))
            else:
                net = float(rng.choice(amounts[:-1])) if kind < 0.7 else round(float(rng.gamma(2.0, 40.0)), 2)
                rows.append((f"c{i:03d}", day, net, True))
    frame = pd.DataFrame(rows, columns=["customer_id", "day", "net", "purchase"])
    return frame.sample(frac=1.0, random_state=seed, ignore_index=True)  # the machine sorts


def as_of_days(orders: pd.DataFrame) -> list[int]:
    """A day with orders, a day with none, the last day with orders and one past everything."""
    days = np.sort(orders["day"].unique())
    return [int(days[len(days) // 3]), int(days[len(days) // 2]) + 1, int(days[-1]), int(days[-1]) + 500]


def as_history_rows(frame: pd.DataFrame) -> list[tuple]:
    return [(r.customer_id, r.level, r.valid_from, None if pd.isna(r.valid_to) else r.valid_to, r.reason)
            for r in frame.itertuples(index=False)]


@pytest.mark.parametrize("seed", [1, 2])
def test_the_compiled_history_is_the_reference_history(seed):
    orders = random_orders(seed)
    reasons = set()
    for as_of_day in as_of_days(orders):
        expected = reference_history(orders, as_of_day, SHORT)
        got = history_from_orders(orders, EPOCH + dt.timedelta(days=as_of_day), SHORT)
        assert as_history_rows(got) == expected
        reasons |= {row[-1] for row in expected}
    # The random customers go through every rule.
    assert reasons == {"first order", "upgrade", "renewal", "extension", "downgrade"}


@pytest.mark.parametrize("seed", [1, 2])
def test_the_compiled_features_are_the_reference_features(seed):
    orders = random_orders(seed)
    at_risk, levels = 0, set()
    for as_of_day in as_of_days(orders):
        expected = pd.DataFrame(reference_features(orders, as_of_day, SHORT),
                                columns=features_from_orders(orders.head(0), "2024-01-01", SHORT).columns)
        got = features_from_orders(orders, EPOCH + dt.timedelta(days=as_of_day), SHORT)
        pd.testing.assert_frame_equal(got, expected.astype(got.dtypes.to_dict()))
        at_risk += int(expected["downgrade_at_risk"].sum())
        levels |= set(expected["membership_level"])
    assert at_risk > 0 and levels == set(SHORT.levels)


def test_one_level_a_day_long_and_points_that_never_expire():
    # Validity of one day: every day is an expiry; 0.1 + 0.2 meets 0.3 only summed exactly.
    orders = random_orders(3, n_customers=60)
    as_of_day = int(orders["day"].max())
    got = history_from_orders(orders, EPOCH + dt.timedelta(days=as_of_day), ONE_LEVEL)
    assert as_history_rows(got) == reference_history(orders, as_of_day, ONE_LEVEL)
    features = features_from_orders(orders, EPOCH + dt.timedelta(days=as_of_day), ONE_LEVEL)
    expected = pd.DataFrame(reference_features(orders, as_of_day, ONE_LEVEL), columns=features.columns)
    pd.testing.assert_frame_equal(features, expected.astype(features.dtypes.to_dict()))


def test_a_threshold_met_to_the_millionth_is_met():
    # 0.1 + 0.2 is 0.30000000000000004 in floating point and 0.3 to the millionth.
    orders = pd.DataFrame({"customer_id": ["a", "a", "b", "b"], "day": [0, 0, 0, 0],
                           "net": [0.1, 0.2, 0.1, 0.199999], "purchase": [True] * 4})
    history = history_from_orders(orders, EPOCH, ONE_LEVEL)
    assert history[["customer_id", "level"]].values.tolist() == [["a", "member"], ["b", "normal"]]
