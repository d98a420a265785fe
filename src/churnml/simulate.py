"""Synthetic shop: customers, transaction lines, interactions and survey answers.

The simulator plants the behaviour a churn model is supposed to learn.
Every customer has a latent lifetime; in the months before it ends most
(not all) customers buy less often, spend less per order and interact
less, while raising more support tickets and giving lower survey scores.
Some customers who stay have a temporary dip as well, so warning signs
carry real but imperfect signal.

Event times are drawn as an inhomogeneous Poisson process, one calendar
month at a time for all customers at once: per-customer counts come from
``rng.poisson``, times are spread inside each customer's active part of
the month with ``np.repeat``, and time-varying intensity (weekday pattern,
pre-churn slowdown) is applied by thinning. Only the month loop is in
Python, so a million customers take well under a minute.

Internally times are int64 seconds since midnight of the start day and
labels are small integer codes; strings are built once, at the end, with
Arrow kernels.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

SECONDS_PER_DAY = 86_400
SECONDS_PER_HOUR = 3_600

CATEGORIES = ("grocery", "home", "electronics", "apparel", "beauty", "toys", "sports", "books")
CATEGORY_SHARE = (0.22, 0.14, 0.08, 0.16, 0.12, 0.08, 0.09, 0.11)
# Relative price level; decides how an order's value is split over its lines.
CATEGORY_PRICE_LEVEL = (0.7, 1.2, 2.5, 1.1, 0.8, 0.9, 1.3, 0.6)

CHANNELS = ("web", "app", "store")
CHANNEL_SHARE = (0.45, 0.35, 0.20)

INTERACTION_KINDS = ("login", "visit", "email_open", "support_ticket")
KIND_SHARE_NORMAL = (0.36, 0.40, 0.22, 0.02)
# During a slump the total interaction rate roughly halves, so a 0.12 share
# means about three times as many support tickets per day as usual.
KIND_SHARE_SLUMP = (0.30, 0.33, 0.25, 0.12)
# Channel mix per interaction kind (rows follow INTERACTION_KINDS): logins and
# e-mail opens cannot happen in a store.
KIND_CHANNEL_SHARE = (
    (0.55, 0.45, 0.00),
    (0.45, 0.35, 0.20),
    (0.60, 0.40, 0.00),
    (0.45, 0.30, 0.25),
)

REGIONS = ("north", "south", "east", "west", "central")
REGION_SHARE = (0.22, 0.24, 0.18, 0.20, 0.16)

ACQUISITION_CHANNELS = ("organic", "paid_search", "social", "referral", "email")
ACQUISITION_SHARE = (0.35, 0.25, 0.18, 0.12, 0.10)
# Referred customers stay longest, social-media signups leave soonest.
ACQUISITION_LIFETIME_FACTOR = (1.15, 0.9, 0.7, 1.35, 1.0)

# Purchase-rate multiplier by calendar month (January first).
MONTH_SEASONALITY = (0.85, 0.88, 0.95, 0.97, 1.0, 0.97, 0.95, 0.97, 1.0, 1.05, 1.35, 1.55)
# Monday first; weekends are busier.
WEEKDAY_WEIGHT = (0.92, 0.92, 0.94, 0.96, 1.04, 1.14, 1.08)
HOUR_WEIGHT = (
    0.15, 0.08, 0.05, 0.04, 0.04, 0.08, 0.20, 0.45, 0.70, 0.85, 0.95, 1.00,
    1.05, 1.00, 0.95, 0.95, 1.00, 1.10, 1.30, 1.45, 1.50, 1.30, 0.90, 0.45,
)  # fmt: skip

LINES_PER_ORDER_SHARE = (0.52, 0.30, 0.12, 0.06)

MEAN_DAYS_BETWEEN_ORDERS = 45.0
PURCHASE_RATE_SHAPE = 1.4  # gamma shape: smaller means more heterogeneous customers
MEAN_ORDER_VALUE = 50.0
CUSTOMER_SPEND_SIGMA = 0.45  # spread of customers' typical order value
ORDER_VALUE_SIGMA = 0.55  # spread of one customer's orders around their typical value
HIGH_VALUE_SHARE = 0.03
HIGH_VALUE_RATE_FACTOR = 2.0
HIGH_VALUE_SPEND_FACTOR = 3.0

MEAN_LIFETIME_DAYS = 1_800.0
SIGNUP_EARLY_BIAS = 1.2  # exponential decay of the signup density over the period

DECLINE_SHARE = 0.75  # churners whose behaviour declines before they leave
DECLINE_DAYS = (90.0, 150.0)
DECLINE_VALUE_FLOOR = (0.40, 0.60)
DECLINE_RATE_FLOOR = (0.50, 0.80)
DECLINE_INTERACTION_FLOOR = (0.30, 0.60)

DIP_SHARE = 0.20  # customers with one temporary slump that recovers
DIP_DAYS = (45.0, 120.0)
DIP_VALUE_FACTOR = (0.50, 0.75)
DIP_RATE_FACTOR = 0.75
DIP_INTERACTION_FACTOR = 0.60

BASE_INTERACTIONS_PER_DAY = 0.3 / 30.0
INTERACTIONS_PER_ORDER = 1.4
ENGAGEMENT_SIGMA = 0.5

FAVOURITE_CATEGORY_SHARE = 0.45
PREFERRED_CHANNEL_SHARE = 0.70
PREFERRED_INTERACTION_CHANNEL_SHARE = 0.60

REFUND_SHARE = 0.045  # of orders; a few fall past `end` and are dropped
REFUND_MIN_DELAY_DAYS = 2.0
REFUND_MEAN_EXTRA_DELAY_DAYS = 10.0
REFUND_MAX_DELAY_DAYS = 60.0  # the shop's return window
FULL_REFUND_SHARE = 0.65

AGE_MEAN, AGE_SD, AGE_RANGE = 42.0, 14.0, (18, 90)
AGE_MISSING_SHARE = 0.05

MIN_LINE_AMOUNT = 0.50

# Survey answers come from a random stream of their own (spawn key of the seed), so that the
# other tables are the same with and without them.
SURVEY_STREAM = 1
SURVEY_KINDS = ("nps", "csat", "ces")
SURVEY_CHANNELS = (*CHANNELS, "email")
NPS_CHANNEL_SHARE = (0.0, 0.35, 0.0, 0.65)  # relationship surveys go out by e-mail and in the app
# Answered NPS surveys per day while active: an invitation about every 120 days, answered by
# about a quarter of customers, as e-mailed relationship surveys typically are.
NPS_ANSWERS_PER_DAY = 0.25 / 120.0
CSAT_RESPONSE_RATE = 0.12  # of orders, asked a few days after the order
CSAT_DELAY_DAYS = (1.0, 7.0)
CES_RESPONSE_RATE = 0.30  # of support tickets, asked when the ticket closes
CES_DELAY_DAYS = (0.05, 2.0)
# Sentiment on a unit scale: a customer's lasting level plus the noise of one answer. A decline
# before churning lowers it by up to DECLINE_SENTIMENT_DROP, a temporary dip by DIP_SENTIMENT_DROP;
# customers who leave without warning answer as usual.
SENTIMENT_SIGMA = 0.8
ANSWER_SIGMA = 0.6
DECLINE_SENTIMENT_DROP = 1.5
DIP_SENTIMENT_DROP = 0.6
# An answer is round(centre + spread * sentiment) clipped to its scale (kinds in SURVEY_KINDS
# order): about 48% promoters and 13% detractors (NPS near +35), 78% satisfied, mean CES near 5.4.
SURVEY_CENTRE = (8.4, 4.2, 5.5)
SURVEY_SPREAD = (1.7, 0.9, 1.3)
SURVEY_RANGE = ((0, 10), (1, 5), (1, 7))


@dataclass(frozen=True)
class _Calendar:
    """Simulation period as int64 seconds since ``origin`` (midnight of the start day)."""

    origin: np.datetime64
    t_start: int
    t_end: int
    month_edges: np.ndarray  # segment boundaries, first = t_start, last = t_end
    month_seasonality: np.ndarray  # purchase-rate multiplier per segment
    origin_weekday: int


@dataclass(frozen=True)
class _Population:
    """Latent per-customer state, indexed by customer number - 1."""

    signup: np.ndarray
    lifetime_end: np.ndarray  # latent dropout time; may lie beyond the period
    purchase_rate: np.ndarray  # orders per day while fully active
    order_scale: np.ndarray  # typical order value
    interaction_rate: np.ndarray  # interactions per day while fully active
    favourite_category: np.ndarray
    preferred_channel: np.ndarray
    decline_start: np.ndarray
    decline_ramp: np.ndarray  # seconds until the decline reaches its floor
    decline_value_floor: np.ndarray  # 1.0 for customers who leave without warning
    decline_rate_floor: np.ndarray
    decline_interaction_floor: np.ndarray
    dip_start: np.ndarray
    dip_end: np.ndarray  # equal to dip_start for customers without a dip
    dip_value_factor: np.ndarray
    region: np.ndarray
    age: np.ndarray  # float with NaN for unknown
    acquisition_channel: np.ndarray


@dataclass(frozen=True)
class _Slump:
    """Where each event sits relative to its customer's decline and dip."""

    decline_progress: np.ndarray  # 0 before the decline, 1 once at the floor
    in_dip: np.ndarray

    @property
    def slumping(self) -> np.ndarray:
        return (self.decline_progress > 0) | self.in_dip


