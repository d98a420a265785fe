"""Migration between tiers and levels, and interest tags, counted by hand."""

from __future__ import annotations

import datetime as dt

import ibis
import pandas as pd
import pytest

from churnml.loyalty import migration
from conftest import frame_dataset


def table(**states) -> ibis.Table:
    return ibis.memtable(pd.DataFrame({"customer_id": list(states), "tier": list(states.values())}))


def run(expr) -> pd.DataFrame:
    return expr.to_pyarrow().to_pandas()


def test_transition_counts_and_row_shares():
    before = table(A="core", B="basic", C="basic", E="dormant")
    after = table(A="potential", B="basic", C="core", E="dormant", D="basic")
    long = run(migration.transition_matrix(before, after, "tier"))
    cells = {(r.from_state, r.to_state): (r.customers, r.from_customers, r.share) for r in long.itertuples()}
    assert cells == {("core", "potential"): (1, 1, 1.0), ("basic", "basic"): (1, 2, 0.5),
                     ("basic", "core"): (1, 2, 0.5), ("dormant", "dormant"): (1, 1, 1.0),
                     ("new", "basic"): (1, 1, 1.0)}
    matrix = migration.matrix_frame(long, "customers", known=("core", "potential", "basic", "dormant"))
    assert list(matrix.index) == ["new", "core", "basic", "dormant"]
    assert list(matrix.columns) == ["core", "potential", "basic", "dormant"]
    assert matrix.loc["basic"].tolist() == [1, 0, 1, 0]
    shares = migration.matrix_frame(long, "share", known=("core", "potential", "basic", "dormant"))
    assert shares.sum(axis=1).tolist() == pytest.approx([1.0] * 4)


def test_a_customer_without_a_state_on_the_second_day_goes_to_none():
    before = table(A="gold", B="silver")
    after = pd.DataFrame({"customer_id": ["A", "B"], "tier": ["gold", None]})
    long = run(migration.transition_matrix(before, ibis.memtable(after), "tier"))
    assert set(zip(long.from_state, long.to_state, long.customers)) == {("gold", "gold", 1), ("silver", "none", 1)}
    long = run(migration.transition_matrix(before, table(A="gold"), "tier"))
    assert ("silver", "none", 1) in set(zip(long.from_state, long.to_state, long.customers))


def test_interest_tags_are_the_top_categories_by_net_spend_share():
    rows = [("X", "2024-06-01", 60.0, "books"), ("X", "2024-06-02", 30.0, "toys"), ("X", "2024-06-03", -10.0, "toys"),
            ("X", "2024-06-04", 10.0, "music"), ("X", "2023-01-01", 500.0, "garden"),  # before the window
            ("X", "2024-07-02", 500.0, "garden"),  # after as_of
            ("Y", "2024-05-01", 50.0, "toys"), ("Y", "2024-05-02", 50.0, "books"),
            ("Z", "2024-05-01", 40.0, "toys"), ("Z", "2024-05-03", -40.0, "toys")]
    frame = pd.DataFrame(rows, columns=["customer_id", "ts", "amount", "category"])
    frame["ts"] = pd.to_datetime(frame["ts"])
    dataset = frame_dataset(frame)
    tags = run(migration.interest_tags(dataset.transactions, dt.date(2024, 6, 30), window_days=365, top=2,
                                       min_share=0.2))
    tags = tags.sort_values(["customer_id", "rank"]).reset_index(drop=True)
    # X: books 60, toys 30 - 10, music 10 of 90; music is below 20 %. Y: a tie goes to books.
    # Z returned everything it bought: no interest.
    assert list(zip(tags.customer_id, tags["rank"], tags.category)) == [
        ("X", 1, "books"), ("X", 2, "toys"), ("Y", 1, "books"), ("Y", 2, "toys")]
    assert tags["share"].tolist() == pytest.approx([60 / 90, 20 / 90, 0.5, 0.5])
    assert tags["spend"].tolist() == pytest.approx([60.0, 20.0, 50.0, 50.0])
    summary = migration.tag_summary(tags)
    assert summary.loc["books"].tolist() == [2, 2] and summary.loc["toys"].tolist() == [2, 0]


def test_a_share_of_exactly_the_minimum_is_tagged_whatever_the_floats_say():
    # 0.3 of 1.5 is 0.19999999999999998 in floats: still a fifth of the spend.
    frame = pd.DataFrame({"customer_id": ["W", "W"], "ts": pd.to_datetime(["2024-05-01", "2024-05-02"]),
                          "amount": [0.3, 1.2], "category": ["home", "toys"]})
    assert 0.3 / (0.3 + 1.2) < 0.2
    tags = run(migration.interest_tags(frame_dataset(frame).transactions, dt.date(2024, 6, 30), min_share=0.2))
    assert sorted(tags.category) == ["home", "toys"]


def test_no_category_no_interest_tags():
    frame = pd.DataFrame({"customer_id": ["A"], "ts": pd.to_datetime(["2024-01-01"]), "amount": [1.0]})
    assert migration.interest_tags(frame_dataset(frame).transactions, dt.date(2024, 1, 1)) is None
