"""``churnml-evaluate``: a registered (or exported) model on another out-of-time holdout."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from churnml.jobs.common import (
    check_output,
    check_tracking,
    configure_tracking,
    engine_connection,
    is_model_uri,
    load_model,
)
from churnml.jobs.train import print_comparison, report_context, training_plan


def require_out_of_time(model: Any, holdout_cutoff: Any, last_date: Any, label: str) -> None:
    """Refuse a holdout inside the window of the labels ``model`` was trained on.

    Parameters
    ----------
    model : ChurnModel
        With ``trained_through_`` (models fitted before it was kept are not checked).
    holdout_cutoff : datetime.date
        The holdout's cutoff (``as_of``).
    last_date : datetime.date
        The data's last date, to say whether an out-of-time holdout exists at all.
    label : str
        The model as named in the message (``churnml-churn v3``).

    Raises
    ------
    churnml.errors.UserError
        If ``holdout_cutoff`` is before :func:`churnml.models.training.labels_through` of ``model``.
    """
    import datetime as dt

    from churnml.errors import UserError
    from churnml.models.training import labels_through

    through = labels_through(model)
    if through is None or holdout_cutoff >= through:
        return
    horizon = int(model.horizon_days)
    if through + dt.timedelta(days=horizon) <= last_date:
        fix = f"pass as_of={through} or later"
    else:
        fix = (f"this data (to {last_date}) holds no later holdout: the out-of-time figures of this version are "
               "those its training run logged; evaluate it again when newer data arrives")
    raise UserError(
        f"{label} was trained on labels through {through} (snapshots to {model.trained_through_}), so a holdout at "
        f"as_of={holdout_cutoff} is inside its training data, not out of time: {fix}, or give model_uri= a version "
        "trained on earlier data")


def run(settings: Mapping[str, Any]) -> dict[str, float]:
    """Evaluate a registered (or exported) model on a holdout cutoff and log it as its own run.

    Raises
    ------
    churnml.errors.UserError
        If the holdout lies inside the model's training labels (:func:`require_out_of_time`).
        Before any work for a model that is missing or damaged, or a report or MLflow location
        that cannot be written; for data that breaks the contract or a holdout date the data
        cannot serve.
    """
    from churnml import tracking
    from churnml.features.build import FeatureConfig
    from churnml.io.files import write_text_atomic
    from churnml.io.sources import data_sources, load_data
    from churnml.models.btyd import uses_bgnbd_features
    from churnml.models.registry import registered_model_uri, registered_name
    from churnml.models.training import add_report, evaluate_model

    uri = settings.get("model_uri") or registered_model_uri(
        registered_name(settings["mlflow"]["registered_model_prefix"], settings["target"]["name"]))
    # The model and the locations first: a missing model or an unwritable place writes nothing, not even an experiment.
    check_tracking(settings["mlflow"], reads_registry=is_model_uri(uri), instead="model_uri=models/<name>")
    check_output(settings["train"]["report_dir"], "train.report_dir", "directory")
    tracking.use_tracking_uri(settings["mlflow"]["tracking_uri"])
    model = load_model(uri, "model_uri")
    mlflow_settings = configure_tracking(settings)
    name, version = tracking.model_version_of(uri)
    plan = training_plan({**settings, "train": {**settings["train"], "calibration_snapshots": 1, "cv_folds": 0,
                                                "bgnbd_features": uses_bgnbd_features(model)}})
    dataset = load_data(settings["data"], con=engine_connection(settings), materialize=True)
    require_out_of_time(model, plan.resolve_holdout(dataset), dataset.last_date, f"{name} v{version}")
    outcome = evaluate_model(dataset, model, plan, FeatureConfig.from_dict(settings["features"]))
    outcome = add_report(outcome, report_context(settings, outcome, f"{name} v{version}"))
    fingerprint = tracking.data_fingerprint(dataset, data_sources(settings["data"]))
    run_id = tracking.log_evaluation(outcome, settings, fingerprint, uri, run_name=f"evaluate-{name}-v{version}")
    report_path = write_text_atomic(outcome.report_html, Path(settings["train"]["report_dir"]) / f"{name}-v{version}-{outcome.holdout_cutoff}.html")
    print_comparison(outcome)
    print(f"MLflow run {run_id} (experiment '{mlflow_settings['experiment']}'); report {report_path}")
    return outcome.metrics
