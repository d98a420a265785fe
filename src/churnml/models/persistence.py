"""Models stored as data and loaded by churnml's own code, never unpickled.

A fitted :class:`~churnml.models.classifier.ChurnModel` is written as a directory of data files:

- ``model.json``: settings, feature names and categories, the prior's weights, the calibrator
  (coefficients or isotonic thresholds), the date the training labels reach, the drift
  reference and the unfitted estimator's class and parameters;
- ``booster.txt``: LightGBM's own model text (LightGBM models);
- ``estimator.skops``: the scikit-learn pipeline of a linear model, in skops' format, loaded
  with an explicit list of the scikit-learn types it may hold;
- ``tree_tables.npz``: the scoring tables of the trees, NumPy arrays read without pickle.

In MLflow that directory is the ``data`` of a ``python_function`` model whose loader is this
module (``loader_module``), so the registry keeps versions and aliases while the stored bytes
stay data. :func:`load_model` reads a model directory (``MLmodel`` plus ``data/churnml``, as
logged, downloaded or exported) only after checking that every file in it is one it expects and
parses as what it should be; anything else, a pickle above all, is refused with its path named.

The trust boundary: loading runs no code from the directory, so a model directory from anywhere
can at worst give wrong scores, never run a program. What MLflow's own ``mlflow.pyfunc.load_model``
does with a directory is MLflow's: churnml never calls it on a directory it did not check.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import pickletools
from pathlib import Path
from typing import Any

import numpy as np

from churnml.errors import UserError
from churnml.models.classifier import BoosterClassifier, ChurnModel, is_lightgbm

FORMAT = "churnml.model"
FORMAT_VERSION = 1
# The module MLflow's MLmodel names as the loader of a churnml model.
LOADER_MODULE = "churnml.models.persistence"
# Where MLflow puts the data directory inside a model directory (``data_path`` is copied to data/<name>).
DATA_NAME = "churnml"
DATA_PATH = f"data/{DATA_NAME}"
MODEL_FILE = "model.json"
BOOSTER_FILE = "booster.txt"
ESTIMATOR_FILE = "estimator.skops"
TABLES_FILE = "tree_tables.npz"
DATA_FILES = (MODEL_FILE, BOOSTER_FILE, ESTIMATOR_FILE, TABLES_FILE)
# Files MLflow writes beside the model (or an export adds); checked by kind, never executed.
METADATA_FILES = {
    "MLmodel": "yaml", "conda.yaml": "yaml", "python_env.yaml": "yaml", "registered_model_meta": "yaml",
    "requirements.txt": "requirements", "input_example.json": "json", "serving_input_example.json": "json",
    "churnml.json": "json",
}
# The unfitted estimators a stored model may name, by the class path kept in model.json.
ESTIMATORS = {
    "lightgbm.sklearn.LGBMClassifier": ("lightgbm", "LGBMClassifier"),
    "sklearn.linear_model._logistic.LogisticRegression": ("sklearn.linear_model", "LogisticRegression"),
}
# The scikit-learn types skops may build when it loads a linear model's pipeline
# (ChurnModel's "scaled" preprocessing); any other type in the file is refused.
TRUSTED_SKLEARN_TYPES = [
    "sklearn.pipeline.Pipeline",
    "sklearn.compose._column_transformer.ColumnTransformer",
    "sklearn.impute._base.SimpleImputer",
    "sklearn.impute._base.MissingIndicator",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._encoders.OneHotEncoder",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.utils._bunch.Bunch",
    "builtins.slice",
    "numpy.dtype",
    "numpy.dtypes.Float64DType",
    "numpy.dtypes.Int64DType",
    "numpy.dtypes.ObjectDType",
    "numpy.dtypes.BoolDType",
    "numpy.float64",
    "numpy.int64",
]
# Fitted attributes a ChurnModel may carry; saving refuses others rather than dropping them.
_STORED = {"feature_names_in_", "n_features_in_", "categories_", "classes_", "prior_fallback_", "prior_weights_",
           "prior_mean_", "estimator_", "calibrator_", "trained_through_", "reference_profile_", "tree_tables_",
           "seasonality_"}
# Kept on copies for one scoring run (a population's BG/NBD fits; tables of older versions): not stored.
_TRANSIENT = {"population_priors_", "_tree_tables"}


class ModelFormatError(UserError):
    """A model directory holds something churnml does not load: a pickle, an unknown file, or a
    file that is not what its name says."""


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save_model(model: ChurnModel, directory: str | Path) -> Path:
    """Write a fitted model's data files into ``directory`` (created; it must not exist yet).

    Parameters
    ----------
    model : ChurnModel
        Fitted; its estimator a LightGBM classifier with native preprocessing or a linear
        scikit-learn pipeline with scaled preprocessing, its calibrator sigmoid, isotonic or None.
    directory : str or Path

    Returns
    -------
    Path
        ``directory``, holding ``model.json`` and ``booster.txt`` or ``estimator.skops``, and
        ``tree_tables.npz`` when the model carries tables.

    Raises
    ------
    ValueError
        If the model holds a part that cannot be stored as data (another estimator, an
        unknown fitted attribute).
    FileExistsError
        If ``directory`` exists.
    """
    fitted = {name for name in vars(model) if name.endswith("_") and not name.startswith("__")}
    unknown = sorted(fitted - _STORED - _TRANSIENT)
    if unknown:
        raise ValueError(f"the model carries fitted attributes churnml does not store: {', '.join(unknown)}")
    target = Path(directory)
    target.mkdir(parents=True)
    description: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "params": {name: getattr(model, name) for name in
                   ("preprocessing", "calibration", "early_stopping_rounds", "prior", "target", "horizon_days")},
        "estimator": _estimator_description(model.estimator),
        "feature_names_in": list(model.feature_names_in_),
        "categories": {name: list(values) for name, values in model.categories_.items()},
        "prior_fallback": float(model.prior_fallback_),
        "prior_mean": float(model.prior_mean_),
        "prior_weights": _list_or_none(getattr(model, "prior_weights_", None)),
        "seasonality": _list_or_none(getattr(model, "seasonality_", None)),
        "trained_through": _date_text(getattr(model, "trained_through_", None)),
        "reference_profile": getattr(model, "reference_profile_", None),
        "calibrator": _calibrator_description(model.calibrator_),
    }
    estimator = model.estimator_
    if model.preprocessing == "native" and is_lightgbm(estimator):
        (target / BOOSTER_FILE).write_text(estimator.booster_.model_to_string(), encoding="utf-8")
        description["inner"] = {"kind": "lightgbm", "file": BOOSTER_FILE}
    elif model.preprocessing == "scaled" and type(estimator).__name__ == "Pipeline":
        import skops.io

        (target / ESTIMATOR_FILE).write_bytes(skops.io.dumps(estimator))
        description["inner"] = {"kind": "sklearn_pipeline", "file": ESTIMATOR_FILE}
    else:
        raise ValueError(f"a {type(estimator).__name__} with {model.preprocessing} preprocessing cannot be stored as data")
    if "tree_tables_" not in vars(model):
        description["tree_tables"] = "absent"
    elif model.tree_tables_ is None:
        # Training found the trees too large to tabulate: scoring should not try again.
        description["tree_tables"] = None
    else:
        _save_tables(model.tree_tables_, target / TABLES_FILE)
        description["tree_tables"] = TABLES_FILE
    (target / MODEL_FILE).write_text(json.dumps(description, indent=1, default=_json_default), encoding="utf-8")
    return target


def requirements() -> list[str]:
    """The packages a churnml model needs to be loaded, pinned to the versions that saved it
    (MLflow's ``pip_requirements``; given so that MLflow does not load the model in a
    subprocess to infer them)."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for package in ("churnml", "lightgbm", "scikit-learn", "skops", "numpy", "pandas"):
        try:
            pinned.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pinned.append(package)
    return pinned


