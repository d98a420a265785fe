"""The classical scores the model is compared against: the warning-flag rule, RFM, recency, and
BG/NBD and Pareto/NBD by probability and by expected purchases.

Scores that are ranks, not probabilities (rule, RFM, recency, expected purchases), are mapped to
probabilities with an isotonic calibrator fitted on the training rows; BG/NBD and Pareto/NBD
(:mod:`churnml.models.btyd`) also give probabilities of their own. :func:`baseline_probabilities`
scores them all on the same holdout rows.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from churnml.features.build import WARNING_FLAGS
from churnml.models.btyd import (
    BGNBDFitError,
    ParetoNBDFitError,
    _as_float,
    _check_target,
    _require_columns,
    bgnbd_inputs,
    bgnbd_probability,
    expected_purchases,
    fit_bgnbd,
    fit_pnbd,
    pnbd_probability,
)

log = logging.getLogger(__name__)

DAYS_PER_WEEK = 7.0
PROBABILITY_FLOOR = 1e-6
# Recency enters the rule score as r / (r + RECENCY_SCALE_DAYS): a year of recency gives 0.5.
RECENCY_SCALE_DAYS = 365.0
# Tie-breaker of a customer without any purchase (no recency): the largest one, yet far enough
# below 1 that ``flags + tie`` never rounds up to the next flag count.
MAX_TIE_BREAKER = 1.0 - 1e-6
QUINTILES = (0.2, 0.4, 0.6, 0.8)
# R + F + M runs from 3 to 15; 18 minus it runs the other way, so a higher score is a higher risk.
RFM_RISK_OFFSET = 18
# Recency score of a customer without any purchase: longer than any real recency.
MISSING_RECENCY_DAYS = 1e9
# --------------------------------------------------------------------------------------------
# Warning-flag rule and RFM
# --------------------------------------------------------------------------------------------


def _flag(features: pd.DataFrame, column: str) -> np.ndarray:
    # An unknown flag (missing value) counts as not raised.
    return features[column].astype("boolean").fillna(False).to_numpy(dtype=bool)


def rule_score(features: pd.DataFrame) -> np.ndarray:
    """The warning-flag rule as a churn-risk score.

    Parameters
    ----------
    features : pandas.DataFrame
        Feature table with ``recency_days`` and any of the flags ``no_repurchase_3m``,
        ``order_value_drop_40`` and ``low_interaction``.

    Returns
    -------
    numpy.ndarray
        Number of flags raised plus a tie-breaker in [0, 1) that grows with recency,
        ``recency / (recency + 365)``, so that customers with equal flag counts are ranked by how
        long ago they last bought. A missing recency (refunds only) takes a tie-breaker just
        below 1, above any real recency.
    """
    _require_columns(features, ["recency_days"], "the warning-flag rule")
    flags = [c for c in WARNING_FLAGS if c in features.columns]
    raised = np.zeros(len(features))
    for column in flags:
        raised += _flag(features, column)
    recency = np.clip(_as_float(features["recency_days"]), 0.0, None)
    tie_breaker = np.where(np.isnan(recency), MAX_TIE_BREAKER, recency / (recency + RECENCY_SCALE_DAYS))
    return raised + tie_breaker


def quintile_edges(reference: np.ndarray) -> np.ndarray:
    """The 20/40/60/80% quantiles of the finite values of ``reference``.

    Raises
    ------
    ValueError
        If ``reference`` has no finite value.
    """
    finite = reference[np.isfinite(reference)]
    if finite.size == 0:
        raise ValueError("quintile edges need at least one finite reference value")
    return np.quantile(finite, QUINTILES)


def quintile_score(values: np.ndarray, edges: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Scores 1-5 from the number of quintile edges a value lies above.

    Bins are closed on the right, ``(e_k, e_k+1]``, and a value counts every edge strictly below
    it, so with duplicate edges (many tied reference values) a value above the tie jumps by as
    many quintiles as the tie covers, and a value on the tie stays in the lowest bin it touches.

    Parameters
    ----------
    values : numpy.ndarray
        Values to score; NaN gets the worst score, 1.
    edges : numpy.ndarray
        Four increasing edges (see :func:`quintile_edges`).
    higher_is_better : bool
        True for frequency and monetary value (above every edge = 5), False for recency
        (at or below the lowest edge = 5).

    Returns
    -------
    numpy.ndarray
        Integer scores 1-5 as floats.
    """
    above = np.searchsorted(edges, values, side="left").astype(float)
    score = 1.0 + above if higher_is_better else 5.0 - above
    return np.where(np.isnan(values), 1.0, score)


