"""Files churnml writes and reads whole: atomic writers (write beside the target, rename into
place, so a crash leaves no half-written file) and content fingerprints."""


from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import ibis.expr.types as ir
import pandas as pd


def file_fingerprint(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    """Content hash of a file (or of every file under a directory), for tracking what data a run saw."""
    digest = hashlib.blake2b(digest_size=16)
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for file in files:
        with open(file, "rb") as handle:
            while chunk := handle.read(chunk_size):
                digest.update(chunk)
    return digest.hexdigest()


def write_table_atomic(table: ir.Table, path: str | os.PathLike) -> Path:
    """Let the engine write a table expression to Parquet beside ``path``, then rename it into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        table.to_parquet(tmp)
        _move_into_place(tmp, target)
    except BaseException:
        _remove(tmp)
        raise
    return target


def _move_into_place(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; where either is a directory (an earlier Spark run may have
    left one), the old one is moved aside first, in two renames."""
    if not target.exists() or not (target.is_dir() or new.is_dir()):
        os.replace(new, target)
        return
    previous = target.with_name(f".{target.name}.{os.getpid()}.old")
    os.replace(target, previous)
    os.replace(new, target)
    _remove(previous)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write text to a temporary file beside ``path`` and rename it into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def write_frame_atomic(frame: pd.DataFrame, path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Write a frame to a temporary file beside ``path`` and rename it into place.

    A crash leaves no half-written file at ``path``; the same frame gives byte-identical files.
    """
    target = Path(path)
    fmt = fmt or ("csv" if target.suffix.lower() == ".csv" else "parquet")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        if fmt == "csv":
            frame.to_csv(tmp_name, index=False)
        elif fmt == "parquet":
            frame.to_parquet(tmp_name, index=False, engine="pyarrow", compression="zstd")
        else:
            raise ValueError(f"unknown output format '{fmt}': use 'parquet' or 'csv'")
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target