def _estimator_description(estimator: Any) -> dict[str, Any]:
    path = f"{type(estimator).__module__}.{type(estimator).__qualname__}"
    if path not in ESTIMATORS:
        raise ValueError(f"a {path} estimator cannot be stored as data: use one of {', '.join(ESTIMATORS)}")
    return {"class": path, "params": json.loads(json.dumps(estimator.get_params(deep=False), default=_json_default))}


def _calibrator_description(calibrator: Any) -> dict[str, Any] | None:
    if calibrator is None:
        return None
    name = type(calibrator).__name__
    if name == "LogisticRegression":
        return {"kind": "sigmoid", "params": calibrator.get_params(), "classes": calibrator.classes_.tolist(),
                "coef": calibrator.coef_.tolist(), "intercept": calibrator.intercept_.tolist(),
                "n_iter": calibrator.n_iter_.tolist()}
    if name == "IsotonicRegression":
        return {"kind": "isotonic", "params": calibrator.get_params(),
                "X_thresholds": calibrator.X_thresholds_.tolist(), "y_thresholds": calibrator.y_thresholds_.tolist(),
                "X_min": float(calibrator.X_min_), "X_max": float(calibrator.X_max_),
                "increasing": bool(calibrator.increasing_)}
    raise ValueError(f"a {name} calibrator cannot be stored as data")


