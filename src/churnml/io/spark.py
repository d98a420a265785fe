"""A Spark session for the feature expressions: a local one by default, or the one already there.

The same Ibis expressions that run on DuckDB run here; this module decides how the session is
started and holds the few Spark-specific steps the loader and the scoring need. Timestamps are
compared in UTC, as everywhere in churnml. A session started here on the local machine gets few
shuffle partitions, no web UI and Python workers running this interpreter, so that a laptop or a
CI runner is not swamped by hundreds of tiny tasks and the scoring code finds its packages; a
master chosen by ``spark-submit`` or the environment, and an existing session (a notebook's, a
``pyspark`` shell's), keep their own settings.

Options (keyword arguments of :func:`connect_spark`, e.g. from Hydra config):

- ``master``: Spark master URL; default ``local[2]`` unless ``spark-submit`` or the
  environment chose one;
- ``shuffle_partitions``: ``spark.sql.shuffle.partitions`` (default 4 for a local session);
- ``conf``: a mapping of any Spark settings, e.g. ``{"spark.driver.memory": "4g"}``; keys
  starting with ``spark.`` may also be passed directly;
- ``app_name`` and ``log_level`` (default ``WARN``).

Options whose value is None are ignored, so a config file can list them all.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping

LOCAL_MASTER = "local[2]"
LOCAL_SHUFFLE_PARTITIONS = 4
APP_NAME = "churnml"
LOG_LEVEL = "WARN"

# Every session churnml starts: UTC like the data contract, and Arrow for collecting results
# into pandas (row by row through Py4J is orders of magnitude slower).
SESSION_SETTINGS = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}
# Only for a session started here on this machine; a cluster keeps its own.
LOCAL_SETTINGS = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
}


def options_with_values(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options that have a value."""
    return {key: value for key, value in options.items() if value is not None}


