"""The train and evaluate stages' refusals and sweeps, fast: an in-sample holdout, a sweep that
chooses its trial by the CV objective and registers that trial alone."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf

from churnml.errors import UserError
from churnml.jobs import sweep
from churnml.jobs.evaluate import require_out_of_time
from test_config import compose_resolved


def fitted(trained_through: dt.date | None, horizon_days: int = 90) -> SimpleNamespace:
    model = SimpleNamespace(horizon_days=horizon_days)
    if trained_through is not None:
        model.trained_through_ = trained_through
    return model


def test_evaluate_refuses_a_holdout_inside_the_models_training_labels_naming_both_dates():
    # The demo's champion: snapshots to 2025-07-03, labels to 2025-10-01; the data ends 2025-12-31.
    champion = fitted(dt.date(2025, 7, 3))
    with pytest.raises(UserError) as refused:
        require_out_of_time(champion, dt.date(2025, 6, 30), dt.date(2026, 3, 31), "churnml-churn v3")
    message = str(refused.value)
    assert "churnml-churn v3" in message and "2025-10-01" in message and "as_of=2025-06-30" in message
    assert "snapshots to 2025-07-03" in message and "pass as_of=2025-10-01 or later" in message
    assert "\n" not in message


def test_evaluate_says_when_the_data_holds_no_out_of_time_holdout_yet():
    with pytest.raises(UserError, match="holds no later holdout"):
        require_out_of_time(fitted(dt.date(2025, 7, 3)), dt.date(2025, 7, 3), dt.date(2025, 12, 15), "m v1")


def test_evaluate_accepts_a_holdout_after_the_training_labels():
    require_out_of_time(fitted(dt.date(2025, 7, 3)), dt.date(2025, 10, 1), dt.date(2026, 3, 31), "m v1")
    # The evaluated twin (snapshots before the holdout) is out of time on its own holdout.
    require_out_of_time(fitted(dt.date(2025, 4, 4)), dt.date(2025, 7, 3), dt.date(2025, 10, 1), "m v1")
    # Models from before trained_through_ was kept cannot be checked.
    require_out_of_time(fitted(None), dt.date(2020, 1, 1), dt.date(2026, 3, 31), "m v1")


def test_a_sweep_chooses_by_its_objective_alone():
    trials = [sweep.Trial(0.79, ("model.learning_rate=0.1",)), sweep.Trial(float("nan"), ("a",)),
              sweep.Trial(0.81, ("model.learning_rate=0.02",)), sweep.Trial(0.81, ("model.learning_rate=0.05",))]
    assert sweep.choose_trial(trials).overrides == ("model.learning_rate=0.02",)
    assert sweep.choose_trial([sweep.Trial(float("nan"), ())]) is None
    assert sweep.choose_trial([]) is None


def test_outside_a_multirun_training_is_not_a_sweep_trial():
    assert not sweep.is_sweep_trial()


def job_return(objective: float, overrides: list[str], config=None, status=JobStatus.COMPLETED) -> SimpleNamespace:
    return SimpleNamespace(status=status, return_value=objective, overrides=overrides, cfg=config)


def test_the_sweep_registers_only_its_chosen_trial(monkeypatch, capsys):
    registered = []
    monkeypatch.setattr("churnml.jobs.train.train_and_register", lambda settings: registered.append(settings) or 0.0)
    configs = {rate: OmegaConf.create(compose_resolved("train", [f"model.learning_rate={rate}"]))
               for rate in (0.1, 0.02, 0.05)}
    callback = sweep.RegisterChosenTrial()
    for rate, objective in ((0.1, 0.7911), (0.02, 0.8008), (0.05, 0.7950)):
        callback.on_job_end(configs[rate], job_return(objective, [f"model.learning_rate={rate}"], configs[rate]))
    callback.on_job_end(configs[0.1], job_return(0.99, ["failed"], configs[0.1], status=JobStatus.FAILED))
    assert registered == []  # nothing is registered while trials run
    callback.on_multirun_end(configs[0.1])
    assert len(registered) == 1 and registered[0]["model"]["learning_rate"] == 0.02
    assert registered[0]["model"]["estimator"]["learning_rate"] == 0.02
    assert "chosen trial (3 finished): model.learning_rate=0.02, objective 0.8008" in capsys.readouterr().out


def test_a_sweep_without_a_finite_objective_registers_nothing_and_exits_2(monkeypatch, capsys):
    registered = []
    monkeypatch.setattr("churnml.jobs.train.train_and_register", lambda settings: registered.append(settings))
    callback = sweep.RegisterChosenTrial()
    callback.on_job_end(None, job_return(float("nan"), ["x=1"]))
    with pytest.raises(SystemExit) as stopped:
        callback.on_multirun_end(None)
    assert stopped.value.code == 2 and registered == []
    assert "churnml-train: error: none of the sweep's 1 finished trial(s)" in capsys.readouterr().err


def test_the_optuna_search_configures_the_callback():
    from churnml.jobs.common import config_dir

    search = OmegaConf.load(config_dir() / "hparams_search" / "lightgbm_optuna.yaml")
    assert search.hydra.callbacks.register_chosen_trial._target_ == sweep.CALLBACK_TARGET
    assert compose_resolved("train", [])["train"]["objective"].startswith("cv_")