def _save_tables(tables: Any, path: Path) -> None:
    arrays = {field.name: np.asarray(getattr(tables, field.name)) for field in dataclasses.fields(tables)}
    objects = [name for name, values in arrays.items() if values.dtype == object]
    if objects:
        raise ValueError(f"tree tables with object arrays cannot be stored as data: {', '.join(objects)}")
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} cannot be stored in model.json")


def _list_or_none(values: Any) -> list | None:
    return None if values is None else np.asarray(values, dtype=float).tolist()


def _date_text(value: Any) -> str | None:
    return None if value is None else dt.date.fromisoformat(str(value)[:10]).isoformat()


# --------------------------------------------------------------------------------------------
# Checking and loading
# --------------------------------------------------------------------------------------------


def load_model(directory: str | Path, source: str | None = None) -> ChurnModel:
    """The model stored in a model directory, read as data after every file in it is checked.

    Parameters
    ----------
    directory : str or Path
        A model directory (``MLmodel`` and ``data/churnml/``, as MLflow logs it and
        ``churnml-export`` writes it) or a data directory written by :func:`save_model`.
    source : str, optional
        What to call the directory in messages (a ``models:/`` URI it was downloaded from);
        default its path.

    Returns
    -------
    ChurnModel
        Scores as the saved model did.

    Raises
    ------
    ModelFormatError
        If the directory is missing, or holds a file churnml does not expect (a pickle of an
        older churnml: ``model.pkl``), or a file that does not parse as what it should be.
    """
    root = Path(directory)
    where = source or str(directory)
    data = check_model_directory(root, where)
    return _read_model(data, where if data == root else f"{where.rstrip('/')}/{DATA_PATH}")


