"""MLflow: runs, the model registry, the champion alias, loading and exporting models.

This is the only module that imports mlflow.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from churnml.evaluation.metrics import best_classical_scorers
from churnml.io.files import file_fingerprint
from churnml.io.load import Dataset
from churnml.models.classifier import ChurnModel, FeatureMismatchError
from churnml.models.registry import CHAMPION, registered_model_uri

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class RegisteredModel:
    """Where a training run and its model ended up."""

    run_id: str
    experiment_id: str
    name: str
    version: str
    model_uri: str
    champion: bool
    champion_reason: str


def configure(tracking_uri: str, experiment: str, artifact_root: str | None = None) -> str:
    """Point MLflow at ``tracking_uri`` and return the experiment id (created if missing)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        mlflow.set_experiment(experiment_id=found.experiment_id)
        return found.experiment_id
    location = Path(artifact_root).resolve().as_uri() if artifact_root else None
    experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config as ``a.b.c`` keys, for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def data_fingerprint(dataset: Dataset, sources: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Row counts, date range, cleaning counts and a content hash of each input file."""
    fingerprint: dict[str, Any] = {}
    for name, report in dataset.reports.items():
        entry = report.as_dict()
        source = (sources or {}).get(name)
        path = getattr(source, "path", None)
        if path and Path(path).exists():
            entry["content_hash"] = file_fingerprint(path)
        elif getattr(source, "frame", None) is not None:
            entry["content_hash"] = str(pd.util.hash_pandas_object(source.frame, index=False).sum())
        fingerprint[name] = entry
    return fingerprint


def _log_params(settings: Mapping[str, Any]) -> None:
    import mlflow

    params = {k: ("null" if v is None else str(v))[:500] for k, v in flatten(settings).items()}
    items = list(params.items())
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start:start + 100]))


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def log_training(
    outcome: Any,
    settings: Mapping[str, Any],
    fingerprint: Mapping[str, Any],
    registered_name: str,
    champion_metric: str = "holdout_roc_auc",
    run_name: str | None = None,
) -> RegisteredModel:
    """Log a training run (config, data fingerprint, params, metrics, plots, report, model),
    register the model, and move the champion alias when the new version is at least as good."""
    import mlflow
    from mlflow.models import infer_signature

    model: ChurnModel = outcome.deployed_model
    example = outcome.holdout_table.head(5)
    # The example's prior comes from the whole holdout population, as when it was scored.
    example_output = model.with_population_prior(outcome.holdout_table).predict_proba(example)
    example = example[model.feature_names_in_]
    signature = infer_signature(_signature_frame(example), example_output)
    with mlflow.start_run(run_name=run_name) as run:
        _log_outcome(outcome, settings, fingerprint, stage="train")
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            serialization_format="cloudpickle",
            signature=signature,
            input_example=_signature_frame(example),
            pyfunc_predict_fn="predict_proba",
            registered_model_name=registered_name,
        )
        version = str(info.registered_model_version)
        if outcome.refit_model is not None:
            # The registered model was refit on the holdout's labels: its figures are its evaluated twin's.
            mlflow.set_tag("churnml.refit_through", str(outcome.holdout_cutoff))
        promote, reason = _champion_decision(registered_name, outcome, champion_metric)
        mlflow.set_tag("churnml.champion_decision", reason)
        if promote:
            from mlflow import MlflowClient

            MlflowClient().set_registered_model_alias(registered_name, CHAMPION, version)
        return RegisteredModel(
            run_id=run.info.run_id,
            experiment_id=run.info.experiment_id,
            name=registered_name,
            version=version,
            model_uri=f"models:/{registered_name}/{version}",
            champion=promote,
            champion_reason=reason,
        )


def _log_outcome(outcome: Any, settings: Mapping[str, Any], fingerprint: Mapping[str, Any], stage: str) -> None:
    """Config, data fingerprint, params, metrics, tables, plots and the report of an evaluation."""
    import mlflow

    model: ChurnModel = outcome.model
    mlflow.set_tags({"churnml.stage": stage, "churnml.target": model.target,
                     "churnml.horizon_days": str(model.horizon_days)})
    mlflow.log_dict(dict(settings), "config.json")
    mlflow.log_dict(dict(fingerprint), "data_fingerprint.json")
    _log_params(settings)
    mlflow.log_params({"holdout_cutoff": str(outcome.holdout_cutoff),
                       "train_cutoffs": ",".join(map(str, outcome.train_cutoffs))[:500],
                       "train_rows": len(outcome.train_table), "holdout_rows": len(outcome.holdout_table),
                       "n_features": model.n_features_in_})
    mlflow.log_metrics(_finite(outcome.metrics))
    mlflow.set_tags(best_classical_scorers(outcome.comparison))
    mlflow.log_text(outcome.comparison.to_csv(), "evaluation/comparison.csv")
    if not outcome.cv_folds.empty:
        mlflow.log_text(outcome.cv_folds.to_csv(index=False), "evaluation/cv_folds.csv")
    for name, figure in outcome.figures.items():
        mlflow.log_figure(figure, f"plots/{name}.png")
    if outcome.report_html:
        mlflow.log_text(outcome.report_html, "evaluation/report.html")


def log_evaluation(
    outcome: Any, settings: Mapping[str, Any], fingerprint: Mapping[str, Any], model_uri: str, run_name: str | None = None
) -> str:
    """Log an evaluation of an already registered model as its own run, linked to the model version."""
    import mlflow

    name, version = model_version_of(model_uri)
    with mlflow.start_run(run_name=run_name) as run:
        _log_outcome(outcome, settings, fingerprint, stage="evaluate")
        mlflow.set_tags({"churnml.model_name": name, "churnml.model_version": version, "churnml.model_uri": model_uri})
        return run.info.run_id


def _signature_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns as plain objects and flags as floats: types MLflow's schema inference knows."""
    converted = {}
    for name in frame.columns:
        column = frame[name]
        if pd.api.types.is_bool_dtype(column.dtype) or pd.api.types.is_numeric_dtype(column.dtype):
            converted[name] = column.astype("float64")
        else:
            converted[name] = column.astype(object)
    return pd.DataFrame(converted, index=frame.index)


def is_at_least_as_good(new_score: float, champion_score: float | None) -> bool:
    """The champion rule: the new version wins ties, and wins when there is nothing to compare."""
    if champion_score is None or not math.isfinite(champion_score):
        return True
    return math.isfinite(new_score) and new_score >= champion_score


def _champion_decision(name: str, outcome: Any, metric: str) -> tuple[bool, str]:
    """Compare with the current champion on the same holdout rows when it can score them."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from churnml.evaluation.metrics import binary_metrics

    new_score = float(outcome.metrics[metric])
    try:
        current = MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return True, f"no champion yet: version promoted ({metric}={new_score:.4f})"
    champion = load_model(registered_model_uri(name))
    logged = MlflowClient().get_run(current.run_id).data.metrics.get(metric)
    if not _out_of_time(champion, outcome.holdout_cutoff):
        champion_score, basis = logged, "as logged (the champion was trained on labels inside this holdout's window)"
    else:
        try:
            probability = champion.predict_proba(outcome.holdout_table)[:, 1]
            scores = binary_metrics(outcome.holdout_table["label"].to_numpy(), probability)
            champion_score, basis = float(scores[metric.removeprefix("holdout_")]), "on the same holdout rows"
        except FeatureMismatchError:
            champion_score, basis = logged, "as logged (the champion cannot score the new feature table)"
    promote = is_at_least_as_good(new_score, champion_score)
    verdict = "promoted" if promote else "kept the champion"
    return promote, f"{verdict}: new {metric}={new_score:.4f} vs champion v{current.version} {champion_score} {basis}"


def _out_of_time(model: ChurnModel, holdout_cutoff: Any) -> bool:
    """Whether every label ``model`` was trained on closed by ``holdout_cutoff`` (models fitted
    before ``trained_through_`` was kept count as out of time)."""
    import datetime as dt

    through = getattr(model, "trained_through_", None)
    return through is None or through + dt.timedelta(days=int(model.horizon_days)) <= holdout_cutoff


def load_model(uri: str, tracking_uri: str | None = None) -> ChurnModel:
    """A ChurnModel from ``models:/name@alias``, ``models:/name/version``, ``runs:/...`` or an
    exported directory (``models/churnml-churn``).

    ``tracking_uri`` (e.g. ``sqlite:///mlflow.db``) is where the registry is read from; an
    exported directory needs none.

    Raises
    ------
    churnml.errors.UserError
        When the registry has no such model, version or alias.
    """
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException

    if tracking_uri and not Path(uri).exists():
        use_tracking_uri(tracking_uri)
    if Path(uri).exists():
        uri = str(Path(uri).resolve())
    try:
        model = mlflow.sklearn.load_model(uri)
    except MlflowException as error:
        raise _missing_model(uri, error) from error
    if not isinstance(model, ChurnModel):
        raise TypeError(f"{uri} holds a {type(model).__name__}, not a churnml model")
    return model


_NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def _missing_model(uri: str, error: Exception) -> Exception:
    """A UserError for a model the registry does not have; other MLflow errors as they are."""
    import mlflow

    from churnml.errors import UserError

    if getattr(error, "error_code", None) not in _NOT_FOUND_CODES:
        return error
    return UserError(f"the MLflow registry at {mlflow.get_tracking_uri()} has no {uri} ({error}): run make train "
                     f"to register it, or set the model URI (or score.model_dir) to a model that exists")


def model_version_of(uri: str) -> tuple[str, str]:
    """Registered name and version behind a ``models:/`` URI, or (directory name, exported version)."""
    path = Path(uri)
    if path.exists():
        meta = path / "churnml.json"
        if meta.exists():
            info = json.loads(meta.read_text())
            return info["name"], str(info["version"])
        return path.name, "local"
    from mlflow import MlflowClient

    rest = uri.removeprefix("models:/")
    client = MlflowClient()
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias).version)
    name, version = rest.split("/", 1)
    return name, version


def export_model(name: str, directory: str | Path, alias: str = CHAMPION) -> Path:
    """Copy the aliased version of a registered model into ``directory/name`` (MLflow format),
    for batch jobs that cannot reach the tracking server.

    Raises
    ------
    churnml.errors.UserError
        When the registry has no such model or alias.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        version = MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as error:
        raise _missing_model(f"models:/{name}@{alias}", error) from error
    target = Path(directory) / name
    staging = Path(directory) / f".{name}.export"
    shutil.rmtree(staging, ignore_errors=True)
    mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}@{alias}", dst_path=str(staging))
    (staging / "churnml.json").write_text(json.dumps({"name": name, "version": str(version.version), "alias": alias,
                                                        "run_id": version.run_id}, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def use_tracking_uri(tracking_uri: str) -> None:
    """Point MLflow at ``tracking_uri`` for reading runs and the registry (no experiment is created)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)


def model_run_id(name: str, alias: str = CHAMPION) -> str:
    """The id of the run that logged the version of ``name`` the alias points to."""
    from mlflow import MlflowClient

    return MlflowClient().get_model_version_by_alias(name, alias).run_id


def log_report_to_model_run(model_name: str, alias: str, path: str | Path, artifact_dir: str = "notebooks") -> str:
    """Attach a report file (an executed notebook, for example) to the run that logged
    ``models:/<model_name>@<alias>``, under ``artifact_dir``; return the run id."""
    from mlflow import MlflowClient

    run_id = model_run_id(model_name, alias)
    MlflowClient().log_artifact(run_id, str(path), artifact_path=artifact_dir)
    return run_id


@dataclass(frozen=True)
class ScoredModel:
    """A model a scoring run used: where it was loaded from and its registered name and version."""

    uri: str
    name: str
    version: str


LAST_SCORING_RUN_TAG = "churnml.last_scoring_run"


def _registered_version(name: str, version: str) -> Any | None:
    """The registry's model version, or None when it is not registered (e.g. a copied directory)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_model_version(name, version)
    except MlflowException:
        return None


def log_scoring(
    settings: Mapping[str, Any],
    models: Mapping[str, ScoredModel],
    summary: Mapping[str, Any],
    output_path: str | Path,
    psi: Mapping[str, pd.Series] | None = None,
    drift_threshold: float = 0.2,
    fingerprint: Mapping[str, Any] | None = None,
    run_name: str | None = None,
) -> str:
    """Track a scoring run and tag each registered model version with it; return the run id.

    Parameters
    ----------
    settings : mapping
        The resolved stage config (logged as ``config.json``; ``as_of`` should hold the date
        actually scored).
    models : mapping of str to ScoredModel
        The model used for each target (``churn``, ``repurchase``).
    summary : mapping
        :func:`churnml.scoring.summary.summarize` output: rows, band counts, mean probabilities, actions
        and top reasons.
    output_path : str or Path
        Where the scores were written (tag ``churnml.output``).
    psi : mapping of str to pandas.Series, optional
        PSI by feature (and ``model_score``) for each target whose model has a reference profile;
        logged as metrics ``psi.<target>.<feature>`` and as ``drift/psi_<target>.csv``.
    drift_threshold : float
        Features above it are named in the tag ``churnml.drifted_features``.
    fingerprint : mapping, optional
        Data fingerprint, logged as ``data_fingerprint.json``.
    run_name : str, optional
    """
    import mlflow
    from mlflow import MlflowClient

    from churnml.evaluation.drift import drifted

    psi = psi or {}
    score_settings = settings.get("score", {})
    with mlflow.start_run(run_name=run_name) as run:
        tags = {"churnml.stage": "score", "churnml.output": str(output_path),
                "churnml.as_of": str(settings.get("as_of"))}
        params: dict[str, Any] = {"as_of": str(settings.get("as_of")),
                                  "format": str(score_settings.get("format", "parquet"))}
        for target, model in models.items():
            params[f"{target}_model_uri"] = model.uri[:500]
            params[f"{target}_model_version"] = model.version
            tags[f"churnml.{target}_model"] = f"{model.name}/{model.version}"
            registered = _registered_version(model.name, model.version)
            if registered is not None and registered.run_id:
                tags[f"churnml.{target}_model_run_id"] = registered.run_id
        alerts = []
        for target, values in psi.items():
            alerts += [f"{target}:{name}={value:.3f}" for name, value in drifted(values, drift_threshold).items()]
        tags["churnml.drifted_features"] = ", ".join(alerts)[:5000] if alerts else "none"
        mlflow.set_tags(tags)
        mlflow.log_params(params)
        mlflow.log_dict(dict(settings), "config.json")
        if fingerprint is not None:
            mlflow.log_dict(dict(fingerprint), "data_fingerprint.json")
        mlflow.log_dict(dict(summary), "scoring/summary.json")
        metrics = {"rows": summary["rows"],
                   "mean_churn_probability": summary["mean_churn_probability"],
                   "mean_repurchase_probability": summary["mean_repurchase_probability"]}
        metrics.update({f"rows_{band}": count for band, count in summary["bands"].items()})
        for target, values in psi.items():
            metrics.update({f"psi.{target}.{name}": value for name, value in values.items()})
            mlflow.log_text(values.rename_axis("feature").to_frame("psi").to_csv(), f"drift/psi_{target}.csv")
        mlflow.log_metrics(_finite(metrics))
        client = MlflowClient()
        for target, model in models.items():
            if _registered_version(model.name, model.version) is not None:
                client.set_model_version_tag(model.name, model.version, LAST_SCORING_RUN_TAG, run.info.run_id)
            else:
                log.warning("%s model %s v%s is not in the registry at %s: no %s tag set", target, model.name,
                            model.version, mlflow.get_tracking_uri(), LAST_SCORING_RUN_TAG)
        return run.info.run_id
