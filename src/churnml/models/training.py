"""Train and evaluate: snapshots, a calibrated model, out-of-time holdout and time-based CV.

Plain functions over DataFrames; the ``churnml-train`` stage wires them to Hydra and MLflow.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.base import clone

from churnml.errors import UserError
from churnml.evaluation import drift, report
from churnml.evaluation import metrics as evaluation_metrics
from churnml.features.build import WARNING_FLAGS, FeatureConfig
from churnml.features.dates import resolve_as_of
from churnml.features.seasonality import monthly_purchase_rates, seasonal_index_through
from churnml.features.snapshots import snapshot_table, training_cutoffs
from churnml.io.load import Dataset
from churnml.models.attribution import prior_input_columns
from churnml.models.baselines import baseline_probabilities
from churnml.models.btyd import bgnbd_features
from churnml.models.classifier import ChurnModel, fit_population_priors
from churnml.models.contributions import attach_tree_tables, tabulation_note

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingPlan:
    """What to train on: target, horizon, holdout cutoff and the snapshot schedule.

    ``calibration_fraction`` of the customers (a stable hash of ``customer_id``) make up the
    calibration slice of the latest ``calibration_snapshots``; the model is fitted on the
    earlier snapshots of the other customers (:func:`split_for_calibration`). ``refit``: the
    model to deploy is fitted again after the evaluation, on the snapshots through the
    holdout's (:func:`train_and_evaluate`). ``seasonality``: the prior runs each label window
    in its season's operational time, with the shop's monthly multipliers measured on the data
    each model may see (:func:`churnml.features.seasonality.seasonal_index`; none for a history
    shorter than two years).
    """

    target: str = "churn"
    horizon_days: int = 90
    holdout_cutoff: dt.date | None = None
    step_days: int = 30
    max_snapshots: int = 12
    min_snapshots: int = 4
    min_history_days: int = 30
    calibration_snapshots: int = 1
    calibration_fraction: float = 0.3
    cv_folds: int = 3
    bgnbd_features: bool = True
    refit: bool = True
    seasonality: bool = True

    def resolve_holdout(self, dataset: Dataset) -> dt.date:
        """The holdout date: given, or the last date in the data minus the horizon
        (:func:`churnml.features.dates.resolve_as_of`)."""
        return resolve_as_of(self.holdout_cutoff, dataset.first_date, dataset.last_date, self.horizon_days)


@dataclass
class Outcome:
    """Everything a training run produces, for tracking and the console."""

    model: ChurnModel
    plan: TrainingPlan
    holdout_cutoff: dt.date
    train_cutoffs: list[dt.date]
    train_table: pd.DataFrame
    holdout_table: pd.DataFrame
    probabilities: dict[str, np.ndarray]
    comparison: pd.DataFrame
    metrics: dict[str, float]
    cv_folds: pd.DataFrame
    figures: dict[str, Any] = field(default_factory=dict)
    report_html: str = ""
    # Why scoring cannot use tabulated trees for this model (and falls back to LightGBM's slow
    # pred_contrib for exact reasons); None when it can.
    tabulation_note: str | None = None
    # The model refit through the holdout's snapshot (TrainingPlan.refit), None without a refit.
    refit_model: ChurnModel | None = None
    # Rows scored out of sample (scored_rows): each CV fold's snapshot by its fold's model, then the
    # holdout by the evaluated model; the warning-rule backtest's input.
    out_of_time_scores: pd.DataFrame = field(default_factory=pd.DataFrame)
    # The warning-rule backtest over those rows (churnml.programs.backtest), when a stage runs it.
    backtest: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def deployed_model(self) -> ChurnModel:
        """The model to register and score with: the refit one, or the evaluated one without a refit."""
        return self.refit_model if self.refit_model is not None else self.model


def split_by_cutoff(table: pd.DataFrame, n_latest: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of all but the ``n_latest`` cutoffs, and rows of those latest cutoffs.

    Raises
    ------
    ValueError
        If the table has ``n_latest`` cutoffs or fewer.
    """
    cutoffs = sorted(table["cutoff"].unique())
    if len(cutoffs) <= n_latest:
        raise ValueError(
            f"{len(cutoffs)} snapshot(s) cannot be split into fitting and {n_latest} later calibration snapshot(s); "
            "lower train.step_days or train.calibration_snapshots, or use a longer history"
        )
    later = table["cutoff"].isin(cutoffs[-n_latest:])
    return table[~later], table[later]


