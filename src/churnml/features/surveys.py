"""Survey answers per customer: the NPS groups of an answer and each customer's latest answers.

The scales of the survey kinds (NPS 0-10, CSAT 1-5, CES 1-7) are part of the data contract
(:data:`churnml.io.contract.SURVEY_SCALES`); loading refuses answers off them. The aggregate
scores (NPS, CSAT, CES of a group of answers) are in :mod:`churnml.loyalty.surveys`.
"""

from __future__ import annotations

from typing import TypeVar

import ibis
import ibis.expr.types as ir

from churnml.io.contract import SURVEY_SCALES

SURVEY_KINDS = tuple(SURVEY_SCALES)
# Reichheld, "The One Number You Need to Grow", Harvard Business Review, December 2003: on the
# 0-10 "would you recommend us" scale, 9-10 are promoters, 0-6 detractors and 7-8 passives.
PROMOTER_MIN = 9
DETRACTOR_MAX = 6
# CSAT counts an answer of 4 or 5 on the 1-5 scale as satisfied ("top two boxes").
SATISFIED_MIN = 4

Scores = TypeVar("Scores")


def is_promoter(score: Scores) -> Scores:
    """Whether NPS answers are promoters (9-10); works on numbers, NumPy arrays, pandas and Ibis values alike."""
    return score >= PROMOTER_MIN  # type: ignore[operator]


def is_detractor(score: Scores) -> Scores:
    """Whether NPS answers are detractors (0-6); works on numbers, NumPy arrays, pandas and Ibis values alike."""
    return score <= DETRACTOR_MAX  # type: ignore[operator]


def is_satisfied(score: Scores) -> Scores:
    """Whether CSAT answers are satisfied (4-5 on the 1-5 scale)."""
    return score >= SATISFIED_MIN  # type: ignore[operator]


def latest_answers(past: ir.Table) -> ir.Table:
    """Per customer: how many answers, when the latest, and the latest score of each kind.

    Parameters
    ----------
    past
        Survey answers (``customer_id``, ``ts``, ``kind``, ``score``) already restricted to
        those known at the cutoff: the caller decides the cutoff.

    Returns
    -------
    ibis.Table
        One row per customer with an answer: ``n_survey_answers`` (int), ``last_survey_ts``
        (timestamp), and ``last_nps``, ``last_csat``, ``last_ces`` (float64 on the kind's scale;
        null without an answer of that kind). Of answers of one kind given at the same instant
        the lowest counts, so that every engine picks the same one.
    """
    latest_of_kind = past.ts.max().over(ibis.window(group_by=[past.customer_id, past.kind]))
    past = past.mutate(_is_latest=past.ts == latest_of_kind)
    aggs: dict[str, ir.Scalar] = {
        "n_survey_answers": past.count(),
        "last_survey_ts": past.ts.max(),
    }
    for kind in SURVEY_KINDS:
        aggs[f"last_{kind}"] = past.score.min(where=past._is_latest & (past.kind == kind))
    return past.group_by("customer_id").aggregate(**aggs)
