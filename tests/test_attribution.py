"""The BTYD prior split over recency, frequency and age: exact Shapley shares on hand-made
customers of a hand-set BG/NBD."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from lifetimes import BetaGeoFitter

from churnml.models import attribution
from churnml.models.btyd import bgnbd_probability

HORIZON = 90


@pytest.fixture
def bgnbd() -> BetaGeoFitter:
    model = BetaGeoFitter()
    model.params_ = pd.Series({"r": 0.8, "alpha": 6.0, "a": 0.6, "b": 2.5})
    return model


def log_odds(model, x, t_x, age, target="churn") -> np.ndarray:
    frame = pd.DataFrame({"x": np.atleast_1d(x).astype(float), "t_x": np.atleast_1d(t_x).astype(float),
                          "T": np.atleast_1d(age).astype(float)})
    p = np.clip(bgnbd_probability(model, frame, HORIZON, target), 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def prior_of(model, target="churn"):
    """BG/NBD's own log-odds as the prior (a model without a blend)."""
    return lambda x, t_x, age: log_odds(model, x, t_x, age, target)


# Weeks: x repeat purchases, t_x time of the last purchase, T age.
CUSTOMERS = pd.DataFrame({"x": [0.0, 2.0, 6.0, 1.0, 3.0], "t_x": [0.0, 10.0, 50.0, 5.0, 20.0],
                          "T": [30.0, 60.0, 52.0, 70.0, 20.0]})
REFERENCE = attribution.PriorReference(x=2.0, recency=12.0, age=40.0)


def by_permutations(model, row, reference, target="churn") -> np.ndarray:
    """Shapley values by their definition: each player's marginal value averaged over the six orders."""
    own = {"recency": row.T - row.t_x, "frequency": row.x, "age": row.T}
    base = {"recency": reference.recency, "frequency": reference.x, "age": reference.age}

    def value(players) -> float:
        chosen = {p: (own if p in players else base)[p] for p in own}
        t_x = min(max(chosen["age"] - chosen["recency"], 0.0), chosen["age"])
        return float(log_odds(model, chosen["frequency"], t_x, chosen["age"], target)[0])

    shares = dict.fromkeys(own, 0.0)
    orders = list(itertools.permutations(own))
    for order in orders:
        for k, player in enumerate(order):
            shares[player] += (value(order[:k + 1]) - value(order[:k])) / len(orders)
    return np.array([shares[p] for p in attribution.BEHAVIOURS])


@pytest.mark.parametrize("target", ["churn", "repurchase"])
def test_shares_are_the_shapley_values_and_add_up_to_the_prior(bgnbd, target):
    prior = log_odds(bgnbd, CUSTOMERS.x, CUSTOMERS.t_x, CUSTOMERS["T"], target)
    shares, reference_prior = attribution.bgnbd_shares(prior_of(bgnbd, target), CUSTOMERS, prior, REFERENCE)
    assert shares.shape == (len(CUSTOMERS), 3)
    np.testing.assert_allclose(shares.sum(axis=1), prior - reference_prior, rtol=0, atol=1e-12)
    assert reference_prior == pytest.approx(log_odds(bgnbd, REFERENCE.x, REFERENCE.age - REFERENCE.recency,
                                                     REFERENCE.age, target)[0], abs=1e-15)
    for i, row in enumerate(CUSTOMERS.itertuples()):
        np.testing.assert_allclose(shares[i], by_permutations(bgnbd, row, REFERENCE, target), rtol=0, atol=1e-12)


def test_a_customer_like_the_reference_in_all_but_one_behaviour_owes_it_all(bgnbd):
    like = pd.DataFrame({"x": [2.0, 5.0, 2.0, 2.0], "t_x": [28.0, 28.0, 8.0, 48.0], "T": [40.0, 40.0, 40.0, 60.0]})
    prior = log_odds(bgnbd, like.x, like.t_x, like["T"])
    shares, reference_prior = attribution.bgnbd_shares(prior_of(bgnbd), like, prior, REFERENCE)
    # The reference itself; more purchases; a longer silence (32 weeks); an older customer with the reference's recency.
    np.testing.assert_allclose(shares[0], 0.0, atol=1e-12)
    for row, behaviour in ((1, 1), (2, 0), (3, 2)):
        others = [b for b in range(3) if b != behaviour]
        np.testing.assert_allclose(shares[row, others], 0.0, atol=1e-12)
        assert shares[row, behaviour] == pytest.approx(prior[row] - reference_prior, abs=1e-12)
    # More purchases lower the churn prior; a longer silence raises it.
    assert shares[1, 1] < 0 < shares[2, 0]


