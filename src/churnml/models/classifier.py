"""The churn / repurchase classifier: any scikit-learn estimator over a feature table, calibrated
on a later time slice than the one it was fitted on, that knows its features and explains itself.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from churnml.errors import UserError

log = logging.getLogger(__name__)

# Identifiers, the label, per-snapshot constants that carry no information about a customer, and
# the playbook's usual gap (mean_gap_days where known, else such a constant).
NON_FEATURES = frozenset({"customer_id", "cutoff", "label", "peer_interactions_per_month", "usual_gap_days"})
PREPROCESSING = ("native", "scaled")
CALIBRATION = ("isotonic", "sigmoid", "none")
PRIORS = (None, "bgnbd", "pnbd")
BIAS = "bias"
PRIOR = "btyd_prior"
# Prior weights (intercept, log-odds of the target, log expected purchases) that give BG/NBD's own log-odds.
BGNBD_LOG_ODDS = np.array([0.0, 1.0, 0.0])
# Prior weights (intercept, log expected purchases) of the Pareto/NBD prior where the training rows
# cannot fit them: the log of a small expected count is about the log-odds of a purchase.
PNBD_LOG_COUNT = np.array([0.0, 1.0])
# Pareto/NBD's population parameters for the prior are fitted on an evenly spaced sample of at most
# this many of a cutoff's customers: four parameters need no more, and its likelihood costs
# two hypergeometric functions per customer.
PRIOR_PNBD_CUSTOMERS = 5_000
# Expected purchases below this count as this many in the prior's log count (a dead customer's
# expectation would otherwise weigh by how many zeros follow the decimal point).
MIN_EXPECTED_PURCHASES = 1e-3
# BG/NBD describes a population; fitted on fewer customers its parameters say nothing.
MIN_PRIOR_CUSTOMERS = 100


class FeatureMismatchError(UserError, ValueError):
    """A feature table does not have the columns or types the model was trained on."""


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """Columns of a feature table a model can learn from: numbers, flags and categories."""
    usable = []
    for name, dtype in frame.dtypes.items():
        if name in NON_FEATURES:
            continue
        if (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
                or _is_text(dtype)):
            usable.append(str(name))
    return usable


def category_codes(values: pd.Series, categories: Any) -> np.ndarray:
    """Each value's position among a model's training ``categories``, compared as text; -1 where
    the value is missing or was not seen in training (LightGBM treats both as missing).

    The few distinct values are looked up, not every row's text.
    """
    row_codes, distinct = pd.factorize(values)
    if not len(distinct):
        return np.full(len(values), -1, dtype=np.intp)
    lookup = pd.Index(categories, dtype=object).get_indexer(pd.Index(distinct).astype("string").astype(object))
    return np.where(row_codes >= 0, lookup[row_codes], -1)


def typed_features(X: pd.DataFrame, names: Sequence[str], categories: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
    """The columns ``names`` of ``X`` as a fitted model reads them: a column of ``categories`` as
    a pandas categorical of the categories learnt at fit (a value not among them is missing),
    any other as float64 (a value that is not a number is missing). Shape ``(len(X), len(names))``,
    index kept."""
    columns = {}
    for name in names:
        values = X[name]
        if name in categories:
            known = pd.Index(categories[name])
            columns[name] = pd.Categorical.from_codes(category_codes(values, known), categories=known)
        else:
            columns[name] = pd.to_numeric(values, errors="coerce").astype("float64")
    return pd.DataFrame(columns, index=X.index)


def _is_text(dtype: Any) -> bool:
    return (isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype)
            or pd.api.types.is_object_dtype(dtype))


class ChurnModel(ClassifierMixin, BaseEstimator):
    """A calibrated binary classifier over a churnml feature table.

    Parameters
    ----------
    estimator
        An unfitted scikit-learn classifier (``lightgbm.LGBMClassifier``, ``LogisticRegression``...).
    preprocessing
        ``native``: categories as pandas categoricals and missing values kept (tree models);
        ``scaled``: median imputation with missing-value indicators, standard scaling and one-hot
        categories (linear models).
    calibration
        ``isotonic``, ``sigmoid`` or ``none``: how raw scores become probabilities, fitted on the
        calibration slice passed to ``fit``.
    early_stopping_rounds
        For LightGBM: stop adding trees when the calibration slice's log loss has not improved
        for this many rounds (0 turns it off).
    prior
        LightGBM boosts from a buy-till-you-die prior (an initial score in log-odds), so trees
        learn corrections to it and the prediction falls back to it where the training
        snapshots say little (long horizons, short histories). The BTYD models are fitted per
        cutoff on the rows of that cutoff (history up to it only), and the prior is a logistic
        regression of the training labels on their outputs (:func:`prior_terms`), which
        calibrates them to the target.
        ``pnbd``: on the log of Pareto/NBD's expected purchases in the horizon (Schmittlein,
        Morrison and Colombo, 1987), BG/NBD's where Pareto/NBD cannot be fitted. Pareto/NBD
        lets a customer drop out before a repeat purchase, which BG/NBD does not; a
        customer's expected purchases rank customers of any age on one scale, where the
        probability's log-odds, weighed on young snapshots, carried over badly to older ones.
        ``bgnbd``: on two BG/NBD outputs, the log-odds of the target and the log of the
        expected purchases in the horizon.
        ``None``: boost from the base rate.
    target, horizon_days
        What the model predicts; kept with the model for scoring and reports.

    Attributes
    ----------
    feature_names_in_ : list of str
    categories_ : dict of str to list
        Categories seen in training for each text feature; others become missing.
    estimator_ : fitted estimator or Pipeline
    calibrator_ : LogisticRegression, IsotonicRegression or None
        Maps the raw score (log-odds, prior included) to a probability.
    prior_fallback_ : float
        Log-odds of the training base rate, the prior where BG/NBD cannot be fitted.
    prior_weights_ : numpy.ndarray
        Intercept and weights of the prior's terms (:func:`prior_terms`), fitted on the
        training rows; for ``bgnbd``, ``(0, 1, 0)`` is BG/NBD's own log-odds.
    prior_mean_ : float
        Mean prior of the training rows; contributions show the prior relative to it.
    classes_ : ndarray
    tree_tables_ : churnml.models.contributions.TreeTables or None
        The LightGBM trees as exact lookup tables, which score probabilities and contributions
        in a small fraction of LightGBM's time. Set by training after ``fit``
        (:func:`churnml.models.contributions.attach_tree_tables`, called by
        :func:`churnml.models.training.fit_model`), dropped by ``fit``; None when the trees
        cannot be tabulated (training warns why). Without it, scoring tabulates on the fly.
    """

    def __init__(
        self,
        estimator: Any = None,
        preprocessing: str = "native",
        calibration: str = "sigmoid",
        early_stopping_rounds: int = 50,
        prior: str | None = None,
        target: str = "churn",
        horizon_days: int = 90,
    ):
        self.estimator = estimator
        self.preprocessing = preprocessing
        self.calibration = calibration
        self.early_stopping_rounds = early_stopping_rounds
        self.prior = prior
        self.target = target
        self.horizon_days = horizon_days

    # --- fitting ------------------------------------------------------------------------------

    def fit(self, X: pd.DataFrame, y: Any, calibration_set: tuple[pd.DataFrame, Any] | None = None,
            progress: str | None = None, seasonality: Any = None) -> "ChurnModel":
        """Fit on ``X, y``; calibrate (and early-stop) on ``calibration_set``, a later time slice.

        ``progress``: a description to show a progress bar of the boosting rounds under (LightGBM
        only: the round and the calibration slice's log loss), None for none. ``seasonality``:
        the shop's monthly multipliers, shape ``(12,)``
        (:func:`churnml.features.seasonality.seasonal_index`), kept as ``seasonality_``: the
        prior then runs each label window in its season's operational time
        (:meth:`prior_horizon_days`); None for none.
        """
        if self.preprocessing not in PREPROCESSING:
            raise ValueError(f"preprocessing must be one of {PREPROCESSING}, got '{self.preprocessing}'")
        if self.calibration not in CALIBRATION:
            raise ValueError(f"calibration must be one of {CALIBRATION}, got '{self.calibration}'")
        if self.estimator is None:
            raise ValueError("ChurnModel needs an estimator")
        if self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got '{self.prior}'")
        if self.prior and not (is_lightgbm(self.estimator) and self.preprocessing == "native"):
            raise ValueError(f"prior='{self.prior}' needs a LightGBM estimator with native preprocessing")
        # Tables of the trees of an earlier fit (also as kept before tree_tables_) describe other trees.
        for stale in ("tree_tables_", "_tree_tables"):
            self.__dict__.pop(stale, None)
        y = np.asarray(y).astype(int)
        if len(np.unique(y)) < 2:
            raise ValueError("the training labels hold one class only; use more snapshots or a longer history")
        self.feature_names_in_ = feature_columns(X)
        self.n_features_in_ = len(self.feature_names_in_)
        self.categories_ = {
            c: sorted(map(str, pd.Series(X[c]).dropna().unique()))
            for c in self.feature_names_in_ if _is_text(X[c].dtype)
        }
        self.classes_ = np.array([0, 1])
        self.prior_fallback_ = float(_logit(np.clip(y.mean(), 1e-6, 1 - 1e-6)))
        self.seasonality_ = None if seasonality is None else np.asarray(seasonality, dtype=float)
        train = self._prepare(X)
        calibration = None
        if calibration_set is not None:
            calibration = (calibration_set[0], np.asarray(calibration_set[1]).astype(int))
        prior, calibration_prior = np.zeros(len(X)), None
        if self.prior:
            terms = self.prior_terms(X)
            self.prior_weights_ = fit_prior_weights(terms, y, self.prior)
            prior = self._blended(terms)
            if calibration is not None:
                calibration_prior = self.prior_log_odds(calibration[0])
        self.prior_mean_ = float(np.mean(prior)) if self.prior else 0.0
        self.estimator_ = self._fit_estimator(train, y, prior, calibration, calibration_prior, progress)
        self.calibrator_ = self._fit_calibrator(calibration, calibration_prior)
        return self

    def _fit_estimator(self, train, y, prior, calibration, calibration_prior, progress):
        estimator = clone(self.estimator)
        if self.preprocessing == "scaled":
            estimator = _scaled_pipeline(estimator, train)
            return estimator.fit(train, y)
        fit_params: dict[str, Any] = {}
        if self.prior:
            fit_params["init_score"] = prior
        if is_lightgbm(estimator):
            import lightgbm

            callbacks = []
            if self.early_stopping_rounds and calibration is not None:
                fit_params["eval_X"], fit_params["eval_y"] = self._prepare(calibration[0]), calibration[1]
                fit_params["eval_names"] = ["calibration"]
                if self.prior:
                    fit_params["eval_init_score"] = [calibration_prior]
                callbacks.append(lightgbm.early_stopping(self.early_stopping_rounds, verbose=False))
            bar = BoostingProgress(estimator.get_params().get("n_estimators", 100), progress) if progress else None
            fit_params["callbacks"] = [*callbacks, *([bar] if bar else [])]
            try:
                return estimator.fit(train, y, **fit_params)
            finally:
                if bar:
                    bar.close()
        return estimator.fit(train, y, **fit_params)

    def _fit_calibrator(self, calibration, calibration_prior=None):
        if self.calibration == "none":
            return None
        if calibration is None or len(np.unique(calibration[1])) < 2:
            log.warning("no calibration slice with both classes: probabilities are the estimator's own")
            return None
        score = self.raw_score(calibration[0], prior=calibration_prior).reshape(-1, 1)
        if self.calibration == "sigmoid":
            from sklearn.linear_model import LogisticRegression

            return LogisticRegression(C=1e6).fit(score, calibration[1])
        from sklearn.isotonic import IsotonicRegression

        return IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(score.ravel(), calibration[1])

    def prior_log_odds(self, X: pd.DataFrame) -> np.ndarray:
        """The prior of each row in log-odds, shape ``(n_rows,)``: the fitted blend of the BTYD
        terms (:func:`prior_terms`), the BTYD models fitted per cutoff on the rows of that
        cutoff (or taken from ``with_population_prior``); the training base rate where BG/NBD
        cannot be fitted. Zeros without a prior."""
        if not self.prior:
            return np.zeros(len(X))
        return self._blended(self.prior_terms(X))

    def prior_terms(self, X: pd.DataFrame) -> np.ndarray:
        """The BTYD outputs the prior blends for each row (:func:`prior_terms`), shape
        ``(n_rows, n_terms)``; NaN where BG/NBD cannot be fitted."""
        fixed = getattr(self, "population_priors_", None)
        terms = np.full((len(X), len(default_prior_weights(self.prior)) - 1), np.nan)
        for cutoff, rows in _rows_by_cutoff(X).items():
            part = X.iloc[rows]
            fitted = (fixed.get(_cutoff_key(cutoff)) if fixed is not None
                      else _fit_prior(part, cutoff, pnbd=self.prior == "pnbd"))
            if fitted is not None:
                terms[rows] = prior_terms(fitted, part, self.prior_horizon_days(cutoff), self.target, self.prior)
        return terms

    def prior_horizon_days(self, cutoff: Any) -> float:
        """The horizon the prior's BG/NBD terms use for label windows after ``cutoff``: the
        model's ``horizon_days`` in the window's operational time, the days weighted by the
        shop's monthly multipliers (:func:`churnml.features.seasonality.window_season_factor`);
        the horizon itself without ``seasonality_`` or a cutoff."""
        from churnml.features.seasonality import window_season_factor

        seasonality = getattr(self, "seasonality_", None)
        if seasonality is None or cutoff is None:
            return float(self.horizon_days)
        return float(self.horizon_days) * window_season_factor(seasonality, pd.Timestamp(cutoff).date(),
                                                                int(self.horizon_days))

    def _blended(self, terms: np.ndarray) -> np.ndarray:
        # Models fitted before the blend existed boost from BG/NBD's own log-odds.
        weights = getattr(self, "prior_weights_", None)
        weights = default_prior_weights(self.prior) if weights is None else weights
        usable = np.isfinite(terms).all(axis=1)
        prior = np.full(len(terms), self.prior_fallback_)
        prior[usable] = weights[0] + terms[usable] @ weights[1:]
        return prior

    def with_population_prior(self, population: pd.DataFrame, priors: dict | None = None) -> "ChurnModel":
        """A copy whose BTYD prior is fitted once per cutoff on ``population`` and then reused, so
        that scoring the population in pieces (a sample, Spark partitions) gives the prior of
        scoring it whole. ``priors`` from :func:`fit_population_priors` shares one fit between
        models (the BTYD models do not depend on the target); it must hold Pareto/NBD's fits
        for a ``pnbd`` prior.

        ``population`` needs ``cutoff`` and the BG/NBD input columns only.
        """
        import copy

        model = copy.copy(self)
        if self.prior:
            model.population_priors_ = (priors if priors is not None
                                        else fit_population_priors(population, pnbd=self.prior == "pnbd"))
        return model

    # --- prediction ---------------------------------------------------------------------------

    def check_features(self, X: pd.DataFrame) -> None:
        """Raise FeatureMismatchError when ``X`` lacks a model feature or holds it with another type."""
        check_is_fitted(self, "feature_names_in_")
        missing = [c for c in self.feature_names_in_ if c not in X.columns]
        if missing:
            raise FeatureMismatchError(
                f"the feature table lacks {len(missing)} of the model's {self.n_features_in_} features: "
                f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}. Build features with the "
                "same configuration (windows, interactions, customers) as the model was trained with."
            )
        wrong = [c for c in self.feature_names_in_
                 if (c in self.categories_) != _is_text(X[c].dtype) and not X[c].isna().all()]
        if wrong:
            raise FeatureMismatchError(f"features with another type than in training: {', '.join(wrong)}")

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated probabilities, shape ``(n_rows, 2)``: of the negative and of the positive class."""
        score = self.raw_score(X)
        if self.calibrator_ is None:
            positive = 1.0 / (1.0 + np.exp(-score))
        elif self.calibration == "sigmoid":
            positive = self.calibrator_.predict_proba(score.reshape(-1, 1))[:, 1]
        else:
            positive = self.calibrator_.predict(score)
        return np.column_stack([1.0 - positive, positive])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """1 where the probability of the positive class is at least 0.5, else 0."""
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def raw_score(self, X: pd.DataFrame, prior: np.ndarray | None = None) -> np.ndarray:
        """The uncalibrated score in log-odds (prior included), the scale of ``contributions``;
        ``prior``: the rows' prior log-odds when already known."""
        prepared = self._checked(X)
        if self.preprocessing == "native" and is_lightgbm(self.estimator_):
            prior = self.prior_log_odds(X) if prior is None else prior
            return self.estimator_.predict(prepared, raw_score=True) + prior
        return self.estimator_.decision_function(prepared)

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        """Exact per-row contribution of each feature to the raw score, plus a ``bias`` column.

        Each row sums to ``raw_score``: LightGBM's ``pred_contrib`` for trees (with a
        ``btyd_prior`` column when there is a prior: the customer's prior relative to the
        training rows' mean prior, which goes into ``bias``), coefficient x standardised value
        for linear models (one-hot and missing-indicator columns summed back to the feature they
        came from).
        """
        prepared = self._checked(X)
        if self.preprocessing == "native" and is_lightgbm(self.estimator_):
            values = self.estimator_.predict(prepared, pred_contrib=True)
            frame = pd.DataFrame(values, columns=[*self.feature_names_in_, BIAS], index=X.index)
            if self.prior:
                frame.insert(len(self.feature_names_in_), PRIOR, self.prior_log_odds(X) - self.prior_mean_)
                frame[BIAS] += self.prior_mean_
            return frame
        if self.preprocessing == "scaled" and hasattr(self.estimator_[-1], "coef_"):
            return _linear_contributions(self.estimator_, prepared, self.feature_names_in_, X.index)
        raise NotImplementedError(
            f"exact contributions are available for LightGBM and linear models, not {type(self.estimator_).__name__}; "
            "use churnml.explain for SHAP values"
        )

    def feature_importance(self) -> pd.Series:
        """Gain importance for LightGBM, absolute coefficients for linear models, by feature."""
        check_is_fitted(self, "estimator_")
        if is_lightgbm(self.estimator_):
            gains = self.estimator_.booster_.feature_importance(importance_type="gain")
            return pd.Series(gains, index=self.feature_names_in_).sort_values(ascending=False)
        if self.preprocessing == "scaled" and hasattr(self.estimator_[-1], "coef_"):
            names = self.estimator_[:-1].get_feature_names_out()
            weights = pd.Series(np.abs(self.estimator_[-1].coef_.ravel()), index=names)
            grouped = weights.groupby(_source_features(names, self.feature_names_in_)).sum()
            return grouped.reindex(self.feature_names_in_, fill_value=0.0).sort_values(ascending=False)
        return pd.Series(dtype=float)

    def _checked(self, X: pd.DataFrame) -> pd.DataFrame:
        self.check_features(X)
        return self._prepare(X)

    def _prepare(self, X: pd.DataFrame) -> pd.DataFrame:
        prepared = typed_features(X, self.feature_names_in_, self.categories_)
        if self.preprocessing == "scaled":
            for name in self.categories_:
                prepared[name] = prepared[name].astype(object).where(prepared[name].notna(), "missing")
        return prepared


@dataclass(frozen=True)
class PriorFit:
    """The BTYD models fitted on one cutoff's customers that a prior reads: BG/NBD, and
    Pareto/NBD when a ``pnbd`` prior asked for it (None when it was not asked for or could not
    be fitted: the prior then reads BG/NBD's expected purchases)."""

    bgnbd: Any
    pnbd: Any = None

    def counts_model(self, prior: str | None) -> Any:
        """The fit whose expected purchases a ``prior`` reads: Pareto/NBD's for ``pnbd`` where
        it was fitted, BG/NBD's otherwise."""
        return self.pnbd if prior == "pnbd" and self.pnbd is not None else self.bgnbd


def default_prior_weights(prior: str | None) -> np.ndarray:
    """The prior's weights (intercept first) where no regression could be fitted:
    :data:`PNBD_LOG_COUNT` for ``pnbd``, :data:`BGNBD_LOG_ODDS` otherwise."""
    return (PNBD_LOG_COUNT if prior == "pnbd" else BGNBD_LOG_ODDS).copy()


def prior_terms(fitted: PriorFit, features: pd.DataFrame, horizon_days: float, target: str,
                prior: str | None = "bgnbd") -> np.ndarray:
    """The BTYD outputs the prior blends for feature rows, shape ``(n_rows, n_terms)``
    (:func:`prior_terms_of_inputs` of :func:`churnml.models.btyd.bgnbd_inputs`).

    ``fitted``: the fits at the rows' cutoff; ``features``: feature rows.
    """
    from churnml.models.btyd import bgnbd_inputs

    return prior_terms_of_inputs(fitted, bgnbd_inputs(features), horizon_days, target, prior=prior)


def prior_terms_of_inputs(fitted: PriorFit, inputs: pd.DataFrame, horizon_days: float, target: str,
                          expected: np.ndarray | None = None, prior: str | None = "bgnbd") -> np.ndarray:
    """The BTYD outputs the prior blends; NaN where the model gives no finite value.

    ``pnbd``: shape ``(n_rows, 1)``, the log of Pareto/NBD's expected purchases in the horizon
    (:func:`churnml.models.btyd.expected_purchases`), BG/NBD's where ``fitted.pnbd`` is None.
    ``bgnbd``: shape ``(n_rows, 2)``, BG/NBD's log-odds of the target in the horizon
    (:func:`churnml.models.btyd.bgnbd_probability`) and the log of its expected purchases.
    Expected purchases are floored at :data:`MIN_EXPECTED_PURCHASES`.

    ``inputs``: BG/NBD inputs ``x``, ``t_x``, ``T`` (weeks); ``expected``: the rows' BG/NBD
    expected purchases in the horizon when already computed.
    """
    from churnml.models.btyd import bgnbd_probability, expected_purchases

    counts = fitted.counts_model(prior)
    if expected is None or counts is not fitted.bgnbd:
        expected = expected_purchases(counts, inputs, horizon_days)
    log_count = np.log(np.maximum(expected, MIN_EXPECTED_PURCHASES))
    if prior == "pnbd":
        return log_count[:, None]
    probability = bgnbd_probability(fitted.bgnbd, inputs, horizon_days, target)
    return np.column_stack([_logit(np.clip(probability, 1e-6, 1 - 1e-6)), log_count])


def fit_prior_weights(terms: np.ndarray, y: np.ndarray, prior: str | None = "bgnbd") -> np.ndarray:
    """Intercept and weights of a logistic regression of ``y`` on the prior ``terms``
    (:func:`prior_terms`, shape ``(n_rows, n_terms)``), fitted on the rows where all are finite:
    a stacked blend of the BTYD scores (Wolpert, 1992), calibrated to the training labels.

    :func:`default_prior_weights` where the rows cannot fit a regression (fewer than
    :data:`MIN_PRIOR_CUSTOMERS` of them, or one class).
    """
    from sklearn.linear_model import LogisticRegression

    usable = np.isfinite(terms).all(axis=1)
    y = np.asarray(y).astype(int)
    if usable.sum() < MIN_PRIOR_CUSTOMERS or len(np.unique(y[usable])) < 2:
        return default_prior_weights(prior)
    # Almost no penalty: a few well-scaled terms on thousands of rows need none, and a strong one
    # would pull the blend away from calibrated log-odds.
    regression = LogisticRegression(C=1e4, max_iter=1000).fit(terms[usable], y[usable])
    return np.concatenate([regression.intercept_, regression.coef_.ravel()])


class BoostingProgress:
    """A LightGBM callback that shows the boosting rounds as a tqdm bar, with the validation
    log loss when there is a validation set; ``close()`` ends the bar (early stopping ends the
    training before the last round)."""

    def __init__(self, total_rounds: int, description: str):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_rounds, desc=description, unit="round", leave=False, mininterval=0.5)

    def __call__(self, env: Any) -> None:
        """Advance to ``env.iteration`` and show the latest validation score."""
        self.bar.update(env.iteration + 1 - self.bar.n)
        if env.evaluation_result_list:
            _, metric, value = env.evaluation_result_list[0][:3]
            self.bar.set_postfix_str(f"{metric} {value:.4f}", refresh=False)

    def close(self) -> None:
        """Show the last round reached, then end the bar."""
        self.bar.refresh()
        self.bar.close()