def configured_master(options: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> str | None:
    """The master to ask for, or None when something else already chose it.

    Parameters
    ----------
    options
        Options of :func:`connect_spark`; ``master`` (or ``spark.master``) wins.
    environ
        Environment variables. ``spark-submit`` starts the Python driver with
        ``PYSPARK_GATEWAY_PORT`` set and a master of its own; ``PYSPARK_SUBMIT_ARGS`` with
        ``--master`` and ``MASTER`` are the other ways PySpark is told a master.

    Returns
    -------
    str or None
        The requested master, None to leave the choice to ``spark-submit`` or the environment,
        or ``local[2]`` when nothing chose one.
    """
    options = options_with_values(options)
    requested = options.get("master") or options.get("spark.master") or dict(options.get("conf") or {}).get("spark.master")
    if requested:
        return str(requested)
    launched_by_spark_submit = "PYSPARK_GATEWAY_PORT" in environ
    chosen_by_environment = "--master" in environ.get("PYSPARK_SUBMIT_ARGS", "") or bool(environ.get("MASTER"))
    if launched_by_spark_submit or chosen_by_environment:
        return None
    return LOCAL_MASTER


def spark_settings(options: Mapping[str, Any], local: bool) -> dict[str, str]:
    """Spark configuration for a new session: churnml's defaults, then the caller's settings.

    Parameters
    ----------
    options
        Options of :func:`connect_spark`: ``shuffle_partitions``, ``conf`` and ``spark.*`` keys.
    local
        Whether the session runs on this machine only, which adds the local defaults.

    Returns
    -------
    dict of str to str
    """
    options = options_with_values(options)
    settings = dict(SESSION_SETTINGS)
    if local:
        settings.update(LOCAL_SETTINGS)
        settings["spark.sql.shuffle.partitions"] = str(LOCAL_SHUFFLE_PARTITIONS)
    if "shuffle_partitions" in options:
        settings["spark.sql.shuffle.partitions"] = str(options["shuffle_partitions"])
    requested = {**dict(options.get("conf") or {}), **{k: v for k, v in options.items() if k.startswith("spark.")}}
    settings.update({key: str(value) for key, value in options_with_values(requested).items() if key != "spark.master"})
    return settings


def existing_session() -> Any:
    """The active or default SparkSession of this process, or None."""
    from pyspark.errors import PySparkRuntimeError
    from pyspark.sql import SparkSession

    try:
        return SparkSession.active()
    except PySparkRuntimeError:  # raised when no session exists yet
        return None


def spark_session(**options: Any) -> Any:
    """The existing SparkSession, or a new one configured by :func:`spark_settings`.

    An existing session is used as it is, except that its SQL time zone is set to UTC.

    Parameters
    ----------
    **options
        See the module docstring.

    Returns
    -------
    pyspark.sql.SparkSession
    """
    from pyspark.sql import SparkSession

    options = options_with_values(options)
    session = existing_session()
    if session is None:
        master = configured_master(options)
        local = (master or "").startswith("local")
        if local:
            # Local Python workers run the scoring code: they need this interpreter (and its
            # packages), not whatever `python3` is first on the PATH. A user's choice is kept.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = SparkSession.builder.appName(str(options.get("app_name", APP_NAME)))
        if master is not None:
            builder = builder.master(master)
        for key, value in spark_settings(options, local=local).items():
            builder = builder.config(key, value)
        session = builder.getOrCreate()
    session.sparkContext.setLogLevel(str(options.get("log_level", LOG_LEVEL)))
    session.conf.set("spark.sql.session.timeZone", "UTC")
    return session


def connect_spark(**options: Any) -> Any:
    """An Ibis PySpark connection on :func:`spark_session`, comparing timestamps in UTC.

    Parameters
    ----------
    **options
        See the module docstring.

    Returns
    -------
    ibis.backends.pyspark.Backend
    """
    import ibis

    return ibis.pyspark.connect(spark_session(**options))


def stop_spark(con: Any = None) -> None:
    """Stop the session behind ``con`` (or the existing one), so the next connect starts afresh.

    Parameters
    ----------
    con
        An Ibis PySpark connection from :func:`connect_spark`, or None for the existing session.
    """
    if con is not None:
        con.disconnect()
        return
    session = existing_session()
    if session is not None:
        session.stop()


def cache_table(con: Any, prefix: str, expr: Any) -> Any:
    """Compute a table expression once and keep it in the session's cache.

    The result is a temporary view whose data the executors keep (spilling to their disks)
    until the session ends; nothing is written to the warehouse directory, as
    ``create_table`` would. Each call gets a new view name, so a later load cannot swap the
    data under an earlier dataset.

    Parameters
    ----------
    con
        An Ibis PySpark connection. The expression is computed there even when it only refers
        to in-memory frames, which ``Table.cache()`` would hand to Ibis' default backend.
    prefix
        Start of the view's name, to recognise it in the Spark catalog.
    expr
        The table expression.

    Returns
    -------
    ibis.expr.types.Table
        The cached view.
    """
    from ibis.util import gen_name

    name = gen_name(prefix)
    view = con.create_view(name, expr)
    con.raw_sql(f"CACHE TABLE `{name}`")
    return view


def instant_columns(con: Any, table: Any) -> list[str]:
    """Columns of a Spark-backed table that hold instants (``TIMESTAMP``, not ``TIMESTAMP_NTZ``).

    Ibis types both Spark timestamp kinds as a naive timestamp, which would hide that a
    Parquet file stores time-zone-aware values.

    Parameters
    ----------
    con
        The Ibis PySpark connection the table belongs to.
    table
        An Ibis table bound to a Spark view, such as the result of ``con.read_parquet``.

    Returns
    -------
    list of str
    """
    from pyspark.sql.types import TimestampType

    schema = con.raw_sql(f"SELECT * FROM `{table.get_name()}`").schema
    return [f.name for f in schema.fields if isinstance(f.dataType, TimestampType)]


def with_utc_timestamps(con: Any, table: Any) -> Any:
    """The table with its instant columns typed as UTC timestamps, as DuckDB types them.

    Parameters
    ----------
    con
        The Ibis PySpark connection the table belongs to.
    table
        An Ibis table bound to a Spark view.

    Returns
    -------
    ibis.expr.types.Table
    """
    import ibis.expr.datatypes as idt

    instants = instant_columns(con, table)
    return table.cast({c: idt.Timestamp(timezone="UTC") for c in instants}) if instants else table


def spark_frame(con: Any, expr: Any) -> Any:
    """The Spark DataFrame of an Ibis table expression, to hand it to Spark's own API.

    Parameters
    ----------
    con
        The Ibis PySpark connection the expression belongs to; in-memory frames it refers to
        are registered with Spark first.
    expr
        The table expression.

    Returns
    -------
    pyspark.sql.DataFrame
        Lazy: nothing is computed until an action runs.
    """
    from ibis.util import gen_name

    name = gen_name("churnml_frame")
    con.create_view(name, expr)
    return con.raw_sql(f"SELECT * FROM `{name}`")


def write_atomic(frame: Any, path: str, fmt: str = "parquet", options: Mapping[str, Any] | None = None) -> str:
    """Write a DataFrame as a directory of part files beside ``path``, then rename it into place.

    Paths go through Hadoop's FileSystem, so a local path, ``hdfs://`` or ``s3a://`` all work.
    The rename is atomic on a local disk and on HDFS: a failed run leaves nothing at ``path``
    and a rerun replaces the previous directory. Object stores have no rename (it is a copy),
    so there a crash while moving can leave a partial directory.

    Parameters
    ----------
    frame
        The pyspark DataFrame.
    path
        The directory to write.
    fmt
        A Spark data source: ``parquet``, ``csv``...
    options
        Options of the data source, e.g. ``{"compression": "zstd"}``.

    Returns
    -------
    str
        The fully qualified path written (``file:/...``, ``hdfs://...``).
    """
    session = frame.sparkSession
    filesystem, target = _filesystem_path(session, path)
    if filesystem.getUri().getScheme() == "file" and not target.isAbsolute():
        # The JVM resolves a relative path against the directory it started in, not Python's.
        target = session._jvm.org.apache.hadoop.fs.Path(os.path.abspath(path))
    target = filesystem.makeQualified(target)
    temporary = _sibling(session, target, f".{target.getName()}.{os.getpid()}.tmp")
    try:
        # overwrite: only a leftover of a killed run with the same process id can be there.
        frame.write.mode("overwrite").format(fmt).options(**dict(options or {})).save(temporary.toString())
        _replace(filesystem, temporary, target, _sibling(session, target, f".{target.getName()}.{os.getpid()}.old"))
    except BaseException:
        filesystem.delete(temporary, True)
        raise
    return target.toString()


def _filesystem_path(session: Any, path: str) -> tuple[Any, Any]:
    hadoop_path = session._jvm.org.apache.hadoop.fs.Path(str(path))
    return hadoop_path.getFileSystem(session._jsc.hadoopConfiguration()), hadoop_path


def _sibling(session: Any, path: Any, name: str) -> Any:
    return session._jvm.org.apache.hadoop.fs.Path(path.getParent(), name)


def _replace(filesystem: Any, new: Any, target: Any, previous: Any) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is moved aside first and removed after."""
    had_target = filesystem.exists(target)
    if had_target:
        filesystem.delete(previous, True)
        _rename(filesystem, target, previous)
    try:
        _rename(filesystem, new, target)
    except BaseException:
        if had_target:
            _rename(filesystem, previous, target)
        raise
    if had_target:
        filesystem.delete(previous, True)


def _rename(filesystem: Any, source: Any, destination: Any) -> None:
    # Hadoop reports a failed rename by returning False, not by raising.
    if not filesystem.rename(source, destination):
        raise OSError(f"could not rename {source.toString()} to {destination.toString()}")
