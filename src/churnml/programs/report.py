"""Plots and the one-page HTML report of a campaign evaluation (``churnml-experiment``).

Figures are ``matplotlib.figure.Figure`` objects on the Agg canvas (no pyplot state), built from
the tables of :mod:`churnml.programs.experiments` and :mod:`churnml.programs.uplift`.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import pandas as pd

from churnml.evaluation.report import figure_html, html_page, html_table, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Metrics drawn in the lift plot, with the factor and unit they are shown in.
PLOTTED_LIFTS = {"repurchase_rate": (100.0, "points"), "revenue_per_customer": (1.0, "currency per customer")}
LIFT_SHOWN = ("campaign", "metric", "estimator", "n_control", "n_treatment", "control_mean", "treatment_mean", "lift",
              "lift_ci_lower", "lift_ci_upper", "relative_lift", "pvalue", "ci_width_ratio")

READING = (
    ("lift", "treatment mean minus control mean, in the metric's units (a rate of 0.05 is 5 points); "
             "the interval holds the true lift in 95 of 100 such campaigns (experiment.confidence_level)."),
    ("relative_lift", "treatment mean over control mean, minus 1."),
    ("pvalue", "the chance of a lift at least this far from 0 if the campaign changed nothing."),
    ("cuped", "the same lift adjusted for each customer's own pre-period (Deng et al., WSDM 2013): it estimates the "
              "same effect with a narrower interval when the past predicts the outcome; ci_width_ratio is its "
              "width over the plain interval's."),
    ("sample-ratio check", "whether the group sizes fit the planned split; a mismatch (p below "
                           "experiment.srm_p_value) means the assignment or the data lost customers unevenly, and "
                           "no lift of that campaign should be trusted until it is explained."),
    ("pilot size", "customers a pilot needs to detect the given rise of the repurchase rate with the given power "
                   "(two-sided z-test of two proportions)."),
    ("Qini coefficient", "how much better than random a targeting finds the customers a contact changes: the area "
                         "between its Qini curve and the random line over that of the best possible ordering "
                         "(Radcliffe 2007); 0 is random, below 0 worse than random."),
    ("incremental_at_Npct", "extra repurchasing customers, against no contact, if the top N% by the targeting had "
                            "been contacted (from the holdout campaign's control group)."),
)


def plot_lifts(lifts: pd.DataFrame, metrics: Mapping[str, tuple[float, str]] = PLOTTED_LIFTS) -> "Figure":
    """Lift with its interval per campaign and estimator (plain difference, CUPED), one panel per
    metric of ``metrics`` (name to display factor and unit)."""
    shown = [m for m in metrics if (lifts["metric"] == m).any()]
    figure, axes = new_figure(n_axes=max(len(shown), 1), width=5.5, height=max(2.5, 0.45 * len(lifts) / 4 + 2.0))
    for ax, metric in zip(axes, shown):
        factor, unit = metrics[metric]
        rows = lifts[lifts["metric"] == metric].reset_index(drop=True)
        labels = [f"{r.campaign} ({'CUPED' if r.estimator == 'cuped' else 'plain'})" for r in rows.itertuples()]
        y = np.arange(len(rows))[::-1]
        lift = rows["lift"].to_numpy(float) * factor
        lower = rows["lift_ci_lower"].to_numpy(float) * factor
        upper = rows["lift_ci_upper"].to_numpy(float) * factor
        colours = ["#1f77b4" if e == "cuped" else "#7f7f7f" for e in rows["estimator"]]
        ax.hlines(y, lower, upper, colors=colours, linewidth=2)
        ax.scatter(lift, y, c=colours, zorder=3)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_yticks(y, labels)
        ax.set_xlabel(f"lift ({unit})")
        ax.set_title(metric.replace("_", " "))
    return figure


def plot_qini(curves: pd.DataFrame) -> "Figure":
    """Qini curves (incremental responders by share targeted) of each targeting in ``curves``
    (:func:`churnml.programs.uplift.targeting_curves`)."""
    figure, (ax,) = new_figure(width=6.0, height=4.5)
    for name, curve in curves.groupby("targeting", sort=False):
        style = {"linestyle": "--", "color": "black"} if name == "random" else {}
        ax.plot(curve["fraction"], curve["incremental"], label=str(name), **style)
    ax.set_xlabel("share of customers targeted")
    ax.set_ylabel("incremental repurchasing customers")
    ax.set_title("Qini curves, holdout campaign")
    ax.legend()
    return figure


def plot_uplift_bins(bins: pd.DataFrame) -> "Figure":
    """Observed uplift (treated rate minus control rate) per bin of the model's predicted uplift,
    highest predicted first (:func:`churnml.programs.uplift.uplift_curve`)."""
    figure, (ax,) = new_figure(width=6.0, height=4.0)
    positions = np.arange(len(bins))
    ax.bar(positions, bins["uplift"].to_numpy(float) * 100.0, color="#1f77b4")
    ax.set_xticks(positions, [str(b) for b in bins["bin"]])
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("bin of predicted uplift (1 = highest)")
    ax.set_ylabel("observed uplift (points)")
    ax.set_title("Uplift by predicted-uplift bin, holdout campaign")
    return figure


def render_experiment_report(title: str, context: Mapping[str, object], campaigns: pd.DataFrame, srm: pd.DataFrame,
                             lifts: pd.DataFrame, plan: pd.DataFrame, targeting: pd.DataFrame | None,
                             figures: Mapping[str, "Figure"], notes: Sequence[str] = ()) -> str:
    """The one-page, self-contained HTML report of ``churnml-experiment`` (every text escaped).

    Parameters
    ----------
    title : str
    context : mapping
        What was evaluated: data set, as_of, windows, campaigns, the uplift model's training.
    campaigns : pandas.DataFrame
        :func:`churnml.programs.campaigns.campaign_table` of the evaluated campaigns.
    srm : pandas.DataFrame
        :func:`churnml.programs.experiments.sample_ratio_check`.
    lifts : pandas.DataFrame
        :func:`churnml.programs.experiments.analyze_campaigns`.
    plan : pandas.DataFrame
        The pilot plans, one row each (fields of :class:`churnml.programs.experiments.PilotPlan`).
    targeting : pandas.DataFrame or None
        :func:`churnml.programs.uplift.compare_targeting` on the holdout campaign; None without
        an uplift model.
    figures : mapping of str to Figure
        Captioned by their names, in order.
    notes : sequence of str
        What was left out and why.
    """
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in context.items())
    sections = [f"<h1>{html.escape(title)}</h1>", f"<table><tbody>{rows}</tbody></table>"]
    sections += [f"<p>{html.escape(note)}</p>" for note in notes]
    sections += ["<h2>Campaigns</h2>", html_table(campaigns.set_index("campaign")),
                 "<h2>Sample-ratio check</h2>", html_table(srm.set_index("campaign")),
                 "<h2>Lift</h2>", html_table(lifts[[c for c in LIFT_SHOWN if c in lifts.columns]].set_index("campaign")),
                 "<h2>Pilot size</h2>", html_table(plan.set_index("base_rate"))]
    if targeting is not None:
        sections += ["<h2>Uplift targeting, out of time</h2>", html_table(targeting.set_index("targeting"))]
    sections += [figure_html(name, figure) for name, figure in figures.items()]
    reading = "".join(f"<tr><th>{html.escape(term)}</th><td>{html.escape(text)}</td></tr>" for term, text in READING)
    sections += ["<h2>How to read it</h2>", f"<table><tbody>{reading}</tbody></table>"]
    return html_page(title, sections)
