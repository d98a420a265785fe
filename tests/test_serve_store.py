"""The event store on DuckDB and on PostgreSQL: validation like files, idempotent appends,
ingestion order, one customer's reads through the index, threads, and no acknowledged event lost
or doubled when the writer is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from churnml.errors import UserValueError
from churnml.io.contract import DataValidationError
from churnml.serve.store import AppendResult, EventStore
from conftest import frame_dataset

SRC = Path(__file__).resolve().parents[1] / "src"

ENGINES = ["duckdb", pytest.param("postgres", marks=pytest.mark.slow)]


@pytest.fixture(params=ENGINES)
def location(request, tmp_path) -> str:
    if request.param == "duckdb":
        return str(tmp_path / "events.duckdb")
    return request.getfixturevalue("postgres_db")


@pytest.fixture
def store(location):
    with EventStore.open(location) as opened:
        yield opened


def purchases(*rows: tuple) -> pd.DataFrame:
    """Transactions events ``(event_id, customer_id, day, amount)``."""
    return pd.DataFrame(rows, columns=["event_id", "customer_id", "ts", "amount"])


def stored_rows(store: EventStore, table: str = "transactions") -> pd.DataFrame:
    frame = getattr(store.dataset(), table).to_pandas()
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def test_append_refuses_a_bad_amount_and_stores_nothing(store):
    store.append("transactions", purchases(("e0", "A", "2024-01-01", 5.0)))
    before = (store.counts(), store.version())
    bad = purchases(("e1", "A", "2024-01-02", 10.0), ("e2", "B", "2024-01-03", "ten"))
    with pytest.raises(DataValidationError, match=r"column 'amount': is not a number \(1 of 2 rows\); e\.g\. row 2: 'ten'"):
        store.append("transactions", bad)
    assert (store.counts(), store.version()) == before
    assert stored_rows(store).amount.tolist() == [5.0]


def test_append_refuses_a_missing_required_column(store):
    events = pd.DataFrame({"customer_id": ["A"], "ts": ["2024-01-01"], "event_id": ["e1"]})
    with pytest.raises(DataValidationError, match="column 'amount': required column is missing") as info:
        store.append("transactions", events)
    assert "\n" not in str(info.value)
    assert store.is_empty() and store.version() == 0


def test_append_refuses_an_unknown_table_and_bad_event_ids(store):
    with pytest.raises(UserValueError, match="not 'customers'"):
        store.append("customers", purchases(("e1", "A", "2024-01-01", 1.0)))
    with pytest.raises(DataValidationError, match=r"column 'event_id'.*\(1 of 2 rows\)"):
        store.append("transactions", purchases(("e1", "A", "2024-01-01", 1.0), (" ", "A", "2024-01-01", 2.0)))
    assert store.is_empty()


def test_same_event_id_is_stored_once_in_one_batch_and_across_batches(store):
    first = store.append("transactions", purchases(
        ("e1", "A", "2024-01-01", 10.0), ("e2", "A", "2024-01-02", 20.0), ("e1", "A", "2024-01-01", 10.0),
        (None, "B", "2024-01-02", 7.0), (None, "B", "2024-01-02", 7.0),  # no id: both are kept
    ))
    assert first == AppendResult(stored=4, duplicates=1)
    again = store.append("transactions", purchases(("e2", "A", "2024-01-02", 20.0), ("e3", "B", "2024-01-05", 30.0)))
    assert again == AppendResult(stored=1, duplicates=1)
    assert store.counts()["transactions"] == 5
    assert stored_rows(store).amount.tolist() == [10.0, 20.0, 7.0, 7.0, 30.0]


def test_zero_amounts_are_dropped_and_counted_as_for_files(store):
    result = store.append("transactions", purchases(("e1", "A", "2024-01-01", 0.0), ("e2", "A", "2024-01-02", 3.0)))
    assert result == AppendResult(stored=1, duplicates=0, dropped=1)


def test_sequence_numbers_grow_with_every_stored_row_and_not_with_duplicates(store):
    assert store.version() == 0 and store.customer_version("A") == 0
    store.append("transactions", purchases(("e1", "A", "2024-01-01", 1.0), ("e2", "B", "2024-01-01", 1.0)))
    v1 = store.version()
    assert v1 >= 2 and store.customer_version("B") == v1 and store.customer_version("A") < v1
    store.append("transactions", purchases(("e2", "B", "2024-01-01", 1.0)))  # a retry
    assert store.version() == v1
    store.append("interactions", pd.DataFrame({"event_id": ["i1"], "customer_id": ["A"], "ts": ["2024-01-03"],
                                               "kind": ["login"]}))
    v2 = store.version()
    assert v2 > v1 and store.customer_version("A") == v2 and store.customer_version("B") == v1
    assert store.counts() == {"transactions": 2, "interactions": 1}


def test_changed_since_tells_whose_events_came_after_a_version_as_the_sequence_numbers_do(loaded, location):
    store, _ = loaded
    v0 = store.version()
    assert not store.changed_since("A", v0) and not store.changed_since("B", v0)
    store.append("transactions", purchases(("e1", "A", "2024-07-01", 5.0)))
    v1 = store.version()
    assert v1 > v0 and store.changed_since("A", v0) and not store.changed_since("A", v1)
    assert not store.changed_since("B", v0)
    # A duplicate changes nobody; a version from before the load asks the store itself.
    store.append("transactions", purchases(("e1", "B", "2024-07-01", 5.0)))
    assert not store.changed_since("B", v0)
    assert store.changed_since("C", 0) == (store.customer_version("C") > 0)
    for customer in ("A", "B", "C", "nobody"):
        for version in (v0, v1):
            assert store.changed_since(customer, version) == (store.customer_version(customer) > version)
    reopened = EventStore.open(location) if store.engine == "postgres" else None
    if reopened is not None:
        assert reopened.changed_since("A", v0) and reopened.version() == v1
        reopened.close()


def test_timestamps_with_an_offset_are_stored_in_utc(store):
    store.append("transactions", purchases(("e1", "A", "2024-01-01T10:00:00+02:00", 1.0)))
    assert stored_rows(store).ts.tolist() == [pd.Timestamp("2024-01-01 08:00:00")]


@pytest.fixture
def loaded(store, tiny_transactions, tiny_interactions, tiny_customers):
    files = frame_dataset(tiny_transactions, tiny_interactions, tiny_customers)
    assert store.is_empty()
    copied = store.load(files)
    assert copied == {"transactions": 12, "interactions": 10, "customers": 4}
    return store, files


def test_load_copies_the_files_and_refuses_a_second_load(loaded):
    store, files = loaded
    assert not store.is_empty() and store.counts() == {"transactions": 12, "interactions": 10}
    for name in ("transactions", "interactions", "customers"):
        ours = getattr(store.dataset(), name).to_pandas()
        theirs = getattr(files, name).to_pandas()
        assert list(ours.columns) == list(theirs.columns)
        key = list(theirs.columns)
        pd.testing.assert_frame_equal(ours.sort_values(key).reset_index(drop=True),
                                      theirs.sort_values(key).reset_index(drop=True), check_dtype=False)
    whole = store.dataset()
    assert (whole.first_date, whole.last_date) == (files.first_date, files.last_date)
    with pytest.raises(UserValueError, match="is not empty"):
        store.load(files)


def test_customer_dataset_holds_that_customer_only_and_the_whole_stores_dates(loaded):
    store, files = loaded
    store.append("transactions", purchases(("e1", "A", "2024-07-10", 25.0), ("e2", "C", "2024-07-11", 5.0)))
    whole = store.dataset()
    one = store.customer_dataset("A", {"breadth_values": {"category": ["x"]}})
    for name in ("transactions", "interactions", "customers"):
        mine = getattr(one, name).to_pandas()
        everyone = getattr(whole, name).to_pandas()
        assert set(mine.customer_id) == {"A"}
        key = list(mine.columns)
        pd.testing.assert_frame_equal(mine.sort_values(key).reset_index(drop=True),
                                      everyone[everyone.customer_id == "A"].sort_values(key).reset_index(drop=True))
    assert len(one.transactions.to_pandas()) == 6  # five loaded lines and the new one
    assert (one.first_date, one.last_date) == (files.first_date, pd.Timestamp("2024-07-11").date())
    assert one.facts == {"breadth_values": {"category": ["x"]}}
    assert one.reports["transactions"].rows_kept == 14


# Features of a customer's own history; those relative to everyone (peer means, tiers, value
# segments, the usual gap of a one-purchase customer) need the population's norms, which the online
# scorer brings.
OWN_HISTORY = ["recency_days", "tenure_days", "frequency", "monetary_total", "mean_gap_days", "refund_amount",
               "spend_90d", "orders_trend_30_90", "n_categories", "n_channels", "n_interactions", "login_90d",
               "days_since_interaction", "days_since_signup"]


@pytest.mark.slow
@pytest.mark.parametrize("location", ["duckdb"], indirect=True)
def test_features_of_one_customer_equal_their_row_of_the_whole_store(loaded):
    from churnml.features.build import build_features

    store, _ = loaded
    store.append("transactions", purchases(("e1", "B", "2024-06-20", 80.0)))
    whole = store.dataset()
    everyone = build_features(whole, "2024-06-30").to_pandas().set_index("customer_id")
    for customer in ("A", "B"):
        alone = build_features(store.customer_dataset(customer, whole.facts), "2024-06-30").to_pandas()
        assert alone.customer_id.tolist() == [customer]
        pd.testing.assert_series_equal(alone.set_index("customer_id").loc[customer, OWN_HISTORY],
                                       everyone.loc[customer, OWN_HISTORY])
    assert everyone.loc["B", "recency_days"] == 10 and everyone.loc["A", "n_categories"] == 2


def test_a_store_loaded_without_interactions_refuses_them(store, tiny_transactions):
    store.load(frame_dataset(tiny_transactions))
    with pytest.raises(DataValidationError, match="loaded from files without interactions"):
        store.append("interactions", pd.DataFrame({"customer_id": ["A"], "ts": ["2024-07-01"], "kind": ["login"]}))
    assert store.dataset().interactions is None


def test_a_column_the_loaded_table_lacks_is_refused(store, tiny_transactions):
    store.load(frame_dataset(tiny_transactions[["customer_id", "ts", "amount"]]))
    events = purchases(("e1", "A", "2024-07-01", 5.0)).assign(channel="web")
    with pytest.raises(DataValidationError, match="column 'channel': is not a column of the store's transactions"):
        store.append("transactions", events)
    assert store.counts()["transactions"] == 12


def big_store(store: EventStore, n_customers: int = 2_000, lines: int = 20) -> None:
    frame = pd.DataFrame({
        "customer_id": [f"C{i:05d}" for i in range(n_customers) for _ in range(lines)],
        "ts": pd.Timestamp("2024-01-01") + pd.to_timedelta([d for _ in range(n_customers) for d in range(lines)], "D"),
        "amount": 1.0,
    })
    store.load(frame_dataset(frame))


@pytest.mark.parametrize("location", ["duckdb"], indirect=True)
def test_duckdb_reads_one_customer_through_the_index(store):
    big_store(store)
    table = store.customer_dataset("C00123", {}).transactions
    backend = table._find_backend()
    plan = backend.con.execute("EXPLAIN ANALYZE " + backend.compile(table)).fetchall()[0][1]
    # EXPLAIN (without ANALYZE) shows a sequential scan: DuckDB decides on the index while running.
    # DuckDB 2 prints "Type: Index Scan", older versions INDEX_SCAN.
    words = plan.lower().replace("_", " ")
    assert "index scan" in words and "sequential scan" not in words and "seq scan" not in words
    assert len(table.to_pandas()) == 20


@pytest.mark.slow
@pytest.mark.parametrize("location", ["postgres"], indirect=True)
def test_postgres_reads_one_customer_through_the_index(store):
    big_store(store)
    table = store.customer_dataset("C00123", {}).transactions
    backend = table._find_backend()
    plan = "\n".join(row[0] for row in backend.con.execute("EXPLAIN " + backend.compile(table)).fetchall())
    assert "Index Scan using transactions_customer_id" in plan and "Seq Scan" not in plan


@pytest.mark.slow
def test_threads_appending_with_retries_store_each_event_once(store):
    store.append("transactions", purchases(("seed", "A", "2024-01-01", 1.0)))
    ids = [f"t{i}" for i in range(40)]
    results: list[AppendResult] = []
    errors: list[BaseException] = []

    def client(offset: int) -> None:
        try:
            for start in range(0, 40, 8):
                # Overlapping batches: every id is sent by several threads, some twice by one.
                batch = [ids[(start + offset + k) % 40] for k in range(10)]
                events = purchases(*((i, f"C{int(i[1:]) % 5}", "2024-02-01", float(int(i[1:]) + 1)) for i in batch))
                results.append(store.append("transactions", events))
                store.customer_dataset("C1", {}).transactions.to_pandas()  # reads between writes
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k * 3,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sum(r.stored for r in results) == 40
    assert sum(r.stored + r.duplicates for r in results) == 4 * 5 * 10
    rows = stored_rows(store)
    assert len(rows) == 41 and sorted(rows.amount) == sorted([1.0] + [float(i) for i in range(1, 41)])
    assert store.counts()["transactions"] == 41


WRITER = """
import sys
import pandas as pd
from churnml.serve.store import EventStore