def held_out_customers(customer_ids: pd.Series, fraction: float) -> np.ndarray:
    """Whether each customer belongs to the held-out ``fraction`` of customers, shape ``(n_rows,)``.

    Decided by a hash of the id's text (pandas' ``hash_pandas_object``), so a customer is held
    out or not in every snapshot and every run, whatever order the rows come in.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the calibration fraction must be in [0, 1), got {fraction}")
    hashed = pd.util.hash_pandas_object(customer_ids.astype(str), index=False).to_numpy()
    return (hashed % 10_000) < round(fraction * 10_000)


def split_for_calibration(
    table: pd.DataFrame, n_latest: int, fraction: float = 0.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fitting rows and the calibration rows of a snapshot table.

    Calibration: the latest ``n_latest`` snapshots, of the held-out ``fraction`` of customers
    (:func:`held_out_customers`); fitting: the earlier snapshots of the other customers. A
    customer's snapshots share most of their history, and the label windows of consecutive
    snapshots overlap, so a model fitted on a customer's earlier snapshots would meet them again
    in the calibration slice: early stopping would never stop and the calibration would judge
    memorised customers. With ``fraction`` 0 every customer is in both parts.

    Raises
    ------
    ValueError
        If the table has ``n_latest`` cutoffs or fewer, or ``fraction`` is outside [0, 1).
    """
    fit_part, calibration_part = split_by_cutoff(table, n_latest)
    if fraction == 0.0:
        return fit_part, calibration_part
    return (fit_part[~held_out_customers(fit_part["customer_id"], fraction)],
            calibration_part[held_out_customers(calibration_part["customer_id"], fraction)])


def fit_model(
    template: ChurnModel, table: pd.DataFrame, calibration_snapshots: int = 1, keep_reference: bool = True,
    calibration_fraction: float = 0.0, progress: str | None = None, rates: pd.Series | None = None,
    priors: dict | None = None,
) -> ChurnModel:
    """Fit a copy of ``template`` on the older snapshots, calibrated on the latest ones
    (:func:`split_for_calibration`).

    With ``keep_reference``, the model is made ready to be shipped: the latest snapshot's features
    and scores are kept with it (``reference_profile_``) as the reference for drift when it scores
    new data, and its trees are tabulated for scoring (``tree_tables_``, by
    :func:`churnml.models.contributions.attach_tree_tables`), which every scoring run would
    otherwise redo. Trees too large to tabulate are reported here, as a warning, rather than
    found out in a slow scoring run (:func:`churnml.models.contributions.tabulation_note`).
    ``trained_through_`` is the latest cutoff whose labels the model saw (:func:`labels_through`
    adds the horizon): for the evaluated model, the last training snapshot before the holdout; for
    the refit one, the holdout's own cutoff. ``progress``: the description of a progress bar of
    the boosting rounds, None for none. ``rates``: the shop's purchases per day by month
    (:func:`churnml.features.seasonality.monthly_purchase_rates`) for the seasonality the model's
    prior runs on, cut to the months the model's labels close by; None for none. ``priors``: the
    prior's BTYD fits of each cutoff (:func:`snapshot_priors`), fitted here otherwise; they serve
    this fit only and are not kept with the model.
    """
    fit_part, calibration_part = split_for_calibration(table, calibration_snapshots, calibration_fraction)
    model = clone(template)
    if priors is not None and model.prior:
        model.population_priors_ = priors
    seasonality = None
    if rates is not None:
        labels_close = pd.Timestamp(table["cutoff"].max()).date() + dt.timedelta(days=int(template.horizon_days))
        seasonality = seasonal_index_through(rates, labels_close)
    model.fit(fit_part, fit_part["label"], calibration_set=(calibration_part, calibration_part["label"]),
              progress=progress, seasonality=seasonality)
    model.trained_through_ = pd.Timestamp(table["cutoff"].max()).date()
    if keep_reference:
        latest = table[table["cutoff"] == table["cutoff"].max()]
        model.reference_profile_ = drift.profile(latest, model.feature_names_in_,
                                                 score=model.predict_proba(latest)[:, 1])
    # Fits of other rows' cutoffs would give a scoring run at another cutoff the base rate.
    model.__dict__.pop("population_priors_", None)
    if not keep_reference:
        return model
    note = attach_tree_tables(model)
    if note:
        log.warning("%s model: %s", model.target, note)
    return model


