"""Safe outputs: CSV cells a spreadsheet would evaluate, MLflow keys made from user text, file
permissions, temporaries of killed runs, and an export that is never half done."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from lightgbm import LGBMClassifier
from mlflow import MlflowClient

from churnml import tracking
from churnml.errors import UserError
from churnml.io import files
from churnml.models import persistence
from churnml.models.classifier import ChurnModel
from churnml.scoring.reasons import reason_template

FORMULA_IDS = ["=1+1", "+cmd|' /C calc'!A0", "@SUM(1)", "-2+3", "\tTAB", "\rCR", "plain"]


def evaluated_by_a_spreadsheet(cell: str) -> bool:
    return cell[:1] in ("=", "+", "-", "@", "\t", "\r")


def test_formula_like_text_cells_are_quoted_and_numbers_stay_numbers(tmp_path):
    frame = pd.DataFrame({
        "customer_id": pd.array(FORMULA_IDS, dtype="string"),
        "note": pd.Series(["-", None, "ok", "=A1", "x", "@", "y"], dtype=object),
        "mixed": pd.Series([-1, "-1", 2.5, None, "=x", 0, "a"], dtype=object),
        "contribution": [-0.5, 0.25, -3.0, 1.0, 0.0, -1e-9, np.nan],
        "count": np.arange(-3, 4),
        "=header": ["a"] * 7,
    })
    path = files.write_frame_atomic(frame, tmp_path / "scores.csv", "csv")
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    cells = [cell for row in rows for cell in row]
    assert not any(evaluated_by_a_spreadsheet(cell) for cell in cells if not is_number(cell))
    back = pd.read_csv(path, keep_default_na=False)
    assert back["customer_id"].tolist() == ["'=1+1", "'+cmd|' /C calc'!A0", "'@SUM(1)", "'-2+3", "'\tTAB", "'\rCR",
                                            "plain"]
    numbers = pd.read_csv(path)
    assert numbers["contribution"].iloc[[0, 2]].tolist() == [-0.5, -3.0] and numbers["count"].iloc[0] == -3
    assert back["mixed"].tolist()[:3] == ["-1", "'-1", "2.5"]
    assert "'=header" in back.columns
    # The frame given is left as it was; Parquet keeps the ids as written.
    assert frame["customer_id"].iloc[0] == "=1+1"
    files.write_frame_atomic(frame.drop(columns="mixed"), tmp_path / "scores.parquet")
    assert pd.read_parquet(tmp_path / "scores.parquet")["customer_id"].iloc[0] == "=1+1"


def is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def test_a_frame_without_formulas_is_written_as_it_is():
    frame = pd.DataFrame({"customer_id": ["A", "B"], "p": [-0.1, 0.2]})
    assert files.neutralise_formulas(frame) is frame


def test_a_user_column_name_is_quoted_on_one_line_in_reasons():
    template = reason_template("age\n(years)\t=x", text=False)
    phrase = template.render(pd.Series([41.0]), pd.DataFrame(), None)
    assert phrase.iloc[0] == "age (years) =x = 41"


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_score_files_get_the_umasks_permissions(tmp_path, umask):
    previous = os.umask(umask)
    try:
        frame = pd.DataFrame({"customer_id": ["A"], "p": [0.5]})
        for fmt in ("csv", "parquet"):
            path = files.write_frame_atomic(frame, tmp_path / f"scores.{fmt}", fmt)
            assert path.stat().st_mode & 0o777 == 0o666 & ~umask, fmt
        text = files.write_text_atomic("x", tmp_path / "report.html")
        assert text.stat().st_mode & 0o777 == 0o666 & ~umask
    finally:
        os.umask(previous)


def dead_pid() -> int:
    """A process id no process has now."""
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def test_temporaries_of_killed_runs_are_removed_and_those_of_running_ones_kept(tmp_path):
    target = tmp_path / "scores.parquet"
    killed_file = tmp_path / f".churnml-tmp.scores.parquet.{dead_pid()}.ab12"
    killed_file.write_bytes(b"half")
    killed_dir = tmp_path / f".churnml-tmp.scores.parquet.{dead_pid()}.cd34"
    (killed_dir / "part-0").parent.mkdir()
    (killed_dir / "part-0").write_bytes(b"half")
    running = tmp_path / f".churnml-tmp.scores.parquet.{os.getppid()}.ef56"
    running.write_bytes(b"in progress")
    old_style = tmp_path / ".scores.parquet.x1y2z3.tmp"
    old_style.write_bytes(b"left by an older version")
    os.utime(old_style, (0, 0))
    other = tmp_path / ".churnml-tmp.other.parquet.1.aa"
    other.write_bytes(b"another target's")
    files.write_frame_atomic(pd.DataFrame({"a": [1]}), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, running.name, other.name])


def test_a_staged_output_is_renamed_in_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "out" / "scores.parquet"
    with files.staged(target) as written:
        files.write_frame_atomic(pd.DataFrame({"a": [1]}), written, "parquet")
        assert not target.exists()
    assert pd.read_parquet(target)["a"].tolist() == [1]
    with pytest.raises(RuntimeError, match="tracking"):
        with files.staged(target) as written:
            files.write_frame_atomic(pd.DataFrame({"a": [2]}), written, "parquet")
            raise RuntimeError("tracking failed")
    assert pd.read_parquet(target)["a"].tolist() == [1]
    assert [p.name for p in target.parent.iterdir()] == ["scores.parquet"]


# --- MLflow keys ----------------------------------------------------------------------------


def test_user_names_become_keys_mlflow_accepts():
    assert tracking.mlflow_key("age (years)") == "age _years_"
    assert tracking.mlflow_key("psi.churn.größe") == "psi.churn.gr__e"
    assert tracking.mlflow_key("a..b") == "a._b" and tracking.mlflow_key("/x") == "x"
    assert len(tracking.mlflow_key("x" * 400)) == 250
    assert list(tracking.mlflow_keys({"age (years)": 1, "age _years_": 2, "age [years]": 3})) == [
        "age _years_", "age _years__2", "age _years__3"]


def test_a_scoring_run_with_user_named_features_is_tracked(tmp_path):
    tracking.configure(f"sqlite:///{tmp_path}/mlflow.db", "keys", str(tmp_path / "art"))
    psi = {"churn": pd.Series({"age (years)": 0.3, "spend/€": 0.1, "a,b": 0.05, "model_score": 0.01})}
    summary = {"rows": 3, "mean_churn_probability": 0.2, "mean_repurchase_probability": 0.4, "bands": {"high": 1}}
    run_id = tracking.log_scoring({"as_of": "2024-06-30", "score": {"format": "csv"}, "data": {"x (y)": 1}},
                                  {"churn": tracking.ScoredModel("models/churnml-churn", "churnml-churn", "1")},
                                  summary, tmp_path / "scores.csv", psi)
    run = MlflowClient().get_run(run_id)
    assert run.data.metrics["psi.churn.age _years_"] == pytest.approx(0.3)
    assert {"psi.churn.spend/_", "psi.churn.a_b", "psi.churn.model_score"} <= set(run.data.metrics)


# --- export -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model() -> ChurnModel:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"customer_id": [f"C{i}" for i in range(300)], "recency_days": rng.exponential(50, 300),
                          "orders": rng.poisson(2, 300).astype(float)})
    label = (frame["recency_days"] > 50).astype(int)
    estimator = LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1, n_jobs=1)
    return ChurnModel(estimator, early_stopping_rounds=0).fit(frame[:200], label[:200],
                                                               calibration_set=(frame[200:], label[200:]))


@pytest.fixture
def registry(tmp_path, small_model):
    """A registry holding two versions of churnml-churn, the champion alias on version 1."""
    tracking.configure(f"sqlite:///{tmp_path}/mlflow.db", "export", str(tmp_path / "art"))
    for _ in range(2):
        with mlflow.start_run():
            data = persistence.save_model(small_model, tmp_path / "scratch" / str(len(list(tmp_path.glob("scratch/*"))))
                                          / persistence.DATA_NAME)
            mlflow.pyfunc.log_model(name="model", loader_module=persistence.LOADER_MODULE, data_path=str(data),
                                    pip_requirements=[], registered_model_name="churnml-churn")
    MlflowClient().set_registered_model_alias("churnml-churn", "champion", "1")
    return tmp_path / "models"


def exported_version(path: Path) -> str:
    return json.loads((path / "churnml.json").read_text())["version"]


def test_export_swaps_the_new_directory_in_and_never_leaves_one_without_mlmodel(registry, monkeypatch):
    target = tracking.export_model("churnml-churn", registry)
    assert exported_version(target) == "1" and (target / "MLmodel").exists()
    MlflowClient().set_registered_model_alias("churnml-churn", "champion", "2")
    removed = []
    real_remove = files._remove

    def checking_remove(path):
        # Whatever is removed, the target is a complete model at that moment.
        assert (target / "MLmodel").exists() and (target / "data" / "churnml" / "model.json").exists()
        removed.append(path)
        real_remove(path)

    monkeypatch.setattr(files, "_remove", checking_remove)
    tracking.export_model("churnml-churn", registry)
    assert exported_version(target) == "2" and removed
    assert [p.name for p in registry.iterdir()] == ["churnml-churn"]


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_an_export_that_fails_between_steps_keeps_the_previous_model(registry, monkeypatch, exchange):
    target = tracking.export_model("churnml-churn", registry)
    MlflowClient().set_registered_model_alias("churnml-churn", "champion", "2")
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda first, second: False)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # Killed after the download, while the copy is checked.
    monkeypatch.setattr(persistence, "load_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tracking.export_model("churnml-churn", registry)
    monkeypatch.undo()
    assert exported_version(target) == "1" and (target / "MLmodel").exists()
    assert [p.name for p in registry.iterdir()] == ["churnml-churn"]

    # The rename that brings the new directory in fails: the old one is put back.
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda first, second: False)
        real_replace = os.replace
        failures = []

        def failing_second_rename(source, destination):
            # The new directory's rename in fails once; putting the old one back works.
            if Path(source).name.startswith(files.TEMPORARY_PREFIX) and Path(destination) == target and not failures:
                failures.append(source)
                raise OSError("disk gone")
            return real_replace(source, destination)

        monkeypatch.setattr(os, "replace", failing_second_rename)
        with pytest.raises(OSError, match="disk gone"):
            tracking.export_model("churnml-churn", registry)
        monkeypatch.undo()
        assert exported_version(target) == "1" and (target / "MLmodel").exists()
        assert [p.name for p in registry.iterdir()] == ["churnml-churn"]


def test_export_removes_what_killed_exports_left(registry):
    registry.mkdir(parents=True)
    left = registry / f".churnml-tmp.churnml-churn.{dead_pid()}.0a0b"
    (left / "data").mkdir(parents=True)
    tracking.export_model("churnml-churn", registry)
    assert [p.name for p in registry.iterdir()] == ["churnml-churn"]


def test_exporting_a_version_in_the_former_pickle_format_is_refused_and_keeps_the_export(registry, small_model):
    import mlflow.sklearn

    target = tracking.export_model("churnml-churn", registry)
    with mlflow.start_run():
        mlflow.sklearn.log_model(small_model, name="model", serialization_format="cloudpickle", pip_requirements=[],
                                 registered_model_name="churnml-churn")
    MlflowClient().set_registered_model_alias("churnml-churn", "champion", "3")
    with pytest.raises(persistence.ModelFormatError, match="retrain"):
        tracking.export_model("churnml-churn", registry)
    assert exported_version(target) == "1"
    assert [p.name for p in registry.iterdir()] == ["churnml-churn"]
    shutil.rmtree(target)


def test_export_with_a_champion_missing_exports_none(registry, tmp_path):
    from churnml.jobs import export

    settings = {"train": {"export_dir": str(registry)},
                "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "export",
                           "artifact_root": str(tmp_path / "art"), "registered_model_prefix": "churnml"}}
    with pytest.raises(UserError, match="churnml-repurchase@champion"):
        export.run(settings)
    assert not registry.exists() or not any(registry.iterdir())


def test_loading_from_the_registry_prints_no_progress_bars(registry, capfd):
    capfd.readouterr()
    tracking.load_model("models:/churnml-churn@champion")
    tracking.export_model("churnml-churn", registry)
    assert "Downloading" not in capfd.readouterr().err