def simulate_shop(
    n_customers: int = 20_000,
    start: str = "2023-01-01",
    end: str = "2025-12-31",
    seed: int = 42,
) -> dict[str, pd.DataFrame]:
    """Simulate a shop's customers, order lines and interactions.

    Parameters
    ----------
    n_customers : int, default 20_000
        Number of customers who sign up during the period.
    start, end : str
        Period boundaries, anything ``pd.Timestamp`` parses. ``end`` is an
        instant: every generated timestamp is ``< end`` (pass
        ``"2025-12-31 23:59:59"`` to include the whole last day).
    seed : int, default 42
        Seed for ``np.random.default_rng``; equal arguments give identical frames.

    Returns
    -------
    dict of str to pandas.DataFrame
        ``"transactions"``: one row per order line, sorted by ``ts``, with
        ``customer_id``, ``ts``, ``amount`` (negative for refunds),
        ``order_id`` (``"O..."`` for orders, ``"R..."`` for refunds),
        ``quantity`` (negative for returned units), ``category``, ``channel``.
        ``"interactions"``: ``customer_id``, ``ts``, ``kind`` (login, visit,
        email_open, support_ticket) and ``channel``, sorted by ``ts``.
        ``"customers"``: ``customer_id``, ``signup_ts``, ``region``
        (categorical), ``age`` (nullable Int64) and ``acquisition_channel``
        (categorical), numbered in signup order.
        ``"surveys"``: ``customer_id``, ``ts``, ``kind`` (nps, csat, ces),
        ``score`` (int64 on the kind's scale: 0-10, 1-5, 1-7) and ``channel``,
        sorted by ``ts``: relationship NPS surveys every few months, CSAT
        after a share of orders, CES after a share of support tickets.

    Raises
    ------
    ValueError
        If ``n_customers`` < 1 or ``end`` is not after ``start``.

    Notes
    -----
    For the default three-year period expect roughly 12 orders, 22 order
    lines, 23 interactions and 3 survey answers per customer. Timestamps are
    naive ``datetime64[us]`` with whole seconds. The survey answers draw from
    a random stream of their own, so the other tables do not depend on them.
    """
    if n_customers < 1:
        raise ValueError(f"n_customers must be at least 1, got {n_customers}")
    calendar = _make_calendar(start, end)
    rng = np.random.default_rng(seed)
    population = _draw_population(rng, calendar, n_customers)
    customer_ids = _customer_ids(n_customers)
    orders = _draw_orders(rng, calendar, population)
    transactions = _transactions_frame(rng, calendar, population, orders, customer_ids)
    interactions = _draw_interactions(rng, calendar, population)
    survey_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SURVEY_STREAM,)))
    return {
        "transactions": transactions,
        "interactions": _interactions_frame(calendar, interactions, customer_ids),
        "customers": _customers_frame(calendar, population, customer_ids),
        "surveys": _simulate_surveys(survey_rng, calendar, population, orders, interactions, customer_ids),
    }


