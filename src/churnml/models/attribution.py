"""The BTYD prior's contribution, attributed to the behaviours behind it.

A model boosted from a BTYD prior (``ChurnModel(prior="pnbd")``: Pareto/NBD's log expected
purchases, calibrated; ``prior="bgnbd"``: a blend of BG/NBD's log-odds and log expected
purchases) starts every customer's raw score at its prior (:meth:`ChurnModel.prior_log_odds`), a
closed-form function of the fit and three behaviours: how long since the last
purchase (recency ``T - t_x``), how many repeat purchases (frequency ``x``) and how long since
the first one (age ``T``). Its contribution, the prior relative to the training mean, names a
model rather than a behaviour; here it is split exactly over those three behaviours:

    prior(customer) - prior(reference) = share_recency + share_frequency + share_age

with the Shapley values of the game ``v(S)`` = the prior of a customer whose behaviours in ``S``
are the customer's and the others the reference customer's (three players, eight evaluations
of the closed form per customer; Shapley, 1953; the same "baseline Shapley" as Sundararajan and
Najmi, 2020). The reference customer is the median one of the population scored: median repeat
purchases, median weeks since the last purchase, median age. Each share is added to the model
feature that measures the same behaviour (:data:`BEHAVIOUR_FEATURES`); the reference's prior is
the same for everyone and goes into the bias. Contributions still add up to the raw score.

A model may also take BG/NBD's outputs as features (:data:`DERIVED_FEATURES`: P(alive), the
expected purchases), closed-form functions of the same three behaviours. The trees'
contribution of such a feature is passed on to the behaviours that moved it, from the
reference customer's value to the customer's, the way it moved, in proportion to their Shapley
shares of that change (:func:`passed_on`). Where all shares point one way this is the rescale
rule DeepLIFT and DeepSHAP use to carry contributions through a function (Shrikumar et al.,
2017; Lundberg and Lee, 2017); behaviours that pulled the other way get nothing, so that no
behaviour takes more than the whole contribution (the rescale rule would hand opposite
behaviours large opposite parts where they nearly cancel). Where the feature did not move, and
where its values do not come from the model's BG/NBD fit, the contribution stays with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from churnml.models.btyd import (
    BGNBD_FEATURE_COLUMNS,
    BGNBD_SOURCE_COLUMNS,
    bgnbd_inputs,
    bgnbd_probability_alive,
    expected_purchases,
    fitted_bgnbd_features,
)
from churnml.models.classifier import ChurnModel, _cutoff_key, _rows_by_cutoff, prior_terms_of_inputs

log = logging.getLogger(__name__)

BEHAVIOURS = ("recency", "frequency", "age")
# The feature columns that measure each behaviour, in order of preference: the first that is a
# model feature receives the behaviour's share. recency_days is T - t_x in days; frequency
# counts the purchases (repeat purchases x plus the first, so it moves with x) and reads more
# naturally than repeat_orders ("4 purchases so far"); purchase_age_days is T in days, and
# tenure_days (first seen, refunds included) stands in for it.
BEHAVIOUR_FEATURES: Mapping[str, tuple[str, ...]] = {
    "recency": ("recency_days",),
    "frequency": ("frequency", "repeat_orders"),
    "age": ("purchase_age_days", "tenure_days"),
}
# BG/NBD outputs a model may take as features (churnml.models.btyd.bgnbd_features).
DERIVED_FEATURES = BGNBD_FEATURE_COLUMNS
# Rows whose derived feature values are checked against the model's BG/NBD fit, per cutoff.
CHECKED_ROWS = 256
# Shapley weight of a coalition of s of the other two players: s! (3 - s - 1)! / 3!.
_WEIGHTS = (1.0 / 3.0, 1.0 / 6.0, 1.0 / 3.0)


@dataclass(frozen=True)
class PriorReference:
    """The customer the prior's shares are measured against, in BG/NBD's units.

    Attributes
    ----------
    x : float
        Repeat purchases.
    recency : float
        Weeks from the last purchase to the date (``T - t_x``).
    age : float
        Weeks from the first purchase to the date (``T``); at least ``recency``.
    """

    x: float
    recency: float
    age: float


@dataclass(frozen=True)
class PriorAttribution:
    """The prior's contribution of each row, split.

    Attributes
    ----------
    features : tuple of int
        For each behaviour of :data:`BEHAVIOURS`, the position of its feature among the model's
        features, -1 when the model has none of :data:`BEHAVIOUR_FEATURES` for it.
    shares : numpy.ndarray
        ``(rows, 3)``, log-odds: each behaviour's Shapley share of ``prior - reference``.
    reference : numpy.ndarray
        ``(rows,)``, log-odds: the reference customer's prior at the row's cutoff (the row's own
        prior where BG/NBD could not be fitted, or gave a mixed customer no finite prior: then
        every share is 0).
    derived : dict of int to numpy.ndarray
        For each BG/NBD output among the model's features (its position), ``(rows, 3)``: the
        part of its contribution each behaviour takes (rows that sum to 1; zeros where it stays
        with the feature).
    """

    features: tuple[int, ...]
    shares: np.ndarray
    reference: np.ndarray
    derived: dict[int, np.ndarray] = field(default_factory=dict)

    def unattributed(self) -> np.ndarray:
        """``(rows,)``: the shares of behaviours without a feature, which stay with the prior."""
        missing = [b for b, position in enumerate(self.features) if position < 0]
        return self.shares[:, missing].sum(axis=1) if missing else np.zeros(len(self.shares))

    def apply(self, columns: np.ndarray) -> np.ndarray:
        """Move the shares into contributions laid out a feature per row, ``(features, rows)``
        (modified in place); return what stays with the prior, :meth:`unattributed`."""
        for position, weights in self.derived.items():
            # Of the feature's contribution, each behaviour with a feature takes its part.
            contribution = columns[position].copy()
            for behaviour, target in enumerate(self.features):
                if target >= 0:
                    columns[target] += contribution * weights[:, behaviour]
                    columns[position] -= contribution * weights[:, behaviour]
        for behaviour, target in enumerate(self.features):
            if target >= 0:
                columns[target] += self.shares[:, behaviour]
        return self.unattributed()


def prior_input_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns of ``frame`` the attribution reads (the BG/NBD source columns, the BG/NBD
    outputs and ``cutoff``): taking rows of them alone copies a few columns, not the whole table."""
    return frame[[c for c in (*BGNBD_SOURCE_COLUMNS, *DERIVED_FEATURES, "cutoff") if c in frame.columns]]


