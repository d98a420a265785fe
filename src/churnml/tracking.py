"""MLflow: runs, the model registry, the champion alias, loading and exporting models.

This is the only module that imports mlflow.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import pandas as pd

from churnml.evaluation.metrics import best_classical_scorers
from churnml.io.files import (
    file_fingerprint,
    move_into_place,
    neutralise_formulas,
    remove_stale_temporaries,
    temporary_path,
)
from churnml.io.load import Dataset
from churnml.models import persistence
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


# MLflow accepts these characters in metric and param names (and no "..", no leading "/").
_KEY_CHARACTER = re.compile(r"[^0-9A-Za-z_\-. /]")
MAX_KEY_LENGTH = 250


def mlflow_key(name: str) -> str:
    """``name`` as an MLflow metric or param name: characters MLflow refuses become ``_`` (a
    customers column ``age (years)`` gives ``age _years_``), ``..`` becomes ``._``, a leading
    ``/`` is dropped, and the name is cut to 250 characters."""
    key = _KEY_CHARACTER.sub("_", str(name))
    while ".." in key:
        key = key.replace("..", "._")
    return key.lstrip("/")[:MAX_KEY_LENGTH] or "_"


def mlflow_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` under :func:`mlflow_key` names; names that collide once sanitised get ``_2``,
    ``_3``... in order."""
    keyed: dict[str, Any] = {}
    for name, value in values.items():
        key = mlflow_key(name)
        if key in keyed:
            stem, count = key[:MAX_KEY_LENGTH - 6], 2
            while f"{stem}_{count}" in keyed:
                count += 1
            key = f"{stem}_{count}"
        keyed[key] = value
    return keyed


