"""Training and evaluation: time splits, behaviour, reproducibility, MLflow and the champion rule."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import lightgbm
import numpy as np
import pandas as pd
import pytest

from churnml.features.build import build_features
from churnml.models.btyd import bgnbd_features
from churnml.models.classifier import ChurnModel
from churnml.models.training import (
    TrainingPlan,
    cv_fold_cutoffs,
    snapshot_priors,
    split_by_cutoff,
    split_for_calibration,
    train_and_evaluate,
)
from churnml.tracking import is_at_least_as_good
from conftest import frame_dataset
from test_config import compose_resolved

PLAN = TrainingPlan(target="churn", horizon_days=90, holdout_cutoff=dt.date(2024, 9, 30), step_days=30,
                    max_snapshots=6, cv_folds=2)


def quick_model(**kwargs) -> ChurnModel:
    estimator = lightgbm.LGBMClassifier(n_estimators=150, learning_rate=0.05, num_leaves=7, random_state=0,
                                        n_jobs=1, verbose=-1)
    return ChurnModel(estimator, **kwargs)


@pytest.fixture(scope="module")
def shop_dataset(small_shop):
    return frame_dataset(small_shop["transactions"], small_shop["interactions"], small_shop["customers"])


@pytest.fixture(scope="module")
def outcome(shop_dataset):
    return train_and_evaluate(shop_dataset, quick_model(), PLAN, progress=False)


def test_a_model_with_small_trees_is_trained_tabulated_and_without_a_note(outcome):
    assert outcome.tabulation_note is None
    assert outcome.deployed_model.tree_tables_ is not None


def test_a_model_with_large_trees_is_reported_at_training_time(shop_dataset, caplog):
    estimator = lightgbm.LGBMClassifier(n_estimators=40, num_leaves=31, min_child_samples=5, random_state=0, n_jobs=1,
                                        verbose=-1)
    plan = TrainingPlan(target="churn", horizon_days=90, holdout_cutoff=dt.date(2024, 9, 30), step_days=30,
                        max_snapshots=4, cv_folds=0)
    with caplog.at_level("WARNING", logger="churnml.models.training"):
        large = train_and_evaluate(shop_dataset, ChurnModel(estimator), plan, progress=False)
    assert large.deployed_model.tree_tables_ is None
    assert large.tabulation_note and "tables cover at most 9 leaves" in large.tabulation_note
    assert any(r.levelname == "WARNING" and large.tabulation_note in r.getMessage() for r in caplog.records)


def test_calibration_slice_is_later_than_the_fit():
    table = pd.DataFrame({"cutoff": pd.to_datetime(["2024-01-01", "2024-02-01", "2024-03-01", "2024-03-01"])})
    fit, calibration = split_by_cutoff(table, 1)
    assert fit["cutoff"].max() < calibration["cutoff"].min()
    with pytest.raises(ValueError, match="cannot be split"):
        split_by_cutoff(table.iloc[:1], 1)


def test_calibration_customers_are_held_out_of_the_fit():
    ids = [f"C{i}" for i in range(2000)]
    table = pd.DataFrame({"customer_id": ids * 3,
                          "cutoff": pd.to_datetime(["2024-01-01"] * 2000 + ["2024-02-01"] * 2000 + ["2024-03-01"] * 2000)})
    fit, calibration = split_for_calibration(table, 1, 0.3)
    assert set(fit["customer_id"]).isdisjoint(calibration["customer_id"])
    assert set(calibration["cutoff"]) == {pd.Timestamp("2024-03-01")}
    assert fit["cutoff"].max() < calibration["cutoff"].min()
    assert 0.25 < len(calibration) / 2000 < 0.35
    assert len(fit) == 2 * (2000 - len(calibration))
    # The same customers are held out whatever the order of the rows.
    _, shuffled = split_for_calibration(table.sample(frac=1.0, random_state=1), 1, 0.3)
    assert set(shuffled["customer_id"]) == set(calibration["customer_id"])
    everyone_fit, everyone_calibration = split_for_calibration(table, 1, 0.0)
    assert len(everyone_fit) == 4000 and len(everyone_calibration) == 2000
    with pytest.raises(ValueError, match="fraction"):
        split_for_calibration(table, 1, 1.0)


def test_the_deployed_model_is_refit_through_the_holdout(shop_dataset, outcome):
    assert outcome.deployed_model is outcome.refit_model is not None
    assert outcome.model.trained_through_ == outcome.train_table["cutoff"].max().date()
    assert outcome.refit_model.trained_through_ == outcome.holdout_cutoff
    # The figures are the evaluated twin's; the refit model has seen the holdout's labels.
    np.testing.assert_allclose(outcome.model.predict_proba(outcome.holdout_table)[:, 1], outcome.probabilities["model"])
    refit_probability = outcome.refit_model.predict_proba(outcome.holdout_table)[:, 1]
    assert np.abs(refit_probability - outcome.probabilities["model"]).max() > 1e-3
    assert outcome.refit_model.tree_tables_ is not None and outcome.refit_model.reference_profile_ is not None
    without = train_and_evaluate(shop_dataset, quick_model(), dataclasses.replace(PLAN, refit=False, cv_folds=0),
                                 progress=False)
    assert without.refit_model is None and without.deployed_model is without.model
    assert without.model.trained_through_ == outcome.model.trained_through_


def test_cv_folds_train_only_on_labels_known_at_the_fold():
    cutoffs = [dt.date(2024, 1, 1) + dt.timedelta(days=30 * k) for k in range(8)]
    folds = cv_fold_cutoffs(cutoffs, horizon_days=90, n_folds=3, calibration_snapshots=1)
    assert folds == cutoffs[-3:]
    for fold in folds:
        usable = [c for c in cutoffs if c + dt.timedelta(days=90) <= fold]
        assert len(usable) >= 2 and max(usable) < fold


def test_outcome_is_out_of_time(outcome):
    assert outcome.holdout_cutoff == dt.date(2024, 9, 30)
    assert set(outcome.holdout_table["cutoff"]) == {pd.Timestamp("2024-09-30")}
    latest_label_end = outcome.train_table["cutoff"].max() + pd.Timedelta(days=90)
    assert latest_label_end <= pd.Timestamp("2024-09-30")
    assert len(outcome.cv_folds) == 2
    assert (outcome.cv_folds["cutoff"] < dt.date(2024, 9, 30)).all()


def test_the_backtest_reads_only_out_of_sample_scores(outcome):
    from sklearn.metrics import roc_auc_score

    from churnml.features.build import WARNING_FLAGS
    from churnml.jobs.train import add_backtest

    scores = outcome.out_of_time_scores
    holdout = pd.Timestamp(outcome.holdout_cutoff)
    folds = [pd.Timestamp(c) for c in outcome.cv_folds["cutoff"]]
    assert sorted(scores["cutoff"].unique()) == [*folds, holdout]
    # The holdout's rows carry the evaluated model's probabilities; each fold's, those its CV row was computed on.
    np.testing.assert_array_equal(scores.loc[scores["cutoff"] == holdout, "probability"], outcome.probabilities["model"])
    for fold in outcome.cv_folds.itertuples():
        rows = scores[scores["cutoff"] == pd.Timestamp(fold.cutoff)]
        assert roc_auc_score(rows["label"], rows["probability"]) == pytest.approx(fold.roc_auc)
    # The job's step, on a copy: the shared outcome's metrics stay as training made them.
    run = dataclasses.replace(outcome, metrics=dict(outcome.metrics))
    [(title, table, note)] = add_backtest(run)
    assert set(run.backtest["cutoff"]) == {c.date().isoformat() for c in [*folds, holdout]} | {"all"}
    assert list(table.columns[:3]) == ["rule", "alerts", "churners"] and "model precision" in table.columns
    by_scorer = run.backtest.set_index(["cutoff", "rule", "scorer"])["alerts"].unstack("scorer")
    assert (by_scorer["model"] == by_scorer["rule"]).all()
    for rule in (*WARNING_FLAGS, "any_flag"):
        assert 0.0 <= run.metrics[f"backtest_{rule}_precision"] <= 1.0, rule
        assert 0.0 <= run.metrics[f"backtest_{rule}_model_recall"] <= 1.0, rule
    # Raised only after 90 days without a purchase, the rule's first alert comes 90 days or more after it.
    assert run.metrics["backtest_no_repurchase_3m_lead_time_days"] >= 90
    assert run.metrics["backtest_no_repurchase_3m_model_lead_time_days"] < run.metrics[
        "backtest_no_repurchase_3m_lead_time_days"]


def test_model_and_baselines_are_compared_on_the_same_rows(outcome):
    assert list(outcome.comparison.index) == ["model", "rule", "rfm", "recency", "bgnbd", "bgnbd_count", "pnbd",
                                              "pnbd_count", "best_classical"]
    assert all(len(p) == len(outcome.holdout_table) for p in outcome.probabilities.values())
    for name in ("holdout_roc_auc", "holdout_pr_auc", "holdout_brier", "holdout_log_loss", "holdout_top_decile_lift",
                 "rule_holdout_roc_auc", "rfm_holdout_roc_auc", "bgnbd_holdout_roc_auc", "pnbd_holdout_roc_auc",
                 "pnbd_count_holdout_roc_auc", "bgnbd_count_holdout_roc_auc", "recency_holdout_roc_auc",
                 "best_classical_holdout_roc_auc", "cv_roc_auc_mean", "cv_roc_auc_std"):
        assert math.isfinite(outcome.metrics[name]), name
    assert outcome.metrics["holdout_roc_auc"] > 0.7


def test_training_is_reproducible(shop_dataset, outcome):
    again = train_and_evaluate(shop_dataset, quick_model(), PLAN, progress=False)
    np.testing.assert_array_equal(again.probabilities["model"], outcome.probabilities["model"])
    assert again.metrics == outcome.metrics


def with_bgnbd(features: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """The feature table at ``cutoff`` with BG/NBD's features (fitted on the whole table), as trained."""
    features = features.assign(cutoff=cutoff)
    return features.join(bgnbd_features(features, 90))


