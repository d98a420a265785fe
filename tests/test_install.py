"""The package as a user gets it: a wheel installed into a fresh virtualenv, run outside the checkout.

How, without downloading every dependency:

1. The wheel is built from a copy of the project (``pyproject.toml``, ``README.md``, ``src/``) with
   ``pip wheel --no-deps``: first without build isolation (offline, when the installed setuptools
   meets ``build-system.requires``), else with it (pip fetches the build backend from its cache or
   the index).
2. A virtualenv is made from the running interpreter with ``--without-pip``; a ``.pth`` file in
   its site-packages holds the path of the running environment's site-packages, so the
   third-party dependencies are found there. A plain path line adds that directory only: the
   ``.pth`` files inside it (the checkout's editable install among them) are not read.
3. The wheel goes in with the running pip (``python -m pip install --no-deps --no-index
   --ignore-installed``), which writes ``churnml`` to the new site-packages and the console
   scripts to the new ``bin/``; nothing in the running environment changes.

The commands then run with ``PYTHONPATH`` unset, from a directory outside the checkout.
"""

from __future__ import annotations

import ast
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CUTOFF = "1997-12-31"


def _run(command: list[str | Path], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _build_wheel(project: Path, dist: Path) -> Path:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    base = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", dist]
    # The virtualenv has the build backend (make setup installs build-system.requires), so the
    # build needs no network.
    built = _run([*base, "--no-build-isolation", "--no-index", project], project, env)
    assert built.returncode == 0, f"pip wheel failed:\n{built.stderr[-2000:]}"
    (wheel,) = dist.glob("churnml-*.whl")
    return wheel


class Installed:
    """A virtualenv with churnml installed from its wheel."""

    def __init__(self, root: Path):
        self.root = root
        self.venv = root / "venv"
        self.bin = self.venv / "bin"
        self.python = self.bin / "python"
        self.env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
        self.env["MPLBACKEND"] = "Agg"

    def run(self, command: list[str | Path], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
        return _run(command, cwd, self.env, timeout)

    def script(self, name: str) -> Path:
        return self.bin / name


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("install")
    project = root / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheel = _build_wheel(project, root / "dist")

    env = Installed(root)
    made = _run([sys.executable, "-m", "venv", "--without-pip", env.venv], root)
    assert made.returncode == 0, made.stderr
    (new_site,) = env.venv.glob("lib/python*/site-packages")
    (new_site / "churnml-dependencies.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))
    # The running pip installs into the new environment because the new interpreter runs it.
    pip = env.run([env.python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "--quiet", wheel], root)
    assert pip.returncode == 0, pip.stderr
    return env


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """A working directory outside the checkout."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    assert not workdir.resolve().is_relative_to(ROOT)
    return workdir


def test_churnml_is_imported_from_the_wheel_with_its_configs(installed, elsewhere):
    code = ("import churnml, churnml.cli, importlib.resources as r; print(churnml.__file__); "
            "print(sorted(p.name for p in r.files('churnml.conf').joinpath('data').iterdir()))")
    probe = installed.run([installed.python, "-c", code], elsewhere)
    assert probe.returncode == 0, probe.stderr
    location, configs = probe.stdout.strip().splitlines()
    location = Path(location).resolve()
    assert location.is_relative_to(installed.venv.resolve()), location
    assert not location.is_relative_to(ROOT / "src")
    assert {"cdnow.yaml", "demo.yaml", "files.yaml"} <= set(ast.literal_eval(configs))
    for name in ("churnml-features", "churnml-train", "churnml-evaluate", "churnml-score", "churnml-export", "churnml-kpis",
                 "churnml-experiment", "churnml-serve", "churnml-notebooks"):
        assert installed.script(name).exists(), name


def test_features_and_training_run_from_the_installed_package(installed, elsewhere, tmp_path):
    out = tmp_path / "out"
    features = installed.run([installed.python, "-m", "churnml.cli", "features", "data=cdnow", f"as_of={CUTOFF}",
                              f"features.output={out}/f.parquet"], elsewhere)
    assert features.returncode == 0, features.stderr[-3000:]
    table = pd.read_parquet(out / "f.parquet")
    assert len(table) > 20_000 and table["customer_id"].is_unique

    train = installed.run([installed.script("churnml-train"), "data=cdnow", "target=repurchase", f"cutoff={CUTOFF}",
                           "model.n_estimators=20", "train.max_snapshots=4", "train.cv_folds=0",
                           f"train.export_dir={out}/models", f"train.report_dir={out}/reports",
                           f"mlflow.tracking_uri=sqlite:///{out}/mlflow.db", f"mlflow.artifact_root={out}/mlartifacts"],
                          elsewhere, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (out / "mlflow.db").stat().st_size > 0
    assert any((out / "models").rglob("MLmodel")), sorted((out / "models").rglob("*"))
    assert any((out / "reports").rglob("*.html")), sorted((out / "reports").rglob("*"))
    assert any((out / "mlartifacts").rglob("*")), "no artifacts logged"


@pytest.mark.parametrize("how", ["config-dir", "searchpath"])
def test_a_config_directory_of_ones_own_adds_a_data_source(installed, elsewhere, tmp_path, how):
    shop = tmp_path / "shop.csv"
    shop.write_text("Cust,When,Total\nA,2024-01-01,10\nA,2024-02-01,20\nB,2024-01-15,5\nB,2024-03-01,7\n")
    myconf = tmp_path / "myconf"
    (myconf / "data").mkdir(parents=True)
    files_yaml = (ROOT / "src/churnml/conf/data/files.yaml").read_text()
    assert "path: ???" in files_yaml and "name: files" in files_yaml
    mine = files_yaml.replace("name: files", "name: myshop").replace(
        "path: ???", f"path: {shop}\n  columns: {{customer_id: Cust, ts: When, amount: Total}}", 1)
    (myconf / "data" / "myshop.yaml").write_text(mine)

    where = ["--config-dir", myconf] if how == "config-dir" else [f"hydra.searchpath=[file://{myconf}]"]
    output = tmp_path / "f.parquet"
    result = installed.run([installed.script("churnml-features"), *where, "data=myshop", "as_of=2024-02-15",
                            f"features.output={output}"], elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    features = pd.read_parquet(output).set_index("customer_id")
    assert features.loc["A", "frequency"] == 2 and features.loc["A", "monetary_total"] == 30
    assert features.loc["B", "frequency"] == 1, "B's purchase after the cutoff is not counted"
