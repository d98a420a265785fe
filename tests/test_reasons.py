"""Reason phrases on hand-made rows: the customer's value with a norm, in the direction the
feature pushes the risk; which readings may be reasons; the peers' norms; the low-risk rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnml.models import contributions as tree_contributions
from churnml.models.classifier import PRIOR
from churnml.scoring import policy, reasons

UP, DOWN = reasons.RAISES, reasons.LOWERS


@pytest.fixture
def rows() -> pd.DataFrame:
    """Three customers: A lapsing (long silence, falling order value, slowing), B engaged and
    buying lately, C without much history."""
    return pd.DataFrame({
        "recency_days": [124.0, 5.0, np.nan],
        "mean_gap_days": [30.0, np.nan, np.nan],
        "aov_change": [-0.45, 0.2, np.nan],
        "order_value_drop_40": [True, False, False],
        "orders_trend_30_90": [0.5, np.nan, 1.5],
        "orders_90d": [0, 1, 3],
        "items_per_order": [126.1, 2.0, np.nan],
        "net_spend": [1940.0, 120.0, np.nan],
        "tier": ["dormant", "core", "basic"],
        "region": ["north", "south", None],
        "age": [41.0, 33.5, np.nan],
        "days_overdue": [94.0, -10.0, np.nan],
        "no_repurchase_3m": [True, False, True],
        "interactions_per_month": [0.3, 2.5, 1.5],
        "peer_interactions_per_month": [2.1, 2.1, 2.1],
        "low_interaction": [True, False, False],
        "login_90d": [0, 1, 2],
        "support_ticket_90d": [3, 0, 0],
        "days_since_interaction": [40.0, 2.0, 0.0],
    })


@pytest.fixture
def context() -> reasons.ReasonContext:
    peers = {"recency_days": 40.0, "orders_90d": 2.0, "items_per_order": 3.2, "net_spend": 800.0, "tier": "basic",
             "region": "north", "age": 35.0, "login_90d": 1.0, "support_ticket_90d": 0.0, "days_since_interaction": 18.0}
    return reasons.ReasonContext(peers=peers)


def said(feature, rows, context, direction=UP) -> list[str]:
    return reasons.describe(feature, rows, context, direction).tolist()


def allowed(feature, rows, context, direction=UP) -> list[bool]:
    return reasons.eligible(feature, rows, context, direction).tolist()


def test_a_risk_is_said_with_the_customers_value_and_a_norm(rows, context):
    assert said("recency_days", rows, context)[0] == "no purchase for 124 days, usually every 30"
    assert said("days_overdue", rows, context)[0] == "next purchase 94 days overdue, usually every 30"
    assert said("aov_change", rows, context)[0] == "spends 45% less per order than in the previous 90 days"
    assert said("order_value_drop_40", rows, context)[0] == "spends 45% less per order than in the previous 90 days"
    # The customer's own rhythm first (90 days at one purchase every 30), then the peers.
    assert said("orders_90d", rows, context)[:2] == ["0 purchases in the last 90 days, usually 3",
                                                      "1 purchase in the last 90 days, peers 2"]
    assert said("orders_trend_30_90", rows, context)[0] == "purchase pace over the last 30 days at 50% of the 90-day pace"
    assert said("net_spend", rows, context)[1] == "net spend 120, peers 800"
    assert said("items_per_order", rows, context)[1] == "2.0 items per order, peers 3.2"
    assert said("interactions_per_month", rows, context)[0] == "0.3 interactions a month, peers 2.1"
    assert said("low_interaction", rows, context)[0] == "0.3 interactions a month, peers 2.1"
    assert said("no_repurchase_3m", rows, context)[0] == "no purchase in 3 months, usually every 30"
    assert said("tier", rows, context)[0] == "loyalty tier: dormant, most customers basic"
    assert said("login_90d", rows, context)[0] == "0 logins in the last 90 days, peers 1"
    assert said("support_ticket_90d", rows, context)[0] == "3 support tickets in the last 90 days, peers 0"
    assert said("days_since_interaction", rows, context)[0] == "no interaction for 40 days, peers 18"
    # Without a rhythm of their own, the peers are the norm; without a value, what is missing.
    assert said("recency_days", rows, context)[1:] == ["no purchase for 5 days, peers 40", "no purchase yet (refunds only)"]


def test_what_keeps_a_customer_is_said_as_such(rows, context):
    assert said("recency_days", rows, context, DOWN)[1] == "bought 5 days ago, peers 40"
    assert said("days_since_interaction", rows, context, DOWN)[1] == "last interaction 2 days ago, peers 18"
    assert said("days_overdue", rows, context, DOWN)[1] == "next purchase due in 10 days"
    assert said("aov_change", rows, context, DOWN)[1] == "spends 20% more per order than in the previous 90 days"
    assert said("orders_trend_30_90", rows, context, DOWN)[2] == "purchase pace over the last 30 days at 150% of the 90-day pace"
    assert said("net_spend", rows, context, DOWN)[0] == "net spend 1,940, peers 800"
    assert said("no_repurchase_3m", rows, context, DOWN)[1] == "bought in the last 3 months"
    assert said("tier", rows, context, DOWN)[1] == "loyalty tier: core, most customers basic"
    # A direction per row.
    mixed = reasons.describe("recency_days", rows.iloc[:2], context, np.array([UP, DOWN]))
    assert mixed.tolist() == ["no purchase for 124 days, usually every 30", "bought 5 days ago, peers 40"]


def test_a_value_that_reads_as_loyalty_is_never_a_churn_reason(rows, context):
    # A rising order pace, a recent purchase, many items per order, a high spend: not churn reasons.
    assert allowed("orders_trend_30_90", rows, context) == [True, True, False]
    assert allowed("orders_trend_30_90", rows, context, DOWN) == [False, False, True]
    assert allowed("recency_days", rows, context) == [True, False, True]
    assert allowed("recency_days", rows, context, DOWN) == [False, True, False]
    assert allowed("items_per_order", rows, context)[:2] == [False, True]
    assert allowed("net_spend", rows, context)[:2] == [False, True]
    assert allowed("orders_90d", rows, context) == [True, True, False]
    assert allowed("orders_90d", rows, context, DOWN) == [False, False, True]
    assert allowed("tier", rows, context) == [True, False, False]
    assert allowed("tier", rows, context, DOWN) == [False, True, False]
    # Flags: set reads as a risk; clear as loyalty only where the measure behind it says so
    # (order value up; interactions at least the peers').
    assert allowed("order_value_drop_40", rows, context) == [True, False, False]
    assert allowed("order_value_drop_40", rows, context, DOWN) == [False, True, False]
    assert allowed("low_interaction", rows, context, DOWN) == [False, True, False]
    # More support tickets than the peers is the risk, none like the peers says nothing.
    assert allowed("support_ticket_90d", rows, context) == [True, False, False]
    assert allowed("support_ticket_90d", rows, context, DOWN) == [False, False, False]


def test_a_value_at_its_norm_says_nothing(context):
    near = pd.DataFrame({"days_since_signup": [711.0, 500.0], "recency_days": [32.0, 60.0],
                         "mean_gap_days": [30.0, 30.0], "orders_trend_30_90": [1.05, 0.8]})
    context = reasons.ReasonContext(peers={"days_since_signup": 718.0, "recency_days": 33.0})
    # Within NORM_MARGIN of the norm: neither a risk nor a keeper.
    assert allowed("days_since_signup", near, context) == [False, True]
    assert allowed("days_since_signup", near, context, DOWN) == [False, False]
    assert allowed("recency_days", near, context) == [False, True]
    assert allowed("orders_trend_30_90", near, context) == [False, True]
    assert allowed("orders_trend_30_90", near, context, DOWN) == [False, False]


def test_features_without_a_known_direction_state_value_and_norm(rows, context):
    # No direction: the value may be a reason either way where it differs from the peers'.
    assert said("region", rows, context)[1] == "region = south, most customers north"
    assert allowed("region", rows, context) == allowed("region", rows, context, DOWN) == [False, True, False]
    assert said("age", rows, context)[0] == "age = 41, peers 35"
    # 33.5 is within the margin of 35; a missing value says nothing.
    assert allowed("age", rows, context) == allowed("age", rows, context, DOWN) == [True, False, False]


def test_missing_values_are_reasons_only_when_they_say_something(rows, context):
    # "no purchase yet" is a risk; "net spend unknown" is no reason at all.
    assert allowed("recency_days", rows, context)[2] and not allowed("recency_days", rows, context, DOWN)[2]
    assert not allowed("net_spend", rows, context)[2] and not allowed("net_spend", rows, context, DOWN)[2]
    assert said("net_spend", rows, context)[2] == "net spend unknown"


def test_phrases_quote_the_configured_windows():
    rows = pd.DataFrame({"aov_change": [-0.5], "no_repurchase_3m": [True], "bgnbd_expected_purchases": [0.04]})
    context = reasons.ReasonContext(order_value_window_days=60, no_repurchase_days=61, horizon_days=30)
    assert reasons.describe("aov_change", rows, context).iloc[0] == "spends 50% less per order than in the previous 60 days"
    assert reasons.describe("no_repurchase_3m", rows, context).iloc[0] == "no purchase in 2 months"
    assert (reasons.describe("bgnbd_expected_purchases", rows, context).iloc[0]
            == "0.04 purchases expected in the next 30 days")


def test_the_unattributed_prior_is_phrased_as_the_btyd_churn_probability():
    rows = pd.DataFrame({PRIOR: [np.log(0.88 / 0.12), 0.0]})
    assert reasons.describe(PRIOR, rows).tolist() == [
        "buying pattern (buy-till-you-die model) gives a 88% chance of no purchase in the next 90 days",
        "buying pattern (buy-till-you-die model) gives a 50% chance of no purchase in the next 90 days"]
    assert reasons.eligible(PRIOR, rows).all() and reasons.eligible(PRIOR, rows, direction=DOWN).all()


def test_reasons_that_name_a_model_are_told_apart():
    features = pd.Series([PRIOR, "recency_days", "bgnbd_p_alive", None, "custom_score"])
    phrases = pd.Series(["buying pattern (buy-till-you-die model) gives a 88% chance of no purchase in the next 90 days",
                         "no purchase for 124 days, usually every 30", "38% estimated chance of still being active",
                         None, "custom_score = 0.3 from P(alive)"])
    assert reasons.names_a_model(features, phrases).tolist() == [True, False, True, False, True]


def test_peer_norms_are_medians_and_most_common_values():
    frame = pd.DataFrame({
        "recency_days": [10.0, 40.0, np.nan, 100.0],
        "orders_90d": [0, 1, 2, 3],
        "tier": pd.Series(["core", "basic", "basic", None], dtype="str"),
        "region": pd.Series(["south", "north", "north", "south"], dtype="str"),
        "no_repurchase_3m": [True, False, True, True],
        "empty": [np.nan] * 4,
    })
    norms = reasons.peer_norms(frame, [*frame.columns, "absent"])
    # Missing values are left out; flags have fixed norms; ties go to the first in sort order.
    assert norms == {"recency_days": 40.0, "orders_90d": 1.5, "tier": "basic", "region": "north"}
    assert reasons.stable_norm(0.1 + 0.2) == 0.3
    # Half a purchase is said as such.
    context = reasons.ReasonContext(peers=norms)
    assert said("orders_90d", frame.iloc[:1], context) == ["0 purchases in the last 90 days, peers 1.5"]


# --- the low-risk rule ----------------------------------------------------------------------------


def test_low_risk_customers_get_what_lowers_their_risk_most():
    probability = np.array([0.9, 0.45, 0.1, 0.05])
    signs = policy.reason_signs(probability, policy.RiskBands(high=0.6, medium=0.3))
    assert signs.tolist() == [1.0, 1.0, -1.0, -1.0]
    values = np.array([[0.5, -1.0, 0.2, 0.9],
                       [0.4, -0.3, 0.1, -0.2],
                       [0.5, -1.0, -0.2, 0.9],
                       [0.3, 0.2, 0.1, 0.0]])
    indices, chosen = tree_contributions.top_contributions(values, 2, signs)
    assert indices.tolist() == [[3, 0], [0, 2], [1, 2], [-1, -1]]
    np.testing.assert_array_equal(chosen[2], [-1.0, -0.2])
    # Contributions that may not be said are skipped, not replaced by noise.
    eligible = np.ones((4, 4), dtype=bool)
    eligible[3, 0] = eligible[1, 2] = False
    indices, chosen = tree_contributions.top_contributions(values, 2, signs, eligible)
    assert indices.tolist() == [[0, 2], [0, 2], [2, -1], [-1, -1]]
    assert np.isnan(chosen[2, 1]) and chosen[2, 0] == -0.2


@pytest.mark.parametrize("n", [1, 3])
def test_the_compiled_choice_follows_signs_and_eligibility_as_by_row(n):
    rng = np.random.default_rng(n)
    values = np.round(rng.normal(size=(3_000, 6)), 1)
    values[rng.random(values.shape) < 0.05] = np.nan
    last = np.round(rng.normal(size=len(values)), 1)
    signs = rng.choice([-1.0, 1.0], len(values))
    eligible = rng.random((values.shape[1] + 1, len(values))) < 0.7
    expected = tree_contributions.top_contributions(np.column_stack([values, last]), n, signs, eligible)
    indices, chosen = tree_contributions.top_contributions_by_column(values.T, n, last, signs=signs, eligible=eligible)
    np.testing.assert_array_equal(indices, expected[0])
    np.testing.assert_array_equal(chosen, expected[1])
    assert not (chosen[signs < 0] > 0).any()
    assert not (chosen[signs > 0] < 0).any() and (indices == -1).any()


def test_survey_answers_are_said_with_their_scale_and_nps_group():
    rows = pd.DataFrame({"last_nps": [3.0, 8.0, 10.0, np.nan], "nps_detractor": [True, False, False, False],
                         "nps_promoter": [False, False, True, False], "last_csat": [2.0, 4.0, 5.0, np.nan]})
    context = reasons.ReasonContext(peers={"last_nps": 8.0, "last_csat": 4.0})
    assert said("nps_detractor", rows, context) == [
        "latest NPS answer 3 of 10: a detractor", "latest NPS answer 8 of 10: a passive",
        "latest NPS answer 10 of 10: a promoter", "no NPS answer yet"]
    assert allowed("nps_detractor", rows, context) == [True, False, False, False]
    assert allowed("nps_promoter", rows, context, DOWN) == [False, False, True, False]
    assert said("last_nps", rows, context)[0] == "latest NPS answer 3 of 10: a detractor, peers 8"
    assert said("last_csat", rows, context)[0] == "latest satisfaction answer 2 of 5, peers 4"