def snapshot_priors(template: ChurnModel, *tables: pd.DataFrame) -> dict | None:
    """The prior's BTYD fits of every cutoff of the snapshot ``tables``, on all of that cutoff's
    customers (:func:`churnml.models.classifier.fit_population_priors`), so that the model, its
    calibration, each time-based CV fold and the refit share one fit per cutoff; None for a
    template without a prior. The fits read each customer's history up to the cutoff only."""
    if not template.prior:
        return None
    population = pd.concat([prior_input_columns(table) for table in tables], ignore_index=True)
    return fit_population_priors(population, pnbd=template.prior == "pnbd")


def labels_through(model: ChurnModel) -> dt.date | None:
    """The last day the labels a model was trained on looked at: ``trained_through_`` plus the
    horizon, or None for a model fitted before ``trained_through_`` was kept.

    A holdout at a cutoff before this day has a label window that overlaps the training labels:
    the model has seen (part of) the answers, and its figures there are not out of time.
    """
    through = getattr(model, "trained_through_", None)
    if through is None:
        return None
    return pd.Timestamp(through).date() + dt.timedelta(days=int(model.horizon_days))


def holdout_probabilities(
    model: ChurnModel, train_table: pd.DataFrame, holdout_table: pd.DataFrame, target: str, horizon_days: int,
    priors: dict | None = None,
) -> dict[str, np.ndarray]:
    """The model's and each baseline's probabilities for the holdout rows, model first;
    ``priors``: the prior's fits (:func:`snapshot_priors`), fitted on the holdout rows otherwise."""
    probabilities = {"model": model.with_population_prior(holdout_table, priors).predict_proba(holdout_table)[:, 1]}
    probabilities.update(baseline_probabilities(train_table, train_table["label"].to_numpy(), holdout_table, target, horizon_days))
    return probabilities


def cv_fold_cutoffs(cutoffs: list[dt.date], horizon_days: int, n_folds: int, calibration_snapshots: int) -> list[dt.date]:
    """Evaluation cutoffs for time-based CV: the latest training cutoffs with enough history before them."""
    folds = []
    for candidate in sorted(cutoffs, reverse=True):
        usable = [c for c in cutoffs if c + dt.timedelta(days=horizon_days) <= candidate]
        if len(usable) > calibration_snapshots:
            folds.append(candidate)
        if len(folds) == n_folds:
            break
    return sorted(folds)


def time_cv(
    template: ChurnModel, table: pd.DataFrame, horizon_days: int, n_folds: int, calibration_snapshots: int = 1,
    progress: bool = True, calibration_fraction: float = 0.0, rates: pd.Series | None = None,
    priors: dict | None = None,
) -> pd.DataFrame:
    """Out-of-time folds: each evaluates on one snapshot, training only on snapshots whose label
    windows close on or before its cutoff. Never random k-fold over time.

    The metrics of :func:`time_cv_scores`, one row per fold.
    """
    return time_cv_scores(template, table, horizon_days, n_folds, calibration_snapshots, progress,
                          calibration_fraction, rates, priors)[0]


