"""Command-line stages: thin Hydra apps that read config and call the library.

This is the only module that sees a Hydra ``DictConfig``; each stage turns it into a plain dict
and hands it to a ``run_*`` function that can be called from Python as well.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("churnml")

CONFIG_PATH = str(Path(__file__).resolve().parents[2] / "conf")


def settings_from(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


def engine_connection(settings: Mapping[str, Any]) -> Any:
    """The query engine of ``settings['engine']`` (duckdb or spark, with ``settings['spark']`` options)."""
    from churnml.io import connect

    engine = settings.get("engine", "duckdb")
    return connect(engine, **(settings.get("spark") or {})) if engine == "spark" else connect(engine)


def run_features(settings: Mapping[str, Any]) -> str:
    """Build the feature table at ``settings['cutoff']`` and write it to Parquet.

    DuckDB writes one file; Spark a directory of part files, through Hadoop's FileSystem (so
    ``hdfs://`` paths work). Either is written beside its place and renamed into it.
    """
    import pyarrow.dataset

    from churnml.datasets import load_data
    from churnml.features import FeatureConfig, as_date, build_features
    from churnml.io import write_table_atomic

    con = engine_connection(settings)
    dataset = load_data(settings["data"], con=con)
    cutoff = as_date(settings["cutoff"]) if settings.get("cutoff") else dataset.last_date
    if not dataset.first_date <= cutoff:
        raise ValueError(f"cutoff {cutoff} is before the first transaction ({dataset.first_date})")
    table = build_features(dataset, cutoff, FeatureConfig.from_dict(settings["features"]))
    output = settings["features"].get("output") or f"outputs/features/{settings['data']['name']}/cutoff={cutoff}/features.parquet"
    # Counting the written rows, not the query, so the engine does not compute the features twice.
    if con.name == "pyspark":
        from churnml.spark import spark_frame, write_atomic

        frame = spark_frame(con, table)
        path = write_atomic(frame, str(output))
        n_rows = frame.sparkSession.read.parquet(path).count()
    else:
        path = str(write_table_atomic(table, output))
        n_rows = pyarrow.dataset.dataset(path).count_rows()
    log.info("wrote %s customers x %s columns at cutoff %s to %s", f"{n_rows:,}", len(table.columns), cutoff, path)
    return path


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="features")
def features_app(cfg: DictConfig) -> None:
    run_features(settings_from(cfg))


def build_model(model_settings: Mapping[str, Any], target: str, horizon_days: int):
    """An unfitted ChurnModel around the estimator configured with ``_target_``."""
    from hydra.utils import instantiate

    from churnml.modeling import ChurnModel

    return ChurnModel(
        estimator=instantiate(model_settings["estimator"]),
        preprocessing=model_settings.get("preprocessing", "native"),
        calibration=model_settings.get("calibration", "sigmoid"),
        early_stopping_rounds=int(model_settings.get("early_stopping_rounds", 0) or 0),
        prior=model_settings.get("prior"),
        target=target,
        horizon_days=horizon_days,
    )


def training_plan(settings: Mapping[str, Any]):
    from churnml.features import as_date
    from churnml.training import TrainingPlan

    train = settings["train"]
    return TrainingPlan(
        target=settings["target"]["name"],
        horizon_days=int(settings["target"]["horizon_days"]),
        holdout_cutoff=as_date(settings["cutoff"]) if settings.get("cutoff") else None,
        step_days=int(train["step_days"]),
        max_snapshots=int(train["max_snapshots"]),
        min_snapshots=int(train["min_snapshots"]),
        min_history_days=int(train["min_history_days"]),
        calibration_snapshots=int(train["calibration_snapshots"]),
        cv_folds=int(train["cv_folds"]),
        bgnbd_features=bool(train["bgnbd_features"]),
    )


def report_context(settings: Mapping[str, Any], outcome: Any, model_label: str) -> dict[str, Any]:
    return {
        "data": settings["data"]["name"], "target": outcome.plan.target, "horizon_days": outcome.plan.horizon_days,
        "model": model_label, "holdout cutoff": outcome.holdout_cutoff,
        "training cutoffs": f"{outcome.train_cutoffs[0]} .. {outcome.train_cutoffs[-1]} ({len(outcome.train_cutoffs)})",
        "training rows": len(outcome.train_table), "holdout rows": len(outcome.holdout_table),
        "holdout positive rate": round(float(outcome.holdout_table["label"].mean()), 4),
    }


def print_comparison(outcome: Any) -> None:
    from churnml.evaluation import format_comparison

    holdout = outcome.holdout_table
    print(f"\n{outcome.plan.target} within {outcome.plan.horizon_days} days: holdout at {outcome.holdout_cutoff} "
          f"({len(holdout):,} customers, positive rate {holdout['label'].mean():.3f})")
    print(format_comparison(outcome.comparison))
    if "cv_roc_auc_mean" in outcome.metrics:
        print(f"time-based CV ({len(outcome.cv_folds)} folds): ROC AUC {outcome.metrics['cv_roc_auc_mean']:.4f} "
              f"+/- {outcome.metrics['cv_roc_auc_std']:.4f}")


def registered_name(settings: Mapping[str, Any]) -> str:
    return f"{settings['mlflow']['registered_model_prefix']}-{settings['target']['name']}"


def run_train(settings: Mapping[str, Any]) -> float:
    """Train, evaluate, track and register one target's model; return the sweep objective."""
    from churnml import tracking
    from churnml.datasets import data_sources, load_data
    from churnml.features import FeatureConfig
    from churnml.io import write_text_atomic
    from churnml.training import add_report, train_and_evaluate

    plan = training_plan(settings)
    dataset = load_data(settings["data"], con=engine_connection(settings), materialize=True)
    template = build_model(settings["model"], plan.target, plan.horizon_days)
    outcome = train_and_evaluate(dataset, template, plan, FeatureConfig.from_dict(settings["features"]))
    outcome = add_report(outcome, report_context(settings, outcome, settings["model"]["name"]))
    mlflow_settings = settings["mlflow"]
    tracking.configure(mlflow_settings["tracking_uri"], mlflow_settings["experiment"], mlflow_settings.get("artifact_root"))
    fingerprint = tracking.data_fingerprint(dataset, data_sources(settings["data"]))
    name = registered_name(settings)
    run_name = f"train-{plan.target}-{settings['model']['name']}-{settings['data']['name']}"
    registered = tracking.log_training(outcome, settings, fingerprint, name, settings["train"]["champion_metric"], run_name)
    report_path = Path(settings["train"]["report_dir"]) / f"{name}-v{registered.version}.html"
    write_text_atomic(outcome.report_html, report_path)
    exported = tracking.export_model(name, settings["train"]["export_dir"]) if settings["train"].get("export_dir") else None

    print_comparison(outcome)
    print(f"MLflow run {registered.run_id} (experiment '{mlflow_settings['experiment']}', {mlflow_settings['tracking_uri']})")
    print(f"model {registered.model_uri}; {registered.champion_reason}")
    print(f"report {report_path}" + (f"; champion exported to {exported}" if exported else ""))
    return float(outcome.metrics.get(settings["train"]["objective"], float("nan")))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def train_app(cfg: DictConfig) -> float:
    return run_train(settings_from(cfg))


