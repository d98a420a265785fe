"""Pilots and A/B tests of retention campaigns: what each assigned customer did, the lift of a
campaign with its confidence interval (plain and CUPED), the sample-ratio check, and the size a
pilot needs.

Time is counted in UTC calendar days, as everywhere in churnml (``as_of`` is a date). An
assignment at ``ts`` on day ``d`` has

- its **outcome window** on the days ``(d, d + window_days]``: from the start of the day after
  the assignment to the end of day ``d + window_days`` (that whole day included);
- its **pre-period** on the days ``(d - pre_days, d]``: the ``pre_days`` days ending with the
  assignment day, which belongs to the pre-period as the cutoff day belongs to the features.

Counting by day keeps a campaign's windows aligned with the features and labels of a model
scored at ``as_of = d`` (labels on ``(as_of, as_of + horizon]``). The price: a purchase later on
the assignment day, even after the contact, counts in the pre-period, never as an outcome. Data after day ``d + window_days`` cannot change an outcome, and data
after day ``d`` cannot change a pre-period value (the tests show both).

A **purchase** is an order whose positive lines sum to more than zero, lines rolled up to orders
as the features and labels do (lines of one order share ``order_id``; a line whose ``order_id``
is missing or empty is an order of its own). Each line counts on its own day, so a refund in the
outcome window of an order bought before it lowers the window's **revenue** (the net amount,
refunds negative) without being a purchase, as in the labels.

The statistics are tea-tasting's (https://tea-tasting.e10v.me), on one row per assignment:

- **Lift**: the difference of the group means with Welch's standard error and Student's t with
  Welch-Satterthwaite degrees of freedom (``tea_tasting.Mean``, ``equal_var=False``,
  ``use_t=True``). For a 0/1 outcome it is the unpooled two-proportion interval up to t versus
  normal quantiles. The relative lift's interval is the delta-method interval of the log of the
  ratio of means (Deng, Knoblich and Lu, "Applying the Delta Method in Metric Analytics", KDD
  2018). Rates use the same test as the other means, so that a plain and a CUPED row differ by
  the adjustment alone.
- **CUPED** (Deng, Xu, Kohavi and Walker, "Improving the Sensitivity of Online Controlled
  Experiments by Utilizing Pre-Experiment Data", WSDM 2013): the outcome ``Y`` less
  ``theta * (X - mean X)`` with ``X`` the metric's pre-period value and
  ``theta = cov(X, Y) / var(X)`` over both groups. Its variance is ``(1 - rho^2)`` times the
  plain one, ``rho`` the correlation of ``X`` and ``Y``.
- **Sample-ratio mismatch** (SRM; Fabijan et al., "Diagnosing Sample Ratio Mismatch in Online
  Controlled Experiments", KDD 2019): the group sizes against the planned split, by the exact
  binomial test below 1,000 assignments and the normal approximation with continuity correction
  above (``tea_tasting.SampleRatio``). A mismatch is declared at p < 0.001 (:data:`SRM_ALPHA`),
  a strict threshold as is usual for this check: it runs on every campaign, so a lenient one
  would flag sound campaigns by chance, while a broken randomisation gives p-values far below it.
- **Pilot size**: the two-sided z-test of two proportions (see :func:`plan_pilot`), solved by
  tea-tasting's power analysis of means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd
import tea_tasting as tt
from tea_tasting.aggr import Aggregates

from churnml.errors import UserValueError
from churnml.features.build import to_frame, whole_day
from churnml.features.surveys import SURVEY_KINDS

CONTROL = "control"
TREATMENT = "treatment"
GROUPS = (CONTROL, TREATMENT)
# The p-value below which a campaign's group sizes are a sample-ratio mismatch (module notes).
SRM_ALPHA = 0.001
# Welch's variance of a group needs two customers in it.
MIN_GROUP_SIZE = 2

KEYS = ("customer_id", "campaign")
OUTCOME_COLUMNS = (
    "customer_id", "campaign", "group", "ts", "cost",
    "repurchased", "orders", "revenue",
    "pre_repurchased", "pre_orders", "pre_revenue",
)
# The campaign's metrics: name, outcome column of assignment_outcomes, its pre-period covariate.
# Churn over the window is 1 - repurchased; its CUPED covariate is pre_repurchased (an affine
# change of the covariate leaves the adjustment unchanged).
METRICS: tuple[tuple[str, str, str], ...] = (
    ("repurchase_rate", "repurchased", "pre_repurchased"),
    ("churn_rate", "churned", "pre_repurchased"),
    ("orders_per_customer", "orders", "pre_orders"),
    ("revenue_per_customer", "revenue", "pre_revenue"),
)
# Survey metrics: the mean answer in the window of the customers who answered (no covariate).
SURVEY_METRICS: tuple[tuple[str, str], ...] = tuple((f"{kind}_mean", kind) for kind in SURVEY_KINDS)
PLAIN = "difference"
CUPED = "cuped"
LIFT_COLUMNS = (
    "campaign", "metric", "estimator", "covariate", "n_control", "n_treatment",
    "control_mean", "treatment_mean", "lift", "lift_ci_lower", "lift_ci_upper",
    "relative_lift", "relative_lift_ci_lower", "relative_lift_ci_upper", "pvalue",
    "ci_width", "ci_width_ratio", "variance_reduction", "confidence_level",
    "srm_pvalue", "srm_mismatch",
)
SRM_COLUMNS = (
    "campaign", "n_control", "n_treatment", "treatment_share", "expected_treatment_share",
    "pvalue", "mismatch",
)


# --------------------------------------------------------------------------------------------
# Outcomes per assignment
# --------------------------------------------------------------------------------------------


def assignment_outcomes(
    transactions: ir.Table | pd.DataFrame,
    treatments: ir.Table | pd.DataFrame,
    *,
    window_days: int,
    pre_days: int,
    surveys: ir.Table | pd.DataFrame | None = None,
    campaign: str | None = None,
) -> pd.DataFrame:
    """What each assigned customer did in the campaign's outcome window and before it.

    The aggregation is one Ibis query (DuckDB, Spark or pandas inputs through ``ibis.memtable``);
    only the result, one row per assignment, comes back as pandas. Windows are counted in days
    from the assignment's day, see the module notes.

    Parameters
    ----------
    transactions
        Order lines: ``customer_id``, ``ts`` (timestamp), ``amount`` (currency; negative =
        refund), optional ``order_id``.
    treatments
        Assignments, one row per customer and campaign: ``customer_id``, ``ts`` (assignment or
        contact time), ``campaign``, ``group`` (``treatment`` or ``control``, any case),
        optional ``cost`` (per contact).
    window_days
        Length of the outcome window in days (> 0).
    pre_days
        Length of the pre-period in days (> 0), ending with the assignment day.
    surveys
        Optional survey answers: ``customer_id``, ``ts``, ``kind`` (nps, csat, ces), ``score``.
    campaign
        Keep this campaign's assignments only; all campaigns when None.

    Returns
    -------
    pandas.DataFrame
        One row per assignment, sorted by campaign and customer, columns
        :data:`OUTCOME_COLUMNS`: ``customer_id``, ``campaign``, ``group`` (lower case), ``ts``,
        ``cost`` (float64, NaN without a cost column), ``repurchased`` (int64 0/1: a purchase in
        the window), ``orders`` (int64: purchases in the window), ``revenue`` (float64: net
        amount in the window), then with ``surveys`` ``nps``, ``csat``, ``ces`` (float64: the
        customer's mean answer of that kind in the window, NaN without one), then
        ``pre_repurchased``, ``pre_orders``, ``pre_revenue`` (the same over the pre-period).

    Raises
    ------
    churnml.errors.UserValueError
        A non-positive window, a missing column, a group other than treatment or control, a
        customer assigned twice to one campaign, or a ``campaign`` without assignments.
    """
    _check_days(window_days, "window_days")
    _check_days(pre_days, "pre_days")
    lines = _table(transactions, "transactions", ("customer_id", "ts", "amount"))
    assigned = _table(treatments, "treatments", ("customer_id", "ts", "campaign", "group"))
    if campaign is not None:
        assigned = assigned.filter(assigned.campaign == campaign)
    cost = assigned.cost.cast("float64") if "cost" in assigned.columns else ibis.null("float64")
    assigned = assigned.select(
        "customer_id", "campaign", group=assigned.group.strip().lower(), ts=assigned.ts, cost=cost,
        _day=whole_day(assigned.ts).cast("int64"),
    )
    line_columns = {"customer_id": lines.customer_id, "ts": lines.ts, "amount": lines.amount.cast("float64")}
    if "order_id" in lines.columns:
        order_id = lines.order_id
        # An empty id is missing (DESIGN.md section 3): such a line is an order of its own.
        line_columns["order_id"] = order_id.strip().nullif("") if order_id.type().is_string() else order_id
    lines = lines.select(**line_columns)

    parts = [
        _purchases(_in_days(lines, assigned, 1, window_days), ""),
        _purchases(_in_days(lines, assigned, 1 - pre_days, 0), "pre_"),
    ]
    if surveys is not None:
        answers = _table(surveys, "surveys", ("customer_id", "ts", "kind", "score"))
        answers = answers.select("customer_id", "ts", kind=answers.kind.strip().lower(),
                                 score=answers.score.cast("float64"))
        parts.append(_survey_means(_in_days(answers, assigned, 1, window_days)))
    joined = assigned
    for part in parts:
        joined = joined.left_join(part, list(KEYS)).select(
            *joined.columns, *(c for c in part.columns if c not in KEYS))
    frame = to_frame(joined.drop("_day"))
    return _finish_outcomes(frame, surveys is not None, campaign)


def _check_days(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise UserValueError(f"assignment_outcomes: {name} must be a positive whole number of days, got {value!r}")


def _table(data: ir.Table | pd.DataFrame, name: str, required: Sequence[str]) -> ir.Table:
    table = data if isinstance(data, ir.Table) else ibis.memtable(data)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise UserValueError(
            f"{name}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"the table needs {', '.join(required)} (data contract, DESIGN.md section 3)")
    return table


def _in_days(events: ir.Table, assigned: ir.Table, first: int, last: int) -> ir.Table:
    """Each assignment's events (campaign attached) on the days ``first..last`` after its day
    (0 = the assignment day, negative = before it)."""
    anchors = assigned.select(*KEYS, "_day")
    joined = anchors.join(events, "customer_id")
    day = whole_day(joined.ts).cast("int64") - joined._day
    return joined.filter((day >= first) & (day <= last)).drop("_day")


def _purchases(lines: ir.Table, prefix: str) -> ir.Table:
    """Per assignment: purchases (orders of positive value) and net revenue of its lines."""
    keys = list(KEYS)
    if "order_id" in lines.columns:
        keyed = lines.filter(lines.order_id.notnull())
        keyed = keyed.group_by([*keys, "order_id"]).aggregate(
            gross=keyed.amount.clip(lower=0).sum(), net=keyed.amount.sum()).drop("order_id")
        single = lines.filter(lines.order_id.isnull())
        alone = single.select(*keys, gross=single.amount.clip(lower=0), net=single.amount)
        orders = keyed.union(alone)
    else:
        # As features.build.roll_up_orders: without order ids, lines at one instant are one order.
        orders = lines.group_by([*keys, "ts"]).aggregate(
            gross=lines.amount.clip(lower=0).sum(), net=lines.amount.sum()).drop("ts")
    return orders.group_by(keys).aggregate(**{
        f"{prefix}orders": orders.gross.count(where=orders.gross > 0),
        f"{prefix}revenue": orders.net.sum(),
    })


def _survey_means(answers: ir.Table) -> ir.Table:
    return answers.group_by(list(KEYS)).aggregate(
        **{kind: answers.score.mean(where=answers.kind == kind) for kind in SURVEY_KINDS})


def _finish_outcomes(frame: pd.DataFrame, with_surveys: bool, campaign: str | None) -> pd.DataFrame:
    if frame.empty and campaign is not None:
        raise UserValueError(f"treatments: no assignment of campaign {campaign!r}; check the campaign's name")
    bad = sorted(set(frame["group"].dropna()) - set(GROUPS)) + (["<missing>"] if frame["group"].isna().any() else [])
    if bad:
        raise UserValueError(
            f"treatments, column 'group': {', '.join(map(repr, bad[:5]))} is not treatment or control; "
            "name each assignment's group treatment or control")
    twice = frame.duplicated(list(KEYS), keep=False)
    if twice.any():
        first = frame.loc[twice].iloc[0]
        raise UserValueError(
            f"treatments: {int(twice.sum())} rows assign a customer twice to one campaign "
            f"(e.g. customer {first['customer_id']!r} in {first['campaign']!r}); keep one row per customer and campaign")
    for prefix in ("", "pre_"):
        orders = frame[f"{prefix}orders"].fillna(0).astype("int64")
        frame[f"{prefix}orders"] = orders
        frame[f"{prefix}revenue"] = frame[f"{prefix}revenue"].fillna(0.0).astype("float64")
        frame[f"{prefix}repurchased"] = (orders > 0).astype("int64")
    frame["cost"] = frame["cost"].astype("float64")
    columns = list(OUTCOME_COLUMNS)
    if with_surveys:
        columns[8:8] = SURVEY_KINDS
        for kind in SURVEY_KINDS:
            frame[kind] = frame[kind].astype("float64")
    return frame[columns].sort_values(["campaign", "customer_id"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Sample-ratio check
# --------------------------------------------------------------------------------------------


def sample_ratio_check(
    assignments: ir.Table | pd.DataFrame,
    *,
    expected_treatment_share: float = 0.5,
    alpha: float = SRM_ALPHA,
) -> pd.DataFrame:
    """Whether each campaign's group sizes fit the planned split (sample-ratio mismatch, SRM).

    Parameters
    ----------
    assignments
        One row per assignment with ``campaign`` and ``group``: the treatments table (Ibis or
        pandas) or :func:`assignment_outcomes`' frame.
    expected_treatment_share
        The planned share of the treatment group, in (0, 1).
    alpha
        A campaign with a p-value below it is a mismatch (default :data:`SRM_ALPHA`, 0.001).

    Returns
    -------
    pandas.DataFrame
        One row per campaign, sorted, columns :data:`SRM_COLUMNS`: ``campaign``, ``n_control``,
        ``n_treatment`` (int64), ``treatment_share`` (observed), ``expected_treatment_share``,
        ``pvalue`` (two-sided; tea-tasting's ``SampleRatio``: exact binomial test below 1,000
        assignments, normal approximation with continuity correction above) and ``mismatch``
        (bool, ``pvalue < alpha``). A campaign without one of the groups is a mismatch.

    Raises
    ------
    churnml.errors.UserValueError
        A share or alpha outside (0, 1), a missing column, or a group other than treatment or
        control.
    """
    _check_fraction(expected_treatment_share, "expected_treatment_share", "sample_ratio_check")
    _check_fraction(alpha, "alpha", "sample_ratio_check")
    counts = _group_counts(assignments)
    test = tt.SampleRatio(expected_treatment_share / (1 - expected_treatment_share))
    rows = []
    for campaign, n in counts.iterrows():
        n_control, n_treatment = int(n[CONTROL]), int(n[TREATMENT])
        # Aggregates with counts only are all SampleRatio reads.
        result = test.analyze({CONTROL: Aggregates(count_=n_control), TREATMENT: Aggregates(count_=n_treatment)},
                              CONTROL, TREATMENT)
        rows.append({
            "campaign": campaign, "n_control": n_control, "n_treatment": n_treatment,
            "treatment_share": n_treatment / (n_control + n_treatment),
            "expected_treatment_share": float(expected_treatment_share),
            "pvalue": result.pvalue, "mismatch": bool(result.pvalue < alpha),
        })
    return pd.DataFrame(rows, columns=list(SRM_COLUMNS)).astype({"n_control": "int64", "n_treatment": "int64"})


def _group_counts(assignments: ir.Table | pd.DataFrame) -> pd.DataFrame:
    """Assignments per campaign (rows, sorted) and group (columns control, treatment)."""
    if isinstance(assignments, ir.Table):
        table = _table(assignments, "treatments", ("campaign", "group"))
        group = table.group.strip().lower()
        frame = to_frame(table.group_by([table.campaign, group.name("group")]).aggregate(n=table.count()))
    else:
        missing = [c for c in ("campaign", "group") if c not in assignments.columns]
        if missing:
            raise UserValueError(f"assignments: missing column(s) {', '.join(map(repr, missing))}; "
                                 "pass the treatments table or assignment_outcomes' frame")
        group = assignments["group"].astype("string").str.strip().str.lower()
        frame = (assignments.assign(group=group).groupby(["campaign", "group"], dropna=False)
                 .size().rename("n").reset_index())
    if frame["campaign"].isna().any():
        raise UserValueError(f"treatments, column 'campaign': {int(frame.loc[frame['campaign'].isna(), 'n'].sum())} "
                             "assignments have no campaign; name the campaign of every assignment")
    bad = sorted(set(frame["group"].astype("object").where(frame["group"].notna(), "<missing>")) - set(GROUPS))
    if bad:
        raise UserValueError(
            f"treatments, column 'group': {', '.join(map(repr, bad[:5]))} is not treatment or control; "
            "name each assignment's group treatment or control")
    counts = frame.pivot_table(index="campaign", columns="group", values="n", aggfunc="sum", fill_value=0)
    return counts.reindex(columns=list(GROUPS), fill_value=0).sort_index()


# --------------------------------------------------------------------------------------------
# Lift
# --------------------------------------------------------------------------------------------


def analyze_campaign(
    outcomes: pd.DataFrame,
    *,
    confidence_level: float = 0.95,
    expected_treatment_share: float = 0.5,
    cuped: bool = True,
) -> pd.DataFrame:
    """The lift of one campaign on each metric, with confidence intervals, plain and with CUPED.

    Parameters
    ----------
    outcomes
        :func:`assignment_outcomes`' frame for one campaign (the ``campaign`` column, if any,
        holds one value): ``group``, ``repurchased``, ``orders``, ``revenue``, their ``pre_``
        columns, and optionally ``nps``, ``csat``, ``ces``.
    confidence_level
        Of the two-sided intervals, in (0, 1).
    expected_treatment_share
        The planned treatment share, for the sample-ratio check (:func:`sample_ratio_check`).
    cuped
        Add a CUPED row after each plain row of the purchase metrics.

    Returns
    -------
    pandas.DataFrame
        One row per metric and estimator, columns :data:`LIFT_COLUMNS`:

        - ``campaign``; ``metric``: ``repurchase_rate`` (share with a purchase in the window),
          ``churn_rate`` (1 - repurchase rate), ``orders_per_customer``,
          ``revenue_per_customer`` (net, currency), and with answers ``nps_mean``,
          ``csat_mean``, ``ces_mean`` (mean answer of the customers who answered in the window,
          on the kind's scale; no CUPED row; a group's answers are its own selection, so read
          them as descriptive);
        - ``estimator``: ``difference`` (plain difference of means) or ``cuped``;
          ``covariate``: the pre-period column of the CUPED row (None for plain rows);
        - ``n_control``, ``n_treatment``: customers (with an answer, for survey metrics);
        - ``control_mean``, ``treatment_mean``: the group means; for CUPED the adjusted means
          ``mean(Y) - theta * (mean(X) - mean X over both groups)``;
        - ``lift`` = treatment - control, with ``lift_ci_lower``, ``lift_ci_upper``, in the
          metric's units (rates as fractions: 0.05 is 5 points);
        - ``relative_lift`` = treatment / control - 1, with its interval;
        - ``pvalue`` (two-sided, no difference); ``ci_width`` of the absolute interval;
        - ``ci_width_ratio``: the width over the plain row's width (1 for plain rows), and
          ``variance_reduction`` = 1 - ratio squared (0 for plain rows): CUPED's gain, read from
          the intervals (slightly negative when the covariate is noise in a small sample);
        - ``confidence_level``; ``srm_pvalue``, ``srm_mismatch``: the campaign's sample-ratio
          check, repeated on each row so that no lift is read without it.

        Statistics of a survey metric with fewer than two answers in a group are NaN, and so
        are the intervals of a metric without variance (say, no purchase in either group) and
        the relative lift of a metric whose control mean is 0.

    Raises
    ------
    churnml.errors.UserValueError
        Outcomes of several campaigns (use :func:`analyze_campaigns`), a missing column, a group
        other than treatment or control, fewer than two customers in a group (the message names
        the campaign), or a level or share outside (0, 1).
    """
    _check_fraction(confidence_level, "confidence_level", "analyze_campaign")
    _check_fraction(expected_treatment_share, "expected_treatment_share", "analyze_campaign")
    name = _campaign_name(outcomes)
    data = _experiment_data(outcomes, name)
    srm = sample_ratio_check(data.assign(campaign="" if name is None else name),
                             expected_treatment_share=expected_treatment_share).iloc[0]
    rows: list[dict[str, Any]] = []
    for metric, column, covariate in METRICS:
        plain = _lift(data, column, None, confidence_level)
        rows.append(_row(metric, PLAIN, None, data, plain, plain))
        if cuped:
            rows.append(_row(metric, CUPED, covariate, data, _lift(data, column, covariate, confidence_level), plain))
    for metric, column in SURVEY_METRICS:
        if column not in data.columns or data[column].isna().all():
            continue
        answered = data.loc[data[column].notna(), ["group", column]]
        sizes = answered["group"].value_counts()
        if min(sizes.get(CONTROL, 0), sizes.get(TREATMENT, 0)) < MIN_GROUP_SIZE:
            rows.append(_row(metric, PLAIN, None, answered, None, None))
        else:
            result = _lift(answered, column, None, confidence_level)
            rows.append(_row(metric, PLAIN, None, answered, result, result))
    table = pd.DataFrame(rows)
    table.insert(0, "campaign", name)
    table["confidence_level"] = float(confidence_level)
    table["srm_pvalue"] = float(srm["pvalue"])
    table["srm_mismatch"] = bool(srm["mismatch"])
    return table[list(LIFT_COLUMNS)]


def analyze_campaigns(
    outcomes: pd.DataFrame,
    *,
    confidence_level: float = 0.95,
    expected_treatment_share: float = 0.5,
    cuped: bool = True,
) -> pd.DataFrame:
    """:func:`analyze_campaign` for every campaign of ``outcomes``, stacked in campaign order.

    Returns
    -------
    pandas.DataFrame
        The columns :data:`LIFT_COLUMNS`, one block of rows per campaign.

    Raises
    ------
    churnml.errors.UserValueError
        As :func:`analyze_campaign`, naming the first campaign at fault; also when ``outcomes``
        has no rows or no ``campaign`` column.
    """
    if "campaign" not in outcomes.columns:
        raise UserValueError("outcomes: missing column 'campaign'; pass assignment_outcomes' frame")
    if outcomes.empty:
        raise UserValueError("outcomes: no assignments to analyse; check the treatments table and the campaign filter")
    parts = [analyze_campaign(part, confidence_level=confidence_level,
                              expected_treatment_share=expected_treatment_share, cuped=cuped)
             for _, part in outcomes.groupby("campaign", sort=True)]
    return pd.concat(parts, ignore_index=True)


def _campaign_name(outcomes: pd.DataFrame) -> Any:
    if "campaign" not in outcomes.columns:
        return None
    names = outcomes["campaign"].dropna().unique()
    if len(names) > 1:
        raise UserValueError(
            f"analyze_campaign: outcomes hold {len(names)} campaigns ({', '.join(map(repr, sorted(names)[:3]))}, ...); "
            "use analyze_campaigns or pass one campaign's rows")
    return names[0] if len(names) else None


def _experiment_data(outcomes: pd.DataFrame, name: Any) -> pd.DataFrame:
    """The columns the metrics read, checked: groups, sizes, numbers."""
    where = f"campaign {name!r}" if name is not None else "the campaign"
    needed = ["group", *dict.fromkeys(c for _, c, cov in METRICS for c in (c, cov) if c != "churned")]
    missing = [c for c in needed if c not in outcomes.columns]
    if missing:
        raise UserValueError(f"outcomes of {where}: missing column(s) {', '.join(map(repr, missing))}; "
                             "pass assignment_outcomes' frame")
    surveys = [c for _, c in SURVEY_METRICS if c in outcomes.columns]
    data = outcomes[[*needed, *surveys]].copy()
    data["group"] = data["group"].astype("string").str.strip().str.lower()
    bad = sorted(set(data["group"].dropna()) - set(GROUPS)) + (["<missing>"] if data["group"].isna().any() else [])
    if bad:
        raise UserValueError(f"outcomes of {where}, column 'group': {', '.join(map(repr, bad[:5]))} is not "
                             "treatment or control; name each assignment's group treatment or control")
    sizes = data["group"].value_counts()
    for group in GROUPS:
        if sizes.get(group, 0) < MIN_GROUP_SIZE:
            raise UserValueError(
                f"{where} has {int(sizes.get(group, 0))} customers in its {group} group; a lift needs at least "
                f"{MIN_GROUP_SIZE} in each group: give it a {group} group or leave it out of the analysis")
    data["group"] = data["group"].astype(object)
    for column in data.columns.drop("group"):
        data[column] = data[column].astype("float64")
    data["churned"] = 1.0 - data["repurchased"]
    return data


def _lift(data: pd.DataFrame, column: str, covariate: str | None, confidence_level: float) -> Any:
    # Explicit settings, so that tea-tasting's global configuration cannot change a result.
    metric = tt.Mean(column, covariate, alternative="two-sided", confidence_level=confidence_level,
                     equal_var=False, use_t=True)
    columns = ["group", column, *([covariate] if covariate else [])]
    # A metric without variance (no customer bought, say) has NaN intervals, not warnings.
    with np.errstate(invalid="ignore", divide="ignore"):
        return metric.analyze(data[columns], CONTROL, TREATMENT, variant="group")


def _row(metric: str, estimator: str, covariate: str | None, data: pd.DataFrame, result: Any, plain: Any) -> dict[str, Any]:
    sizes = data["group"].value_counts()
    row: dict[str, Any] = {
        "metric": metric, "estimator": estimator, "covariate": covariate,
        "n_control": int(sizes.get(CONTROL, 0)), "n_treatment": int(sizes.get(TREATMENT, 0)),
    }
    if result is None:
        return row | dict.fromkeys(LIFT_COLUMNS[6:16], math.nan)
    width = result.effect_size_ci_upper - result.effect_size_ci_lower
    ratio = width / (plain.effect_size_ci_upper - plain.effect_size_ci_lower)
    return row | {
        "control_mean": float(result.control), "treatment_mean": float(result.treatment),
        "lift": float(result.effect_size),
        "lift_ci_lower": float(result.effect_size_ci_lower), "lift_ci_upper": float(result.effect_size_ci_upper),
        "relative_lift": float(result.rel_effect_size),
        "relative_lift_ci_lower": float(result.rel_effect_size_ci_lower),
        "relative_lift_ci_upper": float(result.rel_effect_size_ci_upper),
        "pvalue": float(result.pvalue), "ci_width": float(width),
        "ci_width_ratio": float(ratio), "variance_reduction": float(1.0 - ratio * ratio),
    }


# --------------------------------------------------------------------------------------------
# Pilot size
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PilotPlan:
    """The size of a pilot on a rate (e.g. the repurchase rate) and the effect it can detect.

    ``effect`` is absolute, in rate units (0.02 = +2 points); ``relative_effect`` is
    ``effect / base_rate``. ``n_control + n_treatment == n_total``.
    """

    base_rate: float
    effect: float
    relative_effect: float
    alpha: float
    power: float
    treatment_share: float
    n_control: int
    n_treatment: int
    n_total: int


def plan_pilot(
    *,
    base_rate: float,
    effect: float,
    alpha: float = 0.05,
    power: float = 0.8,
    treatment_share: float = 0.5,
    relative: bool = False,
) -> PilotPlan:
    """Customers a pilot needs to detect a rise of a rate, per group and in total.

    The test is the two-sided z-test of two proportions with unpooled variances, the normal
    version of the test :func:`analyze_campaign` runs. With control rate ``p1``, treatment rate
    ``p2 = p1 + effect`` and ``n1``, ``n2`` customers, the difference has standard error
    ``sqrt(p1 (1 - p1) / n1 + p2 (1 - p2) / n2)``; the groups need, for equal groups,
    ``n = (z_{1-alpha/2} + z_{power})^2 (p1 (1 - p1) + p2 (1 - p2)) / effect^2`` each (Chow,
    Shao and Wang, "Sample Size Calculations in Clinical Research", 2nd ed., 2008, section 4.2,
    whose test uses the same unpooled variance). tea-tasting's power analysis of means
    (``Mean.solve_power``, normal distribution) solves it with the variance
    ``V = share * p1 (1 - p1) + (1 - share) * p2 (1 - p2)`` in both groups, which gives that
    standard error exactly; it also counts the far tail of the two-sided test.

    Parameters
    ----------
    base_rate
        The control group's rate ``p1``, in (0, 1).
    effect
        The rise to detect (> 0): absolute (0.02 = +2 points), or relative to ``base_rate``
        when ``relative`` (0.2 = +20 %, i.e. 0.02 on a base of 0.1).
    alpha
        Two-sided significance level, in (0, 1).
    power
        Probability of detecting the effect, in (0, 1).
    treatment_share
        Share of the customers in the treatment group, in (0, 1).
    relative
        Whether ``effect`` is relative to ``base_rate``.

    Returns
    -------
    PilotPlan
        Group sizes rounded up.

    Raises
    ------
    churnml.errors.UserValueError
        A parameter outside its range, or a treated rate ``base_rate + effect`` of 1 or more,
        naming the parameter.
    """
    _check_fraction(base_rate, "base_rate", "plan_pilot")
    _check_fraction(alpha, "alpha", "plan_pilot")
    _check_fraction(power, "power", "plan_pilot")
    _check_fraction(treatment_share, "treatment_share", "plan_pilot")
    if not _is_number(effect) or not math.isfinite(effect) or effect <= 0:
        raise UserValueError(f"plan_pilot: effect must be a positive rise of the rate (e.g. 0.02 for +2 points), got {effect!r}")
    delta = float(effect) * base_rate if relative else float(effect)
    if base_rate + delta >= 1:
        raise UserValueError(f"plan_pilot: effect {effect!r} lifts the base_rate {base_rate!r} to 1 or more; "
                             "give a smaller effect (absolute unless relative=True)")
    (result,) = _power_metric(alpha, power, treatment_share, effect_size=delta).solve_power_from_aggregates(
        _rate_aggregates(base_rate, delta, treatment_share), "n_obs")
    return _plan(base_rate, delta, alpha, power, treatment_share, int(result.n_obs))


def detectable_effect(
    *,
    base_rate: float,
    n_total: int,
    alpha: float = 0.05,
    power: float = 0.8,
    treatment_share: float = 0.5,
) -> PilotPlan:
    """The smallest rise of a rate a pilot of ``n_total`` customers detects (its minimum
    detectable effect), under the test of :func:`plan_pilot`.

    The treated rate enters the variance, so the effect is solved by fixed-point iteration:
    tea-tasting solves for the effect at the variance of the current guess until the guess
    stops moving.

    Returns
    -------
    PilotPlan
        ``effect`` is the detectable rise (absolute); ``n_control`` and ``n_treatment`` split
        ``n_total`` by ``treatment_share``.

    Raises
    ------
    churnml.errors.UserValueError
        A parameter outside its range, fewer than two customers in a group, or a pilot too
        small to detect any rise that leaves the rate below 1.
    """
    _check_fraction(base_rate, "base_rate", "detectable_effect")
    _check_fraction(alpha, "alpha", "detectable_effect")
    _check_fraction(power, "power", "detectable_effect")
    _check_fraction(treatment_share, "treatment_share", "detectable_effect")
    if not _is_number(n_total) or isinstance(n_total, (float, np.floating)):
        raise UserValueError(f"detectable_effect: n_total must be a whole number of customers, got {n_total!r}")
    n_treatment = round(int(n_total) * treatment_share)
    if min(n_treatment, int(n_total) - n_treatment) < MIN_GROUP_SIZE:
        raise UserValueError(f"detectable_effect: n_total {n_total!r} leaves a group with fewer than "
                             f"{MIN_GROUP_SIZE} customers; plan a larger pilot")
    delta = 0.0
    for _ in range(100):
        (result,) = _power_metric(alpha, power, treatment_share, n_obs=int(n_total)).solve_power_from_aggregates(
            _rate_aggregates(base_rate, delta, treatment_share), "effect_size")
        step, delta = abs(result.effect_size - delta), float(result.effect_size)
        if base_rate + delta >= 1:
            raise UserValueError(f"detectable_effect: {n_total} customers cannot detect a rise of the base_rate "
                                 f"{base_rate!r} that stays below 1; plan a larger pilot")
        if step < 1e-12:
            break
    plan = _plan(base_rate, delta, alpha, power, treatment_share, int(n_total))
    return PilotPlan(**{**plan.__dict__, "n_control": int(n_total) - n_treatment, "n_treatment": n_treatment})


def _power_metric(alpha: float, power: float, share: float, **target: Any) -> tt.Mean:
    # A normal test (use_t=False) as the planner's z-test; ratio = treatment / control customers.
    return tt.Mean("rate", alternative="two-sided", equal_var=False, use_t=False, alpha=alpha, power=power,
                   ratio=share / (1 - share), **target)


def _rate_aggregates(base_rate: float, delta: float, share: float) -> Aggregates:
    """Aggregates of a 0/1 outcome whose one variance gives the unpooled standard error of
    :func:`plan_pilot` at groups split by ``share``."""
    treated = base_rate + delta
    variance = share * base_rate * (1 - base_rate) + (1 - share) * treated * (1 - treated)
    # count_ is read only when the number of customers is not the unknown.
    return Aggregates(count_=1, mean_={"rate": base_rate}, var_={"rate": variance})


def _plan(base_rate: float, delta: float, alpha: float, power: float, share: float, n_total: int) -> PilotPlan:
    # The total is rounded up already; each group rounds up its share of it.
    n_control = math.ceil(n_total * (1 - share) - 1e-9)
    n_treatment = math.ceil(n_total * share - 1e-9)
    return PilotPlan(base_rate=float(base_rate), effect=delta, relative_effect=delta / base_rate, alpha=float(alpha),
                     power=float(power), treatment_share=float(share), n_control=n_control,
                     n_treatment=n_treatment, n_total=n_control + n_treatment)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_fraction(value: Any, name: str, where: str) -> None:
    if not _is_number(value) or not 0 < value < 1:
        raise UserValueError(f"{where}: {name} must be a number strictly between 0 and 1, got {value!r}")