def _log_params(settings: Mapping[str, Any]) -> None:
    import mlflow

    params = mlflow_keys({k: ("null" if v is None else str(v))[:500] for k, v in flatten(settings).items()})
    items = list(params.items())
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start:start + 100]))


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return mlflow_keys({k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))})


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
    with mlflow.start_run(run_name=run_name) as run, tempfile.TemporaryDirectory(prefix="churnml-model-") as scratch:
        _log_outcome(outcome, settings, fingerprint, stage="train")
        # The model is stored as data and loaded by churnml's own code (persistence), not pickled.
        data = persistence.save_model(model, Path(scratch) / persistence.DATA_NAME)
        with _without_example_prior_warnings():
            info = mlflow.pyfunc.log_model(
                name="model",
                loader_module=persistence.LOADER_MODULE,
                data_path=str(data),
                signature=signature,
                input_example=_signature_frame(example),
                pip_requirements=persistence.requirements(),
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


@contextmanager
def _without_example_prior_warnings() -> Iterator[None]:
    """Drop the classifier's BTYD prior warnings while MLflow logs a model.

    MLflow checks the input example by predicting its 5 rows alone, without a ``cutoff``: a
    model boosted from a prior fits it on those 5 customers and warns that they are too few.
    The warning would be about the example, not the user's data; the signature is made from the
    scores of the whole holdout.
    """
    classifier_log = logging.getLogger("churnml.models.classifier")

    def keep(record: logging.LogRecord) -> bool:
        return not any(prior in record.getMessage() for prior in ("BTYD prior", "BG/NBD prior", "Pareto/NBD prior"))

    classifier_log.addFilter(keep)
    try:
        yield
    finally:
        classifier_log.removeFilter(keep)


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
    if not outcome.backtest.empty:
        mlflow.log_text(outcome.backtest.to_csv(index=False), "evaluation/backtest.csv")
    for name, figure in outcome.figures.items():
        mlflow.log_figure(figure, f"plots/{name}.png")
    if outcome.report_html:
        mlflow.log_text(outcome.report_html, "evaluation/report.html")


def log_trial(outcome: Any, settings: Mapping[str, Any], fingerprint: Mapping[str, Any], objective: str,
              run_name: str | None = None) -> str:
    """Log one trial of a sweep that chooses by ``objective`` (a time-based CV score): config,
    data fingerprint, params and the CV, tagged ``churnml.stage=train-trial``; return the run id.

    No holdout figure is logged and nothing is registered: the sweep registers its chosen trial
    alone, trained again (:mod:`churnml.jobs.sweep`), so that the holdout is never what chooses.
    """
    import mlflow

    model: ChurnModel = outcome.model
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.set_tags({"churnml.stage": "train-trial", "churnml.target": model.target,
                         "churnml.horizon_days": str(model.horizon_days), "churnml.objective": objective})
        mlflow.log_dict(dict(settings), "config.json")
        mlflow.log_dict(dict(fingerprint), "data_fingerprint.json")
        _log_params(settings)
        mlflow.log_metrics(_finite({k: v for k, v in outcome.metrics.items() if k.startswith("cv_")}))
        if not outcome.cv_folds.empty:
            mlflow.log_text(outcome.cv_folds.to_csv(index=False), "evaluation/cv_folds.csv")
        return run.info.run_id


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


def is_at_least_as_good(new_score: float | None, champion_score: float | None) -> bool:
    """The champion rule: the new version wins ties, and wins when there is nothing to compare.

    A score that is missing or NaN loses: a new version without a finite score never wins (not
    even against no champion or a champion without one), and a champion without one loses to any
    new version with one.
    """
    if new_score is None or not math.isfinite(new_score):
        return False
    if champion_score is None or not math.isfinite(champion_score):
        return True
    return new_score >= champion_score


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
    logged = MlflowClient().get_run(current.run_id).data.metrics.get(metric)
    try:
        champion = load_model(registered_model_uri(name))
    except persistence.ModelFormatError:
        champion = None
    if champion is None:
        champion_score, basis = logged, "as logged (the champion is stored in a format churnml no longer loads)"
    elif not _out_of_time(champion, outcome.holdout_cutoff):
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
    shown = f"{float(champion_score):.4f}" if champion_score is not None else "none"
    return promote, f"{verdict}: new {metric}={new_score:.4f} vs champion v{current.version} {shown} {basis}"


def _out_of_time(model: ChurnModel, holdout_cutoff: Any) -> bool:
    """Whether every label ``model`` was trained on closed by ``holdout_cutoff`` (models fitted
    before ``trained_through_`` was kept count as out of time)."""
    from churnml.models.training import labels_through

    through = labels_through(model)
    return through is None or through <= holdout_cutoff


def load_model(uri: str, tracking_uri: str | None = None) -> ChurnModel:
    """A ChurnModel from ``models:/name@alias``, ``models:/name/version``, ``runs:/...`` or an
    exported directory (``models/churnml-churn``), read as data: nothing in it is unpickled or
    run (:mod:`churnml.models.persistence`).

    ``tracking_uri`` (e.g. ``sqlite:///mlflow.db``) is where the registry is read from; an
    exported directory needs none.

    Raises
    ------
    churnml.errors.UserError
        When the registry has no such model, version or alias.
    churnml.models.persistence.ModelFormatError
        If there is no such directory, or it (or the registered version) holds anything but
        the data files of a churnml model: a pickle of an older churnml version, an unknown
        file, a file that does not parse; the message names the file.
    """
    if Path(uri).exists() or "://" not in uri and not uri.startswith(("models:/", "runs:/")):
        return persistence.load_model(Path(uri).resolve() if Path(uri).exists() else uri, source=uri)
    import mlflow
    from mlflow.exceptions import MlflowException

    if tracking_uri:
        use_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="churnml-model-") as scratch:
        try:
            with _quiet_downloads():
                local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=scratch)
        except MlflowException as error:
            raise _missing_model(uri, error) from error
        return persistence.load_model(local, source=uri)


@contextmanager
def _quiet_downloads() -> Iterator[None]:
    """MLflow without its download progress bars: a model of a few files loads in a blink, and
    the bars would stand on stderr before a stage's one-line refusal."""
    import os

    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous


