"""Hyperparameter sweeps of ``churnml-train`` that choose by their objective, not by the holdout.

A sweep (``churnml-train -m +hparams_search=lightgbm_optuna``) runs many trials. If each trial
registered its model and took the champion alias whenever its holdout figure was higher, the
holdout would become the selection set and its figure would stop being an honest estimate. So,
in a sweep that configures :class:`RegisterChosenTrial` as a Hydra callback:

- each trial trains without the refit, logs an MLflow run (``churnml.stage=train-trial``) with
  its config, parameters and time-based CV, and returns the objective (``train.objective``, a CV
  score); it logs no holdout figure, prints none, and registers nothing;
- when the sweep ends, the trial with the highest objective (the first of equals) is trained
  again in full, as a plain ``churnml-train`` run with that trial's config: its holdout figures
  are logged and printed once, it is registered, and the champion rule and the export apply to it
  alone.

Hydra calls the callback in the process that runs the trials (the basic launcher, which the
Optuna sweeper uses with ``n_jobs: 1``); a launcher that runs trials in other processes would
leave it nothing to choose from.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode

# The callback's _target_, as conf/hparams_search/*.yaml name it.
CALLBACK_TARGET = "churnml.jobs.sweep.RegisterChosenTrial"


@dataclass(frozen=True)
class Trial:
    """One finished trial: its objective, the overrides that made it and its composed config."""

    objective: float
    overrides: tuple[str, ...]
    config: Any = None


def choose_trial(trials: Sequence[Trial]) -> Trial | None:
    """The trial with the highest finite objective, the earliest of equals; None when no trial has one.

    Only the objective decides (a CV score): holdout figures play no part in the choice.
    """
    finite = [trial for trial in trials if trial.objective is not None and math.isfinite(trial.objective)]
    if not finite:
        return None
    # max() keeps the first of equal maxima.
    return max(finite, key=lambda trial: trial.objective)


def is_sweep_trial() -> bool:
    """Whether the current Hydra job is a trial of a sweep that registers only its chosen trial
    (a multirun whose ``hydra.callbacks`` include :class:`RegisterChosenTrial`)."""
    if not HydraConfig.initialized():
        return False
    hydra_config = HydraConfig.get()
    if hydra_config.mode != RunMode.MULTIRUN:
        return False
    return any(getattr(callback, "get", lambda _: None)("_target_") == CALLBACK_TARGET
               for callback in (hydra_config.callbacks or {}).values())


class RegisterChosenTrial(Callback):
    """Hydra callback: collect each trial's objective, then train and register the chosen one."""

    def __init__(self) -> None:
        self.trials: list[Trial] = []

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        """Keep a finished trial's objective (its return value), overrides and config."""
        from hydra.core.utils import JobStatus

        if job_return.status != JobStatus.COMPLETED:
            return
        value = job_return.return_value
        objective = float(value) if isinstance(value, (int, float)) else float("nan")
        self.trials.append(Trial(objective, tuple(job_return.overrides or ()), job_return.cfg))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        """Train the chosen trial again and register it (:func:`churnml.jobs.train.train_and_register`).

        Raises
        ------
        SystemExit
            2 when no trial has a finite objective or the run refuses the user's data or config
            (the message on stderr), 1 with the traceback on any other failure.
        """
        from omegaconf import OmegaConf

        from churnml.config import validated
        from churnml.errors import UserError
        from churnml.jobs.common import exit_with
        from churnml.jobs.train import train_and_register

        chosen = choose_trial(self.trials)
        if chosen is None:
            exit_with("train", UserError(f"none of the sweep's {len(self.trials)} finished trial(s) has a finite "
                                         "objective (train.objective): nothing registered; check the trials' logs"))
        print(f"\nchosen trial ({len(self.trials)} finished): {' '.join(chosen.overrides) or 'no overrides'}, "
              f"objective {chosen.objective:.4f}; training it again to evaluate on the holdout and register it")
        settings = OmegaConf.to_container(chosen.config, resolve=True, throw_on_missing=True)
        # Hydra turns exceptions raised in callbacks into warnings and exits 0: a failure here must
        # leave as SystemExit to be seen.
        try:
            train_and_register(validated("train", settings))
        except UserError as error:
            exit_with("train", error)
        except Exception as error:
            traceback.print_exc()
            raise SystemExit(1) from error
