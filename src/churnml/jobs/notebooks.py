"""Run the notebooks in ``notebooks/`` headless, with parameters, and keep HTML copies.

``churnml-notebooks [NOTEBOOK ...] [--output-dir reports/notebooks] [-p key=value ...]``
executes each notebook top to bottom with papermill on a kernel of the running interpreter, stops
at the first cell that fails, writes ``<output-dir>/<notebook>.html`` with the plots embedded, and
attaches the HTML files to the MLflow run of the champion churn model (unless ``--no-mlflow``).

Parameters are papermill's: the notebook's cell tagged ``parameters`` holds the defaults; the
values given here go into a cell tagged ``injected-parameters`` right after it. A value is read
as JSON, else kept as text; a name that no notebook defines is an error.

The notebooks read the project's configuration with :func:`churnml.jobs.common.compose_settings` (``score.yaml`` of
the package's configs and its overrides, shared by both notebooks, as in ``make score ARGS="..."``).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import sys
from pathlib import Path
from typing import Any, Mapping, NoReturn, Sequence

from churnml.errors import UserError, one_line
from churnml.jobs.common import check_output, check_tracking, compose_settings

log = logging.getLogger("churnml.jobs.notebooks")

# The notebooks live in the project's checkout, beside src/.
NOTEBOOK_DIR = Path(__file__).resolve().parents[3] / "notebooks"
NOTEBOOKS = ("explain_predictions.ipynb", "churn_overview.ipynb")
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
DEFAULT_OUTPUT_DIR = "reports/notebooks"
ARTIFACT_DIR = "notebooks"
CELL_TIMEOUT_SECONDS = 1800
KERNEL_START_SECONDS = 120
KERNEL_NAME = "python3"


# --------------------------------------------------------------------------------------------
# Configuration, for the notebooks
# --------------------------------------------------------------------------------------------


def parse_parameter(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is read as JSON, else kept as text.

    ``sample_size=500`` gives an int, ``as_of=2024-06-30`` text, ``model_uri=null`` None and
    ``overrides='["data.n_customers=1500"]'`` a list.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise ValueError(f"a parameter is key=value with a Python name as key, got '{text}'")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _tagged(cell: Any, tag: str) -> bool:
    return tag in cell.get("metadata", {}).get("tags", [])


def parameters_cell_index(notebook: Any) -> int:
    """Position of the one code cell tagged ``parameters`` (papermill injects after the first).

    Raises
    ------
    ValueError
        When there is no such cell or more than one.
    """
    found = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code" and _tagged(cell, PARAMETERS_TAG)]
    if len(found) != 1:
        raise ValueError(f"a notebook needs exactly one code cell tagged '{PARAMETERS_TAG}', found {len(found)}")
    return found[0]


def parameter_names(notebook: Any) -> list[str]:
    """Names assigned in the notebook's ``parameters`` cell, in order.

    Read with ``ast`` rather than papermill's line parser, which skips a line whose comment holds
    a quote.
    """
    source = notebook.cells[parameters_cell_index(notebook)].source
    names = []
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names.extend(t.id for t in targets if isinstance(t, ast.Name))
    return names


def check_parameters(notebooks: Mapping[str, Any], parameters: Mapping[str, Any]) -> None:
    """Raise ValueError for a parameter that none of the notebooks defines (a typo, most likely;
    papermill would only warn)."""
    known = {name for notebook in notebooks.values() for name in parameter_names(notebook)}
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise ValueError(f"unknown notebook parameter(s): {', '.join(unknown)}; the notebooks define: {', '.join(sorted(known))}")


def cells_with_outputs(notebook: Any) -> list[int]:
    """Positions of the code cells that hold outputs or an execution count."""
    return [i for i, cell in enumerate(notebook.cells)
            if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)]


# --------------------------------------------------------------------------------------------
# Execution
# --------------------------------------------------------------------------------------------


def _this_interpreter_kernel_manager() -> type:
    """A kernel manager class whose kernels run ipykernel on ``sys.executable``.

    Whatever ``python3`` kernelspec the Jupyter paths hold (a system Python, another venv), the
    notebooks then see the packages of the interpreter that runs them. Relative ``PYTHONPATH``
    entries are made absolute, since the kernel starts in another working directory.
    """
    import os

    from ipykernel.kernelspec import get_kernel_dict
    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import AsyncKernelManager

    # Resolved here, in the caller's working directory (papermill changes it before the kernel starts).
    env = {}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in os.environ["PYTHONPATH"].split(os.pathsep) if p)

    class ThisInterpreterKernelManager(AsyncKernelManager):
        @property
        def kernel_spec(self) -> KernelSpec:
            spec = {k: v for k, v in get_kernel_dict().items() if k in KernelSpec.class_trait_names()}
            return KernelSpec(name=KERNEL_NAME, resource_dir="", **{**spec, "env": {**spec.get("env", {}), **env}})

    return ThisInterpreterKernelManager


def execute_notebook(
    notebook: Any,
    parameters: Mapping[str, Any],
    workdir: str | Path,
    timeout: int = CELL_TIMEOUT_SECONDS,
    progress: bool = False,
) -> Any:
    """Run ``notebook`` with papermill: ``parameters`` in a cell tagged ``injected-parameters``
    after the ``parameters`` cell, every cell in a fresh kernel of this interpreter started in
    ``workdir``. Returns the executed copy; ``notebook`` is left as it was.

    Raises
    ------
    papermill.PapermillExecutionError
        At the first cell that raises, with its traceback.
    """
    import papermill

    return papermill.execute_notebook(
        notebook,
        None,
        parameters=dict(parameters),
        kernel_name=KERNEL_NAME,
        language="python",
        cwd=str(Path(workdir).resolve()),
        progress_bar=progress,
        request_save_on_cell_execute=False,
        start_timeout=KERNEL_START_SECONDS,
        execution_timeout=timeout,
        # Passed on to nbclient: the kernel runs on sys.executable, whatever kernelspec is installed.
        kernel_manager_class=_this_interpreter_kernel_manager(),
    )


def to_html(notebook: Any) -> str:
    """A self-contained HTML page of an executed notebook, images embedded as data URIs."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(embed_images=True).from_notebook_node(notebook)
    return body


