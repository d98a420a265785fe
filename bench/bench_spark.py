"""Features on a local Spark session against the same features on DuckDB, on the demo shop.

Each engine loads, validates and cleans transactions, interactions and customers, builds the
feature table at the last date and writes it to Parquet (what ``churnml-features`` does), in its
own process on the same machine, one after the other. Spark runs as ``local[2]``: this shows
what Spark's machinery costs on one machine, not what a cluster gains.

Target (informational, always met): where each engine pays off. DuckDB is the choice while the
data fit one machine's disk; Spark's cost per row buys spreading the same work over a cluster.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from harness import main, demo_data, measure, print_table

SPARK_DRIVER_MEMORY = "4g"

_SETUP = """
    import os
    import time
    import pyarrow.dataset as pads
    from churnml.datasets import load_data
    from churnml.features import FeatureConfig, build_features
    settings = {{"kind": "files", **{{t: {{"path": f"{directory}/{{t}}.parquet"}} for t in ("transactions", "interactions", "customers")}}}}
    output = os.path.join({scratch!r}, f"features-{{os.getpid()}}.parquet")
    started = time.perf_counter()
    {connect}
    session_seconds = time.perf_counter() - started
"""

_WORK = """
    from bench_spark import children_peak_gib
    dataset = load_data(settings, con=con)
    table = build_features(dataset, dataset.last_date, FeatureConfig())
    table.to_parquet(output)
    info = {"rows": pads.dataset(output).count_rows(), "columns": len(table.columns),
            "transactions": dataset.reports["transactions"].rows_read, "session_seconds": session_seconds,
            "children_peak_gib": children_peak_gib()}
"""

_CONNECT_DUCKDB = "from churnml.io import connect\n    con = connect('duckdb')"
# The first query starts Spark's executors, which belongs to start-up, not to the work.
_CONNECT_SPARK = (
    "from churnml.spark import connect_spark\n"
    "    con = connect_spark(**{{'spark.driver.memory': {memory!r}}})\n"
    "    con.raw_sql('SELECT 1').collect()"
)


def children_peak_gib() -> float | None:
    """Peak resident memory of this process's running children, in GiB; None off Linux.

    The Spark JVM (driver and, in local mode, the executors) is a child of the Python process,
    so its memory does not show in the Python process's own peak. ``ru_maxrss`` of children
    only counts children that have exited; ``VmHWM`` in ``/proc`` is the peak of a live one.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    total_kib = 0
    for status in proc.glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:  # the process ended while we looked
            continue
        if int(fields.get("PPid", "0")) == os.getpid() and "VmHWM" in fields:
            total_kib += int(fields["VmHWM"].split()[0])
    return total_kib / 2**20


def _measure_engine(name: str, directory: Path, connect_code: str, repeat: int):
    # Outputs go to a scratch directory removed afterwards, one path per process because Spark
    # refuses to write over an existing directory.
    with tempfile.TemporaryDirectory(prefix="bench_spark_") as scratch:
        setup = _SETUP.format(directory=str(directory), connect=connect_code, scratch=scratch)
        return measure(name, setup, _WORK, repeat=repeat)


def run(n_customers: int = 1_000_000, repeat: int = 1) -> bool:
    directory = demo_data(n_customers)
    duckdb = _measure_engine("DuckDB (default engine)", directory, _CONNECT_DUCKDB, repeat)
    spark = _measure_engine(
        f"Spark local[2], driver memory {SPARK_DRIVER_MEMORY}", directory,
        _CONNECT_SPARK.format(memory=SPARK_DRIVER_MEMORY), repeat,
    )
    rows = []
    for m in (duckdb, spark):
        jvm = m.info.get("children_peak_gib")
        rows.append({
            "engine": m.name,
            "seconds": m.seconds,
            "x DuckDB": m.seconds / duckdb.seconds,
            "Python peak GiB": m.peak_gib,
            "JVM peak GiB": jvm if jvm else None,
            "total peak GiB": m.peak_gib + (jvm or 0.0),
            "output rows": m.info.get("rows"),
        })
    print_table(
        f"load + validate + features + write Parquet, demo shop of {n_customers:,} customers "
        f"({duckdb.info['transactions']:,} transaction lines, all three tables)",
        rows, ["engine", "seconds", "x DuckDB", "Python peak GiB", "JVM peak GiB", "total peak GiB", "output rows"],
    )
    print(f"Spark session start-up, not included above: {spark.info['session_seconds']:.1f} s. "
          "JVM peak is the resident high-water mark of the Spark JVM (driver and local executors), "
          "which the Python process's own peak does not include.")
    if duckdb.info["rows"] != spark.info["rows"]:
        print(f"warning: the engines wrote different row counts ({duckdb.info['rows']:,} vs {spark.info['rows']:,})")
    print(f"target (informational): where each pays off - on this machine Spark takes {spark.seconds / duckdb.seconds:.1f}x "
          "DuckDB's time; DuckDB while the data fit one machine, Spark when they outgrow it and a cluster is at hand")
    return True


if __name__ == "__main__":
    main(run, __doc__, default_repeat=1)
