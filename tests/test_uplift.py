"""Uplift learners, Qini curves and the out-of-time comparison with churn-risk targeting."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from churnml.errors import UserValueError
from churnml.models.persistence import ModelFormatError
from churnml.programs.uplift import (
    TLearner,
    XLearner,
    compare_targeting,
    evaluate_out_of_time,
    fit_uplift_model,
    incremental_at,
    load_uplift_model,
    make_learner,
    perfect_score,
    qini_area,
    qini_coefficient,
    qini_curve,
    save_uplift_model,
    targeting_curves,
    uplift_curve,
    uplift_model_from_dict,
)

# --------------------------------------------------------------------------------------------
# A hand-computed case: eight customers, two with equal scores (rows 5 and 6)
# --------------------------------------------------------------------------------------------

SCORE = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.5, 0.3, 0.1])
TREATED = np.array([1, 0, 1, 0, 1, 0, 1, 0])
Y = np.array([1, 0, 1, 1, 0, 0, 0, 0])


def test_qini_curve_by_hand():
    # Q(k) = Y_t - Y_c * N_t / N_c after the top k; the tie (rows 5, 6) gives one point at k = 6.
    # k=1: 1 - 0 (no control yet) = 1;  k=2: 1 - 0 = 1;  k=3: 2 - 0 = 2;  k=4: 2 - 1*2/2 = 1;
    # k=6: 2 - 1*3/3 = 1;  k=7: 2 - 1*4/3 = 2/3;  k=8: 2 - 1*4/4 = 1.
    fraction, incremental = qini_curve(Y, TREATED, SCORE)
    np.testing.assert_allclose(fraction, [0, 1 / 8, 2 / 8, 3 / 8, 4 / 8, 6 / 8, 7 / 8, 1])
    np.testing.assert_allclose(incremental, [0, 1, 1, 2, 1, 1, 2 / 3, 1])


def test_qini_curve_does_not_depend_on_row_order():
    order = np.array([5, 4, 7, 0, 2, 6, 1, 3])
    for got, expected in zip(qini_curve(Y[order], TREATED[order], SCORE[order]), qini_curve(Y, TREATED, SCORE)):
        np.testing.assert_allclose(got, expected)


def test_qini_coefficient_by_hand():
    # Trapezoids of the curve above, in eighths: 1/2 + 1 + 3/2 + 3/2 + 2 + 5/6 + 5/6 = 49/6 -> area 49/48.
    # Random line from 0 to Q(n) = 1: area 1/2 = 24/48. Gap: 25/48.
    assert qini_area(Y, TREATED, SCORE) == pytest.approx(25 / 48)
    # Perfect order: treated responders (rows 1, 3) first, control responder (row 4) last, the rest tied.
    # Points (0, 0), (2/8, 2), (7/8, 2), (1, 1): area 2/8 + 10/8 + 1.5/8 = 81/48; gap 57/48.
    np.testing.assert_array_equal(perfect_score(Y, TREATED), [1, 0, 1, -1, 0, 0, 0, 0])
    assert qini_area(Y, TREATED, perfect_score(Y, TREATED)) == pytest.approx(57 / 48)
    assert qini_coefficient(Y, TREATED, SCORE) == pytest.approx(25 / 57)
    assert qini_coefficient(Y, TREATED, perfect_score(Y, TREATED)) == pytest.approx(1.0)


def test_incremental_at_reads_the_curve_linearly():
    # 0.3 lies between (2/8, 1) and (3/8, 2): 1 + 0.05 / 0.125 = 1.4.
    np.testing.assert_allclose(incremental_at(Y, TREATED, SCORE, [0.25, 0.3, 0.5, 1.0]), [1, 1.4, 1, 1])


def test_uplift_curve_by_hand():
    bins = uplift_curve(Y, TREATED, SCORE, bins=2)
    assert bins["bin"].tolist() == [1, 2]
    assert bins["n_treated"].tolist() == [2, 2] and bins["n_control"].tolist() == [2, 2]
    # Top half: treated rows 1, 3 both respond; control rows 2, 4: one of two.
    np.testing.assert_allclose(bins["rate_treated"], [1.0, 0.0])
    np.testing.assert_allclose(bins["rate_control"], [0.5, 0.0])
    np.testing.assert_allclose(bins["uplift"], [0.5, 0.0])
    np.testing.assert_allclose(bins[["fraction_from", "fraction_to"]].to_numpy(), [[0, 0.5], [0.5, 1]])
    np.testing.assert_allclose(bins[["score_min", "score_max"]].to_numpy(), [[0.6, 0.9], [0.1, 0.5]])


def test_uplift_curve_bin_without_a_group_is_nan():
    bins = uplift_curve(Y, TREATED, np.arange(8.0), bins=8)
    assert bins["rate_control"].isna().sum() == 4 and bins["rate_treated"].isna().sum() == 4
    assert bins["uplift"].isna().all()


def test_compare_targeting_by_hand():
    table = compare_targeting(Y, TREATED, {"model": SCORE, "reversed": -SCORE}, fractions=(0.25, 0.5))
    assert table.columns.tolist() == ["targeting", "qini_coefficient", "qini_area", "incremental_at_25pct",
                                      "incremental_at_50pct"]
    assert table["targeting"].tolist() == ["model", "reversed", "random"]
    model, _, random = table.to_dict("records")
    assert model["qini_coefficient"] == pytest.approx(25 / 57)
    assert (model["incremental_at_25pct"], model["incremental_at_50pct"]) == pytest.approx((1.0, 1.0))
    # Random targeting: the diagonal to Q(n) = 1.
    assert random == pytest.approx({"targeting": "random", "qini_coefficient": 0.0, "qini_area": 0.0,
                                    "incremental_at_25pct": 0.25, "incremental_at_50pct": 0.5})
    curves = targeting_curves(Y, TREATED, {"model": SCORE})
    assert curves[curves["targeting"] == "random"][["fraction", "incremental"]].to_numpy().tolist() == [[0, 0], [1, 1]]
    assert len(curves[curves["targeting"] == "model"]) == 8


def test_perfect_beats_random_beats_reversed():
    rng = np.random.default_rng(3)
    n = 4000
    effect = np.where(rng.random(n) < 0.3, 0.3, 0.0)
    treatment = (rng.random(n) < 0.5).astype(int)
    y = (rng.random(n) < 0.2 + effect * treatment).astype(int)
    table = compare_targeting(y, treatment, {"true_effect": effect + rng.normal(0, 0.01, n),
                                             "noise": rng.random(n),
                                             "reversed": -effect + rng.normal(0, 0.01, n)}).set_index("targeting")
    coefficient = table["qini_coefficient"]
    assert coefficient["true_effect"] > 0.1
    assert abs(coefficient["noise"]) < 0.05
    assert coefficient["reversed"] < -0.1
    assert table.loc["true_effect", "incremental_at_30pct"] > table.loc["random", "incremental_at_30pct"] \
        > table.loc["reversed", "incremental_at_30pct"]


@pytest.mark.parametrize("args, message", [
    ((Y, TREATED, SCORE[:5]), "score has shape"),
    ((Y, np.zeros(8), SCORE), "one group is empty"),
    ((Y * 2, TREATED, SCORE), "outcome must be 0 or 1"),
    ((Y, TREATED, np.r_[SCORE[:7], np.nan]), "missing or infinite"),
])
def test_evaluation_refuses_bad_input(args, message):
    with pytest.raises(UserValueError, match=message):
        qini_curve(*args)


# --------------------------------------------------------------------------------------------
# Learners
# --------------------------------------------------------------------------------------------


def campaign(name: str, start: str, n: int, seed: int) -> pd.DataFrame:
    """One synthetic campaign with a planted effect: customers of mid-range recency (90-210 days)
    respond (+0.3 to repurchase), recent ones buy anyway, long-gone ones (the highest churn risk)
    are lost causes. ``churn_risk`` is the exact probability of no purchase without contact."""
    rng = np.random.default_rng(seed)
    recency = rng.uniform(0, 360, n)
    frequency = rng.poisson(3, n).astype(float)
    channel = rng.choice(["web", "store", "app"], n)
    p_control = 0.05 + 0.8 * np.exp(-recency / 80)
    effect = np.where((recency >= 90) & (recency <= 210), 0.3, 0.0)
    treated = rng.random(n) < 0.5
    repurchased = rng.random(n) < p_control + effect * treated
    return pd.DataFrame({
        "customer_id": [f"{name}-{i}" for i in range(n)], "campaign": name,
        "ts": pd.Timestamp(start) + pd.to_timedelta(rng.integers(0, 5, n), unit="D"),
        "group": np.where(treated, "treatment", "Control"), "repurchased": repurchased.astype(int),
        "recency_days": recency, "frequency": frequency, "channel": channel,
        "churn_risk": 1 - p_control, "true_effect": effect,
    })


FEATURES = ["recency_days", "frequency", "channel"]


@pytest.fixture(scope="module")
def campaigns() -> pd.DataFrame:
    return pd.concat([campaign("spring", "2024-03-01", 3000, 1), campaign("summer", "2024-06-01", 3000, 2),
                      campaign("autumn", "2024-09-01", 1000, 3)], ignore_index=True)


@pytest.fixture(scope="module")
def fitted(campaigns):
    train = campaigns[campaigns["campaign"] == "spring"]
    return {name: fit_uplift_model(train, FEATURES, outcome="repurchased", learner=name) for name in ("t", "x")}


@pytest.mark.parametrize("learner", ["t", "x"])
def test_learner_recovers_the_planted_effect(fitted, campaigns, learner):
    test = campaigns[campaigns["campaign"] == "summer"]
    estimate = fitted[learner].predict_uplift(test[FEATURES])
    responders = test["true_effect"].to_numpy() > 0
    assert estimate.shape == (len(test),)
    assert estimate[responders].mean() - estimate[~responders].mean() > 0.15
    assert np.all((estimate >= -1) & (estimate <= 1))


@pytest.mark.parametrize("learner", ["t", "x"])
def test_uplift_model_beats_churn_risk_and_random_out_of_time(campaigns, learner):
    result = evaluate_out_of_time(campaigns, FEATURES, outcome="repurchased", holdout_campaign="summer",
                                  window_days=30, learner=learner, risk="churn_risk")
    assert result.training_campaigns == ("spring",)
    table = result.table.set_index("targeting")
    assert table.index.tolist() == ["uplift", "churn_risk", "random"]
    coefficient = table["qini_coefficient"]
    # Against the ordering that knows every outcome even the planted effect scores about 0.12 here.
    summer = campaigns["campaign"] == "summer"
    truth = qini_coefficient(campaigns.loc[summer, "repurchased"], campaigns.loc[summer, "group"] == "treatment",
                             campaigns.loc[summer, "true_effect"])
    assert coefficient["uplift"] > 0.7 * truth > 0.05
    # Churn risk targets the lost causes first, below random; the model targets the responders.
    assert coefficient["uplift"] > coefficient["random"] + 0.05 > coefficient["churn_risk"] + 0.05
    assert table.loc["uplift", "incremental_at_30pct"] > table.loc["random", "incremental_at_30pct"] \
        > table.loc["churn_risk", "incremental_at_30pct"]
    assert result.scores.index.equals(campaigns.index[summer])
    assert set(result.curves["targeting"]) == {"uplift", "churn_risk", "random"}
    assert len(result.bins) == 10 and result.bins["uplift"].iloc[:3].mean() > result.bins["uplift"].iloc[-3:].mean()


def test_out_of_time_model_cannot_see_the_holdout_or_later_campaigns(campaigns):
    kwargs = dict(outcome="repurchased", holdout_campaign="summer", window_days=30)
    result = evaluate_out_of_time(campaigns, FEATURES, **kwargs)
    changed = campaigns.copy()
    later = changed["campaign"].isin(["summer", "autumn"])
    changed.loc[later, "repurchased"] = 1 - changed.loc[later, "repurchased"]
    changed.loc[changed["campaign"] == "autumn", "recency_days"] = 0.0
    again = evaluate_out_of_time(changed, FEATURES, **kwargs)
    assert again.model.to_dict() == result.model.to_dict()
    np.testing.assert_array_equal(again.scores["uplift"], result.scores["uplift"])
    # The holdout's outcomes judge the model: flipping them changes the table.
    assert not np.isclose(again.table.loc[0, "qini_coefficient"], result.table.loc[0, "qini_coefficient"])


def test_out_of_time_waits_for_outcome_windows(campaigns):
    # Spring's last assignment is on 2024-03-05: with a 100-day window its outcomes close after summer starts.
    with pytest.raises(UserValueError, match="no campaign's outcome window"):
        evaluate_out_of_time(campaigns, FEATURES, outcome="repurchased", holdout_campaign="summer", window_days=100)
    with pytest.raises(UserValueError, match="campaign 'winter' has no assignments"):
        evaluate_out_of_time(campaigns, FEATURES, outcome="repurchased", holdout_campaign="winter", window_days=30)
    with pytest.raises(UserValueError, match="lacks churn_probability"):
        evaluate_out_of_time(campaigns, FEATURES, outcome="repurchased", holdout_campaign="summer", window_days=30,
                             risk="churn_probability")


def test_x_learner_combines_effect_models_by_propensity(campaigns):
    train = campaigns[campaigns["campaign"] == "autumn"]
    model = fit_uplift_model(train, FEATURES, outcome="repurchased", learner="x",
                             params={"propensity": 0.8, "n_estimators": 20})
    assert model.propensity_ == 0.8 and model.treated_share_ == pytest.approx((train["group"] == "treatment").mean())
    prepared = model._prepare(train[FEATURES])
    tau0 = model.boosters_["effect_control"].predict(prepared)
    tau1 = model.boosters_["effect_treated"].predict(prepared)
    np.testing.assert_allclose(model.predict_uplift(train[FEATURES]), np.clip(0.8 * tau0 + 0.2 * tau1, -1, 1))
    with pytest.raises(UserValueError, match="propensity"):
        XLearner(propensity=1.0).fit(train[FEATURES], np.r_[np.ones(10), np.zeros(len(train) - 10)],
                                     train["repurchased"])


@pytest.mark.parametrize("learner", ["t", "x"])
def test_round_trip_as_data_gives_identical_predictions(fitted, campaigns, learner, tmp_path):
    model = fitted[learner]
    rows = campaigns[FEATURES].copy()
    rows.loc[rows.index[:5], "channel"] = "kiosk"  # unseen in training: missing for both
    expected = model.predict_uplift(rows)
    rebuilt = uplift_model_from_dict(json.loads(json.dumps(model.to_dict())))
    assert type(rebuilt) is type(model) and rebuilt.get_params() == model.get_params()
    np.testing.assert_array_equal(rebuilt.predict_uplift(rows), expected)
    loaded = load_uplift_model(save_uplift_model(model, tmp_path / "model"))
    np.testing.assert_array_equal(loaded.predict_uplift(rows), expected)


def test_loading_refuses_what_is_not_an_uplift_model(fitted, tmp_path):
    import pickle

    directory = save_uplift_model(fitted["t"], tmp_path / "model")
    (directory / "extra.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelFormatError, match="extra.pkl"):
        load_uplift_model(directory)
    description = fitted["t"].to_dict()
    description["boosters"]["treated"] = "not a model"
    with pytest.raises(ModelFormatError, match="not a LightGBM model text"):
        uplift_model_from_dict(description)
    with pytest.raises(ModelFormatError, match="holds a 't' learner"):
        XLearner.from_dict(fitted["t"].to_dict())


def test_learners_refuse_groups_they_cannot_learn_from():
    X = pd.DataFrame({"x": np.arange(6.0)})
    with pytest.raises(UserValueError, match="control group is empty"):
        TLearner().fit(X, np.ones(6), [0, 1, 0, 1, 0, 1])
    with pytest.raises(UserValueError, match="every outcome of the treated group is 1") as raised:
        XLearner().fit(X, [1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 1, 0])
    assert "\n" not in str(raised.value)
    with pytest.raises(UserValueError, match="uplift learner must be one of"):
        make_learner("s")
    with pytest.raises(UserValueError, match="not fitted"):
        TLearner().predict_uplift(X)
    with pytest.raises(UserValueError, match="such as \\['maybe'\\]"):
        fit_uplift_model(pd.DataFrame({"group": ["treatment", "maybe"], "y": [0, 1], "x": [1.0, 2.0]}), ["x"],
                         outcome="y")
