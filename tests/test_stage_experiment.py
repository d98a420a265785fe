"""The experiment stage, as a user runs it: the demo's campaigns evaluated against what the
simulator planted, a deliberately unbalanced assignment caught, the uplift model exported and
used by scoring, and nothing written when something is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from churnml.errors import UserError
from churnml.jobs.experiment import REPORT_NAME
from churnml.jobs.experiment import run as run_experiment
from churnml.jobs.score import run as run_score
from churnml.simulate import simulate_shop
from test_config import compose_resolved
from test_scoring import small_models_on_files
from test_stage_score import save_exported

pytestmark = pytest.mark.slow


def tracked(root: Path) -> list[str]:
    return [f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db", f"mlflow.artifact_root={root}/artifacts"]


def test_on_the_demo_shop_the_planted_lift_is_inside_the_interval_cuped_narrows_it_and_uplift_beats_risk(tmp_path, capsys):
    output = tmp_path / "experiment"
    previous = mlflow.get_tracking_uri()
    try:
        path = run_experiment(compose_resolved("experiment", [
            f"data.directory={tmp_path}/data", *tracked(tmp_path), f"experiment.output_dir={output}",
            f"experiment.model_dir={tmp_path}/models"]))
        runs = mlflow.search_runs(experiment_names=["churnml"])
    finally:
        mlflow.set_tracking_uri(previous)
    assert path == output
    assert {p.name for p in output.iterdir()} == {
        "campaigns.parquet", "outcomes.parquet", "lifts.parquet", "sample_ratio.parquet", "pilot_plan.parquet",
        "targeting.parquet", "qini_curves.parquet", "uplift_bins.parquet", "uplift_model", REPORT_NAME}

    # What the simulator planted: the mean over assigned customers of Y(treated) - Y(control).
    truth = simulate_shop(truth=True)["campaign_truth"]
    planted = (truth["repurchased_if_treated"].astype(float) - truth["repurchased_if_control"]).groupby(truth["campaign"]).mean()
    lifts = pd.read_parquet(output / "lifts.parquet")
    rate = lifts[lifts["metric"] == "repurchase_rate"].set_index(["campaign", "estimator"])
    assert len(planted) == 3 and planted.between(0.03, 0.08).all()
    for campaign, lift in planted.items():
        for estimator in ("difference", "cuped"):
            row = rate.loc[(campaign, estimator)]
            assert row["lift_ci_lower"] < lift < row["lift_ci_upper"], (campaign, estimator)
        assert rate.loc[(campaign, "cuped"), "ci_width"] < rate.loc[(campaign, "difference"), "ci_width"]
    assert not pd.read_parquet(output / "sample_ratio.parquet")["mismatch"].any()

    targeting = pd.read_parquet(output / "targeting.parquet").set_index("targeting")["qini_coefficient"]
    assert targeting["uplift"] > targeting["churn_risk"] > targeting["random"] == 0
    plan = pd.read_parquet(output / "pilot_plan.parquet").iloc[0]
    assert plan["effect"] == pytest.approx(0.02) and plan["n_treatment"] > 1000

    page = (output / REPORT_NAME).read_text()
    assert page.count('src="data:image/png;base64,') == 3 and "Sample-ratio check" in page
    assert (tmp_path / "models" / "churnml-uplift" / "deployment.json").exists()
    run = runs.iloc[0]
    assert run["tags.churnml.stage"] == "experiment" and run["tags.churnml.output"] == str(output)
    assert run["metrics.uplift.uplift.qini_coefficient"] == pytest.approx(targeting["uplift"])
    printed = capsys.readouterr().out
    assert "retention_2025_09 (CUPED): repurchase rate" in printed and "Qini coefficient" in printed


@pytest.fixture(scope="module")
def shop(small_shop, tmp_path_factory) -> dict:
    """The small shop as files, with churn and repurchase models exported beside its uplift model."""
    root = tmp_path_factory.mktemp("experiment_stage")
    paths, models = small_models_on_files(small_shop, root / "data")
    for target, model in models.items():
        save_exported(model, root / "models", f"churnml-{target}", "3")
    return {"root": root, **paths}


def files(shop: dict, treatments: Path | None = None) -> list[str]:
    return ["data=files", *(f"data.{name}.path={shop[name]}" for name in ("transactions", "interactions", "customers", "surveys")),
            f"data.treatments.path={treatments or shop['treatments']}"]


def test_the_exported_uplift_model_gives_scores_the_expected_value_of_a_contact(shop, tmp_path, capsys):
    root = shop["root"]
    run_experiment(compose_resolved("experiment", [*files(shop), *tracked(tmp_path), f"experiment.output_dir={tmp_path}/e",
                                                   f"experiment.model_dir={root}/models"]))
    deployment = json.loads((root / "models" / "churnml-uplift" / "deployment.json").read_text())
    assert deployment["contact_cost"] == pytest.approx(1.0) and deployment["outcome"] == "repurchased"
    scores_path = tmp_path / "scores.parquet"
    run_score(compose_resolved("score", [*files(shop), *tracked(tmp_path), f"score.model_dir={root}/models",
                                         f"score.output={scores_path}"]))
    scores = pd.read_parquet(scores_path)
    value = scores["expected_uplift"] * scores["ltv"].fillna(0) - 1.0
    assert np.allclose(scores["expected_value"], value, atol=0.006)
    ranked = scores.dropna(subset=["contact_rank"]).sort_values("contact_rank")
    assert len(ranked) and (ranked["expected_value"] > 0).all() and ranked["expected_value"].is_monotonic_decreasing
    assert list(ranked["contact_rank"]) == list(range(1, len(ranked) + 1))
    assert "customers worth contacting" in capsys.readouterr().out
    # Turned off, the columns are not there.
    run_score(compose_resolved("score", [*files(shop), *tracked(tmp_path), f"score.model_dir={root}/models",
                                         f"score.output={scores_path}", "score.expected_value=false"]))
    assert "expected_value" not in pd.read_parquet(scores_path).columns


def test_a_deliberately_unbalanced_assignment_is_flagged_by_the_sample_ratio_check(shop, tmp_path, capsys):
    treatments = pd.read_parquet(shop["treatments"])
    control = treatments.index[treatments["group"] == "control"]
    unbalanced = treatments.drop(control[::3])  # a third of every control group lost
    path = tmp_path / "treatments.parquet"
    unbalanced.to_parquet(path)
    output = tmp_path / "e"
    run_experiment(compose_resolved("experiment", [*files(shop, path), *tracked(tmp_path), f"experiment.output_dir={output}",
                                                   "experiment.uplift=false"]))
    srm = pd.read_parquet(output / "sample_ratio.parquet")
    assert srm["mismatch"].all() and (srm["pvalue"] < 0.001).all()
    assert "SAMPLE-RATIO MISMATCH" in capsys.readouterr().out
    assert not (output / "targeting.parquet").exists()


def test_an_unknown_campaign_writes_nothing(shop, tmp_path):
    with pytest.raises(UserError, match="experiment.campaign=spring is not in the treatments table: use one of retention_"):
        run_experiment(compose_resolved("experiment", [*files(shop), *tracked(tmp_path), f"experiment.output_dir={tmp_path}/e",
                                                       "experiment.campaign=spring", f"experiment.model_dir={tmp_path}/m"]))
    assert not (tmp_path / "e").exists() and not (tmp_path / "m").exists()
