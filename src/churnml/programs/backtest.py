"""Warning-rule backtest: each warning flag against the model at the same alert volume, over
historical cutoffs: precision, recall and lead time.

Retention teams act on three rules, the flags of :data:`churnml.features.build.WARNING_FLAGS`
(thresholds in the ``features`` config, :class:`churnml.features.build.FeatureConfig`):
``no_repurchase_3m``, no purchase for ``no_repurchase_days`` (90) or none at all;
``order_value_drop_40``, an average order value over the last ``order_value_window_days`` (90)
below ``1 - order_value_drop`` (0.6) times that of the 90 days before; ``low_interaction``,
interactions per month over ``interaction_window_days`` (90) below ``low_interaction_ratio``
(0.5) times the mean of the customer's peers (everyone, or ``peer_column``'s group). The
backtest asks of each rule, at each cutoff, how many of the customers it alerts churned in the
horizon after it, how many of the churners it alerted, and how long after their last purchase
the churners were first alerted; and asks the same of the model when it alerts as many
customers as the rule does.

Definitions, over rows of one customer at one cutoff:

alerts
    The customers a rule flags at the cutoff (a missing flag is not raised); ``any_flag`` flags
    the customers with at least one of the flags. The model's alerts at the rule's volume: the
    ``k`` customers with the highest churn probability at the cutoff, ``k`` the rule's alerts
    there, ties broken by ``customer_id`` (ascending).
precision, recall
    True alerts / alerts and true alerts / churners, where a true alert is an alert of a
    customer who churned in ``(cutoff, cutoff + horizon]``. NaN without alerts (or churners).
lead time
    For a true alert at cutoff ``c`` of a customer whose last purchase on or before ``c`` was on
    day ``L``: the days from ``L`` to the customer's *first alert*, the earliest cutoff of the
    run of alerts that ends at ``c``. A run is the customer's alerts at consecutive cutoffs of
    the backtest with the same last purchase: a cutoff without an alert ends it, and so does a
    purchase between two cutoffs (an alert followed by a purchase did not precede this churn),
    so the first alert is never before ``L``. Smaller is sooner: a churner first alerted 30 days
    after their last purchase was flagged two months before one alerted after 90. Counted only
    for churners whose last purchase is on or after the first cutoff: for one who stopped buying
    earlier the first alert may predate the backtest, and the first cutoff would stand in for it
    (a customer gone for two years would count two years). Unknown (left out) for a customer
    without any purchase (refunds only). Measured on the grid of the backtest's cutoffs: a rule
    that would have fired between two cutoffs is seen at the next, so denser cutoffs give sooner
    (smaller) figures.
pooled (``cutoff == "all"``)
    Alerts, true alerts and churners summed over the cutoffs (a customer counts once at each
    cutoff, as on each cutoff's list), precision and recall of those sums; lead time over churn
    episodes, one per customer and last purchase, each with the lead time of its latest true
    alert, so that a churner alerted at three cutoffs in a row counts once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from churnml.features.build import WARNING_FLAGS
from churnml.features.labels import TARGETS

ANY_FLAG = "any_flag"
POOLED = "all"
RULE = "rule"
MODEL = "model"
INPUT_COLUMNS = ("customer_id", "cutoff", "churned", "churn_probability", "last_purchase")
SCORE_COLUMNS = ("customer_id", "cutoff", "label", "probability", "recency_days")
COLUMNS = ("cutoff", "rule", "scorer", "alerts", "true_alerts", "churners", "precision", "recall",
           "lead_time_median_days", "lead_time_mean_days", "lead_times")
REPORT_TITLE = "Warning rules against the model at the same alert volume"
REPORT_NOTE = (
    "Each rule's alerts at each out-of-sample cutoff (the time-based CV folds and the holdout) and pooled over "
    "them (all), against the model's alerts of as many customers, its highest churn probabilities: precision "
    "(share of alerts who churned in the horizon), recall (share of churners alerted) and lead time (median "
    "days from a churner's last purchase to their first alert, lower is sooner, over n churners: those whose last "
    "purchase is on or after the first cutoff).")
_DAY = np.timedelta64(1, "D")


def _raised(flag: pd.Series) -> np.ndarray:
    # A missing flag (no data to decide it) is not raised, as in the rule baseline.
    return flag.astype("boolean").fillna(False).to_numpy(dtype=bool)


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lack the column(s) {', '.join(missing)}")


def backtest_frame(scores: pd.DataFrame, target: str) -> pd.DataFrame:
    """The backtest's input from scored snapshot rows, in the direction of churn.

    Parameters
    ----------
    scores : pandas.DataFrame
        One row per customer and cutoff: ``customer_id``, ``cutoff`` (date), ``label`` (0/1, the
        target over ``(cutoff, cutoff + horizon]``), ``probability`` (the model's probability of
        the target, out of sample for that cutoff), ``recency_days`` (whole days since the last
        purchase on or before the cutoff; NaN without one) and any of the warning flags.
    target : {"churn", "repurchase"}
        For ``repurchase`` the churn label is ``1 - label`` (no purchase in the horizon) and the
        churn probability ``1 - probability``.

    Returns
    -------
    pandas.DataFrame
        The columns of :data:`INPUT_COLUMNS` (``last_purchase`` = ``cutoff - recency_days``,
        NaT without a purchase) and the flags found, as booleans; same rows, same order.

    Raises
    ------
    ValueError
        For an unknown target or a missing column.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target '{target}': use one of {TARGETS}")
    _require(scores, SCORE_COLUMNS, "scored snapshot rows")
    label = scores["label"].to_numpy(dtype=float)
    probability = scores["probability"].to_numpy(dtype=float)
    cutoff = pd.to_datetime(scores["cutoff"]).reset_index(drop=True)
    recency = pd.to_timedelta(scores["recency_days"].astype(float).to_numpy(), unit="D")
    churn = target == "churn"
    frame = pd.DataFrame({
        "customer_id": scores["customer_id"].to_numpy(),
        "cutoff": cutoff,
        "churned": (label if churn else 1.0 - label).astype(np.int8),
        "churn_probability": probability if churn else 1.0 - probability,
        "last_purchase": cutoff - recency,
    })
    for flag in WARNING_FLAGS:
        if flag in scores.columns:
            frame[flag] = _raised(scores[flag])
    return frame