def test_a_more_recent_purchase_lowers_churn_probability(small_shop, outcome):
    cutoff = pd.Timestamp("2024-09-30")
    tx = small_shop["transactions"]
    holdout = outcome.holdout_table
    lapsed = holdout[(holdout["recency_days"] > 60) & (holdout["frequency"] >= 2)]["customer_id"].head(40).tolist()
    assert len(lapsed) >= 20
    fresh = tx[tx.customer_id.isin(lapsed)].groupby("customer_id").tail(1).copy()
    fresh["ts"] = cutoff + pd.Timedelta(hours=12)
    fresh["order_id"] = [f"FRESH{i}" for i in range(len(fresh))]
    fresh["amount"] = fresh["amount"].abs()
    inter, cust = small_shop["interactions"], small_shop["customers"]
    # The whole shop is kept so that peer means (low_interaction) and segments stay the same.
    before = with_bgnbd(build_features(frame_dataset(tx, inter, cust), cutoff.date()).to_pandas(), cutoff)
    after = with_bgnbd(build_features(frame_dataset(pd.concat([tx, fresh]), inter, cust), cutoff.date()).to_pandas(),
                       cutoff)
    before = before[before.customer_id.isin(lapsed)].sort_values("customer_id")
    after = after[after.customer_id.isin(lapsed)].sort_values("customer_id")
    p_before = outcome.model.predict_proba(before)[:, 1]
    p_after = outcome.model.predict_proba(after)[:, 1]
    assert (p_after < p_before).mean() >= 0.8
    assert p_after.mean() < p_before.mean() - 0.05


