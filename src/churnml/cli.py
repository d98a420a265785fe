"""The console scripts: one Hydra app per stage, each a one-liner around ``churnml.jobs.<stage>.run``.

``python -m churnml.cli STAGE [overrides]`` runs a stage without its console script (also the
entry point ``spark-submit`` is given). Configs ship in the package (``churnml/conf``); a
directory of one's own joins them with ``--config-dir DIR`` or ``hydra.searchpath=[file://DIR]``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

import hydra
from omegaconf import DictConfig, OmegaConf

CONFIG_PATH = "conf"


def settings_from(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


def _stage_app(config_name: str, stage: str) -> Callable[[], Any]:
    """The console script of a stage: register the schemas, then run ``churnml.jobs.<stage>.run``
    as a Hydra app on the config ``config_name``."""

    @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)
    def app(cfg: DictConfig) -> Any:
        from churnml.config import validated

        job = importlib.import_module(f"churnml.jobs.{stage}")
        return job.run(validated(config_name, settings_from(cfg)))

    def main() -> Any:
        from churnml.config import register_configs

        register_configs()
        return app()

    main.__name__ = f"{stage}_app"
    return main


features_app = _stage_app("features", "features")
train_app = _stage_app("train", "train")
evaluate_app = _stage_app("evaluate", "evaluate")
score_app = _stage_app("score", "score")
export_app = _stage_app("train", "export")


def notebooks_app() -> None:
    """``churnml-notebooks``: run the notebooks headless (argparse, not Hydra)."""
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