def save_model_directory(model: ChurnModel, path: str | Path) -> Path:
    """Write ``model`` as a model directory at ``path`` (which must not exist): MLflow's format,
    a ``python_function`` model whose data churnml stores and loads itself
    (:mod:`churnml.models.persistence`), as the registry holds it, without the signature and
    input example a training run adds. ``load_model(path)`` reads it back."""
    import mlflow.pyfunc

    with tempfile.TemporaryDirectory(prefix="churnml-model-") as scratch:
        data = persistence.save_model(model, Path(scratch) / persistence.DATA_NAME)
        mlflow.pyfunc.save_model(str(path), loader_module=persistence.LOADER_MODULE, data_path=str(data),
                                 pip_requirements=persistence.requirements())
    return Path(path)


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


def require_alias(name: str, alias: str = CHAMPION) -> str:
    """The version ``alias`` points at in registered model ``name``.

    Raises
    ------
    churnml.errors.UserError
        When the registry has no such model or alias.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException as error:
        raise _missing_model(f"models:/{name}@{alias}", error) from error


def export_model(name: str, directory: str | Path, alias: str = CHAMPION) -> Path:
    """Copy the aliased version of a registered model into ``directory/name`` (MLflow format,
    with ``churnml.json`` naming the version), for batch jobs that cannot reach the tracking
    server.

    The copy is written beside the target, checked as scoring would load it, and swapped in by
    rename (:func:`churnml.io.files.move_into_place`): the old directory is never deleted
    first, so ``directory/name`` is at every moment a complete model. Temporaries of exports
    that were killed are removed.

    Raises
    ------
    churnml.errors.UserError
        When the registry has no such model or alias.
    churnml.models.persistence.ModelFormatError
        If the registered version is stored in a format churnml does not load (a pickle of an
        older churnml): nothing is exported.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        version = MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as error:
        raise _missing_model(f"models:/{name}@{alias}", error) from error
    target = Path(directory) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    staging = temporary_path(target)
    try:
        # The version, not the alias: the alias may move while this runs.
        uri = f"models:/{name}/{version.version}"
        with _quiet_downloads():
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(staging))
        (staging / "churnml.json").write_text(json.dumps({"name": name, "version": str(version.version), "alias": alias,
                                                            "run_id": version.run_id}, indent=2))
        persistence.load_model(staging, source=uri)
        move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
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
            # Feature names are the user's column names: neutralised like any CSV churnml writes.
            table = neutralise_formulas(values.rename_axis("feature").to_frame("psi").reset_index())
            mlflow.log_text(table.to_csv(index=False), f"drift/psi_{target}.csv")
        mlflow.log_metrics(_finite(metrics))
        client = MlflowClient()
        for target, model in models.items():
            if _registered_version(model.name, model.version) is not None:
                client.set_model_version_tag(model.name, model.version, LAST_SCORING_RUN_TAG, run.info.run_id)
            else:
                log.warning("%s model %s v%s is not in the registry at %s: no %s tag set", target, model.name,
                            model.version, mlflow.get_tracking_uri(), LAST_SCORING_RUN_TAG)
        return run.info.run_id


