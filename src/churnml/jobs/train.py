"""``churnml-train``: snapshots, a calibrated model, out-of-time evaluation against the classical
scores, MLflow tracking, the registry and the champion export."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from pathlib import Path
from typing import Any, Mapping

from churnml.jobs.common import check_output, check_tracking, configure_tracking, engine_connection


def build_model(model_settings: Mapping[str, Any], target: str, horizon_days: int):
    """An unfitted ChurnModel around the estimator configured with ``_target_``."""
    from hydra.utils import instantiate

    from churnml.models.classifier import ChurnModel

    return ChurnModel(
        estimator=instantiate(model_settings["estimator"]),
        preprocessing=model_settings["preprocessing"],
        calibration=model_settings["calibration"],
        early_stopping_rounds=int(model_settings["early_stopping_rounds"]),
        prior=model_settings["prior"],
        target=target,
        horizon_days=horizon_days,
    )


def training_plan(settings: Mapping[str, Any]):
    """The :class:`~churnml.models.training.TrainingPlan` of the ``target``, ``as_of`` and ``train`` nodes."""
    from churnml.config import stage_as_of
    from churnml.features.dates import as_date
    from churnml.models.training import TrainingPlan

    train = settings["train"]
    return TrainingPlan(
        target=settings["target"]["name"],
        horizon_days=int(settings["target"]["horizon_days"]),
        holdout_cutoff=as_date(requested) if (requested := stage_as_of(settings)) else None,
        step_days=int(train["step_days"]),
        max_snapshots=int(train["max_snapshots"]),
        min_snapshots=int(train["min_snapshots"]),
        min_history_days=int(train["min_history_days"]),
        calibration_snapshots=int(train["calibration_snapshots"]),
        calibration_fraction=float(train["calibration_fraction"]),
        cv_folds=int(train["cv_folds"]),
        bgnbd_features=bool(train["bgnbd_features"]),
        refit=bool(train["refit"]),
        seasonality=bool(train["seasonality"]),
    )


def report_context(settings: Mapping[str, Any], outcome: Any, model_label: str) -> dict[str, Any]:
    """The facts the HTML report lists above the comparison."""
    return {
        "data": settings["data"]["name"], "target": outcome.plan.target, "horizon_days": outcome.plan.horizon_days,
        "model": model_label, "holdout cutoff": outcome.holdout_cutoff,
        "training cutoffs": f"{outcome.train_cutoffs[0]} .. {outcome.train_cutoffs[-1]} ({len(outcome.train_cutoffs)})",
        "training rows": len(outcome.train_table), "holdout rows": len(outcome.holdout_table),
        "holdout positive rate": round(float(outcome.holdout_table["label"].mean()), 4),
    }


def print_comparison(outcome: Any) -> None:
    """The model against every classical score on the holdout, and the time-based CV, on the console."""
    from churnml.evaluation.metrics import format_comparison

    holdout = outcome.holdout_table
    print(f"\n{outcome.plan.target} within {outcome.plan.horizon_days} days: holdout at {outcome.holdout_cutoff} "
          f"({len(holdout):,} customers, positive rate {holdout['label'].mean():.3f})")
    print(format_comparison(outcome.comparison))
    if "cv_roc_auc_mean" in outcome.metrics:
        print(f"time-based CV ({len(outcome.cv_folds)} folds): ROC AUC {outcome.metrics['cv_roc_auc_mean']:.4f} "
              f"+/- {outcome.metrics['cv_roc_auc_std']:.4f}")


def add_backtest(outcome: Any) -> list[tuple[str, Any, str]]:
    """Backtest the warning rules against the model on the rows the model scored out of sample
    (each time-based CV fold's snapshot, then the holdout): the table goes to ``outcome.backtest``,
    its pooled figures to ``outcome.metrics`` (``backtest_<rule>_...``,
    :func:`churnml.programs.backtest.backtest_metrics`). Returns the report's table (heading,
    table, note), none without scored rows.

    For the repurchase target, churn is no purchase in its horizon: the label and the
    probability are turned around (:func:`churnml.programs.backtest.backtest_frame`).
    """
    from churnml.features.build import WARNING_FLAGS
    from churnml.programs.backtest import (
        REPORT_NOTE,
        REPORT_TITLE,
        backtest_frame,
        backtest_metrics,
        side_by_side,
        warning_backtest,
    )

    scores = outcome.out_of_time_scores
    if scores.empty or not any(flag in scores.columns for flag in WARNING_FLAGS):
        return []
    outcome.backtest = warning_backtest(backtest_frame(scores, outcome.plan.target))
    outcome.metrics.update(backtest_metrics(outcome.backtest))
    return [(REPORT_TITLE, side_by_side(outcome.backtest), REPORT_NOTE)]


def print_backtest(outcome: Any) -> None:
    """The pooled warning-rule backtest on the console: each rule beside the model at its volume."""
    from churnml.evaluation.metrics import format_comparison
    from churnml.programs.backtest import POOLED, side_by_side

    if outcome.backtest.empty:
        return
    pooled = side_by_side(outcome.backtest, pooled_only=True).set_index("rule")
    cutoffs = sorted(c for c in outcome.backtest["cutoff"].unique() if c != POOLED)
    print(f"\nwarning rules against the model at the same alert volume, {len(cutoffs)} out-of-sample cutoffs "
          f"({cutoffs[0]} .. {cutoffs[-1]}); lead days: median from the last purchase to the first alert")
    print(format_comparison(pooled))


def champion_score(outcome: Any, metric: str) -> float:
    """The holdout figure the champion rule compares (``train.champion_metric``).

    Raises
    ------
    churnml.errors.UserError
        If the metric is not one the evaluation computes, or is NaN or infinite on this holdout:
        a version without a finite figure can be neither compared nor promoted.
    """
    from churnml.errors import UserError

    holdout = [name for name in outcome.metrics if name.startswith("holdout_")]
    if metric not in outcome.metrics:
        raise UserError(f"train.champion_metric={metric} is not a metric of the evaluation: use one of {', '.join(holdout)}")
    value = float(outcome.metrics[metric])
    if not math.isfinite(value):
        window = f"({outcome.holdout_cutoff}, {outcome.holdout_cutoff + dt.timedelta(days=outcome.plan.horizon_days)}]"
        raise UserError(f"{metric} is {value} on the holdout at as_of={outcome.holdout_cutoff} (label window {window}, "
                        f"{len(outcome.holdout_table):,} customers): nothing registered; pass another as_of or "
                        "train.champion_metric")
    return value


def check_outputs(settings: Mapping[str, Any]) -> None:
    """Refuse report, export and MLflow locations that cannot be written, before any work."""
    check_tracking(settings["mlflow"])
    check_output(settings["train"]["report_dir"], "train.report_dir", "directory")
    if settings["train"].get("export_dir"):
        check_output(settings["train"]["export_dir"], "train.export_dir", "directory")


def run(settings: Mapping[str, Any]) -> float:
    """Train, evaluate, track and register one target's model; return the sweep objective.

    In a sweep that chooses by its objective (:mod:`churnml.jobs.sweep`) this is one trial
    (:func:`run_trial`): tracked, not registered.
    """
    from churnml.jobs.sweep import is_sweep_trial

    return run_trial(settings) if is_sweep_trial() else train_and_register(settings)


def train_and_register(settings: Mapping[str, Any]) -> float:
    """Train, evaluate, track and register one target's model, move the champion alias when the
    rule says so and export the champion; return the sweep objective (``train.objective``).

    Raises
    ------
    churnml.errors.UserError
        Before any work for a report, export or MLflow location that cannot be written; for
        data that breaks the contract or a holdout date the data cannot serve; if the holdout
        has a single class or the champion metric is not finite on it: nothing is logged,
        registered or exported.
    """
    from churnml import tracking
    from churnml.features.build import FeatureConfig
    from churnml.io.files import write_text_atomic
    from churnml.io.sources import data_sources, load_data
    from churnml.models.registry import registered_name
    from churnml.models.training import add_report, train_and_evaluate

    check_outputs(settings)
    plan = training_plan(settings)
    dataset = load_data(settings["data"], con=engine_connection(settings), materialize=True)
    template = build_model(settings["model"], plan.target, plan.horizon_days)
    outcome = train_and_evaluate(dataset, template, plan, FeatureConfig.from_dict(settings["features"]))
    champion_score(outcome, settings["train"]["champion_metric"])
    tables = add_backtest(outcome)
    outcome = add_report(outcome, report_context(settings, outcome, settings["model"]["name"]), tables)
    mlflow_settings = configure_tracking(settings)
    fingerprint = tracking.data_fingerprint(dataset, data_sources(settings["data"]))
    name = registered_name(mlflow_settings["registered_model_prefix"], plan.target)
    run_name = f"train-{plan.target}-{settings['model']['name']}-{settings['data']['name']}"
    registered = tracking.log_training(outcome, settings, fingerprint, name, settings["train"]["champion_metric"], run_name)
    report_path = Path(settings["train"]["report_dir"]) / f"{name}-v{registered.version}.html"
    write_text_atomic(outcome.report_html, report_path)
    exported = tracking.export_model(name, settings["train"]["export_dir"]) if settings["train"].get("export_dir") else None

    print_comparison(outcome)
    print_backtest(outcome)
    if outcome.tabulation_note:
        print(f"warning: {outcome.tabulation_note}")
    print(f"MLflow run {registered.run_id} (experiment '{mlflow_settings['experiment']}', {mlflow_settings['tracking_uri']})")
    print(f"model {registered.model_uri}; {registered.champion_reason}")
    print(f"report {report_path}" + (f"; champion exported to {exported}" if exported else ""))
    return float(outcome.metrics.get(settings["train"]["objective"], float("nan")))


def run_trial(settings: Mapping[str, Any]) -> float:
    """One trial of a sweep: train without the refit, log the config and the time-based CV (no
    holdout figures, no model), register nothing; return the objective (``train.objective``)."""
    from churnml import tracking
    from churnml.features.build import FeatureConfig
    from churnml.io.sources import data_sources, load_data
    from churnml.models.training import train_and_evaluate

    plan = dataclasses.replace(training_plan(settings), refit=False)
    objective = settings["train"]["objective"]
    dataset = load_data(settings["data"], con=engine_connection(settings), materialize=True)
    template = build_model(settings["model"], plan.target, plan.horizon_days)
    outcome = train_and_evaluate(dataset, template, plan, FeatureConfig.from_dict(settings["features"]))
    mlflow_settings = configure_tracking(settings)
    fingerprint = tracking.data_fingerprint(dataset, data_sources(settings["data"]))
    run_name = f"trial-{plan.target}-{settings['model']['name']}-{settings['data']['name']}"
    run_id = tracking.log_trial(outcome, settings, fingerprint, objective, run_name)
    value = float(outcome.metrics.get(objective, float("nan")))
    print(f"trial: {objective}={value:.4f}; MLflow run {run_id} (experiment '{mlflow_settings['experiment']}'); "
          "registered only if chosen when the sweep ends")
    return value
