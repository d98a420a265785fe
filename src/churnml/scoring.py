"""Batch scoring: churn and repurchase probabilities, risk bands, reasons and a recommended action
for every customer with history at an ``as_of`` date.

Plain functions over DataFrames; the ``churnml-score`` stage loads the models, tracks the run and
writes the file. One output row per customer:

- ``churn_probability`` / ``repurchase_probability``: the calibrated probabilities of the two
  models (their horizons are the models' ``horizon_days``).
- ``risk_band``: high / medium / low from thresholds on the churn probability.
- ``reason_<k>``, ``reason_<k>_feature``, ``reason_<k>_contribution``: the features that raise
  the churn risk most for this customer, as short phrases, with their exact contribution to the
  churn model's raw score in log-odds (LightGBM ``pred_contrib``; for a model boosted from
  BG/NBD, the prior's log-odds count as one more contribution, ``bgnbd_prior``). Only
  risk-raising contributions are reported; a customer with none gets one phrase saying so.
- ``tier``: the loyalty tier of the feature table.
- ``value_segment``: value x potential, re-derived at scoring time: value is high when the
  customer's LTV is above the median LTV of the customers scored, potential is high when the
  repurchase probability is above the median repurchase probability.
- ``ltv``: the feature table's lifetime value (average order value x purchases per year x
  expected years), not adjusted for the churn risk.
- ``recommended_action``: the first playbook rule that matches tier, value segment, risk band
  and whether a purchase is overdue.
- ``churn_model_name`` / ``churn_model_version`` and the same for the repurchase model.

For LightGBM models with small trees (the default has 7 leaves) probabilities and exact
contributions come from lookup tables built from the trees (see "Scores of one model" below):
the same numbers as LightGBM's ``predict`` and ``pred_contrib``, checked on a sample of rows at
every run, in a small fraction of the time.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.util
import logging
import math
import re
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from churnml.baselines import BGNBD_FEATURE_COLUMNS, bgnbd_features
from churnml.features import FeatureConfig, as_date, build_features, to_frame
from churnml.io import Dataset, write_frame_atomic
from churnml.modeling import BIAS, PRIOR, ChurnModel, category_codes
from churnml.segments import TIERS, VALUE_SEGMENTS

log = logging.getLogger(__name__)

RISK_BANDS = ("high", "medium", "low")
TARGETS = ("churn", "repurchase")
FORMATS = ("parquet", "csv")
NO_RISK_FACTOR = "no feature raises the churn risk"


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RiskBands:
    """Churn-probability thresholds: ``high`` at or above ``high``, ``medium`` at or above
    ``medium``, ``low`` below it."""

    high: float = 0.6
    medium: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.medium <= self.high <= 1.0:
            raise ValueError(f"risk bands need 0 <= medium <= high <= 1, got medium={self.medium}, high={self.high}")


@dataclass(frozen=True)
class PlaybookRule:
    """One playbook line: an action and the conditions a customer must meet for it.

    A condition left as ``None`` matches everyone; a rule with no conditions matches every row.

    Parameters
    ----------
    name : str
        Rule name, for messages.
    action : str
        What the retention team should do.
    tier, value_segment, risk_band : tuple of str, optional
        Allowed values of those columns.
    overdue : bool, optional
        ``True``: only customers whose next purchase is overdue (``days_overdue > 0``);
        ``False``: only those who are not.
    """

    name: str
    action: str
    tier: tuple[str, ...] | None = None
    value_segment: tuple[str, ...] | None = None
    risk_band: tuple[str, ...] | None = None
    overdue: bool | None = None

    def __post_init__(self) -> None:
        allowed = {"tier": TIERS, "value_segment": VALUE_SEGMENTS, "risk_band": RISK_BANDS}
        for column, known in allowed.items():
            values = getattr(self, column)
            if values is None:
                continue
            if isinstance(values, str):
                raise ValueError(f"playbook rule '{self.name}': {column} must be a list, got '{values}'")
            unknown = sorted(set(values) - set(known))
            if unknown:
                raise ValueError(f"playbook rule '{self.name}': unknown {column} {unknown}; known: {list(known)}")

    @classmethod
    def from_dict(cls, name: str, settings: Mapping[str, Any]) -> "PlaybookRule":
        known = {f.name for f in fields(cls)} - {"name"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"playbook rule '{name}' has unknown keys {unknown}; use {sorted(known)}")
        if not settings.get("action"):
            raise ValueError(f"playbook rule '{name}' needs an action")
        values = dict(settings)
        for key in ("tier", "value_segment", "risk_band"):
            if values.get(key) is not None and not isinstance(values[key], str):
                values[key] = tuple(values[key])
        return cls(name=name, **values)


DEFAULT_PLAYBOOK = (
    PlaybookRule("high_value_at_risk", "dedicated account manager",
                 value_segment=("high_value_high_potential", "high_value_low_potential"), risk_band=("high",)),
    PlaybookRule("win_back", "win-back offer", tier=("dormant",)),
    PlaybookRule("replenishment", "replenishment reminder", overdue=True, risk_band=("high", "medium")),
    PlaybookRule("upgrade", "upgrade offer", tier=("potential",)),
    PlaybookRule("loyalty", "loyalty reward", tier=("core",), risk_band=("low",)),
)
DEFAULT_ACTION = "nurture email"


@dataclass(frozen=True)
class ScoringConfig:
    """How scores become bands, reasons and actions (``score`` in the Hydra config)."""

    risk_bands: RiskBands = field(default_factory=RiskBands)
    n_reasons: int = 3
    playbook: tuple[PlaybookRule, ...] = DEFAULT_PLAYBOOK
    default_action: str = DEFAULT_ACTION
    # Contributions are computed this many rows at a time, which bounds their memory.
    batch_size: int = 200_000
    # Score small LightGBM trees through exact lookup tables (checked against the model each run).
    tabulate_trees: bool = True
    # Threads for the tabulated trees; None = all cores.
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.n_reasons < 1:
            raise ValueError(f"score.reasons must be at least 1, got {self.n_reasons}")
        if self.batch_size < 1:
            raise ValueError(f"score.batch_size must be positive, got {self.batch_size}")

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> "ScoringConfig":
        """Build from the ``score`` config node; keys that are not about scores are ignored."""
        values: dict[str, Any] = {}
        if settings.get("risk_bands") is not None:
            values["risk_bands"] = RiskBands(**settings["risk_bands"])
        if settings.get("reasons") is not None:
            values["n_reasons"] = int(settings["reasons"])
        if settings.get("playbook") is not None:
            values["playbook"] = tuple(PlaybookRule.from_dict(name, rule) for name, rule in settings["playbook"].items())
        if settings.get("default_action"):
            values["default_action"] = str(settings["default_action"])
        if settings.get("batch_size"):
            values["batch_size"] = int(settings["batch_size"])
        if settings.get("tabulate_trees") is not None:
            values["tabulate_trees"] = bool(settings["tabulate_trees"])
        if settings.get("threads"):
            values["threads"] = int(settings["threads"])
        return cls(**values)


@dataclass(frozen=True)
class ReasonContext:
    """Feature settings that reason phrases quote (window lengths, the churn model's horizon)."""

    order_value_window_days: int = 90
    order_value_drop: float = 0.4
    no_repurchase_days: int = 90
    interaction_window_days: int = 90
    shortest_window_days: int = 30
    horizon_days: int = 90

    @classmethod
    def from_features(cls, config: FeatureConfig, horizon_days: int) -> "ReasonContext":
        return cls(
            order_value_window_days=config.order_value_window_days,
            order_value_drop=config.order_value_drop,
            no_repurchase_days=config.no_repurchase_days,
            interaction_window_days=config.interaction_window_days,
            shortest_window_days=min(config.windows_days),
            horizon_days=horizon_days,
        )


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
            "tier", "value_segment", "ltv", "recommended_action",
            "churn_model_name", "churn_model_version", "repurchase_model_name", "repurchase_model_version"]


# --------------------------------------------------------------------------------------------
# Dates, paths, inputs
# --------------------------------------------------------------------------------------------


def resolve_as_of(as_of: str | dt.date | None, first_date: dt.date, last_date: dt.date) -> dt.date:
    """The scoring date: given, or the last date in the data; refused outside the data's range.

    Raises
    ------
    ValueError
        If ``as_of`` is before the first or after the last date in the data: before, no customer
        has history; after, the features would treat days without data as days without purchases.
    """
    day = as_date(as_of) if as_of else last_date
    if day < first_date:
        raise ValueError(f"as_of {day} is before the first date in the data ({first_date}): no customer has history yet")
    if day > last_date:
        raise ValueError(
            f"as_of {day} is after the last date in the data ({last_date}): the days in between have no data and "
            f"would look like days without purchases; score at {last_date} or earlier"
        )
    return day


