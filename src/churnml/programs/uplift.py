"""Uplift modelling: whom a campaign changes, not who churns.

A churn model ranks customers by risk; a campaign budget is better spent on those whose behaviour
the contact changes. With a randomised control group, meta-learners estimate that change,
``P(y=1 | treated, x) - P(y=1 | control, x)``, from two outcome models (T-learner) or from
imputed individual effects (X-learner; Künzel, Sekhon, Bickel and Yu 2019, "Metalearners for
estimating heterogeneous treatment effects using machine learning", PNAS 116(10)).

Rankings are judged with the Qini curve (Radcliffe 2007, "Using control groups to target on
predicted lift: building and assessing uplift models", Direct Marketing Analytics Journal), the
definition of scikit-uplift's ``qini_curve`` and ``qini_auc_score`` and causalml's ``get_qini``:
the incremental responders among the top ``k`` customers by score,
``Q(k) = Y_t(k) - Y_c(k) * N_t(k) / N_c(k)``, against the random-targeting line.

Learners are stored as data (LightGBM's model text and JSON, :meth:`TLearner.to_dict`,
:func:`save_uplift_model`), never pickled, like :mod:`churnml.models.persistence`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from churnml.errors import UserValueError
from churnml.models.classifier import FeatureMismatchError, typed_features
from churnml.models.persistence import ModelFormatError, _json_default

FORMAT = "churnml.uplift"
FORMAT_VERSION = 1
MODEL_FILE = "uplift.json"
# LightGBM's model text starts so; anything else is refused before LightGBM's parser sees it.
BOOSTER_TEXT_START = "tree\nversion="
GROUPS = {"treatment": 1, "control": 0}
FRACTIONS = (0.1, 0.2, 0.3)
RANDOM = "random"


# --------------------------------------------------------------------------------------------
# Meta-learners
# --------------------------------------------------------------------------------------------


class _MetaLearner(BaseEstimator):
    """What the T- and X-learner share: feature preparation, LightGBM settings, checks, storage."""

    learner = ""
    roles: tuple[str, ...] = ()

    def _lightgbm_params(self) -> dict[str, Any]:
        # The project's LightGBM settings (conf/model/lightgbm.yaml): one thread (OpenMP spin-waiting
        # made two threads slower on 2-core machines), deterministic, quiet; small trees and a fixed
        # number of rounds, which a few thousand rows of one campaign support without early stopping.
        return {"n_estimators": self.n_estimators, "learning_rate": self.learning_rate,
                "num_leaves": self.num_leaves, "min_child_samples": self.min_child_samples,
                "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.8, "reg_lambda": 1.0,
                "random_state": self.random_state, "n_jobs": 1, "deterministic": True,
                "force_row_wise": True, "verbose": -1}

    def _classifier(self, X: pd.DataFrame, y: np.ndarray) -> Any:
        import lightgbm

        return lightgbm.LGBMClassifier(**self._lightgbm_params()).fit(X, y).booster_

    def _regressor(self, X: pd.DataFrame, y: np.ndarray) -> Any:
        import lightgbm

        return lightgbm.LGBMRegressor(**self._lightgbm_params()).fit(X, y).booster_

    def _start_fit(self, X: pd.DataFrame, treatment: Any, y: Any) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        treatment, y = _checked_training(X, treatment, y)
        self.feature_names_in_ = [str(name) for name in X.columns]
        self.n_features_in_ = len(self.feature_names_in_)
        self.categories_ = {name: sorted(map(str, pd.Series(X[name]).dropna().unique()))
                            for name in self.feature_names_in_ if _is_text(X[name].dtype)}
        self.treated_share_ = float(treatment.mean())
        return self._prepare(X), treatment, y

    def _prepare(self, X: pd.DataFrame) -> pd.DataFrame:
        if not isinstance(X, pd.DataFrame):
            raise UserValueError(f"the uplift features must be a pandas DataFrame, got {type(X).__name__}")
        missing = [name for name in self.feature_names_in_ if name not in X.columns]
        if missing:
            raise FeatureMismatchError(f"the feature table lacks {', '.join(missing[:5])}, which the uplift model "
                                       "was trained on: build the same features as for training")
        return typed_features(X, self.feature_names_in_, self.categories_)

    def _check_fitted(self) -> None:
        if not hasattr(self, "boosters_"):
            raise UserValueError(f"this {type(self).__name__} is not fitted: call fit(X, treatment, y) first")

    def _predict_role(self, role: str, prepared: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.boosters_[role].predict(prepared), dtype=float)

    # --- storage ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The fitted learner as JSON-ready data: settings, features, categories, the fitted
        numbers and each LightGBM model's own text (``Booster.model_to_string``).

        Returns
        -------
        dict
            ``format``, ``format_version``, ``learner`` (``t`` or ``x``), ``params``,
            ``feature_names_in``, ``categories``, ``fitted`` (numbers such as the treated share)
            and ``boosters`` (role to model text). :meth:`from_dict` rebuilds the learner, whose
            predictions are identical.
        """
        self._check_fitted()
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "learner": self.learner,
                "params": json.loads(json.dumps(self.get_params(), default=_json_default)),
                "feature_names_in": list(self.feature_names_in_),
                "categories": {name: list(values) for name, values in self.categories_.items()},
                "fitted": self._fitted_numbers(),
                "boosters": {role: self.boosters_[role].model_to_string() for role in self.roles}}

    @classmethod
    def from_dict(cls, description: Mapping[str, Any]) -> "_MetaLearner":
        """The learner :meth:`to_dict` described, rebuilt without unpickling anything.

        Raises
        ------
        churnml.models.persistence.ModelFormatError
            If ``description`` is not an uplift learner of this kind and format version, or a
            model text is not LightGBM's.
        """
        shown = f"the {cls.__name__} description"
        if not isinstance(description, Mapping) or description.get("format") != FORMAT \
                or description.get("format_version") != FORMAT_VERSION:
            raise ModelFormatError(f"{shown} is not a churnml uplift model of format version {FORMAT_VERSION}")
        if description.get("learner") != cls.learner:
            raise ModelFormatError(f"{shown} holds a '{description.get('learner')}' learner, not '{cls.learner}': "
                                   "load it with uplift_model_from_dict")
        try:
            model = cls(**description["params"])
            model.feature_names_in_ = [str(name) for name in description["feature_names_in"]]
            model.n_features_in_ = len(model.feature_names_in_)
            model.categories_ = {str(name): [str(v) for v in values]
                                 for name, values in description["categories"].items()}
            texts = description["boosters"]
            if set(texts) != set(cls.roles):
                raise ModelFormatError(f"{shown} holds models {sorted(texts)}, expected {list(cls.roles)}")
            model.boosters_ = {role: _booster(texts[role], f"{shown}, model '{role}'") for role in cls.roles}
            model._set_fitted_numbers(description["fitted"])
        except ModelFormatError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ModelFormatError(f"{shown} does not describe a learner churnml can rebuild "
                                   f"({type(error).__name__}: {error})") from None
        return model

    def _fitted_numbers(self) -> dict[str, float]:
        return {"treated_share": self.treated_share_}

    def _set_fitted_numbers(self, numbers: Mapping[str, Any]) -> None:
        self.treated_share_ = float(numbers["treated_share"])


