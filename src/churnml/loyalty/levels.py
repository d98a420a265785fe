"""Membership levels for the loyalty reports: each customer's level history and the levels on a date.

The state machine itself is a feature (:mod:`churnml.features.levels`): the models and the score
table read the level features at a date, and features rank below models, so the rules and their
one implementation live there. This module is the loyalty layer's door to them, and adds the
level mix that reports and dashboards start from. Every function takes the date explicitly; the
rules come from ``features.levels`` in the config (:meth:`LevelConfig.from_dict`).
"""

from __future__ import annotations

import datetime as dt

import ibis.expr.types as ir
import pandas as pd

from churnml.features.levels import (
    HISTORY_COLUMNS,
    REASONS,
    LevelConfig,
    LevelRule,
    history_from_orders,
    level_history,
    level_history_of_orders,
    level_orders_of,
    levels_at,
    points_value,
)

__all__ = ["HISTORY_COLUMNS", "REASONS", "LevelConfig", "LevelRule", "history_from_orders", "level_history",
           "level_history_of_orders", "level_mix", "level_orders_of", "levels_at", "points_value"]


def level_mix(history: pd.DataFrame | ir.Table, as_of: str | dt.date, config: LevelConfig = LevelConfig()) -> pd.DataFrame:
    """How many customers hold each level on ``as_of``, every level listed (lowest first).

    Parameters
    ----------
    history : pandas.DataFrame or ibis.expr.types.Table
        :func:`level_history` at ``as_of`` or later.
    as_of : str or datetime.date
    config : LevelConfig
        The rules the history was computed with (for the list of levels).

    Returns
    -------
    pandas.DataFrame
        ``level``, ``customers`` (int), ``share`` (of the customers with a level, 0 when none).
    """
    now = levels_at(history, as_of)
    levels = now["level"] if isinstance(now, pd.DataFrame) else now.select("level").to_pandas()["level"]
    counts = levels.value_counts().reindex(list(config.levels), fill_value=0).astype("int64")
    total = int(counts.sum())
    return pd.DataFrame({"level": counts.index.astype(object), "customers": counts.to_numpy(),
                         "share": counts.to_numpy() / total if total else 0.0})
