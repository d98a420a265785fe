"""Reading input files into validated, typed tables, and writing outputs atomically.

This is the only module that opens data files. Inputs are read by the query engine straight
from CSV or Parquet (no pandas copy of the transactions), checked against the contract in one
aggregate pass, cleaned by the documented rules, and kept as engine tables.
"""

from __future__ import annotations

import datetime as dt
import glob
import logging
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Mapping

import ibis
import ibis.expr.datatypes as idt
import ibis.expr.types as ir
import pandas as pd

from churnml.io.contract import (
    MISSING_MARKERS,
    SPECS,
    AnswerScales,
    DataValidationError,
    Problem,
    TableReport,
    TableSpec,
)

log = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
# An explicit offset (Z, +02, +0200, +02:00) right after a clock time marks an aware timestamp.
TZ_OFFSET_PATTERN = r"\d{2}:\d{2}(:\d{2}(\.\d+)?)?\s*(Z|UTC|[+-]\d{2}(:?\d{2})?)\s*$"
N_EXAMPLES = 5
RAW_PREFIX = "raw__"
# Ids stored as floating-point numbers keep their integer spelling up to 2**53, below which every
# whole number is exact.
MAX_EXACT_FLOAT_ID = 2.0**53
MAX_DECIMAL_ID = 1e18


@dataclass(frozen=True)
class TableSource:
    """Where one contract table comes from: a file path or an in-memory frame.

    Parameters
    ----------
    path
        CSV or Parquet file (a directory or glob of Parquet files also works).
    frame
        A pandas DataFrame, used instead of ``path`` (bundled data sets, tests).
    columns
        Contract column name to the user's column name, for columns named differently.
    ts_format
        strptime format of timestamp strings when they are not ISO 8601 (e.g. ``%Y%m%d``).
    label
        Name used in messages for a frame source.
    """

    path: str | None = None
    frame: pd.DataFrame | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    ts_format: str | None = None
    label: str | None = None

    @property
    def name(self) -> str:
        """How messages name the source: its label, its path, or ``<frame>``."""
        return self.label or (f"'{self.path}'" if self.path else "<frame>")


@dataclass(frozen=True)
class LoadOptions:
    """Documented cleaning rules and limits applied while loading."""

    drop_exact_duplicates: bool = False
    drop_zero_amount: bool = True
    drop_missing_customer_id: bool = False
    max_future_days: float = 1.0
    now: dt.datetime | None = None


@dataclass
class Dataset:
    """Validated contract tables on one engine connection."""

    con: Any
    transactions: ir.Table
    interactions: ir.Table | None = None
    customers: ir.Table | None = None
    surveys: ir.Table | None = None
    treatments: ir.Table | None = None
    reports: dict[str, TableReport] = field(default_factory=dict)
    # Facts of the whole tables that no cutoff changes, computed on first use and kept, so that
    # features at many cutoffs query them once (see features.dataset_breadth_values).
    facts: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def first_date(self) -> dt.date:
        """The date of the first transaction."""
        return pd.Timestamp(self.reports["transactions"].first_ts).date()

    @property
    def last_date(self) -> dt.date:
        """The date of the last transaction."""
        return pd.Timestamp(self.reports["transactions"].last_ts).date()

    def summary(self) -> dict[str, dict]:
        """Each table's load report as plain values."""
        return {name: report.as_dict() for name, report in self.reports.items()}


def connect(engine: str = "duckdb", **options: Any) -> Any:
    """An Ibis connection whose timestamps are compared in UTC."""
    if engine == "duckdb":
        con = ibis.duckdb.connect(**options)
        con.raw_sql("SET TimeZone = 'UTC'")
        # Outputs are sorted explicitly; not keeping file order lets DuckDB stream with less memory.
        con.raw_sql("SET preserve_insertion_order = false")
        return con
    if engine == "spark":
        from churnml.io.spark import connect_spark

        return connect_spark(**options)
    raise ValueError(f"unknown engine '{engine}': use 'duckdb' or 'spark'")


