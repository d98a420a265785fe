"""Baselines: warning-flag rule, RFM, score calibration and BG/NBD on simulated BG/NBD customers."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from lifetimes import BetaGeoFitter, ParetoNBDFitter
from lifetimes.utils import ConvergenceError
from sklearn.metrics import roc_auc_score

from churnml.models import btyd
from churnml.models.baselines import (
    MISSING_RECENCY_DAYS,
    ScoreCalibrator,
    baseline_probabilities,
    btyd_scores,
    quintile_edges,
    recency_score,
    rfm_score,
    rule_score,
)
from churnml.models.btyd import (
    BGNBDFitError,
    ParetoNBDFitError,
    bgnbd_features,
    bgnbd_inputs,
    bgnbd_negative_log_likelihood,
    bgnbd_probability,
    bgnbd_probability_alive,
    expected_purchases,
    fit_bgnbd,
    fit_pnbd,
    gamma_share,
    pnbd_probability,
    pnbd_probability_purchase,
)

TRAIN_CUTOFF, HOLDOUT_CUTOFF, HORIZON = 640, 730, 90
# True BG/NBD parameters of the simulation, per day: rate ~ Gamma(r, alpha), dropout ~ Beta(a, b).
TRUE_R, TRUE_ALPHA_DAYS, TRUE_A, TRUE_B = 0.8, 40.0, 0.8, 3.0


def simulate_snapshots(n: int = 1500, seed: int = 0, refund_only_share: float = 0.03,
                       max_orders: int = 150) -> dict[int, tuple[pd.DataFrame, np.ndarray]]:
    """Feature tables and churn labels at two cutoffs for customers who buy as BG/NBD assumes.

    Each customer first buys on a random day before the training cutoff, then buys as a Poisson
    process and drops out after each repeat purchase with a probability of their own. Recent,
    frequent buyers are therefore the likely repurchasers: the signal every baseline should find.
    ``low_interaction`` is raised more often for customers who have dropped out. A few customers
    have refunds only (no purchase features). Returns ``{cutoff: (features, churn)}``.
    """
    rng = np.random.default_rng(seed)
    first = rng.integers(0, TRAIN_CUTOFF, n).astype(float)
    rate = rng.gamma(TRUE_R, 1.0 / TRUE_ALPHA_DAYS, n)
    dropout = rng.beta(TRUE_A, TRUE_B, n)
    repeats_until_dropout = rng.geometric(dropout)
    gaps = rng.exponential(1.0, (n, max_orders)) / rate[:, None]
    days = np.floor(first[:, None] + np.cumsum(gaps, axis=1))
    days[np.arange(1, max_orders + 1) > repeats_until_dropout[:, None]] = np.inf
    order_value = rng.lognormal(4.0, 0.5, n)
    refund_only = rng.random(n) < refund_only_share
    snapshots = {}
    for cutoff in (TRAIN_CUTOFF, HOLDOUT_CUTOFF):
        before = days <= cutoff
        repeats = before.sum(axis=1)
        last = np.where(repeats > 0, np.where(before, days, -np.inf).max(axis=1), first)
        dropped_out = repeats >= repeats_until_dropout
        frequency = 1 + repeats
        features = pd.DataFrame({
            "customer_id": [f"c{i:05d}" for i in range(n)],
            "recency_days": cutoff - last,
            "tenure_days": cutoff - first,
            "frequency": frequency,
            "repeat_orders": repeats,
            "monetary_total": frequency * order_value,
            "avg_order_value": order_value,
            "purchase_span_days": last - first,
            "purchase_age_days": cutoff - first,
            "no_repurchase_3m": (cutoff - last) >= 90,
            "order_value_drop_40": rng.random(n) < 0.1,
            "low_interaction": rng.random(n) < np.where(dropped_out, 0.5, 0.15),
            "cutoff": pd.Timestamp("2022-01-01") + pd.Timedelta(days=cutoff),
        }).set_index("customer_id")
        no_purchase_columns = ["recency_days", "purchase_span_days", "purchase_age_days", "avg_order_value"]
        features.loc[refund_only, no_purchase_columns] = np.nan
        features.loc[refund_only, ["frequency", "repeat_orders"]] = 0
        features.loc[refund_only, "monetary_total"] = 0.0
        features.loc[refund_only, "no_repurchase_3m"] = True
        bought = ((days > cutoff) & (days <= cutoff + HORIZON)).any(axis=1)
        bought = np.where(refund_only, rng.random(n) < 0.1, bought)
        snapshots[cutoff] = (features, (~bought).astype(int))
    return snapshots


@pytest.fixture(scope="module")
def snapshots():
    return simulate_snapshots()


@pytest.fixture(scope="module")
def holdout_fit(snapshots):
    features, churn = snapshots[HOLDOUT_CUTOFF]
    inputs = bgnbd_inputs(features)
    return inputs, fit_bgnbd(inputs), churn


@pytest.fixture(scope="module")
def holdout_pnbd(holdout_fit):
    inputs, _, churn = holdout_fit
    return inputs, fit_pnbd(inputs), churn


@pytest.fixture
def hand_features() -> pd.DataFrame:
    """Four customers: a recent buyer, a lapsed one with every flag, refunds only, and one unknown flag."""
    return pd.DataFrame(
        {
            "recency_days": [0.0, 365.0, np.nan, 100.0],
            "frequency": [8, 2, 0, 1],
            "repeat_orders": [7, 1, 0, 0],
            "monetary_total": [150.0, 46.0, 0.0, 10.0],
            "purchase_span_days": [70.0, 14.0, np.nan, 0.0],
            "purchase_age_days": [140.0, 379.0, np.nan, 100.0],
            "tenure_days": [140.0, 379.0, 14.0, 100.0],
            "no_repurchase_3m": [False, True, True, True],
            "order_value_drop_40": [False, True, False, True],
            "low_interaction": pd.array([False, True, False, pd.NA], dtype="boolean"),
        },
        index=pd.Index(["recent", "lapsed", "refunds_only", "unknown_flag"], name="customer_id"),
    )


# ---------------------------------------------------------------------------------------------
# Warning-flag rule
# ---------------------------------------------------------------------------------------------


def test_rule_score_counts_flags_and_breaks_ties_by_recency(hand_features):
    score = pd.Series(rule_score(hand_features), index=hand_features.index)
    assert score["recent"] == 0.0
    assert score["lapsed"] == pytest.approx(3 + 365 / (365 + 365))
    # An unknown flag is not raised: two flags plus the recency tie-breaker.
    assert score["unknown_flag"] == pytest.approx(2 + 100 / (100 + 365))
    # Refunds only: one flag and the largest tie-breaker, still below the next flag count.
    assert 1 + 365 / (365 + 365) < score["refunds_only"] < 2


def test_rule_score_without_interactions_uses_the_flags_that_exist(hand_features):
    score = rule_score(hand_features.drop(columns="low_interaction"))
    np.testing.assert_allclose(score, [0.0, 2.5, score[2], 2 + 100 / 465])
    assert 1 < score[2] < 2


def test_rule_score_orders_equal_flag_counts_by_recency():
    features = pd.DataFrame({"recency_days": [100.0, 10.0, 400.0], "no_repurchase_3m": [True, True, True]})
    assert list(np.argsort(rule_score(features))) == [1, 0, 2]


# ---------------------------------------------------------------------------------------------
# RFM
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def rfm_reference() -> pd.DataFrame:
    """Quintile edges by hand (linear interpolation over 10 values):
    recency 0..90 -> [18, 36, 54, 72]; frequency -> [1, 1, 1, 3.4]; monetary 10..100 -> [28, 46, 64, 82].
    """
    return pd.DataFrame({
        "recency_days": np.arange(0.0, 100.0, 10.0),
        "frequency": [1, 1, 1, 1, 1, 1, 2, 3, 5, 8],
        "monetary_total": np.arange(10.0, 110.0, 10.0),
    })


def test_rfm_scores_by_hand(hand_features, rfm_reference):
    score = pd.Series(rfm_score(hand_features, rfm_reference), index=hand_features.index)
    # recent: R 5 (0 <= 18), F 5 (8 > 3.4), M 5 (150 > 82) -> 18 - 15.
    assert score["recent"] == 3
    # lapsed: R 1 (365 > 72), F 4 (2 is above the three tied edges at 1), M 2 (46 is on an edge) -> 18 - 7.
    assert score["lapsed"] == 11
    # refunds only: R 1 (no recency), F 1, M 1.
    assert score["refunds_only"] == 15
    # unknown_flag: R 1 (100 > 72), F 1 (1 is on the tied edges), M 1 -> 18 - 3.
    assert score["unknown_flag"] == 15


def test_rfm_edges_come_from_the_reference_not_the_scored_rows(hand_features, rfm_reference):
    full = rfm_score(hand_features, rfm_reference)
    one_by_one = [rfm_score(hand_features.iloc[[i]], rfm_reference)[0] for i in range(len(hand_features))]
    np.testing.assert_array_equal(full, one_by_one)
    # A reference of much longer recencies and bigger spenders moves the lapsed customer up.
    wider = rfm_reference.assign(recency_days=rfm_reference["recency_days"] * 10,
                                 monetary_total=rfm_reference["monetary_total"] * 10)
    assert rfm_score(hand_features, wider)[1] < full[1]
    # Self-referenced, the scores differ from the reference-based ones.
    assert not np.array_equal(rfm_score(hand_features, hand_features), full)


def test_quintile_edges_ignore_missing_reference_values():
    values = np.arange(0.0, 100.0, 10.0)
    np.testing.assert_allclose(quintile_edges(np.append(values, np.nan)), [18, 36, 54, 72])
    with pytest.raises(ValueError, match="finite"):
        quintile_edges(np.array([np.nan, np.nan]))


# ---------------------------------------------------------------------------------------------
# Score calibration
# ---------------------------------------------------------------------------------------------


# Four or six points are too few for isotonic regression to be sure of the direction; it says so.
SMALL_SAMPLE_DIRECTION = "ignore:Confidence interval of the Spearman correlation"


@pytest.mark.filterwarnings(SMALL_SAMPLE_DIRECTION)
def test_score_calibrator_is_monotone_and_clipped():
    rng = np.random.default_rng(3)
    score = rng.uniform(0, 10, 2000)
    y = (rng.random(2000) < score / 10).astype(int)
    calibrator = ScoreCalibrator().fit(score, y)
    assert calibrator.increasing_
    grid = np.linspace(-5, 15, 201)
    probability = calibrator.probability(grid)
    assert (np.diff(probability) >= 0).all()
    assert probability[0] < 0.1 < 0.9 < probability[-1]
    assert probability.min() >= 1e-6 and probability.max() <= 1 - 1e-6
    # Perfectly separated labels would give 0 and 1 without the clip.
    separated = ScoreCalibrator().fit([1.0, 2.0, 3.0, 4.0], [0, 0, 1, 1]).probability([0.0, 5.0])
    np.testing.assert_allclose(separated, [1e-6, 1 - 1e-6])


@pytest.mark.filterwarnings(SMALL_SAMPLE_DIRECTION)
def test_score_calibrator_learns_a_decreasing_direction():
    calibrator = ScoreCalibrator().fit([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [1, 1, 1, 0, 1, 0])
    assert not calibrator.increasing_
    probability = calibrator.probability([1.0, 6.0])
    assert probability[0] > probability[1]


def test_score_calibrator_rejects_bad_labels():
    with pytest.raises(ValueError, match="0 or 1"):
        ScoreCalibrator().fit([1.0, 2.0], [0, 2])


# ---------------------------------------------------------------------------------------------
# BG/NBD
# ---------------------------------------------------------------------------------------------


def test_bgnbd_inputs_in_weeks_with_refund_only_customers(hand_features):
    inputs = bgnbd_inputs(hand_features)
    assert list(inputs.index) == list(hand_features.index)
    np.testing.assert_allclose(inputs.loc["recent"], [7, 10, 20])
    np.testing.assert_allclose(inputs.loc["refunds_only"], [0, 0, 2])
    np.testing.assert_allclose(inputs.loc["unknown_flag"], [0, 0, 100 / 7])
    newcomer = hand_features.iloc[[2]].assign(tenure_days=0.0)
    np.testing.assert_allclose(bgnbd_inputs(newcomer).iloc[0], [0, 0, 1 / 7])


def test_bgnbd_recovers_the_simulated_parameters(holdout_fit):
    _, model, _ = holdout_fit
    r, alpha = model.params_["r"], model.params_["alpha"]
    true_rate_per_week = TRUE_R / TRUE_ALPHA_DAYS * 7
    assert r / alpha == pytest.approx(true_rate_per_week, rel=0.2)
    assert alpha == pytest.approx(TRUE_ALPHA_DAYS / 7, rel=0.3)


def test_bgnbd_churn_probability_matches_the_observed_rate(holdout_fit):
    inputs, model, churn = holdout_fit
    probability = bgnbd_probability(model, inputs, HORIZON, "churn")
    assert probability.mean() == pytest.approx(churn.mean(), abs=0.03)
    assert roc_auc_score(churn, probability) > 0.7


def test_bgnbd_recent_frequent_buyer_is_more_alive_than_a_lapsed_one(holdout_fit):
    _, model, _ = holdout_fit
    inputs = pd.DataFrame({"x": [10.0, 10.0], "t_x": [50.0, 10.0], "T": [52.0, 52.0]}, index=["recent", "lapsed"])
    p_alive = bgnbd_probability_alive(model, inputs)
    assert p_alive[0] > 0.8 > 0.2 > p_alive[1]
    churn = bgnbd_probability(model, inputs, HORIZON, "churn")
    assert churn[0] < churn[1]


def test_bgnbd_churn_and_repurchase_sum_to_one(holdout_fit):
    inputs, model, _ = holdout_fit
    churn = bgnbd_probability(model, inputs, HORIZON, "churn")
    repurchase = bgnbd_probability(model, inputs, HORIZON, "repurchase")
    np.testing.assert_allclose(churn + repurchase, 1.0, atol=1e-12)
    assert np.isfinite(churn).all() and churn.min() >= 1e-6 and churn.max() <= 1 - 1e-6
    with pytest.raises(ValueError, match="target"):
        bgnbd_probability(model, inputs, HORIZON, "spend")


def test_bgnbd_probability_by_hand():
    model = BetaGeoFitter()
    r, alpha, a, b = 0.5, 4.0, 0.8, 2.5
    model.params_ = pd.Series({"r": r, "alpha": alpha, "a": a, "b": b})
    inputs = pd.DataFrame({"x": [0.0, 2.0], "t_x": [0.0, 6.0], "T": [10.0, 10.0]})
    horizon_weeks = 2.0
    # No repeat purchase yet: alive for sure; silent for 2 more weeks with prob ((a+T)/(a+T+t))^r.
    one_timer = ((alpha + 10) / (alpha + 10 + horizon_weeks)) ** r
    p_alive = 1 / (1 + a / (b + 2 - 1) * ((alpha + 10) / (alpha + 6)) ** (r + 2))
    repeat_buyer = 1 - p_alive + p_alive * ((alpha + 10) / (alpha + 10 + horizon_weeks)) ** (r + 2)
    churn = bgnbd_probability(model, inputs, horizon_days=14, target="churn")
    np.testing.assert_allclose(churn, [one_timer, repeat_buyer], rtol=1e-12)


def _bgnbd(r: float, alpha: float, a: float, b: float) -> BetaGeoFitter:
    model = BetaGeoFitter()
    model.params_ = pd.Series({"r": r, "alpha": alpha, "a": a, "b": b})
    return model


def test_bgnbd_expected_purchases_are_lifetimes_where_its_closed_form_is_finite():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 25, 400).astype(float)
    T = rng.uniform(0.5, 70.0, 400)
    inputs = pd.DataFrame({"x": x, "t_x": T * rng.uniform(0, 1, 400) * (x > 0), "T": T})
    for params in [(0.24, 4.4, 0.79, 2.43), (0.5, 10.0, 1.5, 3.0), (0.27, 4.3, 0.21, 0.46)]:
        model = _bgnbd(*params)
        theirs = np.asarray(model.conditional_expected_number_of_purchases_up_to_time(
            13.0, inputs["x"], inputs["t_x"], inputs["T"]), dtype=float)
        finite = np.isfinite(theirs)
        assert finite.sum() > 300
        alive = btyd.bgnbd_probability_alive(model, inputs)
        by_quadrature = alive * btyd.bgnbd_expected_purchases_by_quadrature(*params, x, T, 13.0)
        np.testing.assert_allclose(by_quadrature[finite], theirs[finite], rtol=1e-9)
        np.testing.assert_allclose(expected_purchases(model, inputs, 91)[finite], theirs[finite], rtol=1e-12)


def test_bgnbd_expected_purchases_stay_finite_where_the_hypergeometric_term_breaks():
    # a + b < 1: for customers without repeat purchases lifetimes' 2F1 has c = a + b - 1 < 0 and
    # gives NaN (CDNOW a month after its customers' first purchases fits such parameters).
    r, alpha, a, b = 0.273, 4.31, 0.209, 0.461
    model = _bgnbd(r, alpha, a, b)
    inputs = pd.DataFrame({"x": [0.0, 0.0, 0.0], "t_x": [0.0, 0.0, 0.0], "T": [1.0, 4.0, 9.0]})
    assert np.isnan(np.asarray(model.conditional_expected_number_of_purchases_up_to_time(
        26.0, inputs["x"], inputs["t_x"], inputs["T"]), dtype=float)).any()
    expected = expected_purchases(model, inputs, 182)
    # The definition, integrated numerically: E_p[(1 - ((alpha+T)/(alpha+T+p t))^r) / p], p ~ Beta(a, b).
    from scipy import integrate, stats

    def by_definition(age: float) -> float:
        def integrand(p: float) -> float:
            return -np.expm1(-r * np.log1p(p * 26.0 / (alpha + age))) / p * stats.beta.pdf(p, a, b)
        return integrate.quad(integrand, 0, 1, limit=200)[0]

    np.testing.assert_allclose(expected, [by_definition(age) for age in (1.0, 4.0, 9.0)], rtol=1e-6)
    # Alive for sure (no repeat purchase in BG/NBD): the older customer's rate posterior is lower.
    assert expected[0] > expected[1] > expected[2] > 0


def test_bgnbd_likelihood_and_gradient_are_those_of_lifetimes(holdout_fit):
    from autograd import value_and_grad

    inputs, _, _ = holdout_fit
    x, t_x, T = (inputs[c].to_numpy(dtype=float) for c in ("x", "t_x", "T"))
    scale = 1.0 / T.max()
    lifetimes_objective = value_and_grad(BetaGeoFitter._negative_log_likelihood)
    for log_params in (np.full(4, 0.1), np.array([0.4, -2.0, -1.5, 1.2])):
        for penalizer in (0.0, 0.1):
            expected_value, expected_gradient = lifetimes_objective(
                log_params, x.astype(int), t_x * scale, T * scale, np.ones(len(x), dtype=int), penalizer)
            value, gradient = bgnbd_negative_log_likelihood(log_params, x, t_x * scale, T * scale, penalizer)
            assert value == pytest.approx(expected_value, rel=1e-12)
            np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("penalizer", [0.0, 0.01])
def test_fit_bgnbd_finds_the_parameters_lifetimes_finds(holdout_fit, penalizer):
    inputs, _, _ = holdout_fit
    fitted = fit_bgnbd(inputs, penalizers=(penalizer,))
    reference = BetaGeoFitter(penalizer_coef=penalizer).fit(inputs["x"].to_numpy(), inputs["t_x"].to_numpy(),
                                                            inputs["T"].to_numpy())
    assert isinstance(fitted, BetaGeoFitter) and fitted.penalizer_coef == penalizer
    np.testing.assert_allclose(fitted.params_[["r", "alpha", "a", "b"]], reference.params_[["r", "alpha", "a", "b"]],
                               rtol=1e-4)


def test_a_large_table_starts_its_fit_from_a_sample(monkeypatch, holdout_fit):
    inputs, _, _ = holdout_fit
    x, t_x, T = (inputs[c].to_numpy(dtype=float) for c in ("x", "t_x", "T"))
    sample_size = len(x) // 5
    evaluated = []
    objective = btyd.bgnbd_negative_log_likelihood

    def counted(log_params, x, *args):
        evaluated.append(len(x))
        return objective(log_params, x, *args)

    monkeypatch.setattr(btyd, "bgnbd_negative_log_likelihood", counted)
    warm = btyd.fit_bgnbd_parameters(x, t_x, T, warm_start_customers=sample_size)
    warm_sizes, evaluated[:] = list(evaluated), []
    cold = btyd.fit_bgnbd_parameters(x, t_x, T, warm_start_customers=None)
    assert min(warm_sizes) < len(x) and set(evaluated) == {len(x)}
    assert warm_sizes.count(len(x)) < evaluated.count(len(x)) / 2
    np.testing.assert_allclose(warm, cold, rtol=1e-4)


def _fail_when(condition):
    """A fit_bgnbd_parameters that raises ConvergenceError when ``condition(penalizer)`` holds."""
    original = btyd.fit_bgnbd_parameters

    def fit(x, t_x, T, penalizer=0.0):
        if condition(penalizer):
            raise ConvergenceError("The model did not converge.")
        return original(x, t_x, T, penalizer)

    return fit


def test_fit_bgnbd_retries_with_a_penalizer(monkeypatch, holdout_fit):
    inputs, _, _ = holdout_fit
    monkeypatch.setattr(btyd, "fit_bgnbd_parameters", _fail_when(lambda penalizer: penalizer == 0))
    model = fit_bgnbd(inputs)
    assert model.penalizer_coef == 0.001
    assert np.isfinite(model.params_.to_numpy()).all()


def test_fit_bgnbd_rejects_non_finite_parameters(monkeypatch, holdout_fit):
    inputs, _, _ = holdout_fit
    original = btyd.fit_bgnbd_parameters

    def fit_with_nan_for_no_penalizer(x, t_x, T, penalizer=0.0):
        params = original(x, t_x, T, penalizer)
        if penalizer == 0:
            params[0] = np.nan
        return params

    monkeypatch.setattr(btyd, "fit_bgnbd_parameters", fit_with_nan_for_no_penalizer)
    assert fit_bgnbd(inputs, penalizers=(0.0, 0.01)).penalizer_coef == 0.01


def test_fit_bgnbd_raises_when_every_penalizer_fails(monkeypatch, holdout_fit):
    inputs, _, _ = holdout_fit
    monkeypatch.setattr(btyd, "fit_bgnbd_parameters", _fail_when(lambda penalizer: True))
    with pytest.raises(BGNBDFitError, match=r"0\.0, 0\.001, 0\.01, 0\.1, 1\.0.*ConvergenceError.*did not converge"):
        fit_bgnbd(inputs)


def test_bgnbd_features_are_aligned_and_rank_customers(snapshots):
    features, churn = snapshots[HOLDOUT_CUTOFF]
    bgnbd = bgnbd_features(features, HORIZON)
    assert list(bgnbd.columns) == ["bgnbd_p_alive", "bgnbd_expected_purchases"]
    assert bgnbd.index.equals(features.index)
    assert bgnbd.notna().all().all()
    assert bgnbd["bgnbd_p_alive"].between(0, 1).all() and (bgnbd["bgnbd_expected_purchases"] >= 0).all()
    # Expected purchases rank repurchasers (churn 0) first.
    assert roc_auc_score(1 - churn, bgnbd["bgnbd_expected_purchases"]) > 0.7


def test_bgnbd_features_fit_each_cutoff_of_a_stacked_table_on_its_own(snapshots):
    train, _ = snapshots[TRAIN_CUTOFF]
    holdout, _ = snapshots[HOLDOUT_CUTOFF]
    stacked = pd.concat([train, holdout])
    together = bgnbd_features(stacked, HORIZON)
    assert together.index.equals(stacked.index)
    separately = pd.concat([bgnbd_features(train, HORIZON), bgnbd_features(holdout, HORIZON)])
    pd.testing.assert_frame_equal(together, separately)


def test_bgnbd_features_are_missing_instead_of_failing(monkeypatch, snapshots, caplog):
    features, _ = snapshots[HOLDOUT_CUTOFF]
    monkeypatch.setattr(btyd, "fit_bgnbd_parameters", _fail_when(lambda penalizer: True))
    with caplog.at_level(logging.WARNING, logger="churnml.models.btyd"):
        bgnbd = bgnbd_features(features, HORIZON)
    assert list(bgnbd.columns) == ["bgnbd_p_alive", "bgnbd_expected_purchases"]
    assert bgnbd.index.equals(features.index) and bgnbd.isna().all().all()
    assert "BG/NBD" in caplog.text


# ---------------------------------------------------------------------------------------------
# Pareto/NBD
# ---------------------------------------------------------------------------------------------


def test_fit_pnbd_finds_the_optimum_lifetimes_finds(holdout_pnbd):
    inputs, fitted, _ = holdout_pnbd
    reference = ParetoNBDFitter().fit(*(inputs[c].to_numpy() for c in ("x", "t_x", "T")), tol=1e-10, maxiter=10_000)
    assert isinstance(fitted, ParetoNBDFitter)
    np.testing.assert_allclose(fitted.params_[["r", "alpha", "s", "beta"]],
                               reference.params_[["r", "alpha", "s", "beta"]], rtol=2e-3)


def test_a_large_table_starts_its_pnbd_fit_from_a_sample(monkeypatch, holdout_fit):
    inputs, _, _ = holdout_fit
    x, t_x, T = (inputs[c].to_numpy(dtype=float) for c in ("x", "t_x", "T"))
    sample_size = len(x) // 5
    evaluated = []
    objective = btyd.pnbd_negative_log_likelihood

    def counted(log_params, x, *args):
        evaluated.append(len(x))
        return objective(log_params, x, *args)

    monkeypatch.setattr(btyd, "pnbd_negative_log_likelihood", counted)
    warm = btyd.fit_pnbd_parameters(x, t_x, T, warm_start_customers=sample_size)
    warm_sizes, evaluated[:] = list(evaluated), []
    cold = btyd.fit_pnbd_parameters(x, t_x, T, warm_start_customers=None)
    full = max(evaluated)
    assert min(warm_sizes) < full and set(evaluated) == {full}
    assert warm_sizes.count(full) < evaluated.count(full) / 2
    np.testing.assert_allclose(warm, cold, rtol=1e-3)


def test_bfgs_stopping_on_precision_loss_counts_as_converged_only_at_a_finite_point():
    from types import SimpleNamespace

    def stop(success=False, status=2, fun=-1.0, x=(0.1, 0.2, 0.3, 0.4), jac=(0.01, -0.02, 0.0, 0.001)):
        return btyd._stopped_at_optimum(SimpleNamespace(success=success, status=status, fun=fun, x=np.array(x),
                                                        jac=np.array(jac)))

    assert stop(success=True, status=0) and stop()
    assert not stop(fun=np.inf) and not stop(x=(0.1, np.nan, 0.3, 0.4))
    assert not stop(status=1) and not stop(status=3)
    # Stalled short of an optimum beyond the parameter bound: the gradient is still large.
    assert not stop(x=(0.1, 0.2, 3.64, 0.4), jac=(0.0, 0.0, -12.7, 0.0)) and not stop(jac=(0.0, np.nan, 0.0, 0.0))


@pytest.mark.parametrize("shapes", [(0.6, 12.0, 0.35, 6.0), (3.5, 20.0, 0.35, 60.0), (1.0, 5.0, 2.0, 5.0)])
def test_gamma_share_is_the_mean_share_of_the_first_rate(shapes):
    from scipy import integrate, stats

    a1, b1, a2, b2 = shapes
    c = b1 / b2
    # E[W / (W + c (1 - W))] for W ~ Beta(a1, a2), by quadrature.
    expected, _ = integrate.quad(lambda w: w / (w + c * (1 - w)) * stats.beta.pdf(w, a1, a2), 0, 1, limit=200)
    assert gamma_share(a1, b1, a2, b2) == pytest.approx(expected, rel=1e-8)


def test_pnbd_probability_is_the_complement_of_lifetimes_no_purchase(holdout_pnbd):
    inputs, model, _ = holdout_pnbd
    x, t_x, T = (inputs[c].to_numpy() for c in ("x", "t_x", "T"))
    with btyd._quiet_lifetimes():
        no_purchase = model.conditional_probability_of_n_purchases_up_to_time(0, HORIZON / 7, x, t_x, T)
    purchase = pnbd_probability_purchase(model, inputs, HORIZON)
    np.testing.assert_allclose(purchase, 1 - no_purchase, rtol=1e-9, atol=1e-12)
    repurchase = pnbd_probability(model, inputs, HORIZON, "repurchase")
    churn = pnbd_probability(model, inputs, HORIZON, "churn")
    np.testing.assert_allclose(churn + repurchase, 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="target"):
        pnbd_probability(model, inputs, HORIZON, "spend")


def test_pnbd_probability_alive_is_lifetimes_and_stays_finite_for_frequent_buyers(holdout_pnbd):
    inputs, model, _ = holdout_pnbd
    x, t_x, T = (inputs[c].to_numpy() for c in ("x", "t_x", "T"))
    with btyd._quiet_lifetimes():
        theirs = model.conditional_probability_alive(x, t_x, T)
    np.testing.assert_allclose(btyd.pnbd_probability_alive(model, inputs), theirs, rtol=1e-9, atol=1e-12)
    with btyd._quiet_lifetimes():
        their_counts = model.conditional_expected_number_of_purchases_up_to_time(HORIZON / 7, x, t_x, T)
    np.testing.assert_allclose(btyd.expected_purchases(model, inputs, HORIZON), their_counts, rtol=1e-9, atol=1e-12)
    # About a hundred repeat purchases under the demo shop's fit: lifetimes' powers overflow to NaN.
    from lifetimes import ParetoNBDFitter

    demo = ParetoNBDFitter()
    demo.params_ = pd.Series({"r": 1.5573, "alpha": 8.9666, "s": 0.7820, "beta": 153.84})
    frequent = pd.DataFrame({"x": [116.0, 110.0, 110.0, 110.0, 40.0], "t_x": [115.4, 109.6, 100.0, 60.0, 100.0],
                             "T": [115.4, 115.4, 115.4, 115.4, 115.4]})
    arrays = [frequent[c].to_numpy() for c in ("x", "t_x", "T")]
    with btyd._quiet_lifetimes():
        theirs = demo.conditional_probability_alive(*arrays)
    assert np.isnan(theirs[0])
    alive = btyd.pnbd_probability_alive(demo, frequent)
    assert np.isfinite(alive).all() and alive[0] == 1.0
    assert 1.0 > alive[1] > alive[2] > alive[3] >= 0.0
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(alive[finite], theirs[finite], rtol=1e-9, atol=1e-300)
    assert np.isfinite(pnbd_probability_purchase(demo, frequent, HORIZON)).all()
    assert np.isfinite(btyd.expected_purchases(demo, frequent, HORIZON)).all()


def simulated_purchase_probability(params, x, t_x, T, t, draws, rng) -> tuple[float, float]:
    """P(a purchase in (T, T + t] | x, t_x, T) by simulating Pareto/NBD customers.

    Rates are drawn from the prior and weighted by the individual likelihood of the history
    (self-normalised importance sampling); each draw is alive at T with its posterior chance,
    lives an exponential time more and buys as a Poisson process while alive. Returns the
    estimate and its standard error.
    """
    r, alpha, s, beta = params
    lam = rng.gamma(r, 1 / alpha, draws)
    mu = rng.gamma(s, 1 / beta, draws)
    log_alive = x * np.log(lam) - (lam + mu) * T
    log_dead = x * np.log(lam) + np.log(mu) - np.log(lam + mu) + np.log(-np.expm1(-(lam + mu) * (T - t_x))) - (
        lam + mu) * t_x
    log_likelihood = np.logaddexp(log_alive, log_dead)
    weight = np.exp(log_likelihood - log_likelihood.max())
    alive = rng.random(draws) < np.exp(log_alive - log_likelihood)
    lifetime = rng.exponential(1 / mu)
    bought = alive & (rng.poisson(lam * np.minimum(lifetime, t)) > 0)
    estimate = weight @ bought / weight.sum()
    error = np.sqrt(weight**2 @ (bought - estimate) ** 2) / weight.sum()
    return float(estimate), float(error)


def test_pnbd_probability_matches_a_simulation(holdout_pnbd):
    _, model, _ = holdout_pnbd
    params = model.params_[["r", "alpha", "s", "beta"]].to_numpy()
    customers = pd.DataFrame({"x": [0.0, 1.0, 3.0, 3.0, 8.0], "t_x": [0.0, 5.0, 40.0, 8.0, 60.0],
                              "T": [30.0, 20.0, 45.0, 80.0, 62.0]})
    closed_form = pnbd_probability_purchase(model, customers, HORIZON)
    rng = np.random.default_rng(7)
    for row, expected in zip(customers.itertuples(index=False), closed_form):
        estimate, error = simulated_purchase_probability(params, row.x, row.t_x, row.T, HORIZON / 7, 400_000, rng)
        assert error < 0.01
        assert abs(estimate - expected) < 4 * error, (row, estimate, expected, error)
    # The customers differ enough for the check to mean something.
    assert closed_form.max() - closed_form.min() > 0.3


def test_pnbd_recent_frequent_buyer_is_more_likely_to_buy_than_a_lapsed_one(holdout_pnbd):
    _, model, _ = holdout_pnbd
    inputs = pd.DataFrame({"x": [10.0, 10.0], "t_x": [50.0, 10.0], "T": [52.0, 52.0]}, index=["recent", "lapsed"])
    repurchase = pnbd_probability(model, inputs, HORIZON, "repurchase")
    assert repurchase[0] > repurchase[1] + 0.2


def test_fit_pnbd_retries_with_a_penalizer_then_raises(monkeypatch, holdout_fit):
    inputs, _, _ = holdout_fit
    original = btyd.fit_pnbd_parameters

    def fail_without_penalizer(x, t_x, T, penalizer=0.0):
        if penalizer == 0:
            raise ValueError("overflow in hyp2f1")
        return original(x, t_x, T, penalizer)

    monkeypatch.setattr(btyd, "fit_pnbd_parameters", fail_without_penalizer)
    assert fit_pnbd(inputs).penalizer_coef == 0.001
    monkeypatch.setattr(btyd, "fit_pnbd_parameters", _fail_pnbd)
    with pytest.raises(ParetoNBDFitError, match=r"0\.0, 0\.001, 0\.01, 0\.1, 1\.0.*ConvergenceError"):
        fit_pnbd(inputs)


def _fail_pnbd(x, t_x, T, penalizer=0.0):
    raise ConvergenceError("The model did not converge.")


# ---------------------------------------------------------------------------------------------
# All baselines on the holdout
# ---------------------------------------------------------------------------------------------

BASELINES = ["rule", "rfm", "recency", "bgnbd", "bgnbd_count", "pnbd", "pnbd_count"]


def test_recency_score_puts_customers_without_purchases_last(hand_features):
    score = recency_score(hand_features)
    np.testing.assert_array_equal(score, [0.0, 365.0, MISSING_RECENCY_DAYS, 100.0])
    assert score[2] > 100 * 365


def test_btyd_scores_fit_each_cutoff_on_its_own_rows(snapshots):
    train, _ = snapshots[TRAIN_CUTOFF]
    holdout, _ = snapshots[HOLDOUT_CUTOFF]
    stacked = pd.concat([train, holdout])

    def count(model, inputs):
        return expected_purchases(model, inputs, HORIZON)

    together = btyd_scores(stacked, fit_pnbd, count, "Pareto/NBD")
    # The earlier snapshot's scores do not change when later rows are added.
    np.testing.assert_allclose(together[: len(train)], btyd_scores(train, fit_pnbd, count, "Pareto/NBD"))
    alone = expected_purchases(fit_pnbd(bgnbd_inputs(holdout)), bgnbd_inputs(holdout), HORIZON)
    np.testing.assert_allclose(together[len(train):], alone)
    assert not np.allclose(together[len(train):], expected_purchases(fit_pnbd(bgnbd_inputs(stacked)),
                                                                     bgnbd_inputs(holdout), HORIZON))


@pytest.mark.parametrize("target", ["churn", "repurchase"])
def test_baselines_find_the_planted_signal(snapshots, target):
    (train, churn_train), (holdout, churn_holdout) = snapshots[TRAIN_CUTOFF], snapshots[HOLDOUT_CUTOFF]
    flip = (lambda churn: churn) if target == "churn" else (lambda churn: 1 - churn)
    probabilities = baseline_probabilities(train, flip(churn_train), holdout, target, HORIZON)
    assert list(probabilities) == BASELINES
    for name, probability in probabilities.items():
        assert probability.shape == (len(holdout),), name
        assert np.isfinite(probability).all(), name
        assert probability.min() >= 1e-6 and probability.max() <= 1 - 1e-6, name
        assert roc_auc_score(flip(churn_holdout), probability) > 0.6, name
    # Calibrated on the training snapshot, the rule's mean probability is near the holdout rate.
    assert probabilities["rule"].mean() == pytest.approx(flip(churn_holdout).mean(), abs=0.05)
    # Pareto/NBD's own probability is a probability of the target, not a rank.
    assert probabilities["pnbd"].mean() == pytest.approx(flip(churn_holdout).mean(), abs=0.05)


def test_baselines_calibrate_counts_on_the_training_snapshots(snapshots):
    (train, churn_train), (holdout, _) = snapshots[TRAIN_CUTOFF], snapshots[HOLDOUT_CUTOFF]
    probabilities = baseline_probabilities(train, churn_train, holdout, "churn", HORIZON)
    count = -expected_purchases(fit_pnbd(bgnbd_inputs(holdout)), bgnbd_inputs(holdout), HORIZON)
    train_count = -expected_purchases(fit_pnbd(bgnbd_inputs(train)), bgnbd_inputs(train), HORIZON)
    expected = ScoreCalibrator().fit(train_count, churn_train).probability(count)
    np.testing.assert_allclose(probabilities["pnbd_count"], expected)
    # Fewer expected purchases, more churn.
    order = np.argsort(count)
    assert np.all(np.diff(probabilities["pnbd_count"][order]) >= 0)


def test_count_baselines_are_calibrated_on_the_latest_training_snapshot(snapshots, monkeypatch):
    (train, churn_train), (holdout, _) = snapshots[TRAIN_CUTOFF], snapshots[HOLDOUT_CUTOFF]
    older = train.iloc[: len(train) // 3].assign(cutoff=pd.Timestamp("2023-01-01"))
    latest = train.assign(cutoff=pd.Timestamp("2023-06-01"))
    stacked = pd.concat([older, latest], ignore_index=True)
    fitted_rows = []
    original = btyd.fit_pnbd_parameters

    def counted(x, t_x, T, penalizer=0.0):
        fitted_rows.append(len(x))
        return original(x, t_x, T, penalizer)

    monkeypatch.setattr(btyd, "fit_pnbd_parameters", counted)
    labels = np.concatenate([churn_train[: len(older)], churn_train])
    both = baseline_probabilities(stacked, labels, holdout, "churn", HORIZON)
    assert len(older) not in fitted_rows and len(train) in fitted_rows
    only_latest = baseline_probabilities(latest, churn_train, holdout, "churn", HORIZON)
    np.testing.assert_allclose(both["pnbd_count"], only_latest["pnbd_count"])


def test_baselines_leave_bgnbd_out_when_it_cannot_be_fitted(monkeypatch, snapshots, caplog):
    (train, churn_train), (holdout, _) = snapshots[TRAIN_CUTOFF], snapshots[HOLDOUT_CUTOFF]
    monkeypatch.setattr(btyd, "fit_bgnbd_parameters", _fail_when(lambda penalizer: True))
    with caplog.at_level(logging.WARNING, logger="churnml.models.baselines"):
        probabilities = baseline_probabilities(train, churn_train, holdout, "churn", HORIZON)
    assert list(probabilities) == ["rule", "rfm", "recency", "pnbd", "pnbd_count"]
    assert "BG/NBD baselines left out" in caplog.text


def test_baselines_leave_pnbd_out_when_it_cannot_be_fitted(monkeypatch, snapshots, caplog):
    (train, churn_train), (holdout, _) = snapshots[TRAIN_CUTOFF], snapshots[HOLDOUT_CUTOFF]
    monkeypatch.setattr(btyd, "fit_pnbd_parameters", _fail_pnbd)
    with caplog.at_level(logging.WARNING, logger="churnml.models.baselines"):
        probabilities = baseline_probabilities(train, churn_train, holdout, "churn", HORIZON)
    assert list(probabilities) == ["rule", "rfm", "recency", "bgnbd", "bgnbd_count"]
    assert "Pareto/NBD baselines left out" in caplog.text and "did not converge" in caplog.text


def test_baselines_leave_a_count_out_when_no_training_snapshot_fits(monkeypatch, snapshots, caplog):
    (train, churn_train), (holdout, _) = snapshots[TRAIN_CUTOFF], snapshots[HOLDOUT_CUTOFF]
    original = btyd.fit_pnbd_parameters

    def fail_on_the_training_rows(x, t_x, T, penalizer=0.0):
        if len(x) == len(train) and np.max(T) < (TRAIN_CUTOFF + 1) / 7:
            raise ConvergenceError("The model did not converge.")
        return original(x, t_x, T, penalizer)

    monkeypatch.setattr(btyd, "fit_pnbd_parameters", fail_on_the_training_rows)
    with caplog.at_level(logging.WARNING, logger="churnml.models.baselines"):
        probabilities = baseline_probabilities(train, churn_train, holdout, "churn", HORIZON)
    assert "pnbd" in probabilities and "pnbd_count" not in probabilities
    assert "Pareto/NBD count baseline left out" in caplog.text


def test_baselines_reject_misaligned_labels(snapshots):
    train, churn = snapshots[TRAIN_CUTOFF]
    with pytest.raises(ValueError, match="y_train"):
        baseline_probabilities(train, churn[:-1], train, "churn", HORIZON)
