"""The package's layers, read from the source with ``ast``: who may import whom, and what importing costs.

Every module under ``src/churnml`` belongs to a layer, named by its first component below
``churnml`` (``churnml.io.contract`` -> ``io``). A module may import from its own layer and from
layers of a lower rank, never from a higher one; imports inside functions count too, and so do
those under ``if TYPE_CHECKING:`` (they state a dependency just the same). The ranks:

    ====  ==========================================  ===========================================
    rank  layer                                       notes
    ====  ==========================================  ===========================================
    0     ``churnml`` (``__init__``), ``conf``,         the package; Hydra's YAML; the user-error
          ``errors``                                    exception every layer raises
    1     ``io``, ``simulate``                          ``io.sources`` writes the demo shop
    2     ``features``
    3     ``evaluation``                                arrays in, numbers out; knows no models
    4     ``models``                                    training reports with evaluation's metrics
    5     ``scoring``, ``loyalty``, ``programs``
    6     ``explain``, ``serve``                        reuse scoring
    7     ``tracking``, ``config``                      MLflow; the stage schemas, which read the
                                                      defaults of the library's dataclasses
    8     ``jobs``                                      one ``run(settings)`` per stage
    9     ``cli``                                       the Hydra apps
    ====  ==========================================  ===========================================

A module of a layer missing from this table fails the test: give it a rank here first.

Besides the ranks: only ``churnml.tracking`` imports ``mlflow``; only ``jobs/``, ``cli.py`` and
``config.py`` (which registers the schemas in Hydra's ConfigStore) import ``hydra`` or ``omegaconf``; and importing every module does no work beyond definitions
(checked in a fresh interpreter: no file opened under its working directory, none written there,
and little time spent beyond importing the third-party modules the package imports at top level).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "churnml"

RANKS = {
    "churnml": 0, "conf": 0, "errors": 0,
    "io": 1, "simulate": 1,
    "features": 2,
    "evaluation": 3,
    "models": 4,
    "scoring": 5, "loyalty": 5, "programs": 5,
    "explain": 6, "serve": 6,
    "tracking": 7, "config": 7,
    "jobs": 8,
    "cli": 9,
}
MLFLOW_IMPORTERS = {"churnml.tracking"}
HYDRA_LAYERS = {"jobs", "cli", "config"}
# Seconds that importing every churnml module may take once the third-party modules they import at
# top level are loaded: definitions cost milliseconds; a data load or a model fit costs seconds.
OWN_IMPORT_SECONDS = 2.0


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    """``churnml.io.load`` -> ``io``; ``churnml`` -> ``churnml``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


@dataclass(frozen=True)
class Import:
    module: str      # the importing module
    target: str      # the imported module (a churnml module resolved to the deepest one that exists)
    line: int
    top_level: bool  # run when the module is imported (not in a function, not under TYPE_CHECKING)

    def __str__(self) -> str:
        return f"{MODULES[self.module].relative_to(SRC.parent)}:{self.line} imports {self.target}"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _in_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether ``node`` stands where importing the module does not run it: in a function or
    under ``if TYPE_CHECKING:``."""
    while node in parents:
        child, node = node, parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
        if isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body:
            return True
    return False


def imports_of(module: str) -> list[Import]:
    """Every import statement of ``module``, wherever it stands."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            if base == "__future__":
                continue
            # `from churnml import tracking` imports the module churnml.tracking.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        top_level = not _in_function(node, parents)
        found.extend(Import(module, target, node.lineno, top_level) for target in dict.fromkeys(targets))
    return found


ALL_IMPORTS = [imp for module in MODULES for imp in imports_of(module)]


def _root(name: str) -> str:
    return name.split(".")[0]


# --------------------------------------------------------------------------------------------
# The checker itself
# --------------------------------------------------------------------------------------------


def test_the_modules_are_found_and_imports_are_resolved():
    assert {"churnml", "churnml.cli", "churnml.io.load", "churnml.jobs.train", "churnml.tracking"} <= set(MODULES)
    by_target = {(imp.module, imp.target) for imp in ALL_IMPORTS}
    # `from churnml import tracking` inside a function, `from churnml.evaluation import drift, report`
    # at top level, `from churnml.jobs.common import ...`.
    assert ("churnml.jobs.common", "churnml.tracking") in by_target
    assert ("churnml.models.training", "churnml.evaluation.drift") in by_target
    assert ("churnml.models.training", "churnml.evaluation.report") in by_target
    assert any(imp.target == "mlflow" and not imp.top_level for imp in ALL_IMPORTS if imp.module == "churnml.tracking")


