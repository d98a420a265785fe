"""The data sets churnml knows by name: the demo shop, CDNOW, and the user's files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from churnml.errors import UserValueError
from churnml.io.contract import DataValidationError, Problem
from churnml.io.load import Dataset, LoadOptions, TableSource, connect, load_dataset

log = logging.getLogger(__name__)

TABLES = ("transactions", "interactions", "customers", "surveys", "treatments")


def cdnow_transactions() -> pd.DataFrame:
    """The CDNOW master file shipped in ``lifetimes``, in the contract's column names.

    Columns: ``customer_id``, ``ts`` (``YYYYMMDD`` text), ``quantity`` (CDs), ``amount`` (dollars).
    """
    from lifetimes.datasets import load_dataset as load_lifetimes_file

    raw = load_lifetimes_file("CDNOW_master.txt", sep=r"\s+", dtype=str)
    return pd.DataFrame(
        {
            "customer_id": raw["customer_id"],
            "ts": raw["date"],
            "amount": raw["dollar_value"],
            "quantity": raw["number_of_cds"],
        }
    )


def demo_sources(settings: Mapping[str, Any]) -> dict[str, TableSource]:
    """Paths of the demo shop's files, simulating and writing them first if they are missing."""
    from churnml.simulate import simulate_shop, write_shop

    directory = Path(settings["directory"])
    fmt = settings.get("format", "parquet")
    paths = {name: directory / f"{name}.{fmt}" for name in TABLES}
    if not all(p.exists() for p in paths.values()):
        log.info("simulating the demo shop (%s customers) into %s", settings["n_customers"], directory)
        tables = simulate_shop(
            n_customers=int(settings["n_customers"]),
            start=str(settings["start"]),
            end=str(settings["end"]),
            seed=int(settings["seed"]),
        )
        paths = write_shop(tables, directory, fmt=fmt)
    return {name: TableSource(path=str(paths[name])) for name in TABLES}


def file_sources(settings: Mapping[str, Any]) -> dict[str, TableSource | None]:
    """The user's files as configured under ``data.transactions`` / ``interactions`` / ``customers`` /
    ``surveys`` / ``treatments``.

    Raises
    ------
    churnml.errors.UserValueError
        Without ``data.transactions.path``.
    churnml.io.contract.DataValidationError
        For a local path that does not exist, naming the path and its config key.
    """
    sources: dict[str, TableSource | None] = {}
    for name in TABLES:
        entry = settings.get(name) or {}
        if isinstance(entry, str):
            entry = {"path": entry}
        path = entry.get("path")
        if not path:
            if name == "transactions":
                raise UserValueError("data.transactions.path is required for data=files: "
                                     "give data.transactions.path=FILE (CSV or Parquet)")
            sources[name] = None
            continue
        local = not any(ch in str(path) for ch in "*?[") and "://" not in str(path)
        if local and not Path(path).exists():
            raise DataValidationError([Problem(
                f"{name} '{path}'", None, f"file does not exist (looked for {Path(path).resolve()}); "
                f"set data.{name}.path to an existing CSV or Parquet file")])
        sources[name] = TableSource(
            path=str(path),
            columns={name: column for name, column in (entry.get("columns") or {}).items() if column},
            ts_format=entry.get("ts_format"),
        )
    return sources


def data_sources(settings: Mapping[str, Any]) -> dict[str, TableSource | None]:
    """Table sources for a ``data`` config node (``kind`` is demo, cdnow or files).

    Raises
    ------
    churnml.errors.UserValueError
        For an unknown kind, or file paths given to a kind that reads no files.
    churnml.io.contract.DataValidationError
        For a file that does not exist (see :func:`file_sources`).
    """
    kind = settings.get("kind", "files")
    given = [name for name in TABLES if kind != "files" and ((settings.get(name) or {}).get("path"))]
    if given:
        # Paths of another kind of data set would be ignored without a word: the run would score the wrong shop.
        raise UserValueError(f"data.{given[0]}.path is set, but the data set is '{settings.get('name', kind)}' "
                         f"({kind}), which reads no files: add data=files")
    if kind == "demo":
        return demo_sources(settings)
    if kind == "cdnow":
        frame = cdnow_transactions()
        return {"transactions": TableSource(frame=frame, ts_format="%Y%m%d", label="CDNOW_master.txt (lifetimes)")}
    if kind == "files":
        return file_sources(settings)
    raise UserValueError(f"unknown data kind '{kind}': use demo, cdnow or files")


def load_options(settings: Mapping[str, Any]) -> LoadOptions:
    """The cleaning rules of a ``data`` config node (``data.cleaning``)."""
    cleaning = dict(settings.get("cleaning") or {})
    return LoadOptions(
        drop_exact_duplicates=bool(cleaning.get("drop_exact_duplicates", False)),
        drop_zero_amount=bool(cleaning.get("drop_zero_amount", True)),
        drop_missing_customer_id=bool(cleaning.get("drop_missing_customer_id", False)),
        max_future_days=float(cleaning.get("max_future_days", 1.0)),
    )


def load_data(settings: Mapping[str, Any], engine: str = "duckdb", con: Any = None, materialize: bool = False) -> Dataset:
    """Load and validate the data set described by a ``data`` config node."""
    sources = data_sources(settings)
    return load_dataset(
        transactions=sources["transactions"],
        interactions=sources.get("interactions"),
        customers=sources.get("customers"),
        surveys=sources.get("surveys"),
        treatments=sources.get("treatments"),
        options=load_options(settings),
        con=con if con is not None else connect(engine),
        materialize=materialize,
    )
