"""Batch scoring: the score table, its reasons, bands, segments and actions, and safe writing."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lightgbm import LGBMClassifier

from churnml import explain
from churnml.features import dates, segments, snapshots
from churnml.features.build import FeatureConfig
from churnml.features.levels import LevelConfig
from churnml.features.segments import TIERS, VALUE_SEGMENTS
from churnml.features.snapshots import snapshot_table
from churnml.io.sources import load_data
from churnml.jobs.score import model_uris
from churnml.models import attribution
from churnml.models import contributions as tree_contributions
from churnml.models.btyd import bgnbd_features, bgnbd_inputs, fitted_bgnbd_features
from churnml.models.classifier import BIAS, PRIOR, ChurnModel, FeatureMismatchError, fit_population_priors
from churnml.models.training import fit_model
from churnml.scoring import policy, reasons, table
from churnml.scoring import summary as score_summary
from churnml.simulate import write_shop

CHURN_CUTOFFS = [dt.date(2024, 5, 31), dt.date(2024, 6, 30), dt.date(2024, 7, 31), dt.date(2024, 8, 31)]
REPURCHASE_CUTOFFS = [dt.date(2024, 9, 30), dt.date(2024, 10, 31), dt.date(2024, 11, 30)]
SINGLE_PURCHASE, REFUND_ONLY = "Z_SINGLE", "Z_REFUND"


def with_edge_customers(transactions: pd.DataFrame) -> pd.DataFrame:
    """The shop's transactions plus a customer with one purchase and one with a refund only."""
    template = transactions.iloc[0]
    rows = []
    for customer, day, amount in ((SINGLE_PURCHASE, "2024-11-15", 80.0), (REFUND_ONLY, "2024-10-01", -25.0)):
        row = template.copy()
        row["customer_id"], row["ts"], row["amount"] = customer, pd.Timestamp(day), amount
        if "order_id" in row.index:
            row["order_id"] = f"{customer}-1"
        rows.append(row)
    return pd.concat([transactions, pd.DataFrame(rows)], ignore_index=True)


def small_lightgbm() -> LGBMClassifier:
    return LGBMClassifier(n_estimators=30, num_leaves=7, min_child_samples=20, n_jobs=1, verbose=-1,
                          deterministic=True, force_row_wise=True, random_state=0)


def train_small_model(dataset, target: str, horizon_days: int, cutoffs: list[dt.date],
                      prior: str | None) -> tuple[ChurnModel, pd.DataFrame]:
    """A small LightGBM model with BG/NBD features, trained as the train stage does; and its table."""
    table = snapshot_table(dataset, cutoffs, target, horizon_days, FeatureConfig(),
                           partial(bgnbd_features, horizon_days=horizon_days), progress=False)
    template = ChurnModel(small_lightgbm(), calibration="sigmoid", early_stopping_rounds=0, prior=prior,
                          target=target, horizon_days=horizon_days)
    return fit_model(template, table, calibration_snapshots=1), table


def train_small_models(dataset) -> tuple[dict[str, ChurnModel], pd.DataFrame]:
    """Churn (90 days, boosted from a BTYD prior) and repurchase (30 days, from the base rate)
    models, both with BG/NBD features, and the churn model's latest snapshot."""
    churn, churn_table = train_small_model(dataset, "churn", 90, CHURN_CUTOFFS, prior="bgnbd")
    repurchase, _ = train_small_model(dataset, "repurchase", 30, REPURCHASE_CUTOFFS, prior=None)
    latest = churn_table[churn_table["cutoff"] == churn_table["cutoff"].max()].reset_index(drop=True)
    return {"churn": churn, "repurchase": repurchase}, latest


def small_models_on_files(tables: dict[str, pd.DataFrame], directory: Path) -> tuple[dict[str, Path], dict[str, ChurnModel]]:
    """``tables`` written as Parquet files under ``directory`` (:func:`churnml.simulate.write_shop`),
    and :func:`train_small_models` trained on those files as a stage loads them: the paths by
    table, and the models by target."""
    paths = write_shop(tables, directory)
    files = {"kind": "files", **{name: {"path": str(path)} for name, path in paths.items()}}
    models, _ = train_small_models(load_data(files, materialize=True))
    return paths, models


@pytest.fixture(scope="module")
def scores(dataset, models, inputs) -> pd.DataFrame:
    identities = {"churn": table.ModelIdentity("churnml-churn", "3"),
                  "repurchase": table.ModelIdentity("churnml-repurchase", "2")}
    return table.score_customers(inputs, models, dataset.last_date, identities=identities)


# --- the table ----------------------------------------------------------------------------------


def test_one_row_per_customer_with_history_in_the_documented_columns(scores, dataset, small_shop):
    assert list(scores.columns) == table.score_columns(3)
    transactions = with_edge_customers(small_shop["transactions"])
    with_history = transactions.loc[transactions["ts"] < pd.Timestamp(dataset.last_date) + pd.Timedelta(days=1), "customer_id"]
    assert len(scores) == with_history.nunique() == scores["customer_id"].nunique()
    assert scores["customer_id"].is_monotonic_increasing
    assert (scores["as_of"] == dataset.last_date).all()
    for column in ("churn_probability", "repurchase_probability"):
        assert scores[column].between(0, 1).all() and scores[column].notna().all()
    assert set(scores["risk_band"]) <= set(policy.RISK_BANDS)
    assert scores["reason_1"].notna().all() and scores["recommended_action"].notna().all()
    assert set(scores["value_segment"]) <= set(VALUE_SEGMENTS)
    assert set(scores["predicted_value_segment"]) == set(VALUE_SEGMENTS)
    assert set(scores["tier"]) <= set(TIERS)
    assert (scores[["churn_model_name", "churn_model_version"]].drop_duplicates().to_numpy().tolist()
            == [["churnml-churn", "3"]])
    assert (scores["repurchase_model_version"] == "2").all()


def test_probabilities_are_the_models(scores, models, inputs):
    np.testing.assert_allclose(scores["churn_probability"], models["churn"].predict_proba(inputs["churn"])[:, 1])
    np.testing.assert_allclose(scores["repurchase_probability"],
                               models["repurchase"].predict_proba(inputs["repurchase"])[:, 1])


def test_bgnbd_columns_follow_each_models_horizon(inputs, models):
    assert "bgnbd_expected_purchases" in models["churn"].feature_names_in_
    churn_expected = inputs["churn"]["bgnbd_expected_purchases"]
    repurchase_expected = inputs["repurchase"]["bgnbd_expected_purchases"]
    # Three times the horizon, more purchases expected.
    assert (churn_expected >= repurchase_expected).all() and (churn_expected > repurchase_expected).mean() > 0.9


def test_single_purchase_and_refund_only_customers_get_sensible_rows(scores, inputs):
    rows = scores.set_index("customer_id").loc[[SINGLE_PURCHASE, REFUND_ONLY]]
    features = inputs["churn"].set_index("customer_id").loc[[SINGLE_PURCHASE, REFUND_ONLY]]
    assert features.loc[SINGLE_PURCHASE, "frequency"] == 1 and features.loc[REFUND_ONLY, "frequency"] == 0
    assert rows[["churn_probability", "repurchase_probability"]].notna().all().all()
    assert rows["reason_1"].notna().all() and rows["recommended_action"].notna().all()
    assert rows["risk_band"].isin(policy.RISK_BANDS).all()
    assert rows["ltv"].notna().all()
    # A customer who never bought is not more likely to come back than one who just did.
    assert rows.loc[REFUND_ONLY, "churn_probability"] >= rows.loc[SINGLE_PURCHASE, "churn_probability"]


