"""Typed configuration of every stage: the schemas Hydra validates the composed config against.

Each default lives once. Settings that a library function takes (the feature set, the loading
rules, the training schedule, how scores become bands, reasons and actions) keep their defaults
in that function's own dataclass (:class:`~churnml.features.build.FeatureConfig`,
:class:`~churnml.io.load.LoadOptions`, :class:`~churnml.models.training.TrainingPlan`,
:class:`~churnml.scoring.policy.ScoringConfig`); the schemas here mirror those dataclasses or
read their defaults, and add what only a stage needs (engine, paths, MLflow). The YAML files
under ``conf/`` choose among alternatives (data sets, models, targets) and hold no default of
their own.

A value of the wrong type or an unknown key stops a stage before it starts, with the key's
full name (``train.max_snapshots``) and the type expected (:func:`config_error_message` words
Hydra's and OmegaConf's errors as one line). :func:`register_configs` puts the
schemas in Hydra's ConfigStore; nothing happens at import time.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import types
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Dict, List, Optional

from churnml.errors import UserValueError, one_line
from churnml.evaluation import drift
from churnml.features.build import FeatureConfig
from churnml.features.dates import as_date
from churnml.io.contract import SPECS, TableSpec
from churnml.io.load import LoadOptions
from churnml.loyalty.kpis import KpiConfig
from churnml.models.classifier import ChurnModel
from churnml.models.training import TrainingPlan
from churnml.programs.campaigns import ExperimentConfig
from churnml.scoring.policy import RiskBands, ScoringConfig
from churnml.serve.app import ServeConfig

# --------------------------------------------------------------------------------------------
# Mirrors of the library's dataclasses, for Hydra
# --------------------------------------------------------------------------------------------

_MIRRORS: dict[type, type] = {}


def _schema_type(annotation: Any) -> Any:
    """The OmegaConf-typed counterpart of a dataclass field's annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [_schema_type(a) for a in args if a is not type(None)]
        return Optional[inner[0]] if len(inner) == 1 and inner[0] is not Any else Any
    if origin is tuple:
        return List[_schema_type(args[0])] if args else List[Any]
    if origin in (dict, typing.Mapping) or (origin is not None and getattr(origin, "__name__", "") == "Mapping"):
        return Dict[_schema_type(args[0]), _schema_type(args[1])] if args else Dict[str, Any]
    if dataclasses.is_dataclass(annotation):
        return mirror(annotation)
    if annotation in (int, float, str, bool):
        return annotation
    return Any