class TLearner(_MetaLearner):
    """T-learner (Künzel et al. 2019): one LightGBM classifier of the outcome per group; the
    uplift of a customer is the treated model's probability minus the control model's.

    Parameters
    ----------
    n_estimators, learning_rate, num_leaves, min_child_samples
        LightGBM's, for each outcome model: small trees and a fixed number of rounds suited to a
        few thousand rows per group.
    random_state : int
        LightGBM's seed (row and column subsampling).

    Attributes
    ----------
    feature_names_in_ : list of str
        The columns of ``X`` at fit, all used.
    n_features_in_ : int
    categories_ : dict of str to list of str
        Categories seen in training for each text column; others become missing.
    boosters_ : dict of str to lightgbm.Booster
        ``control`` and ``treated``: the outcome models.
    treated_share_ : float
        Share of treated rows in training.
    """

    learner = "t"
    roles = ("control", "treated")

    def __init__(self, n_estimators: int = 100, learning_rate: float = 0.05, num_leaves: int = 7,
                 min_child_samples: int = 40, random_state: int = 0):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, treatment: Any, y: Any) -> "TLearner":
        """Fit the two outcome models.

        Parameters
        ----------
        X : pandas.DataFrame, shape (n_rows, n_features)
            Numbers, flags and text (categories); every column is a feature.
        treatment : array-like of 0/1, shape (n_rows,)
            1 for the treated (contacted), 0 for the control group.
        y : array-like of 0/1, shape (n_rows,)
            The binary outcome (e.g. repurchased in the campaign's window).

        Returns
        -------
        TLearner
            ``self``.

        Raises
        ------
        churnml.errors.UserValueError
            If the lengths differ, a value is not 0/1, a group is empty or its outcome has one class.
        """
        prepared, treatment, y = self._start_fit(X, treatment, y)
        treated = treatment == 1
        self.boosters_ = {"control": self._classifier(prepared[~treated], y[~treated]),
                          "treated": self._classifier(prepared[treated], y[treated])}
        return self

    def predict_uplift(self, X: pd.DataFrame) -> np.ndarray:
        """Estimated ``P(y=1 | treated, x) - P(y=1 | control, x)`` per row, shape ``(n_rows,)``, in [-1, 1].

        Raises
        ------
        churnml.models.classifier.FeatureMismatchError
            If ``X`` lacks a training column.
        """
        self._check_fitted()
        prepared = self._prepare(X)
        return self._predict_role("treated", prepared) - self._predict_role("control", prepared)