def test_a_date_only_file_trains_and_scores_every_customer_on_timing(small_shop, tmp_path):
    from churnml.simulate import date_only

    days = date_only(small_shop["transactions"])
    paths, models = small_models_on_files({"transactions": days}, tmp_path)
    dataset = load_data({"kind": "files", "transactions": {"path": str(paths["transactions"])}})
    assert list(pd.read_parquet(paths["transactions"]).columns) == ["customer_id", "ts"]
    features = snapshots.feature_frame(dataset, dataset.last_date)
    inputs = table.model_inputs(features, models)
    scores = table.score_customers(inputs, models, dataset.last_date)
    assert len(scores) == days["customer_id"].nunique()
    assert scores[["churn_probability", "repurchase_probability"]].notna().all().all()
    assert scores["reason_1"].notna().all()
    # Spend counts days with a purchase: a customer's net spend is their number of purchase days.
    counts = days.groupby("customer_id").size()
    assert (features["net_spend"].to_numpy() == counts.reindex(features["customer_id"]).to_numpy()).all()
    # The model ranks by timing: those who bought lately are the less likely to churn.
    by_customer = scores.set_index("customer_id")["churn_probability"].reindex(features["customer_id"]).to_numpy()
    lately = features["recency_days"].to_numpy() <= features["recency_days"].quantile(0.25)
    assert by_customer[lately].mean() < by_customer[~lately].mean() - 0.2


# --- reasons ------------------------------------------------------------------------------------


def test_contributions_sum_to_the_raw_score(models, inputs):
    model, frame = models["churn"], inputs["churn"]
    contributions = model.contributions(frame)
    assert list(contributions.columns) == [*model.feature_names_in_, PRIOR, BIAS]
    np.testing.assert_allclose(contributions.sum(axis=1), model.raw_score(frame), rtol=1e-9, atol=1e-9)
    # The kept contributions are these, the prior's included: they add up with the rest to the score.
    reasons = tree_contributions.churn_reasons(model, frame, 3)
    assert reasons.names == list(contributions.columns)
    # Phrases quote the prior itself; its contribution is the prior relative to the bias' share.
    np.testing.assert_allclose(reasons.prior_log_odds, model.prior_log_odds(frame))
    assert np.ptp(reasons.prior_log_odds - contributions[PRIOR].to_numpy()) < 1e-9


def attributed(model: ChurnModel, frame: pd.DataFrame) -> pd.DataFrame:
    """The model's own contributions (pred_contrib) with the prior split over recency, frequency
    and age, the BTYD prior fitted once on ``frame``."""
    fixed = model.with_population_prior(frame) if model.prior else model
    return tree_contributions.attributed_contributions(fixed, frame, fixed.contributions(frame))


def test_reasons_are_the_largest_contributions_that_read_the_way_they_push(models, inputs, scores):
    model, frame = models["churn"], inputs["churn"]
    contributions = attributed(model, frame).drop(columns=[BIAS])
    names = list(contributions.columns)
    # High and medium bands: what raises the risk most; low band: what lowers it most; among the
    # contributions whose value reads that way against its norm.
    signs = policy.reason_signs(scores["churn_probability"].to_numpy())
    context = reasons.ReasonContext(peers=reasons.peer_norms(frame, model.feature_names_in_))
    allowed = reasons.reason_eligibility(names, frame, context, signs).T
    pushing = np.where(allowed, contributions.to_numpy() * signs[:, None], -np.inf)
    order = np.argsort(-pushing, axis=1, kind="stable")[:, :3]
    strongest = np.take_along_axis(pushing, order, axis=1)
    expected = np.where(strongest > 0, strongest * signs[:, None], np.nan)
    reported = scores[[f"reason_{k}_contribution" for k in (1, 2, 3)]].to_numpy(dtype=float)
    np.testing.assert_allclose(reported, expected, rtol=1e-9, atol=1e-12)
    expected_features = np.where(strongest > 0, np.asarray(names, dtype=object)[order], None)
    reported_features = scores[[f"reason_{k}_feature" for k in (1, 2, 3)]].astype(object)
    assert reported_features.where(reported_features.notna(), None).to_numpy().tolist() == expected_features.tolist()
    low = scores["risk_band"].to_numpy() == "low"
    assert 0 < low.sum() < len(scores)
    assert (reported[low] < 0).sum() > 0 and not (reported[low] > 0).any()
    assert (reported[~low] > 0).sum() > 0 and not (reported[~low] < 0).any()
    # The filter matters: some large contributions read the other way and are left out.
    assert (~allowed & (contributions.to_numpy() * signs[:, None] > 0)).any()
    # Each customer gets a phrase; one with nothing to say gets the phrase that says so.
    assert scores["reason_1"].str.len().gt(5).all()
    nothing = scores["reason_1_feature"].isna()
    assert (scores.loc[nothing, "reason_1"] == table.NO_RISK_FACTOR).all()


def test_reasons_in_batches_equal_reasons_in_one_go(models, inputs):
    for target in ("repurchase", "churn"):
        model, frame = models[target], inputs[target]
        whole = tree_contributions.churn_reasons(model, frame, 3, batch_size=10_000)
        # With a prior too: it is fitted once on every row, and every batch measures its shares
        # against the same reference customer.
        batched = tree_contributions.churn_reasons(model, frame, 3, batch_size=97)
        np.testing.assert_array_equal(whole.indices, batched.indices)
        np.testing.assert_allclose(whole.contributions, batched.contributions, rtol=0, atol=1e-12)


def test_the_prior_is_no_reason_when_the_model_has_recency_frequency_and_age(scores, models):
    assert {"recency_days", "frequency", "purchase_age_days"} <= set(models["churn"].feature_names_in_)
    named = scores[[f"reason_{k}_feature" for k in (1, 2, 3)]].to_numpy().ravel()
    assert PRIOR not in set(named)
    # Its share went to the behaviours: recency is now among the most frequent first reasons.
    assert "recency_days" in scores["reason_1_feature"].value_counts().head(3).index


