"""The shop's seasonality: how much the population's purchase rate in each calendar month departs
from its trend, and what that makes of a label window.

BTYD models assume a customer's purchase rate is constant in time. A shop whose fourth quarter
sells 30% more breaks that, and a model calibrated on a summer window then overstates churn in
winter. :func:`seasonal_index` measures the calendar months' multipliers by classical
decomposition, and :func:`window_season_factor` turns them into the factor by which a window's
calendar stretches or shrinks its time: the "operational time" of the window (purchases expected
in ``horizon_days`` of this season = purchases expected in ``factor x horizon_days`` of an
average one).
"""

from __future__ import annotations

import calendar
import datetime as dt

import ibis.expr.types as ir
import numpy as np
import pandas as pd

from churnml.features.build import orders_until
from churnml.features.dates import as_date

# Classical decomposition needs two full cycles to average each month's ratio to the trend over
# more than one year (statsmodels' seasonal_decompose refuses fewer).
MIN_SEASONAL_MONTHS = 24


def monthly_purchase_rates(transactions: ir.Table, as_of: str | dt.date) -> pd.Series:
    """Purchases per day in each complete calendar month on or before ``as_of``, shape
    ``(n_months,)``, indexed by the months' first days.

    A purchase is an order whose positive lines sum to more than zero, as in the labels. The
    month of the first order and a month that ``as_of`` cuts short are left out: their rates say
    how much of the month the data covers, not how much the shop sold.
    """
    cutoff = as_date(as_of)
    orders = orders_until(transactions, cutoff)
    purchases = orders.filter(orders.gross > 0)
    month = purchases.ts.truncate("M").name("month")
    counts = (purchases.group_by(month).aggregate(n=purchases.count()).to_pandas()
              .assign(month=lambda f: pd.to_datetime(f["month"]).dt.tz_localize(None))
              .set_index("month")["n"].sort_index())
    if counts.empty:
        return pd.Series(dtype=float)
    months = pd.date_range(counts.index.min(), pd.Timestamp(cutoff).to_period("M").to_timestamp(), freq="MS")
    counts = counts.reindex(months, fill_value=0).iloc[1:]
    last_day = pd.Timestamp(cutoff)
    complete = counts.index + pd.offsets.MonthEnd(0) <= last_day
    counts = counts[complete]
    return counts / counts.index.days_in_month.to_numpy()


def seasonal_index(rates: pd.Series) -> np.ndarray | None:
    """The multiplier of each calendar month (January first), shape ``(12,)``, mean 1; None when
    the rates cover fewer than :data:`MIN_SEASONAL_MONTHS` months or a month without purchases.

    Classical multiplicative decomposition: each month's ratio to the centred 12-month moving
    average, averaged per calendar month and normalised (``statsmodels.tsa.seasonal.
    seasonal_decompose``; Makridakis, Wheelwright & Hyndman, *Forecasting*, 1998, ch. 3). The
    moving average absorbs growth and decline of the customer base, so a shop that only grows
    or only loses customers gets no seasonality.

    ``rates``: purchases per day by month (:func:`monthly_purchase_rates`), consecutive months.
    """
    from statsmodels.tsa.seasonal import seasonal_decompose

    if len(rates) < MIN_SEASONAL_MONTHS or not (rates > 0).all():
        return None
    seasonal = seasonal_decompose(rates.to_numpy(dtype=float), model="multiplicative", period=12).seasonal
    index = np.empty(12)
    for position, month in enumerate(rates.index.month[:12]):
        index[month - 1] = seasonal[position]
    return index


def seasonal_index_through(rates: pd.Series, last_day: str | dt.date) -> np.ndarray | None:
    """:func:`seasonal_index` of the months of ``rates`` complete by ``last_day``: what a model
    whose labels close on ``last_day`` may know of the shop's seasons."""
    months = rates.index + pd.offsets.MonthEnd(0) <= pd.Timestamp(as_date(last_day))
    return seasonal_index(rates[months])


def window_season_factor(index: np.ndarray | None, as_of: str | dt.date, horizon_days: int) -> float:
    """The mean of the monthly ``index`` over the days of the window ``(as_of, as_of +
    horizon_days]``: the window's length in average-season days per day. 1 without an index.
    """
    if index is None:
        return 1.0
    start = as_date(as_of)
    weights = np.zeros(12)
    day = start + dt.timedelta(days=1)
    remaining = int(horizon_days)
    while remaining > 0:
        days_left_in_month = calendar.monthrange(day.year, day.month)[1] - day.day + 1
        taken = min(days_left_in_month, remaining)
        weights[day.month - 1] += taken
        remaining -= taken
        day += dt.timedelta(days=taken)
    return float(weights @ np.asarray(index, dtype=float) / weights.sum())
