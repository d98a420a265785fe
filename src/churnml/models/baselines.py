"""The simple classical scores the model is compared against: the warning-flag rule and RFM.

Both are ranks, not probabilities, so they are mapped to probabilities with an isotonic
calibrator fitted on the training rows; :func:`baseline_probabilities` puts them next to BG/NBD
(:mod:`churnml.models.btyd`), which gives probabilities of its own, on the same holdout rows.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from churnml.features.build import WARNING_FLAGS
from churnml.models.btyd import (
    BGNBDFitError,
    _as_float,
    _check_target,
    _require_columns,
    bgnbd_inputs,
    bgnbd_probability,
    fit_bgnbd,
)

if TYPE_CHECKING:
    pass

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


def baseline_probabilities(
    train: pd.DataFrame, y_train: np.ndarray, holdout: pd.DataFrame, target: str, horizon_days: int
) -> dict[str, np.ndarray]:
    """Probabilities of the positive class of ``target`` for the holdout rows, per baseline.

    Parameters
    ----------
    train : pandas.DataFrame
        Training feature rows (calibration of the rule and RFM scores, RFM quintile edges).
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
        ``rule`` and ``rfm``: the churn-risk score (negated for ``repurchase``) calibrated on the
        training rows. ``bgnbd``: BG/NBD fitted on the holdout rows' own history, which needs no
        labels and is how BG/NBD is used in practice; not recalibrated. ``bgnbd`` is left out,
        with a warning, when BG/NBD cannot be fitted.
    """
    _check_target(target)
    if len(train) != len(np.asarray(y_train)):
        raise ValueError(f"train has {len(train)} rows but y_train has {len(np.asarray(y_train))}")
    sign = 1.0 if target == "churn" else -1.0
    scorers = {
        "rule": rule_score,
        "rfm": lambda frame: rfm_score(frame, reference=train),
    }
    probabilities: dict[str, np.ndarray] = {}
    for name, scorer in scorers.items():
        calibrator = ScoreCalibrator().fit(sign * scorer(train), y_train)
        probabilities[name] = calibrator.probability(sign * scorer(holdout))
    inputs = bgnbd_inputs(holdout)
    try:
        model = fit_bgnbd(inputs)
    except BGNBDFitError as error:
        log.warning("BG/NBD baseline left out: %s", error)
        return probabilities
    probabilities["bgnbd"] = bgnbd_probability(model, inputs, horizon_days, target)
    return probabilities