@pytest.mark.parametrize("tabulate", [True, False])
def test_the_priors_contribution_goes_to_recency_frequency_and_age(models, inputs, tabulate):
    import copy

    model, frame = copy.copy(models["churn"]), inputs["churn"]
    if not tabulate:
        model.tree_tables_ = None
    plain = tree_contributions.contributions(model, frame, attribute=False)
    split = tree_contributions.contributions(model, frame)
    fixed = model.with_population_prior(frame)
    prior = fixed.prior_log_odds(frame)
    split_up = attribution.attribute_prior(fixed, frame, prior)
    shares = split_up.shares
    # The mixed customers' prior is the model's own: at the customers' own behaviours, their prior.
    inputs = bgnbd_inputs(frame)
    fitted = next(iter(fixed.population_priors_.values()))
    own = [inputs[c].to_numpy() for c in ("x", "t_x", "T")]
    np.testing.assert_allclose(attribution.model_prior(fixed, fitted)(*own), prior, rtol=0, atol=1e-9)
    # With the BG/NBD outputs (expected purchases computed once for the prior and the features),
    # they are the features' own values.
    both = list(attribution.DERIVED_FEATURES)
    outputs = fitted_bgnbd_features(fitted.bgnbd, frame, int(fixed.horizon_days))[both].to_numpy()
    np.testing.assert_allclose(attribution.model_prior(fixed, fitted, both)(*own),
                               np.column_stack([prior, outputs]), rtol=1e-12, atol=1e-9)
    behaviours = ["recency_days", "frequency", "purchase_age_days"]
    # BG/NBD's outputs among the features pass their contribution on to the same behaviours
    # (where they moved from the reference's), the prior its shares.
    derived = {model.feature_names_in_[p]: weights for p, weights in split_up.derived.items()}
    assert set(derived) == {"bgnbd_p_alive", "bgnbd_expected_purchases"}
    moved = plain[behaviours].to_numpy() + shares
    for name, weights in derived.items():
        passed = np.isclose(weights.sum(axis=1), 1.0)
        assert passed.mean() > 0.9 and (passed | (weights == 0).all(axis=1)).all()
        moved += plain[name].to_numpy()[:, None] * weights
        np.testing.assert_allclose(split[name], np.where(passed, 0.0, plain[name]), rtol=0, atol=1e-12)
    np.testing.assert_allclose(split[behaviours].to_numpy(), moved, rtol=0, atol=1e-12)
    others = [c for c in model.feature_names_in_ if c not in behaviours and c not in derived]
    pd.testing.assert_frame_equal(split[others], plain[others], rtol=0, atol=0)
    # Nothing stays with the prior, each row still adds up to the raw score, and the bias is the
    # reference customer's prior, the same for everyone.
    assert (split[PRIOR] == 0).all()
    np.testing.assert_allclose(split.sum(axis=1), model.raw_score(frame), rtol=0, atol=1e-9)
    assert np.ptp(split[BIAS]) < 1e-12 and np.ptp(split[BIAS] - plain[BIAS]) < 1e-12
    # The shares point the way BG/NBD does: a longer silence than the median raises the churn prior.
    recency = frame["recency_days"].to_numpy()
    longer, shorter = recency > 2 * np.nanmedian(recency), recency < np.nanmedian(recency) / 2
    assert (shares[longer, 0] > 0).mean() > 0.9 and (shares[shorter, 0] < 0).mean() > 0.9


def test_a_piece_scored_with_the_populations_norms_and_reference_gets_the_whole_tables_rows(models, inputs, scores,
                                                                                           dataset):
    """What each Spark partition does: the population's BG/NBD fit, reference customer, peers'
    norms and medians, then one piece scored on its own."""
    population = inputs["churn"]
    priors = fit_population_priors(population)
    fixed = {target: model.with_population_prior(population, priors) for target, model in models.items()}
    context = reasons.ReasonContext(horizon_days=90,
                                    peers=reasons.peer_norms(population, models["churn"].feature_names_in_))
    thresholds = segments.value_thresholds(scores["ltv"], scores["repurchase_probability"])
    piece = slice(200, 650)
    rows = table.score_customers({t: frame.iloc[piece] for t, frame in inputs.items()}, fixed, dataset.last_date,
                                 context=context, thresholds=thresholds,
                                 references=attribution.prior_references(population))
    expected = scores.iloc[piece].reset_index(drop=True)
    numbers = [c for c in expected.columns if expected[c].dtype == float]
    pd.testing.assert_frame_equal(rows[numbers], expected[numbers], rtol=1e-9, atol=1e-12)
    texts = ["customer_id", *REASON_COLUMNS[0::3], *REASON_COLUMNS[1::3], "risk_band", "recommended_action"]
    pd.testing.assert_frame_equal(rows[texts], expected[texts], check_dtype=False)
    # Without them, the piece's own norms and reference give other reasons.
    alone = table.score_customers({t: frame.iloc[piece] for t, frame in inputs.items()}, fixed, dataset.last_date,
                                  thresholds=thresholds)
    assert (alone["reason_1"] != expected["reason_1"]).any()


def test_at_most_a_tenth_of_first_reasons_name_a_model(scores):
    """The retention team's rule: a first reason names a behaviour, not a model (BG/NBD, the
    buying pattern, P(alive)), for at least 90% of the customers of the simulated shop."""
    assert reasons.names_a_model(scores["reason_1_feature"], scores["reason_1"]).mean() <= 0.10
    assert scores["reason_1_feature"].notna().mean() > 0.9


def test_top_contributions_keep_only_risk_raising_features():
    values = np.array([[0.5, -1.0, 0.2, 0.9],
                       [-0.1, -0.2, -0.3, -0.4],
                       [0.1, 0.0, 0.0, 0.0],
                       [0.3, 0.3, 0.1, 0.0]])
    indices, chosen = tree_contributions.top_contributions(values, 3)
    assert indices.tolist() == [[3, 0, 2], [-1, -1, -1], [0, -1, -1], [0, 1, 2]]
    np.testing.assert_array_equal(chosen[0], [0.9, 0.5, 0.2])
    assert np.isnan(chosen[1]).all() and np.isnan(chosen[2, 1:]).all()


@pytest.mark.parametrize("n", [1, 3, 7])
def test_top_contributions_by_column_choose_as_by_row(n):
    rng = np.random.default_rng(n)
    # Rounded values make ties; zeros, negatives, NaN and -inf must never be chosen.
    values = np.round(rng.normal(size=(2_000, 5)), 1)
    values[rng.random(values.shape) < 0.05] = np.nan
    values[rng.random(values.shape) < 0.05] = -np.inf
    last = np.round(rng.normal(size=len(values)), 1)
    expected = tree_contributions.top_contributions(np.column_stack([values, last]), n)
    indices, chosen = tree_contributions.top_contributions_by_column(values.T, n, last)
    np.testing.assert_array_equal(indices, expected[0])
    np.testing.assert_array_equal(chosen, expected[1])
    assert (indices[:, 0] == 5).any() and (indices == -1).any()
    without_last = tree_contributions.top_contributions_by_column(values.T, n)
    np.testing.assert_array_equal(without_last[0], tree_contributions.top_contributions(values, n)[0])


@pytest.mark.parametrize("infer_string", [True, False])
def test_text_taken_by_code_is_the_text_converted_value_by_value(infer_string):
    labels = ["recency_days", "tier", "btyd_prior"]
    codes = np.array([2, -1, 0, 0, 1, -1])
    values = np.array([labels[c] if c >= 0 else None for c in codes], dtype=object)
    with pd.option_context("future.infer_string", infer_string):
        taken = pd.Series(table._text_by_code(labels, codes))
        converted = pd.Series(table._text_array(values))
    pd.testing.assert_series_equal(taken, converted)
    assert taken.isna().tolist() == [False, True, False, False, False, True]


# --- bands, segments, actions -------------------------------------------------------------------


def test_risk_bands_follow_the_thresholds():
    bands = policy.risk_band([0.0, 0.29, 0.3, 0.59, 0.6, 1.0], policy.RiskBands(high=0.6, medium=0.3))
    assert bands.tolist() == ["low", "low", "medium", "medium", "high", "high"]
    with pytest.raises(ValueError, match="medium <= high"):
        policy.RiskBands(high=0.2, medium=0.5)


