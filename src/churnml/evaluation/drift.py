"""Population stability: how far a scoring table has moved from the data a model was trained on.

At training time :func:`profile` reduces the latest snapshot to a compact, JSON-serialisable
reference (quantile bin edges and proportions for numbers, category shares for text and flags),
kept with the model as ``reference_profile_``. At scoring time :func:`psi` bins the new table the
same way and compares the two distributions with the population stability index::

    PSI = sum over bins of (actual share - reference share) * ln(actual share / reference share)

Usual reading: below 0.1 stable, 0.1 to 0.2 a moderate shift, above 0.2 a shift worth a look
before trusting the scores.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

PROFILE_VERSION = 1
NUMERIC = "numeric"
CATEGORICAL = "categorical"
# Key of the model score in a profile and in the PSI series.
SCORE = "model_score"
# Values of a text column outside the reference's categories share one bucket.
OTHER = "__other__"
# Shares are floored before the logarithm so that an empty bin gives a large, finite PSI.
SHARE_FLOOR = 1e-4
DEFAULT_MAX_CATEGORIES = 50


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype)


def _as_float(values: pd.Series | np.ndarray) -> np.ndarray:
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _as_text(values: pd.Series | np.ndarray) -> pd.Series:
    """Categories as plain strings (flags become ``"True"``/``"False"``); missing stays missing."""
    series = pd.Series(values)
    text = series.astype("string").astype(object)
    return text.where(series.notna(), None)


def numeric_profile(values: pd.Series | np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Quantile bin edges and the share of rows in each bin, for one numeric column.

    Parameters
    ----------
    values : pandas.Series or numpy.ndarray
        The column; missing values get a bin of their own.
    bins : int
        Number of quantile bins wanted; ties (a column that is mostly 0, say) merge edges, so
        there may be fewer.

    Returns
    -------
    dict
        ``kind`` ("numeric"), ``edges`` (inner edges; bin ``i`` holds values in
        ``(edges[i-1], edges[i]]``, the first and last bins are open), ``proportions`` (one per
        bin) and ``missing`` (share of missing values), all plain floats.
    """
    numbers = _as_float(values)
    finite = numbers[np.isfinite(numbers)]
    if finite.size:
        quantiles = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1])
        edges = np.unique(quantiles)
    else:
        edges = np.array([], dtype=float)
    shares = _numeric_shares(numbers, edges)
    return {
        "kind": NUMERIC,
        "edges": [float(e) for e in edges],
        "proportions": [float(s) for s in shares[:-1]],
        "missing": float(shares[-1]),
    }


