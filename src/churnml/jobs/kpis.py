"""``churnml-kpis``: the loyalty program's KPI and migration tables (Parquet) and its one-page
HTML dashboard, at ``as_of``, tracked in MLflow."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from churnml.jobs.common import check_output, check_tracking, configure_tracking, engine_connection

log = logging.getLogger("churnml")

DASHBOARD_NAME = "dashboard.html"


def default_output_dir(data_name: str, as_of: Any) -> str:
    """``outputs/kpis/<data>/as_of=<as_of>``."""
    return f"outputs/kpis/{data_name}/as_of={as_of}"


def run(settings: Mapping[str, Any]) -> Path:
    """Compute the KPIs, migration matrices and interest tags at ``as_of``; write them and the
    dashboard to ``kpis.output_dir``, log them to MLflow, and return the directory.

    Raises
    ------
    churnml.errors.UserError
        Before any work for an output location or MLflow store that cannot be written; for data
        that breaks the contract, an ``as_of`` outside the data or periods that do not fit it,
        with nothing written.
    """
    from churnml import tracking
    from churnml.config import stage_as_of
    from churnml.features.build import FeatureConfig
    from churnml.features.dates import resolve_as_of
    from churnml.features.segments import TIERS
    from churnml.io.files import staged, write_frame_atomic, write_text_atomic
    from churnml.io.sources import data_sources, load_data
    from churnml.loyalty import dashboard
    from churnml.loyalty.kpis import KpiConfig, program_kpis

    requested = stage_as_of(settings)
    kpi_settings = settings["kpis"]
    config = KpiConfig.from_dict(kpi_settings)
    feature_config = FeatureConfig.from_dict(settings["features"])
    given_output = kpi_settings.get("output_dir")
    check_output(given_output or f"outputs/kpis/{settings['data']['name']}", "kpis.output_dir", "directory")
    check_tracking(settings["mlflow"])
    dataset = load_data(settings["data"], con=engine_connection(settings))
    as_of = resolve_as_of(requested, dataset.first_date, dataset.last_date)
    output = Path(given_output or default_output_dir(settings["data"]["name"], as_of))

    # Surveys from the dataset; levels (features.levels.enabled) from one level history at as_of.
    result = program_kpis(dataset, as_of, config, feature_config)
    figures = dashboard.dashboard_figures(result.monthly, result.cohorts, (result.baseline, result.current),
                                          result.periods, result.progress, result.migrations, {"tier": TIERS})
    context = {
        "data": settings["data"]["name"], "as_of": as_of,
        "baseline": f"{result.baseline.label} (tiers of {result.baseline.classified_on})",
        "current": f"{result.current.label} (tiers of {result.current.classified_on})",
        "migration": f"{result.migration_days[0]} to {result.migration_days[1]}",
        "active": f"a purchase in the last {config.active_days} days",
    }
    page = dashboard.render_dashboard(f"Loyalty program KPIs, {settings['data']['name']}, as of {as_of}", context,
                                      result.progress, result.periods, figures, result.notes)
    mlflow_settings = configure_tracking(settings)
    fingerprint = tracking.data_fingerprint(dataset, data_sources(settings["data"]))
    logged_settings = {**settings, "as_of": str(as_of), "kpis": {**kpi_settings, "output_dir": str(output)}}
    # Written beside the output and renamed in once the run is tracked: a failure in between
    # leaves the previous output as it was.
    with staged(output) as written:
        written.mkdir(parents=True)
        for name, table in result.tables().items():
            write_frame_atomic(table, written / f"{name}.parquet")
        write_text_atomic(page, written / DASHBOARD_NAME)
        run_id = tracking.log_kpis(logged_settings, result.periods, result.progress, written, figures, fingerprint,
                                   run_name=f"kpis-{as_of}")

    for note in result.notes:
        log.info(note)
    print(f"\nloyalty KPIs as of {as_of}: baseline {result.baseline.label}, current {result.current.label}")
    for row in result.progress.itertuples(index=False):
        group = "" if row.group == "all" else f" ({row.group})"
        status = "no data" if row.achieved != row.achieved else "met" if row.met else "not met"
        change = f"{row.change:+.0%}" if row.relative else f"{row.change:+g}"
        print(f"  {row.target}: {row.kpi}{group} {row.baseline:.4g} -> {row.current:.4g}, target {change}: {status}")
    print(f"tables and dashboard: {output} ({output / DASHBOARD_NAME})")
    print(f"MLflow run {run_id} (experiment '{mlflow_settings['experiment']}', {mlflow_settings['tracking_uri']})")
    return output