def run_evaluate(settings: Mapping[str, Any]) -> dict[str, float]:
    """Evaluate a registered (or exported) model on a holdout cutoff and log it as its own run."""
    from churnml import tracking
    from churnml.datasets import data_sources, load_data
    from churnml.features import FeatureConfig
    from churnml.io import write_text_atomic
    from churnml.training import add_report, evaluate_model

    mlflow_settings = settings["mlflow"]
    tracking.configure(mlflow_settings["tracking_uri"], mlflow_settings["experiment"], mlflow_settings.get("artifact_root"))
    uri = settings["model_uri"]
    model = tracking.load_model(uri)
    name, version = tracking.model_version_of(uri)
    plan = training_plan({**settings, "train": {**settings["train"], "calibration_snapshots": 1, "cv_folds": 0,
                                                "bgnbd_features": any(f.startswith("bgnbd_") for f in model.feature_names_in_)}})
    dataset = load_data(settings["data"], con=engine_connection(settings), materialize=True)
    outcome = evaluate_model(dataset, model, plan, FeatureConfig.from_dict(settings["features"]))
    outcome = add_report(outcome, report_context(settings, outcome, f"{name} v{version}"))
    fingerprint = tracking.data_fingerprint(dataset, data_sources(settings["data"]))
    run_id = tracking.log_evaluation(outcome, settings, fingerprint, uri, run_name=f"evaluate-{name}-v{version}")
    report_path = write_text_atomic(outcome.report_html, Path(settings["train"]["report_dir"]) / f"{name}-v{version}-{outcome.holdout_cutoff}.html")
    print_comparison(outcome)
    print(f"MLflow run {run_id} (experiment '{mlflow_settings['experiment']}'); report {report_path}")
    return outcome.metrics


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="evaluate")
def evaluate_app(cfg: DictConfig) -> None:
    run_evaluate(settings_from(cfg))


