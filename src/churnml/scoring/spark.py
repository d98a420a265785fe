"""Batch scoring on Spark: the feature table stays in Spark and executors score it in pieces.

``churnml-score engine=spark`` builds the feature table with the same Ibis expressions as on
DuckDB, sorted by customer and cached by Spark, and gives every customer the row that scoring the
whole table on one machine gives (:func:`churnml.scoring.table.score_customers`). Two things in a row
depend on the whole population, so they are settled on the driver before any row is scored:

- the BG/NBD fit that the models' prior and their BG/NBD features come from: the driver collects
  the five BG/NBD inputs of every customer and fits BG/NBD once, and takes the median customer
  that the prior's shares are measured against
  (:func:`churnml.models.attribution.prior_references`);
- the peers' norms that reasons quote (:func:`churnml.scoring.reasons.peer_norms`): Spark
  aggregates the exact median of each numeric feature of the churn model and counts the values
  of each text feature;
- the medians of LTV and of the repurchase probability that split the value segments: a first
  pass (``mapInPandas``) computes every repurchase probability on the executors, and the driver
  collects them with the LTVs and takes the exact medians;
- with ``score.reasons_for=top_fraction``, who gets reasons: the same pass computes every churn
  probability, and the driver collects them with the customer ids and finds the cut
  (:func:`churnml.scoring.policy.reason_cut`) that every piece then applies.

Then the executors score their partitions, each partition as one piece, and Spark writes the rows
as a directory of part files, renamed into place when complete. The summary and the drift come
from Spark as well: counts and sums grouped by band, action and first reason, and the model
inputs and scores counted into the bins of each model's reference profile, which gives the
population stability index :func:`churnml.evaluation.drift.psi` gives on the whole table.

Memory: the driver holds under 100 bytes per customer (the BG/NBD inputs and the two columns of
the medians) and BG/NBD's fit, plus the churn probability and id of every customer for
``top_fraction``; an executor holds one partition's features and contributions.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from churnml.evaluation import drift
from churnml.features.segments import ValueThresholds, value_thresholds
from churnml.features.snapshots import dated_features
from churnml.models.attribution import PriorReference, prior_references
from churnml.models.btyd import (
    BGNBD_FEATURE_COLUMNS,
    BGNBD_SOURCE_COLUMNS,
    BGNBDFitError,
    bgnbd_inputs,
    fit_bgnbd,
    fitted_bgnbd_features,
    uses_bgnbd_features,
)
from churnml.models.classifier import ChurnModel, with_shared_population_prior
from churnml.models.contributions import model_scores, with_tree_tables
from churnml.scoring.policy import ReasonCut, ScoringConfig, reason_cut
from churnml.scoring.reasons import ReasonContext, peer_norms, quotes_peers, stable_norm
from churnml.scoring.summary import summary_of_groups
from churnml.scoring.table import LEVEL_COLUMNS, ModelIdentity, model_inputs, score_columns, score_customers

log = logging.getLogger(__name__)

# Rows checked against the models on the driver, so that a feature table that does not fit them
# fails in seconds rather than in the middle of a pass.
CHECKED_ROWS = 1000
WRITE_OPTIONS = {"parquet": {"compression": "zstd"}, "csv": {"header": "true"}}
BIN_COUNT_SCHEMA = "target string, column string, bin int, count long"


@dataclass(frozen=True)
class ScoringSetup:
    """What an executor needs to score a piece of the feature table as if it scored it whole.

    Pickled into every task.

    Attributes
    ----------
    as_of : datetime.date
    models : mapping of str to ChurnModel
        ``churn`` and ``repurchase``; once fitted, with the population's BTYD prior.
    config : ScoringConfig
    context : ReasonContext, optional
    identities : mapping of str to ModelIdentity, optional
    schema : ibis.Schema, optional
        The feature table's Ibis schema: each piece gets the pandas types the whole table gets
        on one machine (:func:`churnml.features.build.to_frame`).
    bgnbd_model : lifetimes.BetaGeoFitter, optional
        BG/NBD fitted on the whole population, for models with BG/NBD features; None when it
        cannot be fitted (those features are then missing, as on one machine).
    thresholds : ValueThresholds, optional
        The population's medians; None before they are known.
    reason_cut : ReasonCut, optional
        For ``score.reasons_for=top_fraction``: who gets reasons in the population; None before
        it is known, and for the other settings.
    references : mapping, optional
        The population's reference customers for the BTYD prior's shares; None before they
        are known, and for models without a prior.
    """

    as_of: dt.date
    models: Mapping[str, ChurnModel]
    config: ScoringConfig = ScoringConfig()
    context: ReasonContext | None = None
    identities: Mapping[str, ModelIdentity] | None = None
    schema: Any = None
    bgnbd_model: Any = None
    thresholds: ValueThresholds | None = None
    reason_cut: ReasonCut | None = None
    references: Mapping[str | None, PriorReference] | None = None


@dataclass(frozen=True)
class SparkScoring:
    """Outcome of :func:`score_on_spark`: where the rows are, their summary and the drift."""

    path: str
    summary: dict[str, Any]
    psi: dict[str, pd.Series]


# --------------------------------------------------------------------------------------------
# One piece (runs on the executors)
# --------------------------------------------------------------------------------------------


def piece_features(setup: ScoringSetup, piece: pd.DataFrame) -> pd.DataFrame:
    """Rows of the feature table typed, dated and sorted as :func:`churnml.features.snapshots.feature_frame`
    gives the whole table."""
    from ibis.backends.pyspark.converter import PySparkPandasData

    return dated_features(PySparkPandasData.convert_table(piece, setup.schema), setup.as_of)


def population_bgnbd_features(bgnbd_model: Any, features: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
    """BG/NBD P(alive) and expected purchases from the population's fit (missing without one)."""
    if bgnbd_model is None:
        return pd.DataFrame(np.nan, index=features.index, columns=list(BGNBD_FEATURE_COLUMNS))
    return fitted_bgnbd_features(bgnbd_model, features, horizon_days)


