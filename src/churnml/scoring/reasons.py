"""Reason phrases: what a feature says about a customer, in words a retention analyst reads, with
the customer's value and a norm to read it against ("no purchase for 124 days, usually every 30";
"2 purchases in the last 90 days, peers 5"), in the direction the feature pushes the risk.

Each feature has a template (:class:`ReasonTemplate`): how to say its value, which way it points
(``risk``: whether higher or lower values go with churn), and its norms, tried in order: the
customer's own rhythm (``usually every 30``), a fixed yardstick (0% change, the previous
window) or the peers (the median customer scored, ``peers 5``). A contribution may be given as a
reason only when the value, against one of its norms, reads the way the contribution pushes
(:func:`reason_eligibility`): a risk-raising contribution of a value that reads as loyalty (a
rising order pace, a recent purchase) is not a churn reason, and the phrase then quotes the norm
that agrees.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from churnml.features.build import FeatureConfig
from churnml.features.segments import TIERS, VALUE_SEGMENTS
from churnml.models.classifier import PRIOR

log = logging.getLogger(__name__)

# Directions: a contribution that raises the churn risk, and one that lowers it.
RAISES, LOWERS = 1, -1


@dataclass(frozen=True)
class ReasonContext:
    """What reason phrases quote: feature windows, the churn model's horizon, the peers' norms.

    Attributes
    ----------
    peers : mapping of str to float or str, optional
        The population's typical value of each feature (:func:`peer_norms`: the median, or the
        most common text); None until scoring computes it from the customers scored.
    """

    order_value_window_days: int = 90
    order_value_drop: float = 0.4
    no_repurchase_days: int = 90
    interaction_window_days: int = 90
    shortest_window_days: int = 30
    horizon_days: int = 90
    peers: Mapping[str, Any] | None = None

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

    def settings(self) -> dict[str, Any]:
        """The windows and horizon, for ``str.format`` of template texts."""
        return {k: v for k, v in vars(self).items() if k != "peers"}


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


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


def _count(values: pd.Series) -> pd.Series:
    """Counts: whole numbers, and one decimal for a peers' median between two counts."""
    numbers = values.to_numpy(dtype=float)
    return _whole(values) if np.all(numbers == np.round(numbers)) else _decimal(values)


def _money(values: pd.Series) -> pd.Series:
    """Amounts: cents below 100, whole units above."""
    return _formatted(values, lambda v: f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}",
                      lambda v: np.where(np.abs(v) < 100, np.round(v, 2), np.round(v)))


def _percent(values: pd.Series) -> pd.Series:
    return _formatted(values, "{:.0%}".format, lambda v: np.round(v, 2))


def _label_text(values: pd.Series) -> pd.Series:
    return _text(values).str.replace("_", " ", regex=False)


def _plural(values: pd.Series, word: str, plural: str | None = None) -> pd.Series:
    """``"1 order"``, ``"3 orders"``."""
    counts = values.to_numpy(dtype=float)
    words = np.where(np.round(counts) == 1, word, plural or word + "s")
    return _whole(values) + " " + pd.Series(words, index=values.index, dtype=object)


def _flag_is_set(values: pd.Series) -> np.ndarray:
    return values.astype("boolean").fillna(False).to_numpy(dtype=bool)