def test_value_segment_splits_at_the_medians():
    ltv = np.array([0.0, 0.0, 0.0, 100.0, 500.0])
    repurchase = np.array([0.9, 0.1, 0.5, 0.8, 0.2])
    labels = segments.predicted_value_segment(ltv, repurchase)
    # The median LTV is 0: customers without value are not high value.
    assert labels.tolist() == ["low_value_high_potential", "low_value_low_potential", "low_value_low_potential",
                                 "high_value_high_potential", "high_value_low_potential"]


def test_value_segment_of_a_piece_uses_the_populations_medians():
    ltv = np.array([0.0, 0.0, 0.0, 100.0, 500.0, 40.0])
    repurchase = np.array([0.9, 0.1, 0.5, 0.8, 0.2, 0.6])
    population = segments.value_thresholds(ltv, repurchase)
    assert (population.ltv, population.repurchase_probability) == (20.0, 0.55)
    whole = segments.predicted_value_segment(ltv, repurchase)
    pieces = np.concatenate([segments.predicted_value_segment(ltv[i:i + 2], repurchase[i:i + 2], population)
                             for i in range(0, len(ltv), 2)])
    assert pieces.tolist() == whole.tolist()
    # Without the population's medians a piece splits at its own.
    assert segments.predicted_value_segment(ltv[3:5], repurchase[3:5]).tolist() != whole[3:5].tolist()


def test_playbook_first_matching_rule_wins():
    rows = pd.DataFrame([
        ("core", "high_value_high_potential", "high", 10.0),     # high value at high risk
        ("dormant", "high_value_low_potential", "high", 50.0),   # high value beats dormant
        ("dormant", "low_value_low_potential", "high", 50.0),    # dormant, past the usual gap
        ("dormant", "low_value_low_potential", "high", 0.0),     # dormant, within it: no win-back
        ("dormant", "low_value_low_potential", "low", -20.0),    # dormant, within it
        ("new", "low_value_high_potential", "medium", -40.0),
        ("one_time", "low_value_low_potential", "high", 5.0),    # one purchase, past the peers' gap
        ("one_time", "low_value_low_potential", "high", -5.0),
        ("basic", "low_value_high_potential", "medium", 12.0),   # overdue and at risk
        ("basic", "low_value_high_potential", "low", 12.0),      # overdue but low risk
        ("potential", "low_value_high_potential", "medium", -3.0),
        ("core", "high_value_high_potential", "low", np.nan),
        ("core", "high_value_high_potential", "medium", np.nan),
        ("basic", "low_value_low_potential", "high", np.nan),    # nothing matches
    ], columns=["tier", "predicted_value_segment", "risk_band", "days_past_usual_gap"])
    actions = policy.recommend_actions(rows)
    assert actions.tolist() == ["dedicated account manager", "dedicated account manager", "win-back offer",
                                "nurture email", "nurture email", "welcome series", "second-purchase offer",
                                "nurture email", "replenishment reminder", "nurture email", "upgrade offer",
                                "loyalty reward", "nurture email", "nurture email"]


def test_the_default_playbook_sends_no_win_back_offer_within_the_usual_gap():
    import itertools

    combos = list(itertools.product(TIERS, VALUE_SEGMENTS, VALUE_SEGMENTS, policy.RISK_BANDS,
                                    [-30.0, -0.5, 0.0, 0.5, 30.0, np.nan]))
    rows = pd.DataFrame(combos, columns=["tier", "value_segment", "predicted_value_segment", "risk_band",
                                         "days_past_usual_gap"])
    win_back = policy.recommend_actions(rows) == "win-back offer"
    assert win_back.any()
    assert (rows.loc[win_back, "days_past_usual_gap"] > 0).all()
    assert set(rows.loc[win_back, "tier"]) == {"dormant"}


def test_days_past_the_usual_gap():
    features = pd.DataFrame({"recency_days": [40.0, 10.0, np.nan, 50.0], "usual_gap_days": [30.0, 35.5, np.nan, np.nan],
                             "days_overdue": [10.0, np.nan, np.nan, np.nan]})
    np.testing.assert_array_equal(policy.days_past_usual_gap(features), [10.0, -25.5, np.nan, np.nan])
    # A feature table written before usual_gap_days: its days_overdue (two purchases or more).
    np.testing.assert_array_equal(policy.days_past_usual_gap(features.drop(columns="usual_gap_days")),
                                  [10.0, np.nan, np.nan, np.nan])
    assert np.isnan(policy.days_past_usual_gap(features[["recency_days"]])).all()


def test_no_scored_customer_gets_a_win_back_offer_within_their_usual_gap(scores, inputs):
    features = inputs["churn"]
    win_back = (scores["recommended_action"] == "win-back offer").to_numpy()
    within = (features["recency_days"] <= features["usual_gap_days"]).to_numpy()
    assert win_back.any() and within.any()
    assert not (win_back & within).any()
    assert set(scores.loc[win_back, "tier"]) == {"dormant"}


def test_playbook_comes_from_config_in_order():
    config = policy.ScoringConfig.from_dict({
        "risk_bands": {"high": 0.7, "medium": 0.4},
        "reasons": 2,
        "playbook": {"call_everyone_at_risk": {"action": "call", "risk_band": ["high", "medium"]},
                     "dormant": {"action": "win-back offer", "tier": ["dormant"]}},
        "default_action": "nothing",
    })
    assert config.n_reasons == 2 and config.risk_bands.high == 0.7
    rows = pd.DataFrame({"tier": ["dormant", "dormant", "core"], "value_segment": ["low_value_low_potential"] * 3,
                         "risk_band": ["high", "low", "low"]})
    assert policy.recommend_actions(rows, config.playbook, config.default_action).tolist() == [
        "call", "win-back offer", "nothing"]
    with pytest.raises(ValueError, match="unknown tier"):
        policy.ScoringConfig.from_dict({"playbook": {"typo": {"action": "x", "tier": ["dormnat"]}}})
    with pytest.raises(ValueError, match="unknown keys"):
        policy.ScoringConfig.from_dict({"playbook": {"typo": {"action": "x", "segment": ["a"]}}})


# --- refusals -----------------------------------------------------------------------------------


def test_as_of_outside_the_data_is_refused(dataset):
    first, last = dataset.first_date, dataset.last_date
    assert dates.resolve_as_of(None, first, last) == last
    assert dates.resolve_as_of(str(first), first, last) == first
    with pytest.raises(ValueError, match="before the first date"):
        dates.resolve_as_of(first - dt.timedelta(days=1), first, last)
    with pytest.raises(ValueError, match="after the last date"):
        dates.resolve_as_of(last + dt.timedelta(days=1), first, last)


def test_feature_table_that_does_not_match_the_model_is_refused(dataset, models):
    features = snapshots.feature_frame(dataset, dataset.last_date)
    with pytest.raises(FeatureMismatchError, match="recency_days"):
        table.model_inputs(features.drop(columns=["recency_days"]), models)
    retyped = features.assign(tier=np.arange(len(features), dtype=float))
    with pytest.raises(FeatureMismatchError, match="tier"):
        table.model_inputs(retyped, models)


def test_models_swapped_between_targets_are_refused(dataset, models):
    features = snapshots.feature_frame(dataset, dataset.last_date)
    with pytest.raises(ValueError, match="predicts 'repurchase'"):
        table.model_inputs(features, {"churn": models["repurchase"], "repurchase": models["churn"]})