def load_dataset(
    transactions: TableSource,
    interactions: TableSource | None = None,
    customers: TableSource | None = None,
    surveys: TableSource | None = None,
    treatments: TableSource | None = None,
    options: LoadOptions = LoadOptions(),
    con: Any = None,
    materialize: bool = False,
) -> Dataset:
    """Read, validate and clean the contract tables.

    With ``materialize`` the cleaned tables are computed once and kept by the engine, which pays
    off when features are built at many cutoffs; otherwise they stay lazy views of the files.

    Raises
    ------
    DataValidationError
        Naming the file, the column, the number of bad rows and examples, for every problem
        found; nothing is kept in that case.
    """
    con = con if con is not None else connect()
    now = options.now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    future_limit = now + dt.timedelta(days=options.max_future_days)
    tables: dict[str, ir.Table] = {}
    reports: dict[str, TableReport] = {}
    awareness: dict[str, bool] = {}
    given = {"transactions": transactions, "interactions": interactions, "customers": customers, "surveys": surveys,
             "treatments": treatments}
    for spec_name, source in given.items():
        if source is None:
            continue
        spec = SPECS[spec_name]
        table, report, aware = _load_table(con, spec, source, options, future_limit, materialize)
        tables[spec_name], reports[spec_name] = table, report
        if aware is not None:
            awareness[spec_name] = aware
    if len(set(awareness.values())) > 1:
        described = ", ".join(f"{n} {'aware' if a else 'naive'}" for n, a in awareness.items())
        raise DataValidationError(
            [Problem("input tables", "ts", f"mix time-zone-aware and naive timestamps ({described}); use one kind")]
        )
    for name, report in reports.items():
        if any(report.dropped.values()):
            log.info("%s: kept %s of %s rows; dropped %s", name, report.rows_kept, report.rows_read, report.dropped)
    return Dataset(con, tables["transactions"], tables.get("interactions"), tables.get("customers"),
                   surveys=tables.get("surveys"), treatments=tables.get("treatments"), reports=reports)


def load_table(
    name: str, source: TableSource, options: LoadOptions = LoadOptions(), con: Any = None, materialize: bool = False,
    fill: bool = True,
) -> tuple[ir.Table, TableReport]:
    """Read, validate and clean one contract table, by the rules :func:`load_dataset` applies to
    each of its tables (an event store validates posted interactions without transactions).

    Parameters
    ----------
    name
        Contract table name (``transactions``, ``interactions`` ...).
    fill
        Give the rows of a table without one of the spec's ``filled`` columns its value (as
        files are read); False: such a column is required (posted events carry their amount,
        so that they never mix counts with the values of the store's files).

    Raises
    ------
    DataValidationError
        As :func:`load_dataset`; a time-zone mix between tables cannot arise with one table.
    """
    con = con if con is not None else connect()
    now = options.now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    future_limit = now + dt.timedelta(days=options.max_future_days)
    spec = SPECS[name]
    if not fill:
        spec = replace(spec, required=(*spec.required, *spec.filled), filled={})
    table, report, _ = _load_table(con, spec, source, options, future_limit, materialize)
    return table, report


