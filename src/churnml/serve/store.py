"""The event store: the customers' transactions and interactions as they arrive, beside the tables
loaded from the user's files, read back through Ibis for one customer or for everyone.

Two engines behind one interface:

- **DuckDB in a file**, the embedded default, for one process. Its threads share the database,
  each through a connection of its own (a DuckDB connection object is not thread-safe; its
  ``cursor()`` is a second connection to the same database). Writes take a lock of the process,
  so that appends run one at a time and ingestion order is commit order. Two processes cannot
  open one file: DuckDB locks it, and :meth:`EventStore.open` says to use PostgreSQL instead.
- **PostgreSQL**, for several workers or hosts, through Ibis' postgres backend (psycopg 3). An
  append holds a transaction-level advisory lock, so that appends of every worker run one at a
  time and a sequence number is visible only once every smaller one is.

Each event table holds the contract's columns (:mod:`churnml.io.contract`) plus ``event_id``
(the client's id of the event, unique within its table when given; NULL for rows loaded from
files) and ``seq`` (ingestion order: every stored row gets a new, larger number). Every table has
an index on ``customer_id``, so that one customer's reads are index lookups, never a scan of the
whole history. A small table ``churnml_store`` keeps, per table, the row count, the first and last
timestamps and the largest ``seq``, updated in the transaction of each append.

Durability: an append returns only after its transaction committed. DuckDB writes and syncs its
write-ahead log on commit (``fsync_mode`` STANDARD, the default; a commit too large for the log is
checkpointed into the database file before it returns) and replays the log on the next open;
PostgreSQL commits with its default ``synchronous_commit = on``.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import io
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import ibis
import ibis.expr.datatypes as idt
import ibis.expr.types as ir
import numpy as np
import pandas as pd
import pyarrow as pa

from churnml.errors import UserValueError
from churnml.io.contract import SPECS, DataValidationError, Problem, TableReport
from churnml.io.load import Dataset, LoadOptions, TableSource, connect, load_table

EVENT_TABLES = ("transactions", "interactions")
STATIC_TABLES = ("customers", "surveys")
META_TABLE = "churnml_store"
# The meta row whose presence says the store was loaded from files (its n: rows loaded).
LOADED_MARK = "files"
EVENT_ID, SEQ = "event_id", "seq"
MAX_EVENT_ID_LENGTH = 200
LOAD_BATCH_ROWS = 500_000
# Any fixed 64-bit number: the key of the advisory lock that serialises appends on PostgreSQL.
PG_APPEND_LOCK = 7_311_829_502_184_118
CONTRACT_DTYPES: dict[str, idt.DataType] = {
    "id": idt.string, "timestamp": idt.Timestamp(scale=6), "number": idt.float64, "string": idt.string,
    "integer": idt.int64,
}
# The checks of a frame source (churnml.io.load) run on Ibis' default backend, one DuckDB
# connection for the whole process, which refuses a second caller while busy: validations take turns.
_VALIDATION_LOCK = threading.Lock()
PG_ARRAY_TYPES = {"string": "text[]", "timestamp": "timestamp[]", "float64": "float8[]", "int64": "int8[]"}


@dataclass(frozen=True)
class AppendResult:
    """What an append did.

    Attributes
    ----------
    stored
        Rows stored now.
    duplicates
        Rows not stored because their ``event_id`` was stored before or appears earlier in the
        same batch (a client's retry).
    dropped
        Rows dropped by the documented cleaning rules of the store's load options (a zero amount).
    """

    stored: int
    duplicates: int
    dropped: int = 0


def _quoted(name: str) -> str:
    """An SQL identifier, quoted alike for DuckDB and PostgreSQL."""
    return '"' + name.replace('"', '""') + '"'


class _DuckDBEngine:
    """A DuckDB database file; one connection per thread, writes serialised by a process lock."""

    name = "duckdb"
    param = "?"

    def __init__(self, path: str) -> None:
        import duckdb

        target = Path(path).expanduser().absolute()
        if not target.parent.is_dir():
            raise UserValueError(f"event store '{path}': directory {target.parent} does not exist; create it or "
                                 "choose another path")
        try:
            self._con = duckdb.connect(str(target))
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise UserValueError(
                    f"event store '{path}' is open in another process, and a DuckDB file serves one process "
                    "only: stop that process, or use PostgreSQL (store=postgresql://user@host:port/dbname) "
                    "for several workers"
                ) from None
            raise UserValueError(f"event store '{path}' cannot be opened as a DuckDB file: {exc}") from None
        self.location = str(target)
        self._local = threading.local()
        self._cursors: list[Any] = []
        self._guard = threading.Lock()
        self._write_lock = threading.Lock()

    def backend(self) -> Any:
        """This thread's Ibis backend."""
        backend = getattr(self._local, "backend", None)
        if backend is None:
            with self._guard:
                if self._con is None:
                    raise RuntimeError("the event store is closed")
                cursor = self._con.cursor()
                self._cursors.append(cursor)
            backend = ibis.duckdb.from_connection(cursor)
            self._local.backend = backend
        return backend

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self.backend().con.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        cursor = self.backend().con
        with self._write_lock:
            cursor.execute("BEGIN TRANSACTION")
            try:
                yield cursor
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")

    @staticmethod
    def execute(cursor: Any, sql: str, params: tuple = ()) -> list[tuple]:
        result = cursor.execute(sql, params)
        return result.fetchall() if result.description else []

    def insert_events(self, cursor: Any, table: str, rows: pa.Table) -> list[tuple]:
        """Insert rows whose ``event_id`` may be stored already; the ``seq, ts`` of those stored."""
        columns = ", ".join(map(_quoted, rows.column_names))
        cursor.register("churnml_batch", rows)
        try:
            return cursor.execute(
                f"INSERT INTO {_quoted(table)} ({columns}) SELECT {columns} FROM churnml_batch "
                f"ON CONFLICT ({EVENT_ID}) DO NOTHING RETURNING {SEQ}, ts"
            ).fetchall()
        finally:
            cursor.unregister("churnml_batch")

    def copy_rows(self, cursor: Any, table: str, rows: pa.Table) -> None:
        """Bulk insert (no conflicts possible: loads go into empty tables)."""
        columns = ", ".join(map(_quoted, rows.column_names))
        cursor.register("churnml_batch", rows)
        try:
            cursor.execute(f"INSERT INTO {_quoted(table)} ({columns}) SELECT {columns} FROM churnml_batch")
        finally:
            cursor.unregister("churnml_batch")

    def close(self) -> None:
        with self._guard:
            for cursor in self._cursors:
                cursor.close()
            self._cursors.clear()
            if self._con is not None:
                self._con.close()
            self._con = None


class _PostgresEngine:
    """A PostgreSQL database; one connection per thread, appends serialised by an advisory lock."""

    name = "postgres"
    param = "%s"

    def __init__(self, url: str) -> None:
        self.location = url
        self._local = threading.local()
        self._backends: list[Any] = []
        self._guard = threading.Lock()
        self._closed = False
        self.backend()  # fail now, with the URL named, if the server cannot be reached

    def backend(self) -> Any:
        backend = getattr(self._local, "backend", None)
        if backend is None:
            if self._closed:
                raise RuntimeError("the event store is closed")
            try:
                import psycopg  # noqa: F401  (Ibis' postgres backend needs it)
            except ImportError:
                raise UserValueError("a PostgreSQL event store needs psycopg 3: pip install 'psycopg[binary]'") from None
            try:
                backend = ibis.connect(self.location)
            except Exception as exc:  # psycopg's OperationalError: server down, wrong name or password
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserValueError(f"event store '{_without_password(self.location)}' cannot be reached: "
                                     f"{first}; check the URL and that the server runs") from None
            with self._guard:
                self._backends.append(backend)
            self._local.backend = backend
        return backend

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self.backend().con.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        con = self.backend().con
        with con.transaction(), con.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (PG_APPEND_LOCK,))
            yield cursor

    @staticmethod
    def execute(cursor: Any, sql: str, params: tuple = ()) -> list[tuple]:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []

    def insert_events(self, cursor: Any, table: str, rows: pa.Table) -> list[tuple]:
        columns = ", ".join(map(_quoted, rows.column_names))
        arrays = ", ".join(f"%s::{PG_ARRAY_TYPES[_arrow_kind(rows.schema.field(c).type)]}" for c in rows.column_names)
        cursor.execute(
            f"INSERT INTO {_quoted(table)} ({columns}) SELECT * FROM unnest({arrays}) "
            f"ON CONFLICT ({EVENT_ID}) DO NOTHING RETURNING {SEQ}, ts",
            [rows.column(c).to_pylist() for c in rows.column_names],
        )
        return cursor.fetchall()

    def copy_rows(self, cursor: Any, table: str, rows: pa.Table) -> None:
        """COPY in CSV: pyarrow writes it in C++; PostgreSQL reads an unquoted empty field as NULL
        and a quoted one ("") as empty text, which is how pyarrow writes them."""
        import pyarrow.csv as pacsv

        rows = _microseconds(rows)
        buffer = io.BytesIO()
        pacsv.write_csv(rows, buffer, pacsv.WriteOptions(include_header=False))
        columns = ", ".join(map(_quoted, rows.column_names))
        with cursor.copy(f"COPY {_quoted(table)} ({columns}) FROM STDIN (FORMAT csv)") as copy_in:
            copy_in.write(buffer.getbuffer())

    def close(self) -> None:
        with self._guard:
            self._closed = True
            for backend in self._backends:
                backend.disconnect()
            self._backends.clear()


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _arrow_kind(dtype: pa.DataType) -> str:
    if pa.types.is_timestamp(dtype):
        return "timestamp"
    if pa.types.is_floating(dtype):
        return "float64"
    if pa.types.is_integer(dtype):
        return "int64"
    return "string"


