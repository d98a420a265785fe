"""The loyalty KPIs, on orders small enough to count by hand."""

from __future__ import annotations

import datetime as dt
import math

import ibis
import numpy as np
import pandas as pd
import pytest

from churnml.errors import UserValueError
from churnml.loyalty import kpis
from churnml.loyalty.kpis import KpiConfig, Period, ProgramTarget
from conftest import frame_dataset

AS_OF = dt.date(2024, 6, 30)
ACTIVE_DAYS = 60


@pytest.fixture
def shop():
    """Four customers, active for 60 days after a purchase (as of 2024-06-30).

    - A buys on Jan 10 (50), Feb 5 (70) and May 20 (40): active Jan 10 - Apr 4, lapses Apr 5,
      back on May 20 (a new spell, not a repurchase).
    - B buys on Jan 15 (100) and returns 30 on Feb 1 (an order of refunds only): lapses Mar 15.
    - C buys on Mar 3 (20) and Mar 20 (one order of two lines, 10 + 20): lapses May 19.
    - D buys after the as_of day only.
    """
    rows = [("A", "2024-01-10", 50.0, "a1"), ("A", "2024-02-05", 70.0, "a2"), ("A", "2024-05-20", 40.0, "a3"),
            ("B", "2024-01-15", 100.0, "b1"), ("B", "2024-02-01", -30.0, "b1r"),
            ("C", "2024-03-03", 20.0, "c1"), ("C", "2024-03-20", 10.0, "c2"), ("C", "2024-03-20", 20.0, "c2"),
            ("D", "2024-07-05", 25.0, "d1")]
    frame = pd.DataFrame(rows, columns=["customer_id", "ts", "amount", "order_id"])
    frame["ts"] = pd.to_datetime(frame["ts"]) + pd.Timedelta(hours=15)
    return frame_dataset(frame)


@pytest.fixture
def activity(shop):
    return kpis.customer_activity(shop.transactions, AS_OF, ACTIVE_DAYS)


def by_month(table: pd.DataFrame, column: str, group: str = "all") -> list:
    rows = table[table["group"] == group].set_index("month")[column]
    return [None if pd.isna(v) else v for v in rows.reindex(pd.date_range("2024-01-01", "2024-06-01", freq="MS"))]


def test_the_base_is_who_was_active_the_day_before_the_month(activity):
    monthly = kpis.monthly_kpis(activity)
    # Jan: nobody before; Feb: A, B; Mar: A, B (B's Jan 15 is within 60 days of Feb 29);
    # Apr: A (Feb 5), C; May: C; Jun: A (May 20).
    assert by_month(monthly, "active_start") == [0, 2, 2, 2, 1, 1]


def test_repurchase_churn_and_order_value_by_month(activity):
    monthly = kpis.monthly_kpis(activity)
    assert list(monthly["month"]) == list(pd.date_range("2024-01-01", "2024-06-01", freq="MS"))
    # Only A's February order is bought by a customer of the month's base: C is new in March,
    # A's May order follows a lapse.
    assert by_month(monthly, "repurchasers") == [0, 1, 0, 0, 0, 0]
    assert by_month(monthly, "repurchase_rate") == [None, 0.5, 0.0, 0.0, 0.0, 0.0]
    # B lapses on Mar 15, A on Apr 5, C on May 19.
    assert by_month(monthly, "churned") == [0, 0, 1, 1, 1, 0]
    assert by_month(monthly, "churn_rate") == [None, 0.0, 0.5, 0.5, 1.0, 0.0]
    assert by_month(monthly, "new_customers") == [2, 0, 1, 0, 0, 0]
    assert by_month(monthly, "buyers") == [2, 1, 1, 0, 1, 0]
    assert by_month(monthly, "orders") == [2, 1, 2, 0, 1, 0]
    # February's revenue is A's 70 less B's refund of 30; March's two orders of C make 50.
    assert by_month(monthly, "revenue") == [150.0, 40.0, 50.0, 0.0, 40.0, 0.0]
    assert by_month(monthly, "aov") == [75.0, 40.0, 25.0, None, 40.0, None]


