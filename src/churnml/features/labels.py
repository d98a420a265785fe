"""Labels: what happens in the window ``(cutoff, cutoff + horizon]`` after a cutoff.

``churn`` is 1 when a customer makes no purchase in the window, ``repurchase`` is 1 when they make
at least one. A purchase is an order whose positive lines sum to more than zero, as in the
features; refunds alone are not purchases.
"""

from __future__ import annotations

import datetime as dt

import ibis.expr.types as ir

from churnml.features.build import day_start, roll_up_orders
from churnml.features.dates import as_date

TARGETS = ("churn", "repurchase")


def label_window(cutoff: dt.date, horizon_days: int) -> tuple[dt.datetime, dt.datetime]:
    """Half-open timestamps ``[start, end)`` of the days after the cutoff up to cutoff + horizon."""
    if horizon_days <= 0:
        raise ValueError(f"horizon_days must be positive, got {horizon_days}")
    return day_start(cutoff + dt.timedelta(days=1)), day_start(cutoff + dt.timedelta(days=horizon_days + 1))


def purchases_in_window(transactions: ir.Table, cutoff: str | dt.date, horizon_days: int) -> ir.Table:
    """Customers with their number of purchases in ``(cutoff, cutoff + horizon]``."""
    start, end = label_window(as_date(cutoff), horizon_days)
    lines = transactions.filter((transactions.ts >= start) & (transactions.ts < end))
    orders = roll_up_orders(lines)
    purchases = orders.filter(orders.gross > 0)
    return purchases.group_by("customer_id").aggregate(n_purchases=purchases.count())


def attach_label(
    customers: ir.Table, transactions: ir.Table, cutoff: str | dt.date, target: str, horizon_days: int
) -> ir.Table:
    """``customers`` (one row per ``customer_id``) with a 0/1 ``label`` column for ``target``."""
    if target not in TARGETS:
        raise ValueError(f"unknown target '{target}': use one of {TARGETS}")
    counts = purchases_in_window(transactions, cutoff, horizon_days)
    joined = customers.left_join(counts, "customer_id").drop("customer_id_right")
    bought = joined.n_purchases.fill_null(0) > 0
    label = bought if target == "repurchase" else ~bought
    # ifelse rather than a cast: PostgreSQL casts a boolean to int4 only.
    return joined.mutate(label=label.ifelse(1, 0).cast("int8")).drop("n_purchases")
