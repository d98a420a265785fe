"""Real-time scoring of the 1M-customer demo shop over HTTP: latency and throughput of
``GET /customers/{id}/score`` at 1, 8 and 32 concurrent clients; the slow path (a score right
after posting an event for that customer) at 1 client; and, in the same run, the batch path's
cost per customer (``churnml-score``'s work on the whole population) as the reference.

Set-up, not timed: the demo shop (``harness.demo_data``), churn and repurchase models trained
with the default configuration on 1 customer in 50 and exported, and an event store holding the
whole shop, both cached under ``data/bench/serve/``; each run serves a copy of the store, so the
events it posts do not pile up. The service is ``churnml-serve`` itself, in its own process on
127.0.0.1 with a free port and a token. The load generator is this process: per client one thread
with one keep-alive connection, sending a fixed number of requests for customers drawn at random
(seeded) from those with history; the latency is the client's, from sending the request to
reading the whole answer. The first score builds the service's population state (the batch
features and scores at the day of the newest event) and is reported on its own.

Target at 8 clients: p99 <= 50 ms and p50 <= 15 ms, without errors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from harness import MAX_SNAPSHOTS, ROOT, SAMPLE_MODULUS, demo_data, measure, print_table

P50_MS_TARGET = 15.0
P99_MS_TARGET = 50.0
TARGET_CLIENTS = 8
CLIENTS = (1, 8, 32)
REQUESTS_PER_CLIENT = 200
SLOW_PATH_CUSTOMERS = 50
HEALTH_TIMEOUT_SECONDS = 1800.0
TABLES = ("transactions", "interactions", "customers")

Send = Callable[[str], int]


# --------------------------------------------------------------------------------------------
# The load generator (tested on its own in tests/test_bench.py)
# --------------------------------------------------------------------------------------------


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p95 and p99 of latencies given in seconds, in milliseconds (numpy's linear interpolation)."""
    values = np.asarray(seconds, dtype=float) * 1000.0
    if values.size == 0:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


@dataclass
class LoadResult:
    """What one load run measured: each request's latency (s), the statuses that were not 200, wall time (s)."""

    clients: int
    latencies: list[float] = field(default_factory=list)
    failures: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def errors(self) -> int:
        return sum(self.failures.values())

    def row(self, what: str) -> dict:
        rate = self.requests / self.seconds if self.seconds > 0 else float("nan")
        return {"what": what, "clients": self.clients, "requests": self.requests, **percentiles(self.latencies),
                "requests/s": rate, "errors": self.errors}


def generate_load(connect: Callable[[], Send], customers: Sequence[str], clients: int, requests_per_client: int,
                  seed: int = 0) -> LoadResult:
    """Run ``clients`` threads at once, each sending ``requests_per_client`` requests one after another.

    ``connect()`` is called once per thread and returns that client's ``send(customer_id) ->
    status`` (its own connection); each request's customer is drawn from ``customers`` with a
    generator seeded by ``seed`` and the client's number. The wall time runs from the moment every
    client is ready to the end of the last request.
    """
    result = LoadResult(clients)
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)
    problems: list[BaseException] = []

    def client(number: int) -> None:
        try:
            send = connect()
            rng = np.random.default_rng([seed, number])
            chosen = [customers[i] for i in rng.integers(0, len(customers), requests_per_client)]
        except BaseException as error:  # reported once the others are released
            problems.append(error)
            ready.abort()
            return
        ready.wait()
        latencies, failures = [], {}
        try:
            for customer in chosen:
                started = time.perf_counter()
                status = send(customer)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    failures[status] = failures.get(status, 0) + 1
        except BaseException as error:  # a service that stopped answering: the run is void
            problems.append(error)
        with lock:
            result.latencies.extend(latencies)
            for status, count in failures.items():
                result.failures[status] = result.failures.get(status, 0) + count

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for thread in threads:
        thread.start()
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        for thread in threads:
            thread.join()
        raise RuntimeError(f"a load client could not start: {problems[0]!r}") from problems[0]
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - started
    if problems:
        raise RuntimeError(f"{len(problems)} of {clients} load clients stopped: {problems[0]!r}") from problems[0]
    return result