def log_kpis(
    settings: Mapping[str, Any],
    periods: pd.DataFrame,
    progress: pd.DataFrame,
    output_dir: str | Path,
    figures: Mapping[str, Any] | None = None,
    fingerprint: Mapping[str, Any] | None = None,
    run_name: str | None = None,
) -> str:
    """Track a KPI run: config, data fingerprint, params, the period KPIs and target progress as
    metrics, the figures, and every file of ``output_dir`` (tables and dashboard) under ``kpis/``;
    return the run id.

    Metrics are named ``<period>.<by>.<group>.<kpi>`` (``current.all.all.churn_rate``,
    ``baseline.tier.core.repurchase_rate``) and ``target.<name>.<achieved|progress|met>``;
    values that are not finite (a KPI without data) are left out. Group names come from the
    user's data and are sanitised (:func:`mlflow_key`).
    """
    import mlflow

    figures = figures or {}
    kpi_columns = [c for c in ("repurchase_rate", "churn_rate", "aov", "clv", "nps", "csat", "ces", "active_start",
                               "customers") if c in periods.columns]
    metrics: dict[str, float] = {}
    for row in periods.itertuples(index=False):
        for kpi in kpi_columns:
            value = getattr(row, kpi)
            if value is not None and not pd.isna(value):
                metrics[f"{row.period}.{row.by}.{row.group}.{kpi}"] = float(value)
    for row in progress.itertuples(index=False):
        metrics[f"target.{row.target}.achieved"] = row.achieved
        metrics[f"target.{row.target}.progress"] = row.progress
        metrics[f"target.{row.target}.met"] = float(row.met)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.set_tags({"churnml.stage": "kpis", "churnml.as_of": str(settings.get("as_of")),
                         # Where the tables end up (output_dir may be the directory they are staged in).
                         "churnml.output": str((settings.get("kpis") or {}).get("output_dir") or output_dir),
                         "churnml.targets_met": f"{int(progress['met'].sum())}/{len(progress)}"})
        mlflow.log_dict(dict(settings), "config.json")
        if fingerprint is not None:
            mlflow.log_dict(dict(fingerprint), "data_fingerprint.json")
        _log_params(settings)
        mlflow.log_metrics(_finite(metrics))
        for name, figure in figures.items():
            mlflow.log_figure(figure, f"plots/{mlflow_key(name).replace(' ', '_')}.png")
        mlflow.log_artifacts(str(output_dir), "kpis")
        return run.info.run_id


def log_experiment(
    settings: Mapping[str, Any],
    lifts: pd.DataFrame,
    srm: pd.DataFrame,
    targeting: pd.DataFrame | None,
    output_dir: str | Path,
    figures: Mapping[str, Any] | None = None,
    fingerprint: Mapping[str, Any] | None = None,
    run_name: str | None = None,
) -> str:
    """Track a campaign evaluation: config, data fingerprint, params, the lifts, sample-ratio
    checks and targeting comparison as metrics, the figures, and every file of ``output_dir``
    (tables, report, uplift model) under ``experiment/``; return the run id.

    Metrics are named ``<campaign>.<metric>.<estimator>.<lift|lift_ci_lower|lift_ci_upper|pvalue>``
    (``retention_2025_09.repurchase_rate.cuped.lift``), ``<campaign>.srm_pvalue`` and
    ``uplift.<targeting>.qini_coefficient``; campaign names come from the user's data and are
    sanitised (:func:`mlflow_keys`); values that are not finite are left out.
    """
    import mlflow

    metrics: dict[str, float] = {}
    for row in lifts.itertuples(index=False):
        for name in ("lift", "lift_ci_lower", "lift_ci_upper", "relative_lift", "pvalue"):
            value = getattr(row, name)
            if value is not None and not pd.isna(value):
                metrics[f"{row.campaign}.{row.metric}.{row.estimator}.{name}"] = float(value)
    for row in srm.itertuples(index=False):
        metrics[f"{row.campaign}.srm_pvalue"] = float(row.pvalue)
    if targeting is not None:
        for row in targeting.itertuples(index=False):
            metrics[f"uplift.{row.targeting}.qini_coefficient"] = float(row.qini_coefficient)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.set_tags({"churnml.stage": "experiment", "churnml.as_of": str(settings.get("as_of")),
                         # Where the tables end up (output_dir may be the directory they are staged in).
                         "churnml.output": str((settings.get("experiment") or {}).get("output_dir") or output_dir),
                         "churnml.srm_mismatches": str(int(srm["mismatch"].sum()))})
        mlflow.log_dict(dict(settings), "config.json")
        if fingerprint is not None:
            mlflow.log_dict(dict(fingerprint), "data_fingerprint.json")
        _log_params(settings)
        mlflow.log_metrics(_finite(mlflow_keys(metrics)))
        for name, figure in (figures or {}).items():
            mlflow.log_figure(figure, f"plots/{mlflow_key(name).replace(' ', '_')}.png")
        mlflow.log_artifacts(str(output_dir), "experiment")
        return run.info.run_id