def read_notebook(path: str | Path) -> Any:
    """A notebook file as an ``nbformat`` node (format version 4)."""
    import nbformat

    return nbformat.read(str(path), as_version=4)


def notebook_path(name: str) -> Path:
    """A notebook by file name (in ``notebooks/``), stem, or path."""
    given = Path(name)
    if given.suffix == ".ipynb" and given.exists():
        return given
    candidate = NOTEBOOK_DIR / (given.name if given.suffix == ".ipynb" else f"{given.name}.ipynb")
    if not candidate.exists():
        raise FileNotFoundError(f"no notebook '{name}'; available: {', '.join(NOTEBOOKS)}")
    return candidate


def run_notebooks(
    names: Sequence[str] = NOTEBOOKS,
    parameters: Mapping[str, Any] | None = None,
    output_dir: str | Path = DEFAULT_OUTPUT_DIR,
    workdir: str | Path = ".",
    timeout: int = CELL_TIMEOUT_SECONDS,
    progress: bool = False,
) -> list[Path]:
    """Execute notebooks with ``parameters`` and write ``<output_dir>/<stem>.html`` for each.

    Each notebook gets the parameters its ``parameters`` cell defines; a parameter no notebook
    defines is an error. Returns the HTML paths, in the order of ``names``.
    """
    from churnml.io.files import write_text_atomic

    parameters = dict(parameters or {})
    notebooks = {name: read_notebook(notebook_path(name)) for name in names}
    check_parameters(notebooks, parameters)
    written = []
    for name, notebook in notebooks.items():
        own = {k: v for k, v in parameters.items() if k in parameter_names(notebook)}
        log.info("executing %s with %s", name, own or "its default parameters")
        executed = execute_notebook(notebook, own, workdir, timeout, progress)
        path = write_text_atomic(to_html(executed), Path(output_dir) / f"{notebook_path(name).stem}.html")
        log.info("wrote %s", path)
        written.append(Path(path))
    return written


def log_to_champion_run(paths: Sequence[Path], settings: Mapping[str, Any], target: str = "churn") -> str:
    """Attach report files to the MLflow run of ``models:/<prefix>-<target>@champion``; return its run id."""
    from churnml import tracking
    from churnml.models.registry import CHAMPION, registered_name

    tracking.use_tracking_uri(settings["mlflow"]["tracking_uri"])
    name = registered_name(settings["mlflow"]["registered_model_prefix"], target)
    run_id = ""
    for path in paths:
        run_id = tracking.log_report_to_model_run(name, CHAMPION, path, ARTIFACT_DIR)
    return run_id


def require_champion(settings: Mapping[str, Any], target: str = "churn") -> None:
    """Refuse, before any notebook runs, a registry without the champion the reports go to.

    Raises
    ------
    churnml.errors.UserError
        When the registry has no ``<prefix>-<target>@champion``.
    """
    from churnml import tracking
    from churnml.models.registry import CHAMPION, registered_name

    tracking.use_tracking_uri(settings["mlflow"]["tracking_uri"])
    tracking.require_alias(registered_name(settings["mlflow"]["registered_model_prefix"], target), CHAMPION)


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose refusals are the stages' one line (``churnml-notebooks: error: ...``, exit 2)."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {one_line(message)} (--help lists the options)\n")


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Command line: execute the notebooks, write HTML copies, log them to the champion's run.

    Raises
    ------
    SystemExit
        With code 2 and one line on stderr, before running anything, for an unknown option,
        notebook or parameter, an output directory that cannot be written, or (unless
        ``--no-mlflow``) overrides that do not compose, a registry that does not exist or one
        without the churn champion.
    """
    parser = _OneLineParser(prog="churnml-notebooks", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", default=list(NOTEBOOKS), help="notebooks to run (default: all)")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="where the HTML copies go")
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="KEY=VALUE",
                        help="a notebook parameter; the value is read as JSON, else as text (repeatable)")
    parser.add_argument("--workdir", default=".", help="working directory of the kernels (default: here)")
    parser.add_argument("--timeout", type=int, default=CELL_TIMEOUT_SECONDS, help="seconds a cell may run")
    parser.add_argument("--no-mlflow", action="store_true", help="do not attach the HTML files to the champion's run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = None
    try:
        parameters = dict(parse_parameter(p) for p in args.parameter)
        check_parameters({name: read_notebook(notebook_path(name)) for name in args.notebooks}, parameters)
        check_output(args.output_dir, "--output-dir", "directory")
        if not args.no_mlflow:
            settings = compose_settings("score", parameters.get("overrides") or [])
            check_tracking(settings["mlflow"], reads_registry=True)
            require_champion(settings)
    except (ValueError, FileNotFoundError, UserError) as error:
        parser.error(str(error))
    paths = run_notebooks(args.notebooks, parameters, args.output_dir, args.workdir, args.timeout, progress=True)
    if settings is not None:
        run_id = log_to_champion_run(paths, settings)
        print(f"logged {len(paths)} report(s) to MLflow run {run_id} under '{ARTIFACT_DIR}/'")
    for path in paths:
        print(f"wrote {path}")
    return paths


if __name__ == "__main__":
    main(sys.argv[1:])
