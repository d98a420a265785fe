"""``python -m churnml.cli export``: both champions from the registry to a directory (MLflow format)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from churnml.errors import UserError
from churnml.jobs.common import check_output, check_tracking, configure_tracking


def run(settings: Mapping[str, Any]) -> list[Path]:
    """Export the champion of each target from the registry to ``train.export_dir`` (MLflow format).

    Raises
    ------
    churnml.errors.UserError
        Before any export, when ``train.export_dir`` is unset or cannot be written, or the
        registry does not exist, or has no champion of a target.
    """
    from churnml import tracking
    from churnml.features.labels import TARGETS
    from churnml.models.registry import registered_name

    if not settings["train"].get("export_dir"):
        raise UserError("train.export_dir is not set: give train.export_dir=DIRECTORY")
    check_output(settings["train"]["export_dir"], "train.export_dir", "directory")
    check_tracking(settings["mlflow"], reads_registry=True)
    prefix = configure_tracking(settings)["registered_model_prefix"]
    names = [registered_name(prefix, target) for target in TARGETS]
    # Every champion is looked up before any is exported: a missing one leaves the directory as it was.
    for name in names:
        tracking.require_alias(name)
    paths = [tracking.export_model(name, settings["train"]["export_dir"]) for name in names]
    for path in paths:
        print(f"exported {path}")
    return paths
