"""Explaining predictions: SHAP values of a registered model, and the tables the notebooks plot.

SHAP values explain the model's raw score (log-odds before calibration), the scale on which they
add up: ``base value + sum of a row's SHAP values = raw score``. Calibration is monotonic, so a
feature that raises the raw score raises the probability too.

How the values are computed depends on the estimator:

- LightGBM (``preprocessing="native"``): ``shap.TreeExplainer`` on the fitted booster and the exact
  matrix it sees (tree-path-dependent SHAP, identical to LightGBM's ``pred_contrib``). A model
  that boosts from a BTYD prior gets one more column, ``btyd_prior``: each row's prior log-odds
  minus their mean over the explained rows (the mean goes into the base value);
- linear pipelines (``preprocessing="scaled"``): the model's exact contributions, coefficient x
  standardised value, summed back to the input feature (one-hot and missing-indicator columns);
- anything else: a permutation explainer over the raw score, against a background sample.

The functions take DataFrames and a fitted :class:`~churnml.models.classifier.ChurnModel` and return
tidy DataFrames; MLflow is reached through :mod:`churnml.tracking` only.
"""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import pandas as pd

from churnml.features import snapshots
from churnml.features.build import WARNING_FLAGS, FeatureConfig
from churnml.features.dates import resolve_as_of
from churnml.io.load import Dataset
from churnml.models.btyd import BGNBD_FEATURE_COLUMNS, bgnbd_features, uses_bgnbd_features
from churnml.models.classifier import BIAS, PRIOR, ChurnModel, is_lightgbm
from churnml.scoring.policy import RISK_BANDS, ScoringConfig
from churnml.scoring.reasons import ReasonContext
from churnml.scoring.table import model_inputs, score_customers

if TYPE_CHECKING:
    import shap

# Features whose effect the explanation notebook shows one by one, when the model has them.
DEPENDENCE_FEATURES = ("recency_days", "frequency", "aov_change", *WARNING_FLAGS)
SCORES_GLOB = "as_of=*/scores.parquet"


# --------------------------------------------------------------------------------------------
# Models and features
# --------------------------------------------------------------------------------------------


def feature_frame(dataset: Dataset, as_of: str | dt.date | None, config: FeatureConfig = FeatureConfig()) -> pd.DataFrame:
    """The feature table at ``as_of`` (default: the last date in the data) as a pandas frame
    (:func:`churnml.features.snapshots.feature_frame`; the date as every stage resolves it)."""
    return snapshots.feature_frame(dataset, resolve_as_of(as_of, dataset.first_date, dataset.last_date), config)


def features_for_model(model: ChurnModel, features: pd.DataFrame) -> pd.DataFrame:
    """``features`` with the extra columns the model was trained with (BG/NBD, fitted on these rows).

    BG/NBD is fitted on the frame's own history, as in training, with the model's horizon; a
    churn and a repurchase model therefore get different expected-purchase columns.
    """
    base = features.drop(columns=[c for c in BGNBD_FEATURE_COLUMNS if c in features.columns])
    if not uses_bgnbd_features(model):
        return base
    return pd.concat([base, bgnbd_features(base, model.horizon_days)], axis=1)


def labelled_frame(dataset: Dataset, model: ChurnModel, cutoff: str | dt.date,
                   config: FeatureConfig = FeatureConfig()) -> pd.DataFrame:
    """Features at ``cutoff`` for ``model`` with the ``label`` of its target in the horizon after.

    Raises
    ------
    ValueError
        When ``cutoff + horizon`` passes the last date in the data (the outcome is unknown).
    """
    cutoff = resolve_as_of(cutoff, dataset.first_date, dataset.last_date, model.horizon_days)
    frame = snapshots.snapshot(dataset, cutoff, model.target, model.horizon_days, config)
    labels = frame.pop("label").astype(int)
    return features_for_model(model, frame).assign(label=labels.to_numpy())


def sample_rows(frame: pd.DataFrame, n: int | None, seed: int = 0) -> pd.DataFrame:
    """Up to ``n`` rows drawn without replacement (all rows when ``n`` is None), index reset."""
    if n is None or n >= len(frame):
        return frame.reset_index(drop=True)
    return frame.sample(n=int(n), random_state=seed).reset_index(drop=True)


def probability(model: ChurnModel, features: pd.DataFrame) -> np.ndarray:
    """The model's calibrated probability of its target, one per row."""
    return model.predict_proba(features)[:, 1]


# --------------------------------------------------------------------------------------------
# SHAP values
# --------------------------------------------------------------------------------------------


def numeric_matrix(model: ChurnModel, features: pd.DataFrame) -> pd.DataFrame:
    """The model's input as numbers: categories as their code in training (NaN when missing).

    This is what SHAP plots colour by; :func:`frame_from_numeric` reverses it.
    """
    model.check_features(features)
    prepared = model._prepare(features)
    columns = {}
    for name in model.feature_names_in_:
        if name in model.categories_:
            # Position among the training categories; -1 (unseen or missing) becomes NaN.
            text = features[name].astype("string").astype(object).where(features[name].notna(), None)
            codes = pd.Index(model.categories_[name], dtype=object).get_indexer(text).astype("float64")
            columns[name] = np.where(codes < 0, np.nan, codes)
        else:
            columns[name] = prepared[name].to_numpy(dtype="float64")
    return pd.DataFrame(columns, index=features.index)


def frame_from_numeric(model: ChurnModel, matrix: np.ndarray) -> pd.DataFrame:
    """Model input rows back from :func:`numeric_matrix` codes (unknown codes become missing)."""
    frame = pd.DataFrame(np.asarray(matrix, dtype="float64"), columns=model.feature_names_in_)
    for name, categories in model.categories_.items():
        codes = frame[name].to_numpy()
        valid = np.isfinite(codes) & (codes >= 0) & (codes < len(categories))
        labels = np.full(len(codes), None, dtype=object)
        labels[valid] = np.asarray(categories, dtype=object)[codes[valid].astype(int)]
        frame[name] = pd.Series(labels, dtype=object)
    return frame


def _display_values(model: ChurnModel, features: pd.DataFrame) -> np.ndarray:
    """Feature values as shown next to a waterfall's bars: category names instead of codes."""
    shown = features[model.feature_names_in_].copy()
    for name in model.feature_names_in_:
        if name not in model.categories_:
            shown[name] = pd.to_numeric(shown[name], errors="coerce").astype("float64")
    return shown.to_numpy(dtype=object)


def explanation_method(model: ChurnModel) -> str:
    """``tree`` (LightGBM), ``linear`` (exact contributions) or ``permutation``."""
    estimator = model.estimator_
    if model.preprocessing == "native" and is_lightgbm(estimator):
        return "tree"
    if model.preprocessing == "scaled" and hasattr(estimator[-1], "coef_"):
        return "linear"
    return "permutation"


def shap_explanation(model: ChurnModel, features: pd.DataFrame, background_size: int = 100,
                     n_permutations: int = 10, seed: int = 0) -> "shap.Explanation":
    """SHAP values of ``model`` for the rows of ``features``, on the raw-score (log-odds) scale.

    Parameters
    ----------
    model : ChurnModel
        A fitted model.
    features : pandas.DataFrame
        Rows to explain, with every column in ``model.feature_names_in_``.
    background_size : int, default 100
        Rows of ``features`` used as the background distribution by the permutation explainer
        (unused by the tree and linear paths, which are exact).
    n_permutations : int, default 10
        Forward-and-back feature orderings the permutation explainer averages per row. Each
        costs one model call on ``(2 x features + 1) x background_size`` rows per explained row,
        so explain a sample, not the whole customer base, with such models.
    seed : int, default 0

    Returns
    -------
    shap.Explanation
        ``values`` (rows x features), ``base_values`` (one per row), ``data`` (the numeric input
        from :func:`numeric_matrix`), ``display_data`` (category names) and ``feature_names``
        (the model's features, then ``btyd_prior`` for a model boosted from a BTYD prior). For every
        row, ``base_values + values.sum()`` equals ``model.raw_score(features)``.

    Notes
    -----
    A BTYD prior is fitted on the rows given, as in scoring: explain the whole customer base
    (or use :func:`explain_customers`) rather than a sample, or the prior is that of the sample.
    """
    import shap

    matrix = numeric_matrix(model, features)
    shown = _display_values(model, features)
    names = list(model.feature_names_in_)
    method = explanation_method(model)
    if method == "tree":
        values, base_values = _tree_values(model, features)
        if getattr(model, "prior", None):
            prior = model.prior_log_odds(features)
            # An additive term's SHAP value is its deviation from the mean; the mean is shared.
            values = np.column_stack([values, prior - prior.mean()])
            base_values = base_values + prior.mean()
            matrix[PRIOR] = prior
            shown = np.column_stack([shown, prior.astype(object)])
            names.append(PRIOR)
    elif method == "linear":
        contributions = model.contributions(features)
        values = contributions[names].to_numpy(dtype="float64")
        base_values = contributions[BIAS].to_numpy(dtype="float64")
    else:
        values, base_values = _permutation_values(model, matrix, background_size, n_permutations, seed)
    return shap.Explanation(
        values=values,
        base_values=base_values,
        data=matrix.to_numpy(),
        display_data=shown,
        feature_names=names,
    )


def _tree_values(model: ChurnModel, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    import shap

    prepared = model._prepare(features)
    # The booster itself: a model loaded from its stored text has no LGBMClassifier around it.
    explainer = shap.TreeExplainer(model.estimator_.booster_)
    with warnings.catch_warnings():
        # shap announces a change of output format for LightGBM binary models on every call.
        warnings.filterwarnings("ignore", message="LightGBM binary classifier with TreeExplainer")
        values = np.asarray(explainer.shap_values(prepared), dtype="float64")
    base = float(np.ravel(explainer.expected_value)[-1])
    return values, np.full(len(prepared), base)


def _permutation_values(model: ChurnModel, matrix: pd.DataFrame, background_size: int, n_permutations: int,
                        seed: int) -> tuple[np.ndarray, np.ndarray]:
    import shap

    def raw_score(rows: np.ndarray) -> np.ndarray:
        return model.raw_score(frame_from_numeric(model, rows))

    background = sample_rows(matrix, background_size, seed).to_numpy()
    explainer = shap.explainers.Permutation(raw_score, shap.maskers.Independent(background, max_samples=background_size),
                                            feature_names=list(model.feature_names_in_), seed=seed)
    # Antithetic orderings keep the values adding up to the raw score exactly, however few.
    evaluations = max(1, n_permutations) * (2 * matrix.shape[1] + 1)
    result = explainer(matrix.to_numpy(), max_evals=evaluations, silent=True)
    return np.asarray(result.values, dtype="float64"), np.asarray(result.base_values, dtype="float64")


@dataclass(frozen=True)
class ExplainedSample:
    """Customers with their probability and SHAP values, row for row."""

    features: pd.DataFrame
    explanation: "shap.Explanation"
    probability: np.ndarray


def explain_customers(model: ChurnModel, features: pd.DataFrame, sample_size: int | None = None, seed: int = 0,
                      background_size: int = 100) -> ExplainedSample:
    """Probabilities and SHAP values for a random sample of the customers in ``features``.

    With the exact methods (tree, linear) every customer is scored and explained before the
    sample is drawn, so that whatever is fitted on the whole table (a BTYD prior) is what
    scoring sees; the costly permutation method explains the sample only.

    Parameters
    ----------
    model : ChurnModel
    features : pandas.DataFrame
        The model's input, e.g. from :func:`features_for_model`.
    sample_size : int, optional
        Customers kept (all when None).
    seed : int, default 0
    background_size : int, default 100
        See :func:`shap_explanation`.
    """
    chosen = sample_rows(features.reset_index(drop=True).assign(_row=np.arange(len(features))), sample_size, seed)
    rows = chosen.pop("_row").to_numpy()
    if explanation_method(model) == "permutation":
        return ExplainedSample(chosen, shap_explanation(model, chosen, background_size, seed=seed),
                               probability(model, chosen))
    everyone = features.reset_index(drop=True)
    explanation = shap_explanation(model, everyone, background_size, seed=seed)
    return ExplainedSample(chosen, explanation[rows], probability(model, everyone)[rows])


def present_features(explanation: "shap.Explanation", names: Sequence[str] = DEPENDENCE_FEATURES) -> list[str]:
    """The names, in order, that the explained model has as features."""
    return [n for n in names if n in explanation.feature_names]


# --------------------------------------------------------------------------------------------
# Tidy tables
# --------------------------------------------------------------------------------------------


def _values_frame(explanation: "shap.Explanation") -> pd.DataFrame:
    return pd.DataFrame(np.asarray(explanation.values), columns=list(explanation.feature_names))


def global_importance(explanation: "shap.Explanation") -> pd.DataFrame:
    """Mean absolute SHAP value per feature, largest first.

    Returns
    -------
    pandas.DataFrame
        Index ``feature``; columns ``mean_abs_shap``, ``share`` (of the total) and ``mean_shap``
        (the average direction: positive raises the score).
    """
    values = _values_frame(explanation)
    mean_abs = values.abs().mean()
    table = pd.DataFrame({
        "mean_abs_shap": mean_abs,
        "share": mean_abs / mean_abs.sum() if mean_abs.sum() > 0 else 0.0,
        "mean_shap": values.mean(),
    }).rename_axis("feature")
    return table.sort_values("mean_abs_shap", ascending=False, kind="stable")


def contributions_wide(explanation: "shap.Explanation", customer_ids: Sequence) -> pd.DataFrame:
    """One row per customer: ``customer_id``, ``base_value``, one column per feature, ``raw_score``."""
    values = _values_frame(explanation)
    base = np.asarray(explanation.base_values, dtype="float64")
    frame = pd.concat([pd.DataFrame({"customer_id": np.asarray(customer_ids), "base_value": base}), values], axis=1)
    frame["raw_score"] = base + values.sum(axis=1).to_numpy()
    return frame


def contributions_long(explanation: "shap.Explanation", customer_ids: Sequence, top: int | None = None) -> pd.DataFrame:
    """One row per customer and feature, largest absolute contribution first within a customer.

    Parameters
    ----------
    explanation : shap.Explanation
    customer_ids : sequence
        One id per explained row, in order.
    top : int, optional
        Keep the ``top`` features of each customer by absolute contribution.

    Returns
    -------
    pandas.DataFrame
        Columns ``customer_id``, ``rank`` (1 = largest absolute contribution), ``feature``,
        ``value`` (the feature's value, category names as text) and ``contribution``.
    """
    names = list(explanation.feature_names)
    n_rows = len(customer_ids)
    shown = explanation.display_data if explanation.display_data is not None else explanation.data
    long = pd.DataFrame({
        "customer_id": np.repeat(np.asarray(customer_ids), len(names)),
        "feature": np.tile(names, n_rows),
        "value": np.asarray(shown, dtype=object).reshape(-1),
        "contribution": np.asarray(explanation.values, dtype="float64").reshape(-1),
    })
    long["rank"] = (long["contribution"].abs().groupby(long["customer_id"], sort=False)
                    .rank(method="first", ascending=False).astype(int))
    if top is not None:
        long = long[long["rank"] <= top]
    ordered = long.sort_values(["customer_id", "rank"], kind="stable").reset_index(drop=True)
    return ordered[["customer_id", "rank", "feature", "value", "contribution"]]


def _raised(features: pd.DataFrame, flag: str) -> np.ndarray:
    # An unknown flag counts as not raised, as in the warning-flag baseline.
    return features[flag].astype("boolean").fillna(False).to_numpy(dtype=bool)


def flag_effects(explanation: "shap.Explanation", features: pd.DataFrame, probability: np.ndarray,
                 flags: Sequence[str] = WARNING_FLAGS) -> pd.DataFrame:
    """What each warning flag does to the prediction, for the flags present in ``features``.

    Parameters
    ----------
    explanation : shap.Explanation
        SHAP values of the rows of ``features``, in the same order.
    features : pandas.DataFrame
    probability : array-like
        The model's probability for each row.
    flags : sequence of str, default the three warning flags

    Returns
    -------
    pandas.DataFrame
        Index ``flag``; columns ``n_raised``, ``share_raised``, ``mean_shap_raised`` and
        ``mean_shap_not_raised`` (the flag's own SHAP value; NaN when the model does not use the
        flag), ``mean_probability_raised``, ``mean_probability_not_raised`` and
        ``probability_difference`` (raised minus not raised: an association, which also carries
        whatever else differs between the two groups).
    """
    probability = np.asarray(probability, dtype="float64")
    names = list(explanation.feature_names)
    rows = {}
    for flag in (f for f in flags if f in features.columns):
        raised = _raised(features, flag)
        shap_values = (np.asarray(explanation.values)[:, names.index(flag)] if flag in names
                       else np.full(len(raised), np.nan))
        rows[flag] = {
            "n_raised": int(raised.sum()),
            "share_raised": float(raised.mean()) if raised.size else np.nan,
            "mean_shap_raised": _mean(shap_values[raised]),
            "mean_shap_not_raised": _mean(shap_values[~raised]),
            "mean_probability_raised": _mean(probability[raised]),
            "mean_probability_not_raised": _mean(probability[~raised]),
        }
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("flag")
    if not table.empty:
        table["probability_difference"] = table["mean_probability_raised"] - table["mean_probability_not_raised"]
    return table


def _mean(values: np.ndarray) -> float:
    # A group with no rows has no mean; say so with NaN rather than a numpy warning.
    return float(np.mean(values)) if values.size else np.nan


def tier_comparison(explanation: "shap.Explanation", features: pd.DataFrame, probability: np.ndarray,
                    by: str = "tier", top: int = 8) -> pd.DataFrame:
    """Mean probability and mean |SHAP| of the globally most important features, per group.

    Returns
    -------
    pandas.DataFrame
        Index: the values of ``features[by]``; columns ``customers``, ``mean_probability``,
        ``mean_abs_shap_total`` (mean over customers of the sum of |SHAP|) and one column per
        feature among the ``top`` most important (mean |SHAP| in the group).
    """
    values = _values_frame(explanation).abs()
    leading = list(global_importance(explanation).index[:top])
    groups = pd.Series(features[by].astype(object).where(features[by].notna(), "missing").to_numpy(), name=by)
    frame = pd.concat([pd.DataFrame({"customers": 1, "mean_probability": np.asarray(probability, dtype="float64"),
                                     "mean_abs_shap_total": values.sum(axis=1).to_numpy()}),
                       values[leading].reset_index(drop=True)], axis=1)
    # Grouped by the values themselves: the grouping column may also be a leading feature's SHAP column.
    table = frame.groupby(groups, sort=True).agg({"customers": "sum", "mean_probability": "mean",
                                                  "mean_abs_shap_total": "mean", **{f: "mean" for f in leading}})
    return table.sort_values("mean_probability", ascending=False, kind="stable")


def riskiest_and_safest(probability: np.ndarray) -> dict[str, int]:
    """Row positions of the highest and the lowest probability (``high risk``, ``low risk``)."""
    probability = np.asarray(probability, dtype="float64")
    if probability.size == 0:
        raise ValueError("no rows to choose from")
    return {"high risk": int(np.nanargmax(probability)), "low risk": int(np.nanargmin(probability))}


# --------------------------------------------------------------------------------------------
# A scoring run, seen from the business side
# --------------------------------------------------------------------------------------------


def latest_scores_path(directory: str | Path = "scores") -> Path | None:
    """The newest ``<directory>/as_of=YYYY-MM-DD/scores.parquet``, or None when there is none."""
    found = sorted(Path(directory).glob(SCORES_GLOB), key=lambda p: p.parent.name)
    return found[-1] if found else None


def score_frame(features: pd.DataFrame, models: Mapping[str, ChurnModel], config: ScoringConfig = ScoringConfig(),
                context: ReasonContext | None = None) -> pd.DataFrame:
    """The scoring stage's rows for ``features``, for when no scores file is at hand.

    The batch path itself (:func:`churnml.scoring.table.score_customers`): the same
    probabilities, bands, reasons, segments and actions as ``churnml-score`` at that date, with
    model names ``churn`` and ``repurchase`` and version ``unknown``.

    Parameters
    ----------
    features : pandas.DataFrame
        Output of :func:`feature_frame`, one row per customer.
    models : mapping of str to ChurnModel
        ``churn`` and ``repurchase`` models.
    config : ScoringConfig
        Bands, reasons and playbook (``ScoringConfig.from_dict(settings["score"])``).
    context : ReasonContext, optional
        Settings quoted in reason phrases.

    Returns
    -------
    pandas.DataFrame
        The columns of :func:`churnml.scoring.table.score_columns`, one row per customer.
    """
    as_of = pd.Timestamp(features["cutoff"].iloc[0]).date() if len(features) else None
    return score_customers(model_inputs(features, models), models, as_of, config, context)


def band_mix(scores: pd.DataFrame, by: str) -> pd.DataFrame:
    """Share of customers in each risk band (columns high, medium, low) per value of ``by``, with ``customers``."""
    counts = pd.crosstab(scores[by], scores["risk_band"])
    counts = counts.reindex(columns=[b for b in RISK_BANDS if b in counts.columns] or list(counts.columns), fill_value=0)
    shares = counts.div(counts.sum(axis=1), axis=0)
    shares["customers"] = counts.sum(axis=1)
    return shares


def reason_frequency(scores: pd.DataFrame, band: str | None = "high", n_reasons: int = 3) -> pd.DataFrame:
    """How often each feature is among the top reasons, for customers in ``band`` (all when None).

    Reads ``reason_k_feature`` (the scoring stage's columns), else ``reason_k``.

    Returns
    -------
    pandas.DataFrame
        Index ``reason``; columns ``customers`` (with the reason among their top ``n_reasons``),
        ``share`` of the customers considered and ``as_first_reason``; most frequent first.
    """
    chosen = scores if band is None else scores[scores["risk_band"] == band]
    # The scoring stage writes a phrase in reason_k and the feature in reason_k_feature.
    suffix = "_feature" if "reason_1_feature" in chosen.columns else ""
    columns = [f"reason_{k}{suffix}" for k in range(1, n_reasons + 1) if f"reason_{k}{suffix}" in chosen.columns]
    if not columns:
        raise ValueError("the scores hold no reason_k_feature (or reason_k) columns")
    anywhere = chosen[columns].melt(value_name="reason")["reason"].dropna().value_counts()
    first = chosen[columns[0]].dropna().value_counts()
    table = pd.DataFrame({"customers": anywhere, "as_first_reason": first}).fillna(0).astype(int)
    table["share"] = table["customers"] / max(len(chosen), 1)
    return table.rename_axis("reason").sort_values("customers", ascending=False, kind="stable")[
        ["customers", "share", "as_first_reason"]]


def revenue_at_risk(scores: pd.DataFrame, by: str = "value_segment") -> pd.DataFrame:
    """Expected lifetime value lost to churn (LTV x churn probability) per value of ``by``.

    Returns
    -------
    pandas.DataFrame
        Index: the values of ``by``; columns ``customers``, ``ltv``, ``revenue_at_risk``,
        ``share_of_risk`` and ``mean_churn_probability``; largest risk first.
    """
    at_risk = scores["ltv"].fillna(0.0) * scores["churn_probability"]
    frame = pd.DataFrame({by: scores[by].to_numpy(), "ltv": scores["ltv"].fillna(0.0).to_numpy(),
                          "revenue_at_risk": at_risk.to_numpy(), "churn_probability": scores["churn_probability"].to_numpy()})
    table = frame.groupby(by).agg(customers=("ltv", "size"), ltv=("ltv", "sum"), revenue_at_risk=("revenue_at_risk", "sum"),
                                  mean_churn_probability=("churn_probability", "mean"))
    total = table["revenue_at_risk"].sum()
    table.insert(3, "share_of_risk", table["revenue_at_risk"] / total if total > 0 else 0.0)
    return table.sort_values("revenue_at_risk", ascending=False, kind="stable")


def outcome_backtest(model: ChurnModel, dataset: Dataset, config: FeatureConfig = FeatureConfig(),
                     cutoff: str | dt.date | None = None) -> pd.DataFrame:
    """Score an earlier cutoff with ``model`` and put the outcome of the following horizon next to it.

    The default cutoff is the last date in the data minus the model's horizon: the latest one
    whose outcome is fully known, which is also the out-of-time holdout the model was evaluated on.

    Returns
    -------
    pandas.DataFrame
        ``customer_id``, ``cutoff``, ``probability``, ``label`` (1 = the target happened) and,
        when present, ``tier`` and ``value_segment``.
    """
    frame = labelled_frame(dataset, model, cutoff, config)
    kept = ["customer_id", "cutoff", *[c for c in ("tier", "value_segment") if c in frame.columns]]
    return frame[kept].assign(probability=probability(model, frame), label=frame["label"].to_numpy())
