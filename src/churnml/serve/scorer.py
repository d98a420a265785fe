"""The online scorer: one customer's score at request time, through the batch's own code.

Scoring a customer needs the population at the same ``as_of``: the peers' norms of the features
(:class:`churnml.features.build.PopulationNorms`), the BG/NBD fit behind the models' prior and
BG/NBD features, the reasons' peers and prior references, the medians that split the predicted
value segments and, with ``score.reasons_for=top_fraction``, who gets reasons. Building one
customer's features through the Ibis code costs a query plan of the whole feature set (hundreds
of milliseconds), so the scorer keeps, per ``as_of``, a **population state** computed once with
the batch code exactly as ``churnml-score`` computes it (:func:`churnml.jobs.score.score_with_duckdb`):
the whole score table, and those population numbers.

- A customer without an event stored since the state was built is answered from its row of the
  score table: the batch row itself.
- A customer with newer events is recomputed alone: their features on their own events with the
  population's norms (equal to their row of a whole table, see
  :func:`churnml.features.build.build_features`), scored by
  :func:`churnml.scoring.table.score_customers` with the population's numbers; the result is
  kept until the customer's next event.

The population numbers stay those of the state: a customer's new events change their own row,
not the others' norms, until a state is built for another ``as_of`` (by default the day of the
newest transaction, so the first purchase of a new day builds one).

Several threads may call :meth:`OnlineScorer.score` at once: a state is built once per
``as_of`` while the others wait for it, and the latest :data:`KEPT_STATES` states are kept.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from churnml.features.build import FeatureConfig, PopulationNorms, build_features, to_frame
from churnml.features.dates import as_date, resolve_as_of
from churnml.features.segments import ValueThresholds, value_thresholds
from churnml.features.snapshots import dated_features, population_features
from churnml.models.attribution import PriorReference, prior_references
from churnml.models.btyd import uses_bgnbd_features
from churnml.models.classifier import ChurnModel, with_shared_population_prior
from churnml.scoring.policy import ReasonCut, ScoringConfig, reason_cut
from churnml.scoring.reasons import ReasonContext, peer_norms
from churnml.scoring.table import LEVEL_COLUMNS, ModelIdentity, model_inputs, score_customers

log = logging.getLogger(__name__)

# Population states kept (one per as_of): today's and the previous one, for the requests that
# straddle a new day.
KEPT_STATES = 2
# Customers recomputed since their state was built, kept per state (least recently asked first out).
KEPT_RECOMPUTED = 100_000


class UnknownCustomer(LookupError):
    """The customer has no transaction on or before the ``as_of`` asked (the HTTP app's 404)."""


@dataclass
class PopulationState:
    """Everything scoring one customer at ``as_of`` needs from the population.

    Attributes
    ----------
    as_of : datetime.date
    version : int
        The store's version read before its events were: every event at or below it is in the
        state (later ones may be too; their customers are recomputed).
    facts : dict
        The whole store's ``Dataset.facts`` (breadth values), for each customer's features.
    norms : PopulationNorms
        The numbers the feature table compares each customer with.
    models : mapping of str to ChurnModel
        With the population's BTYD prior.
    bgnbd_columns : callable, optional
        BG/NBD features from the population's fit, for models trained with them.
    context : ReasonContext
        With the peers' norms of the churn model's features.
    thresholds : ValueThresholds
        The medians that split the predicted value segments.
    reason_cut : ReasonCut, optional
        Who gets reasons, for ``score.reasons_for=top_fraction``.
    references : mapping, optional
        The reference customers of the prior's shares.
    scores : pandas.DataFrame
        The batch score table, one row per customer (plus ``recency_days`` and, with an uplift
        model, ``expected_uplift`` and ``expected_value``).
    query : CustomerQuery or False, optional
        The compiled feature query of one customer (:meth:`OnlineScorer.customer_features`);
        None until the first recompute, False where it cannot be reused.
    """

    as_of: dt.date
    version: int
    facts: dict
    norms: PopulationNorms
    models: Mapping[str, ChurnModel]
    bgnbd_columns: Callable[[pd.DataFrame, int], pd.DataFrame] | None
    context: ReasonContext
    thresholds: ValueThresholds
    reason_cut: ReasonCut | None
    references: Mapping[str | None, PriorReference] | None
    scores: pd.DataFrame
    query: Any = None
    positions: dict[str, int] = field(default_factory=dict)
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    recomputed: OrderedDict = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        ids = self.scores["customer_id"].astype(str).tolist()
        self.positions = dict(zip(ids, range(len(ids))))
        self.columns = object_columns(self.scores)


class OnlineScorer:
    """Scores one customer at a time from the events of a store, as the batch would score them.

    Parameters
    ----------
    models : mapping of str to ChurnModel
        ``churn`` and ``repurchase`` models (the champions).
    identities : mapping of str to ModelIdentity
        Their registered names and versions.
    feature_config : FeatureConfig
        The feature set the models were trained on.
    scoring_config : ScoringConfig
        Bands, reasons, playbook.
    uplift : tuple, optional
        An uplift model and its deployment record (:func:`churnml.jobs.score.uplift_model`'s
        first two items): adds ``expected_uplift`` and ``expected_value``.
    """

    def __init__(self, models: Mapping[str, ChurnModel], identities: Mapping[str, ModelIdentity],
                 feature_config: FeatureConfig, scoring_config: ScoringConfig,
                 uplift: tuple[Any, Mapping[str, Any]] | None = None) -> None:
        self.models = dict(models)
        self.identities = dict(identities)
        self.feature_config = feature_config
        self.scoring_config = scoring_config
        self.uplift = uplift
        self._lock = threading.Lock()
        self._states: OrderedDict[dt.date, PopulationState] = OrderedDict()
        self._building: dict[dt.date, threading.Lock] = {}
        self._dates: tuple[int, dt.date, dt.date] | None = None

    def reloaded(self, models: Mapping[str, ChurnModel], identities: Mapping[str, ModelIdentity]) -> "OnlineScorer":
        """A new scorer with other models and the same settings; its states are built anew (they
        hold the models' priors and the scores of these models)."""
        return OnlineScorer(models, identities, self.feature_config, self.scoring_config, self.uplift)

    # --- requests -------------------------------------------------------------------------------

    def score(self, store: Any, customer_id: str, as_of: dt.date | str | None = None) -> dict[str, Any]:
        """The customer's score at ``as_of`` from the events stored so far, as a JSON-ready dict.

        Parameters
        ----------
        store : churnml.serve.store.EventStore
            Read through ``dataset()``, ``customer_dataset()``, ``changed_since()``,
            ``customer_version()`` and ``version()``.
        customer_id : str
        as_of : datetime.date or str, optional
            ``YYYY-MM-DD``; None: the day of the newest transaction in the store.

        Returns
        -------
        dict
            ``customer_id``, ``as_of`` (ISO date), ``churn_probability``,
            ``repurchase_probability``, ``risk_band``, ``reasons`` (a list of ``{"reason",
            "feature", "contribution"}``, the contribution in log-odds), ``tier``,
            ``membership_level``, ``next_level_spend_gap``, ``next_level_repurchase_gap``,
            ``value_segment``, ``predicted_value_segment``, ``ltv`` (currency),
            ``recommended_action``, ``models`` (``{"churn": {"name", "version"}, "repurchase":
            ...}``), ``recency_days`` and, with an uplift model, ``expected_uplift`` and
            ``expected_value``. The values of the batch score row at the same ``as_of``; None
            where a value is missing.

        Raises
        ------
        UnknownCustomer
            If the customer has no transaction on or before ``as_of``.
        churnml.errors.UserValueError
            For an ``as_of`` that is not a date, or outside the store's transactions.
        """
        day = self.resolve(store, as_of)
        state = self.state(store, day)
        customer_id = str(customer_id)
        position = state.positions.get(customer_id)
        # Runs on every request: a DuckDB store answers it without a query.
        if not store.changed_since(customer_id, state.version):
            if position is None:
                raise UnknownCustomer(f"customer {customer_id} has no transaction on or before {day}")
            return self.row(state.columns, position)
        version = int(store.customer_version(customer_id))
        with state.lock:
            kept = state.recomputed.get(customer_id)
            if kept is not None and kept[0] == version:
                state.recomputed.move_to_end(customer_id)
                result = kept[1]
            else:
                result = kept = None
        if kept is None:
            try:
                result = self.recompute(store, state, customer_id)
            except UnknownCustomer:
                # Remembered too: their events (all after as_of) need no query until the next one.
                result = None
            self._keep(state, customer_id, version, result)
        if result is None:
            raise UnknownCustomer(f"customer {customer_id} has no transaction on or before {day}")
        return result

    @staticmethod
    def _keep(state: PopulationState, customer_id: str, version: int, result: dict[str, Any] | None) -> None:
        with state.lock:
            state.recomputed[customer_id] = (version, result)
            state.recomputed.move_to_end(customer_id)
            while len(state.recomputed) > KEPT_RECOMPUTED:
                state.recomputed.popitem(last=False)

    def resolve(self, store: Any, as_of: dt.date | str | None) -> dt.date:
        """The ``as_of`` of a request, refused outside the store's transactions
        (:func:`churnml.features.dates.resolve_as_of`, as the batch stages)."""
        version = int(store.version())
        dates = self._dates
        if dates is None or dates[0] != version:
            first, last = transaction_dates(store.dataset())
            dates = self._dates = (version, first, last)
        return resolve_as_of(as_date(as_of) if as_of else None, dates[1], dates[2])

    def state(self, store: Any, as_of: dt.date) -> PopulationState:
        """The population state at ``as_of``: kept, or built now (once, whoever else asks)."""
        with self._lock:
            state = self._states.get(as_of)
            if state is not None:
                self._states.move_to_end(as_of)
                return state
            building = self._building.setdefault(as_of, threading.Lock())
        with building:
            with self._lock:
                state = self._states.get(as_of)
            if state is None:
                state = self.build_state(store, as_of)
                with self._lock:
                    self._states[as_of] = state
                    while len(self._states) > KEPT_STATES:
                        self._states.popitem(last=False)
                    self._building.pop(as_of, None)
        return state

    # --- the population -------------------------------------------------------------------------

    def build_state(self, store: Any, as_of: dt.date) -> PopulationState:
        """Score every customer at ``as_of`` as ``churnml-score`` does and keep what scoring one
        customer needs from them (:class:`PopulationState`)."""
        started = time.perf_counter()
        # Read before the events: what is appended meanwhile counts as newer than the state.
        version = int(store.version())
        dataset = store.dataset()
        config = self.feature_config
        # DuckDB: the batch's own feature table (its windows), the norms read from it. PostgreSQL
        # computes no quantile over a window: the norms first, then the table built with them.
        features, norms = population_features(dataset, as_of, config)
        facts = copy.deepcopy(dataset.facts)
        # As the batch: one BG/NBD fit on the scored population serves both models' priors.
        models, priors = with_shared_population_prior(self.models, features)
        inputs = model_inputs(features, models)
        churn_model = models["churn"]
        context = ReasonContext.from_features(config, int(churn_model.horizon_days))
        context = replace(context, peers=peer_norms(inputs["churn"], churn_model.feature_names_in_))
        references = prior_references(inputs["churn"]) if getattr(churn_model, "prior", None) else None
        scores = score_customers(inputs, models, as_of, self.scoring_config, context, self.identities,
                                 references=references)
        thresholds = value_thresholds(inputs["churn"]["ltv"].to_numpy(dtype=float, na_value=np.nan),
                                      scores["repurchase_probability"])
        cut = (reason_cut(scores["churn_probability"].to_numpy(), scores["customer_id"].to_numpy(dtype=object),
                          self.scoring_config.reasons_top_fraction)
               if self.scoring_config.reasons_for == "top_fraction" else None)
        bgnbd_columns = None
        if any(uses_bgnbd_features(m) for m in models.values()):
            from churnml.scoring.spark import population_bgnbd, population_bgnbd_features

            bgnbd_columns = partial(population_bgnbd_features, population_bgnbd(features, priors))
        scores = self._with_extras(scores, features)
        state = PopulationState(as_of, version, facts, norms, models, bgnbd_columns, context, thresholds, cut,
                                references, scores)
        log.info("population state at %s: %s customers in %.1f s", as_of, f"{len(scores):,}",
                 time.perf_counter() - started)
        return state

    def recompute(self, store: Any, state: PopulationState, customer_id: str) -> dict[str, Any]:
        """One customer's score from their own events, with the population's numbers of ``state``.

        Raises
        ------
        UnknownCustomer
            If the customer has no transaction on or before the state's ``as_of``.
        """
        as_of = state.as_of
        frame = self.customer_features(store, state, customer_id)
        if frame.empty:
            raise UnknownCustomer(f"customer {customer_id} has no transaction on or before {as_of}")
        features = dated_features(frame, as_of)
        inputs = model_inputs(features, state.models, state.bgnbd_columns)
        scores = score_customers(inputs, state.models, as_of, self.scoring_config, state.context, self.identities,
                                 state.thresholds, state.reason_cut, state.references)
        return self.row(object_columns(self._with_extras(scores, features)), 0)

    def customer_features(self, store: Any, state: PopulationState, customer_id: str) -> pd.DataFrame:
        """One customer's feature rows at the state's ``as_of`` (:func:`churnml.features.build.build_features`
        of their events with the population's norms), as :func:`churnml.features.build.to_frame` gives them.

        Building and compiling the feature expression costs most of a second, the query itself
        about a tenth of that. On DuckDB the SQL is compiled once per state for a placeholder
        customer and run with each customer's id in its place (:class:`CustomerQuery`), once the
        SQL of a real customer is found to be exactly that text with their id: the same query
        the expression would run. Elsewhere, or when the store's query of a customer is not
        such a text, the expression is built and run for each customer.
        """
        dataset = store.customer_dataset(customer_id, copy.deepcopy(state.facts))
        query = state.query
        if query is None:
            query = state.query = CustomerQuery.prepare(store, state, self.feature_config, dataset, customer_id)
        if not query:
            return to_frame(build_features(dataset, state.as_of, self.feature_config, state.norms))
        return query.run(dataset.con, customer_id)

    def _with_extras(self, scores: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
        """The score table with ``recency_days`` and, with an uplift model, the expected value of a
        contact (its rank among customers is left out: one customer has none)."""
        scores = scores.assign(recency_days=features["recency_days"].to_numpy())
        if self.uplift is not None:
            from churnml.programs.targeting import with_expected_value

            scores = with_expected_value(scores, features, *self.uplift).drop(columns="contact_rank")
        return scores

    def row(self, column: Mapping[str, np.ndarray], position: int) -> dict[str, Any]:
        """A row of a score table (:func:`object_columns`) as the JSON-ready dict of :meth:`score`."""

        def value(name: str) -> Any:
            return plain(column[name][position]) if name in column else None

        reasons = []
        for k in range(1, self.scoring_config.n_reasons + 1):
            phrase = value(f"reason_{k}")
            if phrase is not None:
                reasons.append({"reason": phrase, "feature": value(f"reason_{k}_feature"),
                                "contribution": value(f"reason_{k}_contribution")})
        as_of = column["as_of"][position]
        result = {
            "customer_id": value("customer_id"),
            "as_of": as_of.isoformat() if hasattr(as_of, "isoformat") else str(as_of),
            "churn_probability": value("churn_probability"),
            "repurchase_probability": value("repurchase_probability"),
            "risk_band": value("risk_band"),
            "reasons": reasons,
            "tier": value("tier"),
            **{c: value(c) for c in LEVEL_COLUMNS},
            "value_segment": value("value_segment"),
            "predicted_value_segment": value("predicted_value_segment"),
            "ltv": value("ltv"),
            "recommended_action": value("recommended_action"),
            "models": {target: {"name": value(f"{target}_model_name"), "version": value(f"{target}_model_version")}
                       for target in ("churn", "repurchase")},
            "recency_days": value("recency_days"),
        }
        if self.uplift is not None:
            result.update(expected_uplift=value("expected_uplift"), expected_value=value("expected_value"))
        return result


@dataclass(frozen=True)
class CustomerQuery:
    """The feature query of one customer, compiled once: its SQL for a placeholder customer.

    Attributes
    ----------
    sql : str
        The SQL of the feature table of the placeholder customer.
    literal : str
        The placeholder's id as an SQL string literal, to replace with a customer's.
    expr : ibis.expr.types.Table
        The placeholder's feature expression, whose schema types the results as Ibis would.
    """

    sql: str
    literal: str
    expr: Any

    @classmethod
    def prepare(cls, store: Any, state: PopulationState, config: FeatureConfig, dataset: Any,
                customer_id: str) -> "CustomerQuery | bool":
        """The query, or False when it cannot stand for the expression: not DuckDB, an in-memory
        table in the expression (the membership levels, computed in Python when it is built), or
        a store whose query of ``customer_id`` (``dataset``) is not the placeholder's text with
        their id."""
        import ibis.expr.operations as ops

        con = dataset.con
        if getattr(con, "name", None) != "duckdb":
            return False
        placeholder = f"churnml-placeholder-{uuid.uuid4().hex}"
        expr = build_features(store.customer_dataset(placeholder, copy.deepcopy(state.facts)), state.as_of, config,
                              state.norms)
        if expr.op().find(ops.InMemoryTable):
            return False
        query = cls(con.compile(expr), sql_literal(placeholder), expr)
        actual = con.compile(build_features(dataset, state.as_of, config, state.norms))
        if query.literal not in query.sql or query.text(customer_id) != actual:
            log.warning("the store's query of one customer is not reusable: each recompute compiles its own")
            return False
        return query

    def text(self, customer_id: str) -> str:
        """The SQL of ``customer_id``'s features."""
        return self.sql.replace(self.literal, sql_literal(customer_id))

    def run(self, con: Any, customer_id: str) -> pd.DataFrame:
        """The customer's feature rows, as :func:`churnml.features.build.to_frame` gives them
        (Ibis' own DuckDB execution: the relation's Arrow table typed by the expression's schema)."""
        from ibis.backends.duckdb.converter import DuckDBPyArrowData

        table = con.con.sql(self.text(customer_id)).to_arrow_table()
        return self.expr.__pyarrow_result__(table, data_mapper=DuckDBPyArrowData).to_pandas()


def sql_literal(value: str) -> str:
    """``value`` as the SQL string literal Ibis writes for it."""
    import sqlglot

    return sqlglot.exp.Literal.string(value).sql(dialect="duckdb")


def object_columns(scores: pd.DataFrame) -> dict[str, np.ndarray]:
    """A score table's columns as arrays of Python objects: a request reads one value of each."""
    return {c: scores[c].to_numpy(dtype=object) for c in scores.columns}


def plain(value: Any) -> Any:
    """A cell as a JSON value: Python numbers and text, None for missing values (NaN, NA, NaT)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return str(value) if isinstance(value, str) else value


def transaction_dates(dataset: Any) -> tuple[dt.date, dt.date]:
    """The days of the first and the last transaction of a data set: from its load report when it
    has one, else from its transactions."""
    try:
        return dataset.first_date, dataset.last_date
    except (KeyError, AttributeError, TypeError):
        pass
    table = dataset.transactions
    bounds = table.aggregate(first=table.ts.min(), last=table.ts.max()).to_pyarrow().to_pylist()[0]
    if bounds["first"] is None:
        from churnml.errors import UserValueError

        raise UserValueError("the event store holds no transaction: load the transactions before scoring")
    return pd.Timestamp(bounds["first"]).date(), pd.Timestamp(bounds["last"]).date()