class EventStore:
    """Transactions and interactions as they arrive, beside the tables loaded from files.

    Open one with :meth:`open`; it may be shared by the threads of a process (each gets its own
    connection). Datasets it hands out (:meth:`dataset`, :meth:`customer_dataset`) are bound to
    the connection of the thread that asked and must be used by that thread.
    """

    def __init__(self, engine: _DuckDBEngine | _PostgresEngine, options: LoadOptions = LoadOptions()) -> None:
        self._engine = engine
        self.options = options
        # Per thread: an in-memory DuckDB that validates events, and the Ibis tables of the store
        # (looking a table up asks the catalog; its columns change only when files are loaded).
        self._local = threading.local()
        self._generation = 0
        self._create_meta()
        # A DuckDB file has one writer, this process: what it stores after opening is known here,
        # so that the checks every score makes (has this customer changed?) need no query.
        self._private = self._engine.name == "duckdb"
        self._memory_lock = threading.Lock()
        self._remember_opening()

    def _remember_opening(self) -> None:
        rows = self._engine.query(f"SELECT max(max_seq) FROM {META_TABLE}")
        with self._memory_lock:
            self._opened_version = self._known_version = int(rows[0][0] or 0)
            self._appended: dict[str, int] = {}

    @classmethod
    def open(cls, location: str, options: LoadOptions = LoadOptions()) -> "EventStore":
        """Open (or create) a store.

        Parameters
        ----------
        location
            A file path (DuckDB, created if missing) or ``postgresql://user@host:port/dbname``.
        options
            Cleaning rules and limits for appended events, as for files
            (:func:`churnml.io.sources.load_options` of the data config).

        Raises
        ------
        churnml.errors.UserValueError
            The DuckDB file is open in another process, its directory is missing, or the
            PostgreSQL server cannot be reached.
        """
        location = str(location)
        if location.startswith(("postgresql://", "postgres://")):
            return cls(_PostgresEngine(location), options)
        if "://" in location:
            raise UserValueError(f"event store '{location}': use a file path (DuckDB) or postgresql://user@host:port/dbname")
        return cls(_DuckDBEngine(location), options)

    @property
    def engine(self) -> str:
        """``duckdb`` or ``postgres``."""
        return self._engine.name

    def _create_meta(self) -> None:
        with self._engine.transaction() as cursor:
            self._engine.execute(cursor, f"CREATE TABLE IF NOT EXISTS {META_TABLE} (name VARCHAR PRIMARY KEY, "
                                 "n BIGINT NOT NULL, first_ts TIMESTAMP, last_ts TIMESTAMP, max_seq BIGINT NOT NULL)")

    def _meta(self) -> dict[str, tuple[int, Any, Any, int]]:
        rows = self._engine.query(f"SELECT name, n, first_ts, last_ts, max_seq FROM {META_TABLE}")
        return {name: (int(n), first, last, int(max_seq)) for name, n, first, last, max_seq in rows}

    def tables(self) -> tuple[str, ...]:
        """The contract tables the store holds, in contract order."""
        meta = self._meta()
        return tuple(name for name in EVENT_TABLES + STATIC_TABLES if name in meta)

    def is_empty(self) -> bool:
        """Whether nothing was loaded or appended yet."""
        return not any(n for n, *_ in self._meta().values())

    def version(self) -> int:
        """The highest ingestion sequence number overall (0: nothing stored)."""
        if self._private:
            with self._memory_lock:
                return self._known_version
        rows = self._engine.query(f"SELECT max(max_seq) FROM {META_TABLE}")
        return int(rows[0][0] or 0)

    def changed_since(self, customer_id: str, version: int) -> bool:
        """Whether an event of the customer was stored after ``version``
        (``customer_version(customer_id) > version``), without a query on a DuckDB store for a
        ``version`` at or after its opening."""
        if self._private:
            with self._memory_lock:
                if version >= self._opened_version:
                    return self._appended.get(str(customer_id), 0) > version
        return self.customer_version(customer_id) > version

    def counts(self) -> dict[str, int]:
        """Rows per event table (``transactions``, ``interactions``; 0 for a table not held)."""
        meta = self._meta()
        return {name: meta[name][0] if name in meta else 0 for name in EVENT_TABLES}

    def customer_version(self, customer_id: str) -> int:
        """The highest ingestion sequence number of the customer's events (0: none).

        Raw SQL with a parameter rather than an Ibis expression: it runs on every request, and
        compiling an expression costs more than the indexed lookup itself.
        """
        held = [t for t in self.tables() if t in EVENT_TABLES]
        if not held:
            return 0
        p = self._engine.param
        parts = " UNION ALL ".join(f"SELECT max({SEQ}) AS s FROM {_quoted(t)} WHERE customer_id = {p}" for t in held)
        rows = self._engine.query(f"SELECT max(s) FROM ({parts}) AS per_table", (str(customer_id),) * len(held))
        return int(rows[0][0] or 0)

    # -- reading ------------------------------------------------------------------------------

    def _table(self, name: str) -> ir.Table:
        """The store's table ``name`` on this thread's connection."""
        cache = getattr(self._local, "tables", None)
        if cache is None or cache[0] != self._generation:
            cache = self._local.tables = (self._generation, {})
        if name not in cache[1]:
            cache[1][name] = self._engine.backend().table(name)
        return cache[1][name]

    def _reports(self, meta: Mapping[str, tuple[int, Any, Any, int]]) -> dict[str, TableReport]:
        reports = {}
        for name in EVENT_TABLES + STATIC_TABLES:
            if name not in meta:
                continue
            n, first, last, _ = meta[name]
            columns = tuple(c for c in self._table(name).columns if c not in (EVENT_ID, SEQ))
            reports[name] = TableReport(
                source=f"event store {_without_password(self._engine.location)}", rows_read=n, rows_kept=n,
                first_ts=None if first is None else pd.Timestamp(first), last_ts=None if last is None else pd.Timestamp(last),
                columns=columns,
            )
        return reports

    def _dataset(self, customer_id: str | None, facts: dict) -> Dataset:
        meta = self._meta()
        if "transactions" not in meta:
            raise UserValueError("the event store holds no transactions yet: load the user's files "
                                 "(EventStore.load) or post transactions first")
        backend = self._engine.backend()
        tables: dict[str, ir.Table] = {}
        for name in EVENT_TABLES + STATIC_TABLES:
            if name not in meta:
                continue
            table = self._table(name)
            if customer_id is not None:
                table = table.filter(table.customer_id == str(customer_id))
            if name in EVENT_TABLES:
                table = table.drop(EVENT_ID, SEQ)
            tables[name] = table
        return Dataset(backend, tables["transactions"], tables.get("interactions"), tables.get("customers"),
                       surveys=tables.get("surveys"), reports=self._reports(meta), facts=facts)

    def dataset(self) -> Dataset:
        """The whole store as a :class:`~churnml.io.load.Dataset` of Ibis tables (contract columns
        only), with reports whose row counts and date ranges are the store's.

        Raises
        ------
        churnml.errors.UserValueError
            The store holds no transactions.
        """
        return self._dataset(None, {})

    def customer_dataset(self, customer_id: str, facts: Mapping[str, Any]) -> Dataset:
        """One customer's rows of every table, as a :class:`~churnml.io.load.Dataset`.

        Parameters
        ----------
        customer_id
            The customer, compared as text.
        facts
            The whole store's ``Dataset.facts`` (breadth values, see
            :func:`churnml.features.build.dataset_breadth_values`), so that the customer's
            features count the same columns as the whole store's. A copy is kept: facts computed
            on one customer's rows never flow back.

        Returns
        -------
        Dataset
            Tables filtered by ``customer_id`` (read through the ``customer_id`` index), possibly
            empty; the reports and hence ``first_date`` / ``last_date`` are the whole store's.
        """
        return self._dataset(str(customer_id), copy.deepcopy(dict(facts)))

    # -- writing ------------------------------------------------------------------------------

    def append(self, table: str, events: pd.DataFrame) -> AppendResult:
        """Validate and store events, in one transaction; returns once it is committed.

        Parameters
        ----------
        table
            ``transactions`` or ``interactions``.
        events
            Rows in contract column names (:mod:`churnml.io.contract`), plus an optional
            ``event_id`` column: text chosen by the client, unique within the table; a row whose
            ``event_id`` is stored already, or appears earlier in the batch, is a duplicate and
            is not stored again (the first one stored wins). Rows without one are always stored.

        Returns
        -------
        AppendResult
            Rows stored, duplicates, and rows dropped by the cleaning rules (a zero amount).

        Raises
        ------
        churnml.io.contract.DataValidationError
            Any row breaks the contract (same checks and message as a file), an ``event_id`` is
            not text of at most 200 characters, a column is one the store's table lacks (it was
            loaded from files without it), or the store was loaded without this table; nothing
            is stored then.
        churnml.errors.UserValueError
            ``table`` is not an event table.
        """
        if table not in EVENT_TABLES:
            raise UserValueError(f"events go to {' or '.join(EVENT_TABLES)}, not '{table}'")
        label = f"{table} events"
        ids = _event_ids(events, label)
        contract = events.drop(columns=[EVENT_ID]) if EVENT_ID in events.columns else events
        rows, dropped = self._validated(table, contract, label)
        rows = rows.append_column(EVENT_ID, pa.array(ids, pa.string()))
        if dropped is not None:
            rows = rows.filter(pa.array(~dropped))
        n_dropped = 0 if dropped is None else int(dropped.sum())
        rows, repeated = _first_of_each_id(rows)
        result, last_seq = self._insert(table, rows, repeated, n_dropped, label)
        if self._private and result.stored:
            # After the commit: a reader told "changed" finds the events in the store.
            customers = set(rows.column("customer_id").to_pylist())
            with self._memory_lock:
                self._known_version = max(self._known_version, last_seq)
                for customer in customers:
                    self._appended[customer] = max(self._appended.get(customer, 0), last_seq)
        return result

    def _insert(self, table: str, rows: pa.Table, repeated: int, n_dropped: int,
                label: str) -> tuple[AppendResult, int]:
        """Insert validated rows in one transaction (under the engine's write lock); the result
        and the highest sequence number given (0: none)."""
        with self._engine.transaction() as cursor:
            meta = {name: max_seq for name, _, _, _, max_seq in self._engine.execute(
                cursor, f"SELECT name, n, first_ts, last_ts, max_seq FROM {META_TABLE}")}
            if table not in meta:
                self._refuse_if_loaded(meta, table, label)
                self._create_event_table(cursor, table, self._new_table_schema(table), with_indexes=True)
            self._refuse_unknown_columns(table, rows.column_names, label)
            if rows.num_rows == 0:
                return AppendResult(0, repeated, n_dropped), 0
            version = max(meta.values(), default=0)
            last_seq = version + rows.num_rows
            rows = rows.append_column(SEQ, pa.array(np.arange(version + 1, version + 1 + rows.num_rows), pa.int64()))
            stored = self._engine.insert_events(cursor, table, rows)
            if stored:
                stamps = [ts for _, ts in stored]
                self._bump_meta(cursor, table, len(stored), min(stamps), max(stamps), max(seq for seq, _ in stored))
        return AppendResult(len(stored), repeated + rows.num_rows - len(stored), n_dropped), last_seq

    def _validated(self, table: str, events: pd.DataFrame, label: str) -> tuple[pa.Table, np.ndarray | None]:
        """The typed rows, in the order given, and which rows the cleaning rules drop (None: none).

        Validation is :func:`churnml.io.load.load_table`'s (a transaction carries its amount), on
        an in-memory DuckDB of this thread, with every dropping rule off so that its rows stay
        aligned with the events; the store's own dropping rule for events (a zero amount) is
        applied here. A missing customer
        id is refused whatever ``drop_missing_customer_id`` says: an event without a customer
        cannot be scored.
        """
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = connect()
            # Rows come back in the order given only with insertion order kept (connect() drops it).
            scratch.raw_sql("SET preserve_insertion_order = true")
            self._local.scratch = scratch
        options = replace(self.options, drop_zero_amount=False, drop_missing_customer_id=False,
                          drop_exact_duplicates=False)
        frame = _text_if_mixed(events.reset_index(drop=True))
        with _VALIDATION_LOCK:
            typed, _ = load_table(table, TableSource(frame=frame, label="events"), options, scratch, fill=False)
            rows = typed.to_pyarrow()
            scratch.drop_table(f"churnml_{table}", force=True)
        if rows.num_rows != len(events):
            raise RuntimeError(f"validation returned {rows.num_rows} rows for {len(events)} events")
        rows = _microseconds(rows)
        if table == "transactions" and self.options.drop_zero_amount:
            zero = np.asarray(rows.column("amount").to_numpy(zero_copy_only=False) == 0)
            return rows, (zero if zero.any() else None)
        return rows, None

    @staticmethod
    def _refuse_if_loaded(meta: Mapping[str, int], table: str, label: str) -> None:
        if LOADED_MARK in meta:
            raise DataValidationError([Problem(
                label, None, f"the store was loaded from files without {table}, and features of models trained "
                             f"without them would change; load files that include {table}",
            )])

    def _refuse_unknown_columns(self, table: str, columns: list[str], label: str) -> None:
        # Asked of the catalog, not the cache: the table may have been created by this transaction.
        held = set(self._engine.backend().table(table).columns)
        unknown = [c for c in columns if c not in held]
        if unknown:
            raise DataValidationError([Problem(
                label, c, f"is not a column of the store's {table} (loaded from files without it); leave it out",
            ) for c in unknown])

    @staticmethod
    def _new_table_schema(table: str) -> ibis.Schema:
        """Every contract column: a store never loaded from files takes whatever events carry."""
        spec = SPECS[table]
        return ibis.schema({c: CONTRACT_DTYPES[kind] for c, kind in spec.kinds.items()})

    def _create_event_table(self, cursor: Any, table: str, schema: ibis.Schema, with_indexes: bool) -> None:
        columns = dict(schema.items())
        columns[EVENT_ID] = idt.string
        columns[SEQ] = idt.Int64(nullable=False)
        self._create_table(cursor, table, ibis.schema(columns))
        if with_indexes:
            self._create_indexes(cursor, table)
        self._engine.execute(cursor, f"INSERT INTO {META_TABLE} VALUES ({self._engine.param}, 0, NULL, NULL, 0)",
                             (table,))

    def _create_table(self, cursor: Any, table: str, schema: ibis.Schema) -> None:
        # The DDL of Ibis (its types for each engine), run on the write cursor, inside its transaction.
        dialect = self._engine.backend().dialect
        import sqlglot.expressions as sge

        create = sge.Create(kind="TABLE", this=sge.Schema(
            this=sge.to_identifier(table, quoted=True), expressions=schema.to_sqlglot_column_defs(dialect),
        ))
        self._engine.execute(cursor, create.sql(dialect))

    def _create_indexes(self, cursor: Any, table: str) -> None:
        self._engine.execute(cursor, f"CREATE INDEX {_quoted(table + '_customer_id')} ON {_quoted(table)} (customer_id)")
        if table in EVENT_TABLES:
            self._engine.execute(cursor, f"CREATE UNIQUE INDEX {_quoted(table + '_event_id')} ON {_quoted(table)} ({EVENT_ID})")

    def _bump_meta(self, cursor: Any, table: str, n: int, first: Any, last: Any, max_seq: int) -> None:
        p = self._engine.param
        self._engine.execute(
            cursor,
            f"UPDATE {META_TABLE} SET n = n + {p}, first_ts = coalesce(least(first_ts, {p}), {p}), "
            f"last_ts = coalesce(greatest(last_ts, {p}), {p}), max_seq = greatest(max_seq, {p}) WHERE name = {p}",
            (n, first, first, last, last, max_seq, table),
        )

    def load(self, dataset: Dataset) -> dict[str, int]:
        """Copy a validated Dataset (the user's files) into the empty store, in one transaction.

        Transactions and interactions become event tables (``event_id`` NULL, ``seq`` in load
        order); customers and surveys are copied as they are; treatments are not kept. Rows are
        streamed in Arrow batches: DuckDB inserts each batch from Arrow, PostgreSQL reads it by
        COPY. Indexes are built after the rows are in. The reports' first and last timestamps are
        the dataset's, so the store's ``first_date`` and ``last_date`` equal the files'.

        Returns
        -------
        dict
            Rows stored per table.

        Raises
        ------
        churnml.errors.UserValueError
            The store is not empty.
        """
        copied: dict[str, int] = {}
        self._generation += 1
        with self._engine.transaction() as cursor:
            held = self._engine.execute(cursor, f"SELECT name FROM {META_TABLE} WHERE n > 0 OR name = {self._engine.param}",
                                        (LOADED_MARK,))
            if held:
                raise UserValueError(f"event store '{_without_password(self._engine.location)}' is not empty: files are "
                                     "loaded into a new store only; use a new file or database, or drop its tables")
            for name in self._engine.execute(cursor, f"SELECT name FROM {META_TABLE}"):
                self._engine.execute(cursor, f"DROP TABLE IF EXISTS {_quoted(name[0])}")
            self._engine.execute(cursor, f"DELETE FROM {META_TABLE}")
            seq = 0
            for name in EVENT_TABLES + STATIC_TABLES:
                source = getattr(dataset, name)
                if source is None:
                    continue
                schema = _store_schema(source.schema())
                if name in EVENT_TABLES:
                    self._create_event_table(cursor, name, schema, with_indexes=False)
                else:
                    self._create_table(cursor, name, schema)
                    self._engine.execute(cursor, f"INSERT INTO {META_TABLE} VALUES ({self._engine.param}, 0, NULL, NULL, 0)",
                                         (name,))
                n = 0
                for batch in _arrow_batches(dataset.con, source.select(*schema.names), LOAD_BATCH_ROWS):
                    rows = _microseconds(pa.Table.from_batches([batch]))
                    if name in EVENT_TABLES:
                        rows = rows.append_column(EVENT_ID, pa.nulls(rows.num_rows, pa.string()))
                        rows = rows.append_column(SEQ, pa.array(np.arange(seq + 1, seq + 1 + rows.num_rows), pa.int64()))
                        seq += rows.num_rows
                    self._engine.copy_rows(cursor, name, rows)
                    n += rows.num_rows
                self._create_indexes(cursor, name)
                report = dataset.reports.get(name)
                first = _plain_ts(report.first_ts) if report else None
                last = _plain_ts(report.last_ts) if report else None
                p = self._engine.param
                self._engine.execute(cursor, f"UPDATE {META_TABLE} SET n = {p}, first_ts = {p}, last_ts = {p}, "
                                     f"max_seq = {p} WHERE name = {p}",
                                     (n, first, last, seq if name in EVENT_TABLES else 0, name))
                copied[name] = n
            self._engine.execute(cursor, f"INSERT INTO {META_TABLE} VALUES ({self._engine.param}, {self._engine.param}, "
                                 "NULL, NULL, 0)", (LOADED_MARK, sum(copied.values())))
        if self.engine == "postgres":
            # Planner statistics now, not at autovacuum's leisure: without them PostgreSQL plans a
            # customer's lookup as a parallel scan (about 20 ms instead of 0.1 ms).
            with self._engine.transaction() as cursor:
                for name in copied:
                    self._engine.execute(cursor, f"ANALYZE {_quoted(name)}")
        self._remember_opening()
        self._generation += 1
        return copied

    def close(self) -> None:
        """Close every connection of every thread; the store cannot be used afterwards."""
        self._engine.close()

    def __enter__(self) -> "EventStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _arrow_batches(con: Any, table: ir.Table, rows: int) -> Iterator[pa.RecordBatch]:
    """A table's rows in Arrow batches of at most ``rows``, without collecting them all.

    On DuckDB straight from its result reader: Ibis' ``to_pyarrow_batches`` calls
    ``fetch_record_batch``, which DuckDB 2 renamed ``to_arrow_reader``.
    """
    if getattr(con, "name", None) == "duckdb":
        relation = con.con.sql(con.compile(table))
        reader = relation.to_arrow_reader(rows) if hasattr(relation, "to_arrow_reader") else relation.fetch_arrow_reader(rows)
        yield from reader
        return
    yield from table.to_pyarrow_batches(chunk_size=rows)