def _check(frame: pd.DataFrame) -> None:
    _require(frame, INPUT_COLUMNS, "the backtest rows")
    if frame.duplicated(["customer_id", "cutoff"]).any():
        raise ValueError("the backtest rows hold a customer twice at one cutoff")
    if not frame["churned"].isin([0, 1]).all():
        raise ValueError("the backtest's churned column must hold 0 and 1 only")
    if not np.isfinite(frame["churn_probability"].to_numpy(dtype=float)).all():
        raise ValueError("the backtest's churn probabilities must be finite")


def _first_alert(customer: np.ndarray, position: np.ndarray, last_purchase: np.ndarray, alert: np.ndarray) -> np.ndarray:
    """Position of the cutoff of each alert's first alert, -1 where there is no alert.

    The rows are sorted by customer, then cutoff (``position``: index of the row's cutoff among
    the backtest's sorted cutoffs).
    """
    follows = np.r_[False, (customer[1:] == customer[:-1]) & (position[1:] == position[:-1] + 1)
                    & (last_purchase[1:] == last_purchase[:-1]) & alert[:-1]]
    starts = alert & ~follows
    run = np.cumsum(starts)
    start_position = position[starts]
    return np.where(alert, start_position[np.maximum(run, 1) - 1] if start_position.size else -1, -1)


