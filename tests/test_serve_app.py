"""The HTTP app of real-time scoring (churnml.serve.app) against small fakes of the scorer and
the store: every endpoint, JSON errors, the token, the limits, the model reload and the metrics."""

from __future__ import annotations

import datetime as dt
import json
import threading

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from churnml.errors import UserError, UserValueError
from churnml.io.contract import DataValidationError, Problem
from churnml.scoring.table import ModelIdentity
from churnml.serve.app import ServeConfig, TokenBuckets, create_app
from churnml.serve.scorer import UnknownCustomer

TOKEN = "s3cret-token-of-32-characters-xx"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LAST_DAY = dt.date(2025, 6, 30)


class FakeStore:
    """Customers A and B; appends are all-or-nothing per call, refused when an amount is missing."""

    def __init__(self):
        self.customers = {"A", "B"}
        self.rows = {"transactions": 5, "interactions": 3}
        self.seen_ids: set[str] = set()
        self.appended: list[tuple[str, pd.DataFrame]] = []

    def append(self, table, events):
        if table == "transactions" and ("amount" not in events or events["amount"].isna().any()):
            raise DataValidationError([Problem("posted transactions", "amount", "missing values", 1, len(events))])
        ids = events["event_id"].tolist() if "event_id" in events else [None] * len(events)
        fresh = []
        for i in ids:
            if i is None or i not in self.seen_ids:
                fresh.append(i)
                self.seen_ids.add(i)
        self.appended.append((table, events))
        self.rows[table] += len(fresh)
        self.customers.update(events["customer_id"])
        return type("AppendResult", (), {"stored": len(fresh), "duplicates": len(ids) - len(fresh),
                                             "dropped": 0})()

    def counts(self):
        return dict(self.rows)


class FakeScorer:
    """Scores from the models of ``version``; with ``gate``, a score waits for it (a slow request)."""

    def __init__(self, version="3", gate: threading.Event | None = None, fail: Exception | None = None):
        self.version = version
        self.identities = {"churn": ModelIdentity("churnml-churn", version),
                           "repurchase": ModelIdentity("churnml-repurchase", version)}
        self.gate, self.fail = gate, fail
        self.entered = threading.Event()
        self.asked: list[tuple[str, dt.date | None]] = []

    def score(self, store, customer_id, as_of=None):
        self.asked.append((customer_id, as_of))
        if self.fail is not None:
            raise self.fail
        if customer_id not in store.customers:
            raise UnknownCustomer(f"no customer {customer_id} in the store")
        if as_of is not None and as_of > LAST_DAY:
            raise UserValueError(f"as_of={as_of} is after the last event ({LAST_DAY}): give an earlier date")
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        return {"customer_id": customer_id, "as_of": (as_of or LAST_DAY).isoformat(), "churn_probability": 0.25,
                "reasons": [{"reason": "no purchase for 90 days", "feature": "recency_days", "contribution": 0.4}],
                "models": {t: {"name": i.name, "version": i.version} for t, i in self.identities.items()}}

    def reloaded(self, version):
        return FakeScorer(version)


def client_of(scorer=None, store=None, reload=None, **settings) -> TestClient:
    app = create_app(scorer or FakeScorer(), store or FakeStore(), ServeConfig(**settings), reload=reload)
    return TestClient(app)


