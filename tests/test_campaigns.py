"""Campaigns of the treatments table, the features of their customers at assignment, the expected
value of a contact, and the experiment report."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from churnml.errors import UserValueError
from churnml.programs.campaigns import (
    ExperimentConfig,
    assignment_cutoffs,
    assignment_features,
    campaign_table,
    campaigns_to_evaluate,
)
from churnml.programs.targeting import with_expected_value
from conftest import frame_dataset


def treatments() -> pd.DataFrame:
    rows = [("A", "2024-03-01 10:00", "spring", "treatment", 1.5), ("B", "2024-03-02 09:00", "spring", "control", None),
            ("C", "2024-03-01 11:00", "spring", "treatment", 2.5), ("A", "2024-06-01 00:00", "summer", "control", None),
            ("B", "2024-06-01 00:00", "summer", "treatment", 1.0)]
    frame = pd.DataFrame(rows, columns=["customer_id", "ts", "campaign", "group", "cost"])
    frame["ts"] = pd.to_datetime(frame["ts"])
    return frame


def test_the_campaign_table_counts_groups_costs_and_the_day_outcomes_are_complete():
    table = campaign_table(treatments(), window_days=30).set_index("campaign")
    assert list(table.index) == ["spring", "summer"]
    spring = table.loc["spring"]
    assert (spring.first_day, spring.last_day) == (dt.date(2024, 3, 1), dt.date(2024, 3, 2))
    assert (spring.treatment, spring.control) == (2, 1)
    assert spring.cost_per_contact == pytest.approx(2.0)
    assert spring.complete_on == dt.date(2024, 4, 1)
    assert table.loc["summer", "complete_on"] == dt.date(2024, 7, 1)


def test_only_campaigns_whose_windows_closed_are_evaluated_and_the_others_are_named():
    table = campaign_table(treatments(), window_days=30)
    chosen, notes = campaigns_to_evaluate(table, dt.date(2024, 6, 30))
    assert list(chosen["campaign"]) == ["spring"]
    assert len(notes) == 1 and "summer" in notes[0] and "2024-07-01" in notes[0]
    chosen, notes = campaigns_to_evaluate(table, dt.date(2024, 7, 1))
    assert list(chosen["campaign"]) == ["spring", "summer"] and notes == []


@pytest.mark.parametrize("campaign, as_of, message", [
    ("autumn", dt.date(2024, 12, 31), "experiment.campaign=autumn is not in the treatments table: use one of spring, summer"),
    (None, dt.date(2024, 3, 31), "give as_of=2024-04-01 or later"),
])
def test_an_unknown_campaign_or_no_closed_window_is_one_line_naming_the_fix(campaign, as_of, message):
    with pytest.raises(UserValueError, match=message):
        campaigns_to_evaluate(campaign_table(treatments(), window_days=30), as_of, campaign)


def test_a_window_the_data_cannot_close_asks_for_a_shorter_window_not_a_later_date():
    # The data end on 2024-03-20: spring's last assignment (2024-03-02) closes 18 days later at most.
    with pytest.raises(UserValueError, match=r"last date in the data \(2024-03-20\): give experiment.window_days=18 or less"):
        campaigns_to_evaluate(campaign_table(treatments(), window_days=30), dt.date(2024, 3, 20),
                              last_date=dt.date(2024, 3, 20))


@pytest.mark.parametrize("key, value, message", [
    ("window_days", 0, "experiment.window_days=0"),
    ("confidence_level", 1.0, "experiment.confidence_level=1.0: give a number between 0 and 1"),
    ("uplift_learner", "s", "experiment.uplift_learner=s is not one of t, x"),
    ("plan_effect", -0.01, "experiment.plan_effect=-0.01"),
    ("plan_base_rate", 1.5, "experiment.plan_base_rate=1.5"),
])
def test_experiment_settings_refuse_values_with_the_key(key, value, message):
    with pytest.raises(UserValueError, match=message):
        ExperimentConfig.from_dict({key: value})


def test_customers_are_described_the_day_before_their_campaign_and_later_data_cannot_change_it(tiny_transactions):
    # Campaign "june" starts 2024-06-30: its features are those of 2024-06-29, so A's order of the
    # 30th (the campaign's first day) is not in them.
    assigned = pd.DataFrame({"customer_id": ["A", "B", "D"], "campaign": "june",
                             "ts": pd.to_datetime(["2024-06-30"] * 3), "group": ["treatment", "control", "treatment"]})
    table = campaign_table(assigned, window_days=30)
    cutoffs = assignment_cutoffs(table)
    assert cutoffs == {"june": dt.date(2024, 6, 29)}
    features = assignment_features(frame_dataset(tiny_transactions), assigned, cutoffs)
    assert list(features["customer_id"]) == ["A", "B", "D"]
    a = features.iloc[0]
    assert a["frequency"] == 3 and a["recency_days"] == 29
    # D has no purchase by the cutoff: no features, not a made-up row.
    assert pd.isna(features.iloc[2]["frequency"])
    later = pd.concat([tiny_transactions, pd.DataFrame({
        "customer_id": ["A", "B"], "ts": pd.to_datetime(["2024-06-30 08:00", "2024-07-03 12:00"]), "amount": [500.0, 70.0],
        "order_id": ["late1", "late2"], "quantity": [1, 1], "category": ["home", "home"], "channel": ["web", "web"]})])
    again = assignment_features(frame_dataset(later), assigned, cutoffs)
    pd.testing.assert_frame_equal(features, again)


def test_the_churn_risk_is_taken_on_the_whole_population_and_customers_without_history_get_the_highest(tiny_transactions):
    assigned = pd.DataFrame({"customer_id": ["D", "A"], "campaign": "june",
                             "ts": pd.to_datetime(["2024-06-30"] * 2), "group": ["treatment", "control"]})
    seen = []

    def risk(features):
        seen.append(sorted(features["customer_id"]))
        return np.where(features["customer_id"] == "A", 0.2, 0.7)

    features = assignment_features(frame_dataset(tiny_transactions), assigned, {"june": dt.date(2024, 6, 29)},
                                   churn_risk=risk)
    assert seen == [["A", "B", "C"]]
    assert list(features["churn_risk"]) == [0.7, 0.2]


class FixedUplift:
    def __init__(self, values):
        self.values = np.asarray(values, dtype=float)

    def predict_uplift(self, X):
        return self.values


def test_the_expected_value_of_a_contact_is_uplift_times_ltv_less_its_cost_and_only_worthwhile_contacts_are_ranked():
    scores = pd.DataFrame({"customer_id": ["a", "b", "c", "d"], "ltv": [1000.0, 200.0, 50.0, np.nan]})
    features = pd.DataFrame({"customer_id": ["a", "b", "c", "d"], "x": [1, 2, 3, 4]})
    result = with_expected_value(scores, features, FixedUplift([0.05, 0.10, 0.02, 0.3]), {"contact_cost": 1.5})
    # a: 0.05 x 1000 - 1.5 = 48.5; b: 0.10 x 200 - 1.5 = 18.5; c: 0.02 x 50 - 1.5 = -0.5; d: no LTV, -1.5.
    assert list(result["expected_value"]) == [48.5, 18.5, -0.5, -1.5]
    assert result["contact_rank"].tolist() == [1, 2, pd.NA, pd.NA]
    assert list(result["expected_uplift"]) == [0.05, 0.10, 0.02, 0.3]
    with pytest.raises(ValueError, match="same customers in the same order"):
        with_expected_value(scores, features.iloc[::-1], FixedUplift([0, 0, 0, 0]), {})


def test_the_report_escapes_campaign_names_and_explains_each_number():
    from churnml.programs.report import render_experiment_report

    name = "<script>alert(1)</script>"
    campaigns = pd.DataFrame({"campaign": [name], "treatment": [10], "control": [10]})
    srm = pd.DataFrame({"campaign": [name], "pvalue": [0.5], "mismatch": [False]})
    lifts = pd.DataFrame({"campaign": [name], "metric": ["repurchase_rate"], "estimator": ["difference"], "lift": [0.05]})
    plan = pd.DataFrame({"base_rate": [0.2], "effect": [0.02], "n_treatment": [100], "n_control": [100]})
    page = render_experiment_report(f"Campaign {name}", {"data": name}, campaigns, srm, lifts, plan, None, {},
                                    notes=[name])
    assert "<script>" not in page and "&lt;script&gt;" in page
    for term in ("lift", "cuped", "sample-ratio check", "Qini coefficient", "pilot size"):
        assert f"<th>{term}</th>" in page