def _lead_days(cutoffs: np.ndarray, first: np.ndarray, last_purchase: np.ndarray, true_alert: np.ndarray) -> np.ndarray:
    """Days from the last purchase to the first alert for true alerts whose last purchase is on
    or after the first cutoff, NaN elsewhere."""
    days = (cutoffs[np.maximum(first, 0)] - last_purchase) / _DAY
    # NaT compares false: customers without a purchase drop out here too.
    return np.where(true_alert & (last_purchase >= cutoffs[0]), days, np.nan)


def _summary(cutoff: str, rule: str, scorer: str, alerts: int, true_alerts: int, churners: int,
             leads: np.ndarray) -> dict[str, object]:
    leads = leads[np.isfinite(leads)]
    return {
        "cutoff": cutoff, "rule": rule, "scorer": scorer, "alerts": int(alerts), "true_alerts": int(true_alerts),
        "churners": int(churners),
        "precision": true_alerts / alerts if alerts else np.nan,
        "recall": true_alerts / churners if churners else np.nan,
        "lead_time_median_days": float(np.median(leads)) if leads.size else np.nan,
        "lead_time_mean_days": float(np.mean(leads)) if leads.size else np.nan,
        "lead_times": int(leads.size),
    }


def warning_backtest(frame: pd.DataFrame, flags: Sequence[str] = WARNING_FLAGS) -> pd.DataFrame:
    """Each warning flag, and any of them, against the model at the same alert volume, at each
    cutoff and pooled over the cutoffs (definitions in the module's docstring).

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per customer and cutoff (:func:`backtest_frame`): ``customer_id``, ``cutoff``
        (timestamp), ``churned`` (0/1 over ``(cutoff, cutoff + horizon]``),
        ``churn_probability`` (the model's, out of sample for the row's cutoff),
        ``last_purchase`` (timestamp of the day of the last purchase on or before the cutoff,
        NaT without one) and boolean flag columns. The cutoffs are the backtest's grid: runs of
        alerts follow them in order.
    flags : sequence of str
        The flags to backtest; those absent from ``frame`` (``low_interaction`` without
        interactions) are left out. ``any_flag`` combines the others.

    Returns
    -------
    pandas.DataFrame
        Tidy, the columns of :data:`COLUMNS`: one row per rule (the flags, then ``any_flag``),
        scorer (``rule``, then ``model`` at the rule's volume) and cutoff (ISO dates in order,
        then ``all``, pooled). ``lead_times``: how many lead times the median and mean are
        taken over (true alerts with a last purchase on or after the first cutoff; churn
        episodes in the pooled rows).

    Raises
    ------
    ValueError
        If a column is missing, none of ``flags`` is in ``frame``, a customer appears twice at
        a cutoff, ``churned`` is not 0/1 or a probability is not finite.
    """
    _check(frame)
    present = [f for f in flags if f in frame.columns]
    if not present:
        raise ValueError(f"the backtest rows hold none of the flags {', '.join(flags)}")
    work = frame.sort_values(["customer_id", "cutoff"], kind="stable", ignore_index=True)
    cutoffs = np.sort(work["cutoff"].unique()).astype("datetime64[ns]")
    labels = [pd.Timestamp(c).date().isoformat() for c in cutoffs]
    position = np.searchsorted(cutoffs, work["cutoff"].to_numpy(dtype="datetime64[ns]"))
    customer = work["customer_id"].to_numpy()
    last_purchase = work["last_purchase"].to_numpy(dtype="datetime64[ns]")
    churned = work["churned"].to_numpy(dtype=bool)
    probability = work["churn_probability"].to_numpy(dtype=float)
    # Rows of each cutoff, highest churn probability first; within a tie, customer order (the sort above).
    ranked = []
    for p in range(len(cutoffs)):
        rows = np.flatnonzero(position == p)
        ranked.append(rows[np.argsort(-probability[rows], kind="stable")])
    rules = {flag: _raised(work[flag]) for flag in present}
    rules[ANY_FLAG] = np.logical_or.reduce(list(rules.values()))
    out = []
    for rule, flagged in rules.items():
        model_alert = np.zeros(len(work), dtype=bool)
        for p, rows in enumerate(ranked):
            model_alert[rows[:int(flagged[rows].sum())]] = True
        for scorer, alert in ((RULE, flagged), (MODEL, model_alert)):
            true_alert = alert & churned
            first = _first_alert(customer, position, last_purchase, alert)
            lead = _lead_days(cutoffs, first, last_purchase, true_alert)
            for p, label in enumerate(labels):
                at = position == p
                out.append(_summary(label, rule, scorer, alert[at].sum(), true_alert[at].sum(), churned[at].sum(),
                                    lead[at]))
            # One lead time per churn episode (customer, last purchase): its latest true alert's.
            episodes = pd.DataFrame({"customer_id": customer[true_alert], "last_purchase": last_purchase[true_alert],
                                     "lead": lead[true_alert]})
            episodes = episodes.drop_duplicates(["customer_id", "last_purchase"], keep="last")
            out.append(_summary(POOLED, rule, scorer, alert.sum(), true_alert.sum(), churned.sum(),
                                episodes["lead"].to_numpy(dtype=float)))
    return pd.DataFrame(out, columns=list(COLUMNS))


