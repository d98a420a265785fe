"""Tests for the synthetic shop simulator."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from churnml.simulate import (
    CAMPAIGN_COST_PER_CONTACT,
    CAMPAIGN_WINDOW_DAYS,
    CATEGORIES,
    CHANNELS,
    INTERACTION_KINDS,
    SURVEY_CHANNELS,
    simulate_shop,
    write_shop,
)

START, END = pd.Timestamp("2023-01-01"), pd.Timestamp("2025-12-31")
MID = START + (END - START) / 2
N_CUSTOMERS = 5_000

TRANSACTION_COLUMNS = ["customer_id", "ts", "amount", "order_id", "quantity", "category", "channel"]
INTERACTION_COLUMNS = ["customer_id", "ts", "kind", "channel"]
CUSTOMER_COLUMNS = ["customer_id", "signup_ts", "region", "age", "acquisition_channel"]
SURVEY_COLUMNS = ["customer_id", "ts", "kind", "score", "channel"]
TREATMENT_COLUMNS = ["customer_id", "ts", "campaign", "group", "cost", "channel"]
TRUTH_COLUMNS = ["customer_id", "campaign", "group", "ts", "repurchased_if_treated", "repurchased_if_control",
                 "revenue_if_treated", "revenue_if_control", "response_probability"]
WINDOW = pd.Timedelta(days=CAMPAIGN_WINDOW_DAYS)


@pytest.fixture(scope="module")
def shop() -> dict[str, pd.DataFrame]:
    return simulate_shop(N_CUSTOMERS, start=str(START.date()), end=str(END.date()), seed=7)


@pytest.fixture(scope="module")
def orders(shop) -> pd.DataFrame:
    """One row per sale order: customer, time and total value."""
    sales = shop["transactions"].query("amount > 0")
    return (
        sales.groupby("order_id", sort=False)
        .agg(customer_id=("customer_id", "first"), ts=("ts", "first"), value=("amount", "sum"))
        .reset_index()
    )


def _welch_t(a: pd.Series, b: pd.Series) -> float:
    return (a.mean() - b.mean()) / np.sqrt(a.var() / len(a) + b.var() / len(b))


# ---------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------


def test_same_seed_gives_identical_frames():
    first = simulate_shop(800, seed=11)
    second = simulate_shop(800, seed=11)
    assert first.keys() == second.keys() == {"transactions", "interactions", "customers", "surveys", "treatments"}
    for name in first:
        pd.testing.assert_frame_equal(first[name], second[name])
    # Asking for the truth changes no table, and the truth is reproducible too.
    with_truth = simulate_shop(800, seed=11, truth=True)
    assert with_truth.keys() == first.keys() | {"campaign_truth"}
    for name in first:
        pd.testing.assert_frame_equal(with_truth[name], first[name])
    pd.testing.assert_frame_equal(with_truth["campaign_truth"], simulate_shop(800, seed=11, truth=True)["campaign_truth"])


def test_different_seed_gives_different_frames():
    first = simulate_shop(800, seed=11)["transactions"]
    second = simulate_shop(800, seed=12)["transactions"]
    assert len(first) != len(second) or not first.equals(second)


# ---------------------------------------------------------------------------
# Data contract
# ---------------------------------------------------------------------------


def test_transactions_follow_contract(shop):
    tx = shop["transactions"]
    assert list(tx.columns) == TRANSACTION_COLUMNS
    for column in ("customer_id", "order_id", "category", "channel"):
        assert pd.api.types.is_string_dtype(tx[column]), column
    assert pd.api.types.is_datetime64_dtype(tx["ts"]) and tx["ts"].dt.tz is None
    assert tx["amount"].dtype == np.float64
    assert pd.api.types.is_integer_dtype(tx["quantity"])
    assert np.allclose(tx["amount"], tx["amount"].round(2), rtol=0, atol=1e-9)
    assert tx["customer_id"].str.fullmatch(r"C\d{7}").all()
    assert set(tx["category"]) == set(CATEGORIES)
    assert set(tx["channel"]) == set(CHANNELS)
    assert tx["ts"].is_monotonic_increasing
    assert tx["ts"].dt.hour.nunique() > 12, "timestamps need a time of day"
    assert tx["customer_id"].isin(shop["customers"]["customer_id"]).all()


def test_interactions_follow_contract(shop):
    it = shop["interactions"]
    assert list(it.columns) == INTERACTION_COLUMNS
    for column in ("customer_id", "kind", "channel"):
        assert pd.api.types.is_string_dtype(it[column]), column
    assert pd.api.types.is_datetime64_dtype(it["ts"]) and it["ts"].dt.tz is None
    assert set(it["kind"]) == set(INTERACTION_KINDS)
    assert set(it["channel"]) <= set(CHANNELS)
    assert it["ts"].is_monotonic_increasing
    assert it["customer_id"].isin(shop["customers"]["customer_id"]).all()


def test_surveys_follow_contract(shop):
    surveys = shop["surveys"]
    assert list(surveys.columns) == SURVEY_COLUMNS
    for column in ("customer_id", "kind", "channel"):
        assert pd.api.types.is_string_dtype(surveys[column]), column
    assert pd.api.types.is_datetime64_dtype(surveys["ts"]) and surveys["ts"].dt.tz is None
    assert surveys["score"].dtype == np.int64
    assert set(surveys["kind"]) == {"nps", "csat", "ces"}
    scales = {"nps": (0, 10), "csat": (1, 5), "ces": (1, 7)}
    for kind, (low, high) in scales.items():
        assert surveys.loc[surveys["kind"] == kind, "score"].between(low, high).all(), kind
    assert set(surveys["channel"]) <= set(SURVEY_CHANNELS)
    assert surveys["ts"].is_monotonic_increasing
    assert surveys["customer_id"].isin(shop["customers"]["customer_id"]).all()


def test_customers_follow_contract(shop):
    customers = shop["customers"]
    assert list(customers.columns) == CUSTOMER_COLUMNS
    assert len(customers) == N_CUSTOMERS
    assert customers["customer_id"].is_unique
    assert pd.api.types.is_string_dtype(customers["customer_id"])
    assert pd.api.types.is_datetime64_dtype(customers["signup_ts"])
    assert isinstance(customers["region"].dtype, pd.CategoricalDtype)
    assert 3 <= customers["region"].nunique() <= 8
    assert isinstance(customers["acquisition_channel"].dtype, pd.CategoricalDtype)
    assert customers["age"].dtype == "Int64"
    assert 0 < customers["age"].isna().mean() < 0.2
    assert customers["age"].dropna().between(18, 100).all()


# ---------------------------------------------------------------------------
# Time window
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "column"),
    [("transactions", "ts"), ("interactions", "ts"), ("customers", "signup_ts"), ("surveys", "ts")],
)
def test_timestamps_stay_inside_period(shop, table, column):
    ts = shop[table][column]
    assert ts.min() >= START
    assert ts.max() < END


def test_period_end_is_respected_for_other_windows():
    start, end = pd.Timestamp("2024-03-15 12:00"), pd.Timestamp("2024-06-10 08:30")
    tables = simulate_shop(300, start=str(start), end=str(end), seed=1)
    time_columns = {"transactions": "ts", "interactions": "ts", "customers": "signup_ts", "surveys": "ts"}
    for name, column in time_columns.items():
        ts = tables[name][column]
        assert ts.min() >= start, name
        assert ts.max() < end, name


@pytest.mark.parametrize("table", ["transactions", "interactions", "surveys"])
def test_signup_precedes_activity(shop, table):
    first_seen = shop[table].groupby("customer_id")["ts"].min().rename("first_seen")
    joined = shop["customers"].set_index("customer_id").join(first_seen, how="inner")
    assert len(joined) > 0.5 * N_CUSTOMERS
    assert (joined["signup_ts"] <= joined["first_seen"]).all()


def test_signups_spread_over_period_with_more_early(shop):
    signup = shop["customers"]["signup_ts"]
    first_half = (signup < MID).mean()
    assert 0.55 < first_half < 0.85
    assert (signup > END - pd.Timedelta(days=180)).any()


# ---------------------------------------------------------------------------
# Orders, lines and refunds
# ---------------------------------------------------------------------------


def test_orders_have_one_to_four_lines(shop):
    sales = shop["transactions"].query("amount > 0")
    lines_per_order = sales.groupby("order_id").size()
    assert len(sales) > 1.3 * len(lines_per_order)
    assert lines_per_order.between(1, 4).all()
    assert lines_per_order.le(2).mean() > 0.7
    per_order = sales.groupby("order_id")[["customer_id", "ts", "channel"]].nunique()
    assert (per_order == 1).all().all(), "lines of one order share customer, time and channel"


def test_no_two_rows_are_identical(shop):
    """Loaders drop exact duplicate rows, so the simulator must not produce any."""
    for name in ("transactions", "interactions", "surveys"):
        assert not shop[name].duplicated().any(), name


def test_refunds_are_negative_lines_with_own_order_ids(shop, orders):
    tx = shop["transactions"]
    refunds = tx[tx["amount"] < 0]
    assert refunds["order_id"].str.startswith("R").all()
    assert tx.loc[tx["amount"] > 0, "order_id"].str[0].isin(["O", "C"]).all()
    assert refunds["order_id"].is_unique
    assert not set(refunds["order_id"]) & set(orders["order_id"])
    assert (refunds["quantity"] < 0).all()
    assert 0.03 <= len(refunds) / len(orders) <= 0.06


def test_each_refund_follows_a_matching_sale_line(shop):
    tx = shop["transactions"]
    refunds = tx[tx["amount"] < 0].reset_index(names="refund_row")
    sales = tx[tx["amount"] > 0]
    pairs = refunds.merge(sales, on=["customer_id", "category"], suffixes=("", "_sale"))
    delay = pairs["ts"] - pairs["ts_sale"]
    matches = (
        (delay >= pd.Timedelta(days=1))
        & (delay <= pd.Timedelta(days=60))
        & (pairs["amount_sale"] + 1e-9 >= -pairs["amount"])
        & (pairs["channel_sale"] == pairs["channel"])
    )
    matched = pairs.loc[matches, "refund_row"].unique()
    assert len(refunds) > 0
    assert set(matched) == set(refunds["refund_row"])


def test_order_values_are_realistic_with_long_tail(orders):
    assert 40 <= orders["value"].mean() <= 80
    assert orders["value"].median() < orders["value"].mean()
    in_2024 = orders[orders["ts"].dt.year == 2024]
    annual_spend = in_2024.groupby("customer_id")["value"].sum()
    assert annual_spend.quantile(0.99) > 1_000
    assert annual_spend.median() < 1_000


# ---------------------------------------------------------------------------
# Behaviour the churn model relies on
# ---------------------------------------------------------------------------


def test_a_good_share_of_early_customers_stop_buying(orders):
    span = orders.groupby("customer_id")["ts"].agg(["min", "max"])
    early = span[span["min"] < START + pd.Timedelta(days=180)]
    stopped = (early["max"] < END - pd.Timedelta(days=180)).mean()
    assert 0.25 <= stopped <= 0.6


def test_order_value_declines_before_customers_stop(orders):
    """Relative to their own past, stoppers' last 90 active days have lower order values.

    Customers who keep buying serve as the comparison group.
    """
    span = orders.groupby("customer_id")["ts"].agg(first="min", last="max")
    history = orders.join(span, on="customer_id")
    history = history[history["first"] < MID]
    recent = history["ts"] > history["last"] - pd.Timedelta(days=90)
    mean_value = history.groupby(["customer_id", recent])["value"].mean().unstack().dropna()
    log_ratio = np.log(mean_value[True] / mean_value[False])
    stopped = span.loc[log_ratio.index, "last"] < END - pd.Timedelta(days=180)

    assert stopped.sum() > 200 and (~stopped).sum() > 200
    assert log_ratio[stopped].median() < log_ratio[~stopped].median()
    assert _welch_t(log_ratio[stopped], log_ratio[~stopped]) < -3


def test_support_tickets_rise_before_customers_go_quiet(shop):
    it = shop["interactions"]
    last_seen = it.groupby("customer_id")["ts"].max()
    it = it.join(last_seen.rename("last_seen"), on="customer_id")
    final_90_days = it[it["ts"] > it["last_seen"] - pd.Timedelta(days=90)]
    quiet = final_90_days["last_seen"] < END - pd.Timedelta(days=180)
    ticket = final_90_days["kind"] == "support_ticket"
    assert ticket[quiet].mean() > 1.5 * ticket[~quiet].mean()


def test_other_tables_do_not_depend_on_the_surveys(monkeypatch):
    """Without the survey answers, or with another survey stream, the other tables are the same."""
    import churnml.simulate as simulate

    with_surveys = simulate_shop(600, seed=5)
    monkeypatch.setattr(simulate, "_simulate_surveys", lambda *args: pd.DataFrame())
    monkeypatch.setattr(simulate, "SURVEY_STREAM", 99)
    without = simulate_shop(600, seed=5)
    for name in ("transactions", "interactions", "customers"):
        pd.testing.assert_frame_equal(with_surveys[name], without[name])


def test_other_tables_do_not_depend_on_the_campaigns(monkeypatch):
    """Without campaigns, or with another campaign stream, every row but the campaign orders is the same."""
    import churnml.simulate as simulate

    with_campaigns = simulate_shop(600, seed=5)
    campaign_lines = with_campaigns["transactions"]["order_id"].str.startswith("C")
    assert campaign_lines.sum() > 0
    monkeypatch.setattr(simulate, "CAMPAIGN_STREAM", 99)
    other_stream = simulate_shop(600, seed=5)
    assert not other_stream["treatments"].equals(with_campaigns["treatments"])
    monkeypatch.setattr(simulate, "CAMPAIGN_FRACTIONS", ())
    without = simulate_shop(600, seed=5, truth=True)
    assert list(without["treatments"].columns) == TREATMENT_COLUMNS and without["treatments"].empty
    assert without["campaign_truth"].empty
    assert not without["transactions"]["order_id"].str.startswith("C").any()
    for tables in (with_campaigns, other_stream):
        tx = tables["transactions"]
        pd.testing.assert_frame_equal(tx[~tx["order_id"].str.startswith("C")].reset_index(drop=True),
                                      without["transactions"])
        for name in ("interactions", "customers", "surveys"):
            pd.testing.assert_frame_equal(tables[name], without[name])


def test_survey_response_is_realistic_and_every_month_has_answers(shop):
    surveys = shop["surveys"]
    per_customer = surveys["kind"].value_counts() / N_CUSTOMERS
    # Over three years: a relationship NPS about every 120 days answered by a quarter, CSAT after
    # about one order in eight, CES after under a third of support tickets.
    assert 0.8 <= per_customer["nps"] <= 1.6
    assert 1.0 <= per_customer["csat"] <= 2.0
    assert 0.05 <= per_customer["ces"] <= 0.4
    months = surveys.groupby([surveys["ts"].dt.to_period("M"), "kind"]).size().unstack(fill_value=0)
    assert len(months) == 36
    assert (months[["nps", "csat"]] > 0).all().all()


def test_survey_scores_fall_before_customers_stop(shop, orders):
    """Answers in the last 90 days before a customer's last order are lower for those who stop.

    NPS is the Reichheld score: % of 9-10 answers minus % of 0-6 answers.
    """
    last_order = orders.groupby("customer_id")["ts"].max().rename("last_order")
    surveys = shop["surveys"].join(last_order, on="customer_id")
    final = surveys[(surveys["ts"] > surveys["last_order"] - pd.Timedelta(days=90))
                    & (surveys["ts"] <= surveys["last_order"])]
    stopped = final["last_order"] < END - pd.Timedelta(days=180)
    nps = final[final["kind"] == "nps"]
    stop_nps = nps.loc[stopped, "score"]
    stay_nps = nps.loc[~stopped, "score"]

    def net_promoter(scores: pd.Series) -> float:
        return 100 * ((scores >= 9).mean() - (scores <= 6).mean())

    assert len(stop_nps) > 150 and len(stay_nps) > 300
    assert net_promoter(stop_nps) < net_promoter(stay_nps) - 10
    assert _welch_t(stop_nps, stay_nps) < -3
    csat = final[final["kind"] == "csat"]
    assert csat.loc[stopped, "score"].mean() < csat.loc[~stopped, "score"].mean()
    # A steady customer's NPS is in the range of real retail programmes.
    assert 20 < net_promoter(stay_nps) < 50


def test_interactions_track_purchase_rate(shop, orders):
    """Among long-standing active customers, frequent buyers interact more per day.

    Restricting to them keeps exposure similar, so the correlation is not just tenure.
    """
    per_customer = shop["customers"].set_index("customer_id")
    per_customer["orders"] = orders.groupby("customer_id").size()
    per_customer["last_order"] = orders.groupby("customer_id")["ts"].max()
    per_customer["interactions"] = shop["interactions"].groupby("customer_id").size()
    steady = per_customer[
        (per_customer["signup_ts"] < MID)
        & (per_customer["last_order"] > END - pd.Timedelta(days=180))
    ].fillna({"interactions": 0})
    days = (END - steady["signup_ts"]).dt.days
    order_rate, interaction_rate = steady["orders"] / days, steady["interactions"] / days
    assert len(steady) > 500
    assert order_rate.corr(interaction_rate, method="spearman") > 0.4


def test_orders_peak_in_november_and_december(orders):
    """Nov-Dec daily order rate beats the months around it.

    Sep-Oct and Jan-Feb bracket the holidays, so customer-base growth cancels out.
    """

    def daily_rate(first: str, last: str) -> float:
        first_day, after_last = pd.Timestamp(first), pd.Timestamp(last) + pd.Timedelta(days=1)
        in_window = orders["ts"].between(first_day, after_last, inclusive="left")
        return in_window.sum() / (after_last - first_day).days

    for year in (2023, 2024):
        holiday = daily_rate(f"{year}-11-01", f"{year}-12-31")
        before = daily_rate(f"{year}-09-01", f"{year}-10-31")
        after = daily_rate(f"{year + 1}-01-01", f"{year + 1}-02-28")
        assert holiday > 1.2 * (before + after) / 2, year


def test_weekends_are_busier_than_midweek(orders):
    weekday = orders["ts"].dt.day_of_week
    assert (weekday == 5).sum() > 1.1 * (weekday == 1).sum()


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_customers": 0},
        {"start": "2024-01-01", "end": "2024-01-01"},
        {"start": "2024-02-01", "end": "2024-01-01"},
    ],
)
def test_rejects_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        simulate_shop(**kwargs)


def test_tiny_shop_still_follows_contract():
    tables = simulate_shop(1, start="2024-05-01", end="2024-05-02", seed=0)
    assert list(tables["transactions"].columns) == TRANSACTION_COLUMNS
    assert list(tables["interactions"].columns) == INTERACTION_COLUMNS
    assert list(tables["surveys"].columns) == SURVEY_COLUMNS
    assert list(tables["treatments"].columns) == TREATMENT_COLUMNS
    assert len(tables["customers"]) == 1


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop_to_write() -> dict[str, pd.DataFrame]:
    return simulate_shop(300, seed=3)


def test_write_shop_round_trips_parquet(shop_to_write, tmp_path):
    paths = write_shop(shop_to_write, tmp_path / "out")
    assert paths == {name: tmp_path / "out" / f"{name}.parquet" for name in shop_to_write}
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(p.name for p in paths.values()), "no temporary files left behind"
    for name, frame in shop_to_write.items():
        pd.testing.assert_frame_equal(pd.read_parquet(paths[name]), frame)


def test_parquet_timestamps_are_naive_and_at_most_microsecond(shop_to_write, tmp_path):
    paths = write_shop(shop_to_write, tmp_path)
    schema = pq.read_schema(paths["transactions"])
    ts_type = schema.field("ts").type
    assert pa.types.is_timestamp(ts_type)
    assert ts_type.tz is None
    assert ts_type.unit in ("ms", "us")


def test_write_shop_round_trips_csv(shop_to_write, tmp_path):
    paths = write_shop(shop_to_write, tmp_path, fmt="csv")
    assert paths == {name: tmp_path / f"{name}.csv" for name in shop_to_write}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())
    assert paths["transactions"].read_text().splitlines()[1].count("T") >= 1

    time_columns = {"transactions": ["ts"], "interactions": ["ts"], "customers": ["signup_ts"], "surveys": ["ts"],
                    "treatments": ["ts"]}
    for name, frame in shop_to_write.items():
        loaded = pd.read_csv(paths[name], parse_dates=time_columns[name])
        assert list(loaded.columns) == list(frame.columns)
        for column in frame.columns:
            expected, actual = frame[column], loaded[column]
            if pd.api.types.is_datetime64_dtype(expected):
                assert (actual.to_numpy() == expected.to_numpy()).all(), column
            elif pd.api.types.is_float_dtype(expected):
                np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-9)
            else:
                pd.testing.assert_series_equal(
                    actual.astype(expected.dtype), expected, check_names=False
                )


def test_write_shop_rejects_unknown_format(shop_to_write, tmp_path):
    with pytest.raises(ValueError):
        write_shop(shop_to_write, tmp_path, fmt="xlsx")
    assert not any(tmp_path.iterdir())


def test_write_shop_replaces_existing_file(shop_to_write, tmp_path):
    (tmp_path / "customers.parquet").write_text("stale")
    paths = write_shop({"customers": shop_to_write["customers"]}, tmp_path)
    pd.testing.assert_frame_equal(pd.read_parquet(paths["customers"]), shop_to_write["customers"])


# ---------------------------------------------------------------------------
# Campaigns
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def truth_shop() -> dict[str, pd.DataFrame]:
    return simulate_shop(N_CUSTOMERS, start=str(START.date()), end=str(END.date()), seed=7, truth=True)


@pytest.fixture(scope="module")
def observed(truth_shop) -> pd.DataFrame:
    """The truth's rows with what the transactions show in each target's window (customer
    columns ``bought``, ``revenue``, ``campaign_orders``) and before its contact (``recency``
    in days since the last purchase line, ``orders_last_year``)."""
    tx = truth_shop["transactions"]
    frames = []
    for (campaign, ts), rows in truth_shop["campaign_truth"].groupby(["campaign", "ts"]):
        inside = tx[(tx["ts"] > ts) & (tx["ts"] <= ts + WINDOW)].groupby("customer_id")
        year = tx[(tx["ts"] < ts) & (tx["ts"] >= ts - pd.Timedelta(days=365)) & (tx["amount"] > 0)]
        ids = rows["customer_id"]
        frames.append(rows.assign(
            bought=ids.map(inside["amount"].apply(lambda a: (a > 0).any())).fillna(False).astype(bool),
            revenue=ids.map(inside["amount"].sum()).fillna(0.0),
            campaign_orders=ids.map(inside["order_id"].apply(lambda o: o[o.str.startswith("C")].nunique())).fillna(0),
            recency=(ts - ids.map(year.groupby("customer_id")["ts"].max())).dt.days,
            orders_last_year=ids.map(year.groupby("customer_id")["order_id"].nunique()),
        ))
    frame = pd.concat(frames, ignore_index=True)
    return frame.assign(lift=frame["repurchased_if_treated"].astype(int) - frame["repurchased_if_control"])


def test_treatments_follow_contract(truth_shop):
    treatments = truth_shop["treatments"]
    assert list(treatments.columns) == TREATMENT_COLUMNS
    for column in ("customer_id", "campaign", "group", "channel"):
        assert pd.api.types.is_string_dtype(treatments[column]), column
    assert pd.api.types.is_datetime64_dtype(treatments["ts"]) and treatments["ts"].dt.tz is None
    assert not treatments.duplicated(["customer_id", "campaign"]).any()
    assert set(treatments["group"]) == {"treatment", "control"}
    assert set(treatments["channel"]) == {"email", "app"}
    expected_cost = np.where(treatments["group"] == "treatment", CAMPAIGN_COST_PER_CONTACT, 0.0)
    assert (treatments["cost"] == expected_cost).all()
    # Three campaigns at 09:00, each with its own name, and each outcome window closing before the end.
    contacts = treatments.groupby("campaign")["ts"].agg(["min", "max"])
    assert list(contacts.index) == ["retention_2024_07", "retention_2025_02", "retention_2025_09"]
    assert (contacts["min"] == contacts["max"]).all()
    assert (contacts["min"].dt.hour == 9).all()
    assert (contacts["min"] + WINDOW < END).all()
    assert treatments["ts"].is_monotonic_increasing
    truth = truth_shop["campaign_truth"]
    assert list(truth.columns) == TRUTH_COLUMNS
    pd.testing.assert_frame_equal(truth[["customer_id", "campaign", "group", "ts"]],
                                  treatments[["customer_id", "campaign", "group", "ts"]])


def test_targets_are_the_customers_who_bought_in_the_year_before(truth_shop):
    tx, treatments = truth_shop["transactions"], truth_shop["treatments"]
    for ts, targets in treatments.groupby("ts")["customer_id"]:
        year = tx[(tx["ts"] < ts) & (tx["ts"] >= ts - pd.Timedelta(days=365)) & (tx["amount"] > 0)]
        assert set(targets) == set(year["customer_id"])


def test_groups_are_randomised_half_and_half(truth_shop):
    treatments = truth_shop["treatments"]
    for campaign, group in treatments.groupby("campaign")["group"]:
        share = (group == "treatment").mean()
        assert abs(share - 0.5) < 3 * np.sqrt(0.25 / len(group)), campaign
    # Independently of what the customer looks like: the channel mix is the same in both groups.
    app = treatments["channel"] == "app"
    assert abs(app[treatments["group"] == "treatment"].mean() - app[treatments["group"] == "control"].mean()) < 0.03


def test_campaign_orders_go_to_treated_responders_inside_the_window(truth_shop, observed):
    tx = truth_shop["transactions"]
    campaign_lines = tx[tx["order_id"].str.startswith("C")]
    assert (campaign_lines["amount"] > 0).all()
    responded = observed["revenue_if_treated"] > observed["revenue_if_control"]
    treated = observed["group"] == "treatment"
    # Each treated responder has exactly one campaign order in the window; nobody else has one.
    assert (observed.loc[treated & responded, "campaign_orders"] == 1).all()
    assert (observed.loc[~treated, "campaign_orders"] == 0).all()
    assert (observed.loc[treated & ~responded, "campaign_orders"] == 0).all()
    assert campaign_lines["order_id"].nunique() == (treated & responded).sum() > 50
    # No response can come from a customer whose latent lifetime has ended.
    assert not (responded & (observed["response_probability"] == 0)).any()


def test_the_observed_group_shows_its_potential_outcome(observed):
    treated = observed["group"] == "treatment"
    expected_bought = np.where(treated, observed["repurchased_if_treated"], observed["repurchased_if_control"])
    expected_revenue = np.where(treated, observed["revenue_if_treated"], observed["revenue_if_control"])
    assert (observed["bought"].to_numpy() == expected_bought).all()
    np.testing.assert_allclose(observed["revenue"], expected_revenue, atol=1e-6)
    assert (observed["repurchased_if_treated"] >= observed["repurchased_if_control"]).all()


def test_difference_in_means_estimates_the_planted_lift(observed):
    planted = observed["lift"].mean()
    assert 0.03 <= planted <= 0.08
    treated = observed["group"] == "treatment"
    a, b = observed.loc[treated, "bought"], observed.loc[~treated, "bought"]
    difference = a.mean() - b.mean()
    standard_error = np.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(difference - planted) < 2 * standard_error
    assert difference > 2 * standard_error


def test_the_lift_is_heterogeneous_in_what_features_see(observed):
    """Customers drifting away (no purchase in the 60 days before the contact) gain much more
    than frequent buyers (an order a month), who would buy anyway."""
    average = observed["lift"].mean()
    drifting = observed["recency"] >= 60
    frequent = observed["orders_last_year"] >= 12
    assert drifting.mean() > 0.2 and frequent.mean() > 0.1
    assert observed.loc[drifting, "lift"].mean() > 2 * average
    assert observed.loc[frequent, "lift"].mean() < 0.25 * average
    assert observed.loc[frequent, "repurchased_if_control"].mean() > 0.8
    # The 30% of targets with the highest planted response chance carry most of the lift.
    top = observed["response_probability"].rank(method="first", ascending=False) <= 0.3 * len(observed)
    assert observed.loc[top, "lift"].mean() > 2.5 * average


def test_write_shop_writes_the_truth_only_when_given(tmp_path):
    tables = simulate_shop(300, seed=3, truth=True)
    public = {name: frame for name, frame in tables.items() if name != "campaign_truth"}
    written = write_shop(public, tmp_path / "public")
    assert set(written) == {"transactions", "interactions", "customers", "surveys", "treatments"}
    assert not (tmp_path / "public" / "campaign_truth.parquet").exists()
    paths = write_shop(tables, tmp_path / "all")
    pd.testing.assert_frame_equal(pd.read_parquet(paths["campaign_truth"]), tables["campaign_truth"])