def _load_table(
    con: Any, spec: TableSpec, source: TableSource, options: LoadOptions, future_limit: dt.datetime,
    materialize: bool,
) -> tuple[ir.Table, TableReport, bool | None]:
    label = f"{spec.name} {source.name}"
    raw = _map_columns(_open_raw(con, source, label), spec, source, label)
    typed_exprs, aware, type_problems = _typed_columns(raw, spec, source, label, con.name)
    if type_problems:
        raise DataValidationError(type_problems)
    # Raw and typed values side by side, so one scan can count what failed to parse.
    both = raw.select(**{RAW_PREFIX + c: raw[c] for c in raw.columns}, **typed_exprs)
    checks = _run_checks(both, spec, future_limit)
    if checks["n_rows"] == 0:
        raise DataValidationError([Problem(label, None, "has no rows")])
    problems = _find_problems(both, spec, checks, label, options, future_limit, source.ts_format)
    if problems:
        raise DataValidationError(problems)

    cleaned = both.select(list(typed_exprs))
    filled = {column: value for column, value in spec.filled.items() if column not in cleaned.columns}
    if filled:
        # Cast from text: Ibis writes a float literal as 1.0, which DuckDB reads as a DECIMAL, and
        # every sum of spend in a query written by the engine would stay a decimal.
        cleaned = cleaned.mutate(**{column: ibis.literal(repr(float(value))).cast("float64")
                                    for column, value in filled.items()})
        log.warning("%s has no %s: every row counts as %s", label, " or ".join(filled),
                    ", ".join(f"{column} {value:g}" for column, value in filled.items()))
    dropped: dict[str, int] = {}
    if options.drop_missing_customer_id and checks.get("null_customer_id"):
        cleaned = cleaned.filter(cleaned.customer_id.notnull())
        dropped["missing_customer_id"] = checks["null_customer_id"]
    if options.drop_zero_amount and checks.get("zero_amount"):
        cleaned = cleaned.filter(cleaned.amount != 0)
        dropped["zero_amount"] = checks["zero_amount"]
    if options.drop_exact_duplicates:
        cleaned = cleaned.distinct()
    stored = materialize_table(con, spec.name, cleaned) if materialize or source.frame is not None else cleaned
    rows_kept = checks["n_rows"] - sum(dropped.values())
    if options.drop_exact_duplicates:
        rows_kept = int(stored.count().execute())
        dropped["exact_duplicates"] = checks["n_rows"] - sum(dropped.values()) - rows_kept
    if spec.unique:
        _check_unique(stored, spec, label, rows_kept)
    report = TableReport(
        source=source.name,
        rows_read=checks["n_rows"],
        rows_kept=rows_kept,
        dropped=dropped,
        first_ts=checks.get("min_ts"),
        last_ts=checks.get("max_ts"),
        columns=tuple(stored.columns),
        filled=filled,
    )
    return stored, report, aware


def materialize_table(con: Any, name: str, expr: ir.Table) -> ir.Table:
    """Compute an expression once and keep the result as an engine table."""
    if con.name == "pyspark":
        from churnml.io.spark import cache_table

        # Spark's create_table would write a managed table under ./spark-warehouse.
        return cache_table(con, f"churnml_{name}", expr)
    return con.create_table(f"churnml_{name}", expr, overwrite=True)


def _open_raw(con: Any, source: TableSource, label: str) -> ir.Table:
    if source.frame is not None:
        if source.frame.empty:
            raise DataValidationError([Problem(label, None, "has no rows")])
        _refuse_repeated_names([str(c) for c in source.frame.columns], label)
        return ibis.memtable(source.frame)
    if not source.path:
        raise DataValidationError([Problem(label, None, "no file given")])
    path = Path(source.path)
    # Globs and remote paths (hdfs://, s3a://) are left to the engine, which names a missing file.
    is_local = not any(ch in source.path for ch in "*?[") and "://" not in source.path
    if is_local and not path.exists():
        raise DataValidationError([Problem(label, None, f"file does not exist (looked for {path.resolve()})")])
    name = path.name.lower()
    if path.is_dir() or name.endswith(PARQUET_SUFFIXES) or (not is_local and not name.endswith(CSV_SUFFIXES)):
        reader = "parquet"
    elif name.endswith(CSV_SUFFIXES):
        reader = "csv"
    else:
        supported = ", ".join(CSV_SUFFIXES + PARQUET_SUFFIXES)
        raise DataValidationError([Problem(label, None, f"unknown file format '{path.suffix}'; supported: {supported}")])
    if is_local and path.is_file() and path.stat().st_size == 0:
        raise DataValidationError([Problem(label, None, "file is empty")])
    location = source.path if not is_local else str(path)
    try:
        if reader == "parquet":
            table = con.read_parquet(location)
            if con.name == "pyspark":
                from churnml.io.spark import with_utc_timestamps

                # Ibis types Spark's aware and naive timestamps alike; the aware/naive check needs them apart.
                table = with_utc_timestamps(con, table)
        elif con.name == "duckdb":
            # Strings first, so that every bad value can be counted and shown instead of failing the read.
            table = con.read_csv(location, all_varchar=True)
        else:
            table = con.read_csv(location, header=True, inferSchema=False)
        header = _file_header(con, reader, location, is_local, table.columns)
    except Exception as exc:  # the engine's parse errors are re-raised with the file named
        raise DataValidationError([Problem(label, None, f"cannot be read as {reader.upper()}: {exc}")]) from exc
    _refuse_repeated_names(header, label)
    return table