class XLearner(_MetaLearner):
    """X-learner (Künzel et al. 2019) for a binary outcome, on LightGBM.

    1. Outcome models ``mu0``, ``mu1``: classifiers of ``y`` on the control and treated rows.
    2. Imputed effects: ``D1 = y - mu0(x)`` on the treated rows, ``D0 = mu1(x) - y`` on the
       control rows.
    3. Effect models ``tau1``, ``tau0``: regressors of ``D1`` on the treated rows and of ``D0``
       on the control rows.
    4. ``tau(x) = g * tau0(x) + (1 - g) * tau1(x)`` with ``g`` the propensity, the weight the
       paper recommends: the effect model whose imputations come from the larger group's
       outcome model weighs more.

    The propensity is a constant: campaigns are randomised, so the chance of treatment is the
    design's share, the same for every customer (a propensity model would only fit noise). The
    estimate is clipped to [-1, 1], the range of a difference of probabilities.

    Parameters
    ----------
    n_estimators, learning_rate, num_leaves, min_child_samples
        LightGBM's, for each of the four models.
    propensity : float or None
        The probability of treatment, in (0, 1); None for the treated share of the training rows.
    random_state : int

    Attributes
    ----------
    feature_names_in_, n_features_in_, categories_, treated_share_
        As :class:`TLearner`'s.
    boosters_ : dict of str to lightgbm.Booster
        ``control``, ``treated`` (outcome models), ``effect_control``, ``effect_treated``
        (``tau0`` and ``tau1``).
    propensity_ : float
        ``g`` of step 4.
    """

    learner = "x"
    roles = ("control", "treated", "effect_control", "effect_treated")

    def __init__(self, n_estimators: int = 100, learning_rate: float = 0.05, num_leaves: int = 7,
                 min_child_samples: int = 40, propensity: float | None = None, random_state: int = 0):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.propensity = propensity
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, treatment: Any, y: Any) -> "XLearner":
        """Fit the outcome models, impute individual effects, fit the effect models.

        Parameters and raises as :meth:`TLearner.fit`; also raises
        :class:`~churnml.errors.UserValueError` if ``propensity`` is not in (0, 1).

        Returns
        -------
        XLearner
            ``self``.
        """
        if self.propensity is not None and not 0 < float(self.propensity) < 1:
            raise UserValueError(f"propensity must lie strictly between 0 and 1, got {self.propensity}")
        prepared, treatment, y = self._start_fit(X, treatment, y)
        treated = treatment == 1
        control_x, treated_x = prepared[~treated], prepared[treated]
        boosters = {"control": self._classifier(control_x, y[~treated]),
                    "treated": self._classifier(treated_x, y[treated])}
        self.boosters_ = boosters
        imputed_treated = y[treated] - self._predict_role("control", treated_x)
        imputed_control = self._predict_role("treated", control_x) - y[~treated]
        boosters["effect_treated"] = self._regressor(treated_x, imputed_treated)
        boosters["effect_control"] = self._regressor(control_x, imputed_control)
        self.propensity_ = self.treated_share_ if self.propensity is None else float(self.propensity)
        return self

    def predict_uplift(self, X: pd.DataFrame) -> np.ndarray:
        """Estimated ``P(y=1 | treated, x) - P(y=1 | control, x)`` per row, shape ``(n_rows,)``, in [-1, 1].

        Raises
        ------
        churnml.models.classifier.FeatureMismatchError
            If ``X`` lacks a training column.
        """
        self._check_fitted()
        prepared = self._prepare(X)
        g = self.propensity_
        tau = g * self._predict_role("effect_control", prepared) + (1 - g) * self._predict_role("effect_treated",
                                                                                                 prepared)
        return np.clip(tau, -1.0, 1.0)

    def _fitted_numbers(self) -> dict[str, float]:
        return {"treated_share": self.treated_share_, "propensity": self.propensity_}

    def _set_fitted_numbers(self, numbers: Mapping[str, Any]) -> None:
        self.treated_share_ = float(numbers["treated_share"])
        self.propensity_ = float(numbers["propensity"])


LEARNERS: dict[str, type[_MetaLearner]] = {"t": TLearner, "x": XLearner}


def make_learner(learner: str = "t", **params: Any) -> TLearner | XLearner:
    """An unfitted learner by name: ``t`` (:class:`TLearner`) or ``x`` (:class:`XLearner`).

    Raises
    ------
    churnml.errors.UserValueError
        If ``learner`` is neither.
    """
    if learner not in LEARNERS:
        raise UserValueError(f"uplift learner must be one of {', '.join(LEARNERS)}, got '{learner}'")
    return LEARNERS[learner](**params)


def uplift_model_from_dict(description: Mapping[str, Any]) -> TLearner | XLearner:
    """A T- or X-learner from :meth:`TLearner.to_dict` / :meth:`XLearner.to_dict`, by its ``learner``.

    Raises
    ------
    churnml.models.persistence.ModelFormatError
        If the description is not a stored uplift learner.
    """
    kind = description.get("learner") if isinstance(description, Mapping) else None
    if kind not in LEARNERS:
        raise ModelFormatError(f"the uplift model description names learner '{kind}', "
                               f"expected one of {', '.join(LEARNERS)}")
    return LEARNERS[kind].from_dict(description)


