"""How customers move between tiers and membership levels between two days, and what they are
interested in (interest tags from the categories they buy)."""

from __future__ import annotations

import datetime as dt
from typing import Sequence

import ibis
import ibis.expr.types as ir
import pandas as pd

from churnml.features.build import events_until, window_start

# The state of a customer absent from one side: no history yet on the first day, no state
# (a level table without them) on the second.
NEW = "new"
NONE = "none"
# Interest shares are compared with the minimum to this many decimals.
SHARE_DIGITS = 9


def transition_matrix(before: ir.Table, after: ir.Table, column: str) -> ir.Table:
    """Customers by their ``column`` on the first day (``before``) and on the second (``after``).

    Parameters
    ----------
    before, after : ibis Table
        ``customer_id`` and ``column`` (one row per customer), e.g. the tiers on two days.
        A customer only in ``after`` comes from ``new``; one only in ``before`` goes to ``none``;
        a missing value is ``none`` too.
    column : str

    Returns
    -------
    ibis Table
        One row per (``from_state``, ``to_state``) pair with customers: ``customers``,
        ``from_customers`` (the row's total) and ``share`` (``customers / from_customers``:
        the rows' shares sum to 1).
    """
    left = before.select(customer_id=before.customer_id, from_state=before[column].cast("string"))
    right = after.select(customer_id=after.customer_id, to_state=after[column].cast("string"))
    joined = left.outer_join(right, left.customer_id == right.customer_id)
    present = joined.customer_id.notnull()
    joined = joined.select(
        from_state=present.ifelse(joined.from_state.fill_null(NONE), NEW),
        to_state=joined.to_state.fill_null(NONE),
    )
    counts = joined.group_by(["from_state", "to_state"]).aggregate(customers=joined.count())
    total = counts.customers.sum().over(ibis.window(group_by=counts.from_state))
    return counts.mutate(from_customers=total, share=counts.customers / total.cast("float64"))


def state_order(states: Sequence[str], known: Sequence[str]) -> list[str]:
    """``states`` with ``new`` first, then those of ``known`` in its order, then any others
    sorted, then ``none``."""
    present = set(states)
    ordered = [NEW] if NEW in present else []
    ordered += [s for s in known if s in present and s not in (NEW, NONE)]
    ordered += sorted(s for s in present if s not in ordered and s != NONE)
    return ordered + ([NONE] if NONE in present else [])


def matrix_frame(transitions: pd.DataFrame, value: str = "share", known: Sequence[str] = ()) -> pd.DataFrame:
    """The long :func:`transition_matrix` (as pandas) as a square matrix of ``value``
    (``share`` or ``customers``), rows ``from_state``, columns ``to_state``, 0 where nobody moved."""
    matrix = transitions.pivot_table(index="from_state", columns="to_state", values=value, aggfunc="sum", fill_value=0)
    rows = state_order(matrix.index, known)
    columns = state_order(matrix.columns, known)
    return matrix.reindex(index=rows, columns=columns, fill_value=0)


def interest_tags(transactions: ir.Table, as_of: dt.date, window_days: int = 365, top: int = 3,
                  min_share: float = 0.2) -> ir.Table | None:
    """Each customer's top categories by net spend share over the ``window_days`` ending on ``as_of``.

    Net spend of a category is its purchases less its refunds in the window; categories with
    none left are not interests. Ties in spend go to the category first in alphabetical order.

    Returns
    -------
    ibis Table or None
        ``customer_id``, ``rank`` (1 = largest share), ``category``, ``spend`` (currency of
        ``amount``) and ``share`` (of the customer's net spend over categories with some, 0 to 1),
        for the ``top`` largest shares of at least ``min_share``; None without a ``category`` column.
    """
    if "category" not in transactions.columns:
        return None
    lines = events_until(transactions, as_of)
    lines = lines.filter((lines.ts >= window_start(as_of, window_days)) & lines.category.notnull())
    spend = lines.group_by(["customer_id", "category"]).aggregate(spend=lines.amount.sum())
    spend = spend.filter(spend.spend > 0)
    per_customer = ibis.window(group_by=spend.customer_id)
    ranked = ibis.window(group_by=spend.customer_id, order_by=[ibis.desc(spend.spend), spend.category])
    spend = spend.mutate(share=spend.spend / spend.spend.sum().over(per_customer),
                         rank=(ibis.row_number().over(ranked) + 1).cast("int64"))
    # Compared to a billionth: a share of exactly min_share is a sum of floats whose last bit
    # depends on the order the engine adds in (0.2 came out as 0.19999999999999998 on one).
    tags = spend.filter((spend.rank <= top) & (spend.share.round(SHARE_DIGITS) >= min_share))
    return tags.select("customer_id", "rank", category=tags.category.cast("string"), spend=tags.spend.cast("float64"),
                       share=tags.share)


def tag_summary(tags: pd.DataFrame) -> pd.DataFrame:
    """How many customers hold each interest tag (any rank) and how many hold it first.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``category``, columns ``customers`` and ``first_choice``, most held first.
    """
    held = tags.groupby("category")["customer_id"].nunique().rename("customers")
    first = tags[tags["rank"] == 1].groupby("category")["customer_id"].nunique().rename("first_choice")
    summary = pd.concat([held, first], axis=1).fillna(0).astype("int64")
    return summary.sort_values(["customers", "first_choice"], ascending=False, kind="stable")