def write_shop(
    tables: dict[str, pd.DataFrame],
    directory: str | os.PathLike,
    fmt: str = "parquet",
) -> dict[str, pathlib.Path]:
    """Write each table to ``<directory>/<name>.<fmt>`` atomically.

    Each file is written to a temporary file in the same directory and then
    moved into place with ``os.replace``, so readers never see a partial file.

    Parameters
    ----------
    tables : dict of str to pandas.DataFrame
        Tables by name, e.g. the result of :func:`simulate_shop`.
    directory : str or os.PathLike
        Target directory; created if missing.
    fmt : {"parquet", "csv"}, default "parquet"
        Parquet stores timestamps as naive microsecond timestamps; CSV
        writes ISO 8601 timestamps (``2024-03-01T14:05:09``).

    Returns
    -------
    dict of str to pathlib.Path
        The written file per table name.

    Raises
    ------
    ValueError
        If ``fmt`` is not supported.
    """
    writers: dict[str, Callable[[pd.DataFrame, pathlib.Path], None]] = {
        "parquet": _write_parquet,
        "csv": _write_csv,
    }
    if fmt not in writers:
        raise ValueError(f"fmt must be one of {sorted(writers)}, got {fmt!r}")
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, frame in tables.items():
        target = directory / f"{name}.{fmt}"
        _write_atomically(target, lambda tmp, frame=frame: writers[fmt](frame, tmp))
        paths[name] = target
    return paths


# ---------------------------------------------------------------------------
# Calendar and population
# ---------------------------------------------------------------------------