def test_champion_rule():
    assert is_at_least_as_good(0.80, None)
    assert is_at_least_as_good(0.80, 0.80)
    assert is_at_least_as_good(0.81, 0.80)
    assert not is_at_least_as_good(0.79, 0.80)
    assert not is_at_least_as_good(float("nan"), 0.80)
    assert is_at_least_as_good(0.5, float("nan"))


def test_a_nan_score_never_promotes():
    # A one-class holdout makes both sides NaN: NaN is a loss, not "nothing to compare".
    assert not is_at_least_as_good(float("nan"), float("nan"))
    assert not is_at_least_as_good(float("nan"), None)
    assert not is_at_least_as_good(None, 0.91)
    assert not is_at_least_as_good(float("inf"), 0.91)


def refunds_only_at_the_end() -> pd.DataFrame:
    """Eight customers buying every 20 days, each stopping at a different month of 2023-2024 (so
    earlier snapshots hold both outcomes), then only refunds from 2024-04-01 to 2024-06-30."""
    rows = []
    for number in range(8):
        customer = f"C{number}"
        last = pd.Timestamp("2023-09-01") + pd.DateOffset(months=number)
        for day in pd.date_range("2023-01-05", last, freq="20D"):
            rows.append((customer, day, 50.0 + number))
        rows.append((customer, pd.Timestamp("2024-04-10") + pd.Timedelta(days=10 * number), -20.0))
    rows.append(("C0", pd.Timestamp("2024-06-30"), -5.0))
    return pd.DataFrame(rows, columns=["customer_id", "ts", "amount"])


