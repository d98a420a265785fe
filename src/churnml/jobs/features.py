"""``churnml-features``: the feature table at one date, written to Parquet."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from churnml.jobs.common import check_output, engine_connection

log = logging.getLogger("churnml")


def run(settings: Mapping[str, Any]) -> str:
    """Build the feature table at ``as_of`` and write it to Parquet; return its path.

    DuckDB writes one file; Spark a directory of part files, through Hadoop's FileSystem (so
    ``hdfs://`` paths work). Either is written beside its place and renamed into it.

    Raises
    ------
    churnml.errors.UserError
        Before any work for an output location that cannot be written; for data that breaks the
        contract or an ``as_of`` outside the data, with nothing written.
    """
    import pyarrow.dataset

    from churnml.config import stage_as_of
    from churnml.features.build import FeatureConfig, build_features
    from churnml.features.dates import resolve_as_of
    from churnml.io.files import write_table_atomic
    from churnml.io.sources import load_data

    requested = stage_as_of(settings)
    spark = settings["engine"] == "spark"
    given_output = settings["features"].get("output")
    if given_output:
        check_output(given_output, "features.output", "directory" if spark else "file")
    else:
        check_output(f"outputs/features/{settings['data']['name']}", "features.output", "directory")
    con = engine_connection(settings)
    dataset = load_data(settings["data"], con=con)
    as_of = resolve_as_of(requested, dataset.first_date, dataset.last_date)
    table = build_features(dataset, as_of, FeatureConfig.from_dict(settings["features"]))
    output = settings["features"].get("output") or f"outputs/features/{settings['data']['name']}/as_of={as_of}/features.parquet"
    # Counting the written rows, not the query, so the engine does not compute the features twice.
    if con.name == "pyspark":
        from churnml.io.spark import spark_frame, write_atomic

        frame = spark_frame(con, table)
        path = write_atomic(frame, str(output))
        n_rows = frame.sparkSession.read.parquet(path).count()
    else:
        path = str(write_table_atomic(table, output))
        n_rows = pyarrow.dataset.dataset(path).count_rows()
    log.info("wrote %s customers x %s columns as of %s to %s", f"{n_rows:,}", len(table.columns), as_of, path)
    return path
