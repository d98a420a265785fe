"""The classifier: feature list, calibration on a later slice, exact contributions, the prior."""

from __future__ import annotations

import lightgbm
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from churnml.models import btyd
from churnml.models.classifier import (
    BGNBD_LOG_ODDS,
    BIAS,
    MIN_EXPECTED_PURCHASES,
    PNBD_LOG_COUNT,
    PRIOR,
    PRIOR_PNBD_CUSTOMERS,
    ChurnModel,
    FeatureMismatchError,
    category_codes,
    feature_columns,
    fit_population_priors,
    fit_prior_weights,
)


def planted(n: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "customer_id": [f"c{i}" for i in range(n)],
        "cutoff": pd.Timestamp("2024-01-01"),
        "recency_days": rng.exponential(60, n),
        "frequency": rng.poisson(3, n) + 1,
        "tier": rng.choice(["core", "basic", "dormant"], n),
        "no_repurchase_3m": rng.random(n) < 0.3,
        "peer_interactions_per_month": 1.5,
    })
    frame.loc[rng.random(n) < 0.1, "recency_days"] = np.nan
    logit = 0.02 * frame.recency_days.fillna(100) - 0.3 * frame.frequency + (frame.tier == "dormant") - 1
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame, y


def small_lightgbm(**kwargs) -> lightgbm.LGBMClassifier:
    return lightgbm.LGBMClassifier(n_estimators=80, num_leaves=7, random_state=0, n_jobs=1, verbose=-1, **kwargs)


@pytest.fixture(params=["lightgbm", "logistic"])
def fitted(request) -> tuple[ChurnModel, pd.DataFrame, np.ndarray]:
    X, y = planted(3000)
    if request.param == "lightgbm":
        model = ChurnModel(small_lightgbm(), preprocessing="native")
    else:
        model = ChurnModel(LogisticRegression(max_iter=2000), preprocessing="scaled", early_stopping_rounds=0)
    model.fit(X[:2000], y[:2000], calibration_set=(X[2000:2500], y[2000:2500]))
    return model, X[2500:], y[2500:]


def test_feature_columns_leave_out_ids_labels_and_constants():
    X, _ = planted(10)
    assert feature_columns(X.assign(label=1)) == ["recency_days", "frequency", "tier", "no_repurchase_3m"]


def test_learns_the_planted_signal(fitted):
    from sklearn.metrics import roc_auc_score

    model, X, y = fitted
    probability = model.predict_proba(X)[:, 1]
    assert roc_auc_score(y, probability) > 0.7
    assert ((probability > 0) & (probability < 1)).all()
    assert model.feature_importance().index[0] in ("recency_days", "frequency")


def test_contributions_sum_to_the_raw_score(fitted):
    model, X, _ = fitted
    contributions = model.contributions(X)
    assert list(contributions.columns) == [*model.feature_names_in_, BIAS]
    np.testing.assert_allclose(contributions.sum(axis=1), model.raw_score(X), atol=1e-9)


def test_calibration_maps_the_raw_score_monotonically(fitted):
    model, X, _ = fitted
    order = np.argsort(model.raw_score(X))
    probability = model.predict_proba(X)[:, 1][order]
    assert (np.diff(probability) >= -1e-12).all()


def test_a_missing_feature_is_refused(fitted):
    model, X, _ = fitted
    with pytest.raises(FeatureMismatchError, match="lacks 1 of the model's 4 features: tier"):
        model.predict_proba(X.drop(columns=["tier"]))
    with pytest.raises(FeatureMismatchError, match="another type"):
        model.predict_proba(X.assign(tier=1.0))


def test_unseen_categories_and_extra_columns_are_tolerated(fitted):
    model, X, _ = fitted
    shifted = X.assign(tier="platinum", something_else=1)
    assert np.isfinite(model.predict_proba(shifted)).all()


