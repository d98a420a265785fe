"""Features and batch scoring on a local Spark session against the same work on DuckDB, on the
demo shop.

Features: each engine loads, validates and cleans transactions, interactions and customers, builds
the feature table at the last date and writes it to Parquet (what ``churnml-features`` does).

Scoring: each engine runs what ``churnml-score`` does between loading the models and tracking the
run (load, features, BTYD prior, probabilities, exact reasons, segments, actions, drift, the
write and the summary), with the same two models: the default model configuration trained
beforehand, untimed, on 1 customer in 50 (6 training snapshots). DuckDB scores the whole table in
memory; Spark keeps it in Spark and scores it partition by partition (``mapInPandas``). The two
outputs are compared afterwards: they must hold the same rows.

Each measurement runs in its own process on the same machine, one after the other. Spark runs as
``local[2]``: this shows what Spark's machinery costs on one machine, not what a cluster gains.

Target (informational, always met): where each engine pays off. DuckDB is the choice while the
data fit one machine's disk; Spark's cost per row buys spreading the same work over a cluster.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from harness import MAX_SNAPSHOTS, SAMPLE_MODULUS, demo_data, main, measure, print_table

SPARK_DRIVER_MEMORY = "4g"

_SETUP = """
    import os
    import time
    import pyarrow.dataset as pads
    from churnml.io.sources import load_data
    from churnml.features.build import FeatureConfig, build_features
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

_CONNECT_DUCKDB = "from churnml.io.load import connect\n    con = connect('duckdb')"
# The first query starts Spark's executors, which belongs to start-up, not to the work.
_CONNECT_SPARK = (
    "from churnml.io.spark import connect_spark\n"
    "    con = connect_spark(**{{'spark.driver.memory': {memory!r}}})\n"
    "    con.raw_sql('SELECT 1').collect()"
)


def children_peak_gib() -> float | None:
    """Sum of the peak resident memory of this process's running descendants, in GiB; None off Linux.

    The Spark JVM (driver and, in local mode, the executors) is a child of the Python process, and
    the Python workers that run ``mapInPandas`` are children of the JVM, so their memory does not
    show in the Python process's own peak. ``ru_maxrss`` of children only counts children that
    have exited; ``VmHWM`` in ``/proc`` is the peak of a live one. Peaks that were not reached at
    the same time add up, so this is an upper bound.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    parents: dict[int, int] = {}
    peaks_kib: dict[int, int] = {}
    for status in proc.glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:  # the process ended while we looked
            continue
        pid = int(status.parent.name)
        parents[pid] = int(fields.get("PPid", "0"))
        if "VmHWM" in fields:
            peaks_kib[pid] = int(fields["VmHWM"].split()[0])

    def descends_from_us(pid: int) -> bool:
        seen = set()
        while pid in parents and pid not in seen:
            seen.add(pid)
            pid = parents[pid]
            if pid == os.getpid():
                return True
        return False

    return sum(kib for pid, kib in peaks_kib.items() if descends_from_us(pid)) / 2**20


_TRAIN_SETUP = """
    import pickle
    from harness import train_default_models
"""

_TRAIN_WORK = """
    models, _ = train_default_models({directory!r}, {scratch!r}, {modulus}, {max_snapshots})
    with open({models_path!r}, "wb") as handle:
        pickle.dump(models, handle)
    info = {{"trees": {{t: m.estimator_.booster_.num_trees() for t, m in models.items()}}}}
"""

_SCORE_SETUP = """
    import os
    import pickle
    import time
    from churnml.features import dates
    from churnml.scoring import policy
    from churnml.scoring import reasons
    from churnml.scoring import table
    from churnml.jobs.score import reference_profiles, score_with_duckdb, score_with_spark
    from churnml.io.sources import load_data
    from churnml.features.build import FeatureConfig
    settings = {{"kind": "files", **{{t: {{"path": f"{directory}/{{t}}.parquet"}} for t in ("transactions", "interactions", "customers")}}}}
    with open({models_path!r}, "rb") as handle:
        models = pickle.load(handle)
    identities = {{t: table.ModelIdentity(f"churnml-{{t}}", "bench") for t in models}}
    feature_config = FeatureConfig()
    config = policy.ScoringConfig()
    context = reasons.ReasonContext.from_features(feature_config, int(models["churn"].horizon_days))
    profiles = reference_profiles(models, identities)
    output = os.path.join({scratch!r}, "{name}", "scores.parquet")
    started = time.perf_counter()
    {connect}
    session_seconds = time.perf_counter() - started