def with_shared_population_prior(models: Mapping[str, "ChurnModel"],
                                  population: pd.DataFrame) -> tuple[dict[str, "ChurnModel"], dict[str | None, Any]]:
    """The models, each with its prior fitted on ``population`` (:meth:`ChurnModel.with_population_prior`)
    from one BTYD fit per cutoff that they share (BTYD models do not depend on the target), and
    that fit (:func:`fit_population_priors`); the models as given and ``{}`` when none has a prior."""
    if not any(getattr(model, "prior", None) for model in models.values()):
        return dict(models), {}
    priors = fit_population_priors(population, pnbd=any(getattr(m, "prior", None) == "pnbd" for m in models.values()))
    return {target: model.with_population_prior(population, priors) for target, model in models.items()}, priors


def fit_population_priors(population: pd.DataFrame, pnbd: bool = False) -> dict[str | None, PriorFit | None]:
    """The BTYD models fitted on each cutoff's customers (:class:`PriorFit`; None where BG/NBD
    cannot be fitted), keyed by cutoff; with ``pnbd``, Pareto/NBD as well.

    Cutoffs are fitted side by side in threads, one per core: the likelihoods' special
    functions run outside the interpreter lock (on 2 cores, 12 demo cutoffs took 20 s instead
    of 37 s), and each fit is the same as alone."""
    from joblib import Parallel, delayed

    groups = _rows_by_cutoff(population)
    fits = Parallel(n_jobs=min(len(groups), os.cpu_count() or 1) or 1, prefer="threads")(
        delayed(_fit_prior)(population.iloc[rows], cutoff, pnbd) for cutoff, rows in groups.items())
    return {_cutoff_key(cutoff): fit for cutoff, fit in zip(groups, fits)}


