"""Real-time scoring end to end, over HTTP (issue #18's done-when).

- In process: the app of the stage's parts (models exported as ``churnml-train`` exports them,
  the small shop's files loaded into a DuckDB store) answers each customer's batch row of
  ``churnml-score`` run on the same files, and a posted purchase shows in the next score.
- As a user runs it: ``churnml-serve`` in a process of its own on a free port. Clients post
  events with their own ids and retry what was not acknowledged; the server is killed with
  SIGKILL mid-stream and started again on the same store; afterwards the store holds every event
  exactly once. The token, the metrics and both ways of reloading the models, on the real server.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from churnml.features.build import FeatureConfig
from churnml.io.sources import load_data, load_options
from churnml.jobs.score import model_uris
from churnml.jobs.score import run as run_score
from churnml.jobs.serve import champions
from churnml.scoring.policy import ScoringConfig
from churnml.serve.app import ServeConfig, create_app
from churnml.serve.scorer import OnlineScorer
from churnml.serve.store import EventStore
from test_cli_errors import ENTRY_POINTS, SOURCE
from test_config import compose_resolved
from test_scoring import REFUND_ONLY, SINGLE_PURCHASE, small_models_on_files, with_edge_customers
from test_serve_scorer import assert_is_batch_row, sample
from test_stage_score import save_exported

pytestmark = pytest.mark.slow

TOKEN = "e2e-token-of-more-than-32-characters"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXPERIMENT = "churnml-serve-e2e"


# --------------------------------------------------------------------------------------------
# The shop, its models and the stage's settings
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop(small_shop, tmp_path_factory) -> dict:
    """The small shop's files, its models exported as version 7, and the frames written."""
    root = tmp_path_factory.mktemp("serve_e2e")
    tables = {**small_shop, "transactions": with_edge_customers(small_shop["transactions"])}
    paths, models = small_models_on_files(tables, root / "data")
    for target, model in models.items():
        save_exported(model, root / "models", f"churnml-{target}", "7")
    return {"root": root, "paths": paths, "models": models, "transactions": tables["transactions"]}


def overrides(shop: dict, model_dir: Path | None = None) -> list[str]:
    """The command-line overrides of a user serving (or scoring) the shop's files."""
    root, paths = shop["root"], shop["paths"]
    return ["data=files", *(f"data.{name}.path={paths[name]}" for name in ("transactions", "interactions",
                                                                           "customers", "surveys")),
            f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db", f"mlflow.artifact_root={root}/artifacts",
            f"mlflow.experiment={EXPERIMENT}", f"score.model_dir={model_dir or root / 'models'}"]


@pytest.fixture(scope="module")
def batch(shop) -> pd.DataFrame:
    """The score table of ``churnml-score`` on the shop's files, at their last date."""
    output = shop["root"] / "batch" / "scores.parquet"
    run_score(compose_resolved("score", [*overrides(shop), f"score.output={output}"]))
    return pd.read_parquet(output).set_index("customer_id", drop=False)


@pytest.fixture(scope="module")
def served(shop, tmp_path_factory):
    """A test client of the app wired as ``churnml-serve`` wires it, on a DuckDB store in a file
    loaded from the shop's files."""
    settings = compose_resolved("serve", [*overrides(shop), "serve.store=unused"])
    score = settings["score"]
    models, identities = champions(model_uris(score, settings["mlflow"]["registered_model_prefix"]), score)
    scorer = OnlineScorer(models, identities, FeatureConfig.from_dict(settings["features"]),
                          ScoringConfig.from_dict(score))
    store = EventStore.open(str(tmp_path_factory.mktemp("store") / "events.duckdb"),
                            options=load_options(settings["data"]))
    dataset = load_data(settings["data"])
    store.load(dataset)
    dataset.con.disconnect()
    with TestClient(create_app(scorer, store, ServeConfig.from_dict(settings["serve"]))) as client:
        yield client
    store.close()