def test_relative_imports_resolve_against_the_package():
    node = ast.parse("from ..io import load").body[0]
    assert _resolve("churnml.features.build", node) == "churnml.io"
    assert _resolve("churnml.features", ast.parse("from .build import x").body[0]) == "churnml.features.build"


# --------------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------------


def test_every_module_belongs_to_a_ranked_layer():
    unranked = sorted(m for m in MODULES if layer(m) not in RANKS)
    assert not unranked, f"give these modules' layers a rank in tests/test_layers.py: {unranked}"


def test_no_module_imports_from_a_layer_above_its_own():
    upward = [imp for imp in ALL_IMPORTS
              if _root(imp.target) == "churnml" and layer(imp.module) in RANKS and layer(imp.target) in RANKS
              and RANKS[layer(imp.target)] > RANKS[layer(imp.module)]]
    assert not upward, "imports from a higher layer:\n" + "\n".join(
        f"  {imp} ({layer(imp.module)} {RANKS[layer(imp.module)]} -> {layer(imp.target)} {RANKS[layer(imp.target)]})"
        for imp in upward)


def test_only_tracking_imports_mlflow():
    offenders = [imp for imp in ALL_IMPORTS if _root(imp.target) == "mlflow" and imp.module not in MLFLOW_IMPORTERS]
    assert not offenders, "mlflow imported outside churnml.tracking:\n" + "\n".join(f"  {imp}" for imp in offenders)


def test_only_jobs_and_the_cli_import_hydra_or_omegaconf():
    offenders = [imp for imp in ALL_IMPORTS
                 if _root(imp.target) in {"hydra", "omegaconf"} and layer(imp.module) not in HYDRA_LAYERS]
    assert not offenders, "hydra/omegaconf imported below jobs/:\n" + "\n".join(f"  {imp}" for imp in offenders)


# --------------------------------------------------------------------------------------------
# Nothing runs at import time
# --------------------------------------------------------------------------------------------

_IMPORT_PROBE = r"""
import importlib, json, os, sys, time

modules, third_party = json.loads(sys.argv[1]), json.loads(sys.argv[2])
here = os.getcwd()
opened = []

def audit(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.abspath(os.fsdecode(args[0]))
        if path == here or path.startswith(here + os.sep):
            opened.append(path)

start = time.perf_counter()
for name in third_party:
    try:
        importlib.import_module(name)
    except ImportError:
        pass  # an optional dependency; the churnml import below tells whether it is needed
third_party_seconds = time.perf_counter() - start
sys.addaudithook(audit)
start = time.perf_counter()
for name in modules:
    importlib.import_module(name)
own_seconds = time.perf_counter() - start
print(json.dumps({"third_party_seconds": third_party_seconds, "own_seconds": own_seconds, "opened": opened,
                  "files": sorted(os.listdir(here)), "churnml": importlib.import_module("churnml").__file__}))
"""


def _third_party_top_level_imports() -> list[str]:
    names = {imp.target for imp in ALL_IMPORTS if imp.top_level and _root(imp.target) not in {"churnml", "__future__"}}
    return sorted(names)


def test_importing_every_module_does_no_work(tmp_path):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, "-P", "-c", _IMPORT_PROBE, json.dumps(sorted(MODULES)), json.dumps(_third_party_top_level_imports())],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(probe["churnml"]).resolve().is_relative_to(SRC), probe["churnml"]
    assert probe["opened"] == [], f"files opened under the working directory at import time: {probe['opened']}"
    assert probe["files"] == [], f"files written to the working directory at import time: {probe['files']}"
    assert probe["own_seconds"] < OWN_IMPORT_SECONDS, (
        f"importing churnml's {len(MODULES)} modules took {probe['own_seconds']:.2f} s on top of "
        f"{probe['third_party_seconds']:.2f} s of third-party imports: something runs at import time")


@pytest.mark.parametrize("source, top_level", [("import x", True), ("def f():\n    import x", False),
                                               ("class A:\n    def f(self):\n        import x", False),
                                               ("if True:\n    import x", True),
                                               ("if TYPE_CHECKING:\n    import x", False),
                                               ("if TYPE_CHECKING:\n    pass\nelse:\n    import x", True)])
def test_imports_inside_functions_are_told_apart(source, top_level):
    tree = ast.parse(source)
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.Import))
    assert (not _in_function(node, parents)) is top_level
