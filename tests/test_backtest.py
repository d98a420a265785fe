"""The warning-rule backtest on a case small enough to count by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from churnml.programs.backtest import (
    ANY_FLAG,
    COLUMNS,
    MODEL,
    POOLED,
    RULE,
    backtest_frame,
    backtest_metrics,
    side_by_side,
    warning_backtest,
)

C0, C1, C2, C3 = "2023-10-01", "2024-01-01", "2024-02-01", "2024-03-01"
NR, OV = "no_repurchase_3m", "order_value_drop_40"

# customer, cutoff, last purchase on or before it, churned in the horizon after it, flags, model's churn probability.
# A stops buying on 2023-12-01; B buys on 2024-01-20 after an alert at C1 (a purchase ends the run); C's alerts
# break at C2; D buys until 2024-02-20; E never churns; F has refunds only (no purchase, no lead time); G left
# before the first cutoff (its first alert may predate the backtest: no lead time either).
ROWS = [
    ("A", C0, "2023-09-15", 0, False, False, 0.1), ("A", C1, "2023-12-01", 1, True, False, 0.9),
    ("A", C2, "2023-12-01", 1, True, False, 0.6), ("A", C3, "2023-12-01", 1, False, False, 0.5),
    ("B", C0, "2023-09-20", 0, False, False, 0.2), ("B", C1, "2023-12-15", 0, True, False, 0.2),
    ("B", C2, "2024-01-20", 1, True, False, 0.95), ("B", C3, "2024-01-20", 1, True, False, 0.4),
    ("C", C0, "2023-09-01", 0, False, False, 0.3), ("C", C1, "2023-11-01", 1, True, False, 0.8),
    ("C", C2, "2023-11-01", 1, False, False, 0.9), ("C", C3, "2023-11-01", 1, True, False, 0.3),
    ("D", C0, "2023-09-10", 0, False, False, 0.15), ("D", C1, "2023-12-20", 0, False, False, 0.1),
    ("D", C2, "2024-01-25", 0, False, False, 0.6), ("D", C3, "2024-02-20", 1, False, True, 0.9),
    ("E", C0, "2023-09-25", 0, False, False, 0.05), ("E", C1, "2023-12-28", 0, False, True, 0.3),
    ("E", C2, "2024-01-28", 0, True, False, 0.6), ("E", C3, "2024-02-28", 0, False, False, 0.1),
    ("F", C0, None, 1, True, False, 0.7), ("F", C1, None, 1, True, False, 0.7), ("F", C2, None, 1, True, False, 0.2),
    ("F", C3, None, 1, True, False, 0.8),
    ("G", C0, "2023-06-01", 1, True, False, 0.95), ("G", C1, "2023-06-01", 1, True, False, 0.99),
    ("G", C2, "2023-06-01", 1, True, False, 0.99), ("G", C3, "2023-06-01", 1, True, False, 0.99),
]


def tiny_frame() -> pd.DataFrame:
    frame = pd.DataFrame(ROWS, columns=["customer_id", "cutoff", "last_purchase", "churned", NR, OV,
                                        "churn_probability"])
    frame["cutoff"] = pd.to_datetime(frame["cutoff"])
    frame["last_purchase"] = pd.to_datetime(frame["last_purchase"])
    # Shuffled: the backtest orders the rows itself.
    return frame.sample(frac=1.0, random_state=3).reset_index(drop=True)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return warning_backtest(tiny_frame())


def row(table: pd.DataFrame, rule: str, scorer: str, cutoff: str) -> pd.Series:
    found = table[(table["rule"] == rule) & (table["scorer"] == scorer) & (table["cutoff"] == cutoff)]
    assert len(found) == 1
    return found.iloc[0]


def check(found: pd.Series, alerts: int, true_alerts: int, churners: int, leads: list[float]) -> None:
    assert (found["alerts"], found["true_alerts"], found["churners"]) == (alerts, true_alerts, churners)
    assert found["precision"] == pytest.approx(true_alerts / alerts) if alerts else math.isnan(found["precision"])
    assert found["recall"] == pytest.approx(true_alerts / churners)
    assert found["lead_times"] == len(leads)
    if leads:
        assert found["lead_time_median_days"] == pytest.approx(float(np.median(leads)))
        assert found["lead_time_mean_days"] == pytest.approx(float(np.mean(leads)))
    else:
        assert math.isnan(found["lead_time_median_days"]) and math.isnan(found["lead_time_mean_days"])


def test_the_table_is_tidy_one_row_per_rule_scorer_and_cutoff(table):
    assert list(table.columns) == list(COLUMNS)
    assert list(dict.fromkeys(table["rule"])) == [NR, OV, ANY_FLAG]  # low_interaction is absent: left out
    assert list(table["cutoff"].iloc[:5]) == [C0, C1, C2, C3, POOLED]
    assert len(table) == 3 * 2 * 5


def test_a_rule_by_hand(table):
    # C0: F and G alerted and churned; neither has a lead time (no purchase; gone before the first cutoff).
    check(row(table, NR, RULE, C0), alerts=2, true_alerts=2, churners=2, leads=[])
    # C1: A, B, C, F, G alerted; A, C, F, G churned. Leads: A 31 days (Dec 1 -> Jan 1), C 61.
    check(row(table, NR, RULE, C1), alerts=5, true_alerts=4, churners=4, leads=[31, 61])
    # C2: A's run began at C1 (31); B bought after its C1 alert, so its run begins at C2 (Jan 20 -> Feb 1, 12).
    check(row(table, NR, RULE, C2), alerts=5, true_alerts=4, churners=5, leads=[31, 12])
    # C3: C was not alerted at C2, so its run begins again at C3 (Nov 1 -> Mar 1, 2024 a leap year: 121).
    check(row(table, NR, RULE, C3), alerts=4, true_alerts=4, churners=6, leads=[12, 121])
    # Pooled: sums of each cutoff's counts; one lead per churn episode, its latest true alert's (C: 121).
    check(row(table, NR, RULE, POOLED), alerts=16, true_alerts=14, churners=17, leads=[31, 12, 121])


def test_the_model_at_the_rules_volume_by_hand(table):
    # C0, 2 alerts: G .95, F .7.
    check(row(table, NR, MODEL, C0), alerts=2, true_alerts=2, churners=2, leads=[])
    # C1, 5 alerts: G .99, A .9, C .8, F .7, E .3.
    check(row(table, NR, MODEL, C1), alerts=5, true_alerts=4, churners=4, leads=[31, 61])
    # C2, 5 alerts: G .99, B .95, C .9, then A, D and E tie at .6 for two places, given in customer order: A, D.
    # B's run begins here (12); C's began at C1 (61), A's too (31).
    check(row(table, NR, MODEL, C2), alerts=5, true_alerts=4, churners=5, leads=[12, 61, 31])
    # C3, 4 alerts: G .99, D .9, F .8, A .5. D was alerted at C2 but bought since: its run begins at C3 (Feb 20 ->
    # Mar 1, 10 days).
    check(row(table, NR, MODEL, C3), alerts=4, true_alerts=4, churners=6, leads=[10, 31])
    # Episodes: A 31, C 61, B 12, D 10 (F has no purchase, G left before C0).
    check(row(table, NR, MODEL, POOLED), alerts=16, true_alerts=14, churners=17, leads=[31, 61, 12, 10])


def test_a_rule_without_alerts_has_no_precision_and_any_flag_combines_the_flags(table):
    check(row(table, OV, RULE, C0), alerts=0, true_alerts=0, churners=2, leads=[])
    check(row(table, OV, RULE, C1), alerts=1, true_alerts=0, churners=4, leads=[])
    check(row(table, OV, RULE, C2), alerts=0, true_alerts=0, churners=5, leads=[])
    check(row(table, OV, RULE, C3), alerts=1, true_alerts=1, churners=6, leads=[10])
    check(row(table, OV, RULE, POOLED), alerts=2, true_alerts=1, churners=17, leads=[10])
    assert row(table, OV, MODEL, C2)["alerts"] == 0
    # Any flag: E joins at C1 (a false alert), D at C3 (10 days).
    check(row(table, ANY_FLAG, RULE, C1), alerts=6, true_alerts=4, churners=4, leads=[31, 61])
    check(row(table, ANY_FLAG, RULE, C3), alerts=5, true_alerts=5, churners=6, leads=[12, 121, 10])
    check(row(table, ANY_FLAG, RULE, POOLED), alerts=18, true_alerts=15, churners=17, leads=[31, 12, 121, 10])


def test_later_cutoffs_cannot_change_earlier_rows(table):
    early = tiny_frame()
    early = warning_backtest(early[early["cutoff"] < pd.Timestamp(C3)])
    kept = early[early["cutoff"] != POOLED].reset_index(drop=True)
    full = table[table["cutoff"].isin([C0, C1, C2])].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, full)


def test_metrics_name_the_pooled_figures(table):
    metrics = backtest_metrics(table)
    assert metrics["backtest_no_repurchase_3m_precision"] == pytest.approx(14 / 16)
    assert metrics["backtest_no_repurchase_3m_model_precision"] == pytest.approx(14 / 16)
    assert metrics["backtest_no_repurchase_3m_recall"] == pytest.approx(14 / 17)
    assert metrics["backtest_no_repurchase_3m_lead_time_days"] == pytest.approx(31.0)
    assert metrics["backtest_no_repurchase_3m_model_lead_time_days"] == pytest.approx(21.5)
    assert metrics["backtest_no_repurchase_3m_lead_time_mean_days"] == pytest.approx(164 / 3)
    assert metrics["backtest_any_flag_alerts"] == 18
    assert metrics["backtest_order_value_drop_40_model_recall"] == pytest.approx(
        row(table, OV, MODEL, POOLED)["true_alerts"] / 17)
    assert len(metrics) == 3 * 9


def test_side_by_side_puts_the_model_beside_the_rule(table):
    wide = side_by_side(table, pooled_only=True)
    assert list(wide.index) == [POOLED] * 3 and list(wide["rule"]) == [NR, OV, ANY_FLAG]
    assert wide.iloc[0]["model lead days"] == pytest.approx(21.5) and wide.iloc[0]["lead days"] == pytest.approx(31)
    assert (wide.iloc[0]["lead n"], wide.iloc[0]["model lead n"]) == (3, 4)
    assert len(side_by_side(table)) == 15


def test_backtest_frame_turns_a_repurchase_model_into_churn():
    scores = pd.DataFrame({
        "customer_id": ["a", "b"], "cutoff": pd.to_datetime(["2024-03-01", "2024-03-01"]), "label": [1, 0],
        "probability": [0.8, 0.25], "recency_days": [10.0, np.nan], NR: [False, pd.NA], "other": [1, 2]})
    frame = backtest_frame(scores, "repurchase")
    assert list(frame["churned"]) == [0, 1]
    assert list(frame["churn_probability"]) == pytest.approx([0.2, 0.75])
    assert frame["last_purchase"].iloc[0] == pd.Timestamp("2024-02-20") and pd.isna(frame["last_purchase"].iloc[1])
    assert list(frame[NR]) == [False, False] and "other" not in frame.columns
    churn = backtest_frame(scores, "churn")
    assert list(churn["churned"]) == [1, 0] and list(churn["churn_probability"]) == pytest.approx([0.8, 0.25])
    with pytest.raises(ValueError, match="unknown target"):
        backtest_frame(scores, "ltv")


def test_bad_rows_are_refused():
    frame = tiny_frame()
    with pytest.raises(ValueError, match="twice"):
        warning_backtest(pd.concat([frame, frame.iloc[:1]]))
    with pytest.raises(ValueError, match="none of the flags"):
        warning_backtest(frame.drop(columns=[NR, OV]))
    with pytest.raises(ValueError, match="finite"):
        warning_backtest(frame.assign(churn_probability=np.nan))
    with pytest.raises(ValueError, match="last_purchase"):
        warning_backtest(frame.drop(columns=["last_purchase"]))
