"""The benchmarks import what exists: their set-up code is text run in a fresh process, which no
linter reads, so every ``from churnml... import ...`` in bench/ (code or text) is checked here."""

from __future__ import annotations

import importlib
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from churnml.evaluation.metrics import best_classical

BENCH = Path(__file__).resolve().parents[1] / "bench"
IMPORT = re.compile(r"from (churnml(?:\.\w+)*) import ([\w, ]+?)(?:\\n|\n|;|\"|$)", re.M)


def churnml_imports() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted(BENCH.glob("*.py")):
        for module, names in IMPORT.findall(path.read_text()):
            for name in names.split(","):
                found.append((path.name, module, name.strip().split(" as ")[0]))
    return found


def test_the_benchmarks_import_churnml():
    assert len(churnml_imports()) > 20


@pytest.mark.parametrize("where, module, name", churnml_imports())
def test_every_name_a_benchmark_imports_exists(where, module, name):
    imported = importlib.import_module(module)
    assert hasattr(imported, name) or importlib.util.find_spec(f"{module}.{name}") is not None, (
        f"{where}: from {module} import {name}")


def quality_bench():
    import sys

    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("bench_quality")
    finally:
        sys.path.remove(str(BENCH))


def comparison(**model) -> pd.DataFrame:
    """A comparison table as training makes it: two classical scores and their best per metric."""
    columns = ["roc_auc", "pr_auc", "brier", "log_loss", "top_decile_lift"]
    rows = {"model": [0.80, 0.50, 0.100, 0.330, 3.0],
            "bgnbd": [0.78, 0.52, 0.102, 0.335, 3.1],
            "rfm": [0.79, 0.45, 0.110, 0.360, 2.9]}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    for metric, value in model.items():
        table.at["model", metric] = value
    table.loc["best_classical"] = best_classical(table)["value"]
    return table


def test_the_quality_verdict_needs_a_win_on_every_metric_over_the_best_classical_score():
    judge = quality_bench().verdict
    wins = judge(comparison(pr_auc=0.53))
    assert wins["met"]
    # Margins are against the best of any classical score, per metric: rfm's ROC AUC, bgnbd's PR AUC.
    assert wins["roc_auc"] == pytest.approx(0.01) and wins["pr_auc"] == pytest.approx(0.01)
    assert wins["brier"] == pytest.approx(-0.002) and wins["log_loss"] == pytest.approx(-0.005)
    assert judge(comparison(pr_auc=0.53, brier=0.102, log_loss=0.335))["met"]  # ties on the losses are no worse
    loses_log_loss = judge(comparison(pr_auc=0.53, log_loss=0.336))
    assert not loses_log_loss["met"] and loses_log_loss["log_loss"] == pytest.approx(0.001)
    assert not judge(comparison())["met"]  # PR AUC below bgnbd's
    assert not judge(comparison(pr_auc=0.53, roc_auc=0.79))["met"]  # a tie on ROC AUC is no win
    assert not judge(comparison(pr_auc=math.nan))["met"]