def test_category_codes_compare_as_text_and_mark_missing_and_unseen():
    categories = ["1", "basic", "core"]
    values = pd.Series(["core", None, "platinum", "basic", "core", np.nan], dtype=object)
    assert category_codes(values, categories).tolist() == [2, -1, -1, 1, 2, -1]
    assert category_codes(pd.Series([1, 1, 2]), categories).tolist() == [0, 0, -1]
    assert category_codes(pd.Series([None, None], dtype=object), categories).tolist() == [-1, -1]


def test_refit_gives_identical_probabilities():
    X, y = planted(1500)
    first = ChurnModel(small_lightgbm()).fit(X[:1000], y[:1000], calibration_set=(X[1000:1200], y[1000:1200]))
    second = ChurnModel(small_lightgbm()).fit(X[:1000], y[:1000], calibration_set=(X[1000:1200], y[1000:1200]))
    np.testing.assert_array_equal(first.predict_proba(X[1200:]), second.predict_proba(X[1200:]))


def test_one_class_labels_are_refused():
    X, _ = planted(50)
    with pytest.raises(ValueError, match="one class"):
        ChurnModel(small_lightgbm()).fit(X, np.zeros(50))


def bgnbd_like(n: int, cutoff: str, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Customers with BG/NBD inputs and a repurchase label that follows their buying rate."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.8, 0.05, n)
    alive = rng.random(n) < 0.7
    age = rng.uniform(60, 360, n)
    repeats = rng.poisson(rate * age * np.where(alive, 1.0, 0.4))
    span = np.where(repeats > 0, age * rng.uniform(0.3, 1.0, n) * np.where(alive, 1.0, 0.5), 0.0)
    frame = pd.DataFrame({
        "customer_id": [f"c{i}" for i in range(n)], "cutoff": pd.Timestamp(cutoff),
        "frequency": repeats + 1, "repeat_orders": repeats, "purchase_span_days": np.floor(span),
        "purchase_age_days": np.floor(age), "tenure_days": np.floor(age),
        "recency_days": np.floor(age - span), "noise": rng.normal(size=n),
    })
    y = (rng.random(n) < np.where(alive, 1 - np.exp(-rate * 90), 0.02)).astype(int)
    return frame, y


def test_btyd_prior_is_a_contribution_and_part_of_the_raw_score():
    fit_X, fit_y = bgnbd_like(3000, "2024-01-01", 1)
    cal_X, cal_y = bgnbd_like(1500, "2024-04-01", 2)
    test_X, test_y = bgnbd_like(1500, "2024-07-01", 3)
    model = ChurnModel(small_lightgbm(), prior="bgnbd", target="repurchase", horizon_days=90)
    model.fit(fit_X, fit_y, calibration_set=(cal_X, cal_y))
    contributions = model.contributions(test_X)
    assert PRIOR in contributions.columns
    np.testing.assert_allclose(contributions.sum(axis=1), model.raw_score(test_X), atol=1e-9)
    prior = model.prior_log_odds(test_X)
    assert np.isfinite(prior).all() and prior.std() > 0.1
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(test_y, model.predict_proba(test_X)[:, 1]) > 0.65


def test_the_prior_blends_the_bgnbd_terms_with_weights_fitted_on_the_training_rows():
    fit_X, fit_y = bgnbd_like(3000, "2024-01-01", 1)
    cal_X, cal_y = bgnbd_like(1500, "2024-04-01", 2)
    model = ChurnModel(small_lightgbm(), prior="bgnbd", target="repurchase", horizon_days=90)
    model.fit(fit_X, fit_y, calibration_set=(cal_X, cal_y))
    terms = model.prior_terms(cal_X)
    assert terms.shape == (len(cal_X), 2) and np.isfinite(terms).all()
    np.testing.assert_allclose(model.prior_log_odds(cal_X), model.prior_weights_[0] + terms @ model.prior_weights_[1:])
    # The blend is calibrated to the training labels: its mean probability is the base rate.
    blended = 1 / (1 + np.exp(-model.prior_log_odds(fit_X)))
    assert blended.mean() == pytest.approx(fit_y.mean(), abs=0.01)
    # A model saved before the blend existed boosts from BG/NBD's own log-odds.
    del model.prior_weights_
    np.testing.assert_allclose(model.prior_log_odds(cal_X), terms[:, 0])


def test_prior_weights_recover_a_known_blend_and_fall_back_to_bgnbd():
    rng = np.random.default_rng(0)
    terms = rng.normal(size=(20_000, 2))
    planted = np.array([-0.5, 0.8, 0.4])
    y = rng.random(20_000) < 1 / (1 + np.exp(-(planted[0] + terms @ planted[1:])))
    terms[:50] = np.nan
    np.testing.assert_allclose(fit_prior_weights(terms, y), planted, atol=0.08)
    np.testing.assert_array_equal(fit_prior_weights(terms, np.zeros(20_000)), BGNBD_LOG_ODDS)
    np.testing.assert_array_equal(fit_prior_weights(terms[:60], y[:60]), BGNBD_LOG_ODDS)


def test_the_pnbd_prior_is_pareto_nbd_log_expected_purchases_calibrated_to_the_labels():
    fit_X, fit_y = bgnbd_like(3000, "2024-01-01", 1)
    cal_X, cal_y = bgnbd_like(1500, "2024-04-01", 2)
    model = ChurnModel(small_lightgbm(), prior="pnbd", target="repurchase", horizon_days=90)
    model.fit(fit_X, fit_y, calibration_set=(cal_X, cal_y))
    inputs = btyd.bgnbd_inputs(cal_X)
    pnbd = btyd.fit_pnbd(inputs.iloc[::-(-len(inputs) // PRIOR_PNBD_CUSTOMERS)])
    log_count = np.log(np.maximum(btyd.expected_purchases(pnbd, inputs, 90), MIN_EXPECTED_PURCHASES))
    terms = model.prior_terms(cal_X)
    np.testing.assert_allclose(terms[:, 0], log_count, rtol=1e-9)
    weights = model.prior_weights_
    assert weights.shape == (2,) and weights[1] > 0
    np.testing.assert_allclose(model.prior_log_odds(cal_X), weights[0] + weights[1] * log_count, rtol=1e-9)
    blended = 1 / (1 + np.exp(-model.prior_log_odds(fit_X)))
    assert blended.mean() == pytest.approx(fit_y.mean(), abs=0.01)
    # Fits shared through the population give the same prior.
    shared = model.with_population_prior(cal_X, fit_population_priors(cal_X, pnbd=True))
    np.testing.assert_allclose(shared.prior_log_odds(cal_X), model.prior_log_odds(cal_X), rtol=1e-12)


def test_the_pnbd_prior_fits_pareto_nbd_on_an_evenly_spaced_sample(monkeypatch):
    import churnml.models.classifier as classifier

    frame, _ = bgnbd_like(3000, "2024-01-01", 1)
    inputs = btyd.bgnbd_inputs(frame)
    monkeypatch.setattr(classifier, "PRIOR_PNBD_CUSTOMERS", 1000)
    sampled = classifier._fit_prior(frame, "2024-01-01", pnbd=True).pnbd
    np.testing.assert_allclose(sampled.params_, btyd.fit_pnbd(inputs.iloc[::3]).params_, rtol=1e-12)
    assert not np.allclose(sampled.params_, btyd.fit_pnbd(inputs).params_, rtol=1e-3)
    monkeypatch.setattr(classifier, "PRIOR_PNBD_CUSTOMERS", 3000)
    np.testing.assert_allclose(classifier._fit_prior(frame, "2024-01-01", pnbd=True).pnbd.params_,
                               btyd.fit_pnbd(inputs).params_)


def test_the_pnbd_prior_reads_bgnbd_expected_purchases_where_pareto_nbd_cannot_fit(monkeypatch, caplog):
    fit_X, fit_y = bgnbd_like(2000, "2024-01-01", 1)

    def fail(*args, **kwargs):
        raise btyd.ParetoNBDFitError("the optimiser did not converge")

    monkeypatch.setattr(btyd, "fit_pnbd_parameters", fail)
    model = ChurnModel(small_lightgbm(), prior="pnbd", calibration="none", target="repurchase", horizon_days=90)
    with caplog.at_level("WARNING", logger="churnml.models.classifier"):
        model.fit(fit_X, fit_y)
    assert "Pareto/NBD prior unavailable at cutoff 2024-01-01" in caplog.text
    inputs = btyd.bgnbd_inputs(fit_X)
    expected = btyd.expected_purchases(btyd.fit_bgnbd(inputs), inputs, 90)
    np.testing.assert_allclose(model.prior_terms(fit_X)[:, 0], np.log(np.maximum(expected, MIN_EXPECTED_PURCHASES)))
    assert np.isfinite(model.predict_proba(fit_X)).all()


def test_pnbd_prior_weights_fall_back_to_the_log_count():
    terms = np.random.default_rng(0).normal(size=(60, 1))
    np.testing.assert_array_equal(fit_prior_weights(terms, np.ones(60), "pnbd"), PNBD_LOG_COUNT)
    model = ChurnModel(small_lightgbm(), prior="pnbd")
    model.prior_fallback_ = -1.0
    np.testing.assert_allclose(model._blended(np.array([[np.log(0.2)], [np.nan]])), [np.log(0.2), -1.0])


def test_fitting_shows_the_boosting_rounds_and_the_calibration_loss(capsys):
    X, y = planted(1200)
    ChurnModel(small_lightgbm()).fit(X[:1000], y[:1000], calibration_set=(X[1000:], y[1000:]), progress="churn model")
    shown = capsys.readouterr().err
    assert "churn model" in shown and "round" in shown and "binary_logloss" in shown


def test_prior_falls_back_to_the_base_rate_when_bgnbd_cannot_fit():
    fit_X, fit_y = bgnbd_like(2000, "2024-01-01", 4)
    model = ChurnModel(small_lightgbm(), prior="bgnbd", calibration="none", target="repurchase")
    model.fit(fit_X, fit_y)
    single = fit_X.head(1)
    assert model.prior_log_odds(single)[0] == pytest.approx(np.log(fit_y.mean() / (1 - fit_y.mean())))


def test_prior_needs_lightgbm():
    X, y = planted(200)
    with pytest.raises(ValueError, match="prior='bgnbd' needs a LightGBM"):
        ChurnModel(LogisticRegression(), preprocessing="scaled", prior="bgnbd").fit(X, y)


def test_population_prior_makes_scoring_in_pieces_equal_to_scoring_whole():
    fit_X, fit_y = bgnbd_like(3000, "2024-01-01", 5)
    cal_X, cal_y = bgnbd_like(1500, "2024-04-01", 6)
    model = ChurnModel(small_lightgbm(), prior="bgnbd", target="repurchase", horizon_days=90)
    model.fit(fit_X, fit_y, calibration_set=(cal_X, cal_y))
    scored, _ = bgnbd_like(2000, "2024-07-01", 7)
    whole = model.predict_proba(scored)[:, 1]
    fixed = model.with_population_prior(scored[["cutoff", "frequency", "repeat_orders", "purchase_span_days",
                                                "purchase_age_days", "tenure_days"]])
    parts = [scored.iloc[rows] for rows in np.array_split(np.arange(len(scored)), 7)]
    pieces = np.concatenate([fixed.predict_proba(part)[:, 1] for part in parts])
    np.testing.assert_allclose(pieces, whole, rtol=1e-12)
    naive_pieces = np.concatenate([model.predict_proba(part)[:, 1] for part in parts])
    assert not np.allclose(naive_pieces, whole)
