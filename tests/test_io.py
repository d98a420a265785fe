"""The data contract at load time: every kind of bad input stops the run with a clear message."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from churnml.io.contract import DataValidationError
from churnml.io.files import write_frame_atomic
from churnml.io.load import LoadOptions, TableSource, connect, load_dataset


def write_csv(tmp_path: Path, text: str, name: str = "tx.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def load_csv(path: str, **kwargs) -> object:
    return load_dataset(TableSource(path=path, **kwargs), con=connect())


GOOD_CSV = "customer_id,ts,amount\nA,2024-01-01,10\nA,2024-02-01 10:30:00,20.5\nB,2024-01-15,7\n"


def test_good_csv_loads_with_types(tmp_path):
    dataset = load_csv(write_csv(tmp_path, GOOD_CSV))
    frame = dataset.transactions.to_pandas().sort_values("ts")
    assert list(frame.columns) == ["customer_id", "ts", "amount"]
    assert frame["amount"].tolist() == [10.0, 7.0, 20.5]
    assert pd.api.types.is_datetime64_any_dtype(frame["ts"])
    assert dataset.first_date == dt.date(2024, 1, 1)
    assert dataset.last_date == dt.date(2024, 2, 1)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataValidationError, match=r"transactions .*nope\.csv.*does not exist"):
        load_csv(str(tmp_path / "nope.csv"))


def test_unknown_format_is_refused(tmp_path):
    path = write_csv(tmp_path, GOOD_CSV, name="tx.xlsx")
    with pytest.raises(DataValidationError, match=r"unknown file format '\.xlsx'"):
        load_csv(path)


def test_empty_file_is_refused(tmp_path):
    with pytest.raises(DataValidationError, match="file is empty"):
        load_csv(write_csv(tmp_path, ""))


def test_header_only_file_has_no_rows(tmp_path):
    with pytest.raises(DataValidationError, match="has no rows"):
        load_csv(write_csv(tmp_path, "customer_id,ts,amount\n"))


def test_missing_required_column_lists_what_the_file_has(tmp_path):
    path = write_csv(tmp_path, "customer_id,date,amount\nA,2024-01-01,1\n")
    with pytest.raises(DataValidationError) as err:
        load_csv(path)
    message = str(err.value)
    assert "column 'ts'" in message and "required column is missing" in message
    assert "the file has: customer_id, date, amount" in message


def test_column_mapping_uses_the_users_names(tmp_path):
    path = write_csv(tmp_path, "CustID,InvoiceDate,Total\nA,2024-01-01,1\n")
    dataset = load_csv(path, columns={"customer_id": "CustID", "ts": "InvoiceDate", "amount": "Total"})
    assert dataset.transactions.columns == ("customer_id", "ts", "amount")
    with pytest.raises(DataValidationError, match=r"looked for 'Cust'"):
        load_csv(path, columns={"customer_id": "Cust", "ts": "InvoiceDate", "amount": "Total"})


def test_unparseable_dates_are_counted_with_row_numbers(tmp_path):
    path = write_csv(tmp_path, "customer_id,ts,amount\nA,2024-01-01,1\nA,2024-13-01,1\nB,yesterday,2\nB,2024-01-03,2\n")
    with pytest.raises(DataValidationError) as err:
        load_csv(path)
    message = str(err.value)
    assert "column 'ts'" in message and "is not a date or timestamp" in message
    assert "(2 of 4 rows)" in message
    assert "row 2: '2024-13-01'" in message and "row 3: 'yesterday'" in message


def test_non_numeric_amount_is_counted(tmp_path):
    path = write_csv(tmp_path, "customer_id,ts,amount\nA,2024-01-01,1\nA,2024-01-02,ten\n")
    with pytest.raises(DataValidationError, match=r"column 'amount': is not a number \(1 of 2 rows\); e.g. row 2: 'ten'"):
        load_csv(path)


def test_every_problem_is_reported_at_once(tmp_path):
    path = write_csv(tmp_path, "customer_id,ts,amount\n,2024-01-01,1\nA,never,x\n")
    with pytest.raises(DataValidationError) as err:
        load_csv(path)
    assert {p.column for p in err.value.problems} == {"customer_id", "ts", "amount"}


def test_null_customer_id_stops_unless_guest_rows_are_dropped(tmp_path):
    path = write_csv(tmp_path, "customer_id,ts,amount\nA,2024-01-01,1\n,2024-01-02,5\n  ,2024-01-03,5\n")
    with pytest.raises(DataValidationError, match=r"column 'customer_id': is empty .*\(2 of 3 rows\)"):
        load_csv(path)
    dataset = load_dataset(TableSource(path=path), options=LoadOptions(drop_missing_customer_id=True), con=connect())
    report = dataset.reports["transactions"]
    assert report.rows_kept == 1
    assert report.dropped["missing_customer_id"] == 2


def test_only_whitespace_makes_an_id_empty(tmp_path):
    ids = ["A", "", "  ", "\t", " B", "!", "\tC"]
    text = "customer_id,ts,amount\n" + "".join(f'"{i}",2024-01-0{n + 1},5\n' for n, i in enumerate(ids))
    with pytest.raises(DataValidationError, match=r"column 'customer_id': is empty .*\(3 of 7 rows\)"):
        load_csv(write_csv(tmp_path, text))


def test_mixed_aware_and_naive_timestamps_are_refused(tmp_path):
    path = write_csv(tmp_path, "customer_id,ts,amount\nA,2024-01-01 10:00:00,1\nA,2024-01-02 10:00:00+02:00,1\n")
    with pytest.raises(DataValidationError, match="mixes time-zone-aware and naive"):
        load_csv(path)


def test_aware_timestamps_are_compared_in_utc(tmp_path):
    path = write_csv(tmp_path, "customer_id,ts,amount\nA,2024-01-01 10:00:00+02:00,1\nA,2024-01-02 23:30:00-05:00,1\n")
    times = sorted(load_csv(path).transactions.to_pandas()["ts"])
    assert times == [pd.Timestamp("2024-01-01 08:00:00"), pd.Timestamp("2024-01-03 04:30:00")]


def test_tables_mixing_aware_and_naive_are_refused(tmp_path):
    tx = write_csv(tmp_path, "customer_id,ts,amount\nA,2024-01-01 10:00:00+00:00,1\n")
    inter = tmp_path / "inter.parquet"
    pd.DataFrame({"customer_id": ["A"], "ts": pd.to_datetime(["2024-01-01"]), "kind": ["login"]}).to_parquet(inter)
    aware = tmp_path / "aware.parquet"
    pd.DataFrame({"customer_id": ["A"], "ts": pd.to_datetime(["2024-01-01"]).tz_localize("UTC"), "amount": [1.0]}).to_parquet(aware)
    with pytest.raises(DataValidationError, match="mix time-zone-aware and naive timestamps"):
        load_dataset(TableSource(path=str(aware)), TableSource(path=str(inter)), con=connect())
    assert load_dataset(TableSource(path=tx), con=connect()).transactions.count().execute() == 1


def test_timestamps_far_in_the_future_are_refused(tmp_path):
    path = write_csv(tmp_path, "customer_id,ts,amount\nA,2024-01-01,1\nA,2999-01-01,1\n")
    with pytest.raises(DataValidationError, match=r"column 'ts': lies in the future .*row 2: '2999-01-01'"):
        load_csv(path)
    options = LoadOptions(now=dt.datetime(2023, 12, 1), max_future_days=60)
    early = write_csv(tmp_path, "customer_id,ts,amount\nA,2024-01-01,1\n", name="early.csv")
    assert load_dataset(TableSource(path=early), options=options, con=connect()).reports["transactions"].rows_kept == 1


def test_cleaning_rules_are_counted_not_silent(tmp_path):
    path = write_csv(tmp_path, "customer_id,ts,amount\nA,2024-01-01,1\nA,2024-01-01,1\nA,2024-01-01,1\nB,2024-01-02,0\nB,2024-01-03,4\n")
    report = load_dataset(TableSource(path=path), options=LoadOptions(drop_exact_duplicates=True), con=connect()).reports["transactions"]
    assert report.rows_read == 5
    assert report.rows_kept == 2
    assert report.dropped == {"zero_amount": 1, "exact_duplicates": 2}
    by_default = load_csv(path)
    assert by_default.reports["transactions"].dropped == {"zero_amount": 1}
    assert by_default.transactions.count().execute() == 4
    kept_all = load_dataset(TableSource(path=path), options=LoadOptions(drop_zero_amount=False), con=connect())
    assert kept_all.reports["transactions"].rows_kept == 5
    assert kept_all.transactions.count().execute() == 5


def test_non_iso_dates_need_a_format(tmp_path):
    path = write_csv(tmp_path, "customer_id,ts,amount\nA,19970101,1\nA,31/12/1997,1\n")
    with pytest.raises(DataValidationError, match="ts_format"):
        load_csv(path)
    good = write_csv(tmp_path, "customer_id,ts,amount\nA,19970101,1\nA,19971231,1\n", name="good.csv")
    frame = load_csv(good, ts_format="%Y%m%d").transactions.to_pandas()
    assert sorted(frame["ts"]) == [pd.Timestamp("1997-01-01"), pd.Timestamp("1997-12-31")]


def test_parquet_with_typed_columns_and_float_ids(tmp_path):
    path = tmp_path / "tx.parquet"
    pd.DataFrame({
        "customer_id": [12346.0, 12347.0],
        "ts": pd.to_datetime(["2024-01-01", "2024-01-02"]).tz_localize("Europe/Berlin"),
        "amount": [1, 2],
    }).to_parquet(path)
    frame = load_csv(str(path)).transactions.to_pandas().sort_values("customer_id")
    assert frame["customer_id"].tolist() == ["12346", "12347"]
    assert frame["ts"].tolist() == [pd.Timestamp("2023-12-31 23:00:00"), pd.Timestamp("2024-01-01 23:00:00")]


def test_customers_must_be_unique(tmp_path):
    tx = write_csv(tmp_path, GOOD_CSV)
    customers = write_csv(tmp_path, "customer_id,signup_ts,region\nA,2023-01-01,north\nA,2023-02-01,south\n", name="c.csv")
    with pytest.raises(DataValidationError, match=r"customers .*column 'customer_id': repeats values that must be unique.*'A' x2"):
        load_dataset(TableSource(path=tx), customers=TableSource(path=customers), con=connect())


def test_customer_attributes_are_kept(tmp_path):
    tx = write_csv(tmp_path, GOOD_CSV)
    customers = write_csv(tmp_path, "customer_id,signup_ts,region\nA,2023-01-01,north\nB,2023-02-01,south\n", name="c.csv")
    dataset = load_dataset(TableSource(path=tx), customers=TableSource(path=customers), con=connect())
    assert dataset.customers.columns == ("customer_id", "signup_ts", "region")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "scores.parquet"

    class Exploding(pd.DataFrame):
        def to_parquet(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_frame_atomic(Exploding({"a": [1]}), target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []
    frame = pd.DataFrame({"a": [1, 2]})
    write_frame_atomic(frame, target)
    first = target.read_bytes()
    write_frame_atomic(frame, target)
    assert target.read_bytes() == first


# --- inputs of real extracts -----------------------------------------------------------------

def test_missing_value_markers_in_ids_are_missing_ids(tmp_path):
    # R and many exports write NA for a missing value; it is no customer called "NA".
    path = write_csv(tmp_path, "customer_id,ts,amount\nA,2024-01-01,1\nNA,2024-01-02,5\nNULL,2024-01-03,5\nB,2024-01-04,2\n")
    with pytest.raises(DataValidationError, match=r"column 'customer_id': is empty .*\(2 of 4 rows\); e.g. row 2: 'NA', row 3: 'NULL'"):
        load_csv(path)
    dataset = load_dataset(TableSource(path=path), options=LoadOptions(drop_missing_customer_id=True), con=connect())
    assert sorted(dataset.transactions.to_pandas()["customer_id"]) == ["A", "B"]
    assert dataset.reports["transactions"].dropped["missing_customer_id"] == 2


def test_missing_value_markers_follow_the_same_rules_in_every_column(tmp_path):
    # A required amount marked missing is refused as empty, like a required id; optional columns
    # (an order id, a quantity, a category) become null.
    path = write_csv(tmp_path, "customer_id,ts,amount\nA,2024-01-01,NA\nA,2024-01-02,5\n")
    with pytest.raises(DataValidationError, match=r"column 'amount': is empty .*\(1 of 2 rows\); e.g. row 1: 'NA'"):
        load_csv(path)
    text = ("customer_id,ts,amount,order_id,quantity,category\n"
            "A,2024-01-01,1,NA,NaN,n/a\nA,2024-01-02,2,o2,3,None\nA,2024-01-03,4,o3,4,toys\n")
    frame = load_csv(write_csv(tmp_path, text, name="optional.csv")).transactions.to_pandas().sort_values("ts")
    assert frame["order_id"].tolist()[0] is None or pd.isna(frame["order_id"].tolist()[0])
    assert frame["quantity"].isna().tolist() == [True, False, False]
    assert frame["category"].isna().tolist() == [True, True, False]


@pytest.mark.parametrize("bad", ["inf", "-Infinity"])
def test_infinite_amounts_are_refused(tmp_path, bad):
    path = write_csv(tmp_path, f"customer_id,ts,amount,quantity\nA,2024-01-01,1,1\nB,2024-01-02,{bad},1\nC,2024-01-03,2,inf\n")
    with pytest.raises(DataValidationError) as err:
        load_csv(path)
    message = str(err.value)
    assert f"column 'amount': is not a finite number (1 of 3 rows); e.g. row 2: '{bad}'" in message
    assert "column 'quantity': is not a finite number (1 of 3 rows); e.g. row 3: 'inf'" in message


def test_infinite_and_nan_amounts_in_parquet(tmp_path):
    path = tmp_path / "tx.parquet"
    pd.DataFrame({"customer_id": ["A", "B", "C"], "ts": pd.to_datetime(["2024-01-01"] * 3),
                  "amount": [1.0, float("inf"), float("nan")]}).to_parquet(path)
    with pytest.raises(DataValidationError) as err:
        load_csv(str(path))
    assert {(p.column, p.message.split(" (")[0], p.n_bad) for p in err.value.problems} == {
        ("amount", "is not a finite number", 1), ("amount", "is empty or marked missing", 1)}


@pytest.mark.parametrize("header", ["customer_id,ts,amount,amount", "customer_id,ts,amount,Amount"])
def test_repeated_column_names_in_csv_are_refused(tmp_path, header):
    path = write_csv(tmp_path, f"{header}\nA,2024-01-01,1,2\n")
    with pytest.raises(DataValidationError, match=r"tx\.csv', column 'amount': is the name of 2 columns .*"
                                                  r"e\.g\. column 3: 'amount', column 4: '(amount|Amount)'"):
        load_csv(path)


def test_repeated_column_names_in_parquet_and_frames_are_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "tx.parquet"
    columns = [pa.array(["A"]), pa.array(["2024-01-01"]), pa.array([1.0]), pa.array([2.0])]
    pq.write_table(pa.table(columns, names=["customer_id", "ts", "amount", "amount"]), path)
    with pytest.raises(DataValidationError, match=r"column 'amount': is the name of 2 columns"):
        load_csv(str(path))
    frame = pd.DataFrame([["A", "2024-01-01", 1.0, 2.0]], columns=["customer_id", "ts", "amount", "amount"])
    with pytest.raises(DataValidationError, match=r"column 'amount': is the name of 2 columns"):
        load_dataset(TableSource(frame=frame, label="tx"), con=connect())


def test_a_column_named_like_an_engines_renamed_copy_is_kept(tmp_path):
    path = write_csv(tmp_path, "customer_id,ts,amount,amount_1\nA,2024-01-01,1,2\n")
    assert load_csv(path).transactions.to_pandas()["amount"].tolist() == [1.0]


def test_ids_are_the_same_key_in_every_table_and_format(tmp_path):
    # Transactions from CSV (ids as written, "007" keeps its zeros), interactions from Parquet
    # strings, customers from a Parquet float column (as a pandas export with a gap writes them).
    tx = write_csv(tmp_path, "customer_id,ts,amount\n007,2024-01-01,1\n12346,2024-01-02,2\n1.5,2024-01-03,3\n")
    inter = tmp_path / "inter.parquet"
    pd.DataFrame({"customer_id": ["007", "12346"], "ts": pd.to_datetime(["2024-01-01"] * 2),
                  "kind": ["login", "visit"]}).to_parquet(inter)
    customers = tmp_path / "customers.parquet"
    pd.DataFrame({"customer_id": [12346.0, 1.5, float("nan")], "region": ["north", "south", "east"]}).to_parquet(customers)
    dataset = load_dataset(TableSource(path=tx), TableSource(path=str(inter)), TableSource(path=str(customers)),
                           options=LoadOptions(drop_missing_customer_id=True), con=connect())
    assert sorted(dataset.transactions.to_pandas()["customer_id"]) == ["007", "1.5", "12346"]
    assert sorted(dataset.interactions.to_pandas()["customer_id"]) == ["007", "12346"]
    assert sorted(dataset.customers.to_pandas()["customer_id"]) == ["1.5", "12346"]
    assert dataset.reports["customers"].dropped == {"missing_customer_id": 1}
    from churnml.features.build import build_features

    features = build_features(dataset, "2024-01-31").to_pandas().set_index("customer_id")
    assert features["n_interactions"].to_dict() == {"007": 1, "1.5": 0, "12346": 1}
    assert features["region"].fillna("(none)").to_dict() == {"007": "(none)", "1.5": "south", "12346": "north"}


def test_attribute_types_do_not_depend_on_the_file_format(tmp_path):
    tx = write_csv(tmp_path, GOOD_CSV)
    frame = pd.DataFrame({
        "customer_id": ["A", "B"],
        "age": pd.array([34, None], dtype="Int64"),
        "score": [0.5, 2.0],
        "vip": [True, False],
        "zip": ["01234", "99999"],
        "since": pd.to_datetime(["2023-01-01", None]),
        "region": ["north", "NA"],
    })
    frame.to_parquet(tmp_path / "customers.parquet")
    (tmp_path / "customers.csv").write_text(
        "customer_id,age,score,vip,zip,since,region\nA,34,0.5,true,01234,2023-01-01,north\nB,NA,2,False,99999,,NA\n")
    loaded = {
        fmt: load_dataset(TableSource(path=tx), customers=TableSource(path=str(tmp_path / f"customers.{fmt}")),
                          con=connect()).customers
        for fmt in ("csv", "parquet")
    }
    assert loaded["csv"].schema() == loaded["parquet"].schema()
    schema = loaded["csv"].schema()
    assert {c: str(schema[c]) for c in ("age", "score", "vip", "zip", "region")} == {
        "age": "float64", "score": "float64", "vip": "float64", "zip": "float64", "region": "string"}
    assert schema["since"].is_timestamp()
    csv, parquet = (loaded[f].to_pandas().sort_values("customer_id").reset_index(drop=True) for f in ("csv", "parquet"))
    pd.testing.assert_frame_equal(csv, parquet, check_dtype=False)
    assert csv["age"].tolist()[0] == 34 and pd.isna(csv["age"].tolist()[1])
    assert csv["vip"].tolist() == [1.0, 0.0]
    assert pd.isna(csv["region"].tolist()[1])


# --- the treatments table --------------------------------------------------------------------

TREATMENTS_CSV = (
    "customer_id,ts,campaign,group,cost,channel\n"
    "007,2024-01-10 09:00:00,spring,Treatment,1.5,email\n"
    "B,2024-01-10 09:00:00,spring, CONTROL ,0,email\n"
    "007,2024-03-01,summer,control,,app\n"
)


def load_treatments(tmp_path: Path, text: str, **kwargs) -> object:
    tx = write_csv(tmp_path, "customer_id,ts,amount\n007,2024-01-01,10\nB,2024-01-02,5\n", name="tx.csv")
    return load_dataset(TableSource(path=tx), treatments=TableSource(path=write_csv(tmp_path, text, name="treat.csv"),
                                                                     **kwargs), con=connect())


def test_treatments_load_with_groups_lower_case_and_ids_as_text(tmp_path):
    dataset = load_treatments(tmp_path, TREATMENTS_CSV)
    frame = dataset.treatments.to_pandas().sort_values(["campaign", "customer_id"]).reset_index(drop=True)
    assert list(frame.columns) == ["customer_id", "ts", "campaign", "group", "cost", "channel"]
    assert frame["customer_id"].tolist() == ["007", "B", "007"]
    assert frame["group"].tolist() == ["treatment", "control", "control"]
    assert frame["cost"].tolist()[:2] == [1.5, 0.0] and pd.isna(frame["cost"].tolist()[2])
    assert frame["ts"].tolist()[2] == pd.Timestamp("2024-03-01")
    assert dataset.reports["treatments"].rows_kept == 3
    # The same customer key as in the transactions ("007" keeps its zeros in both).
    joined = dataset.treatments.join(dataset.transactions, "customer_id").to_pandas()
    assert sorted(joined["customer_id"]) == ["007", "007", "B"]


def test_treatments_may_lack_cost_and_channel_and_map_column_names(tmp_path):
    text = "cust,contact,wave,arm\nA,2024-01-10,spring,treatment\nB,2024-01-10,spring,control\n"
    columns = {"customer_id": "cust", "ts": "contact", "campaign": "wave", "group": "arm"}
    frame = load_treatments(tmp_path, text, columns=columns).treatments.to_pandas()
    assert list(frame.columns) == ["customer_id", "ts", "campaign", "group"]


def test_treatments_refuse_a_group_that_is_neither_treatment_nor_control(tmp_path):
    text = TREATMENTS_CSV + "C,2024-01-10,spring,holdout,1,email\n"
    with pytest.raises(DataValidationError, match=r"^invalid input data: treatments '.*treat\.csv', column 'group': "
                                                  r"is not one of treatment, control .*\(1 of 4 rows\); e\.g\. row 4: 'holdout'$"):
        load_treatments(tmp_path, text)


def test_treatments_refuse_a_negative_cost(tmp_path):
    text = TREATMENTS_CSV + "C,2024-01-10,spring,treatment,-0.5,email\nD,2024-01-10,spring,treatment,-inf,email\n"
    with pytest.raises(DataValidationError) as err:
        load_treatments(tmp_path, text)
    assert {(p.column, p.message, p.n_bad) for p in err.value.problems} == {
        ("cost", "is negative; it must be 0 or more", 1), ("cost", "is not a finite number", 1)}
    assert "column 'cost': is negative; it must be 0 or more (1 of 5 rows); e.g. row 4: '-0.5'" in str(err.value)


def test_treatments_refuse_a_customer_twice_in_one_campaign(tmp_path):
    # 007 in spring and in summer is fine; B twice in spring is not.
    text = TREATMENTS_CSV + "B,2024-01-11,spring,treatment,1,app\n"
    with pytest.raises(DataValidationError) as err:
        load_treatments(tmp_path, text)
    message = str(err.value)
    assert "\n" not in message
    assert ("treatments '" in message and "column 'customer_id': repeats within one campaign; "
            "each (customer_id, campaign) must have one row (2 of 4 rows); e.g. 'B', 'spring' x2") in message


def test_treatments_refuse_a_missing_required_column(tmp_path):
    text = "customer_id,ts,campaign,cost\nA,2024-01-10,spring,1\n"
    with pytest.raises(DataValidationError, match=r"treatments '.*treat\.csv', column 'group': required column is missing; "
                                                  r"the file has: customer_id, ts, campaign, cost"):
        load_treatments(tmp_path, text)


def test_treatments_come_from_the_config_and_the_demo(tmp_path):
    from churnml.io.sources import data_sources, file_sources
    from churnml.simulate import simulate_shop, write_shop
    from test_config import compose_resolved

    data = compose_resolved("features", ["data=files", "data.transactions.path=/data/tx.csv",
                                         "data.treatments.path=/data/campaigns.csv",
                                         "data.treatments.columns.group=arm"])["data"]
    assert data["treatments"] == {"path": "/data/campaigns.csv", "ts_format": None,
                                  "columns": {"customer_id": None, "ts": None, "campaign": None, "group": "arm",
                                              "cost": None, "channel": None}}
    tx = write_csv(tmp_path, GOOD_CSV)
    with pytest.raises(DataValidationError, match=r"treatments '.*nope\.csv'.*set data\.treatments\.path"):
        file_sources({"transactions": {"path": tx}, "treatments": {"path": str(tmp_path / "nope.csv")}})
    assert file_sources({"transactions": {"path": tx}})["treatments"] is None
    # A demo directory written before there were campaigns is simulated again.
    settings = {"kind": "demo", "n_customers": 200, "start": "2023-01-01", "end": "2023-12-31", "seed": 4,
                "directory": str(tmp_path / "demo")}
    older = simulate_shop(200, start="2023-01-01", end="2023-12-31", seed=4)
    write_shop({name: older[name] for name in ("transactions", "interactions", "customers", "surveys")}, tmp_path / "demo")
    sources = data_sources(settings)
    pd.testing.assert_frame_equal(pd.read_parquet(sources["treatments"].path), older["treatments"])
    dataset = load_dataset(**sources, con=connect())
    assert dataset.treatments.count().execute() == len(older["treatments"]) > 0


def test_a_file_without_amount_counts_each_line_as_a_purchase_of_one(tmp_path, caplog):
    path = write_csv(tmp_path, "customer_id,ts\nA,2024-01-01\nA,2024-02-01\nB,2024-01-15\n")
    with caplog.at_level("WARNING", logger="churnml.io.load"):
        dataset = load_csv(path)
    frame = dataset.transactions.to_pandas()
    assert list(frame.columns) == ["customer_id", "ts", "amount"] and frame["amount"].tolist() == [1.0, 1.0, 1.0]
    # Floats, as amounts read from a file are, also to the engine running the SQL: a decimal
    # would make every sum of spend a decimal in the tables it writes.
    import ibis

    described = dataset.con.con.execute(f"DESCRIBE {ibis.to_sql(dataset.transactions)}").fetchall()
    assert dict((name, kind) for name, kind, *_ in described)["amount"] == "DOUBLE"
    assert dataset.reports["transactions"].filled == {"amount": 1.0}
    assert dataset.reports["transactions"].as_dict()["filled"] == {"amount": 1.0}
    assert "has no amount: every row counts as amount 1" in caplog.text
    # A file that has amounts keeps them, and says it filled nothing.
    assert load_csv(write_csv(tmp_path, GOOD_CSV, name="good.csv")).reports["transactions"].filled == {}