# --------------------------------------------------------------------------------------------
# In process: the batch row, and a purchase at once
# --------------------------------------------------------------------------------------------


def scored(client: TestClient, customer: str, **params) -> dict:
    response = client.get(f"/customers/{customer}/score", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_service_answers_the_batch_row_and_a_purchase_shows_at_once(served, batch, shop):
    as_of = pd.Timestamp(batch["as_of"].iloc[0]).date()
    customers = sample(batch, 20)
    assert batch.loc[customers, "risk_band"].nunique() >= 2 and batch.loc[customers, "recommended_action"].nunique() >= 2
    models = {"churn": {"name": "churnml-churn", "version": "7"},
              "repurchase": {"name": "churnml-repurchase", "version": "7"}}
    for customer in customers:
        result = scored(served, customer)
        assert_is_batch_row(result, batch.loc[customer], models)
        assert scored(served, customer, as_of=as_of.isoformat()) == result

    # A customer long without a purchase buys today.
    lapsed = batch[(batch.churn_probability > 0.6) & ~batch.customer_id.isin([SINGLE_PURCHASE, REFUND_ONLY])]
    customer = lapsed.index[0]
    before = scored(served, customer)
    assert before["recency_days"] > 60
    last = shop["transactions"][shop["transactions"].customer_id == customer].iloc[-1]
    purchase = {"customer_id": customer, "ts": f"{as_of.isoformat()}T10:00:00", "amount": float(last["amount"]),
                "order_id": f"{customer}-now", "event_id": f"{customer}-purchase-1"}
    for column in ("quantity", "category", "channel"):
        if column in last.index and pd.notna(last[column]):
            purchase[column] = last[column].item() if hasattr(last[column], "item") else last[column]
    events_before = served.get("/health").json()["events"]
    posted = served.post("/events", json={"transactions": [purchase]})
    assert posted.status_code == 200, posted.text
    assert posted.json() == {"stored": 1, "duplicates": 0, "dropped": 0}
    after = scored(served, customer)
    assert after["as_of"] == before["as_of"] == as_of.isoformat()
    assert after["recency_days"] == 0.0
    assert after["churn_probability"] < before["churn_probability"] - 0.1
    # A retry of the same event is acknowledged and changes nothing.
    again = served.post("/events", json={"transactions": [purchase]})
    assert again.status_code == 200 and again.json() == {"stored": 0, "duplicates": 1, "dropped": 0}
    # An order of nothing is left out by the default cleaning rules, and the answer says so.
    nothing = {**purchase, "amount": 0.0, "event_id": f"{customer}-nothing"}
    assert served.post("/events", json={"transactions": [nothing]}).json() == {"stored": 0, "duplicates": 0,
                                                                              "dropped": 1}
    assert served.get("/health").json()["events"] == {**events_before,
                                                      "transactions": events_before["transactions"] + 1}
    assert scored(served, customer) == after
    # The others are still their batch rows.
    for other in [c for c in customers if c != customer][:5]:
        assert_is_batch_row(scored(served, other), batch.loc[other], models)


# --------------------------------------------------------------------------------------------
# As a user runs it: churnml-serve in a process of its own
# --------------------------------------------------------------------------------------------

# What a client sees when the server is gone or going: refused, reset, cut off, timed out.
CONNECTION_ERRORS = (OSError, http.client.HTTPException)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def call(port: int, method: str, path: str, body: dict | None = None, token: bool = True,
         timeout: float = 20) -> tuple[int, str]:
    """One HTTP request to the server on ``port``: its status and body text."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body),
                           headers={"Content-Type": "application/json", **(AUTH if token else {})})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


class Server:
    """``churnml-serve`` with ``args``, run by its console script's entry point in a fresh
    interpreter on this checkout's source, as test_cli_errors runs the stages."""

    def __init__(self, args: list[str], cwd: Path, port: int):
        self.args, self.cwd, self.port = [*args, f"serve.port={port}", f"serve.token={TOKEN}"], cwd, port
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 120) -> None:
        self.starts += 1
        code = ("import sys; sys.argv[0] = 'churnml-serve'\n"
                f"from churnml.cli import {ENTRY_POINTS['serve']}; sys.exit({ENTRY_POINTS['serve']}())")
        log = open(self.cwd / f"server-{self.starts}.log", "w")
        self.process = subprocess.Popen([sys.executable, "-c", code, *self.args], cwd=self.cwd, stdout=log,
                                        stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": SOURCE})
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"churnml-serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                if call(self.port, "GET", "/health", token=False, timeout=2)[0] == 200:
                    return
            except CONNECTION_ERRORS:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"churnml-serve did not answer /health within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return (self.cwd / f"server-{self.starts}.log").read_text()

    def health(self) -> dict:
        status, body = call(self.port, "GET", "/health", token=False)
        assert status == 200, body
        return json.loads(body)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no checkpoint, whatever is in flight is cut off."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        return self.process.returncode


@pytest.fixture
def server(shop, tmp_path):
    """A server on a free port over a new DuckDB store (loaded from the shop's files on its first
    start), serving a copy of the exported models (tests export new versions into it)."""
    models = tmp_path / "models"
    shutil.copytree(shop["root"] / "models", models)
    # Orders of nothing (free samples) kept, as the user's cleaning rules say, for posted events too.
    # In a directory that does not exist yet, as the default serve/events.duckdb of a fresh checkout.
    store = tmp_path / "serve" / "events.duckdb"
    running = Server([*overrides(shop, models), f"serve.store={store}",
                      "data.cleaning.drop_zero_amount=false"], tmp_path, free_port())
    running.models = models
    running.store = store
    yield running
    running.stop()


def client_requests(client: int, customers: list[str], n: int) -> list[dict]:
    """The bodies one client posts: 1 to 3 events each, transactions and interactions, each with
    an id of the client's."""
    bodies = []
    for i in range(n):
        customer = customers[(client * n + i) % len(customers)]
        ts = f"2024-12-30T{(client * 3 + i // 20) % 24:02d}:{i % 60:02d}:{client:02d}"
        body: dict = {"transactions": [{"customer_id": customer, "ts": ts, "amount": 10.0 + j + i / 100,
                                        "order_id": f"c{client}-o{i}", "event_id": f"c{client}-t{i}-{j}"}
                                       for j in range(1 + i % 2)]}
        if i % 3 == 0:
            body["interactions"] = [{"customer_id": customer, "ts": ts, "kind": "visit", "event_id": f"c{client}-i{i}"}]
        bodies.append(body)
    return bodies


class Client(threading.Thread):
    """Posts its bodies in order, each until acknowledged (200), retrying with the same ids after
    a connection error or a timeout; records which were acknowledged and which retries saw
    their events stored already."""

    def __init__(self, port: int, bodies: list[dict], deadline: float):
        super().__init__(daemon=True)
        self.port, self.bodies, self.deadline = port, bodies, deadline
        self.acknowledged: list[dict] = []
        self.retried_duplicates = 0
        self.failures: list[str] = []

    def run(self) -> None:
        for body in self.bodies:
            attempts = 0
            while time.monotonic() < self.deadline:
                attempts += 1
                try:
                    status, text = call(self.port, "POST", "/events", body, timeout=10)
                except CONNECTION_ERRORS:
                    time.sleep(0.1)
                    continue
                if status != 200:
                    self.failures.append(f"{status}: {text}")
                    return
                answer = json.loads(text)
                if attempts > 1:
                    self.retried_duplicates += answer["duplicates"]
                self.acknowledged.append(answer)
                break
            else:
                self.failures.append("gave up: the deadline passed")
                return


def event_ids(bodies: list[dict], table: str) -> list[str]:
    return [event["event_id"] for body in bodies for event in body.get(table, [])]


def stored_ids(store: Path) -> dict[str, pd.Series]:
    """How often each client event id is in each table of the store (opened after the server stopped)."""
    import duckdb

    with duckdb.connect(str(store), read_only=True) as con:
        return {table: con.sql(f"SELECT event_id, count(*) AS n FROM {table} WHERE event_id IS NOT NULL "
                               "GROUP BY event_id").df().set_index("event_id")["n"]
                for table in ("transactions", "interactions")}


def test_no_event_is_lost_or_doubled_by_retries_and_a_kill(server, shop):
    server.start()
    loaded = server.health()["events"]
    assert loaded["transactions"] == len(shop["transactions"]) and loaded["interactions"] > 0
    customers = sorted(shop["transactions"].customer_id.unique())[:50]
    bodies = [client_requests(client, customers, 15) for client in range(4)]
    clients = [Client(server.port, mine, time.monotonic() + 120) for mine in bodies]
    for client in clients:
        client.start()
    # Killed mid-stream: some bodies acknowledged, most not yet sent.
    while sum(len(c.acknowledged) for c in clients) < 12:
        assert any(c.is_alive() for c in clients) and not any(c.failures for c in clients), [c.failures for c in clients]
        time.sleep(0.01)
    server.kill()
    acknowledged_before = [body for client, mine in zip(clients, bodies) for body in mine[:len(client.acknowledged)]]
    assert 12 <= len(acknowledged_before) < sum(map(len, bodies)) - 8
    server.start()
    for client in clients:
        client.join(150)
    assert not any(c.is_alive() for c in clients)
    assert [c.failures for c in clients] == [[]] * 4
    assert [len(c.acknowledged) for c in clients] == [len(mine) for mine in bodies]

    everything = [body for mine in bodies for body in mine]
    posted = {table: event_ids(everything, table) for table in ("transactions", "interactions")}
    assert all(len(set(ids)) == len(ids) for ids in posted.values())
    # Every event once: what the store counts, and what it holds after the server stopped.
    assert server.health()["events"] == {table: loaded[table] + len(ids) for table, ids in posted.items()}
    stored_answers = sum(a["stored"] for c in clients for a in c.acknowledged)
    duplicates = sum(a["duplicates"] for c in clients for a in c.acknowledged)
    assert stored_answers + duplicates == sum(map(len, posted.values()))
    # An acknowledgement lost on its way back: the client's retry, after the restart too, stores nothing.
    for mine in bodies:
        first = mine[0]
        status, text = call(server.port, "POST", "/events", first)
        assert status == 200 and json.loads(text) == {"stored": 0, "duplicates": sum(map(len, first.values())),
                                                      "dropped": 0}
    assert server.health()["events"] == {table: loaded[table] + len(ids) for table, ids in posted.items()}
    # Stopped as a service manager stops it: gracefully, the store closed (its log merged).
    assert server.stop() == 0
    assert "Finished server process" in server.log() and not Path(f"{server.store}.wal").exists()
    held = stored_ids(server.store)
    for table, ids in posted.items():
        assert sorted(held[table].index) == sorted(ids), table
        assert (held[table] == 1).all(), table
    assert set(event_ids(acknowledged_before, "transactions")) <= set(held["transactions"].index)


def metric_samples(text: str) -> dict[tuple, float]:
    """The samples of a Prometheus text page: ``(name, label, value, ...)`` to value."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(sample.name, *sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def export_version(shop: dict, directory: Path, version: str) -> None:
    """Export the shop's models into ``directory`` again, as ``version`` (as a new training would)."""
    for target, model in shop["models"].items():
        shutil.rmtree(directory / f"churnml-{target}")
        save_exported(model, directory, f"churnml-{target}", version)


def served_versions(server: Server) -> set[str]:
    return {identity["version"] for identity in server.health()["models"].values()}


def test_the_token_the_metrics_and_both_reloads_on_the_real_server(server, shop):
    server.start()
    customer = sorted(shop["transactions"].customer_id.unique())[3]
    score = f"/customers/{customer}/score"
    # Without the token (or with another) only /health answers.
    for method, path in (("GET", score), ("POST", "/events"), ("GET", "/metrics"), ("POST", "/admin/reload")):
        status, text = call(server.port, method, path, {} if method == "POST" else None, token=False)
        assert status == 401 and "bearer token" in json.loads(text)["error"], (path, text)
    assert served_versions(server) == {"7"}

    status, text = call(server.port, "GET", score)
    assert status == 200 and json.loads(text)["models"]["churn"] == {"name": "churnml-churn", "version": "7"}
    first = json.loads(text)
    assert call(server.port, "GET", score)[0] == 200
    assert call(server.port, "GET", "/customers/nobody/score")[0] == 404
    event = {"customer_id": customer, "ts": "2024-12-30T12:00:00", "kind": "support_ticket", "event_id": "m-1"}
    assert call(server.port, "POST", "/events", {"interactions": [event]})[0] == 200
    free_sample = {"customer_id": customer, "ts": "2024-12-30T12:05:00", "amount": 0.0, "event_id": "m-2"}
    status, text = call(server.port, "POST", "/events", {"transactions": [free_sample]})
    assert status == 200 and json.loads(text) == {"stored": 1, "duplicates": 0, "dropped": 0}, text
    status, text = call(server.port, "GET", "/metrics")
    assert status == 200
    metrics = metric_samples(text)
    endpoint = ("endpoint", "/customers/{customer_id}/score")
    assert metrics[("churnml_requests_total", endpoint, ("status", "200"))] == 2
    assert metrics[("churnml_requests_total", endpoint, ("status", "401"))] == 1
    assert metrics[("churnml_requests_total", ("endpoint", "/metrics"), ("status", "401"))] == 1
    assert metrics[("churnml_request_duration_seconds_count", endpoint)] == 4
    assert metrics[("churnml_events_posted_total", ("outcome", "stored"), ("table", "interactions"))] == 1
    assert metrics[("churnml_events_posted_total", ("outcome", "stored"), ("table", "transactions"))] == 1
    events = server.health()["events"]
    assert metrics[("churnml_events_stored", ("table", "interactions"))] == events["interactions"]
    assert metrics[("churnml_events_stored", ("table", "transactions"))] == events["transactions"]
    assert metrics[("churnml_model_info", ("name", "churnml-churn"), ("target", "churn"), ("version", "7"))] == 1

    # A new version exported where the models are served from: the reload endpoint swaps it in.
    export_version(shop, server.models, "8")
    assert served_versions(server) == {"7"}
    status, text = call(server.port, "POST", "/admin/reload")
    assert status == 200, text
    assert json.loads(text)["models"]["repurchase"] == {"name": "churnml-repurchase", "version": "8"}
    assert served_versions(server) == {"8"}
    again = json.loads(call(server.port, "GET", score)[1])
    assert again["models"]["churn"]["version"] == "8"
    # The same models under another version: the same score.
    assert again["churn_probability"] == pytest.approx(first["churn_probability"], abs=1e-9)

    # SIGHUP does the same.
    export_version(shop, server.models, "9")
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while served_versions(server) != {"9"}:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)

    # A reload that fails leaves the models in service.
    shutil.rmtree(server.models / "churnml-churn")
    status, text = call(server.port, "POST", "/admin/reload")
    assert status == 422 and "unchanged" in json.loads(text)["error"], text
    assert served_versions(server) == {"9"}
    metrics = metric_samples(call(server.port, "GET", "/metrics")[1])
    assert metrics[("churnml_model_reloads_total", ("outcome", "done"))] == 2
    assert metrics[("churnml_model_reloads_total", ("outcome", "failed"))] == 1
    assert metrics[("churnml_model_info", ("name", "churnml-churn"), ("target", "churn"), ("version", "9"))] == 1
    assert ("churnml_model_info", ("name", "churnml-churn"), ("target", "churn"), ("version", "7")) not in metrics
