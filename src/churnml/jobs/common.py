"""What every stage does the same way: connect the engine and point MLflow at the tracker."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence


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
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from churnml.config import register_configs

    register_configs()
    from churnml.config import validated

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        config = compose(config_name=config_name, overrides=list(overrides))
    settings = OmegaConf.to_container(config, resolve=True, throw_on_missing=True)
    return dict(validated(config_name, settings))  # type: ignore[arg-type]