# --- writing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_rescoring_the_same_as_of_gives_a_byte_identical_file(dataset, models, tmp_path, fmt):
    paths = []
    for attempt in range(2):
        features = snapshots.feature_frame(dataset, dataset.last_date)
        scores = table.score_customers(table.model_inputs(features, models), models, dataset.last_date)
        paths.append(table.write_scores(scores, tmp_path / f"run{attempt}" / f"scores.{fmt}", fmt))
    assert paths[0].read_bytes() == paths[1].read_bytes()
    back = pd.read_parquet(paths[0]) if fmt == "parquet" else pd.read_csv(paths[0])
    assert list(back.columns) == table.score_columns(3) and len(back) == len(scores)


def test_a_failed_write_leaves_no_file_and_keeps_the_previous_one(scores, tmp_path, monkeypatch):
    target = tmp_path / "as_of=2024-12-30" / "scores.parquet"
    table.write_scores(scores.head(3), target)
    previous = target.read_bytes()

    def write_half_then_fail(frame, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        table.write_scores(scores, target)
    assert target.read_bytes() == previous
    assert [p.name for p in target.parent.iterdir()] == ["scores.parquet"]

    fresh = tmp_path / "fresh" / "scores.parquet"
    with pytest.raises(OSError, match="disk full"):
        table.write_scores(scores, fresh)
    assert not fresh.exists() and list(fresh.parent.iterdir()) == []


def test_unknown_format_is_refused(scores, tmp_path):
    with pytest.raises(ValueError, match="unknown score.format"):
        table.write_scores(scores, tmp_path / "scores.xlsx", "xlsx")
    assert not (tmp_path / "scores.xlsx").exists()


def test_default_output_path_and_model_uris():
    assert table.default_output_path(dt.date(2024, 6, 30)).as_posix() == "scores/as_of=2024-06-30/scores.parquet"
    uris = model_uris({"churn_model_uri": "models:/a@champion", "repurchase_model_uri": "models:/b/3"}, "churnml")
    assert uris == {"churn": "models:/a@champion", "repurchase": "models:/b/3"}
    local = model_uris({"model_dir": "models", "churn_model_uri": "models:/a@champion"}, "shop")
    assert local == {"churn": "models/shop-churn", "repurchase": "models/shop-repurchase"}


def test_summary_counts_bands_and_first_reasons(scores):
    summary = score_summary.summarize(scores)
    assert summary["rows"] == len(scores) == sum(summary["bands"].values())
    assert summary["bands"]["high"] == int((scores["risk_band"] == "high").sum())
    top_feature, top_count = next(iter(summary["top_reasons"].items()))
    assert top_count == scores["reason_1_feature"].value_counts().max()
    text = score_summary.format_summary(summary, dt.date(2024, 12, 30), "scores/x.parquet")
    assert f"scored {len(scores):,} customers" in text and top_feature in text and "scores/x.parquet" in text


# --- tabulated trees ----------------------------------------------------------------------------


def test_tabulated_trees_give_the_models_own_contributions_and_probabilities(models, inputs):
    for target in ("churn", "repurchase"):
        model, frame = models[target], inputs[target]
        tables = tree_contributions.verify_tables(model, frame, tree_contributions.tabulate_model(model))
        assert tables is not None
        raw, contributions = tree_contributions.tabulated_scores(tables, tree_contributions.encode_for_trees(model, frame))
        expected = model.contributions(frame)
        np.testing.assert_allclose(contributions.T, expected[model.feature_names_in_], rtol=0, atol=1e-12)
        assert tables.expected_value + tables.prior_offset == pytest.approx(expected[BIAS].iloc[0], abs=1e-12)
        prior = model.prior_log_odds(frame)
        if model.prior:
            np.testing.assert_allclose(prior - tables.prior_offset, expected[PRIOR], rtol=0, atol=1e-12)
        np.testing.assert_allclose(raw + prior, model.raw_score(frame), rtol=0, atol=1e-12)
        np.testing.assert_allclose(tree_contributions.probability_from_raw_score(model, raw + prior),
                                   model.predict_proba(frame)[:, 1], rtol=0, atol=1e-12)


def test_scores_are_the_same_with_and_without_tabulated_trees(models, inputs, dataset):
    fast = table.score_customers(inputs, models, dataset.last_date)
    slow = table.score_customers(inputs, models, dataset.last_date, policy.ScoringConfig(tabulate_trees=False))
    numbers = [c for c in fast.columns if fast[c].dtype == float]
    pd.testing.assert_frame_equal(fast[numbers], slow[numbers], rtol=1e-9, atol=1e-12)
    texts = [c for c in fast.columns if c not in numbers]
    pd.testing.assert_frame_equal(fast[texts], slow[texts])


def test_models_that_read_the_same_rows_alike_share_one_encoding(models, inputs, dataset, monkeypatch):
    encoded_rows = []
    encode = tree_contributions.encode_for_trees

    def counted(model, frame):
        encoded_rows.append(len(frame))
        return encode(model, frame)

    monkeypatch.setattr(tree_contributions, "encode_for_trees", counted)
    shared = inputs["churn"]
    both = {"churn": shared, "repurchase": shared}
    assert list(models["churn"].feature_names_in_) == list(models["repurchase"].feature_names_in_)
    assert models["churn"].categories_.keys() == models["repurchase"].categories_.keys()
    scores = table.score_customers(both, models, dataset.last_date)
    # The two samples checked against the models are encoded on their own; the whole table once.
    assert encoded_rows.count(len(shared)) == 1
    expected = table.score_customers(both, models, dataset.last_date, policy.ScoringConfig(tabulate_trees=False))
    np.testing.assert_allclose(scores["repurchase_probability"], expected["repurchase_probability"], rtol=1e-9, atol=1e-12)


def synthetic_frame(n: int = 3000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Numbers with zeros and gaps, and a category with gaps: every missing-value rule of LightGBM."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "customer_id": [f"C{i:05d}" for i in range(n)],
        "spend": np.where(rng.random(n) < 0.3, 0.0, rng.gamma(2.0, 50.0, n)),
        "gap": np.where(rng.random(n) < 0.2, np.nan, rng.exponential(30.0, n)),
        "visits": rng.poisson(2.0, n).astype(float),
        "tier": pd.Series(rng.choice(["core", "basic", "dormant", None], n, p=[0.3, 0.3, 0.3, 0.1]), dtype="str"),
    })
    logit = 0.01 * frame["spend"] - 0.03 * frame["gap"].fillna(90) + 0.5 * (frame["tier"] == "core") - 0.2 * frame["visits"]
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame, label


