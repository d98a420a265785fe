"""Campaigns of the treatments table: which of them can be evaluated at a date, and what was known
of their customers when they were assigned (features and churn risk the day before)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from churnml.errors import UserValueError
from churnml.features.build import FeatureConfig
from churnml.features.snapshots import feature_frame
from churnml.io.load import Dataset

UPLIFT_LEARNERS = ("t", "x")


@dataclass(frozen=True)
class ExperimentConfig:
    """What ``churnml-experiment`` measures (``experiment`` in the Hydra config).

    Outcomes are counted in the ``window_days`` after each assignment, ``(ts, ts + window_days]``
    by day; the pre-period that CUPED adjusts for is the ``pre_days`` up to the assignment. A
    campaign is evaluated once its last assignment's window has closed on or before ``as_of``.

    Parameters
    ----------
    campaign
        One campaign to evaluate; None: every campaign whose window has closed.
    window_days, pre_days
        Outcome window and CUPED pre-period, in days.
    confidence_level
        Of the lift intervals (two-sided).
    treatment_share
        The share of treatment that the assignment was planned with; the sample-ratio check tests
        the observed split against it.
    srm_p_value
        p-value below which the split counts as a sample-ratio mismatch (0.001, the usual
        threshold: Fabijan et al., "Diagnosing Sample Ratio Mismatch in Online Controlled
        Experiments", KDD 2019).
    cuped
        Also report the lifts adjusted for the pre-period (Deng, Xu, Kohavi and Walker, "Improving
        the Sensitivity of Online Controlled Experiments by Utilizing Pre-Experiment Data", WSDM 2013).
    uplift, uplift_learner
        Fit an uplift model of the treatment effect on repurchase (``t`` or ``x`` meta-learner on
        LightGBM), evaluated out of time on the latest campaign; it needs two campaigns or more.
    contact_cost
        Cost of one contact in currency, for ``expected_value``; None: the treatments' mean
        ``cost`` of treated customers (0 without a cost column).
    plan_base_rate, plan_effect, plan_alpha, plan_power, plan_treatment_share
        The pilot the power planner sizes: base repurchase rate (None: the control rate of the
        latest campaign), the absolute lift to detect, significance level, power, and treatment share.
    """

    campaign: str | None = None
    window_days: int = 60
    pre_days: int = 180
    confidence_level: float = 0.95
    treatment_share: float = 0.5
    srm_p_value: float = 0.001
    cuped: bool = True
    uplift: bool = True
    uplift_learner: str = "x"
    contact_cost: float | None = None
    plan_base_rate: float | None = None
    plan_effect: float = 0.02
    plan_alpha: float = 0.05
    plan_power: float = 0.8
    plan_treatment_share: float = 0.5

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> "ExperimentConfig":
        """Build from the ``experiment`` config node; other keys (``output_dir``) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in settings.items() if k in known})

    def __post_init__(self) -> None:
        if self.window_days < 1 or self.pre_days < 1:
            raise UserValueError(f"experiment.window_days={self.window_days} and experiment.pre_days={self.pre_days}: "
                                 "give whole numbers of days, 1 or more")
        for key in ("confidence_level", "treatment_share", "plan_alpha", "plan_power", "plan_treatment_share"):
            if not 0 < float(getattr(self, key)) < 1:
                raise UserValueError(f"experiment.{key}={getattr(self, key)}: give a number between 0 and 1")
        if not 0 < self.srm_p_value < 1:
            raise UserValueError(f"experiment.srm_p_value={self.srm_p_value}: give a number between 0 and 1")
        if self.plan_base_rate is not None and not 0 < self.plan_base_rate < 1:
            raise UserValueError(f"experiment.plan_base_rate={self.plan_base_rate}: give a rate between 0 and 1")
        if self.plan_effect <= 0:
            raise UserValueError(f"experiment.plan_effect={self.plan_effect}: give a positive lift (0.02 = 2 points)")
        if self.uplift_learner not in UPLIFT_LEARNERS:
            raise UserValueError(f"experiment.uplift_learner={self.uplift_learner} is not one of "
                                 f"{', '.join(UPLIFT_LEARNERS)}: use one of them")
        if self.contact_cost is not None and self.contact_cost < 0:
            raise UserValueError(f"experiment.contact_cost={self.contact_cost}: give 0 or more")


def campaign_table(treatments: Any, window_days: int) -> pd.DataFrame:
    """One row per campaign of a treatments table, in order of first assignment.

    Parameters
    ----------
    treatments : ibis Table or pandas.DataFrame
        ``customer_id``, ``ts``, ``campaign``, ``group``, optional ``cost``.
    window_days : int
        Outcome window, for the day each campaign's outcomes are complete.

    Returns
    -------
    pandas.DataFrame
        ``campaign``, ``first_day``, ``last_day`` (dates of the first and last assignment),
        ``treatment``, ``control`` (customers), ``cost_per_contact`` (mean cost of the treated;
        NaN without costs) and ``complete_on`` (``last_day + window_days``).
    """
    frame = _as_frame(treatments, ["customer_id", "ts", "campaign", "group", "cost"])
    if frame.empty:
        return pd.DataFrame(columns=["campaign", "first_day", "last_day", "treatment", "control",
                                     "cost_per_contact", "complete_on"])
    frame["day"] = pd.to_datetime(frame["ts"]).dt.normalize()
    treated = frame["group"] == "treatment"
    if "cost" not in frame.columns:
        frame["cost"] = np.nan
    table = frame.groupby("campaign", sort=False).agg(
        first_day=("day", "min"), last_day=("day", "max"),
        treatment=("group", lambda g: int((g == "treatment").sum())),
        control=("group", lambda g: int((g == "control").sum())),
    )
    table["cost_per_contact"] = frame[treated].groupby("campaign")["cost"].mean().reindex(table.index)
    table = table.reset_index().sort_values(["first_day", "campaign"], ignore_index=True)
    table["first_day"] = table["first_day"].dt.date
    table["last_day"] = table["last_day"].dt.date
    table["complete_on"] = [d + dt.timedelta(days=window_days) for d in table["last_day"]]
    return table


