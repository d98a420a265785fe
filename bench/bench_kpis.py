"""Loyalty KPIs, cohorts, tier and level migration, interest tags and the membership level history
for the 1M-customer demo shop, against the feature build of the same files measured alongside.

Target: at most 2x the feature build's time and under 4 GiB peak memory, with membership levels
on. The KPIs read tiers and LTV on up to four days (the days before and the last days of the two
periods), the orders once, and the levels of those days from one level history at the last date.
The same KPIs without levels are measured too, to show what the levels cost. Each is the best
of two runs (``--repeat``): one run's wall time on a shared machine varies by a tenth.
"""

from __future__ import annotations

from harness import demo_data, main, measure, print_table

TIME_RATIO_TARGET = 2.0
PEAK_GIB_TARGET = 4.0


def run(n_customers: int = 1_000_000, repeat: int = 2) -> bool:
    directory = demo_data(n_customers)
    setup = f"""
        from churnml.io.sources import load_data
        from churnml.features.build import FeatureConfig, build_features
        from churnml.features.levels import LevelConfig
        from churnml.loyalty.kpis import KpiConfig, program_kpis
        settings = {{"kind": "files", **{{t: {{"path": {str(directory)!r} + f"/{{t}}.parquet"}}
                                       for t in ("transactions", "interactions", "customers")}}}}
    """
    features = measure("reference: load + features at the last date (churnml-features)", setup, """
        dataset = load_data(settings)
        frame = build_features(dataset, dataset.last_date, FeatureConfig()).to_pyarrow()
        info = {"rows": frame.num_rows, "transactions": dataset.reports["transactions"].rows_read}
    """, repeat=repeat)
    without = measure("churnml: load + KPIs, cohorts, migration, interest tags, no levels", setup, """
        dataset = load_data(settings)
        result = program_kpis(dataset, dataset.last_date, KpiConfig(), FeatureConfig())
        info = {"rows": sum(len(t) for t in result.tables().values())}
    """, repeat=repeat)
    kpis = measure("churnml: the same with levels on, + the level history (churnml-kpis)", setup, """
        dataset = load_data(settings)
        result = program_kpis(dataset, dataset.last_date, KpiConfig(), FeatureConfig(levels=LevelConfig(enabled=True)))
        assert "level" in result.migrations and result.level_history is not None
        history = result.level_history.count().to_pyarrow().as_py()
        info = {"rows": sum(len(t) for t in result.tables().values()) + history, "history": history}
    """, repeat=repeat)
    rows = [{"what": m.name, "seconds": m.seconds, "x features": m.seconds / features.seconds, "peak GiB": m.peak_gib,
             "output rows": m.info.get("rows")} for m in (features, without, kpis)]
    print_table(f"kpis, demo shop of {n_customers:,} customers ({features.info['transactions']:,} transaction lines)",
                rows, ["what", "seconds", "x features", "peak GiB", "output rows"])
    ratio = kpis.seconds / features.seconds
    ok = ratio <= TIME_RATIO_TARGET and kpis.peak_gib < PEAK_GIB_TARGET
    print(f"target: KPIs with levels <= {TIME_RATIO_TARGET}x the feature build and < {PEAK_GIB_TARGET} GiB: "
          f"{'met' if ok else 'NOT met'} ({ratio:.2f}x, {kpis.peak_gib:.2f} GiB; level history of "
          f"{kpis.info['history']:,} rows; the levels add {(kpis.seconds - without.seconds) / features.seconds:.2f}x)")
    return ok


if __name__ == "__main__":
    main(run, __doc__, default_repeat=2)
