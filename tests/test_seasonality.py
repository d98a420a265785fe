"""Seasonality: the monthly multipliers of a shop, the operational time of a label window, and a
model whose calibration holds when the holdout window's season differs from the calibration's."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd
import pytest

from churnml.features.seasonality import (
    MIN_SEASONAL_MONTHS,
    monthly_purchase_rates,
    seasonal_index,
    seasonal_index_through,
    window_season_factor,
)
from churnml.models.training import train_and_evaluate
from churnml.simulate import MONTH_SEASONALITY, simulate_shop
from conftest import frame_dataset
from test_training import PLAN, quick_model

PLANTED = np.asarray(MONTH_SEASONALITY) / np.mean(MONTH_SEASONALITY)


def monthly_series(multipliers: np.ndarray, n_months: int, trend: float = 0.0, start: str = "2021-01-01") -> pd.Series:
    months = pd.date_range(start, periods=n_months, freq="MS")
    level = 100.0 * (1.0 + trend) ** np.arange(n_months)
    return pd.Series(level * multipliers[months.month - 1], index=months)


def test_index_recovers_planted_multipliers_under_a_trend():
    index = seasonal_index(monthly_series(PLANTED, 36, trend=0.02))
    np.testing.assert_allclose(index, PLANTED, atol=0.01)


def test_a_trend_alone_is_no_season():
    index = seasonal_index(monthly_series(np.ones(12), 36, trend=-0.05))
    np.testing.assert_allclose(index, np.ones(12), atol=0.01)


def test_no_index_from_less_than_two_years_or_an_empty_month():
    assert seasonal_index(monthly_series(PLANTED, MIN_SEASONAL_MONTHS - 1)) is None
    with_gap = monthly_series(PLANTED, 36)
    with_gap.iloc[5] = 0.0
    assert seasonal_index(with_gap) is None


def test_a_model_knows_only_the_months_its_labels_close_by():
    rates = monthly_series(PLANTED, 30)
    later = rates.copy()
    later.iloc[27:] *= 3.0  # April to June 2023, after the labels close
    last_day = dt.date(2023, 3, 31)
    np.testing.assert_array_equal(seasonal_index_through(later, last_day), seasonal_index_through(rates, last_day))
    np.testing.assert_array_equal(seasonal_index_through(rates, last_day), seasonal_index(rates.iloc[:27]))
    assert seasonal_index_through(rates, dt.date(2022, 12, 30)) is None  # December not complete: 23 months


def test_window_factor_weights_each_month_by_its_days():
    index = np.ones(12)
    index[9], index[10] = 2.0, 0.5  # October, November
    # (2024-09-30, 2024-11-09]: 31 October days and 9 November days.
    assert window_season_factor(index, dt.date(2024, 9, 30), 40) == pytest.approx((31 * 2.0 + 9 * 0.5) / 40)
    assert window_season_factor(None, dt.date(2024, 9, 30), 40) == 1.0


def test_rates_count_complete_months_up_to_as_of_only():
    orders = pd.DataFrame({
        "customer_id": ["a", "a", "b", "b", "a", "b"],
        "ts": pd.to_datetime(["2024-01-20", "2024-02-03", "2024-02-10", "2024-03-05", "2024-03-31", "2024-04-02"]),
        "amount": [10.0, 5.0, 7.0, 3.0, 4.0, 9.0],
    })
    rates = monthly_purchase_rates(frame_dataset(orders).transactions, dt.date(2024, 3, 31))
    # January is the data's first, partial month; April is after as_of.
    assert list(rates.index) == [pd.Timestamp("2024-02-01"), pd.Timestamp("2024-03-01")]
    np.testing.assert_allclose(rates.to_numpy(), [2 / 29, 2 / 31])
    later = pd.concat([orders, pd.DataFrame({"customer_id": ["c"], "ts": pd.to_datetime(["2024-03-31 18:00"]),
                                             "amount": [1.0]})], ignore_index=True)
    assert monthly_purchase_rates(frame_dataset(later).transactions, dt.date(2024, 3, 30)).equals(
        monthly_purchase_rates(frame_dataset(orders).transactions, dt.date(2024, 3, 30)))


@pytest.fixture(scope="module")
def seasonal_shop():
    """Three years of a shop with the demo's Q4 peak; the holdout window is October-December,
    the calibration snapshot's July-September."""
    shop = simulate_shop(n_customers=3000, start="2022-01-01", end="2024-12-31", seed=7)
    return frame_dataset(shop["transactions"], shop["interactions"], shop["customers"])


@pytest.mark.slow
@pytest.mark.parametrize("prior", ["pnbd", "bgnbd"])
@pytest.mark.parametrize("target", ["churn", "repurchase"])
def test_calibration_holds_when_the_holdout_season_differs(seasonal_shop, target, prior):
    ratios = {}
    for seasonality in (False, True):
        plan = dataclasses.replace(PLAN, target=target, cv_folds=0, refit=False, seasonality=seasonality)
        outcome = train_and_evaluate(seasonal_shop, quick_model(prior=prior), plan, progress=False)
        observed = outcome.holdout_table["label"].mean()
        ratios[seasonality] = outcome.probabilities["model"].mean() / observed
    assert abs(ratios[True] - 1) < 0.10
    assert abs(ratios[True] - 1) < abs(ratios[False] - 1)
