"""Synthetic shop: customers, transaction lines, interactions, survey answers and campaigns.

The simulator plants the behaviour a churn model is supposed to learn.
Every customer has a latent lifetime; in the months before it ends most
(not all) customers buy less often, spend less per order and interact
less, while raising more support tickets and giving lower survey scores.
Some customers who stay have a temporary dip as well, so warning signs
carry real but imperfect signal.

It also plants what program evaluation is supposed to find: retention
campaigns with a randomised control group whose effect differs between
customers. A contact brings an extra order from customers drifting away
far more often than from frequent buyers, who buy anyway, and never from
customers who have left; ``simulate_shop(truth=True)`` returns both
potential outcomes of every target, so estimates can be checked against
the planted lift.

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

# Retention campaigns draw from a random stream of their own as well (spawn key 2): their
# assignments, the responses and the lines of the orders they bring. Every other row of every
# table is the same with and without them.
CAMPAIGN_STREAM = 2
# Contact days as fractions of the period that leaves room for the last outcome window; a
# campaign that would fall in the month of an earlier one is left out (very short periods).
CAMPAIGN_FRACTIONS = (0.55, 0.75, 0.95)
CAMPAIGN_HOUR = 9  # contacts go out at 09:00
CAMPAIGN_WINDOW_DAYS = 60  # outcome window (ts, ts + 60 days]; a response falls inside it
# Targets: signed up, and their last order at most this long before the contact.
CAMPAIGN_TARGET_DAYS = 365.0
CAMPAIGN_TREATMENT_SHARE = 0.5  # each target independently: treatment with this chance, else control
CAMPAIGN_COST_PER_CONTACT = 1.0  # per treated customer; the control group is not contacted (cost 0)
CAMPAIGN_CHANNELS = ("email", "app")  # app for customers whose preferred channel is the app
# The planted effect: the chance that a contacted customer places one extra order in the window.
# Customers drifting away (DRIFTING_DAYS or more since their last order, or in the decline before
# they leave) respond often; frequent buyers (a usual gap between orders under FREQUENT_GAP_DAYS)
# would buy anyway and rarely respond; customers whose latent lifetime has ended never do.
# Features see recency, frequency and the decline. Drifting is days since the last order rather
# than days against the customer's own pace: orders are a Poisson process, so how overdue a
# customer is on their own pace says nothing about the next weeks, and an effect planted on it
# would fall on customers who buy anyway. On the default demo about 30% of the targets are
# drifting and carry about 90% of the lift.
RESPONSE_DRIFTING = 0.30
RESPONSE_USUAL = 0.03
RESPONSE_FREQUENT = 0.01
DRIFTING_DAYS = 60.0
FREQUENT_GAP_DAYS = 20.0

# Order id prefixes by the source of a transaction row: orders, refunds, campaign responses.
ORDER_ID_PREFIXES = ("O", "R", "C")
_ORDER, _REFUND, _CAMPAIGN_ORDER = range(3)


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
    *,
    truth: bool = False,
) -> dict[str, pd.DataFrame]:
    """Simulate a shop's customers, order lines, interactions, survey answers and campaigns.

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
    truth : bool, default False
        Also return ``"campaign_truth"``, both potential outcomes of every
        campaign target (a simulator knows what the data cannot show).

    Returns
    -------
    dict of str to pandas.DataFrame
        ``"transactions"``: one row per order line, sorted by ``ts``, with
        ``customer_id``, ``ts``, ``amount`` (negative for refunds),
        ``order_id`` (``"O..."`` for orders, ``"R..."`` for refunds,
        ``"C..."`` for the extra orders of treated customers who responded to
        a campaign, each numbered in time order; campaign orders are never
        refunded), ``quantity`` (negative for returned units), ``category``,
        ``channel``.
        ``"interactions"``: ``customer_id``, ``ts``, ``kind`` (login, visit,
        email_open, support_ticket) and ``channel``, sorted by ``ts``.
        ``"customers"``: ``customer_id``, ``signup_ts``, ``region``
        (categorical), ``age`` (nullable Int64) and ``acquisition_channel``
        (categorical), numbered in signup order.
        ``"surveys"``: ``customer_id``, ``ts``, ``kind`` (nps, csat, ces),
        ``score`` (int64 on the kind's scale: 0-10, 1-5, 1-7) and ``channel``,
        sorted by ``ts``: relationship NPS surveys every few months, CSAT
        after a share of orders, CES after a share of support tickets.
        ``"treatments"``: ``customer_id``, ``ts`` (the contact time, 09:00 of
        the campaign day), ``campaign`` (``retention_YYYY_MM``), ``group``
        (treatment or control), ``cost`` (``CAMPAIGN_COST_PER_CONTACT`` for
        the treated, 0 for the control group) and ``channel`` (email or app),
        one row per target and campaign, sorted by ``ts`` and customer; see
        Notes.
        ``"campaign_truth"`` (only with ``truth=True``): the rows of
        ``"treatments"`` (``customer_id``, ``campaign``, ``group``, ``ts``)
        with ``repurchased_if_treated``, ``repurchased_if_control`` (bool:
        any purchase line in ``(ts, ts + CAMPAIGN_WINDOW_DAYS days]``),
        ``revenue_if_treated``, ``revenue_if_control`` (net amount of the
        customer's rows in that window, refunds included) and
        ``response_probability`` (the planted chance that the contact brings
        an extra order). The observed group's outcome is what the
        transactions show; a campaign's planted lift is
        ``mean(repurchased_if_treated - repurchased_if_control)``.

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

    Campaigns: at fractions ``CAMPAIGN_FRACTIONS`` of the period (which
    leaves room for the last outcome window) a retention campaign targets
    every customer who signed up and ordered within the past
    ``CAMPAIGN_TARGET_DAYS``, each independently in the treatment group with
    chance ``CAMPAIGN_TREATMENT_SHARE``, else in the control group. Every
    target gets a response drawn, with a chance set by their latent state at
    the contact (``RESPONSE_DRIFTING`` for customers ``DRIFTING_DAYS`` or
    more past their last order or in their decline, ``RESPONSE_FREQUENT``
    for frequent buyers, ``RESPONSE_USUAL`` otherwise, 0 once the latent
    lifetime has ended), on one of the days
    after the contact inside the window; a response that would fall after
    the customer leaves or after ``end`` does not happen. Only treated
    responders' extra orders (value, lines, categories and channel drawn as
    the shop's other orders are) enter the transactions, and they get no
    CSAT survey. The campaigns draw from a random stream of their own
    (``CAMPAIGN_STREAM``), so apart from the ``"C..."`` rows every table is
    the same with or without them. On the default demo each campaign's
    planted lift on repurchase within the window is about 5 percentage
    points, about 15 among the drifting and near 0 among frequent buyers.
    """
    if n_customers < 1:
        raise ValueError(f"n_customers must be at least 1, got {n_customers}")
    calendar = _make_calendar(start, end)
    rng = np.random.default_rng(seed)
    population = _draw_population(rng, calendar, n_customers)
    customer_ids = _customer_ids(n_customers)
    orders = _draw_orders(rng, calendar, population)
    rows = _transaction_rows(rng, calendar, population, orders)
    interactions = _draw_interactions(rng, calendar, population)
    survey_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SURVEY_STREAM,)))
    campaign_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(CAMPAIGN_STREAM,)))
    campaigns = _simulate_campaigns(campaign_rng, calendar, population, orders)
    rows = _with_campaign_orders(rows, campaigns)
    tables = {
        "transactions": _transactions_frame(calendar, rows, customer_ids),
        "interactions": _interactions_frame(calendar, interactions, customer_ids),
        "customers": _customers_frame(calendar, population, customer_ids),
        "surveys": _simulate_surveys(survey_rng, calendar, population, orders, interactions, customer_ids),
        "treatments": _treatments_frame(calendar, campaigns, customer_ids),
    }
    if truth:
        tables["campaign_truth"] = _campaign_truth_frame(calendar, campaigns, rows, customer_ids)
    return tables


def date_only(transactions: pd.DataFrame) -> pd.DataFrame:
    """The shop's transactions as a file of who bought on which day, without values: one row per
    customer and day with a purchase (refunds, times of day and every other column dropped), as
    a till's visit log or a loyalty card's date-only extract gives them.

    Parameters
    ----------
    transactions : pandas.DataFrame
        ``customer_id``, ``ts`` and ``amount`` (:func:`simulate_shop`'s transactions).

    Returns
    -------
    pandas.DataFrame
        ``customer_id`` and ``ts`` (midnight of the day), in time order.
    """
    bought = transactions[transactions["amount"] > 0]
    days = pd.DataFrame({"customer_id": bought["customer_id"], "ts": bought["ts"].dt.normalize()})
    return days.drop_duplicates().sort_values(["ts", "customer_id"], kind="stable", ignore_index=True)


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


def _transaction_rows(
    rng: np.random.Generator,
    calendar: _Calendar,
    population: _Population,
    orders: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Order lines and refunds of the drawn orders, sorted by time, with their ``source``
    (``_ORDER`` or ``_REFUND``) and ``campaign`` (-1: no campaign's)."""
    lines = _split_into_lines(rng, population, orders)
    refunds = _draw_refunds(rng, calendar, lines)
    # Both parts are already sorted by time, so the stable sort only merges two runs.
    order = np.argsort(np.concatenate([lines["t"], refunds["t"]]), kind="stable")
    combined = {key: np.concatenate([lines[key], refunds[key]])[order] for key in lines}
    combined["source"] = np.where(order >= lines["t"].size, _REFUND, _ORDER).astype(np.int8)
    combined["campaign"] = np.full(order.size, -1, dtype=np.int16)
    return combined


def _transactions_frame(
    calendar: _Calendar, combined: dict[str, np.ndarray], customer_ids: pa.Array
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": _as_str_series(customer_ids.take(pa.array(combined["owner"]))),
            "ts": _to_datetime(calendar, combined["t"]),
            "amount": combined["amount"],
            "order_id": _as_str_series(_order_ids(combined["order_no"], combined["source"])),
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
# Campaigns
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Campaigns:
    """Every campaign's targets, one entry per target (sorted by campaign, then customer), and
    the lines of the extra orders of every target who would respond, treated or not."""

    names: tuple[str, ...]
    t: np.ndarray  # contact time of each campaign
    campaign: np.ndarray  # campaign number of each target
    owner: np.ndarray  # customer index of each target
    treated: np.ndarray
    channel: np.ndarray  # CAMPAIGN_CHANNELS code
    response_probability: np.ndarray
    responds: np.ndarray  # would place an extra order if contacted
    lines: dict[str, np.ndarray]  # as _split_into_lines gives, responses in time order
    line_target: np.ndarray  # the target each line's order responds for


def _simulate_campaigns(
    rng: np.random.Generator, calendar: _Calendar, population: _Population, orders: dict[str, np.ndarray]
) -> _Campaigns:
    """Targets, random groups and potential responses of each campaign (see :func:`simulate_shop`).

    A campaign's targets are chosen on the orders before its contact, the extra orders of
    earlier campaigns' treated responders included, as a shop would choose them.
    """
    times, names = _campaign_times(calendar)
    n = population.signup.size
    window_days = int(CAMPAIGN_WINDOW_DAYS)
    app = CHANNELS.index("app")
    bought_owner, bought_t = orders["owner"], orders["t"]
    parts: dict[str, list[np.ndarray]] = {key: [] for key in ("campaign", "owner", "treated", "p", "responds", "t")}
    for k, t_contact in enumerate(times):
        before = bought_t < t_contact
        last = np.full(n, np.iinfo(np.int64).min)
        np.maximum.at(last, bought_owner[before], bought_t[before])
        target = np.flatnonzero(
            (population.signup < t_contact) & (last >= t_contact - _days(CAMPAIGN_TARGET_DAYS))
        ).astype(np.int32)
        treated = rng.random(target.size) < CAMPAIGN_TREATMENT_SHARE
        p = _response_probability(population, target, t_contact, last[target])
        # A day after the contact day and a time of day, so (contact, contact + window] holds it.
        day = t_contact // SECONDS_PER_DAY + 1 + (rng.random(target.size) * (window_days - 1)).astype(np.int64)
        t_response = day * SECONDS_PER_DAY + _time_of_day(rng, target.size)
        responds = (
            (rng.random(target.size) < p)
            & (t_response < population.lifetime_end[target])
            & (t_response < calendar.t_end)
        )
        for key, value in (("campaign", np.full(target.size, k, dtype=np.int16)), ("owner", target),
                           ("treated", treated), ("p", p), ("responds", responds), ("t", t_response)):
            parts[key].append(value)
        # Later campaigns see the orders this one brought.
        brought = treated & responds
        bought_owner = np.concatenate([bought_owner, target[brought]])
        bought_t = np.concatenate([bought_t, t_response[brought]])

    empty = {"campaign": np.int16, "owner": np.int32, "treated": bool, "p": float, "responds": bool, "t": np.int64}
    every = {key: np.concatenate(parts[key]) if parts[key] else np.zeros(0, empty[key]) for key in parts}
    responder = np.flatnonzero(every["responds"])
    responder = responder[np.argsort(every["t"][responder], kind="stable")]
    owner, t = every["owner"][responder], every["t"][responder]
    slump = _slump_state(population, owner, t)
    value_factor = _slump_factor(population.decline_value_floor[owner], slump, population.dip_value_factor[owner])
    value = population.order_scale[owner] * _unit_mean_lognormal(rng, ORDER_VALUE_SIGMA, owner.size)
    channel = _preferred_or_random(
        rng, population.preferred_channel[owner], PREFERRED_CHANNEL_SHARE, np.asarray(CHANNEL_SHARE)
    )
    lines = _split_into_lines(rng, population, {"owner": owner, "t": t, "value": value * value_factor, "channel": channel})
    return _Campaigns(
        names=names,
        t=times,
        campaign=every["campaign"],
        owner=every["owner"],
        treated=every["treated"],
        channel=np.where(population.preferred_channel[every["owner"]] == app, 1, 0).astype(np.int8),
        response_probability=every["p"],
        responds=every["responds"],
        lines=lines,
        line_target=responder[lines["order_no"]],
    )


def _campaign_times(calendar: _Calendar) -> tuple[np.ndarray, tuple[str, ...]]:
    """Contact times (09:00 of a day at CAMPAIGN_FRACTIONS of the period) and names ``retention_YYYY_MM``.

    The fractions apply to the period less one outcome window, so that the last window closes
    before the end; a period under two windows long is used whole. A campaign in the month of
    an earlier one is left out, so names are unique.
    """
    span = calendar.t_end - calendar.t_start
    window = int(_days(CAMPAIGN_WINDOW_DAYS))
    room = span - window if span > 2 * window else span
    times: list[int] = []
    names: list[str] = []
    for fraction in CAMPAIGN_FRACTIONS:
        day = (calendar.t_start + int(fraction * room)) // SECONDS_PER_DAY
        t = day * SECONDS_PER_DAY + CAMPAIGN_HOUR * SECONDS_PER_HOUR
        if not calendar.t_start <= t < calendar.t_end:
            continue
        name = "retention_" + pd.Timestamp(_to_datetime(calendar, np.array([t]))[0]).strftime("%Y_%m")
        if name not in names:
            times.append(t)
            names.append(name)
    return np.array(times, dtype=np.int64), tuple(names)


def _response_probability(
    population: _Population, owner: np.ndarray, t_contact: int, last_order: np.ndarray
) -> np.ndarray:
    """The planted chance that a contact at ``t_contact`` brings one extra order (RESPONSE_*)."""
    alive = population.lifetime_end[owner] > t_contact
    declining = (population.decline_value_floor[owner] < 1.0) & (t_contact >= population.decline_start[owner])
    drifting = (t_contact - last_order >= _days(DRIFTING_DAYS)) | declining
    frequent = population.purchase_rate[owner] * FREQUENT_GAP_DAYS > 1.0
    return np.select([~alive, drifting, frequent], [0.0, RESPONSE_DRIFTING, RESPONSE_FREQUENT], RESPONSE_USUAL)


def _with_campaign_orders(rows: dict[str, np.ndarray], campaigns: _Campaigns) -> dict[str, np.ndarray]:
    """The transaction rows with the lines of treated responders' orders merged in by time.

    Campaign orders are numbered in time order among themselves. The stable sort keeps the other
    rows in their order (a campaign line at the same second as another row follows it).
    """
    lines = campaigns.lines
    kept = campaigns.treated[campaigns.line_target]
    _, order_no = np.unique(lines["order_no"][kept], return_inverse=True)
    extra = {key: lines[key][kept] for key in lines}
    extra["order_no"] = order_no.astype(lines["order_no"].dtype)
    extra["source"] = np.full(order_no.size, _CAMPAIGN_ORDER, dtype=np.int8)
    extra["campaign"] = campaigns.campaign[campaigns.line_target[kept]]
    order = np.argsort(np.concatenate([rows["t"], extra["t"]]), kind="stable")
    return {key: np.concatenate([rows[key], extra[key]])[order] for key in rows}


def _treatments_frame(calendar: _Calendar, campaigns: _Campaigns, customer_ids: pa.Array) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": _as_str_series(customer_ids.take(pa.array(campaigns.owner))),
            "ts": _to_datetime(calendar, campaigns.t[campaigns.campaign]),
            "campaign": _as_str_series(_labels(campaigns.names, campaigns.campaign)),
            "group": _as_str_series(_labels(("control", "treatment"), campaigns.treated.astype(np.int8))),
            "cost": np.where(campaigns.treated, CAMPAIGN_COST_PER_CONTACT, 0.0),
            "channel": _as_str_series(_labels(CAMPAIGN_CHANNELS, campaigns.channel)),
        }
    )


def _campaign_truth_frame(
    calendar: _Calendar, campaigns: _Campaigns, rows: dict[str, np.ndarray], customer_ids: pa.Array
) -> pd.DataFrame:
    """Both potential outcomes of every target (see :func:`simulate_shop`).

    Without the contact a target's window holds the rows of the transactions other than this
    campaign's own orders; with it, also the extra order of a target who responds.
    """
    n = len(customer_ids)
    window = _days(CAMPAIGN_WINDOW_DAYS)
    bought_if_control = np.zeros(campaigns.owner.size, dtype=bool)
    revenue_if_control = np.zeros(campaigns.owner.size)
    for k, t_contact in enumerate(campaigns.t):
        inside = (rows["t"] > t_contact) & (rows["t"] <= t_contact + window) & (rows["campaign"] != k)
        owner, amount = rows["owner"][inside], rows["amount"][inside]
        bought = np.bincount(owner[amount > 0], minlength=n) > 0
        revenue = np.bincount(owner, weights=amount, minlength=n)
        target = campaigns.campaign == k
        bought_if_control[target] = bought[campaigns.owner[target]]
        revenue_if_control[target] = revenue[campaigns.owner[target]]
    extra_value = np.bincount(campaigns.line_target, weights=campaigns.lines["amount"], minlength=campaigns.owner.size)
    return pd.DataFrame(
        {
            "customer_id": _as_str_series(customer_ids.take(pa.array(campaigns.owner))),
            "campaign": _as_str_series(_labels(campaigns.names, campaigns.campaign)),
            "group": _as_str_series(_labels(("control", "treatment"), campaigns.treated.astype(np.int8))),
            "ts": _to_datetime(calendar, campaigns.t[campaigns.campaign]),
            "repurchased_if_treated": bought_if_control | campaigns.responds,
            "repurchased_if_control": bought_if_control,
            "revenue_if_treated": revenue_if_control + extra_value,
            "revenue_if_control": revenue_if_control,
            "response_probability": campaigns.response_probability,
        }
    )


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


def _order_ids(order_no: np.ndarray, source: np.ndarray) -> pa.Array:
    """``O000000001`` for orders, ``R000000001`` for refunds and ``C000000001`` for campaign
    orders (ORDER_ID_PREFIXES by ``source``), each numbered in time order."""
    prefix = _labels(ORDER_ID_PREFIXES, source)
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
