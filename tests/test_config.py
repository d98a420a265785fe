"""Every Hydra config composes, with every option of every group."""

from __future__ import annotations


import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from churnml.jobs.common import compose_settings, config_dir

CONF = config_dir()
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))
GROUPS = {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in CONF.iterdir() if d.is_dir() and d.name not in ("common", "hydra")}
REQUIRED_BY_OPTION = {("data", "files"): ["data.transactions.path=tx.csv"]}


def compose_resolved(name: str, overrides: list[str]) -> dict:
    return compose_settings(name, overrides)


def test_there_are_primary_configs_and_groups():
    assert "features" in PRIMARY
    assert {"demo", "cdnow", "files"} <= set(GROUPS["data"])


@pytest.mark.parametrize("name", PRIMARY)
def test_every_primary_config_composes_with_every_option(name):
    base = compose_resolved(name, [])
    assert base["data"]["name"] == "demo"
    for group, options in GROUPS.items():
        if group not in base:
            continue
        for option in options:
            overrides = [f"{group}={option}"] + REQUIRED_BY_OPTION.get((group, option), [])
            composed = compose_resolved(name, overrides)
            assert composed[group]["name"] == option, (name, group, option)


def test_cleaning_rules_are_in_every_data_config():
    for option in GROUPS["data"]:
        overrides = [f"data={option}"] + REQUIRED_BY_OPTION.get(("data", option), [])
        cleaning = compose_resolved("features", overrides)["data"]["cleaning"]
        assert cleaning == {"drop_exact_duplicates": False, "drop_zero_amount": True,
                            "drop_missing_customer_id": False, "max_future_days": 1}


def test_files_data_needs_a_transactions_path():
    from omegaconf.errors import MissingMandatoryValue

    with pytest.raises(MissingMandatoryValue):
        compose_resolved("features", ["data=files"])


def test_optuna_search_composes_with_the_optuna_sweeper():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["+hparams_search=lightgbm_optuna"], return_hydra_config=True)
    sweeper = OmegaConf.to_container(cfg.hydra.sweeper, resolve=False)
    assert "optuna" in sweeper["_target_"].lower()
    assert set(sweeper["params"]) == {"model.learning_rate", "model.num_leaves", "model.min_child_samples"}
    assert cfg.train.objective.startswith("cv_")