def test_nothing_after_as_of_counts_and_a_partial_month_is_left_out(shop):
    activity = kpis.customer_activity(shop.transactions, dt.date(2024, 7, 10), ACTIVE_DAYS)
    monthly = kpis.monthly_kpis(activity)
    assert monthly["month"].max() == pd.Timestamp("2024-06-01")
    assert monthly["new_customers"].sum() == 3  # D's July purchase is in no whole month


def test_groups_split_the_counts_and_customers_they_lack_are_new(activity):
    groups = ibis.memtable(pd.DataFrame({"customer_id": ["A", "C"], "group": ["gold", "silver"]}))
    monthly = kpis.monthly_kpis(activity, groups)
    assert set(monthly["group"]) == {"gold", "silver", "new"}
    assert by_month(monthly, "active_start", "gold") == [0, 1, 1, 1, 0, 1]
    assert by_month(monthly, "repurchase_rate", "gold") == [None, 1.0, 0.0, 0.0, None, 0.0]
    assert by_month(monthly, "churned", "new") == [0, 0, 1, 0, 0, 0]
    total = monthly.groupby("month")[["active_start", "churned", "orders"]].sum()
    every = kpis.monthly_kpis(activity).set_index("month")[["active_start", "churned", "orders"]]
    pd.testing.assert_frame_equal(total, every, check_names=False)


def test_a_period_pools_its_months(activity):
    monthly = kpis.monthly_kpis(activity)
    period = Period("current", kpis.month_index(dt.date(2024, 2, 1)), kpis.month_index(dt.date(2024, 4, 1)))
    row = kpis.pooled(monthly, period).loc["all"]
    # Bases 2 + 2 + 2, one repurchase (Feb), two lapses (Mar, Apr); 90 of revenue in 3 orders.
    assert row["active_start"] == 6 and row["repurchasers"] == 1 and row["churned"] == 2
    assert row["repurchase_rate"] == pytest.approx(1 / 6)
    assert row["churn_rate"] == pytest.approx(2 / 6)
    assert row["aov"] == pytest.approx(30.0)


def test_clv_is_the_mean_ltv_overall_by_tier_and_by_level():
    states = pd.DataFrame({"customer_id": ["A", "B", "C", "D"], "tier": ["core", "core", "basic", "basic"],
                           "ltv": [300.0, 100.0, 40.0, None], "membership_level": ["gold", "normal", "normal", "normal"]})
    # D has history but no LTV yet: it counts as 0, so a tier's CLV is over all of its customers.
    assert kpis.clv_by(states).to_dict() == {"all": pytest.approx(110.0)}
    assert kpis.clv_by(states, "tier").to_dict() == {"basic": 20.0, "core": 200.0}
    assert kpis.clv_by(states, "membership_level").to_dict() == {"gold": 300.0, "normal": pytest.approx(140 / 3)}
    assert kpis.clv_by(states.iloc[:0]).empty


def test_cohort_retention(activity):
    cohorts = kpis.cohort_retention(activity)
    table = cohorts.set_index(["cohort", "months_since"])
    january, march = pd.Timestamp("2024-01-01"), pd.Timestamp("2024-03-01")
    assert list(table.index) == [(january, 0), (january, 1), (january, 4), (march, 0)]
    assert list(table["customers"]) == [2, 1, 1, 1]
    assert list(table["cohort_size"]) == [2, 2, 2, 1]
    assert list(table["retention"]) == [1.0, 0.5, 0.5, 1.0]