def _file_header(con: Any, reader: str, location: str, is_local: bool, columns: tuple[str, ...]) -> list[str]:
    """The column names as the file spells them.

    Engines rename a repeated name (DuckDB ``amount_1``, Spark ``amount3``), which would let the
    second column pass unnoticed. The file's own header is read only when a column could be such
    a renamed copy (always on Spark, whose renaming leaves no name as written).
    """
    lowered = {c.lower() for c in columns}
    renamed = any(
        (m := re.fullmatch(r"(.+)_\d+", c.lower())) is not None and m.group(1) in lowered for c in columns
    )
    if not renamed and con.name == "duckdb":
        return list(columns)
    if reader == "csv":
        if con.name == "duckdb":
            first = con.read_csv(location, all_varchar=True, header=False)
        else:
            first = con.read_csv(location, header=False, inferSchema=False)
        row = first.limit(1).to_pyarrow().to_pylist()
        return [str(v) for v in row[0].values()] if row else list(columns)
    if not is_local:
        # Spark refuses a Parquet schema with a repeated name itself; DuckDB's copies are left to
        # the names check, which cannot open remote schemas.
        return list(columns)
    import pyarrow.parquet as pq

    files = sorted(glob.glob(location)) if any(ch in location for ch in "*?[") else [location]
    if files and Path(files[0]).is_dir():
        files = sorted(str(p) for p in Path(files[0]).rglob("*") if p.is_file() and not p.name.startswith((".", "_")))
    return pq.read_schema(files[0]).names if files else list(columns)


def _refuse_repeated_names(names: list[str], label: str) -> None:
    """Refuse a header that names a column twice; names are compared without case, as the engines do."""
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(names, start=1):
        positions.setdefault(name.lower(), []).append(i)
    problems = [
        Problem(
            label, names[where[0] - 1],
            f"is the name of {len(where)} columns (names are compared without case); rename or remove all but one",
            examples=tuple(f"column {i}: {names[i - 1]!r}" for i in where[:N_EXAMPLES]),
        )
        for where in positions.values() if len(where) > 1
    ]
    if problems:
        raise DataValidationError(problems)


def _map_columns(raw: ir.Table, spec: TableSpec, source: TableSource, label: str) -> ir.Table:
    unknown = set(source.columns) - set(spec.kinds)
    if unknown:
        raise DataValidationError(
            [Problem(label, None, f"column mapping names {sorted(unknown)}, which are not contract columns {list(spec.kinds)}")]
        )
    rename = {contract: user for contract, user in source.columns.items() if user and user != contract}
    missing = [c for c in spec.required if rename.get(c, c) not in raw.columns]
    if missing:
        available = ", ".join(raw.columns)
        raise DataValidationError(
            [
                Problem(label, c, f"required column is missing{_mapped_from(rename, c)}; the file has: {available}")
                for c in missing
            ]
        )
    table = raw.rename({contract: user for contract, user in rename.items() if user in raw.columns})
    keep = [c for c in spec.kinds if c in table.columns]
    if spec.keep_extra:
        keep += [c for c in table.columns if c not in spec.kinds]
    return table.select(keep)


def _mapped_from(rename: Mapping[str, str], column: str) -> str:
    return f" (looked for '{rename[column]}')" if column in rename else ""


