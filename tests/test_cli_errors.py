"""The error contract of every console script (DESIGN.md section 7): a mistake of the user's prints
one line ``churnml-<stage>: error: ...`` on stderr, exits 2 and writes nothing; a defect keeps
its traceback; ``HYDRA_FULL_ERROR=1`` shows everything.

Each case runs the console script's entry point in a fresh interpreter, in an empty working
directory, exactly as the installed script does (``churnml.cli:<stage>_app``), on this
checkout's source.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

import churnml
from churnml.errors import UserError

SOURCE = str(Path(churnml.__file__).resolve().parents[1])
ENTRY_POINTS = {"features": "features_app", "train": "train_app", "evaluate": "evaluate_app",
                "score": "score_app", "export": "export_app", "kpis": "kpis_app", "experiment": "experiment_app",
                "serve": "serve_app", "notebooks": "notebooks_app"}


def run_stage(stage: str, *args: str, cwd: Path, env: dict | None = None, before: str = "") -> subprocess.CompletedProcess:
    """``churnml-<stage> args...`` in ``cwd``; ``before`` is Python run first (to plant a defect)."""
    code = (f"import sys; sys.argv[0] = 'churnml-{stage}'; {before}\n"
            f"from churnml.cli import {ENTRY_POINTS[stage]}; sys.exit({ENTRY_POINTS[stage]}())")
    environment = {**os.environ, "PYTHONPATH": SOURCE, **(env or {})}
    environment.pop("HYDRA_FULL_ERROR", None) if "HYDRA_FULL_ERROR" not in (env or {}) else None
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=300)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def assert_one_line_refusal(result: subprocess.CompletedProcess, stage: str, *culprits: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"churnml-{stage}: error: "), lines[0]
    for culprit in culprits:
        assert culprit in lines[0], (culprit, lines[0])
    return lines[0]


@pytest.fixture
def workdir(tmp_path) -> Path:
    """An empty working directory with a small valid CSV of orders beside it (not inside)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "orders.csv").write_text(
        "customer_id,ts,amount\nA,2024-01-01,10\nA,2024-02-01,20\nB,2024-01-15,5\n")
    (tmp_path / "run").mkdir()
    return tmp_path / "run"


def orders(workdir: Path) -> str:
    return str(workdir.parent / "in" / "orders.csv")


def write_input(workdir: Path, text: str) -> str:
    path = workdir.parent / "in" / "custom.csv"
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------------------------
# One line, exit 2, nothing written: one case per kind of mistake
# --------------------------------------------------------------------------------------------

CASES = {
    # the project's before-stop check
    "missing input file": ("features", ["data=files", "data.transactions.path=/nonexistent/orders.csv"],
                           ["/nonexistent/orders.csv", "data.transactions.path"]),
    "no input file given": ("features", ["data=files"], ["data.transactions.path"]),
    "value of the wrong type": ("train", ["train.max_snapshots=abc"], ["train.max_snapshots", "Integer"]),
    "misspelt key": ("train", ["train.max_snapshot=3"], ["train.max_snapshot", "did you mean train.max_snapshots"]),
    "key added with +": ("features", ["+features.window_days=[30]"], ["features.window_days"]),
    "unknown config group option": ("train", ["data=nosuch"], ["data/nosuch", "cdnow, demo, files"]),
    "override that does not parse": ("score", ["score.reasons=["], ["score.reasons=["]),
    "value the library refuses": ("features", ["features.windows_days=[90,30]"], ["features.windows_days"]),
    "unknown choice": ("score", ["score.format=xls"], ["score.format=xls", "parquet, csv"]),
    "date that is not a date": ("features", ["as_of=2024-13-45"], ["2024-13-45", "YYYY-MM-DD"]),
    "missing model directory": ("score", ["score.model_dir=absent"], ["absent/churnml-churn", "score.model_dir",
                                                                         "make train"]),
    "target of no KPI": ("kpis", ["kpis.targets.churn.kpi=revenue"], ["kpis.targets.churn.kpi=revenue", "churn_rate"]),
    "campaigns of a data set without treatments": ("experiment", ["data=cdnow"],
                                                   ["'cdnow'", "no treatments table", "data.treatments.path"]),
    "experiment setting out of range": ("experiment", ["experiment.plan_power=1.5"], ["experiment.plan_power=1.5"]),
    "serve setting out of range": ("serve", ["serve.port=70000"], ["serve.port=70000", "1 to 65535"]),
    "missing model directory to serve": ("serve", ["score.model_dir=absent"], ["absent/churnml-churn", "score.model_dir"]),
    "no registry to evaluate": ("evaluate", [], ["mlflow.tracking_uri", "make train"]),
    "no registry to export": ("export", [], ["mlflow.tracking_uri", "make train"]),
    "unknown notebook parameter": ("notebooks", ["-p", "sampel_size=3", "--no-mlflow"], ["sampel_size"]),
    "unknown notebook option": ("notebooks", ["--bogus"], ["--bogus"]),
}


