"""Evaluation: hand-computed metrics, metric names, the comparison table, plots and the report."""

from __future__ import annotations

import base64
import math
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from churnml.evaluation.metrics import (
    best_classical,
    best_classical_scorers,
    binary_metrics,
    calibration_table,
    comparison_table,
    cv_summary,
    format_comparison,
    holdout_metrics,
    metric_key,
    top_fraction_size,
)
from churnml.evaluation.report import (
    gains_curve,
    plot_calibration,
    plot_gains,
    plot_importance,
    plot_precision_recall,
    plot_roc,
    render_report,
)

METRIC_NAMES = ["roc_auc", "pr_auc", "brier", "log_loss", "top_decile_lift", "top_decile_capture"]


@pytest.fixture(scope="module")
def holdout() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels with a planted signal: the model sees it clearly, the baselines through more noise."""
    rng = np.random.default_rng(11)
    signal = rng.normal(size=600)
    y = (rng.random(600) < 1 / (1 + np.exp(-2 * signal))).astype(int)

    def probability(noise: float) -> np.ndarray:
        return 1 / (1 + np.exp(-2 * (signal + rng.normal(scale=noise, size=600))))

    return y, {"model": probability(0.3), "rule": probability(1.0), "rfm": probability(2.0)}


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def test_binary_metrics_by_hand_on_four_rows():
    metrics = binary_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], top_fraction=0.25)
    # Of the four (negative, positive) pairs, only (0.4, 0.35) is ordered wrongly.
    assert metrics["roc_auc"] == pytest.approx(0.75)
    # Ranked: 0.8 (+), 0.4 (-), 0.35 (+): precision 1 at recall 0.5, 2/3 at recall 1.
    assert metrics["pr_auc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert metrics["brier"] == pytest.approx((0.1**2 + 0.4**2 + 0.65**2 + 0.2**2) / 4)
    assert metrics["log_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.6) + math.log(0.35) + math.log(0.8)) / 4)
    assert (metrics["top_decile_lift"], metrics["top_decile_capture"]) == (2.0, 0.5)
    assert (metrics["base_rate"], metrics["n"]) == (0.5, 4)


def test_lift_and_capture_on_twenty_rows():
    probability = np.linspace(0.95, 0.0, 20)
    y = np.zeros(20, dtype=int)
    y[[0, 5, 9, 14, 19]] = 1  # five positives; one of them in the top two rows
    metrics = binary_metrics(y, probability)
    # Top 10% = 2 rows, positive rate 1/2, base rate 5/20.
    assert metrics["top_decile_lift"] == pytest.approx(0.5 / 0.25)
    assert metrics["top_decile_capture"] == pytest.approx(1 / 5)


def test_ties_at_the_decile_boundary_take_the_earlier_rows():
    probability = np.full(20, 0.2)
    probability[[3, 7, 12]] = 0.9  # three tied rows compete for the two top places
    y = np.zeros(20, dtype=int)
    y[[3, 7, 19]] = 1
    metrics = binary_metrics(y, probability)
    # Rows 3 and 7 (both positive) are taken, not row 12.
    assert metrics["top_decile_capture"] == pytest.approx(2 / 3)
    assert metrics["top_decile_lift"] == pytest.approx(1.0 / (3 / 20))
    y_late = np.zeros(20, dtype=int)
    y_late[[12, 19]] = 1
    assert binary_metrics(y_late, probability)["top_decile_capture"] == 0.0


def test_ties_keep_row_order_on_a_large_table():
    rng = np.random.default_rng(5)
    probability = rng.integers(0, 3, 1000) / 2.0  # three values, hundreds of ties each
    top_tied = np.flatnonzero(probability == 1.0)
    assert len(top_tied) > 100
    y = np.zeros(1000, dtype=int)
    y[top_tied[:100]] = 1  # exactly the first 100 rows of the top value
    assert binary_metrics(y, probability)["top_decile_capture"] == 1.0


def test_top_fraction_size_is_ceil_without_float_noise():
    assert top_fraction_size(20, 0.1) == 2
    assert top_fraction_size(100, 0.07) == 7  # 100 * 0.07 is 7.000000000000001 in floating point
    assert top_fraction_size(21, 0.1) == 3
    assert top_fraction_size(5, 0.1) == 1


def test_log_loss_stays_finite_for_certain_mistakes():
    metrics = binary_metrics([0, 1], [1.0, 0.0])
    # Each row costs -log(1e-15), the clipping floor.
    assert metrics["log_loss"] == pytest.approx(-math.log(1e-15), rel=1e-3)
    assert metrics["brier"] == 1.0


def test_single_class_gives_nan_aucs_not_an_error():
    metrics = binary_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    assert math.isnan(metrics["roc_auc"]) and math.isnan(metrics["top_decile_lift"])
    assert metrics["brier"] == pytest.approx((0.01 + 0.04 + 0.09) / 3)


def test_binary_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="length"):
        binary_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="within"):
        binary_metrics([0, 1], [0.5, 1.5])
    with pytest.raises(ValueError, match="0 or 1"):
        binary_metrics([0, 2], [0.5, 0.5])


def test_metric_keys():
    assert metric_key("roc_auc") == "holdout_roc_auc"
    assert metric_key("roc_auc", "rule") == "rule_holdout_roc_auc"
    assert metric_key("top_decile_lift", "bgnbd") == "bgnbd_holdout_top_decile_lift"


def test_holdout_metrics_names_the_model_and_each_baseline(holdout):
    y, probabilities = holdout
    metrics = holdout_metrics({**probabilities, "bgnbd": probabilities["rfm"]}, y)
    expected = {f"holdout_{m}" for m in METRIC_NAMES} | {"holdout_base_rate", "holdout_n"}
    for baseline in ("rule", "rfm", "bgnbd", "best_classical"):
        expected |= {f"{baseline}_holdout_{m}" for m in METRIC_NAMES}
    assert set(metrics) == expected
    # The best classical score is the rule, whose noise is lower; the model never counts.
    assert metrics["best_classical_holdout_roc_auc"] == metrics["rule_holdout_roc_auc"]
    assert metrics["best_classical_holdout_brier"] == metrics["rule_holdout_brier"]
    assert metrics["best_classical_holdout_roc_auc"] < metrics["holdout_roc_auc"]
    assert metrics["holdout_roc_auc"] == pytest.approx(binary_metrics(y, probabilities["model"])["roc_auc"])
    assert metrics["bgnbd_holdout_brier"] == metrics["rfm_holdout_brier"]
    assert metrics["holdout_n"] == 600 and metrics["holdout_base_rate"] == pytest.approx(y.mean())


def test_holdout_metrics_with_another_model_name(holdout):
    y, probabilities = holdout
    metrics = holdout_metrics({"lightgbm": probabilities["model"], "rule": probabilities["rule"]}, y,
                              model_name="lightgbm")
    assert "holdout_roc_auc" in metrics and "rule_holdout_roc_auc" in metrics
    assert not any(key.startswith("lightgbm") for key in metrics)
    assert metrics["best_classical_holdout_roc_auc"] == metrics["rule_holdout_roc_auc"]
    assert not any(key.startswith("best_classical") for key in holdout_metrics({"lightgbm": probabilities["model"]}, y,
                                                                                model_name="lightgbm"))


def test_comparison_table_puts_the_model_first(holdout):
    y, probabilities = holdout
    reordered = {"rule": probabilities["rule"], "model": probabilities["model"], "rfm": probabilities["rfm"]}
    table = comparison_table(reordered, y)
    assert table.index.name == "model"
    assert list(table.index) == ["model", "rule", "rfm", "best_classical"]
    assert list(table.columns) == METRIC_NAMES
    # The planted signal: less noise, better ranking and calibration.
    assert table.loc["model", "roc_auc"] > table.loc["rule", "roc_auc"] > table.loc["rfm", "roc_auc"]
    assert table.loc["model", "brier"] < table.loc["rfm", "brier"]
    assert table.loc["rule", "pr_auc"] == pytest.approx(binary_metrics(y, probabilities["rule"])["pr_auc"])
    assert table.loc["best_classical"].equals(table.loc["rule"].rename("best_classical"))
    assert "best_classical" not in comparison_table({"model": probabilities["model"]}, y).index


def hand_table() -> pd.DataFrame:
    """A comparison table where each metric has another best classical scorer, and the model beats all."""
    return pd.DataFrame(
        {
            "roc_auc": [0.99, 0.70, math.nan, 0.75],
            "pr_auc": [0.99, 0.40, 0.45, math.nan],
            "brier": [0.01, 0.20, 0.18, 0.19],
            "log_loss": [0.05, 0.60, 0.61, 0.59],
            "top_decile_lift": [9.0, 2.0, 2.0, 1.5],
            "top_decile_capture": [math.nan, math.nan, math.nan, math.nan],
        },
        index=pd.Index(["model", "rule", "pnbd", "recency"], name="model"),
    )


def test_best_classical_picks_the_best_value_per_metric_by_its_direction():
    best = best_classical(hand_table())
    assert list(best.index) == METRIC_NAMES
    expected = {"roc_auc": (0.75, "recency"), "pr_auc": (0.45, "pnbd"), "brier": (0.18, "pnbd"),
                "log_loss": (0.59, "recency"), "top_decile_lift": (2.0, "rule")}
    for metric, (value, scorer) in expected.items():
        assert (best.at[metric, "value"], best.at[metric, "scorer"]) == (value, scorer), metric
    # No classical score has the metric: no best, and no scorer to name.
    assert math.isnan(best.at["top_decile_capture", "value"]) and best.at["top_decile_capture", "scorer"] == ""
    assert best_classical_scorers(hand_table()) == {f"best_classical_{m}_scorer": s for m, (_, s) in expected.items()}


def test_best_classical_ignores_the_model_and_its_own_row():
    table = hand_table()
    table.loc["best_classical"] = [0.999, 0.999, 0.0, 0.0, 99.0, 1.0]
    assert best_classical(table).equals(best_classical(hand_table()))
    lightgbm = hand_table().rename(index={"model": "lightgbm"})
    assert best_classical(lightgbm, model_name="lightgbm").equals(best_classical(hand_table()))
    # Named otherwise, the model's row is a classical score like any other.
    assert best_classical(lightgbm).at["roc_auc", "scorer"] == "lightgbm"


def test_format_comparison_aligns_columns(holdout):
    y, probabilities = holdout
    table = comparison_table(probabilities, y)
    text = format_comparison(table)
    lines = text.splitlines()
    # Header, rule, model, rule, rfm, rule, best_classical, its scorers.
    assert len(lines) == 3 + len(table) + 1
    assert lines[0].split() == ["model"] + METRIC_NAMES
    assert len({len(line) for line in lines}) == 1
    assert f"{table.loc['rule', 'log_loss']:.4f}" in lines[3]
    assert lines[2].startswith("model ")
    assert set(lines[5]) == {"-", " "}
    assert lines[6].split() == ["best_classical"] + [f"{v:.4f}" for v in table.loc["rule"]]
    assert lines[7].split() == ["best_classical", "scorer"] + ["rule"] * len(METRIC_NAMES)


def test_format_comparison_shows_each_metrics_scorer():
    table = hand_table()
    table.loc["best_classical"] = best_classical(table)["value"]
    lines = format_comparison(table).splitlines()
    assert lines[-2].split() == ["best_classical", "0.7500", "0.4500", "0.1800", "0.5900", "2.0000", "nan"]
    assert lines[-1].split() == ["best_classical", "scorer", "recency", "pnbd", "pnbd", "recency", "rule"]
    assert len({len(line) for line in lines[:-1]}) == 1


def test_cv_summary_population_std():
    folds = [{"roc_auc": 0.7, "brier": 0.2}, {"roc_auc": 0.8, "brier": 0.1}, {"roc_auc": 0.9}]
    summary = cv_summary(folds)
    assert list(summary) == ["cv_roc_auc_mean", "cv_roc_auc_std", "cv_brier_mean", "cv_brier_std"]
    assert summary["cv_roc_auc_mean"] == pytest.approx(0.8)
    assert summary["cv_roc_auc_std"] == pytest.approx(math.sqrt((0.01 + 0 + 0.01) / 3))
    assert summary["cv_brier_mean"] == pytest.approx(0.15)
    assert summary["cv_brier_std"] == pytest.approx(0.05)


def test_cv_summary_one_fold_and_missing_values():
    assert cv_summary([{"roc_auc": 0.7}]) == {"cv_roc_auc_mean": 0.7, "cv_roc_auc_std": 0.0}
    summary = cv_summary([{"roc_auc": math.nan}, {"roc_auc": 0.6}, {"roc_auc": 0.8}])
    assert summary["cv_roc_auc_mean"] == pytest.approx(0.7)
    assert summary["cv_roc_auc_std"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="fold"):
        cv_summary([])


def test_calibration_table_by_hand():
    probability = np.array([0.1] * 5 + [0.9] * 5)
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])
    table = calibration_table(y, probability, n_bins=2)
    assert list(table.columns) == ["mean_predicted", "observed_rate", "count"]
    np.testing.assert_allclose(table["mean_predicted"], [0.1, 0.9])
    np.testing.assert_allclose(table["observed_rate"], [0.2, 0.8])
    assert list(table["count"]) == [5, 5]
    # Tied probabilities share one bin, whatever the number of bins asked for.
    assert len(calibration_table(y, np.full(10, 0.5), n_bins=10)) == 1


def test_calibration_table_quantile_bins_have_equal_counts(holdout):
    y, probabilities = holdout
    table = calibration_table(y, probabilities["model"], n_bins=10)
    assert list(table["count"]) == [60] * 10
    assert (np.diff(table["mean_predicted"]) > 0).all()
    assert table["observed_rate"].iloc[-1] > table["observed_rate"].iloc[0]


def test_gains_curve_by_hand():
    targeted, captured = gains_curve([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    np.testing.assert_allclose(targeted, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(captured, [0, 0.5, 0.5, 1, 1])


# ---------------------------------------------------------------------------------------------
# Plots and report
# ---------------------------------------------------------------------------------------------


def _plotted(figure: Figure) -> bool:
    return any(ax.has_data() for ax in figure.axes)


@pytest.mark.parametrize("plot", [plot_roc, plot_precision_recall, plot_calibration, plot_gains])
def test_curve_plots_draw_every_model(holdout, plot):
    y, probabilities = holdout
    figure = plot(probabilities, y)
    assert isinstance(figure, Figure) and _plotted(figure)
    labels = {text.get_text() for ax in figure.axes if ax.get_legend() for text in ax.get_legend().get_texts()}
    for name in probabilities:
        assert any(label.startswith(name) for label in labels), name


def test_gains_plot_has_gains_and_lift_axes(holdout):
    y, probabilities = holdout
    figure = plot_gains(probabilities, y)
    assert [ax.get_title() for ax in figure.axes] == ["Cumulative gains", "Lift"]
    assert all(ax.has_data() for ax in figure.axes)


def test_importance_plot_keeps_the_largest_features():
    importance = pd.Series({"recency_days": 5.0, "frequency": -8.0, "tenure_days": 1.0, "ltv": 3.0}, name="gain")
    figure = plot_importance(importance, top=3)
    assert isinstance(figure, Figure) and _plotted(figure)
    shown = [label.get_text() for label in figure.axes[0].get_yticklabels()]
    assert shown == ["ltv", "recency_days", "frequency"]  # largest |importance| on top


def test_report_embeds_tables_and_figures(holdout):
    y, probabilities = holdout
    table = comparison_table(probabilities, y)
    cv = pd.DataFrame({"roc_auc": [0.71234, 0.75678]}, index=pd.Index([0, 1], name="fold"))
    figures = {"roc": plot_roc(probabilities, y), "gains": plot_gains(probabilities, y)}
    context = {"data set": "demo <shop>", "target": "churn", "horizon_days": 90, "holdout cutoff": "2024-09-30"}
    report = render_report("Churn & repurchase", table, figures, context, cv=cv)
    assert report.startswith("<!DOCTYPE html>")
    assert "<title>Churn &amp; repurchase</title>" in report
    assert "demo &lt;shop&gt;" in report and "demo <shop>" not in report
    assert "2024-09-30" in report and ">90<" in report
    for name in [*table.index, "best_classical scorer"]:
        assert f">{name}<" in report
    assert report.count("<td>rule</td>") == len(METRIC_NAMES)
    assert f"{table.loc['model', 'roc_auc']:.4f}" in report
    assert f"{table.loc['rfm', 'top_decile_lift']:.4f}" in report
    assert "0.7123" in report and "0.7568" in report
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', report)
    assert len(images) == len(figures)
    assert all(base64.b64decode(image).startswith(b"\x89PNG\r\n\x1a\n") for image in images)
    assert "<figcaption>roc</figcaption>" in report and "<figcaption>gains</figcaption>" in report


def test_report_without_cv_has_no_cv_section(holdout):
    y, probabilities = holdout
    report = render_report("r", comparison_table(probabilities, y), {}, {"target": "churn"})
    assert "Cross-validation" not in report and "<img" not in report and report.count("<h2>") == 2


def test_report_shows_further_tables_after_the_cv_under_their_headings(holdout):
    y, probabilities = holdout
    rules = pd.DataFrame({"rule": ["any_flag"], "precision": [0.61234]}, index=pd.Index(["all"], name="cutoff"))
    cv = pd.DataFrame({"roc_auc": [0.7]})
    report = render_report("r", comparison_table(probabilities, y), {}, {}, cv=cv,
                           tables=[("Rules & model", rules, "precision <of alerts>")])
    assert report.index("<h2>Cross-validation</h2>") < report.index("<h2>Rules &amp; model</h2>")
    assert "<p>precision &lt;of alerts&gt;</p>" in report and "0.6123" in report and ">any_flag<" in report
