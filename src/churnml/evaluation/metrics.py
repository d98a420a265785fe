"""Holdout metrics, the model-versus-baselines table, evaluation plots and the HTML report.

Every function takes labels and probabilities of the positive class (churn or repurchase) as
arrays. Plots are ``matplotlib.figure.Figure`` objects drawn on the Agg canvas, never through
pyplot, so nothing global changes and they can be logged or embedded by the caller.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    pass

COMPARISON_COLUMNS = ("roc_auc", "pr_auc", "brier", "log_loss", "top_decile_lift", "top_decile_capture")
# Properties of the holdout rather than of a model: logged once, not once per baseline.
DATA_METRICS = ("base_rate", "n")
LOG_LOSS_EPSILON = 1e-15
# The row of the comparison table that holds, per metric, the best value of any classical score.
BEST_CLASSICAL = "best_classical"
HIGHER_IS_BETTER = {"roc_auc": True, "pr_auc": True, "brier": False, "log_loss": False,
                    "top_decile_lift": True, "top_decile_capture": True}


def _check_labels(y_true) -> np.ndarray:
    y = np.asarray(y_true, dtype=float).ravel()
    if y.size == 0:
        raise ValueError("cannot evaluate zero rows")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    return y.astype(int)


def _check_binary(y_true, probability) -> tuple[np.ndarray, np.ndarray]:
    y = _check_labels(y_true)
    p = np.asarray(probability, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and probabilities differ in length: {y.size} vs {p.size}")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValueError("probabilities must be finite and within [0, 1]")
    return y, p


def top_fraction_size(n: int, top_fraction: float) -> int:
    """Rows in the top ``top_fraction`` of ``n``: ``ceil(n * top_fraction)``, at least 1.

    The product is rounded first so that floating-point noise (``100 * 0.07 = 7.000000000000001``)
    does not add a row.
    """
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    return max(1, min(n, math.ceil(round(n * top_fraction, 9))))


def top_rows(probability: np.ndarray, top_fraction: float) -> np.ndarray:
    """Positions of the ``ceil(n * top_fraction)`` highest probabilities.

    The sort is stable, so among tied probabilities at the boundary the earlier rows are taken
    and the result does not depend on the sorting algorithm.
    """
    order = np.argsort(-probability, kind="stable")
    return order[: top_fraction_size(probability.size, top_fraction)]


def binary_metrics(y_true, probability, top_fraction: float = 0.1) -> dict[str, float]:
    """Ranking, calibration and targeting metrics of one set of probabilities.

    Parameters
    ----------
    y_true : array-like of {0, 1}
        Observed labels of the positive class.
    probability : array-like of float
        Predicted probabilities of the positive class, in [0, 1].
    top_fraction : float, default 0.1
        Share of rows targeted for lift and capture (the top decile by default).

    Returns
    -------
    dict of str to float
        ``roc_auc``, ``pr_auc`` (average precision), ``brier``, ``log_loss`` (probabilities
        clipped to ``[1e-15, 1 - 1e-15]``), ``top_decile_lift`` (positive rate among the top rows
        over the overall positive rate), ``top_decile_capture`` (share of all positives in the
        top rows), ``base_rate`` and ``n``. Metrics undefined for the labels at hand (AUCs with a
        single class, lift and capture without positives) are NaN.
    """
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    y, p = _check_binary(y_true, probability)
    both_classes = 0 < y.sum() < y.size
    positives = int(y.sum())
    top = top_rows(p, top_fraction)
    base_rate = positives / y.size
    clipped = np.clip(p, LOG_LOSS_EPSILON, 1 - LOG_LOSS_EPSILON)
    return {
        "roc_auc": float(roc_auc_score(y, p)) if both_classes else math.nan,
        "pr_auc": float(average_precision_score(y, p)) if both_classes else math.nan,
        "brier": float(brier_score_loss(y, p, labels=[0, 1])),
        "log_loss": float(log_loss(y, clipped, labels=[0, 1])),
        "top_decile_lift": float(y[top].mean() / base_rate) if positives else math.nan,
        "top_decile_capture": float(y[top].sum() / positives) if positives else math.nan,
        "base_rate": float(base_rate),
        "n": float(y.size),
    }


def metric_key(name: str, prefix: str = "") -> str:
    """MLflow metric name of a holdout metric.

    Examples
    --------
    >>> metric_key("roc_auc")
    'holdout_roc_auc'
    >>> metric_key("roc_auc", prefix="rfm")
    'rfm_holdout_roc_auc'
    """
    return f"{prefix}_holdout_{name}" if prefix else f"holdout_{name}"


def holdout_metrics(probabilities: Mapping[str, np.ndarray], y_true, model_name: str = "model") -> dict[str, float]:
    """Holdout metrics of the model and every baseline, keyed by MLflow metric name.

    Parameters
    ----------
    probabilities : mapping of str to array
        Probabilities per model; the entry named ``model_name`` is the model, every other entry a
        baseline whose name becomes its metric prefix.
    y_true : array-like of {0, 1}
    model_name : str, default "model"

    Returns
    -------
    dict of str to float
        ``holdout_<metric>`` for the model, ``<baseline>_holdout_<metric>`` for each baseline
        and ``best_classical_holdout_<metric>`` for the best baseline on each metric (see
        :func:`best_classical`; NaN when no baseline has the metric) (metrics of
        :data:`COMPARISON_COLUMNS`), plus ``holdout_base_rate`` and ``holdout_n`` once, since they
        describe the holdout, not a model.
    """
    y = _check_labels(y_true)
    flat: dict[str, float] = {}
    classical: dict[str, dict[str, float]] = {}
    for name, probability in probabilities.items():
        prefix = "" if name == model_name else name
        metrics = binary_metrics(y, probability)
        flat.update({metric_key(m, prefix): metrics[m] for m in COMPARISON_COLUMNS})
        if name != model_name:
            classical[name] = metrics
    if classical:
        best = best_classical(pd.DataFrame.from_dict(classical, orient="index", columns=list(COMPARISON_COLUMNS)))
        flat.update({metric_key(m, BEST_CLASSICAL): float(best.at[m, "value"]) for m in COMPARISON_COLUMNS})
    flat[metric_key("base_rate")] = float(y.mean())
    flat[metric_key("n")] = float(y.size)
    return flat


def comparison_table(probabilities: Mapping[str, np.ndarray], y_true, model_name: str = "model") -> pd.DataFrame:
    """One row of holdout metrics per model and baseline.

    Parameters
    ----------
    probabilities : mapping of str to array
    y_true : array-like of {0, 1}
    model_name : str, default "model"
        The entry listed first; the others follow in the mapping's order.

    Returns
    -------
    pandas.DataFrame
        Index ``model``; columns ``roc_auc``, ``pr_auc``, ``brier``, ``log_loss``,
        ``top_decile_lift``, ``top_decile_capture``. When there is any baseline, a last row
        ``best_classical`` holds the best baseline value of each metric (:func:`best_classical`).
    """
    names = sorted(probabilities, key=lambda name: name != model_name)  # stable: keeps dict order
    rows = [binary_metrics(y_true, probabilities[name]) for name in names]
    table = pd.DataFrame(rows, index=pd.Index(names, name="model"), columns=list(COMPARISON_COLUMNS))
    if any(name != model_name for name in names):
        table.loc[BEST_CLASSICAL] = best_classical(table, model_name)["value"]
    return table


def best_classical(table: pd.DataFrame, model_name: str = "model") -> pd.DataFrame:
    """Per metric, the best value among the classical scores of a comparison table, and whose it is.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per scorer and a column per metric, as :func:`comparison_table` gives; the rows
        ``model_name`` and ``best_classical`` are not classical scores and are ignored.
    model_name : str, default "model"

    Returns
    -------
    pandas.DataFrame
        Index: the metrics of :data:`COMPARISON_COLUMNS` present in ``table``; columns ``value``
        (float) and ``scorer`` (the row's name; the first in table order on ties). Higher is
        better for ROC AUC, PR AUC, lift and capture, lower for Brier and log loss. A value that
        could not be computed (NaN) is never the best; a metric no classical score has gets NaN
        and an empty scorer.
    """
    classical = table.drop(index=[model_name, BEST_CLASSICAL], errors="ignore")
    rows = {}
    for metric in (c for c in COMPARISON_COLUMNS if c in table.columns):
        values = pd.to_numeric(classical[metric], errors="coerce").astype(float)
        values = values[np.isfinite(values.to_numpy())]
        if values.empty:
            rows[metric] = {"value": math.nan, "scorer": ""}
            continue
        scorer = values.idxmax() if HIGHER_IS_BETTER[metric] else values.idxmin()
        rows[metric] = {"value": float(values[scorer]), "scorer": str(scorer)}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["value", "scorer"]).rename_axis("metric")


def best_classical_scorers(table: pd.DataFrame, model_name: str = "model") -> dict[str, str]:
    """The scorer of each :func:`best_classical` value, keyed ``best_classical_<metric>_scorer``
    (MLflow tags); metrics without a best are left out."""
    best = best_classical(table, model_name)
    return {f"{BEST_CLASSICAL}_{metric}_scorer": scorer for metric, scorer in best["scorer"].items() if scorer}


def with_scorer_row(table: pd.DataFrame, model_name: str = "model") -> pd.DataFrame:
    """The comparison table for display: below its ``best_classical`` row, a row naming the
    scorer of each best value (as text). A table without that row is returned unchanged."""
    if BEST_CLASSICAL not in table.index:
        return table
    shown = table.astype(object)
    shown.loc[f"{BEST_CLASSICAL} scorer"] = best_classical(table, model_name)["scorer"].reindex(table.columns).fillna("")
    return shown


def _cell(value: object, decimals: int = 4) -> tuple[str, bool]:
    """Text of a table cell, and whether it is a number (numbers are right-aligned)."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)), False
    if isinstance(value, (float, np.floating)):
        return ("nan" if np.isnan(value) else f"{value:.{decimals}f}"), True
    if isinstance(value, (int, np.integer)):
        return str(value), True
    return str(value), False


def format_comparison(table: pd.DataFrame, decimals: int = 4) -> str:
    """The comparison table as aligned plain text for the console: names left, numbers right.

    The ``best_classical`` row is set apart by a rule and followed by the name of the scorer of
    each best value (:func:`with_scorer_row`).
    """
    table = with_scorer_row(table)
    rows = [
        [str(name)] + [_cell(v, decimals)[0] for v in values]
        for name, values in zip(table.index, table.itertuples(index=False, name=None))
    ]
    header = [table.index.name or ""] + [str(c) for c in table.columns]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]).rstrip()

    rule = line(["-" * w for w in widths])
    lines = [line(header), rule]
    for name, row in zip(table.index, rows):
        if name == BEST_CLASSICAL:
            lines.append(rule)
        lines.append(line(row))
    return "\n".join(lines)