def _store_schema(schema: ibis.Schema) -> ibis.Schema:
    """A dataset table's schema as the store keeps it: timestamps in microseconds (both engines'
    resolution), everything nullable."""
    return ibis.schema({
        name: idt.Timestamp(scale=6) if dtype.is_timestamp() else dtype.copy(nullable=True)
        for name, dtype in schema.items()
    })


def _microseconds(rows: pa.Table) -> pa.Table:
    """Timestamps at the engines' resolution (pandas gives nanoseconds; finer digits are cut,
    as the engines would cut them)."""
    schema = pa.schema([pa.field(f.name, pa.timestamp("us")) if pa.types.is_timestamp(f.type) else f
                        for f in rows.schema])
    return rows if schema == rows.schema else rows.cast(schema, safe=False)


def _plain_ts(value: Any) -> dt.datetime | None:
    if value is None or pd.isna(value):
        return None
    return pd.Timestamp(value).tz_localize(None).to_pydatetime() if pd.Timestamp(value).tzinfo else pd.Timestamp(value).to_pydatetime()


def _text_if_mixed(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns holding values of several Python types (``10`` and ``"ten"`` from JSON) as text,
    which validation parses and whose misfits it counts and shows; such a column would otherwise
    reach it with no type at all. Python spells numbers so that they parse back to the same float."""
    mixed = {}
    for column in frame.columns:
        if frame[column].dtype == object:
            kinds = {type(v) for v in frame[column] if v is not None and not (isinstance(v, float) and np.isnan(v))}
            if len(kinds) > 1:
                mixed[column] = [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                                 for v in frame[column]]
    return frame.assign(**{c: pd.Series(v, index=frame.index, dtype=object) for c, v in mixed.items()}) if mixed else frame


def _event_ids(events: pd.DataFrame, label: str) -> list[str | None]:
    """The client's event ids as text (None: no id), refusing ids that are not short text."""
    if EVENT_ID not in events.columns:
        return [None] * len(events)
    ids: list[str | None] = []
    bad: list[str] = []
    n_bad = 0
    for i, value in enumerate(events[EVENT_ID].tolist(), start=1):
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            ids.append(None)
            continue
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_EVENT_ID_LENGTH:
            n_bad += 1
            if len(bad) < 5:
                bad.append(f"row {i}: {str(value)[:40]!r}")
            ids.append(None)
            continue
        ids.append(value)
    if n_bad:
        raise DataValidationError([Problem(
            label, EVENT_ID, f"must be non-blank text of at most {MAX_EVENT_ID_LENGTH} characters, or missing",
            n_bad, len(events), tuple(bad),
        )])
    return ids


def _first_of_each_id(rows: pa.Table) -> tuple[pa.Table, int]:
    """The rows without a repeat of an earlier row's ``event_id`` (rows without one all stay),
    and how many repeats were left out."""
    ids = rows.column(EVENT_ID).to_pylist()
    seen: set[str] = set()
    keep = np.ones(len(ids), dtype=bool)
    for i, event_id in enumerate(ids):
        if event_id is None:
            continue
        if event_id in seen:
            keep[i] = False
        seen.add(event_id)
    repeated = int((~keep).sum())
    return (rows.filter(pa.array(keep)) if repeated else rows), repeated