def default_output_path(as_of: dt.date, fmt: str = "parquet", root: str | Path = "scores") -> Path:
    """``scores/as_of=YYYY-MM-DD/scores.<fmt>``."""
    return Path(root) / f"as_of={as_of.isoformat()}" / f"scores.{fmt}"


def model_uris(settings: Mapping[str, Any], registered_model_prefix: str) -> dict[str, str]:
    """Where the churn and repurchase models come from: ``score.model_dir`` when set (exported
    directories ``<model_dir>/<prefix>-churn`` and ``-repurchase``), else the configured URIs."""
    model_dir = settings.get("model_dir")
    if model_dir:
        return {target: str(Path(model_dir) / f"{registered_model_prefix}-{target}") for target in TARGETS}
    return {target: str(settings[f"{target}_model_uri"]) for target in TARGETS}


def feature_frame(dataset: Dataset, as_of: dt.date, config: FeatureConfig = FeatureConfig()) -> pd.DataFrame:
    """The feature table at ``as_of`` as pandas, typed and ordered like a training snapshot."""
    frame = to_frame(build_features(dataset, as_of, config))
    # As in snapshots.snapshot, so that every column has the type the models were trained on.
    frame["cutoff"] = pd.Timestamp(as_of)
    if not frame["customer_id"].is_monotonic_increasing:
        frame = frame.sort_values("customer_id", kind="stable", ignore_index=True)
    return frame.reset_index(drop=True)


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
        if set(BGNBD_FEATURE_COLUMNS) & set(model.feature_names_in_):
            horizon = int(model.horizon_days)
            if horizon not in extras_by_horizon:
                extras_by_horizon[horizon] = (bgnbd_columns(features, horizon) if bgnbd_columns is not None
                                              else bgnbd_features(features, horizon_days=horizon))
            frame = features.assign(**{c: extras_by_horizon[horizon][c] for c in BGNBD_FEATURE_COLUMNS})
        model.check_features(frame)
        inputs[target] = frame
    return inputs


# --------------------------------------------------------------------------------------------
# Bands, segments, actions
# --------------------------------------------------------------------------------------------


def risk_band(churn_probability: pd.Series | np.ndarray, bands: RiskBands = RiskBands()) -> np.ndarray:
    """``high`` / ``medium`` / ``low`` for each churn probability."""
    p = np.asarray(churn_probability, dtype=float)
    return np.where(p >= bands.high, "high", np.where(p >= bands.medium, "medium", "low")).astype(object)


@dataclass(frozen=True)
class ValueThresholds:
    """The medians that split value (LTV) and potential (repurchase probability)."""

    ltv: float
    repurchase_probability: float


def value_thresholds(ltv: pd.Series | np.ndarray, repurchase_probability: pd.Series | np.ndarray) -> ValueThresholds:
    """Median LTV (missing counts as 0) and median repurchase probability of the customers scored."""
    value = np.nan_to_num(np.asarray(ltv, dtype=float), nan=0.0)
    potential = np.asarray(repurchase_probability, dtype=float)
    if value.size == 0:
        return ValueThresholds(np.nan, np.nan)
    return ValueThresholds(float(np.median(value)), float(np.median(potential)))


def scoring_value_segment(
    ltv: pd.Series | np.ndarray,
    repurchase_probability: pd.Series | np.ndarray,
    thresholds: ValueThresholds | None = None,
) -> np.ndarray:
    """Value x potential at scoring time.

    Value is high when LTV is above the median LTV of the customers scored, potential is high when
    the repurchase probability is above the median repurchase probability. "Above", not "at
    least": when most customers have no LTV the median is 0, and 0 is not high value. Scoring in
    pieces (one Spark partition at a time) passes the whole population's ``thresholds``.
    """
    value = np.nan_to_num(np.asarray(ltv, dtype=float), nan=0.0)
    potential = np.asarray(repurchase_probability, dtype=float)
    if value.size == 0:
        return np.array([], dtype=object)
    thresholds = thresholds or value_thresholds(value, potential)
    high_value = value > thresholds.ltv
    high_potential = potential > thresholds.repurchase_probability
    return np.select(
        [high_value & high_potential, high_value, high_potential],
        list(VALUE_SEGMENTS[:3]),
        default=VALUE_SEGMENTS[3],
    ).astype(object)


def recommend_actions(
    rows: pd.DataFrame, playbook: Sequence[PlaybookRule] = DEFAULT_PLAYBOOK, default_action: str = DEFAULT_ACTION
) -> np.ndarray:
    """The action of the first playbook rule each row matches, else ``default_action``.

    Parameters
    ----------
    rows : pandas.DataFrame
        Columns ``tier``, ``value_segment``, ``risk_band`` and, for rules about overdue
        purchases, ``days_overdue`` (missing counts as not overdue).
    """
    actions = np.full(len(rows), None, dtype=object)
    undecided = np.ones(len(rows), dtype=bool)
    overdue = None
    for rule in playbook:
        match = undecided.copy()
        for column in ("tier", "value_segment", "risk_band"):
            allowed = getattr(rule, column)
            if allowed is not None:
                match &= rows[column].isin(allowed).to_numpy()
        if rule.overdue is not None:
            if overdue is None:
                overdue = (pd.to_numeric(rows["days_overdue"], errors="coerce").fillna(0.0) > 0).to_numpy()
            match &= overdue if rule.overdue else ~overdue
        actions[match] = rule.action
        undecided &= ~match
    actions[undecided] = default_action
    return actions


# --------------------------------------------------------------------------------------------
# Reasons
# --------------------------------------------------------------------------------------------


