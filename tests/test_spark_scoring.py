"""The parts of scoring on Spark that combine pieces: drift from bin counts, the summary from
grouped counts and who gets reasons from the population's cut give what the whole table gives.
Plain pandas, no Spark session, except the last test (the stage with reasons for the riskiest
share); the stage itself is compared with DuckDB's in test_spark_parity.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnml.evaluation import drift
from churnml.evaluation.drift import bin_counts, psi_from_counts
from churnml.scoring import policy, summary, table
from churnml.scoring.spark import psi_from_bin_counts, score_schema, summary_of_groups


@pytest.fixture
def reference() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 2000
    return pd.DataFrame({
        "recency_days": rng.exponential(60, n),
        "orders_90d": rng.poisson(1.0, n).astype(float),  # mostly small counts: tied edges
        "ltv": np.where(rng.random(n) < 0.1, np.nan, rng.gamma(2.0, 300.0, n)),
        "tier": rng.choice(["core", "potential", "basic", "dormant"], n),
        "region": rng.choice([f"r{i}" for i in range(60)], n),  # more than the profile keeps: __other__
        "low_interaction": rng.random(n) < 0.3,
    })


@pytest.fixture
def current(reference) -> pd.DataFrame:
    """A drifted table: shifted numbers, exact edge values, infinities, unseen and missing categories."""
    rng = np.random.default_rng(1)
    frame = reference.sample(frac=0.8, random_state=2).reset_index(drop=True)
    frame["recency_days"] = frame["recency_days"] * 1.5
    frame.loc[:4, "recency_days"] = [np.nan, np.inf, -np.inf, 0.0, float(np.quantile(reference["recency_days"], 0.5))]
    frame["tier"] = frame["tier"].astype(object)
    frame.loc[frame.index[:50], "tier"] = "unheard_of"
    frame.loc[frame.index[50:80], "tier"] = None
    frame["low_interaction"] = frame["low_interaction"].astype(object)
    frame.loc[frame.index[:20], "low_interaction"] = None
    frame["orders_90d"] = rng.poisson(1.4, len(frame)).astype(float)
    return frame


def test_bin_counts_give_the_psi_of_the_whole_column(reference, current):
    profile = drift.profile(reference, reference.columns)
    for name, column_profile in profile["columns"].items():
        counts = bin_counts(column_profile, current[name])
        assert counts.sum() == len(current)
        assert psi_from_counts(column_profile, counts) == drift.column_psi(column_profile, current[name]), name
        values = current[name]
        if column_profile["kind"] == drift.NUMERIC:
            # Bin i holds (edges[i-1], edges[i]], the first and last bins open (infinities
            # included); the missing values come last.
            bounds = [-np.inf, *column_profile["edges"], np.inf]
            numbers = pd.to_numeric(values).to_numpy(dtype=float)
            by_hand = [int((((numbers > lo) | (lo == -np.inf) & (numbers == lo)) & (numbers <= hi)).sum())
                       for lo, hi in zip(bounds, bounds[1:])]
        else:
            text = values.astype("string")
            known = [c for c in column_profile["shares"] if c != drift.OTHER]
            by_hand = [int((text == c).sum()) for c in known] + [int((text.notna() & ~text.isin(known)).sum())]
        assert counts.tolist() == by_hand + [int(values.isna().sum())], name


def test_counts_of_pieces_add_up_to_the_psi_of_the_table(reference, current):
    score = np.random.default_rng(3).random(len(reference))
    profile = drift.profile(reference, [c for c in reference.columns if c != "region"], score=score)
    current_score = np.random.default_rng(4).random(len(current)) ** 2
    pieces = np.array_split(np.arange(len(current)), 3)
    counts: dict[str, np.ndarray] = {}
    for rows in pieces:
        piece = current.iloc[rows].assign(model_score=current_score[rows])
        for name, column_profile in [*profile["columns"].items(), (drift.SCORE, profile["score"])]:
            counts[name] = counts.get(name, 0) + bin_counts(column_profile, piece[name])
    expected = drift.psi(profile, current, score=current_score)
    pd.testing.assert_series_equal(psi_from_bin_counts(profile, counts), expected, rtol=0, atol=1e-15)
    assert drift.SCORE in expected.index and expected.gt(0.2).any()


def test_a_column_without_rows_or_counts_has_no_psi(reference):
    profile = drift.profile(reference, ["recency_days", "tier"])
    assert np.isnan(psi_from_counts(profile["columns"]["tier"], bin_counts(profile["columns"]["tier"], [])))
    psi = psi_from_bin_counts(profile, {"recency_days": bin_counts(profile["columns"]["recency_days"], [1.0, 2.0])})
    assert list(psi.index) == ["recency_days", "tier"] and np.isnan(psi["tier"]) and psi["recency_days"] > 0


def test_summary_of_grouped_counts_is_the_summary_of_the_rows():
    rng = np.random.default_rng(5)
    n = 5000
    scores = pd.DataFrame({
        "risk_band": rng.choice(policy.RISK_BANDS[:2], n),  # no "low" at all: counted as 0
        "recommended_action": rng.choice(["nurture email", "win-back offer", "loyalty reward", "upgrade offer"], n),
        # Ties in the counts are ordered by name, and a missing first reason is not counted.
        "reason_1_feature": rng.choice(["a", "b", "c", "d", "e", "f", "g", None], n),
        "churn_probability": rng.random(n),
        "repurchase_probability": rng.random(n),
    })
    groups = scores.groupby(["risk_band", "recommended_action", "reason_1_feature"], dropna=False).agg(
        rows=("churn_probability", "size"), churn_probability_sum=("churn_probability", "sum"),
        repurchase_probability_sum=("repurchase_probability", "sum")).reset_index()
    expected = summary.summarize(scores)
    actual = summary_of_groups(groups)
    for mean in ("mean_churn_probability", "mean_repurchase_probability"):
        assert actual.pop(mean) == pytest.approx(expected.pop(mean), rel=1e-12)
    assert actual == expected
    assert list(actual["actions"]) == list(expected["actions"]) and list(actual["top_reasons"]) == list(expected["top_reasons"])
    assert summary_of_groups(groups.iloc[:0])["rows"] == 0


def test_the_spark_schema_lists_the_score_columns_in_order():
    columns = [part.split("` ")[0].strip(" `") for part in score_schema(2).split(", ")]
    assert columns == table.score_columns(2)
    assert "`as_of` date" in score_schema(2) and "`reason_2_contribution` double" in score_schema(2)


def test_the_populations_cut_gives_each_piece_the_rows_the_whole_table_gives():
    rng = np.random.default_rng(6)
    n = 1000
    # Few distinct probabilities: ties straddle the cut and the pieces' edges.
    probability = rng.choice([0.1, 0.35, 0.5, 0.62, 0.8], n, p=[0.4, 0.2, 0.2, 0.1, 0.1])
    ids = np.array([f"C{i:05d}" for i in range(n)], dtype=object)
    for fraction in (0.05, 0.15, 0.2, 0.33, 1.0):
        config = policy.ScoringConfig(reasons_for="top_fraction", reasons_top_fraction=fraction)
        whole = policy.rows_with_reasons(config, probability)
        assert len(whole) == policy.top_count(n, fraction)
        cut = policy.reason_cut(probability, ids, fraction)
        chosen = []
        for rows in np.array_split(np.arange(n), 7):
            chosen.extend(rows[policy.rows_with_reasons(config, probability[rows], ids[rows], cut)])
        np.testing.assert_array_equal(chosen, whole)
    # Actionable needs no population: the band of each row.
    actionable = policy.rows_with_reasons(policy.ScoringConfig(reasons_for="actionable"), probability)
    np.testing.assert_array_equal(actionable, np.flatnonzero(probability >= 0.3))
    assert policy.rows_with_reasons(policy.ScoringConfig(), probability) is None


@pytest.mark.spark
@pytest.mark.slow
def test_spark_gives_reasons_to_the_customers_duckdb_does(small_shop, tmp_path):
    """The stage on both engines with the same models and score.reasons_for=top_fraction, then
    actionable: the same customers get the same reasons."""
    from churnml.io.spark import connect_spark, stop_spark
    from churnml.jobs.score import run as run_score
    from test_config import compose_resolved
    from test_scoring import REASON_COLUMNS, small_models_on_files, with_edge_customers
    from test_stage_score import save_exported

    tables = {**small_shop, "transactions": with_edge_customers(small_shop["transactions"])}
    paths, models = small_models_on_files(tables, tmp_path / "data")
    for target, model in models.items():
        save_exported(model, tmp_path / "models", f"churnml-{target}", "1")
    common = ["data=files", *(f"data.{name}.path={path}" for name, path in paths.items()),
              f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"mlflow.artifact_root={tmp_path}/artifacts",
              "mlflow.experiment=churnml-spark-reasons-test", f"score.model_dir={tmp_path}/models",
              "spark.shuffle_partitions=3"]
    con = connect_spark()
    try:
        for reasons_for in ("reasons_for=top_fraction score.reasons_top_fraction=0.3", "reasons_for=actionable"):
            settings = [*common, *(f"score.{s}" for s in reasons_for.split(" score."))]
            name = reasons_for.split(" ")[0].split("=")[1]
            on_duckdb = run_score(compose_resolved("score", [*settings, f"score.output={tmp_path}/{name}/duckdb.parquet"]))
            run_score(compose_resolved("score", [*settings, "engine=spark", f"score.output={tmp_path}/{name}/spark"]))
            expected = pd.read_parquet(on_duckdb)
            actual = pd.read_parquet(tmp_path / name / "spark")
            assert actual["customer_id"].tolist() == expected["customer_id"].tolist()
            explained = expected["reason_1"].notna()
            if name == "top_fraction":
                assert explained.sum() == policy.top_count(len(expected), 0.3)
            else:
                assert explained.tolist() == (expected["risk_band"] != "low").tolist()
            assert 0 < explained.sum() < len(expected)
            assert actual["reason_1"].notna().tolist() == explained.tolist()
            texts = [c for c in REASON_COLUMNS if not c.endswith("_contribution")]
            pd.testing.assert_frame_equal(actual[texts], expected[texts], check_dtype=False)
            numbers = [c for c in REASON_COLUMNS if c.endswith("_contribution")]
            np.testing.assert_allclose(actual[numbers], expected[numbers], rtol=1e-9, atol=1e-12)
    finally:
        stop_spark(con)
