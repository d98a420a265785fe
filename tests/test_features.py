"""Point-in-time features: hand-computed values on a tiny table, flags, tiers, and leakage."""

from __future__ import annotations

import datetime as dt
import math

import ibis
import numpy as np
import pandas as pd
import pytest

from churnml.features import build as features
from churnml.features.build import FeatureConfig, build_features
from churnml.features.segments import TIERS, SegmentConfig, lifetime_value, purchases_per_year
from conftest import frame_dataset

CUTOFF = "2024-06-30"


def features_at(dataset, cutoff=CUTOFF, config=FeatureConfig()) -> pd.DataFrame:
    return build_features(dataset, cutoff, config).to_pandas().set_index("customer_id")


@pytest.fixture
def tiny_features(tiny_transactions, tiny_interactions, tiny_customers) -> pd.DataFrame:
    return features_at(frame_dataset(tiny_transactions, tiny_interactions, tiny_customers))


def test_one_row_per_customer_with_history(tiny_features):
    assert sorted(tiny_features.index) == ["A", "B", "C"]
    assert (tiny_features["cutoff"] == pd.Timestamp(CUTOFF)).all()


def test_rfm_and_gaps_by_hand(tiny_features):
    a, b, c = (tiny_features.loc[k] for k in "ABC")
    assert (a.recency_days, a.tenure_days, a.frequency, a.repeat_orders) == (0, 90, 4, 3)
    assert (a.monetary_total, a.avg_order_value, a.max_order_value) == (400, 100, 100)
    assert (a.mean_gap_days, a.gap_std_days, a.last_gap_days) == (30, 0, 30)
    assert (a.days_overdue, a.overdue_ratio) == (-30, 0)
    assert a.items_per_order == pytest.approx(1.5)

    assert (a.purchase_span_days, a.purchase_age_days) == (90, 90)
    assert (b.recency_days, b.tenure_days, b.frequency, b.monetary_total) == (150, 273, 4, 650)
    assert (b.purchase_span_days, b.purchase_age_days) == (123, 273)
    assert b.avg_order_value == pytest.approx(162.5)
    assert b.mean_gap_days == pytest.approx(41)
    assert b.gap_std_days == pytest.approx(math.sqrt((10**2 + 11**2 + 21**2) / 3))
    assert b.last_gap_days == pytest.approx(62)
    assert b.days_overdue == pytest.approx(109)
    assert b.overdue_ratio == pytest.approx(150 / 41)

    assert (c.frequency, c.recency_days, c.tenure_days) == (1, 29, 29)
    assert np.isnan(c.mean_gap_days) and np.isnan(c.gap_std_days)


def test_refunds_by_hand(tiny_features):
    c = tiny_features.loc["C"]
    assert (c.monetary_total, c.refund_amount, c.n_refunds, c.net_spend) == (80, 40, 1, 40)
    assert c.refund_rate == pytest.approx(0.5)
    assert c.items_per_order == pytest.approx(4)
    assert tiny_features.loc["A", "refund_amount"] == 0


def test_windows_and_trends_by_hand(tiny_features):
    a = tiny_features.loc["A"]
    # The 90-day window is 2024-04-02..2024-06-30, so the order of 2024-04-01 falls outside it.
    assert (a.orders_30d, a.orders_90d, a.orders_180d, a.orders_365d) == (1, 3, 4, 4)
    assert (a.spend_30d, a.spend_90d, a.spend_365d) == (100, 300, 400)
    assert a.orders_trend_30_90 == pytest.approx((1 / 30) / (3 / 90))
    # A has been a customer for 91 days: rates in longer windows are taken over those 91 days.
    assert a.orders_trend_90_180 == pytest.approx((3 / 90) / (4 / 91))
    assert a.orders_trend_180_365 == pytest.approx(1.0)
    b = tiny_features.loc["B"]
    assert (b.orders_90d, b.spend_90d) == (0, 0)
    assert b.orders_trend_30_90 is None or np.isnan(b.orders_trend_30_90)


def test_breadth_by_hand(tiny_features):
    assert tiny_features.loc["A", "n_categories"] == 2
    assert tiny_features.loc["A", "n_channels"] == 2
    assert tiny_features.loc["B", "n_categories"] == 1