"""

_SCORE_WORK = """
    from bench_spark import children_peak_gib
    dataset = load_data(settings, con=con)
    as_of = dates.resolve_as_of(None, dataset.first_date, dataset.last_date)
    score = score_with_spark if con.name == "pyspark" else score_with_duckdb
    path, summary, psi = score(dataset, as_of, feature_config, models, config, context, identities, profiles,
                               output, "parquet")
    info = {"rows": summary["rows"], "bands": summary["bands"], "session_seconds": session_seconds,
            "psi": {t: values.dropna().to_dict() for t, values in psi.items()}, "output": output,
            "transactions": dataset.reports["transactions"].rows_read, "children_peak_gib": children_peak_gib()}
"""


def _measure_engine(name: str, directory: Path, connect_code: str, repeat: int):
    # Outputs go to a scratch directory removed afterwards, one path per process because Spark
    # refuses to write over an existing directory.
    with tempfile.TemporaryDirectory(prefix="bench_spark_") as scratch:
        setup = _SETUP.format(directory=str(directory), connect=connect_code, scratch=scratch)
        return measure(name, setup, _WORK, repeat=repeat)


def _engine_rows(measurements, reference) -> list[dict]:
    rows = []
    for m in measurements:
        jvm = m.info.get("children_peak_gib")
        rows.append({
            "engine": m.name,
            "seconds": m.seconds,
            "x DuckDB": m.seconds / reference.seconds,
            "Python peak GiB": m.peak_gib,
            "JVM + workers peak GiB": jvm if jvm else None,
            "total peak GiB": m.peak_gib + (jvm or 0.0),
            "output rows": m.info.get("rows"),
        })
    return rows


ENGINE_COLUMNS = ["engine", "seconds", "x DuckDB", "Python peak GiB", "JVM + workers peak GiB", "total peak GiB", "output rows"]
SPARK_LABEL = f"Spark local[2], driver memory {SPARK_DRIVER_MEMORY}"


def compare_features(n_customers: int, directory: Path, repeat: int) -> float:
    """The feature build on both engines; Spark's time over DuckDB's."""
    duckdb = _measure_engine("DuckDB (default engine)", directory, _CONNECT_DUCKDB, repeat)
    spark = _measure_engine(SPARK_LABEL, directory, _CONNECT_SPARK.format(memory=SPARK_DRIVER_MEMORY), repeat)
    print_table(
        f"load + validate + features + write Parquet, demo shop of {n_customers:,} customers "
        f"({duckdb.info['transactions']:,} transaction lines, all three tables)",
        _engine_rows([duckdb, spark], duckdb), ENGINE_COLUMNS,
    )
    print(f"Spark session start-up, not included above: {spark.info['session_seconds']:.1f} s. "
          "JVM + workers peak is the sum of the resident high-water marks of the Spark JVM (driver and local "
          "executors) and its Python workers, which the Python process's own peak does not include.")
    if duckdb.info["rows"] != spark.info["rows"]:
        print(f"warning: the engines wrote different row counts ({duckdb.info['rows']:,} vs {spark.info['rows']:,})")
    return spark.seconds / duckdb.seconds


def score_differences(duckdb_output: Path, spark_output: Path) -> dict[str, float]:
    """How far Spark's scores are from DuckDB's: the largest differences of probabilities,
    contributions and LTV, and the rows whose band, reasons, tier, segment or action differ."""
    import numpy as np
    import pandas as pd

    expected, actual = pd.read_parquet(duckdb_output), pd.read_parquet(spark_output)
    if len(expected) != len(actual) or not expected["customer_id"].equals(actual["customer_id"]):
        return {"rows": len(actual) - len(expected), "same customers": 0}
    numbers = [c for c in expected.columns if pd.api.types.is_float_dtype(expected[c])]
    differences = {c: float(np.nanmax(np.abs(expected[c].to_numpy(dtype=float) - actual[c].to_numpy(dtype=float)),
                                      initial=0.0)) for c in numbers}
    text = [c for c in expected.columns if c not in numbers]
    differing = ~((expected[text] == actual[text]) | (expected[text].isna() & actual[text].isna()))
    contributions = [v for c, v in differences.items() if c.endswith("_contribution")]
    return {"largest probability difference": max(differences["churn_probability"], differences["repurchase_probability"]),
            "largest contribution difference": max(contributions, default=0.0),
            # LTV is rounded to cents: a last-bit difference in a sum can move it by one.
            "largest LTV difference": differences["ltv"],
            "rows with another label": int(differing.any(axis=1).sum())}


def psi_difference(expected: dict, actual: dict) -> float:
    """Largest difference between two engines' PSI values (inf when they name other features)."""
    pairs = [(expected[t].get(name), actual.get(t, {}).get(name)) for t in expected for name in expected[t]]
    if any(b is None for _, b in pairs) or sum(map(len, expected.values())) != sum(map(len, actual.values())):
        return float("inf")
    return max((abs(a - b) for a, b in pairs), default=0.0)


