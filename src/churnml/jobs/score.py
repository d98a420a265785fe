"""``churnml-score``: every customer with history scored at ``as_of``, one row each, tracked in MLflow."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

from churnml.errors import UserValueError
from churnml.jobs.common import (
    check_output,
    check_tracking,
    configure_tracking,
    engine_connection,
    is_model_uri,
    load_model,
)

log = logging.getLogger("churnml")


def model_uris(score_settings: Mapping[str, Any], registered_model_prefix: str) -> dict[str, str]:
    """Where the churn and repurchase models come from: ``score.model_dir`` when set (exported
    directories ``<model_dir>/<prefix>-churn`` and ``-repurchase``), else the configured URIs,
    else the registered champions (``models:/<prefix>-churn@champion``)."""
    from churnml.features.labels import TARGETS
    from churnml.models.registry import registered_model_uri, registered_name

    model_dir = score_settings.get("model_dir")
    names = {target: registered_name(registered_model_prefix, target) for target in TARGETS}
    if model_dir:
        return {target: str(Path(model_dir) / names[target]) for target in TARGETS}
    return {target: str(score_settings.get(f"{target}_model_uri") or registered_model_uri(names[target]))
            for target in TARGETS}


def model_key(score_settings: Mapping[str, Any], target: str) -> str:
    """The config key that chose the ``target`` model, for messages."""
    return "score.model_dir" if score_settings.get("model_dir") else f"score.{target}_model_uri"


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
                      fmt: str, check_drift: Callable[[Mapping[str, Any]], None] | None = None,
                      uplift: tuple[Any, Mapping[str, Any]] | None = None,
                      ) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """Score the whole feature table in memory and write one file; return its path, the summary and the drift.

    ``check_drift`` is given the PSI of each target before anything is written, and may raise to
    stop the run (:func:`population_gate`). ``uplift`` (an uplift model and its deployment
    record) adds the expected value of a contact (:func:`churnml.programs.targeting.with_expected_value`).
    """
    from churnml.evaluation import drift
    from churnml.features.snapshots import feature_frame
    from churnml.scoring.summary import summarize
    from churnml.scoring.table import model_inputs, score_customers, write_scores

    features = feature_frame(dataset, as_of, feature_config)
    # The features are in memory now: the engine's buffers (GBs for a million customers) can go.
    dataset.con.disconnect()
    from churnml.models.classifier import with_shared_population_prior

    models, _ = with_shared_population_prior(models, features)
    inputs = model_inputs(features, models)
    scores = score_customers(inputs, models, as_of, config, context, identities)
    psi = {target: drift.psi(profile, inputs[target], score=scores[f"{target}_probability"].to_numpy())
           for target, profile in profiles.items()}
    if check_drift is not None:
        check_drift(psi)
    if uplift is not None:
        from churnml.programs.targeting import with_expected_value

        scores = with_expected_value(scores, features, *uplift)
    path = write_scores(scores, output, fmt)
    summary = summarize(scores)
    if uplift is not None:
        worth = scores["contact_rank"].notna()
        summary.update(contacts_worth_making=int(worth.sum()),
                       expected_value_of_contacts=float(scores.loc[worth, "expected_value"].sum()))
    return path, summary, psi


def score_with_spark(dataset: Any, as_of: Any, feature_config: Any, models: Mapping[str, Any], config: Any,
                     context: Any, identities: Mapping[str, Any], profiles: Mapping[str, dict], output: str | Path,
                     fmt: str, check_drift: Callable[[Mapping[str, Any]], None] | None = None,
                     uplift: tuple[Any, Mapping[str, Any]] | None = None,
                     ) -> tuple[Path | str, dict[str, Any], dict[str, Any]]:
    """Score the feature table where it is, on Spark, and write a directory of part files; return
    its path, the summary and the drift. The expected value of a contact is not computed on Spark
    (``uplift`` is refused before any work by :func:`uplift_model`).

    Spark measures the score's drift on the written rows, so ``check_drift`` runs after the write:
    a refusal stops the run before it is tracked, but the directory is in place.
    """
    from churnml.features.build import build_features
    from churnml.scoring import spark as spark_scoring

    table = build_features(dataset, as_of, feature_config)
    setup = spark_scoring.ScoringSetup(as_of, models, config, context, identities)
    # The session may be shared (a notebook's, a test's): it is left running.
    scored = spark_scoring.score_on_spark(dataset.con, table, setup, profiles, str(output), fmt)
    path = output if "://" in str(output) else Path(output)
    if check_drift is not None:
        check_drift(scored.psi)
    return path, scored.summary, scored.psi


def population_gate(score_settings: Mapping[str, Any], identities: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], None]:
    """The check that stops scoring a population the models were not trained on.

    Parameters
    ----------
    score_settings : mapping
        The ``score`` node: ``drift_stop_psi``, ``drift_stop_share`` and ``allow_drift``.
    identities : mapping of str to ModelIdentity
        Name and version of each target's model, for the message.

    Returns
    -------
    callable
        Takes the PSI series of each target (:func:`churnml.evaluation.drift.psi`); raises
        :class:`churnml.errors.UserError` naming the model and its worst features when
        :func:`churnml.evaluation.drift.population_refusal` finds a reason, unless
        ``allow_drift`` (then a warning names them).
    """
    from churnml.errors import UserError
    from churnml.evaluation.drift import population_refusal

    stop_psi, stop_share = float(score_settings["drift_stop_psi"]), float(score_settings["drift_stop_share"])
    allowed = bool(score_settings["allow_drift"])

    def check(psi: Mapping[str, Any]) -> None:
        reasons = {target: reason for target, values in psi.items()
                   if (reason := population_refusal(values, stop_psi, stop_share)) is not None}
        if not reasons:
            return
        listed = "; ".join(f"{target} model {identities[target].name} v{identities[target].version}: {reason}"
                           for target, reason in reasons.items())
        if allowed:
            log.warning("scoring a population far from the models' training data (score.allow_drift=true): %s", listed)
            return
        raise UserError(f"the customers at this as_of are far from the data the models were trained on ({listed}): "
                        "score them with models trained on this data, or pass score.allow_drift=true to score anyway")

    return check


def uplift_model(score_settings: Mapping[str, Any], registered_model_prefix: str,
                 engine: str) -> tuple[Any, dict[str, Any], Path] | None:
    """The uplift model that ``churnml-experiment`` exported, its deployment record and its
    directory; None when ``score.expected_value`` is off, or no directory was given and the
    default one (``<score.model_dir or models>/<prefix>-uplift``) does not exist.

    Raises
    ------
    churnml.errors.UserError
        For a ``score.uplift_model_dir`` that does not exist, a directory that is not an uplift
        model (:func:`churnml.programs.uplift.load_uplift_model`), or a ``score.uplift_model_dir``
        with ``engine=spark`` (the default directory is then left out with a warning).
    """
    import json

    from churnml.models.persistence import ModelFormatError
    from churnml.programs.uplift import load_uplift_model

    if not score_settings.get("expected_value", True):
        return None
    given = score_settings.get("uplift_model_dir")
    directory = Path(given or Path(score_settings.get("model_dir") or "models") / f"{registered_model_prefix}-uplift")
    if not directory.exists():
        if given:
            raise UserValueError(f"score.uplift_model_dir={given} does not exist: give the directory churnml-experiment "
                                 "exported (experiment.model_dir), or score.expected_value=false")
        return None
    if engine == "spark" and not given:
        log.warning("the uplift model %s is scored on DuckDB only: no expected_value on Spark", directory)
        return None
    if engine == "spark":
        raise UserValueError(f"the uplift model {directory} is scored on DuckDB only: use engine=duckdb, or "
                             "score.expected_value=false")
    model = load_uplift_model(directory / "model")
    try:
        deployment = json.loads((directory / "deployment.json").read_text())
    except (OSError, ValueError) as error:
        raise ModelFormatError(f"{directory / 'deployment.json'} cannot be read ({error}): export the uplift model "
                               "again with churnml-experiment") from error
    return model, deployment, directory


def default_score_output(as_of: Any, fmt: str, engine: str) -> Path:
    """``scores/as_of=YYYY-MM-DD/scores.<fmt>``; on Spark the directory ``scores/as_of=YYYY-MM-DD``
    of part files, a partition of the dataset ``scores/``."""
    from churnml.scoring.table import default_output_path

    path = default_output_path(as_of, fmt)
    return path.parent if engine == "spark" else path


def run(settings: Mapping[str, Any]) -> Path | str:
    """Score every customer with history at ``as_of``, write one row each, track the run.

    Nothing is written when the date is outside the data, the models do not fit the feature
    table, or the customers are far from the models' training data (:func:`population_gate`,
    overridden by ``score.allow_drift``); the output is renamed into place only once complete. ``engine=spark`` scores on
    Spark and writes a directory of part files (see :mod:`churnml.scoring.spark`).

    Raises
    ------
    churnml.errors.UserError
        Before any work for a model that is missing or damaged, an output or MLflow location
        that cannot be written; for data that breaks the contract, an ``as_of`` outside the
        data, or models that do not fit the feature table, with nothing written.
    """
    from churnml import tracking
    from churnml.config import stage_as_of
    from churnml.evaluation.drift import drifted
    from churnml.features.build import FeatureConfig
    from churnml.features.dates import resolve_as_of
    from churnml.io.files import staged
    from churnml.io.sources import data_sources, load_data
    from churnml.scoring.policy import ScoringConfig
    from churnml.scoring.reasons import ReasonContext
    from churnml.scoring.summary import format_summary
    from churnml.scoring.table import FORMATS, ModelIdentity

    score = settings["score"]
    engine = settings["engine"]
    fmt = score["format"]
    if fmt not in FORMATS:
        raise UserValueError(f"unknown score.format '{fmt}': use one of {FORMATS}")
    config = ScoringConfig.from_dict(score)
    requested = stage_as_of(settings)
    # The models and the locations before the work: a missing model or an unwritable place
    # writes nothing, not even an MLflow experiment.
    uris = model_uris(score, settings["mlflow"]["registered_model_prefix"])
    check_tracking(settings["mlflow"], reads_registry=any(is_model_uri(uri) for uri in uris.values()),
                   instead="score.model_dir=models")
    check_output(score.get("output") or "scores", "score.output",
                 "directory" if engine == "spark" or not score.get("output") else "file")
    tracking.use_tracking_uri(settings["mlflow"]["tracking_uri"])
    models = {target: load_model(uri, model_key(score, target)) for target, uri in uris.items()}
    uplift = uplift_model(score, settings["mlflow"]["registered_model_prefix"], engine)
    dataset = load_data(settings["data"], con=engine_connection(settings))
    as_of = resolve_as_of(requested, dataset.first_date, dataset.last_date)

    mlflow_settings = configure_tracking(settings)
    identities = {target: ModelIdentity(*tracking.model_version_of(uri)) for target, uri in uris.items()}
    feature_config = FeatureConfig.from_dict(settings["features"])
    context = ReasonContext.from_features(feature_config, int(models["churn"].horizon_days))
    profiles = reference_profiles(models, identities)
    output = score.get("output") or default_score_output(as_of, fmt, engine)
    score_on_engine = score_with_spark if engine == "spark" else score_with_duckdb
    threshold = float(score["drift_threshold"])
    # Written beside the output and renamed in only once the run is tracked: a failure in
    # between (the tracking server, a name MLflow refuses) leaves the previous output as it was.
    remote = "://" in str(output)
    with contextlib.nullcontext(output) if remote else staged(output) as written:
        _, summary, psi = score_on_engine(dataset, as_of, feature_config, models, config, context, identities,
                                          profiles, written, fmt, population_gate(score, identities),
                                          uplift=uplift[:2] if uplift else None)
        path = output if remote else Path(output)
        fingerprint = tracking.data_fingerprint(dataset, data_sources(settings["data"]))
        scored_models = {t: tracking.ScoredModel(uris[t], identities[t].name, identities[t].version) for t in models}
        logged_settings = {**settings, "as_of": str(as_of), "score": {**score, "output": str(path)}}
        run_id = tracking.log_scoring(logged_settings, scored_models, summary, path, psi, threshold, fingerprint,
                                      run_name=f"score-{as_of}")

    models_used = " and ".join(f"{identity.name} v{identity.version}" for identity in identities.values())
    print(f"\nmodels: {models_used}")
    for target, values in psi.items():
        above = drifted(values, threshold)
        listed = ", ".join(f"{name} {value:.2f}" for name, value in above.items())
        print(f"drift of the {target} model's inputs (PSI > {threshold:g}): {listed or 'none'}")
    if uplift is not None:
        print(f"expected value of a contact from the uplift model {uplift[2]} "
              f"(campaigns {', '.join(uplift[1].get('campaigns', []))}): {summary.get('contacts_worth_making', 0):,} "
              f"customers worth contacting (expected_value > 0, ranked by contact_rank), "
              f"{summary.get('expected_value_of_contacts', 0.0):,.0f} in expected value")
    print(format_summary(summary, as_of, path))
    print(f"MLflow run {run_id} (experiment '{mlflow_settings['experiment']}', {mlflow_settings['tracking_uri']})")
    return path