def test_a_one_class_holdout_stops_training_naming_the_window_and_a_fix():
    from churnml.errors import UserError

    dataset = frame_dataset(refunds_only_at_the_end())
    plan = TrainingPlan(target="churn", horizon_days=90, holdout_cutoff=dt.date(2024, 3, 31), step_days=30,
                        max_snapshots=4, min_snapshots=2, cv_folds=0, bgnbd_features=False)
    with pytest.raises(UserError) as refused:
        train_and_evaluate(dataset, quick_model(), plan, progress=False)
    message = str(refused.value)
    assert "as_of=2024-03-31" in message and "(2024-03-31, 2024-06-29]" in message
    assert "only positive churn labels" in message and "\n" not in message
    # The fix names the latest earlier snapshot whose window holds both outcomes.
    assert "pass as_of=2024-01-01 or another as_of" in message
    # The same data at that date is a valid holdout.
    ok = dataclasses.replace(plan, holdout_cutoff=dt.date(2024, 1, 1), min_snapshots=1)
    assert train_and_evaluate(dataset, quick_model(), ok, progress=False).holdout_table["label"].nunique() == 2


def small_train_settings(tmp_path, *extra: str) -> dict:
    return compose_resolved("train", [
        "data.n_customers=1200", f"data.directory={tmp_path}/data", "data.end=2024-12-31",
        f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"mlflow.artifact_root={tmp_path}/artifacts",
        f"train.export_dir={tmp_path}/models", f"train.report_dir={tmp_path}/reports",
        "model.n_estimators=80", "model.learning_rate=0.1", "train.cv_folds=1", "train.max_snapshots=6", *extra,
    ])


@pytest.mark.slow
def test_train_stage_tracks_registers_and_moves_the_champion_only_when_as_good(tmp_path, capsys, caplog):
    import mlflow
    from mlflow import MlflowClient

    from churnml.jobs.train import run as run_train

    settings = small_train_settings(tmp_path)
    with caplog.at_level("WARNING"):
        objective = run_train(settings)
    # Warnings speak of the user's data: logging the model's 5-row input example fits no prior.
    assert "too few to fit the BTYD prior" not in caplog.text
    assert math.isfinite(objective)
    client = MlflowClient(tracking_uri=settings["mlflow"]["tracking_uri"])
    champion = client.get_model_version_by_alias("churnml-churn", "champion")
    assert str(champion.version) == "1"
    run = client.get_run(champion.run_id)
    for name in ("holdout_roc_auc", "holdout_pr_auc", "holdout_brier", "holdout_log_loss", "holdout_top_decile_lift",
                 "rule_holdout_roc_auc", "rfm_holdout_pr_auc", "bgnbd_holdout_brier", "pnbd_holdout_roc_auc",
                 "best_classical_holdout_brier", "cv_roc_auc_mean"):
        assert name in run.data.metrics, name
    scorer = run.data.tags["best_classical_roc_auc_scorer"]
    assert run.data.metrics["best_classical_holdout_roc_auc"] == run.data.metrics[f"{scorer}_holdout_roc_auc"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"config.json", "data_fingerprint.json", "plots/roc.png", "plots/calibration.png"} <= artifacts
    assert (tmp_path / "models" / "churnml-churn" / "MLmodel").exists()
    assert list((tmp_path / "reports").glob("churnml-churn-v1.html"))
    printed = capsys.readouterr().out
    assert "bgnbd" in printed and "pnbd_count" in printed and "best_classical scorer" in printed
    # The warning-rule backtest: pooled figures as metrics, its table as an artifact, in the report and on the console.
    for name in ("backtest_no_repurchase_3m_precision", "backtest_no_repurchase_3m_model_precision",
                 "backtest_order_value_drop_40_recall", "backtest_low_interaction_model_recall",
                 "backtest_any_flag_alerts", "backtest_any_flag_model_recall"):
        assert name in run.data.metrics, name
    # Lead times need churners who bought after the first of the backtest's two cutoffs; NaN ones are not logged.
    assert {k for k in run.data.metrics if k.startswith("backtest_") and "lead_time" in k} <= {
        f"backtest_{rule}{scorer}_lead_time{kind}_days" for rule in ("no_repurchase_3m", "order_value_drop_40",
                                                                     "low_interaction", "any_flag")
        for scorer in ("", "_model") for kind in ("", "_mean")}
    backtest = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                               artifact_path="evaluation/backtest.csv",
                                                               dst_path=str(tmp_path / "downloaded")))
    pooled = backtest[(backtest["cutoff"] == "all") & (backtest["rule"] == "any_flag") & (backtest["scorer"] == "rule")]
    assert pooled["alerts"].item() == run.data.metrics["backtest_any_flag_alerts"]
    assert "Warning rules against the model at the same alert volume" in (
        tmp_path / "reports" / "churnml-churn-v1.html").read_text()
    assert "warning rules against the model at the same alert volume" in printed
    assert "models:/churnml-churn/1" in printed
    # What is registered and exported is the model refit through the holdout.
    from churnml.tracking import load_model

    holdout_cutoff = run.data.params["holdout_cutoff"]
    assert run.data.tags["churnml.refit_through"] == holdout_cutoff
    assert str(load_model(str(tmp_path / "models" / "churnml-churn")).trained_through_) == holdout_cutoff
    # The registered model saw the holdout's labels: evaluating it there is refused, naming both dates.
    from churnml.errors import UserError
    from churnml.jobs.evaluate import run as run_evaluate

    evaluate = compose_resolved("evaluate", [
        "data.n_customers=1200", f"data.directory={tmp_path}/data", "data.end=2024-12-31",
        f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"train.report_dir={tmp_path}/evaluate",
        f"as_of={holdout_cutoff}"])
    labels_end = dt.date.fromisoformat(holdout_cutoff) + dt.timedelta(days=90)
    with pytest.raises(UserError, match=f"trained on labels through {labels_end}.*as_of={holdout_cutoff}"):
        run_evaluate(evaluate)
    assert not (tmp_path / "evaluate").exists()

    # A model that cannot learn (one shallow tree on a tiny learning rate) does not take the alias.
    run_train(small_train_settings(tmp_path, "model.n_estimators=1", "model.learning_rate=0.0001",
                                   "model.early_stopping_rounds=0", "model.prior=null", "model.calibration=none"))
    assert str(client.get_model_version_by_alias("churnml-churn", "champion").version) == "1"
    assert "kept the champion" in client.get_model_version("churnml-churn", "2").tags.get("churnml.champion_decision", "") \
        or "kept the champion" in client.get_run(client.get_model_version("churnml-churn", "2").run_id).data.tags["churnml.champion_decision"]
    # The same configuration again is as good: the alias moves to the new version.
    run_train(settings)
    assert str(client.get_model_version_by_alias("churnml-churn", "champion").version) == "3"
    # The champion had seen these holdout labels in its refit: it is judged by its logged figures.
    decision = client.get_run(client.get_model_version("churnml-churn", "3").run_id).data.tags["churnml.champion_decision"]
    assert "trained on labels inside this holdout's window" in decision
    mlflow.set_tracking_uri("")