def top_contributions(values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of the ``n`` largest positive entries of each row, largest first.

    Parameters
    ----------
    values : numpy.ndarray
        Contributions, one row per customer and one column per feature; only positive entries
        are chosen (set a column to -inf to leave it out).
    n : int
        How many to keep.

    Returns
    -------
    indices, contributions : numpy.ndarray
        Shape ``(rows, n)``; where a row has fewer than ``n`` positive contributions the rest are
        index -1 and contribution NaN.
    """
    n_rows, n_features = values.shape
    indices = np.full((n_rows, n), -1, dtype=np.int64)
    chosen = np.full((n_rows, n), np.nan)
    if n_rows == 0:
        return indices, chosen
    # Entries that cannot be chosen (not positive, NaN) become -inf; argmax takes the first of
    # equal values, so equal contributions come in feature order and reruns order them the same.
    candidates = np.array(values, dtype=float, order="C")
    candidates[~(candidates > 0)] = -np.inf
    rows = np.arange(n_rows)
    for slot in range(min(n, n_features)):
        best = candidates.argmax(axis=1)
        value = candidates[rows, best]
        found = value > 0
        indices[:, slot] = np.where(found, best, -1)
        chosen[:, slot] = np.where(found, value, np.nan)
        candidates[rows, best] = -np.inf
    return indices, chosen


@dataclass(frozen=True)
class TopReasons:
    """The risk-raising contributions kept for each customer.

    Attributes
    ----------
    names : list of str
        What ``indices`` point to: the contribution columns (the model's features, and
        ``bgnbd_prior`` for a model that boosts from BG/NBD).
    indices, contributions : numpy.ndarray
        As :func:`top_contributions`.
    prior_log_odds : numpy.ndarray or None
        The BG/NBD prior of each row in log-odds (the probability it stands for, not its
        contribution), for phrasing it; None without a prior.
    """

    names: list[str]
    indices: np.ndarray
    contributions: np.ndarray
    prior_log_odds: np.ndarray | None = None


def churn_reasons(model: ChurnModel, inputs: pd.DataFrame, n: int = 3, batch_size: int = 200_000) -> TopReasons:
    """The ``n`` contributions that raise each customer's churn score most.

    Contributions are the model's exact per-row contributions in log-odds (with the bias they sum
    to the raw score). Without a prior they are computed ``batch_size`` rows at a time and only
    the top ones kept, which bounds memory. A model that boosts from a BG/NBD prior fits that
    prior on the rows it is given, as ``predict_proba`` does on the whole table, so its
    contributions are computed on the whole table at once: per batch, each batch would get a
    prior of its own and the contributions would no longer add up to the probabilities' score.
    """
    if getattr(model, "prior", None):
        batch_size = max(len(inputs), 1)
    names: list[str] = [*model.feature_names_in_]
    tops = []
    for start in range(0, len(inputs), batch_size):
        contributions = model.contributions(inputs.iloc[start:start + batch_size])
        names = list(contributions.columns)
        values = contributions.to_numpy(dtype=float, copy=True)
        del contributions
        # The bias is the same for everyone: not a reason.
        values[:, names.index(BIAS)] = -np.inf
        tops.append(top_contributions(values, n))
        del values
    if not tops:
        return TopReasons(names, np.full((0, n), -1, dtype=np.int64), np.full((0, n), np.nan))
    return TopReasons(
        names=names,
        indices=np.concatenate([t[0] for t in tops]),
        contributions=np.concatenate([t[1] for t in tops]),
        prior_log_odds=model.prior_log_odds(inputs) if PRIOR in names else None,
    )


# --------------------------------------------------------------------------------------------
# Scores of one model: through its own methods, or through tabulated trees
# --------------------------------------------------------------------------------------------
#
# LightGBM's pred_contrib walks every tree for every row with TreeSHAP, about 0.8 microseconds
# per tree and row: for the default model (thousands of 7-leaf trees) and a million customers,
# about half an hour. A small tree has few decision patterns (which way each split sends the
# row: 2^6 for 7 leaves), and its exact TreeSHAP values depend on the row only through that
# pattern. So each tree's values, and its output, are computed once per pattern, and scoring a
# row is a table lookup per tree: about 10 nanoseconds, the same numbers to 1e-12. Each run
# checks the tables against the model's own contributions and probabilities on a sample of the
# rows and falls back to the model's methods if they differ (or if the trees are too large).

MAX_TABULATED_SPLITS = 8
# The table kernel tests this many of a tree's comparisons in one pass over the rows.
_COMPARISONS_PER_PASS = 6
VERIFICATION_ROWS = 256
# The contribution of a tabulated tree equals pred_contrib's up to rounding.
VERIFICATION_TOLERANCE = 1e-9
_MISSING_TYPES = {"None": 0, "Zero": 1, "NaN": 2}
# LightGBM's kZeroThreshold (1e-35f): values this close to 0 count as zero for missing type Zero.
_ZERO_THRESHOLD = float(np.float32(1e-35))


@dataclass(frozen=True)
class ModelScores:
    """What scoring needs from one model: the probability of each row and, when asked for, the
    top risk-raising contributions."""

    probability: np.ndarray
    reasons: TopReasons | None = None


@dataclass(frozen=True)
class TreeTables:
    """A LightGBM model's trees as lookup tables over their decision patterns.

    Bit ``j`` of a row's pattern in tree ``t`` is set when split ``j`` sends the row left.

    Attributes
    ----------
    n_splits : numpy.ndarray
        Splits per tree (0 for a single-leaf tree), shape ``(trees,)``.
    n_comparisons : numpy.ndarray
        How many of a tree's splits, its first ones, are plain ``value <= threshold`` tests
        (the others test categories or LightGBM's missing type Zero).
    comparison_column, comparison_threshold : numpy.ndarray
        Those tests in the table kernel's terms, ``(trees, k * 6)``: the split's feature, plus
        the number of features where a missing value goes left (the kernel reads that feature
        with -inf for NaN there), and the threshold; padded with NaN thresholds, which no value
        passes.
    split_feature, threshold, categorical, missing_type, default_left : numpy.ndarray
        Each split's feature index, threshold, whether it tests categories, LightGBM missing
        type (0 None, 1 Zero, 2 NaN) and default direction; shape ``(trees, max splits)``.
    category_mask : numpy.ndarray
        For categorical splits, the categories that go left as a bitset, ``(trees, max splits,
        words)``.
    n_used, used_features : numpy.ndarray
        The distinct features each tree splits on.
    shap : numpy.ndarray
        ``shap[t, i, p]``: exact TreeSHAP value of tree ``t``'s ``i``-th used feature for
        pattern ``p``.
    output : numpy.ndarray
        ``output[t, p]``: the tree's output (its leaf value) for pattern ``p``.
    constant : float
        Sum of the outputs of single-leaf trees.
    expected_value : float
        Sum over trees of the cover-weighted mean output: the ``bias`` of pred_contrib.
    prior_offset : float
        For a model boosted from a prior: the part of the prior its contributions put into the
        bias (their ``bgnbd_prior`` column is the prior minus this); set by
        :func:`verify_tables`.
    """

    n_splits: np.ndarray
    n_comparisons: np.ndarray
    comparison_column: np.ndarray
    comparison_threshold: np.ndarray
    split_feature: np.ndarray
    threshold: np.ndarray
    categorical: np.ndarray
    missing_type: np.ndarray
    default_left: np.ndarray
    category_mask: np.ndarray
    n_used: np.ndarray
    used_features: np.ndarray
    shap: np.ndarray
    output: np.ndarray
    constant: float
    expected_value: float
    prior_offset: float = 0.0


def _splits_and_leaves(node: Mapping[str, Any], splits: dict[int, Mapping[str, Any]]) -> None:
    if "split_index" in node:
        splits[node["split_index"]] = node
        _splits_and_leaves(node["left_child"], splits)
        _splits_and_leaves(node["right_child"], splits)


def _is_comparison(node: Mapping[str, Any]) -> bool:
    """Whether a split is a plain ``value <= threshold`` test (not categories, not missing type
    Zero), which the table kernel evaluates several at a time."""
    return node["decision_type"] != "==" and node["missing_type"] != "Zero"


def tabulate_tree(
    structure: Mapping[str, Any],
) -> tuple[list[Mapping[str, Any]], list[int], np.ndarray, np.ndarray, float]:
    """Exact TreeSHAP values and output of one tree for every decision pattern.

    TreeSHAP (path-dependent) is the Shapley value of the game ``v(S)``: the tree's output when
    the features in ``S`` follow the row and the others split by training cover. ``v(S)`` is
    computed here for every subset ``S`` of the tree's features and every pattern at once, and
    the Shapley values from the ``v(S)`` by their definition.

    Parameters
    ----------
    structure : mapping
        ``tree_structure`` of one tree of ``Booster.dump_model()``.

    Returns
    -------
    splits : list of mapping
        Split nodes, the plain comparisons first: bit ``j`` of a pattern is ``splits[j]``.
    features : list of int
        The distinct features the tree splits on.
    shap : numpy.ndarray
        ``(len(features), 2 ** len(splits))``.
    output : numpy.ndarray
        ``(2 ** len(splits),)``.
    expected_value : float
        Cover-weighted mean output (``v`` of the empty set).
    """
    by_index: dict[int, Mapping[str, Any]] = {}
    _splits_and_leaves(structure, by_index)
    splits = sorted(by_index.values(), key=lambda node: (not _is_comparison(node), node["split_index"]))
    bit_of = {node["split_index"]: bit for bit, node in enumerate(splits)}
    features = sorted({int(node["split_feature"]) for node in splits})
    n_subsets, n_patterns = 1 << len(features), 1 << len(splits)
    subsets = np.arange(n_subsets)[:, None]
    patterns = np.arange(n_patterns)[None, :]

    def game(node: Mapping[str, Any]) -> tuple[np.ndarray, float]:
        if "split_index" not in node:
            return np.full((n_subsets, n_patterns), float(node["leaf_value"])), float(node.get("leaf_count", 0))
        left, left_cover = game(node["left_child"])
        right, right_cover = game(node["right_child"])
        followed = ((subsets >> features.index(int(node["split_feature"]))) & 1) == 1
        goes_left = ((patterns >> bit_of[node["split_index"]]) & 1) == 1
        cover = left_cover + right_cover
        averaged = (left_cover * left + right_cover * right) / cover if cover > 0 else (left + right) / 2
        return np.where(followed, np.where(goes_left, left, right), averaged), float(node.get("internal_count", cover))

    value, _ = game(structure)
    k = len(features)
    sizes = np.array([bin(s).count("1") for s in range(n_subsets)])
    shap = np.zeros((k, n_patterns))
    for i in range(k):
        without = np.array([s for s in range(n_subsets) if not (s >> i) & 1], dtype=np.int64)
        weights = np.array([math.factorial(s) * math.factorial(k - s - 1) / math.factorial(k) for s in sizes[without]])
        shap[i] = weights @ (value[without | (1 << i)] - value[without])
    return splits, features, shap, value[n_subsets - 1], float(value[0, 0])


def tabulate_model(model: ChurnModel, max_splits: int = MAX_TABULATED_SPLITS) -> TreeTables | None:
    """The model's trees as :class:`TreeTables`, or None when they cannot be tabulated.

    Only LightGBM binary models with native preprocessing and trees of at most ``max_splits``
    splits (``num_leaves <= max_splits + 1``) qualify: the tables grow as 4 ** splits.

    The tables are kept on the model (``_tree_tables``, with the booster they came from), so a
    model is tabulated once: one tabulated before it is shipped to Spark's executors arrives
    with its tables.
    """
    booster = getattr(getattr(model, "estimator_", None), "booster_", None)
    cached = getattr(model, "_tree_tables", None)
    # Keyed by the booster itself: a refitted model has a new one (and pickling keeps the pair).
    # The table fields are part of the key: a model saved with tables of another layout gets new ones.
    key = (max_splits, tuple(f.name for f in fields(TreeTables)))
    if cached is not None and cached[0] == key and cached[1] is booster:
        return cached[2]
    tables = _tabulated_trees(model, max_splits)
    model._tree_tables = (key, booster, tables)
    return tables


def _tabulated_trees(model: ChurnModel, max_splits: int) -> TreeTables | None:
    estimator = getattr(model, "estimator_", None)
    if getattr(model, "preprocessing", None) != "native" or not hasattr(estimator, "booster_"):
        return None
    dump = estimator.booster_.dump_model()
    if dump.get("num_tree_per_iteration", 1) != 1 or dump.get("average_output"):
        return None
    trees = dump["tree_info"]
    if any(tree.get("num_leaves", 1) - 1 > max_splits or _has_linear_leaves(tree["tree_structure"]) for tree in trees):
        return None
    # Tables as wide as the largest tree needs, so that a tree's tables are a few kB.
    max_splits = max((tree.get("num_leaves", 1) - 1 for tree in trees), default=0) or 1
    n_trees, n_patterns = len(trees), 1 << max_splits
    n_features = len(model.feature_names_in_)
    comparisons_width = -(-max_splits // _COMPARISONS_PER_PASS) * _COMPARISONS_PER_PASS
    largest_category = max((int(c) for tree in trees for c in _category_lists(tree["tree_structure"])), default=0)
    words = largest_category // 64 + 1
    tables = TreeTables(
        n_splits=np.zeros(n_trees, np.int64),
        n_comparisons=np.zeros(n_trees, np.int64),
        comparison_column=np.zeros((n_trees, comparisons_width), np.int64),
        comparison_threshold=np.full((n_trees, comparisons_width), np.nan),
        split_feature=np.zeros((n_trees, max_splits), np.int64),
        threshold=np.zeros((n_trees, max_splits)),
        categorical=np.zeros((n_trees, max_splits), np.bool_),
        missing_type=np.zeros((n_trees, max_splits), np.int64),
        default_left=np.zeros((n_trees, max_splits), np.bool_),
        category_mask=np.zeros((n_trees, max_splits, words), np.uint64),
        n_used=np.zeros(n_trees, np.int64),
        used_features=np.zeros((n_trees, max_splits), np.int64),
        shap=np.zeros((n_trees, max_splits, n_patterns)),
        output=np.zeros((n_trees, n_patterns)),
        constant=0.0,
        expected_value=0.0,
    )
    constant = expected_value = 0.0
    for t, tree in enumerate(trees):
        structure = tree["tree_structure"]
        if "split_index" not in structure:
            constant += float(structure["leaf_value"])
            expected_value += float(structure["leaf_value"])
            continue
        splits, features, shap, output, tree_expected = tabulate_tree(structure)
        tables.n_splits[t] = len(splits)
        tables.n_comparisons[t] = sum(map(_is_comparison, splits))
        for j, node in enumerate(splits):
            tables.split_feature[t, j] = int(node["split_feature"])
            tables.missing_type[t, j] = _MISSING_TYPES[node["missing_type"]]
            tables.default_left[t, j] = bool(node["default_left"])
            if node["decision_type"] == "==":
                tables.categorical[t, j] = True
                for category in map(int, str(node["threshold"]).split("||")):
                    tables.category_mask[t, j, category // 64] |= np.uint64(1) << np.uint64(category % 64)
            else:
                tables.threshold[t, j] = float(node["threshold"])
            if j < tables.n_comparisons[t]:
                nan_low = n_features if _missing_goes_left(node) else 0
                tables.comparison_column[t, j] = tables.split_feature[t, j] + nan_low
                tables.comparison_threshold[t, j] = tables.threshold[t, j]
        tables.n_used[t] = len(features)
        tables.used_features[t, :len(features)] = features
        tables.shap[t, :len(features), :shap.shape[1]] = shap
        tables.output[t, :len(output)] = output
        expected_value += tree_expected
    return replace(tables, constant=constant, expected_value=expected_value)


def _missing_goes_left(node: Mapping[str, Any]) -> bool:
    """Where a comparison sends a missing value: missing type NaN, the default direction; None,
    where it sends 0."""
    if node["missing_type"] == "NaN":
        return bool(node["default_left"])
    return 0.0 <= float(node["threshold"])


def _has_linear_leaves(node: Mapping[str, Any]) -> bool:
    if "split_index" not in node:
        return "leaf_coeff" in node
    return _has_linear_leaves(node["left_child"]) or _has_linear_leaves(node["right_child"])


def _category_lists(node: Mapping[str, Any]) -> list[str]:
    if "split_index" not in node:
        return []
    own = str(node["threshold"]).split("||") if node["decision_type"] == "==" else []
    return own + _category_lists(node["left_child"]) + _category_lists(node["right_child"])


def encode_for_trees(model: ChurnModel, inputs: pd.DataFrame) -> np.ndarray:
    """The model's features as LightGBM reads them, one row per feature (``(features, rows)``).

    Numbers as float64 (missing as NaN); text as the code of its training category (unknown or
    missing as NaN), which is how LightGBM encodes the categoricals ChurnModel hands it.
    """
    encoded = np.empty((len(model.feature_names_in_), len(inputs)))
    for position, name in enumerate(model.feature_names_in_):
        values = inputs[name]
        if name in model.categories_:
            codes = category_codes(values, model.categories_[name]).astype(float)
            codes[codes < 0] = np.nan
            encoded[position] = codes
        else:
            encoded[position] = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return encoded


@functools.cache
def _tabulated_kernel() -> Callable[..., None]:
    """The compiled loop over blocks of rows and trees (numba, compiled on first use)."""
    import numba

    # cache: the compiled loop is kept in __pycache__, which saves the next run a few seconds.
    @numba.njit(nogil=True, parallel=True, cache=True)
    def kernel(features, n_splits, n_comparisons, comparison_column, comparison_threshold, split_feature, threshold,
               categorical, default_left, category_mask, n_used, used_features, shap, output, contributions, raw,
               with_contributions, block):
        n_features, n_rows = features.shape
        n_words = category_mask.shape[2]
        # Blocks of rows, trees inside: a tree's tables stay in cache while its rows stream by,
        # and blocks are independent, so threads can share them out.
        for b in numba.prange((n_rows + block - 1) // block):
            start = b * block
            size = min(n_rows, start + block) - start
            # The block's features, then the same with -inf for NaN: NaN fails every comparison
            # and goes right in ``value <= threshold``, -inf goes left (see comparison_column).
            columns = np.empty((2 * n_features, size))
            for f in range(n_features):
                values = features[f, start:start + size]
                as_is, nan_low = columns[f], columns[n_features + f]
                for r in range(size):
                    as_is[r] = values[r]
                    nan_low[r] = values[r] if values[r] == values[r] else -np.inf
            # One bit per split: at most MAX_TABULATED_SPLITS = 8, so a byte a row.
            pattern = np.zeros(size, np.uint8)
            total = np.zeros(size)
            for t in range(n_splits.shape[0]):
                if n_splits[t] == 0:
                    continue
                pattern[:] = 0
                # Comparisons six at a time (padded with ones no value passes): one pass over the
                # pattern serves them all, in a loop simple enough for the compiler to vectorise.
                for j in range(0, n_comparisons[t], _COMPARISONS_PER_PASS):
                    first, second = columns[comparison_column[t, j]], columns[comparison_column[t, j + 1]]
                    third, fourth = columns[comparison_column[t, j + 2]], columns[comparison_column[t, j + 3]]
                    fifth, sixth = columns[comparison_column[t, j + 4]], columns[comparison_column[t, j + 5]]
                    first_limit, second_limit = comparison_threshold[t, j], comparison_threshold[t, j + 1]
                    third_limit, fourth_limit = comparison_threshold[t, j + 2], comparison_threshold[t, j + 3]
                    fifth_limit, sixth_limit = comparison_threshold[t, j + 4], comparison_threshold[t, j + 5]
                    shift = np.uint8(j)
                    for r in range(size):
                        bits = (np.uint8(first[r] <= first_limit) | np.uint8(second[r] <= second_limit) << 1
                                | np.uint8(third[r] <= third_limit) << 2 | np.uint8(fourth[r] <= fourth_limit) << 3
                                | np.uint8(fifth[r] <= fifth_limit) << 4 | np.uint8(sixth[r] <= sixth_limit) << 5)
                        pattern[r] |= bits << shift
                for j in range(n_comparisons[t], n_splits[t]):
                    bit = np.uint8(1 << j)
                    values = features[split_feature[t, j], start:start + size]
                    if categorical[t, j]:
                        # LightGBM: missing and negative codes go right, as do codes beyond the mask.
                        # Branch-free (NaN fails both comparisons): a branch per row costs more
                        # than all of a tree's other splits.
                        words = category_mask[t, j]
                        limit = np.float64(n_words * 64)
                        shift = np.uint8(j)
                        for r in range(size):
                            value = values[r]
                            inside = (value >= 0.0) & (value < limit)
                            code = np.int64(value if inside else 0.0)
                            listed = (words[code >> 6] >> np.uint64(code & 63)) & np.uint64(1)
                            pattern[r] |= np.uint8(listed & np.uint64(inside)) << shift
                    else:
                        # Missing type Zero: NaN counts as 0, and 0 takes the default direction.
                        for r in range(size):
                            value = values[r]
                            if value != value:
                                value = 0.0
                            if -_ZERO_THRESHOLD <= value <= _ZERO_THRESHOLD:
                                if default_left[t, j]:
                                    pattern[r] |= bit
                            elif value <= threshold[t, j]:
                                pattern[r] |= bit
                if not with_contributions:
                    tree_output = output[t]
                    for r in range(size):
                        total[r] += tree_output[pattern[r]]
                else:
                    # The raw score is then the contributions' sum (plus the bias): a tree's
                    # TreeSHAP values add up to its output, which saves a lookup per tree.
                    # Features four at a time, then two, then one: the loop is bound by memory
                    # reads, and one read of a row's pattern then serves several features.
                    i = 0
                    while i + 3 < n_used[t]:
                        first = contributions[used_features[t, i], start:start + size]
                        second = contributions[used_features[t, i + 1], start:start + size]
                        third = contributions[used_features[t, i + 2], start:start + size]
                        fourth = contributions[used_features[t, i + 3], start:start + size]
                        first_values, second_values = shap[t, i], shap[t, i + 1]
                        third_values, fourth_values = shap[t, i + 2], shap[t, i + 3]
                        for r in range(size):
                            p = pattern[r]
                            first[r] += first_values[p]
                            second[r] += second_values[p]
                            third[r] += third_values[p]
                            fourth[r] += fourth_values[p]
                        i += 4
                    if i + 1 < n_used[t]:
                        first = contributions[used_features[t, i], start:start + size]
                        second = contributions[used_features[t, i + 1], start:start + size]
                        first_values, second_values = shap[t, i], shap[t, i + 1]
                        for r in range(size):
                            p = pattern[r]
                            first[r] += first_values[p]
                            second[r] += second_values[p]
                        i += 2
                    if i < n_used[t]:
                        first = contributions[used_features[t, i], start:start + size]
                        first_values = shap[t, i]
                        for r in range(size):
                            first[r] += first_values[pattern[r]]
            if not with_contributions:
                raw[start:start + size] = total

    return kernel


@functools.cache
def _top_kernel() -> Callable[..., None]:
    """The compiled selection behind :func:`top_contributions_by_column` (numba, compiled on first use)."""
    import numba

    @numba.njit(nogil=True, parallel=True, cache=True)
    def kernel(columns, last, indices, chosen, block):
        n_columns, n_rows = columns.shape
        n = indices.shape[1]
        for b in numba.prange((n_rows + block - 1) // block):
            start = b * block
            stop = min(n_rows, start + block)
            for c in range(n_columns + (1 if last.shape[0] else 0)):
                column = columns[c] if c < n_columns else last
                for r in range(start, stop):
                    value = column[r]
                    # Only positive values; a value equal to a kept one goes after it (feature order).
                    if not (value > 0.0) or (indices[r, n - 1] >= 0 and not (value > chosen[r, n - 1])):
                        continue
                    slot = n - 1
                    while slot > 0 and (indices[r, slot - 1] < 0 or value > chosen[r, slot - 1]):
                        indices[r, slot] = indices[r, slot - 1]
                        chosen[r, slot] = chosen[r, slot - 1]
                        slot -= 1
                    indices[r, slot] = c
                    chosen[r, slot] = value

    return kernel


def top_contributions_by_column(columns: np.ndarray, n: int, last: np.ndarray | None = None,
                                block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_contributions` of contributions stored a feature per row, as
    :func:`tabulated_scores` gives them, with ``last`` (one value per customer) as one more
    feature after them; compiled, and without copying the contributions into rows.
    """
    n_rows = columns.shape[1]
    indices = np.full((n_rows, n), -1, dtype=np.int64)
    chosen = np.full((n_rows, n), np.nan)
    if n_rows and n:
        last = np.zeros(0) if last is None else np.ascontiguousarray(last, dtype=float)
        _top_kernel()(np.ascontiguousarray(columns, dtype=float), last, indices, chosen, block)
    return indices, chosen


def tabulated_scores(
    tables: TreeTables, features: np.ndarray, with_contributions: bool = True, block: int = 4096,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw tree score (without any prior) of each row and, optionally, its exact contributions.

    Parameters
    ----------
    tables : TreeTables
    features : numpy.ndarray
        ``(features, rows)`` from :func:`encode_for_trees`.
    with_contributions : bool
        Also compute the contributions (about 1.5x the work of the raw score alone, which is
        then their sum plus ``tables.expected_value``).
    block : int
        Rows per block: a block's features and contributions stay in cache across trees.
    threads : int, optional
        Threads sharing the blocks; default all cores.

    Returns
    -------
    raw : numpy.ndarray
        ``(rows,)``: what LightGBM's ``predict(raw_score=True)`` gives.
    contributions : numpy.ndarray or None
        ``(features, rows)``: what ``pred_contrib`` gives, bias (``tables.expected_value``) apart.
    """
    import numba

    features = np.ascontiguousarray(features, dtype=float)
    n_features, n_rows = features.shape
    raw = np.zeros(0 if with_contributions else n_rows)
    contributions = np.zeros((n_features, n_rows) if with_contributions else (n_features, 0))
    kernel = _tabulated_kernel()
    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(threads or numba.config.NUMBA_NUM_THREADS, numba.config.NUMBA_NUM_THREADS)))
    try:
        kernel(features, tables.n_splits, tables.n_comparisons, tables.comparison_column, tables.comparison_threshold,
               tables.split_feature, tables.threshold, tables.categorical, tables.default_left, tables.category_mask,
               tables.n_used, tables.used_features, tables.shap, tables.output, contributions, raw, with_contributions,
               block)
    finally:
        numba.set_num_threads(previous)
    if with_contributions:
        return contributions.sum(axis=0) + tables.expected_value, contributions
    return raw + tables.constant, None


def probability_from_raw_score(model: ChurnModel, raw_score: np.ndarray) -> np.ndarray:
    """The model's probability for a raw score (log-odds, prior included), as ``predict_proba``
    maps it: through the fitted calibrator, or the logistic function without one."""
    calibrator = getattr(model, "calibrator_", None)
    if calibrator is None:
        return 1.0 / (1.0 + np.exp(-raw_score))
    if model.calibration == "sigmoid":
        return calibrator.predict_proba(raw_score.reshape(-1, 1))[:, 1]
    return calibrator.predict(raw_score)


def _prior_log_odds(model: ChurnModel, inputs: pd.DataFrame) -> np.ndarray:
    return model.prior_log_odds(inputs) if getattr(model, "prior", None) else np.zeros(len(inputs))


def verify_tables(model: ChurnModel, inputs: pd.DataFrame, tables: TreeTables,
                  n_rows: int = VERIFICATION_ROWS, tolerance: float = VERIFICATION_TOLERANCE,
                  with_contributions: bool = True) -> TreeTables | None:
    """The tables, if they give the model's own probabilities (and, ``with_contributions``, its
    contributions) on a sample of rows; None (with a warning) if they do not.

    The sample is scored on its own (a prior is fitted on the sample) on both paths alike. For a
    model with a prior, the returned tables also know how the model's contributions split the
    prior between its ``bgnbd_prior`` column and the bias (``prior_offset``).
    """
    rows = np.unique(np.linspace(0, len(inputs) - 1, min(n_rows, len(inputs))).astype(int))
    sample = inputs.iloc[rows]
    raw, contributions = tabulated_scores(tables, encode_for_trees(model, sample), with_contributions=with_contributions)
    prior = _prior_log_odds(model, sample)
    checks = {
        "probability": float(np.max(np.abs(probability_from_raw_score(model, raw + prior)
                                           - model.predict_proba(sample)[:, 1]), initial=0.0)),
    }
    offset = 0.0
    if with_contributions:
        expected = model.contributions(sample)
        offset = float(expected[BIAS].iloc[0]) - tables.expected_value if PRIOR in expected.columns else 0.0
        reported_prior = expected[PRIOR].to_numpy() if PRIOR in expected.columns else prior - offset
        checks.update({
            "contributions": float(np.max(np.abs(expected[list(model.feature_names_in_)].to_numpy().T - contributions),
                                          initial=0.0)),
            "bias": abs(float(expected[BIAS].iloc[0]) - tables.expected_value - offset),
            "prior": float(np.max(np.abs(reported_prior - (prior - offset)), initial=0.0)),
        })
    if all(np.isfinite(value) and value <= tolerance for value in checks.values()):
        return replace(tables, prior_offset=offset)
    log.warning("tabulated trees differ from the model (%s); using the model's own, slower, methods", checks)
    return None


def score_with_tables(model: ChurnModel, inputs: pd.DataFrame, tables: TreeTables, n_reasons: int = 0,
                      threads: int | None = None, encodings: dict[tuple, np.ndarray] | None = None) -> ModelScores:
    """Probabilities and top contributions from tabulated trees (see :func:`tabulate_model`).

    ``encodings`` keeps :func:`encode_for_trees` tables for the next model that reads the same
    rows the same way (the churn and repurchase models usually share their inputs).
    """
    prior = _prior_log_odds(model, inputs)
    key = _encoding_key(model, inputs)
    encoded = encodings.get(key) if encodings is not None else None
    if encoded is None:
        encoded = encode_for_trees(model, inputs)
        if encodings is not None:
            encodings[key] = encoded
    raw, contributions = tabulated_scores(tables, encoded, with_contributions=n_reasons > 0, threads=threads)
    probability = probability_from_raw_score(model, raw + prior)
    if not n_reasons:
        return ModelScores(probability)
    names = [*model.feature_names_in_]
    has_prior = bool(getattr(model, "prior", None))
    if has_prior:
        names.append(PRIOR)
    # As in the model's contributions: the prior relative to its share of the bias.
    indices, chosen = top_contributions_by_column(contributions, n_reasons,
                                                  prior - tables.prior_offset if has_prior else None)
    del contributions
    reasons = TopReasons(names, indices, chosen, prior if has_prior else None)
    return ModelScores(probability, reasons)


def score_with_model(model: ChurnModel, inputs: pd.DataFrame, n_reasons: int = 0,
                     batch_size: int = 200_000) -> ModelScores:
    """Probabilities and top contributions through the model's ``predict_proba`` and ``contributions``."""
    probability = model.predict_proba(inputs)[:, 1]
    return ModelScores(probability, churn_reasons(model, inputs, n_reasons, batch_size) if n_reasons else None)


def _encoding_key(model: ChurnModel, inputs: pd.DataFrame) -> tuple:
    categories = tuple((name, tuple(map(str, values))) for name, values in model.categories_.items())
    return id(inputs), tuple(model.feature_names_in_), categories


def model_scores(model: ChurnModel, inputs: pd.DataFrame, n_reasons: int = 0, batch_size: int = 200_000,
                 tabulate: bool = True, threads: int | None = None,
                 encodings: dict[tuple, np.ndarray] | None = None) -> ModelScores:
    """A model's probabilities (and top contributions when ``n_reasons``), the fast way when the
    model's trees can be tabulated and the tables agree with the model, else the model's own way.
    ``encodings`` is passed on to :func:`score_with_tables`.
    """
    started = time.perf_counter()
    # numba compiles the table lookups; it comes with shap, but the slow path needs nothing.
    if tabulate and len(inputs) and importlib.util.find_spec("numba") is not None:
        tables = tabulate_model(model)
        verified = (verify_tables(model, inputs, tables, with_contributions=n_reasons > 0)
                    if tables is not None else None)
        if verified is not None:
            scores = score_with_tables(model, inputs, verified, n_reasons, threads, encodings)
            log.info("%s model: %s rows through %s tabulated trees in %.1f s", model.target, f"{len(inputs):,}",
                     len(verified.n_splits), time.perf_counter() - started)
            return scores
        if tables is None:
            log.info("%s model: trees too large (or not LightGBM) to tabulate; using its own methods", model.target)
    scores = score_with_model(model, inputs, n_reasons, batch_size)
    log.info("%s model: %s rows through its own methods in %.1f s", model.target, f"{len(inputs):,}",
             time.perf_counter() - started)
    return scores


# A phrase renders the rows where the feature is present; ``missing`` is said where it is not.
Render = Callable[[pd.Series, pd.DataFrame, ReasonContext], pd.Series]


@dataclass(frozen=True)
class ReasonTemplate:
    """How to say why a feature raises the risk: ``render(value, rows, context)`` for rows with
    a value, ``missing`` (formatted with the context) for rows without; ``uses`` are the other
    columns ``render`` reads."""

    render: Render
    missing: str
    uses: tuple[str, ...] = ()


def _text(values: pd.Series) -> pd.Series:
    return values.astype(object).astype(str)


def _formatted(values: pd.Series, format_one: Callable[[float], str],
               rounded: Callable[[np.ndarray], np.ndarray] | None = None) -> pd.Series:
    """``format_one`` applied to each value; each distinct value is formatted once.

    ``rounded`` rounds the values to what the format shows, so that a million distinct amounts
    are a few thousand distinct texts to format (a million customers also have only a few
    thousand distinct day counts).
    """
    numbers = values.to_numpy(dtype=float)
    distinct, position = np.unique(rounded(numbers) if rounded is not None else numbers, return_inverse=True)
    texts = np.array([format_one(v) for v in distinct], dtype=object)
    return pd.Series(texts[position.reshape(-1)], index=values.index, dtype=object)


def _whole(values: pd.Series) -> pd.Series:
    """Whole numbers as text: 124, 1,250."""
    return _formatted(values, "{:,.0f}".format, np.round)


def _decimal(values: pd.Series) -> pd.Series:
    """Rates and ratios: one decimal, two below 0.1 (so that 0.04 does not read as 0.0), 0 as 0."""
    def shown(v: float) -> str:
        if v == 0:
            return "0"
        return f"{v:.2f}" if abs(v) < 0.1 else f"{v:,.1f}"

    return _formatted(values, shown, lambda v: np.where(np.abs(v) < 0.1, np.round(v, 2), np.round(v, 1)))


def _money(values: pd.Series) -> pd.Series:
    """Amounts: cents below 100, whole units above."""
    return _formatted(values, lambda v: f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}",
                      lambda v: np.where(np.abs(v) < 100, np.round(v, 2), np.round(v)))