def assert_error(response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and "Traceback" not in body["error"]
    for word in words:
        assert word in body["error"], (word, body["error"])
    return body["error"]


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


def test_settings_default_to_this_machine_only_and_ignore_the_store_key():
    config = ServeConfig.from_dict({"store": "serve/events.duckdb", "port": 8123})
    assert (config.host, config.port, config.token, config.rate_limit_per_second) == ("127.0.0.1", 8123, None, None)
    assert config.is_loopback and not ServeConfig(host="0.0.0.0").is_loopback


@pytest.mark.parametrize("values, key", [
    ({"port": 0}, "serve.port=0"), ({"port": 70000}, "serve.port=70000"), ({"host": ""}, "serve.host"),
    ({"token": "short"}, "serve.token"), ({"max_request_bytes": 0}, "serve.max_request_bytes=0"),
    ({"max_events_per_request": -1}, "serve.max_events_per_request=-1"), ({"burst": 0}, "serve.burst=0"),
    ({"rate_limit_per_second": 0}, "serve.rate_limit_per_second=0"),
])
def test_a_setting_out_of_range_is_refused_naming_its_key(values, key):
    with pytest.raises(UserValueError, match=key.replace(".", r"\.")) as refused:
        ServeConfig(**values)
    assert "\n" not in str(refused.value)


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


def test_a_score_is_the_scorers_dict_as_json_with_the_date_given():
    scorer = FakeScorer()
    with client_of(scorer) as client:
        latest = client.get("/customers/A/score")
        dated = client.get("/customers/B/score", params={"as_of": "2025-03-31"})
    assert latest.status_code == 200 and latest.json()["customer_id"] == "A"
    assert latest.json()["reasons"][0] == {"reason": "no purchase for 90 days", "feature": "recency_days",
                                           "contribution": 0.4}
    assert dated.json()["as_of"] == "2025-03-31" and dated.json()["models"]["churn"]["version"] == "3"
    assert scorer.asked == [("A", None), ("B", dt.date(2025, 3, 31))]


def test_score_errors_are_json_with_a_4xx_status():
    with client_of() as client:
        assert_error(client.get("/customers/Z/score"), 404, "no customer Z")
        assert_error(client.get("/customers/A/score", params={"as_of": "31/03/2025"}), 400, "31/03/2025", "YYYY-MM-DD")
        assert_error(client.get("/customers/A/score", params={"as_of": "2026-01-01"}), 422, "after the last event")
        assert_error(client.get("/customers"), 404, "no endpoint /customers")
        assert_error(client.delete("/customers/A/score"), 405, "DELETE")


def test_a_defect_is_a_500_without_traceback_and_is_counted():
    with client_of(FakeScorer(fail=RuntimeError("bug in the scorer at line 12"))) as client:
        message = assert_error(client.get("/customers/A/score"), 500, "internal error")
        metrics = client.get("/metrics").text
    assert "line 12" not in message
    assert 'churnml_requests_total{endpoint="/customers/{customer_id}/score",status="500"} 1.0' in metrics


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------


def test_posted_events_reach_the_store_and_duplicates_are_counted():
    store = FakeStore()
    body = {"transactions": [{"customer_id": "C", "ts": "2025-06-30T10:00:00", "amount": 25.0, "event_id": "e1"},
                             {"customer_id": "A", "ts": "2025-06-30T11:00:00", "amount": 5.0, "event_id": "e2"}],
            "interactions": [{"customer_id": "C", "ts": "2025-06-30T09:00:00", "kind": "visit"}]}
    with client_of(store=store) as client:
        first = client.post("/events", json=body)
        retry = client.post("/events", json={"transactions": body["transactions"]})
        scored = client.get("/customers/C/score")
    assert first.json() == {"stored": 3, "duplicates": 0, "dropped": 0}
    assert retry.json() == {"stored": 0, "duplicates": 2, "dropped": 0}
    assert scored.status_code == 200  # the new customer is known once the post was answered
    table, frame = store.appended[0]
    assert table == "transactions" and list(frame.columns) == ["customer_id", "ts", "amount", "event_id"]
    assert frame["amount"].tolist() == [25.0, 5.0]
    assert store.appended[1][0] == "interactions" and store.rows == {"transactions": 7, "interactions": 4}


def test_events_that_break_the_contract_are_refused_and_nothing_is_stored():
    store = FakeStore()
    with client_of(store=store) as client:
        assert_error(client.post("/events", json={"transactions": [{"customer_id": "A", "ts": "2025-06-30"}]}),
                     422, "invalid input data", "column 'amount'")
        assert_error(client.post("/events", content=b"{not json"), 400, "not JSON")
        assert_error(client.post("/events", json=[1, 2]), 400, "JSON object")
        assert_error(client.post("/events", json={"transactions": [1]}), 400, "list of event objects")
        assert_error(client.post("/events", json={"orders": []}), 422, "'orders'")
        assert_error(client.post("/events", json={"transactions": []}), 422, "no events")
    assert store.appended == [] and store.rows == {"transactions": 5, "interactions": 3}


def test_too_large_a_body_or_too_many_events_is_a_413():
    store = FakeStore()
    event = {"customer_id": "A", "ts": "2025-06-30", "amount": 1.0}
    with client_of(store=store, max_request_bytes=300, max_events_per_request=2) as client:
        assert_error(client.post("/events", json={"transactions": [event] * 3}), 413,
                     "3 events", "serve.max_events_per_request=2")
        assert_error(client.post("/events", json={"transactions": [event] * 8}), 413, "serve.max_request_bytes=300")

        def chunks():  # no Content-Length: the limit applies as the body arrives
            yield b'{"transactions": ['
            for _ in range(8):
                yield json.dumps(event).encode() + b","
            yield b"]}"

        assert_error(client.post("/events", content=chunks()), 413, "serve.max_request_bytes=300")
        assert client.post("/events", json={"transactions": [event] * 2}).json() == {"stored": 2, "duplicates": 0, "dropped": 0}
    assert len(store.appended) == 1


# --------------------------------------------------------------------------------------------
# Health, token, rate limit
# --------------------------------------------------------------------------------------------


def test_health_shows_models_and_events_without_the_token():
    with client_of(token=TOKEN) as client:
        health = client.get("/health")
    assert health.json() == {"status": "ok", "events": {"transactions": 5, "interactions": 3},
                             "models": {"churn": {"name": "churnml-churn", "version": "3"},
                                        "repurchase": {"name": "churnml-repurchase", "version": "3"}}}


def test_with_a_token_every_other_endpoint_needs_it():
    with client_of(token=TOKEN) as client:
        for method, path in (("get", "/customers/A/score"), ("post", "/events"), ("get", "/metrics"),
                             ("post", "/admin/reload"), ("get", "/nowhere")):
            refused = getattr(client, method)(path)
            assert_error(refused, 401, "bearer token")
            assert refused.headers["www-authenticate"] == "Bearer"
            assert_error(getattr(client, method)(path, headers={"Authorization": f"Bearer {TOKEN[:-1]}y"}), 401)
        assert client.get("/customers/A/score", headers=AUTH).status_code == 200
        assert client.get("/metrics", headers=AUTH).status_code == 200


def test_the_rate_limit_refuses_a_client_past_its_burst():
    with client_of(rate_limit_per_second=0.5, burst=2) as client:
        answers = [client.get("/customers/A/score") for _ in range(3)]
    assert [a.status_code for a in answers[:2]] == [200, 200]
    assert_error(answers[2], 429, "at most 0.5 a second")
    assert answers[2].headers["retry-after"] == "2"  # an empty bucket refills one token in 2 s


def test_token_buckets_refill_at_the_rate_up_to_the_burst():
    now = [100.0]
    buckets = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0], max_clients=2)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # 0 tokens, 2 a second: one in 0.5 s
    assert buckets.take("b") == 0.0  # each client has its own bucket
    now[0] += 0.25
    assert buckets.take("a") == pytest.approx(0.25)  # half a token back
    now[0] += 0.25
    assert buckets.take("a") == 0.0
    now[0] += 10  # every bucket full again: beyond max_clients the full ones are forgotten
    buckets.take("c")
    assert set(buckets._buckets) == {"c"}