def test_training_fits_the_prior_once_per_cutoff_and_keeps_no_fit(shop_dataset, monkeypatch):
    import churnml.models.classifier as classifier

    fitted_cutoffs = []
    original = classifier._fit_prior

    def counted(part, cutoff, pnbd=False):
        fitted_cutoffs.append(pd.Timestamp(cutoff))
        return original(part, cutoff, pnbd)

    monkeypatch.setattr(classifier, "_fit_prior", counted)
    plan = dataclasses.replace(PLAN, max_snapshots=5)
    result = train_and_evaluate(shop_dataset, quick_model(prior="pnbd"), plan, progress=False)
    cutoffs = [*map(pd.Timestamp, result.train_cutoffs), pd.Timestamp(result.holdout_cutoff)]
    # The model, its calibration, the CV folds and the refit share one fit of each cutoff.
    assert sorted(fitted_cutoffs) == sorted(cutoffs)
    for model in (result.model, result.refit_model):
        assert not hasattr(model, "population_priors_") and len(model.prior_weights_) == 2
    fitted_cutoffs.clear()
    # Fitted again on the holdout's customers, the prior gives the holdout's figures.
    np.testing.assert_allclose(result.model.predict_proba(result.holdout_table)[:, 1], result.probabilities["model"])
    assert fitted_cutoffs == [pd.Timestamp(result.holdout_cutoff)]


def test_the_holdout_cannot_change_the_prior_of_a_training_cutoff(outcome):
    train, holdout = outcome.train_table, outcome.holdout_table
    latest = train[train["cutoff"] == train["cutoff"].max()]
    template = quick_model(prior="pnbd")
    alone = snapshot_priors(template, latest)
    with_holdout = snapshot_priors(template, latest, holdout)
    (key,) = alone
    assert set(with_holdout) == {key, str(outcome.holdout_cutoff)}
    for model in ("bgnbd", "pnbd"):
        np.testing.assert_array_equal(getattr(with_holdout[key], model).params_, getattr(alone[key], model).params_)
    assert not np.allclose(with_holdout[str(outcome.holdout_cutoff)].pnbd.params_, alone[key].pnbd.params_)
    assert snapshot_priors(quick_model(), latest) is None