def reference_profiles(models: Mapping[str, Any], identities: Mapping[str, Any]) -> dict[str, dict]:
    """The drift reference of each model that has one; a warning names those that have none."""
    profiles = {}
    for target, model in models.items():
        reference = getattr(model, "reference_profile_", None)
        if reference is None:
            log.warning("the %s model %s v%s has no reference profile (reference_profile_): no drift check",
                        target, identities[target].name, identities[target].version)
            continue
        profiles[target] = reference
    return profiles


def score_with_duckdb(dataset: Any, as_of: Any, feature_config: Any, models: Mapping[str, Any], config: Any,
                      context: Any, identities: Mapping[str, Any], profiles: Mapping[str, dict], output: str | Path,
                      fmt: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """Score the whole feature table in memory and write one file; return its path, the summary and the drift."""
    from churnml import drift, scoring

    features = scoring.feature_frame(dataset, as_of, feature_config)
    # The features are in memory now: the engine's buffers (GBs for a million customers) can go.
    dataset.con.disconnect()
    # One BG/NBD fit on the scored population serves both models' priors.
    if any(getattr(m, "prior", None) for m in models.values()):
        from churnml.modeling import fit_population_priors

        priors = fit_population_priors(features)
        models = {target: model.with_population_prior(features, priors) for target, model in models.items()}
    inputs = scoring.model_inputs(features, models)
    scores = scoring.score_customers(inputs, models, as_of, config, context, identities)
    psi = {target: drift.psi(profile, inputs[target], score=scores[f"{target}_probability"].to_numpy())
           for target, profile in profiles.items()}
    path = scoring.write_scores(scores, output, fmt)
    return path, scoring.summarize(scores), psi


def score_with_spark(dataset: Any, as_of: Any, feature_config: Any, models: Mapping[str, Any], config: Any,
                     context: Any, identities: Mapping[str, Any], profiles: Mapping[str, dict], output: str | Path,
                     fmt: str) -> tuple[Path | str, dict[str, Any], dict[str, Any]]:
    """Score the feature table where it is, on Spark, and write a directory of part files; return
    its path, the summary and the drift."""
    from churnml import spark_scoring
    from churnml.features import build_features

    table = build_features(dataset, as_of, feature_config)
    setup = spark_scoring.ScoringSetup(as_of, models, config, context, identities)
    # The session may be shared (a notebook's, a test's): it is left running.
    scored = spark_scoring.score_on_spark(dataset.con, table, setup, profiles, str(output), fmt)
    path = output if "://" in str(output) else Path(output)
    return path, scored.summary, scored.psi


def default_score_output(as_of: Any, fmt: str, engine: str) -> Path:
    """``scores/as_of=YYYY-MM-DD/scores.<fmt>``; on Spark the directory ``scores/as_of=YYYY-MM-DD``
    of part files, a partition of the dataset ``scores/``."""
    from churnml.scoring import default_output_path

    path = default_output_path(as_of, fmt)
    return path.parent if engine == "spark" else path


def run_score(settings: Mapping[str, Any]) -> Path | str:
    """Score every customer with history at ``score.as_of``, write one row each, track the run.

    Nothing is written when the date is outside the data or the models do not fit the feature
    table; the output is renamed into place only once complete. ``engine=spark`` scores on
    Spark and writes a directory of part files (see :mod:`churnml.spark_scoring`).
    """
    from churnml import drift, scoring, tracking
    from churnml.datasets import data_sources, load_data
    from churnml.features import FeatureConfig

    score = settings["score"]
    engine = settings.get("engine", "duckdb")
    fmt = score.get("format") or "parquet"
    if fmt not in scoring.FORMATS:
        raise ValueError(f"unknown score.format '{fmt}': use one of {scoring.FORMATS}")
    config = scoring.ScoringConfig.from_dict(score)
    dataset = load_data(settings["data"], con=engine_connection(settings))
    as_of = scoring.resolve_as_of(score.get("as_of"), dataset.first_date, dataset.last_date)

    mlflow_settings = settings["mlflow"]
    tracking.configure(mlflow_settings["tracking_uri"], mlflow_settings["experiment"], mlflow_settings.get("artifact_root"))
    uris = scoring.model_uris(score, mlflow_settings["registered_model_prefix"])
    models = {target: tracking.load_model(uri) for target, uri in uris.items()}
    identities = {target: scoring.ModelIdentity(*tracking.model_version_of(uri)) for target, uri in uris.items()}
    feature_config = FeatureConfig.from_dict(settings["features"])
    context = scoring.ReasonContext.from_features(feature_config, int(models["churn"].horizon_days))
    profiles = reference_profiles(models, identities)
    output = score.get("output") or default_score_output(as_of, fmt, engine)
    score_on_engine = score_with_spark if engine == "spark" else score_with_duckdb
    path, summary, psi = score_on_engine(dataset, as_of, feature_config, models, config, context, identities,
                                         profiles, output, fmt)
    threshold = float(score.get("drift_threshold", 0.2))

    fingerprint = tracking.data_fingerprint(dataset, data_sources(settings["data"]))
    scored_models = {t: tracking.ScoredModel(uris[t], identities[t].name, identities[t].version) for t in models}
    logged_settings = {**settings, "score": {**score, "as_of": str(as_of), "output": str(path)}}
    run_id = tracking.log_scoring(logged_settings, scored_models, summary, path, psi, threshold, fingerprint,
                                  run_name=f"score-{as_of}")

    models_used = " and ".join(f"{identity.name} v{identity.version}" for identity in identities.values())
    print(f"\nmodels: {models_used}")
    for target, values in psi.items():
        above = drift.drifted(values, threshold)
        listed = ", ".join(f"{name} {value:.2f}" for name, value in above.items())
        print(f"drift of the {target} model's inputs (PSI > {threshold:g}): {listed or 'none'}")
    print(scoring.format_summary(summary, as_of, path))
    print(f"MLflow run {run_id} (experiment '{mlflow_settings['experiment']}', {mlflow_settings['tracking_uri']})")
    return path


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="score")
def score_app(cfg: DictConfig) -> None:
    run_score(settings_from(cfg))