def piece_inputs(setup: ScoringSetup, features: pd.DataFrame, targets: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """:func:`churnml.scoring.table.model_inputs` of a piece, with BG/NBD fitted on the population
    rather than on the piece."""
    models = {target: setup.models[target] for target in targets or list(setup.models)}
    return model_inputs(features, models, partial(population_bgnbd_features, setup.bgnbd_model))


def whole_partition(batches: Iterator[pd.DataFrame]) -> pd.DataFrame | None:
    """A partition's Arrow batches as one piece, or None when it is empty.

    One piece per partition: the tree tables are checked against the model once per piece (on
    256 rows, with the model's own slow contributions), which would cost more than the scoring
    itself once per batch of 10,000 rows.
    """
    frames = [batch for batch in batches if len(batch)]
    return pd.concat(frames, ignore_index=True) if frames else None


def needs_reason_cut(config: ScoringConfig) -> bool:
    """Whether who gets reasons depends on the whole population (``top_fraction``)."""
    return config.reasons_for == "top_fraction"


def population_schema(config: ScoringConfig) -> str:
    """The Spark schema of :func:`population_probabilities` rows."""
    schema = "ltv double, repurchase_probability double"
    return schema + (", customer_id string, churn_probability double" if needs_reason_cut(config) else "")


def population_probabilities(setup: ScoringSetup, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """``mapInPandas``: the LTV and repurchase probability of every customer in a partition and,
    for ``top_fraction``, the customer id and churn probability, computed as
    :func:`churnml.scoring.table.score_customers` computes them."""
    piece = whole_partition(batches)
    if piece is None:
        return
    config = setup.config
    with_churn = needs_reason_cut(config)
    features = piece_features(setup, piece)
    inputs = piece_inputs(setup, features, ["churn", "repurchase"] if with_churn else ["repurchase"])
    encodings: dict[tuple, np.ndarray] = {}
    scores = model_scores(setup.models["repurchase"], inputs["repurchase"], 0, config.batch_size,
                          config.tabulate_trees, config.threads, encodings)
    ltv = pd.to_numeric(features["ltv"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    columns = {"ltv": ltv, "repurchase_probability": scores.probability}
    if with_churn:
        churn = model_scores(setup.models["churn"], inputs["churn"], 0, config.batch_size, config.tabulate_trees,
                             config.threads, encodings)
        columns.update(customer_id=features["customer_id"].astype(str).to_numpy(dtype=object),
                       churn_probability=churn.probability)
    yield pd.DataFrame(columns)


def scored_pieces(setup: ScoringSetup, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """``mapInPandas``: the score rows of a partition, sorted by customer."""
    piece = whole_partition(batches)
    if piece is None:
        return
    if needs_reason_cut(setup.config) and setup.reason_cut is None:
        raise ValueError("score.reasons_for=top_fraction needs the population's cut (with_population_thresholds)")
    inputs = piece_inputs(setup, piece_features(setup, piece))
    if setup.context is None or setup.context.peers is None:
        raise ValueError("scoring a piece needs the population's norms (with_population_norms)")
    yield score_customers(inputs, setup.models, setup.as_of, setup.config, setup.context, setup.identities,
                          setup.thresholds, setup.reason_cut, setup.references)


def csv_safe_pieces(setup: ScoringSetup, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """:func:`scored_pieces` with the text cells a spreadsheet would evaluate neutralised
    (:func:`churnml.io.files.neutralise_formulas`), for CSV output."""
    from churnml.io.files import neutralise_formulas

    for piece in scored_pieces(setup, batches):
        yield neutralise_formulas(piece)


# --------------------------------------------------------------------------------------------
# Drift as bin counts
# --------------------------------------------------------------------------------------------


def psi_from_bin_counts(profile: Mapping[str, Any], counts: Mapping[str, np.ndarray]) -> pd.Series:
    """:func:`churnml.evaluation.drift.psi` from the summed bin counts of each column (and of ``model_score``)."""
    values = {name: drift.psi_from_counts(reference, counts[name]) if name in counts else float("nan")
              for name, reference in profile["columns"].items()}
    if "score" in profile and drift.SCORE in counts:
        values[drift.SCORE] = drift.psi_from_counts(profile["score"], counts[drift.SCORE])
    return pd.Series(values, dtype=float, name="psi")


def count_rows(target: str, counts: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Bin counts as rows of :data:`BIN_COUNT_SCHEMA`."""
    rows = [(target, column, b, int(n)) for column, array in counts.items() for b, n in enumerate(array)]
    return pd.DataFrame(rows, columns=["target", "column", "bin", "count"]).astype({"bin": "int32", "count": "int64"})


def input_bin_counts(setup: ScoringSetup, profiles: Mapping[str, Mapping[str, Any]],
                     batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """``mapInPandas``: the bin counts of each model's inputs in a partition."""
    piece = whole_partition(batches)
    if piece is None:
        return
    inputs = piece_inputs(setup, piece_features(setup, piece), list(profiles))
    for target, profile in profiles.items():
        frame = inputs[target]
        yield count_rows(target, {name: drift.bin_counts(reference, frame[name])
                                  for name, reference in profile["columns"].items() if name in frame.columns})


def score_bin_counts(profiles: Mapping[str, Mapping[str, Any]], batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` over written scores: the bin counts of each model's probability."""
    for batch in batches:
        for target, profile in profiles.items():
            if "score" in profile:
                yield count_rows(target, {drift.SCORE: drift.bin_counts(profile["score"], batch[f"{target}_probability"])})


def summed_counts(rows: Any) -> dict[str, dict[str, np.ndarray]]:
    """Bin counts summed over partitions: ``{target: {column: counts}}``."""
    from pyspark.sql import functions as F

    totals = rows.groupBy("target", "column", "bin").agg(F.sum("count").alias("count")).toPandas()
    result: dict[str, dict[str, np.ndarray]] = {}
    for (target, column), group in totals.groupby(["target", "column"], sort=False):
        counts = np.zeros(int(group["bin"].max()) + 1, dtype=np.int64)
        counts[group["bin"].to_numpy(dtype=int)] = group["count"].to_numpy(dtype=np.int64)
        result.setdefault(str(target), {})[str(column)] = counts
    return result


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def summarize_scores(scores: Any, n_top_reasons: int = 5) -> dict[str, Any]:
    """:func:`churnml.scoring.summary.summarize` of a Spark DataFrame of scores, aggregated by Spark."""
    from pyspark.sql import functions as F

    groups = scores.groupBy("risk_band", "recommended_action", "reason_1_feature").agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum("churn_probability").alias("churn_probability_sum"),
        F.sum("repurchase_probability").alias("repurchase_probability_sum"),
    ).toPandas()
    return summary_of_groups(groups, n_top_reasons)


# --------------------------------------------------------------------------------------------
# The passes (run from the driver)
# --------------------------------------------------------------------------------------------


def score_schema(n_reasons: int = 3) -> str:
    """The Spark schema of the score rows (:func:`churnml.scoring.table.score_columns`)."""
    numbers = {"churn_probability", "repurchase_probability", "ltv", *LEVEL_COLUMNS[1:],
               *(f"reason_{k}_contribution" for k in range(1, n_reasons + 1))}
    kinds = {column: "double" if column in numbers else "date" if column == "as_of" else "string"
             for column in score_columns(n_reasons)}
    return ", ".join(f"`{column}` {kind}" for column, kind in kinds.items())


def executor_config(config: ScoringConfig, session: Any) -> ScoringConfig:
    """The scoring config for executors: threads default to a task's cores, not the machine's,
    since every core already runs a task."""
    if config.threads:
        return config
    return replace(config, threads=int(session.sparkContext.getConf().get("spark.task.cpus", "1")))


def check_models(features: Any, setup: ScoringSetup) -> None:
    """Raise now, as :func:`churnml.scoring.table.model_inputs` would, if the first rows of the feature
    table do not fit the models."""
    piece_inputs(setup, piece_features(setup, features.limit(CHECKED_ROWS).toPandas()))


def bgnbd_population(features: Any, as_of: dt.date) -> pd.DataFrame:
    """The BG/NBD inputs of every customer, in customer order, on the driver."""
    population = features.select(*BGNBD_SOURCE_COLUMNS).toPandas()
    population["cutoff"] = pd.Timestamp(as_of)
    return population


def population_bgnbd(population: pd.DataFrame, priors: Mapping[str | None, Any]) -> Any:
    """BG/NBD fitted on the population for the BG/NBD features: the prior's fit when there is one
    (the same fit on the same rows), else a fit of its own; None (with a warning) when it fails."""
    fitted = next((fit for fit in priors.values() if fit is not None), None)
    if fitted is not None:
        return fitted.bgnbd
    try:
        return fit_bgnbd(bgnbd_inputs(population))
    except BGNBDFitError as error:
        log.warning("BG/NBD features are missing for %s rows: %s", len(population), error)
        return None


def with_population_fit(features: Any, setup: ScoringSetup) -> ScoringSetup:
    """The setup with the models' priors and the BG/NBD features fitted on the whole population,
    as scoring the whole table fits them."""
    models = setup.models
    has_prior = any(getattr(m, "prior", None) for m in models.values())
    has_bgnbd_features = any(uses_bgnbd_features(m) for m in models.values())
    if not (has_prior or has_bgnbd_features):
        return setup
    population = bgnbd_population(features, setup.as_of)
    models, priors = with_shared_population_prior(models, population)
    references = prior_references(population) if has_prior else None
    bgnbd_model = population_bgnbd(population, priors) if has_bgnbd_features else None
    return replace(setup, models=models, bgnbd_model=bgnbd_model, references=references)


def spark_peer_norms(features: Any, columns: Sequence[str]) -> dict[str, Any]:
    """:func:`churnml.scoring.reasons.peer_norms` of ``columns`` of a Spark DataFrame, aggregated
    by Spark: the exact median of the numbers (NaN counted as missing, as pandas does) and the
    most common text; columns whose phrases do not quote the peers and absent ones are left out."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import NumericType, StringType

    types = {field.name: field.dataType for field in features.schema.fields}
    # As peer_norms: only what phrases quote (an exact median holds a column's distinct values).
    numeric = [c for c in columns if isinstance(types.get(c), NumericType) and quotes_peers(c)]
    text = [c for c in columns if isinstance(types.get(c), StringType) and quotes_peers(c, text=True)]
    norms: dict[str, Any] = {}
    if numeric:
        medians = features.agg(*(F.median(F.nanvl(F.col(c).cast("double"), F.lit(None).cast("double"))).alias(c)
                                 for c in numeric)).first()
        norms.update({c: stable_norm(float(medians[c])) for c in numeric if medians[c] is not None})
    for column in text:
        counts = features.where(F.col(column).isNotNull()).groupBy(column).count().toPandas()
        if len(counts):
            top = counts["count"].max()
            norms[column] = str(min(counts.loc[counts["count"] == top, column].astype(str)))
    return norms


def with_population_norms(features: Any, setup: ScoringSetup) -> ScoringSetup:
    """The setup with the peers' norms of the churn model's features over the whole population
    in its reason context, as scoring the whole table computes them."""
    model = setup.models["churn"]
    norms = spark_peer_norms(features, model.feature_names_in_)
    # The BG/NBD features exist only in each piece's inputs: from the population's fit here.
    extra = [c for c in BGNBD_FEATURE_COLUMNS if c in model.feature_names_in_]
    if extra and setup.bgnbd_model is not None:
        population = bgnbd_population(features, setup.as_of)
        norms.update(peer_norms(population_bgnbd_features(setup.bgnbd_model, population, int(model.horizon_days)),
                                extra))
    context = setup.context or ReasonContext(horizon_days=int(model.horizon_days))
    return replace(setup, context=replace(context, peers=norms))


def with_population_thresholds(features: Any, setup: ScoringSetup) -> ScoringSetup:
    """The setup with the exact medians of LTV and repurchase probability over every customer
    and, for ``top_fraction``, the cut of the riskiest customers (first pass)."""
    values = features.mapInPandas(partial(population_probabilities, setup), population_schema(setup.config)).toPandas()
    setup = replace(setup, thresholds=value_thresholds(values["ltv"], values["repurchase_probability"]))
    if needs_reason_cut(setup.config):
        # In customer order, as the pieces are, whatever order the rows were collected in.
        values = values.sort_values("customer_id", kind="stable", ignore_index=True)
        setup = replace(setup, reason_cut=reason_cut(values["churn_probability"].to_numpy(),
                                                     values["customer_id"].to_numpy(dtype=object),
                                                     setup.config.reasons_top_fraction))
    return setup


def population_stability(features: Any, scores: Any, setup: ScoringSetup,
                         profiles: Mapping[str, Mapping[str, Any]]) -> dict[str, pd.Series]:
    """PSI of each profiled model's inputs and probability, from bin counts summed by Spark."""
    if not profiles:
        return {}
    counts = summed_counts(features.mapInPandas(partial(input_bin_counts, setup, profiles), BIN_COUNT_SCHEMA))
    probabilities = scores.select(*(f"{target}_probability" for target in profiles))
    score_counts = summed_counts(probabilities.mapInPandas(partial(score_bin_counts, profiles), BIN_COUNT_SCHEMA))
    return {target: psi_from_bin_counts(profile, {**counts.get(target, {}), **score_counts.get(target, {})})
            for target, profile in profiles.items()}


def read_scores(session: Any, path: str, fmt: str, n_reasons: int) -> Any:
    """The written scores as a Spark DataFrame."""
    reader = session.read.schema(score_schema(n_reasons))
    return reader.parquet(path) if fmt == "parquet" else reader.option("header", "true").csv(path)


def score_on_spark(con: Any, table: Any, setup: ScoringSetup, profiles: Mapping[str, Mapping[str, Any]],
                   output: str, fmt: str = "parquet") -> SparkScoring:
    """Score an Ibis feature table where it is, on Spark, and write the rows to ``output``.

    Parameters
    ----------
    con
        The Ibis PySpark connection of ``table``.
    table
        The feature table at ``setup.as_of`` (:func:`churnml.features.build.build_features`).
    setup : ScoringSetup
        Models, date, config; the schema, the population's BG/NBD and medians are added here.
    profiles : mapping of str to dict
        The reference profile of each model to check for drift (``reference_profile_``).
    output : str
        The directory to write (local, ``hdfs://``...), replaced if it exists.
    fmt : {"parquet", "csv"}

    Returns
    -------
    SparkScoring
    """
    from pyspark import StorageLevel

    from churnml.io.spark import spark_frame, write_atomic

    if fmt not in WRITE_OPTIONS:
        raise ValueError(f"unknown score.format '{fmt}': use one of {tuple(WRITE_OPTIONS)}")
    # Sorted, so that each partition is a range of customers and the part files are in order.
    features = spark_frame(con, table).orderBy("customer_id").persist(StorageLevel.MEMORY_AND_DISK)
    try:
        session = features.sparkSession
        setup = replace(setup, schema=table.schema(), config=executor_config(setup.config, session))
        check_models(features, setup)
        setup = with_population_fit(features, setup)
        setup = with_population_norms(features, setup)
        # Trained models carry their tables (tree_tables_); others are tabulated once here, and
        # the tables travel with the models to every task.
        setup = replace(setup, models={target: with_tree_tables(model) for target, model in setup.models.items()})
        setup = with_population_thresholds(features, setup)
        log.info("value segments split at LTV %s and repurchase probability %s",
                 setup.thresholds.ltv, setup.thresholds.repurchase_probability)
        if setup.reason_cut is not None:
            log.info("reasons for churn probabilities from %s (ties up to customer %s)",
                     setup.reason_cut.probability, setup.reason_cut.last_customer)
        pieces = csv_safe_pieces if fmt == "csv" else scored_pieces
        scores = features.mapInPandas(partial(pieces, setup), score_schema(setup.config.n_reasons))
        path = write_atomic(scores, output, fmt, WRITE_OPTIONS[fmt])
        written = read_scores(session, path, fmt, setup.config.n_reasons)
        summary = summarize_scores(written)
        psi = population_stability(features, written, setup, profiles)
    finally:
        features.unpersist()
    return SparkScoring(path, summary, psi)
