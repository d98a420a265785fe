"""Holdout metrics, the model-versus-baselines table, evaluation plots and the HTML report.

Every function takes labels and probabilities of the positive class (churn or repurchase) as
arrays. Plots are ``matplotlib.figure.Figure`` objects drawn on the Agg canvas, never through
pyplot, so nothing global changes and they can be logged or embedded by the caller.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COMPARISON_COLUMNS = ("roc_auc", "pr_auc", "brier", "log_loss", "top_decile_lift", "top_decile_capture")
# Properties of the holdout rather than of a model: logged once, not once per baseline.
DATA_METRICS = ("base_rate", "n")
LOG_LOSS_EPSILON = 1e-15


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
        (metrics of :data:`COMPARISON_COLUMNS`), plus ``holdout_base_rate`` and ``holdout_n``
        once, since they describe the holdout, not a model.
    """
    y = _check_labels(y_true)
    flat: dict[str, float] = {}
    for name, probability in probabilities.items():
        prefix = "" if name == model_name else name
        metrics = binary_metrics(y, probability)
        flat.update({metric_key(m, prefix): metrics[m] for m in COMPARISON_COLUMNS})
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
        ``top_decile_lift``, ``top_decile_capture``.
    """
    names = sorted(probabilities, key=lambda name: name != model_name)  # stable: keeps dict order
    rows = [binary_metrics(y_true, probabilities[name]) for name in names]
    return pd.DataFrame(rows, index=pd.Index(names, name="model"), columns=list(COMPARISON_COLUMNS))


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
    """The comparison table as aligned plain text for the console: names left, numbers right."""
    header = [table.index.name or ""] + [str(c) for c in table.columns]
    rows = [
        [str(name)] + [_cell(v, decimals)[0] for v in values]
        for name, values in zip(table.index, table.itertuples(index=False, name=None))
    ]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


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


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _new_figure(n_axes: int = 1, width: float = 6.0, height: float = 4.5) -> tuple["Figure", list]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * n_axes, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(1, n_axes, i + 1) for i in range(n_axes)]
    return figure, axes


def plot_roc(probabilities: Mapping[str, np.ndarray], y_true) -> "Figure":
    """ROC curves of the model and baselines, with their AUC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    figure, (ax,) = _new_figure()
    for name, probability in probabilities.items():
        y, p = _check_binary(y_true, probability)
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="random")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    return figure


