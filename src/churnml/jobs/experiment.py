"""``churnml-experiment``: what each campaign of the treatments table changed (lift with intervals,
CUPED, the sample-ratio check), the size of a next pilot, and an uplift model evaluated out of
time against targeting by churn risk; tables (Parquet) and an HTML report, tracked in MLflow."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from churnml.errors import UserValueError
from churnml.jobs.common import check_output, check_tracking, configure_tracking, engine_connection

log = logging.getLogger("churnml")

REPORT_NAME = "report.html"
UPLIFT_OUTCOME = "repurchased"
# Columns of the assignment frame that are not the customer's features at the cutoff.
NOT_FEATURES = ("customer_id", "campaign", "group", "ts", "cost", "cutoff", "churn_risk")


def default_output_dir(data_name: str, as_of: Any) -> str:
    """``outputs/experiment/<data>/as_of=<as_of>``."""
    return f"outputs/experiment/{data_name}/as_of={as_of}"


def uplift_model_name(registered_model_prefix: str) -> str:
    """The directory name of the exported uplift model: ``<prefix>-uplift``."""
    return f"{registered_model_prefix}-uplift"


def run(settings: Mapping[str, Any]) -> Path:
    """Evaluate the campaigns whose outcome windows have closed by ``as_of``; write the tables and
    the report to ``experiment.output_dir``, export the uplift model fitted on every campaign to
    ``experiment.model_dir``, log everything to MLflow, and return the output directory.

    Raises
    ------
    churnml.errors.UserError
        Before any work for an output location or MLflow store that cannot be written; for data
        without a treatments table, an unknown campaign, a campaign whose window is still open, or
        a campaign without both groups, with nothing written.
    """
    from churnml import tracking
    from churnml.config import stage_as_of
    from churnml.features.build import FeatureConfig
    from churnml.features.dates import resolve_as_of
    from churnml.io.files import staged, write_frame_atomic, write_text_atomic
    from churnml.io.sources import data_sources, load_data
    from churnml.programs import experiments, report
    from churnml.programs.campaigns import ExperimentConfig, campaign_table, campaigns_to_evaluate

    requested = stage_as_of(settings)
    node = settings["experiment"]
    config = ExperimentConfig.from_dict(node)
    feature_config = FeatureConfig.from_dict(settings["features"])
    data_name = settings["data"]["name"]
    prefix = settings["mlflow"]["registered_model_prefix"]
    given_output = node.get("output_dir")
    check_output(given_output or f"outputs/experiment/{data_name}", "experiment.output_dir", "directory")
    model_dir = node.get("model_dir")
    if model_dir and config.uplift:
        check_output(Path(model_dir) / uplift_model_name(prefix), "experiment.model_dir", "directory")
    check_tracking(settings["mlflow"])
    if not has_treatments(settings["data"]):
        raise no_treatments(data_name)
    dataset = load_data(settings["data"], con=engine_connection(settings))
    if dataset.treatments is None:
        raise no_treatments(data_name)
    as_of = resolve_as_of(requested, dataset.first_date, dataset.last_date)
    output = Path(given_output or default_output_dir(data_name, as_of))

    campaigns, notes = campaigns_to_evaluate(campaign_table(dataset.treatments, config.window_days), as_of,
                                             config.campaign, last_date=dataset.last_date)
    outcomes = experiments.assignment_outcomes(
        dataset.transactions, dataset.treatments.filter(dataset.treatments.campaign.isin(list(campaigns["campaign"]))),
        window_days=config.window_days, pre_days=config.pre_days, surveys=dataset.surveys)
    srm = experiments.sample_ratio_check(outcomes, expected_treatment_share=config.treatment_share,
                                         alpha=config.srm_p_value)
    lifts = experiments.analyze_campaigns(outcomes, confidence_level=config.confidence_level,
                                          expected_treatment_share=config.treatment_share, cuped=config.cuped)
    plan = pilot_plans(config, lifts, campaigns)
    figures = {"Lift with its interval, plain and CUPED": report.plot_lifts(lifts)}
    targeting, uplift = None, None
    if config.uplift:
        uplift = uplift_targeting(dataset, outcomes, campaigns, config, feature_config, settings, notes)
    if uplift is not None:
        targeting = uplift["evaluation"].table
        figures["Qini curves, holdout campaign"] = report.plot_qini(uplift["evaluation"].curves)
        figures["Uplift by predicted-uplift bin, holdout campaign"] = report.plot_uplift_bins(uplift["evaluation"].bins)

    context = {
        "data": data_name, "as_of": as_of,
        "outcome window": f"{config.window_days} days after each assignment",
        "pre-period (CUPED)": f"{config.pre_days} days up to each assignment",
        "campaigns evaluated": ", ".join(campaigns["campaign"]),
    }
    if uplift is not None:
        evaluation = uplift["evaluation"]
        context["uplift model"] = (f"{config.uplift_learner.upper()}-learner on LightGBM, trained on "
                                   f"{', '.join(evaluation.training_campaigns)}; evaluated on {evaluation.holdout_campaign}")
        context["churn risk"] = uplift["risk_source"]
    page = report.render_experiment_report(f"Campaign evaluation, {data_name}, as of {as_of}", context, campaigns,
                                           srm, lifts, plan, targeting, figures, notes)
    mlflow_settings = configure_tracking(settings)
    fingerprint = tracking.data_fingerprint(dataset, data_sources(settings["data"]))
    logged_settings = {**settings, "as_of": str(as_of), "experiment": {**node, "output_dir": str(output)}}
    tables = {"campaigns": campaigns, "outcomes": outcomes, "lifts": lifts, "sample_ratio": srm, "pilot_plan": plan}
    if uplift is not None:
        tables.update(targeting=targeting, qini_curves=uplift["evaluation"].curves, uplift_bins=uplift["evaluation"].bins)
    # Written beside the output and renamed in once the run is tracked: a failure in between
    # leaves the previous output (and the previous uplift model) as they were.
    with staged(output) as written:
        written.mkdir(parents=True)
        for name, table in tables.items():
            write_frame_atomic(_parquet_ready(table), written / f"{name}.parquet")
        write_text_atomic(page, written / REPORT_NAME)
        if uplift is not None:
            save_deployed(uplift, written / "uplift_model")
        run_id = tracking.log_experiment(logged_settings, lifts, srm, targeting, written, figures, fingerprint,
                                         run_name=f"experiment-{as_of}")
        exported = None
        if uplift is not None and model_dir:
            exported = Path(model_dir) / uplift_model_name(prefix)
            with staged(exported) as model_written:
                save_deployed(uplift, model_written)

    for note in notes:
        log.info(note)
    print_summary(as_of, lifts, srm, plan, targeting)
    print(f"tables and report: {output} ({output / REPORT_NAME})")
    if exported is not None:
        print(f"uplift model for churnml-score: {exported}")
    print(f"MLflow run {run_id} (experiment '{mlflow_settings['experiment']}', {mlflow_settings['tracking_uri']})")
    return output


def has_treatments(data_settings: Mapping[str, Any]) -> bool:
    """Whether a ``data`` node can hold a treatments table: the demo's, or a file's path."""
    kind = data_settings.get("kind", "files")
    return kind == "demo" or (kind == "files" and bool((data_settings.get("treatments") or {}).get("path")))


def no_treatments(data_name: str) -> UserValueError:
    """The one-line refusal of a data set without campaigns."""
    return UserValueError(f"the data set '{data_name}' has no treatments table, which churnml-experiment evaluates: "
                          "give data=files data.treatments.path=FILE (customer_id, ts, campaign, group)")


def pilot_plans(config: Any, lifts: pd.DataFrame, campaigns: pd.DataFrame) -> pd.DataFrame:
    """The pilot the config asks to size, on the base rate given or the latest campaign's control
    repurchase rate, and what that pilot's size would detect at half the effect (one row each)."""
    from churnml.programs.experiments import plan_pilot

    base = config.plan_base_rate
    if base is None:
        latest = campaigns["campaign"].iloc[-1]
        rows = lifts[(lifts["campaign"] == latest) & (lifts["metric"] == "repurchase_rate")]
        base = float(rows["control_mean"].iloc[0])
    if not 0 < base < 1 or base + config.plan_effect >= 1:
        raise UserValueError(f"the pilot's base repurchase rate {base:.3f} with experiment.plan_effect="
                             f"{config.plan_effect} leaves no rate to plan for: give experiment.plan_base_rate")
    plan = plan_pilot(base_rate=base, effect=config.plan_effect, alpha=config.plan_alpha, power=config.plan_power,
                      treatment_share=config.plan_treatment_share)
    return pd.DataFrame([dataclasses.asdict(plan)])