def _numeric_counts(numbers: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Rows in each bin defined by ``edges``, then the missing values, as one array."""
    missing = np.isnan(numbers)
    # side="left": a value equal to an edge stays in the lower bin, so a point mass (all the
    # zeros of a count) falls in one bin rather than being split by where the edge landed.
    positions = np.searchsorted(edges, numbers[~missing], side="left")
    return np.append(np.bincount(positions, minlength=len(edges) + 1), missing.sum()).astype(np.int64)


def _numeric_shares(numbers: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Shares of the bins defined by ``edges``, then the share of missing values, as one array."""
    if numbers.size == 0:
        return np.zeros(len(edges) + 2)
    return _numeric_counts(numbers, edges) / numbers.size


def categorical_profile(values: pd.Series | np.ndarray, max_categories: int = DEFAULT_MAX_CATEGORIES) -> dict[str, Any]:
    """Share of each category (the ``max_categories`` most frequent; the rest as ``__other__``).

    Returns
    -------
    dict
        ``kind`` ("categorical"), ``shares`` (category to share, sorted by category) and
        ``missing`` (share of missing values).
    """
    text = _as_text(values)
    n_rows = len(text)
    counts = text.value_counts(dropna=True)
    # Most frequent first, ties by name, so that the kept categories do not depend on row order.
    counts = counts.sort_index().sort_values(ascending=False, kind="stable")
    kept, rest = counts.iloc[:max_categories], counts.iloc[max_categories:]
    shares = {str(k): float(v) / n_rows for k, v in sorted(kept.items())}
    if len(rest):
        shares[OTHER] = float(rest.sum()) / n_rows
    missing = float(text.isna().sum()) / n_rows if n_rows else 0.0
    return {"kind": CATEGORICAL, "shares": shares, "missing": missing}


def column_profile(values: pd.Series, bins: int = 10, max_categories: int = DEFAULT_MAX_CATEGORIES) -> dict[str, Any]:
    """:func:`numeric_profile` for numbers, :func:`categorical_profile` for text, categories and flags."""
    if _is_numeric(values):
        return numeric_profile(values, bins)
    return categorical_profile(values, max_categories)


def profile(
    frame: pd.DataFrame,
    columns: Iterable[str],
    score: pd.Series | np.ndarray | None = None,
    bins: int = 10,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
) -> dict[str, Any]:
    """A compact reference profile of a table's columns and, optionally, of a model score.

    Parameters
    ----------
    frame : pandas.DataFrame
        The reference rows, typically the latest snapshot a model was trained or evaluated on.
    columns : iterable of str
        Columns to profile, typically the model's ``feature_names_in_``.
    score : array-like, optional
        The model's probability for each row of ``frame``, profiled as a numeric column.
    bins : int
        Quantile bins per numeric column.
    max_categories : int
        Categories kept per text column; rarer ones are pooled.

    Returns
    -------
    dict
        ``{"version", "n_rows", "bins", "columns": {name: column profile}, "score": profile or
        absent}``, made of plain lists, dicts and floats (JSON-serialisable, a few kB).

    Raises
    ------
    KeyError
        If a column is not in ``frame``.
    ValueError
        If ``score`` does not have one value per row.
    """
    columns = list(columns)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"cannot profile columns that are not in the table: {missing}")
    result: dict[str, Any] = {
        "version": PROFILE_VERSION,
        "n_rows": int(len(frame)),
        "bins": int(bins),
        "columns": {c: column_profile(frame[c], bins, max_categories) for c in columns},
    }
    if score is not None:
        score = _as_float(score)
        if len(score) != len(frame):
            raise ValueError(f"score has {len(score)} values for {len(frame)} rows")
        result["score"] = numeric_profile(score, bins)
    return result


def population_stability(reference: np.ndarray, actual: np.ndarray, floor: float = SHARE_FLOOR) -> float:
    """PSI between two vectors of bin shares (each summing to 1), with shares floored at ``floor``."""
    expected = np.maximum(np.asarray(reference, dtype=float), floor)
    observed = np.maximum(np.asarray(actual, dtype=float), floor)
    return float(np.sum((observed - expected) * np.log(observed / expected)))


def bin_counts(reference: Mapping[str, Any], values: pd.Series | np.ndarray) -> np.ndarray:
    """Rows of ``values`` in each bin of a column's reference profile.

    Counts of pieces of a table add up to the counts of the whole table, so a table scored in
    pieces (Spark partitions) gets the PSI of the whole from the summed counts
    (:func:`psi_from_counts`).

    Returns
    -------
    numpy.ndarray
        Numbers: one count per quantile bin, then the missing values. Text and flags: one count
        per reference category, then the other categories, then the missing values.
    """
    if reference["kind"] == NUMERIC:
        return _numeric_counts(_as_float(values), np.asarray(reference["edges"], dtype=float))
    text = _as_text(values)
    known = [c for c in reference["shares"] if c != OTHER]
    counts = text.value_counts(dropna=True)
    others = int(counts[~counts.index.isin(known)].sum())
    return np.array([int(counts.get(c, 0)) for c in known] + [others, int(text.isna().sum())], dtype=np.int64)


def _reference_shares(reference: Mapping[str, Any]) -> np.ndarray:
    """The reference's shares in the order of :func:`bin_counts`."""
    if reference["kind"] == NUMERIC:
        return np.append(np.asarray(reference["proportions"], dtype=float), reference["missing"])
    shares = reference["shares"]
    return np.array([float(shares[c]) for c in shares if c != OTHER]
                    + [float(shares.get(OTHER, 0.0)), float(reference["missing"])])


