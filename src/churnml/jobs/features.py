"""``churnml-features``: the feature table at one date, written to Parquet."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from churnml.jobs.common import engine_connection

log = logging.getLogger("churnml")


def run(settings: Mapping[str, Any]) -> str:
    """Build the feature table at ``settings['cutoff']`` and write it to Parquet; return its path.

    DuckDB writes one file; Spark a directory of part files, through Hadoop's FileSystem (so
    ``hdfs://`` paths work). Either is written beside its place and renamed into it.
    """
    import pyarrow.dataset

    from churnml.features.build import FeatureConfig, as_date, build_features
    from churnml.io.files import write_table_atomic
    from churnml.io.sources import load_data

    con = engine_connection(settings)
    dataset = load_data(settings["data"], con=con)
    cutoff = as_date(settings["cutoff"]) if settings.get("cutoff") else dataset.last_date
    if not dataset.first_date <= cutoff:
        raise ValueError(f"cutoff {cutoff} is before the first transaction ({dataset.first_date})")
    table = build_features(dataset, cutoff, FeatureConfig.from_dict(settings["features"]))
    output = settings["features"].get("output") or f"outputs/features/{settings['data']['name']}/cutoff={cutoff}/features.parquet"
    # Counting the written rows, not the query, so the engine does not compute the features twice.
    if con.name == "pyspark":
        from churnml.io.spark import spark_frame, write_atomic

        frame = spark_frame(con, table)
        path = write_atomic(frame, str(output))
        n_rows = frame.sparkSession.read.parquet(path).count()
    else:
        path = str(write_table_atomic(table, output))
        n_rows = pyarrow.dataset.dataset(path).count_rows()
    log.info("wrote %s customers x %s columns at cutoff %s to %s", f"{n_rows:,}", len(table.columns), cutoff, path)
    return path
