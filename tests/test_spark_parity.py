"""The same features and scores on Spark as on DuckDB: the demo shop at two cutoffs, the loader's
checks, and the scoring stage run on both engines with the same models.

One local Spark session serves the whole module. Without pyspark these tests fail rather than
skip: running the features and the scoring on Spark is part of what churnml promises.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from churnml.features.build import build_features
from churnml.io.contract import DataValidationError
from churnml.io.load import Dataset, LoadOptions, TableSource, connect, load_dataset
from churnml.jobs.features import run as run_features
from churnml.jobs.score import run as run_score
from churnml.simulate import write_shop
from test_config import compose_resolved
from test_scoring import small_models_on_files, with_edge_customers
from test_stage_score import save_exported

pytestmark = [pytest.mark.spark, pytest.mark.slow]

TABLES = ("transactions", "interactions", "customers", "surveys")
CUTOFFS = ("2024-03-31", "2024-12-30")
RELATIVE_TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def shop_directory(tmp_path_factory) -> Path:
    """The demo shop written as Parquet files."""
    from churnml.simulate import simulate_shop

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
    from churnml.io.spark import configured_master

    assert configured_master({}, environ={}) == "local[2]"
    assert configured_master({"master": None}, environ={}) == "local[2]"
    assert configured_master({}, environ={"PYSPARK_GATEWAY_PORT": "41235"}) is None
    assert configured_master({}, environ={"PYSPARK_SUBMIT_ARGS": "--master yarn pyspark-shell"}) is None
    assert configured_master({"master": "spark://head:7077"}, environ={"PYSPARK_GATEWAY_PORT": "41235"}) == "spark://head:7077"


def test_local_sessions_are_small_and_callers_settings_win():
    from churnml.io.spark import spark_settings

    local = spark_settings({}, local=True)
    assert local["spark.sql.session.timeZone"] == "UTC"
    assert (local["spark.sql.shuffle.partitions"], local["spark.ui.enabled"]) == ("4", "false")
    cluster = spark_settings({"conf": {"spark.driver.memory": "8g"}, "shuffle_partitions": None}, local=False)
    assert cluster["spark.driver.memory"] == "8g"
    assert "spark.sql.shuffle.partitions" not in cluster and "spark.ui.enabled" not in cluster
    both = spark_settings({"shuffle_partitions": 16, "spark.sql.shuffle.partitions": 32}, local=True)
    assert both["spark.sql.shuffle.partitions"] == "32"


def test_the_session_is_local_and_compares_in_utc(spark):
    from churnml.io.spark import existing_session

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
    assert expected["last_nps"].notna().sum() > 200 and expected["nps_detractor"].any(), "survey features need answers"
    assert_same_features(expected, on_spark.to_pandas())


def test_materialized_tables_give_the_same_features(shop_directory, duckdb_shop, spark):
    cutoff = CUTOFFS[-1]
    materialized = load_shop(shop_directory, spark, materialize=True)
    assert all(getattr(materialized, name).get_backend() is spark for name in TABLES)
    assert_same_features(build_features(duckdb_shop, cutoff).to_pandas(), build_features(materialized, cutoff).to_pandas())


def test_the_features_stage_on_spark_writes_a_directory_atomically(shop_directory, duckdb_shop, spark, tmp_path):
    cutoff = CUTOFFS[-1]
    output = tmp_path / "features" / f"cutoff={cutoff}"
    files = [f"data.{name}.path={shop_directory / f'{name}.parquet'}" for name in TABLES]
    # A URI, as for hdfs://: the write goes through Hadoop's FileSystem, not local paths.
    settings = compose_resolved("features", ["engine=spark", "data=files", *files, f"as_of={cutoff}",
                                             f"features.output='file://{output}'"])
    for _ in range(2):  # a rerun replaces the directory
        written = run_features(settings)
        assert written.startswith("file:") and written.endswith(str(output)) and output.is_dir()
        assert sorted(p.name for p in output.parent.iterdir()) == [output.name]
        frame = pd.read_parquet(output).sort_values("customer_id", ignore_index=True)
        expected = build_features(duckdb_shop, cutoff).to_pandas()
        assert_same_features(expected.drop(columns="cutoff"), frame.drop(columns="cutoff"))


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
    path.write_text("customer_id,ts,amount\nA,2024-01-01,10\nA,2024-01-02,\"12,5\"\nB,2024-01-03,7.5\nB,2024-01-04,ten\n"
                    "B,2024-01-05,inf\nB,2024-01-06,NA\n")
    with pytest.raises(DataValidationError) as err:
        load_dataset(TableSource(path=str(path)), con=spark)
    message = str(err.value)
    assert "column 'amount': is not a number (2 of 6 rows)" in message
    assert "row 2: '12,5'" in message and "row 4: 'ten'" in message
    assert "column 'amount': is not a finite number (1 of 6 rows); e.g. row 5: 'inf'" in message
    assert "column 'amount': is empty or marked missing (NA, NULL ...) (1 of 6 rows); e.g. row 6: 'NA'" in message


def test_survey_scores_by_month_are_the_same_on_spark(duckdb_shop, spark_shop):
    from churnml.loyalty.surveys import survey_scores

    def by_month(dataset: Dataset) -> pd.DataFrame:
        surveys = dataset.surveys
        table = survey_scores(surveys.mutate(month=surveys.ts.truncate("M")), ["month"]).order_by("month")
        return table.to_pandas()

    expected = by_month(duckdb_shop)
    assert len(expected) == 24 and expected["n_nps"].sum() > 1000
    actual = by_month(spark_shop)
    assert actual["month"].tolist() == expected["month"].tolist()
    for column in ("nps", "n_nps", "csat", "n_csat", "ces", "n_ces"):
        np.testing.assert_allclose(actual[column].to_numpy(dtype=float), expected[column].to_numpy(dtype=float),
                                   rtol=RELATIVE_TOLERANCE, equal_nan=True, err_msg=column)


def test_bad_survey_answers_are_counted_on_spark(tmp_path, spark):
    tx = tmp_path / "tx.csv"
    tx.write_text("customer_id,ts,amount\nA,2024-01-01,10\n")
    path = tmp_path / "surveys.csv"
    path.write_text("customer_id,ts,kind,score\nA,2024-01-01,nps,9\nA,2024-01-02,NPS,11\nA,2024-01-03,csat,4.5\n"
                    "A,2024-01-04,survey,3\nA,2024-01-05,Ces ,7\nA,2024-01-06,nps,1e300\n")
    with pytest.raises(DataValidationError) as err:
        load_dataset(TableSource(path=str(tx)), surveys=TableSource(path=str(path)), con=spark)
    message = str(err.value)
    assert "column 'kind': is not one of nps, csat, ces (compared without case) (1 of 6 rows); e.g. row 4: 'survey'" in message
    assert ("column 'score': is off the answer scale of its kind (whole numbers: nps 0-10, csat 1-5, ces 1-7) "
            "(3 of 6 rows); e.g. row 2: '11' ('NPS'), row 3: '4.5' ('csat'), row 6: '1e300' ('nps')") in message


def test_inputs_of_real_extracts_give_the_same_features_on_spark(tmp_path, spark):
    # Lines without order id (each its own order), an order cancelled in full, a missing-value
    # marker as customer id (dropped as guest rows), quantities marked missing.
    path = tmp_path / "tx.csv"
    path.write_text(
        "customer_id,ts,amount,order_id,quantity\n"
        "S1,2024-01-15 11:00:00,50,W-1001,1\nS1,2024-03-10 16:30:00,20,,NA\nS1,2024-05-28 12:05:00,35,,2\n"
        "S2,2024-02-01 09:00:00,15,,1\nS2,2024-06-25 09:00:00,15,,1\nS2,2024-06-26 09:00:00,-15,,-1\n"
        "X1,2024-01-18 10:01:00,77183.60,541001,74215\nX1,2024-01-18 10:17:00,-77183.60,C541003,-74215\n"
        "NA,2024-03-01 10:00:00,99999,G1,1\n"
    )
    options = LoadOptions(drop_missing_customer_id=True)
    on_duckdb = build_features(load_dataset(TableSource(path=str(path)), options=options, con=connect("duckdb")), "2024-06-30")
    on_spark = build_features(load_dataset(TableSource(path=str(path)), options=options, con=spark), "2024-06-30")
    assert on_spark.schema() == on_duckdb.schema()
    expected = on_duckdb.to_pandas()
    assert_same_features(expected, on_spark.to_pandas())
    rows = expected.set_index("customer_id")
    assert rows["frequency"].to_dict() == {"S1": 3, "S2": 2, "X1": 1}
    assert (rows.loc["S2", "recency_days"], rows.loc["X1", "ltv"]) == (5, 0)


def test_repeated_column_names_are_refused_on_spark(tmp_path, spark):
    path = tmp_path / "tx.csv"
    path.write_text("customer_id,ts,amount,amount\nA,2024-01-01,1,2\n")
    with pytest.raises(DataValidationError, match=r"column 'amount': is the name of 2 columns"):
        load_dataset(TableSource(path=str(path)), con=spark)


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


# --- scoring ---------------------------------------------------------------------------------------

SCORE_EXPERIMENT = "churnml-spark-score-test"


def latest_scoring_run(tracking_uri: str) -> pd.Series:
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=[SCORE_EXPERIMENT], filter_string="tags.`churnml.stage` = 'score'",
                              order_by=["attributes.start_time DESC"])
    return runs.iloc[0]


@pytest.fixture(scope="module")
def scored(spark, small_shop, tmp_path_factory) -> dict:
    """The small shop (plus a single-purchase and a refund-only customer) scored by the stage on
    DuckDB and on Spark with the same exported models: boosted from BG/NBD, with BG/NBD features
    and drift profiles, so every population-wide step is exercised."""
    root = tmp_path_factory.mktemp("spark_scoring")
    tables = {**small_shop, "transactions": with_edge_customers(small_shop["transactions"])}
    paths, models = small_models_on_files(tables, root / "data")
    for target, model in models.items():
        save_exported(model, root / "models", f"churnml-{target}", "5")
    tracking_uri = f"sqlite:///{root}/mlflow.db"
    common = ["data=files", *(f"data.{name}.path={path}" for name, path in paths.items()),
              f"mlflow.tracking_uri={tracking_uri}", f"mlflow.artifact_root={root}/artifacts",
              f"mlflow.experiment={SCORE_EXPERIMENT}", f"score.model_dir={root}/models"]
    on_duckdb = run_score(compose_resolved("score", [*common, f"score.output={root}/duckdb/scores.parquet"]))
    duckdb_run = latest_scoring_run(tracking_uri)
    with pytest.MonkeyPatch.context() as patch:
        # The default output, scores/as_of=..., is relative to the working directory.
        patch.chdir(root)
        on_spark = run_score(compose_resolved("score", [*common, "engine=spark"]))
    spark_run = latest_scoring_run(tracking_uri)
    assert spark_run["run_id"] != duckdb_run["run_id"]
    return {"root": root, "duckdb": on_duckdb, "spark": on_spark, "duckdb_run": duckdb_run, "spark_run": spark_run}


def test_spark_scores_every_customer_as_duckdb_does(scored):
    expected = pd.read_parquet(scored["duckdb"])
    actual = pd.read_parquet(scored["root"] / scored["spark"])
    assert len(expected) > 1000
    assert {"high", "low"} <= set(expected["risk_band"]) and expected["value_segment"].nunique() == 4
    assert expected["recommended_action"].nunique() >= 4
    # Low-risk customers' reasons are what keeps them: the population's norms decide them too.
    assert (expected.loc[expected["risk_band"] == "low", "reason_1_contribution"] < 0).any()
    # Part files are written in customer order.
    assert actual["customer_id"].is_monotonic_increasing
    # LTV is rounded to cents: a last-bit difference between the engines' sums may move it by one.
    np.testing.assert_allclose(actual.pop("ltv"), expected.pop("ltv"), rtol=0, atol=0.01 + 1e-9, equal_nan=True)
    # Probabilities and contributions within a relative 1e-9; bands, reasons, tiers, segments and
    # actions identical.
    assert_same_features(expected, actual)


def test_spark_summary_and_drift_are_tracked_as_on_duckdb(scored):
    duckdb_run, spark_run = scored["duckdb_run"], scored["spark_run"]
    summaries = [mlflow.artifacts.load_dict(f"runs:/{run['run_id']}/scoring/summary.json") for run in (duckdb_run, spark_run)]
    expected, actual = summaries
    for mean in ("mean_churn_probability", "mean_repurchase_probability"):
        assert actual.pop(mean) == pytest.approx(expected.pop(mean), rel=1e-12)
    assert actual == expected
    psi = sorted(c for c in duckdb_run.index if c.startswith("metrics.psi.") and pd.notna(duckdb_run[c]))
    assert "metrics.psi.churn.model_score" in psi and "metrics.psi.repurchase.bgnbd_p_alive" in psi
    for column in psi:
        assert spark_run[column] == pytest.approx(duckdb_run[column], rel=1e-9, abs=1e-12), column
    assert spark_run["tags.churnml.drifted_features"] == duckdb_run["tags.churnml.drifted_features"]
    assert spark_run["metrics.rows"] == duckdb_run["metrics.rows"]


def test_spark_writes_a_partition_of_the_scores_dataset(scored, spark):
    from churnml.io.spark import existing_session

    as_of = pd.read_parquet(scored["duckdb"], columns=["as_of"])["as_of"].iloc[0]
    assert scored["spark"] == Path(f"scores/as_of={as_of}")
    scores_root = scored["root"] / "scores"
    # Nothing beside the partition: the temporary directory was renamed into place.
    assert [p.name for p in scores_root.iterdir()] == [f"as_of={as_of}"]
    assert any(p.name.startswith("part-") for p in (scores_root / f"as_of={as_of}").iterdir())
    assert scored["spark_run"]["tags.churnml.output"] == f"scores/as_of={as_of}"
    dataset = existing_session().read.parquet(str(scores_root))
    by_date = dataset.groupBy("as_of").count().collect()
    assert [(str(row["as_of"]), row["count"]) for row in by_date] == [(str(as_of), scored["spark_run"]["metrics.rows"])]


def test_a_rerun_replaces_the_directory_and_a_failed_one_leaves_it_untouched(spark, tmp_path):
    from pyspark.sql import functions as F

    from churnml.io.spark import existing_session, write_atomic

    session = existing_session()
    target = tmp_path / "scores" / "as_of=2024-06-30"
    write_atomic(session.range(10), str(target))
    written = write_atomic(session.range(3), str(target))
    assert written == f"file:{target}"
    assert sorted(pd.read_parquet(target)["id"]) == [0, 1, 2]

    failing = session.range(100).select(F.when(F.col("id") < 50, F.col("id")).otherwise(F.raise_error("boom")).alias("id"))
    with pytest.raises(Exception, match="boom"):
        write_atomic(failing, str(target))
    assert sorted(pd.read_parquet(target)["id"]) == [0, 1, 2]
    assert os.listdir(target.parent) == [target.name]

    fresh = tmp_path / "fresh" / "as_of=2024-06-30"
    with pytest.raises(Exception, match="boom"):
        write_atomic(failing, str(fresh))
    assert not fresh.exists()
    assert not fresh.parent.exists() or os.listdir(fresh.parent) == []
