"""The loyalty dashboard: its plots (matplotlib figures on the Agg canvas, never pyplot) and the
one-page HTML that embeds them, as the evaluation report does."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import pandas as pd

from churnml.evaluation.report import figure_html, html_page, html_table, new_figure
from churnml.loyalty.migration import matrix_frame

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# How many of the newest cohorts and months since acquisition the heatmap shows.
HEATMAP_COHORTS = 24
TREND_KPIS = {"repurchase_rate": "repurchase rate", "churn_rate": "churn rate", "aov": "average order value",
              "nps": "NPS"}


def plot_retention(cohorts: pd.DataFrame, max_cohorts: int = HEATMAP_COHORTS) -> "Figure":
    """Heatmap of :func:`churnml.loyalty.kpis.cohort_retention`: the newest ``max_cohorts``
    cohorts (rows) by months since acquisition (columns, from 1), retention as colour."""
    grid = cohorts.pivot_table(index="cohort", columns="months_since", values="retention", aggfunc="sum")
    grid = grid.sort_index().iloc[-max_cohorts:].dropna(axis=1, how="all")
    # Month 0 is 100 % by definition; a cohort seen in its first month only has no row left.
    grid = grid.loc[:, [c for c in grid.columns if c > 0]] if grid.shape[1] > 1 else grid
    grid = grid.dropna(axis=0, how="all")
    figure, (ax,) = new_figure(width=11.0, height=max(3.0, 0.28 * len(grid) + 1.5))
    image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", cmap="viridis", vmin=0)
    ax.set_yticks(range(len(grid)), [f"{c:%Y-%m}" for c in grid.index])
    step = max(1, grid.shape[1] // 18)
    ax.set_xticks(range(0, grid.shape[1], step), [str(c) for c in grid.columns[::step]])
    ax.set(xlabel="months since first purchase", ylabel="acquisition cohort",
           title="Retention: share of the cohort buying in the month")
    figure.colorbar(image, ax=ax, label="retention")
    return figure


def plot_migration(transitions: pd.DataFrame, known: Sequence[str] = (), title: str = "Tier migration") -> "Figure":
    """Heatmap of the row shares of a :func:`churnml.loyalty.migration.transition_matrix`, each
    cell annotated with its share and count."""
    shares = matrix_frame(transitions, "share", known)
    counts = matrix_frame(transitions, "customers", known)
    figure, (ax,) = new_figure(width=6.5, height=5.0)
    image = ax.imshow(shares.to_numpy(dtype=float), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(shares.shape[1]), list(shares.columns))
    ax.set_yticks(range(shares.shape[0]), list(shares.index))
    for i in range(shares.shape[0]):
        for j in range(shares.shape[1]):
            share = shares.iat[i, j]
            ax.text(j, i, f"{share:.0%}\n{int(counts.iat[i, j]):,}", ha="center", va="center", fontsize=8,
                    color="white" if share > 0.6 else "black")
    ax.set(xlabel="to", ylabel="from", title=title)
    figure.colorbar(image, ax=ax, label="share of the row")
    return figure


def plot_trends(monthly: pd.DataFrame, periods: Sequence, progress: pd.DataFrame) -> "Figure":
    """Monthly repurchase rate, churn rate, AOV and (with surveys) NPS, the baseline and current
    periods shaded, and each overall target's goal drawn over the current period."""
    shown = [k for k in TREND_KPIS if k in monthly.columns and monthly[k].notna().any()]
    figure, axes = new_figure(n_axes=len(shown), width=4.2, height=3.4)
    goals = progress[progress["group"] == "all"].set_index("kpi")["goal"] if not progress.empty else pd.Series()
    for ax, kpi in zip(axes, shown):
        ax.plot(monthly["month"], monthly[kpi], marker=".", color="tab:blue")
        for period, colour in zip(periods, ("tab:grey", "tab:green")):
            ax.axvspan(pd.Timestamp(period.start), pd.Timestamp(period.end), color=colour, alpha=0.12,
                       label=f"{period.name} {period.label}")
        if kpi in goals.index and np.isfinite(goals[kpi]):
            current = periods[-1]
            ax.hlines(goals[kpi], pd.Timestamp(current.start), pd.Timestamp(current.end), colors="tab:red",
                      linestyles="--", label="target")
        ax.set_title(TREND_KPIS[kpi])
        ax.tick_params(axis="x", labelrotation=45)
    axes[0].legend(loc="best", fontsize=7)
    return figure