@pytest.mark.parametrize("zero_as_missing", [False, True])
def test_tabulated_trees_follow_lightgbms_missing_value_rules(zero_as_missing):
    frame, label = synthetic_frame()
    estimator = LGBMClassifier(n_estimators=25, num_leaves=7, min_child_samples=10, n_jobs=1, verbose=-1,
                               zero_as_missing=zero_as_missing, deterministic=True, force_row_wise=True, random_state=0)
    model = ChurnModel(estimator, calibration="none", early_stopping_rounds=0).fit(frame, label)
    tables = tree_contributions.tabulate_model(model)
    assert tables is not None and tables.categorical.any()
    assert (tables.missing_type == (1 if zero_as_missing else 2)).any()
    fresh, _ = synthetic_frame(seed=1)
    fresh.loc[fresh.index[:50], "tier"] = "unknown category"
    # Gaps where training had none (missing type None: NaN counts as 0), in the last rows only,
    # so that some blocks of rows hold missing values and others do not.
    fresh.loc[fresh.index[-300:-100], "spend"] = np.nan
    fresh.loc[fresh.index[-150:], "visits"] = np.nan
    expected = model.contributions(fresh)
    for block in (4096, 256):
        raw, contributions = tree_contributions.tabulated_scores(tables, tree_contributions.encode_for_trees(model, fresh), block=block)
        np.testing.assert_allclose(contributions.T, expected[model.feature_names_in_], rtol=0, atol=1e-12)
        np.testing.assert_allclose(raw, model.raw_score(fresh), rtol=0, atol=1e-12)


def test_tabulated_trees_follow_category_splits_past_the_first_64_categories():
    rng = np.random.default_rng(3)
    n = 6000
    stores = np.array([f"store {i:03d}" for i in range(150)], dtype=object)
    frame = pd.DataFrame({
        "customer_id": [f"C{i:05d}" for i in range(n)],
        "store": pd.Series(stores[rng.integers(0, len(stores), n)], dtype="str"),
        "spend": rng.gamma(2.0, 50.0, n),
    })
    # Every third store from the 60th on churns more: splits must list categories beyond 64.
    store_number = frame["store"].str.slice(6).astype(int)
    logit = np.where((store_number >= 60) & (store_number % 3 == 0), 1.5, -1.0) - 0.002 * frame["spend"]
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    estimator = LGBMClassifier(n_estimators=20, num_leaves=7, min_child_samples=10, min_data_per_group=5,
                               cat_smooth=1.0, max_cat_threshold=64, n_jobs=1, verbose=-1, deterministic=True,
                               force_row_wise=True, random_state=0)
    model = ChurnModel(estimator, calibration="none", early_stopping_rounds=0).fit(frame, label)
    tables = tree_contributions.tabulate_model(model)
    assert tables is not None and tables.category_mask.shape[2] > 1
    assert (tables.category_mask[:, :, 1:] != 0).any()
    fresh = frame.sample(frac=1.0, random_state=1).reset_index(drop=True)
    fresh.loc[fresh.index[:40], "store"] = "a store opened after training"
    fresh.loc[fresh.index[40:80], "store"] = None
    raw, contributions = tree_contributions.tabulated_scores(tables, tree_contributions.encode_for_trees(model, fresh))
    expected = model.contributions(fresh)
    np.testing.assert_allclose(contributions.T, expected[model.feature_names_in_], rtol=0, atol=1e-12)
    np.testing.assert_allclose(raw, model.raw_score(fresh), rtol=0, atol=1e-12)


def test_tables_are_kept_on_the_model_only_when_asked_and_a_refit_drops_them():
    import pickle

    frame, label = synthetic_frame()
    estimator = LGBMClassifier(n_estimators=10, num_leaves=7, min_child_samples=10, n_jobs=1, verbose=-1,
                               deterministic=True, force_row_wise=True, random_state=0)
    model = ChurnModel(estimator, calibration="none", early_stopping_rounds=0).fit(frame, label)
    tables = tree_contributions.tabulate_model(model)
    assert tables is not None and not hasattr(model, "tree_tables_")
    assert tree_contributions.attach_tree_tables(model) is None
    assert isinstance(model.tree_tables_, tree_contributions.TreeTables)
    assert model.tree_tables_.output.tobytes() == tables.output.tobytes()
    shipped = pickle.loads(pickle.dumps(model))
    assert shipped.tree_tables_.output.tobytes() == tables.output.tobytes()
    model.fit(frame, 1 - label)
    assert not hasattr(model, "tree_tables_")
    refitted = tree_contributions.tabulate_model(model)
    np.testing.assert_allclose(tree_contributions.tabulated_scores(refitted, tree_contributions.encode_for_trees(model, frame))[0],
                               model.raw_score(frame), rtol=0, atol=1e-12)


def test_a_trained_model_carries_its_tables_and_scores_with_them(models, inputs, monkeypatch):
    import pickle

    for model in models.values():
        assert isinstance(model.tree_tables_, tree_contributions.TreeTables)
        assert len(model.tree_tables_.n_splits) == model.estimator_.booster_.num_trees()
    shipped = pickle.loads(pickle.dumps(models["churn"]))

    def tabulate_again(*args):
        raise AssertionError("a trained model should arrive tabulated")

    monkeypatch.setattr(tree_contributions, "_tabulated_trees", tabulate_again)
    assert tree_contributions.with_tree_tables(shipped) is shipped
    frame = inputs["churn"]
    scores = tree_contributions.model_scores(shipped, frame, n_reasons=3)
    np.testing.assert_allclose(scores.probability, shipped.predict_proba(frame)[:, 1], rtol=0, atol=1e-12)
    assert scores.reasons.indices.shape == (len(frame), 3)


def test_a_fold_model_is_not_tabulated():
    template = ChurnModel(small_lightgbm(), calibration="none", early_stopping_rounds=0)
    assert not hasattr(fit_model(template, untabulatable_table(), keep_reference=False), "tree_tables_")


def test_a_model_pickled_with_the_former_private_tables_still_scores(models, inputs):
    import copy

    model, frame = models["churn"], inputs["churn"]
    former = copy.copy(model)
    del former.tree_tables_
    # What tabulate_model used to leave on a model: (key, booster, tables).
    former._tree_tables = (("a key of another layout",), None, None)
    expected = tree_contributions.model_scores(model, frame, n_reasons=3)
    scores = tree_contributions.model_scores(former, frame, n_reasons=3)
    np.testing.assert_array_equal(scores.probability, expected.probability)
    np.testing.assert_array_equal(scores.reasons.indices, expected.reasons.indices)
    assert not hasattr(former, "tree_tables_")
    shipped = tree_contributions.with_tree_tables(former)
    assert shipped is not former and not hasattr(shipped, "_tree_tables")
    assert shipped.tree_tables_.output.tobytes() == model.tree_tables_.output.tobytes()


def untabulatable_table(n_per_cutoff: int = 3000) -> pd.DataFrame:
    """Two snapshots of the synthetic rows, enough for trees of many leaves."""
    frames = []
    for k, cutoff in enumerate(("2024-05-31", "2024-06-30")):
        frame, label = synthetic_frame(n_per_cutoff, seed=10 + k)
        frames.append(frame.assign(cutoff=pd.Timestamp(cutoff), label=label))
    return pd.concat(frames, ignore_index=True)


def test_training_warns_about_trees_too_large_to_tabulate(caplog):
    table = untabulatable_table()
    template = ChurnModel(LGBMClassifier(n_estimators=20, num_leaves=31, min_child_samples=5, n_jobs=1, verbose=-1,
                                         deterministic=True, force_row_wise=True, random_state=0),
                          calibration="sigmoid", early_stopping_rounds=0)
    with caplog.at_level("WARNING", logger="churnml.models.training"):
        model = fit_model(template, table)
    largest = max(t["num_leaves"] for t in model.estimator_.booster_.dump_model()["tree_info"])
    assert largest > 9
    note = tree_contributions.tabulation_note(model)
    assert note and f"trees of up to {largest} leaves" in note and "at most 9 leaves" in note and "pred_contrib" in note
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and r.name == "churnml.models.training"]
    assert len(warnings) == 1 and note in warnings[0].getMessage()
    assert model.tree_tables_ is None
    small = ChurnModel(small_lightgbm(), calibration="sigmoid", early_stopping_rounds=0)
    caplog.clear()
    with caplog.at_level("WARNING", logger="churnml.models.training"):
        tabulated = fit_model(small, table)
    assert tree_contributions.tabulation_note(tabulated) is None and tabulated.tree_tables_ is not None
    assert not [r for r in caplog.records if r.name == "churnml.models.training"]