def _schema_value(value: Any) -> Any:
    """A default value in the form its mirrored field holds (tuples as lists, dataclasses mirrored)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return mirror(type(value))(**{f.name: _schema_value(getattr(value, f.name))
                                      for f in dataclasses.fields(value) if f.name in _mirrored_fields(type(value))})
    if isinstance(value, tuple):
        return [_schema_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _schema_value(v) for k, v in value.items()}
    return value


def _mirrored_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(mirror(cls))]


def _default_of(spec: dataclasses.Field) -> Any:
    if spec.default is not MISSING:
        return spec.default
    if spec.default_factory is not MISSING:
        return spec.default_factory()
    return "???"  # OmegaConf's mandatory value: the config must give it


def mirror(cls: type) -> type:
    """A plain (mutable, OmegaConf-typed) dataclass with the fields and defaults of ``cls``.

    Tuples become lists, ``X | None`` becomes ``Optional[X]``, nested dataclasses are mirrored
    too; fields of types a config cannot hold (datetimes, frames) are left out. The defaults are
    read from ``cls``, not copied by hand.
    """
    if cls in _MIRRORS:
        return _MIRRORS[cls]
    hints = typing.get_type_hints(cls)
    specs = []
    for spec in dataclasses.fields(cls):
        if not spec.init:
            continue
        annotation = _schema_type(hints[spec.name])
        if annotation is Any and hints[spec.name] is not Any:
            continue
        default = _default_of(spec)
        specs.append((spec.name, annotation, field(default_factory=lambda d=default: _schema_value(d))))
    made = dataclasses.make_dataclass(f"{cls.__name__}Schema", specs)
    made.__doc__ = f"Hydra schema of :class:`{cls.__module__}.{cls.__qualname__}`."
    _MIRRORS[cls] = made
    return made


# --------------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------------

CleaningSettings = mirror(LoadOptions)
RiskBandSettings = mirror(RiskBands)
FeatureSettings = dataclasses.make_dataclass(
    "FeatureSettings",
    # Where churnml-features writes; None: outputs/features/<data>/as_of=<as_of>/features.parquet.
    [("output", Optional[str], field(default=None))],
    bases=(mirror(FeatureConfig),),
)
FeatureSettings.__doc__ = "``features``: the feature set (:class:`~churnml.features.build.FeatureConfig`) and the output of churnml-features."
KpiSettings = dataclasses.make_dataclass(
    "KpiSettings",
    # Where churnml-kpis writes its tables and dashboard; None: outputs/kpis/<data>/as_of=<as_of>/.
    [("output_dir", Optional[str], field(default=None))],
    bases=(mirror(KpiConfig),),
)
KpiSettings.__doc__ = ("``kpis``: definitions, periods and program targets (:class:`~churnml.loyalty.kpis.KpiConfig`) "
                       "and the output directory of churnml-kpis.")
ExperimentSettings = dataclasses.make_dataclass(
    "ExperimentSettings",
    [
        # Where churnml-experiment writes its tables and report; None: outputs/experiment/<data>/as_of=<as_of>/.
        ("output_dir", Optional[str], field(default=None)),
        # Where the uplift model fitted on every campaign is exported (<model_dir>/<prefix>-uplift),
        # for churnml-score's expected_uplift and expected_value; None: not exported.
        ("model_dir", Optional[str], field(default="models")),
    ],
    bases=(mirror(ExperimentConfig),),
)
ExperimentSettings.__doc__ = ("``experiment``: what churnml-experiment measures "
                              "(:class:`~churnml.programs.campaigns.ExperimentConfig`) and where it writes.")

ServeSettings = dataclasses.make_dataclass(
    "ServeSettings",
    # The event store: a DuckDB file (one process; created and loaded from the data node's files
    # when empty) or a postgresql://user@host:port/dbname URL (several workers or hosts).
    [("store", str, field(default="serve/events.duckdb"))],
    bases=(mirror(ServeConfig),),
)
ServeSettings.__doc__ = ("``serve``: where churnml-serve listens, its token and limits "
                         "(:class:`~churnml.serve.app.ServeConfig`), and its event store.")


def _table_files(spec: TableSpec) -> type:
    """The ``data.<table>`` node of one contract table: path, column names, date format."""
    title = spec.name.title()
    # One key per contract column, so that data.transactions.columns.customer_id=CustID needs no
    # "+" and a misspelt contract name is refused.
    columns = dataclasses.make_dataclass(f"{title}Columns", [(c, Optional[str], field(default=None)) for c in spec.kinds])
    columns.__doc__ = f"The file's name of each {spec.name} contract column, where it differs."
    made = dataclasses.make_dataclass(f"{title}Files", [
        ("path", Optional[str], field(default=None)),  # CSV or Parquet (a file, a directory or a glob)
        ("columns", columns, field(default_factory=columns)),
        # strptime format for dates that are not ISO 8601, e.g. "%d/%m/%Y %H:%M".
        ("ts_format", Optional[str], field(default=None)),
    ])
    made.__doc__ = f"``data.{spec.name}``: where the {spec.name} table is and how to read it."
    return made


TransactionsFiles = _table_files(SPECS["transactions"])
InteractionsFiles = _table_files(SPECS["interactions"])
CustomersFiles = _table_files(SPECS["customers"])
SurveysFiles = _table_files(SPECS["surveys"])
TreatmentsFiles = _table_files(SPECS["treatments"])


@dataclass
class DataSettings:
    """``data``: which data set, and how it is loaded. The options under ``conf/data/`` set
    ``kind`` and the keys of their kind."""

    name: str = "???"
    kind: str = "???"  # demo | cdnow | files
    # demo (values in conf/data/demo.yaml): a seeded simulated shop, generated on first use into ``directory``.
    n_customers: Optional[int] = None
    start: Optional[str] = None
    end: Optional[str] = None
    seed: Optional[int] = None
    format: Optional[str] = None
    directory: Optional[str] = None
    # files: the user's tables (transactions required).
    transactions: TransactionsFiles = field(default_factory=TransactionsFiles)  # type: ignore[valid-type]
    interactions: InteractionsFiles = field(default_factory=InteractionsFiles)  # type: ignore[valid-type]
    customers: CustomersFiles = field(default_factory=CustomersFiles)  # type: ignore[valid-type]
    surveys: SurveysFiles = field(default_factory=SurveysFiles)  # type: ignore[valid-type]
    treatments: TreatmentsFiles = field(default_factory=TreatmentsFiles)  # type: ignore[valid-type]
    cleaning: CleaningSettings = field(default_factory=CleaningSettings)  # type: ignore[valid-type]


@dataclass
class SparkSettings:
    """``spark``: used when ``engine=spark``."""

    master: Optional[str] = None  # None: local[2], unless spark-submit chose one
    shuffle_partitions: Optional[int] = None  # also the number of pieces scored (one per partition)
    conf: Dict[str, Any] = field(default_factory=dict)  # e.g. {spark.driver.memory: 8g}


@dataclass
class MlflowSettings:
    """``mlflow``: a SQLite file in the project by default; a team server is one line."""

    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "churnml"
    artifact_root: Optional[str] = "mlartifacts"  # used when the experiment is created
    registered_model_prefix: str = "churnml"


@dataclass
class TargetSettings:
    """``target``: churn = no purchase in (as_of, as_of + horizon]; repurchase = at least one."""

    name: str = TrainingPlan.target
    horizon_days: int = TrainingPlan.horizon_days


_MODEL_DEFAULTS = {name: p.default for name, p in inspect.signature(ChurnModel).parameters.items()}


@dataclass
class ModelSettings:
    """``model``: the estimator (instantiated from ``estimator._target_``) and how
    :class:`~churnml.models.classifier.ChurnModel` wraps it (its defaults; the options under
    ``conf/model/`` set their own).

    The hyperparameters at the top level are what sweeps override (``model.learning_rate=0.05``);
    the options interpolate them into ``estimator``.
    """

    name: str = "???"
    preprocessing: str = _MODEL_DEFAULTS["preprocessing"]  # native | scaled
    calibration: str = _MODEL_DEFAULTS["calibration"]  # sigmoid | isotonic | none
    early_stopping_rounds: int = _MODEL_DEFAULTS["early_stopping_rounds"]
    prior: Optional[str] = _MODEL_DEFAULTS["prior"]  # pnbd | bgnbd | None
    learning_rate: Optional[float] = None
    num_leaves: Optional[int] = None
    min_child_samples: Optional[int] = None
    n_estimators: Optional[int] = None
    C: Optional[float] = None
    estimator: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainSettings:
    """``train``: the snapshot schedule (defaults of :class:`~churnml.models.training.TrainingPlan`),
    champion rule, sweep objective and where reports and the exported champion go."""

    step_days: int = TrainingPlan.step_days
    max_snapshots: int = TrainingPlan.max_snapshots
    min_snapshots: int = TrainingPlan.min_snapshots
    min_history_days: int = TrainingPlan.min_history_days
    calibration_snapshots: int = TrainingPlan.calibration_snapshots
    calibration_fraction: float = TrainingPlan.calibration_fraction
    cv_folds: int = TrainingPlan.cv_folds
    bgnbd_features: bool = TrainingPlan.bgnbd_features
    refit: bool = TrainingPlan.refit
    seasonality: bool = TrainingPlan.seasonality
    champion_metric: str = "holdout_roc_auc"
    objective: str = "cv_roc_auc_mean"  # what a sweep maximises: CV, never the holdout
    export_dir: Optional[str] = "models"
    report_dir: str = "reports/train"


@dataclass
class PlaybookRuleSettings:
    """One playbook rule: an action and the conditions (lists of allowed values) a customer meets."""

    action: str = "???"
    tier: Optional[List[str]] = None
    value_segment: Optional[List[str]] = None
    predicted_value_segment: Optional[List[str]] = None
    risk_band: Optional[List[str]] = None
    overdue: Optional[bool] = None
    downgrade_at_risk: Optional[bool] = None


_SCORING_DEFAULTS = ScoringConfig()


@dataclass
class ScoreSettings:
    """``score``: where the models come from, where the scores go, and the policy of
    :class:`~churnml.scoring.policy.ScoringConfig` (bands, reasons, playbook)."""

    as_of: Optional[str] = None  # deprecated: use the top-level as_of
    # None: the registered champions, models:/<prefix>-churn@champion and -repurchase@champion.
    churn_model_uri: Optional[str] = None
    repurchase_model_uri: Optional[str] = None
    model_dir: Optional[str] = None  # e.g. models: load <model_dir>/<prefix>-churn and -repurchase instead
    # The uplift model churnml-experiment exports, for expected_uplift, expected_value and contact_rank;
    # None: <model_dir or models>/<prefix>-uplift when it exists. expected_value=false leaves them out.
    uplift_model_dir: Optional[str] = None
    expected_value: bool = True
    output: Optional[str] = None  # None: scores/as_of=<as_of>/scores.<format>; on Spark the directory
    format: str = "parquet"  # parquet | csv
    drift_threshold: float = 0.2  # PSI above which a feature (or the score) is reported as drifted
    # Scoring stops, writing nothing, when the score's PSI or that of more than drift_stop_share of
    # the features is above drift_stop_psi: the population is not the one the model learnt.
    drift_stop_psi: float = drift.STOP_PSI
    drift_stop_share: float = drift.STOP_SHARE
    allow_drift: bool = False  # true: score such a population anyway (the drift is still reported)
    risk_bands: RiskBandSettings = field(default_factory=RiskBandSettings)  # type: ignore[valid-type]
    reasons: int = _SCORING_DEFAULTS.n_reasons  # reasons per customer: what raises the risk (low band: lowers it)
    # Who gets reasons: all | actionable (high and medium risk bands) | top_fraction (the riskiest
    # reasons_top_fraction of customers, ties in customer order); the others get empty reason
    # columns and cost no contributions.
    reasons_for: str = _SCORING_DEFAULTS.reasons_for
    reasons_top_fraction: float = _SCORING_DEFAULTS.reasons_top_fraction  # in (0, 1]
    batch_size: int = _SCORING_DEFAULTS.batch_size
    tabulate_trees: bool = _SCORING_DEFAULTS.tabulate_trees
    threads: Optional[int] = _SCORING_DEFAULTS.threads
    # Rules by name; the first matching rule wins, a rule matches when every condition it names
    # holds. None: the default playbook (churnml.scoring.policy.DEFAULT_PLAYBOOK); a playbook
    # given here replaces it whole.
    playbook: Optional[Dict[str, PlaybookRuleSettings]] = None
    default_action: str = _SCORING_DEFAULTS.default_action


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


def _stage_fields(*, mlflow: bool) -> list[tuple]:
    common = [
        ("data", DataSettings, field(default_factory=DataSettings)),
        ("features", FeatureSettings, field(default_factory=FeatureSettings)),
        ("engine", str, field(default="duckdb")),  # duckdb | spark
        ("spark", SparkSettings, field(default_factory=SparkSettings)),
        ("as_of", Optional[str], field(default=None)),
        ("cutoff", Optional[str], field(default=None)),  # deprecated alias of as_of
    ]
    if mlflow:
        common.append(("mlflow", MlflowSettings, field(default_factory=MlflowSettings)))
    return common


def stage_schemas() -> dict[str, type]:
    """The schema of each primary config: ``features``, ``train``, ``evaluate``, ``score``, ``kpis``,
    ``experiment``, ``serve``."""
    for_features, with_mlflow = _stage_fields(mlflow=False), _stage_fields(mlflow=True)
    return {
        "features": dataclasses.make_dataclass("FeaturesStage", for_features),
        "train": dataclasses.make_dataclass("TrainStage", [
            *with_mlflow,
            ("target", TargetSettings, field(default_factory=TargetSettings)),
            ("model", ModelSettings, field(default_factory=ModelSettings)),
            ("seed", int, field(default=42)),
            ("train", TrainSettings, field(default_factory=TrainSettings)),
        ]),
        "evaluate": dataclasses.make_dataclass("EvaluateStage", [
            *with_mlflow,
            ("target", TargetSettings, field(default_factory=TargetSettings)),
            ("seed", int, field(default=42)),
            # None: the registered champion of the target; or an exported directory.
            ("model_uri", Optional[str], field(default=None)),
            ("train", TrainSettings, field(default_factory=lambda: TrainSettings(report_dir="reports/evaluate"))),
        ]),
        "score": dataclasses.make_dataclass("ScoreStage", [
            *with_mlflow,
            ("score", ScoreSettings, field(default_factory=ScoreSettings)),
        ]),
        "kpis": dataclasses.make_dataclass("KpisStage", [
            *with_mlflow,
            ("kpis", KpiSettings, field(default_factory=KpiSettings)),
        ]),
        "experiment": dataclasses.make_dataclass("ExperimentStage", [
            *with_mlflow,
            ("seed", int, field(default=42)),
            ("experiment", ExperimentSettings, field(default_factory=ExperimentSettings)),
        ]),
        # The service scores with the models and policy of the score node, as churnml-score does
        # (its output, format and drift keys are the batch's and unused here).
        "serve": dataclasses.make_dataclass("ServeStage", [
            *with_mlflow,
            ("score", ScoreSettings, field(default_factory=ScoreSettings)),
            ("serve", ServeSettings, field(default_factory=ServeSettings)),
        ]),
    }


def register_configs() -> None:
    """Put the stage schemas (``features_schema``, ``train_schema``, ``evaluate_schema``,
    ``score_schema``, ``kpis_schema``, ``experiment_schema``, ``serve_schema``) in Hydra's ConfigStore, where the primary configs' defaults lists name them."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, schema in stage_schemas().items():
        store.store(name=f"{name}_schema", node=schema)