def plot_precision_recall(probabilities: Mapping[str, np.ndarray], y_true) -> "Figure":
    """Precision-recall curves, with average precision in the legend and the base rate as reference."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    figure, (ax,) = _new_figure()
    base_rate = float(np.mean(np.asarray(y_true, dtype=float)))
    for name, probability in probabilities.items():
        y, p = _check_binary(y_true, probability)
        precision, recall, _ = precision_recall_curve(y, p)
        ax.step(recall, precision, where="post", label=f"{name} (AP {average_precision_score(y, p):.3f})")
    ax.axhline(base_rate, linestyle=":", color="grey", label=f"base rate {base_rate:.3f}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="best")
    return figure


def plot_calibration(probabilities: Mapping[str, np.ndarray], y_true, n_bins: int = 10) -> "Figure":
    """Observed rate against mean predicted probability per quantile bin (see :func:`calibration_table`)."""
    figure, (ax,) = _new_figure()
    for name, probability in probabilities.items():
        table = calibration_table(y_true, probability, n_bins)
        ax.plot(table["mean_predicted"], table["observed_rate"], marker="o", label=name)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect")
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", title="Calibration",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    return figure


def gains_curve(y_true, probability) -> tuple[np.ndarray, np.ndarray]:
    """Share of rows targeted (best first) and share of positives captured, starting at (0, 0)."""
    y, p = _check_binary(y_true, probability)
    ranked = y[np.argsort(-p, kind="stable")]
    targeted = np.arange(y.size + 1) / y.size
    positives = max(int(y.sum()), 1)
    captured = np.concatenate([[0.0], np.cumsum(ranked) / positives])
    return targeted, captured


def plot_gains(probabilities: Mapping[str, np.ndarray], y_true) -> "Figure":
    """Cumulative gains (left) and lift (right) against the share of customers targeted."""
    figure, (gains_ax, lift_ax) = _new_figure(n_axes=2)
    for name, probability in probabilities.items():
        targeted, captured = gains_curve(y_true, probability)
        gains_ax.plot(targeted, captured, label=name)
        # Lift is captured / targeted; skip the origin, where it is undefined.
        lift_ax.plot(targeted[1:], captured[1:] / targeted[1:], label=name)
    gains_ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="random")
    lift_ax.axhline(1.0, linestyle=":", color="grey", label="random")
    gains_ax.set(xlabel="share targeted", ylabel="share of positives captured", title="Cumulative gains",
                 xlim=(0, 1), ylim=(0, 1.01))
    lift_ax.set(xlabel="share targeted", ylabel="lift", title="Lift", xlim=(0, 1))
    gains_ax.legend(loc="lower right")
    lift_ax.legend(loc="upper right")
    return figure


def plot_importance(importance: pd.Series, top: int = 20) -> "Figure":
    """Horizontal bars of the ``top`` features by absolute importance, largest at the top."""
    if importance.empty:
        raise ValueError("no feature importance to plot")
    values = pd.to_numeric(importance, errors="raise").astype(float)
    shown = values.loc[values.abs().sort_values(ascending=False, kind="stable").index[:top]]
    figure, (ax,) = _new_figure(height=max(3.0, 0.3 * len(shown) + 1.0))
    ax.barh([str(i) for i in shown.index[::-1]], shown.to_numpy()[::-1])
    ax.set(xlabel=importance.name or "importance", title=f"Top {len(shown)} features")
    return figure


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

_REPORT_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; text-align: left; }
figure { display: inline-block; margin: 0.5em; }
figure img { max-width: 100%; }
figcaption { text-align: center; color: #555; }
"""


def html_table(frame: pd.DataFrame, decimals: int = 4) -> str:
    """A DataFrame as an HTML table, every label and value escaped, floats rounded."""
    index_name = html.escape(str(frame.index.name or ""))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for name, values in zip(frame.index, frame.itertuples(index=False, name=None)):
        cells = []
        for value in values:
            text, numeric = _cell(value, decimals)
            cells.append(f'<td class="num">{html.escape(text)}</td>' if numeric else f"<td>{html.escape(text)}</td>")
        body.append(f"<tr><th>{html.escape(str(name))}</th>{''.join(cells)}</tr>")
    return f"<table><thead><tr><th>{index_name}</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure_png_base64(figure: "Figure", dpi: int = 100) -> str:
    """A figure rendered to PNG in memory, base64-encoded."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def render_report(
    title: str,
    comparison: pd.DataFrame,
    figures: Mapping[str, "Figure"],
    context: Mapping[str, object],
    cv: pd.DataFrame | None = None,
) -> str:
    """A one-page, self-contained HTML evaluation report.

    Parameters
    ----------
    title : str
    comparison : pandas.DataFrame
        Output of :func:`comparison_table`.
    figures : mapping of str to matplotlib.figure.Figure
        Embedded as base64 PNG images, captioned with their names, in the mapping's order.
    context : mapping of str to object
        What was evaluated: data set, target, horizon, cutoffs, rows, model name, ...
    cv : pandas.DataFrame, optional
        Cross-validation results (for example one row per fold), shown when given.

    Returns
    -------
    str
        The HTML document; all text from the arguments is escaped.
    """
    context_rows = "".join(
        f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(_cell(value)[0])}</td></tr>"
        for key, value in context.items()
    )
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Context</h2>",
        f"<table><tbody>{context_rows}</tbody></table>",
        "<h2>Holdout: model and baselines</h2>",
        html_table(comparison),
    ]
    if cv is not None:
        sections += ["<h2>Cross-validation</h2>", html_table(cv)]
    if figures:
        sections.append("<h2>Figures</h2>")
    for name, figure in figures.items():
        caption = html.escape(str(name))
        sections.append(
            f'<figure><img src="data:image/png;base64,{figure_png_base64(figure)}" alt="{caption}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_REPORT_STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )
