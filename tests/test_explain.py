"""SHAP values and the explanation tables, on small seeded data with a planted signal."""

from __future__ import annotations

import lightgbm
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from churnml import explain
from churnml.models.classifier import ChurnModel
from churnml.scoring.policy import RiskBands, risk_band

N_ROWS = 800

# shap's colour maps use matplotlib calls that matplotlib plans to deprecate.
pytestmark = pytest.mark.filterwarnings("ignore:The set_.* function will be deprecated:PendingDeprecationWarning")


@pytest.fixture(scope="module")
def planted() -> tuple[pd.DataFrame, np.ndarray]:
    """Churn driven by recency and a drop in order value; ``noise`` and ``tier`` carry nothing."""
    rng = np.random.default_rng(11)
    recency = rng.exponential(60.0, N_ROWS)
    frame = pd.DataFrame({
        "customer_id": [f"c{i:04d}" for i in range(N_ROWS)],
        "recency_days": recency,
        "frequency": rng.poisson(4, N_ROWS).astype(float),
        "no_repurchase_3m": recency >= 90,
        "order_value_drop_40": rng.random(N_ROWS) < 0.2,
        "noise": rng.normal(size=N_ROWS),
        "tier": pd.Series(rng.choice(["core", "basic", "dormant"], N_ROWS), dtype="string"),
    })
    frame.loc[frame.index[::23], "frequency"] = np.nan
    frame.loc[frame.index[::31], "tier"] = pd.NA
    logit = 0.04 * (recency - 60.0) + 2.5 * frame["order_value_drop_40"] - 0.5
    label = (rng.random(N_ROWS) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    return frame, label


def fitted(estimator, frame: pd.DataFrame, label: np.ndarray, preprocessing: str) -> ChurnModel:
    fit_rows, calibration_rows = slice(0, 600), slice(600, None)
    model = ChurnModel(estimator, preprocessing=preprocessing, calibration="sigmoid", early_stopping_rounds=0)
    return model.fit(frame.iloc[fit_rows], label[fit_rows],
                     calibration_set=(frame.iloc[calibration_rows], label[calibration_rows]))


@pytest.fixture(scope="module")
def tree_model(planted) -> ChurnModel:
    frame, label = planted
    estimator = lightgbm.LGBMClassifier(n_estimators=40, num_leaves=7, learning_rate=0.1, min_child_samples=40,
                                        n_jobs=1, random_state=0, verbose=-1)
    return fitted(estimator, frame, label, "native")


@pytest.fixture(scope="module")
def linear_model(planted) -> ChurnModel:
    frame, label = planted
    return fitted(LogisticRegression(max_iter=2000), frame, label, "scaled")


def test_tree_shap_values_add_up_to_the_raw_score(planted, tree_model):
    frame, _ = planted
    explanation = explain.shap_explanation(tree_model, frame)
    assert explain.explanation_method(tree_model) == "tree"
    assert explanation.values.shape == (N_ROWS, tree_model.n_features_in_)
    total = explanation.base_values + explanation.values.sum(axis=1)
    np.testing.assert_allclose(total, tree_model.raw_score(frame), atol=1e-8)
    exact = tree_model.contributions(frame)[tree_model.feature_names_in_].to_numpy()
    np.testing.assert_allclose(explanation.values, exact, atol=1e-8)


@pytest.mark.parametrize("model_fixture", ["tree_model", "linear_model"])
def test_global_importance_puts_the_planted_signal_first(planted, model_fixture, request):
    frame, _ = planted
    model = request.getfixturevalue(model_fixture)
    importance = explain.global_importance(explain.shap_explanation(model, frame))
    assert set(importance.index[:2]) == {"recency_days", "order_value_drop_40"}
    assert importance["mean_abs_shap"].is_monotonic_decreasing
    assert importance["share"].sum() == pytest.approx(1.0)
    assert importance.loc["recency_days", "mean_abs_shap"] > 3 * importance.loc["noise", "mean_abs_shap"]


def test_linear_models_fall_back_to_their_exact_contributions(planted, linear_model):
    frame, _ = planted
    explanation = explain.shap_explanation(linear_model, frame)
    assert explain.explanation_method(linear_model) == "linear"
    total = explanation.base_values + explanation.values.sum(axis=1)
    np.testing.assert_allclose(total, linear_model.raw_score(frame), atol=1e-8)
    # Recency raises churn risk: its contribution grows with recency.
    recency = explanation[:, "recency_days"]
    assert np.corrcoef(recency.data, recency.values)[0, 1] > 0.99


@pytest.mark.slow
def test_other_estimators_get_permutation_values_that_add_up(planted):
    # Slow: shap compiles its permutation machinery with numba on first use.
    from sklearn.ensemble import HistGradientBoostingClassifier

    frame, label = planted
    model = fitted(HistGradientBoostingClassifier(max_iter=20, categorical_features="from_dtype", random_state=0),
                   frame, label, "native")
    rows = frame.head(5)
    explanation = explain.shap_explanation(model, rows, background_size=20, n_permutations=2)
    assert explain.explanation_method(model) == "permutation"
    np.testing.assert_allclose(explanation.base_values + explanation.values.sum(axis=1), model.raw_score(rows),
                               atol=1e-6)


class RecencyPrior(ChurnModel):
    """A model boosted from a prior that stands in for BG/NBD: one term rising with recency (the
    other is zero), blended with fitted weights."""

    def prior_terms(self, X):
        recency = X["recency_days"].to_numpy(dtype=float)
        return np.column_stack([0.02 * (recency - 60.0), np.zeros(len(X))])


def test_a_boosting_prior_is_one_more_additive_column(planted):
    frame, label = planted
    estimator = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=7, n_jobs=1, random_state=0, verbose=-1)
    model = RecencyPrior(estimator, prior="bgnbd", calibration="sigmoid", early_stopping_rounds=0)
    model.fit(frame.iloc[:600], label[:600], calibration_set=(frame.iloc[600:], label[600:]))
    explanation = explain.shap_explanation(model, frame)
    assert explanation.feature_names == [*model.feature_names_in_, "btyd_prior"]
    np.testing.assert_allclose(explanation.base_values + explanation.values.sum(axis=1), model.raw_score(frame),
                               atol=1e-8)
    prior = explanation[:, "btyd_prior"].values
    assert prior.mean() == pytest.approx(0.0, abs=1e-12)
    slope = 0.02 * model.prior_weights_[1]
    assert slope > 0
    np.testing.assert_allclose(np.diff(prior), slope * np.diff(frame["recency_days"].to_numpy()), atol=1e-12)


def test_explain_customers_explains_everyone_then_keeps_a_sample(planted, tree_model):
    frame, _ = planted
    explained = explain.explain_customers(tree_model, frame, sample_size=50, seed=3)
    assert len(explained.features) == 50 and explained.explanation.values.shape[0] == 50
    assert explained.features["customer_id"].is_unique
    np.testing.assert_allclose(explained.probability, explain.probability(tree_model, explained.features))
    total = explained.explanation.base_values + explained.explanation.values.sum(axis=1)
    np.testing.assert_allclose(total, tree_model.raw_score(explained.features), atol=1e-8)


def test_numeric_matrix_codes_categories_and_comes_back(planted, tree_model):
    frame, _ = planted
    matrix = explain.numeric_matrix(tree_model, frame)
    assert list(matrix.columns) == tree_model.feature_names_in_
    assert matrix.dtypes.eq("float64").all()
    assert matrix["tier"].isna().sum() == frame["tier"].isna().sum()
    back = explain.frame_from_numeric(tree_model, matrix.to_numpy())
    np.testing.assert_allclose(tree_model.raw_score(back), tree_model.raw_score(frame))


def test_flag_effects_show_a_raised_flag_raising_risk(planted, tree_model):
    frame, _ = planted
    explanation = explain.shap_explanation(tree_model, frame)
    probability = explain.probability(tree_model, frame)
    without_noise_flag = frame.assign(low_interaction=np.zeros(len(frame), dtype=bool))
    effects = explain.flag_effects(explanation, without_noise_flag, probability)
    assert list(effects.index) == ["no_repurchase_3m", "order_value_drop_40", "low_interaction"]
    flag = effects.loc["order_value_drop_40"]
    assert flag["n_raised"] == int(frame["order_value_drop_40"].sum())
    assert flag["mean_shap_raised"] > 0 > flag["mean_shap_not_raised"]
    assert flag["mean_probability_raised"] > flag["mean_probability_not_raised"]
    assert flag["probability_difference"] > 0.2
    # In the features but not in the model: no SHAP value, no customer raised it.
    unused = effects.loc["low_interaction"]
    assert np.isnan(unused["mean_shap_raised"]) and unused["n_raised"] == 0
    # Absent from the features: left out.
    assert "low_interaction" not in explain.flag_effects(explanation, frame, probability).index