def cv_summary(fold_metrics: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean and population standard deviation of each metric across CV folds.

    Parameters
    ----------
    fold_metrics : sequence of mapping of str to float
        Metrics of each fold, e.g. from :func:`binary_metrics`.

    Returns
    -------
    dict of str to float
        ``cv_<metric>_mean`` and ``cv_<metric>_std`` for every metric present in any fold, in order
        of first appearance. Folds where a metric is missing or NaN (an AUC on a fold with one
        class) are left out of that metric; a metric that is NaN everywhere stays NaN.

    Raises
    ------
    ValueError
        If there are no folds.
    """
    if not fold_metrics:
        raise ValueError("cv_summary needs at least one fold")
    names = list(dict.fromkeys(name for fold in fold_metrics for name in fold))
    summary: dict[str, float] = {}
    for name in names:
        values = np.array([fold[name] for fold in fold_metrics if name in fold], dtype=float)
        values = values[~np.isnan(values)]
        summary[f"cv_{name}_mean"] = float(values.mean()) if values.size else math.nan
        summary[f"cv_{name}_std"] = float(values.std(ddof=0)) if values.size else math.nan
    return summary


def calibration_table(y_true, probability, n_bins: int = 10) -> pd.DataFrame:
    """Observed positive rate against mean predicted probability, in quantile bins.

    Bin edges are quantiles of the probabilities; equal probabilities always share a bin, so with
    many ties there are fewer than ``n_bins`` bins.

    Parameters
    ----------
    y_true : array-like of {0, 1}
    probability : array-like of float
    n_bins : int, default 10

    Returns
    -------
    pandas.DataFrame
        Index ``bin`` (0 = lowest probabilities); columns ``mean_predicted``, ``observed_rate``
        and ``count``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    y, p = _check_binary(y_true, probability)
    inner_edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1))[1:-1])
    bins = np.searchsorted(inner_edges, p, side="left")
    frame = pd.DataFrame({"bin": bins, "p": p, "y": y})
    table = frame.groupby("bin").agg(mean_predicted=("p", "mean"), observed_rate=("y", "mean"), count=("y", "size"))
    # Renumber so bins are 0..k-1 even when an edge holds no row of its own.
    return table.reset_index(drop=True).rename_axis("bin")


