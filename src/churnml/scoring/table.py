"""Batch scoring: churn and repurchase probabilities, risk bands, reasons and a recommended action
for every customer with history at an ``as_of`` date.

Plain functions over DataFrames; the ``churnml-score`` stage loads the models, tracks the run and
writes the file. One output row per customer:

- ``churn_probability`` / ``repurchase_probability``: the calibrated probabilities of the two
  models (their horizons are the models' ``horizon_days``).
- ``risk_band``: high / medium / low from thresholds on the churn probability.
- ``reason_<k>``, ``reason_<k>_feature``, ``reason_<k>_contribution``: for the high and medium
  risk bands, the features that raise the churn risk most for this customer; for the low band,
  those that lower it most (what keeps them). Each is a short phrase with the customer's value
  and a norm (their own rhythm or the peers', :mod:`churnml.scoring.reasons`), with its exact
  contribution to the churn model's raw score in log-odds (LightGBM ``pred_contrib``; for a
  model boosted from a BTYD prior, the prior's contribution is split over recency, frequency and age
  and added to those features, :mod:`churnml.models.attribution`). A contribution is given only
  when the value reads the way it pushes (a rising order pace is never a churn reason); a
  customer with none gets one phrase saying that no behaviour stands out.
  ``score.reasons_for`` may limit reasons to the high and medium risk bands (``actionable``) or
  to the riskiest share of customers (``top_fraction``): the others get empty (null) reason
  columns, and their contributions are not computed.
- ``tier``: the loyalty tier of the feature table.
- ``membership_level``, ``next_level_spend_gap``, ``next_level_repurchase_gap``: the membership
  level at ``as_of`` and what the customer's last ``qualifying_days`` still lack for the next
  level (net spend, repurchases; missing at the top level), from the feature table
  (:mod:`churnml.features.levels`); all missing when ``features.levels.enabled`` is false.
- ``value_segment``: the feature table's value x potential (LTV against the peers' median x
  buying at least as often lately), the segment the model may quote as a reason.
- ``predicted_value_segment``: the same vocabulary at scoring time: value is high when the
  customer's LTV is above the median LTV of the customers scored, potential is high when the
  repurchase probability is above the median repurchase probability.
- ``ltv``: the feature table's lifetime value (net order value after refunds x purchases per year x
  expected years), not adjusted for the churn risk.
- ``recommended_action``: the first playbook rule that matches tier, segments, risk band and
  whether the customer is past their usual gap between purchases (``usual_gap_days``).
- ``churn_model_name`` / ``churn_model_version`` and the same for the repurchase model.

For LightGBM models with small trees (the default has 7 leaves) probabilities and exact
contributions come from lookup tables built from the trees (see "Scores of one model" below):
the same numbers as LightGBM's ``predict`` and ``pred_contrib``, checked on a sample of rows at
every run, in a small fraction of the time.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from churnml.features.segments import ValueThresholds, predicted_value_segment
from churnml.io.files import write_frame_atomic
from churnml.models.attribution import PriorReference
from churnml.models.btyd import BGNBD_FEATURE_COLUMNS, bgnbd_features, uses_bgnbd_features
from churnml.models.classifier import PRIOR, ChurnModel
from churnml.models.contributions import ReasonFilter, model_scores
from churnml.scoring.policy import (
    ReasonCut,
    ScoringConfig,
    days_past_usual_gap,
    reason_signs,
    recommend_actions,
    risk_band,
    rows_with_reasons,
)
from churnml.scoring.reasons import ReasonContext, peer_norms, reason_eligibility, reason_phrases

log = logging.getLogger(__name__)

from churnml.features.labels import TARGETS

FORMATS = ("parquet", "csv")
# The membership level and the gap to the next one, as the feature table has them.
LEVEL_COLUMNS = ("membership_level", "next_level_spend_gap", "next_level_repurchase_gap")
# Said when no contribution reads the way it pushes: nothing stands out rather than noise.
NO_RISK_FACTOR = "no behaviour stands out"

@dataclass(frozen=True)
class ModelIdentity:
    """Registered name and version of a model, written on every output row."""

    name: str
    version: str


def score_columns(n_reasons: int = 3) -> list[str]:
    """Columns of the output, in order."""
    reasons = [c for k in range(1, n_reasons + 1)
               for c in (f"reason_{k}", f"reason_{k}_feature", f"reason_{k}_contribution")]
    return ["customer_id", "as_of", "churn_probability", "repurchase_probability", "risk_band", *reasons,
            "tier", *LEVEL_COLUMNS, "value_segment", "predicted_value_segment", "ltv", "recommended_action",
            "churn_model_name", "churn_model_version", "repurchase_model_name", "repurchase_model_version"]


# --------------------------------------------------------------------------------------------
# Dates, paths, inputs
# --------------------------------------------------------------------------------------------


def default_output_path(as_of: dt.date, fmt: str = "parquet", root: str | Path = "scores") -> Path:
    """``scores/as_of=YYYY-MM-DD/scores.<fmt>``."""
    return Path(root) / f"as_of={as_of.isoformat()}" / f"scores.{fmt}"


def model_inputs(
    features: pd.DataFrame,
    models: Mapping[str, ChurnModel],
    bgnbd_columns: Callable[[pd.DataFrame, int], pd.DataFrame] | None = None,
) -> dict[str, pd.DataFrame]:
    """Each model's input table: the features plus the extra columns it was trained with.

    Models trained with ``train.bgnbd_features`` need BG/NBD P(alive) and expected purchases; as
    in training they are fitted on the scoring table's own rows, with the model's horizon.
    ``bgnbd_columns(features, horizon_days)`` gives them otherwise (from a fit on the whole
    population, when ``features`` is one piece of it).

    Raises
    ------
    ValueError
        If a model predicts another target than the one it is given for.
    FeatureMismatchError
        If the table lacks a model feature or holds one with another type.
    """
    extras_by_horizon: dict[int, pd.DataFrame] = {}
    inputs: dict[str, pd.DataFrame] = {}
    for target, model in models.items():
        if getattr(model, "target", target) != target:
            raise ValueError(f"the {target} model predicts '{model.target}'; check the model URIs")
        frame = features
        if uses_bgnbd_features(model):
            horizon = int(model.horizon_days)
            if horizon not in extras_by_horizon:
                extras_by_horizon[horizon] = (bgnbd_columns(features, horizon) if bgnbd_columns is not None
                                              else bgnbd_features(features, horizon_days=horizon))
            frame = features.assign(**{c: extras_by_horizon[horizon][c] for c in BGNBD_FEATURE_COLUMNS})
        model.check_features(frame)
        inputs[target] = frame
    return inputs


# The score table
# --------------------------------------------------------------------------------------------


def score_customers(
    inputs: Mapping[str, pd.DataFrame],
    models: Mapping[str, ChurnModel],
    as_of: dt.date,
    config: ScoringConfig = ScoringConfig(),
    context: ReasonContext | None = None,
    identities: Mapping[str, ModelIdentity] | None = None,
    thresholds: ValueThresholds | None = None,
    reason_cut: ReasonCut | None = None,
    references: Mapping[str | None, PriorReference] | None = None,
) -> pd.DataFrame:
    """One row per customer: probabilities, band, reasons, tier, segment, LTV, action, models.

    Parameters
    ----------
    inputs : mapping of str to pandas.DataFrame
        ``churn`` and ``repurchase`` input tables from :func:`model_inputs` (same rows, in the
        same order, sorted by ``customer_id``).
    models : mapping of str to ChurnModel
        ``churn`` and ``repurchase`` models.
    as_of : datetime.date
        The scoring date, written on every row.
    config : ScoringConfig
        Bands, number of reasons, playbook.
    context : ReasonContext, optional
        Settings quoted in reason phrases; default: the default features and the churn model's
        horizon. Its ``peers`` default to :func:`churnml.scoring.reasons.peer_norms` of the
        customers in ``inputs`` (pass the whole population's when ``inputs`` is one piece of it).
    identities : mapping of str to ModelIdentity, optional
        Registered name and version of each model; default: the target and ``"unknown"``.
    thresholds : ValueThresholds, optional
        The medians that split the value segments; default: those of the customers in ``inputs``
        (pass the whole population's when ``inputs`` is one piece of it).
    reason_cut : ReasonCut, optional
        For ``config.reasons_for="top_fraction"``: who gets reasons, decided on the whole
        population (:func:`churnml.scoring.policy.reason_cut`); default: the riskiest share of
        the customers in ``inputs``.
    references : mapping, optional
        The reference customers the BTYD prior's shares are measured against
        (:func:`churnml.models.attribution.prior_references`); default: those of ``inputs``
        (pass the whole population's when ``inputs`` is one piece of it).

    Returns
    -------
    pandas.DataFrame
        The columns of :func:`score_columns`, sorted by ``customer_id``.
    """
    churn_model, repurchase_model = models["churn"], models["repurchase"]
    churn_inputs, repurchase_inputs = inputs["churn"], inputs["repurchase"]
    if len(churn_inputs) != len(repurchase_inputs) or not churn_inputs["customer_id"].equals(repurchase_inputs["customer_id"]):
        raise ValueError("the churn and repurchase input tables must hold the same customers in the same order")
    context = context or ReasonContext(horizon_days=int(churn_model.horizon_days))
    if context.peers is None:
        context = replace(context, peers=peer_norms(churn_inputs, churn_model.feature_names_in_))
    identities = identities or {t: ModelIdentity(t, "unknown") for t in TARGETS}

    encodings: dict[tuple, np.ndarray] = {}
    # Who gets reasons is decided on the probabilities, before any contribution is computed.
    chooser = (None if config.reasons_for == "all"
               else partial(rows_with_reasons, config, customer_ids=churn_inputs["customer_id"], cut=reason_cut))
    churn = model_scores(churn_model, churn_inputs, config.n_reasons, config.batch_size, config.tabulate_trees,
                         config.threads, encodings, reason_rows=chooser, references=references,
                         reason_filter=partial(_reason_filter, churn_inputs, context, config))
    repurchase = model_scores(repurchase_model, repurchase_inputs, 0, config.batch_size, config.tabulate_trees,
                              config.threads, encodings)
    # The encoded rows are as large as the feature table: freed before the reasons are phrased.
    del encodings
    churn_probability, repurchase_probability, reasons = churn.probability, repurchase.probability, churn.reasons
    quoted = churn_inputs if reasons.prior_log_odds is None else churn_inputs.assign(**{PRIOR: reasons.prior_log_odds})
    contributions = reasons.contributions
    # A reason is phrased in the direction its contribution pushes the risk.
    directions = np.where(contributions < 0, -1.0, 1.0)
    phrases = reason_phrases(reasons.names, reasons.indices, quoted, context, directions)
    # Every customer given reasons gets at least one, even when no feature pushes the risk up.
    unexplained = pd.isna(phrases[:, 0])
    if churn.reason_rows is not None:
        explained = np.zeros(len(churn_inputs), dtype=bool)
        explained[churn.reason_rows] = True
        unexplained &= explained
    phrases[:, 0] = np.where(unexplained, NO_RISK_FACTOR, phrases[:, 0])

    bands = _text_array(risk_band(churn_probability, config.risk_bands))
    ltv = pd.to_numeric(churn_inputs["ltv"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    segments = _text_column(churn_inputs["value_segment"])
    predicted_segments = _text_array(predicted_value_segment(ltv, repurchase_probability, thresholds))
    tiers = _text_column(churn_inputs["tier"])
    playbook_rows = pd.DataFrame({
        "tier": tiers,
        "value_segment": segments,
        "predicted_value_segment": predicted_segments,
        "risk_band": bands,
        "days_past_usual_gap": days_past_usual_gap(churn_inputs),
        "downgrade_at_risk": (churn_inputs["downgrade_at_risk"].fillna(False).to_numpy(dtype=bool)
                              if "downgrade_at_risk" in churn_inputs else False),
    })
    columns: dict[str, Any] = {
        "customer_id": _text_column(churn_inputs["customer_id"]),
        "as_of": np.full(len(churn_inputs), as_of, dtype=object),
        "churn_probability": churn_probability.astype(float),
        "repurchase_probability": repurchase_probability.astype(float),
        "risk_band": bands,
    }
    for slot in range(config.n_reasons):
        k = slot + 1
        columns[f"reason_{k}"] = _text_array(phrases[:, slot])
        columns[f"reason_{k}_feature"] = _text_by_code(reasons.names, reasons.indices[:, slot])
        columns[f"reason_{k}_contribution"] = contributions[:, slot]
    columns.update({
        "tier": tiers,
        **_level_columns(churn_inputs),
        "value_segment": segments,
        "predicted_value_segment": predicted_segments,
        # Cents: sums of amounts may differ in the last bits between engine runs.
        "ltv": np.round(ltv, 2),
        "recommended_action": _text_array(recommend_actions(playbook_rows, config.playbook, config.default_action)),
    })
    for target in TARGETS:
        columns[f"{target}_model_name"] = _text_by_code([identities[target].name], np.zeros(len(churn_inputs), np.int64))
        columns[f"{target}_model_version"] = _text_by_code([str(identities[target].version)],
                                                           np.zeros(len(churn_inputs), np.int64))
    return pd.DataFrame(columns)[score_columns(config.n_reasons)]


def _level_columns(inputs: pd.DataFrame) -> dict[str, Any]:
    """The score table's level columns from the feature table; missing values where it has none."""
    n = len(inputs)
    level = (_text_column(inputs["membership_level"]) if "membership_level" in inputs
             else _text_array(np.full(n, None, dtype=object)))
    gaps = {c: (pd.to_numeric(inputs[c], errors="coerce").to_numpy(dtype=float, na_value=np.nan) if c in inputs
                else np.full(n, np.nan)) for c in LEVEL_COLUMNS[1:]}
    return {"membership_level": level, **gaps}


def _reason_filter(inputs: pd.DataFrame, context: ReasonContext, config: ScoringConfig, positions: np.ndarray,
                   probability: np.ndarray, names: list[str]) -> ReasonFilter:
    """The contributions of the rows at ``positions`` that may be reasons: those raising the risk
    for the high and medium bands, those lowering it for the low band
    (:func:`churnml.scoring.policy.reason_signs`), whose value reads that way
    (:func:`churnml.scoring.reasons.reason_eligibility`)."""
    signs = reason_signs(probability, config.risk_bands)
    # Every row (the default): the columns as they are, not a copy of their rows.
    every_row = len(positions) == len(inputs)
    return ReasonFilter(signs, reason_eligibility(names, inputs, context, signs, None if every_row else positions))


def _text_column(column: pd.Series) -> np.ndarray | pd.api.extensions.ExtensionArray:
    """An input column as it goes into the score table: its own array when it is text already
    (nothing to convert), else its values for pandas to type."""
    return column.array if isinstance(column.dtype, pd.StringDtype) else column.to_numpy(dtype=object)


def _text_array(values: np.ndarray) -> np.ndarray | pd.api.extensions.ExtensionArray:
    """Text values (None or NaN where missing) as the array pandas would make of them.

    With pandas' string inference (pandas 3) that is an Arrow string array, converted here by
    Arrow in one pass: pandas' own conversion checks every value in Python, about 0.3 s per
    million. Without it, the object array itself.
    """
    if not pd.get_option("future.infer_string"):
        return values
    return pd.array(pa.array(values, type=pa.large_string(), from_pandas=True), dtype="str")


def _text_by_code(labels: Sequence[str], codes: np.ndarray) -> np.ndarray | pd.api.extensions.ExtensionArray:
    """``labels[code]`` for each code (None for -1) as :func:`_text_array` gives text, taken from
    the few labels rather than converted value by value."""
    if not pd.get_option("future.infer_string"):
        return np.asarray([*labels, None], dtype=object)[np.where(codes >= 0, codes, len(labels))]
    taken = pa.array(labels, type=pa.large_string()).take(pa.array(codes, mask=codes < 0))
    return pd.array(taken, dtype="str")


def write_scores(scores: pd.DataFrame, path: str | Path, fmt: str = "parquet") -> Path:
    """Write the score table to a temporary file beside ``path`` and rename it into place.

    The same table gives a byte-identical file; a failure leaves nothing at ``path``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown score.format '{fmt}': use one of {FORMATS}")
    return write_frame_atomic(scores, path, fmt)


# --------------------------------------------------------------------------------------------