def breadth_of(dataset, cutoff, values) -> pd.DataFrame:
    """n_categories and n_channels: listed values from the order features, the others from the lines."""
    table = features.order_features(dataset.transactions, cutoff, features.FeatureConfig(), values)
    lines = features.line_features(dataset.transactions, cutoff, values)
    if lines is not None:
        table = table.left_join(lines, "customer_id").drop("customer_id_right")
    frame = features.to_frame(table.select("customer_id", "n_categories", "n_channels"))
    return frame.set_index("customer_id").sort_index()


def test_breadth_counts_the_same_with_value_masks_and_with_distinct(tiny_transactions):
    frame = tiny_transactions.copy()
    frame.loc[len(frame)] = ("C", pd.Timestamp("2024-06-12"), -5.0, "c2r", -1, "garden", "store")  # a refund: not bought
    frame.loc[len(frame)] = ("B", pd.Timestamp("2024-01-05"), 10.0, "b5", 1, None, None)  # unknown category
    dataset = frame_dataset(frame)
    values = {c: features.breadth_values(dataset.transactions, c) for c in ("category", "channel")}
    # Values bought only after the cutoff are listed; they count nowhere at the cutoff.
    assert values == {"category": ["books", "electronics", "grocery", "home", "toys"], "channel": ["app", "store", "web"]}
    assert features.breadth_values(dataset.transactions, "category", limit=4) is None
    cutoff = dt.date.fromisoformat(CUTOFF)
    assert features.line_features(dataset.transactions, cutoff, values) is None
    expected = pd.DataFrame({"n_categories": [2, 1, 1], "n_channels": [2, 1, 1]}, index=pd.Index(["A", "B", "C"], name="customer_id"))
    for listed in (values, {"category": None, "channel": None}, {"category": values["category"], "channel": None}):
        pd.testing.assert_frame_equal(breadth_of(dataset, cutoff, listed), expected, check_dtype=False)


def test_breadth_counts_every_bit_of_the_longest_listed_column():
    n = features.MAX_FLAGGED_VALUES
    many = pd.DataFrame({
        "customer_id": ["M"] * n + ["N", "N"], "ts": pd.Timestamp("2024-03-01"), "amount": 5.0,
        "order_id": [f"m{i}" for i in range(n)] + ["n1", "n2"], "quantity": 1,
        "category": [f"cat{i:02d}" for i in range(n)] + ["cat61", "cat61"], "channel": "web"})
    dataset = frame_dataset(many)
    cutoff = dt.date.fromisoformat(CUTOFF)
    values = {c: features.breadth_values(dataset.transactions, c) for c in ("category", "channel")}
    assert len(values["category"]) == n
    by_mask = breadth_of(dataset, cutoff, values)
    assert (by_mask.loc["M", "n_categories"], by_mask.loc["N", "n_categories"]) == (n, 1)
    pd.testing.assert_frame_equal(by_mask, breadth_of(dataset, cutoff, {"category": None, "channel": None}),
                                  check_dtype=False)


def test_breadth_values_are_queried_once_per_data_set(tiny_transactions, monkeypatch):
    dataset = frame_dataset(tiny_transactions)
    queried = []
    original = features.breadth_values
    monkeypatch.setattr(features, "breadth_values", lambda table, column, *a: queried.append(column) or original(table, column, *a))
    first = features_at(dataset, "2024-05-31")
    second = features_at(dataset, CUTOFF)
    assert sorted(queried) == ["category", "channel"]
    assert (first.loc["A", "n_categories"], second.loc["A", "n_categories"]) == (2, 2)
    assert dataset.facts["breadth_values"]["channel"] == ["app", "store", "web"]


def test_a_customer_with_refunds_only_bought_in_no_category(tiny_transactions):
    frame = pd.concat([tiny_transactions, pd.DataFrame({
        "customer_id": ["E"], "ts": pd.to_datetime(["2024-06-02"]), "amount": [-20.0], "order_id": ["e1"],
        "quantity": [-1], "category": ["toys"], "channel": ["web"]})], ignore_index=True)
    e = features_at(frame_dataset(frame)).loc["E"]
    assert (e.frequency, e.n_categories, e.n_channels) == (0, 0, 0)