def uplift_targeting(dataset: Any, outcomes: pd.DataFrame, campaigns: pd.DataFrame, config: Any,
                     feature_config: Any, settings: Mapping[str, Any], notes: list[str]) -> dict[str, Any] | None:
    """The uplift model evaluated out of time on the latest campaign (against targeting by churn
    risk and at random) and the model fitted on every campaign for deployment; None, with a note,
    when fewer than two campaigns can be used."""
    from churnml.programs.campaigns import assignment_cutoffs, assignment_features
    from churnml.programs.uplift import evaluate_out_of_time, fit_uplift_model

    if len(campaigns) < 2:
        notes.append("uplift model left out: it is trained on earlier campaigns and evaluated on the latest, "
                     "which takes two campaigns or more")
        return None
    risk, risk_source = churn_risk_source(settings, config.window_days)
    frame = assignment_features(dataset, outcomes, assignment_cutoffs(campaigns), feature_config, risk)
    features = [c for c in frame.columns if c not in NOT_FEATURES and c not in outcomes.columns]
    holdout = str(campaigns["campaign"].iloc[-1])
    params = {"random_state": int(settings.get("seed", 42))}
    try:
        evaluation = evaluate_out_of_time(frame, features, outcome=UPLIFT_OUTCOME, holdout_campaign=holdout,
                                          window_days=config.window_days, learner=config.uplift_learner,
                                          risk="churn_risk", params=params)
    except UserValueError as error:
        notes.append(f"uplift model left out: {error}")
        return None
    deployed = fit_uplift_model(frame, features, outcome=UPLIFT_OUTCOME, learner=config.uplift_learner, params=params)
    treated_cost = outcomes.loc[outcomes["group"] == "treatment", "cost"]
    cost = config.contact_cost if config.contact_cost is not None else (
        float(treated_cost.mean()) if treated_cost.notna().any() else 0.0)
    return {"evaluation": evaluation, "model": deployed, "risk_source": risk_source,
            "meta": {"outcome": UPLIFT_OUTCOME, "window_days": config.window_days, "contact_cost": cost,
                     "campaigns": list(campaigns["campaign"]), "trained_through": str(campaigns["complete_on"].max()),
                     "learner": config.uplift_learner}}