def test_a_silence_longer_than_the_reference_age_stays_a_sensible_customer(bgnbd):
    # 100 weeks without a purchase, against a reference known for 40 weeks: the mixed customers
    # who cannot exist (last purchase before the first) bought once, at the start.
    old = pd.DataFrame({"x": [3.0], "t_x": [10.0], "T": [110.0]})
    prior = log_odds(bgnbd, old.x, old.t_x, old["T"])
    shares, reference_prior = attribution.bgnbd_shares(prior_of(bgnbd), old, prior, REFERENCE)
    assert np.isfinite(shares).all()
    assert shares.sum() == pytest.approx(prior[0] - reference_prior, abs=1e-12)
    assert shares[0, 0] > 0


def test_the_reference_is_the_median_customer_of_each_cutoff():
    features = pd.DataFrame({
        "frequency": [1, 3, 5, 0, 2, 4],
        "repeat_orders": [0, 2, 4, 0, 1, 3],
        "purchase_span_days": [0.0, 70.0, 140.0, np.nan, 14.0, 35.0],
        "purchase_age_days": [70.0, 140.0, 210.0, np.nan, 28.0, 49.0],
        "tenure_days": [70.0, 140.0, 210.0, 21.0, 28.0, 49.0],
        "cutoff": pd.to_datetime(["2024-06-30"] * 3 + ["2024-03-31"] * 3),
        "recency_days": [70.0, 70.0, 70.0, np.nan, 14.0, 14.0],
    })
    references = attribution.prior_references(features)
    assert set(references) == {"2024-06-30", "2024-03-31"}
    june = references["2024-06-30"]
    assert (june.x, june.recency, june.age) == (2.0, 10.0, 20.0)
    # A customer with refunds only counts as a one-time buyer known for their tenure (3 weeks).
    march = references["2024-03-31"]
    assert (march.x, march.recency, march.age) == (1.0, 2.0, 4.0)


def test_each_behaviour_goes_to_the_feature_that_measures_it():
    assert attribution.behaviour_features(["tenure_days", "recency_days", "repeat_orders", "frequency"]) == (1, 3, 0)
    assert attribution.behaviour_features(["recency_days", "purchase_age_days", "tenure_days"]) == (0, -1, 1)
    assert attribution.behaviour_features(["monetary_total"]) == (-1, -1, -1)


def test_a_bgnbd_outputs_contribution_goes_to_the_behaviours_that_moved_it():
    shares = np.array([[0.6, 0.3, 0.1],     # all one way: in proportion (the rescale rule)
                       [-0.4, -0.1, 0.0],   # all the other way: the same
                       [0.7, -0.3, 0.0],    # opposed: to the one that moved it the way it went
                       [0.2, -0.5, 0.1],
                       [0.5, 0.5, -1.0],    # no net change: stays
                       [np.nan, 0.1, 0.2]])  # no value: stays
    parts = attribution.passed_on(shares)
    np.testing.assert_allclose(parts[0], [0.6, 0.3, 0.1])
    np.testing.assert_allclose(parts[1], [0.8, 0.2, 0.0])
    np.testing.assert_allclose(parts[2], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(parts[3], [0.0, 1.0, 0.0])
    assert (parts[4:] == 0).all()
    np.testing.assert_allclose(parts[:4].sum(axis=1), 1.0)
    assert ((parts >= 0) & (parts <= 1)).all()


def test_several_games_share_their_coalitions():
    rng = np.random.default_rng(3)
    table = rng.normal(size=(8, 5, 2))

    def game(coalition):
        return table[sum(bit << i for i, bit in enumerate(coalition))]

    together = attribution.shapley_shares(game, 5)
    assert together.shape == (5, 3, 2)
    for k in range(2):
        alone = attribution.shapley_shares(lambda c, k=k: game(c)[:, k], 5)
        np.testing.assert_allclose(together[:, :, k], alone, rtol=0, atol=1e-15)
    np.testing.assert_allclose(together.sum(axis=1), table[7] - table[0], rtol=0, atol=1e-12)