def _typed_columns(
    raw: ir.Table, spec: TableSpec, source: TableSource, label: str, engine: str = "duckdb"
) -> tuple[dict[str, ir.Value], bool | None, list[Problem]]:
    exprs: dict[str, ir.Value] = {}
    problems: list[Problem] = []
    aware: bool | None = None
    attributes = [c for c in raw.columns if c not in spec.kinds]
    attribute_kinds = _attribute_kinds(raw, attributes) if attributes else {}
    for col in raw.columns:
        kind = spec.kinds.get(col)
        value = raw[col]
        dtype = value.type()
        if kind == "id":
            exprs[col] = _as_id(value)
        elif kind == "number":
            if dtype.is_string() or dtype.is_numeric() or dtype.is_boolean():
                exprs[col] = _as_number(value)
            else:
                problems.append(Problem(label, col, f"holds {dtype}, expected numbers"))
        elif kind == "timestamp":
            if dtype.is_timestamp():
                aware = dtype.timezone is not None
                exprs[col] = value.cast(idt.Timestamp()) if aware else value
            elif dtype.is_date():
                exprs[col] = value.cast(idt.Timestamp())
            elif dtype.is_string():
                exprs[col] = _parse_timestamp(value, source.ts_format, engine)
            else:
                problems.append(Problem(label, col, f"holds {dtype}, expected dates or timestamps"))
        elif kind == "string" and col in spec.allowed:
            # Spellings differ between survey tools (NPS, Nps); the contract's values are lower-case.
            exprs[col] = _as_text(value).strip().lower()
        elif kind == "string":
            exprs[col] = _as_text(value)
        elif col in attribute_kinds:
            exprs[col] = _as_attribute(value, attribute_kinds[col])
        else:
            exprs[col] = value
    return exprs, aware, problems


def _missing(raw: ir.Value) -> ir.BooleanValue:
    """Whether a cell holds no value: null, blank text, a missing-value marker (``NA``, ``NULL``,
    ``nan`` ..., see :data:`churnml.io.contract.MISSING_MARKERS`) or a floating-point NaN."""
    dtype = raw.type()
    if dtype.is_string():
        return _null_or_blank(raw) | raw.isin(MISSING_MARKERS)
    if dtype.is_floating():
        return raw.isnull() | raw.isnan()
    return raw.isnull()


def _as_text(value: ir.Value) -> ir.StringValue:
    text = value.cast("string")
    return _missing(value).ifelse(ibis.null("string"), text)


def _as_number(value: ir.Value) -> ir.FloatingValue:
    """float64; missing cells are null, text that is no number is null too (and counted as unparsed)."""
    number = value.try_cast("float64") if value.type().is_string() else value.cast("float64")
    return _missing(value).ifelse(ibis.null("float64"), number)


def _as_id(value: ir.Value) -> ir.StringValue:
    """Ids as text, compared as written; missing cells (blank, markers, NaN) are null.

    Ids that went through a numeric column keep their integer spelling (12346.0 and a decimal
    12346.00 are '12346', as an integer column gives); other numbers keep their digits ('1.5').
    """
    dtype = value.type()
    if dtype.is_string():
        return _as_text(value)
    if dtype.is_floating() or dtype.is_decimal():
        limit = MAX_EXACT_FLOAT_ID if dtype.is_floating() else MAX_DECIMAL_ID
        whole = (value == value.floor()) & (value.abs() < limit)
        # try_cast: the engine may compute every branch, and NaN has no integer.
        spelled = whole.ifelse(value.try_cast("int64").cast("string"), value.cast("string"))
        return _missing(value).ifelse(ibis.null("string"), spelled)
    return value.cast("string")


# How a customers column outside the contract is typed; "as_is" for types no file format changes.
AttributeKind = Literal["number", "flag", "timestamp", "text", "as_is"]