def save_uplift_model(model: TLearner | XLearner, directory: str | Path) -> Path:
    """Write a fitted learner into ``directory`` (created; it must not exist yet): ``uplift.json``
    (settings, features, fitted numbers) and one LightGBM model text per model, ``<role>.txt``.

    Raises
    ------
    FileExistsError
        If ``directory`` exists.
    """
    description = model.to_dict()
    target = Path(directory)
    target.mkdir(parents=True)
    files = {}
    for role, text in description.pop("boosters").items():
        files[role] = f"{role}.txt"
        (target / files[role]).write_text(text, encoding="utf-8")
    description["booster_files"] = files
    (target / MODEL_FILE).write_text(json.dumps(description, indent=1), encoding="utf-8")
    return target


def load_uplift_model(directory: str | Path) -> TLearner | XLearner:
    """The learner :func:`save_uplift_model` wrote, read as data (JSON and LightGBM model text).

    Raises
    ------
    churnml.models.persistence.ModelFormatError
        If the directory holds other files than the ones its ``uplift.json`` names, or a file
        is not what it should be.
    """
    source = Path(directory)
    shown = str(source / MODEL_FILE)
    try:
        description = json.loads((source / MODEL_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        raise ModelFormatError(f"{shown} is missing or not JSON: give the directory save_uplift_model wrote") from None
    files = description.pop("booster_files", None) if isinstance(description, dict) else None
    if not isinstance(files, dict) or not all(isinstance(name, str) and name == f"{role}.txt"
                                              for role, name in files.items()):
        raise ModelFormatError(f"{shown} does not name the model texts of an uplift learner")
    unexpected = sorted({entry.name for entry in source.iterdir()} - {MODEL_FILE, *files.values()})
    if unexpected:
        raise ModelFormatError(f"{source} holds files an uplift model does not have ({', '.join(unexpected[:5])}): "
                               "remove them or save the model again")
    try:
        description["boosters"] = {role: (source / name).read_text(encoding="utf-8") for role, name in files.items()}
    except (OSError, UnicodeDecodeError):
        raise ModelFormatError(f"{source} lacks a readable model text of {sorted(files)}") from None
    return uplift_model_from_dict(description)


def _booster(text: Any, shown: str) -> Any:
    import lightgbm

    if not isinstance(text, str) or not text.startswith(BOOSTER_TEXT_START):
        raise ModelFormatError(f"{shown} is not a LightGBM model text")
    try:
        return lightgbm.Booster(model_str=text)
    except lightgbm.basic.LightGBMError:
        raise ModelFormatError(f"{shown} is not a LightGBM model text") from None


def _is_text(dtype: Any) -> bool:
    return (isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype)
            or pd.api.types.is_object_dtype(dtype))


def _checked_training(X: Any, treatment: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(X, pd.DataFrame):
        raise UserValueError(f"the uplift features must be a pandas DataFrame, got {type(X).__name__}")
    unusable = [str(name) for name, dtype in X.dtypes.items()
                if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype) or _is_text(dtype))]
    if unusable:
        raise UserValueError(f"uplift features must be numbers, flags or text; {', '.join(unusable[:5])} "
                             "are not: drop them or turn them into numbers (e.g. days since)")
    treatment = _binary(treatment, "treatment", len(X))
    y = _binary(y, "outcome", len(X))
    for flag, group in ((1, "treated"), (0, "control")):
        outcomes = y[treatment == flag]
        if not len(outcomes):
            raise UserValueError(f"the {group} group is empty: an uplift model needs treated and control rows")
        if outcomes.min() == outcomes.max():
            raise UserValueError(f"every outcome of the {group} group is {outcomes[0]}: an uplift model needs "
                                 "both outcomes in each group (use more rows or a longer outcome window)")
    return treatment, y


def _binary(values: Any, what: str, length: int | None = None) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise UserValueError(f"the {what} must be one-dimensional, got shape {array.shape}")
    if length is not None and len(array) != length:
        raise UserValueError(f"the {what} has {len(array)} values for {length} rows: give one per row")
    if array.dtype == bool:
        return array.astype(np.int64)
    try:
        numbers = array.astype(float)
    except (TypeError, ValueError):
        raise UserValueError(f"the {what} must be 0 or 1, got values such as {array[:3].tolist()}") from None
    bad = ~np.isin(numbers, (0.0, 1.0))
    if bad.any():
        raise UserValueError(f"the {what} must be 0 or 1; {int(bad.sum())} values are not, "
                             f"such as {array[bad][:3].tolist()}")
    return numbers.astype(np.int64)