# --------------------------------------------------------------------------------------------
# Reload
# --------------------------------------------------------------------------------------------


def test_reload_needs_a_configured_token():
    with client_of(reload=lambda scorer: scorer.reloaded("4")) as client:
        assert_error(client.post("/admin/reload"), 403, "set serve.token")
        assert client.get("/customers/A/score").json()["models"]["churn"]["version"] == "3"


def test_after_a_reload_requests_get_the_new_models():
    with client_of(reload=lambda scorer: scorer.reloaded("4"), token=TOKEN) as client:
        before = client.get("/customers/A/score", headers=AUTH).json()
        done = client.post("/admin/reload", headers=AUTH)
        after = client.get("/customers/A/score", headers=AUTH).json()
        health = client.get("/health").json()
        metrics = client.get("/metrics", headers=AUTH).text
    assert done.status_code == 200 and done.json()["models"]["churn"] == {"name": "churnml-churn", "version": "4"}
    assert before["models"]["churn"]["version"] == "3" and after["models"]["churn"]["version"] == "4"
    assert health["models"]["repurchase"]["version"] == "4"
    assert 'churnml_model_info{name="churnml-churn",target="churn",version="4"} 1.0' in metrics
    assert 'version="3"' not in metrics
    assert 'churnml_model_reloads_total{outcome="done"} 1.0' in metrics


