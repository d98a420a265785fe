"""The surveys table: loading and its checks, the point-in-time survey features, and the NPS,
CSAT and CES formulas, each checked against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import ibis
import numpy as np
import pandas as pd
import pytest

from churnml.features.build import build_features
from churnml.io.contract import DataValidationError
from churnml.io.load import TableSource, connect, load_dataset
from churnml.loyalty.surveys import effort_score, net_promoter_score, satisfaction_score, survey_scores
from churnml.models.classifier import feature_columns
from conftest import ts

CUTOFF = "2024-06-30"
SURVEY_FEATURES = ["n_survey_answers", "days_since_survey", "last_nps", "last_csat", "last_ces", "nps_promoter",
                   "nps_detractor"]


def load_with_surveys(transactions: pd.DataFrame, surveys: pd.DataFrame | None = None, **sources: TableSource):
    return load_dataset(TableSource(frame=transactions, label="transactions"),
                        surveys=TableSource(frame=surveys, label="surveys") if surveys is not None else None,
                        con=connect(), **sources)


def survey_frame(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["customer_id", "ts", "kind", "score"])
    frame["ts"] = ts(*frame["ts"])
    return frame


def write_csv(tmp_path: Path, text: str, name: str = "surveys.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


TX_CSV = "customer_id,ts,amount\nA,2024-01-01,10\nB,2024-01-02,20\nC,2024-01-03,30\n"


def load_survey_csv(tmp_path: Path, text: str, **source):
    return load_dataset(TableSource(path=write_csv(tmp_path, TX_CSV, "tx.csv")),
                        surveys=TableSource(path=write_csv(tmp_path, text), **source), con=connect())


# --- loading ---------------------------------------------------------------------------------

def test_good_answers_load_with_kinds_in_lower_case(tmp_path):
    text = ("customer_id,ts,kind,score,channel\nA,2024-01-01 10:00:00,NPS,9,email\nA,2024-01-02,csat ,5.0,app\n"
            "B,2024-01-03, Ces,1,web\nC,2024-01-04,nps,0,\n")
    dataset = load_survey_csv(tmp_path, text)
    frame = dataset.surveys.to_pandas().sort_values("ts", ignore_index=True)
    assert list(frame.columns) == ["customer_id", "ts", "kind", "score", "channel"]
    assert frame["kind"].tolist() == ["nps", "csat", "ces", "nps"]
    assert frame["score"].tolist() == [9.0, 5.0, 1.0, 0.0]
    assert frame["channel"].isna().tolist() == [False, False, False, True]
    assert dataset.reports["surveys"].rows_kept == 4


def test_bad_answers_are_named_with_file_column_count_and_examples(tmp_path):
    text = ("customer_id,ts,kind,score\nA,2024-01-01,nps,9\nA,2024-01-02,NPS ,11\nB,2024-01-03,csat,0\n"
            "B,2024-01-04,ces,7.5\nC,2024-01-05,survey,3\nC,2024-01-06,csat,NA\nC,2024-01-07,,4\n")
    with pytest.raises(DataValidationError) as err:
        load_survey_csv(tmp_path, text)
    message = str(err.value)
    assert "\n" not in message and message.startswith("invalid input data, 4 problems: (1) surveys '")
    assert ("column 'kind': is empty or marked missing (NA, NULL ...) (1 of 7 rows); e.g. row 7: (empty)"
            in message)
    assert "column 'score': is empty or marked missing (NA, NULL ...) (1 of 7 rows); e.g. row 6: 'NA'" in message
    assert "column 'kind': is not one of nps, csat, ces (compared without case) (1 of 7 rows); e.g. row 5: 'survey'" in message
    assert ("column 'score': is off the answer scale of its kind (whole numbers: nps 0-10, csat 1-5, ces 1-7) "
            "(3 of 7 rows); e.g. row 2: '11' ('NPS '), row 3: '0' ('csat'), row 4: '7.5' ('ces')") in message


@pytest.mark.parametrize(("kind", "score", "ok"), [
    ("nps", 0, True), ("nps", 10, True), ("nps", -1, False), ("nps", 10.5, False),
    ("nps", 1e300, False), ("csat", 1, True), ("csat", 5, True), ("csat", 6, False),
    ("ces", 1, True), ("ces", 7, True), ("ces", 0, False), ("ces", 8, False),
])
def test_the_ends_of_each_scale(tiny_transactions, kind, score, ok):
    surveys = survey_frame([("A", "2024-01-01", kind, score)])
    if ok:
        assert load_with_surveys(tiny_transactions, surveys).surveys.count().execute() == 1
    else:
        with pytest.raises(DataValidationError, match=r"off the answer scale of its kind .* \(1 of 1 rows\)"):
            load_with_surveys(tiny_transactions, surveys)


def test_text_that_is_no_number_is_named_once(tmp_path):
    text = "customer_id,ts,kind,score\nA,2024-01-01,nps,nine\nA,2024-01-02,nps,9\n"
    with pytest.raises(DataValidationError) as err:
        load_survey_csv(tmp_path, text)
    assert str(err.value).endswith("column 'score': is not a number (1 of 2 rows); e.g. row 1: 'nine'")


def test_an_infinite_score_is_named_once(tmp_path):
    text = "customer_id,ts,kind,score\nA,2024-01-01,nps,inf\nA,2024-01-02,nps,9\n"
    with pytest.raises(DataValidationError) as err:
        load_survey_csv(tmp_path, text)
    assert str(err.value).endswith("column 'score': is not a finite number (1 of 2 rows); e.g. row 1: 'inf'")


def test_files_data_reads_surveys_with_mapped_columns(tmp_path):
    from churnml.io.sources import load_data

    survey_path = write_csv(tmp_path, "CustID,When,Survey,Rating\nA,2024-01-01,nps,10\nB,2024-01-02,csat,2\n")
    settings = {"kind": "files", "transactions": {"path": write_csv(tmp_path, TX_CSV, "tx.csv")},
                "surveys": {"path": survey_path,
                            "columns": {"customer_id": "CustID", "ts": "When", "kind": "Survey", "score": "Rating"}}}
    frame = load_data(settings).surveys.to_pandas().sort_values("customer_id")
    assert frame[["customer_id", "kind", "score"]].values.tolist() == [["A", "nps", 10.0], ["B", "csat", 2.0]]


def test_files_data_names_a_missing_surveys_file(tmp_path):
    from churnml.io.sources import file_sources

    with pytest.raises(DataValidationError, match=r"surveys '.*nope\.csv'.*set data\.surveys\.path"):
        file_sources({"transactions": {"path": write_csv(tmp_path, TX_CSV, "tx.csv")},
                      "surveys": {"path": str(tmp_path / "nope.csv")}})


def test_the_config_takes_a_surveys_path_and_column_names():
    from test_config import compose_resolved

    data = compose_resolved("features", ["data=files", "data.transactions.path=/data/tx.csv",
                                         "data.surveys.path=/data/surveys.csv",
                                         "data.surveys.columns.score=rating"])["data"]
    assert data["surveys"]["path"] == "/data/surveys.csv"
    assert data["surveys"]["columns"]["score"] == "rating"


def test_the_demo_shop_has_surveys_and_cdnow_has_none(tmp_path):
    from churnml.io.sources import data_sources
    from churnml.simulate import simulate_shop, write_shop

    settings = {"kind": "demo", "n_customers": 200, "start": "2023-01-01", "end": "2023-12-31", "seed": 4,
                "directory": str(tmp_path / "demo")}
    # A demo directory written before there were surveys is simulated again, with the same tables.
    older = simulate_shop(200, start="2023-01-01", end="2023-12-31", seed=4)
    write_shop({name: older[name] for name in ("transactions", "interactions", "customers")}, tmp_path / "demo")
    sources = data_sources(settings)
    assert Path(sources["surveys"].path).is_file()
    pd.testing.assert_frame_equal(pd.read_parquet(sources["transactions"].path), older["transactions"])
    assert "surveys" not in data_sources({"kind": "cdnow"})


# --- features --------------------------------------------------------------------------------

@pytest.fixture
def tiny_surveys() -> pd.DataFrame:
    """Answers around the cutoff 2024-06-30 of the tiny shop's customers A, B (C answers nothing).

    - A: NPS 9 in May, CSAT 5 in June, NPS 6 in the last second of the cutoff day, NPS 10 the next
      day (too late): latest NPS 6, a detractor, surveyed 0 days ago, 3 answers.
    - B: NPS 10 and 7 at the same instant (the lower counts: a passive), CES 2 on 2024-04-15:
      76 days before the cutoff.
    """
    return survey_frame([
        ("A", "2024-05-01 09:00:00", "nps", 9),
        ("A", "2024-06-20 10:00:00", "csat", 5),
        ("A", "2024-06-30 23:59:59", "nps", 6),
        ("A", "2024-07-01 00:00:00", "nps", 10),
        ("B", "2024-03-01 12:00:00", "nps", 10),
        ("B", "2024-03-01 12:00:00", "nps", 7),
        ("B", "2024-04-15 08:00:00", "ces", 2),
    ])


def test_survey_features_by_hand(tiny_transactions, tiny_surveys):
    table = build_features(load_with_surveys(tiny_transactions, tiny_surveys), CUTOFF).to_pandas().set_index("customer_id")
    a, b, c = (table.loc[k] for k in "ABC")
    assert (a.n_survey_answers, a.days_since_survey, a.last_nps, a.last_csat) == (3, 0, 6, 5)
    assert math.isnan(a.last_ces)
    assert (bool(a.nps_promoter), bool(a.nps_detractor)) == (False, True)
    assert (b.n_survey_answers, b.days_since_survey, b.last_nps, b.last_ces) == (3, 76, 7, 2)
    assert (bool(b.nps_promoter), bool(b.nps_detractor)) == (False, False)
    assert c.n_survey_answers == 0 and math.isnan(c.days_since_survey) and math.isnan(c.last_nps)
    assert (bool(c.nps_promoter), bool(c.nps_detractor)) == (False, False)


def test_a_promoter_and_a_later_cutoff(tiny_transactions, tiny_surveys):
    table = build_features(load_with_surveys(tiny_transactions, tiny_surveys), "2024-07-01").to_pandas()
    a = table.set_index("customer_id").loc["A"]
    assert (a.last_nps, a.n_survey_answers, a.days_since_survey) == (10, 4, 0)
    assert (bool(a.nps_promoter), bool(a.nps_detractor)) == (True, False)


def test_survey_features_only_with_a_surveys_table_and_then_in_the_model(tiny_transactions, tiny_surveys):
    without = build_features(load_with_surveys(tiny_transactions), CUTOFF).to_pandas()
    assert not set(SURVEY_FEATURES) & set(without.columns)
    with_surveys = build_features(load_with_surveys(tiny_transactions, tiny_surveys), CUTOFF).to_pandas()
    assert set(SURVEY_FEATURES) <= set(feature_columns(with_surveys))
    assert with_surveys.drop(columns=SURVEY_FEATURES).equals(without)


def _after_cutoff_changed(surveys: pd.DataFrame, cutoff: pd.Timestamp, rng: np.random.Generator) -> pd.DataFrame:
    """Answers after the cutoff day rescored and re-kinded, plus new late answers and answering newcomers."""
    table = surveys.copy()
    later = table["ts"] >= cutoff + pd.Timedelta(days=1)
    table.loc[later, "kind"] = "nps"
    table.loc[later, "score"] = rng.integers(0, 11, later.sum())
    extra = table.sample(n=300, random_state=1).copy()
    extra["ts"] = cutoff + pd.to_timedelta(rng.integers(1, 200, len(extra)), unit="D") + pd.Timedelta(hours=3)
    extra["kind"], extra["score"] = "nps", 0
    newcomers = extra.head(20).copy()
    newcomers["customer_id"] = [f"NEW{i}" for i in range(len(newcomers))]
    return pd.concat([table, extra, newcomers], ignore_index=True)


def test_answers_after_the_cutoff_change_no_feature(small_shop):
    cutoff = pd.Timestamp("2024-03-31")
    tx, surveys = small_shop["transactions"], small_shop["surveys"]
    base = build_features(load_with_surveys(tx, surveys), cutoff.date()).to_pandas()
    changed_surveys = _after_cutoff_changed(surveys, cutoff, np.random.default_rng(0))
    changed = build_features(load_with_surveys(tx, changed_surveys), cutoff.date()).to_pandas()
    assert (base["n_survey_answers"] > 0).sum() > 300 and base["last_nps"].notna().sum() > 150
    pd.testing.assert_frame_equal(base, changed, check_exact=False, rtol=1e-12)
    # The same change before the cutoff does change them: the test can see a difference.
    earlier = _after_cutoff_changed(surveys, cutoff - pd.Timedelta(days=60), np.random.default_rng(0))
    assert not build_features(load_with_surveys(tx, earlier), cutoff.date()).to_pandas().equals(base)


# --- formulas --------------------------------------------------------------------------------

@pytest.mark.parametrize(("scores", "expected"), [
    ([10, 9, 9, 10, 9, 8, 7, 7, 6, 0], 30.0),  # 5 promoters, 3 passives, 2 detractors of 10: 50% - 20%
    ([9, 10], 100.0),
    ([0, 6], -100.0),
    ([7, 8], 0.0),
    ([9, 8, 6], 0.0),
    ([10, 7, 7, 3], 0.0),
    ([9, 9, 9, 6], 50.0),
    ([9, np.nan, 0, 0], -100 / 3),  # a missing answer is no answer
])
def test_net_promoter_score_by_hand(scores, expected):
    assert net_promoter_score(scores) == pytest.approx(expected)


@pytest.mark.parametrize(("scores", "expected"), [
    ([5, 4, 3, 2], 50.0), ([4], 100.0), ([3], 0.0), ([1, 2, 3, 4, 5], 40.0), ([5, 5, 5, 1], 75.0),
])
def test_satisfaction_score_by_hand(scores, expected):
    assert satisfaction_score(scores) == pytest.approx(expected)


@pytest.mark.parametrize(("scores", "expected"), [([7, 6, 2], 5.0), ([1], 1.0), ([4, 5], 4.5)])
def test_effort_score_by_hand(scores, expected):
    assert effort_score(scores) == pytest.approx(expected)


@pytest.mark.parametrize("formula", [net_promoter_score, satisfaction_score, effort_score])
def test_no_answers_no_score(formula):
    assert math.isnan(formula([])) and math.isnan(formula([np.nan]))


def test_survey_scores_by_group_agree_with_the_formulas():
    rng = np.random.default_rng(3)
    n = 600
    kind = rng.choice(["nps", "csat", "ces"], n)
    high = np.select([kind == "nps", kind == "csat"], [10, 5], 7)
    low = np.where(kind == "nps", 0, 1)
    frame = pd.DataFrame({"kind": kind, "score": rng.integers(low, high + 1).astype(float),
                          "month": rng.choice(["2024-01", "2024-02", "2024-03"], n),
                          "tier": rng.choice(["core", "potential"], n)})
    frame = pd.concat([frame, pd.DataFrame({"kind": ["csat"], "score": [4.0], "month": ["2024-04"], "tier": ["core"]})])
    got = survey_scores(ibis.memtable(frame), ["month", "tier"]).to_pandas().set_index(["month", "tier"]).sort_index()
    assert len(got) == 7
    for (month, tier), group in frame.groupby(["month", "tier"]):
        row = got.loc[(month, tier)]
        by_kind = {k: group.loc[group["kind"] == k, "score"] for k in ("nps", "csat", "ces")}
        for column, formula, k in (("nps", net_promoter_score, "nps"), ("csat", satisfaction_score, "csat"),
                                   ("ces", effort_score, "ces")):
            expected = formula(by_kind[k])
            assert row[f"n_{k}"] == len(by_kind[k])
            assert (math.isnan(expected) and pd.isna(row[column])) or row[column] == pytest.approx(expected, rel=1e-12)
    only_csat = got.loc[("2024-04", "core")]
    assert pd.isna(only_csat["nps"]) and pd.isna(only_csat["ces"]) and only_csat["csat"] == 100.0


def test_survey_scores_of_the_whole_table_by_hand():
    frame = pd.DataFrame({"kind": ["nps"] * 4 + ["csat"] * 2 + ["ces"] * 2, "score": [10, 9, 6, 8, 5, 2, 7, 4]})
    row = survey_scores(ibis.memtable(frame)).to_pandas().iloc[0]
    assert (row.nps, row.n_nps, row.csat, row.n_csat, row.ces, row.n_ces) == (25.0, 4, 50.0, 2, 5.5, 2)
