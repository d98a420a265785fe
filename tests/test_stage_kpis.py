"""The kpis stage, as a user runs it: tables, dashboard and MLflow run from a small demo shop."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from churnml.errors import UserError
from churnml.jobs.kpis import DASHBOARD_NAME
from churnml.jobs.kpis import run as run_kpis
from test_config import compose_resolved


def shared(root) -> list[str]:
    return ["data.n_customers=1500", f"data.directory={root}/data", f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db",
            f"mlflow.artifact_root={root}/artifacts"]


@pytest.mark.slow
def test_the_stage_writes_the_tables_and_the_dashboard_and_tracks_them(tmp_path):
    output = tmp_path / "kpis"
    previous = mlflow.get_tracking_uri()
    try:
        path = run_kpis(compose_resolved("kpis", [*shared(tmp_path), f"kpis.output_dir={output}"]))
        runs = mlflow.search_runs(experiment_names=["churnml"])
    finally:
        mlflow.set_tracking_uri(previous)
    assert path == output
    names = {p.name for p in output.iterdir()}
    assert names == {"monthly.parquet", "cohorts.parquet", "periods.parquet", "targets.parquet",
                     "migration_tier.parquet", "interests.parquet", DASHBOARD_NAME}
    monthly = pd.read_parquet(output / "monthly.parquet")
    assert monthly["month"].is_monotonic_increasing and monthly["churn_rate"].dropna().between(0, 1).all()
    targets = pd.read_parquet(output / "targets.parquet").set_index("target")
    assert list(targets.index) == ["core_repurchase", "churn", "nps", "clv"]
    # The demo shop's surveys reach the KPIs from its dataset; its NPS does not rise by 25 points.
    assert monthly["nps"].notna().any() and pd.notna(targets.loc["nps", "current"])
    assert not targets.loc["nps", "met"]
    migration = pd.read_parquet(output / "migration_tier.parquet")
    assert migration.groupby("from_state")["share"].sum().round(9).eq(1).all()
    page = (output / DASHBOARD_NAME).read_text()
    assert page.count('src="data:image/png;base64,') >= 4 and "Program targets" in page
    run = runs.iloc[0]
    assert run["tags.churnml.stage"] == "kpis" and "metrics.current.all.all.churn_rate" in runs.columns
    assert run["tags.churnml.output"] == str(output)


def test_an_output_directory_that_is_a_file_is_refused_before_the_work(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    with pytest.raises(UserError, match="kpis.output_dir"):
        run_kpis(compose_resolved("kpis", [*shared(tmp_path), f"kpis.output_dir={blocker}"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]
