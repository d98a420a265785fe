"""Plots and the one-page HTML report of an evaluation.

Every function takes labels and probabilities of the positive class (churn or repurchase) as
arrays. Plots are ``matplotlib.figure.Figure`` objects drawn on the Agg canvas, never through
pyplot, so nothing global changes and they can be logged or embedded by the caller.
"""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import pandas as pd

from churnml.evaluation.metrics import _cell, _check_binary, calibration_table, with_scorer_row

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def new_figure(n_axes: int = 1, width: float = 6.0, height: float = 4.5) -> tuple["Figure", list]:
    """A figure of ``n_axes`` side by side on the Agg canvas (no pyplot state), ``width`` inches per axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * n_axes, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(1, n_axes, i + 1) for i in range(n_axes)]
    return figure, axes


def plot_roc(probabilities: Mapping[str, np.ndarray], y_true) -> "Figure":
    """ROC curves of the model and baselines, with their AUC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    figure, (ax,) = new_figure()
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

    figure, (ax,) = new_figure()
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
    figure, (ax,) = new_figure()
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
    figure, (gains_ax, lift_ax) = new_figure(n_axes=2)
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
    figure, (ax,) = new_figure(height=max(3.0, 0.3 * len(shown) + 1.0))
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
    tables: Sequence[tuple[str, pd.DataFrame, str]] = (),
) -> str:
    """A one-page, self-contained HTML evaluation report.

    Parameters
    ----------
    title : str
    comparison : pandas.DataFrame
        Output of :func:`comparison_table`; its ``best_classical`` row is followed by the name of
        the scorer of each best value.
    figures : mapping of str to matplotlib.figure.Figure
        Embedded as base64 PNG images, captioned with their names, in the mapping's order.
    context : mapping of str to object
        What was evaluated: data set, target, horizon, cutoffs, rows, model name, ...
    cv : pandas.DataFrame, optional
        Cross-validation results (for example one row per fold), shown when given.
    tables : sequence of (str, pandas.DataFrame, str)
        Further tables after the cross-validation, each under its heading, with a note (a
        sentence on what the numbers mean) above it.

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
        "<h2>Holdout: model and classical scores</h2>",
        html_table(with_scorer_row(comparison)),
    ]
    if cv is not None:
        sections += ["<h2>Cross-validation</h2>", html_table(cv)]
    for heading, table, note in tables:
        sections += [f"<h2>{html.escape(heading)}</h2>", f"<p>{html.escape(note)}</p>", html_table(table)]
    if figures:
        sections.append("<h2>Figures</h2>")
    sections += [figure_html(name, figure) for name, figure in figures.items()]
    return html_page(title, sections)


def figure_html(caption: object, figure: "Figure") -> str:
    """A figure as an embedded PNG with its (escaped) caption."""
    text = html.escape(str(caption))
    return (f'<figure><img src="data:image/png;base64,{figure_png_base64(figure)}" alt="{text}">'
            f"<figcaption>{text}</figcaption></figure>")


def html_page(title: str, sections: Sequence[str]) -> str:
    """A self-contained HTML document: the escaped ``title`` and the given HTML ``sections`` in
    the reports' style. The sections must already be escaped (:func:`html_table`, :func:`figure_html`)."""
    body = "\n".join(sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_REPORT_STYLE}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")