def test_survey_formulas():
    # 2 promoters (10, 9), 2 passives (8, 7), 2 detractors (6, 0) of 6: 0 points.
    nps, csat, ces = (kpis.SURVEY_FORMULAS[kind] for kind in ("nps", "csat", "ces"))
    assert nps([10, 9, 8, 7, 6, 0]) == 0.0
    assert nps([10, 10, 9, 5]) == pytest.approx(50.0)
    assert nps([0, 3]) == -100.0
    assert csat([5, 4, 3, 1]) == 50.0
    assert ces([2, 4, 6]) == 4.0
    assert all(math.isnan(f([])) for f in (nps, csat, ces))


def test_survey_kpis_by_month_and_by_group_entering_the_period():
    responses = pd.DataFrame({
        "customer_id": ["A", "A", "B", "C", "A", "B", "C"],
        "ts": pd.to_datetime(["2024-01-05", "2024-01-20", "2024-01-21", "2024-02-02", "2024-02-03", "2024-02-10",
                              "2024-07-01"]),
        "kind": ["nps", "csat", "nps", "nps", "ces", "csat", "nps"],
        "score": [10, 5, 3, 9, 2, 3, 0],
    })
    frame = kpis.survey_frame(responses, AS_OF)
    assert len(frame) == 6  # July's response is after as_of
    monthly = kpis.monthly_surveys(frame, AS_OF).set_index("month")
    assert monthly.loc["2024-01-01", "nps"] == 0.0 and monthly.loc["2024-01-01", "nps_responses"] == 2
    assert monthly.loc["2024-02-01", "nps"] == 100.0
    assert monthly.loc["2024-01-01", "csat"] == 100.0 and np.isnan(monthly.loc["2024-01-01", "ces"])
    assert monthly.loc["2024-02-01", "ces"] == 2.0 and monthly.loc["2024-02-01", "ces_responses"] == 1
    period = Period("current", kpis.month_index(dt.date(2024, 1, 1)), kpis.month_index(dt.date(2024, 2, 1)))
    groups = pd.DataFrame({"customer_id": ["A", "B"], "group": ["core", "basic"]})
    grouped = kpis.period_surveys(frame, period, groups)
    assert grouped.loc["core", "nps"] == 100.0 and grouped.loc["core", "ces"] == 2.0
    assert grouped.loc["basic", "nps"] == -100.0 and grouped.loc["basic", "csat"] == 0.0
    assert grouped.loc["new", "nps"] == 100.0  # C had no tier entering the period


def test_progress_against_relative_and_absolute_targets():
    periods = pd.DataFrame([
        {"period": "baseline", "by": "all", "group": "all", "churn_rate": 0.20, "clv": 100.0, "nps": 10.0},
        {"period": "current", "by": "all", "group": "all", "churn_rate": 0.17, "clv": 140.0, "nps": 40.0},
        {"period": "baseline", "by": "tier", "group": "core", "repurchase_rate": 0.40},
        {"period": "current", "by": "tier", "group": "core", "repurchase_rate": 0.50},
    ])
    progress = kpis.target_progress(periods, kpis.default_targets()).set_index("target")
    core = progress.loc["core_repurchase"]
    # 0.40 -> 0.50 is +25 % of the +45 % aimed for; the goal is 0.40 x 1.45.
    assert core["achieved"] == pytest.approx(0.25) and core["progress"] == pytest.approx(0.25 / 0.45)
    assert core["goal"] == pytest.approx(0.58) and not core["met"]
    churn = progress.loc["churn"]
    assert churn["achieved"] == pytest.approx(-0.15) and churn["progress"] == pytest.approx(0.5) and not churn["met"]
    nps = progress.loc["nps"]
    assert nps["achieved"] == 30.0 and nps["met"] and nps["goal"] == 35.0
    clv = progress.loc["clv"]
    assert clv["achieved"] == pytest.approx(0.40) and clv["met"]


