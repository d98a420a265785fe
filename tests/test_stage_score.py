"""The scoring stage, as a user runs it: models from the registry or an exported directory,
a file per as_of, a tracked run, and nothing written when something is wrong."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from churnml import tracking
from churnml.jobs.score import run as run_score
from churnml.jobs.train import run as run_train
from churnml.models.classifier import FeatureMismatchError
from churnml.scoring import table
from churnml.simulate import write_shop
from test_config import compose_resolved
from test_outputs import is_number
from test_scoring import small_models_on_files, with_edge_customers

# Every test here runs the whole stage (models on disk, an MLflow store); test_scoring.py covers
# the same behaviour function by function, fast.
pytestmark = pytest.mark.slow

EXPERIMENT = "churnml-score-test"


def scoring_runs(tracking_uri: str, experiment: str = EXPERIMENT) -> pd.DataFrame:
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(experiment_names=[experiment], filter_string="tags.`churnml.stage` = 'score'",
                              order_by=["attributes.start_time DESC"])


def save_exported(model, directory: Path, name: str, version: str) -> Path:
    """A model directory as ``churnml-train`` exports it (MLflow format plus churnml.json)."""
    target = tracking.save_model_directory(model, directory / name)
    (target / "churnml.json").write_text(json.dumps({"name": name, "version": version}))
    return target


@pytest.fixture(scope="module")
def shop(small_shop, tmp_path_factory) -> dict[str, Path]:
    """The small shop written as Parquet files, two exported models, and an MLflow store."""
    root = tmp_path_factory.mktemp("score_stage")
    tables = {**small_shop, "transactions": with_edge_customers(small_shop["transactions"])}
    paths, models = small_models_on_files(tables, root / "data")
    for target, model in models.items():
        # Training keeps a reference profile with the model (training.fit_model).
        assert "columns" in model.reference_profile_
        save_exported(model, root / "profiled", f"churnml-{target}", "8")
        # A model from before reference profiles existed.
        unprofiled = copy.deepcopy(model)
        del unprofiled.reference_profile_
        save_exported(unprofiled, root / "models", f"churnml-{target}", "7")
    return {"root": root, **paths}


def settings_for(shop: dict[str, Path], *overrides: str, interactions: bool = True) -> dict:
    root = shop["root"]
    data = ["data=files", f"data.transactions.path={shop['transactions']}", f"data.customers.path={shop['customers']}"]
    if interactions:
        data.append(f"data.interactions.path={shop['interactions']}")
    if "surveys" in shop:
        data.append(f"data.surveys.path={shop['surveys']}")
    tracking = [f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db", f"mlflow.artifact_root={root}/artifacts",
                f"mlflow.experiment={EXPERIMENT}"]
    return compose_resolved("score", [*data, *tracking, f"score.model_dir={root}/models", *overrides])


def test_scores_from_an_exported_directory_are_written_and_tracked(shop, tmp_path, capsys, caplog):
    output = tmp_path / "scores.parquet"
    with caplog.at_level(logging.WARNING, logger="churnml"):
        path = run_score(settings_for(shop, f"score.output={output}"))
    assert path == output
    scores = pd.read_parquet(output)
    assert list(scores.columns) == table.score_columns(3)
    assert scores["customer_id"].is_monotonic_increasing and scores["customer_id"].is_unique
    assert (scores["churn_model_name"] == "churnml-churn").all() and (scores["churn_model_version"] == "7").all()
    assert "no reference profile" in caplog.text
    printed = capsys.readouterr().out
    assert f"scored {len(scores):,} customers" in printed and str(output) in printed and "risk bands: high" in printed

    run = scoring_runs(f"sqlite:///{shop['root']}/mlflow.db").iloc[0]
    assert run["tags.churnml.output"] == str(output)
    assert run["params.churn_model_version"] == "7"
    assert run["params.as_of"] == str(pd.Timestamp(scores["as_of"].iloc[0]).date())
    assert run["metrics.rows"] == len(scores)
    assert run["metrics.rows_high"] == (scores["risk_band"] == "high").sum()
    assert run["metrics.mean_churn_probability"] == pytest.approx(scores["churn_probability"].mean())
    assert not any(c.startswith("metrics.psi.") for c in run.index if pd.notna(run[c]))


def test_rescoring_gives_a_byte_identical_file(shop, tmp_path):
    first = run_score(settings_for(shop, f"score.output={tmp_path}/a/scores.parquet"))
    second = run_score(settings_for(shop, f"score.output={tmp_path}/b/scores.parquet"))
    assert first.read_bytes() == second.read_bytes()


def test_default_output_is_under_scores_by_as_of(shop, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = run_score(settings_for(shop, "as_of=2024-06-30", "score.format=csv"))
    assert path == Path("scores/as_of=2024-06-30/scores.csv")
    scores = pd.read_csv(tmp_path / path)
    assert (scores["as_of"] == "2024-06-30").all()


def test_drift_is_tracked_for_models_with_a_reference_profile(shop, tmp_path, capsys):
    run_score(settings_for(shop, f"score.model_dir={shop['root']}/profiled", f"score.output={tmp_path}/s.parquet"))
    run = scoring_runs(f"sqlite:///{shop['root']}/mlflow.db").iloc[0]
    assert run["params.churn_model_version"] == "8"
    psi = {c.removeprefix("metrics.psi.churn."): run[c] for c in run.index if c.startswith("metrics.psi.churn.")}
    assert "recency_days" in psi and "model_score" in psi and np.isfinite(list(psi.values())).all()
    assert "metrics.psi.repurchase.model_score" in run.index
    drifted = [name for name, value in psi.items() if value > 0.2]
    printed = capsys.readouterr().out
    assert "drift of the churn model's inputs (PSI > 0.2)" in printed
    # The reference snapshot is months older than as_of: customers' ages have moved on.
    assert "tenure_days" in drifted and "tenure_days" in printed
    assert "churn:tenure_days=" in run["tags.churnml.drifted_features"]
    # Customers months on from the reference are the same population: the gate lets them through.
    assert (tmp_path / "s.parquet").exists()


def other_shop(directory: Path) -> dict[str, Path]:
    """Another shop's files: other customers, prices 40 times the demo's, a quarter of the lines."""
    from churnml.simulate import simulate_shop

    tables = simulate_shop(n_customers=1500, start="2023-01-01", end="2024-12-31", seed=11)
    transactions = tables["transactions"].assign(amount=tables["transactions"]["amount"] * 40).iloc[::4]
    return write_shop({**tables, "transactions": transactions, "interactions": tables["interactions"].iloc[::5]},
                      directory)


def test_another_shops_customers_are_refused_naming_the_worst_features(shop, tmp_path, capsys):
    from churnml.errors import UserError

    other = {"root": shop["root"], **other_shop(tmp_path / "other")}
    profiled = f"score.model_dir={shop['root']}/profiled"
    output = tmp_path / "out" / "scores.parquet"
    runs_before = len(scoring_runs(f"sqlite:///{shop['root']}/mlflow.db"))
    with pytest.raises(UserError) as refused:
        run_score(settings_for(other, profiled, f"score.output={output}"))
    message = str(refused.value)
    assert "churn model churnml-churn v8: score PSI" in message and "worst avg_order_value" in message
    assert "score.allow_drift=true" in message and "\n" not in message
    assert not output.parent.exists()
    assert len(scoring_runs(f"sqlite:///{shop['root']}/mlflow.db")) == runs_before

    assert run_score(settings_for(other, profiled, f"score.output={output}", "score.allow_drift=true")) == output
    assert output.exists()


def test_as_of_outside_the_data_writes_nothing(shop, tmp_path):
    output = tmp_path / "out" / "scores.parquet"
    with pytest.raises(ValueError, match="after the last date in the data"):
        run_score(settings_for(shop, "as_of=2030-01-01", f"score.output={output}"))
    with pytest.raises(ValueError, match="before the first date in the data"):
        run_score(settings_for(shop, "as_of=2001-01-01", f"score.output={output}"))
    assert not output.parent.exists()


def test_data_that_does_not_fit_the_models_writes_nothing(shop, tmp_path):
    output = tmp_path / "out" / "scores.parquet"
    with pytest.raises(FeatureMismatchError, match="interactions"):
        run_score(settings_for(shop, f"score.output={output}", interactions=False))
    assert not output.parent.exists()


def test_train_both_targets_then_score_from_the_registry_and_the_export(tmp_path):
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = ["data.n_customers=1500", f"data.directory={tmp_path}/data", f"mlflow.tracking_uri={tracking_uri}",
              f"mlflow.artifact_root={tmp_path}/art", f"mlflow.experiment={EXPERIMENT}"]
    for target in ("churn", "repurchase"):
        run_train(compose_resolved("train", [
            *common, f"target={target}", f"train.export_dir={tmp_path}/models", f"train.report_dir={tmp_path}/reports",
            "model.n_estimators=60", "train.cv_folds=1", "train.max_snapshots=5"]))

    from_registry = run_score(compose_resolved("score", [*common, f"score.output={tmp_path}/registry/scores.parquet"]))
    client = MlflowClient(tracking_uri)
    run = scoring_runs(tracking_uri).iloc[0]
    for target in ("churn", "repurchase"):
        version = client.get_model_version_by_alias(f"churnml-{target}", "champion")
        assert version.tags["churnml.last_scoring_run"] == run["run_id"]
        assert run[f"tags.churnml.{target}_model"] == f"churnml-{target}/{version.version}"
        assert run[f"tags.churnml.{target}_model_run_id"] == version.run_id
        assert run[f"params.{target}_model_uri"] == f"models:/churnml-{target}@champion"
    assert run["metrics.psi.churn.model_score"] >= 0 and run["metrics.psi.churn.recency_days"] >= 0
    scores = pd.read_parquet(from_registry)
    assert len(scores) > 1000 and scores["reason_1"].notna().all()
    assert run["metrics.rows"] == len(scores)

    from_export = run_score(compose_resolved("score", [
        *common, f"score.model_dir={tmp_path}/models", f"score.output={tmp_path}/export/scores.parquet"]))
    # The exported directory holds the champion: the same models give the same file.
    assert from_export.read_bytes() == from_registry.read_bytes()


def test_a_model_directory_with_a_planted_pickle_is_refused_unrun_and_nothing_is_written(shop, tmp_path):
    import pickle
    import shutil

    from churnml.models.persistence import ModelFormatError
    from test_persistence import Planted

    marker = tmp_path / "payload-ran"
    models = tmp_path / "models"
    shutil.copytree(shop["root"] / "models", models)
    planted = models / "churnml-churn" / "model.pkl"
    planted.write_bytes(pickle.dumps(Planted(marker)))
    output = tmp_path / "out" / "scores.parquet"
    with pytest.raises(ModelFormatError, match="retrain") as refused:
        run_score(settings_for(shop, f"score.model_dir={models}", f"score.output={output}"))
    assert str(planted) in str(refused.value)
    assert not marker.exists() and not output.parent.exists()


def test_csv_scores_of_formula_like_ids_hold_no_cell_a_spreadsheet_evaluates(shop, tmp_path):
    import csv

    formulas = ["=1+1", "+cmd|' /C calc'!A0", "@SUM(1)", "-1+2", "\tx"]
    transactions = pd.read_parquet(shop["transactions"])
    renamed = dict(zip(sorted(transactions["customer_id"].unique())[:len(formulas)], formulas))
    data = {}
    for name in ("transactions", "customers", "interactions"):
        frame = pd.read_parquet(shop[name])
        frame["customer_id"] = frame["customer_id"].replace(renamed)
        data[name] = tmp_path / f"{name}.parquet"
        frame.to_parquet(data[name])
    output = tmp_path / "scores.csv"
    run_score(settings_for({**shop, **data}, "score.format=csv", f"score.output={output}"))
    with open(output, newline="") as handle:
        rows = list(csv.reader(handle))
    text_cells = [cell for row in rows for cell in row if cell and not is_number(cell)]
    assert not [cell for cell in text_cells if cell[0] in "=+-@\t\r"]
    ids = {row[0] for row in rows[1:]}
    assert {"'" + formula for formula in formulas} <= ids


def test_a_run_that_cannot_be_tracked_leaves_the_previous_scores(shop, tmp_path, monkeypatch):
    output = tmp_path / "scores.parquet"
    output.write_bytes(b"previous scores")

    def unreachable(*args, **kwargs):
        raise ConnectionError("tracking server unreachable")

    monkeypatch.setattr(tracking, "log_scoring", unreachable)
    with pytest.raises(ConnectionError):
        run_score(settings_for(shop, f"score.output={output}"))
    assert output.read_bytes() == b"previous scores"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.parquet"]
