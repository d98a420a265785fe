"""The summary of a scoring run: rows, band and action counts, the most frequent reasons."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from churnml.scoring.policy import RISK_BANDS


log = logging.getLogger(__name__)


# Summary
# --------------------------------------------------------------------------------------------


def summarize(scores: pd.DataFrame, n_top_reasons: int = 5) -> dict[str, Any]:
    """Counts for the console and the tracking run.

    Returns
    -------
    dict
        ``rows``, ``bands`` (count per risk band), ``mean_churn_probability``,
        ``mean_repurchase_probability``, ``actions`` (count per action), ``top_reasons`` (the
        features most often given as the first reason, with their counts).
    """
    bands = scores["risk_band"].value_counts()
    first_reasons = scores["reason_1_feature"].dropna().value_counts()
    first_reasons = first_reasons.sort_index().sort_values(ascending=False, kind="stable")
    actions = scores["recommended_action"].value_counts()
    actions = actions.sort_index().sort_values(ascending=False, kind="stable")
    return {
        "rows": int(len(scores)),
        "bands": {band: int(bands.get(band, 0)) for band in RISK_BANDS},
        "mean_churn_probability": float(scores["churn_probability"].mean()) if len(scores) else float("nan"),
        "mean_repurchase_probability": float(scores["repurchase_probability"].mean()) if len(scores) else float("nan"),
        "actions": {str(k): int(v) for k, v in actions.items()},
        "top_reasons": {str(k): int(v) for k, v in first_reasons.head(n_top_reasons).items()},
    }


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