def _attribute_kinds(raw: ir.Table, columns: list[str]) -> dict[str, AttributeKind]:
    """How each attribute column (a customers column outside the contract) is typed, the same
    whatever the file format: numbers (integer, decimal, float, or text that is all numbers) are
    float64; flags (boolean, or text that is all true/false) are float64 0/1; dates and timestamps
    (or ISO text that is all timestamps) are timestamps; other text is text. Text is judged by
    its non-missing cells, in one pass over the table.
    """
    kinds: dict[str, AttributeKind] = {}
    text: list[str] = []
    for col in columns:
        dtype = raw[col].type()
        if dtype.is_numeric():
            kinds[col] = "number"
        elif dtype.is_boolean():
            kinds[col] = "flag"
        elif dtype.is_timestamp() or dtype.is_date():
            kinds[col] = "timestamp"
        elif dtype.is_string():
            text.append(col)
        else:
            kinds[col] = "as_is"
    if not text:
        return kinds
    aggs: dict[str, ir.Scalar] = {}
    for i, col in enumerate(text):
        value = raw[col]
        present = ~_missing(value)
        aggs[f"present_{i}"] = present.sum()
        aggs[f"number_{i}"] = (present & value.try_cast("float64").notnull()).sum()
        aggs[f"flag_{i}"] = (present & value.strip().lower().isin(("true", "false"))).sum()
        aggs[f"timestamp_{i}"] = (present & _parse_timestamp(value, None).notnull()).sum()
    counts = raw.aggregate(**aggs).to_pandas().iloc[0]
    for i, col in enumerate(text):
        n_present = int(counts[f"present_{i}"] or 0)
        kind = "text"
        if n_present:
            for candidate in ("number", "flag", "timestamp"):
                if int(counts[f"{candidate}_{i}"] or 0) == n_present:
                    kind = candidate
                    break
        kinds[col] = kind
    return kinds


def _as_attribute(value: ir.Value, kind: AttributeKind) -> ir.Value:
    dtype = value.type()
    if kind == "number":
        return _as_number(value)
    if kind == "flag":
        flag = value.strip().lower() == "true" if dtype.is_string() else value
        return _missing(value).ifelse(ibis.null("float64"), flag.cast("float64"))
    if kind == "timestamp":
        if dtype.is_string():
            return _missing(value).ifelse(ibis.null(idt.Timestamp()), _parse_timestamp(value, None))
        return value.cast(idt.Timestamp())
    if kind == "text":
        return _as_text(value)
    return value


def _parse_timestamp(text: ir.StringValue, ts_format: str | None, engine: str = "duckdb") -> ir.TimestampValue:
    if ts_format:
        if engine == "duckdb":
            # DuckDB's strptime stops the query at the first misfit; null instead lets the checks
            # count the misfits and show examples. Spark's to_timestamp already gives null.
            try_strptime = ibis.udf.scalar.builtin(lambda text, ts_format: None, name="try_strptime",
                                                   signature=((idt.string, idt.string), idt.timestamp))
            return try_strptime(text, ts_format).cast(idt.Timestamp())
        return text.as_timestamp(ts_format).cast(idt.Timestamp())
    aware = text.try_cast(idt.Timestamp(timezone="UTC")).cast(idt.Timestamp())
    naive = text.try_cast(idt.Timestamp())
    return text.re_search(TZ_OFFSET_PATTERN).ifelse(aware, naive)


def _run_checks(both: ir.Table, spec: TableSpec, future_limit: dt.datetime) -> dict[str, Any]:
    aggs: dict[str, ir.Scalar] = {"n_rows": both.count()}
    for col in (c for c in spec.kinds if c in both.columns):
        raw, typed, kind = both[RAW_PREFIX + col], both[col], spec.kinds[col]
        # A column filled where it is absent must be whole where it is present.
        if col in spec.required or col in spec.filled:
            aggs[f"null_{col}"] = _missing(raw).sum()
        if kind in ("number", "timestamp"):
            aggs[f"bad_{col}"] = _unparsed(raw, typed).sum()
        if kind == "number":
            aggs[f"infinite_{col}"] = _infinite(typed).sum()
        if kind == "timestamp":
            aggs[f"future_{col}"] = (typed > future_limit).sum()
            # As text: Spark cannot hand pandas a date past 2262 (a 9999-12-31 placeholder).
            aggs[f"min_{col}"] = typed.min().cast("string")
            aggs[f"max_{col}"] = typed.max().cast("string")
            if raw.type().is_string():
                aggs[f"aware_{col}"] = raw.re_search(TZ_OFFSET_PATTERN).sum()
    for col in (c for c in spec.allowed if c in both.columns):
        aggs[f"unknown_{col}"] = _not_allowed(both, spec, col).sum()
    if spec.scales is not None:
        aggs[f"off_scale_{spec.scales.column}"] = _off_scale(both, spec.scales).sum()
    for col in (c for c in spec.non_negative if c in both.columns):
        aggs[f"negative_{col}"] = _negative(both[col]).sum()
    if "amount" in both.columns:
        aggs["zero_amount"] = (both.amount == 0).sum()
    frame = both.aggregate(**aggs).to_pandas()
    return {k: _plain(k, v) for k, v in frame.iloc[0].items()}