# --------------------------------------------------------------------------------------------
# Evaluation: Qini curve, Qini coefficient, uplift by bin
# --------------------------------------------------------------------------------------------


def qini_curve(y: Any, treatment: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    """The Qini curve of a targeting score: incremental responders by fraction of customers targeted.

    Customers are targeted in order of decreasing ``score``. After the top ``k``,
    ``Q(k) = Y_t(k) - Y_c(k) * N_t(k) / N_c(k)``: the treated responders minus the control
    responders scaled to the number treated, i.e. the responders among the treated of the top
    ``k`` that the treatment made (Radcliffe 2007; scikit-uplift's ``qini_curve``, causalml's
    ``get_qini``). Where no control customer is among the top ``k`` yet, the control term is 0.

    Ties: customers with equal scores cannot be told apart, so the curve has points only where
    the score changes (after each group of equal scores), and is read linearly in between, as
    scikit-learn's ``roc_curve`` and scikit-uplift do. The result does not depend on row order.

    Parameters
    ----------
    y : array-like of 0/1, shape (n,)
        The outcome (a response: 1 is what the campaign wants).
    treatment : array-like of 0/1, shape (n,)
    score : array-like of float, shape (n,)
        Higher is targeted first; finite.

    Returns
    -------
    fraction : numpy.ndarray of float, shape (m + 1,)
        Share of customers targeted, from 0 to 1 (``m`` the number of distinct scores).
    incremental : numpy.ndarray of float, shape (m + 1,)
        ``Q`` there, in customers; starts at 0, ends at the whole population's ``Q(n)``.

    Raises
    ------
    churnml.errors.UserValueError
        If the lengths differ, ``y`` or ``treatment`` is not 0/1, a score is not finite, or a
        group is empty.
    """
    y, treatment, score = _checked_evaluation(y, treatment, score)
    order = np.argsort(-score, kind="stable")
    y, treatment, score = y[order], treatment[order], score[order]
    # The last row of each group of equal scores.
    ends = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]
    n_treated = np.cumsum(treatment)[ends].astype(float)
    n_control = (ends + 1) - n_treated
    y_treated = np.cumsum(y * treatment)[ends].astype(float)
    y_control = np.cumsum(y * (1 - treatment))[ends].astype(float)
    ratio = np.divide(n_treated, n_control, out=np.zeros_like(n_treated), where=n_control > 0)
    incremental = y_treated - y_control * ratio
    return np.r_[0.0, (ends + 1) / len(score)], np.r_[0.0, incremental]


def perfect_score(y: Any, treatment: Any) -> np.ndarray:
    """The ordering with the highest Qini curve a sample allows: treated responders first, control
    responders last, everyone else between (scikit-uplift's ``perfect_qini_curve`` with
    ``negative_effect=True``). Shape ``(n,)``: 1, 0 or -1."""
    y, treatment = _binary(y, "outcome"), _binary(treatment, "treatment", len(np.asarray(y)))
    return (y * treatment - y * (1 - treatment)).astype(float)


def qini_area(y: Any, treatment: Any, score: Any) -> float:
    """Area between a score's Qini curve and the random-targeting line (the straight line from 0
    to ``Q(n)``), over the fraction targeted: the incremental responders the score adds to random
    targeting, averaged over every targeting depth from 0 to 100 %. In customers.

    Raises as :func:`qini_curve`.
    """
    fraction, incremental = qini_curve(y, treatment, score)
    # The random line's area is Q(n) / 2 over the unit interval.
    return float(np.trapezoid(incremental, fraction) - incremental[-1] / 2)


def qini_coefficient(y: Any, treatment: Any, score: Any) -> float:
    """The Qini coefficient: the area between the score's Qini curve and the random line, divided
    by the same area of the perfect ordering (:func:`perfect_score`).

    This is Radcliffe's (2007) ``Q`` and scikit-uplift's ``qini_auc_score``: 1 for the best
    ordering the sample allows, 0 for random targeting, below 0 for worse than random. The ratio
    is chosen over causalml's area per customer because it does not depend on the campaign's
    size or base rate, so campaigns and models compare on one scale; the area in customers is
    :func:`qini_area`. Because the perfect ordering knows every customer's outcome, noise
    included, even the true effects score well below 1 (about 0.1 for a 0.3 lift in a third of
    a few thousand customers): compare targetings on the same rows, not against 1.

    Returns
    -------
    float
        NaN when the perfect ordering is no better than random (no responders, or nothing to order).

    Raises as :func:`qini_curve`.
    """
    actual = qini_area(y, treatment, score)
    perfect = qini_area(y, treatment, perfect_score(y, treatment))
    return float(actual / perfect) if perfect > 0 else float("nan")


def incremental_at(y: Any, treatment: Any, score: Any, fractions: Sequence[float] = FRACTIONS) -> np.ndarray:
    """The Qini curve read at the given fractions targeted (linearly between its points), shape
    ``(len(fractions),)``, in customers. Raises as :func:`qini_curve`, and if a fraction is
    outside [0, 1]."""
    fractions = _checked_fractions(fractions)
    fraction, incremental = qini_curve(y, treatment, score)
    return np.interp(fractions, fraction, incremental)


