"""Labels from the window (cutoff, cutoff + horizon], and the snapshot schedule."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from churnml.features.build import build_features
from churnml.features.dates import window_is_closed
from churnml.features.labels import attach_label, label_window
from churnml.features.snapshots import snapshot_table, training_cutoffs
from conftest import frame_dataset


def labels_at(dataset, cutoff, target, horizon) -> pd.Series:
    features = build_features(dataset, cutoff)
    table = attach_label(features.select("customer_id"), dataset.transactions, cutoff, target, horizon)
    return table.to_pandas().set_index("customer_id")["label"]


def test_churn_and_repurchase_by_hand(tiny_transactions):
    dataset = frame_dataset(tiny_transactions)
    # Window 2024-05-01 .. 2024-07-29: A buys on 05-01, B never again; C has no history on 04-30.
    churn = labels_at(dataset, "2024-04-30", "churn", 90)
    assert churn.to_dict() == {"A": 0, "B": 1}
    repurchase = labels_at(dataset, "2024-04-30", "repurchase", 90)
    assert repurchase.to_dict() == {"A": 1, "B": 0}


def test_window_edges(tiny_transactions):
    dataset = frame_dataset(tiny_transactions)
    # A's next purchase after 2024-05-01 is on 2024-05-31: 30 days later.
    assert labels_at(dataset, "2024-05-01", "repurchase", 30)["A"] == 1
    assert labels_at(dataset, "2024-05-01", "repurchase", 29)["A"] == 0
    # A purchase on the cutoff day belongs to the features, not the label.
    assert labels_at(dataset, "2024-05-31", "repurchase", 29)["A"] == 0


def test_a_refund_is_not_a_purchase(tiny_transactions):
    dataset = frame_dataset(tiny_transactions)
    # C's only event in (06-05, 06-15] is the refund of 06-10.
    assert labels_at(dataset, "2024-06-05", "churn", 10)["C"] == 1


def test_label_window_and_closure():
    start, end = label_window(dt.date(2024, 1, 31), 30)
    assert (start, end) == (dt.datetime(2024, 2, 1), dt.datetime(2024, 3, 2))
    assert window_is_closed(dt.date(2024, 1, 1), 30, dt.date(2024, 1, 31))
    assert not window_is_closed(dt.date(2024, 1, 2), 30, dt.date(2024, 1, 31))
    with pytest.raises(ValueError):
        label_window(dt.date(2024, 1, 1), 0)


def test_unknown_target_is_refused(tiny_transactions):
    dataset = frame_dataset(tiny_transactions)
    with pytest.raises(ValueError, match="unknown target"):
        labels_at(dataset, "2024-03-31", "upsell", 30)


def test_training_cutoffs_never_look_past_the_holdout():
    holdout, horizon = dt.date(2024, 12, 31), 90
    cutoffs = training_cutoffs(holdout, horizon, dt.date(2023, 1, 1), step_days=30, max_snapshots=12)
    assert cutoffs == sorted(cutoffs) and len(cutoffs) == 12
    assert cutoffs[-1] == holdout - dt.timedelta(days=horizon)
    assert all(c + dt.timedelta(days=horizon) <= holdout for c in cutoffs)
    assert all((b - a).days == 30 for a, b in zip(cutoffs, cutoffs[1:]))


def test_training_cutoffs_respect_history_and_shrink_the_step():
    first = dt.date(2024, 1, 1)
    cutoffs = training_cutoffs(dt.date(2024, 9, 30), 180, first, step_days=30, min_snapshots=4, min_history_days=30)
    assert len(cutoffs) == 4
    assert cutoffs[0] >= first + dt.timedelta(days=30)
    assert {(b - a).days for a, b in zip(cutoffs, cutoffs[1:])} == {(cutoffs[1] - cutoffs[0]).days}
    with pytest.raises(ValueError, match="no training snapshot fits"):
        training_cutoffs(dt.date(2024, 3, 1), 90, first)


def test_snapshot_table_stacks_features_and_labels(small_shop):
    dataset = frame_dataset(small_shop["transactions"])
    cutoffs = [dt.date(2024, 3, 31), dt.date(2024, 6, 30)]
    table = snapshot_table(dataset, cutoffs, "churn", 90, progress=False)
    assert set(table["cutoff"]) == {pd.Timestamp(c) for c in cutoffs}
    assert not table.duplicated(["customer_id", "cutoff"]).any()
    tx = small_shop["transactions"]
    for cutoff in cutoffs:
        part = table[table["cutoff"] == pd.Timestamp(cutoff)].set_index("customer_id")
        day_after = pd.Timestamp(cutoff) + pd.Timedelta(days=1)
        known = tx[(tx.ts < day_after) & (tx.amount != 0)].customer_id.unique()
        assert set(part.index) == set(known)
        window = tx[(tx.ts >= day_after) & (tx.ts < day_after + pd.Timedelta(days=90)) & (tx.amount > 0)]
        bought = set(window.customer_id)
        assert (part["label"] == (~part.index.isin(bought)).astype(int)).all()