def churn_risk_source(settings: Mapping[str, Any], horizon_days: int) -> tuple[Any, str]:
    """The churn risk that targeting by risk uses: the registered churn champion when there is
    one, else BG/NBD's probability of no purchase in ``horizon_days`` (and a phrase saying which)."""
    from churnml import tracking
    from churnml.errors import UserError
    from churnml.models.registry import registered_model_uri, registered_name
    from churnml.programs.campaigns import classical_churn_risk, model_churn_risk

    name = registered_name(settings["mlflow"]["registered_model_prefix"], "churn")
    tracking.use_tracking_uri(settings["mlflow"]["tracking_uri"])
    try:
        version = tracking.require_alias(name)
    except UserError:
        return (classical_churn_risk(horizon_days),
                f"BG/NBD probability of no purchase in {horizon_days} days (no registered churn model)")
    model = tracking.load_model(registered_model_uri(name))
    return model_churn_risk(model), f"the churn model {name} v{version}"


def save_deployed(uplift: Mapping[str, Any], directory: Path) -> None:
    """The deployable uplift model as data: ``model/`` (its LightGBM texts and JSON,
    :func:`churnml.programs.uplift.save_uplift_model`) and ``deployment.json`` (outcome, window,
    contact cost, campaigns) for churnml-score."""
    from churnml.programs.uplift import save_uplift_model

    directory.mkdir(parents=True, exist_ok=True)
    save_uplift_model(uplift["model"], directory / "model")
    (directory / "deployment.json").write_text(json.dumps(uplift["meta"], indent=2, sort_keys=True))


def print_summary(as_of: Any, lifts: pd.DataFrame, srm: pd.DataFrame, plan: pd.DataFrame,
                  targeting: pd.DataFrame | None) -> None:
    """The console's account of the run: each campaign's repurchase lift, its check, the pilot size
    and the targeting comparison."""
    print(f"\ncampaigns evaluated as of {as_of}:")
    mismatched = set(srm.loc[srm["mismatch"], "campaign"])
    for row in lifts[lifts["metric"] == "repurchase_rate"].itertuples(index=False):
        label = "CUPED" if row.estimator == "cuped" else "plain"
        flag = "  SAMPLE-RATIO MISMATCH: do not trust" if row.campaign in mismatched else ""
        print(f"  {row.campaign} ({label}): repurchase rate {row.control_mean:.1%} -> {row.treatment_mean:.1%}, "
              f"lift {row.lift * 100:+.2f} points [{row.lift_ci_lower * 100:+.2f}, {row.lift_ci_upper * 100:+.2f}], "
              f"p={row.pvalue:.3g}{flag}")
    for row in plan.itertuples(index=False):
        print(f"  a pilot to detect {row.effect * 100:+.1f} points on {row.base_rate:.1%} (alpha {row.alpha:g}, "
              f"power {row.power:g}): {row.n_treatment:,} treated and {row.n_control:,} control customers")
    if targeting is not None:
        shown = ", ".join(f"{r.targeting} {r.qini_coefficient:.3f}" for r in targeting.itertuples(index=False))
        print(f"  Qini coefficient on the holdout campaign: {shown}")


def _parquet_ready(table: pd.DataFrame) -> pd.DataFrame:
    """Columns of Python objects (dates) as text, for a Parquet file any reader takes."""
    frame = table.copy()
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = frame[column].map(lambda v: v if v is None or isinstance(v, (str, bool, int, float)) else str(v))
    return frame