def test_a_request_in_flight_during_a_reload_finishes_with_the_old_models():
    gate = threading.Event()
    slow = FakeScorer("3", gate=gate)
    app = create_app(slow, FakeStore(), ServeConfig(token=TOKEN), reload=lambda scorer: scorer.reloaded("4"))
    answers = {}
    with TestClient(app) as client:
        in_flight = threading.Thread(target=lambda: answers.update(
            old=client.get("/customers/A/score", headers=AUTH)))
        in_flight.start()
        assert slow.entered.wait(10)
        assert client.post("/admin/reload", headers=AUTH).status_code == 200
        answers["new"] = client.get("/customers/B/score", headers=AUTH)  # answered while the old one waits
        assert in_flight.is_alive()
        gate.set()
        in_flight.join(10)
    assert answers["old"].json()["models"]["churn"]["version"] == "3"
    assert answers["new"].json()["models"]["churn"]["version"] == "4"


def test_a_failed_reload_keeps_the_models_in_service():
    def broken(scorer):
        raise UserError("no model directory models/churnml-churn (score.model_dir): run make export")

    with client_of(reload=broken, token=TOKEN) as client:
        assert_error(client.post("/admin/reload", headers=AUTH), 422, "unchanged", "models/churnml-churn")
        assert client.get("/customers/A/score", headers=AUTH).json()["models"]["churn"]["version"] == "3"
        assert 'churnml_model_reloads_total{outcome="failed"} 1.0' in client.get("/metrics", headers=AUTH).text


def test_the_stage_reloads_through_app_state_as_the_endpoint_does():
    app = create_app(FakeScorer(), FakeStore(), ServeConfig(), reload=lambda scorer: scorer.reloaded("5"))
    assert app.state.reload_models()["churn"]["version"] == "5"
    assert app.state.in_service.scorer.version == "5"


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def test_metrics_count_requests_by_endpoint_and_status_and_time_them():
    with client_of() as client:
        client.get("/customers/A/score")
        client.get("/customers/B/score")
        client.get("/customers/Z/score")
        client.post("/events", json={"transactions": [{"customer_id": "A", "ts": "2025-06-30", "amount": 2.0,
                                                        "event_id": "x"}] * 2})
        text = client.get("/metrics").text
    lines = set(text.splitlines())
    assert 'churnml_requests_total{endpoint="/customers/{customer_id}/score",status="200"} 2.0' in lines
    assert 'churnml_requests_total{endpoint="/customers/{customer_id}/score",status="404"} 1.0' in lines
    assert 'churnml_requests_total{endpoint="/events",status="200"} 1.0' in lines
    assert 'churnml_request_duration_seconds_count{endpoint="/customers/{customer_id}/score"} 3.0' in lines
    assert 'churnml_request_duration_seconds_bucket{endpoint="/customers/{customer_id}/score",le="10.0"} 3.0' in lines
    assert 'churnml_events_posted_total{outcome="stored",table="transactions"} 1.0' in lines
    assert 'churnml_events_posted_total{outcome="duplicate",table="transactions"} 1.0' in lines
    assert 'churnml_events_stored{table="transactions"} 6.0' in lines
    assert 'churnml_model_info{name="churnml-repurchase",target="repurchase",version="3"} 1.0' in lines
    assert "# TYPE churnml_request_duration_seconds histogram" in lines


def test_two_apps_keep_their_own_counts():
    with client_of() as one, client_of() as two:
        one.get("/customers/A/score")
        text = two.get("/metrics").text
    assert 'endpoint="/customers/{customer_id}/score"' not in text
