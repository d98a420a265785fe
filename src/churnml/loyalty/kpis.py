"""Loyalty-program KPIs: repurchase, churn, order value, retention by cohort, CLV, survey scores,
and the program's progress against its targets.

Definitions (``A`` is ``active_days``; a purchase is an order of positive value, lines rolled up
to orders as the feature build does; days are UTC calendar days):

- A customer is **active** on day ``d`` with a purchase in the ``A`` days ending on ``d``
  (``d - A < purchase day <= d``); they **lapse** on the day ``A`` days after their last purchase.
- The **base** of month ``m`` is the customers active on the last day before ``m``.
- **Repurchase rate** of ``m``: the share of the base that buys in ``m``.
- **Churn rate** of ``m``: the share of the base that lapses in ``m`` (no purchase in the ``A``
  days ending on the month's last day).
- **Average order value** (AOV) of ``m``: net revenue (purchases less refunds, both dated in ``m``)
  per purchase order in ``m``.
- **Retention** of a monthly acquisition cohort (customers whose first purchase is in month ``c``)
  ``k`` months later: the share of the cohort that buys in month ``c + k``.
- **CLV**: the mean ``ltv`` of the feature table (:func:`churnml.features.segments.lifetime_value`)
  over the customers with history on a day.
- Surveys: **NPS** = % promoters (9-10) - % detractors (0-6), in points from -100 to 100;
  **CSAT** = the share of scores 4-5 on the 1-5 scale (0 to 1); **CES** = the mean score.

A program compares two periods of whole months, a baseline and the current one. Rates over a
period pool its months (the sum of the months' repurchasers over the sum of their bases), so a
month weighs by its base. Rates by tier or level classify customers on the day before the period
starts (their tier entering it: the outcome cannot move a customer between groups); customers
without history then are ``new``. CLV by tier takes tier and LTV on the period's last day.

Months are reported whole: the month holding ``as_of`` only when ``as_of`` is its last day.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd

from churnml.errors import UserValueError
from churnml.features.build import events_until, orders_until, whole_day
from churnml.features.dates import as_date
from churnml.loyalty.surveys import effort_score, net_promoter_score, satisfaction_score

# The classes a customer without history on the classification day falls into.
NEW = "new"
MONTHLY_RATES = ("repurchase_rate", "churn_rate", "aov")
SURVEY_KPIS = ("nps", "csat", "ces")
PERIOD_KPIS = (*MONTHLY_RATES, "clv", *SURVEY_KPIS)
# Columns of the membership level in a feature or level table.
LEVEL_COLUMN = "membership_level"


@dataclass(frozen=True)
class ProgramTarget:
    """One program target: the change of a KPI between the baseline and the current period.

    ``change`` is relative (``0.45``: +45 %, ``-0.30``: -30 %) when ``relative``, else in the
    KPI's own units (``25``: +25 NPS points). ``tier`` or ``level`` restricts the KPI to the
    customers of that tier or membership level (entering the period, see the module docs).
    """

    kpi: str
    change: float
    relative: bool = True
    tier: str | None = None
    level: str | None = None

    def check(self, name: str) -> None:
        """Refuse a target that cannot be measured.

        Raises
        ------
        churnml.errors.UserValueError
            Naming ``kpis.targets.<name>`` and what it takes.
        """
        if self.kpi not in PERIOD_KPIS:
            raise UserValueError(f"kpis.targets.{name}.kpi={self.kpi} is not a KPI: use one of {', '.join(PERIOD_KPIS)}")
        if self.tier and self.level:
            raise UserValueError(f"kpis.targets.{name} sets both tier and level: give one of them")
        if self.change == 0:
            raise UserValueError(f"kpis.targets.{name}.change=0 is no target: give the change aimed for "
                                 f"(0.45 for +45 %, or points with relative=false)")


def default_targets() -> dict[str, ProgramTarget]:
    """Core repurchase +45 %, churn -30 %, NPS +25 points, CLV +35 %."""
    return {
        "core_repurchase": ProgramTarget("repurchase_rate", 0.45, tier="core"),
        "churn": ProgramTarget("churn_rate", -0.30),
        "nps": ProgramTarget("nps", 25.0, relative=False),
        "clv": ProgramTarget("clv", 0.35),
    }


@dataclass(frozen=True)
class KpiConfig:
    """Definitions, periods and targets of the KPIs (``kpis`` in the Hydra config).

    ``baseline_start``/``baseline_end`` (``YYYY-MM-DD``) choose the baseline's months (those
    holding the two days); by default the baseline is the ``period_months`` months before the
    current period, which is the ``period_months`` whole months ending on or before ``as_of``.
    ``migration_from`` is the first day of the migration matrices (default: the day before the
    current period); they end on the current period's last day. Interest tags are a customer's
    ``interest_top`` categories by net spend in the ``interest_window_days`` ending on ``as_of``,
    each at least ``interest_min_share`` of that spend.
    """

    active_days: int = 180
    period_months: int = 12
    baseline_start: str | None = None
    baseline_end: str | None = None
    migration_from: str | None = None
    interest_top: int = 3
    interest_min_share: float = 0.2
    interest_window_days: int = 365
    targets: dict[str, ProgramTarget] = field(default_factory=default_targets)

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> "KpiConfig":
        """Build from the ``kpis`` config node (targets as mappings); other keys are ignored."""
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in settings.items() if k in known}
        if values.get("targets") is not None:
            values["targets"] = {name: t if isinstance(t, ProgramTarget) else ProgramTarget(**t)
                                 for name, t in values["targets"].items()}
        else:
            values.pop("targets", None)
        return cls(**values)

    def __post_init__(self) -> None:
        # Two lapses of one customer are at least active_days apart: with a month or more, a
        # month holds at most one, and the monthly churn counts customers.
        if self.active_days < 31:
            raise UserValueError(f"kpis.active_days={self.active_days}: give 31 days or more")
        if self.period_months < 1:
            raise UserValueError(f"kpis.period_months={self.period_months}: give 1 month or more")
        if self.interest_top < 1 or not 0 <= self.interest_min_share <= 1 or self.interest_window_days < 1:
            raise UserValueError("kpis.interest_top and kpis.interest_window_days must be positive and "
                                 "kpis.interest_min_share in [0, 1]")
        if bool(self.baseline_start) != bool(self.baseline_end):
            raise UserValueError("give kpis.baseline_start and kpis.baseline_end together (YYYY-MM-DD)")
        for key in ("baseline_start", "baseline_end", "migration_from"):
            if getattr(self, key):
                try:
                    dt.date.fromisoformat(str(getattr(self, key)))
                except ValueError:
                    raise UserValueError(f"kpis.{key}={getattr(self, key)} is not a date: give YYYY-MM-DD") from None
        for name, target in self.targets.items():
            target.check(name)


# --------------------------------------------------------------------------------------------
# Months and periods
# --------------------------------------------------------------------------------------------


def month_index(day: dt.date) -> int:
    """Months since January of year 0: consecutive months have consecutive indices."""
    return day.year * 12 + day.month - 1


def month_start(index: int) -> dt.date:
    """The first day of the month of ``index`` (:func:`month_index`)."""
    return dt.date(index // 12, index % 12 + 1, 1)


def month_end(index: int) -> dt.date:
    """The last day of the month of ``index``."""
    return month_start(index + 1) - dt.timedelta(days=1)


def last_whole_month(as_of: dt.date) -> int:
    """The index of the last month that ends on or before ``as_of``."""
    index = month_index(as_of)
    return index if month_end(index) == as_of else index - 1


@dataclass(frozen=True)
class Period:
    """A run of whole months, ``first`` to ``last`` (month indices, inclusive)."""

    name: str
    first: int
    last: int

    @property
    def start(self) -> dt.date:
        """The period's first day."""
        return month_start(self.first)

    @property
    def end(self) -> dt.date:
        """The period's last day."""
        return month_end(self.last)

    @property
    def classified_on(self) -> dt.date:
        """The day whose tiers and levels group the period's rates: the day before it starts."""
        return self.start - dt.timedelta(days=1)

    @property
    def label(self) -> str:
        """``YYYY-MM to YYYY-MM``."""
        return f"{self.start:%Y-%m} to {self.end:%Y-%m}"