def behaviour_features(feature_names: Sequence[str]) -> tuple[int, ...]:
    """Position among ``feature_names`` of the feature that takes each behaviour's share (-1: none)."""
    names = list(feature_names)
    return tuple(next((names.index(c) for c in BEHAVIOUR_FEATURES[b] if c in names), -1) for b in BEHAVIOURS)


def prior_references(features: pd.DataFrame) -> dict[str | None, PriorReference]:
    """The median customer of each cutoff, keyed as ``ChurnModel.population_priors_``.

    Parameters
    ----------
    features : pandas.DataFrame
        The population: the BG/NBD source columns (see :func:`churnml.models.btyd.bgnbd_inputs`)
        and, for several cutoffs, ``cutoff``.

    Returns
    -------
    dict
        ``{cutoff key: PriorReference}``; the key is None for a table without ``cutoff``.

    Raises
    ------
    KeyError
        If a BG/NBD source column is missing.
    """
    references = {}
    features = prior_input_columns(features)
    for cutoff, rows in _rows_by_cutoff(features).items():
        inputs = bgnbd_inputs(features.iloc[rows])
        x, t_x, age = (inputs[c].to_numpy(dtype=float) for c in ("x", "t_x", "T"))
        # Medians keep recency <= age: recency <= age on every row.
        references[_cutoff_key(cutoff)] = PriorReference(float(np.median(x)), float(np.median(age - t_x)),
                                                         float(np.median(age)))
    return references


def shapley_shares(game: Any, n_rows: int) -> np.ndarray:
    """Shapley values of three players, ``(n_rows, 3)``.

    Parameters
    ----------
    game : callable
        ``game(coalition)`` -> ``(n_rows,)`` values (or ``(n_rows, k)``: k games at once), where
        ``coalition`` is a tuple of three bools (which players take the row's own value); called
        once for each of the eight coalitions.
    n_rows : int

    Returns
    -------
    numpy.ndarray
        ``(n_rows, 3)`` (or ``(n_rows, 3, k)``): each row's values add up to
        ``game(all) - game(none)``.
    """
    values = {mask: np.asarray(game(tuple(bool(mask >> i & 1) for i in range(3))), dtype=float) for mask in range(8)}
    outputs = max((v.shape[1:] for v in values.values() if v.ndim > 1), default=())
    # Several games: a one-dimensional value is one number per game, the same for every row.
    values = {mask: np.broadcast_to(v[None, :] if outputs and v.ndim == 1 else v, (n_rows, *outputs))
              for mask, v in values.items()}
    shares = np.zeros((n_rows, 3, *outputs))
    for player in range(3):
        for mask in range(8):
            if mask >> player & 1:
                continue
            size = bin(mask).count("1")
            shares[:, player] += _WEIGHTS[size] * (values[mask | 1 << player] - values[mask])
    return shares