def plot_progress(progress: pd.DataFrame) -> "Figure":
    """Horizontal bars: the share of each target reached (1 = met), a line at 1."""
    figure, (ax,) = new_figure(width=6.5, height=max(2.5, 0.5 * len(progress) + 1.2))
    values = progress["progress"].to_numpy(dtype=float)
    labels = [f"{t} ({k}{'' if g == 'all' else ', ' + str(g)})"
              for t, k, g in zip(progress["target"], progress["kpi"], progress["group"])]
    colours = ["tab:green" if met else "tab:orange" for met in progress["met"]]
    ax.barh(labels[::-1], np.nan_to_num(values[::-1]), color=colours[::-1])
    for y, value in enumerate(values[::-1]):
        ax.text(0, y, " no data" if np.isnan(value) else f" {value:.0%}", va="center", fontsize=8)
    ax.axvline(1.0, color="tab:red", linestyle="--")
    ax.set(xlabel="share of the target reached (1 = met)", title="Progress against the program targets")
    return figure


def plot_clv(periods_table: pd.DataFrame, by: str = "tier") -> "Figure":
    """CLV (mean LTV) by ``by`` at the end of the baseline and of the current period."""
    rows = periods_table[periods_table["by"] == by].pivot_table(index="group", columns="period", values="clv")
    figure, (ax,) = new_figure(width=6.0, height=3.8)
    columns = [c for c in ("baseline", "current") if c in rows.columns]
    rows[columns].plot.bar(ax=ax, rot=0)
    ax.set(xlabel=by, ylabel="mean LTV", title=f"CLV by {by}, at each period's end")
    return figure


def dashboard_figures(monthly: pd.DataFrame, cohorts: pd.DataFrame, periods: Sequence, periods_table: pd.DataFrame,
                      progress: pd.DataFrame, migrations: Mapping[str, pd.DataFrame],
                      known_states: Mapping[str, Sequence[str]]) -> dict[str, "Figure"]:
    """Every figure of the dashboard, by caption, in its order."""
    figures: dict[str, Figure] = {}
    if not progress.empty:
        figures["progress against targets"] = plot_progress(progress)
    figures["KPI trends"] = plot_trends(monthly, periods, progress)
    if not cohorts.empty:
        figures["retention by acquisition cohort"] = plot_retention(cohorts)
    for name, transitions in migrations.items():
        if not transitions.empty:
            figures[f"{name} migration"] = plot_migration(transitions, known_states.get(name, ()),
                                                          title=f"{name.title()} migration")
    for by in ("tier", "level"):
        if (periods_table["by"] == by).any() and periods_table.loc[periods_table["by"] == by, "clv"].notna().any():
            figures[f"CLV by {by}"] = plot_clv(periods_table, by)
    return figures


def render_dashboard(title: str, context: Mapping[str, object], progress: pd.DataFrame, periods_table: pd.DataFrame,
                     figures: Mapping[str, "Figure"], notes: Sequence[str] = ()) -> str:
    """The one-page, self-contained HTML dashboard (every text escaped, figures as embedded PNG).

    Parameters
    ----------
    title : str
    context : mapping
        What the dashboard is about: data set, as_of, periods, definitions.
    progress : pandas.DataFrame
        :func:`churnml.loyalty.kpis.target_progress`.
    periods_table : pandas.DataFrame
        :func:`churnml.loyalty.kpis.period_table`.
    figures : mapping of str to matplotlib.figure.Figure
        Captioned by their names, in order.
    notes : sequence of str
        Lines shown under the context (what could not be computed and why).
    """
    context_rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                           for k, v in context.items())
    sections = [f"<h1>{html.escape(title)}</h1>", f"<table><tbody>{context_rows}</tbody></table>"]
    sections += [f"<p>{html.escape(note)}</p>" for note in notes]
    if not progress.empty:
        sections += ["<h2>Program targets</h2>", html_table(progress.set_index("target"))]
    shown = [c for c in ("period", "months", "by", "group", "active_start", "repurchase_rate", "churn_rate", "aov",
                         "customers", "clv", "nps", "csat", "ces") if c in periods_table.columns]
    sections += ["<h2>KPIs by period</h2>", html_table(periods_table[shown].set_index("period"))]
    sections += [figure_html(name, figure) for name, figure in figures.items()]
    return html_page(title, sections)
