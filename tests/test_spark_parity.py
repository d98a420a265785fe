"""The same features on Spark as on DuckDB: the demo shop at two cutoffs, and the loader's checks.

One local Spark session serves the whole module. Without pyspark these tests fail rather than
skip: running the features on Spark is part of what churnml promises.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnml.features import build_features
from churnml.io import Dataset, TableSource, connect, load_dataset
from churnml.schema import DataValidationError

pytestmark = [pytest.mark.spark, pytest.mark.slow]

TABLES = ("transactions", "interactions", "customers")
CUTOFFS = ("2024-03-31", "2024-12-30")
RELATIVE_TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def spark():
    """An Ibis connection to a local Spark session, stopped when the module is done."""
    from churnml.spark import connect_spark, stop_spark

    con = connect_spark()
    yield con
    stop_spark(con)


@pytest.fixture(scope="module")
def shop_directory(tmp_path_factory) -> Path:
    """The demo shop written as Parquet files."""
    from churnml.simulate import simulate_shop, write_shop

    directory = tmp_path_factory.mktemp("shop")
    write_shop(simulate_shop(n_customers=2000, start="2023-01-01", end="2024-12-31", seed=3), directory)
    return directory


def load_shop(directory: Path, con, materialize: bool = False) -> Dataset:
    sources = [TableSource(path=str(directory / f"{name}.parquet")) for name in TABLES]
    return load_dataset(*sources, con=con, materialize=materialize)


@pytest.fixture(scope="module")
def duckdb_shop(shop_directory) -> Dataset:
    return load_shop(shop_directory, connect("duckdb"))


@pytest.fixture(scope="module")
def spark_shop(shop_directory, spark) -> Dataset:
    return load_shop(shop_directory, spark)


def assert_same_features(expected: pd.DataFrame, actual: pd.DataFrame) -> None:
    """Same columns and rows in the same order; numbers within a relative 1e-9; other values equal."""
    assert list(actual.columns) == list(expected.columns)
    assert actual["customer_id"].tolist() == expected["customer_id"].tolist()
    for column in expected.columns:
        want, got = expected[column], actual[column]
        assert got.dtype == want.dtype, f"{column}: {got.dtype} != {want.dtype}"
        if pd.api.types.is_numeric_dtype(want) and not pd.api.types.is_bool_dtype(want):
            np.testing.assert_allclose(
                got.to_numpy(dtype="float64", na_value=np.nan),
                want.to_numpy(dtype="float64", na_value=np.nan),
                rtol=RELATIVE_TOLERANCE, atol=0, equal_nan=True, err_msg=column,
            )
        else:
            differs = ~((got == want) | (got.isna() & want.isna())).to_numpy(dtype=bool)
            examples = f"{want[differs].head(3).tolist()} vs {got[differs].head(3).tolist()}"
            assert not differs.any(), f"{column}: {differs.sum()} rows differ, e.g. {examples}"


def test_a_local_master_unless_spark_submit_or_the_environment_chose_one():
    from churnml.spark import configured_master

    assert configured_master({}, environ={}) == "local[2]"
    assert configured_master({"master": None}, environ={}) == "local[2]"
    assert configured_master({}, environ={"PYSPARK_GATEWAY_PORT": "41235"}) is None
    assert configured_master({}, environ={"PYSPARK_SUBMIT_ARGS": "--master yarn pyspark-shell"}) is None
    assert configured_master({"master": "spark://head:7077"}, environ={"PYSPARK_GATEWAY_PORT": "41235"}) == "spark://head:7077"


def test_local_sessions_are_small_and_callers_settings_win():
    from churnml.spark import spark_settings

    local = spark_settings({}, local=True)
    assert local["spark.sql.session.timeZone"] == "UTC"
    assert (local["spark.sql.shuffle.partitions"], local["spark.ui.enabled"]) == ("4", "false")
    cluster = spark_settings({"conf": {"spark.driver.memory": "8g"}, "shuffle_partitions": None}, local=False)
    assert cluster["spark.driver.memory"] == "8g"
    assert "spark.sql.shuffle.partitions" not in cluster and "spark.ui.enabled" not in cluster
    both = spark_settings({"shuffle_partitions": 16, "spark.sql.shuffle.partitions": 32}, local=True)
    assert both["spark.sql.shuffle.partitions"] == "32"


def test_the_session_is_local_and_compares_in_utc(spark):
    from churnml.spark import existing_session

    session = existing_session()
    assert session.sparkContext.master == "local[2]"
    assert session.conf.get("spark.sql.session.timeZone") == "UTC"
    assert session.conf.get("spark.sql.shuffle.partitions") == "4"


def test_loaded_tables_agree(duckdb_shop, spark_shop):
    for name in TABLES:
        assert spark_shop.reports[name].rows_kept == duckdb_shop.reports[name].rows_kept
        assert getattr(spark_shop, name).columns == getattr(duckdb_shop, name).columns
    assert (spark_shop.first_date, spark_shop.last_date) == (duckdb_shop.first_date, duckdb_shop.last_date)


@pytest.mark.parametrize("cutoff", CUTOFFS)
def test_spark_builds_the_same_features_as_duckdb(duckdb_shop, spark_shop, cutoff):
    on_duckdb = build_features(duckdb_shop, cutoff)
    on_spark = build_features(spark_shop, cutoff)
    assert on_spark.schema() == on_duckdb.schema()
    expected = on_duckdb.to_pandas()
    assert len(expected) > 1000
    assert {"core", "dormant"} <= set(expected["tier"]), "the demo shop should reach several tiers"
    assert expected["value_segment"].nunique() == 4
    assert_same_features(expected, on_spark.to_pandas())


def test_materialized_tables_give_the_same_features(shop_directory, duckdb_shop, spark):
    cutoff = CUTOFFS[-1]
    materialized = load_shop(shop_directory, spark, materialize=True)
    assert all(getattr(materialized, name).get_backend() is spark for name in TABLES)
    assert_same_features(build_features(duckdb_shop, cutoff).to_pandas(), build_features(materialized, cutoff).to_pandas())


def test_fractions_of_a_second_count_on_both_engines(spark):
    transactions = pd.DataFrame({
        "customer_id": ["A", "A", "A"],
        "ts": pd.to_datetime(["2024-05-01 10:00:00.250", "2024-05-31 10:00:00.750", "2024-06-10 09:59:59.999"]),
        "amount": [10.0, 20.0, 30.0],
    })
    source = TableSource(frame=transactions, label="transactions")
    on_duckdb = build_features(load_dataset(source, con=connect("duckdb")), "2024-06-30").to_pandas()
    spark_dataset = load_dataset(source, con=spark)
    assert spark_dataset.transactions.get_backend() is spark, "an in-memory frame must be computed by Spark"
    on_spark = build_features(spark_dataset, "2024-06-30").to_pandas()
    assert_same_features(on_duckdb, on_spark)
    day = 86_400.0
    assert on_spark.loc[0, "mean_gap_days"] == pytest.approx((40 - 0.251 / day) / 2, rel=1e-12)
    assert on_spark.loc[0, "last_gap_days"] == pytest.approx(10 - 0.751 / day, rel=1e-12)


def test_bad_amounts_in_a_csv_are_counted_on_spark(tmp_path, spark):
    path = tmp_path / "tx.csv"
    path.write_text("customer_id,ts,amount\nA,2024-01-01,10\nA,2024-01-02,n/a\nB,2024-01-03,7.5\nB,2024-01-04,ten\n")
    with pytest.raises(DataValidationError) as err:
        load_dataset(TableSource(path=str(path)), con=spark)
    message = str(err.value)
    assert "column 'amount': is not a number (2 of 4 rows)" in message
    assert "row 2: 'n/a'" in message and "row 4: 'ten'" in message


def test_aware_parquet_timestamps_are_recognised_on_spark(tmp_path, spark):
    aware = tmp_path / "aware.parquet"
    naive = tmp_path / "naive.parquet"
    instants = pd.to_datetime(["2024-01-01 10:00:00+02:00", "2024-01-02 23:30:00-05:00"], format="ISO8601", utc=True)
    pd.DataFrame({"customer_id": ["A", "A"], "ts": instants, "amount": [1.0, 2.0]}).to_parquet(aware)
    pd.DataFrame({"customer_id": ["A"], "ts": pd.to_datetime(["2024-01-01"]), "kind": ["login"]}).to_parquet(naive)
    with pytest.raises(DataValidationError, match="mix time-zone-aware and naive timestamps"):
        load_dataset(TableSource(path=str(aware)), TableSource(path=str(naive)), con=spark)
    loaded = load_dataset(TableSource(path=str(aware)), con=spark)
    times = sorted(loaded.transactions.to_pandas()["ts"])
    assert times == [pd.Timestamp("2024-01-01 08:00:00"), pd.Timestamp("2024-01-03 04:30:00")]
    assert loaded.last_date == dt.date(2024, 1, 3)