# The before-stop check's case runs with the fast tests; each case costs an interpreter start (~5 s).
@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c == "missing input file" else pytest.mark.slow)
                                  for c in sorted(CASES)])
def test_a_mistake_is_one_line_exit_2_and_writes_nothing(case, workdir):
    stage, args, culprits = CASES[case]
    result = run_stage(stage, *args, cwd=workdir)
    assert_one_line_refusal(result, stage, *culprits)
    assert tree(workdir) == set()


@pytest.mark.slow
def test_data_problems_are_named_with_file_column_count_and_examples(workdir):
    path = write_input(workdir, "CustID,ts,amount\nA,2024-01-01,ten\nB,2024-01-02,5\nC,2024-01-03,1.2.3\n")
    mapped = run_stage("features", "data=files", f"data.transactions.path={path}",
                       "data.transactions.columns.customer_id=CustID", cwd=workdir)
    line = assert_one_line_refusal(mapped, "features", path, "column 'amount'", "(2 of 3 rows)", "'ten'", "'1.2.3'")
    assert line.count("invalid input data") == 1
    two = write_input(workdir, "customer_id,ts,amount\nA,soon,ten\nB,2024-01-02,5\n")
    result = run_stage("features", "data=files", f"data.transactions.path={two}", cwd=workdir)
    assert_one_line_refusal(result, "features", "2 problems", "(1) ", "(2) ", "column 'ts'", "'soon'",
                            "column 'amount'", "'ten'")
    assert tree(workdir) == set()


def test_a_wrong_ts_format_names_file_column_count_and_examples(workdir):
    path = write_input(workdir, "customer_id,ts,amount\nA,31/01/2024,10\nB,2024-02-01,5\nC,29/02/2024,5\n")
    result = run_stage("features", "data=files", f"data.transactions.path={path}",
                       "data.transactions.ts_format=%d/%m/%Y", cwd=workdir)
    assert_one_line_refusal(result, "features", path, "column 'ts'", "ts_format '%d/%m/%Y'",
                            "data.transactions.ts_format", "(1 of 3 rows)", "row 2: '2024-02-01'")
    assert tree(workdir) == set()


@pytest.mark.slow
def test_an_as_of_outside_the_data_names_the_date_to_use(workdir):
    result = run_stage("features", "data=files", f"data.transactions.path={orders(workdir)}", "as_of=2030-01-01",
                       cwd=workdir)
    assert_one_line_refusal(result, "features", "as_of 2030-01-01", "use 2024-02-01 or earlier")
    assert tree(workdir) == set()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["an existing directory", "under a file"])
def test_an_output_location_that_cannot_take_a_file_is_refused_before_the_work(where, workdir):
    blocker = workdir.parent / "blocker"
    if where == "an existing directory":
        blocker.mkdir()
        output = blocker
    else:
        blocker.write_text("a file")
        output = blocker / "features.parquet"
    result = run_stage("features", "data=files", f"data.transactions.path={orders(workdir)}",
                       f"features.output={output}", cwd=workdir)
    assert_one_line_refusal(result, "features", "features.output", str(blocker))
    assert tree(workdir) == set()


@pytest.mark.slow
def test_a_read_only_output_location_is_refused_before_the_work(workdir):
    # sysfs refuses new files to every user, root included (mode bits do not bind root).
    result = run_stage("features", "data=files", f"data.transactions.path={orders(workdir)}",
                       "features.output=/sys/churnml/f.parquet", cwd=workdir)
    assert_one_line_refusal(result, "features", "features.output", "read-only")
    assert tree(workdir) == set()


