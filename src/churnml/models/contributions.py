"""Exact per-customer contributions and top reasons of a model: LightGBM's ``pred_contrib`` as the
reference path, and tabulated trees as an optional accelerator for small LightGBM trees.

:func:`contributions` gives every row's contributions, :func:`model_scores` what scoring needs
(probabilities and each row's top contributions, memory-bounded); both choose between the two
paths the same way, and on both the BTYD prior's contribution is split over the behaviours
behind it (:func:`attributed_contributions`, :mod:`churnml.models.attribution`).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import logging
import math
import time
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from churnml.models.attribution import (
    PriorReference,
    attribute_prior,
    prior_input_columns,
    prior_references,
    with_fixed_prior,
)
from churnml.models.classifier import BIAS, PRIOR, ChurnModel, category_codes

log = logging.getLogger(__name__)


# Reasons
# --------------------------------------------------------------------------------------------


def top_contributions(values: np.ndarray, n: int, signs: np.ndarray | None = None,
                      eligible: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of the ``n`` largest positive entries of each row, largest first.

    Parameters
    ----------
    values : numpy.ndarray
        Contributions, one row per customer and one column per feature; only positive entries
        are chosen (set a column to -inf to leave it out).
    n : int
        How many to keep.
    signs : numpy.ndarray, optional
        ``(rows,)``: 1 keeps a row's largest positive entries (what raises the score most), -1
        its most negative ones (what lowers it most), 0 none. Default: 1 for every row.
    eligible : numpy.ndarray, optional
        ``(columns, rows)`` booleans: the entries that may be chosen. Default: all.

    Returns
    -------
    indices, contributions : numpy.ndarray
        Shape ``(rows, n)``; where a row has fewer than ``n`` entries to choose from, the rest
        are index -1 and contribution NaN. Contributions keep their sign.
    """
    n_rows, n_features = values.shape
    indices = np.full((n_rows, n), -1, dtype=np.int64)
    chosen = np.full((n_rows, n), np.nan)
    if n_rows == 0:
        return indices, chosen
    # Entries that cannot be chosen (not positive, NaN) become -inf; argmax takes the first of
    # equal values, so equal contributions come in feature order and reruns order them the same.
    candidates = np.array(values, dtype=float, order="C")
    if signs is not None:
        candidates *= np.asarray(signs, dtype=float)[:, None]
    if eligible is not None:
        candidates[~np.asarray(eligible, dtype=bool).T] = -np.inf
    candidates[~(candidates > 0)] = -np.inf
    rows = np.arange(n_rows)
    for slot in range(min(n, n_features)):
        best = candidates.argmax(axis=1)
        value = candidates[rows, best]
        found = value > 0
        indices[:, slot] = np.where(found, best, -1)
        chosen[:, slot] = np.where(found, value, np.nan)
        candidates[rows, best] = -np.inf
    if signs is not None:
        chosen *= np.asarray(signs, dtype=float)[:, None]
    return indices, chosen


@dataclass(frozen=True)
class ReasonFilter:
    """Which contributions of some rows may be given as reasons.

    Attributes
    ----------
    signs : numpy.ndarray
        ``(rows,)``: 1 to give a row the contributions that raise its score most, -1 those that
        lower it most, 0 none.
    eligible : numpy.ndarray or None
        ``(columns, rows)`` booleans, columns as :attr:`TopReasons.names`: the contributions
        that may be given (a phrase can say them in the direction they push); None: all.
    """

    signs: np.ndarray
    eligible: np.ndarray | None = None


# Given the positions of the rows that get reasons, their probabilities and the contribution
# columns' names: which of their contributions may be reasons.
ReasonFilterFactory = Callable[[np.ndarray, np.ndarray, list], ReasonFilter]


@dataclass(frozen=True)
class TopReasons:
    """The contributions kept as each customer's reasons.

    Attributes
    ----------
    names : list of str
        What ``indices`` point to: the contribution columns (the model's features, and
        ``btyd_prior`` for a model that boosts from a BTYD prior: what of the prior no feature takes,
        see :func:`attributed_contributions`).
    indices, contributions : numpy.ndarray
        As :func:`top_contributions`.
    prior_log_odds : numpy.ndarray or None
        The BTYD prior of each row in log-odds (the probability it stands for, not its
        contribution), for phrasing it; None without a prior.
    """

    names: list[str]
    indices: np.ndarray
    contributions: np.ndarray
    prior_log_odds: np.ndarray | None = None