def run_export(settings: Mapping[str, Any]) -> list[Path]:
    """Export the champion of each target from the registry to ``train.export_dir`` (MLflow format)."""
    from churnml import tracking

    mlflow_settings = settings["mlflow"]
    tracking.configure(mlflow_settings["tracking_uri"], mlflow_settings["experiment"], mlflow_settings.get("artifact_root"))
    prefix = mlflow_settings["registered_model_prefix"]
    paths = [tracking.export_model(f"{prefix}-{target}", settings["train"]["export_dir"]) for target in ("churn", "repurchase")]
    for path in paths:
        print(f"exported {path}")
    return paths


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def export_app(cfg: DictConfig) -> None:
    run_export(settings_from(cfg))


STAGES = {"features": features_app, "train": train_app, "evaluate": evaluate_app, "score": score_app,
          "export": export_app}


def main() -> None:
    """``python -m churnml.cli STAGE [overrides]``: run a stage without its console script."""
    import sys

    if len(sys.argv) < 2 or sys.argv[1] not in STAGES:
        raise SystemExit(f"usage: python -m churnml.cli {{{','.join(STAGES)}}} [overrides...]")
    stage = sys.argv.pop(1)
    sys.argv[0] = f"churnml-{stage}"
    STAGES[stage]()


if __name__ == "__main__":
    main()
