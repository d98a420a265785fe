"""Training tables: feature snapshots at rolling cutoffs, each with its label.

A snapshot at cutoff ``c`` holds the features at ``c`` of every customer with history, and the
label from ``(c, c + horizon]``. Training snapshots are taken every ``step_days`` going back from
the holdout cutoff, and only where the label window closes on or before the holdout cutoff, so no
training label looks past it.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Callable, Iterable

import pandas as pd

from churnml.features.build import (
    FeatureConfig,
    PopulationNorms,
    build_features,
    own_features,
    population_norms,
    to_frame,
    windows_have_quantiles,
)
from churnml.features.labels import attach_label
from churnml.io.load import Dataset

log = logging.getLogger(__name__)


def training_cutoffs(
    holdout_cutoff: dt.date,
    horizon_days: int,
    first_date: dt.date,
    step_days: int = 30,
    max_snapshots: int = 12,
    min_snapshots: int = 4,
    min_history_days: int = 30,
) -> list[dt.date]:
    """Cutoffs of the training snapshots, oldest first.

    The latest is ``holdout_cutoff - horizon_days``; earlier ones follow every ``step_days``, no
    earlier than ``first_date + min_history_days``. Where fewer than ``min_snapshots`` fit at that
    step (short histories, long horizons), the step shrinks, down to a week, to fit them.
    """
    latest = holdout_cutoff - dt.timedelta(days=horizon_days)
    earliest = first_date + dt.timedelta(days=min_history_days)
    if latest < earliest:
        raise ValueError(
            f"no training snapshot fits: the holdout cutoff {holdout_cutoff} minus the {horizon_days}-day horizon "
            f"is before {earliest} (first date {first_date} + {min_history_days} days of history)"
        )
    span = (latest - earliest).days
    step = step_days
    if span // step + 1 < min_snapshots and min_snapshots > 1:
        step = max(7, span // (min_snapshots - 1)) if span >= 7 else step_days
        log.info("shrinking the snapshot step from %s to %s days to fit %s snapshots", step_days, step, min_snapshots)
    count = min(max_snapshots, span // step + 1)
    return sorted(latest - dt.timedelta(days=k * step) for k in range(count))


def snapshot(
    dataset: Dataset,
    cutoff: dt.date,
    target: str,
    horizon_days: int,
    config: FeatureConfig = FeatureConfig(),
    extra_features: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Features at ``cutoff`` with the ``label`` of the window after it, as a pandas frame.

    ``extra_features`` adds columns computed from the snapshot's own features (e.g. BG/NBD fitted
    on history up to the cutoff); it sees nothing after the cutoff.
    """
    features = build_features(dataset, cutoff, config)
    labelled = attach_label(features, dataset.transactions, cutoff, target, horizon_days)
    frame = to_frame(labelled.order_by("customer_id"))
    frame["cutoff"] = pd.Timestamp(cutoff)
    if extra_features is not None:
        frame = pd.concat([frame, extra_features(frame.drop(columns=["label"]))], axis=1)
    return frame


def feature_frame(dataset: Dataset, as_of: dt.date, config: FeatureConfig = FeatureConfig(),
                  norms: PopulationNorms | None = None) -> pd.DataFrame:
    """The feature table at ``as_of`` as pandas, one row per customer sorted by ``customer_id``,
    typed and dated (``cutoff``) like a training snapshot, without a label; ``norms`` as in
    :func:`churnml.features.build.build_features`."""
    return dated_features(to_frame(build_features(dataset, as_of, config, norms)), as_of)


def population_features(dataset: Dataset, as_of: dt.date,
                        config: FeatureConfig = FeatureConfig()) -> tuple[pd.DataFrame, PopulationNorms]:
    """The whole feature table at ``as_of`` (:func:`feature_frame`) and the population's norms
    (:func:`churnml.features.build.population_norms`) that reproduce its rows one customer at a time.

    Where the engine's windows compute quantiles (DuckDB, Spark) the table is the windows' and
    the norms are read from it. Elsewhere (PostgreSQL) the customers' own columns are computed
    once into a temporary table of the connection, the norms are aggregates over it and the
    table is built on it with them: a sum of floats in two queries could be added in two orders
    and differ in its last bit, and the customer whose LTV is the median would then fall on
    either side of it. The peers' mean of interactions is the engine's aggregate (equal to a
    window's to the rounding of its sum).
    """
    if windows_have_quantiles(dataset):
        features = feature_frame(dataset, as_of, config)
        return features, population_norms(dataset, as_of, config, features)
    con = dataset.con
    name = f"churnml_own_{uuid.uuid4().hex}"
    own = con.create_table(name, own_features(dataset, as_of, config), temp=True)
    try:
        norms = population_norms(dataset, as_of, config, own=own)
        frame = dated_features(to_frame(build_features(dataset, as_of, config, norms, own=own)), as_of)
    finally:
        con.drop_table(name, force=True)
    return frame, norms


def dated_features(frame: pd.DataFrame, as_of: dt.date) -> pd.DataFrame:
    """Feature rows already typed by the engine, dated (``cutoff``) as in :func:`snapshot` and
    sorted by ``customer_id``: what :func:`feature_frame` gives, for rows computed elsewhere (a
    Spark partition)."""
    # As in snapshot, so that every column has the type the models were trained on.
    frame["cutoff"] = pd.Timestamp(as_of)
    if not frame["customer_id"].is_monotonic_increasing:
        frame = frame.sort_values("customer_id", kind="stable", ignore_index=True)
    return frame.reset_index(drop=True)


def snapshot_table(
    dataset: Dataset,
    cutoffs: Iterable[dt.date],
    target: str,
    horizon_days: int,
    config: FeatureConfig = FeatureConfig(),
    extra_features: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Snapshots at each cutoff stacked into one frame (one row per customer and cutoff)."""
    from tqdm.auto import tqdm

    cutoffs = list(cutoffs)
    frames = [
        snapshot(dataset, c, target, horizon_days, config, extra_features)
        for c in tqdm(cutoffs, desc="snapshots", unit="cutoff", disable=not progress)
    ]
    return pd.concat(frames, ignore_index=True)