def uplift_curve(y: Any, treatment: Any, score: Any, bins: int = 10) -> pd.DataFrame:
    """Observed uplift by bin of the score: the treated response rate minus the control response
    rate among the customers of each bin (scikit-uplift's ``uplift_by_percentile``, strategy
    ``overall``), for plotting a model's ranking against what happened.

    Customers are sorted by decreasing score and cut into ``bins`` bins of equal size (the first
    ones one larger when ``n`` is not a multiple). Equal scores at a bin edge are split by row
    order (a stable sort), so the same rows give the same bins.

    Parameters
    ----------
    y, treatment, score
        As :func:`qini_curve`.
    bins : int
        At least 1 and at most ``n``.

    Returns
    -------
    pandas.DataFrame
        One row per bin, best scores first: ``bin`` (1 is the top), ``fraction_from``,
        ``fraction_to`` (share of customers before and after it), ``score_min``, ``score_max``,
        ``n_treated``, ``n_control``, ``rate_treated``, ``rate_control`` (NaN in a bin without
        the group), ``uplift`` (``rate_treated - rate_control``).

    Raises
    ------
    churnml.errors.UserValueError
        As :func:`qini_curve`, and if ``bins`` is out of range.
    """
    y, treatment, score = _checked_evaluation(y, treatment, score)
    if not 1 <= int(bins) <= len(y):
        raise UserValueError(f"bins must be between 1 and the number of rows ({len(y)}), got {bins}")
    order = np.argsort(-score, kind="stable")
    rows = []
    start = 0
    for number, part in enumerate(np.array_split(order, int(bins)), start=1):
        treated = treatment[part] == 1
        n_treated, n_control = int(treated.sum()), int((~treated).sum())
        rate_treated = y[part][treated].mean() if n_treated else np.nan
        rate_control = y[part][~treated].mean() if n_control else np.nan
        rows.append({"bin": number, "fraction_from": start / len(y), "fraction_to": (start + len(part)) / len(y),
                     "score_min": float(score[part].min()), "score_max": float(score[part].max()),
                     "n_treated": n_treated, "n_control": n_control, "rate_treated": float(rate_treated),
                     "rate_control": float(rate_control), "uplift": float(rate_treated - rate_control)})
        start += len(part)
    return pd.DataFrame(rows)


def compare_targeting(y: Any, treatment: Any, scores: Mapping[str, Any], *,
                      fractions: Sequence[float] = FRACTIONS, random: bool = True) -> pd.DataFrame:
    """How well each named targeting ranks customers by what the campaign changes.

    Parameters
    ----------
    y, treatment
        As :func:`qini_curve`.
    scores : mapping of str to array-like, shape (n,) each
        Named targetings, higher targeted first: an uplift model's estimates, a churn
        probability (higher risk first), any rule.
    fractions : sequence of float
        Targeting depths in (0, 1] to report the incremental responders at.
    random : bool
        Add a ``random`` row: the expected value of random targeting, the diagonal from 0 to
        ``Q(n)`` (coefficient and area 0, ``fraction * Q(n)`` at each depth). The diagonal is the
        line every Qini coefficient is measured from, so the row is exact where averaging
        random orders of a few seeds would only be near it.

    Returns
    -------
    pandas.DataFrame
        One row per targeting, in the given order, ``random`` last: ``targeting``,
        ``qini_coefficient`` (:func:`qini_coefficient`), ``qini_area`` (:func:`qini_area`, in
        customers), ``incremental_at_<p>pct`` for each fraction (:func:`incremental_at`, in
        customers; ``p`` the percentage, e.g. ``incremental_at_10pct``).

    Raises
    ------
    churnml.errors.UserValueError
        As :func:`qini_curve`; if ``scores`` is empty, or names ``random`` while ``random`` is set.
    """
    fractions = _checked_fractions(fractions)
    if not scores:
        raise UserValueError("compare_targeting needs at least one named score")
    if random and RANDOM in scores:
        raise UserValueError(f"a score is named '{RANDOM}', the name of the random-targeting row: rename it")
    columns = [_depth_column(fraction) for fraction in fractions]
    rows = []
    for name, score in scores.items():
        rows.append({"targeting": str(name), "qini_coefficient": qini_coefficient(y, treatment, score),
                     "qini_area": qini_area(y, treatment, score),
                     **dict(zip(columns, incremental_at(y, treatment, score, fractions)))})
    if random:
        total = qini_curve(y, treatment, np.zeros(len(np.asarray(y))))[1][-1]
        rows.append({"targeting": RANDOM, "qini_coefficient": 0.0, "qini_area": 0.0,
                     **dict(zip(columns, fractions * total))})
    return pd.DataFrame(rows, columns=["targeting", "qini_coefficient", "qini_area", *columns])