@pytest.mark.slow
def test_a_damaged_model_names_its_path_and_how_to_make_it_again(workdir):
    models = workdir.parent / "models"
    for target in ("churn", "repurchase"):
        model = models / f"churnml-{target}"
        model.mkdir(parents=True)
        model.joinpath("MLmodel").write_text(
            "flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n    model_path: model.pkl\n"
            "  sklearn:\n    pickled_model: model.pkl\n    serialization_format: cloudpickle\n")
        model.joinpath("model.pkl").write_bytes(b"\x80\x04\x95\x10\x00\x00")  # a pickle cut short
    result = run_stage("score", "data=files", f"data.transactions.path={orders(workdir)}",
                       f"score.model_dir={models}", f"mlflow.tracking_uri=sqlite:///{workdir.parent}/mlflow.db",
                       cwd=workdir)
    assert_one_line_refusal(result, "score", str(models / "churnml-churn"), "score.model_dir", "make export")
    assert tree(workdir) == set() and not (workdir.parent / "mlflow.db").exists()


# --------------------------------------------------------------------------------------------
# Defects and HYDRA_FULL_ERROR
# --------------------------------------------------------------------------------------------


def test_a_defect_keeps_its_traceback(workdir):
    defect = "import churnml.jobs.features as job; job.run = lambda settings: 1 / 0"
    result = run_stage("features", "data=files", f"data.transactions.path={orders(workdir)}", cwd=workdir,
                       before=defect)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ZeroDivisionError" in result.stderr
    assert "error: " not in result.stderr.splitlines()[-1] or "ZeroDivisionError" in result.stderr.splitlines()[-1]


@pytest.mark.slow
def test_hydra_full_error_shows_the_traceback_of_a_mistake_too(workdir):
    result = run_stage("features", "data=files", "data.transactions.path=/nonexistent/orders.csv", cwd=workdir,
                       env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "DataValidationError" in result.stderr


@pytest.mark.slow
def test_the_column_mapping_needs_no_plus(workdir):
    path = write_input(workdir, "CustID,ts,amount\nA,2024-01-01,10\nA,2024-02-01,20\n")
    output = workdir.parent / "features.parquet"
    result = run_stage("features", "data=files", f"data.transactions.path={path}",
                       "data.transactions.columns.customer_id=CustID", f"features.output={output}", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert output.exists()


# --------------------------------------------------------------------------------------------
# The pieces, in process
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_full_or_read_only_disk_is_the_users_to_fix(code):
    from churnml.cli import users_mistake

    mistake = users_mistake(OSError(code, os.strerror(code), "/data/out/scores.parquet"))
    assert isinstance(mistake, UserError) and "/data/out/scores.parquet" in str(mistake)
    assert users_mistake(OSError(errno.ENOENT, "gone", "/x")) is None
    assert users_mistake(ZeroDivisionError()) is None


def test_the_one_line_of_a_multiline_message():
    from churnml.errors import one_line

    assert one_line("first\n  second\n\nthird ") == "first; second; third"


@pytest.mark.slow
def test_notebooks_without_a_champion_refuse_before_running_any(workdir):
    make_registry = (f"import mlflow; mlflow.set_tracking_uri('sqlite:///{workdir}/mlflow.db'); "
                     "mlflow.MlflowClient().search_registered_models()")
    subprocess.run([sys.executable, "-c", make_registry], check=True, capture_output=True, timeout=300)
    before = tree(workdir)
    result = run_stage("notebooks", "--output-dir", str(workdir / "reports"), cwd=workdir)
    assert_one_line_refusal(result, "notebooks", "churnml-churn@champion", "make train")
    assert tree(workdir) == before


@pytest.mark.slow
def test_serve_refuses_a_port_in_use_before_loading_anything(workdir):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_stage("serve", f"serve.port={port}", "score.model_dir=absent", cwd=workdir)
    assert_one_line_refusal(result, "serve", f"cannot listen on 127.0.0.1:{port}", "serve.port")
    assert tree(workdir) == set()
