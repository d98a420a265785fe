"""Reason phrases: what a risk-raising feature says about a customer, in words a retention
analyst reads ("no purchase for 124 days (usually every 30)")."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from churnml.features.build import FeatureConfig
from churnml.models.classifier import PRIOR

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReasonContext:
    """Feature settings that reason phrases quote (window lengths, the churn model's horizon)."""

    order_value_window_days: int = 90
    order_value_drop: float = 0.4
    no_repurchase_days: int = 90
    interaction_window_days: int = 90
    shortest_window_days: int = 30
    horizon_days: int = 90

    @classmethod
    def from_features(cls, config: FeatureConfig, horizon_days: int) -> "ReasonContext":
        """The windows and thresholds of ``config``, and the churn model's horizon."""
        return cls(
            order_value_window_days=config.order_value_window_days,
            order_value_drop=config.order_value_drop,
            no_repurchase_days=config.no_repurchase_days,
            interaction_window_days=config.interaction_window_days,
            shortest_window_days=min(config.windows_days),
            horizon_days=horizon_days,
        )



# A phrase renders the rows where the feature is present; ``missing`` is said where it is not.
Render = Callable[[pd.Series, pd.DataFrame, ReasonContext], pd.Series]


@dataclass(frozen=True)
class ReasonTemplate:
    """How to say why a feature raises the risk: ``render(value, rows, context)`` for rows with
    a value, ``missing`` (formatted with the context) for rows without; ``uses`` are the other
    columns ``render`` reads."""

    render: Render
    missing: str
    uses: tuple[str, ...] = ()


def _text(values: pd.Series) -> pd.Series:
    return values.astype(object).astype(str)


def _formatted(values: pd.Series, format_one: Callable[[float], str],
               rounded: Callable[[np.ndarray], np.ndarray] | None = None) -> pd.Series:
    """``format_one`` applied to each value; each distinct value is formatted once.

    ``rounded`` rounds the values to what the format shows, so that a million distinct amounts
    are a few thousand distinct texts to format (a million customers also have only a few
    thousand distinct day counts).
    """
    numbers = values.to_numpy(dtype=float)
    distinct, position = np.unique(rounded(numbers) if rounded is not None else numbers, return_inverse=True)
    texts = np.array([format_one(v) for v in distinct], dtype=object)
    return pd.Series(texts[position.reshape(-1)], index=values.index, dtype=object)


def _whole(values: pd.Series) -> pd.Series:
    """Whole numbers as text: 124, 1,250."""
    return _formatted(values, "{:,.0f}".format, np.round)


def _decimal(values: pd.Series) -> pd.Series:
    """Rates and ratios: one decimal, two below 0.1 (so that 0.04 does not read as 0.0), 0 as 0."""
    def shown(v: float) -> str:
        if v == 0:
            return "0"
        return f"{v:.2f}" if abs(v) < 0.1 else f"{v:,.1f}"

    return _formatted(values, shown, lambda v: np.where(np.abs(v) < 0.1, np.round(v, 2), np.round(v, 1)))


def _money(values: pd.Series) -> pd.Series:
    """Amounts: cents below 100, whole units above."""
    return _formatted(values, lambda v: f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}",
                      lambda v: np.where(np.abs(v) < 100, np.round(v, 2), np.round(v)))


def _percent(values: pd.Series) -> pd.Series:
    return _formatted(values, "{:.0%}".format, lambda v: np.round(v, 2))


def _plural(values: pd.Series, word: str, plural: str | None = None) -> pd.Series:
    """``"1 order"``, ``"3 orders"``."""
    counts = values.to_numpy(dtype=float)
    words = np.where(np.round(counts) == 1, word, plural or word + "s")
    return _whole(values) + " " + pd.Series(words, index=values.index, dtype=object)


def _flag_is_set(values: pd.Series) -> np.ndarray:
    return values.astype("boolean").fillna(False).to_numpy(dtype=bool)


def _either(condition: np.ndarray, when_true: pd.Series | str, when_false: pd.Series | str, index: pd.Index) -> pd.Series:
    def as_array(part: pd.Series | str) -> np.ndarray:
        return np.full(len(index), part, dtype=object) if isinstance(part, str) else part.to_numpy(dtype=object)

    return pd.Series(np.where(condition, as_array(when_true), as_array(when_false)), index=index, dtype=object)


def _patched(base: pd.Series | str, where: np.ndarray, patch: pd.Series, index: pd.Index) -> pd.Series:
    """``base`` (a text for every row, or one text for all) with the rows ``where`` replaced by
    ``patch``, the texts of those rows alone."""
    texts = np.full(len(index), base, dtype=object) if isinstance(base, str) else base.to_numpy(dtype=object, copy=True)
    # In numpy: a masked assignment to a pandas Series costs about ten times as much.
    texts[where] = patch.to_numpy(dtype=object)
    return pd.Series(texts, index=index, dtype=object)


