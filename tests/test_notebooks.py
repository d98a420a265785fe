"""The notebooks: stored clean, parameterised, and run headless end to end on a small demo shop."""

from __future__ import annotations

import json
import sys

import nbformat
import papermill
import pytest

import churnml
from churnml.jobs import notebooks
from churnml.jobs.common import compose_settings

STORED = sorted(notebooks.NOTEBOOK_DIR.glob("*.ipynb"))


def test_the_project_notebooks_are_stored():
    assert {p.name for p in STORED} >= set(notebooks.NOTEBOOKS)


@pytest.mark.parametrize("path", STORED, ids=lambda p: p.name)
def test_stored_notebooks_have_no_outputs_and_one_parameters_cell(path):
    notebook = notebooks.read_notebook(path)
    nbformat.validate(notebook)
    assert notebooks.cells_with_outputs(notebook) == [], f"clear the outputs of {path.name} before committing it"
    assert notebooks.parameter_names(notebook), f"{path.name} has an empty parameters cell"
    assert not any(notebooks.INJECTED_TAG in c.get("metadata", {}).get("tags", []) for c in notebook.cells)
    # papermill reads the parameters cell line by line and warns of "unknown" parameters it missed.
    assert list(papermill.inspect_notebook(notebook)) == notebooks.parameter_names(notebook), (
        f"papermill cannot parse a line of {path.name}'s parameters cell (an '=' or quote in a comment?)")


def small_notebook(*sources: str, parameters: str = "size = 10\nname = 'a'") -> nbformat.NotebookNode:
    cells = [nbformat.v4.new_markdown_cell("# title"),
             nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
             *(nbformat.v4.new_code_cell(s) for s in sources)]
    return nbformat.v4.new_notebook(cells=cells)


def test_parameter_names_are_read_from_the_parameters_cell_even_with_quotes_in_comments():
    notebook = small_notebook(parameters='size = 10   # rows, as in `make x ARGS="..."`\nname: str = "a"\nsize2 = size * 2')
    assert notebooks.parameter_names(notebook) == ["size", "name", "size2"]


def test_a_notebook_needs_exactly_one_parameters_cell():
    notebook = small_notebook()
    notebook.cells.append(nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}))
    with pytest.raises(ValueError, match="exactly one"):
        notebooks.parameter_names(notebook)


def test_command_line_parameters_are_json_or_text():
    assert notebooks.parse_parameter("sample_size=500") == ("sample_size", 500)
    assert notebooks.parse_parameter("as_of=2024-06-30") == ("as_of", "2024-06-30")
    assert notebooks.parse_parameter("model_uri=null") == ("model_uri", None)
    assert notebooks.parse_parameter('overrides=["data.n_customers=1500"]') == ("overrides", ["data.n_customers=1500"])
    assert notebooks.parse_parameter("uri=models:/x@champion") == ("uri", "models:/x@champion")
    with pytest.raises(ValueError):
        notebooks.parse_parameter("no value")


def test_a_parameter_no_notebook_defines_is_refused():
    with pytest.raises(ValueError, match="sampel_size"):
        notebooks.check_parameters({"a": small_notebook()}, {"size": 1, "sampel_size": 2})