def _make_calendar(start: str, end: str) -> _Calendar:
    start_ts, end_ts = pd.Timestamp(start), pd.Timestamp(end)
    if start_ts.tz is not None or end_ts.tz is not None:
        raise ValueError("start and end must be naive timestamps")
    if end_ts <= start_ts:
        raise ValueError(f"end ({end}) must be after start ({start})")
    origin = start_ts.normalize()
    month_starts = pd.date_range(origin + pd.offsets.MonthBegin(1), end_ts, freq="MS")
    edges = [start_ts, *(ts for ts in month_starts if ts < end_ts), end_ts]
    one_second = pd.Timedelta(seconds=1)
    edge_seconds = np.array([(ts - origin) // one_second for ts in edges], dtype=np.int64)
    seasonality = np.asarray(MONTH_SEASONALITY)[[ts.month - 1 for ts in edges[:-1]]]
    return _Calendar(
        origin=np.datetime64(origin.to_datetime64(), "us"),
        t_start=int(edge_seconds[0]),
        t_end=int(edge_seconds[-1]),
        month_edges=edge_seconds,
        month_seasonality=seasonality,
        origin_weekday=origin.day_of_week,
    )


def _draw_population(rng: np.random.Generator, calendar: _Calendar, n: int) -> _Population:
    signup = _draw_signups(rng, calendar, n)
    acquisition = rng.choice(len(ACQUISITION_CHANNELS), size=n, p=ACQUISITION_SHARE).astype(np.int8)

    high_value = rng.random(n) < HIGH_VALUE_SHARE
    rate_scale = 1.0 / (PURCHASE_RATE_SHAPE * MEAN_DAYS_BETWEEN_ORDERS)
    purchase_rate = rng.gamma(PURCHASE_RATE_SHAPE, rate_scale, n)
    purchase_rate *= np.where(high_value, HIGH_VALUE_RATE_FACTOR, 1.0)
    order_scale = MEAN_ORDER_VALUE * _unit_mean_lognormal(rng, CUSTOMER_SPEND_SIGMA, n)
    order_scale *= np.where(high_value, HIGH_VALUE_SPEND_FACTOR, 1.0)
    # Engaged customers both buy more and show up more; the independent
    # engagement term keeps the two from being perfectly correlated.
    engagement = _unit_mean_lognormal(rng, ENGAGEMENT_SIGMA, n)
    interaction_rate = engagement * (
        BASE_INTERACTIONS_PER_DAY + INTERACTIONS_PER_ORDER * purchase_rate
    )

    mean_lifetime = MEAN_LIFETIME_DAYS * np.asarray(ACQUISITION_LIFETIME_FACTOR)[acquisition]
    lifetime_end = signup + _days(rng.exponential(mean_lifetime))

    declines = rng.random(n) < DECLINE_SHARE

    def decline_floor(bounds: tuple[float, float]) -> np.ndarray:
        return np.where(declines, rng.uniform(*bounds, n), 1.0)

    decline_length = _days(rng.uniform(*DECLINE_DAYS, n))
    # Behaviour sinks over the first half of the window and then stays low.
    decline_ramp = np.maximum(decline_length // 2, 1)

    has_dip = rng.random(n) < DIP_SHARE
    last_active = np.minimum(lifetime_end, calendar.t_end)
    dip_start = signup + (rng.random(n) * (last_active - signup)).astype(np.int64)
    dip_end = np.where(has_dip, dip_start + _days(rng.uniform(*DIP_DAYS, n)), dip_start)

    return _Population(
        signup=signup,
        lifetime_end=lifetime_end,
        purchase_rate=purchase_rate,
        order_scale=order_scale,
        interaction_rate=interaction_rate,
        favourite_category=rng.choice(len(CATEGORIES), size=n, p=CATEGORY_SHARE).astype(np.int8),
        preferred_channel=rng.choice(len(CHANNELS), size=n, p=CHANNEL_SHARE).astype(np.int8),
        decline_start=lifetime_end - decline_length,
        decline_ramp=decline_ramp,
        decline_value_floor=decline_floor(DECLINE_VALUE_FLOOR),
        decline_rate_floor=decline_floor(DECLINE_RATE_FLOOR),
        decline_interaction_floor=decline_floor(DECLINE_INTERACTION_FLOOR),
        dip_start=dip_start,
        dip_end=dip_end,
        dip_value_factor=rng.uniform(*DIP_VALUE_FACTOR, n),
        region=rng.choice(len(REGIONS), size=n, p=REGION_SHARE).astype(np.int8),
        age=_draw_ages(rng, n),
        acquisition_channel=acquisition,
    )


def _draw_signups(rng: np.random.Generator, calendar: _Calendar, n: int) -> np.ndarray:
    """Sorted signup times with a truncated-exponential density favouring the early period.

    Sorting makes customer numbers follow signup order, as a real shop's ids do.
    """
    span = calendar.t_end - calendar.t_start
    k = SIGNUP_EARLY_BIAS
    fraction = -np.log1p(-rng.random(n) * -np.expm1(-k)) / k  # inverse CDF on [0, 1)
    day = (calendar.t_start + fraction * span) // SECONDS_PER_DAY
    signup = day.astype(np.int64) * SECONDS_PER_DAY + _time_of_day(rng, n)
    return np.sort(np.clip(signup, calendar.t_start, calendar.t_end - 1))


def _draw_ages(rng: np.random.Generator, n: int) -> np.ndarray:
    age = np.clip(np.round(rng.normal(AGE_MEAN, AGE_SD, n)), *AGE_RANGE)
    return np.where(rng.random(n) < AGE_MISSING_SHARE, np.nan, age)


def _unit_mean_lognormal(rng: np.random.Generator, sigma: float, size: int) -> np.ndarray:
    return rng.lognormal(-0.5 * sigma**2, sigma, size)


def _days(days: np.ndarray) -> np.ndarray:
    return (np.asarray(days) * SECONDS_PER_DAY).astype(np.int64)


# ---------------------------------------------------------------------------
# Event times
# ---------------------------------------------------------------------------


def _time_of_day(rng: np.random.Generator, size: int) -> np.ndarray:
    """Seconds after midnight following HOUR_WEIGHT."""
    weight = np.asarray(HOUR_WEIGHT) / np.sum(HOUR_WEIGHT)
    upper = np.cumsum(weight)
    upper[-1] = 1.0
    u = rng.random(size)
    hour = np.searchsorted(upper, u, side="right")
    # The position of u inside its hour's slice of the CDF is itself uniform,
    # so it places the event within the hour without a second draw.
    within_hour = (u - (upper[hour] - weight[hour])) / weight[hour]
    seconds = (hour * SECONDS_PER_HOUR + within_hour * SECONDS_PER_HOUR).astype(np.int64)
    return np.clip(seconds, 0, SECONDS_PER_DAY - 1)


def _sample_event_times(
    rng: np.random.Generator,
    calendar: _Calendar,
    rate_per_day: np.ndarray,
    window_start: np.ndarray,
    window_end: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson event times for every customer inside their own window.

    The intensity is ``rate_per_day`` x month seasonality x weekday weight x
    hour-of-day profile. Candidates are drawn over the whole days touching a
    customer's part of each month, then those outside the window and a
    weekday-dependent share are rejected (thinning), which leaves an exact
    Poisson process on the window.

    Returns
    -------
    owner : int32 array
        Customer index of each event.
    t : int64 array
        Event time in calendar seconds, ascending.
    """
    weekday_weight = np.asarray(WEEKDAY_WEIGHT) / np.mean(WEEKDAY_WEIGHT)
    weekday_max = weekday_weight.max()
    owners, times = [], []
    for month, season in enumerate(calendar.month_seasonality):
        lo = np.maximum(window_start, calendar.month_edges[month])
        hi = np.minimum(window_end, calendar.month_edges[month + 1])
        active = np.flatnonzero(hi > lo)
        lo, hi = lo[active], hi[active]
        first_day = lo // SECONDS_PER_DAY
        n_days = -(-hi // SECONDS_PER_DAY) - first_day
        counts = rng.poisson(rate_per_day[active] * (season * weekday_max) * n_days)
        local = np.repeat(np.arange(active.size), counts)

        day = first_day[local] + (rng.random(local.size) * n_days[local]).astype(np.int64)
        t = day * SECONDS_PER_DAY + _time_of_day(rng, local.size)
        weekday = (calendar.origin_weekday + day) % 7
        keep = (
            (t >= lo[local])
            & (t < hi[local])
            & (rng.random(local.size) * weekday_max < weekday_weight[weekday])
        )
        # Months follow each other, so sorting within each month sorts the whole.
        local, t = local[keep], t[keep]
        by_time = np.argsort(t, kind="stable")
        owners.append(active[local[by_time]].astype(np.int32))
        times.append(t[by_time])
    return np.concatenate(owners), np.concatenate(times)


def _slump_state(population: _Population, owner: np.ndarray, t: np.ndarray) -> _Slump:
    progress = (t - population.decline_start[owner]) / population.decline_ramp[owner]
    in_dip = (t >= population.dip_start[owner]) & (t < population.dip_end[owner])
    return _Slump(decline_progress=np.clip(progress, 0.0, 1.0), in_dip=in_dip)


def _slump_factor(floor: np.ndarray, slump: _Slump, dip_factor: np.ndarray | float) -> np.ndarray:
    """Multiplier on normal behaviour: linear decline towards ``floor``, times the dip factor."""
    decline = 1.0 - (1.0 - floor) * slump.decline_progress
    return decline * np.where(slump.in_dip, dip_factor, 1.0)


def _thin(rng: np.random.Generator, keep_probability: np.ndarray) -> np.ndarray:
    return rng.random(keep_probability.size) < keep_probability


# ---------------------------------------------------------------------------
# Transactions
# ---------------------------------------------------------------------------


def _transactions_frame(
    rng: np.random.Generator,
    calendar: _Calendar,
    population: _Population,
    orders: dict[str, np.ndarray],
    customer_ids: pa.Array,
) -> pd.DataFrame:
    """Order lines and refunds of the drawn orders, sorted by time."""
    lines = _split_into_lines(rng, population, orders)
    refunds = _draw_refunds(rng, calendar, lines)
    # Both parts are already sorted by time, so the stable sort only merges two runs.
    order = np.argsort(np.concatenate([lines["t"], refunds["t"]]), kind="stable")
    combined = {key: np.concatenate([lines[key], refunds[key]])[order] for key in lines}
    is_refund = order >= lines["t"].size
    return pd.DataFrame(
        {
            "customer_id": _as_str_series(customer_ids.take(pa.array(combined["owner"]))),
            "ts": _to_datetime(calendar, combined["t"]),
            "amount": combined["amount"],
            "order_id": _as_str_series(_order_ids(combined["order_no"], is_refund)),
            "quantity": combined["quantity"],
            "category": _as_str_series(_labels(CATEGORIES, combined["category"])),
            "channel": _as_str_series(_labels(CHANNELS, combined["channel"])),
        }
    )


def _draw_orders(
    rng: np.random.Generator, calendar: _Calendar, population: _Population
) -> dict[str, np.ndarray]:
    """Orders sorted by time: owner, t, value and channel."""
    owner, t = _sample_event_times(
        rng, calendar, population.purchase_rate, population.signup, population.lifetime_end
    )
    slump = _slump_state(population, owner, t)
    keep = _thin(rng, _slump_factor(population.decline_rate_floor[owner], slump, DIP_RATE_FACTOR))
    owner, t, slump = owner[keep], t[keep], _Slump(slump.decline_progress[keep], slump.in_dip[keep])

    value_factor = _slump_factor(
        population.decline_value_floor[owner], slump, population.dip_value_factor[owner]
    )
    value = population.order_scale[owner] * _unit_mean_lognormal(rng, ORDER_VALUE_SIGMA, owner.size)
    channel = _preferred_or_random(
        rng, population.preferred_channel[owner], PREFERRED_CHANNEL_SHARE, np.asarray(CHANNEL_SHARE)
    )
    return {"owner": owner, "t": t, "value": value * value_factor, "channel": channel}


def _split_into_lines(
    rng: np.random.Generator, population: _Population, orders: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Expand orders into 1-4 lines that share the order value, pricier categories taking more."""
    n_orders = orders["t"].size
    n_lines = rng.choice(len(LINES_PER_ORDER_SHARE), size=n_orders, p=LINES_PER_ORDER_SHARE) + 1
    order_no = np.repeat(np.arange(n_orders, dtype=np.int32), n_lines)
    position = np.arange(order_no.size) - np.repeat(np.cumsum(n_lines) - n_lines, n_lines)
    owner = orders["owner"][order_no]

    category = _draw_line_categories(rng, population.favourite_category[owner], position)
    weight = rng.gamma(2.0, 1.0, order_no.size) * np.asarray(CATEGORY_PRICE_LEVEL)[category]
    share = weight / np.bincount(order_no, weights=weight, minlength=n_orders)[order_no]
    amount = np.maximum(np.round(orders["value"][order_no] * share, 2), MIN_LINE_AMOUNT)
    return {
        "owner": owner,
        "t": orders["t"][order_no],
        "amount": amount,
        "order_no": order_no,
        "quantity": rng.geometric(0.72, order_no.size).astype(np.int64),
        "category": category,
        "channel": orders["channel"][order_no],
    }


def _draw_line_categories(
    rng: np.random.Generator, favourite: np.ndarray, position: np.ndarray
) -> np.ndarray:
    """Category per line, distinct within an order.

    Without a product id two lines of one order with the same category,
    amount and quantity would be identical rows, which loaders drop as
    duplicates; a clashing line moves on to the next category instead.
    """
    n_categories = len(CATEGORIES)
    category = np.where(
        rng.random(position.size) < FAVOURITE_CATEGORY_SHARE,
        favourite,
        rng.choice(n_categories, size=position.size, p=CATEGORY_SHARE),
    ).astype(np.int8)
    for k in range(1, len(LINES_PER_ORDER_SHARE)):
        line = np.flatnonzero(position == k)
        # k earlier lines block at most k categories, so k moves always suffice.
        for _ in range(k):
            clash = np.zeros(line.size, dtype=bool)
            for back in range(1, k + 1):
                clash |= category[line] == category[line - back]
            category[line[clash]] = (category[line[clash]] + 1) % n_categories
    return category


def _draw_refunds(
    rng: np.random.Generator, calendar: _Calendar, lines: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Refund lines for a share of orders, sorted by time, dropped if they fall after the period.

    Each refund returns some or all units of one line of the order, at the
    proportional price, in the same category and channel.
    """
    n_lines = np.bincount(lines["order_no"])
    first_line = np.cumsum(n_lines) - n_lines
    refunded_orders = np.flatnonzero(rng.random(first_line.size) < REFUND_SHARE)
    line_in_order = rng.random(refunded_orders.size) * n_lines[refunded_orders]
    row = first_line[refunded_orders] + line_in_order.astype(np.int64)

    delay_days = REFUND_MIN_DELAY_DAYS + rng.exponential(REFUND_MEAN_EXTRA_DELAY_DAYS, row.size)
    delay = _days(np.minimum(delay_days, REFUND_MAX_DELAY_DAYS))
    t = lines["t"][row] + delay
    bought = lines["quantity"][row]
    full = rng.random(row.size) < FULL_REFUND_SHARE
    returned = np.where(full, bought, 1 + (rng.random(row.size) * bought).astype(np.int64))
    returned = np.minimum(returned, bought)
    amount = -np.round(lines["amount"][row] * returned / bought, 2)

    keep = t < calendar.t_end
    row, t, returned, amount = row[keep], t[keep], returned[keep], amount[keep]
    order = np.argsort(t, kind="stable")
    row, t, returned, amount = row[order], t[order], returned[order], amount[order]
    return {
        "owner": lines["owner"][row],
        "t": t,
        "amount": amount,
        "order_no": np.arange(row.size, dtype=np.int32),
        "quantity": -returned,
        "category": lines["category"][row],
        "channel": lines["channel"][row],
    }


# ---------------------------------------------------------------------------
# Interactions
# ---------------------------------------------------------------------------


def _draw_interactions(
    rng: np.random.Generator, calendar: _Calendar, population: _Population
) -> dict[str, np.ndarray]:
    """Interactions sorted by time: owner, t, kind and channel codes."""
    owner, t = _sample_event_times(
        rng, calendar, population.interaction_rate, population.signup, population.lifetime_end
    )
    slump = _slump_state(population, owner, t)
    floor = population.decline_interaction_floor[owner]
    keep = _thin(rng, _slump_factor(floor, slump, DIP_INTERACTION_FACTOR))
    owner, t, slumping = owner[keep], t[keep], slump.slumping[keep]

    kind_share = np.array([KIND_SHARE_NORMAL, KIND_SHARE_SLUMP])
    kind = _draw_by_group(rng, kind_share, slumping.astype(np.int8))
    channel = _interaction_channel(rng, kind, population.preferred_channel[owner])
    return {"owner": owner, "t": t, "kind": kind, "channel": channel}


def _interactions_frame(
    calendar: _Calendar, interactions: dict[str, np.ndarray], customer_ids: pa.Array
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": _as_str_series(customer_ids.take(pa.array(interactions["owner"]))),
            "ts": _to_datetime(calendar, interactions["t"]),
            "kind": _as_str_series(_labels(INTERACTION_KINDS, interactions["kind"])),
            "channel": _as_str_series(_labels(CHANNELS, interactions["channel"])),
        }
    )


def _interaction_channel(
    rng: np.random.Generator, kind: np.ndarray, preferred: np.ndarray
) -> np.ndarray:
    """The customer's preferred channel where the kind allows it, else the kind's usual mix."""
    kind_channel_share = np.asarray(KIND_CHANNEL_SHARE)
    usual = _draw_by_group(rng, kind_channel_share, kind)
    allowed = kind_channel_share[kind, preferred] > 0
    use_preferred = allowed & (rng.random(kind.size) < PREFERRED_INTERACTION_CHANNEL_SHARE)
    return np.where(use_preferred, preferred, usual).astype(np.int8)


# ---------------------------------------------------------------------------
# Surveys
# ---------------------------------------------------------------------------


def _simulate_surveys(
    rng: np.random.Generator,
    calendar: _Calendar,
    population: _Population,
    orders: dict[str, np.ndarray],
    interactions: dict[str, np.ndarray],
    customer_ids: pa.Array,
) -> pd.DataFrame:
    """Answered surveys, sorted by time: NPS while active, CSAT after orders, CES after tickets.

    Scores follow the customer's sentiment at the time of the answer (:func:`_survey_scores`),
    so customers whose behaviour declines before they leave answer lower.
    """
    sentiment = rng.normal(0.0, SENTIMENT_SIGMA, population.signup.size)
    nps_owner, nps_t = _sample_event_times(
        rng, calendar, np.full(population.signup.size, NPS_ANSWERS_PER_DAY), population.signup, population.lifetime_end
    )
    nps_channel = rng.choice(len(SURVEY_CHANNELS), size=nps_owner.size, p=NPS_CHANNEL_SHARE)
    csat_owner, csat_t, csat_channel = _answers_after(
        rng, calendar, orders["owner"], orders["t"], orders["channel"], CSAT_RESPONSE_RATE, CSAT_DELAY_DAYS
    )
    ticket = interactions["kind"] == INTERACTION_KINDS.index("support_ticket")
    ces_owner, ces_t, ces_channel = _answers_after(
        rng, calendar, interactions["owner"][ticket], interactions["t"][ticket], interactions["channel"][ticket],
        CES_RESPONSE_RATE, CES_DELAY_DAYS,
    )
    owner = np.concatenate([nps_owner, csat_owner, ces_owner])
    t = np.concatenate([nps_t, csat_t, ces_t])
    kind = np.repeat(np.arange(len(SURVEY_KINDS), dtype=np.int8), [nps_owner.size, csat_owner.size, ces_owner.size])
    channel = np.concatenate([nps_channel, csat_channel, ces_channel]).astype(np.int8)
    score = _survey_scores(rng, population, sentiment, owner, t, kind)
    order = np.lexsort((kind, owner, t))
    owner, t, kind, score, channel = owner[order], t[order], kind[order], score[order], channel[order]
    return pd.DataFrame(
        {
            "customer_id": _as_str_series(customer_ids.take(pa.array(owner))),
            "ts": _to_datetime(calendar, t),
            "kind": _as_str_series(_labels(SURVEY_KINDS, kind)),
            "score": score,
            "channel": _as_str_series(_labels(SURVEY_CHANNELS, channel)),
        }
    )


def _answers_after(
    rng: np.random.Generator,
    calendar: _Calendar,
    owner: np.ndarray,
    t: np.ndarray,
    channel: np.ndarray,
    response_rate: float,
    delay_days: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The events that a survey answer follows (a share ``response_rate``), answered a uniform
    delay later; answers that would fall after the period are dropped."""
    answered = rng.random(t.size) < response_rate
    owner, t, channel = owner[answered], t[answered], channel[answered]
    t = t + _days(rng.uniform(*delay_days, t.size))
    kept = t < calendar.t_end
    return owner[kept], t[kept], channel[kept]


def _survey_scores(
    rng: np.random.Generator,
    population: _Population,
    sentiment: np.ndarray,
    owner: np.ndarray,
    t: np.ndarray,
    kind: np.ndarray,
) -> np.ndarray:
    """int64 answers on each kind's scale (SURVEY_RANGE) from the sentiment at the time.

    Only customers whose behaviour declines before they leave (a decline floor below 1) lose
    sentiment in the decline; anyone in a temporary dip loses some too.
    """
    slump = _slump_state(population, owner, t)
    declines = population.decline_value_floor[owner] < 1.0
    drop = DECLINE_SENTIMENT_DROP * slump.decline_progress * declines + DIP_SENTIMENT_DROP * slump.in_dip
    mood = sentiment[owner] - drop + rng.normal(0.0, ANSWER_SIGMA, owner.size)
    raw = np.asarray(SURVEY_CENTRE)[kind] + np.asarray(SURVEY_SPREAD)[kind] * mood
    low, high = np.asarray(SURVEY_RANGE).T
    return np.clip(np.rint(raw), low[kind], high[kind]).astype(np.int64)


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------


def _draw_by_group(
    rng: np.random.Generator, share_by_group: np.ndarray, group: np.ndarray
) -> np.ndarray:
    """One category code per element, drawn from the share row of its group (inverse CDF)."""
    cumulative = np.cumsum(share_by_group, axis=1)
    u = rng.random(group.size)
    code = np.zeros(group.size, dtype=np.int8)
    for upper in cumulative[:, :-1].T:
        code += u >= upper[group]
    return code


def _preferred_or_random(
    rng: np.random.Generator, preferred: np.ndarray, preferred_share: float, share: np.ndarray
) -> np.ndarray:
    other = rng.choice(share.size, size=preferred.size, p=share)
    return np.where(rng.random(preferred.size) < preferred_share, preferred, other).astype(np.int8)


def _customer_ids(n: int) -> pa.Array:
    """``C0000001``, ``C0000002``, ...; more digits beyond 9,999,999 customers."""
    return _prefixed_numbers("C", np.arange(1, n + 1), min_width=7)


def _order_ids(order_no: np.ndarray, is_refund: np.ndarray) -> pa.Array:
    """``O000000001`` for orders and ``R000000001`` for refunds, numbered in time order."""
    prefix = pc.if_else(pa.array(is_refund), "R", "O")
    return _prefixed_numbers(prefix, order_no + 1, min_width=9)


def _prefixed_numbers(prefix: str | pa.Array, numbers: np.ndarray, min_width: int) -> pa.Array:
    width = max(min_width, len(str(int(numbers.max(initial=0)))))
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers), pa.string()), width, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _labels(names: tuple[str, ...], codes: np.ndarray) -> pa.Array:
    return pa.array(names, pa.string()).take(pa.array(codes))


def _as_str_series(values: pa.Array) -> pd.Series:
    return pd.Series(values, dtype="str")


def _to_datetime(calendar: _Calendar, seconds: np.ndarray) -> np.ndarray:
    return calendar.origin + seconds.astype("timedelta64[s]").astype("timedelta64[us]")


def _customers_frame(
    calendar: _Calendar, population: _Population, customer_ids: pa.Array
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": _as_str_series(customer_ids),
            "signup_ts": _to_datetime(calendar, population.signup),
            "region": pd.Categorical.from_codes(population.region, categories=list(REGIONS)),
            "age": pd.array(population.age, dtype="Int64"),
            "acquisition_channel": pd.Categorical.from_codes(
                population.acquisition_channel, categories=list(ACQUISITION_CHANNELS)
            ),
        }
    )


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def _write_atomically(target: pathlib.Path, write: Callable[[pathlib.Path], None]) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = pathlib.Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_parquet(frame: pd.DataFrame, path: pathlib.Path) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, path, coerce_timestamps="us")


def _write_csv(frame: pd.DataFrame, path: pathlib.Path) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            table = table.set_column(i, field.name, _iso_timestamps(table.column(i)))
    pa_csv.write_csv(table, path)


def _iso_timestamps(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """ISO 8601 text; fractional seconds only when the data has them."""
    try:
        column = column.cast(pa.timestamp("s"))  # safe cast fails if it would drop fractions
    except pa.ArrowInvalid:
        pass
    return pc.strftime(column, format="%Y-%m-%dT%H:%M:%S")
