"""The console scripts: one Hydra app per stage, each a one-liner around ``churnml.jobs.<stage>.run``,
and the error contract they share (DESIGN.md section 7).

``python -m churnml.cli STAGE [overrides]`` runs a stage without its console script (also the
entry point ``spark-submit`` is given). Configs ship in the package (``churnml/conf``); a
directory of one's own joins them with ``--config-dir DIR`` or ``hydra.searchpath=[file://DIR]``.

The error contract: a mistake of the user's (a :class:`~churnml.errors.UserError` from the job,
an error of Hydra's or OmegaConf's about the overrides, a disk that is full or read-only) prints
one line ``churnml-<stage>: error: <what, where, how to fix>`` on stderr and exits 2, and the
files Hydra made for the run (its run directory with ``.hydra/`` and the job's log) are removed
again. Any other exception is a defect and keeps its traceback (exit 1). With
``HYDRA_FULL_ERROR=1`` in the environment every error, the user's too, shows its full traceback.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

import hydra
from omegaconf import DictConfig, OmegaConf

from churnml.errors import UserError
from churnml.jobs.common import USER_ERROR_EXIT, exit_with

CONFIG_PATH = "conf"
FULL_ERROR_VARIABLE = "HYDRA_FULL_ERROR"
# What a full or read-only output location raises, wherever the write happens.
_LOCATION_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def settings_from(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers.

    Raises
    ------
    churnml.errors.UserError
        For a mandatory value left unset (``data.transactions.path`` of ``data=files``) or an
        interpolation that does not resolve, naming the key.
    """
    from omegaconf.errors import OmegaConfBaseException

    from churnml.config import config_error_message

    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except OmegaConfBaseException as error:
        raise UserError(config_error_message(error)) from error


def full_errors_requested() -> bool:
    """Whether the user asked for every traceback (``HYDRA_FULL_ERROR=1``, as Hydra reads it)."""
    return os.environ.get(FULL_ERROR_VARIABLE) == "1"


def users_mistake(error: BaseException) -> UserError | None:
    """The user's mistake ``error`` stands for, or None when it is a defect of churnml's.

    A full disk, a read-only file system or a missing permission is the user's to fix, wherever
    the write (or read) happened.
    """
    if isinstance(error, UserError):
        return error
    if isinstance(error, OSError) and error.errno in _LOCATION_ERRNOS:
        where = f" {error.filename}" if error.filename else ""
        return UserError(f"cannot write{where}: {error.strerror}; free some space, fix the permissions or "
                         f"choose another output location")
    return None


def config_mistake(error: BaseException, config_name: str) -> UserError | None:
    """The user's mistake behind an error Hydra raised before the job started (an override that
    does not parse, an unknown config group option or key, a value of the wrong type), or None."""
    from hydra.errors import HydraException, InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    from churnml.config import config_error_message

    if isinstance(error, InstantiationException) or not isinstance(error, (HydraException, OmegaConfBaseException)):
        return None
    return UserError(config_error_message(error, config_name))


def discard_run_directory() -> None:
    """Remove what Hydra wrote for the failing job: its run directory (``.hydra/`` and the job's
    log) and the directories above it that only held it, up to the working directory.

    A run directory that holds anything else (``hydra.run.dir=.``, another run's files) is left
    as it is. In a multirun, the sweep directory goes too when it holds only ``multirun.yaml``.
    """
    import shutil

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    config = HydraConfig.get()
    run_dir = Path(config.runtime.output_dir).resolve()
    ours = {config.output_subdir, f"{config.job.name}.log"} - {None}
    # The job's log file is open; its handler goes first so that nothing writes there again.
    for logger in (logging.getLogger(), *(logging.getLogger(n) for n in logging.root.manager.loggerDict)):
        for handler in list(getattr(logger, "handlers", [])):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve().parent == run_dir:
                logger.removeHandler(handler)
                handler.close()
    if not run_dir.is_dir() or run_dir == Path.cwd().resolve() or {p.name for p in run_dir.iterdir()} - ours:
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    if config.mode == RunMode.MULTIRUN:
        _remove_sweep_directory(Path(config.sweep.dir).resolve())
    _remove_empty_parents(run_dir)