def _numbers(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


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


def _months(days: int) -> str:
    months = round(days / 30.4375)
    return f"{months} month{'s' if months != 1 else ''}" if months >= 1 and abs(days - months * 30.4375) < 3 else f"{days} days"


def _column(rows: pd.DataFrame, name: str) -> pd.Series:
    """A column of ``rows``, all missing when ``rows`` lacks it."""
    return rows[name] if name in rows.columns else pd.Series(np.nan, index=rows.index)


# --------------------------------------------------------------------------------------------
# Norms: what a value is read against
# --------------------------------------------------------------------------------------------


# A value reads against its norm only when it differs from it by more than this share of the norm:
# 711 days against the peers' 718 says nothing either way.
NORM_MARGIN = 0.1


@dataclass(frozen=True)
class Norm:
    """A yardstick for a feature's value.

    ``values(feature, rows, context, template)`` gives each row's norm on the scale of
    ``template.number`` (NaN where unknown; one number when it is the same for every row);
    ``text(feature, rows, context, template)`` how a phrase quotes it (``", usually every
    30"``), for rows whose norm is known (one text when it is the same for every row); ``uses``
    are the columns both read. A value reads above or below the norm when it differs from it by
    more than ``margin`` times the norm's size. ``peers``: the norm is the peers' value
    (``ReasonContext.peers``).
    """

    values: Callable[[str, pd.DataFrame, "ReasonContext", "ReasonTemplate"], np.ndarray | float]
    text: Callable[[str, pd.DataFrame, "ReasonContext", "ReasonTemplate"], pd.Series | str]
    uses: tuple[str, ...] = ()
    margin: float = NORM_MARGIN
    peers: bool = False


def _peer_value(feature: str, context: ReasonContext) -> Any:
    value = (context.peers or {}).get(feature)
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value


def _peers_values(feature: str, rows: pd.DataFrame, context: ReasonContext, template: "ReasonTemplate") -> float:
    # One number for every row (numpy broadcasts it).
    peer = _peer_value(feature, context)
    if peer is None:
        return np.nan
    return float(template.number(pd.Series([peer], dtype=object), feature, context)[0])


def _peers_text(feature: str, rows: pd.DataFrame, context: ReasonContext, template: "ReasonTemplate") -> str:
    # One text for every row.
    shown = template.shown(pd.Series([_peer_value(feature, context)]))[0]
    return f", {template.peers_label}{shown}"


# The median customer scored (for text, the most common value): see peer_norms.
PEERS = Norm(_peers_values, _peers_text, peers=True)


def _usual_gap_text(rows: pd.DataFrame) -> pd.Series:
    """``", usually every 30"`` where the mean gap between purchases is known, else nothing."""
    gap = _column(rows, "mean_gap_days")
    known = gap.notna().to_numpy()
    if not known.any():
        return pd.Series("", index=rows.index, dtype=object)
    return _patched("", known, ", usually every " + _whole(gap[known]), rows.index)


# The customer's own rhythm: the mean gap between their purchases, in days.
USUAL_GAP = Norm(lambda f, rows, c, t: _numbers(_column(rows, "mean_gap_days")),
                 lambda f, rows, c, t: _usual_gap_text(rows), ("mean_gap_days",))


def fixed_norm(value: float, quotes_gap: bool = False) -> Norm:
    """A norm the value statement itself names (0% change, the 90-day pace): ``value`` for
    every row; its text adds the customer's usual gap when ``quotes_gap``."""
    return Norm(lambda f, rows, c, t: float(value), lambda f, rows, c, t: _usual_gap_text(rows) if quotes_gap else "",
                ("mean_gap_days",) if quotes_gap else ())


def usual_count(days: int) -> Norm:
    """Purchases a customer's own rhythm gives a window of ``days``: ``days / mean gap``."""
    def values(feature: str, rows: pd.DataFrame, context: ReasonContext, template: "ReasonTemplate") -> np.ndarray:
        return days / _numbers(_column(rows, "mean_gap_days"))

    def text(feature: str, rows: pd.DataFrame, context: ReasonContext, template: "ReasonTemplate") -> pd.Series:
        return ", usually " + _count(pd.Series(np.round(values(feature, rows, context, template), 1), index=rows.index))

    return Norm(values, text, ("mean_gap_days",))


def column_norm(name: str, shown: Callable[[pd.Series], pd.Series], suffix: str = "") -> Norm:
    """Another of the customer's columns as the norm, quoted as ``", <value><suffix>"`` (the
    suffix may quote the context's settings)."""
    def text(feature: str, rows: pd.DataFrame, context: ReasonContext, template: "ReasonTemplate") -> pd.Series:
        return ", " + shown(_column(rows, name)) + suffix.format(**context.settings())

    return Norm(lambda f, rows, c, t: _numbers(_column(rows, name)), text, (name,))


# --------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------


# A statement of the value, for the rows where the feature is present.
Render = Callable[[pd.Series, pd.DataFrame, ReasonContext], pd.Series]


@dataclass(frozen=True)
class ReasonTemplate:
    """How to say what a feature's value says about a customer.

    Attributes
    ----------
    render : callable
        ``render(value, rows, context)``: the value, for rows where it is present (``"no
        purchase for 124 days"``).
    missing : str
        Said where the value is missing (formatted with the context's settings).
    uses : tuple of str
        Other columns ``render`` reads.
    risk : int
        1: higher values go with churn; -1: lower values do; 0: unknown (the phrase then states
        value and norm without a direction, and the feature may be a reason either way, when its
        value differs from its norm).
    norms : tuple of Norm
        What the value is read against, in order of preference. No norms: no reading (the value
        may be a reason either way).
    keeps : callable, optional
        ``render`` for rows where the value lowers the risk (``"bought 6 days ago"``).
    shown : callable
        How the peers' value is written.
    peers_label : str
        Written before the peers' value (``"peers "``).
    missing_risk : int or None
        The direction a missing value may be given for: 1 raising the risk, -1 lowering it,
        0 either, None neither (a missing value says nothing).
    number : callable
        ``number(values, feature, context)``: values on the scale norms compare (flags as 0/1,
        tiers by rank); NaN where the value is missing or has no reading.
    """

    render: Render
    missing: str
    uses: tuple[str, ...] = ()
    risk: int = 0
    norms: tuple[Norm, ...] = ()
    keeps: Render | None = None
    shown: Callable[[pd.Series], pd.Series] = _decimal
    peers_label: str = "peers "
    missing_risk: int | None = RAISES
    number: Callable[[pd.Series, str, ReasonContext], np.ndarray] = lambda values, feature, context: _numbers(values)

    def columns(self) -> tuple[str, ...]:
        """Every column ``render`` and the norms read, besides the feature."""
        return tuple(dict.fromkeys([*self.uses, *(c for norm in self.norms for c in norm.uses)]))


def _simple(prefix: str, formatter: Callable[[pd.Series], pd.Series], suffix: str = "") -> Render:
    """``prefix + value + suffix``; prefix and suffix may quote the context (``{horizon_days}``)."""

    def render(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
        settings = ctx.settings()
        return prefix.format(**settings) + formatter(value) + suffix.format(**settings)

    return render


def _counted(prefix: str, word: str, suffix: str = "", plural: str | None = None) -> Render:
    def render(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
        return prefix + _plural(value, word, plural) + suffix.format(**ctx.settings())

    return render


def _label(prefix: str) -> Render:
    def render(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
        return prefix + _label_text(value)

    return render


def _recency(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    today = value.to_numpy() <= 0
    return _either(today, "bought on the scoring day", "no purchase for " + _plural(value, "day"), value.index)


def _recency_keeps(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    today = value.to_numpy() <= 0
    return _either(today, "bought on the scoring day", "bought " + _plural(value, "day") + " ago", value.index)


def _overdue(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    late = value.to_numpy() > 0
    return _either(late, "next purchase " + _plural(value.abs(), "day") + " overdue",
                   "next purchase due in " + _plural(value.abs(), "day"), value.index)


def _overdue_ratio(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    return "time since the last purchase " + _decimal(value) + "x the usual gap"


def _change_per_order(change: pd.Series, ctx: ReasonContext) -> pd.Series:
    """``"spends 40% less per order than in the previous 90 days"`` (or more)."""
    window = f" per order than in the previous {ctx.order_value_window_days} days"
    down = change.to_numpy() < 0
    return _either(down, "spends " + _percent(-change) + " less" + window, "spends " + _percent(change) + " more" + window,
                   change.index)


def _aov_change(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    return _change_per_order(value, ctx)


def _order_value_drop(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    dropped = _flag_is_set(value)
    change = _column(rows, "aov_change")
    window = f" vs the previous {ctx.order_value_window_days} days"
    text = _either(dropped, f"order value down more than {ctx.order_value_drop:.0%}{window}",
                   f"order value not down more than {ctx.order_value_drop:.0%}{window}", value.index)
    known = change.notna().to_numpy()
    if known.any():
        text = _patched(text, known, _change_per_order(change[known], ctx), value.index)
    return text


def _order_value_drop_norm() -> Norm:
    """0.5 between a set flag (1) and a clear one (0), except where a clear flag is no sign of
    loyalty: order value fell (by less than the threshold), or there was nothing to compare."""
    def values(feature: str, rows: pd.DataFrame, context: ReasonContext, template: "ReasonTemplate") -> np.ndarray:
        dropped = _flag_is_set(rows[feature])
        steady = _numbers(_column(rows, "aov_change")) >= 0
        return np.where(dropped | steady, 0.5, np.nan)

    return Norm(values, lambda f, rows, c, t: "", ("aov_change",))


def _no_repurchase(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    period = _months(ctx.no_repurchase_days)
    return _either(_flag_is_set(value), f"no purchase in {period}", f"bought in the last {period}", value.index)


def _interaction_rate(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    rate = rows["interactions_per_month"] if "interactions_per_month" in rows else value
    return _decimal(rate) + " interactions a month"


def _interaction_rate_norm() -> Norm:
    """The peers' interaction rate of the feature table (``peer_interactions_per_month``); for
    the ``low_interaction`` flag, 0.5 between set (1) and clear (0) where the clear flag means
    at least the peers' rate."""
    def values(feature: str, rows: pd.DataFrame, context: ReasonContext, template: "ReasonTemplate") -> np.ndarray:
        peers = _numbers(_column(rows, "peer_interactions_per_month"))
        if feature != "low_interaction":
            return peers
        low = _flag_is_set(rows[feature])
        busy = _numbers(_column(rows, "interactions_per_month")) >= peers
        return np.where(low | busy, 0.5, np.nan)

    def text(feature: str, rows: pd.DataFrame, context: ReasonContext, template: "ReasonTemplate") -> pd.Series:
        peers = _column(rows, "peer_interactions_per_month")
        known = peers.notna().to_numpy()
        return _patched("", known, ", peers " + _decimal(peers[known]), rows.index)

    return Norm(values, text, ("peer_interactions_per_month", "interactions_per_month"))


def _interaction_trend(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    return (f"interactions over the last {ctx.shortest_window_days} days at " + _percent(value)
            + f" of the {ctx.interaction_window_days}-day pace")


def _frequency(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    none = value.to_numpy() <= 0
    return _either(none, "no purchase yet (refunds only)", _plural(value, "purchase") + " so far", value.index)


def _repeat_orders(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    none = value.to_numpy() <= 0
    return _either(none, "no repeat purchase yet", _plural(value, "repeat purchase") + " so far", value.index)


def _refunds(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    none = value.to_numpy() <= 0
    return _either(none, "no refunds", "refunds of " + _money(value), value.index)


def _days_since_interaction(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    today = value.to_numpy() <= 0
    return _either(today, "interacted on the scoring day", "no interaction for " + _plural(value, "day"), value.index)


def _nps_answer(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    """The latest NPS answer and its group: 9-10 a promoter, 7-8 a passive, 0-6 a detractor."""
    score = pd.Series(_numbers(_column(rows, "last_nps")), index=value.index)
    group = np.select([score >= 9, score >= 7], [": a promoter", ": a passive"], ": a detractor")
    answered = "latest NPS answer " + _whole(score) + " of 10" + pd.Series(group, index=value.index, dtype=object)
    return _either(score.isna().to_numpy(), "no NPS answer yet", answered, value.index)


def _days_since_interaction_keeps(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    today = value.to_numpy() <= 0
    return _either(today, "interacted on the scoring day", "last interaction " + _plural(value, "day") + " ago",
                   value.index)


def _aov_recent(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    return "average order " + _money(value) + f" in the last {ctx.order_value_window_days} days"


def _aov_previous(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    window = ctx.order_value_window_days
    return "average order " + _money(value) + f" in the {window} days before the last {window}"


def _bgnbd_expected(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    return _decimal(value) + f" purchases expected in the next {ctx.horizon_days} days"


def _btyd_prior(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
    # The prior is the buy-till-you-die model's churn probability in log-odds; 0 log-odds is an even chance.
    probability = pd.Series(1.0 / (1.0 + np.exp(-value.to_numpy(dtype=float))), index=value.index)
    return ("buying pattern (buy-till-you-die model) gives a " + _percent(probability)
            + f" chance of no purchase in the next {ctx.horizon_days} days")


def _flag_number(values: pd.Series, feature: str, context: ReasonContext) -> np.ndarray:
    return values.astype("boolean").to_numpy(dtype=float, na_value=np.nan)


def _ranked(order: Sequence[str]) -> Callable[[pd.Series, str, ReasonContext], np.ndarray]:
    """Labels by their rank in ``order`` (the first lowest), NaN for others."""
    ranks = {label: float(rank) for rank, label in enumerate(order)}

    def number(values: pd.Series, feature: str, context: ReasonContext) -> np.ndarray:
        # The few distinct labels are looked up, not a million texts.
        codes, labels = pd.factorize(values)
        label_ranks = np.array([ranks.get(str(label), np.nan) for label in labels] + [np.nan])
        return label_ranks[np.where(codes >= 0, codes, len(labels))]

    return number


def _same_as_peers(feature: str, rows: pd.DataFrame, context: ReasonContext, template: "ReasonTemplate") -> float:
    """The norm of :func:`_differs_from_peers`: 0 (the peers' value), NaN when it is unknown."""
    return 0.0 if _peer_value(feature, context) is not None else np.nan


def _differs_from_peers(values: pd.Series, feature: str, context: ReasonContext) -> np.ndarray:
    """Text as 1 where it differs from the peers' most common value, 0 where it is the same."""
    differs = (values.astype("str") != str(_peer_value(feature, context))).to_numpy(dtype=float)
    return np.where(values.isna().to_numpy(), np.nan, differs)


# Risk-flags: set (1) reads as a risk, clear (0) as loyalty.
_FLAG = fixed_norm(0.5)
NO_RHYTHM = "no buying rhythm yet (fewer than two purchases)"
# Tiers and value segments, the one that goes with the least churn first.
TIER_RISK_ORDER = TIERS
SEGMENT_RISK_ORDER = (VALUE_SEGMENTS[0], VALUE_SEGMENTS[2], VALUE_SEGMENTS[1], VALUE_SEGMENTS[3])


def _peers_only(render: Render, missing: str, risk: int, shown: Callable[[pd.Series], pd.Series] = _decimal,
                **options: Any) -> ReasonTemplate:
    """A feature read against the peers alone."""
    return ReasonTemplate(render, missing, risk=risk, norms=(PEERS,), shown=shown, **options)


REASON_TEMPLATES: dict[str, ReasonTemplate] = {
    "recency_days": ReasonTemplate(_recency, "no purchase yet (refunds only)", risk=RAISES, norms=(USUAL_GAP, PEERS),
                                   keeps=_recency_keeps, shown=_whole),
    "days_overdue": ReasonTemplate(_overdue, NO_RHYTHM, risk=RAISES, norms=(fixed_norm(0.0, quotes_gap=True),)),
    "overdue_ratio": ReasonTemplate(_overdue_ratio, NO_RHYTHM, risk=RAISES, norms=(fixed_norm(1.0, quotes_gap=True),)),
    "mean_gap_days": _peers_only(_simple("buys every ", _whole, " days on average"), "no repeat purchase yet", RAISES,
                                 _whole, peers_label="peers every "),
    "gap_std_days": _peers_only(_simple("gaps between purchases vary by +/- ", _whole, " days"),
                                "too few purchases to tell how regular they are", RAISES, _whole,
                                peers_label="peers +/- "),
    "last_gap_days": ReasonTemplate(_simple("last gap between purchases ", _whole, " days"), "no repeat purchase yet",
                                    risk=RAISES, norms=(USUAL_GAP, PEERS), shown=_whole),
    "frequency": _peers_only(_frequency, "no purchase yet", LOWERS, _count),
    "repeat_orders": _peers_only(_repeat_orders, "no repeat purchase yet", LOWERS, _count),
    "monetary_total": _peers_only(_simple("spent ", _money, " in total"), "no purchase yet", LOWERS, _money),
    "avg_order_value": _peers_only(_simple("average order ", _money), "no purchase yet", LOWERS, _money),
    "max_order_value": _peers_only(_simple("largest order ", _money), "no purchase yet", LOWERS, _money),
    "tenure_days": _peers_only(_simple("customer for ", _whole, " days"), "tenure unknown", LOWERS, _whole,
                               missing_risk=None),
    "purchase_span_days": _peers_only(_simple("purchases spread over ", _whole, " days"), "no purchase yet", LOWERS,
                                      _whole),
    "purchase_age_days": _peers_only(_simple("first purchase ", _whole, " days ago"), "no purchase yet", LOWERS,
                                     _whole),
    "aov_recent": ReasonTemplate(_aov_recent, "no order in the last {order_value_window_days} days", risk=LOWERS,
                                 norms=(column_norm("aov_previous", _money, " in the {order_value_window_days} days before"), PEERS), shown=_money),
    "aov_previous": ReasonTemplate(
        _aov_previous, "no order in the {order_value_window_days} days before the last {order_value_window_days}",
        risk=RAISES, norms=(column_norm("aov_recent", _money, " since"),), shown=_money, missing_risk=None),
    # As the ratio of the two averages, so that the margin is a share of the previous one.
    "aov_change": ReasonTemplate(_aov_change, "no orders to compare in the last two {order_value_window_days}-day windows",
                                 risk=LOWERS, norms=(fixed_norm(1.0),),
                                 number=lambda values, feature, context: 1.0 + _numbers(values)),
    "order_value_drop_40": ReasonTemplate(_order_value_drop, "order value trend unknown", ("aov_change",), risk=RAISES,
                                          norms=(_order_value_drop_norm(),), number=_flag_number, missing_risk=None),
    "no_repurchase_3m": ReasonTemplate(_no_repurchase, "purchase history unknown", risk=RAISES,
                                       norms=(fixed_norm(0.5, quotes_gap=True),), number=_flag_number,
                                       missing_risk=None),
    "refund_amount": _peers_only(_refunds, "no refunds", RAISES, _money, missing_risk=None),
    "n_refunds": _peers_only(_counted("", "refund"), "no refunds", RAISES, _count, missing_risk=None),
    "refund_rate": _peers_only(_simple("refunds are ", _percent, " of spend"), "refunds without purchases", RAISES,
                               _percent),
    "net_spend": _peers_only(_simple("net spend ", _money), "net spend unknown", LOWERS, _money, missing_risk=None),
    "n_categories": _peers_only(_counted("bought in ", "category", "", "categories"), "no category bought", LOWERS,
                                _count),
    "n_channels": _peers_only(_counted("bought through ", "channel"), "no channel used", LOWERS, _count),
    "items_per_order": _peers_only(_simple("", _decimal, " items per order"), "no purchase yet", LOWERS),
    "n_interactions": _peers_only(_counted("", "interaction", " in total"), "no interaction yet", LOWERS, _count),
    "interactions_per_month": ReasonTemplate(_interaction_rate, "no interaction data", risk=LOWERS,
                                             norms=(_interaction_rate_norm(),), missing_risk=None),
    "low_interaction": ReasonTemplate(_interaction_rate, "no interaction data", ("interactions_per_month",),
                                      risk=RAISES, norms=(_interaction_rate_norm(),), number=_flag_number,
                                      missing_risk=None),
    "interaction_trend": ReasonTemplate(_interaction_trend, "no interaction in the last {interaction_window_days} days",
                                        risk=LOWERS, norms=(fixed_norm(1.0),)),
    "days_since_interaction": _peers_only(_days_since_interaction, "never interacted", RAISES, _whole,
                                          keeps=_days_since_interaction_keeps),
    "n_survey_answers": _peers_only(_counted("", "survey answer", " in total"), "no survey answer yet", LOWERS,
                                    _count, missing_risk=None),
    "days_since_survey": _peers_only(_simple("last survey answer ", _whole, " days ago"), "no survey answer yet",
                                     RAISES, _whole, missing_risk=None),
    "last_nps": ReasonTemplate(_nps_answer, "no NPS answer yet", ("last_nps",), risk=LOWERS, norms=(PEERS,),
                               shown=_whole, missing_risk=None),
    "nps_promoter": ReasonTemplate(_nps_answer, "no NPS answer yet", ("last_nps",), risk=LOWERS,
                                   norms=(fixed_norm(0.5),), number=_flag_number, missing_risk=None),
    "nps_detractor": ReasonTemplate(_nps_answer, "no NPS answer yet", ("last_nps",), risk=RAISES,
                                    norms=(fixed_norm(0.5),), number=_flag_number, missing_risk=None),
    "last_csat": _peers_only(_simple("latest satisfaction answer ", _whole, " of 5"), "no satisfaction answer yet",
                             LOWERS, _whole, missing_risk=None),
    "last_ces": _peers_only(_simple("latest ease-of-service answer ", _whole, " of 7"), "no effort answer yet",
                            LOWERS, _whole, missing_risk=None),
    "days_since_signup": _peers_only(_simple("signed up ", _whole, " days ago"), "signup date unknown", LOWERS, _whole,
                                     missing_risk=None),
    "tier": _peers_only(_label("loyalty tier: "), "loyalty tier unknown", RAISES, _label_text,
                        peers_label="most customers ", number=_ranked(TIER_RISK_ORDER), missing_risk=None),
    "value_segment": _peers_only(_label("segment: "), "segment unknown", RAISES, _label_text,
                                 peers_label="most customers ", number=_ranked(SEGMENT_RISK_ORDER),
                                 missing_risk=None),
    "purchases_per_year": _peers_only(_simple("", _decimal, " purchases a year"), "purchase rate unknown", LOWERS,
                                      missing_risk=None),
    "ltv": _peers_only(_simple("lifetime value ", _money), "lifetime value unknown", LOWERS, _money,
                       missing_risk=None),
    "bgnbd_p_alive": _peers_only(_simple("", _percent, " estimated chance of still being active"),
                                 "activity estimate unavailable", LOWERS, _percent, missing_risk=None),
    "bgnbd_expected_purchases": _peers_only(_bgnbd_expected, "purchase forecast unavailable", LOWERS,
                                            missing_risk=None),
    # What of the prior no feature takes (see churnml.models.attribution): a model, not a behaviour.
    PRIOR: ReasonTemplate(_btyd_prior, "buying pattern unknown", missing_risk=0),
}

_WINDOWED = re.compile(r"^(orders|spend|interactions)_(\d+)d$")
_TREND = re.compile(r"^(orders|spend)_trend_(\d+)_(\d+)$")
_KIND_COUNT = re.compile(r"^([a-z_]+?)_(\d+)d$")
# Interaction kinds that go with trouble rather than engagement: more of them reads as a risk.
TROUBLE_KINDS = frozenset({"support_ticket", "complaint", "return_request"})


def _windowed_template(feature: str) -> ReasonTemplate | None:
    """Templates for the columns named after their window (``orders_90d``, ``orders_trend_30_90``...)."""
    if match := _WINDOWED.match(feature):
        what, days = match.group(1), int(match.group(2))
        if what == "spend":
            return _peers_only(_simple("spent ", _money, f" in the last {days} days"), "spend unknown", LOWERS, _money,
                               missing_risk=None)
        if what == "orders":
            return ReasonTemplate(_counted("", "purchase", f" in the last {days} days"), "no order data", risk=LOWERS,
                                  norms=(usual_count(days), PEERS), shown=_count, missing_risk=None)
        return _peers_only(_counted("", "interaction", f" in the last {days} days"), "no interaction data", LOWERS,
                           _count, missing_risk=None)
    if match := _TREND.match(feature):
        what, short, long = match.groups()
        subject = "purchase" if what == "orders" else "spend"
        return ReasonTemplate(_simple(f"{subject} pace over the last {short} days at ", _percent, f" of the {long}-day pace"),
                              f"no {'purchases' if what == 'orders' else 'spend'} in the last {long} days", risk=LOWERS,
                              norms=(fixed_norm(1.0),))
    if match := _KIND_COUNT.match(feature):
        kind, days = match.group(1), match.group(2)
        return _peers_only(_counted("", kind.replace("_", " "), f" in the last {days} days"),
                           f"no {kind.replace('_', ' ')} data", RAISES if kind in TROUBLE_KINDS else LOWERS, _count,
                           missing_risk=None)
    return None


_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def _generic_template(feature: str, text: bool) -> ReasonTemplate:
    """``"<feature> = <value>, peers <median>"``: no known direction, so the phrase states value
    and norm only. The feature's name (a user's column name) is quoted on one line: line
    breaks, tabs and other control characters become spaces."""
    feature = " ".join(_CONTROL_CHARACTERS.sub(" ", str(feature)).split())

    def render(value: pd.Series, rows: pd.DataFrame, ctx: ReasonContext) -> pd.Series:
        if not text and not pd.api.types.is_bool_dtype(value.dtype):
            shown = pd.Series([f"{v:.4g}" for v in value.to_numpy(dtype=float)], index=value.index, dtype=object)
        else:
            shown = _text(value)
        return f"{feature} = " + shown

    if text:
        # Compared with the peers' most common value: 1 where it differs, against 0.
        return ReasonTemplate(render, f"{feature} = missing", norms=(Norm(_same_as_peers, _peers_text, peers=True),), shown=_text,
                              peers_label="most customers ", number=_differs_from_peers, missing_risk=None)
    return ReasonTemplate(render, f"{feature} = missing", norms=(PEERS,),
                          shown=lambda v: pd.Series([f"{x:.4g}" for x in v.to_numpy(dtype=float)], dtype=object),
                          missing_risk=None)


def reason_template(feature: str, text: bool = False) -> ReasonTemplate:
    """The phrase template of a feature; ``"<feature> = <value>"`` (with the peers' value) for
    features without one (``text``: the feature holds text)."""
    return REASON_TEMPLATES.get(feature) or _windowed_template(feature) or _generic_template(feature, text)


def quotes_peers(feature: str, text: bool = False) -> bool:
    """Whether the phrases of ``feature`` (``text``: a text column) may quote the peers' value,
    which :func:`peer_norms` then needs."""
    return any(norm.peers for norm in reason_template(feature, text).norms)


def _is_number(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype)


def _template_for(feature: str, rows: pd.DataFrame) -> ReasonTemplate:
    return reason_template(feature, feature in rows.columns and not _is_number(rows[feature]))


# --------------------------------------------------------------------------------------------
# Readings: which norm a value is read against, in which direction
# --------------------------------------------------------------------------------------------


def _directions(direction: int | np.ndarray, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(direction, dtype=float), (n,))


def _numbers_of(template: ReasonTemplate, feature: str, rows: pd.DataFrame, context: ReasonContext,
                present: np.ndarray) -> np.ndarray:
    """The values on the scale norms compare, NaN where missing."""
    numbers = np.asarray(template.number(rows[feature], feature, context), dtype=float)
    if not present.all():
        numbers = np.where(present, numbers, np.nan)
    return numbers


def _agrees(template: ReasonTemplate, norm: Norm, feature: str, rows: pd.DataFrame, context: ReasonContext,
            numbers: np.ndarray, wants_above: np.ndarray | bool) -> tuple[np.ndarray, np.ndarray]:
    """Whether each value reads against ``norm`` the way its row needs (above the norm by more
    than the margin where ``wants_above``, below it elsewhere; either, without a direction), and
    whether the norm is known."""
    # A norm the same for every row (the peers') stays a number: no array of copies of it.
    norm_values = np.asarray(norm.values(feature, rows, context, template), dtype=float)
    with np.errstate(invalid="ignore"):
        difference = numbers - norm_values
        margin = norm.margin * np.abs(norm_values)
        if not template.risk:
            agrees = np.abs(difference) > margin
        elif np.ndim(wants_above) == 0:
            agrees = difference > margin if wants_above else difference < -margin
        else:
            agrees = np.where(wants_above, difference > margin, difference < -margin)
    return agrees, ~np.isnan(difference)


def _wants_above(template: ReasonTemplate, directions: np.ndarray) -> np.ndarray | bool:
    """Where a value reads as pushing its row's way when above its norm: rows raising the risk of
    a feature whose higher values go with churn, and rows lowering it of one whose lower values do."""
    # One direction for all rows (describe's default) is a broadcast number.
    if directions.size and directions.strides == (0,):
        return bool(directions[0] * template.risk > 0)
    return directions * template.risk > 0


def _missing_allowed(template: ReasonTemplate, directions: np.ndarray) -> np.ndarray:
    if template.missing_risk is None:
        return np.zeros(len(directions), dtype=bool)
    return (directions == template.missing_risk) | (template.missing_risk == 0)


def eligible(feature: str, rows: pd.DataFrame, context: ReasonContext = ReasonContext(),
             direction: int | np.ndarray = RAISES) -> np.ndarray:
    """Whether each row's ``feature`` may be given as a reason pushing the risk ``direction``
    (1 up, -1 down; one per row or one for all).

    A present value may when one of its norms reads it that way, by more than the norm's margin
    (a template without norms: always, unless the value has no reading); a missing one when the
    template's ``missing_risk`` is 0 or ``direction`` (never when it is None).

    Returns
    -------
    numpy.ndarray
        ``(rows,)`` booleans.
    """
    directions = _directions(direction, len(rows))
    if feature not in rows.columns:
        return np.zeros(len(rows), dtype=bool)
    template = _template_for(feature, rows)
    present = rows[feature].notna().to_numpy()
    numbers = _numbers_of(template, feature, rows, context, present)
    if not template.norms:
        reads = ~np.isnan(numbers)
    else:
        wants_above = _wants_above(template, directions)
        reads = np.zeros(len(rows), dtype=bool)
        for norm in template.norms:
            reads |= _agrees(template, norm, feature, rows, context, numbers, wants_above)[0]
    if present.all():
        return reads
    return np.where(present, reads, _missing_allowed(template, directions))


def describe(feature: str, rows: pd.DataFrame, context: ReasonContext = ReasonContext(),
             direction: int | np.ndarray = RAISES) -> pd.Series:
    """A short phrase for each row about the value of ``feature`` and its norm.

    Parameters
    ----------
    feature : str
        The feature the phrase is about.
    rows : pandas.DataFrame
        The rows, with ``feature`` and any columns its template also quotes (those that are
        absent are left out of the phrase).
    context : ReasonContext
        Window lengths, horizon and peers' norms quoted in phrases.
    direction : int or numpy.ndarray
        1 where the feature raises the risk, -1 where it lowers it: the norm quoted is the first
        that reads the value that way (the first known one where none does) and a value that
        lowers the risk may be said differently ("bought 6 days ago").

    Returns
    -------
    pandas.Series
        Text, index aligned with ``rows``.

    Examples
    --------
    >>> rows = pd.DataFrame({"recency_days": [124.0], "mean_gap_days": [30.0]})
    >>> describe("recency_days", rows).iloc[0]
    'no purchase for 124 days, usually every 30'
    """
    template = _template_for(feature, rows)
    directions = _directions(direction, len(rows))
    value = rows[feature]
    present = value.notna().to_numpy()
    missing = template.missing.format(**context.settings())
    if not present.any():
        return pd.Series(missing, index=rows.index, dtype=object)
    every = present.all()
    shown = rows if every else rows.loc[present]
    statement = template.render(value if every else value[present], shown, context)
    keeps = present & (directions < 0)
    if template.keeps is not None and keeps.any():
        lowering = keeps[present]
        statement = _patched(statement, lowering, template.keeps(value[keeps], rows.loc[keeps], context), shown.index)
    texts = statement.to_numpy(dtype=object, copy=True)
    # The first norm that reads the value the row's way; where none does, the first one known.
    numbers = _numbers_of(template, feature, shown, context, np.ones(len(shown), dtype=bool))
    wants_above = _wants_above(template, directions[present])
    quoted = np.full(len(shown), -1, dtype=np.int8)
    fallback = np.full(len(shown), -1, dtype=np.int8)
    for k, norm in enumerate(template.norms):
        agrees, known = _agrees(template, norm, feature, shown, context, numbers, wants_above)
        quoted[(quoted < 0) & agrees] = k
        fallback[(fallback < 0) & known] = k
    quoted = np.where(quoted >= 0, quoted, fallback)
    for k, norm in enumerate(template.norms):
        using = quoted == k
        if using.any():
            rows_quoted = shown if using.all() else shown.loc[using]
            text = norm.text(feature, rows_quoted, context, template)
            texts[using] = texts[using] + (text if isinstance(text, str) else text.to_numpy(dtype=object))
    if every:
        return pd.Series(texts, index=rows.index, dtype=object)
    return _patched(missing, present, pd.Series(texts, index=shown.index, dtype=object), rows.index)


# Features that are a model's output rather than a behaviour, and the words that name a model.
MODEL_FEATURES = frozenset({PRIOR, "bgnbd_p_alive", "bgnbd_expected_purchases"})
_MODEL_WORDS = re.compile(r"BG/NBD|Pareto/NBD|buying pattern|P\(alive\)|chance of still being active", re.IGNORECASE)


def names_a_model(features: pd.Series, phrases: pd.Series) -> np.ndarray:
    """Whether each reason names a model (BG/NBD, its "buying pattern", P(alive)) rather than a
    behaviour: its feature is a model's output, or its phrase names one.

    Parameters
    ----------
    features, phrases : pandas.Series
        A reason's ``reason_k_feature`` and ``reason_k`` columns (missing where there is none).

    Returns
    -------
    numpy.ndarray
        Booleans, one per row; False where there is no reason.
    """
    by_feature = features.astype(object).isin(MODEL_FEATURES).to_numpy(dtype=bool)
    by_words = phrases.astype(object).fillna("").astype(str).str.contains(_MODEL_WORDS).to_numpy(dtype=bool)
    return by_feature | by_words


# --------------------------------------------------------------------------------------------
# The population's norms, the reasons' eligibility and phrases
# --------------------------------------------------------------------------------------------


def stable_norm(value: float) -> float:
    """A median rounded to 12 significant digits: two engines computing it (pandas, Spark) may
    differ in the last bits, which must not change a phrase or a comparison."""
    return float(f"{value:.12g}")


def most_common(values: pd.Series) -> str | None:
    """The most common text (ties: the first in sort order), None when there is none."""
    counts = values.dropna().astype("str").value_counts()
    if counts.empty:
        return None
    return str(min(counts.index[counts.to_numpy() == counts.max()]))


def peer_norms(frame: pd.DataFrame, features: Sequence[str]) -> dict[str, Any]:
    """The typical value of each of ``features`` among the rows of ``frame``: the peers' norm.

    Numbers: the median of the known values (rounded by :func:`stable_norm`); text: the most
    common value. Left out: features whose phrases do not quote the peers (flags, ratios with a
    fixed norm...), features absent from ``frame`` or without a known value.

    Returns
    -------
    dict
        ``{feature: float or str}``.
    """
    norms: dict[str, Any] = {}
    for feature in features:
        # Only the features whose phrases quote the peers: a median costs a pass over the column.
        if feature not in frame.columns or not quotes_peers(feature, not _is_number(frame[feature])):
            continue
        values = frame[feature]
        # Flags with missing values come as objects: still flags.
        if pd.api.types.is_bool_dtype(values.dtype) or pd.api.types.infer_dtype(values, skipna=True) == "boolean":
            continue
        if pd.api.types.is_numeric_dtype(values.dtype):
            numbers = values.to_numpy(dtype=float, na_value=np.nan)
            numbers = numbers[~np.isnan(numbers)]
            if numbers.size:
                norms[feature] = stable_norm(float(np.median(numbers)))
        elif (common := most_common(values)) is not None:
            norms[feature] = common
    return norms


def reason_eligibility(feature_names: Sequence[str], frame: pd.DataFrame, context: ReasonContext,
                       signs: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
    """Which contributions may be reasons: :func:`eligible` of every feature.

    Parameters
    ----------
    feature_names : sequence of str
        The contribution columns.
    frame : pandas.DataFrame
        The customers' features (and the columns their templates quote).
    context : ReasonContext
    signs : numpy.ndarray
        ``(rows,)``: 1 for rows whose reasons raise the risk, -1 for rows whose reasons lower it.
    positions : numpy.ndarray, optional
        The rows of ``frame`` that ``signs`` is about; default all.

    Returns
    -------
    numpy.ndarray
        ``(len(feature_names), rows)`` booleans; a name without a column in ``frame`` is not
        eligible, except ``btyd_prior``.
    """
    n_rows = len(signs)
    allowed = np.zeros((len(feature_names), n_rows), dtype=bool)
    for position, feature in enumerate(feature_names):
        if feature == PRIOR:
            allowed[position] = True
            continue
        if feature not in frame.columns:
            continue
        template = _template_for(feature, frame)
        needed = [c for c in dict.fromkeys((feature, *template.columns())) if c in frame.columns]
        rows = frame[needed] if positions is None else frame[needed].iloc[positions]
        allowed[position] = eligible(feature, rows, context, signs)
    return allowed


def reason_phrases(
    feature_names: Sequence[str], indices: np.ndarray, frame: pd.DataFrame, context: ReasonContext = ReasonContext(),
    directions: np.ndarray | None = None,
) -> np.ndarray:
    """Phrases for reason indices (as returned by :func:`churnml.models.contributions.churn_reasons`).

    Parameters
    ----------
    feature_names : sequence of str
    indices : numpy.ndarray
        ``(rows, slots)``: positions in ``feature_names``, -1 for none.
    frame : pandas.DataFrame
        The rows' features.
    context : ReasonContext
    directions : numpy.ndarray, optional
        ``(rows, slots)``: 1 where the reason raises the risk, -1 where it lowers it (the sign
        of its contribution); default 1.

    Returns
    -------
    numpy.ndarray
        An object array shaped like ``indices``; ``None`` where the index is -1.
    """
    n_slots = indices.shape[1]
    feature_at = indices.ravel()
    direction_at = np.ones(feature_at.shape) if directions is None else np.asarray(directions, dtype=float).ravel()
    phrases = np.full(feature_at.shape, None, dtype=object)
    listed = np.flatnonzero(feature_at >= 0)
    # Each feature's rows in all slots at once (a row names a feature in one slot at most), in
    # row order: one phrase call per feature, and row-ordered takes from the table.
    by_feature = listed[np.argsort(feature_at[listed], kind="stable")]
    for group in np.split(by_feature, np.flatnonzero(np.diff(feature_at[by_feature])) + 1):
        if not len(group):
            continue
        feature = feature_names[feature_at[group[0]]]
        template = _template_for(feature, frame)
        needed = [c for c in dict.fromkeys((feature, *template.columns())) if c in frame.columns]
        # Columns first: taking rows of the whole table would copy every column.
        rows = frame[needed].iloc[group // n_slots]
        phrases[group] = describe(feature, rows, context, direction_at[group]).to_numpy()
    return phrases.reshape(indices.shape)
