"""The HTTP app of real-time scoring: a customer's score, posted events, health, Prometheus
metrics and a model reload, as JSON over FastAPI.

:func:`create_app` wires an online scorer (:class:`churnml.serve.scorer.OnlineScorer`) and an
event store (:class:`churnml.serve.store.EventStore`) into an ASGI app; the stage
``churnml-serve`` (:mod:`churnml.jobs.serve`) runs it on uvicorn. Every answer is JSON; every
refusal is ``{"error": "<one line>"}`` with a 4xx status for the caller's mistake, and a defect
is a 500 whose body holds no traceback (the log does).

Safety (:class:`ServeConfig`): an optional bearer token (every endpoint but ``/health``), a cap
on the request body and on the events of one request, a token-bucket rate limit per client
address, and a model reload that needs the token. FastAPI and prometheus_client are imported
when an app is created, not with this module, so that the stage schemas can read
:class:`ServeConfig` without them.
"""

# Not `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request)
# from the objects, and they are imported inside create_app.
import hmac
import logging
import math
import threading
import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Callable, Mapping

from churnml.errors import UserError, UserValueError, one_line

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("churnml")

EVENT_TABLES = ("transactions", "interactions")
# Seconds: scores answered from the population state take a few milliseconds, a customer
# recomputed after new events some hundred; the buckets cover both and the 50 ms target.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Clients the rate limiter remembers before it forgets those whose bucket is full again.
_MAX_REMEMBERED_CLIENTS = 10_000