def backtest_metrics(table: pd.DataFrame) -> dict[str, float]:
    """The pooled figures of :func:`warning_backtest` as flat metric names.

    For each rule ``r`` (a flag or ``any_flag``): ``backtest_r_alerts``, ``backtest_r_precision``,
    ``backtest_r_recall``, ``backtest_r_lead_time_days`` (median), ``backtest_r_lead_time_mean_days``,
    and the model's at the same volume, ``backtest_r_model_precision``, ``backtest_r_model_recall``,
    ``backtest_r_model_lead_time_days``, ``backtest_r_model_lead_time_mean_days``. NaN values are kept.
    """
    pooled = table[table["cutoff"] == POOLED].set_index(["rule", "scorer"])
    metrics: dict[str, float] = {}
    for rule in dict.fromkeys(pooled.index.get_level_values("rule")):
        metrics[f"backtest_{rule}_alerts"] = float(pooled.loc[(rule, RULE), "alerts"])
        for scorer, infix in ((RULE, ""), (MODEL, "_model")):
            row = pooled.loc[(rule, scorer)]
            metrics[f"backtest_{rule}{infix}_precision"] = float(row["precision"])
            metrics[f"backtest_{rule}{infix}_recall"] = float(row["recall"])
            metrics[f"backtest_{rule}{infix}_lead_time_days"] = float(row["lead_time_median_days"])
            metrics[f"backtest_{rule}{infix}_lead_time_mean_days"] = float(row["lead_time_mean_days"])
    return metrics


def side_by_side(table: pd.DataFrame, pooled_only: bool = False) -> pd.DataFrame:
    """:func:`warning_backtest`'s table for reading: one row per cutoff and rule (index
    ``cutoff``), the rule's figures beside the model's at the same volume.

    Columns: ``rule``, ``alerts``, ``churners``, ``precision``, ``model precision``, ``recall``,
    ``model recall``, ``lead days`` and ``model lead days`` (medians), ``lead n`` and ``model
    lead n`` (how many lead times each median is taken over). ``pooled_only``: the ``all`` rows
    alone.
    """
    if pooled_only:
        table = table[table["cutoff"] == POOLED]
    rule = table[table["scorer"] == RULE].set_index(["rule", "cutoff"])
    model = table[table["scorer"] == MODEL].set_index(["rule", "cutoff"]).reindex(rule.index)
    wide = pd.DataFrame({
        "alerts": rule["alerts"], "churners": rule["churners"],
        "precision": rule["precision"], "model precision": model["precision"],
        "recall": rule["recall"], "model recall": model["recall"],
        "lead days": rule["lead_time_median_days"], "model lead days": model["lead_time_median_days"],
        "lead n": rule["lead_times"], "model lead n": model["lead_times"],
    }, index=rule.index)
    return wide.reset_index(level="rule")