@pytest.mark.parametrize("argv, message", [
    (["-p", "sampel_size=3"], "unknown notebook parameter(s): sampel_size"),
    (["no_such_notebook"], "no notebook 'no_such_notebook'"),
    (["-p", "not a pair"], "a parameter is key=value"),
])
def test_the_command_line_refuses_a_mistake_before_running_anything(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        notebooks.main([*argv, "--no-mlflow", "--output-dir", str(tmp_path / "html")])
    assert stopped.value.code == 2
    assert f"churnml-notebooks: error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "html").exists()


@pytest.fixture
def foreign_python3_kernelspec(tmp_path, monkeypatch):
    """A ``python3`` kernelspec first on the Jupyter path whose kernel cannot start."""
    kernel = tmp_path / "jupyter" / "kernels" / "python3"
    kernel.mkdir(parents=True)
    kernel.joinpath("kernel.json").write_text(json.dumps({"argv": ["/bin/false", "{connection_file}"],
                                                          "display_name": "not this interpreter", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))


@pytest.mark.slow
def test_parameters_reach_a_kernel_of_this_interpreter_started_in_the_workdir(tmp_path, foreign_python3_kernelspec):
    workdir = tmp_path / "work"
    workdir.mkdir()
    notebook = small_notebook("import os, sys\nprint(sys.executable, os.getcwd(), size, name)",
                              "import churnml\nprint(churnml.__file__)")
    executed = notebooks.execute_notebook(notebook, {"size": [1, "x"], "name": None}, workdir, timeout=120)

    assert [c.metadata.get("tags") for c in executed.cells[1:3]] == [["parameters"], [notebooks.INJECTED_TAG]]
    assert "size = [1, \"x\"]" in executed.cells[2].source and "name = None" in executed.cells[2].source
    assert executed.cells[3].outputs[0]["text"].strip() == f"{sys.executable} {workdir.resolve()} [1, 'x'] None"
    assert executed.cells[4].outputs[0]["text"].strip() == churnml.__file__, "the kernel imports another churnml"
    assert len(notebook.cells) == 4 and notebooks.cells_with_outputs(notebook) == [], "the notebook given is left as it was"


@pytest.mark.slow
def test_a_failing_cell_stops_the_run(tmp_path):
    from papermill import PapermillExecutionError

    notebook = small_notebook("1 / 0", "print('after')")
    with pytest.raises(PapermillExecutionError, match="ZeroDivisionError"):
        notebooks.execute_notebook(notebook, {"size": 2}, tmp_path, timeout=120)


# --------------------------------------------------------------------------------------------
# End to end: train both models into a temporary store, run both notebooks on it
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory):
    """Both targets trained on a small demo shop, registered as champions in a temporary store."""
    import mlflow

    from churnml.jobs.train import run as run_train
    from test_config import compose_resolved

    root = tmp_path_factory.mktemp("explain-store")
    shared = ["data.n_customers=1500", f"data.directory={root}/data",
              f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db", f"mlflow.artifact_root={root}/artifacts"]
    training = [*shared, f"train.export_dir={root}/models", f"train.report_dir={root}/reports",
                "model.n_estimators=60", "train.cv_folds=1", "train.max_snapshots=5"]
    previous_uri = mlflow.get_tracking_uri()
    try:
        for target in ("churn", "repurchase"):
            run_train(compose_resolved("train", [f"target={target}", *training]))
        yield root, shared
    finally:
        mlflow.set_tracking_uri(previous_uri)


@pytest.mark.slow
def test_both_notebooks_run_headless_and_their_reports_reach_the_champion_run(trained_store):
    import mlflow
    from mlflow import MlflowClient

    root, overrides = trained_store
    parameters = {"overrides": overrides, "sample_size": 300, "scores_dir": str(root / "scores")}
    paths = notebooks.run_notebooks(notebooks.NOTEBOOKS, parameters, output_dir=root / "html", workdir=root)

    assert [p.name for p in paths] == ["explain_predictions.html", "churn_overview.html"]
    for path in paths:
        page = path.read_text()
        assert page.count('src="data:image/png;base64,') >= 4, f"{path.name} lacks its plots"
        assert "Traceback" not in page
    explain_page = paths[0].read_text()
    assert "btyd_prior" in explain_page or "recency_days" in explain_page

    previous_uri = mlflow.get_tracking_uri()
    try:
        run_id = notebooks.log_to_champion_run(paths, compose_settings("score", overrides))
        logged = {a.path for a in MlflowClient().list_artifacts(run_id, notebooks.ARTIFACT_DIR)}
        assert MlflowClient().get_model_version_by_alias("churnml-churn", "champion").run_id == run_id
    finally:
        mlflow.set_tracking_uri(previous_uri)
    assert logged == {"notebooks/explain_predictions.html", "notebooks/churn_overview.html"}