def attributed_contributions(model: ChurnModel, X: pd.DataFrame, frame: pd.DataFrame,
                             references: Mapping[str | None, PriorReference] | None = None,
                             prior: np.ndarray | None = None) -> pd.DataFrame:
    """Contributions with the BTYD prior's share split over the behaviours behind it.

    ``frame`` is laid out as :meth:`ChurnModel.contributions` (features, ``btyd_prior``, ``bias``).
    Each behaviour's share (:func:`churnml.models.attribution.attribute_prior`) is added to its
    feature (``recency_days``, ``frequency``, ``purchase_age_days`` or their stand-ins);
    ``btyd_prior`` keeps the shares of behaviours the model has no feature for (0 when it has
    them all), and the bias takes the reference customer's prior, the same for every customer
    of a cutoff. The contributions of BG/NBD's outputs among the features (P(alive), expected
    purchases) pass to the same behaviours where they can (the rescale rule, see
    :mod:`churnml.models.attribution`). Each row still adds up to the raw score. A frame
    without ``btyd_prior`` is returned as it is.

    Parameters
    ----------
    model : ChurnModel
        The model, with its BG/NBD fit fixed (``with_population_prior``).
    X : pandas.DataFrame
        The rows of ``frame``, with the BG/NBD source columns.
    frame : pandas.DataFrame
        ``(rows, features + 2)``, modified in place and returned.
    references : mapping, optional
        The population's reference customers (:func:`churnml.models.attribution.prior_references`);
        default: those of ``X``.
    prior : numpy.ndarray, optional
        ``model.prior_log_odds(X)``, when already computed.

    Returns
    -------
    pandas.DataFrame
    """
    if PRIOR not in frame.columns:
        return frame
    prior = model.prior_log_odds(X) if prior is None else prior
    attribution = attribute_prior(model, X, prior, references)
    names = list(model.feature_names_in_)
    columns = frame[names].to_numpy(dtype=float).T.copy()
    unattributed = attribution.apply(columns)
    frame[names] = columns.T
    # The prior's contribution less every share is the reference's prior (less the training mean).
    frame[BIAS] += frame[PRIOR].to_numpy() - attribution.shares.sum(axis=1)
    frame[PRIOR] = unattributed
    return frame


def _filter_rows(reason_filter: ReasonFilter | None, start: int, stop: int) -> dict[str, Any]:
    """The ``signs`` and ``eligible`` arguments of :func:`top_contributions` for rows start:stop
    of contributions laid out as :meth:`ChurnModel.contributions` (the bias last, never eligible)."""
    if reason_filter is None:
        return {}
    eligible = reason_filter.eligible
    if eligible is not None:
        eligible = np.vstack([eligible[:, start:stop], np.zeros((1, stop - start), dtype=bool)])
    return {"signs": reason_filter.signs[start:stop], "eligible": eligible}