def test_a_target_without_data_is_not_met():
    periods = pd.DataFrame([{"period": "baseline", "by": "all", "group": "all", "churn_rate": 0.2},
                            {"period": "current", "by": "all", "group": "all", "churn_rate": 0.1}])
    progress = kpis.target_progress(periods, {"nps": ProgramTarget("nps", 25, relative=False),
                                              "churn": ProgramTarget("churn_rate", -0.3)}).set_index("target")
    assert np.isnan(progress.loc["nps", "current"]) and not progress.loc["nps", "met"]
    assert progress.loc["churn", "met"]  # -50 % passes -30 %


def test_periods_default_to_the_last_whole_months_and_the_same_number_before():
    baseline, current = kpis.program_periods(dt.date(2025, 12, 31), dt.date(2023, 1, 1), KpiConfig())
    assert (current.start, current.end) == (dt.date(2025, 1, 1), dt.date(2025, 12, 31))
    assert (baseline.start, baseline.end) == (dt.date(2024, 1, 1), dt.date(2024, 12, 31))
    assert baseline.classified_on == dt.date(2023, 12, 31)
    # A partial last month is left out; 18 whole months of data give two periods of 9.
    baseline, current = kpis.program_periods(dt.date(1998, 7, 15), dt.date(1997, 1, 1), KpiConfig())
    assert (current.start, current.end) == (dt.date(1997, 10, 1), dt.date(1998, 6, 30))
    assert (baseline.start, baseline.end) == (dt.date(1997, 1, 1), dt.date(1997, 9, 30))
    given = KpiConfig(baseline_start="2024-03-15", baseline_end="2024-05-02", period_months=2)
    baseline, current = kpis.program_periods(dt.date(2025, 12, 31), dt.date(2023, 1, 1), given)
    assert (baseline.start, baseline.end) == (dt.date(2024, 3, 1), dt.date(2024, 5, 31))
    assert (current.start, current.end) == (dt.date(2025, 11, 1), dt.date(2025, 12, 31))


@pytest.mark.parametrize("settings, message", [
    ({"active_days": 20}, "kpis.active_days=20"),
    ({"baseline_start": "2024-01-01"}, "together"),
    ({"baseline_start": "2024-13-01", "baseline_end": "2024-12-31"}, "kpis.baseline_start=2024-13-01 is not a date"),
    ({"targets": {"x": {"kpi": "revenue", "change": 0.1}}}, "kpis.targets.x.kpi=revenue"),
    ({"targets": {"x": {"kpi": "nps", "change": 5, "tier": "core", "level": "gold"}}}, "both tier and level"),
])
def test_config_mistakes_are_refused_with_the_key(settings, message):
    with pytest.raises(UserValueError, match=message.replace("(", r"\(")):
        KpiConfig.from_dict(settings)


def test_a_baseline_overlapping_the_current_period_is_refused():
    config = KpiConfig(baseline_start="2025-01-01", baseline_end="2025-06-30")
    with pytest.raises(UserValueError, match="must end before the current period"):
        kpis.program_periods(dt.date(2025, 12, 31), dt.date(2023, 1, 1), config)


@pytest.mark.slow
def test_levels_from_one_history_are_the_level_features_of_each_day():
    from churnml.features.build import FeatureConfig, build_features
    from churnml.features.levels import LevelConfig, LevelRule
    from churnml.simulate import simulate_shop

    lines = simulate_shop(n_customers=300, start="2023-01-01", end="2024-12-31", seed=5)["transactions"]
    dataset = frame_dataset(lines)
    # Short periods, so that levels change hands within the two years.
    levels = LevelConfig(enabled=True, rules={"silver": LevelRule(150.0, 1), "gold": LevelRule(400.0, 4, 5, 30)},
                         qualifying_days=120, validity_days=120)

    def features_on(day: dt.date) -> pd.DataFrame:
        table = build_features(dataset, day, FeatureConfig(levels=levels))
        return table.select("customer_id", "membership_level").to_pyarrow().to_pandas()

    as_of = dt.date(2024, 12, 31)
    from_history = kpis.program_kpis(dataset, as_of, KpiConfig(), FeatureConfig(levels=levels))
    day_by_day = kpis.program_kpis(dataset, as_of, KpiConfig(), FeatureConfig(), levels_on=features_on)
    assert from_history.level_history is not None and day_by_day.level_history is None
    by_level = from_history.periods[from_history.periods["by"] == "level"]
    assert {"normal", "silver", "gold"} <= set(by_level["group"])
    pd.testing.assert_frame_equal(from_history.periods, day_by_day.periods)
    assert from_history.migrations.keys() == day_by_day.migrations.keys() == {"tier", "level"}
    for name in from_history.migrations:
        pd.testing.assert_frame_equal(from_history.migrations[name], day_by_day.migrations[name])