def test_large_trees_and_linear_models_use_the_models_own_methods():
    frame, label = synthetic_frame()
    large = ChurnModel(LGBMClassifier(n_estimators=5, num_leaves=31, min_child_samples=5, n_jobs=1, verbose=-1),
                       calibration="none", early_stopping_rounds=0).fit(frame, label)
    assert max(t["num_leaves"] for t in large.estimator_.booster_.dump_model()["tree_info"]) > 9
    assert tree_contributions.tabulate_model(large) is None
    from sklearn.linear_model import LogisticRegression

    linear = ChurnModel(LogisticRegression(max_iter=500), preprocessing="scaled", calibration="none").fit(frame, label)
    assert tree_contributions.tabulate_model(linear) is None
    for model in (large, linear):
        scores = tree_contributions.model_scores(model, frame, n_reasons=2)
        np.testing.assert_allclose(scores.probability, model.predict_proba(frame)[:, 1])
        assert scores.reasons.indices.shape == (len(frame), 2)


def test_probabilities_alone_are_checked_on_probabilities_alone(models, inputs, monkeypatch):
    model, frame = models["repurchase"], inputs["repurchase"]
    tables = tree_contributions.tabulate_model(model)

    def no_contributions(*args, **kwargs):
        raise AssertionError("contributions are not needed for probabilities")

    monkeypatch.setattr(type(model), "contributions", no_contributions)
    assert tree_contributions.verify_tables(model, frame, tables, with_contributions=False) is not None
    shifted = replace(tables, output=tables.output + 0.01)
    assert tree_contributions.verify_tables(model, frame, shifted, with_contributions=False) is None
    scores = tree_contributions.model_scores(model, frame)
    np.testing.assert_allclose(scores.probability, model.predict_proba(frame)[:, 1], rtol=0, atol=1e-12)


def test_tables_that_disagree_with_the_model_are_not_used(models, inputs, caplog):
    import copy

    model, frame = copy.copy(models["churn"]), inputs["churn"]
    model.tree_tables_ = replace(model.tree_tables_, expected_value=model.tree_tables_.expected_value + 0.01)
    with caplog.at_level("WARNING", logger="churnml.models.contributions"):
        scores = tree_contributions.model_scores(model, frame, n_reasons=3)
    assert "tabulated trees differ from the model" in caplog.text
    np.testing.assert_allclose(scores.probability, model.predict_proba(frame)[:, 1], rtol=0, atol=1e-15)
    caplog.clear()
    with caplog.at_level("WARNING", logger="churnml.models.contributions"):
        values = tree_contributions.contributions(model, frame)
    assert "tabulated trees differ from the model" in caplog.text
    pd.testing.assert_frame_equal(values, attributed(model, frame), rtol=0, atol=0)


def test_explain_scores_are_the_batch_path(dataset, models, inputs):
    """What the notebooks compute without a scores file is what churnml-score writes."""
    features = explain.feature_frame(dataset, None)
    pd.testing.assert_frame_equal(features, snapshots.feature_frame(dataset, dataset.last_date))
    config = policy.ScoringConfig(risk_bands=policy.RiskBands(high=0.5, medium=0.2), n_reasons=2)
    expected = table.score_customers(inputs, models, dataset.last_date, config)
    pd.testing.assert_frame_equal(explain.score_frame(features, models, config), expected)
    assert set(expected["risk_band"]) == {"high", "medium", "low"}


def test_the_value_segment_of_a_score_row_is_the_one_its_reasons_quote(inputs, scores):
    """One value_segment: the feature's, which the model can quote; the score-time view has its own name."""
    features = inputs["churn"].set_index("customer_id")
    rows = scores.set_index("customer_id")
    assert rows["value_segment"].tolist() == features.loc[rows.index, "value_segment"].tolist()
    said = reasons.describe("value_segment", features.head(50))
    assert (said.str.removeprefix("segment: ").str.replace(" ", "_") == features["value_segment"].head(50)).all()
    for k in (1, 2, 3):
        quoted = rows[rows[f"reason_{k}_feature"] == "value_segment"]
        phrases = quoted[f"reason_{k}"].str.removeprefix("segment: ").str.replace(" ", "_")
        assert phrases.tolist() == quoted["value_segment"].tolist()


# --- contributions --------------------------------------------------------------------------------


def rows_scored_by_tables(monkeypatch) -> list[tuple[int, bool]]:
    """Record (rows, with contributions) of every call of the table kernel."""
    calls: list[tuple[int, bool]] = []
    tabulated_scores = tree_contributions.tabulated_scores

    def recorded(tables, features, with_contributions=True, *args, **kwargs):
        calls.append((features.shape[1], with_contributions))
        return tabulated_scores(tables, features, with_contributions, *args, **kwargs)

    monkeypatch.setattr(tree_contributions, "tabulated_scores", recorded)
    return calls


@pytest.mark.parametrize("target", ["churn", "repurchase"])
def test_contributions_are_the_models_own_with_and_without_tables(models, inputs, target, monkeypatch):
    import copy

    model, frame = models[target], inputs[target]
    expected = attributed(model, frame)
    assert list(expected.columns) == [*model.feature_names_in_, *([PRIOR] if model.prior else []), BIAS]
    calls = rows_scored_by_tables(monkeypatch)
    fast = tree_contributions.contributions(model, frame, threads=1)
    assert (len(frame), True) in calls
    pd.testing.assert_frame_equal(fast, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fast.sum(axis=1), model.raw_score(frame), rtol=0, atol=1e-9)
    as_the_model = tree_contributions.contributions(model, frame, threads=1, attribute=False)
    pd.testing.assert_frame_equal(as_the_model, model.contributions(frame), rtol=0, atol=1e-9)

    untabulated = copy.copy(model)
    untabulated.tree_tables_ = None
    calls.clear()
    slow = tree_contributions.contributions(untabulated, frame)
    assert calls == []
    pd.testing.assert_frame_equal(slow, expected, rtol=0, atol=0)
    # Tables given explicitly are used (and checked) even when the model has none.
    given = tree_contributions.contributions(untabulated, frame, tables=model.tree_tables_)
    assert (len(frame), True) in calls
    pd.testing.assert_frame_equal(given, expected, rtol=0, atol=1e-9)


def test_contributions_without_numba_are_the_models_own(models, inputs, monkeypatch):
    import importlib.util

    model, frame = models["churn"], inputs["churn"]
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numba" else find_spec(name, *a))
    calls = rows_scored_by_tables(monkeypatch)
    pd.testing.assert_frame_equal(tree_contributions.contributions(model, frame), attributed(model, frame),
                                  rtol=0, atol=0)
    assert calls == []


# --- who gets reasons -----------------------------------------------------------------------------


