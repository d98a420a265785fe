"""The online scorer: the batch row of a customer at request time, and their new events at once."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from churnml.errors import UserValueError
from churnml.features.build import FeatureConfig
from churnml.jobs.score import score_with_duckdb
from churnml.scoring.policy import ScoringConfig
from churnml.scoring.reasons import ReasonContext
from churnml.scoring.table import ModelIdentity
from churnml.serve.scorer import KEPT_STATES, CustomerQuery, OnlineScorer, UnknownCustomer
from conftest import frame_dataset
from test_population_norms import one_customer
from test_scoring import REFUND_ONLY, SINGLE_PURCHASE, with_edge_customers

IDENTITIES = {"churn": ModelIdentity("churnml-churn", "3"), "repurchase": ModelIdentity("churnml-repurchase", "2")}


class FrameStore:
    """An event store over in-memory frames, as the scorer reads a store: the whole data set, one
    customer's tables, and versions that grow with every append."""

    def __init__(self, transactions: pd.DataFrame, interactions: pd.DataFrame, customers: pd.DataFrame) -> None:
        self.frames = {"transactions": transactions, "interactions": interactions, "customers": customers}
        self._dataset = frame_dataset(transactions, interactions, customers)
        self._version = 1
        self.versions = dict.fromkeys(pd.concat([transactions.customer_id, interactions.customer_id]).astype(str), 1)
        self.customer_reads: list[str] = []

    def dataset(self):
        return self._dataset

    def customer_dataset(self, customer_id: str, facts: dict):
        if not customer_id.startswith("churnml-placeholder-"):
            self.customer_reads.append(customer_id)
        return one_customer(self._dataset, customer_id, facts)

    def customer_version(self, customer_id: str) -> int:
        return self.versions.get(customer_id, 0)

    def changed_since(self, customer_id: str, version: int) -> bool:
        return self.customer_version(customer_id) > version

    def version(self) -> int:
        return self._version

    def append(self, table: str, events: pd.DataFrame) -> None:
        self.frames[table] = pd.concat([self.frames[table], events], ignore_index=True)
        self._dataset = frame_dataset(self.frames["transactions"], self.frames["interactions"], self.frames["customers"])
        self._version += 1
        for customer in events["customer_id"].astype(str):
            self.versions[customer] = self._version


@pytest.fixture(scope="module")
def frames(small_shop):
    return with_edge_customers(small_shop["transactions"]), small_shop["interactions"], small_shop["customers"]


def new_store(frames) -> FrameStore:
    return FrameStore(*frames)


@pytest.fixture(scope="module")
def batch(frames, models, tmp_path_factory):
    """The score table of ``churnml-score`` (its DuckDB path, file and all) at the last date."""
    dataset = frame_dataset(*frames)
    as_of = dataset.last_date
    config = FeatureConfig()
    context = ReasonContext.from_features(config, int(models["churn"].horizon_days))
    output = tmp_path_factory.mktemp("scores") / "scores.parquet"
    score_with_duckdb(dataset, as_of, config, models, ScoringConfig(), context, IDENTITIES, {}, output, "parquet")
    return pd.read_parquet(output).set_index("customer_id", drop=False)


@pytest.fixture(scope="module")
def served(frames, models):
    """A scorer and its store, the population state at the last date built."""
    store = new_store(frames)
    scorer = OnlineScorer(models, IDENTITIES, FeatureConfig(), ScoringConfig())
    scorer.score(store, SINGLE_PURCHASE)
    return scorer, store


MODELS = {"churn": {"name": "churnml-churn", "version": "3"}, "repurchase": {"name": "churnml-repurchase", "version": "2"}}


def assert_is_batch_row(result: dict, row: pd.Series, models: dict = MODELS) -> None:
    assert result["customer_id"] == row["customer_id"]
    assert result["as_of"] == pd.Timestamp(row["as_of"]).date().isoformat()
    for column in ("churn_probability", "repurchase_probability"):
        assert result[column] == pytest.approx(row[column], abs=1e-9)
    for column in ("risk_band", "tier", "membership_level", "value_segment", "predicted_value_segment",
                   "recommended_action"):
        assert result[column] == (None if pd.isna(row[column]) else row[column]), column
    for column in ("ltv", "next_level_spend_gap", "next_level_repurchase_gap"):
        assert result[column] == (None if pd.isna(row[column]) else pytest.approx(row[column], abs=1e-9)), column
    expected = [(row[f"reason_{k}"], row[f"reason_{k}_feature"]) for k in (1, 2, 3) if pd.notna(row[f"reason_{k}"])]
    assert [(r["reason"], r["feature"]) for r in result["reasons"]] == expected
    np.testing.assert_allclose([r["contribution"] for r in result["reasons"]],
                               [row[f"reason_{k}_contribution"] for k in range(1, len(expected) + 1)], atol=1e-9)
    assert result["models"] == models


def sample(batch: pd.DataFrame, n: int = 30) -> list[str]:
    """Customers of every band, tier and action, and the shop's edge customers."""
    groups = batch.groupby(["risk_band", "tier", "recommended_action"], dropna=False)["customer_id"].first()
    chosen = sorted(set(groups) | {SINGLE_PURCHASE, REFUND_ONLY})
    rest = batch.loc[~batch.customer_id.isin(chosen), "customer_id"]
    return chosen + rest.sample(max(0, n - len(chosen)), random_state=1).tolist()