def campaigns_to_evaluate(table: pd.DataFrame, as_of: dt.date, campaign: str | None = None,
                          last_date: dt.date | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The campaigns of :func:`campaign_table` whose outcome windows have closed by ``as_of``,
    and a note for each one left out.

    Raises
    ------
    churnml.errors.UserValueError
        For a ``campaign`` the table does not hold (listing those it does), one whose window is
        still open at ``as_of`` (naming the first date it can be evaluated, or, when that is after
        ``last_date``, the longest window the data can close), or when no campaign can be evaluated.
    """
    if table.empty:
        raise UserValueError("the treatments table holds no assignments: give data.treatments.path a file with rows")
    known = list(table["campaign"])
    if campaign is not None:
        if campaign not in known:
            raise UserValueError(f"experiment.campaign={campaign} is not in the treatments table: use one of "
                                 f"{', '.join(known[:10])}{' ...' if len(known) > 10 else ''}")
        table = table[table["campaign"] == campaign]
    closed = table["complete_on"] <= as_of
    notes = [f"campaign {row.campaign} left out: its outcome window closes on {row.complete_on}, after as_of {as_of}"
             for row in table[~closed].itertuples(index=False)]
    if not closed.any():
        first = table["complete_on"].min()
        if last_date is not None and first > last_date:
            longest = max((last_date - table["last_day"].min()).days, 0)
            raise UserValueError(f"no campaign's outcome window has closed by the last date in the data ({last_date}): "
                                 f"give experiment.window_days={longest} or less")
        raise UserValueError(f"no campaign's outcome window has closed by as_of={as_of}: give as_of={first} or later, "
                             "or a shorter experiment.window_days")
    return table[closed].reset_index(drop=True), notes


def assignment_cutoffs(table: pd.DataFrame) -> dict[str, dt.date]:
    """The day each campaign's customers are described at: the day before its first assignment,
    so that nothing the campaign caused is known to the features."""
    return {row.campaign: row.first_day - dt.timedelta(days=1) for row in table.itertuples(index=False)}


def assignment_features(dataset: Dataset, assignments: pd.DataFrame, cutoffs: Mapping[str, dt.date],
                        config: FeatureConfig = FeatureConfig(),
                        churn_risk: Callable[[pd.DataFrame], np.ndarray] | None = None) -> pd.DataFrame:
    """The features of every assigned customer at their campaign's cutoff.

    Parameters
    ----------
    dataset : Dataset
    assignments : pandas.DataFrame
        One row per assignment with ``customer_id`` and ``campaign`` (and any outcome columns,
        kept).
    cutoffs : mapping of str to datetime.date
        Campaign to the day its features are taken at (:func:`assignment_cutoffs`).
    config : FeatureConfig
    churn_risk : callable, optional
        Given the whole feature table at a cutoff (every customer, so that a prior fitted on the
        population is the population's), the churn probability of each row
        (:func:`classical_churn_risk`, :func:`model_churn_risk`); adds ``churn_risk``.

    Returns
    -------
    pandas.DataFrame
        ``assignments`` in their order with the feature columns of
        :func:`churnml.features.snapshots.feature_frame` beside them (``cutoff`` included);
        customers without a purchase by the cutoff get missing features and, having no history
        to hold them, the highest churn risk of their campaign.
    """
    pieces = []
    for campaign, rows in assignments.groupby("campaign", sort=False):
        features = feature_frame(dataset, cutoffs[campaign], config)
        if churn_risk is not None:
            features["churn_risk"] = churn_risk(features)
        overlap = [c for c in features.columns if c in rows.columns and c != "customer_id"]
        joined = rows.merge(features.drop(columns=overlap), on="customer_id", how="left", sort=False)
        joined.index = rows.index
        if churn_risk is not None:
            joined["churn_risk"] = joined["churn_risk"].fillna(features["churn_risk"].max())
        pieces.append(joined)
    return pd.concat(pieces).loc[assignments.index]


def classical_churn_risk(horizon_days: int) -> Callable[[pd.DataFrame], np.ndarray]:
    """Churn risk as BG/NBD's probability of no purchase in ``horizon_days`` (Fader, Hardie and
    Lee, "Counting Your Customers the Easy Way", Marketing Science 2005), fitted on the feature
    table it is given: the classical score, needing no trained model."""
    from churnml.models.btyd import bgnbd_inputs, bgnbd_probability, fit_bgnbd

    def risk(features: pd.DataFrame) -> np.ndarray:
        inputs = bgnbd_inputs(features)
        return bgnbd_probability(fit_bgnbd(inputs), inputs, horizon_days, "churn")

    return risk


def model_churn_risk(model: Any) -> Callable[[pd.DataFrame], np.ndarray]:
    """Churn risk as a trained churn model's calibrated probability (its BTYD prior fitted on
    the feature table it is given, as when scoring)."""
    from churnml.scoring.table import model_inputs

    def risk(features: pd.DataFrame) -> np.ndarray:
        fitted = model.with_population_prior(features)
        return fitted.predict_proba(model_inputs(features, {"churn": fitted})["churn"])[:, 1]

    return risk


def _as_frame(table: Any, columns: list[str]) -> pd.DataFrame:
    if isinstance(table, pd.DataFrame):
        return table[[c for c in columns if c in table.columns]].copy()
    present = [c for c in columns if c in table.columns]
    return table.select(*present).to_pyarrow().to_pandas()