def test_tables_of_contributions_by_customer(planted, tree_model):
    frame, _ = planted
    rows = frame.head(5)
    explanation = explain.shap_explanation(tree_model, rows)
    wide = explain.contributions_wide(explanation, rows["customer_id"])
    assert list(wide.columns) == ["customer_id", "base_value", *tree_model.feature_names_in_, "raw_score"]
    np.testing.assert_allclose(wide["raw_score"], tree_model.raw_score(rows))
    long = explain.contributions_long(explanation, rows["customer_id"], top=2)
    assert len(long) == 10 and set(long["rank"]) == {1, 2}
    first = long[long["customer_id"] == "c0000"]
    assert abs(first["contribution"].iloc[0]) >= abs(first["contribution"].iloc[1])
    tier_value = long.loc[long["feature"] == "tier", "value"]
    assert tier_value.isin(["core", "basic", "dormant"]).all() or tier_value.isna().any() or tier_value.empty


def test_tier_comparison_and_extreme_customers(planted, tree_model):
    frame, _ = planted
    explanation = explain.shap_explanation(tree_model, frame)
    probability = explain.probability(tree_model, frame)
    tiers = explain.tier_comparison(explanation, frame, probability, top=3)
    assert set(tiers.index) == {"core", "basic", "dormant", "missing"}
    assert tiers["customers"].sum() == len(frame)
    assert {"mean_probability", "mean_abs_shap_total", "recency_days"} <= set(tiers.columns)
    # The grouping column among the leading features keeps its SHAP column beside the groups.
    everything = explain.tier_comparison(explanation, frame, probability, top=len(frame.columns))
    assert "tier" in everything.columns and everything.index.name == "tier"
    assert everything["customers"].sum() == len(frame)
    picked = explain.riskiest_and_safest(probability)
    assert probability[picked["high risk"]] == probability.max()
    assert probability[picked["low risk"]] == probability.min()


def test_business_tables_of_a_scoring_run():
    scores = pd.DataFrame({
        "customer_id": list("abcdef"),
        "churn_probability": [0.9, 0.7, 0.4, 0.1, 0.05, 0.65],
        "ltv": [1000.0, 100.0, 500.0, 2000.0, np.nan, 10.0],
        "value_segment": ["hv", "lv", "hv", "hv", "lv", "lv"],
        "reason_1": ["recency_days", "recency_days", "frequency", None, None, "aov_change"],
        "reason_2": ["frequency", None, None, None, None, "recency_days"],
    })
    scores["risk_band"] = risk_band(scores["churn_probability"], RiskBands(high=0.6, medium=0.3))
    assert scores["risk_band"].tolist() == ["high", "high", "medium", "low", "low", "high"]
    mix = explain.band_mix(scores, "value_segment")
    assert list(mix.columns) == ["high", "medium", "low", "customers"]
    assert mix.loc["lv", "high"] == pytest.approx(2 / 3)
    at_risk = explain.revenue_at_risk(scores)
    assert at_risk.loc["hv", "revenue_at_risk"] == pytest.approx(900 + 200 + 200)
    assert at_risk["share_of_risk"].sum() == pytest.approx(1.0)
    reasons = explain.reason_frequency(scores, band="high", n_reasons=2)
    assert reasons.index[0] == "recency_days"
    assert reasons.loc["recency_days", "customers"] == 3 and reasons.loc["recency_days", "as_first_reason"] == 2
    # The scoring stage's file: a phrase in reason_k, the feature in reason_k_feature.
    phrased = scores.rename(columns={"reason_1": "reason_1_feature", "reason_2": "reason_2_feature"}).assign(
        reason_1="a phrase", reason_2="another phrase")
    pd.testing.assert_frame_equal(explain.reason_frequency(phrased, band="high", n_reasons=2), reasons)


def test_latest_scores_path_is_the_newest_as_of(tmp_path):
    assert explain.latest_scores_path(tmp_path) is None
    for day in ("2024-01-31", "2024-03-31", "2024-02-29"):
        (tmp_path / f"as_of={day}").mkdir()
        (tmp_path / f"as_of={day}" / "scores.parquet").write_bytes(b"")
    assert explain.latest_scores_path(tmp_path).parent.name == "as_of=2024-03-31"


def test_outcomes_are_only_looked_up_in_closed_windows(tiny_transactions, tree_model):
    from conftest import frame_dataset

    dataset = frame_dataset(tiny_transactions)
    with pytest.raises(ValueError, match="labels are not known yet"):
        explain.labelled_frame(dataset, tree_model, "2024-06-30")
