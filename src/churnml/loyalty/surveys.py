"""The survey scores of a group of answers: Net Promoter Score, CSAT and Customer Effort Score.

Each score comes twice: as a pure function of an array of answers (one group, for hand checks
and pandas ``groupby().agg``) and as an Ibis aggregate (any grouping, on DuckDB or Spark), with
:func:`survey_scores` grouping a surveys table in one pass. The two agree up to float64
rounding. Answers are of one kind each: NPS 0-10, CSAT 1-5, CES 1-7
(:data:`churnml.io.contract.SURVEY_SCALES`, checked at load). A group without answers has no
score: NaN, or null in a table.

Formulas and sources:

- NPS = % promoters (9-10) - % detractors (0-6), from -100 to +100 points; Reichheld, "The One
  Number You Need to Grow", Harvard Business Review, December 2003.
- CSAT = % of answers of 4 or 5 on the 1-5 scale (the "top two boxes"), from 0 to 100; Farris,
  Bendle, Pfeifer and Reibstein, "Marketing Metrics", 2nd ed. (2010), chapter 2, "Customer
  Satisfaction and Willingness to Recommend".
- CES = the mean answer on the CES 2.0 scale, 1 (strongly disagree that the company made it easy)
  to 7 (strongly agree): higher is less effort; Dixon, Toman and DeLisi, "The Effortless
  Experience" (2013).
"""

from __future__ import annotations

from collections.abc import Sequence

import ibis.expr.types as ir
import numpy as np
from numpy.typing import ArrayLike

from churnml.features.surveys import is_detractor, is_promoter, is_satisfied

PERCENT = 100.0


def _answers(scores: ArrayLike) -> np.ndarray:
    """float64 answers, missing ones (NaN, None) left out."""
    values = np.asarray(scores, dtype="float64").ravel()
    return values[~np.isnan(values)]


def net_promoter_score(scores: ArrayLike) -> float:
    """Net Promoter Score of NPS answers: % promoters (9-10) minus % detractors (0-6).

    Parameters
    ----------
    scores
        NPS answers on the 0-10 scale, shape ``(n,)``; missing answers are left out.

    Returns
    -------
    float
        Points from -100 (all detractors) to +100 (all promoters); NaN without answers.

    Examples
    --------
    Five promoters, three passives and two detractors of ten: 50% - 20% = 30.

    >>> net_promoter_score([10, 9, 9, 10, 9, 8, 7, 7, 6, 0])
    30.0
    """
    values = _answers(scores)
    if values.size == 0:
        return float("nan")
    return PERCENT * float(np.mean(is_promoter(values).astype("float64") - is_detractor(values).astype("float64")))


def satisfaction_score(scores: ArrayLike) -> float:
    """CSAT of answers on the 1-5 scale: the % of answers of 4 or 5.

    Parameters
    ----------
    scores
        CSAT answers on the 1-5 scale, shape ``(n,)``; missing answers are left out.

    Returns
    -------
    float
        Percent from 0 to 100; NaN without answers.

    Examples
    --------
    >>> satisfaction_score([5, 4, 3, 2])
    50.0
    """
    values = _answers(scores)
    return PERCENT * float(np.mean(is_satisfied(values))) if values.size else float("nan")


def effort_score(scores: ArrayLike) -> float:
    """Customer Effort Score: the mean CES 2.0 answer (1-7, higher is less effort).

    Parameters
    ----------
    scores
        CES answers on the 1-7 scale, shape ``(n,)``; missing answers are left out.

    Returns
    -------
    float
        The mean answer, from 1 to 7; NaN without answers.

    Examples
    --------
    >>> effort_score([7, 6, 2])
    5.0
    """
    values = _answers(scores)
    return float(np.mean(values)) if values.size else float("nan")


def nps_of(score: ir.NumericColumn, where: ir.BooleanValue | None = None) -> ir.FloatingScalar:
    """:func:`net_promoter_score` as an Ibis aggregate over the rows ``where`` holds (all rows
    by default; null scores are left out), for ``group_by(...).aggregate(nps=nps_of(...))``."""
    present = score.notnull() if where is None else where & score.notnull()
    share = (is_promoter(score).cast("float64") - is_detractor(score).cast("float64")).mean(where=present)
    return share * PERCENT


def csat_of(score: ir.NumericColumn, where: ir.BooleanValue | None = None) -> ir.FloatingScalar:
    """:func:`satisfaction_score` as an Ibis aggregate over the rows ``where`` holds."""
    present = score.notnull() if where is None else where & score.notnull()
    return is_satisfied(score).cast("float64").mean(where=present) * PERCENT


def ces_of(score: ir.NumericColumn, where: ir.BooleanValue | None = None) -> ir.FloatingScalar:
    """:func:`effort_score` as an Ibis aggregate over the rows ``where`` holds."""
    return score.cast("float64").mean(where=where)


def survey_scores(surveys: ir.Table, by: Sequence[str | ir.Value] = ()) -> ir.Table:
    """NPS, CSAT and CES of each group of a surveys table, in one pass.

    Parameters
    ----------
    surveys
        Answers with ``kind`` (nps, csat, ces) and ``score``, plus the grouping columns (e.g. a
        month, a tier or a level joined on by the caller). Restrict it to a period first: every
        row given counts.
    by
        Grouping columns or expressions; none for one row over the whole table.

    Returns
    -------
    ibis.Table
        The grouping columns, then ``nps`` (points, -100 to 100), ``n_nps``, ``csat`` (percent),
        ``n_csat``, ``ces`` (mean, 1-7) and ``n_ces``: each score null in a group without
        answers of its kind, each count the answers it rests on.
    """
    kind, score = surveys.kind, surveys.score
    aggs = {
        "nps": nps_of(score, kind == "nps"),
        "n_nps": score.count(where=kind == "nps"),
        "csat": csat_of(score, kind == "csat"),
        "n_csat": score.count(where=kind == "csat"),
        "ces": ces_of(score, kind == "ces"),
        "n_ces": score.count(where=kind == "ces"),
    }
    if not by:
        return surveys.aggregate(**aggs)
    return surveys.group_by(list(by)).aggregate(**aggs)