def _usually_every(rows: pd.DataFrame) -> pd.Series:
    """`` (usually every 30)`` where the mean gap is known, else nothing."""
    gap = rows["mean_gap_days"] if "mean_gap_days" in rows else pd.Series(np.nan, index=rows.index)
    known = gap.notna().to_numpy()
    if not known.any():
        return pd.Series("", index=rows.index, dtype=object)
    return _patched("", known, " (usually every " + _whole(gap[known]) + ")", rows.index)


def _recency(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    today = value.to_numpy() <= 0
    return _either(today, "bought on the scoring day", "no purchase for " + _plural(value, "day") + _usually_every(rows), value.index)


def _overdue(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    late = value.to_numpy() > 0
    overdue = "next purchase " + _plural(value.abs(), "day") + " overdue" + _usually_every(rows)
    due = "next purchase due in " + _plural(value.abs(), "day") + _usually_every(rows)
    return _either(late, overdue, due, value.index)


def _overdue_ratio(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    return _decimal(value) + "x the usual gap since the last purchase" + _usually_every(rows)


def _aov_change(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    window = f" vs the previous {ctx.order_value_window_days} days"
    down = value.to_numpy() < 0
    return _either(down, "order value down " + _percent(-value) + window, "order value up " + _percent(value) + window,
                   value.index)


def _order_value_drop(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    dropped = _flag_is_set(value)
    change = rows["aov_change"] if "aov_change" in rows else pd.Series(np.nan, index=rows.index)
    window = f" vs the previous {ctx.order_value_window_days} days"
    specific = dropped & change.notna().to_numpy()
    text = _either(dropped, f"order value down more than {ctx.order_value_drop:.0%}{window}",
                   f"order value not down more than {ctx.order_value_drop:.0%}{window}", value.index)
    if specific.any():
        text = _patched(text, specific, "order value down " + _percent(-change[specific]) + window, value.index)
    return text


def _months(days: int) -> str:
    months = round(days / 30.4375)
    return f"{months} month{'s' if months != 1 else ''}" if months >= 1 and abs(days - months * 30.4375) < 3 else f"{days} days"


def _no_repurchase(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    period = _months(ctx.no_repurchase_days)
    return _either(_flag_is_set(value), f"no repurchase in {period}", f"bought in the last {period}", value.index)


def _interaction_rate(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    rate = rows["interactions_per_month"] if "interactions_per_month" in rows else value
    peers = rows["peer_interactions_per_month"] if "peer_interactions_per_month" in rows else pd.Series(np.nan, index=rows.index)
    known_peers = peers.notna().to_numpy()
    text = "interactions " + _decimal(rate) + " a month"
    if known_peers.any():
        text = _patched(text, known_peers, text[known_peers] + " (peers " + _decimal(peers[known_peers]) + ")", value.index)
    return text


def _simple(prefix: str, formatter: Callable[[pd.Series], pd.Series], suffix: str = "") -> Render:
    """``prefix + value + suffix``; prefix and suffix may quote the context (``{horizon_days}``)."""

    def render(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
        settings = vars(ctx)
        return prefix.format(**settings) + formatter(value) + suffix.format(**settings)

    return render


def _counted(word: str, suffix: str = "", plural: str | None = None) -> Render:
    def render(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
        return _plural(value, word, plural) + suffix

    return render


def _label(prefix: str) -> Render:
    def render(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
        return prefix + _text(value).str.replace("_", " ", regex=False)

    return render


def _interaction_trend(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    return (f"interactions over the last {ctx.shortest_window_days} days at " + _percent(value)
            + f" of the {ctx.interaction_window_days}-day pace")


def _frequency(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    none = value.to_numpy() <= 0
    return _either(none, "no purchase yet (refunds only)", _plural(value, "purchase") + " so far", value.index)


def _repeat_orders(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    none = value.to_numpy() <= 0
    return _either(none, "no repeat purchase yet", _plural(value, "repeat purchase") + " so far", value.index)


def _bgnbd_expected(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    return _decimal(value) + f" purchases expected in the next {ctx.horizon_days} days"


def _bgnbd_prior(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    # The prior is BG/NBD's churn probability in log-odds; 0 log-odds is an even chance.
    probability = pd.Series(1.0 / (1.0 + np.exp(-value.to_numpy(dtype=float))), index=value.index)
    return ("buying pattern (BG/NBD) gives a " + _percent(probability)
            + f" chance of no purchase in the next {ctx.horizon_days} days")


NO_RHYTHM = "no buying rhythm yet (fewer than two purchases)"

REASON_TEMPLATES: dict[str, ReasonTemplate] = {
    "recency_days": ReasonTemplate(_recency, "no purchase yet (refunds only)", ("mean_gap_days",)),
    "days_overdue": ReasonTemplate(_overdue, NO_RHYTHM, ("mean_gap_days",)),
    "overdue_ratio": ReasonTemplate(_overdue_ratio, NO_RHYTHM, ("mean_gap_days",)),
    "mean_gap_days": ReasonTemplate(_simple("buys every ", _whole, " days on average"), "no repeat purchase yet"),
    "gap_std_days": ReasonTemplate(_simple("irregular gaps between purchases (+/- ", _whole, " days)"),
                                   "too few purchases to tell how regular they are"),
    "last_gap_days": ReasonTemplate(_simple("last gap between purchases ", _whole, " days"), "no repeat purchase yet"),
    "frequency": ReasonTemplate(_frequency, "no purchase yet"),
    "repeat_orders": ReasonTemplate(_repeat_orders, "no repeat purchase yet"),
    "monetary_total": ReasonTemplate(_simple("spent ", _money, " in total"), "no purchase yet"),
    "avg_order_value": ReasonTemplate(_simple("average order ", _money), "no purchase yet"),
    "max_order_value": ReasonTemplate(_simple("largest order ", _money), "no purchase yet"),
    "tenure_days": ReasonTemplate(_simple("customer for ", _whole, " days"), "tenure unknown"),
    "purchase_span_days": ReasonTemplate(_simple("purchases spread over ", _whole, " days"), "no purchase yet"),
    "purchase_age_days": ReasonTemplate(_simple("first purchase ", _whole, " days ago"), "no purchase yet"),
    "aov_recent": ReasonTemplate(_simple("average order ", _money, " in the last {order_value_window_days} days"),
                                 "no order in the last {order_value_window_days} days"),
    "aov_previous": ReasonTemplate(_simple("average order ", _money, " in the {order_value_window_days} days before"),
                                   "no order in the {order_value_window_days} days before the last {order_value_window_days}"),
    "aov_change": ReasonTemplate(_aov_change, "no orders to compare in the last two {order_value_window_days}-day windows"),
    "order_value_drop_40": ReasonTemplate(_order_value_drop, "order value trend unknown", ("aov_change",)),
    "no_repurchase_3m": ReasonTemplate(_no_repurchase, "purchase history unknown"),
    "refund_amount": ReasonTemplate(_simple("refunds of ", _money), "no refunds"),
    "n_refunds": ReasonTemplate(_counted("refund"), "no refunds"),
    "refund_rate": ReasonTemplate(_simple("refunds are ", _percent, " of spend"), "refunds without purchases"),
    "net_spend": ReasonTemplate(_simple("net spend ", _money), "net spend unknown"),
    "n_categories": ReasonTemplate(_counted("category", " bought", "categories"), "no category bought"),
    "n_channels": ReasonTemplate(_counted("channel", " used"), "no channel used"),
    "items_per_order": ReasonTemplate(_simple("", _decimal, " items per order"), "no purchase yet"),
    "n_interactions": ReasonTemplate(_counted("interaction", " in total"), "no interaction yet"),
    "interactions_per_month": ReasonTemplate(_interaction_rate, "no interaction data", ("peer_interactions_per_month",)),
    "low_interaction": ReasonTemplate(_interaction_rate, "no interaction data",
                                      ("interactions_per_month", "peer_interactions_per_month")),
    "interaction_trend": ReasonTemplate(_interaction_trend, "no interaction in the last {interaction_window_days} days"),
    "days_since_interaction": ReasonTemplate(_simple("no interaction for ", _whole, " days"), "never interacted"),
    "days_since_signup": ReasonTemplate(_simple("signed up ", _whole, " days ago"), "signup date unknown"),
    "tier": ReasonTemplate(_label("loyalty tier: "), "loyalty tier unknown"),
    "value_segment": ReasonTemplate(_label("segment: "), "segment unknown"),
    "purchases_per_year": ReasonTemplate(_simple("", _decimal, " purchases a year"), "purchase rate unknown"),
    "ltv": ReasonTemplate(_simple("lifetime value ", _money), "lifetime value unknown"),
    "bgnbd_p_alive": ReasonTemplate(_simple("", _percent, " estimated chance of still being active"),
                                    "activity estimate unavailable"),
    "bgnbd_expected_purchases": ReasonTemplate(_bgnbd_expected, "purchase forecast unavailable"),
    PRIOR: ReasonTemplate(_bgnbd_prior, "buying pattern unknown"),
}

_WINDOWED = re.compile(r"^(orders|spend|interactions)_(\d+)d$")
_TREND = re.compile(r"^(orders|spend)_trend_(\d+)_(\d+)$")
_KIND_COUNT = re.compile(r"^([a-z_]+?)_(\d+)d$")


def _windowed_template(feature: str) -> ReasonTemplate | None:
    """Templates for the columns named after their window (``orders_90d``, ``orders_trend_30_90``...)."""
    if match := _WINDOWED.match(feature):
        what, days = match.group(1), match.group(2)
        if what == "spend":
            return ReasonTemplate(_simple("spent ", _money, f" in the last {days} days"), "spend unknown")
        word = "order" if what == "orders" else "interaction"
        return ReasonTemplate(_counted(word, f" in the last {days} days"), f"no {word} data")
    if match := _TREND.match(feature):
        what, short, long = match.groups()
        subject = "order" if what == "orders" else "spend"
        return ReasonTemplate(_simple(f"{subject} pace over the last {short} days at ", _percent, f" of the {long}-day pace"),
                              f"no {'orders' if what == 'orders' else 'spend'} in the last {long} days")
    if match := _KIND_COUNT.match(feature):
        kind, days = match.group(1).replace("_", " "), match.group(2)
        return ReasonTemplate(_counted(kind, f" in the last {days} days"), f"no {kind} data")
    return None


def _generic_template(feature: str) -> ReasonTemplate:
    def render(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
        if pd.api.types.is_numeric_dtype(value.dtype) and not pd.api.types.is_bool_dtype(value.dtype):
            shown = pd.Series([f"{v:.4g}" for v in value.to_numpy(dtype=float)], index=value.index, dtype=object)
        else:
            shown = _text(value)
        return f"{feature} = " + shown

    return ReasonTemplate(render, f"{feature} = missing")


def reason_template(feature: str) -> ReasonTemplate:
    """The phrase template of a feature; ``"<feature> = <value>"`` for features without one."""
    return REASON_TEMPLATES.get(feature) or _windowed_template(feature) or _generic_template(feature)


def describe(feature: str, rows: pd.DataFrame, context: ReasonContext = ReasonContext()) -> pd.Series:
    """A short phrase for each row about the value of ``feature``.

    Parameters
    ----------
    feature : str
        The feature the phrase is about.
    rows : pandas.DataFrame
        The rows, with ``feature`` and any columns its template also quotes (those that are
        absent are left out of the phrase).
    context : ReasonContext
        Window lengths and horizon quoted in phrases.

    Returns
    -------
    pandas.Series
        Text, index aligned with ``rows``.

    Examples
    --------
    >>> rows = pd.DataFrame({"recency_days": [124.0], "mean_gap_days": [30.0]})
    >>> describe("recency_days", rows).iloc[0]
    'no purchase for 124 days (usually every 30)'
    """
    template = reason_template(feature)
    value = rows[feature]
    present = value.notna().to_numpy()
    missing = template.missing.format(**vars(context))
    if not present.any():
        return pd.Series(missing, index=rows.index, dtype=object)
    if present.all():
        return pd.Series(template.render(value, rows, context).to_numpy(dtype=object), index=rows.index, dtype=object)
    return _patched(missing, present, template.render(value[present], rows.loc[present], context), rows.index)


def reason_phrases(
    feature_names: Sequence[str], indices: np.ndarray, frame: pd.DataFrame, context: ReasonContext = ReasonContext()
) -> np.ndarray:
    """Phrases for reason indices (as returned by :func:`churn_reasons`).

    Returns
    -------
    numpy.ndarray
        An object array shaped like ``indices``; ``None`` where the index is -1.
    """
    n_slots = indices.shape[1]
    feature_at = indices.ravel()
    phrases = np.full(feature_at.shape, None, dtype=object)
    listed = np.flatnonzero(feature_at >= 0)
    # Each feature's rows in all slots at once (a row names a feature in one slot at most), in
    # row order: one phrase call per feature, and row-ordered takes from the table.
    by_feature = listed[np.argsort(feature_at[listed], kind="stable")]
    for group in np.split(by_feature, np.flatnonzero(np.diff(feature_at[by_feature])) + 1):
        if not len(group):
            continue
        feature = feature_names[feature_at[group[0]]]
        template = reason_template(feature)
        needed = [c for c in (feature, *template.uses) if c in frame.columns]
        # Columns first: taking rows of the whole table would copy every column.
        phrases[group] = describe(feature, frame[needed].iloc[group // n_slots], context).to_numpy()
    return phrases.reshape(indices.shape)


# --------------------------------------------------------------------------------------------