def program_periods(as_of: dt.date, first_date: dt.date, config: KpiConfig) -> tuple[Period, Period]:
    """The baseline and the current period at ``as_of``.

    The current period is the ``period_months`` whole months ending on or before ``as_of``; the
    baseline the months of ``baseline_start`` to ``baseline_end``, else the same number of months
    just before. When the data hold fewer than twice ``period_months`` whole months and no
    baseline is given, both periods shrink to half the whole months there are.

    Raises
    ------
    churnml.errors.UserValueError
        When ``as_of`` ends no whole month with data, the given baseline ends on or after the
        current period's start or starts after its own end.
    """
    last = last_whole_month(as_of)
    first_whole = month_index(first_date) if first_date.day == 1 else month_index(first_date) + 1
    months = min(config.period_months, (last - first_whole + 1) // 2) if not config.baseline_start else config.period_months
    if months < 1 or last < first_whole:
        raise UserValueError(f"as_of {as_of} leaves fewer than two whole months of data since {first_date}: "
                             f"give a later as_of")
    current = Period("current", max(last - months + 1, first_whole), last)
    if config.baseline_start:
        baseline = Period("baseline", month_index(as_date(config.baseline_start)), month_index(as_date(config.baseline_end)))
        if baseline.first > baseline.last:
            raise UserValueError(f"kpis.baseline_start={config.baseline_start} is after kpis.baseline_end="
                                 f"{config.baseline_end}: swap them")
        if baseline.last >= current.first:
            raise UserValueError(f"the baseline ({baseline.label}) must end before the current period ({current.label}) "
                                 f"starts: move kpis.baseline_end or set kpis.period_months lower")
    else:
        baseline = Period("baseline", current.first - months, current.first - 1)
    return baseline, current


# --------------------------------------------------------------------------------------------
# Orders, activity spells and monthly KPIs (Ibis)
# --------------------------------------------------------------------------------------------


def _month_of(ts: ir.TimestampValue) -> ir.IntegerValue:
    return (ts.year() * 12 + ts.month() - 1).cast("int64")


def dated_orders(transactions: ir.Table, as_of: dt.date) -> ir.Table:
    """Orders on or before ``as_of``: ``customer_id``, ``ts``, ``day`` (days since 1970-01-01),
    ``month`` (:func:`month_index`), ``gross`` and ``refund`` (currency of ``amount``)."""
    orders = orders_until(transactions, as_of)
    return orders.select("customer_id", "ts", "gross", "refund",
                         day=whole_day(orders.ts).cast("int64"), month=_month_of(orders.ts))


@dataclass(frozen=True)
class Activity:
    """What the monthly KPIs count, per customer and month, computed once (:func:`customer_activity`).

    ``months``: ``customer_id``, ``month``, ``orders`` (purchase orders), ``revenue`` (net),
    ``repurchase`` (bought in a month after their spell's first), ``first`` (the month of their
    first purchase ever); ``spells``: one row per spell of activity, ``customer_id``,
    ``start_month`` and ``lapse_month`` (the month the spell lapses in, which may be after the
    data end); ``last`` the last whole month.
    """

    months: ir.Table
    spells: ir.Table
    last: int


def customer_activity(transactions: ir.Table, as_of: dt.date, active_days: int, cache: bool = True) -> Activity:
    """The :class:`Activity` of the orders on or before ``as_of`` (:func:`activity_of_orders`)."""
    return activity_of_orders(dated_orders(transactions, as_of), as_of, active_days, cache)


def activity_of_orders(orders: ir.Table, as_of: dt.date, active_days: int, cache: bool = True) -> Activity:
    """The :class:`Activity` of :func:`dated_orders` at ``as_of``; ``cache`` keeps its tables in
    the engine (every KPI then reads them, not the orders).

    A spell of activity starts with a purchase at least ``active_days`` after the customer's
    previous one (or their first) and lapses ``active_days`` after its last purchase. Purchases
    of one month belong to one spell (``active_days`` is 31 or more, and two days of a month are
    at most 30 apart), so spells are found among the customer's months with a purchase, each
    compared with the one before and the one after: a month starts a spell when its first
    purchase comes ``active_days`` or more after the previous month's last, and ends one when the
    next month's first purchase comes that long after its own last (or never).
    """
    purchase = orders.gross > 0
    months = orders.group_by(["customer_id", "month"]).aggregate(
        orders=orders.count(where=purchase),
        revenue=(orders.gross - orders.refund).sum(),
        first_day=orders.day.min(where=purchase),
        last_day=orders.day.max(where=purchase),
        last_ts=orders.ts.max(where=purchase),
    )
    bought = months.filter(months.orders > 0)
    neighbours = ibis.window(group_by=bought.customer_id, order_by=bought.month)
    previous, following = bought.last_day.lag().over(neighbours), bought.first_day.lead().over(neighbours)
    bought = bought.mutate(starts=previous.isnull() | (bought.first_day - previous >= active_days),
                           ends=following.isnull() | (following - bought.last_day >= active_days),
                           first=previous.isnull())
    # A spell's start and end months, in order: the end of a start that does not end its spell
    # is the next of these rows.
    edges = bought.filter(bought.starts | bought.ends)
    last_ts = edges.ends.ifelse(edges.last_ts, edges.last_ts.lead().over(
        ibis.window(group_by=edges.customer_id, order_by=edges.month)))
    # Computed before the starts are kept: a window sees the rows left by the filter before it.
    edges = edges.mutate(lapse_month=_month_of(last_ts + ibis.interval(days=active_days)))
    spells = edges.filter(edges.starts).select("customer_id", start_month=edges.month, lapse_month=edges.lapse_month)
    months = bought.select("customer_id", "month", "orders", "revenue", repurchase=~bought.starts,
                           first=bought.first).union(
        months.filter(months.orders == 0).select("customer_id", "month", "orders", "revenue",
                                                 repurchase=ibis.literal(False), first=ibis.literal(False)))
    if cache:
        months, spells = months.cache(), spells.cache()
    return Activity(months, spells, last_whole_month(as_of))


def _grouped(table: ir.Table, groups: ir.Table | None) -> ir.Table:
    """``table`` with the ``group`` of its customer (``new`` for customers ``groups`` lacks)."""
    if groups is None:
        return table.mutate(group=ibis.literal("all"))
    named = groups.select(customer_id=groups.customer_id, group_=groups.group)
    joined = table.left_join(named, table.customer_id == named.customer_id)
    joined = joined.drop(*[c for c in joined.columns if c.endswith("_right")])
    return joined.mutate(group=joined.group_.fill_null(NEW)).drop("group_")


def _frame(table: ir.Table) -> pd.DataFrame:
    return table.to_pyarrow().to_pandas()


def monthly_kpis(activity: Activity, groups: ir.Table | None = None, months: tuple[int, int] | None = None) -> pd.DataFrame:
    """The monthly KPIs of the module's definitions, for every whole month up to ``as_of``.

    Parameters
    ----------
    activity : Activity
        :func:`customer_activity` of the transactions at ``as_of``.
    groups : ibis Table, optional
        ``customer_id``, ``group``: one row per customer, e.g. tiers on a classification day;
        customers it lacks are ``new``. Without it every customer is in group ``all``.
    months : (int, int), optional
        First and last month index (:func:`month_index`) to report; default every month from the
        first with an order to the last whole month.

    Returns
    -------
    pandas.DataFrame
        One row per month and group (months without activity included): ``month`` (first day,
        datetime64), ``group``, ``active_start`` (the base), ``repurchasers``, ``churned``,
        ``new_customers`` (first purchase ever in the month), ``buyers``, ``orders`` (purchase
        orders), ``revenue`` (net, currency of ``amount``), ``repurchase_rate``, ``churn_rate``
        (shares of ``active_start``; NaN without a base) and ``aov`` (revenue per order; NaN
        without orders).
    """
    spells, table, last = activity.spells, activity.months, activity.last
    if months is not None:
        # Only these months are reported: a spell that lapsed before them adds to no base of
        # theirs (its +1 and -1 both come before), and other months' orders count in none.
        spells = spells.filter(spells.lapse_month >= months[0])
        table = table.filter((table.month >= months[0]) & (table.month <= months[1]))
    spells, table = _grouped(spells, groups), _grouped(table, groups)
    # The base of month m counts spells with start_month < m <= lapse_month: +1 the month after a
    # spell starts, -1 the month after it lapses, summed over the months so far. Churn is a lapse.
    # Months as int64 in every part: Spark's cached tables hold them as int32.
    events = ibis.union(*(
        spells.select("group", month=month.cast("int64"), delta=ibis.literal(delta, "int64"),
                      churned=ibis.literal(churned, "int64"))
        for month, delta, churned in ((spells.start_month + 1, 1, 0), (spells.lapse_month + 1, -1, 0),
                                      (spells.lapse_month, 0, 1))
    ))
    events = events.filter(events.month <= last + 1)
    events = events.group_by(["group", "month"]).aggregate(
        delta=events.delta.sum(), churned=events.churned.sum())
    table = table.filter(table.month <= last)
    counts = table.group_by(["group", "month"]).aggregate(
        repurchasers=table.repurchase.cast("int64").sum(),
        new_customers=(table.first & (table.orders > 0)).cast("int64").sum(),
        buyers=table.count(where=table.orders > 0),
        orders=table.orders.sum(),
        revenue=table.revenue.sum(),
    )
    events, counts = _frame(events), _frame(counts)
    if groups is None:
        names = ["all"]
    else:
        names = sorted(set(events["group"]) | set(counts["group"]))
    starts = [int(m) for m in (events["month"].min(), counts["month"].min()) if pd.notna(m)]
    earliest = min(starts) if starts else last
    first, last = months or (int(counts["month"].min()) if not counts.empty else last, last)
    every = pd.MultiIndex.from_product([names, range(min(earliest, first), last + 1)], names=["group", "month"])
    monthly = pd.DataFrame(index=every)
    monthly = monthly.join(events.set_index(["group", "month"])).join(counts.set_index(["group", "month"]))
    numbers = ["delta", "churned", "repurchasers", "new_customers", "buyers", "orders"]
    monthly[numbers] = monthly[numbers].fillna(0).astype("int64")
    monthly["revenue"] = monthly["revenue"].astype("float64").fillna(0.0)
    monthly["active_start"] = monthly.groupby(level="group")["delta"].cumsum()
    monthly = monthly.drop(columns="delta").reset_index()
    monthly = monthly[monthly["month"] >= first]
    columns = ["group", "month", "active_start", "repurchasers", "churned", "new_customers", "buyers", "orders", "revenue"]
    monthly = monthly[columns].reset_index(drop=True)
    monthly = pd.concat([monthly, rates_of(monthly)], axis=1)
    monthly["month"] = pd.to_datetime([month_start(int(i)) for i in monthly["month"]])
    return monthly[["month", *[c for c in monthly.columns if c != "month"]]]


def rates_of(counts: pd.DataFrame) -> pd.DataFrame:
    """``repurchase_rate``, ``churn_rate`` and ``aov`` from the counts of :func:`monthly_kpis`
    (rows of months, or of pooled periods); NaN where the denominator is 0."""
    base = counts["active_start"].where(counts["active_start"] > 0)
    orders = counts["orders"].where(counts["orders"] > 0)
    return pd.DataFrame({"repurchase_rate": counts["repurchasers"] / base, "churn_rate": counts["churned"] / base,
                         "aov": counts["revenue"] / orders}, index=counts.index).astype("float64")


def pooled(monthly: pd.DataFrame, period: Period) -> pd.DataFrame:
    """The months of ``period`` of a :func:`monthly_kpis` table summed by group (the index),
    with the period's rates pooled over its months."""
    inside = monthly[(monthly["month"] >= pd.Timestamp(period.start)) & (monthly["month"] <= pd.Timestamp(period.end))]
    counts = ["active_start", "repurchasers", "churned", "new_customers", "orders", "revenue"]
    summed = inside.groupby("group", sort=True)[counts].sum()
    return pd.concat([summed, rates_of(summed)], axis=1)


def cohort_retention(activity: Activity) -> pd.DataFrame:
    """Retention of monthly acquisition cohorts, every whole month of ``activity``.

    Returns
    -------
    pandas.DataFrame
        ``cohort`` (first day of the month of the customers' first purchase, datetime64),
        ``months_since`` (0 for the cohort month), ``customers`` (who bought in that month),
        ``cohort_size`` and ``retention`` (``customers / cohort_size``, 1 at ``months_since`` 0);
        only (cohort, month) pairs where someone bought.
    """
    months = activity.months
    bought = months.filter((months.orders > 0) & (months.month <= activity.last))
    cohort = ibis.cases((bought.first, bought.month)).max().over(ibis.window(group_by=bought.customer_id))
    bought = bought.mutate(cohort=cohort)
    counts = bought.group_by(["cohort", (bought.month - bought.cohort).name("months_since")]).aggregate(
        customers=bought.count())
    frame = _frame(counts).sort_values(["cohort", "months_since"], kind="stable").reset_index(drop=True)
    size = frame[frame["months_since"] == 0].set_index("cohort")["customers"]
    frame["cohort_size"] = frame["cohort"].map(size).astype("int64")
    frame["retention"] = frame["customers"] / frame["cohort_size"]
    frame["cohort"] = pd.to_datetime([month_start(int(i)) for i in frame["cohort"]])
    frame["months_since"] = frame["months_since"].astype("int64")
    frame["customers"] = frame["customers"].astype("int64")
    return frame[["cohort", "months_since", "customers", "cohort_size", "retention"]]


# --------------------------------------------------------------------------------------------
# Customer states: tier, LTV and level on a day
# --------------------------------------------------------------------------------------------


def customer_states(dataset: Any, on: dt.date, feature_config: Any, levels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Tier, LTV and (when known) membership level of every customer with history on day ``on``.

    The tier and LTV are the feature table's (:func:`churnml.features.build.build_features`),
    its other columns left uncomputed. The level is the feature table's ``membership_level``
    when it has one, else that of ``levels`` (``customer_id``, ``membership_level``; customers
    it lacks get none).

    Returns
    -------
    pandas.DataFrame
        ``customer_id``, ``tier``, ``ltv`` and, with levels, ``membership_level``; no rows
        before the first purchase in the data.
    """
    from churnml.features.build import build_features

    features = build_features(dataset, on, feature_config)
    columns = ["customer_id", "tier", "ltv", *([LEVEL_COLUMN] if LEVEL_COLUMN in features.columns else [])]
    states = features.select(*columns).to_pyarrow().to_pandas()
    if levels is not None and LEVEL_COLUMN not in states.columns:
        states = states.merge(levels[["customer_id", LEVEL_COLUMN]], on="customer_id", how="left")
    return states


def groups_of(states: pd.DataFrame, column: str) -> pd.DataFrame | None:
    """``customer_id`` and ``group`` (the values of ``column``), or None when ``states`` lacks it."""
    if column not in states.columns:
        return None
    return states[["customer_id", column]].rename(columns={column: "group"}).dropna(subset=["group"])


def clv_by(states: pd.DataFrame, column: str | None = None) -> pd.Series:
    """Mean LTV of ``states`` (:func:`customer_states`), overall (``all``) or by ``column``."""
    if states.empty:
        return pd.Series(dtype="float64", name="clv")
    if column is None:
        return pd.Series({"all": float(states["ltv"].fillna(0.0).mean())}, name="clv")
    return states.assign(ltv=states["ltv"].fillna(0.0)).groupby(column)["ltv"].mean().rename("clv")


# --------------------------------------------------------------------------------------------
# Surveys
# --------------------------------------------------------------------------------------------


# NPS in points, CSAT in percent of answers, CES as the mean answer (churnml.loyalty.surveys).
SURVEY_FORMULAS: dict[str, Callable[[np.ndarray], float]] = {"nps": net_promoter_score, "csat": satisfaction_score,
                                                             "ces": effort_score}


def survey_frame(surveys: ir.Table | pd.DataFrame | None, as_of: dt.date) -> pd.DataFrame | None:
    """The survey responses on or before ``as_of`` (``customer_id``, ``ts``, ``kind``, ``score``)
    as pandas, or None without a surveys table."""
    if surveys is None:
        return None
    if isinstance(surveys, pd.DataFrame):
        frame = surveys[pd.to_datetime(surveys["ts"]) < pd.Timestamp(as_of + dt.timedelta(days=1))]
    else:
        frame = events_until(surveys, as_of).select("customer_id", "ts", "kind", "score").to_pyarrow().to_pandas()
    frame = frame[["customer_id", "ts", "kind", "score"]].copy()
    frame["ts"] = pd.to_datetime(frame["ts"])
    return frame


def survey_kpis(responses: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """NPS, CSAT and CES with their response counts, grouped by the columns ``by``.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``by``; columns ``nps``, ``nps_responses``, ``csat``, ``csat_responses``,
        ``ces``, ``ces_responses`` (NaN and 0 for a kind without responses in a group).
    """
    keys = list(by)
    parts = []
    for kind, formula in SURVEY_FORMULAS.items():
        of_kind = responses[responses["kind"] == kind]
        grouped = of_kind.groupby(keys, sort=True)["score"]
        parts.append(pd.DataFrame({kind: grouped.agg(lambda s: formula(s.to_numpy())),
                                   f"{kind}_responses": grouped.size()}))
    table = pd.concat(parts, axis=1)
    for kind in SURVEY_FORMULAS:
        table[f"{kind}_responses"] = table[f"{kind}_responses"].fillna(0).astype("int64")
    return table


def monthly_surveys(responses: pd.DataFrame, as_of: dt.date) -> pd.DataFrame:
    """:func:`survey_kpis` by month (``month``: first day, datetime64), whole months up to ``as_of``."""
    months = responses.assign(month=responses["ts"].dt.to_period("M").dt.to_timestamp())
    months = months[months["month"] <= pd.Timestamp(month_start(last_whole_month(as_of)))]
    return survey_kpis(months, ["month"]).reset_index()


def period_surveys(responses: pd.DataFrame, period: Period, groups: pd.DataFrame | None) -> pd.DataFrame:
    """:func:`survey_kpis` of the responses in ``period``, by ``group`` of their customer on the
    period's classification day (``new`` when ``groups`` lacks them; ``all`` without groups)."""
    inside = responses[(responses["ts"] >= pd.Timestamp(period.start))
                       & (responses["ts"] < pd.Timestamp(period.end + dt.timedelta(days=1)))]
    if groups is None:
        inside = inside.assign(group="all")
    else:
        inside = inside.merge(groups, on="customer_id", how="left")
        inside["group"] = inside["group"].fillna(NEW)
    return survey_kpis(inside, ["group"])


# --------------------------------------------------------------------------------------------
# Periods by group, and progress against the targets
# --------------------------------------------------------------------------------------------


def period_table(activity: Activity, periods: Sequence[Period],
                 start_states: Mapping[str, pd.DataFrame], end_states: Mapping[str, pd.DataFrame],
                 responses: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each period's KPIs, overall and by tier and by level (when levels are known).

    Parameters
    ----------
    activity : Activity
        :func:`customer_activity` at ``as_of``.
    periods : sequence of Period
    start_states, end_states : mapping of period name to pandas.DataFrame
        :func:`customer_states` on each period's classification day and on its last day.
    responses : pandas.DataFrame, optional
        :func:`survey_frame`; without it the survey columns are NaN.

    Returns
    -------
    pandas.DataFrame
        One row per period, ``by`` (``all``, ``tier``, ``level``) and ``group``: the pooled
        counts and rates of :func:`pooled`, ``customers`` and ``clv`` (on the period's last day)
        and the survey KPIs of :func:`period_surveys`.
    """
    rows = []
    for period in periods:
        for by, column in (("all", None), ("tier", "tier"), ("level", LEVEL_COLUMN)):
            groups = None if column is None else groups_of(start_states[period.name], column)
            if column is not None and groups is None:
                continue
            months = (period.first, period.last)
            ibis_groups = None if groups is None else ibis.memtable(groups)
            monthly = monthly_kpis(activity, ibis_groups, months=months)
            table = pooled(monthly, period)
            end = end_states[period.name]
            clv = clv_by(end, column)
            sizes = (pd.Series({"all": len(end)}) if column is None
                     else end[column].value_counts()) if not end.empty else pd.Series(dtype="int64")
            table = table.join(sizes.rename("customers"), how="outer").join(clv, how="outer")
            if responses is not None:
                table = table.join(period_surveys(responses, period, groups), how="left")
            table.index.name = "group"
            table = table.reset_index()
            table.insert(0, "by", by)
            table.insert(0, "period", period.name)
            table.insert(1, "months", period.label)
            rows.append(table)
    result = pd.concat(rows, ignore_index=True)
    for kpi in SURVEY_KPIS:
        if kpi not in result.columns:
            result[kpi] = np.nan
    result["customers"] = result["customers"].fillna(0).astype("int64")
    return result


def _kpi_value(periods: pd.DataFrame, period: str, target: ProgramTarget) -> float:
    by, group = ("tier", target.tier) if target.tier else ("level", target.level) if target.level else ("all", "all")
    found = periods[(periods["period"] == period) & (periods["by"] == by) & (periods["group"] == group)]
    if found.empty or target.kpi not in found.columns:
        return math.nan
    return float(found[target.kpi].iloc[0])


def target_progress(periods: pd.DataFrame, targets: Mapping[str, ProgramTarget]) -> pd.DataFrame:
    """Each target's baseline and current value, the change reached and the progress made.

    ``achieved`` is ``current / baseline - 1`` for a relative target (NaN at a baseline of 0),
    else ``current - baseline``; ``progress`` is ``achieved / change`` (1 = the target reached,
    negative = moving away from it); ``met`` is whether ``achieved`` reaches ``change`` in its
    direction. Targets whose KPI cannot be measured (no surveys, no levels, an empty group) have
    NaN values and ``met`` False.

    Returns
    -------
    pandas.DataFrame
        One row per target: ``target``, ``kpi``, ``group``, ``change``, ``relative``,
        ``baseline``, ``current``, ``goal`` (the current value that meets the target),
        ``achieved``, ``progress``, ``met``.
    """
    rows = []
    for name, target in targets.items():
        baseline = _kpi_value(periods, "baseline", target)
        current = _kpi_value(periods, "current", target)
        if target.relative:
            achieved = current / baseline - 1 if baseline else math.nan
            goal = baseline * (1 + target.change)
        else:
            achieved = current - baseline
            goal = baseline + target.change
        met = bool(achieved >= target.change) if target.change > 0 else bool(achieved <= target.change)
        rows.append({"target": name, "kpi": target.kpi,
                     "group": target.tier or target.level or "all", "change": target.change,
                     "relative": target.relative, "baseline": baseline, "current": current, "goal": goal,
                     "achieved": achieved, "progress": achieved / target.change,
                     "met": met and not math.isnan(achieved)})
    columns = ["target", "kpi", "group", "change", "relative", "baseline", "current", "goal", "achieved", "progress", "met"]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------


@dataclass
class ProgramKpis:
    """The KPI and migration tables of a program at ``as_of`` (:func:`program_kpis`).

    ``monthly``: :func:`monthly_kpis` overall, with the survey KPIs by month when there are
    surveys; ``cohorts``: :func:`cohort_retention`; ``periods``: :func:`period_table`;
    ``progress``: :func:`target_progress`; ``migrations``: the long
    :func:`~churnml.loyalty.migration.transition_matrix` by ``tier`` (and ``level``);
    ``interests``: the interest tags (None without categories); ``notes``: what could not be
    computed, and why; ``level_history``: the membership level history at ``as_of``
    (:func:`churnml.loyalty.levels.level_history`, a table on the data's engine) when the levels
    came from it, else None.
    """

    as_of: dt.date
    baseline: Period
    current: Period
    migration_days: tuple[dt.date, dt.date]
    monthly: pd.DataFrame
    cohorts: pd.DataFrame
    periods: pd.DataFrame
    progress: pd.DataFrame
    migrations: dict[str, pd.DataFrame]
    interests: pd.DataFrame | None
    notes: list[str]
    level_history: ir.Table | None = None

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables by file stem: ``monthly``, ``cohorts``, ``periods``, ``targets``,
        ``migration_<name>`` and ``interests``."""
        tables = {"monthly": self.monthly, "cohorts": self.cohorts, "periods": self.periods, "targets": self.progress}
        tables.update({f"migration_{name}": frame for name, frame in self.migrations.items()})
        if self.interests is not None:
            tables["interests"] = self.interests
        return tables


def program_kpis(dataset: Any, as_of: dt.date, config: KpiConfig, feature_config: Any,
                 surveys: ir.Table | pd.DataFrame | None = None,
                 levels_on: Callable[[dt.date], pd.DataFrame] | None = None) -> ProgramKpis:
    """Every KPI, migration matrix and interest tag of the program at ``as_of``.

    Parameters
    ----------
    dataset : churnml.io.load.Dataset
    as_of : datetime.date
        Nothing after it is read.
    config : KpiConfig
    feature_config : churnml.features.build.FeatureConfig
        The feature set whose tiers and LTV the KPIs group by.
    surveys : ibis Table or pandas.DataFrame, optional
        ``customer_id``, ``ts``, ``kind`` (nps, csat, ces), ``score``; the dataset's surveys
        table when not given. Without either, the survey KPIs are left out (and their targets
        not met).
    levels_on : callable, optional
        The membership levels on a day (``customer_id``, ``membership_level``). Without it and
        with ``feature_config.levels`` enabled, they are read from one level history at
        ``as_of`` (:func:`churnml.loyalty.levels.levels_at`; kept as ``level_history``), which
        gives every earlier day's levels at the cost of one walk through the orders instead of
        one a day. Without either, the level views are left out.

    Raises
    ------
    churnml.errors.UserValueError
        From :func:`program_periods`.
    """
    from churnml.loyalty.migration import interest_tags, transition_matrix

    baseline, current = program_periods(as_of, dataset.first_date, config)
    migration_from = as_date(config.migration_from) if config.migration_from else current.classified_on
    migration_to = current.end
    notes = []
    if migration_from >= migration_to:
        raise UserValueError(f"kpis.migration_from={migration_from} is not before the current period's end "
                             f"({migration_to}): give an earlier day")
    # The orders rolled up once: the activity and the level history both read them.
    orders = dated_orders(dataset.transactions, as_of).cache()
    history = None
    if levels_on is None and feature_config.levels.enabled:
        from churnml.loyalty.levels import level_history_of_orders, level_orders_of, levels_at

        history = level_history_of_orders(level_orders_of(orders), as_of, feature_config.levels)

        def levels_on(day: dt.date) -> pd.DataFrame:
            now = levels_at(history, day)
            return _frame(now.select("customer_id", **{LEVEL_COLUMN: now.level}))

        feature_config = replace(feature_config, levels=replace(feature_config.levels, enabled=False))
    states: dict[dt.date, pd.DataFrame] = {}
    for day in sorted({baseline.classified_on, baseline.end, current.classified_on, current.end, migration_from}):
        states[day] = customer_states(dataset, day, feature_config, levels_on(day) if levels_on else None)
    activity = activity_of_orders(orders, as_of, config.active_days)
    responses = survey_frame(surveys if surveys is not None else dataset.surveys, as_of)
    if responses is None:
        notes.append("no surveys table: NPS, CSAT and CES are left out")
    if LEVEL_COLUMN not in states[current.end].columns:
        notes.append("no membership levels: the level views are left out")
    monthly = monthly_kpis(activity).drop(columns="group")
    if responses is not None:
        monthly = monthly.merge(monthly_surveys(responses, as_of), on="month", how="left")
    cohorts = cohort_retention(activity)
    periods = period_table(activity, (baseline, current),
                           {p.name: states[p.classified_on] for p in (baseline, current)},
                           {p.name: states[p.end] for p in (baseline, current)}, responses)
    progress = target_progress(periods, config.targets)
    migrations = {}
    for name, column in (("tier", "tier"), ("level", LEVEL_COLUMN)):
        before, after = states[migration_from], states[migration_to]
        if column in after.columns:
            if column not in before.columns:
                before = before.assign(**{column: None})
            long = transition_matrix(ibis.memtable(before[["customer_id", column]]),
                                     ibis.memtable(after[["customer_id", column]]), column)
            migrations[name] = _frame(long).sort_values(["from_state", "to_state"], kind="stable").reset_index(drop=True)
    tags = interest_tags(dataset.transactions, as_of, config.interest_window_days, config.interest_top,
                         config.interest_min_share)
    interests = None
    if tags is None:
        notes.append("no category column: no interest tags")
    else:
        interests = _frame(tags).sort_values(["customer_id", "rank"], kind="stable").reset_index(drop=True)
    if states[baseline.classified_on].empty:
        notes.append(f"no customer has history on {baseline.classified_on}: the baseline has no tiers")
    return ProgramKpis(as_of, baseline, current, (migration_from, migration_to), monthly, cohorts, periods, progress,
                       migrations, interests, notes, history)