def targeting_curves(y: Any, treatment: Any, scores: Mapping[str, Any], *, random: bool = True) -> pd.DataFrame:
    """The Qini curves of named targetings as one long table for plotting.

    Returns
    -------
    pandas.DataFrame
        ``targeting``, ``fraction`` (share targeted, 0 to 1), ``incremental`` (:func:`qini_curve`,
        in customers); with ``random`` also the diagonal's two points under ``random``.

    Raises as :func:`compare_targeting`.
    """
    if random and RANDOM in scores:
        raise UserValueError(f"a score is named '{RANDOM}', the name of the random-targeting row: rename it")
    parts = []
    for name, score in scores.items():
        fraction, incremental = qini_curve(y, treatment, score)
        parts.append(pd.DataFrame({"targeting": str(name), "fraction": fraction, "incremental": incremental}))
    if random:
        total = qini_curve(y, treatment, np.zeros(len(np.asarray(y))))[1][-1]
        parts.append(pd.DataFrame({"targeting": RANDOM, "fraction": [0.0, 1.0], "incremental": [0.0, total]}))
    return pd.concat(parts, ignore_index=True)


def _depth_column(fraction: float) -> str:
    return f"incremental_at_{round(fraction * 100):g}pct"


def _checked_fractions(fractions: Sequence[float]) -> np.ndarray:
    values = np.asarray(fractions, dtype=float).reshape(-1)
    if not len(values) or not np.all((values >= 0) & (values <= 1)):
        raise UserValueError(f"targeting fractions must lie between 0 and 1, got {list(fractions)}")
    return values


