"""Loyalty tiers: every rule's conjunction, the precedence, the fallback, new and one-time
customers, absolute and relative thresholds, the config's refusals; and the tier mix of the demo
shop and of CDNOW at their default dates."""

from __future__ import annotations

import math

import ibis
import pandas as pd
import pytest

from churnml.errors import UserError, UserValueError
from churnml.features.segments import (
    TIER_PRECEDENCE,
    TIERS,
    SegmentConfig,
    TierRule,
    loyalty_tier,
    tier_minimums,
)
from churnml.jobs.common import compose_settings

ABSOLUTE = SegmentConfig(thresholds="absolute")

# A customer known for years, buying and interacting lately; each case changes a few columns.
# Columns: net spend of the tier year, orders in it, orders ever, days since the first purchase,
# days since the last one, interactions per month, days since the last interaction.
REGULAR = {"spend_365d": 5000.0, "orders_365d": 4, "frequency": 12, "purchase_age_days": 800.0,
           "recency_days": 10.0, "interactions_per_month": 2.0, "days_since_interaction": 5.0}


def tiers_of(rows: list[dict], config: SegmentConfig = ABSOLUTE, has_interactions: bool = True) -> list[str]:
    frame = pd.DataFrame([{**REGULAR, **row} for row in rows]).astype(
        {"spend_365d": "float64", "orders_365d": "int64", "frequency": "int64", "purchase_age_days": "float64",
         "recency_days": "float64", "interactions_per_month": "float64", "days_since_interaction": "float64"})
    if not has_interactions:
        frame = frame.drop(columns=["interactions_per_month", "days_since_interaction"])
    table = ibis.memtable(frame)
    return ibis.duckdb.connect().execute(loyalty_tier(table, config, has_interactions).name("tier")).tolist()


def tier_of(config: SegmentConfig = ABSOLUTE, has_interactions: bool = True, **row) -> str:
    return tiers_of([row], config, has_interactions)[0]


def test_the_vocabulary():
    assert set(TIER_PRECEDENCE) == set(TIERS) and len(TIERS) == 7
    assert TIER_PRECEDENCE[-1] == "occasional"


# --- ranked tiers: every condition at once (absolute: 5000/4/2, 2000/2/1, 500/1/0) ---------------

@pytest.mark.parametrize("row, expected", [
    ({}, "core"),
    ({"spend_365d": 4999.99}, "potential"),                 # spend alone below core's
    ({"orders_365d": 3}, "potential"),                      # repurchases alone below core's
    ({"interactions_per_month": 1.99}, "potential"),        # interaction rate alone below core's
    ({"spend_365d": 2000.0, "orders_365d": 2, "interactions_per_month": 1.0}, "potential"),
    ({"spend_365d": 1999.99, "orders_365d": 2, "interactions_per_month": 1.0}, "basic"),
    ({"spend_365d": 2000.0, "orders_365d": 1, "interactions_per_month": 1.0}, "basic"),
    ({"spend_365d": 2000.0, "orders_365d": 2, "interactions_per_month": 0.99}, "basic"),
    ({"spend_365d": 500.0, "orders_365d": 1, "interactions_per_month": 0.0}, "basic"),
    ({"spend_365d": 499.99, "orders_365d": 1, "interactions_per_month": 0.0}, "occasional"),
    # The first purchase falls in the year (800 -> 300 days ago): 4 orders are 3 repurchases.
    ({"purchase_age_days": 300.0}, "potential"),
    ({"purchase_age_days": 365.0}, "core"),
])
def test_ranked_tiers_need_every_minimum(row, expected):
    assert tier_of(**row) == expected


def test_a_repurchase_minimum_alone_keeps_a_customer_out_of_basic():
    # With absolute minimums of 1 repurchase, any repeat customer who spent in the year has one;
    # a minimum of 2 shows the condition on its own.
    config = SegmentConfig(thresholds="absolute", potential=TierRule(2000.0, 2, 1.0), basic=TierRule(500.0, 2, 0.0))
    assert tier_of(config, spend_365d=600.0, orders_365d=2, interactions_per_month=0.0) == "basic"
    assert tier_of(config, spend_365d=600.0, orders_365d=1, interactions_per_month=0.0) == "occasional"


def test_without_interactions_the_rate_minimums_are_not_applied():
    assert tier_of(interactions_per_month=0.0) == "basic"
    assert tier_of(has_interactions=False) == "core"


# --- dormant: all three signs at once ---------------------------------------------------------

SILENT = {"spend_365d": 499.99, "orders_365d": 1, "recency_days": 180.0, "interactions_per_month": 0.0,
          "days_since_interaction": 180.0}


