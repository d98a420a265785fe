"""The population's norms: one customer's features, computed on their own events with the norms
of everyone, equal their row of the whole table (what the online scorer relies on)."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import re

import ibis
import numpy as np
import pandas as pd
import pytest

from churnml.features.build import FeatureConfig, PopulationNorms, build_features, population_norms, to_frame
from churnml.features.segments import RANKED_TIERS, SegmentConfig
from churnml.io.load import Dataset
from conftest import frame_dataset


def one_customer(dataset: Dataset, customer_id: str, facts: dict) -> Dataset:
    """The data set's tables filtered to one customer, with the whole data set's facts."""
    tables = {name: getattr(dataset, name) for name in ("transactions", "interactions", "customers", "surveys",
                                                        "treatments")}
    filtered = {name: None if table is None else table.filter(table.customer_id == customer_id)
                for name, table in tables.items()}
    return dataclasses.replace(dataset, **filtered, facts=copy.deepcopy(facts))


def sample_customers(frame: pd.DataFrame, n: int = 30, seed: int = 3) -> list[str]:
    """About ``n`` customers spread over every tier, value segment and interaction flag."""
    groups = frame.groupby(["tier", "value_segment", "low_interaction"], dropna=False)["customer_id"]
    rng = np.random.default_rng(seed)
    chosen = [str(rng.choice(ids.to_numpy())) for _, ids in groups]
    rest = [c for c in frame["customer_id"] if c not in set(chosen)]
    extra = rng.choice(rest, size=max(0, n - len(chosen)), replace=False).tolist()
    return sorted(chosen + [str(c) for c in extra])


def assert_rows_equal(whole: pd.DataFrame, dataset: Dataset, cutoff: dt.date, config: FeatureConfig,
                      norms: PopulationNorms, customers: list[str]) -> None:
    indexed = whole.set_index("customer_id", drop=False)
    for customer in customers:
        alone = to_frame(build_features(one_customer(dataset, customer, dataset.facts), cutoff, config, norms))
        expected = indexed.loc[[customer]].reset_index(drop=True)
        pd.testing.assert_frame_equal(alone, expected, check_exact=True, obj=f"customer {customer}")


@pytest.mark.slow
def test_one_customer_with_the_norms_is_their_row_of_the_whole_table(dataset):
    config = FeatureConfig()
    cutoff = dataset.last_date
    whole = to_frame(build_features(dataset, cutoff, config))
    norms = population_norms(dataset, cutoff, config, whole)
    customers = sample_customers(whole)
    # The sample meets every tier the shop has and both sides of the comparisons with the peers.
    assert set(whole.loc[whole.customer_id.isin(customers), "tier"]) == set(whole["tier"])
    assert whole.loc[whole.customer_id.isin(customers), "low_interaction"].nunique() == 2
    assert len(customers) >= 30
    assert_rows_equal(whole, dataset, cutoff, config, norms, customers)


@pytest.mark.slow
def test_norms_without_the_table_are_the_windows_numbers(dataset):
    """Quantiles as aggregates are the windows' quantiles to the last bit; the mean of the peers'
    interactions agrees to rounding (its sum's order is the engine's)."""
    cutoff = dt.date(2024, 6, 30)
    config = FeatureConfig()
    whole = to_frame(build_features(dataset, cutoff, config))
    norms = population_norms(dataset, cutoff, config)
    assert norms.usual_gap_days == whole.loc[whole.frequency == 1, "usual_gap_days"].iloc[0]
    assert norms.usual_gap_days == pytest.approx(whole.loc[whole.frequency >= 2, "mean_gap_days"].median(), rel=1e-12)
    assert norms.interactions_per_month == pytest.approx(whole["peer_interactions_per_month"].iloc[0], rel=1e-12)
    assert norms.interactions_per_month == pytest.approx(whole["interactions_per_month"].mean(), rel=1e-12)
    # Hand-computed: the relative minimums are numpy's linear quantiles of the tier year's buyers.
    bought = whole[whole.orders_365d > 0]
    core_repurchases = np.quantile(bought.orders_365d - (bought.purchase_age_days < 365), 0.8)
    assert norms.segments.tier_minimums["core"][1] == pytest.approx(core_repurchases, rel=1e-12)
    assert norms.segments.ltv_threshold == pytest.approx(whole["ltv"].median(), rel=1e-12)
    assert set(norms.segments.tier_minimums) == set(RANKED_TIERS)
    # With the windows' own peer mean, a date where customers have later events: rows equal too.
    norms = population_norms(dataset, cutoff, config, whole)
    later = (to_frame(dataset.transactions.filter(dataset.transactions.ts > pd.Timestamp(cutoff) + pd.Timedelta(days=1)))
             ["customer_id"].unique())
    customers = sorted(set(whole["customer_id"]) & set(later))[:6]
    assert len(customers) == 6
    assert_rows_equal(whole, dataset, cutoff, config, norms, customers)


def test_norms_replace_the_windows_and_a_new_peer_group_is_its_own(tiny_transactions, tiny_interactions,
                                                                   tiny_customers):
    """Hand-made norms decide the compared columns of one customer, whatever the others do."""
    ds = frame_dataset(tiny_transactions, tiny_interactions, tiny_customers)
    cutoff = dt.date(2024, 6, 30)
    config = FeatureConfig(peer_column="region")
    whole = to_frame(build_features(ds, cutoff, config)).set_index("customer_id")
    # A's region (north) holds A and C: the window's peer mean is theirs.
    assert whole.loc["A", "peer_interactions_per_month"] == pytest.approx(
        whole.loc[["A", "C"], "interactions_per_month"].mean())
    norms = population_norms(ds, cutoff, config, whole.reset_index())
    assert norms.interactions_per_month_by_peer["north"] == whole.loc["A", "peer_interactions_per_month"]
    # A makes 2 interactions a month (6 in 90 days, known for 91): a peer norm above 4 makes that low.
    high = dataclasses.replace(norms, interactions_per_month_by_peer={"north": 4.5, "south": 0.0})
    a = to_frame(build_features(one_customer(ds, "A", ds.facts), cutoff, config, high)).iloc[0]
    assert a["peer_interactions_per_month"] == 4.5 and bool(a["low_interaction"])
    # Relative tier minimums of the norms: spend above everything, so A falls from its tier.
    steep = {tier: (1e9, 0.0) for tier in RANKED_TIERS}
    steep_norms = dataclasses.replace(norms, segments=dataclasses.replace(norms.segments, tier_minimums=steep,
                                                                          ltv_threshold=1e9))
    a = to_frame(build_features(one_customer(ds, "A", ds.facts), cutoff, config, steep_norms)).iloc[0]
    assert a["tier"] not in RANKED_TIERS and a["value_segment"].startswith("low_value")
    # A region the population lacks: the customer's own rate is the peers' (a group of one).
    alone = dataclasses.replace(norms, interactions_per_month_by_peer={"south": 0.0})
    a = to_frame(build_features(one_customer(ds, "A", ds.facts), cutoff, config, alone)).iloc[0]
    assert a["peer_interactions_per_month"] == a["interactions_per_month"] and not a["low_interaction"]
    # With norms, no window spans customers: each one left is over one customer's orders.
    sql = ibis.to_sql(build_features(one_customer(ds, "A", ds.facts), cutoff, config, norms))
    windows = re.findall(r"OVER \(([^)]*)\)", sql)
    assert windows and all("PARTITION BY" in w for w in windows)
    assert not all("PARTITION BY" in w for w in re.findall(r"OVER \(([^)]*)\)", ibis.to_sql(
        build_features(ds, cutoff, config))))


def test_absolute_thresholds_need_no_tier_numbers(tiny_transactions):
    ds = frame_dataset(tiny_transactions)
    config = FeatureConfig(segments=SegmentConfig(thresholds="absolute"))
    cutoff = dt.date(2024, 6, 30)
    whole = to_frame(build_features(ds, cutoff, config))
    norms = population_norms(ds, cutoff, config, whole)
    assert norms.segments.tier_minimums is None and norms.interactions_per_month is None
    assert_rows_equal(whole, ds, cutoff, config, norms, ["A", "B", "C"])
