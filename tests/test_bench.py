"""The benchmarks import what exists: their set-up code is text run in a fresh process, which no
linter reads, so every ``from churnml... import ...`` in bench/ (code or text) is checked here."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

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