def _remove_sweep_directory(sweep_dir: Path) -> None:
    """Remove a sweep directory that holds nothing but Hydra's ``multirun.yaml``, and its empty parents."""
    if sweep_dir.is_dir() and {p.name for p in sweep_dir.iterdir()} <= {"multirun.yaml"}:
        (sweep_dir / "multirun.yaml").unlink(missing_ok=True)
        sweep_dir.rmdir()
        _remove_empty_parents(sweep_dir)


def _remove_empty_parents(path: Path) -> None:
    """Remove the empty directories above ``path``, up to the working directory (never it or above)."""
    stop = Path.cwd().resolve()
    parent = path.parent
    while parent != stop and stop in parent.parents and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def _stage_app(config_name: str, stage: str) -> Callable[[], Any]:
    """The console script of a stage: register the schemas, then run ``churnml.jobs.<stage>.run``
    as a Hydra app on the config ``config_name``, under the error contract."""
    # Exceptions the job raised: a defect among them keeps its traceback even though it is of a
    # type that Hydra raises for a bad override.
    from_job: list[BaseException] = []
    # Read before main() sets the variable for itself: whether the user asked for every traceback.
    user_wants_full_errors = [False]

    @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)
    def app(cfg: DictConfig) -> Any:
        from churnml.config import validated

        try:
            job = importlib.import_module(f"churnml.jobs.{stage}")
            return job.run(validated(config_name, settings_from(cfg)))
        except Exception as error:
            mistake = users_mistake(error)
            if mistake is None or user_wants_full_errors[0]:
                from_job.append(error)
                raise
            discard_run_directory()
            exit_with(stage, mistake)

    def main() -> Any:
        """Run the stage; a mistake of the user's exits 2 with one line on stderr.

        Raises
        ------
        SystemExit
            With code 2 for a mistake of the user's, 1 for Hydra's own refusals it prints.
        Exception
            Any defect, with its traceback.
        """
        from churnml.config import register_configs

        register_configs()
        user_wants_full_errors[0] = full_errors_requested()
        if user_wants_full_errors[0]:
            return app()
        # Hydra prints its errors about the overrides over several lines and exits 1; with this
        # variable it raises them instead, for them to be told apart here. Defects then show
        # Python's own (complete) traceback.
        os.environ[FULL_ERROR_VARIABLE] = "1"
        try:
            return app()
        except Exception as error:
            mistake = None if any(error is e for e in from_job) else config_mistake(error, config_name)
            if mistake is None:
                raise
            exit_with(stage, mistake)
        finally:
            os.environ.pop(FULL_ERROR_VARIABLE, None)

    main.__name__ = f"{stage}_app"
    return main


features_app = _stage_app("features", "features")
train_app = _stage_app("train", "train")
evaluate_app = _stage_app("evaluate", "evaluate")
score_app = _stage_app("score", "score")
export_app = _stage_app("train", "export")
kpis_app = _stage_app("kpis", "kpis")
experiment_app = _stage_app("experiment", "experiment")
serve_app = _stage_app("serve", "serve")


def notebooks_app() -> None:
    """``churnml-notebooks``: run the notebooks headless (argparse, not Hydra), under the same
    error contract as the Hydra stages."""
    from churnml.jobs import notebooks

    try:
        notebooks.main(sys.argv[1:])
    except Exception as error:
        mistake = users_mistake(error)
        if mistake is None or full_errors_requested():
            raise
        exit_with("notebooks", mistake)


STAGES = {"features": features_app, "train": train_app, "evaluate": evaluate_app, "score": score_app,
          "export": export_app, "kpis": kpis_app, "experiment": experiment_app, "serve": serve_app,
          "notebooks": notebooks_app}


def main() -> None:
    """``python -m churnml.cli STAGE [overrides]``: run a stage without its console script."""
    if len(sys.argv) < 2 or sys.argv[1] not in STAGES:
        print(f"churnml: error: give a stage first: python -m churnml.cli {{{','.join(STAGES)}}} [overrides...]",
              file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT)
    stage = sys.argv.pop(1)
    sys.argv[0] = f"churnml-{stage}"
    STAGES[stage]()


if __name__ == "__main__":
    main()
