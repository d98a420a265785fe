"""Population stability: reference profiles and PSI against them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from churnml.evaluation import drift


def customers(n: int, seed: int, recency_shift: float = 0.0, vip_share: float = 0.2) -> pd.DataFrame:
    """A feature-like table: a skewed number, a mostly-zero count, a category, a flag, gaps."""
    rng = np.random.default_rng(seed)
    recency = rng.exponential(40.0, n) + recency_shift
    gap = rng.gamma(2.0, 15.0, n)
    gap[rng.random(n) < 0.3] = np.nan
    return pd.DataFrame({
        "recency_days": recency,
        "orders_30d": rng.poisson(0.3, n),
        "mean_gap_days": gap,
        "tier": rng.choice(["core", "basic", "dormant"], n, p=[vip_share, 0.5, 0.5 - vip_share]),
        "no_repurchase_3m": recency > 90,
    })


COLUMNS = ["recency_days", "orders_30d", "mean_gap_days", "tier", "no_repurchase_3m"]


@pytest.fixture(scope="module")
def reference() -> dict:
    frame = customers(5000, seed=1)
    return drift.profile(frame, COLUMNS, score=1 / (1 + np.exp(-(frame["recency_days"] - 60) / 20)))


def test_profile_is_small_plain_and_adds_up(reference):
    text = json.dumps(reference)
    assert len(text) < 5000
    assert reference["n_rows"] == 5000 and set(reference["columns"]) == set(COLUMNS)
    recency = reference["columns"]["recency_days"]
    assert recency["kind"] == "numeric" and len(recency["edges"]) == 9 and len(recency["proportions"]) == 10
    assert sum(recency["proportions"]) + recency["missing"] == pytest.approx(1.0)
    gap = reference["columns"]["mean_gap_days"]
    assert gap["missing"] == pytest.approx(0.3, abs=0.03)
    # Most customers have no order in 30 days: the tied quantiles merge into fewer bins.
    assert len(reference["columns"]["orders_30d"]["edges"]) < 9
    tier = reference["columns"]["tier"]
    assert tier["kind"] == "categorical" and sum(tier["shares"].values()) == pytest.approx(1.0)
    assert set(reference["columns"]["no_repurchase_3m"]["shares"]) == {"True", "False"}
    assert reference["score"]["kind"] == "numeric"


def test_same_population_is_stable(reference):
    fresh = customers(5000, seed=2)
    values = drift.psi(reference, fresh, score=1 / (1 + np.exp(-(fresh["recency_days"] - 60) / 20)))
    assert list(values.index) == [*COLUMNS, drift.SCORE]
    assert (values < 0.02).all(), values


def test_shifted_feature_drifts_and_the_others_do_not(reference):
    shifted = customers(5000, seed=3, recency_shift=30.0)
    values = drift.psi(reference, shifted, score=1 / (1 + np.exp(-(shifted["recency_days"] - 60) / 20)))
    assert values["recency_days"] > 0.5
    assert values[drift.SCORE] > 0.2
    assert values["no_repurchase_3m"] > 0.1
    assert values[["orders_30d", "mean_gap_days", "tier"]].max() < 0.02
    alerts = drift.drifted(values, 0.2)
    assert list(alerts.index[:1]) == ["recency_days"] and "tier" not in alerts.index
    assert alerts.is_monotonic_decreasing


def test_category_shift_and_unseen_categories_drift(reference):
    more_vips = customers(5000, seed=4, vip_share=0.45)
    assert drift.psi(reference, more_vips)["tier"] > 0.2
    renamed = customers(5000, seed=5)
    renamed["tier"] = renamed["tier"].replace({"core": "gold"})
    assert drift.psi(reference, renamed)["tier"] > 0.5


def test_a_feature_that_goes_missing_drifts(reference):
    broken = customers(5000, seed=6)
    broken.loc[broken.index[:2500], "recency_days"] = np.nan
    assert drift.psi(reference, broken)["recency_days"] > 0.5


def test_score_is_compared_only_when_both_sides_have_one(reference):
    frame = customers(1000, seed=7)
    assert drift.SCORE not in drift.psi(reference, frame).index
    without = drift.profile(frame, ["tier"])
    assert "score" not in without
    assert list(drift.psi(without, frame, score=np.zeros(len(frame))).index) == ["tier"]


def test_missing_column_and_empty_table(reference):
    frame = customers(100, seed=8).drop(columns=["tier"])
    assert np.isnan(drift.psi(reference, frame)["tier"])
    assert drift.psi(reference, frame.iloc[:0]).isna().all()
    with pytest.raises(KeyError, match="tier"):
        drift.profile(frame, ["tier"])


def test_psi_of_known_shares():
    # Shares (0.5, 0.5) against (0.25, 0.75): 0.25 ln 2 + 0.25 ln(1.5) ... by the formula.
    expected = (0.25 - 0.5) * np.log(0.25 / 0.5) + (0.75 - 0.5) * np.log(0.75 / 0.5)
    assert drift.population_stability(np.array([0.5, 0.5]), np.array([0.25, 0.75])) == pytest.approx(expected)
    assert drift.population_stability(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0


def psi_series(score: float, **features: float) -> pd.Series:
    return pd.Series({**features, drift.SCORE: score}, dtype=float)


def test_a_population_near_its_reference_is_not_refused():
    # Ageing alone: one feature far past the reporting threshold, the score stable.
    values = psi_series(0.05, tenure_days=1.4, recency_days=0.3, frequency=0.01, monetary=0.02)
    assert drift.population_refusal(values, stop_psi=1.0, stop_share=0.5) is None


def test_a_score_far_from_its_reference_is_refused_naming_the_worst_features():
    values = psi_series(1.44, avg_order_value=5.71, ltv=2.96, frequency=0.1, recency_days=0.4)
    reason = drift.population_refusal(values, stop_psi=1.0, stop_share=0.5, n_named=2)
    assert reason == "score PSI 1.44 > 1; 2 of 4 features > 1, worst avg_order_value 5.71, ltv 2.96"


def test_most_features_far_from_their_reference_are_refused_even_with_a_stable_score():
    values = psi_series(0.1, a=3.0, b=2.0, c=1.5, d=0.1, e=float("nan"))
    reason = drift.population_refusal(values, stop_psi=1.0, stop_share=0.5)
    assert reason is not None and "3 of 4 features > 1" in reason and reason.index("a 3.00") < reason.index("b 2.00")
    # Half is not most.
    assert drift.population_refusal(psi_series(0.1, a=3.0, b=2.0, c=0.1, d=0.1), 1.0, 0.5) is None
    # Without a score profile the features alone decide.
    assert drift.population_refusal(pd.Series({"a": 3.0, "b": 0.1}), 1.0, 0.4).startswith("1 of 2 features")