def psi_from_counts(reference: Mapping[str, Any], counts: np.ndarray, floor: float = SHARE_FLOOR) -> float:
    """PSI of a column from its :func:`bin_counts` (NaN without rows)."""
    counts = np.asarray(counts, dtype=np.int64)
    n_rows = int(counts.sum())
    if n_rows == 0:
        return float("nan")
    return population_stability(_reference_shares(reference), counts / n_rows, floor)


def column_psi(reference: Mapping[str, Any], values: pd.Series | np.ndarray, floor: float = SHARE_FLOOR) -> float:
    """PSI of one column against its reference profile (NaN when ``values`` is empty).

    Missing values count as a bin of their own, so a feature that suddenly goes missing drifts.
    """
    return psi_from_counts(reference, bin_counts(reference, values), floor)


def psi(
    reference_profile: Mapping[str, Any],
    frame: pd.DataFrame,
    score: pd.Series | np.ndarray | None = None,
    floor: float = SHARE_FLOOR,
) -> pd.Series:
    """Population stability index of each profiled column of ``frame``, and of the score.

    Parameters
    ----------
    reference_profile : dict
        Output of :func:`profile`.
    frame : pandas.DataFrame
        The new rows (the scoring table).
    score : array-like, optional
        The model's probabilities for ``frame``; compared when the profile has a score.
    floor : float
        Bin shares are floored at this value before the logarithm.

    Returns
    -------
    pandas.Series
        PSI by column name, in the profile's order, then ``model_score`` when both the profile
        and ``score`` have one. A profiled column absent from ``frame`` gets NaN.
    """
    values: dict[str, float] = {}
    for name, reference in reference_profile["columns"].items():
        values[name] = column_psi(reference, frame[name], floor) if name in frame.columns else float("nan")
    if score is not None and "score" in reference_profile:
        values[SCORE] = column_psi(reference_profile["score"], _as_float(score), floor)
    return pd.Series(values, dtype=float, name="psi")


def drifted(psi_values: pd.Series, threshold: float = 0.2) -> pd.Series:
    """The entries of a PSI series above ``threshold``, largest first."""
    above = psi_values[psi_values > threshold]
    return above.sort_values(ascending=False, kind="stable")


# A population this far from the reference is not the one the model learnt (another shop, another
# currency, a broken feed), rather than the same customers months on: scoring it stops. The
# reporting threshold (0.2) is passed by ageing alone (tenure, days since signup), so the stop
# sits well above it.
STOP_PSI = 1.0
# Share of the features that must be past STOP_PSI for the population to count as another one
# when the score itself has not moved that far.
STOP_SHARE = 0.5


def population_refusal(psi_values: pd.Series, stop_psi: float = STOP_PSI, stop_share: float = STOP_SHARE,
                       n_named: int = 5) -> str | None:
    """Why a scored population is not one the model was trained on, or None when it is.

    It is not when the score's PSI (``model_score``) is above ``stop_psi``, or when more than
    ``stop_share`` of the features with a PSI are above ``stop_psi``.

    Parameters
    ----------
    psi_values : pandas.Series
        PSI by feature and ``model_score``, as :func:`psi` returns; NaN entries are ignored.
    stop_psi : float
        PSI above which the score or a feature counts as far from its reference.
    stop_share : float
        Share of features in [0, 1]; more than this above ``stop_psi`` stops.
    n_named : int
        How many of the worst features the reason names.

    Returns
    -------
    str or None
        ``"score PSI 1.44 > 1; 9 of 31 features > 1, worst avg_order_value 5.71, ..."``, or None.
    """
    values = psi_values.dropna()
    features = values.drop(SCORE, errors="ignore")
    score = float(values[SCORE]) if SCORE in values.index else float("nan")
    far = features[features > stop_psi]
    score_far = score > stop_psi
    features_far = len(features) > 0 and len(far) / len(features) > stop_share
    if not (score_far or features_far):
        return None
    worst = features.sort_values(ascending=False, kind="stable").head(n_named)
    named = ", ".join(f"{name} {value:.2f}" for name, value in worst.items())
    score_text = f"score PSI {score:.2f}" + (f" > {stop_psi:g}" if score_far else "") + "; " if math.isfinite(score) else ""
    return f"{score_text}{len(far)} of {len(features)} features > {stop_psi:g}, worst {named}"
