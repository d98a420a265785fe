"""The summary of a scoring run: rows, band and action counts, the most frequent reasons."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from churnml.scoring.policy import RISK_BANDS


def summary_of_groups(groups: pd.DataFrame, n_top_reasons: int = 5) -> dict[str, Any]:
    """The summary from row counts and probability sums grouped by ``risk_band``,
    ``recommended_action`` and ``reason_1_feature`` (columns ``rows``, ``churn_probability_sum``,
    ``repurchase_probability_sum``): what the batch path computes in pandas and Spark in its
    own aggregate.

    Returns
    -------
    dict
        ``rows``, ``bands`` (count per risk band), ``mean_churn_probability``,
        ``mean_repurchase_probability``, ``actions`` (count per action, most frequent first, ties
        by name), ``top_reasons`` (the features most often given as the first reason, with their
        counts)."""
    rows = int(groups["rows"].sum())
    bands = groups.groupby("risk_band")["rows"].sum()
    # By count, ties by name, as summarize orders them.
    actions = groups.groupby("recommended_action")["rows"].sum().sort_values(ascending=False, kind="stable")
    reasons = groups.dropna(subset=["reason_1_feature"]).groupby("reason_1_feature")["rows"].sum()
    reasons = reasons.sort_values(ascending=False, kind="stable")

    def mean(column: str) -> float:
        return float(groups[column].sum()) / rows if rows else float("nan")

    return {
        "rows": rows,
        "bands": {band: int(bands.get(band, 0)) for band in RISK_BANDS},
        "mean_churn_probability": mean("churn_probability_sum"),
        "mean_repurchase_probability": mean("repurchase_probability_sum"),
        "actions": {str(k): int(v) for k, v in actions.items()},
        "top_reasons": {str(k): int(v) for k, v in reasons.head(n_top_reasons).items()},
    }


GROUPS = ("risk_band", "recommended_action", "reason_1_feature")


def summarize(scores: pd.DataFrame, n_top_reasons: int = 5) -> dict[str, Any]:
    """Counts for the console and the tracking run: :func:`summary_of_groups` of the score table."""
    groups = scores.groupby(list(GROUPS), dropna=False, sort=True).agg(
        rows=("churn_probability", "size"),
        churn_probability_sum=("churn_probability", "sum"),
        repurchase_probability_sum=("repurchase_probability", "sum"),
    ).reset_index()
    return summary_of_groups(groups, n_top_reasons)


def format_summary(summary: Mapping[str, Any], as_of: dt.date, path: str | Path) -> str:
    """The closing lines printed by ``churnml-score``."""
    rows = summary["rows"]

    def share(count: int) -> str:
        return f"{count:,} ({count / rows:.1%})" if rows else f"{count:,}"

    bands = ", ".join(f"{band} {share(count)}" for band, count in summary["bands"].items())
    reasons = ", ".join(f"{feature} {share(count)}" for feature, count in summary["top_reasons"].items())
    actions = ", ".join(f"{action} {count:,}" for action, count in summary["actions"].items())
    return "\n".join([
        f"scored {rows:,} customers at {as_of}: mean churn probability {summary['mean_churn_probability']:.3f}, "
        f"mean repurchase probability {summary['mean_repurchase_probability']:.3f}",
        f"risk bands: {bands}",
        f"top first reasons: {reasons or 'none'}",
        f"actions: {actions}",
        f"scores written to {path}",
    ])