def _checked_evaluation(y: Any, treatment: Any, score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = _binary(y, "outcome")
    treatment = _binary(treatment, "treatment", len(y))
    score = np.asarray(score, dtype=float)
    if score.ndim != 1 or len(score) != len(y):
        raise UserValueError(f"the score has shape {score.shape} for {len(y)} rows: give one number per row")
    if not np.isfinite(score).all():
        raise UserValueError(f"{int((~np.isfinite(score)).sum())} scores are missing or infinite: "
                             "score every customer (fill missing scores with the lowest)")
    if treatment.min(initial=1) == 1 or treatment.max(initial=0) == 0:
        raise UserValueError("a Qini curve needs treated and control customers; one group is empty")
    return y, treatment, score


# --------------------------------------------------------------------------------------------
# Campaigns: out-of-time evaluation and the model to deploy
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpliftEvaluation:
    """An uplift model fitted on earlier campaigns and judged on a later one.

    Attributes
    ----------
    model : TLearner or XLearner
        Fitted on the training campaigns.
    holdout_campaign : str
    training_campaigns : tuple of str
        In order of their first assignment.
    table : pandas.DataFrame
        :func:`compare_targeting` on the holdout campaign: ``uplift`` (the model), ``churn_risk``
        (when a risk column was given), ``random``.
    curves : pandas.DataFrame
        :func:`targeting_curves` of the same targetings.
    bins : pandas.DataFrame
        :func:`uplift_curve` of the model's estimates on the holdout campaign.
    scores : pandas.DataFrame
        The holdout rows (the frame's index): ``uplift`` (the model's estimate) and ``churn_risk``
        when given.
    """

    model: TLearner | XLearner
    holdout_campaign: str
    training_campaigns: tuple[str, ...]
    table: pd.DataFrame
    curves: pd.DataFrame
    bins: pd.DataFrame
    scores: pd.DataFrame


def assignment_arrays(frame: pd.DataFrame, features: Sequence[str], outcome: str) -> tuple[pd.DataFrame, np.ndarray,
                                                                                           np.ndarray]:
    """The features, treatment flags (1 for group ``treatment``) and outcome of assignment rows.

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per assignment: ``group`` (``treatment`` or ``control``, any case), the
        ``outcome`` column (0/1 or bool) and the ``features``.

    Returns
    -------
    X : pandas.DataFrame, shape (n, len(features))
    treatment : numpy.ndarray of int, shape (n,)
    y : numpy.ndarray of int, shape (n,)

    Raises
    ------
    churnml.errors.UserValueError
        If a column is missing, a group is neither, or the outcome is not 0/1.
    """
    _require_columns(frame, ["group", outcome, *features])
    groups = frame["group"].astype("string").str.strip().str.lower()
    unknown = groups[~groups.isin(list(GROUPS)) | groups.isna()]
    if len(unknown):
        raise UserValueError(f"{len(unknown)} assignments have a group other than treatment or control, "
                             f"such as {unknown.head(3).tolist()}: fix the treatments table")
    treatment = groups.map(GROUPS).to_numpy(dtype=np.int64)
    y = _binary(frame[outcome].to_numpy(), f"outcome column '{outcome}'")
    return frame[list(features)], treatment, y


def evaluate_out_of_time(frame: pd.DataFrame, features: Sequence[str], *, outcome: str, holdout_campaign: str,
                         window_days: int, learner: str = "t", risk: str | None = None,
                         fractions: Sequence[float] = FRACTIONS, bins: int = 10,
                         params: Mapping[str, Any] | None = None) -> UpliftEvaluation:
    """Fit an uplift model on the campaigns whose outcomes were known before the holdout
    campaign started, and compare its targeting of the holdout campaign with churn risk and random.

    A campaign trains the model when every one of its outcome windows, ``(ts, ts + window_days]``,
    closed on or before the holdout campaign's first assignment (``ts`` compared as timestamps):
    what a team deciding whom to contact in the holdout campaign would have known. Rows of the
    holdout campaign and of later campaigns cannot change the model; the holdout's outcomes only
    judge it.

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per assignment: ``campaign``, ``ts`` (assignment time), ``group``, the ``outcome``
        column, the ``features`` (taken the day before assignment) and the ``risk`` column if given.
    features : sequence of str
        The feature columns the learner uses.
    outcome : str
        The 0/1 outcome column (e.g. ``repurchased`` in the campaign's window).
    holdout_campaign : str
        The campaign to evaluate on.
    window_days : int
        Length of the outcome window in days; 0 admits every campaign assigned before the holdout,
        whether or not its outcomes were in yet.
    learner : str
        ``t`` or ``x`` (:func:`make_learner`).
    risk : str or None
        A column with each customer's churn probability at assignment; targeting by it (higher
        first) becomes the ``churn_risk`` row.
    fractions, bins
        As :func:`compare_targeting` and :func:`uplift_curve`.
    params : mapping or None
        The learner's parameters (``n_estimators``, ``random_state``...).

    Returns
    -------
    UpliftEvaluation

    Raises
    ------
    churnml.errors.UserValueError
        If a column is missing, the holdout campaign is not in ``frame``, no campaign closed
        before it, or the learner cannot be fitted (see :meth:`TLearner.fit`).
    """
    _require_columns(frame, ["campaign", "ts", *([risk] if risk else [])])
    if int(window_days) < 0:
        raise UserValueError(f"window_days must be 0 or more, got {window_days}")
    campaigns = frame["campaign"].astype("string")
    ts = pd.to_datetime(frame["ts"])
    holdout = campaigns == str(holdout_campaign)
    if not holdout.any():
        known = sorted(campaigns.dropna().unique())
        raise UserValueError(f"campaign '{holdout_campaign}' has no assignments; campaigns: {', '.join(known[:10])}")
    start = ts[holdout].min()
    spans = pd.DataFrame({"campaign": campaigns, "first": ts, "closed": ts + pd.Timedelta(days=int(window_days))})
    spans = spans[~holdout].groupby("campaign").agg(first=("first", "min"), closed=("closed", "max"))
    training = spans[spans["closed"] <= start].sort_values(["first"], kind="stable")
    if training.empty:
        raise UserValueError(f"no campaign's outcome window ({window_days} days) closed before campaign "
                             f"'{holdout_campaign}' started on {start.date()}: hold out a later campaign")
    model = fit_uplift_model(frame[campaigns.isin(training.index).to_numpy()], features, outcome=outcome,
                             learner=learner, params=params)
    X, treatment, y = assignment_arrays(frame[holdout.to_numpy()], features, outcome)
    scores = {"uplift": model.predict_uplift(X)}
    if risk:
        scores["churn_risk"] = pd.to_numeric(frame.loc[holdout.to_numpy(), risk], errors="coerce").to_numpy(float)
    return UpliftEvaluation(
        model=model, holdout_campaign=str(holdout_campaign), training_campaigns=tuple(map(str, training.index)),
        table=compare_targeting(y, treatment, scores, fractions=fractions),
        curves=targeting_curves(y, treatment, scores),
        bins=uplift_curve(y, treatment, scores["uplift"], bins=bins),
        scores=pd.DataFrame(scores, index=X.index))


def fit_uplift_model(frame: pd.DataFrame, features: Sequence[str], *, outcome: str, learner: str = "t",
                     params: Mapping[str, Any] | None = None) -> TLearner | XLearner:
    """An uplift model fitted on every assignment of ``frame`` (the model to deploy: give it the
    campaigns whose outcomes are in).

    Parameters
    ----------
    frame, features, outcome, learner, params
        As :func:`evaluate_out_of_time`.

    Returns
    -------
    TLearner or XLearner
        Fitted.

    Raises
    ------
    churnml.errors.UserValueError
        As :func:`assignment_arrays` and :meth:`TLearner.fit`.
    """
    X, treatment, y = assignment_arrays(frame, features, outcome)
    return make_learner(learner, **dict(params or {})).fit(X, treatment, y)


def _require_columns(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [name for name in dict.fromkeys(columns) if name not in frame.columns]
    if missing:
        raise UserValueError(f"the assignment table lacks {', '.join(missing)}: add the column(s) "
                             "(one row per assignment with campaign, ts, group, outcome and features)")