@pytest.mark.parametrize("change, expected", [
    ({}, "dormant"),
    ({"spend_365d": 500.0}, "basic"),                       # spends basic's minimum: not dormant
    ({"recency_days": 179.0}, "occasional"),                # bought within 180 days
    ({"days_since_interaction": 179.0}, "occasional"),      # interacted within 180 days
    ({"days_since_interaction": None}, "dormant"),          # never interacted
    ({"spend_365d": 0.0, "orders_365d": 0, "recency_days": 400.0}, "dormant"),
])
def test_dormant_needs_low_spend_no_purchase_and_no_interaction(change, expected):
    assert tier_of(**{**SILENT, **change}) == expected


def test_without_interactions_dormant_reads_spend_and_purchases():
    assert tier_of(has_interactions=False, **{**SILENT, "days_since_interaction": 3.0}) == "dormant"


def test_a_customer_with_refunds_only_is_dormant_unless_they_interact():
    refunds_only = {"spend_365d": 0.0, "orders_365d": 0, "frequency": 0, "purchase_age_days": None,
                    "recency_days": None, "interactions_per_month": 0.0, "days_since_interaction": None}
    assert tier_of(**refunds_only) == "dormant"
    assert tier_of(**{**refunds_only, "days_since_interaction": 20.0, "interactions_per_month": 0.3}) == "occasional"


# --- new and one-time customers, and the fallback ---------------------------------------------------

@pytest.mark.parametrize("change, expected", [
    ({"purchase_age_days": 89.0}, "new"),                    # within 90 days of the first purchase, core or not
    ({"purchase_age_days": 90.0, "orders_365d": 5}, "core"),   # 5 orders since the first: 4 repurchases
    ({"frequency": 1, "orders_365d": 1, "purchase_age_days": 30.0, "recency_days": 30.0}, "new"),
    ({"frequency": 1, "orders_365d": 1, "purchase_age_days": 120.0, "recency_days": 120.0}, "one_time"),
    # One purchase long ago, silent since: one-time, not dormant.
    ({"frequency": 1, "orders_365d": 0, "spend_365d": 0.0, "purchase_age_days": 600.0, "recency_days": 600.0,
      "interactions_per_month": 0.0, "days_since_interaction": None}, "one_time"),
])
def test_new_and_one_time_customers_come_first(change, expected):
    assert tier_of(**change) == expected


def test_the_fallback_takes_repeat_customers_below_basic_who_still_buy_or_interact():
    fallback = [
        {"spend_365d": 120.0, "orders_365d": 2, "recency_days": 20.0, "interactions_per_month": 0.0},
        {"spend_365d": 120.0, "orders_365d": 1, "recency_days": 200.0, "interactions_per_month": 0.5,
         "days_since_interaction": 12.0},
    ]
    assert tiers_of(fallback) == ["occasional", "occasional"]


# --- relative thresholds ----------------------------------------------------------------------------

# Five customers who bought in the tier year (spend 100..500, 1..5 repurchases) and one who did not.
POPULATION = [{"spend_365d": 100.0 * k, "orders_365d": k} for k in range(1, 6)] + [
    {"spend_365d": 0.0, "orders_365d": 0, "recency_days": 400.0, "interactions_per_month": 0.0,
     "days_since_interaction": None}]


def test_relative_minimums_are_quantiles_of_the_customers_who_bought_in_the_year():
    # Interpolated quantiles of [100..500] and [1..5]: core (0.8) 420 and 4.2, potential (0.5)
    # 300 and 3, basic (0.2) 180 and 1.8. With the customer who did not buy, core's would be 400 and 4.
    table = ibis.memtable(pd.DataFrame([{**REGULAR, **row} for row in POPULATION]))
    minimums = tier_minimums(table, SegmentConfig())
    con = ibis.duckdb.connect()
    got = {tier: tuple(con.execute(value.name("m"))[0] for value in pair) for tier, pair in minimums.items()}
    assert got == {"core": pytest.approx((420.0, 4.2)), "potential": pytest.approx((300.0, 3.0)),
                   "basic": pytest.approx((180.0, 1.8))}
    assert tiers_of(POPULATION, SegmentConfig()) == ["occasional", "basic", "potential", "potential", "core", "dormant"]


def test_the_same_customers_under_absolute_minimums():
    assert tiers_of(POPULATION, ABSOLUTE) == ["occasional", "occasional", "occasional", "occasional", "basic", "dormant"]


def test_relative_levels_come_from_the_config():
    config = SegmentConfig(core=TierRule(min_interactions_per_month=2.0, spend_quantile=1.0, repurchases_quantile=1.0))
    assert tiers_of(POPULATION, config)[3:5] == ["potential", "core"]  # 500 and 5 only
    config = SegmentConfig(core=TierRule(min_interactions_per_month=2.0, spend_quantile=0.5, repurchases_quantile=0.5))
    assert tiers_of(POPULATION, config) == ["occasional", "basic", "core", "core", "core", "dormant"]


def test_without_anyone_buying_in_the_year_no_one_reaches_a_ranked_tier():
    quiet = [{"spend_365d": 0.0, "orders_365d": 0, "recency_days": 400.0, "days_since_interaction": None},
             {"spend_365d": 0.0, "orders_365d": 0, "recency_days": 400.0, "days_since_interaction": 3.0}]
    assert tiers_of(quiet, SegmentConfig()) == ["dormant", "occasional"]


