"""The loyalty KPIs on Spark are DuckDB's: every table of the program, levels included, on a small
demo shop with interactions."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from churnml.features.build import FeatureConfig
from churnml.features.levels import LevelConfig
from churnml.io.load import TableSource, connect, load_dataset
from churnml.loyalty import kpis

pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.fixture(scope="module")
def shop() -> dict[str, pd.DataFrame]:
    from churnml.simulate import simulate_shop

    return simulate_shop(n_customers=300, start="2023-01-01", end="2024-12-31", seed=5)


def program_on(con, shop: dict[str, pd.DataFrame]) -> kpis.ProgramKpis:
    dataset = load_dataset(TableSource(frame=shop["transactions"], label="transactions"),
                           interactions=TableSource(frame=shop["interactions"], label="interactions"), con=con)
    return kpis.program_kpis(dataset, dt.date(2024, 12, 31), kpis.KpiConfig(),
                             FeatureConfig(levels=LevelConfig(enabled=True)))


def test_spark_computes_the_programs_tables_duckdb_computes(spark, shop):
    expected, got = program_on(connect("duckdb"), shop).tables(), program_on(spark, shop).tables()
    assert expected.keys() == got.keys() and {"migration_level", "interests"} <= expected.keys()
    assert (expected["monthly"]["churned"] > 0).any() and (expected["monthly"]["repurchasers"] > 0).any()
    for name, frame in expected.items():
        keys = [c for c in frame.columns if frame[c].dtype == object or c in ("month", "cohort", "months_since", "rank")]
        pd.testing.assert_frame_equal(got[name].sort_values(keys, ignore_index=True),
                                      frame.sort_values(keys, ignore_index=True),
                                      check_dtype=False, rtol=1e-9, obj=name)