def test_interactions_by_hand(tiny_features):
    a, b, c = (tiny_features.loc[k] for k in "ABC")
    assert (a.n_interactions, a.interactions_90d, a.interactions_30d) == (6, 6, 6)
    assert (a.login_90d, a.visit_90d, a.email_open_90d, a.support_ticket_90d) == (3, 2, 1, 0)
    assert a.days_since_interaction == 0
    month = 365.25 / 12
    assert a.interactions_per_month == pytest.approx(6 / (90 / month))
    assert b.interactions_per_month == pytest.approx(1 / (90 / month))
    # C has been known for 30 days only.
    assert c.interactions_per_month == pytest.approx(2 / (30 / month))
    assert a.interaction_trend == pytest.approx(3.0)
    peer_mean = np.mean([a.interactions_per_month, b.interactions_per_month, c.interactions_per_month])
    assert a.peer_interactions_per_month == pytest.approx(peer_mean)
    assert (a.low_interaction, b.low_interaction, c.low_interaction) == (False, True, False)


def test_customer_attributes_and_signup(tiny_features):
    assert tiny_features.loc["A", "days_since_signup"] == 121
    assert tiny_features.loc["C", "region"] == "north"
    assert "signup_ts" not in tiny_features.columns


def test_warning_flags_by_hand(tiny_transactions):
    dataset = frame_dataset(tiny_transactions)
    at_june = features_at(dataset)
    assert bool(at_june.loc["B", "no_repurchase_3m"]) and not bool(at_june.loc["A", "no_repurchase_3m"])
    # On 2024-03-31, B's last 90 days hold the order of 50; the 90 days before, two orders of 200.
    at_march = features_at(dataset, "2024-03-31")
    b = at_march.loc["B"]
    assert (b.aov_recent, b.aov_previous) == (50, 200)
    assert b.aov_change == pytest.approx(-0.75)
    assert bool(b.order_value_drop_40)
    assert not bool(at_june.loc["A", "order_value_drop_40"])


def test_order_value_drop_threshold_is_strict(tiny_transactions):
    frame = tiny_transactions.copy()
    frame.loc[(frame.customer_id == "B") & (frame.order_id == "b4"), "amount"] = 120.0  # exactly 40% below 200
    at_march = features_at(frame_dataset(frame), "2024-03-31")
    assert not bool(at_march.loc["B", "order_value_drop_40"])
    frame.loc[(frame.customer_id == "B") & (frame.order_id == "b4"), "amount"] = 119.99
    assert bool(features_at(frame_dataset(frame), "2024-03-31").loc["B", "order_value_drop_40"])


def test_no_interaction_or_customer_columns_without_those_tables(tiny_transactions):
    columns = set(features_at(frame_dataset(tiny_transactions)).columns)
    assert not {"n_interactions", "low_interaction", "interactions_per_month", "days_since_signup"} & columns
    assert {"recency_days", "tier", "ltv", "value_segment", "no_repurchase_3m", "order_value_drop_40"} <= columns


def test_orders_without_order_id_group_lines_with_the_same_timestamp(tiny_transactions):
    frame = tiny_transactions.drop(columns=["order_id"])
    a = features_at(frame_dataset(frame)).loc["A"]
    assert (a.frequency, a.avg_order_value) == (4, 100)


def test_configured_windows_change_the_columns(tiny_transactions):
    config = FeatureConfig(windows_days=(14, 365), order_value_window_days=60)
    columns = set(features_at(frame_dataset(tiny_transactions), config=config).columns)
    assert {"orders_14d", "spend_365d", "orders_trend_14_365"} <= columns
    assert "orders_30d" not in columns


def test_windows_must_increase():
    with pytest.raises(ValueError, match="increasing"):
        FeatureConfig(windows_days=(90, 30))


# --- tiers, LTV ---------------------------------------------------------------------------

def test_ltv_is_net_order_value_times_yearly_purchases_times_years():
    # Net spend per order: 300 / 6 = 50; 80 / 1; refunds above purchases count as no value; no order.
    frame = pd.DataFrame({"net_spend": [300.0, 80.0, -20.0, 0.0], "frequency": [6, 1, 2, 0],
                          "orders_365d": [6, 1, 2, 0], "tenure_days": [400.0, 9.0, 400.0, 400.0]})
    table = ibis.memtable(frame)
    con = ibis.duckdb.connect()
    config = SegmentConfig(ltv_expected_years=3.0, min_rate_exposure_days=90)
    rates = con.execute(purchases_per_year(table, config).name("r")).tolist()
    assert rates == pytest.approx([6.0, 365 / 90, 2.0, 0.0])
    ltv = con.execute(lifetime_value(table, config).name("l")).tolist()
    assert ltv == pytest.approx([50 * 6 * 3, 80 * 365 / 90 * 3, 0.0, 0.0])


