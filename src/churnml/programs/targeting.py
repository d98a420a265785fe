"""Whom to contact: each scored customer's expected uplift from a contact and its expected value."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

EXPECTED_VALUE_COLUMNS = ("expected_uplift", "expected_value", "contact_rank")


def with_expected_value(scores: pd.DataFrame, features: pd.DataFrame, model: Any,
                        deployment: Mapping[str, Any]) -> pd.DataFrame:
    """``scores`` with the expected effect of a contact on each customer.

    Parameters
    ----------
    scores : pandas.DataFrame, shape (n, ...)
        The score table (:func:`churnml.scoring.table.score_customers`), with ``customer_id`` and
        ``ltv`` (currency).
    features : pandas.DataFrame, shape (n, ...)
        The feature table the scores come from, same customers in the same order.
    model : TLearner or XLearner
        An uplift model of :mod:`churnml.programs.uplift`, fitted on past campaigns.
    deployment : mapping
        Its ``deployment.json``: ``contact_cost`` (currency per contact).

    Returns
    -------
    pandas.DataFrame
        ``scores`` with ``expected_uplift`` (the model's estimate of how much a contact raises
        the probability of a purchase in the campaigns' outcome window), ``expected_value``
        (``expected_uplift x ltv - contact_cost``: the uplift model's value of a contact, as in
        Gubela and Lessmann, "Uplift modeling with value-driven evaluation metrics", Decision
        Support Systems 2021) and ``contact_rank`` (1 for the contact worth most; empty where
        the expected value is not positive: contacting them is expected to cost more than it brings).

    Raises
    ------
    churnml.models.classifier.FeatureMismatchError
        If ``features`` lacks a column the uplift model was trained on.
    ValueError
        If ``features`` and ``scores`` do not hold the same customers in the same order.
    """
    if len(features) != len(scores) or not features["customer_id"].reset_index(drop=True).equals(
            scores["customer_id"].reset_index(drop=True)):
        raise ValueError("features and scores must hold the same customers in the same order")
    uplift = np.asarray(model.predict_uplift(features), dtype=float)
    ltv = pd.to_numeric(scores["ltv"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    value = uplift * np.nan_to_num(ltv, nan=0.0) - float(deployment.get("contact_cost", 0.0) or 0.0)
    worth = value > 0
    # Ties in customer order (the table's), so that the same inputs give the same ranks.
    order = np.lexsort((np.arange(len(value)), -value))
    rank = np.empty(len(value), dtype=np.int64)
    rank[order] = np.arange(1, len(value) + 1)
    result = scores.copy()
    result["expected_uplift"] = uplift
    result["expected_value"] = np.round(value, 2)
    result["contact_rank"] = pd.array(np.where(worth, rank, 0), dtype="Int64")
    result.loc[~worth, "contact_rank"] = pd.NA
    return result