def check_model_directory(directory: str | Path, source: str | None = None) -> Path:
    """Check that ``directory`` holds only the files of a churnml model and that each parses as
    what it should be; return its data directory (``data/churnml`` of a model directory, or
    ``directory`` itself when it is a data directory).

    Nothing in the directory is executed or unpickled: metadata files are parsed as YAML
    (``safe_load``), JSON or requirement lines, data files by :func:`load_model`.

    Raises
    ------
    ModelFormatError
        Naming the first file that is not as expected and how to fix it.
    """
    root = Path(directory)
    where = (source or str(directory)).rstrip("/")
    if not root.is_dir():
        raise ModelFormatError(f"no model directory at {where}: give a directory written by churnml-export "
                               "(score.model_dir) or a models:/ URI of the registry")
    entries = sorted(root.rglob("*"))
    if (root / MODEL_FILE).is_file():
        allowed_files, allowed_dirs, prefix = set(DATA_FILES), set(), ""
    else:
        allowed_files = set(METADATA_FILES) | {f"{DATA_PATH}/{name}" for name in DATA_FILES}
        allowed_dirs, prefix = {"data", DATA_PATH}, f"{DATA_PATH}/"
    for entry in entries:
        relative = entry.relative_to(root).as_posix()
        shown = f"{where}/{relative}"
        if entry.is_symlink():
            raise ModelFormatError(f"{shown} is a link: a churnml model directory holds plain files only; "
                                   "retrain or re-export the model (make train, or make export)")
        if entry.is_dir():
            if relative not in allowed_dirs:
                raise _unexpected(shown, entry)
            continue
        if relative not in allowed_files:
            raise _unexpected(shown, entry)
        if relative in METADATA_FILES:
            _check_metadata(entry, METADATA_FILES[relative], shown)
    data = root / prefix if prefix else root
    if not (data / MODEL_FILE).is_file():
        raise ModelFormatError(f"{where} holds no churnml model ({prefix}{MODEL_FILE} is missing): retrain, or "
                               "re-export it with churnml-export")
    if prefix:
        _check_mlmodel(root / "MLmodel", f"{where}/MLmodel")
    return data


def _unexpected(shown: str, entry: Path) -> ModelFormatError:
    if entry.is_file() and (entry.suffix in {".pkl", ".pickle", ".joblib"} or _is_pickle(entry)):
        return ModelFormatError(f"{shown} is a pickle, which churnml never loads (it could run any code): the model "
                                "is in an older format or was tampered with; retrain it or re-export it with this "
                                "version of churnml (make train, or make export)")
    kind = "directory" if entry.is_dir() else "file"
    return ModelFormatError(f"{shown} is a {kind} a churnml model directory does not hold: remove it, or retrain or "
                            "re-export the model (make train, or make export)")


def _is_pickle(path: Path) -> bool:
    """Whether the file starts with a complete pickle: decoded opcode by opcode up to its STOP,
    nothing executed."""
    try:
        with open(path, "rb") as handle:
            return any(opcode.name == "STOP" for opcode, _, _ in pickletools.genops(handle))
    except Exception:
        return False


def _refused(shown: str, what: str, path: Path | None = None) -> ModelFormatError:
    if path is not None and _is_pickle(path):
        what = "is a pickle, which churnml never loads (it could run any code)"
    return ModelFormatError(f"{shown} {what}: the model directory is damaged or was tampered with; retrain the "
                            "model or re-export it (make train, or make export)")


