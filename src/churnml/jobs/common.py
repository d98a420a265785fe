"""What every stage does the same way: connect the engine, point MLflow at the tracker, check
output locations and load models, with the user's mistakes raised as :class:`~churnml.errors.UserError`."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Literal, Mapping, NoReturn, Sequence

from churnml.errors import UserError, one_line

USER_ERROR_EXIT = 2
# What a complete Spark output holds: such a directory may be replaced by a file of the same name.
SPARK_SUCCESS_MARKER = "_SUCCESS"


def exit_with(stage: str, mistake: BaseException) -> NoReturn:
    """Print ``churnml-<stage>: error: <message>`` on stderr, as one line, and exit 2
    (DESIGN.md section 7)."""
    print(f"churnml-{stage}: error: {one_line(mistake)}", file=sys.stderr, flush=True)
    raise SystemExit(USER_ERROR_EXIT)


def engine_connection(settings: Mapping[str, Any]) -> Any:
    """The query engine of ``settings['engine']`` (duckdb or spark, with ``settings['spark']`` options)."""
    from churnml.io.load import connect

    engine = settings["engine"]
    return connect(engine, **(settings["spark"] or {})) if engine == "spark" else connect(engine)


def configure_tracking(settings: Mapping[str, Any]) -> Mapping[str, Any]:
    """Point MLflow at ``settings['mlflow']`` (tracking URI, experiment, artifact root); return that node."""
    from churnml import tracking

    mlflow_settings = settings["mlflow"]
    tracking.configure(mlflow_settings["tracking_uri"], mlflow_settings["experiment"], mlflow_settings.get("artifact_root"))
    return mlflow_settings


def check_output(path: str | os.PathLike, key: str, kind: Literal["file", "directory"] = "file") -> None:
    """Refuse, before any work, an output location that cannot take the result.

    ``path`` may not exist yet; its nearest existing ancestor must be a writable directory.
    Remote paths (``hdfs://``, ``s3a://``) are left to the engine.

    Parameters
    ----------
    path : str or path-like
        Where the stage will write.
    key : str
        The config key (or command-line option) that gave ``path``, for the message.
    kind : {"file", "directory"}
        What is written there. A directory is refused where a file goes (except an earlier
        Spark output, which the writers replace), and a file where a directory goes.

    Raises
    ------
    churnml.errors.UserError
        Naming ``key``, the path and what to do.
    """
    text = str(path)
    if "://" in text:
        return
    target = Path(text)
    if kind == "file" and target.is_dir() and not (target / SPARK_SUCCESS_MARKER).exists():
        raise UserError(f"{key}={text} is a directory, but a file is written there: "
                        f"give the path of a file (one inside that directory, for example)")
    if kind == "directory" and target.exists() and not target.is_dir():
        raise UserError(f"{key}={text} is a file, but a directory is written there: give a directory path")
    existing = target if kind == "directory" else target.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{key}={text} cannot be written: {existing} is a file, not a directory; "
                        f"choose another location")
    if not os.access(existing, os.W_OK | os.X_OK) or not _can_create_in(existing):
        raise UserError(f"{key}={text} cannot be written: {existing.resolve()} is read-only or not yours to write; "
                        f"choose a writable location")


def _can_create_in(directory: Path) -> bool:
    """Whether a file can be created in ``directory``: mode bits do not bind root, and a
    read-only or special file system (``/sys``) refuses writes that ``os.access`` allows."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".churnml-probe."):
            return True
    except OSError:
        return False


def check_tracking(mlflow_settings: Mapping[str, Any], reads_registry: bool = False, instead: str = "") -> None:
    """Refuse, before any work, an MLflow store that cannot be used: a local SQLite file or
    artifact root that cannot be written, or (``reads_registry``) a registry that does not exist;
    ``instead`` is what the message offers in place of the registry (``score.model_dir=models``).

    Raises
    ------
    churnml.errors.UserError
        Naming the ``mlflow.*`` key, the path and what to do.
    """
    uri = str(mlflow_settings["tracking_uri"])
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        if reads_registry and not database.exists():
            alternative = f", or use exported models ({instead})" if instead else ""
            raise UserError(f"no MLflow registry at mlflow.tracking_uri={uri} ({database.resolve()} does not exist): "
                            f"run make train first or set mlflow.tracking_uri to the store you trained with"
                            f"{alternative}")
        check_output(database, "mlflow.tracking_uri")
    if mlflow_settings.get("artifact_root") and "://" not in str(mlflow_settings["artifact_root"]):
        check_output(mlflow_settings["artifact_root"], "mlflow.artifact_root", "directory")


def is_model_uri(uri: str) -> bool:
    """Whether ``uri`` names a model in MLflow (``models:/...``, ``runs:/...``) rather than a directory."""
    return re.match(r"^[A-Za-z][\w+.-]+:/", uri) is not None


def load_model(uri: str, key: str) -> Any:
    """The ChurnModel at ``uri`` (an exported directory or an MLflow URI), given by config ``key``.

    Raises
    ------
    churnml.errors.UserError
        When a directory does not exist or cannot be read as a churnml model (damaged, cut
        short, of another program), or the registry has no such model or alias; the message
        names the URI, the key and how to make the model (``make train`` or ``make export``).
    """
    import copy
    import pickle

    from churnml import tracking

    is_directory = not is_model_uri(uri)
    if is_directory and not Path(uri).is_dir():
        raise UserError(f"no model directory {uri} ({key}): run make train or make export to write it, "
                        f"or point {key} at an exported model")
    try:
        return tracking.load_model(uri)
    except UserError as error:
        if key in str(error):
            raise
        # The same kind of error (a ModelFormatError stays one), its message led by the key.
        named = copy.copy(error)
        named.args = (f"{key}: {error}",)
        raise named from error
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError, AttributeError,
            ImportError) as error:
        if not is_directory:
            raise
        raise UserError(f"cannot load the model in {Path(uri).resolve()} ({key}): {type(error).__name__}: "
                        f"{error}; it is damaged or not a churnml model: export it again (make export) "
                        f"or retrain (make train)") from error


def config_dir() -> Path:
    """The configs that ship in the package (``churnml/conf``)."""
    return Path(__file__).resolve().parents[1] / "conf"


def compose_settings(config_name: str = "score", overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved Hydra configuration ``config_name`` with ``overrides``, as plain containers:
    what the stage of that name would run with, for notebooks, tests and benchmarks.

    Parameters
    ----------
    config_name : str
        A primary config: ``features``, ``train``, ``evaluate`` or ``score`` (data, features,
        mlflow and the two models' URIs: all the notebooks need).
    overrides : sequence of str
        Hydra overrides, as on a stage's command line (``data.n_customers=1500``).

    Raises
    ------
    churnml.errors.UserError
        For an override that does not parse, an unknown key or option, a value of the wrong
        type or one the library refuses, naming the key (:func:`churnml.config.validated`).
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from churnml.config import config_error_message, register_configs, validated

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            config = compose(config_name=config_name, overrides=list(overrides))
        settings = OmegaConf.to_container(config, resolve=True, throw_on_missing=True)
    except (HydraException, OmegaConfBaseException) as error:
        raise UserError(config_error_message(error, config_name)) from error
    return dict(validated(config_name, settings))  # type: ignore[arg-type]