REASON_COLUMNS = [c for k in (1, 2, 3) for c in (f"reason_{k}", f"reason_{k}_feature", f"reason_{k}_contribution")]


def assert_same_apart_from_reasons(limited: pd.DataFrame, everyone: pd.DataFrame, chosen: np.ndarray) -> None:
    """Probabilities, bands, segments and actions as for everyone; the chosen rows' reasons exactly
    those they get when everyone gets reasons, and the other rows none."""
    others = np.setdiff1d(np.arange(len(everyone)), chosen)
    assert limited.iloc[others][REASON_COLUMNS].isna().all().all()
    pd.testing.assert_frame_equal(limited.iloc[chosen][REASON_COLUMNS], everyone.iloc[chosen][REASON_COLUMNS],
                                  check_exact=True)
    rest = [c for c in everyone.columns if c not in REASON_COLUMNS]
    numbers = ["churn_probability", "repurchase_probability"]
    pd.testing.assert_frame_equal(limited[numbers], everyone[numbers], rtol=0, atol=1e-12)
    pd.testing.assert_frame_equal(limited[[c for c in rest if c not in numbers]],
                                  everyone[[c for c in rest if c not in numbers]])


@pytest.mark.parametrize("tabulate", [True, False])
def test_actionable_reasons_are_those_of_everyone_for_the_high_and_medium_bands(models, inputs, dataset, tabulate,
                                                                                  monkeypatch):
    config = policy.ScoringConfig(tabulate_trees=tabulate)
    everyone = table.score_customers(inputs, models, dataset.last_date, config)
    chosen = np.flatnonzero(everyone["risk_band"].to_numpy() != "low")
    assert 0 < len(chosen) < len(everyone) - 10
    calls = rows_scored_by_tables(monkeypatch)
    contribution_rows = []
    own = ChurnModel.contributions

    def counted(self, frame):
        contribution_rows.append(len(frame))
        return own(self, frame)

    monkeypatch.setattr(ChurnModel, "contributions", counted)
    actionable = table.score_customers(inputs, models, dataset.last_date, replace(config, reasons_for="actionable"))
    assert_same_apart_from_reasons(actionable, everyone, chosen)
    # Contributions of the chosen rows only (besides the rows checked against the model).
    sample = min(tree_contributions.VERIFICATION_ROWS, len(everyone))
    if tabulate:
        assert sorted(n for n, with_contributions in calls if with_contributions) == sorted([sample, len(chosen)])
        assert contribution_rows == [sample]
    else:
        assert calls == [] and contribution_rows == [len(chosen)]


@pytest.mark.parametrize("tabulate", [True, False])
def test_top_fraction_reasons_go_to_the_riskiest_share(models, inputs, dataset, tabulate):
    config = policy.ScoringConfig(tabulate_trees=tabulate)
    everyone = table.score_customers(inputs, models, dataset.last_date, config)
    fraction = 0.15
    top = table.score_customers(inputs, models, dataset.last_date,
                                replace(config, reasons_for="top_fraction", reasons_top_fraction=fraction))
    explained = np.flatnonzero(top["reason_1"].notna().to_numpy())
    assert len(explained) == math.ceil(fraction * len(everyone)) == policy.top_count(len(everyone), fraction)
    probability = top["churn_probability"].to_numpy()
    others = np.setdiff1d(np.arange(len(top)), explained)
    assert probability[explained].min() >= probability[others].max()
    np.testing.assert_array_equal(explained, policy.riskiest_rows(probability, fraction))
    assert_same_apart_from_reasons(top, everyone, explained)
    whole = table.score_customers(inputs, models, dataset.last_date, replace(config, reasons_for="top_fraction",
                                                                            reasons_top_fraction=1.0))
    pd.testing.assert_frame_equal(whole[REASON_COLUMNS], everyone[REASON_COLUMNS], check_exact=True)


def test_top_count_is_the_ceiling_of_the_share_and_ties_go_to_earlier_customers():
    assert [policy.top_count(10, f) for f in (0.7, 0.71, 0.1, 1.0)] == [7, 8, 1, 10]
    assert policy.top_count(3, 0.2) == 1 and policy.top_count(0, 0.5) == 0 and policy.top_count(1001, 0.2) == 201
    probability = np.array([0.5, 0.9, 0.5, np.nan, 0.5, 0.1])
    np.testing.assert_array_equal(policy.riskiest_rows(probability, 0.5), [0, 1, 2])
    np.testing.assert_array_equal(policy.riskiest_rows(probability, 0.6), [0, 1, 2, 4])
    np.testing.assert_array_equal(policy.riskiest_rows(probability, 1.0), np.arange(6))


def test_reasons_for_is_validated_and_read_from_the_config():
    for bad in ("everyone", "top", ""):
        with pytest.raises(ValueError, match=r"score\.reasons_for must be one of all, actionable, top_fraction"):
            policy.ScoringConfig(reasons_for=bad)
    with pytest.raises(ValueError, match=r"score\.reasons_for .* got 'Actionable'"):
        policy.ScoringConfig.from_dict({"reasons_for": "Actionable"})
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"score\.reasons_top_fraction must be in \(0, 1\]"):
            policy.ScoringConfig(reasons_for="top_fraction", reasons_top_fraction=bad)
    config = policy.ScoringConfig.from_dict({"reasons_for": "top_fraction", "reasons_top_fraction": 0.35})
    assert (config.reasons_for, config.reasons_top_fraction) == ("top_fraction", 0.35)
    assert policy.ScoringConfig.from_dict({}).reasons_for == "all"


def test_the_score_table_carries_the_membership_level_and_the_gap_to_the_next(dataset, models, scores):
    # Without levels (the default) the columns are there, empty.
    assert scores["membership_level"].isna().all() and scores["next_level_spend_gap"].isna().all()
    # Models trained without levels score a feature table with them.
    config = FeatureConfig(levels=LevelConfig(enabled=True))
    inputs = table.model_inputs(snapshots.feature_frame(dataset, dataset.last_date, config), models)
    with_levels = table.score_customers(inputs, models, dataset.last_date)
    pd.testing.assert_frame_equal(with_levels.drop(columns=[*table.LEVEL_COLUMNS, "recommended_action"]),
                                  scores.drop(columns=[*table.LEVEL_COLUMNS, "recommended_action"]).assign(
                                      churn_model_name="churn", churn_model_version="unknown",
                                      repurchase_model_name="repurchase", repurchase_model_version="unknown"))
    features = inputs["churn"].set_index("customer_id")
    rows = with_levels.set_index("customer_id")
    assert rows["membership_level"].tolist() == features.loc[rows.index, "membership_level"].tolist()
    assert {"normal", "silver", "gold"} <= set(rows["membership_level"])
    for column in ("next_level_spend_gap", "next_level_repurchase_gap"):
        np.testing.assert_array_equal(rows[column].to_numpy(dtype=float), features.loc[rows.index, column].to_numpy(dtype=float))
    # The top level has no next one; below it a gap is never negative.
    top = rows["membership_level"] == "diamond"
    assert rows.loc[top, "next_level_spend_gap"].isna().all() and (rows.loc[~top, "next_level_spend_gap"] >= 0).all()
    at_risk = features.loc[rows.index, "downgrade_at_risk"].to_numpy(dtype=bool)
    assert (rows.loc[at_risk, "recommended_action"] != "nurture email").all()