@dataclass(frozen=True)
class ServeConfig:
    """How the service listens and what it accepts (the ``serve`` node of ``churnml-serve``).

    Parameters
    ----------
    host : str
        Address to bind; ``127.0.0.1`` answers this machine only.
    port : int
        TCP port, 1-65535.
    token : str or None
        When set (16 characters or more), every endpoint but ``/health`` requires
        ``Authorization: Bearer <token>``, and ``POST /admin/reload`` is enabled.
    max_request_bytes : int
        Largest request body accepted, in bytes (413 above).
    max_events_per_request : int
        Most events (transactions and interactions together) one ``POST /events`` may carry (413 above).
    rate_limit_per_second : float or None
        Requests per second each client address may make on average (a token bucket; 429 when
        empty); None: no limit.
    burst : int
        Requests a client may make at once above that rate (the bucket's size).

    Raises
    ------
    churnml.errors.UserValueError
        For a value out of range, naming ``serve.<key>`` and what it takes.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_request_bytes: int = 1_000_000
    max_events_per_request: int = 10_000
    rate_limit_per_second: float | None = None
    burst: int = 20

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> "ServeConfig":
        """Build from the ``serve`` config node; other keys (``store``) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in settings.items() if k in known})

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise UserValueError(f"serve.host={self.host!r}: give an address to bind, e.g. 127.0.0.1")
        if not _is_int(self.port) or not 1 <= self.port <= 65535:
            raise UserValueError(f"serve.port={self.port}: give a TCP port from 1 to 65535")
        if self.token is not None and (not isinstance(self.token, str) or len(self.token) < 16):
            raise UserValueError("serve.token is shorter than 16 characters: give a long random one, e.g. "
                                 "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        for key in ("max_request_bytes", "max_events_per_request", "burst"):
            if not _is_int(getattr(self, key)) or getattr(self, key) < 1:
                raise UserValueError(f"serve.{key}={getattr(self, key)}: give a positive whole number")
        rate = self.rate_limit_per_second
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                                 or not math.isfinite(rate) or rate <= 0):
            raise UserValueError(f"serve.rate_limit_per_second={rate}: give a positive number of requests "
                                 "per second, or null for no limit")

    @property
    def is_loopback(self) -> bool:
        """Whether :attr:`host` answers this machine only."""
        return self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class RequestRefused(Exception):
    """A caller's mistake: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = one_line(message)
        self.headers = dict(headers or {})


class TokenBuckets:
    """A token bucket per client: ``rate`` tokens a second up to ``burst``; a request takes one.

    Thread-safe. Clients whose bucket is full again are forgotten once more than
    ``max_clients`` are remembered, so memory stays bounded.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = _MAX_REMEMBERED_CLIENTS):
        self.rate, self.burst, self.clock, self.max_clients = float(rate), float(burst), clock, max_clients
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """Take a token for ``client``; return 0 when granted, else the seconds until one is available."""
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[client] = (tokens - 1, now)
                if len(self._buckets) > self.max_clients:
                    self._forget_full(now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        for client, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * self.rate >= self.burst:
                del self._buckets[client]


class _Metrics:
    """The app's own Prometheus registry (never the process-global one: two apps in one process,
    as in tests, keep their counts apart)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("churnml_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("churnml_request_duration_seconds", "Time to answer a request, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.models = Gauge("churnml_model_info", "The models in service (1), by target, registered name and version",
                            ["target", "name", "version"], registry=self.registry)
        self.events = Gauge("churnml_events_stored", "Events in the store, by table", ["table"], registry=self.registry)
        self.appended = Counter("churnml_events_posted", "Events posted, by table and outcome (stored, duplicate, dropped)",
                                ["table", "outcome"], registry=self.registry)
        self.reloads = Counter("churnml_model_reloads", "Model reloads, by outcome (done, failed)", ["outcome"],
                               registry=self.registry)

    def show_models(self, versions: Mapping[str, Mapping[str, str]]) -> None:
        self.models.clear()
        for target, identity in versions.items():
            self.models.labels(target, identity["name"], identity["version"]).set(1)


class _InService:
    """The scorer answering requests. A request reads :attr:`scorer` once and keeps that object
    to the end: a reload assigns a new one (one reference assignment, atomic), so requests in
    flight finish with the models they started with and the next ones get the new models."""

    def __init__(self, scorer: Any):
        self.scorer = scorer
        self.reloading = threading.Lock()  # one reload at a time; requests never take it


def model_versions(scorer: Any) -> dict[str, dict[str, str]]:
    """``{target: {"name", "version"}}`` of the models a scorer serves (its ``identities``)."""
    return {target: {"name": str(identity.name), "version": str(identity.version)}
            for target, identity in scorer.identities.items()}


def create_app(scorer: Any, store: Any, settings: ServeConfig,
               reload: Callable[[Any], Any] | None = None) -> "FastAPI":
    """The ASGI app serving ``scorer`` over ``store``.

    Parameters
    ----------
    scorer : churnml.serve.scorer.OnlineScorer
        Answers ``score(store, customer_id, as_of)``; its ``identities`` (target to
        :class:`~churnml.scoring.table.ModelIdentity`) are shown by ``/health`` and ``/metrics``.
    store : churnml.serve.store.EventStore
        Where posted events are appended (``append``) and counted (``counts``).
    settings : ServeConfig
        Token, limits (host and port are the server's, not the app's).
    reload : callable, optional
        Given the scorer in service, returns the one to serve instead (new models loaded); called
        by ``POST /admin/reload`` and by ``app.state.reload_models()`` (the stage's SIGHUP). None:
        no reload.

    Returns
    -------
    fastapi.FastAPI
        With ``app.state.reload_models`` (reload now; returns the new model versions),
        ``app.state.in_service`` (the scorer answering) and ``app.state.metrics_registry``.

    Notes
    -----
    Endpoints:

    - ``GET /customers/{customer_id}/score?as_of=YYYY-MM-DD``: the scorer's dict; 404 for an
      unknown customer, 400 for a date that is not a date, 422 for a date outside the data.
    - ``POST /events``: ``{"transactions": [...], "interactions": [...]}`` (either or both, events
      in contract column names, an optional ``event_id`` each); answered ``{"stored": n,
      "duplicates": m, "dropped": k}`` (dropped: by the cleaning rules) once the store committed
      them; 422 for events that break the contract, 413 for too large a body or too many events.
    - ``GET /health``: ``{"status": "ok", "models": {...}, "events": {...}}``, without the token.
    - ``GET /metrics``: Prometheus text: requests by endpoint and status, latency histogram by
      endpoint, models in service, events stored and posted, reloads.
    - ``POST /admin/reload``: swap in new models (needs a token configured: 403 otherwise).
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from churnml.features.dates import as_date
    from churnml.io.contract import DataValidationError
    from churnml.serve.scorer import UnknownCustomer

    metrics = _Metrics()
    in_service = _InService(scorer)
    metrics.show_models(model_versions(scorer))
    app = FastAPI(title="churnml", description="Real-time churn and repurchase scores with reasons",
                  docs_url=None, redoc_url=None, openapi_url=None)

    def reload_models() -> dict[str, dict[str, str]]:
        if reload is None:
            raise RequestRefused(403, "this service was started without a way to reload its models")
        with in_service.reloading:
            try:
                fresh = reload(in_service.scorer)
            except Exception:
                metrics.reloads.labels("failed").inc()
                raise
            in_service.scorer = fresh
        versions = model_versions(fresh)
        metrics.show_models(versions)
        metrics.reloads.labels("done").inc()
        log.info("models reloaded: %s", versions)
        return versions

    app.state.reload_models = reload_models
    app.state.in_service = in_service
    app.state.metrics_registry = metrics.registry

    @app.exception_handler(RequestRefused)
    async def refused(request: Request, error: RequestRefused) -> JSONResponse:
        return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no endpoint {request.url.path}: see GET /customers/{{id}}/score, POST /events, "
                        "GET /health, GET /metrics, POST /admin/reload",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(error.status_code, str(error.detail))
        return JSONResponse({"error": one_line(message)}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in error.errors())
        return JSONResponse({"error": one_line(f"invalid request: {problems}")}, status_code=422)

    # Plain `def` endpoints: scoring is CPU-bound work in pandas, LightGBM and DuckDB, which
    # release the GIL for the heavy parts; FastAPI runs such endpoints in its thread pool, so a
    # slow score does not stall the event loop that accepts other requests.
    @app.get("/customers/{customer_id}/score")
    def score(customer_id: str, as_of: str | None = None) -> Response:
        try:
            date = None if as_of is None else as_date(as_of)
        except UserValueError as error:
            raise RequestRefused(400, str(error)) from None
        scorer_now = in_service.scorer
        try:
            return JSONResponse(scorer_now.score(store, customer_id, date))
        except UnknownCustomer as error:
            raise RequestRefused(404, str(error) or f"no customer {customer_id} in the store") from None
        except UserError as error:
            raise RequestRefused(422, str(error)) from None

    @app.post("/events")
    async def post_events(request: Request) -> Response:
        # The body is read here (its size is capped as it arrives); the store's commit, blocking
        # I/O, runs in the thread pool.
        tables = events_of(await request.body(), settings.max_events_per_request)
        try:
            results = await run_in_threadpool(append_all, store, tables)
        except DataValidationError as error:
            raise RequestRefused(422, str(error)) from None
        answer = {"stored": 0, "duplicates": 0, "dropped": 0}
        for table, result in results.items():
            # Dropped: by the cleaning rules (data.cleaning), which a client would otherwise not
            # tell from stored, its post being acknowledged all the same.
            counts = {"stored": result.stored, "duplicates": result.duplicates, "dropped": result.dropped}
            for key, n in counts.items():
                answer[key] += n
                metrics.appended.labels(table, {"duplicates": "duplicate"}.get(key, key)).inc(n)
        return JSONResponse(answer)

    @app.get("/health")
    def health() -> Response:
        return JSONResponse({"status": "ok", "models": model_versions(in_service.scorer), "events": store.counts()})

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        for table, count in store.counts().items():
            metrics.events.labels(table).set(count)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload")
    def admin_reload() -> Response:
        if settings.token is None:
            raise RequestRefused(403, "reload is disabled: set serve.token to enable it")
        try:
            return JSONResponse({"status": "reloaded", "models": reload_models()})
        except UserError as error:
            raise RequestRefused(422, f"reload failed, the models in service are unchanged: {error}") from None

    app.add_middleware(_Guard, settings=settings, metrics=metrics, router=app.router)
    return app


def events_of(body: bytes, max_events: int) -> dict[str, Any]:
    """The events of a ``POST /events`` body, as one frame per table present.

    Raises
    ------
    RequestRefused
        400 for a body that is not a JSON object of lists of objects, 422 for an unknown table or
        no events, 413 for more than ``max_events`` events.
    """
    import json

    import pandas as pd

    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestRefused(400, f"the body is not JSON ({error}): send "
                                  '{"transactions": [...], "interactions": [...]}') from None
    if not isinstance(payload, dict):
        raise RequestRefused(400, 'the body must be a JSON object: {"transactions": [...], "interactions": [...]}')
    unknown = sorted(set(payload) - set(EVENT_TABLES))
    if unknown:
        raise RequestRefused(422, f"unknown key {', '.join(map(repr, unknown))} in the body: give transactions "
                                  "and/or interactions")
    for table, events in payload.items():
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise RequestRefused(400, f"{table} must be a list of event objects, e.g. "
                                      '[{"customer_id": "C1", "ts": "2025-01-31T10:00:00", "amount": 25.0}]')
    total = sum(len(events) for events in payload.values())
    if total > max_events:
        raise RequestRefused(413, f"{total} events in one request, more than serve.max_events_per_request="
                                  f"{max_events}: send them in smaller batches")
    if total == 0:
        raise RequestRefused(422, "no events in the body: give transactions and/or interactions, lists of events")
    return {table: pd.DataFrame.from_records(events) for table, events in payload.items() if events}


def append_all(store: Any, tables: Mapping[str, Any]) -> dict[str, Any]:
    """Append each table's events to ``store``, in the order of :data:`EVENT_TABLES`; each table is
    one transaction of the store's. Returns the store's result per table."""
    return {table: store.append(table, tables[table]) for table in EVENT_TABLES if table in tables}


class _BodyTooLarge(Exception):
    pass


class _Guard:
    """The ASGI middleware in front of every endpoint: rate limit, bearer token, body size,
    request metrics, and a JSON 500 without traceback for a defect (the traceback goes to the log).

    A plain ASGI class rather than Starlette's ``BaseHTTPMiddleware``, whose task group and
    streams per request cost more than the scores it would wrap.
    """

    def __init__(self, app: Any, settings: ServeConfig, metrics: _Metrics, router: Any):
        self.app, self.settings, self.metrics, self.router = app, settings, metrics, router
        self.buckets = (TokenBuckets(settings.rate_limit_per_second, settings.burst)
                        if settings.rate_limit_per_second is not None else None)
        self.expected = f"Bearer {settings.token}".encode() if settings.token is not None else None

    def endpoint(self, scope: Mapping[str, Any]) -> str:
        """The route's path template (``/customers/{customer_id}/score``): one label per endpoint, not per customer."""
        from starlette.routing import Match

        for route in self.router.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return getattr(route, "path", "other")
        return "unmatched"

    def refusal(self, scope: Mapping[str, Any], endpoint: str) -> RequestRefused | None:
        if self.buckets is not None:
            client = scope["client"][0] if scope.get("client") else "unknown"
            wait = self.buckets.take(client)
            if wait > 0:
                return RequestRefused(429, f"too many requests from {client}: at most "
                                           f"{self.settings.rate_limit_per_second:g} a second; retry in {wait:.2f} s",
                                      {"Retry-After": str(math.ceil(wait))})
        headers = dict(scope.get("headers") or ())
        if self.expected is not None and endpoint != "/health":
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                return RequestRefused(401, "missing or wrong bearer token: send Authorization: Bearer <serve.token>",
                                      {"WWW-Authenticate": "Bearer"})
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.settings.max_request_bytes):
            return self.too_large()
        return None

    def too_large(self) -> RequestRefused:
        return RequestRefused(413, f"the request body is larger than serve.max_request_bytes="
                                   f"{self.settings.max_request_bytes}: send smaller batches")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        from fastapi.responses import JSONResponse

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        endpoint = self.endpoint(scope)
        sent = {"status": 500, "started": False}
        received = [0]
        limit = self.settings.max_request_bytes

        async def counted_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                sent.update(status=message["status"], started=True)
            await send(message)

        async def capped_receive() -> dict:
            # A body sent without Content-Length (chunked) is cut off once past the limit.
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > limit:
                    raise _BodyTooLarge()
            return message

        async def answer(status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
            await JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))(
                scope, receive, counted_send)

        try:
            refused = self.refusal(scope, endpoint)
            if refused is not None:
                await answer(refused.status, refused.message, refused.headers)
            else:
                await self.app(scope, capped_receive, counted_send)
        except _BodyTooLarge:
            if not sent["started"]:
                await answer(413, self.too_large().message)
        except Exception:
            log.exception("defect while answering %s %s", scope.get("method"), scope.get("path"))
            if not sent["started"]:
                await answer(500, "internal error: the service's log has the details")
            else:
                sent["status"] = 500
        finally:
            self.metrics.requests.labels(endpoint, str(sent["status"])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