def _plain(key: str, value: Any) -> Any:
    if key.startswith(("min_", "max_")):
        return None if pd.isna(value) else pd.Timestamp(value)
    return 0 if pd.isna(value) else int(value)


def _null_or_blank(raw: ir.Value) -> ir.BooleanValue:
    if raw.type().is_string():
        # A regular expression: Ibis' strip() compiles to a TRIM with a character set that is slow.
        # Only text that sorts before "!" can be blank (whitespace is below it, and so is ""); the
        # cheap comparison spares almost every row the regular expression.
        return raw.isnull() | ((raw < "!") & raw.re_search(r"^\s*$"))
    return raw.isnull()


def _infinite(number: ir.FloatingValue) -> ir.BooleanValue:
    # Not isinf(): Ibis compiles it for Spark as a comparison that is never true.
    return number.abs() > sys.float_info.max


def _unparsed(raw: ir.Value, typed: ir.Value) -> ir.BooleanValue:
    return ~_missing(raw) & typed.isnull()


def _not_allowed(both: ir.Table, spec: TableSpec, col: str) -> ir.BooleanValue:
    """A value of a column with listed values that is not one of them (missing values are counted apart)."""
    return ~_missing(both[RAW_PREFIX + col]) & ~both[col].isin(spec.allowed[col])


def _negative(number: ir.FloatingValue) -> ir.BooleanValue:
    """A number below zero; minus infinity is counted by the check of finite numbers."""
    return (number < 0) & ~_infinite(number)


def _off_scale(both: ir.Table, rule: AnswerScales) -> ir.BooleanValue:
    """A number off the answer scale of its row's kind: below, above, or between whole numbers.

    Rows whose kind is unknown or whose number is missing, unparsed or infinite are counted by
    their own checks.
    """
    value = both[rule.column]
    on_scale = ibis.cases(
        # A remainder, not floor(): Ibis casts floor() to an integer, which inf or 1e300 overflows.
        *((both[rule.by] == kind, value.between(low, high) & (value % 1 == 0))
          for kind, (low, high) in rule.scales.items()),
        else_=True,
    )
    return value.notnull() & ~_infinite(value) & ~on_scale


