"""Features for the 1M-customer demo shop, against one DuckDB GROUP BY scan of the same file.

Target: at most 4x the scan's time and under 4 GiB peak memory. A second reference, the file
rolled up to orders before the same per-customer aggregate, shows what any exact build pays
(lines of one order are one purchase).
"""

from __future__ import annotations

from harness import demo_data, main, measure, print_table

TIME_RATIO_TARGET = 4.0
PEAK_GIB_TARGET = 4.0


def run(n_customers: int = 1_000_000, repeat: int = 2) -> bool:
    directory = demo_data(n_customers)
    tx = str(directory / "transactions.parquet")
    scan = measure(
        "reference: DuckDB GROUP BY customer_id (count, sum, max)",
        "import duckdb\ncon = duckdb.connect()",
        f"info = {{'rows': con.sql(\"SELECT customer_id, count(*), sum(amount), max(ts) FROM read_parquet('{tx}') GROUP BY customer_id\").fetch_arrow_table().num_rows}}",
        repeat=repeat,
    )
    # What any exact build pays at least: lines rolled up to orders, then one row per customer.
    orders_floor = measure(
        "reference: the same file rolled up to orders, then GROUP BY customer_id",
        "import duckdb\ncon = duckdb.connect()",
        f"info = {{'rows': con.sql(\"SELECT customer_id, count(*), sum(gross), max(ts) FROM (SELECT customer_id, order_id, "
        f"sum(amount) AS gross, min(ts) AS ts FROM read_parquet('{tx}') GROUP BY customer_id, order_id) GROUP BY customer_id\")"
        f".fetch_arrow_table().num_rows}}",
        repeat=repeat,
    )
    load_only = measure(
        "churnml: load + validate (one aggregate pass)",
        f"from churnml.io.sources import load_data\nsettings = {{'kind': 'files', 'transactions': {{'path': {tx!r}}}}}",
        "dataset = load_data(settings)\ninfo = {'rows': dataset.reports['transactions'].rows_kept}",
        repeat=repeat,
    )
    setup = f"""
        from churnml.io.sources import load_data
        from churnml.features.build import FeatureConfig, build_features
        settings = {{"kind": "files", "transactions": {{"path": {tx!r}}}}}
    """
    load_and_build = """
        dataset = load_data(settings)
        table = build_features(dataset, dataset.last_date, FeatureConfig())
        frame = table.to_pyarrow()
        info = {"rows": frame.num_rows, "columns": frame.num_columns,
                 "transactions": dataset.reports["transactions"].rows_read}
    """
    features = measure("churnml: load + validate + clean + features (transactions)", setup, load_and_build, repeat=repeat)
    full_settings = f"""
        from churnml.io.sources import load_data
        from churnml.features.build import FeatureConfig, build_features
        settings = {{"kind": "files", **{{t: {{"path": {str(directory)!r} + f"/{{t}}.parquet"}} for t in ("transactions", "interactions", "customers")}}}}
    """
    full = measure("churnml: the same with interactions and customers", full_settings, load_and_build, repeat=1)
    rows = []
    for m in (scan, orders_floor, load_only, features, full):
        rows.append({"what": m.name, "seconds": m.seconds, "x scan": m.seconds / scan.seconds, "peak GiB": m.peak_gib,
                     "output rows": m.info.get("rows")})
    print_table(f"features, demo shop of {n_customers:,} customers ({features.info['transactions']:,} transaction lines)",
                rows, ["what", "seconds", "x scan", "peak GiB", "output rows"])
    ratio = features.seconds / scan.seconds
    ok = ratio <= TIME_RATIO_TARGET and features.peak_gib < PEAK_GIB_TARGET
    print(f"target: transactions features <= {TIME_RATIO_TARGET}x scan and < {PEAK_GIB_TARGET} GiB: "
          f"{'met' if ok else 'NOT met'} ({ratio:.2f}x, {features.peak_gib:.2f} GiB)")
    return ok


if __name__ == "__main__":
    main(run, __doc__, default_repeat=2)