def _percent(values: pd.Series) -> pd.Series:
    return _formatted(values, "{:.0%}".format, lambda v: np.round(v, 2))


def _plural(values: pd.Series, word: str, plural: str | None = None) -> pd.Series:
    """``"1 order"``, ``"3 orders"``."""
    counts = values.to_numpy(dtype=float)
    words = np.where(np.round(counts) == 1, word, plural or word + "s")
    return _whole(values) + " " + pd.Series(words, index=values.index, dtype=object)


def _flag_is_set(values: pd.Series) -> np.ndarray:
    return values.astype("boolean").fillna(False).to_numpy(dtype=bool)


def _either(condition: np.ndarray, when_true: pd.Series | str, when_false: pd.Series | str, index: pd.Index) -> pd.Series:
    def as_array(part: pd.Series | str) -> np.ndarray:
        return np.full(len(index), part, dtype=object) if isinstance(part, str) else part.to_numpy(dtype=object)

    return pd.Series(np.where(condition, as_array(when_true), as_array(when_false)), index=index, dtype=object)


def _patched(base: pd.Series | str, where: np.ndarray, patch: pd.Series, index: pd.Index) -> pd.Series:
    """``base`` (a text for every row, or one text for all) with the rows ``where`` replaced by
    ``patch``, the texts of those rows alone."""
    texts = np.full(len(index), base, dtype=object) if isinstance(base, str) else base.to_numpy(dtype=object, copy=True)
    # In numpy: a masked assignment to a pandas Series costs about ten times as much.
    texts[where] = patch.to_numpy(dtype=object)
    return pd.Series(texts, index=index, dtype=object)


