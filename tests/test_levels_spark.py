"""The membership levels on Spark (``applyInPandas`` over buckets of customers) are DuckDB's:
the same history rows and the same features, on a small demo shop and the hand-made edge cases."""

from __future__ import annotations

import pandas as pd
import pytest

from churnml.features.build import to_frame
from churnml.features.levels import LevelConfig, LevelRule, level_feature_table
from churnml.io.load import TableSource, connect, load_dataset
from churnml.loyalty.levels import level_history
from test_levels import LINES

pytestmark = [pytest.mark.spark, pytest.mark.slow]

AS_OF = ("2023-09-30", "2024-12-30")
# Short periods, so that two years of the shop go through every rule.
FAST = LevelConfig(enabled=True, rules={"silver": LevelRule(150.0, 1), "gold": LevelRule(400.0, 4, 5, 30)},
                   qualifying_days=120, validity_days=120, notice_days=30, points_validity_days=90)


@pytest.fixture(scope="module")
def lines() -> pd.DataFrame:
    from churnml.simulate import simulate_shop

    shop = simulate_shop(n_customers=400, start="2023-01-01", end="2024-12-31", seed=5)["transactions"]
    return pd.concat([shop, LINES.assign(quantity=1, category="toys", channel="web")], ignore_index=True)


def on(con, lines: pd.DataFrame):
    return load_dataset(TableSource(frame=lines, label="transactions"), con=con).transactions


def sorted_frame(table) -> pd.DataFrame:
    frame = to_frame(table)
    keys = ["customer_id", "valid_from"] if "valid_from" in frame else ["customer_id"]
    return frame.sort_values(keys, ignore_index=True)


@pytest.mark.parametrize("as_of", AS_OF)
def test_spark_computes_the_history_duckdb_computes(spark, lines, as_of):
    expected = sorted_frame(level_history(on(connect("duckdb"), lines), as_of, FAST))
    got = sorted_frame(level_history(on(spark, lines), as_of, FAST))
    assert set(expected["reason"]) == {"first order", "upgrade", "renewal", "extension", "downgrade"}
    pd.testing.assert_frame_equal(got, expected)


@pytest.mark.parametrize("as_of", AS_OF)
def test_spark_computes_the_level_features_duckdb_computes(spark, lines, as_of):
    expected = sorted_frame(level_feature_table(on(connect("duckdb"), lines), as_of, FAST))
    got = sorted_frame(level_feature_table(on(spark, lines), as_of, FAST))
    assert expected["downgrade_at_risk"].any() and expected["membership_level"].nunique() == 3
    pd.testing.assert_frame_equal(got, expected)
