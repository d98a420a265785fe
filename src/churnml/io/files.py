"""Files churnml writes and reads whole: atomic writers (write beside the target, rename into
place, so a crash leaves no half-written file) and content fingerprints.

Temporaries are named ``.churnml-tmp.<target name>.<pid>.<token>`` beside their target, created
with the process's umask like any file, and removed by the next write of the same target when
the process that made them is gone (a killed run). CSV cells a spreadsheet would take for a
formula are neutralised (:func:`neutralise_formulas`).
"""


from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Iterator

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
    remove_stale_temporaries(target)
    tmp = temporary_path(target)
    try:
        table.to_parquet(tmp)
        move_into_place(tmp, target)
    except BaseException:
        _remove(tmp)
        raise
    return target


TEMPORARY_PREFIX = ".churnml-tmp."
# Temporaries of older churnml versions (``.<name>.<pid>.tmp``, ``.<name>.<random>.tmp``,
# ``.<name>.export``) carry no process id: they are removed once this old.
_LEGACY_TEMPORARY_AGE_S = 3600.0


def temporary_path(target: str | os.PathLike) -> Path:
    """A fresh name beside ``target`` for writing it: ``.churnml-tmp.<name>.<pid>.<token>``."""
    target = Path(target)
    return target.with_name(f"{TEMPORARY_PREFIX}{target.name}.{os.getpid()}.{secrets.token_hex(4)}")


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove temporaries of ``target`` left beside it by runs that were killed: those whose
    process is gone (and those of older churnml versions over an hour old); return them.

    Temporaries of a process still running (another run writing the same target) are kept.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    removed = []
    own = f"{TEMPORARY_PREFIX}{target.name}."
    legacy = f".{target.name}."
    for entry in target.parent.iterdir():
        name = entry.name
        if name.startswith(own):
            pid = name[len(own):].split(".", 1)[0]
            stale = pid.isdigit() and not _process_alive(int(pid))
        elif name.startswith(legacy) and (name.endswith((".tmp", ".old")) or name == f".{target.name}.export"):
            stale = time.time() - entry.lstat().st_mtime > _LEGACY_TEMPORARY_AGE_S
        else:
            continue
        if stale:
            _remove(entry)
            removed.append(entry)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def staged(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``target`` to write (a file or a directory), renamed into place
    when the block ends without error and removed when it raises.

    What must succeed before the output counts as written (tracking the run, say) goes inside
    the block, after the write: a failure there leaves ``target`` as it was.
    """
    target = Path(target)
    created = _missing_ancestors(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = temporary_path(target)
    try:
        yield tmp
        move_into_place(tmp, target)
    except BaseException:
        _remove(tmp)
        # A refused or failed run leaves no trace, not even the directories made for its output.
        for directory in created:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


def _missing_ancestors(target: Path) -> list[Path]:
    """The directories above ``target`` that do not exist yet, deepest first."""
    missing = []
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    return missing


def move_into_place(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename ``new`` to ``target``, replacing what is there.

    Where either is a directory (an exported model, Spark's part files), the two are swapped in
    one atomic exchange where the system offers it (Linux ``renameat2``), so ``target`` is at
    every moment the old or the new one; elsewhere the old one is moved aside and the new one
    renamed in. The old one is removed afterwards; it is never deleted first.
    """
    new, target = Path(new), Path(target)
    if not target.exists() or not (target.is_dir() or new.is_dir()):
        os.replace(new, target)
        return
    if _exchange(new, target):
        _remove(new)
        return
    previous = temporary_path(target)
    os.replace(target, previous)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(previous, target)
        raise
    _remove(previous)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    import ctypes
    import errno
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write text to a temporary file beside ``path`` and rename it into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = temporary_path(target)
    try:
        tmp.write_text(text)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def write_frame_atomic(frame: pd.DataFrame, path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Write a frame to a temporary file beside ``path`` and rename it into place.

    A crash leaves no half-written file at ``path`` (and the next write removes what it left,
    :func:`remove_stale_temporaries`); the same frame gives byte-identical files; the file gets
    the umask's permissions. CSV (lines ending in CRLF, RFC 4180) has the cells a spreadsheet
    would evaluate neutralised (:func:`neutralise_formulas`).
    """
    target = Path(path)
    fmt = fmt or ("csv" if target.suffix.lower() == ".csv" else "parquet")
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"unknown output format '{fmt}': use 'parquet' or 'csv'")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = temporary_path(target)
    try:
        if fmt == "csv":
            # RFC 4180's line ends: a cell holding a carriage return is then quoted, and cannot
            # start a row of its own in a reader (whose first cell a spreadsheet would evaluate).
            neutralise_formulas(frame).to_csv(tmp, index=False, lineterminator="\r\n")
        else:
            frame.to_parquet(tmp, index=False, engine="pyarrow", compression="zstd")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


# OWASP's CSV injection rule: a cell starting with one of these is a formula to a spreadsheet.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with every text cell (and column name) that starts with ``=``, ``+``, ``-``,
    ``@``, a tab or a carriage return prefixed with a single quote, so that a spreadsheet shows
    it as text instead of evaluating it (OWASP, "CSV Injection").

    Numeric columns are left alone (a negative number stays a number); in a column of mixed
    objects only the strings are changed. The frame itself is not modified.

    Parameters
    ----------
    frame : pandas.DataFrame

    Returns
    -------
    pandas.DataFrame
        ``frame`` itself when no cell needs it, else a copy.
    """
    changed: dict[str, pd.Series] = {}
    for position, name in enumerate(frame.columns):
        column = frame.iloc[:, position]
        text_only = isinstance(column.dtype, pd.StringDtype) or (
            pd.api.types.is_object_dtype(column.dtype) and pd.api.types.infer_dtype(column, skipna=True) == "string")
        if text_only:
            text = column.astype("string")
            risky = text.str.startswith(FORMULA_STARTS).fillna(False).to_numpy(dtype=bool)
            if risky.any():
                changed[position] = column.where(~risky, "'" + text)
        elif pd.api.types.is_object_dtype(column.dtype) or isinstance(column.dtype, pd.CategoricalDtype):
            values = column.astype(object)
            risky = values.map(lambda v: isinstance(v, str) and v.startswith(FORMULA_STARTS)).to_numpy(dtype=bool)
            if risky.any():
                changed[position] = values.where(~risky, "'" + values[risky].astype(str)).astype(object)
    names = [f"'{n}" if isinstance(n, str) and n.startswith(FORMULA_STARTS) else n for n in frame.columns]
    if not changed and names == list(frame.columns):
        return frame
    safe = frame.copy()
    for position, values in changed.items():
        safe.isetitem(position, values)
    safe.columns = names
    return safe
