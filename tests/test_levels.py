"""Membership levels: every rule computed by hand on a few customers, points, the features at a
date, leakage, the config's refusals and the public functions of churnml.loyalty.levels.

The rules used by hand (days counted from 2024-01-01, day 0):

- silver: net spend >= 100 and >= 1 repurchase in the 100 days ending the day; no extension;
- gold: >= 300 and >= 3 repurchases; at expiry, 4 repurchases keep it 30 days longer;
- a level holds 100 days; at risk within 20 days of expiry; 2 points per currency unit, valid 50 days.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from churnml.errors import UserError
from churnml.features.build import FeatureConfig, build_features, to_frame
from churnml.features.levels import (
    LEVEL_FEATURES,
    LevelConfig,
    LevelRule,
    _sorted_orders,
    features_from_orders,
    history_from_orders,
    level_feature_table,
    level_orders,
    points_value,
)
from churnml.loyalty.levels import level_history, level_history_of_orders, level_orders_of, levels_at
from conftest import frame_dataset

DAY0 = dt.date(2024, 1, 1)
RULES = LevelConfig(
    enabled=True,
    rules={"silver": LevelRule(100.0, 1), "gold": LevelRule(300.0, 3, extension_repurchases=4, extension_days=30)},
    qualifying_days=100, validity_days=100, notice_days=20, points_per_unit=2.0, points_validity_days=50,
)


def day(n: int) -> dt.date:
    return DAY0 + dt.timedelta(days=n)


def orders(*rows: tuple) -> pd.DataFrame:
    """Orders as :func:`churnml.features.levels.level_orders` gives them: (customer, day, net[, purchase])."""
    records = [(c, (day(d) - dt.date(1970, 1, 1)).days, float(net), purchase[0] if purchase else net > 0)
               for c, d, net, *purchase in rows]
    return pd.DataFrame(records, columns=["customer_id", "day", "net", "purchase"])


def history_rows(frame: pd.DataFrame, customer: str) -> list[tuple]:
    rows = frame[frame["customer_id"] == customer]
    return [(r.level, r.valid_from, None if pd.isna(r.valid_to) else r.valid_to, r.reason) for r in rows.itertuples()]


def features_of(frame: pd.DataFrame, as_of: int, customer: str, config: LevelConfig = RULES) -> dict:
    table = features_from_orders(frame, day(as_of), config).set_index("customer_id")
    return table.loc[customer].to_dict()


# --------------------------------------------------------------------------------------------
# Upgrade
# --------------------------------------------------------------------------------------------

SILVER = orders(("A", 0, 60), ("A", 10, 50))


def test_an_upgrade_comes_on_the_day_the_qualifying_period_meets_the_level():
    # Day 10: 110 spent and one repurchase in the 100 days -> silver, valid to day 110.
    assert history_rows(history_from_orders(SILVER, day(20), RULES), "A") == [
        ("normal", day(0), day(10), "first order"),
        ("silver", day(10), day(110), "upgrade"),
    ]


def test_the_features_of_a_new_silver_member():
    got = features_of(SILVER, 20, "A")
    assert (got["membership_level"], got["membership_level_rank"], got["days_at_level"]) == ("silver", 1, 10.0)
    # Gold needs 300 and 3 repurchases: 300 - 110 and 3 - 1 are still missing.
    assert (got["next_level_spend_gap"], got["next_level_repurchase_gap"]) == (190.0, 2.0)
    assert got["days_to_level_expiry"] == 90.0
    assert not got["downgrade_at_risk"]
    assert got["points_balance"] == 2 * 60 + 2 * 50


def test_spend_alone_does_not_upgrade_without_repurchases():
    got = features_of(orders(("B", 0, 500)), 5, "B")
    assert got["membership_level"] == "normal"
    assert (got["next_level_spend_gap"], got["next_level_repurchase_gap"]) == (0.0, 1.0)
    assert np.isnan(got["days_to_level_expiry"])


def test_a_level_held_for_no_whole_day_is_left_out():
    # Two orders on the first day: one of them is a repurchase, and the day qualifies for silver.
    frame = orders(("C", 0, 80), ("C", 0, 40))
    assert history_rows(history_from_orders(frame, day(0), RULES), "C") == [("silver", day(0), day(100), "upgrade")]


def test_an_upgrade_can_pass_a_level_and_refunds_lower_the_spend_but_take_back_no_level():
    frame = orders(("D", 0, 100), ("D", 1, 100), ("D", 2, 100), ("D", 3, 10), ("D", 4, -200))
    assert history_rows(history_from_orders(frame, day(10), RULES), "D") == [
        ("normal", day(0), day(1), "first order"),
        ("silver", day(1), day(3), "upgrade"),
        ("gold", day(3), day(103), "upgrade"),  # 310 and 3 repurchases on day 3
    ]
    got = features_of(frame, 10, "D")
    assert got["membership_level"] == "gold" and np.isnan(got["next_level_spend_gap"])
    # 2 points per unit: 200 + 200 + 200 + 20, less the 400 the refund takes back.
    assert got["points_balance"] == 220.0


# --------------------------------------------------------------------------------------------
# Expiry: downgrade, renewal, extension
# --------------------------------------------------------------------------------------------


def test_a_level_not_earned_again_is_lost_at_expiry():
    # At day 110 the 100 days before it hold only day 10's 50: nothing qualifies.
    assert history_rows(history_from_orders(SILVER, day(120), RULES), "A")[-2:] == [
        ("silver", day(10), day(110), "upgrade"),
        ("normal", day(110), None, "downgrade"),
    ]
    got = features_of(SILVER, 120, "A")
    assert (got["membership_level"], got["days_at_level"]) == ("normal", 10.0)
    assert np.isnan(got["days_to_level_expiry"]) and not got["downgrade_at_risk"]


def test_the_day_before_expiry_is_still_at_the_level():
    got = features_of(SILVER, 109, "A")
    assert (got["membership_level"], got["days_to_level_expiry"]) == ("silver", 1.0)


def test_downgrade_at_risk_within_the_notice_when_what_counts_at_expiry_falls_short():
    # Expiry on day 110; what will count then (days 10..) is 50 < 100.
    assert not features_of(SILVER, 85, "A")["downgrade_at_risk"]  # 25 days left > 20
    assert features_of(SILVER, 95, "A")["downgrade_at_risk"]  # 15 days left


def test_a_level_earned_again_is_renewed_and_its_members_are_not_at_risk():
    frame = pd.concat([SILVER, orders(("A", 80, 60))], ignore_index=True)
    assert history_rows(history_from_orders(frame, day(120), RULES), "A")[-2:] == [
        ("silver", day(10), day(110), "upgrade"),
        ("silver", day(110), day(210), "renewal"),  # days 10..109: 110 spent, 2 repurchases
    ]
    assert not features_of(frame, 100, "A")["downgrade_at_risk"]
    # Renewals do not reset the days at the level.
    assert features_of(frame, 120, "A")["days_at_level"] == 110.0


GOLD_THEN_FEW = orders(("E", 0, 100), ("E", 1, 100), ("E", 2, 100), ("E", 3, 10),
                       ("E", 60, 5), ("E", 70, 5), ("E", 80, 5))


def test_enough_repurchases_extend_a_level_once():
    # Day 103: days 3..102 hold 25 and 4 repurchases: not gold again, but 4 repurchases extend
    # gold by 30 days; day 133: days 33..132 hold 15 and 3 repurchases: no second extension.
    assert history_rows(history_from_orders(GOLD_THEN_FEW, day(140), RULES), "E")[2:] == [
        ("gold", day(3), day(103), "upgrade"),
        ("gold", day(103), day(133), "extension"),
        ("normal", day(133), None, "downgrade"),
    ]
    during = features_of(GOLD_THEN_FEW, 120, "E")
    assert (during["membership_level"], during["days_at_level"], during["days_to_level_expiry"]) == ("gold", 117.0, 13.0)
    assert during["downgrade_at_risk"], "an extended level can only be renewed, and 15 is far from 300"


def test_without_the_extension_repurchases_gold_is_lost():
    frame = GOLD_THEN_FEW[GOLD_THEN_FEW["day"] != GOLD_THEN_FEW["day"].max()]
    assert history_rows(history_from_orders(frame, day(140), RULES), "E")[-1] == ("normal", day(103), None, "downgrade")


def test_a_downgrade_goes_to_the_level_the_period_still_earns():
    frame = orders(("F", 0, 100), ("F", 1, 100), ("F", 2, 100), ("F", 3, 10), ("F", 90, 150))
    # Day 103: days 3..102 hold 160 and 2 repurchases: silver, for a new 100 days.
    assert history_rows(history_from_orders(frame, day(110), RULES), "F")[-1] == ("silver", day(103), day(203), "downgrade")
    assert features_of(frame, 110, "F")["days_at_level"] == 7.0


# --------------------------------------------------------------------------------------------
# Points
# --------------------------------------------------------------------------------------------


def test_points_expire_after_their_validity():
    # 2 points per unit, valid 50 days: on day 55 only day 10's 100 points are left; on day 60 none.
    assert features_of(SILVER, 55, "A")["points_balance"] == 100.0
    assert features_of(SILVER, 60, "A")["points_balance"] == 0.0


def test_points_are_whole_and_never_negative():
    frame = orders(("G", 0, 10.75), ("G", 1, -30.0, False))
    assert features_of(frame, 0, "G")["points_balance"] == 21.0  # 21.5 points truncated
    assert features_of(frame, 1, "G")["points_balance"] == 0.0  # 21 - 60, not below 0


def test_points_never_expire_with_a_validity_of_zero():
    config = LevelConfig(points_validity_days=0, points_per_unit=1.0)
    assert features_of(SILVER, 400, "A", config)["points_balance"] == 110.0


def test_a_balance_redeems_in_whole_blocks():
    # 100 points = 10.
    assert points_value(250) == 20.0 and points_value(99) == 0.0 and points_value(-5) == 0.0
    np.testing.assert_array_equal(points_value(np.array([100.0, 1000.0])), [10.0, 100.0])
    assert points_value(250, LevelConfig(redeem_points=50, redeem_value=1.0)) == 5.0


# --------------------------------------------------------------------------------------------
# From transactions, point in time
# --------------------------------------------------------------------------------------------


def transactions(*rows: tuple) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["customer_id", "ts", "amount", "order_id"])
    frame["ts"] = pd.to_datetime(frame["ts"], format="ISO8601")
    return frame


LINES = transactions(
    ("H", "2024-01-01 09:00", 40.0, "h1"), ("H", "2024-01-01 09:00", 30.0, "h1"),  # one order of 70
    ("H", "2024-01-20 18:00", 50.0, "h2"),
    ("H", "2024-01-25 08:00", -60.0, "h2r"),  # a refund of its own
    ("K", "2024-02-01 12:00", 500.0, "k1"), ("K", "2024-02-01 12:00", -500.0, "k1"),  # cancelled in full
    ("K", "2024-02-03 12:00", 120.0, "k2"),
)


def test_the_history_reads_orders_at_their_net_value():
    dataset = frame_dataset(LINES)
    history = to_frame(level_history(dataset.transactions, "2024-02-10", RULES))
    # H: 70 + 50 on Jan 20 (one repurchase) -> silver; the refund does not take it back.
    assert history_rows(history, "H") == [("normal", dt.date(2024, 1, 1), dt.date(2024, 1, 20), "first order"),
                                          ("silver", dt.date(2024, 1, 20), dt.date(2024, 4, 29), "upgrade")]
    # K: the cancelled order is a purchase of no value; 120 two days later makes silver.
    assert history_rows(history, "K")[-1] == ("silver", dt.date(2024, 2, 3), dt.date(2024, 5, 13), "upgrade")
    features = to_frame(build_features(dataset, "2024-02-10", FeatureConfig(levels=RULES))).set_index("customer_id")
    assert features.loc["H", "next_level_spend_gap"] == 300.0 - 60.0
    assert features.loc["H", "points_balance"] == 2 * (70 + 50 - 60)


def test_transactions_after_as_of_cannot_change_the_level_features():
    as_of = "2024-01-22"
    later = transactions(("H", "2024-01-23 00:00", 5000.0, "h3"), ("H", "2024-01-24", 5000.0, "h4"),
                         ("N", "2024-03-01", 10.0, "n1"))
    before = LINES[LINES["ts"] < pd.Timestamp(as_of) + pd.Timedelta(days=1)]
    config = FeatureConfig(levels=RULES)
    expected = to_frame(build_features(frame_dataset(before), as_of, config))
    got = to_frame(build_features(frame_dataset(pd.concat([LINES, later], ignore_index=True)), as_of, config))
    pd.testing.assert_frame_equal(got[["customer_id", *LEVEL_FEATURES]], expected[["customer_id", *LEVEL_FEATURES]])
    # And the pandas function ignores later orders handed to it.
    rows = orders(("A", 0, 60), ("A", 10, 50), ("A", 21, 5000), ("A", 22, 5000))
    pd.testing.assert_frame_equal(features_from_orders(rows, day(20), RULES), features_from_orders(SILVER, day(20), RULES))
    pd.testing.assert_frame_equal(history_from_orders(rows, day(20), RULES), history_from_orders(SILVER, day(20), RULES))


def test_the_features_of_a_date_are_those_of_the_history_at_that_date():
    frame = pd.concat([SILVER, GOLD_THEN_FEW, orders(("F", 0, 100), ("F", 1, 100), ("F", 2, 100), ("F", 90, 150))])
    for as_of in (5, 50, 103, 125, 200):
        now = levels_at(history_from_orders(frame, day(as_of), RULES), day(as_of)).set_index("customer_id")["level"]
        features = features_from_orders(frame, day(as_of), RULES).set_index("customer_id")["membership_level"]
        assert now.sort_index().to_dict() == features.sort_index().to_dict()


def test_the_engine_sorts_the_orders_and_computes_what_the_frame_functions_compute():
    from churnml.features.build import orders_until
    from churnml.simulate import simulate_shop

    shop = simulate_shop(n_customers=300, start="2023-06-01", end="2024-06-30", seed=3)["transactions"]
    # Ids whose order as text is not their order as numbers or by case: upper before lower, and
    # letters beyond ASCII last.
    odd = {"C0000001": "10", "C0000002": "9", "C0000003": "a", "C0000004": "Z", "C0000005": "é"}
    shop["customer_id"] = shop["customer_id"].replace(odd)
    lines = pd.concat([shop, LINES.assign(quantity=1, category="toys", channel="web")], ignore_index=True)
    transactions = frame_dataset(lines).transactions
    as_of = "2024-03-31"
    frame = to_frame(level_orders(transactions, as_of))
    expected = history_from_orders(frame, as_of, RULES)
    assert set(odd.values()) <= set(expected["customer_id"]) and expected["customer_id"].is_monotonic_increasing
    got = to_frame(level_history(transactions, as_of, RULES)).astype({"customer_id": object, "level": object,
                                                                        "reason": object})
    pd.testing.assert_frame_equal(got, expected)
    # The same from orders rolled up elsewhere (as the KPIs do), and the features.
    rolled = level_history_of_orders(level_orders_of(orders_until(transactions, day(10_000))), as_of, RULES)
    pd.testing.assert_frame_equal(to_frame(rolled).astype(got.dtypes.to_dict()), got)
    features = to_frame(level_feature_table(transactions, as_of, RULES)).astype({"customer_id": object,
                                                                                  "membership_level": object})
    pd.testing.assert_frame_equal(features, features_from_orders(frame, as_of, RULES))


def test_rows_the_engine_collated_otherwise_take_the_general_path():
    import pyarrow as pa

    rows = pa.table({"customer_id": ["b", "a"], "day": [1, 2], "net": [10.0, 20.0], "purchase": [True, True]})
    assert _sorted_orders(rows) is None
    grouped = _sorted_orders(rows.take([1, 0]))
    assert grouped.customer_ids.to_pylist() == ["a", "b"] and grouped.starts.tolist() == [0, 1, 2]


def test_levels_at_reads_pandas_and_ibis_histories_alike():
    history = level_history(frame_dataset(LINES).transactions, "2024-02-10", RULES)
    expected = {"H": "silver", "K": "silver"}
    assert dict(zip(*levels_at(to_frame(history), "2024-02-10")[["customer_id", "level"]].T.values)) == expected
    on_ibis = levels_at(history, "2024-02-10").to_pandas()
    assert dict(zip(on_ibis["customer_id"], on_ibis["level"])) == expected
    before = levels_at(to_frame(history), "2024-01-19")
    assert before[["customer_id", "level"]].values.tolist() == [["H", "normal"]]  # K had not joined


def test_levels_are_off_unless_configured(tiny_transactions):
    dataset = frame_dataset(tiny_transactions)
    assert not set(LEVEL_FEATURES) & set(build_features(dataset, "2024-06-30").columns)
    config = FeatureConfig.from_dict({"levels": {"enabled": True}})
    assert set(LEVEL_FEATURES) <= set(build_features(dataset, "2024-06-30", config).columns)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def test_default_levels_rank_normal_silver_gold_diamond():
    assert LevelConfig().levels == ("normal", "silver", "gold", "diamond")
    # Ranked by thresholds, whatever order the config lists them in.
    reordered = LevelConfig.from_dict({"rules": {"top": {"min_spend": 900, "min_repurchases": 4},
                                                 "mid": {"min_spend": 90, "min_repurchases": 1}}})
    assert reordered.levels == ("normal", "mid", "top")


@pytest.mark.parametrize("settings, words", [
    ({"rules": {"a": {"min_spend": 100, "min_repurchases": 5}, "b": {"min_spend": 200, "min_repurchases": 2}}},
     "features.levels.rules.b needs more spend but fewer repurchases than a"),
    ({"rules": {"a": {"min_spend": 100, "min_repurchases": 1, "extension_repurchases": 2}}},
     "features.levels.rules.a: extension_repurchases=2 needs extension_days > 0"),
    ({"rules": {"a": {"min_spend": 100}}}, "features.levels.rules.a needs min_spend and min_repurchases"),
    ({"rules": {"normal": {"min_spend": 100, "min_repurchases": 1}}}, "features.levels.rules.normal: the base level"),
    ({"validity_days": 0}, "features.levels.validity_days=0: give a positive number"),
    ({"points_per_unit": -1}, "features.levels.points_per_unit=-1: give 0 or more"),
    ({"tiers": {}}, "features.levels has unknown keys ['tiers']"),
])
def test_rules_the_levels_cannot_work_with_are_refused_naming_the_key(settings, words):
    with pytest.raises(UserError, match=None) as error:
        FeatureConfig.from_dict({"levels": settings})
    assert words in str(error.value) and "\n" not in str(error.value)


# --------------------------------------------------------------------------------------------
# The playbook
# --------------------------------------------------------------------------------------------


def test_members_at_risk_of_a_downgrade_get_a_renewal_reminder():
    from churnml.scoring import policy

    rows = pd.DataFrame([
        ("core", "high_value_high_potential", "high", 10.0, True),    # an account manager comes first
        ("dormant", "low_value_low_potential", "high", 50.0, True),   # so does a win-back
        ("basic", "low_value_high_potential", "medium", 12.0, True),  # before the replenishment reminder
        ("basic", "low_value_high_potential", "medium", 12.0, False),
        ("basic", "low_value_low_potential", "low", np.nan, None),    # unknown: not at risk
    ], columns=["tier", "predicted_value_segment", "risk_band", "days_past_usual_gap", "downgrade_at_risk"])
    assert policy.recommend_actions(rows).tolist() == [
        "dedicated account manager", "win-back offer", "renewal reminder", "replenishment reminder", "nurture email"]
    # Without level features nobody is at risk.
    assert policy.recommend_actions(rows.drop(columns="downgrade_at_risk"))[2] == "replenishment reminder"
    config = policy.ScoringConfig.from_dict({"playbook": {"keep": {"action": "call", "downgrade_at_risk": False}}})
    assert policy.recommend_actions(rows, config.playbook, "none").tolist() == ["none", "none", "none", "call", "call"]


def test_the_level_mix_lists_every_level():
    from churnml.loyalty.levels import level_mix

    history = level_history(frame_dataset(LINES).transactions, "2024-02-10", RULES)
    mix = level_mix(history, "2024-01-25", RULES)  # H silver since Jan 20; K not yet a customer
    assert mix.to_dict("list") == {"level": ["normal", "silver", "gold"], "customers": [0, 1, 0], "share": [0.0, 1.0, 0.0]}
    assert level_mix(to_frame(history), "2024-02-10", RULES)["customers"].tolist() == [0, 2, 0]
    assert level_mix(to_frame(history), "2023-12-31", RULES)["share"].tolist() == [0.0, 0.0, 0.0]