def rfm_score(features: pd.DataFrame, reference: pd.DataFrame) -> np.ndarray:
    """Classic RFM as a churn-risk score, with quintile edges from a reference table.

    Parameters
    ----------
    features : pandas.DataFrame
        Rows to score, with ``recency_days``, ``frequency`` and ``monetary_total``.
    reference : pandas.DataFrame
        Rows the quintile edges are taken from (the training rows), so that the score of a
        holdout customer does not depend on the other holdout customers.

    Returns
    -------
    numpy.ndarray
        ``18 - (R + F + M)`` with R, F, M quintile scores 1-5 (recency: more recent = 5); ranges
        from 3 (best customers) to 15 (highest churn risk). A missing recency or value scores 1.
    """
    columns = (("recency_days", False), ("frequency", True), ("monetary_total", True))
    _require_columns(features, [c for c, _ in columns], "the RFM score")
    _require_columns(reference, [c for c, _ in columns], "the RFM reference")
    total = np.zeros(len(features))
    for column, higher_is_better in columns:
        edges = quintile_edges(_as_float(reference[column]))
        total += quintile_score(_as_float(features[column]), edges, higher_is_better)
    return RFM_RISK_OFFSET - total


class ScoreCalibrator(BaseEstimator):
    """Map a baseline's score to a probability with isotonic regression.

    The direction (higher score = higher or lower probability) is learned from the training rows
    (``increasing='auto'``), and scores outside the training range take the nearest end's value.

    Parameters
    ----------
    epsilon : float, default 1e-6
        Probabilities are clipped to ``[epsilon, 1 - epsilon]`` so that log loss stays finite.

    Attributes
    ----------
    isotonic_ : sklearn.isotonic.IsotonicRegression
        The fitted mapping.
    increasing_ : bool
        Whether the probability grows with the score.
    """

    def __init__(self, epsilon: float = PROBABILITY_FLOOR):
        self.epsilon = epsilon

    def fit(self, score, y) -> "ScoreCalibrator":
        """Fit on training scores and binary labels; returns self."""
        from sklearn.isotonic import IsotonicRegression

        score, y = _check_score_and_labels(score, y)
        if not 0 <= self.epsilon < 0.5:
            raise ValueError(f"epsilon must be in [0, 0.5), got {self.epsilon}")
        self.isotonic_ = IsotonicRegression(increasing="auto", out_of_bounds="clip", y_min=0.0, y_max=1.0)
        self.isotonic_.fit(score, y)
        self.increasing_ = bool(self.isotonic_.increasing_)
        return self

    def probability(self, score) -> np.ndarray:
        """Probability of the positive class for each score."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "isotonic_")
        score = np.asarray(score, dtype=float).ravel()
        if not np.isfinite(score).all():
            raise ValueError("scores must be finite")
        return np.clip(self.isotonic_.predict(score), self.epsilon, 1.0 - self.epsilon)


def _check_score_and_labels(score, y) -> tuple[np.ndarray, np.ndarray]:
    score = np.asarray(score, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if score.shape != y.shape:
        raise ValueError(f"score and labels differ in length: {score.size} vs {y.size}")
    if score.size == 0:
        raise ValueError("cannot calibrate on zero rows")
    if not np.isfinite(score).all():
        raise ValueError("scores must be finite")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    return score, y


def recency_score(features: pd.DataFrame) -> np.ndarray:
    """Days since the last purchase as a churn-risk score; no purchase at all counts as the longest.

    Parameters
    ----------
    features : pandas.DataFrame
        Feature table with ``recency_days``.

    Returns
    -------
    numpy.ndarray
        ``recency_days``, with missing values (refunds only) set to :data:`MISSING_RECENCY_DAYS`.
    """
    _require_columns(features, ["recency_days"], "the recency score")
    recency = _as_float(features["recency_days"])
    return np.where(np.isnan(recency), MISSING_RECENCY_DAYS, recency)


def btyd_scores(
    table: pd.DataFrame, fit: Callable[[pd.DataFrame], Any], score: Callable[[Any, pd.DataFrame], np.ndarray],
    what: str,
) -> np.ndarray:
    """A buy-till-you-die model's score of every row, fitted on each cutoff's own rows.

    A table that stacks several snapshots (a ``cutoff`` column) gets one fit per cutoff, so that
    no row's score uses anything after its own date.

    Parameters
    ----------
    table : pandas.DataFrame
        Feature rows (see :func:`churnml.models.btyd.bgnbd_inputs` for the columns used).
    fit : callable
        Fits a model on BG/NBD inputs (:func:`~churnml.models.btyd.fit_bgnbd`,
        :func:`~churnml.models.btyd.fit_pnbd`).
    score : callable
        ``score(model, inputs)``, one value per row.
    what : str
        The model's name in warnings.

    Returns
    -------
    numpy.ndarray
        One score per row, NaN for the rows of a cutoff where the fit failed (with a warning).
    """
    scores = np.full(len(table), np.nan)
    groups = table.groupby("cutoff").indices if "cutoff" in table.columns else {None: np.arange(len(table))}
    for cutoff, rows in groups.items():
        inputs = bgnbd_inputs(table.iloc[rows])
        try:
            scores[rows] = score(fit(inputs), inputs)
        except (BGNBDFitError, ParetoNBDFitError, ValueError) as error:
            log.warning("%s scores are missing for the %s rows at cutoff %s: %s", what, len(rows), cutoff, error)
    return scores


def _calibrated(
    name: str, train_risk: np.ndarray, y_train: np.ndarray, holdout_risk: np.ndarray, sign: float
) -> np.ndarray | None:
    """Holdout probabilities of a churn-risk score calibrated on the training rows it is finite for."""
    usable = np.isfinite(train_risk)
    if not usable.any():
        log.warning("%s baseline left out: no training row has a score to calibrate it on", name)
        return None
    if not np.isfinite(holdout_risk).all():
        log.warning("%s baseline left out: %s holdout rows have no score", name, int((~np.isfinite(holdout_risk)).sum()))
        return None
    calibrator = ScoreCalibrator().fit(sign * train_risk[usable], np.asarray(y_train)[usable])
    return calibrator.probability(sign * holdout_risk)


def _fitted_or_none(fit: Callable[[pd.DataFrame], Any], inputs: pd.DataFrame, what: str) -> Any:
    try:
        return fit(inputs)
    except (BGNBDFitError, ParetoNBDFitError) as error:
        log.warning("%s baselines left out: %s", what, error)
        return None


def _negated_expected_purchases(horizon_days: int) -> Callable[[Any, pd.DataFrame], np.ndarray]:
    return lambda model, inputs: -expected_purchases(model, inputs, horizon_days)


def baseline_probabilities(
    train: pd.DataFrame, y_train: np.ndarray, holdout: pd.DataFrame, target: str, horizon_days: int
) -> dict[str, np.ndarray]:
    """Probabilities of the positive class of ``target`` for the holdout rows, per classical score.

    Parameters
    ----------
    train : pandas.DataFrame
        Training feature rows (calibration of the scores, RFM quintile edges); may stack several
        snapshots with a ``cutoff`` column.
    y_train : numpy.ndarray
        Training labels of ``target`` (1 = positive class).
    holdout : pandas.DataFrame
        Holdout feature table at the holdout cutoff.
    target : {"churn", "repurchase"}
    horizon_days : int
        Length of the label window in days.

    Returns
    -------
    dict of str to numpy.ndarray
        In this order, each left out with a warning when it cannot be computed:

        - ``rule``, ``rfm``, ``recency``: the warning-flag rule, RFM and days since the last
          purchase as churn-risk scores (negated for ``repurchase``), mapped to probabilities by
          a :class:`ScoreCalibrator` fitted on the training rows;
        - ``bgnbd``: BG/NBD's probability of the target in the horizon, fitted on the holdout
          rows' own history (no labels needed; how BG/NBD is used in practice), not recalibrated;
        - ``bgnbd_count``: BG/NBD's expected purchases in the horizon, calibrated on the latest
          training snapshot (the model's own calibration slice), whose counts come from a fit on
          that snapshot's rows: one fit, not one per snapshot, since a fit on a large table takes
          seconds;
        - ``pnbd`` and ``pnbd_count``: the same two for Pareto/NBD
          (:func:`churnml.models.btyd.pnbd_probability`).
    """
    _check_target(target)
    y_train = np.asarray(y_train)
    if len(train) != len(y_train):
        raise ValueError(f"train has {len(train)} rows but y_train has {len(y_train)}")
    sign = 1.0 if target == "churn" else -1.0
    scorers = {
        "rule": rule_score,
        "rfm": lambda frame: rfm_score(frame, reference=train),
        "recency": recency_score,
    }
    probabilities: dict[str, np.ndarray] = {}
    for name, scorer in scorers.items():
        probabilities[name] = ScoreCalibrator().fit(sign * scorer(train), y_train).probability(sign * scorer(holdout))
    inputs = bgnbd_inputs(holdout)
    count = _negated_expected_purchases(horizon_days)
    latest = (train["cutoff"] == train["cutoff"].max()).to_numpy() if "cutoff" in train.columns else np.ones(len(train), bool)
    for prefix, what, fit, probability in (
        ("bgnbd", "BG/NBD", fit_bgnbd, bgnbd_probability),
        ("pnbd", "Pareto/NBD", fit_pnbd, pnbd_probability),
    ):
        model = _fitted_or_none(fit, inputs, what)
        if model is None:
            continue
        try:
            probabilities[prefix] = probability(model, inputs, horizon_days, target)
        except ValueError as error:
            log.warning("%s baseline left out: %s", what, error)
        counts = _calibrated(f"{what} count", btyd_scores(train[latest], fit, count, what), y_train[latest],
                             count(model, inputs), sign)
        if counts is not None:
            probabilities[f"{prefix}_count"] = counts
    return probabilities