def http_client(host: str, port: int, token: str | None, as_of: str | None = None) -> Callable[[], Send]:
    """A ``connect`` for :func:`generate_load`: one keep-alive HTTP connection per client, each
    ``send(customer_id)`` a ``GET /customers/{id}/score`` whose whole answer is read."""
    import http.client
    from urllib.parse import quote

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    query = f"?as_of={as_of}" if as_of else ""

    def connect() -> Send:
        connection = http.client.HTTPConnection(host, port, timeout=120)

        def send(customer_id: str) -> int:
            path = f"/customers/{quote(customer_id, safe='')}/score{query}"
            for attempt in (1, 2):
                try:
                    connection.request("GET", path, headers=headers)
                    response = connection.getresponse()
                    response.read()
                    return response.status
                except (ConnectionError, http.client.HTTPException):
                    # The server closed an idle keep-alive connection: reconnect once.
                    connection.close()
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

        return send

    return connect


def request_json(host: str, port: int, method: str, path: str, token: str | None = None,
                 body: dict | None = None) -> tuple[int, dict]:
    """One request on a connection of its own: the status and the JSON answer."""
    import http.client

    connection = http.client.HTTPConnection(host, port, timeout=1800)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def slow_path(host: str, port: int, token: str, customers: Sequence[str], day: str) -> tuple[LoadResult, LoadResult]:
    """For each customer in turn: post a purchase on ``day`` (a fresh ``event_id``), then score
    them; the posts' latencies and the following scores' latencies, at 1 client."""
    posts, scores = LoadResult(1), LoadResult(1)
    send = http_client(host, port, token)()
    started = time.perf_counter()
    for customer in customers:
        event = {"customer_id": customer, "ts": f"{day}T12:00:00", "amount": 25.0, "event_id": f"bench-{uuid.uuid4()}"}
        clock = time.perf_counter()
        status, _ = request_json(host, port, "POST", "/events", token, {"transactions": [event]})
        posts.latencies.append(time.perf_counter() - clock)
        if status != 200:
            posts.failures[status] = posts.failures.get(status, 0) + 1
        clock = time.perf_counter()
        status = send(customer)
        scores.latencies.append(time.perf_counter() - clock)
        if status != 200:
            scores.failures[status] = scores.failures.get(status, 0) + 1
    posts.seconds = scores.seconds = time.perf_counter() - started
    return posts, scores


# --------------------------------------------------------------------------------------------
# Set-up: models, store, service
# --------------------------------------------------------------------------------------------


def cache_directory(n_customers: int, seed: int = 42) -> Path:
    return ROOT / "data" / "bench" / "serve" / f"n={n_customers}_seed={seed}"


def files_settings(directory: Path) -> dict:
    return {"kind": "files", **{t: {"path": str(directory / f"{t}.parquet")} for t in TABLES}}


def prepare_models(directory: Path, cache: Path) -> Path:
    """Models trained as bench_scoring trains them, exported once to ``cache/models``."""
    models = cache / "models"
    if not (models / "churnml-repurchase").exists():
        code = f"""
import shutil, sys, tempfile
from pathlib import Path
sys.path.insert(0, {str(ROOT / "bench")!r})
from harness import train_default_models
from churnml import tracking
scratch = Path(tempfile.mkdtemp(prefix="bench_serve_"))
staging = Path({str(models)!r} + ".partial")
shutil.rmtree(staging, ignore_errors=True)
models, _ = train_default_models({str(directory)!r}, scratch, {SAMPLE_MODULUS}, {MAX_SNAPSHOTS})
for target, model in models.items():
    tracking.save_model_directory(model, staging / f"churnml-{{target}}")
staging.rename({str(models)!r})
shutil.rmtree(scratch, ignore_errors=True)
"""
        models.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    return models