def compare_scoring(n_customers: int, directory: Path, repeat: int) -> float:
    """Batch scoring on both engines with the same models; Spark's time over DuckDB's."""
    with tempfile.TemporaryDirectory(prefix="bench_spark_scoring_") as scratch:
        models_path = f"{scratch}/models.pickle"
        trained = measure("train the models (untimed set-up)",
                          _TRAIN_SETUP,
                          _TRAIN_WORK.format(directory=str(directory), scratch=scratch, modulus=SAMPLE_MODULUS,
                                             max_snapshots=MAX_SNAPSHOTS, models_path=models_path))

        def score(name: str, label: str, connect_code: str):
            setup = _SCORE_SETUP.format(directory=str(directory), models_path=models_path, scratch=scratch, name=name,
                                        connect=connect_code)
            return measure(label, setup, _SCORE_WORK, repeat=repeat)

        duckdb = score("duckdb", "DuckDB (default engine)", _CONNECT_DUCKDB)
        spark = score("spark", SPARK_LABEL, _CONNECT_SPARK.format(memory=SPARK_DRIVER_MEMORY))
        print_table(
            f"score every customer (load, features, both models, exact reasons, drift, write), demo shop of "
            f"{n_customers:,} customers; models trained on 1 in {SAMPLE_MODULUS} customers in "
            f"{trained.seconds:.0f} s, not timed (trees {trained.info['trees']})",
            _engine_rows([duckdb, spark], duckdb), ENGINE_COLUMNS,
        )
        print(f"Spark session start-up, not included above: {spark.info['session_seconds']:.1f} s.")
        differences = score_differences(Path(duckdb.info["output"]), Path(spark.info["output"]))
        differences["largest PSI difference"] = psi_difference(duckdb.info["psi"], spark.info["psi"])
        print("Spark against DuckDB: " + ", ".join(f"{k} {v:g}" for k, v in differences.items()))
    return spark.seconds / duckdb.seconds


def run(n_customers: int = 1_000_000, repeat: int = 1) -> bool:
    directory = demo_data(n_customers)
    features_ratio = compare_features(n_customers, directory, repeat)
    scoring_ratio = compare_scoring(n_customers, directory, repeat)
    print(f"target (informational): where each pays off - on this machine Spark takes {features_ratio:.1f}x DuckDB's "
          f"time for the features and {scoring_ratio:.1f}x for scoring; DuckDB while the data fit one machine, Spark "
          "when they outgrow it and a cluster is at hand")
    return True


if __name__ == "__main__":
    main(run, __doc__, default_repeat=1)
