"""The benchmarks import what exists: their set-up code is text run in a fresh process, which no
linter reads, so every ``from churnml... import ...`` in bench/ (code or text) is checked here."""

from __future__ import annotations

import importlib
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnml.evaluation.metrics import best_classical

BENCH = Path(__file__).resolve().parents[1] / "bench"
IMPORT = re.compile(r"from (churnml(?:\.\w+)*) import ([\w, ]+?)(?:\\n|\n|;|\"|$)", re.M)


def churnml_imports() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted(BENCH.glob("*.py")):
        for module, names in IMPORT.findall(path.read_text()):
            for name in names.split(","):
                found.append((path.name, module, name.strip().split(" as ")[0]))
    return found


def test_the_benchmarks_import_churnml():
    assert len(churnml_imports()) > 20


@pytest.mark.parametrize("where, module, name", churnml_imports())
def test_every_name_a_benchmark_imports_exists(where, module, name):
    imported = importlib.import_module(module)
    assert hasattr(imported, name) or importlib.util.find_spec(f"{module}.{name}") is not None, (
        f"{where}: from {module} import {name}")


def quality_bench():
    import sys

    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("bench_quality")
    finally:
        sys.path.remove(str(BENCH))


def comparison(**model) -> pd.DataFrame:
    """A comparison table as training makes it: two classical scores and their best per metric."""
    columns = ["roc_auc", "pr_auc", "brier", "log_loss", "top_decile_lift"]
    rows = {"model": [0.80, 0.50, 0.100, 0.330, 3.0],
            "bgnbd": [0.78, 0.52, 0.102, 0.335, 3.1],
            "rfm": [0.79, 0.45, 0.110, 0.360, 2.9]}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    for metric, value in model.items():
        table.at["model", metric] = value
    table.loc["best_classical"] = best_classical(table)["value"]
    return table


def test_the_quality_verdict_needs_a_win_on_every_metric_over_the_best_classical_score():
    judge = quality_bench().verdict
    wins = judge(comparison(pr_auc=0.53))
    assert wins["met"]
    # Margins are against the best of any classical score, per metric: rfm's ROC AUC, bgnbd's PR AUC.
    assert wins["roc_auc"] == pytest.approx(0.01) and wins["pr_auc"] == pytest.approx(0.01)
    assert wins["brier"] == pytest.approx(-0.002) and wins["log_loss"] == pytest.approx(-0.005)
    assert judge(comparison(pr_auc=0.53, brier=0.102, log_loss=0.335))["met"]  # ties on the losses are no worse
    loses_log_loss = judge(comparison(pr_auc=0.53, log_loss=0.336))
    assert not loses_log_loss["met"] and loses_log_loss["log_loss"] == pytest.approx(0.001)
    assert not judge(comparison())["met"]  # PR AUC below bgnbd's
    assert not judge(comparison(pr_auc=0.53, roc_auc=0.79))["met"]  # a tie on ROC AUC is no win
    assert not judge(comparison(pr_auc=math.nan))["met"]


# --------------------------------------------------------------------------------------------
# bench_serve: the load generator and its percentiles, against fakes of the service
# --------------------------------------------------------------------------------------------


def serve_bench():
    import sys

    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("bench_serve")
    finally:
        sys.path.remove(str(BENCH))


def test_percentiles_are_in_milliseconds_with_linear_interpolation():
    shown = serve_bench().percentiles([k / 1000 for k in range(1, 101)])  # 1 ms .. 100 ms
    # numpy's linear rule: rank (n - 1) q between the sorted values.
    assert shown == pytest.approx({"p50": 50.5, "p95": 95.05, "p99": 99.01})


def test_the_load_generator_runs_the_clients_at_once_and_counts_every_request():
    import threading
    import time

    bench = serve_bench()
    lock, running, most = threading.Lock(), [0], [0]

    def connect():
        def send(customer):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.01)
            with lock:
                running[0] -= 1
            return 404 if customer == "gone" else 200
        return send

    customers = ["A", "B", "C", "gone"]
    result = bench.generate_load(connect, customers, clients=4, requests_per_client=6, seed=3)
    assert result.requests == 24 and most[0] == 4
    assert min(result.latencies) >= 0.01
    # 6 sequential requests of >= 10 ms per client, the clients side by side.
    assert 0.06 <= result.seconds < 0.06 * 4
    # The draws are the seeded generator's: the same seed asks for the same customers.
    drawn = [customers[i] for k in range(4) for i in np.random.default_rng([3, k]).integers(0, 4, 6)]
    assert result.failures == ({404: drawn.count("gone")} if "gone" in drawn else {})
    row = result.row("fake")
    assert row["requests"] == 24 and row["errors"] == result.errors and row["requests/s"] == 24 / result.seconds


def test_a_client_that_cannot_connect_stops_the_load_run():
    def connect():
        raise ConnectionRefusedError("no service")

    with pytest.raises(RuntimeError, match="could not start"):
        serve_bench().generate_load(connect, ["A"], clients=2, requests_per_client=1)


def test_a_service_that_stops_answering_voids_the_load_run():
    def connect():
        def send(customer):
            raise ConnectionRefusedError("the service stopped")
        return send

    with pytest.raises(RuntimeError, match="2 of 2 load clients stopped"):
        serve_bench().generate_load(connect, ["A"], clients=2, requests_per_client=3)


def test_the_http_client_asks_for_scores_with_the_token_on_one_connection():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen, connections = [], set()

    class FakeService(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn

        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            connections.add(self.client_address)
            ok = self.headers.get("Authorization") == "Bearer t0ken"
            body = b'{"churn_probability": 0.5}' if ok else b'{"error": "token"}'
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        bench = serve_bench()
        port = server.server_address[1]
        send = bench.http_client("127.0.0.1", port, "t0ken", as_of="2025-06-30")()
        assert [send("A 1"), send("B/2")] == [200, 200]
        assert bench.http_client("127.0.0.1", port, "wrong")()("A") == 401
        result = bench.generate_load(bench.http_client("127.0.0.1", port, "t0ken"), ["C"], clients=2,
                                     requests_per_client=3)
    finally:
        server.shutdown()
        server.server_close()
    assert seen[:2] == [("/customers/A%201/score?as_of=2025-06-30", "Bearer t0ken"),
                        ("/customers/B%2F2/score?as_of=2025-06-30", "Bearer t0ken")]
    assert result.requests == 6 and result.errors == 0
    assert len(connections) == 4  # one connection per client: the first two requests shared one