def time_cv_scores(
    template: ChurnModel, table: pd.DataFrame, horizon_days: int, n_folds: int, calibration_snapshots: int = 1,
    progress: bool = True, calibration_fraction: float = 0.0, rates: pd.Series | None = None,
    priors: dict | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The time-based CV (:func:`time_cv`): its metrics, one row per fold (``cutoff``,
    ``train_rows`` and :func:`churnml.evaluation.metrics.binary_metrics`), and the rows each fold
    evaluated with the probability its model gave them (:func:`scored_rows`), out of sample:
    the fold's model saw no label of a window that closes after the fold's cutoff. ``priors``:
    the prior's fits of the table's cutoffs (:func:`snapshot_priors`), fitted per fold otherwise."""
    from tqdm.auto import tqdm

    cutoffs = sorted(pd.Timestamp(c).date() for c in table["cutoff"].unique())
    rows, scored = [], []
    for fold_cutoff in tqdm(cv_fold_cutoffs(cutoffs, horizon_days, n_folds, calibration_snapshots),
                            desc="time-based CV", unit="fold", disable=not progress):
        known = table["cutoff"] + pd.Timedelta(days=horizon_days) <= pd.Timestamp(fold_cutoff)
        evaluated = table[table["cutoff"] == pd.Timestamp(fold_cutoff)]
        # A fold's model is only evaluated, never scores new data: no drift reference.
        model = fit_model(template, table[known], calibration_snapshots, keep_reference=False,
                          calibration_fraction=calibration_fraction, rates=rates, priors=priors)
        probability = model.with_population_prior(evaluated, priors).predict_proba(evaluated)[:, 1]
        metrics = evaluation_metrics.binary_metrics(evaluated["label"].to_numpy(), probability)
        rows.append({"cutoff": fold_cutoff, "train_rows": int(known.sum()), **metrics})
        scored.append(scored_rows(evaluated, probability))
    if not rows:
        log.warning("too few snapshots for time-based CV; lower train.step_days or raise train.max_snapshots")
    return pd.DataFrame(rows), (pd.concat(scored, ignore_index=True) if scored else pd.DataFrame())


def scored_rows(snapshot: pd.DataFrame, probability: np.ndarray) -> pd.DataFrame:
    """What the warning-rule backtest needs of scored snapshot rows: ``customer_id``, ``cutoff``,
    ``label``, ``recency_days``, the warning flags present
    (:data:`churnml.features.build.WARNING_FLAGS`) and the model's ``probability``, shape
    ``(n_rows,)``, in the rows' order."""
    columns = [c for c in ("customer_id", "cutoff", "label", "recency_days", *WARNING_FLAGS) if c in snapshot.columns]
    return snapshot[columns].reset_index(drop=True).assign(probability=np.asarray(probability, dtype=float))


def extra_feature_builder(plan: TrainingPlan) -> Callable[[pd.DataFrame], pd.DataFrame] | None:
    """BG/NBD P(alive) and expected purchases as model features, fitted per snapshot."""
    return partial(bgnbd_features, horizon_days=plan.horizon_days) if plan.bgnbd_features else None


def _snapshots_for(dataset: Dataset, plan: TrainingPlan, features: FeatureConfig, progress: bool):
    holdout_cutoff = plan.resolve_holdout(dataset)
    cutoffs = training_cutoffs(
        holdout_cutoff, plan.horizon_days, dataset.first_date, plan.step_days, plan.max_snapshots,
        plan.min_snapshots, plan.min_history_days,
    )
    log.info("%s snapshots from %s to %s; holdout cutoff %s", len(cutoffs), cutoffs[0], cutoffs[-1], holdout_cutoff)
    extra = extra_feature_builder(plan)
    table = snapshot_table(dataset, [*cutoffs, holdout_cutoff], plan.target, plan.horizon_days, features, extra, progress)
    is_holdout = table["cutoff"] == pd.Timestamp(holdout_cutoff)
    train_table, holdout_table = table[~is_holdout].reset_index(drop=True), table[is_holdout].reset_index(drop=True)
    require_both_classes(holdout_table, holdout_cutoff, plan.target, plan.horizon_days, train_table)
    return holdout_cutoff, cutoffs, train_table, holdout_table


def require_both_classes(holdout_table: pd.DataFrame, holdout_cutoff: dt.date, target: str, horizon_days: int,
                         earlier: pd.DataFrame | None = None) -> None:
    """Refuse a holdout whose labels are all one class: ROC AUC, PR AUC and lift are undefined
    on it, and a model judged on it could neither be compared nor promoted.

    Parameters
    ----------
    holdout_table : pandas.DataFrame
        The holdout snapshot, with a ``label`` column (0/1), one row per customer.
    holdout_cutoff : datetime.date
        Its cutoff; the label window is ``(holdout_cutoff, holdout_cutoff + horizon_days]``.
    target : str
    horizon_days : int
    earlier : pandas.DataFrame, optional
        Earlier snapshots (``cutoff``, ``label``): the latest of them with both classes is
        suggested as another holdout date.

    Raises
    ------
    churnml.errors.UserError
        If the holdout has no rows, or every label is the same.
    """
    labels = holdout_table["label"]
    if labels.nunique() >= 2:
        return
    window = f"({holdout_cutoff}, {holdout_cutoff + dt.timedelta(days=horizon_days)}]"
    if labels.empty:
        found = "has no customers with history"
    else:
        outcome = "positive" if int(labels.iloc[0]) == 1 else "negative"
        found = f"has only {outcome} {target} labels ({len(labels):,} customers), so ROC AUC and PR AUC are undefined"
    hint = "an as_of whose label window holds both outcomes"
    if earlier is not None and not earlier.empty:
        both = earlier.groupby("cutoff")["label"].nunique()
        both = both[both >= 2]
        if not both.empty:
            hint = f"as_of={pd.Timestamp(both.index.max()).date()} or another as_of whose label window holds both outcomes"
    raise UserError(f"the holdout at as_of={holdout_cutoff} (label window {window}) {found}: pass {hint}, "
                    "or check the transactions of that window")


def evaluate_model(
    dataset: Dataset, model: ChurnModel, plan: TrainingPlan, features: FeatureConfig = FeatureConfig(),
    progress: bool = True,
) -> Outcome:
    """Evaluate a fitted model on the out-of-time holdout against the baselines (no refitting, no CV).

    The training snapshots are built only to calibrate the rule and RFM baselines.
    """
    if model.target != plan.target or model.horizon_days != plan.horizon_days:
        raise ValueError(
            f"the model predicts {model.target} within {model.horizon_days} days, but the evaluation asks for "
            f"{plan.target} within {plan.horizon_days} days"
        )
    holdout_cutoff, cutoffs, train_table, holdout_table = _snapshots_for(dataset, plan, features, progress)
    probabilities = holdout_probabilities(model, train_table, holdout_table, plan.target, plan.horizon_days)
    y_holdout = holdout_table["label"].to_numpy()
    return Outcome(
        model=model, plan=plan, holdout_cutoff=holdout_cutoff, train_cutoffs=cutoffs, train_table=train_table,
        holdout_table=holdout_table, probabilities=probabilities,
        comparison=evaluation_metrics.comparison_table(probabilities, y_holdout),
        metrics=evaluation_metrics.holdout_metrics(probabilities, y_holdout), cv_folds=pd.DataFrame(),
    )


def train_and_evaluate(
    dataset: Dataset, template: ChurnModel, plan: TrainingPlan, features: FeatureConfig = FeatureConfig(),
    progress: bool = True,
) -> Outcome:
    """Build snapshots, fit and calibrate, evaluate on the out-of-time holdout and by time-based CV.

    With ``plan.refit``, the model to deploy (``Outcome.refit_model``) is then fitted the same
    way on every snapshot through the holdout's, calibrated on the holdout snapshot, so that what
    scores today's customers has seen the latest labels; its figures are the evaluated twin's
    (``Outcome.model``), since no later data is left to judge it on.
    """
    holdout_cutoff, cutoffs, train_table, holdout_table = _snapshots_for(dataset, plan, features, progress)
    template = clone(template).set_params(target=plan.target, horizon_days=plan.horizon_days)
    what = f"{plan.target} model"
    rates = None
    if plan.seasonality and template.prior:
        rates = monthly_purchase_rates(dataset.transactions, dataset.last_date)
    priors = snapshot_priors(template, train_table, holdout_table)
    # Each model sees the months its labels close by: the evaluated one no month after the holdout cutoff.
    model = fit_model(template, train_table, plan.calibration_snapshots, keep_reference=not plan.refit,
                      calibration_fraction=plan.calibration_fraction, progress=what if progress else None,
                      rates=rates, priors=priors)
    probabilities = holdout_probabilities(model, train_table, holdout_table, plan.target, plan.horizon_days, priors)
    y_holdout = holdout_table["label"].to_numpy()
    folds, fold_scores = time_cv_scores(template, train_table, plan.horizon_days, plan.cv_folds,
                                        plan.calibration_snapshots, progress, plan.calibration_fraction, rates,
                                        priors)
    metrics = evaluation_metrics.holdout_metrics(probabilities, y_holdout)
    if not folds.empty:
        metric_columns = [c for c in folds.columns if c not in ("cutoff", "train_rows", "n", "base_rate")]
        metrics.update(evaluation_metrics.cv_summary(folds[metric_columns].to_dict("records")))
    refit = None
    if plan.refit:
        refit = fit_model(template, pd.concat([train_table, holdout_table], ignore_index=True),
                          plan.calibration_snapshots, calibration_fraction=plan.calibration_fraction,
                          progress=f"{what}, refit through {holdout_cutoff}" if progress else None, rates=rates,
                          priors=priors)
    return Outcome(
        model=model,
        plan=plan,
        holdout_cutoff=holdout_cutoff,
        train_cutoffs=cutoffs,
        train_table=train_table,
        holdout_table=holdout_table,
        probabilities=probabilities,
        comparison=evaluation_metrics.comparison_table(probabilities, y_holdout),
        metrics=metrics,
        cv_folds=folds,
        tabulation_note=tabulation_note(refit if refit is not None else model),
        refit_model=refit,
        out_of_time_scores=pd.concat([part for part in (fold_scores, scored_rows(holdout_table, probabilities["model"]))
                                      if not part.empty], ignore_index=True),
    )


def add_report(outcome: Outcome, context: dict[str, Any],
               tables: Sequence[tuple[str, pd.DataFrame, str]] = ()) -> Outcome:
    """Attach the evaluation plots and the one-page HTML report to ``outcome``; ``tables``
    (heading, table, note) are shown after the cross-validation (:func:`churnml.evaluation.report.render_report`)."""
    y = outcome.holdout_table["label"].to_numpy()
    figures = {
        "roc": report.plot_roc(outcome.probabilities, y),
        "precision_recall": report.plot_precision_recall(outcome.probabilities, y),
        "calibration": report.plot_calibration(outcome.probabilities, y),
        "gains_lift": report.plot_gains(outcome.probabilities, y),
    }
    importance = outcome.model.feature_importance()
    if not importance.empty:
        figures["feature_importance"] = report.plot_importance(importance)
    title = f"churnml evaluation: {outcome.plan.target} within {outcome.plan.horizon_days} days"
    cv = outcome.cv_folds if not outcome.cv_folds.empty else None
    outcome.figures = figures
    outcome.report_html = report.render_report(title, outcome.comparison, figures, context, cv=cv, tables=tables)
    return outcome