def prepare_store(directory: Path, cache: Path) -> Path:
    """An event store holding the whole shop, loaded once into ``cache/store``."""
    store = cache / "store"
    if not store.exists():
        code = f"""
import shutil
from pathlib import Path
from churnml.io.sources import load_data
from churnml.serve.store import EventStore
staging = Path({str(store)!r} + ".partial")
shutil.rmtree(staging, ignore_errors=True)
staging.mkdir(parents=True)
events = EventStore.open(str(staging / "events.duckdb"))
print(events.load(load_data({files_settings(directory)!r})))
events.close()
staging.rename({str(store)!r})
"""
        store.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    return store


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_service(directory: Path, models: Path, store: Path, scratch: Path, port: int, token: str) -> subprocess.Popen:
    """``churnml-serve`` on 127.0.0.1:``port`` over a copy of ``store``, its output in ``scratch/service.log``."""
    served = scratch / "store"
    shutil.copytree(store, served)
    # Quoted: the cache's directory names hold "=", which an override cannot hold bare.
    data = ["data=files", *(f"data.{t}.path='{directory / f'{t}.parquet'}'" for t in TABLES)]
    command = [sys.executable, "-m", "churnml.cli", "serve", f"serve.port={port}", f"serve.token={token}",
               f"serve.store='{served / 'events.duckdb'}'", f"score.model_dir='{models}'", "score.expected_value=false",
               f"mlflow.tracking_uri='sqlite:///{scratch / 'mlflow.db'}'", *data]
    log = open(scratch / "service.log", "w")
    return subprocess.Popen(command, cwd=scratch, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())


def wait_until_healthy(process: subprocess.Popen, port: int, log: Path, timeout: float = HEALTH_TIMEOUT_SECONDS) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"churnml-serve stopped (exit {process.returncode}):\n{log.read_text()[-4000:]}")
        try:
            status, health = request_json("127.0.0.1", port, "GET", "/health")
            if status == 200:
                return health
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"churnml-serve not healthy after {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def stop_service(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def customers_with_history(directory: Path, n: int, seed: int = 7) -> list[str]:
    import duckdb

    ids = duckdb.sql(f"SELECT DISTINCT customer_id FROM read_parquet('{directory / 'transactions.parquet'}') "
                     "ORDER BY customer_id").fetchnumpy()["customer_id"]
    rng = np.random.default_rng(seed)
    return [str(c) for c in rng.choice(ids, size=min(n, len(ids)), replace=False)]


BATCH_SETUP = """
    import atexit, shutil, tempfile
    from pathlib import Path

    import pyarrow.parquet as pq

    from churnml import tracking
    from churnml.features import dates
    from churnml.features.build import FeatureConfig
    from churnml.io.sources import load_data
    from churnml.jobs.score import score_with_duckdb
    from churnml.scoring.policy import ScoringConfig
    from churnml.scoring.reasons import ReasonContext
    from churnml.scoring.table import ModelIdentity

    scratch = Path(tempfile.mkdtemp(prefix="bench_serve_batch_"))
    atexit.register(shutil.rmtree, scratch, True)
    models = {{t: tracking.load_model({models!r} + f"/churnml-{{t}}") for t in ("churn", "repurchase")}}
    identities = {{t: ModelIdentity(f"churnml-{{t}}", "bench") for t in models}}
    feature_config = FeatureConfig()
    context = ReasonContext.from_features(feature_config, int(models["churn"].horizon_days))
    settings = {settings!r}
"""

BATCH_WORK = """
    dataset = load_data(settings)
    as_of = dates.resolve_as_of(None, dataset.first_date, dataset.last_date)
    path, summary, _ = score_with_duckdb(dataset, as_of, feature_config, models, ScoringConfig(), context, identities,
                                         {}, scratch / "scores.parquet", "parquet")
    info = {"rows": pq.read_metadata(path).num_rows, "as_of": str(as_of)}
"""


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