# --- configuration --------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, message", [
    ({"thresholds": "percent"}, "features.segments.thresholds=percent is not one of absolute, relative"),
    ({"core": {"spend_quantile": 1.5}}, "features.segments.core.spend_quantile=1.5: give a quantile level in"),
    ({"basic": {"min_annual_spend": -1}}, "features.segments.basic.min_annual_spend=-1"),
    ({"dormant_days": 0}, "features.segments.dormant_days=0"),
    ({"new_days": -1}, "features.segments.new_days=-1"),
    ({"thresholds": "absolute", "core": {"min_annual_spend": 1000.0}},
     "features.segments.core.min_annual_spend=1000.0 is below features.segments.potential.min_annual_spend=2000.0"),
    ({"potential": {"repurchases_quantile": 0.1}},
     "features.segments.potential.repurchases_quantile=0.1 is below features.segments.basic.repurchases_quantile=0.2"),
    ({"core": {"min_spend": 1}}, "features.segments.core has unknown keys \\['min_spend'\\]"),
])
def test_a_bad_segments_setting_is_a_user_error(settings, message):
    with pytest.raises(UserValueError, match=message):
        SegmentConfig.from_dict(settings)


def test_a_partial_tier_keeps_the_other_defaults():
    config = SegmentConfig.from_dict({"thresholds": "absolute", "core": {"min_annual_spend": 8000.0}})
    assert config.core == TierRule(8000.0, 4, 2.0, spend_quantile=0.8, repurchases_quantile=0.8)


def test_the_stage_refuses_a_bad_thresholds_kind_before_it_reads_data():
    with pytest.raises(UserError, match="features.segments.thresholds=currency is not one of") as raised:
        compose_settings("features", ["features.segments.thresholds=currency"])
    assert "\n" not in str(raised.value)
    settings = compose_settings("features", ["features.segments.thresholds=absolute",
                                             "features.segments.core.min_annual_spend=9000"])
    assert settings["features"]["segments"]["core"]["min_annual_spend"] == 9000


# --- the demo shop and CDNOW at their default dates -------------------------------------------------

def features_at_default_date(settings: dict) -> pd.DataFrame:
    from churnml.features.build import FeatureConfig, build_features, to_frame
    from churnml.features.dates import resolve_as_of
    from churnml.io.sources import load_data

    dataset = load_data(settings["data"])
    as_of = resolve_as_of(None, dataset.first_date, dataset.last_date)
    return to_frame(build_features(dataset, as_of, FeatureConfig.from_dict(settings["features"])))


@pytest.fixture(scope="module")
def demo_shop_settings(tmp_path_factory) -> dict:
    """The default demo shop (conf/data/demo.yaml), simulated into a temporary directory."""
    return compose_settings("features", [f"data.directory={tmp_path_factory.mktemp('demo')}"])


@pytest.mark.slow
@pytest.mark.parametrize("thresholds", ["relative", "absolute"])
def test_no_tier_holds_most_of_the_demo_shop(demo_shop_settings, thresholds):
    settings = {**demo_shop_settings, "features": {**demo_shop_settings["features"],
                                                   "segments": {**demo_shop_settings["features"]["segments"],
                                                                "thresholds": thresholds}}}
    shares = features_at_default_date(settings)["tier"].value_counts(normalize=True)
    assert shares.max() <= 0.6, shares.to_dict()
    if thresholds == "relative":
        # Quantiles of the shop's own year: every tier is reached, and no ranked tier is a sliver.
        assert set(TIERS) == set(shares.index) and shares[["core", "potential", "basic"]].min() > 0.05


@pytest.mark.slow
def test_the_demo_shop_gets_no_win_back_offer_within_the_usual_gap(demo_shop_settings, small_shop):
    from churnml.scoring import table
    from conftest import frame_dataset
    from test_scoring import train_small_models

    # The tests' small models (trained on the small seeded shop) score the default demo shop.
    models = train_small_models(frame_dataset(small_shop["transactions"], small_shop["interactions"],
                                              small_shop["customers"]))[0]
    features = features_at_default_date(demo_shop_settings)
    inputs = table.model_inputs(features, models)
    scores = table.score_customers(inputs, models, features["cutoff"].iloc[0])
    win_back = (scores["recommended_action"] == "win-back offer").to_numpy()
    within = (features["recency_days"] <= features["usual_gap_days"]).to_numpy()
    assert win_back.sum() > 100 and within.sum() > 1000
    assert not (win_back & within).any()
    assert (scores.loc[win_back, "value_segment"] != "high_value_high_potential").all()


@pytest.mark.slow
def test_no_tier_holds_most_of_cdnow():
    shares = features_at_default_date(compose_settings("features", ["data=cdnow"]))["tier"].value_counts(normalize=True)
    assert shares.max() <= 0.6, shares.to_dict()
    assert math.isclose(shares.sum(), 1.0)