store = EventStore.open(sys.argv[1])
for i in range(100_000):
    event = pd.DataFrame({"event_id": [f"ev{i}"], "customer_id": [f"C{i % 7}"], "ts": ["2024-03-01"],
                          "amount": [float(i + 1)]})
    store.append("transactions", event)
    print(f"ev{i}", flush=True)
"""


@pytest.mark.slow
def test_a_killed_writer_loses_no_acknowledged_event_and_doubles_none(location):
    """The writer prints an event's id once its append returned; it is killed (SIGKILL) while
    appending. Every acknowledged event must be stored; the one in flight may be (committed but
    not yet acknowledged); none may be stored twice. The client then retries everything it sent
    without an acknowledgement, and the store holds each event exactly once."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, location], stdout=subprocess.PIPE, text=True, env=env)
    acknowledged: list[str] = []
    try:
        for line in writer.stdout:
            acknowledged.append(line.strip())
            if len(acknowledged) == 25:
                writer.send_signal(signal.SIGKILL)
                break
    finally:
        writer.kill()
        rest, _ = writer.communicate(timeout=60)
    acknowledged += rest.split()
    assert writer.returncode == -signal.SIGKILL and len(acknowledged) >= 25
    if not location.startswith("postgresql"):
        assert Path(location + ".wal").exists()  # the reopening below replays the log

    with EventStore.open(location) as store:
        rows = store.dataset().transactions.to_pandas()
        stored = [f"ev{int(a) - 1}" for a in rows.amount]
        assert len(stored) == len(set(stored))
        assert set(acknowledged) <= set(stored)
        # At most the event in flight is stored without an acknowledgement.
        assert set(stored) - set(acknowledged) <= {f"ev{len(acknowledged)}"}
        retry = purchases(*((f"ev{i}", f"C{i % 7}", "2024-03-01", float(i + 1)) for i in range(len(acknowledged) + 1)))
        result = store.append("transactions", retry)
        assert result.duplicates == len(stored) and result.stored == len(acknowledged) + 1 - len(stored)
        assert store.counts()["transactions"] == len(acknowledged) + 1


def test_a_second_process_cannot_open_a_duckdb_store(tmp_path):
    path = str(tmp_path / "events.duckdb")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from churnml.serve.store import EventStore; "
         "s = EventStore.open(sys.argv[1]); print('open', flush=True); sys.stdin.read()", path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(UserValueError, match="open in another process.*use PostgreSQL") as info:
            EventStore.open(path)
        assert "\n" not in str(info.value)
    finally:
        holder.kill()
        holder.wait()


def test_without_the_server_binaries_the_cluster_names_what_to_install(monkeypatch):
    import pg

    monkeypatch.setattr(pg, "find_bin_dir", lambda: None)
    with pytest.raises(RuntimeError, match=r"apt-get install postgresql\)$") as info:
        pg.start_cluster()
    assert "\n" not in str(info.value)


def test_an_unreachable_postgres_server_is_named_in_one_line():
    with pytest.raises(UserValueError, match=r"event store 'postgresql://nobody:\*\*\*@127\.0\.0\.1:9/none' cannot be reached") as info:
        EventStore.open("postgresql://nobody:secret@127.0.0.1:9/none")
    assert "\n" not in str(info.value) and "secret" not in str(info.value)