def run(n_customers: int = 1_000_000, repeat: int = 1, requests_per_client: int = REQUESTS_PER_CLIENT) -> bool:
    import secrets

    directory = demo_data(n_customers)
    cache = cache_directory(n_customers)
    models = prepare_models(directory, cache)
    store = prepare_store(directory, cache)
    # The batch first, alone on the machine: the service's memory would otherwise weigh on it.
    batch = measure("reference: batch scoring of every customer (load, features, 2 models, reasons, write)",
                    BATCH_SETUP.format(models=str(models), settings=files_settings(directory)), BATCH_WORK,
                    repeat=repeat)
    customers = customers_with_history(directory, 20_000)

    scratch = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    token, port = secrets.token_urlsafe(24), free_port()
    process = start_service(directory, models, store, scratch, port, token)
    rows: list[dict] = []
    try:
        started = time.perf_counter()
        health = wait_until_healthy(process, port, scratch / "service.log")
        start_seconds = time.perf_counter() - started
        clock = time.perf_counter()
        status, first = request_json("127.0.0.1", port, "GET", f"/customers/{customers[0]}/score", token)
        first_seconds = time.perf_counter() - clock
        if status != 200:
            raise RuntimeError(f"the first score answered {status}: {first}")
        connect = http_client("127.0.0.1", port, token)
        generate_load(connect, customers, 1, 50, seed=99)  # warm-up: connections, caches
        results = {clients: generate_load(connect, customers, clients, requests_per_client, seed=clients)
                   for clients in CLIENTS}
        rows = [results[c].row("score, no new events") for c in CLIENTS]
        slow_customers = customers[-SLOW_PATH_CUSTOMERS:]
        posts, rescored = slow_path("127.0.0.1", port, token, slow_customers, first["as_of"])
        rows += [posts.row("POST /events (one purchase)"), rescored.row("score right after that post")]
    finally:
        stop_service(process)
        log = (scratch / "service.log").read_text()
        shutil.rmtree(scratch, ignore_errors=True)

    per_customer_ms = batch.seconds / batch.info["rows"] * 1000
    # The batch's "requests" are customers: its throughput in customers per second.
    rows.append({"what": "reference: batch scoring, whole population", "requests": batch.info["rows"],
                 "requests/s": batch.info["rows"] / batch.seconds})
    print_table(f"serve, demo shop of {n_customers:,} customers, {health['events']} events in the store; service "
                f"healthy {start_seconds:.0f} s after start, first score (population state at {first['as_of']}) "
                f"{first_seconds:.1f} s; latencies in ms, {requests_per_client} requests per client",
                rows, ["what", "clients", "requests", "p50", "p95", "p99", "requests/s", "errors"])
    print(f"batch reference: {batch.info['rows']:,} customers in {batch.seconds:.1f} s ({batch.peak_gib:.2f} GiB), "
          f"{per_customer_ms:.3f} ms per customer")
    if "Traceback" in log:
        print("the service logged a traceback:\n" + log[-3000:])
    at_target = results[TARGET_CLIENTS]
    shown = percentiles(at_target.latencies)
    ok = shown["p99"] <= P99_MS_TARGET and shown["p50"] <= P50_MS_TARGET and at_target.errors == 0
    print(f"target at {TARGET_CLIENTS} clients: p99 <= {P99_MS_TARGET:.0f} ms and p50 <= {P50_MS_TARGET:.0f} ms "
          f"without errors: {'met' if ok else 'NOT met'} (p50 {shown['p50']:.1f} ms, p99 {shown['p99']:.1f} ms, "
          f"{at_target.errors} errors)")
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--requests-per-client", type=int, default=REQUESTS_PER_CLIENT)
    args = parser.parse_args()
    run(args.customers, args.repeat, args.requests_per_client)