def validated(config_name: str, settings: typing.Mapping[str, Any]) -> typing.Mapping[str, Any]:
    """``settings`` once checked against the schema of ``config_name``, keys added with Hydra's
    ``+`` included (Hydra lets those past its own check), and its values against the rules of the
    library's settings (increasing windows, known formats and targets, ordered risk bands), so
    that a bad value stops a stage before it reads any data.

    Raises
    ------
    churnml.errors.UserValueError
        For a key the schema does not know (naming it, e.g. ``features.window_days``, and the
        nearest known key), a value of the wrong type (naming the key and the type), or a value
        the library refuses (naming the key and what it takes).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.merge(OmegaConf.structured(stage_schemas()[config_name]), settings)
    except OmegaConfBaseException as error:
        raise UserValueError(config_error_message(error, config_name)) from error
    _check_values(settings)
    return settings


def _check_values(settings: typing.Mapping[str, Any]) -> None:
    """Build the library's settings from ``settings`` once, so that their refusals come before the work.

    Raises
    ------
    churnml.errors.UserValueError
        Naming the config node and what its value must be.
    """
    from churnml.features.labels import TARGETS
    from churnml.models.classifier import CALIBRATION, PREPROCESSING, PRIORS
    from churnml.scoring.table import FORMATS

    def refuse(key: str, value: Any, allowed: typing.Iterable[Any]) -> None:
        listed = ", ".join("null" if a is None else str(a) for a in allowed)
        raise UserValueError(f"{key}={value} is not one of {listed}: use one of them")

    if settings.get("engine") not in ("duckdb", "spark"):
        refuse("engine", settings.get("engine"), ("duckdb", "spark"))
    checks: list[tuple[str, typing.Callable[[], Any]]] = [
        ("features", lambda: FeatureConfig.from_dict(settings["features"])),
    ]
    if "score" in settings:
        if settings["score"]["format"] not in FORMATS:
            refuse("score.format", settings["score"]["format"], FORMATS)
        checks.append(("score", lambda: ScoringConfig.from_dict(settings["score"])))
    if "kpis" in settings:
        checks.append(("kpis", lambda: KpiConfig.from_dict(settings["kpis"])))
    if "experiment" in settings:
        checks.append(("experiment", lambda: ExperimentConfig.from_dict(settings["experiment"])))
    if "serve" in settings:
        if not str(settings["serve"].get("store") or "").strip():
            raise UserValueError("serve.store is empty: give a DuckDB file (serve/events.duckdb) or a "
                                 "postgresql://user@host:port/dbname URL")
        checks.append(("serve", lambda: ServeConfig.from_dict(settings["serve"])))
    if "target" in settings:
        if settings["target"]["name"] not in TARGETS:
            refuse("target.name", settings["target"]["name"], TARGETS)
        if int(settings["target"]["horizon_days"]) <= 0:
            raise UserValueError(f"target.horizon_days={settings['target']['horizon_days']}: give a positive number of days")
    if "model" in settings:
        for key, allowed in (("preprocessing", PREPROCESSING), ("calibration", CALIBRATION), ("prior", PRIORS)):
            if settings["model"].get(key) not in allowed:
                refuse(f"model.{key}", settings["model"].get(key), allowed)
    for node, build in checks:
        try:
            build()
        except (ValueError, TypeError) as error:
            message = str(error)
            raise UserValueError(message if message.startswith(f"{node}.") else f"{node}: {message}") from error


def config_error_message(error: BaseException, config_name: str | None = None) -> str:
    """One line for an error of Hydra's or OmegaConf's about the user's configuration: the key
    (or override, or config group) it is about, what is wrong, and how to fix it.

    ``config_name`` (``train`` ...) lets an unknown key be answered with the nearest known one.
    """
    import difflib

    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        MissingMandatoryValue,
        OmegaConfBaseException,
        ValidationError,
    )

    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    if isinstance(error, OverrideParseException):
        return (f"cannot read the override '{error.override}': {one_line(error.message).split('; See ')[0]}; "
                f"write key=value (quote values with spaces or brackets)")
    if isinstance(error, MissingConfigException):
        first = str(error).splitlines()[0]
        options = f"; available: {', '.join(error.options)}" if error.options else ""
        return f"{first}{options}"
    if not isinstance(cause, OmegaConfBaseException):
        return one_line(error).replace("; Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.", "")
    key = getattr(cause, "full_key", None) or ""
    # OmegaConf's message carries full_key, reference_type and object_type on lines of their own.
    message = (getattr(cause, "msg", None) or str(cause)).splitlines()[0]
    if isinstance(cause, MissingMandatoryValue):
        return f"{key} is required and not set: give {key}=..."
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and " not in " in message:
        nearest = difflib.get_close_matches(key, _known_keys(config_name), n=1) if config_name else []
        hint = f"did you mean {nearest[0]}?" if nearest else "check the spelling"
        return f"unknown config key {key}: {hint} (every key, with its type and default: churnml/config.py)"
    override = one_line(error).split("; ")[0].removeprefix("Error merging override ") if cause is not error else ""
    given = f" (given {override})" if override and "=" in override else ""
    if isinstance(cause, ValidationError):
        return f"config key {key}: {message}{given}; give a value of the type churnml/config.py declares for it"
    return f"config key {key}: {message}{given}"


def _known_keys(config_name: str) -> list[str]:
    """Every key of the schema of ``config_name``, dotted (``train.max_snapshots``)."""
    from omegaconf import OmegaConf

    def walk(node: Any, prefix: str) -> typing.Iterator[str]:
        for name, value in node.items():
            yield f"{prefix}{name}"
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{name}.")

    schema = OmegaConf.to_container(OmegaConf.structured(stage_schemas()[config_name]), resolve=False)
    return list(walk(schema, ""))


def deprecated_keys(settings: typing.Mapping[str, Any]) -> list[str]:
    """The deprecated keys a composed config sets (``cutoff``, ``score.as_of``), for a warning."""
    found = ["cutoff"] if settings.get("cutoff") else []
    if (settings.get("score") or {}).get("as_of"):
        found.append("score.as_of")
    return found


def stage_as_of(settings: typing.Mapping[str, Any]) -> Optional[str]:
    """The date a stage is asked for: ``as_of``, else the deprecated ``cutoff`` or ``score.as_of``
    (a logged warning says they are deprecated).

    Raises
    ------
    churnml.errors.UserValueError
        If two of them are set to different dates, or the date is not ``YYYY-MM-DD``.
    """
    for key in deprecated_keys(settings):
        logging.getLogger("churnml").warning("%s is deprecated and will be removed: use as_of", key)
    given = {key: value for key, value in (("as_of", settings.get("as_of")), ("cutoff", settings.get("cutoff")),
                                           ("score.as_of", (settings.get("score") or {}).get("as_of"))) if value}
    if len({str(v) for v in given.values()}) > 1:
        listed = ", ".join(f"{k}={v}" for k, v in given.items())
        raise UserValueError(f"conflicting dates {listed}: give as_of only")
    if not given:
        return None
    return as_date(next(iter(given.values()))).isoformat()
