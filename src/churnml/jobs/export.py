"""``python -m churnml.cli export``: both champions from the registry to a directory (MLflow format)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from churnml.jobs.common import configure_tracking


def run(settings: Mapping[str, Any]) -> list[Path]:
    """Export the champion of each target from the registry to ``train.export_dir`` (MLflow format)."""
    from churnml import tracking
    from churnml.features.labels import TARGETS
    from churnml.models.registry import registered_name

    prefix = configure_tracking(settings)["registered_model_prefix"]
    paths = [tracking.export_model(registered_name(prefix, target), settings["train"]["export_dir"])
             for target in TARGETS]
    for path in paths:
        print(f"exported {path}")
    return paths