def _text(path: Path, shown: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _refused(shown, "is not UTF-8 text", path) from None


def _check_metadata(path: Path, kind: str, shown: str) -> Any:
    text = _text(path, shown)
    if kind == "yaml":
        import yaml

        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError:
            raise _refused(shown, "is not YAML", path) from None
        if not isinstance(parsed, dict):
            raise _refused(shown, "is not a YAML mapping", path)
        return parsed
    if kind == "json":
        return _json_object(text, shown, path)
    from packaging.requirements import InvalidRequirement, Requirement

    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                Requirement(line)
            except InvalidRequirement:
                raise _refused(shown, f"holds '{line[:40]}', not a package requirement", path) from None
    return text


def _json_object(text: str, shown: str, path: Path) -> dict:
    try:
        parsed = json.loads(text)
    except ValueError:
        raise _refused(shown, "is not JSON", path) from None
    if not isinstance(parsed, dict):
        raise _refused(shown, "is not a JSON object", path)
    return parsed


def _check_mlmodel(path: Path, shown: str) -> None:
    """The MLmodel must name this module as the loader of ``data/churnml`` and no code to import."""
    import yaml

    flavors = yaml.safe_load(path.read_text(encoding="utf-8")).get("flavors")
    flavor = flavors.get("python_function") if isinstance(flavors, dict) else None
    if isinstance(flavors, dict) and "sklearn" in flavors:
        raise ModelFormatError(f"{shown} describes a pickled scikit-learn model (an older churnml format, which "
                               "cannot be trusted): retrain the model, or re-export a version trained with this churnml")
    if (not isinstance(flavor, dict) or flavor.get("loader_module") != LOADER_MODULE or flavor.get("data") != DATA_PATH
            or flavor.get("code") or set(flavors) != {"python_function"}):
        raise _refused(shown, f"does not describe a churnml model (python_function loaded by {LOADER_MODULE} "
                              f"from {DATA_PATH}, no code)")


def _read_model(data: Path, where: str) -> ChurnModel:
    description = _json_object(_text(data / MODEL_FILE, f"{where}/{MODEL_FILE}"), f"{where}/{MODEL_FILE}",
                               data / MODEL_FILE)
    shown = f"{where}/{MODEL_FILE}"
    if description.get("format") != FORMAT or description.get("format_version") != FORMAT_VERSION:
        raise _refused(shown, f"is not a churnml model of format version {FORMAT_VERSION}")
    try:
        return _model_from(description, data, where)
    except ModelFormatError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise _refused(shown, f"does not describe a model churnml can rebuild ({type(error).__name__}: {error})") from None


def _model_from(description: dict, data: Path, where: str) -> ChurnModel:
    params = description["params"]
    model = ChurnModel(estimator=_estimator_from(description["estimator"]), **params)
    model.feature_names_in_ = [str(name) for name in description["feature_names_in"]]
    model.n_features_in_ = len(model.feature_names_in_)
    model.categories_ = {str(name): [str(v) for v in values] for name, values in description["categories"].items()}
    model.classes_ = np.array([0, 1])
    model.prior_fallback_ = float(description["prior_fallback"])
    model.prior_mean_ = float(description["prior_mean"])
    if description["prior_weights"] is not None:
        model.prior_weights_ = np.asarray(description["prior_weights"], dtype=float)
    # Models saved before seasonality existed have none.
    seasonality = description.get("seasonality")
    model.seasonality_ = None if seasonality is None else np.asarray(seasonality, dtype=float)
    if description["trained_through"] is not None:
        model.trained_through_ = dt.date.fromisoformat(description["trained_through"])
    if description["reference_profile"] is not None:
        model.reference_profile_ = description["reference_profile"]
    model.calibrator_ = _calibrator_from(description["calibrator"])
    inner = description["inner"]
    file = data / inner["file"]
    shown = f"{where}/{inner['file']}"
    if inner["kind"] == "lightgbm" and inner["file"] == BOOSTER_FILE:
        model.estimator_ = BoosterClassifier(_booster(file, shown))
    elif inner["kind"] == "sklearn_pipeline" and inner["file"] == ESTIMATOR_FILE:
        model.estimator_ = _pipeline(file, shown)
    else:
        raise _refused(f"{where}/{MODEL_FILE}", f"names an inner model churnml does not load ({inner})")
    tables = description["tree_tables"]
    if tables == TABLES_FILE:
        model.tree_tables_ = _tables(data / TABLES_FILE, f"{where}/{TABLES_FILE}")
    elif tables is None:
        model.tree_tables_ = None
    elif tables != "absent":
        raise _refused(f"{where}/{MODEL_FILE}", f"names tree tables churnml does not load ({tables})")
    return model


def _estimator_from(description: dict) -> Any:
    import importlib

    module, name = ESTIMATORS[description["class"]]
    return getattr(importlib.import_module(module), name)(**description["params"])


def _calibrator_from(description: dict | None) -> Any:
    if description is None:
        return None
    if description["kind"] == "sigmoid":
        from sklearn.linear_model import LogisticRegression

        calibrator = LogisticRegression(**description["params"])
        calibrator.classes_ = np.asarray(description["classes"])
        calibrator.coef_ = np.asarray(description["coef"], dtype=float)
        calibrator.intercept_ = np.asarray(description["intercept"], dtype=float)
        calibrator.n_iter_ = np.asarray(description["n_iter"], dtype=np.int32)
        calibrator.n_features_in_ = calibrator.coef_.shape[1]
        return calibrator
    if description["kind"] == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        calibrator = IsotonicRegression(**description["params"])
        # __setstate__ is how scikit-learn rebuilds the interpolation from the thresholds.
        import sklearn

        calibrator.__setstate__({**calibrator.__dict__, "_sklearn_version": sklearn.__version__,
                                 "X_thresholds_": np.asarray(description["X_thresholds"], dtype=float),
                                 "y_thresholds_": np.asarray(description["y_thresholds"], dtype=float),
                                 "X_min_": float(description["X_min"]), "X_max_": float(description["X_max"]),
                                 "increasing_": bool(description["increasing"])})
        return calibrator
    raise ValueError(f"unknown calibrator kind {description['kind']!r}")


def _booster(path: Path, shown: str) -> Any:
    import lightgbm

    text = _text(path, shown)
    # LightGBM's model text starts so; anything else is refused before LightGBM's parser sees it.
    if not text.startswith("tree\nversion="):
        raise _refused(shown, "is not a LightGBM model text", path)
    try:
        return lightgbm.Booster(model_str=text)
    except lightgbm.basic.LightGBMError:
        raise _refused(shown, "is not a LightGBM model text", path) from None


def _pipeline(path: Path, shown: str) -> Any:
    import skops.io

    content = path.read_bytes()
    try:
        untrusted = skops.io.get_untrusted_types(data=content)
    except Exception:
        raise _refused(shown, "is not a skops file", path) from None
    refused = sorted(set(untrusted) - set(TRUSTED_SKLEARN_TYPES))
    if refused:
        raise _refused(shown, f"holds types churnml does not load: {', '.join(refused[:5])}")
    try:
        return skops.io.loads(content, trusted=TRUSTED_SKLEARN_TYPES)
    except Exception as error:
        raise _refused(shown, f"cannot be read by skops ({type(error).__name__})") from None


def _tables(path: Path, shown: str) -> Any:
    from churnml.models.contributions import TreeTables

    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except Exception:
        # ValueError for pickled content, BadZipFile and OSError for anything else that is no .npz.
        raise _refused(shown, "is not a NumPy .npz archive of plain arrays", path) from None
    fields = {field.name: field for field in dataclasses.fields(TreeTables)}
    if set(arrays) != set(fields):
        raise _refused(shown, "does not hold the arrays of tree tables")
    scalars = {name for name, field in fields.items() if field.type in ("float", float)}
    return TreeTables(**{name: float(values) if name in scalars else values for name, values in arrays.items()})


# --------------------------------------------------------------------------------------------
# MLflow's python_function flavour
# --------------------------------------------------------------------------------------------


class PyfuncModel:
    """What ``mlflow.pyfunc.load_model`` gives for a churnml model: ``predict`` returns the
    calibrated probabilities of the negative and positive class, shape ``(n_rows, 2)``.

    Attributes
    ----------
    model : ChurnModel
    """

    def __init__(self, model: ChurnModel):
        self.model = model

    def predict(self, model_input: Any, params: dict | None = None) -> np.ndarray:
        """``model.predict_proba`` of a feature table (a pandas DataFrame)."""
        return self.model.predict_proba(model_input)

    def get_raw_model(self) -> ChurnModel:
        """The ChurnModel (what MLflow's ``PyFuncModel.get_raw_model()`` returns)."""
        return self.model


def _load_pyfunc(data_path: str) -> PyfuncModel:
    """MLflow's entry point (``loader_module``): the model of a data directory, checked and read
    as data like :func:`load_model`."""
    return PyfuncModel(load_model(data_path))
