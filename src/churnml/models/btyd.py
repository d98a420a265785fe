"""Buy-till-you-die models: BG/NBD and Pareto/NBD fitted at a date, P(alive), purchase probabilities, features.

BG/NBD (Fader, Hardie and Lee, 2005) is ``lifetimes``' model, fitted in weeks on lifetimes'
objective with its gradient in closed form (lifetimes' own fit differentiates with autograd and
takes over four times as long on large tables). Pareto/NBD (Schmittlein, Morrison and Colombo,
1987) is lifetimes' model too, fitted on lifetimes' likelihood. Both read ``x`` (repeat
purchases), ``t_x`` (time from the first to the last purchase) and ``T`` (time from the first
purchase to the date) from the feature table at one date, so a fit only ever sees history up
to it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from churnml.features.labels import TARGETS

if TYPE_CHECKING:
    import lifetimes

log = logging.getLogger(__name__)

DAYS_PER_WEEK = 7.0
PROBABILITY_FLOOR = 1e-6
BGNBD_INPUT_COLUMNS = ("x", "t_x", "T")
# The feature columns bgnbd_inputs reads them from.
BGNBD_SOURCE_COLUMNS = ("frequency", "repeat_orders", "purchase_span_days", "purchase_age_days", "tenure_days")
BGNBD_PARAMETERS = ("r", "alpha", "a", "b")
BGNBD_FEATURE_COLUMNS = ("bgnbd_p_alive", "bgnbd_expected_purchases")
DEFAULT_PENALIZERS = (0.0, 0.001, 0.01, 0.1, 1.0)
# Larger tables start their BG/NBD fit from a fit on a sample of about this many customers.
WARM_START_CUSTOMERS = 50_000
# Pareto/NBD's likelihood costs far more per customer (hypergeometric terms): its fits start from
# a sample on tables of more than twice this many customers.
PNBD_WARM_START_CUSTOMERS = 5_000
PNBD_PARAMETERS = ("r", "alpha", "s", "beta")
# Pareto/NBD log-parameters (times scaled so that the largest age is 1) beyond this are not tried.
PNBD_LOG_PARAMETER_BOUND = 4.0
PNBD_MAX_ITERATIONS = 100
# Gauss-Jacobi nodes of BG/NBD's expected purchases by quadrature: agrees with the closed form to
# about 1e-11 (relative) where that one is finite.
QUADRATURE_NODES = 40


class BGNBDFitError(RuntimeError):
    """BG/NBD could not be fitted with any of the penalizers tried."""


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")


def _require_columns(features: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in features.columns]
    if missing:
        raise KeyError(f"{what} needs the feature columns {missing}, which are missing")


def _as_float(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values, errors="raise").to_numpy(dtype=float, na_value=np.nan)


# --------------------------------------------------------------------------------------------
# BG/NBD
# --------------------------------------------------------------------------------------------


def bgnbd_inputs(features: pd.DataFrame) -> pd.DataFrame:
    """BG/NBD inputs ``x``, ``t_x`` and ``T`` (in weeks) for each row of a feature table.

    Parameters
    ----------
    features : pandas.DataFrame
        Feature table at one cutoff with ``frequency``, ``repeat_orders``,
        ``purchase_span_days``, ``purchase_age_days`` and ``tenure_days``.

    Returns
    -------
    pandas.DataFrame
        Columns ``x`` (repeat purchases), ``t_x`` (``purchase_span_days / 7``) and ``T``
        (``purchase_age_days / 7``), index aligned with ``features``. Customers without any
        purchase (refunds only) get ``x = 0``, ``t_x = 0`` and ``T = max(tenure_days, 1) / 7``:
        BG/NBD has no notion of a customer who never bought, and treating them as one-time buyers
        known for their tenure keeps them scorable.
    """
    _require_columns(features, BGNBD_SOURCE_COLUMNS, "BG/NBD")
    frequency = _as_float(features["frequency"])
    has_purchase = np.nan_to_num(frequency, nan=0.0) > 0
    repeat = np.where(has_purchase, _as_float(features["repeat_orders"]), 0.0)
    span_days = np.where(has_purchase, _as_float(features["purchase_span_days"]), 0.0)
    tenure_days = np.fmax(_as_float(features["tenure_days"]), 1.0)
    age_days = np.where(has_purchase, _as_float(features["purchase_age_days"]), tenure_days)
    inputs = pd.DataFrame(
        {"x": repeat, "t_x": span_days / DAYS_PER_WEEK, "T": age_days / DAYS_PER_WEEK},
        index=features.index,
    )
    if not np.isfinite(inputs.to_numpy()).all():
        bad = inputs.index[~np.isfinite(inputs.to_numpy()).all(axis=1)]
        raise ValueError(f"BG/NBD inputs are missing for {len(bad)} rows, e.g. {list(bad[:5])}")
    return inputs


def _input_arrays(inputs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # lifetimes 0.11 predates pandas 3 and mis-handles Series arguments; plain arrays are safe.
    _require_columns(inputs, BGNBD_INPUT_COLUMNS, "BG/NBD")
    return tuple(inputs[c].to_numpy(dtype=float) for c in BGNBD_INPUT_COLUMNS)  # type: ignore[return-value]


@contextlib.contextmanager
def _quiet_lifetimes():
    # lifetimes prints the optimiser's state when it fails and resets the global warning filters
    # inside its likelihood; keep both from leaking into the caller's console and settings.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def bgnbd_negative_log_likelihood(
    log_params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, penalizer: float = 0.0,
    x_counts: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[float, np.ndarray]:
    """BG/NBD's mean negative log-likelihood and its gradient in the log-parameters.

    The objective of lifetimes' ``BetaGeoFitter`` (Fader, Hardie and Lee, 2005, eq. 6, with its
    L2 penalizer on the parameters), with the gradient in closed form: lifetimes differentiates
    it with autograd (and then computes the Hessian), which makes its fit over four times as
    long on a million customers. The terms in ``x`` alone are summed over the distinct values of
    ``x``.

    Parameters
    ----------
    log_params : numpy.ndarray
        ``log(r), log(alpha), log(a), log(b)``.
    x, t_x, T : numpy.ndarray
        Repeat purchases, time of the last purchase and age, as for :func:`fit_bgnbd`.
    penalizer : float
        Coefficient of ``sum(params ** 2)``.
    x_counts : tuple of numpy.ndarray, optional
        ``np.unique(x, return_counts=True)``, passed in by an optimiser that calls this often.

    Returns
    -------
    value : float
    gradient : numpy.ndarray
        ``(4,)``, with respect to ``log_params``.
    """
    from scipy.special import digamma, gammaln

    r, alpha, a, b = params = np.exp(log_params)
    n = len(x)
    values, counts = x_counts if x_counts is not None else np.unique(x, return_counts=True)
    # The per-value terms, weighted by how many customers have that x.
    a1 = counts @ (gammaln(r + values) - gammaln(r)) + n * r * np.log(alpha)
    a2 = counts @ (gammaln(a + b) + gammaln(b + values) - gammaln(b) - gammaln(a + b + values))
    d_r = counts @ (digamma(r + values) - digamma(r)) + n * np.log(alpha)
    d_alpha = n * r / alpha
    d_a = counts @ (digamma(a + b) - digamma(a + b + values))
    d_b = counts @ (digamma(a + b) + digamma(b + values) - digamma(b) - digamma(a + b + values))

    log_age, log_last = np.log(alpha + T), np.log(alpha + t_x)
    a3 = -(r + x) * log_age
    a4 = np.log(a) - np.log(b + np.maximum(x, 1) - 1) - (r + x) * log_last
    repeat = x > 0
    both = np.where(repeat, np.logaddexp(a3, a4), a3)
    # Shares of the two terms in exp(a3) + exp(a4): all a3 for customers without a repeat.
    share_4 = np.where(repeat, np.exp(a4 - both), 0.0)
    share_3 = 1.0 - share_4
    d_r -= share_3 @ log_age + share_4 @ log_last
    d_alpha -= share_3 @ ((r + x) / (alpha + T)) + share_4 @ ((r + x) / (alpha + t_x))
    d_a += share_4.sum() / a
    d_b -= share_4 @ (1.0 / (b + np.maximum(x, 1) - 1))

    value = -(a1 + a2 + both.sum()) / n + penalizer * float(params @ params)
    gradient = -np.array([d_r, d_alpha, d_a, d_b]) / n * params + 2.0 * penalizer * params**2
    return float(value), gradient


def fit_bgnbd_parameters(
    x: np.ndarray, t_x: np.ndarray, T: np.ndarray, penalizer: float = 0.0,
    warm_start_customers: int | None = WARM_START_CUSTOMERS,
) -> np.ndarray:
    """``r, alpha, a, b`` that minimise :func:`bgnbd_negative_log_likelihood`.

    As lifetimes fits: times scaled so that the largest age is 1, BFGS from log-parameters 0.1.
    On more than four times ``warm_start_customers`` customers, BFGS first runs on an evenly
    spaced sample of about that many, and the fit on every customer starts from the sample's
    optimum and curvature: a few steps over the whole table instead of about thirty, to the same
    optimum (within the optimiser's tolerance). None fits on every customer from the start.

    Raises
    ------
    BGNBDFitError
        If the optimiser does not converge.
    """
    from scipy.optimize import minimize

    scale = 1.0 / float(np.max(T))

    def minimised(rows: slice, start: np.ndarray, inverse_hessian: np.ndarray | None = None):
        part = x[rows]
        args = (part, t_x[rows] * scale, T[rows] * scale, penalizer, np.unique(part, return_counts=True))
        options = {} if inverse_hessian is None else {"hess_inv0": inverse_hessian}
        return minimize(bgnbd_negative_log_likelihood, x0=start, args=args, jac=True, method="BFGS", tol=1e-7,
                        options=options)

    cold_start = np.full(4, 0.1)
    result = None
    if warm_start_customers and len(x) > 4 * warm_start_customers:
        sample = minimised(slice(None, None, len(x) // warm_start_customers), cold_start)
        curvature = (sample.hess_inv + sample.hess_inv.T) / 2
        if sample.success and np.all(np.linalg.eigvalsh(curvature) > 0):
            result = minimised(slice(None), sample.x, curvature)
    if result is None or not result.success:
        result = minimised(slice(None), cold_start)
    if not result.success:
        raise BGNBDFitError(f"the optimiser did not converge: {result.message}")
    params = np.exp(result.x)
    params[1] /= scale
    return params


def fit_bgnbd(inputs: pd.DataFrame, penalizers: Sequence[float] = DEFAULT_PENALIZERS) -> "lifetimes.BetaGeoFitter":
    """Fit BG/NBD, retrying with stronger penalizers when the optimiser fails.

    The parameters come from :func:`fit_bgnbd_parameters` (lifetimes' objective, minimised with
    its gradient in closed form); the returned model is lifetimes' own, so every prediction is
    lifetimes'. Its standard errors are not computed.

    Parameters
    ----------
    inputs : pandas.DataFrame
        Output of :func:`bgnbd_inputs` (times in weeks).
    penalizers : sequence of float
        L2 penalizer coefficients tried in order; the first fit that converges with finite
        parameters is returned.

    Returns
    -------
    lifetimes.BetaGeoFitter
        The fitted model; ``params_`` holds ``r``, ``alpha`` (weeks), ``a`` and ``b``.

    Raises
    ------
    BGNBDFitError
        If every penalizer fails, naming the penalizers tried and the last error.
    """
    from lifetimes import BetaGeoFitter

    return _fit_with_penalizers("BG/NBD", fit_bgnbd_parameters, BetaGeoFitter, BGNBD_PARAMETERS,
                                BGNBDFitError, inputs, penalizers)


def _fit_with_penalizers(what: str, fit_parameters: Any, fitter: type, names: Sequence[str], error: type,
                         inputs: pd.DataFrame, penalizers: Sequence[float]) -> Any:
    """The first fit of ``fit_parameters(x, t_x, T, penalizer)`` over ``penalizers`` that gives
    finite positive parameters, as a lifetimes ``fitter`` with ``params_`` ``names``.

    Raises
    ------
    error
        If every penalizer fails, naming the penalizers tried and the last error.
    """
    if len(inputs) == 0:
        raise error(f"{what} cannot be fitted on an empty table")
    if not penalizers:
        raise ValueError(f"a {what} fit needs at least one penalizer")
    x, t_x, T = _input_arrays(inputs)
    last_error: BaseException | None = None
    for penalizer in penalizers:
        try:
            with np.errstate(all="ignore"):
                params = fit_parameters(x, t_x, T, float(penalizer))
        # Real retail data can make the optimiser fail or overflow: try a stronger penalizer.
        except Exception as failure:  # noqa: BLE001
            last_error = failure
            log.debug("%s fit with penalizer %s failed: %r", what, penalizer, failure)
            continue
        if not np.isfinite(params).all() or (params <= 0).any():
            last_error = ValueError(f"non-finite or non-positive parameters {dict(zip(names, params))}")
            continue
        if penalizer != penalizers[0]:
            log.info("%s converged with penalizer %s", what, penalizer)
        model = fitter(penalizer_coef=float(penalizer))
        model.params_ = pd.Series(params, index=list(names))
        return model
    tried = ", ".join(str(p) for p in penalizers)
    message = str(last_error).strip() or type(last_error).__name__
    raise error(
        f"{what} did not fit with any penalizer ({tried}); last error: {type(last_error).__name__}: {message}"
    ) from last_error


def bgnbd_probability_alive(model: "lifetimes.BetaGeoFitter", inputs: pd.DataFrame) -> np.ndarray:
    """P(alive at the cutoff) for each row of ``inputs`` (1 for customers without repeat purchases).

    Parameters
    ----------
    model : lifetimes.BetaGeoFitter
        A fitted model.
    inputs : pandas.DataFrame
        Output of :func:`bgnbd_inputs`.

    Returns
    -------
    numpy.ndarray
    """
    x, t_x, T = _input_arrays(inputs)
    with _quiet_lifetimes():
        return np.asarray(model.conditional_probability_alive(x, t_x, T), dtype=float)


def bgnbd_probability_no_purchase(
    model: "lifetimes.BetaGeoFitter", inputs: pd.DataFrame, horizon_days: float
) -> np.ndarray:
    """P(no purchase in the ``horizon_days`` after the cutoff | x, t_x, T) under BG/NBD.

    ``lifetimes`` 0.11 implements the conditional purchase-count distribution only for the
    Pareto/NBD model, so the ``n = 0`` case of the BG/NBD one is computed here. A customer makes
    no purchase in the next ``t`` weeks if already inactive, or if active and the Poisson process
    stays silent (in BG/NBD a customer can only drop out right after a purchase)::

        P(N = 0) = 1 - P(alive) + P(alive) * ((alpha + T) / (alpha + T + t)) ** (r + x)

    Parameters
    ----------
    model : lifetimes.BetaGeoFitter
        A fitted model.
    inputs : pandas.DataFrame
        Output of :func:`bgnbd_inputs`.
    horizon_days : float
        Length of the label window in days.

    Returns
    -------
    numpy.ndarray
        Probabilities in [0, 1], not clipped.
    """
    if horizon_days <= 0:
        raise ValueError(f"horizon_days must be positive, got {horizon_days}")
    x, _, T = _input_arrays(inputs)
    r, alpha = (float(model.params_[k]) for k in ("r", "alpha"))
    horizon_weeks = horizon_days / DAYS_PER_WEEK
    p_alive = bgnbd_probability_alive(model, inputs)
    log_silent = (r + x) * (np.log(alpha + T) - np.log(alpha + T + horizon_weeks))
    # 1 - P(alive) * (1 - silent), with expm1 so that tiny purchase chances are not lost.
    return 1.0 - p_alive * -np.expm1(log_silent)


def bgnbd_probability(
    model: "lifetimes.BetaGeoFitter", inputs: pd.DataFrame, horizon_days: int, target: str
) -> np.ndarray:
    """Probability of the positive class of ``target`` under a fitted BG/NBD model.

    Parameters
    ----------
    model : lifetimes.BetaGeoFitter
        A fitted model (see :func:`fit_bgnbd`).
    inputs : pandas.DataFrame
        Output of :func:`bgnbd_inputs` for the rows to score, at the cutoff the model was fitted at.
    horizon_days : int
        Length of the label window in days.
    target : {"churn", "repurchase"}
        ``churn``: P(no purchase in the horizon); ``repurchase``: 1 minus that.

    Returns
    -------
    numpy.ndarray
        Probabilities clipped to ``[1e-6, 1 - 1e-6]``.

    Raises
    ------
    ValueError
        For an unknown target or if the model produces non-finite probabilities.
    """
    _check_target(target)
    no_purchase = bgnbd_probability_no_purchase(model, inputs, horizon_days)
    probability = no_purchase if target == "churn" else 1.0 - no_purchase
    if not np.isfinite(probability).all():
        raise ValueError(f"BG/NBD gave non-finite probabilities with parameters {model.params_.to_dict()}")
    return np.clip(probability, PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)


def _bgnbd_snapshot_features(features: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
    try:
        model = fit_bgnbd(bgnbd_inputs(features))
    except BGNBDFitError as error:
        log.warning("BG/NBD features are missing for %s rows: %s", len(features), error)
        return pd.DataFrame(np.nan, index=features.index, columns=list(BGNBD_FEATURE_COLUMNS))
    return fitted_bgnbd_features(model, features, horizon_days)


def fitted_bgnbd_features(model: "lifetimes.BetaGeoFitter", features: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
    """:func:`bgnbd_features` from a model fitted beforehand, for a table scored in pieces (Spark
    partitions) whose BG/NBD must be the whole population's.

    Parameters
    ----------
    model : lifetimes.BetaGeoFitter
        Fitted on the whole table at the same cutoff (see :func:`fit_bgnbd`).
    features : pandas.DataFrame
        Rows at that cutoff (see :func:`bgnbd_inputs` for the columns used).
    horizon_days : int
        Horizon for the expected number of purchases, in days.

    Returns
    -------
    pandas.DataFrame
        Columns ``bgnbd_p_alive`` and ``bgnbd_expected_purchases``, index aligned with ``features``.
    """
    inputs = bgnbd_inputs(features)
    return pd.DataFrame(
        {"bgnbd_p_alive": bgnbd_probability_alive(model, inputs),
         "bgnbd_expected_purchases": expected_purchases(model, inputs, horizon_days)},
        index=features.index,
    )


def expected_purchases(
    model: "lifetimes.BetaGeoFitter | lifetimes.ParetoNBDFitter", inputs: pd.DataFrame, horizon_days: float
) -> np.ndarray:
    """Expected number of purchases in the ``horizon_days`` after the cutoff, given each history.

    For BG/NBD, lifetimes' ``conditional_expected_number_of_purchases_up_to_time`` (model fitted
    in weeks), and where its Gaussian hypergeometric term is not finite (``a + b + x < 1``, as for
    customers without repeat purchases when ``a + b < 1``), the same expectation by quadrature
    (:func:`bgnbd_expected_purchases_by_quadrature`). For Pareto/NBD the same formula as lifetimes' (Schmittlein, Morrison and Colombo,
    1987), ``P(alive) (r + x)(beta + T) / ((alpha + T)(s - 1)) [1 - ((beta + T) / (beta + T + t))^(s - 1)]``,
    with :func:`pnbd_probability_alive`, which stays finite where lifetimes' overflows.

    Parameters
    ----------
    model : lifetimes.BetaGeoFitter or lifetimes.ParetoNBDFitter
        A fitted model (see :func:`fit_bgnbd` and :func:`fit_pnbd`).
    inputs : pandas.DataFrame
        Output of :func:`bgnbd_inputs`.
    horizon_days : float
        Length of the horizon in days.

    Returns
    -------
    numpy.ndarray
        Non-negative expected counts; NaN where the model's formula does not give a finite value
        (a missing value is better than a wrong one: tree models route NaN on their own).
    """
    x, t_x, T = _input_arrays(inputs)
    t = horizon_days / DAYS_PER_WEEK
    if set(PNBD_PARAMETERS) <= set(model.params_.index):
        r, alpha, s, beta = (float(model.params_[k]) for k in PNBD_PARAMETERS)
        log_shrink = np.log(beta + T) - np.log(beta + T + t)
        # [1 - q^(s - 1)] / (s - 1), written so that it stays exact as s approaches 1.
        decay = -np.expm1((s - 1.0) * log_shrink) / (s - 1.0) if s != 1.0 else -log_shrink
        with np.errstate(all="ignore"):
            expected = pnbd_probability_alive(model, inputs) * (r + x) * (beta + T) / (alpha + T) * decay
    else:
        with _quiet_lifetimes():
            expected = np.asarray(model.conditional_expected_number_of_purchases_up_to_time(t, x, t_x, T), dtype=float)
        broken = ~np.isfinite(expected)
        if broken.any():
            r, alpha, a, b = (float(model.params_[k]) for k in BGNBD_PARAMETERS)
            alive = bgnbd_probability_alive(model, inputs)[broken]
            expected[broken] = alive * bgnbd_expected_purchases_by_quadrature(
                r, alpha, a, b, x[broken], T[broken], t)
    return np.where(np.isfinite(expected), np.maximum(expected, 0.0), np.nan)


def bgnbd_expected_purchases_by_quadrature(
    r: float, alpha: float, a: float, b: float, x: np.ndarray, T: np.ndarray, horizon_weeks: float,
    nodes: int = QUADRATURE_NODES,
) -> np.ndarray:
    """BG/NBD's expected purchases in the next ``horizon_weeks`` of a customer alive at ``T``,
    shape ``(n_rows,)``; times in weeks.

    Alive at ``T`` after ``x`` repeat purchases, the purchase rate ``lambda`` follows
    ``Gamma(r + x, alpha + T)`` and the dropout probability ``p`` ``Beta(a, b + x)``,
    independently; an alive customer makes ``(1 - exp(-lambda p t)) / p`` purchases in ``t`` on
    average (Fader, Hardie and Lee, 2005). Integrating ``lambda`` out gives
    ``E = E_p[(1 - ((alpha + T) / (alpha + T + p t))^(r + x)) / p]``, computed by Gauss-Jacobi
    quadrature (SciPy's ``roots_jacobi``) with the beta density as the weight, one set of nodes per
    distinct ``x``. It equals the closed form's hypergeometric expression (eq. 10 of the paper,
    divided by P(alive)) wherever that one is finite, and stays finite where it is not, up to
    about a thousand repeat purchases (beyond, the quadrature weights overflow: NaN).
    """
    from scipy.special import roots_jacobi

    x, T = np.asarray(x, dtype=float), np.asarray(T, dtype=float)
    expected = np.empty(len(x))
    for repeats in np.unique(x):
        rows = x == repeats
        # Weight (1 - u)^(b + x - 1) (1 + u)^(a - 1) on [-1, 1] is the Beta(a, b + x) density of p = (1 + u) / 2.
        with np.errstate(all="ignore"):
            u, weights = roots_jacobi(nodes, b + repeats - 1.0, a - 1.0)
        dropout = (1.0 + u) / 2.0
        ratio = horizon_weeks / (alpha + T[rows])
        total = np.zeros(int(rows.sum()))
        for p, weight in zip(dropout, weights):
            total += weight * -np.expm1(-(r + repeats) * np.log1p(ratio * p)) / p
        with np.errstate(all="ignore"):
            expected[rows] = total / weights.sum()
    return expected


def bgnbd_features(features: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
    """BG/NBD P(alive) and expected purchases in the horizon, as model features.

    The model is fitted on the rows' own history (features at their cutoff), so no information
    from after the cutoff is used. A table that stacks several cutoffs (a ``cutoff`` column with
    more than one value) gets one fit per cutoff, so that an early snapshot's features never
    depend on a later snapshot's rows.

    Parameters
    ----------
    features : pandas.DataFrame
        Feature table (see :func:`bgnbd_inputs` for the columns used).
    horizon_days : int
        Horizon for the expected number of purchases, in days.

    Returns
    -------
    pandas.DataFrame
        Columns ``bgnbd_p_alive`` and ``bgnbd_expected_purchases``, index aligned with
        ``features``. If BG/NBD cannot be fitted, both columns are NaN and a warning is logged:
        a feature must not stop training.
    """
    if "cutoff" not in features.columns or features["cutoff"].nunique(dropna=False) <= 1:
        return _bgnbd_snapshot_features(features, horizon_days)
    # Positional index: a stacked table usually repeats customer ids across cutoffs.
    positional = features.reset_index(drop=True)
    parts = [
        _bgnbd_snapshot_features(snapshot, horizon_days)
        for _, snapshot in positional.groupby("cutoff", sort=False, dropna=False)
    ]
    return pd.concat(parts).sort_index().set_axis(features.index, axis=0)


def uses_bgnbd_features(model: Any) -> bool:
    """Whether ``model`` was trained with BG/NBD's P(alive) and expected purchases as features
    (``train.bgnbd_features``): its input table then needs them (:func:`bgnbd_features`)."""
    return bool(set(BGNBD_FEATURE_COLUMNS) & set(model.feature_names_in_))


# --------------------------------------------------------------------------------------------
# Pareto/NBD
# --------------------------------------------------------------------------------------------


class ParetoNBDFitError(RuntimeError):
    """Pareto/NBD could not be fitted with any of the penalizers tried."""


def pnbd_negative_log_likelihood(
    log_params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, weights: np.ndarray,
    penalizer: float = 0.0,
) -> float:
    """Pareto/NBD's mean negative log-likelihood per customer, with an L2 penalizer.

    The individual log-likelihood is lifetimes' ``ParetoNBDFitter._conditional_log_likelihood``
    (Schmittlein, Morrison and Colombo, 1987; Fader and Hardie's note "A Note on Deriving the
    Pareto/NBD Model and Related Expressions", 2005, eq. 18). It is averaged over customers, as
    BG/NBD's objective is, so a penalizer weighs the same in both; lifetimes' own Pareto/NBD
    objective sums over customers instead.

    Parameters
    ----------
    log_params : numpy.ndarray
        ``log(r), log(alpha), log(s), log(beta)``.
    x, t_x, T : numpy.ndarray
        Distinct purchase histories (repeat purchases, time of the last purchase, age).
    weights : numpy.ndarray
        Number of customers with each history.
    penalizer : float
        Coefficient of ``sum(params ** 2)``.

    Returns
    -------
    float
        ``inf`` where the likelihood is not finite (lifetimes' hypergeometric terms overflow for
        some parameters) or a log-parameter (times scaled as in :func:`fit_pnbd_parameters`) lies
        beyond :data:`PNBD_LOG_PARAMETER_BOUND`, so that an optimiser steps back. The bound keeps
        a fit from chasing an optimum at infinity (homogeneous dropout: ``s`` and ``beta`` grow
        together), where each evaluation of the hypergeometric terms grows slower.
    """
    from lifetimes import ParetoNBDFitter

    if np.any(np.abs(log_params) > PNBD_LOG_PARAMETER_BOUND):
        return np.inf
    params = np.exp(log_params)
    with np.errstate(all="ignore"):
        log_likelihood = ParetoNBDFitter._conditional_log_likelihood(params, x, t_x, T)
        value = -float(weights @ log_likelihood) / float(weights.sum()) + penalizer * float(params @ params)
    return value if np.isfinite(value) else np.inf


def fit_pnbd_parameters(
    x: np.ndarray, t_x: np.ndarray, T: np.ndarray, penalizer: float = 0.0,
    warm_start_customers: int | None = PNBD_WARM_START_CUSTOMERS,
) -> np.ndarray:
    """``r, alpha, s, beta`` that minimise :func:`pnbd_negative_log_likelihood`.

    Customers with the same history are counted once, with a weight; times are scaled so that
    the largest age is 1, as lifetimes does. BFGS (finite-difference gradient) from parameters 1,
    lifetimes' start: on CDNOW's 23,570 customers about 175 likelihood evaluations, under a
    second, where lifetimes' own Nelder-Mead fit takes about ten times as long to the same
    optimum. On more than twice ``warm_start_customers`` customers, BFGS first runs on an
    evenly spaced sample of about that many, and the fit on every customer starts from the
    sample's optimum and curvature, so a million customers cost a few evaluations on the whole
    table; when the sample does not converge the fit fails without trying the whole table, so
    that a penalizer that cannot work costs a sample's fit. None fits on every customer from the
    start. At most :data:`PNBD_MAX_ITERATIONS` BFGS iterations per fit.

    BFGS ending on "precision loss" with a gradient below :data:`PNBD_STALL_GRADIENT` counts as
    converged: on the likelihood's flat ridge (nearly the same dropout rate for everyone, ``s``
    and ``beta`` growing together) the line search stalls where the value no longer moves; on the
    demo shop such a stop was within 2e-4 nats per customer of Nelder-Mead's optimum.

    Raises
    ------
    ParetoNBDFitError
        If the optimiser does not converge.
    """
    from scipy.optimize import minimize

    scale = 1.0 / float(np.max(T))

    def minimised(rows: slice, start: np.ndarray, inverse_hessian: np.ndarray | None = None):
        histories, weights = np.unique(np.column_stack([x[rows], t_x[rows] * scale, T[rows] * scale]),
                                       axis=0, return_counts=True)
        args = (histories[:, 0], histories[:, 1], histories[:, 2], weights.astype(float), penalizer)
        options = {} if inverse_hessian is None else {"hess_inv0": inverse_hessian}
        return minimize(pnbd_negative_log_likelihood, x0=start, args=args, method="BFGS", jac="3-point", tol=1e-7,
                        options={"maxiter": PNBD_MAX_ITERATIONS, **options})

    cold_start = np.zeros(4)
    if warm_start_customers and len(x) > 2 * warm_start_customers:
        sample = minimised(slice(None, None, len(x) // warm_start_customers), cold_start)
        curvature = (sample.hess_inv + sample.hess_inv.T) / 2
        # A sample that does not converge says the whole table will not either: fail fast.
        if not (_stopped_at_optimum(sample) and np.all(np.linalg.eigvalsh(curvature) > 0)):
            raise ParetoNBDFitError(f"the optimiser did not converge on a sample: {sample.message}")
        result = minimised(slice(None), sample.x, curvature)
    else:
        result = minimised(slice(None), cold_start)
    if not _stopped_at_optimum(result):
        raise ParetoNBDFitError(f"the optimiser did not converge: {result.message}")
    params = np.exp(result.x)
    params[[1, 3]] /= scale
    return params


# scipy's BFGS status when the line search could not lower the objective any further.
_PRECISION_LOSS = 2
# Largest gradient (mean negative log-likelihood per customer, by log-parameter) at which a stop on
# precision loss counts as the optimum; such stops on the demo shop ended at 0.017 at most, where
# a stop at the parameter bound (an optimum beyond it) has gradients of whole units.
PNBD_STALL_GRADIENT = 0.05


def _stopped_at_optimum(result: Any) -> bool:
    stalled = (result.status == _PRECISION_LOSS and np.isfinite(result.fun) and np.all(np.isfinite(result.x))
               and np.all(np.isfinite(result.jac)) and np.max(np.abs(result.jac)) < PNBD_STALL_GRADIENT)
    return bool(result.success or stalled)


def fit_pnbd(inputs: pd.DataFrame, penalizers: Sequence[float] = DEFAULT_PENALIZERS) -> "lifetimes.ParetoNBDFitter":
    """Fit Pareto/NBD on the BG/NBD inputs, retrying with stronger penalizers when the optimiser fails.

    Parameters
    ----------
    inputs : pandas.DataFrame
        Output of :func:`bgnbd_inputs` (times in weeks): Pareto/NBD reads the same ``x``, ``t_x``
        and ``T``.
    penalizers : sequence of float
        L2 penalizer coefficients tried in order; the first fit that converges with finite
        positive parameters is returned.

    Returns
    -------
    lifetimes.ParetoNBDFitter
        lifetimes' model with ``params_`` ``r``, ``alpha`` (weeks), ``s`` and ``beta`` (weeks)
        from :func:`fit_pnbd_parameters`, so that every prediction is lifetimes'.

    Raises
    ------
    ParetoNBDFitError
        If every penalizer fails, naming the penalizers tried and the last error.
    """
    from lifetimes import ParetoNBDFitter

    return _fit_with_penalizers("Pareto/NBD", fit_pnbd_parameters, ParetoNBDFitter, PNBD_PARAMETERS,
                                ParetoNBDFitError, inputs, penalizers)


def gamma_share(shape_1: np.ndarray, rate_1: np.ndarray, shape_2: np.ndarray, rate_2: np.ndarray) -> np.ndarray:
    """``E[lambda / (lambda + mu)]`` for independent ``lambda ~ Gamma(shape_1, rate_1)`` and
    ``mu ~ Gamma(shape_2, rate_2)``.

    With ``W = U / (U + V) ~ Beta(a1, a2)`` for the unit-rate gammas ``U, V``,
    ``lambda / (lambda + mu) = W / (c - (c - 1) W)`` with ``c = rate_1 / rate_2``, and Euler's
    integral gives ``E = (1 / c) a1 / (a1 + a2) 2F1(1, a1 + 1; a1 + a2 + 1; 1 - 1 / c)``; for
    ``c < 1`` Pfaff's transformation turns it into ``a1 / (a1 + a2) 2F1(1, a2; a1 + a2 + 1; 1 - c)``.
    Either way the argument lies in ``[0, 1)`` and every term of the series is positive.

    Parameters
    ----------
    shape_1, rate_1, shape_2, rate_2 : numpy.ndarray
        Positive, broadcastable.

    Returns
    -------
    numpy.ndarray
    """
    from scipy.special import hyp2f1

    a1, b1, a2, b2 = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (shape_1, rate_1, shape_2, rate_2)))
    share = a1 / (a1 + a2)
    c = b1 / b2
    slower = c >= 1
    with np.errstate(all="ignore"):
        above = share / c * hyp2f1(1.0, a1 + 1.0, a1 + a2 + 1.0, 1.0 - 1.0 / c)
        below = share * hyp2f1(1.0, a2, a1 + a2 + 1.0, 1.0 - c)
    return np.where(slower, above, below)


def pnbd_probability_alive(model: "lifetimes.ParetoNBDFitter", inputs: pd.DataFrame) -> np.ndarray:
    """P(alive at the cutoff | x, t_x, T) under Pareto/NBD, computed in logs.

    ``P = 1 / (1 + s / (r + s + x) * (alpha + T)^(r + x) * (beta + T)^s * A0)`` with ``A0`` the
    difference of two Gauss hypergeometric terms at ``t_x`` and ``T`` (Fader and Hardie, "A Note
    on Deriving the Pareto/NBD Model and Related Expressions", 2005, eq. 18). lifetimes'
    ``conditional_probability_alive`` evaluates the powers directly and overflows to NaN for
    frequent buyers (about a hundred repeat purchases); here every factor is a logarithm and each
    ``2F1(r + s + x, b; r + s + x + 1; z)`` goes through Euler's transformation
    ``(1 - z)^(c - a - b) 2F1(1, c - b; c; z)``, whose series has small positive terms.

    Parameters
    ----------
    model : lifetimes.ParetoNBDFitter
    inputs : pandas.DataFrame
        Output of :func:`bgnbd_inputs`.

    Returns
    -------
    numpy.ndarray
        Probabilities in ``[0, 1]``; 1 for a customer whose last purchase was at the cutoff.
    """
    from scipy.special import expit, hyp2f1

    x, t_x, T = _input_arrays(inputs)
    r, alpha, s, beta = (float(model.params_[k]) for k in PNBD_PARAMETERS)
    a = r + s + x
    if alpha >= beta:
        base, other = alpha, s + 1.0
    else:
        base, other = beta, r + x
    c = a + 1.0

    def log_term(u: np.ndarray) -> np.ndarray:
        z = abs(alpha - beta) / (base + u)
        # Euler: 2F1(a, b; c; z) = (1 - z)^(c - a - b) 2F1(c - a, c - b; c; z), with c - a = 1.
        log_f = (c - a - other) * np.log1p(-z) + np.log(hyp2f1(1.0, c - other, c, z))
        return log_f - a * np.log(base + u)

    with np.errstate(all="ignore"):
        at_last, at_cutoff = log_term(t_x), log_term(T)
        # A0 = exp(at_last) - exp(at_cutoff) >= 0, since t_x <= T.
        gap = np.maximum(at_last - at_cutoff, 0.0)
        log_ratio = (np.log(s / a) + (r + x) * np.log(alpha + T) + s * np.log(beta + T) + at_cutoff
                     + np.log(np.expm1(gap)))
        return np.where(gap > 0.0, expit(-log_ratio), 1.0)


def pnbd_probability_purchase(
    model: "lifetimes.ParetoNBDFitter", inputs: pd.DataFrame, horizon_days: float
) -> np.ndarray:
    """P(at least one purchase in the ``horizon_days`` after the cutoff | x, t_x, T) under Pareto/NBD.

    Given alive at ``T``, the history updates the purchase rate to
    ``lambda ~ Gamma(r + x, alpha + T)`` and the dropout rate to ``mu ~ Gamma(s, beta + T)``,
    independently (Schmittlein, Morrison and Colombo, 1987). The remaining lifetime is
    exponential with rate ``mu``, so for given rates the chance of a purchase within ``t`` is
    ``lambda / (lambda + mu) * (1 - exp(-(lambda + mu) t))``. Averaging over the posterior,
    with the ``exp`` factor absorbed into the rates::

        P = P(alive) * [G(r + x, alpha + T, s, beta + T)
                        - ((alpha + T) / (alpha + T + t)) ** (r + x) * ((beta + T) / (beta + T + t)) ** s
                          * G(r + x, alpha + T + t, s, beta + T + t)]

    with ``G`` from :func:`gamma_share` and ``P(alive)`` lifetimes'. It is the ``n = 0``
    complement of the conditional PMF in Fader and Hardie's note "Deriving the Conditional PMF
    of the Pareto/NBD Model" (2014), which lifetimes implements as
    ``conditional_probability_of_n_purchases_up_to_time`` (one call per ``n``, with more
    hypergeometric terms).

    Parameters
    ----------
    model : lifetimes.ParetoNBDFitter
        A fitted model (see :func:`fit_pnbd`).
    inputs : pandas.DataFrame
        Output of :func:`bgnbd_inputs`.
    horizon_days : float
        Length of the label window in days.

    Returns
    -------
    numpy.ndarray
        Probabilities, not clipped; NaN or out of ``[0, 1]`` only where the numbers break down.
    """
    if horizon_days <= 0:
        raise ValueError(f"horizon_days must be positive, got {horizon_days}")
    x, _, T = _input_arrays(inputs)
    r, alpha, s, beta = (float(model.params_[k]) for k in PNBD_PARAMETERS)
    t = horizon_days / DAYS_PER_WEEK
    rate_shape = r + x
    with np.errstate(all="ignore"):
        log_discount = rate_shape * (np.log(alpha + T) - np.log(alpha + T + t)) + s * (
            np.log(beta + T) - np.log(beta + T + t)
        )
        ever = gamma_share(rate_shape, alpha + T, s, beta + T)
        after = np.exp(log_discount) * gamma_share(rate_shape, alpha + T + t, s, beta + T + t)
        return pnbd_probability_alive(model, inputs) * (ever - after)


def pnbd_probability(
    model: "lifetimes.ParetoNBDFitter", inputs: pd.DataFrame, horizon_days: int, target: str
) -> np.ndarray:
    """Probability of the positive class of ``target`` under a fitted Pareto/NBD model.

    Parameters
    ----------
    model : lifetimes.ParetoNBDFitter
        A fitted model (see :func:`fit_pnbd`).
    inputs : pandas.DataFrame
        Output of :func:`bgnbd_inputs` for the rows to score, at the cutoff the model was fitted at.
    horizon_days : int
        Length of the label window in days.
    target : {"churn", "repurchase"}
        ``repurchase``: :func:`pnbd_probability_purchase`; ``churn``: 1 minus that.

    Returns
    -------
    numpy.ndarray
        Probabilities clipped to ``[1e-6, 1 - 1e-6]``.

    Raises
    ------
    ValueError
        For an unknown target, or if the model gives non-finite probabilities or ones outside
        ``[0, 1]`` beyond rounding.
    """
    _check_target(target)
    purchase = pnbd_probability_purchase(model, inputs, horizon_days)
    bad = ~np.isfinite(purchase) | (purchase < -1e-9) | (purchase > 1 + 1e-9)
    if bad.any():
        raise ValueError(
            f"Pareto/NBD gave {int(bad.sum())} invalid probabilities with parameters {model.params_.to_dict()}"
        )
    probability = 1.0 - purchase if target == "churn" else purchase
    return np.clip(probability, PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)