# The prior of customers given by their BG/NBD inputs (repeat purchases, weeks to the last
# purchase, weeks of age), in log-odds.
PriorOf = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def model_prior(model: ChurnModel, fitted: Any, derived: Sequence[str] | None = None, cutoff: Any = None) -> PriorOf:
    """The model's own prior (:meth:`ChurnModel.prior_log_odds`: the BTYD terms by
    :func:`churnml.models.classifier.prior_terms_of_inputs`, blended with the model's weights)
    with the fits ``fitted`` (a :class:`churnml.models.classifier.PriorFit`), for customers given
    by their BG/NBD inputs, ``(rows,)``; with
    ``derived`` (a list, maybe empty), ``(rows, 1 + len(derived))``: the prior, then those BG/NBD
    outputs (the columns of :func:`churnml.models.btyd.fitted_bgnbd_features` at the model's
    horizon). The expected purchases, the costly part (a hypergeometric function per customer),
    are computed once for the prior and the outputs unless the prior runs in a season's
    operational time (:meth:`ChurnModel.prior_horizon_days` at ``cutoff``).
    """
    horizon, target = int(model.horizon_days), model.target
    prior_horizon = model.prior_horizon_days(cutoff)
    reads_pnbd = fitted.counts_model(model.prior) is not fitted.bgnbd

    def prior_of(x: np.ndarray, t_x: np.ndarray, age: np.ndarray) -> np.ndarray:
        inputs = pd.DataFrame({"x": x, "t_x": t_x, "T": age})
        wanted = "bgnbd_expected_purchases" in (derived or ())
        expected = expected_purchases(fitted.bgnbd, inputs, horizon) if wanted or not reads_pnbd else None
        prior_expected = (None if reads_pnbd else expected if prior_horizon == horizon
                          else expected_purchases(fitted.bgnbd, inputs, prior_horizon))
        prior = model._blended(prior_terms_of_inputs(fitted, inputs, prior_horizon, target, prior_expected,
                                                     prior=model.prior))
        if derived is None:
            return prior
        outputs = {"bgnbd_p_alive": lambda: bgnbd_probability_alive(fitted.bgnbd, inputs),
                   "bgnbd_expected_purchases": lambda: expected}
        return np.column_stack([prior, *(np.asarray(outputs[name](), dtype=float) for name in derived)])

    return prior_of


def bgnbd_shares(prior_of: PriorOf, inputs: pd.DataFrame, prior: np.ndarray,
                 reference: PriorReference) -> tuple[np.ndarray, float]:
    """Shapley shares of recency, frequency and age in ``prior - prior(reference)``.

    Parameters
    ----------
    prior_of : callable
        ``prior_of(x, t_x, age)``: the prior of customers given by their BG/NBD inputs, in
        log-odds (:func:`model_prior`); ``(rows,)``, or ``(rows, k)`` for k values at once.
    inputs : pandas.DataFrame
        :func:`churnml.models.btyd.bgnbd_inputs` of the rows (weeks).
    prior : numpy.ndarray
        ``(rows,)`` (or ``(rows, k)``): the rows' own values as the model computed them (the
        value of the full coalition, so that the shares add up to it exactly).
    reference : PriorReference

    Returns
    -------
    shares : numpy.ndarray
        ``(rows, 3)`` (or ``(rows, 3, k)``), in the order of :data:`BEHAVIOURS`.
    reference_prior : float or numpy.ndarray
        The reference customer's value (``(k,)`` for k values).
    """
    x, t_x, age = (inputs[c].to_numpy(dtype=float) for c in ("x", "t_x", "T"))
    recency = age - t_x
    reference_value = np.asarray(prior_of(np.array([reference.x]), np.array([reference.age - reference.recency]),
                                          np.array([reference.age])), dtype=float)[0]
    reference_prior = float(reference_value) if reference_value.ndim == 0 else reference_value

    def game(coalition: tuple[bool, bool, bool]) -> np.ndarray | float:
        own_recency, own_x, own_age = coalition
        if all(coalition):
            return prior
        if not any(coalition):
            return reference_prior
        mixed_age = age if own_age else np.full(len(x), reference.age)
        if own_recency and own_age:
            mixed_t_x = t_x
        else:
            mixed_recency = recency if own_recency else reference.recency
            # A recency longer than the age would put the last purchase before the first: such
            # a mixed customer bought only once, at the start (t_x = 0).
            mixed_t_x = np.clip(mixed_age - mixed_recency, 0.0, mixed_age)
        mixed_x = x if own_x else np.full(len(x), reference.x)
        return prior_of(mixed_x, mixed_t_x, mixed_age)

    return shapley_shares(game, len(x)), reference_prior