def test_every_customer_gets_a_tier_and_segment(tiny_features):
    assert set(tiny_features["tier"]) <= set(TIERS)
    assert tiny_features["value_segment"].notna().all()
    assert tiny_features.loc["A", "value_segment"].startswith("high_value")


def test_tiers_of_the_tiny_shop_by_hand(tiny_features):
    # Relative minimums over A (net 400, 3 repurchases), B (650, 3) and C (80 less a refund of 40, 0):
    # core 550 and 3, potential 400 and 3, basic 184 and 1.2. A: 6 interactions in 90 days, 2.03 a
    # month (potential needs 1, core 650); B: 1 in 90 days, 0.34 a month; C bought 29 days ago.
    assert tiny_features["tier"].to_dict() == {"A": "potential", "B": "basic", "C": "new"}


def test_the_usual_gap_is_the_own_mean_gap_else_the_peers_median(tiny_features):
    # A every 30 days; B 123 days over 3 gaps; C one purchase: the median of 30 and 41.
    assert tiny_features["usual_gap_days"].to_dict() == pytest.approx({"A": 30.0, "B": 41.0, "C": 35.5})


# --- leakage -----------------------------------------------------------------------------

def _after_cutoff_changed(table: pd.DataFrame, cutoff: pd.Timestamp, rng: np.random.Generator) -> pd.DataFrame:
    """The same table with every event after the cutoff altered, and new ones added after it."""
    table = table.copy()
    later = table["ts"] >= cutoff + pd.Timedelta(days=1)
    if "amount" in table:
        table.loc[later, "amount"] = rng.uniform(-50, 500, later.sum()).round(2)
    if "kind" in table:
        table.loc[later, "kind"] = "support_ticket"
    extra = table.sample(n=min(len(table), 300), random_state=1).copy()
    extra["ts"] = cutoff + pd.to_timedelta(rng.integers(1, 200, len(extra)), unit="D") + pd.Timedelta(hours=3)
    newcomers = extra.head(20).copy()
    newcomers["customer_id"] = [f"NEW{i}" for i in range(len(newcomers))]
    return pd.concat([table, extra, newcomers], ignore_index=True)


def test_data_after_the_cutoff_changes_no_feature(small_shop):
    cutoff = pd.Timestamp("2024-03-31")
    rng = np.random.default_rng(0)
    tx, inter, cust = small_shop["transactions"], small_shop["interactions"], small_shop["customers"]
    base = features_at(frame_dataset(tx, inter, cust), cutoff.date())
    changed = features_at(
        frame_dataset(
            _after_cutoff_changed(tx, cutoff, rng), _after_cutoff_changed(inter, cutoff, rng), cust
        ),
        cutoff.date(),
    )
    assert len(base) > 500
    pd.testing.assert_frame_equal(base.sort_index(), changed.sort_index(), check_exact=False, rtol=1e-12)


def test_events_on_the_cutoff_day_count_and_the_next_day_does_not(tiny_transactions):
    frame = tiny_transactions.copy()
    late = pd.DataFrame({"customer_id": ["A", "A"], "ts": pd.to_datetime(["2024-06-30 23:59:59", "2024-07-01 00:00:00"]),
                         "amount": [10.0, 999.0], "order_id": ["a5", "a6"], "quantity": [1, 1],
                         "category": ["x", "y"], "channel": ["web", "web"]})
    a = features_at(frame_dataset(pd.concat([frame, late], ignore_index=True))).loc["A"]
    assert (a.frequency, a.monetary_total, a.n_categories) == (5, 410, 3)


# --- inputs of real extracts -----------------------------------------------------------------

def load_text(tmp_path, text: str, **options):
    from churnml.io.load import LoadOptions, TableSource, connect, load_dataset

    path = tmp_path / "tx.csv"
    path.write_text(text)
    return load_dataset(TableSource(path=str(path)), options=LoadOptions(**options), con=connect())


LINES_WITHOUT_ORDER_IDS = """customer_id,ts,amount,order_id
S1,2024-01-15 11:00:00,50,W-1001
S1,2024-03-10 16:30:00,20,
S1,2024-05-28 12:05:00,35,
S2,2024-02-01 09:00:00,15,
S2,2024-06-25 09:00:00,15,
"""