@pytest.fixture(scope="module")
def simulated():
    from churnml.simulate import simulate_shop

    lines = simulate_shop(n_customers=400, start="2023-01-01", end="2024-12-31", seed=11)["transactions"]
    return frame_dataset(lines)


def spells_order_by_order(orders: pd.DataFrame, active_days: int) -> pd.DataFrame:
    """The spells of the module's definition, walked purchase by purchase."""
    rows = []
    purchases = orders[orders["gross"] > 0].sort_values(["customer_id", "day"], kind="stable")
    for customer, own in purchases.groupby("customer_id"):
        start, previous = None, None
        for purchase in own.itertuples():
            if previous is not None and purchase.day - previous.day >= active_days:
                rows.append((customer, start, previous.ts + pd.Timedelta(days=active_days)))
                start = None
            start = purchase.month if start is None else start
            previous = purchase
        rows.append((customer, start, previous.ts + pd.Timedelta(days=active_days)))
    spells = pd.DataFrame(rows, columns=["customer_id", "start_month", "lapse"])
    spells["lapse_month"] = spells["lapse"].dt.year * 12 + spells["lapse"].dt.month - 1
    return spells.drop(columns="lapse")


@pytest.mark.parametrize("active_days", [31, 90, 180])
def test_spells_found_among_months_are_the_spells_of_the_orders(simulated, active_days):
    as_of = dt.date(2024, 12, 31)
    orders = kpis.dated_orders(simulated.transactions, as_of).to_pyarrow().to_pandas()
    activity = kpis.customer_activity(simulated.transactions, as_of, active_days)
    got = activity.spells.to_pyarrow().to_pandas().sort_values(["customer_id", "start_month"], ignore_index=True)
    expected = spells_order_by_order(orders, active_days)
    assert len(expected) > orders["customer_id"].nunique()  # some customers come back after a lapse
    pd.testing.assert_frame_equal(got[expected.columns], expected, check_dtype=False)
    # A repurchase is a month with a purchase that starts no spell.
    months = activity.months.to_pyarrow().to_pandas()
    starts = set(zip(expected["customer_id"], expected["start_month"]))
    bought = months[months["orders"] > 0]
    assert (bought["repurchase"] == [(c, m) not in starts for c, m in zip(bought["customer_id"], bought["month"])]).all()
    assert not months.loc[months["orders"] == 0, "repurchase"].any()


def test_the_kpis_of_some_months_are_those_months_of_every_month(simulated):
    activity = kpis.customer_activity(simulated.transactions, dt.date(2024, 12, 31), 90)
    ids = activity.months.select("customer_id").distinct().to_pyarrow().to_pandas()["customer_id"]
    groups = ibis.memtable(pd.DataFrame({"customer_id": ids[::3], "group": "third"}))
    first, last = kpis.month_index(dt.date(2024, 3, 1)), kpis.month_index(dt.date(2024, 8, 1))
    for by in (None, groups):
        every = kpis.monthly_kpis(activity, by)
        some = kpis.monthly_kpis(activity, by, months=(first, last))
        inside = every[(every["month"] >= "2024-03-01") & (every["month"] <= "2024-08-01")].reset_index(drop=True)
        assert some["active_start"].sum() > 0 and set(some["group"]) == set(every["group"])
        pd.testing.assert_frame_equal(some, inside)