def _rows_by_cutoff(X: pd.DataFrame) -> dict[Any, np.ndarray]:
    return X.groupby("cutoff").indices if "cutoff" in X.columns else {None: np.arange(len(X))}


def _cutoff_key(cutoff: Any) -> str | None:
    return None if cutoff is None else str(pd.Timestamp(cutoff).date())


def _fit_prior(part: pd.DataFrame, cutoff: Any, pnbd: bool = False) -> PriorFit | None:
    """The BTYD models fitted on one cutoff's customers, or None (with a warning) when BG/NBD
    cannot be fitted; with ``pnbd``, Pareto/NBD on a sample of them
    (:data:`PRIOR_PNBD_CUSTOMERS`), None in the fit (with a warning) when it cannot be."""
    from churnml.models.btyd import BGNBDFitError, ParetoNBDFitError, bgnbd_inputs, fit_bgnbd, fit_pnbd

    if len(part) < MIN_PRIOR_CUSTOMERS:
        log.warning("%s customers at cutoff %s are too few to fit the BTYD prior; using the training base rate",
                    len(part), cutoff)
        return None
    inputs = bgnbd_inputs(part)
    try:
        bgnbd = fit_bgnbd(inputs)
    except (BGNBDFitError, ValueError) as error:
        log.warning("BG/NBD prior unavailable at cutoff %s (%s); using the training base rate", cutoff, error)
        return None
    if not pnbd:
        return PriorFit(bgnbd)
    # Every k-th customer, k the smallest step that leaves at most PRIOR_PNBD_CUSTOMERS of them.
    sample = inputs.iloc[::-(-len(inputs) // PRIOR_PNBD_CUSTOMERS)]
    try:
        return PriorFit(bgnbd, fit_pnbd(sample))
    except (ParetoNBDFitError, ValueError) as error:
        log.warning("Pareto/NBD prior unavailable at cutoff %s (%s); using BG/NBD's expected purchases", cutoff, error)
        return PriorFit(bgnbd)


def _logit(p: Any) -> Any:
    return np.log(p) - np.log1p(-p)


def is_lightgbm(estimator: Any) -> bool:
    """Whether ``estimator`` is a LightGBM model: a ``lightgbm`` estimator or a
    :class:`BoosterClassifier` loaded from its model text."""
    return isinstance(estimator, BoosterClassifier) or type(estimator).__module__.startswith("lightgbm")



class BoosterClassifier:
    """A fitted LightGBM binary classifier rebuilt from its model text
    (:mod:`churnml.models.persistence`): the part of ``lightgbm.LGBMClassifier`` that a
    fitted :class:`ChurnModel` uses, over LightGBM's public ``Booster``.

    Parameters
    ----------
    booster : lightgbm.Booster
        Loaded with ``lightgbm.Booster(model_str=...)``; its text keeps the pandas categories.

    Attributes
    ----------
    booster_ : lightgbm.Booster
    classes_ : numpy.ndarray
        ``[0, 1]``.
    n_features_in_ : int
    """

    def __init__(self, booster: Any):
        self.booster_ = booster
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = int(booster.num_feature())

    def predict(self, X: pd.DataFrame, raw_score: bool = False, pred_contrib: bool = False) -> np.ndarray:
        """Raw scores (log-odds, ``(n_rows,)``), contributions (``(n_rows, n_features + 1)``,
        the last column the bias) or, with neither, the class with probability at least 0.5."""
        if raw_score or pred_contrib:
            return self.booster_.predict(X, raw_score=raw_score, pred_contrib=pred_contrib)
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Probabilities of the negative and positive class, shape ``(n_rows, 2)``."""
        positive = self.booster_.predict(X)
        return np.column_stack([1.0 - positive, positive])


def _scaled_pipeline(estimator: Any, train: pd.DataFrame):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    text = [c for c in train.columns if train[c].dtype == object]
    numbers = [c for c in train.columns if c not in text]
    numeric = Pipeline([("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
                        ("scale", StandardScaler())])
    transformer = ColumnTransformer(
        [("num", numeric, numbers), ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), text)],
        verbose_feature_names_out=True,
    )
    return Pipeline([("prepare", transformer), ("model", estimator)])


def _source_features(output_names: np.ndarray, inputs: list[str]) -> list[str]:
    """The input feature each transformed column comes from (``num__x``, ``num__missingindicator_x``, ``cat__x_a``)."""
    by_length = sorted(inputs, key=len, reverse=True)
    sources = []
    for name in output_names:
        bare = name.split("__", 1)[1]
        bare = bare.removeprefix("missingindicator_")
        sources.append(next(f for f in by_length if bare == f or bare.startswith(f + "_")))
    return sources


def _linear_contributions(pipeline, prepared: pd.DataFrame, features: list[str], index: pd.Index) -> pd.DataFrame:
    transformed = pipeline[:-1].transform(prepared)
    model = pipeline[-1]
    names = pipeline[:-1].get_feature_names_out()
    parts = pd.DataFrame(transformed * model.coef_.ravel(), columns=names, index=index)
    grouped = parts.T.groupby(_source_features(names, features)).sum().T
    result = grouped.reindex(columns=features, fill_value=0.0)
    result[BIAS] = float(np.ravel(model.intercept_)[0])
    return result
