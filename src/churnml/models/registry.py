"""Names in the model registry: one registered model per target, the champion alias."""

from __future__ import annotations

CHAMPION = "champion"


def registered_name(prefix: str, target: str) -> str:
    """``<prefix>-<target>``, e.g. ``churnml-churn``: the registered name of a target's model."""
    return f"{prefix}-{target}"


def registered_model_uri(name: str, alias: str = CHAMPION) -> str:
    """``models:/<name>@<alias>``: the version of a registered model an alias points to."""
    return f"models:/{name}@{alias}"