def test_a_line_without_order_id_is_an_order_of_its_own(tmp_path):
    # as_of 2024-06-30; frequency counts orders (repeat_orders the ones after the first).
    table = features_at(load_text(tmp_path, LINES_WITHOUT_ORDER_IDS), "2024-06-30")
    s1, s2 = table.loc["S1"], table.loc["S2"]
    assert (s2.frequency, s2.repeat_orders, s2.recency_days, s2.monetary_total) == (2, 1, 5, 30)
    assert s2.mean_gap_days == pytest.approx(145)  # 2024-02-01 09:00 to 2024-06-25 09:00
    assert (s1.frequency, s1.recency_days, s1.monetary_total, s1.avg_order_value) == (3, 33, 105, 35)


def test_lines_without_order_id_are_purchases_of_their_own_in_the_label_window(tmp_path):
    from churnml.features.labels import purchases_in_window

    dataset = load_text(tmp_path, LINES_WITHOUT_ORDER_IDS)
    counts = purchases_in_window(dataset.transactions, "2024-01-31", 180).to_pandas()
    assert dict(zip(counts["customer_id"], counts["n_purchases"])) == {"S1": 2, "S2": 2}


CANCELLED_IN_FULL = """order_id,customer_id,ts,amount,quantity
541001,X1,2011-01-18 10:01:00,77183.60,74215
C541003,X1,2011-01-18 10:17:00,-77183.60,-74215
100,Y1,2011-01-10 09:00:00,100,1
200,Y2,2010-12-01 09:00:00,50,1
201,Y2,2011-01-05 09:00:00,50,1
300,Y3,2011-01-12 09:00:00,30,3
C301,Y3,2011-01-14 09:00:00,-10,-1
"""


def test_an_order_cancelled_in_full_has_no_value(tmp_path):
    from churnml.features.segments import predicted_value_segment

    # as_of 2011-01-31, 3 expected years, purchases per year over at least 90 days of exposure.
    table = features_at(load_text(tmp_path, CANCELLED_IN_FULL), "2011-01-31")
    x1 = table.loc["X1"]
    assert (x1.frequency, x1.net_spend, x1.ltv) == (1, 0, 0)
    assert x1.tier == "new"  # bought 13 days before as_of; tiers of net value: test_tiers_rank_net_annual_spend
    assert x1.value_segment.startswith("low_value")
    assert table["ltv"].to_dict() == pytest.approx({
        "X1": 0.0,
        "Y1": 100 * 365 / 90 * 3,
        "Y2": 50 * 2 * 365 / 90 * 3,
        "Y3": 20 * 365 / 90 * 3,  # 30 less the refund of 10
    })
    # The score-time segment reads the same LTV.
    segments = predicted_value_segment(table["ltv"], np.array([0.9, 0.1, 0.5, 0.2]))
    assert segments[list(table.index).index("X1")].startswith("low_value")


def test_tiers_rank_net_annual_spend(tmp_path):
    # Five orders of 1,100 since January (four repurchases), one refunded in June: 5,500 gross
    # would be "core" (5,000 and four repurchases); 4,400 net is "potential".
    rows = "".join(f"o{i},C,2024-0{i}-10 10:00:00,1100\n" for i in range(1, 6))
    text = "order_id,customer_id,ts,amount\n" + rows + "r1,C,2024-06-01 10:00:00,-1100\n"
    absolute = FeatureConfig(segments=SegmentConfig(thresholds="absolute"))
    c = features_at(load_text(tmp_path, text), "2024-06-30", absolute).loc["C"]
    assert (c.spend_365d, c.net_spend, c.frequency) == (5500, 4400, 5)
    assert c.tier == "potential"


def test_no_value_is_never_high_value():
    from churnml.features.segments import value_segment

    table = ibis.memtable(pd.DataFrame({"ltv": [0.0, 0.0, 0.0, 10.0], "trend": [1.0, 0.5, 1.0, 1.0]}))
    threshold = table.ltv.quantile(0.5).over(ibis.window())  # 0: most customers have no value
    segments = ibis.duckdb.connect().execute(value_segment(table.ltv, table.trend, threshold).name("s")).tolist()
    assert segments == ["low_value_high_potential", "low_value_low_potential", "low_value_high_potential",
                        "high_value_high_potential"]
