"""Shared fixtures: tiny hand-made tables and a small seeded demo shop."""

from __future__ import annotations

import pandas as pd
import pytest

from churnml.io.load import Dataset, TableSource, connect, load_dataset


def frame_dataset(transactions: pd.DataFrame, interactions: pd.DataFrame | None = None,
                  customers: pd.DataFrame | None = None) -> Dataset:
    """A validated Dataset from in-memory frames, on a fresh DuckDB connection."""
    return load_dataset(
        TableSource(frame=transactions, label="transactions"),
        TableSource(frame=interactions, label="interactions") if interactions is not None else None,
        TableSource(frame=customers, label="customers") if customers is not None else None,
        con=connect(),
    )


def ts(*values: str) -> pd.Series:
    return pd.to_datetime(pd.Series(values), format="ISO8601")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with slow or Spark tests first, each file's tests in their order: `make test` hands
    whole files to one process per core, and a heavy file reached last would run alone."""
    heavy = {item.path for item in items if item.get_closest_marker("slow") or item.get_closest_marker("spark")}
    items.sort(key=lambda item: item.path not in heavy)


@pytest.fixture
def tiny_transactions() -> pd.DataFrame:
    """Four customers whose features are easy to compute by hand (cutoff 2024-06-30).

    - A: orders every 30 days, 100 each, last one on the cutoff day; one two-line order.
    - B: three orders of 200 long ago, then one of 50: order value dropped, no purchase in 3 months.
    - C: one purchase and a refund of half of it.
    - D: first purchase after the cutoff (no history at the cutoff).
    """
    rows = [
        ("A", "2024-04-01", 100.0, "a1", 1, "grocery", "web"),
        ("A", "2024-05-01", 60.0, "a2", 1, "grocery", "web"),
        ("A", "2024-05-01", 40.0, "a2", 2, "home", "web"),
        ("A", "2024-05-31", 100.0, "a3", 1, "grocery", "app"),
        ("A", "2024-06-30", 100.0, "a4", 1, "grocery", "app"),
        ("B", "2023-10-01", 200.0, "b1", 1, "electronics", "store"),
        ("B", "2023-11-01", 200.0, "b2", 1, "electronics", "store"),
        ("B", "2023-12-01", 200.0, "b3", 1, "electronics", "store"),
        ("B", "2024-02-01", 50.0, "b4", 1, "electronics", "store"),
        ("C", "2024-06-01", 80.0, "c1", 4, "toys", "web"),
        ("C", "2024-06-10", -40.0, "c1r", -2, "toys", "web"),
        ("D", "2024-07-05", 30.0, "d1", 1, "books", "web"),
    ]
    frame = pd.DataFrame(rows, columns=["customer_id", "ts", "amount", "order_id", "quantity", "category", "channel"])
    frame["ts"] = pd.to_datetime(frame["ts"])
    return frame


@pytest.fixture
def tiny_interactions() -> pd.DataFrame:
    rows = [("A", "2024-06-01", "login"), ("A", "2024-06-10", "visit"), ("A", "2024-06-20", "login"),
            ("A", "2024-06-25", "email_open"), ("A", "2024-06-29", "login"), ("A", "2024-06-30", "visit"),
            ("B", "2024-04-15", "support_ticket"), ("C", "2024-06-05", "visit"), ("C", "2024-06-08", "login"),
            ("A", "2024-07-02", "login")]
    frame = pd.DataFrame(rows, columns=["customer_id", "ts", "kind"])
    frame["ts"] = pd.to_datetime(frame["ts"])
    return frame


@pytest.fixture
def tiny_customers() -> pd.DataFrame:
    return pd.DataFrame({
        "customer_id": ["A", "B", "C", "D"],
        "signup_ts": pd.to_datetime(["2024-03-01", "2023-09-15", "2024-05-30", "2024-07-01"]),
        "region": ["north", "south", "north", "east"],
    })


@pytest.fixture(scope="session")
def small_shop() -> dict[str, pd.DataFrame]:
    """A small seeded demo shop, shared by the tests that need realistic data."""
    from churnml.simulate import simulate_shop

    return simulate_shop(n_customers=1500, start="2023-01-01", end="2024-12-31", seed=7)


@pytest.fixture(scope="module")
def spark():
    """An Ibis connection to a local Spark session, stopped when the module is done."""
    from churnml.io.spark import connect_spark, stop_spark

    con = connect_spark()
    yield con
    stop_spark(con)


# The small shop scored: its edge customers, both small models and their inputs at the last date
# (the scoring and persistence tests share them; each module builds its own).
@pytest.fixture(scope="module")
def dataset(small_shop):
    from test_scoring import with_edge_customers

    return frame_dataset(with_edge_customers(small_shop["transactions"]), small_shop["interactions"],
                         small_shop["customers"])


@pytest.fixture(scope="module")
def models(dataset):
    from test_scoring import train_small_models

    return train_small_models(dataset)[0]


@pytest.fixture(scope="module")
def inputs(dataset, models):
    from churnml.features import snapshots
    from churnml.scoring import table

    return table.model_inputs(snapshots.feature_frame(dataset, dataset.last_date), models)


# A throwaway PostgreSQL server (tests/pg.py) for the event store and the service: started once per
# session, stopped at its end; on a machine without the server it fails, naming what to install.
@pytest.fixture(scope="session")
def postgres_cluster():
    from pg import start_cluster

    try:
        cluster = start_cluster()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster) -> str:
    """The URL of the throwaway server's ``postgres`` database."""
    return postgres_cluster.url


@pytest.fixture
def postgres_db(postgres_cluster) -> str:
    """The URL of a new, empty database on the throwaway server."""
    return postgres_cluster.create_database()