def churn_reasons(model: ChurnModel, inputs: pd.DataFrame, n: int = 3, batch_size: int = 200_000,
                  references: Mapping[str | None, PriorReference] | None = None,
                  reason_filter: ReasonFilter | None = None) -> TopReasons:
    """The ``n`` contributions that raise each customer's churn score most (or, as
    ``reason_filter`` says, lower it most), through the model's own contributions.

    Contributions are the model's exact per-row contributions in log-odds (with the bias they sum
    to the raw score), with the BTYD prior split over the behaviours behind it
    (:func:`attributed_contributions`). They are computed ``batch_size`` rows at a time and only
    the top ones kept, which bounds memory. A model that boosts from a BTYD prior has it
    fitted once on all of ``inputs`` first (unless its fit is fixed already), as
    ``predict_proba`` fits it on the whole table, so that every batch gets the same prior.

    Parameters
    ----------
    model : ChurnModel
    inputs : pandas.DataFrame
        ``(rows, columns)`` with the model's features.
    n : int
    batch_size : int
    references : mapping, optional
        The population's reference customers for the prior's shares; default: those of ``inputs``.
    reason_filter : ReasonFilter, optional
        For the rows of ``inputs``; default: each row's largest positive contributions.

    Returns
    -------
    TopReasons
    """
    model = with_fixed_prior(model, inputs)
    has_prior = bool(getattr(model, "prior", None))
    if has_prior and references is None:
        references = prior_references(inputs)
    names: list[str] = [*model.feature_names_in_, *([PRIOR] if has_prior else []), BIAS]
    tops = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs.iloc[start:start + batch_size]
        contributions = attributed_contributions(model, batch, model.contributions(batch), references)
        names = list(contributions.columns)
        values = contributions.to_numpy(dtype=float, copy=True)
        del contributions
        # The bias is the same for everyone: not a reason.
        values[:, names.index(BIAS)] = -np.inf
        tops.append(top_contributions(values, n, **_filter_rows(reason_filter, start, start + len(batch))))
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
# Training tabulates a model once and keeps the tables on it (``tree_tables_``, set by
# attach_tree_tables), and warns when its trees are too large (tabulation_note).

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
    """What scoring needs from one model: the probability of each row and, when asked for, each
    row's top contributions (those raising its score most, or as a reason filter chose them).

    Attributes
    ----------
    probability : numpy.ndarray
        ``(rows,)``.
    reasons : TopReasons or None
        One row per input row; rows left out of ``reason_rows`` have index -1, contribution NaN
        and prior NaN.
    reason_rows : numpy.ndarray or None
        Positions (ascending) of the rows whose contributions were computed; None: every row.
    """

    probability: np.ndarray
    reasons: TopReasons | None = None
    reason_rows: np.ndarray | None = None


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
        bias (their ``btyd_prior`` column is the prior minus this); set by
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
    splits (``num_leaves <= max_splits + 1``) qualify: the tables grow as 4 ** splits
    (:func:`tabulation_note` says why a model does not).

    The model is left as it is: :func:`attach_tree_tables` keeps the tables on it, as training
    does.
    """
    dump = _tree_dump(model)
    if dump is None or _untabulated_reason(dump, max_splits) is not None:
        return None
    return _tabulated_trees(model, dump)


def tabulation_note(model: ChurnModel, max_splits: int = MAX_TABULATED_SPLITS) -> str | None:
    """Why scoring cannot look the model's trees up in tables, or None when it can (or when the
    model has no trees: a linear model's own contributions are fast).

    Parameters
    ----------
    model : ChurnModel
        A fitted model; one carrying ``tree_tables_`` is answered from them.
    max_splits : int
        The largest tree the tables cover, in splits.

    Returns
    -------
    str or None
        E.g. ``"trees of up to 31 leaves: tables cover at most 9 leaves; ..."``.
    """
    if getattr(model, "tree_tables_", None) is not None:
        return None
    dump = _tree_dump(model)
    return None if dump is None else _untabulated_reason(dump, max_splits)


def attach_tree_tables(model: ChurnModel, max_splits: int = MAX_TABULATED_SPLITS) -> str | None:
    """Tabulate a fitted model's trees and keep the tables on it as ``tree_tables_``.

    Training calls this once, so that the tables travel with the model (stored with it as arrays,
    shipped to Spark's executors) and no scoring run rebuilds them. ``tree_tables_`` is None when the
    trees cannot be tabulated: scoring then uses the model's own methods without trying again.

    Parameters
    ----------
    model : ChurnModel
        A fitted model; modified in place.
    max_splits : int
        The largest tree the tables cover, in splits.

    Returns
    -------
    str or None
        :func:`tabulation_note`: why the trees could not be tabulated, None when they were (or
        when the model has no trees).
    """
    # One dump of the trees serves both the tables and the reason they cannot be built.
    dump = _tree_dump(model)
    note = None if dump is None else _untabulated_reason(dump, max_splits)
    model.tree_tables_ = _tabulated_trees(model, dump) if dump is not None and note is None else None
    return note


def with_tree_tables(model: ChurnModel) -> ChurnModel:
    """The model if it carries ``tree_tables_``, else a shallow copy that does (the model itself
    is left as it is), for shipping to where it scores: every copy sent arrives tabulated.

    A model pickled before ``tree_tables_`` existed loses the private tables it carried then.
    """
    if hasattr(model, "tree_tables_"):
        return model
    tabulated = copy.copy(model)
    tabulated.__dict__.pop(_LEGACY_TABLES, None)
    tabulated.tree_tables_ = tabulate_model(model)
    return tabulated


# Where models kept their tables before ``tree_tables_``; ignored, and dropped from copies.
_LEGACY_TABLES = "_tree_tables"


def _tree_dump(model: ChurnModel) -> dict[str, Any] | None:
    """LightGBM's ``dump_model()`` of a model whose trees read the raw features, else None."""
    estimator = getattr(model, "estimator_", None)
    if getattr(model, "preprocessing", None) != "native" or not hasattr(estimator, "booster_"):
        return None
    return estimator.booster_.dump_model()


def _fallback(reason: str) -> str:
    return f"{reason}; scoring 1M customers with exact reasons falls back to LightGBM pred_contrib"


def _untabulated_reason(dump: Mapping[str, Any], max_splits: int) -> str | None:
    """Why the trees of ``Booster.dump_model()`` cannot be tabulated, or None."""
    trees = dump["tree_info"]
    if dump.get("num_tree_per_iteration", 1) != 1:
        return _fallback(f"{dump['num_tree_per_iteration']} trees per iteration: tables cover binary models only")
    if dump.get("average_output"):
        return _fallback("averaged trees (boosting=rf): tables cover boosted trees only")
    largest = max((tree.get("num_leaves", 1) for tree in trees), default=1)
    if largest - 1 > max_splits:
        return _fallback(f"trees of up to {largest} leaves: tables cover at most {max_splits + 1} leaves "
                         f"(model.num_leaves <= {max_splits + 1})")
    if any(_has_linear_leaves(tree["tree_structure"]) for tree in trees):
        return _fallback("linear trees (linear_tree=true): tables cover constant leaves only")
    return None


def _tabulated_trees(model: ChurnModel, dump: Mapping[str, Any]) -> TreeTables:
    """:func:`tabulate_model` of trees known to fit the tables."""
    trees = dump["tree_info"]
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
    def kernel(columns, last, signs, eligible, indices, chosen, block):
        n_columns, n_rows = columns.shape
        n = indices.shape[1]
        signed, filtered = signs.shape[0] > 0, eligible.shape[0] > 0
        for b in numba.prange((n_rows + block - 1) // block):
            start = b * block
            stop = min(n_rows, start + block)
            for c in range(n_columns + (1 if last.shape[0] else 0)):
                column = columns[c] if c < n_columns else last
                for r in range(start, stop):
                    if filtered and not eligible[c, r]:
                        continue
                    # Signed so that the chosen ones are always the largest positive values.
                    value = column[r] * signs[r] if signed else column[r]
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
                                block: int = 4096, signs: np.ndarray | None = None,
                                eligible: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_contributions` of contributions stored a feature per row, as
    :func:`tabulated_scores` gives them, with ``last`` (one value per customer) as one more
    feature after them; compiled, and without copying the contributions into rows.

    ``signs`` and ``eligible`` as in :func:`top_contributions` (``eligible`` with a row for
    ``last`` too, when it is given).
    """
    n_rows = columns.shape[1]
    indices = np.full((n_rows, n), -1, dtype=np.int64)
    chosen = np.full((n_rows, n), np.nan)
    if n_rows and n:
        last = np.zeros(0) if last is None else np.ascontiguousarray(last, dtype=float)
        signs = np.zeros(0) if signs is None else np.ascontiguousarray(signs, dtype=float)
        eligible = (np.zeros((0, 0), dtype=np.bool_) if eligible is None
                    else np.ascontiguousarray(eligible, dtype=np.bool_))
        _top_kernel()(np.ascontiguousarray(columns, dtype=float), last, signs, eligible, indices, chosen, block)
        if signs.shape[0]:
            chosen *= signs[:, None]
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
                  with_contributions: bool = True, threads: int | None = None) -> TreeTables | None:
    """The tables, if they give the model's own probabilities (and, ``with_contributions``, its
    contributions) on a sample of rows; None (with a warning) if they do not.

    The sample is scored on its own on both paths alike, with the model's BG/NBD fit when it is
    fixed (:func:`model_scores` fixes it on all the rows first), else with one fitted on the
    sample. For a model with a prior, the returned tables also know how the model's
    contributions split the prior between its ``btyd_prior`` column and the bias
    (``prior_offset``).
    """
    rows = np.unique(np.linspace(0, len(inputs) - 1, min(n_rows, len(inputs))).astype(int))
    sample = inputs.iloc[rows]
    raw, contributions = tabulated_scores(tables, encode_for_trees(model, sample), with_contributions=with_contributions,
                                          threads=threads)
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
                      threads: int | None = None, encodings: dict[tuple, np.ndarray] | None = None,
                      reason_rows: Callable[[np.ndarray], np.ndarray] | None = None,
                      references: Mapping[str | None, PriorReference] | None = None,
                      reason_filter: ReasonFilterFactory | None = None) -> ModelScores:
    """Probabilities and top contributions from tabulated trees (see :func:`tabulate_model`).

    ``encodings`` keeps :func:`encode_for_trees` tables for the next model that reads the same
    rows the same way (the churn and repurchase models usually share their inputs).
    ``reason_rows``, ``references`` and ``reason_filter`` as in :func:`model_scores`: with
    ``reason_rows``, every row's probability comes from its raw score alone, and contributions
    are computed for the chosen rows only. The prior's contribution is split over the
    behaviours behind it as in :func:`attributed_contributions`.
    """
    if n_reasons:
        model = with_fixed_prior(model, inputs)
    prior = _prior_log_odds(model, inputs)
    key = _encoding_key(model, inputs)
    encoded = encodings.get(key) if encodings is not None else None
    if encoded is None:
        encoded = encode_for_trees(model, inputs)
        if encodings is not None:
            encodings[key] = encoded
    rows = None
    if n_reasons and reason_rows is None:
        raw, contributions = tabulated_scores(tables, encoded, with_contributions=True, threads=threads)
    else:
        raw, _ = tabulated_scores(tables, encoded, with_contributions=False, threads=threads)
    probability = probability_from_raw_score(model, raw + prior)
    if not n_reasons:
        return ModelScores(probability)
    if reason_rows is not None:
        rows = _positions(reason_rows(probability), len(inputs))
        _, contributions = tabulated_scores(tables, encoded[:, rows], with_contributions=True, threads=threads)
    names = [*model.feature_names_in_]
    has_prior = bool(getattr(model, "prior", None))
    chosen_prior = prior if rows is None else prior[rows]
    unattributed = None
    if has_prior:
        names.append(PRIOR)
        population = prior_input_columns(inputs)
        attribution = attribute_prior(model, population if rows is None else population.iloc[rows], chosen_prior,
                                      references if references is not None else prior_references(population))
        unattributed = attribution.apply(contributions)
    positions = np.arange(len(inputs)) if rows is None else rows
    chosen_filter = reason_filter(positions, probability[positions], names) if reason_filter is not None else None
    indices, chosen = top_contributions_by_column(
        contributions, n_reasons, unattributed,
        signs=None if chosen_filter is None else chosen_filter.signs,
        eligible=None if chosen_filter is None else chosen_filter.eligible)
    del contributions
    reasons = TopReasons(names, indices, chosen, chosen_prior if has_prior else None)
    return ModelScores(probability, _spread(reasons, rows, len(inputs)), rows)


def score_with_model(model: ChurnModel, inputs: pd.DataFrame, n_reasons: int = 0, batch_size: int = 200_000,
                     reason_rows: Callable[[np.ndarray], np.ndarray] | None = None,
                     references: Mapping[str | None, PriorReference] | None = None,
                     reason_filter: ReasonFilterFactory | None = None) -> ModelScores:
    """Probabilities and top contributions through the model's ``predict_proba`` and
    ``contributions`` (``reason_rows``, ``references`` and ``reason_filter`` as in
    :func:`model_scores`)."""
    if n_reasons:
        # One BG/NBD fit on all the rows serves the probabilities and every batch of reasons.
        model = with_fixed_prior(model, inputs)
        if getattr(model, "prior", None) and references is None:
            references = prior_references(inputs)
    probability = model.predict_proba(inputs)[:, 1]
    if not n_reasons:
        return ModelScores(probability)
    rows = None if reason_rows is None else _positions(reason_rows(probability), len(inputs))
    positions = np.arange(len(inputs)) if rows is None else rows
    names = [*model.feature_names_in_, *([PRIOR] if getattr(model, "prior", None) else [])]
    chosen_filter = reason_filter(positions, probability[positions], names) if reason_filter is not None else None
    chosen = inputs if rows is None else inputs.iloc[rows]
    reasons = churn_reasons(model, chosen, n_reasons, batch_size, references, chosen_filter)
    return ModelScores(probability, _spread(reasons, rows, len(inputs)), rows)


def _positions(rows: Any, n_rows: int) -> np.ndarray:
    """Row positions as an ascending array without repeats, checked against the row count."""
    positions = np.unique(np.asarray(rows, dtype=np.int64))
    if positions.size and (positions[0] < 0 or positions[-1] >= n_rows):
        raise IndexError(f"reason rows must be positions in 0..{n_rows - 1}")
    return positions


def _spread(reasons: TopReasons, rows: np.ndarray | None, n_rows: int) -> TopReasons:
    """Reasons of the rows at ``rows`` as reasons of all ``n_rows`` rows (none for the others)."""
    if rows is None:
        return reasons
    n = reasons.indices.shape[1]
    indices = np.full((n_rows, n), -1, dtype=np.int64)
    chosen = np.full((n_rows, n), np.nan)
    indices[rows], chosen[rows] = reasons.indices, reasons.contributions
    prior = None
    if reasons.prior_log_odds is not None:
        prior = np.full(n_rows, np.nan)
        prior[rows] = reasons.prior_log_odds
    return TopReasons(reasons.names, indices, chosen, prior)


def _encoding_key(model: ChurnModel, inputs: pd.DataFrame) -> tuple:
    categories = tuple((name, tuple(map(str, values))) for name, values in model.categories_.items())
    return id(inputs), tuple(model.feature_names_in_), categories


def _stored_tables(model: ChurnModel) -> TreeTables | None:
    """The model's ``tree_tables_``; tabulated now when it has none (the model is left as it is)."""
    if not hasattr(model, "tree_tables_"):
        return tabulate_model(model)
    tables = model.tree_tables_
    if tables is None:
        return None
    # Tables pickled with another layout of TreeTables are rebuilt (tables of another booster
    # fail verify_tables).
    if not isinstance(tables, TreeTables) or any(f.name not in vars(tables) for f in fields(TreeTables)):
        return tabulate_model(model)
    return tables


def _verified_tables(model: ChurnModel, inputs: pd.DataFrame, tables: TreeTables | None, with_contributions: bool,
                     threads: int | None) -> TreeTables | None:
    """The tables to score ``inputs`` with, or None for the model's own methods.

    ``tables`` or else the model's (:func:`_stored_tables`), if numba is there to run them and
    they agree with the model on a sample of ``inputs`` (:func:`verify_tables`).
    """
    # numba compiles the table lookups; it comes with shap, but the slow path needs nothing.
    if not len(inputs) or importlib.util.find_spec("numba") is None:
        return None
    tables = tables if tables is not None else _stored_tables(model)
    if tables is None:
        log.info("%s model: trees too large (or not LightGBM) to tabulate; using its own methods",
                 getattr(model, "target", "the"))
        return None
    return verify_tables(model, inputs, tables, with_contributions=with_contributions, threads=threads)


def contributions(model: ChurnModel, X: pd.DataFrame, *, threads: int | None = None,
                  tables: TreeTables | None = None, attribute: bool = True,
                  references: Mapping[str | None, PriorReference] | None = None) -> pd.DataFrame:
    """Exact per-row contributions of each feature to the model's raw score, in log-odds.

    Through tabulated trees when the model's trees can be tabulated, numba is installed and the
    tables agree with the model on a sample of the rows (:func:`verify_tables`); else through
    the model's own :meth:`ChurnModel.contributions` (LightGBM ``pred_contrib``), the reference
    the tables are checked against. Both give the same numbers to 1e-9.

    Parameters
    ----------
    model : ChurnModel
        A fitted model.
    X : pandas.DataFrame
        Rows with the model's features, ``(rows, columns)``; a model with a BTYD prior fits it
        on these rows, as ``predict_proba`` does.
    threads : int, optional
        Threads for the tabulated trees; default all cores.
    tables : TreeTables, optional
        Tables to use (checked like the model's own); default the model's ``tree_tables_``, or
        tables built now when it has none.
    attribute : bool
        Split the BTYD prior's contribution over the behaviours behind it
        (:func:`attributed_contributions`); False: the prior relative to the training mean in
        ``btyd_prior``, as :meth:`ChurnModel.contributions` gives it.
    references : mapping, optional
        The population's reference customers for that split
        (:func:`churnml.models.attribution.prior_references`); default: those of ``X``.

    Returns
    -------
    pandas.DataFrame
        ``(rows, features [+ 1] + 1)``, index of ``X``: one column per model feature, then
        ``btyd_prior`` for a model boosted from a BTYD prior, then ``bias``; each row sums to
        ``model.raw_score(X)``. With ``attribute``, ``btyd_prior`` is 0 when the model has a
        feature for each of recency, frequency and age, and the bias differs between cutoffs.

    Raises
    ------
    FeatureMismatchError
        If ``X`` lacks a model feature or holds one with another type.
    NotImplementedError
        From the model's own method, for models without exact contributions.
    """
    model.check_features(X)
    model = with_fixed_prior(model, X)
    verified = _verified_tables(model, X, tables, with_contributions=True, threads=threads)
    if verified is None:
        frame = model.contributions(X)
    else:
        _, values = tabulated_scores(verified, encode_for_trees(model, X), with_contributions=True, threads=threads)
        frame = pd.DataFrame(values.T, columns=list(model.feature_names_in_), index=X.index)
        if getattr(model, "prior", None):
            frame[PRIOR] = _prior_log_odds(model, X) - verified.prior_offset
        frame[BIAS] = verified.expected_value + verified.prior_offset
    return attributed_contributions(model, X, frame, references) if attribute else frame


def model_scores(model: ChurnModel, inputs: pd.DataFrame, n_reasons: int = 0, batch_size: int = 200_000,
                 tabulate: bool = True, threads: int | None = None,
                 encodings: dict[tuple, np.ndarray] | None = None,
                 reason_rows: Callable[[np.ndarray], np.ndarray] | None = None,
                 references: Mapping[str | None, PriorReference] | None = None,
                 reason_filter: ReasonFilterFactory | None = None) -> ModelScores:
    """A model's probabilities and, when ``n_reasons``, each row's top contributions: what
    scoring needs, without holding every row's contributions at once.

    The tables or the model's own methods are chosen as in :func:`contributions`. A model
    boosted from a BTYD prior has the prior fitted once on ``inputs`` (unless its fit is fixed
    already) and its contribution split over the behaviours behind it
    (:func:`attributed_contributions`) on either path.

    Parameters
    ----------
    model : ChurnModel
    inputs : pandas.DataFrame
        ``(rows, columns)`` with the model's features.
    n_reasons : int
        Top contributions kept per row; 0 for probabilities alone.
    batch_size : int
        Rows per batch of the model's own contributions (bounds their memory).
    tabulate : bool
        Try the tabulated trees at all.
    threads : int, optional
        Threads for the tabulated trees; default all cores.
    encodings : dict, optional
        Passed on to :func:`score_with_tables`.
    reason_rows : callable, optional
        Given every row's probability, the positions of the rows that need contributions; the
        others get none (and cost none). Default: every row.
    references : mapping, optional
        The population's reference customers for the prior's split
        (:func:`churnml.models.attribution.prior_references`); default: those of ``inputs``
        (pass the population's when ``inputs`` is one piece of it).
    reason_filter : callable, optional
        ``reason_filter(positions, probability, names)`` -> :class:`ReasonFilter` for the rows
        that get reasons (their positions and probabilities; ``names``: the contribution
        columns); default: every row's largest positive contributions.

    Returns
    -------
    ModelScores
    """
    started = time.perf_counter()
    if n_reasons:
        # Fixed before the tables are checked, so that both paths use the fit on all the rows.
        model = with_fixed_prior(model, inputs)
    tables = _verified_tables(model, inputs, None, n_reasons > 0, threads) if tabulate else None
    if tables is not None:
        scores = score_with_tables(model, inputs, tables, n_reasons, threads, encodings, reason_rows, references,
                                   reason_filter)
        log.info("%s model: %s rows through %s tabulated trees in %.1f s", model.target, f"{len(inputs):,}",
                 len(tables.n_splits), time.perf_counter() - started)
        return scores
    scores = score_with_model(model, inputs, n_reasons, batch_size, reason_rows, references, reason_filter)
    log.info("%s model: %s rows through its own methods in %.1f s", model.target, f"{len(inputs):,}",
             time.perf_counter() - started)
    return scores
