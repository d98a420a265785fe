"""Every Hydra config composes, with every option of every group."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from churnml.config import register_configs
from churnml.errors import UserError
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
    from churnml.io.sources import data_sources

    with pytest.raises(ValueError, match="data.transactions.path is required"):
        data_sources(compose_resolved("features", ["data=files"])["data"])


@pytest.mark.parametrize("override, key, expected", [
    ("train.max_snapshots=abc", "train.max_snapshots", "Integer"),
    ("target.horizon_days=ninety", "target.horizon_days", "Integer"),
    ("features.windows_days=[30,soon]", "features.windows_days", "Integer"),
    ("data.cleaning.drop_zero_amount=maybe", "data.cleaning.drop_zero_amount", "bool"),
])
def test_a_value_of_the_wrong_type_names_its_key_and_type(override, key, expected):
    with pytest.raises(UserError) as raised:
        compose_resolved("train", [override])
    said = str(raised.value)
    assert key in said and expected in said and "\n" not in said


@pytest.mark.parametrize("name", PRIMARY)
def test_an_unknown_key_is_refused_in_every_stage(name):
    with pytest.raises(UserError, match="unknown config key features.window_days: did you mean features.windows_days"):
        compose_resolved(name, ["features.window_days=[30]"])


def test_the_schemas_take_their_defaults_from_the_library():
    from churnml.features.build import FeatureConfig
    from churnml.models.training import TrainingPlan
    from churnml.scoring.policy import ScoringConfig

    composed = compose_resolved("train", [])
    assert composed["features"]["windows_days"] == list(FeatureConfig().windows_days)
    assert composed["features"]["segments"]["core"]["min_annual_spend"] == FeatureConfig().segments.core.min_annual_spend
    assert composed["train"]["max_snapshots"] == TrainingPlan().max_snapshots
    assert compose_resolved("score", [])["score"]["reasons"] == ScoringConfig().n_reasons
    assert ScoringConfig.from_dict(compose_resolved("score", [])["score"]) == ScoringConfig()


def test_as_of_is_the_date_of_every_stage_and_cutoff_a_deprecated_alias(caplog):
    from churnml.config import stage_as_of

    for name in PRIMARY:
        assert stage_as_of(compose_resolved(name, ["as_of=2024-06-30"])) == "2024-06-30"
    assert not caplog.records
    with caplog.at_level("WARNING", logger="churnml"):
        assert stage_as_of(compose_resolved("train", ["cutoff=2024-06-30"])) == "2024-06-30"
        assert stage_as_of(compose_resolved("score", ["score.as_of=2024-06-30"])) == "2024-06-30"
    assert "cutoff is deprecated" in caplog.text and "score.as_of is deprecated" in caplog.text
    with pytest.raises(ValueError, match="conflicting dates"):
        stage_as_of(compose_resolved("train", ["cutoff=2024-06-30", "as_of=2024-05-31"]))
    with pytest.raises(ValueError, match="'1997-13-45' is not a date: give as_of as YYYY-MM-DD"):
        stage_as_of(compose_resolved("features", ["as_of=1997-13-45"]))


@pytest.mark.parametrize("name", PRIMARY)
def test_a_key_added_with_plus_is_refused_too(name):
    with pytest.raises(UserError, match="unknown config key features.window_days"):
        compose_resolved(name, ["+features.window_days=[30]"])


def test_file_paths_for_a_data_set_that_reads_no_files_are_refused():
    from churnml.io.sources import data_sources

    for option in ("demo", "cdnow"):
        settings = compose_resolved("features", [f"data={option}", "data.transactions.path=/data/orders.csv"])
        with pytest.raises(ValueError, match="data.transactions.path is set, but .* add data=files"):
            data_sources(settings["data"])


@pytest.mark.parametrize("override, message", [
    ("features.windows_days=[90,30]", "features.windows_days must be increasing"),
    ("score.format=xls", "score.format=xls is not one of parquet, csv"),
    ("score.risk_bands.medium=0.9", "score: risk bands need"),
    ("engine=polars", "engine=polars is not one of duckdb, spark"),
])
def test_a_value_the_library_refuses_stops_the_stage_before_it_reads_data(override, message):
    with pytest.raises(UserError, match=message):
        compose_resolved("score", [override])


def test_optuna_search_composes_with_the_optuna_sweeper():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["+hparams_search=lightgbm_optuna"], return_hydra_config=True)
    sweeper = OmegaConf.to_container(cfg.hydra.sweeper, resolve=False)
    assert "optuna" in sweeper["_target_"].lower()
    assert set(sweeper["params"]) == {"model.learning_rate", "model.num_leaves", "model.min_child_samples"}
    assert cfg.train.objective.startswith("cv_")