def _find_problems(
    both: ir.Table, spec: TableSpec, checks: dict[str, Any], label: str, options: LoadOptions,
    future_limit: dt.datetime, ts_format: str | None = None,
) -> list[Problem]:
    n_rows = checks["n_rows"]
    found: list[tuple[str, str, int, ir.BooleanValue]] = []
    for col in (c for c in spec.kinds if c in both.columns):
        raw, typed, kind = both[RAW_PREFIX + col], both[col], spec.kinds[col]
        n_null = checks.get(f"null_{col}", 0)
        if n_null and not (col == "customer_id" and options.drop_missing_customer_id):
            hint = " (set data.cleaning.drop_missing_customer_id=true to drop guest rows)" if col == "customer_id" else ""
            found.append((col, f"is empty or marked missing (NA, NULL ...){hint}", n_null, _missing(raw)))
        if checks.get(f"bad_{col}"):
            what = "is not a number" if kind == "number" else "is not a date or timestamp"
            hint = " (set the table's ts_format for non-ISO dates)" if kind == "timestamp" else ""
            if kind == "timestamp" and ts_format:
                what = f"does not match ts_format '{ts_format}'"
                hint = f" (fix data.{spec.name}.ts_format, or the dates)"
            found.append((col, f"{what}{hint}", checks[f"bad_{col}"], _unparsed(raw, typed)))
        if checks.get(f"infinite_{col}"):
            found.append((col, "is not a finite number", checks[f"infinite_{col}"], _infinite(typed)))
        n_aware = checks.get(f"aware_{col}", 0)
        if n_aware and n_aware < n_rows - checks.get(f"null_{col}", 0):
            found.append((col, "mixes time-zone-aware and naive timestamps; use one kind", n_aware, raw.re_search(TZ_OFFSET_PATTERN)))
        if checks.get(f"future_{col}"):
            found.append((col, f"lies in the future (after {options.max_future_days:g} day(s) from now)", checks[f"future_{col}"], typed > future_limit))
        if checks.get(f"unknown_{col}"):
            listed = ", ".join(spec.allowed[col])
            found.append((col, f"is not one of {listed} (compared without case)", checks[f"unknown_{col}"],
                          _not_allowed(both, spec, col)))
        if checks.get(f"negative_{col}"):
            found.append((col, "is negative; it must be 0 or more", checks[f"negative_{col}"], _negative(typed)))
    problems = [
        Problem(label, col, message, n_bad, n_rows, _examples(both, col, predicate))
        for col, message, n_bad, predicate in found
    ]
    rule = spec.scales
    if rule is not None and checks.get(f"off_scale_{rule.column}"):
        ranges = ", ".join(f"{kind} {low}-{high}" for kind, (low, high) in rule.scales.items())
        problems.append(Problem(
            label, rule.column, f"is off the answer scale of its {rule.by} (whole numbers: {ranges})",
            checks[f"off_scale_{rule.column}"], n_rows, _examples(both, rule.column, _off_scale(both, rule), beside=rule.by),
        ))
    return problems


def _examples(both: ir.Table, col: str, predicate: ir.BooleanValue, beside: str | None = None) -> tuple[str, ...]:
    """``row <n>: <value as read>`` of the first rows that match, with the ``beside`` column's
    value in brackets (a score's kind)."""
    numbered = both.mutate(__row=ibis.row_number() + 1)
    rows = numbered.filter(predicate)
    shown = ["__row", RAW_PREFIX + col] + ([RAW_PREFIX + beside] if beside else [])
    sample = rows.select(shown).order_by("__row").limit(N_EXAMPLES).to_pandas()
    notes = [f" ({_shown(v)})" for v in sample[RAW_PREFIX + beside]] if beside else [""] * len(sample)
    return tuple(f"row {int(r)}: {_shown(v)}{note}" for r, v, note in zip(sample["__row"], sample[RAW_PREFIX + col], notes))


def _shown(value: Any) -> str:
    return "(empty)" if value is None or (isinstance(value, float) and pd.isna(value)) else repr(value)


def _check_unique(table: ir.Table, spec: TableSpec, label: str, n_rows: int) -> None:
    """Refuse rows that repeat the values of ``spec.unique``; counts the rows of every repeated
    key, and shows each example key with its number of rows (``'A', 'spring' x2``)."""
    keys = list(spec.unique)
    repeated = table.group_by(keys).aggregate(n=table.count()).filter(lambda t: t.n > 1)
    # No repeated key sums to null: None on DuckDB, NaN on Spark.
    total = repeated.n.sum().execute()
    n_bad = 0 if total is None or pd.isna(total) else int(total)
    if n_bad:
        sample = repeated.order_by(keys).limit(N_EXAMPLES).to_pandas()
        examples = tuple(f"{', '.join(map(repr, row[keys]))} x{row['n']}" for _, row in sample.iterrows())
        message = "repeats values that must be unique"
        if len(keys) > 1:
            message = f"repeats within one {', '.join(keys[1:])}; each ({', '.join(keys)}) must have one row"
        raise DataValidationError([Problem(label, keys[0], message, n_bad, n_rows, examples)])


