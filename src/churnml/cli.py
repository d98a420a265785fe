"""The console scripts: one Hydra app per stage, each a one-liner around ``churnml.jobs.<stage>.run``.

``python -m churnml.cli STAGE [overrides]`` runs a stage without its console script (also the
entry point ``spark-submit`` is given). Configs ship in the package (``churnml/conf``); a
directory of one's own joins them with ``--config-dir DIR`` or ``hydra.searchpath=[file://DIR]``.
"""

from __future__ import annotations

import sys
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

CONFIG_PATH = "conf"


def settings_from(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="features")
def features_app(cfg: DictConfig) -> None:
    from churnml.jobs import features

    features.run(settings_from(cfg))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def train_app(cfg: DictConfig) -> float:
    from churnml.jobs import train

    return train.run(settings_from(cfg))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="evaluate")
def evaluate_app(cfg: DictConfig) -> None:
    from churnml.jobs import evaluate

    evaluate.run(settings_from(cfg))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="score")
def score_app(cfg: DictConfig) -> None:
    from churnml.jobs import score

    score.run(settings_from(cfg))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def export_app(cfg: DictConfig) -> None:
    from churnml.jobs import export

    export.run(settings_from(cfg))


def notebooks_app() -> None:
    from churnml.jobs import notebooks

    notebooks.main(sys.argv[1:])


STAGES = {"features": features_app, "train": train_app, "evaluate": evaluate_app, "score": score_app,
          "export": export_app}


def main() -> None:
    """``python -m churnml.cli STAGE [overrides]``: run a stage without its console script."""
    if len(sys.argv) < 2 or sys.argv[1] not in STAGES:
        raise SystemExit(f"usage: python -m churnml.cli {{{','.join(STAGES)}}} [overrides...]")
    stage = sys.argv.pop(1)
    sys.argv[0] = f"churnml-{stage}"
    STAGES[stage]()


if __name__ == "__main__":
    main()