def attribute_prior(model: ChurnModel, inputs: pd.DataFrame, prior: np.ndarray,
                    references: Mapping[str | None, PriorReference] | None = None) -> PriorAttribution:
    """Split each row's prior over the behaviours behind it, and find the parts of the
    contributions of BG/NBD's outputs among the features each behaviour takes (see the module's
    description).

    Parameters
    ----------
    model : ChurnModel
        A model with a BTYD prior whose fits are fixed (``with_population_prior``):
        the shares must come from the fit that gave ``prior``.
    inputs : pandas.DataFrame
        ``(rows, columns)``: the rows, with the BG/NBD source columns, the BG/NBD outputs among
        the model's features, and ``cutoff``.
    prior : numpy.ndarray
        ``(rows,)``: ``model.prior_log_odds(inputs)``.
    references : mapping, optional
        :func:`prior_references` of the population; default: those of ``inputs`` (pass the
        population's when ``inputs`` is one piece of it).

    Returns
    -------
    PriorAttribution

    Raises
    ------
    ValueError
        If the model's BG/NBD fit is not fixed.
    """
    fits = getattr(model, "population_priors_", None)
    if fits is None:
        raise ValueError("attribute the prior of a model whose BTYD fit is fixed (ChurnModel.with_population_prior)")
    inputs = prior_input_columns(inputs)
    references = references if references is not None else prior_references(inputs)
    prior = np.asarray(prior, dtype=float)
    shares = np.zeros((len(inputs), len(BEHAVIOURS)))
    # Where BG/NBD could not be fitted the prior is one number for all: it all goes to the bias.
    reference = prior.copy()
    names = list(model.feature_names_in_)
    derived = {names.index(n): np.zeros((len(inputs), len(BEHAVIOURS)))
               for n in DERIVED_FEATURES if n in names and n in inputs.columns}
    for cutoff, rows in _rows_by_cutoff(inputs).items():
        key = _cutoff_key(cutoff)
        fitted = fits.get(key)
        if fitted is None or key not in references:
            continue
        part = inputs.iloc[rows]
        from_fit = [names[p] for p in derived if _from_fit(fitted.bgnbd, part, names[p], int(model.horizon_days))]
        own = np.column_stack([prior[rows], *(part[n].to_numpy(dtype=float) for n in from_fit)])
        inputs_part = bgnbd_inputs(part)
        part_shares, reference_values = bgnbd_shares(model_prior(model, fitted, from_fit, cutoff), inputs_part, own,
                                                     references[key])
        prior_shares, reference_prior = part_shares[:, :, 0], float(np.atleast_1d(reference_values)[0])
        # A mixed customer BG/NBD gives no finite prior for: that row's prior goes to the bias whole.
        usable = np.isfinite(prior_shares).all(axis=1)
        shares[rows] = np.where(usable[:, None], prior_shares, 0.0)
        reference[rows] = np.where(usable, reference_prior, prior[rows])
        for k, name in enumerate(from_fit, start=1):
            derived[names.index(name)][rows] = passed_on(part_shares[:, :, k])
    return PriorAttribution(behaviour_features(names), shares, reference, derived)


def passed_on(shares: np.ndarray) -> np.ndarray:
    """The part of a feature's contribution each behaviour takes, ``(rows, 3)``, from their
    Shapley shares of the feature's change (``(rows, 3)``): the shares that moved it the way it
    moved, over their sum; the others get 0. Each row sums to 1, every part is in [0, 1]; rows
    where the feature did not move (or a share is unknown) are all 0: the contribution stays."""
    with np.errstate(invalid="ignore", divide="ignore"):
        total = shares.sum(axis=1)
        moved = np.isfinite(shares).all(axis=1) & (total != 0)
        along = np.where(shares * np.sign(total)[:, None] > 0, shares, 0.0)
        return np.where(moved[:, None], along / np.where(moved, along.sum(axis=1), 1.0)[:, None], 0.0)


def _from_fit(fitted: Any, part: pd.DataFrame, name: str, horizon_days: int) -> bool:
    """Whether the rows' ``name`` (a BG/NBD output) is what ``fitted`` gives them, on a sample:
    only then can its change be followed back to the behaviours through that fit."""
    sample = part.iloc[np.unique(np.linspace(0, len(part) - 1, min(CHECKED_ROWS, len(part))).astype(int))]
    expected = fitted_bgnbd_features(fitted, sample, horizon_days)[name].to_numpy(dtype=float)
    same = np.allclose(sample[name].to_numpy(dtype=float), expected, rtol=1e-9, atol=1e-12, equal_nan=True)
    if not same:
        log.info("%s does not come from the prior's BG/NBD fit: its contributions stay with it", name)
    return same


def with_fixed_prior(model: ChurnModel, population: pd.DataFrame) -> ChurnModel:
    """The model, or a copy whose BTYD prior is fitted once on ``population`` (as
    ``prior_log_odds`` would fit it on those rows), so that the prior and its shares come from
    one fit."""
    if not getattr(model, "prior", None) or getattr(model, "population_priors_", None) is not None:
        return model
    return model.with_population_prior(population)
