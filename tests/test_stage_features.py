"""The features stage, as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from churnml.io.contract import DataValidationError
from churnml.jobs.features import run as run_features
from test_config import compose_resolved

ROOT = Path(__file__).resolve().parents[1]


def test_cdnow_features_have_one_row_per_customer_with_history(tmp_path):
    output = tmp_path / "f.parquet"
    settings = compose_resolved("features", ["data=cdnow", "as_of=1997-12-31", f"features.output={output}"])
    run_features(settings)
    features = pd.read_parquet(output)
    from churnml.io.sources import cdnow_transactions

    raw = cdnow_transactions()
    raw_amount = pd.to_numeric(raw["amount"])
    with_history = raw.loc[(raw["ts"] <= "19971231") & (raw_amount != 0), "customer_id"].nunique()
    assert len(features) == with_history == features["customer_id"].nunique()
    expected = {"recency_days", "frequency", "monetary_total", "avg_order_value", "tenure_days", "mean_gap_days",
                "days_overdue", "orders_90d", "spend_365d", "orders_trend_90_180", "refund_amount",
                "no_repurchase_3m", "order_value_drop_40", "tier", "value_segment", "ltv", "items_per_order"}
    assert expected <= set(features.columns)
    assert (features["recency_days"] >= 0).all()


def test_bad_input_writes_no_output(tmp_path):
    bad = tmp_path / "tx.csv"
    bad.write_text("customer_id,ts,amount\nA,2024-01-01,1\nA,2024-01-02,oops\n")
    output = tmp_path / "out" / "f.parquet"
    settings = compose_resolved(
        "features", ["data=files", f"data.transactions.path={bad}", f"features.output={output}"]
    )
    with pytest.raises(DataValidationError, match="oops"):
        run_features(settings)
    assert not output.exists() and not output.parent.exists()


@pytest.mark.slow
def test_console_script_maps_user_columns(tmp_path):
    source = tmp_path / "shop.csv"
    source.write_text("Cust,When,Total\nA,2024-01-01,10\nA,2024-02-01,20\nB,2024-01-15,5\n")
    output = tmp_path / "f.parquet"
    command = [
        sys.executable, "-m", "churnml.cli", "features",
        "data=files", f"data.transactions.path={source}", "data.transactions.columns.customer_id=Cust",
        "data.transactions.columns.ts=When", "data.transactions.columns.amount=Total",
        f"features.output={output}", "hydra.run.dir=" + str(tmp_path / "hydra"),
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    features = pd.read_parquet(output).set_index("customer_id")
    assert features.loc["A", "frequency"] == 2 and features.loc["A", "monetary_total"] == 30
    assert pd.Timestamp(features.loc["A", "cutoff"]).date().isoformat() == "2024-02-01"