def _usually_every(rows: pd.DataFrame) -> pd.Series:
    """`` (usually every 30)`` where the mean gap is known, else nothing."""
    gap = rows["mean_gap_days"] if "mean_gap_days" in rows else pd.Series(np.nan, index=rows.index)
    known = gap.notna().to_numpy()
    if not known.any():
        return pd.Series("", index=rows.index, dtype=object)
    return _patched("", known, " (usually every " + _whole(gap[known]) + ")", rows.index)


def _recency(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    today = value.to_numpy() <= 0
    return _either(today, "bought on the scoring day", "no purchase for " + _plural(value, "day") + _usually_every(rows), value.index)


def _overdue(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    late = value.to_numpy() > 0
    overdue = "next purchase " + _plural(value.abs(), "day") + " overdue" + _usually_every(rows)
    due = "next purchase due in " + _plural(value.abs(), "day") + _usually_every(rows)
    return _either(late, overdue, due, value.index)


def _overdue_ratio(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    return _decimal(value) + "x the usual gap since the last purchase" + _usually_every(rows)


def _aov_change(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    window = f" vs the previous {ctx.order_value_window_days} days"
    down = value.to_numpy() < 0
    return _either(down, "order value down " + _percent(-value) + window, "order value up " + _percent(value) + window,
                   value.index)


def _order_value_drop(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    dropped = _flag_is_set(value)
    change = rows["aov_change"] if "aov_change" in rows else pd.Series(np.nan, index=rows.index)
    window = f" vs the previous {ctx.order_value_window_days} days"
    specific = dropped & change.notna().to_numpy()
    text = _either(dropped, f"order value down more than {ctx.order_value_drop:.0%}{window}",
                   f"order value not down more than {ctx.order_value_drop:.0%}{window}", value.index)
    if specific.any():
        text = _patched(text, specific, "order value down " + _percent(-change[specific]) + window, value.index)
    return text


def _months(days: int) -> str:
    months = round(days / 30.4375)
    return f"{months} month{'s' if months != 1 else ''}" if months >= 1 and abs(days - months * 30.4375) < 3 else f"{days} days"


def _no_repurchase(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    period = _months(ctx.no_repurchase_days)
    return _either(_flag_is_set(value), f"no repurchase in {period}", f"bought in the last {period}", value.index)


def _interaction_rate(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    rate = rows["interactions_per_month"] if "interactions_per_month" in rows else value
    peers = rows["peer_interactions_per_month"] if "peer_interactions_per_month" in rows else pd.Series(np.nan, index=rows.index)
    known_peers = peers.notna().to_numpy()
    text = "interactions " + _decimal(rate) + " a month"
    if known_peers.any():
        text = _patched(text, known_peers, text[known_peers] + " (peers " + _decimal(peers[known_peers]) + ")", value.index)
    return text


def _simple(prefix: str, formatter: Callable[[pd.Series], pd.Series], suffix: str = "") -> Render:
    """``prefix + value + suffix``; prefix and suffix may quote the context (``{horizon_days}``)."""

    def render(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
        settings = vars(ctx)
        return prefix.format(**settings) + formatter(value) + suffix.format(**settings)

    return render


def _counted(word: str, suffix: str = "", plural: str | None = None) -> Render:
    def render(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
        return _plural(value, word, plural) + suffix

    return render


def _label(prefix: str) -> Render:
    def render(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
        return prefix + _text(value).str.replace("_", " ", regex=False)

    return render


def _interaction_trend(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    return (f"interactions over the last {ctx.shortest_window_days} days at " + _percent(value)
            + f" of the {ctx.interaction_window_days}-day pace")


def _frequency(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    none = value.to_numpy() <= 0
    return _either(none, "no purchase yet (refunds only)", _plural(value, "purchase") + " so far", value.index)


def _repeat_orders(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    none = value.to_numpy() <= 0
    return _either(none, "no repeat purchase yet", _plural(value, "repeat purchase") + " so far", value.index)


def _bgnbd_expected(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    return _decimal(value) + f" purchases expected in the next {ctx.horizon_days} days"


def _bgnbd_prior(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    # The prior is BG/NBD's churn probability in log-odds; 0 log-odds is an even chance.
    probability = pd.Series(1.0 / (1.0 + np.exp(-value.to_numpy(dtype=float))), index=value.index)
    return ("buying pattern (BG/NBD) gives a " + _percent(probability)
            + f" chance of no purchase in the next {ctx.horizon_days} days")


NO_RHYTHM = "no buying rhythm yet (fewer than two purchases)"

REASON_TEMPLATES: dict[str, ReasonTemplate] = {
    "recency_days": ReasonTemplate(_recency, "no purchase yet (refunds only)", ("mean_gap_days",)),
    "days_overdue": ReasonTemplate(_overdue, NO_RHYTHM, ("mean_gap_days",)),
    "overdue_ratio": ReasonTemplate(_overdue_ratio, NO_RHYTHM, ("mean_gap_days",)),
    "mean_gap_days": ReasonTemplate(_simple("buys every ", _whole, " days on average"), "no repeat purchase yet"),
    "gap_std_days": ReasonTemplate(_simple("irregular gaps between purchases (+/- ", _whole, " days)"),
                                   "too few purchases to tell how regular they are"),
    "last_gap_days": ReasonTemplate(_simple("last gap between purchases ", _whole, " days"), "no repeat purchase yet"),
    "frequency": ReasonTemplate(_frequency, "no purchase yet"),
    "repeat_orders": ReasonTemplate(_repeat_orders, "no repeat purchase yet"),
    "monetary_total": ReasonTemplate(_simple("spent ", _money, " in total"), "no purchase yet"),
    "avg_order_value": ReasonTemplate(_simple("average order ", _money), "no purchase yet"),
    "max_order_value": ReasonTemplate(_simple("largest order ", _money), "no purchase yet"),
    "tenure_days": ReasonTemplate(_simple("customer for ", _whole, " days"), "tenure unknown"),
    "purchase_span_days": ReasonTemplate(_simple("purchases spread over ", _whole, " days"), "no purchase yet"),
    "purchase_age_days": ReasonTemplate(_simple("first purchase ", _whole, " days ago"), "no purchase yet"),
    "aov_recent": ReasonTemplate(_simple("average order ", _money, " in the last {order_value_window_days} days"),
                                 "no order in the last {order_value_window_days} days"),
    "aov_previous": ReasonTemplate(_simple("average order ", _money, " in the {order_value_window_days} days before"),
                                   "no order in the {order_value_window_days} days before the last {order_value_window_days}"),
    "aov_change": ReasonTemplate(_aov_change, "no orders to compare in the last two {order_value_window_days}-day windows"),
    "order_value_drop_40": ReasonTemplate(_order_value_drop, "order value trend unknown", ("aov_change",)),
    "no_repurchase_3m": ReasonTemplate(_no_repurchase, "purchase history unknown"),
    "refund_amount": ReasonTemplate(_simple("refunds of ", _money), "no refunds"),
    "n_refunds": ReasonTemplate(_counted("refund"), "no refunds"),
    "refund_rate": ReasonTemplate(_simple("refunds are ", _percent, " of spend"), "refunds without purchases"),
    "net_spend": ReasonTemplate(_simple("net spend ", _money), "net spend unknown"),
    "n_categories": ReasonTemplate(_counted("category", " bought", "categories"), "no category bought"),
    "n_channels": ReasonTemplate(_counted("channel", " used"), "no channel used"),
    "items_per_order": ReasonTemplate(_simple("", _decimal, " items per order"), "no purchase yet"),
    "n_interactions": ReasonTemplate(_counted("interaction", " in total"), "no interaction yet"),
    "interactions_per_month": ReasonTemplate(_interaction_rate, "no interaction data", ("peer_interactions_per_month",)),
    "low_interaction": ReasonTemplate(_interaction_rate, "no interaction data",
                                      ("interactions_per_month", "peer_interactions_per_month")),
    "interaction_trend": ReasonTemplate(_interaction_trend, "no interaction in the last {interaction_window_days} days"),
    "days_since_interaction": ReasonTemplate(_simple("no interaction for ", _whole, " days"), "never interacted"),
    "days_since_signup": ReasonTemplate(_simple("signed up ", _whole, " days ago"), "signup date unknown"),
    "tier": ReasonTemplate(_label("loyalty tier: "), "loyalty tier unknown"),
    "value_segment": ReasonTemplate(_label("segment: "), "segment unknown"),
    "purchases_per_year": ReasonTemplate(_simple("", _decimal, " purchases a year"), "purchase rate unknown"),
    "ltv": ReasonTemplate(_simple("lifetime value ", _money), "lifetime value unknown"),
    "bgnbd_p_alive": ReasonTemplate(_simple("", _percent, " estimated chance of still being active"),
                                    "activity estimate unavailable"),
    "bgnbd_expected_purchases": ReasonTemplate(_bgnbd_expected, "purchase forecast unavailable"),
    PRIOR: ReasonTemplate(_bgnbd_prior, "buying pattern unknown"),
}

_WINDOWED = re.compile(r"^(orders|spend|interactions)_(\d+)d$")
_TREND = re.compile(r"^(orders|spend)_trend_(\d+)_(\d+)$")
_KIND_COUNT = re.compile(r"^([a-z_]+?)_(\d+)d$")


def _windowed_template(feature: str) -> ReasonTemplate | None:
    """Templates for the columns named after their window (``orders_90d``, ``orders_trend_30_90``...)."""
    if match := _WINDOWED.match(feature):
        what, days = match.group(1), match.group(2)
        if what == "spend":
            return ReasonTemplate(_simple("spent ", _money, f" in the last {days} days"), "spend unknown")
        word = "order" if what == "orders" else "interaction"
        return ReasonTemplate(_counted(word, f" in the last {days} days"), f"no {word} data")
    if match := _TREND.match(feature):
        what, short, long = match.groups()
        subject = "order" if what == "orders" else "spend"
        return ReasonTemplate(_simple(f"{subject} pace over the last {short} days at ", _percent, f" of the {long}-day pace"),
                              f"no {'orders' if what == 'orders' else 'spend'} in the last {long} days")
    if match := _KIND_COUNT.match(feature):
        kind, days = match.group(1).replace("_", " "), match.group(2)
        return ReasonTemplate(_counted(kind, f" in the last {days} days"), f"no {kind} data")
    return None


def _generic_template(feature: str) -> ReasonTemplate:
    def render(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
        if pd.api.types.is_numeric_dtype(value.dtype) and not pd.api.types.is_bool_dtype(value.dtype):
            shown = pd.Series([f"{v:.4g}" for v in value.to_numpy(dtype=float)], index=value.index, dtype=object)
        else:
            shown = _text(value)
        return f"{feature} = " + shown

    return ReasonTemplate(render, f"{feature} = missing")


def reason_template(feature: str) -> ReasonTemplate:
    """The phrase template of a feature; ``"<feature> = <value>"`` for features without one."""
    return REASON_TEMPLATES.get(feature) or _windowed_template(feature) or _generic_template(feature)


def describe(feature: str, rows: pd.DataFrame, context: ReasonContext = ReasonContext()) -> pd.Series:
    """A short phrase for each row about the value of ``feature``.

    Parameters
    ----------
    feature : str
        The feature the phrase is about.
    rows : pandas.DataFrame
        The rows, with ``feature`` and any columns its template also quotes (those that are
        absent are left out of the phrase).
    context : ReasonContext
        Window lengths and horizon quoted in phrases.

    Returns
    -------
    pandas.Series
        Text, index aligned with ``rows``.

    Examples
    --------
    >>> rows = pd.DataFrame({"recency_days": [124.0], "mean_gap_days": [30.0]})
    >>> describe("recency_days", rows).iloc[0]
    'no purchase for 124 days (usually every 30)'
    """
    template = reason_template(feature)
    value = rows[feature]
    present = value.notna().to_numpy()
    missing = template.missing.format(**vars(context))
    if not present.any():
        return pd.Series(missing, index=rows.index, dtype=object)
    if present.all():
        return pd.Series(template.render(value, rows, context).to_numpy(dtype=object), index=rows.index, dtype=object)
    return _patched(missing, present, template.render(value[present], rows.loc[present], context), rows.index)


def reason_phrases(
    feature_names: Sequence[str], indices: np.ndarray, frame: pd.DataFrame, context: ReasonContext = ReasonContext()
) -> np.ndarray:
    """Phrases for reason indices (as returned by :func:`churn_reasons`).

    Returns
    -------
    numpy.ndarray
        An object array shaped like ``indices``; ``None`` where the index is -1.
    """
    n_slots = indices.shape[1]
    feature_at = indices.ravel()
    phrases = np.full(feature_at.shape, None, dtype=object)
    listed = np.flatnonzero(feature_at >= 0)
    # Each feature's rows in all slots at once (a row names a feature in one slot at most), in
    # row order: one phrase call per feature, and row-ordered takes from the table.
    by_feature = listed[np.argsort(feature_at[listed], kind="stable")]
    for group in np.split(by_feature, np.flatnonzero(np.diff(feature_at[by_feature])) + 1):
        if not len(group):
            continue
        feature = feature_names[feature_at[group[0]]]
        template = reason_template(feature)
        needed = [c for c in (feature, *template.uses) if c in frame.columns]
        # Columns first: taking rows of the whole table would copy every column.
        phrases[group] = describe(feature, frame[needed].iloc[group // n_slots], context).to_numpy()
    return phrases.reshape(indices.shape)


# --------------------------------------------------------------------------------------------
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
        horizon.
    identities : mapping of str to ModelIdentity, optional
        Registered name and version of each model; default: the target and ``"unknown"``.
    thresholds : ValueThresholds, optional
        The medians that split the value segments; default: those of the customers in ``inputs``
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
    identities = identities or {t: ModelIdentity(t, "unknown") for t in TARGETS}

    encodings: dict[tuple, np.ndarray] = {}
    churn = model_scores(churn_model, churn_inputs, config.n_reasons, config.batch_size, config.tabulate_trees,
                         config.threads, encodings)
    repurchase = model_scores(repurchase_model, repurchase_inputs, 0, config.batch_size, config.tabulate_trees,
                              config.threads, encodings)
    # The encoded rows are as large as the feature table: freed before the reasons are phrased.
    del encodings
    churn_probability, repurchase_probability, reasons = churn.probability, repurchase.probability, churn.reasons
    quoted = churn_inputs if reasons.prior_log_odds is None else churn_inputs.assign(**{PRIOR: reasons.prior_log_odds})
    phrases = reason_phrases(reasons.names, reasons.indices, quoted, context)
    contributions = reasons.contributions
    # Every customer gets at least one reason, even when no feature pushes the risk up.
    phrases[:, 0] = np.where(pd.isna(phrases[:, 0]), NO_RISK_FACTOR, phrases[:, 0])

    bands = _text_array(risk_band(churn_probability, config.risk_bands))
    ltv = pd.to_numeric(churn_inputs["ltv"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    segments = _text_array(scoring_value_segment(ltv, repurchase_probability, thresholds))
    tiers = _text_column(churn_inputs["tier"])
    playbook_rows = pd.DataFrame({
        "tier": tiers,
        "value_segment": segments,
        "risk_band": bands,
        "days_overdue": churn_inputs["days_overdue"].to_numpy() if "days_overdue" in churn_inputs else np.nan,
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
        "value_segment": segments,
        # Cents: sums of amounts may differ in the last bits between engine runs.
        "ltv": np.round(ltv, 2),
        "recommended_action": _text_array(recommend_actions(playbook_rows, config.playbook, config.default_action)),
    })
    for target in TARGETS:
        columns[f"{target}_model_name"] = _text_by_code([identities[target].name], np.zeros(len(churn_inputs), np.int64))
        columns[f"{target}_model_version"] = _text_by_code([str(identities[target].version)],
                                                           np.zeros(len(churn_inputs), np.int64))
    return pd.DataFrame(columns)[score_columns(config.n_reasons)]


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
# Summary
# --------------------------------------------------------------------------------------------


def summarize(scores: pd.DataFrame, n_top_reasons: int = 5) -> dict[str, Any]:
    """Counts for the console and the tracking run.

    Returns
    -------
    dict
        ``rows``, ``bands`` (count per risk band), ``mean_churn_probability``,
        ``mean_repurchase_probability``, ``actions`` (count per action), ``top_reasons`` (the
        features most often given as the first reason, with their counts).
    """
    bands = scores["risk_band"].value_counts()
    first_reasons = scores["reason_1_feature"].dropna().value_counts()
    first_reasons = first_reasons.sort_index().sort_values(ascending=False, kind="stable")
    actions = scores["recommended_action"].value_counts()
    actions = actions.sort_index().sort_values(ascending=False, kind="stable")
    return {
        "rows": int(len(scores)),
        "bands": {band: int(bands.get(band, 0)) for band in RISK_BANDS},
        "mean_churn_probability": float(scores["churn_probability"].mean()) if len(scores) else float("nan"),
        "mean_repurchase_probability": float(scores["repurchase_probability"].mean()) if len(scores) else float("nan"),
        "actions": {str(k): int(v) for k, v in actions.items()},
        "top_reasons": {str(k): int(v) for k, v in first_reasons.head(n_top_reasons).items()},
    }


def format_summary(summary: Mapping[str, Any], as_of: dt.date, path: str | Path) -> str:
    """The closing lines printed by ``churnml-score``."""
    rows = summary["rows"]

    def share(count: int) -> str:
        return f"{count:,} ({count / rows:.1%})" if rows else f"{count:,}"

    bands = ", ".join(f"{band} {share(count)}" for band, count in summary["bands"].items())
    reasons = ", ".join(f"{feature} {share(count)}" for feature, count in summary["top_reasons"].items())
    actions = ", ".join(f"{action} {count:,}" for action, count in summary["actions"].items())
    return "\n".join([
        f"scored {rows:,} customers at {as_of}: mean churn probability {summary['mean_churn_probability']:.3f}, "
        f"mean repurchase probability {summary['mean_repurchase_probability']:.3f}",
        f"risk bands: {bands}",
        f"top first reasons: {reasons or 'none'}",
        f"actions: {actions}",
        f"scores written to {path}",
    ])
