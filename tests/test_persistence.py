"""Models stored as data: a save/load round trip scores the same, and a model directory with
anything planted in it is refused without running it."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from churnml import tracking
from churnml.errors import UserError
from churnml.models import persistence
from churnml.models.classifier import ChurnModel
from churnml.scoring import table


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory) -> dict[str, Path]:
    """Each model as a model directory in MLflow's format, as churnml-export leaves it."""
    root = tmp_path_factory.mktemp("exported")
    paths = {}
    for target, model in models.items():
        paths[target] = tracking.save_model_directory(model, root / f"churnml-{target}")
        (paths[target] / "churnml.json").write_text('{"name": "churnml-%s", "version": "3"}' % target)
    return paths


class Planted:
    """Unpickling this creates a marker file: evidence that a loader ran planted code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def planted_pickles(marker: Path) -> list[bytes]:
    """The payload in the default binary protocol and in protocol 0, which is ASCII text."""
    return [pickle.dumps(Planted(marker)), pickle.dumps(Planted(marker), protocol=0)]


def test_a_planted_payload_runs_when_unpickled(tmp_path):
    # The payload is live: the tests below would pass for nothing if unpickling it did not act.
    marker = tmp_path / "ran"
    pickle.loads(planted_pickles(marker)[0])
    assert marker.exists()


def test_saved_and_loaded_models_score_the_same_rows_with_the_same_reasons(models, inputs, dataset, exported):
    loaded = {target: tracking.load_model(str(path)) for target, path in exported.items()}
    for target, model in models.items():
        np.testing.assert_allclose(loaded[target].predict_proba(inputs[target]), model.predict_proba(inputs[target]),
                                   rtol=0, atol=1e-12)
        assert loaded[target].trained_through_ == model.trained_through_
        assert loaded[target].reference_profile_ == model.reference_profile_
    before = table.score_customers(inputs, models, dataset.last_date)
    after = table.score_customers(inputs, loaded, dataset.last_date)
    pd.testing.assert_frame_equal(after.drop(columns=["churn_probability", "repurchase_probability"]),
                                  before.drop(columns=["churn_probability", "repurchase_probability"]))
    for column in ("churn_probability", "repurchase_probability"):
        np.testing.assert_allclose(after[column], before[column], rtol=0, atol=1e-12)


def test_seasonality_round_trips(models, inputs, tmp_path):
    import copy

    seasonal = copy.copy(models["churn"])
    seasonal.seasonality_ = np.linspace(0.7, 1.3, 12)
    loaded = tracking.load_model(str(tracking.save_model_directory(seasonal, tmp_path / "seasonal")))
    np.testing.assert_array_equal(loaded.seasonality_, seasonal.seasonality_)
    probabilities = seasonal.predict_proba(inputs["churn"])
    np.testing.assert_allclose(loaded.predict_proba(inputs["churn"]), probabilities, rtol=0, atol=1e-12)
    assert np.abs(probabilities - models["churn"].predict_proba(inputs["churn"])).max() > 1e-3


def test_mlflow_loads_the_same_model_through_churnml_code(models, inputs, exported):
    import mlflow.pyfunc

    wrapped = mlflow.pyfunc.load_model(str(exported["churn"]))
    np.testing.assert_allclose(wrapped.predict(inputs["churn"]), models["churn"].predict_proba(inputs["churn"]),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("calibration", ["isotonic", "sigmoid", "none"])
def test_a_linear_model_round_trips(calibration, tmp_path):
    rng = np.random.default_rng(3)
    n = 400
    frame = pd.DataFrame({
        "customer_id": [f"C{i}" for i in range(n)],
        "recency_days": rng.exponential(60, n),
        "orders": rng.poisson(3, n).astype(float),
        "region": rng.choice(["north", "south", "east"], n),
    })
    frame.loc[::7, "orders"] = np.nan
    label = (frame["recency_days"] + rng.normal(0, 20, n) > 60).astype(int)
    model = ChurnModel(LogisticRegression(max_iter=500), preprocessing="scaled", calibration=calibration,
                       early_stopping_rounds=0).fit(frame.iloc[:300], label.iloc[:300],
                                                    calibration_set=(frame.iloc[300:], label.iloc[300:]))
    unseen = frame.assign(region=["west"] * 5 + list(frame["region"].iloc[5:]))
    loaded = persistence.load_model(persistence.save_model(model, tmp_path / "linear"))
    np.testing.assert_allclose(loaded.predict_proba(unseen), model.predict_proba(unseen), rtol=0, atol=1e-12)
    pd.testing.assert_frame_equal(loaded.contributions(unseen), model.contributions(unseen))
    assert loaded.estimator.get_params() == model.estimator.get_params()


def test_every_file_of_a_model_directory_with_a_pickle_planted_in_it_is_refused_unrun(exported, tmp_path):
    marker = tmp_path / "payload-ran"
    source = exported["churn"]
    files = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    assert {"MLmodel", "churnml.json", "data/churnml/model.json", "data/churnml/booster.txt",
            "data/churnml/tree_tables.npz", "requirements.txt"} <= {f.as_posix() for f in files}
    for relative in files:
        for protocol, payload in enumerate(planted_pickles(marker)):
            copy = tmp_path / f"{relative.as_posix().replace('/', '_')}-{protocol}" / "churnml-churn"
            shutil.copytree(source, copy)
            (copy / relative).write_bytes(payload)
            with pytest.raises(persistence.ModelFormatError) as refused:
                tracking.load_model(str(copy))
            message = str(refused.value)
            assert str(copy / relative) in message and "\n" not in message, (relative, message)
            assert "retrain" in message or "re-export" in message
            assert not marker.exists(), relative


def test_an_added_pickle_or_unknown_file_is_refused_with_its_path(exported, tmp_path):
    marker = tmp_path / "payload-ran"
    for name in ("model.pkl", "data/churnml/extra.json", "python_model.pkl", "code/evil.py"):
        copy = tmp_path / name.replace("/", "_") / "churnml-churn"
        shutil.copytree(exported["churn"], copy)
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(planted_pickles(marker)[0])
        with pytest.raises(persistence.ModelFormatError, match="re-export") as refused:
            tracking.load_model(str(copy))
        assert str(copy / name.split("/")[0]) in str(refused.value)
    assert not marker.exists()


def test_a_model_saved_in_the_former_pickle_format_is_refused_with_a_fix(models, tmp_path):
    import mlflow.sklearn

    old = tmp_path / "churnml-churn"
    mlflow.sklearn.save_model(models["churn"], str(old), serialization_format="cloudpickle", pip_requirements=[])
    with pytest.raises(persistence.ModelFormatError, match="retrain") as refused:
        tracking.load_model(str(old))
    assert isinstance(refused.value, UserError)
    assert str(old / "model.pkl") in str(refused.value) and "pickle" in str(refused.value)


def test_an_mlmodel_naming_another_loader_is_refused(exported, tmp_path):
    copy = tmp_path / "churnml-churn"
    shutil.copytree(exported["churn"], copy)
    mlmodel = copy / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace(persistence.LOADER_MODULE, "os"))
    with pytest.raises(persistence.ModelFormatError, match="MLmodel"):
        tracking.load_model(str(copy))


def test_a_linked_file_is_refused(exported, tmp_path):
    copy = tmp_path / "churnml-churn"
    shutil.copytree(exported["churn"], copy)
    booster = copy / "data" / "churnml" / "booster.txt"
    booster.unlink()
    os.symlink(exported["churn"] / "data" / "churnml" / "booster.txt", booster)
    with pytest.raises(persistence.ModelFormatError, match="is a link"):
        tracking.load_model(str(copy))


def test_a_missing_directory_is_a_user_error_naming_it(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "nowhere")):
        tracking.load_model(str(tmp_path / "nowhere"))


def test_saving_refuses_what_it_cannot_store_as_data(models, tmp_path):
    import copy

    odd = copy.copy(models["churn"])
    odd.extra_state_ = object()
    with pytest.raises(ValueError, match="extra_state_"):
        persistence.save_model(odd, tmp_path / "odd")


def test_a_champion_in_the_former_pickle_format_is_judged_by_its_logged_figures(models, tmp_path):
    import datetime as dt
    from types import SimpleNamespace

    import mlflow
    import mlflow.sklearn
    from mlflow import MlflowClient

    tracking.configure(f"sqlite:///{tmp_path}/mlflow.db", "former-format", str(tmp_path / "art"))
    with mlflow.start_run():
        mlflow.log_metric("holdout_roc_auc", 0.7)
        mlflow.sklearn.log_model(models["churn"], name="model", serialization_format="cloudpickle",
                                 pip_requirements=[], registered_model_name="churnml-churn")
    MlflowClient().set_registered_model_alias("churnml-churn", "champion", "1")
    outcome = SimpleNamespace(metrics={"holdout_roc_auc": 0.65}, holdout_cutoff=dt.date(2024, 6, 30),
                              holdout_table=None)
    promote, reason = tracking._champion_decision("churnml-churn", outcome, "holdout_roc_auc")
    assert not promote and "0.7" in reason and "format" in reason
