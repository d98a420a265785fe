"""``churnml-serve``: the champion models answering scores over HTTP, from the events stored so far.

The models and the scoring policy are those of ``churnml-score`` (the ``score`` node); the event
store (``serve.store``) is a DuckDB file, loaded from the ``data`` node's files when it is empty,
or a PostgreSQL database; the app is :func:`churnml.serve.app.create_app` on uvicorn, one
process. ``POST /admin/reload`` (with the token) or ``kill -HUP <pid>`` loads the models again
from the same place (a champion alias that moved) and swaps them in between requests.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from churnml.errors import UserError, UserValueError
from churnml.jobs.common import check_output, check_tracking, is_model_uri, load_model
from churnml.jobs.score import model_key, model_uris, uplift_model

log = logging.getLogger("churnml")


def champions(uris: Mapping[str, str], score_settings: Mapping[str, Any]) -> tuple[dict, dict]:
    """The model of each target at ``uris`` and its identity (registered name and version).

    Raises
    ------
    churnml.errors.UserError
        For a model that is missing or damaged (:func:`churnml.jobs.common.load_model`).
    """
    from churnml import tracking
    from churnml.scoring.table import ModelIdentity

    models = {target: load_model(uri, model_key(score_settings, target)) for target, uri in uris.items()}
    identities = {target: ModelIdentity(*tracking.model_version_of(uri)) for target, uri in uris.items()}
    return models, identities


def check_port(host: str, port: int) -> None:
    """Refuse, before any work, an address the service cannot listen on (in use, not this machine's).

    Raises
    ------
    churnml.errors.UserError
        Naming ``serve.host`` and ``serve.port`` and what to do.
    """
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As uvicorn binds: a port left in TIME_WAIT by an earlier run is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port} (serve.host, serve.port): {error.strerror or error}; "
                        "choose another serve.port, stop what listens there, or give an address of this "
                        "machine") from error


def is_store_url(location: str) -> bool:
    """Whether ``serve.store`` names a database server (``postgresql://...``) rather than a DuckDB file."""
    return "://" in location


def reload_on_hangup(app: Any) -> None:
    """Make SIGHUP reload the models, as ``POST /admin/reload`` does.

    The handler runs on the main thread, which runs the server's event loop: it only starts a
    thread, so that loading the models does not stall the requests.
    """
    import signal
    import threading

    def reload_logged() -> None:
        try:
            app.state.reload_models()
        except UserError as error:
            log.error("reload on SIGHUP failed, the models in service are unchanged: %s", error)
        except Exception:
            log.exception("reload on SIGHUP failed, the models in service are unchanged")

    def on_hangup(signum: int, frame: Any) -> None:
        threading.Thread(target=reload_logged, name="churnml-reload", daemon=True).start()

    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_hangup)


class _Terminated(Exception):
    """SIGTERM arrived; uvicorn has shut down gracefully (see :func:`stop_on_terminate`)."""


def stop_on_terminate() -> None:
    """Make SIGTERM (a service manager's stop) end :func:`run` normally, its store closed.

    uvicorn catches SIGTERM, shuts down gracefully, then restores the handler it found and raises
    the signal again. With the default handler the process would die there, before the store
    is closed (a DuckDB file keeps its write-ahead log unmerged until the next start). This
    handler, the one uvicorn restores, raises :class:`_Terminated` instead, which ``run`` ends on.
    """
    import signal

    def on_terminate(signum: int, frame: Any) -> None:
        raise _Terminated()

    signal.signal(signal.SIGTERM, on_terminate)


def run(settings: Mapping[str, Any]) -> None:
    """Serve scores on ``serve.host:serve.port`` until stopped (Ctrl-C or SIGTERM).

    Raises
    ------
    churnml.errors.UserError
        Before any work for settings out of range, an address that cannot be listened on, a
        store location that cannot be written, or ``engine=spark``; for a model that is missing
        or damaged, or data that breaks the contract while the store is loaded.
    """
    import uvicorn

    from churnml import tracking
    from churnml.features.build import FeatureConfig
    from churnml.scoring.policy import ScoringConfig
    from churnml.serve.app import ServeConfig, create_app

    serve, score = settings["serve"], settings["score"]
    config = ServeConfig.from_dict(serve)
    if settings["engine"] != "duckdb":
        raise UserValueError(f"engine={settings['engine']}: churnml-serve reads its event store (DuckDB or "
                             "PostgreSQL, serve.store), not Spark; leave engine at duckdb")
    if settings.get("as_of") or settings.get("cutoff"):
        log.warning("as_of is ignored by churnml-serve: a request gives its own (?as_of=YYYY-MM-DD), else the "
                    "day of the newest event")
    prefix = settings["mlflow"]["registered_model_prefix"]
    uris = model_uris(score, prefix)
    check_tracking(settings["mlflow"], reads_registry=any(is_model_uri(uri) for uri in uris.values()),
                   instead="score.model_dir=models")
    location = str(serve["store"])
    if not is_store_url(location):
        check_output(location, "serve.store", "file")
    check_port(config.host, config.port)
    if not config.is_loopback and config.token is None:
        log.warning("serving on %s without a token: anyone who reaches this address can read scores and post "
                    "events; set serve.token", config.host)
    tracking.use_tracking_uri(settings["mlflow"]["tracking_uri"])
    models, identities = champions(uris, score)
    uplift = uplift_model(score, prefix, "duckdb")
    feature_config = FeatureConfig.from_dict(settings["features"])
    scoring_config = ScoringConfig.from_dict(score)

    from churnml.io.sources import load_data, load_options
    from churnml.serve.scorer import OnlineScorer
    from churnml.serve.store import EventStore

    # Posted events are cleaned by the rules the files were (data.cleaning).
    if not is_store_url(location):
        # As every stage makes the directories of its output (the default is serve/events.duckdb).
        Path(location).expanduser().parent.mkdir(parents=True, exist_ok=True)
    store = EventStore.open(location, options=load_options(settings["data"]))
    try:
        if store.is_empty():
            dataset = load_data(settings["data"])
            loaded = store.load(dataset)
            dataset.con.disconnect()
            listed = ", ".join(f"{rows:,} {table}" for table, rows in loaded.items())
            print(f"event store {location} loaded from the data set '{settings['data']['name']}': {listed}")
        scorer = OnlineScorer(models, identities, feature_config, scoring_config,
                              uplift=uplift[:2] if uplift else None)
        # The population state of the default as_of before listening: models that do not fit the
        # store's data stop the stage here, in one line, rather than every request; and the
        # first scores are as fast as the next.
        as_of = scorer.resolve(store, None)
        print(f"building the population state at {as_of} (the batch's features and scores)", flush=True)
        scorer.state(store, as_of)
        app = create_app(scorer, store, config, reload=lambda current: current.reloaded(*champions(uris, score)))
        reload_on_hangup(app)
        models_used = " and ".join(f"{identity.name} v{identity.version}" for identity in identities.values())
        print(f"models: {models_used}; events: " + ", ".join(f"{n:,} {t}" for t, n in store.counts().items()))
        print(f"serving on http://{config.host}:{config.port} (GET /customers/{{id}}/score, POST /events, "
              f"GET /health, GET /metrics); reload the models with "
              f"{'POST /admin/reload or ' if config.token else ''}kill -HUP <pid>; stop with Ctrl-C", flush=True)
        # Hydra's logging stays (log_config=None); no access log: one line per score would cost
        # more than the score, and /metrics counts the requests.
        stop_on_terminate()
        try:
            uvicorn.run(app, host=config.host, port=config.port, log_config=None, access_log=False)
        except _Terminated:
            log.info("stopped by SIGTERM")
    finally:
        store.close()