@pytest.mark.slow
def test_a_score_is_the_batch_row_of_the_same_date(served, batch):
    scorer, store = served
    customers = sample(batch)
    assert len(customers) >= 30 and batch.loc[customers, "risk_band"].nunique() >= 2
    for customer in customers:
        result = scorer.score(store, customer)
        assert_is_batch_row(result, batch.loc[customer])
        assert isinstance(result["churn_probability"], float)
        # A customer with a refund only has no purchase to be recent: missing, not NaN.
        assert result["recency_days"] is None if customer == REFUND_ONLY else isinstance(result["recency_days"], float)
    # Served from the state: no customer's events were read.
    assert store.customer_reads == []


@pytest.mark.slow
def test_recomputing_an_unchanged_customer_gives_their_batch_row(served, batch):
    scorer, store = served
    state = scorer.state(store, batch["as_of"].iloc[0])
    customers = sample(batch, 0)[:4] + [SINGLE_PURCHASE, REFUND_ONLY]
    for customer in customers:
        recomputed = scorer.recompute(store, state, customer)
        assert_is_batch_row(recomputed, batch.loc[customer])
        cached = scorer.score(store, customer)
        assert recomputed["recency_days"] == cached["recency_days"]
        assert recomputed["churn_probability"] == pytest.approx(cached["churn_probability"], abs=1e-12)
    # After the first customer, through the query compiled once (checked against theirs).
    assert isinstance(state.query, CustomerQuery) and state.query.text("Z'1") == state.query.sql.replace(
        state.query.literal, "'Z''1'")


@pytest.mark.slow
def test_a_purchase_shows_in_the_next_score(frames, models, batch):
    store = new_store(frames)
    scorer = OnlineScorer(models, IDENTITIES, FeatureConfig(), ScoringConfig())
    as_of = store.dataset().last_date
    # A customer long without a purchase, at risk.
    lapsed = batch[(batch.churn_probability > 0.6)].index
    customer = next(c for c in lapsed if c not in (SINGLE_PURCHASE, REFUND_ONLY))
    before = scorer.score(store, customer)
    assert before["recency_days"] > 60
    purchase = store.frames["transactions"].loc[store.frames["transactions"].customer_id == customer].iloc[[-1]].copy()
    purchase["ts"] = pd.Timestamp(as_of) + pd.Timedelta(hours=10)
    if "order_id" in purchase:
        purchase["order_id"] = f"{customer}-now"
    store.append("transactions", purchase)
    after = scorer.score(store, customer)
    assert after["recency_days"] == 0.0
    assert after["churn_probability"] < before["churn_probability"] - 0.1
    assert after["as_of"] == before["as_of"] == as_of.isoformat()
    assert store.customer_reads == [customer]
    # Kept until their next event; the others are still their batch rows.
    assert scorer.score(store, customer) == after and store.customer_reads == [customer]
    other = next(c for c in batch.index if c != customer)
    assert_is_batch_row(scorer.score(store, other), batch.loc[other])


def test_an_unknown_customer_or_date_is_refused(served, frames):
    scorer, store = served
    with pytest.raises(UnknownCustomer):
        scorer.score(store, "nobody")
    first_seen = frames[0].groupby("customer_id")["ts"].min()
    late = first_seen[first_seen > pd.Timestamp("2024-12-01")].index[0]
    # The state at the last date (built by the fixture) answers from its table; an earlier date
    # would build another: the customer is unknown there (their first purchase is later).
    assert scorer.score(store, late)["customer_id"] == late
    last = store.dataset().last_date
    for as_of in (last + dt.timedelta(days=1), store.dataset().first_date - dt.timedelta(days=1), "30/12/2024"):
        with pytest.raises(UserValueError) as error:
            scorer.score(store, late, as_of)
        assert "\n" not in str(error.value)


@pytest.mark.slow
def test_states_are_built_once_and_bounded(frames, models, monkeypatch):
    store = new_store(frames)
    scorer = OnlineScorer(models, IDENTITIES, FeatureConfig(), ScoringConfig())
    built: list[dt.date] = []
    build = scorer.build_state

    def counted(store_, as_of):
        built.append(as_of)
        return build(store_, as_of)

    monkeypatch.setattr(scorer, "build_state", counted)
    customers = sorted(store.frames["transactions"].customer_id.unique())[:16]
    barrier = threading.Barrier(8)

    def ask(customer):
        barrier.wait() if customers.index(customer) < 8 else None
        return scorer.score(store, customer)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, customers))
    assert built == [store.dataset().last_date]
    assert [r["customer_id"] for r in results] == customers
    first_seen = store.frames["transactions"].groupby("customer_id")["ts"].min()
    early = first_seen[first_seen < pd.Timestamp("2023-03-01")].index[0]
    days = [dt.date(2024, 6, 30), dt.date(2024, 9, 30)]
    for day in days:
        assert scorer.score(store, early, day)["as_of"] == day.isoformat()
    assert built[1:] == days and len(scorer._states) == KEPT_STATES
    # The oldest state went: asking for its date builds it again.
    scorer.score(store, early)
    assert len(built) == 4 and len(scorer._states) == KEPT_STATES
    late = first_seen[first_seen > pd.Timestamp("2024-07-15")].index[0]
    with pytest.raises(UnknownCustomer):
        scorer.score(store, late, days[0])


@pytest.mark.slow
def test_a_reloaded_scorer_has_the_new_models(served, batch):
    scorer, store = served
    identities = {"churn": ModelIdentity("churnml-churn", "4"), "repurchase": ModelIdentity("churnml-repurchase", "2")}
    reloaded = scorer.reloaded(scorer.models, identities)
    assert reloaded is not scorer and not reloaded._states
    assert reloaded.score(store, SINGLE_PURCHASE)["models"]["churn"]["version"] == "4"
    assert scorer.score(store, SINGLE_PURCHASE)["models"]["churn"]["version"] == "3"
