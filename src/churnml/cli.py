"""Command-line stages: thin Hydra apps that read config and call the library.

This is the only module that sees a Hydra ``DictConfig``; each stage turns it into a plain dict
and hands it to a ``run_*`` function that can be called from Python as well.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("churnml")

CONFIG_PATH = str(Path(__file__).resolve().parents[2] / "conf")


def settings_from(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


def run_features(settings: Mapping[str, Any]) -> Path:
    """Build the feature table at ``settings['cutoff']`` and write it to Parquet."""
    from churnml.datasets import load_data
    from churnml.features import FeatureConfig, as_date, build_features
    from churnml.io import write_table_atomic

    dataset = load_data(settings["data"], engine=settings.get("engine", "duckdb"))
    cutoff = as_date(settings["cutoff"]) if settings.get("cutoff") else dataset.last_date
    if not dataset.first_date <= cutoff:
        raise ValueError(f"cutoff {cutoff} is before the first transaction ({dataset.first_date})")
    table = build_features(dataset, cutoff, FeatureConfig.from_dict(settings["features"]))
    output = settings["features"].get("output") or f"outputs/features/{settings['data']['name']}/cutoff={cutoff}/features.parquet"
    path = write_table_atomic(table, output)
    n_rows = int(table.count().execute())
    log.info("wrote %s customers x %s columns at cutoff %s to %s", f"{n_rows:,}", len(table.columns), cutoff, path)
    return path


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="features")
def features_app(cfg: DictConfig) -> None:
    run_features(settings_from(cfg))


STAGES = {"features": features_app}


def main() -> None:
    """``python -m churnml.cli STAGE [overrides]``: run a stage without its console script."""
    import sys

    if len(sys.argv) < 2 or sys.argv[1] not in STAGES:
        raise SystemExit(f"usage: python -m churnml.cli {{{','.join(STAGES)}}} [overrides...]")
    stage = sys.argv.pop(1)
    sys.argv[0] = f"churnml-{stage}"
    STAGES[stage]()


if __name__ == "__main__":
    main()
