"""The default model against every classical score, on CDNOW and on the demo shop.

Each case trains and evaluates with the default configuration, as `churnml-train` does with the
case's overrides, and compares the model with every classical score (the warning-flag rule, RFM,
recency, BG/NBD and Pareto/NBD by probability and by expected purchases) on the same holdout rows
in the same run. The bar is the ``best_classical`` row of the comparison: per metric, the best
value any classical score reached (not necessarily the same score on every metric).

Target: in every case the model beats ``best_classical`` on ROC AUC and PR AUC, with a Brier
score and a log loss no worse (lower or equal). Margins are model minus best_classical.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Mapping

import pandas as pd

from harness import print_table

# Higher is better for the AUCs; lower or equal is required for the losses.
MUST_BEAT = ("roc_auc", "pr_auc")
NO_WORSE = ("brier", "log_loss")
MARGINS = (*MUST_BEAT, *NO_WORSE, "top_decile_lift")


@dataclass(frozen=True)
class Case:
    """One training run: a name and the `churnml-train` overrides that make it."""

    name: str
    overrides: tuple[str, ...]
    # Holdout rows and base rate of a published split, checked (not judged) when given.
    published: Mapping[str, float] = field(default_factory=dict)


def cdnow_case(as_of: str, horizon_days: int, name: str | None = None, published: Mapping[str, float] | None = None) -> Case:
    return Case(name or f"cdnow repurchase {as_of} +{horizon_days}d",
                ("data=cdnow", "target=repurchase", f"target.horizon_days={horizon_days}", f"as_of={as_of}"),
                published or {})


CASES = (
    cdnow_case("1997-12-31", 90),
    cdnow_case("1998-03-31", 90),
    cdnow_case("1997-09-30", 180),
    # The split of the BTYD literature: every CDNOW customer (all first bought in Q1 1997),
    # label "any purchase from 1998-01-01 to 1998-06-30".
    cdnow_case("1997-12-31", 181, "cdnow published split 1997-12-31 +181d", {"rows": 23_570, "base_rate": 0.228}),
    # The demo shop at the default as_of (last date minus the target's horizon).
    Case("demo churn (default as_of)", ("data=demo", "target=churn")),
    Case("demo repurchase (default as_of)", ("data=demo", "target=repurchase")),
)


def verdict(comparison: pd.DataFrame) -> dict:
    """Margins of the model over ``best_classical`` and whether the target is met.

    Parameters
    ----------
    comparison : pandas.DataFrame
        ``outcome.comparison``: rows ``model``, the classical scores and ``best_classical``;
        columns include ``roc_auc``, ``pr_auc``, ``brier`` and ``log_loss``.

    Returns
    -------
    dict
        ``<metric>`` margin (model minus best_classical) for each metric of :data:`MARGINS` in the
        table, and ``met``: ROC AUC and PR AUC margins above zero, Brier and log loss margins at
        most zero. A margin that cannot be computed (NaN) is never met.
    """
    model, best = comparison.loc["model"], comparison.loc["best_classical"]
    margins = {m: float(model[m]) - float(best[m]) for m in MARGINS if m in comparison.columns}
    beats = all(m in margins and margins[m] > 0 for m in MUST_BEAT)
    no_worse = all(m in margins and margins[m] <= 0 for m in NO_WORSE)
    return {**margins, "met": bool(beats and no_worse)}


def run_case(case: Case) -> dict:
    from churnml.evaluation.metrics import format_comparison
    from churnml.features.build import FeatureConfig
    from churnml.io.sources import data_sources, load_data
    from churnml.jobs.common import compose_settings
    from churnml.jobs.train import build_model, training_plan
    from churnml.models.training import train_and_evaluate

    settings = compose_settings("train", list(case.overrides))
    data_sources(settings["data"])  # simulates the demo shop once, untimed
    start = time.perf_counter()
    dataset = load_data(settings["data"], materialize=True)
    plan = training_plan(settings)
    model = build_model(settings["model"], plan.target, plan.horizon_days)
    outcome = train_and_evaluate(dataset, model, plan, FeatureConfig.from_dict(settings["features"]), progress=False)
    seconds = time.perf_counter() - start

    holdout = outcome.holdout_table
    rows, base_rate = len(holdout), float(holdout["label"].mean())
    print(f"\n{case.name}: {plan.target} within {plan.horizon_days} days of {outcome.holdout_cutoff}; "
          f"{rows:,} holdout rows, base rate {base_rate:.4f}; {len(outcome.train_cutoffs)} training snapshots "
          f"{outcome.train_cutoffs[0]} .. {outcome.train_cutoffs[-1]}; {seconds:.0f} s")
    print(format_comparison(outcome.comparison))
    if case.published:
        print(f"published split check: holdout rows {rows:,} (published {case.published['rows']:,.0f}), "
              f"base rate {base_rate:.4f} (published {case.published['base_rate']:.3f})")
    return {"case": case.name, "as_of": str(outcome.holdout_cutoff), "horizon": plan.horizon_days, "rows": rows,
            "base_rate": base_rate, **verdict(outcome.comparison), "seconds": seconds}


def _signed(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:+.5f}"


def run(cases: tuple[Case, ...] = CASES) -> bool:
    results = [run_case(case) for case in cases]
    shown = [{**r, **{m: _signed(r[m]) for m in MARGINS}, "met": "yes" if r["met"] else "NO",
              "seconds": f"{r['seconds']:.0f}"} for r in results]
    print_table("model - best_classical (ROC AUC, PR AUC above 0; Brier, log loss at most 0; lift informational)",
                shown, ["case", "as_of", "horizon", "rows", "base_rate", *MARGINS, "met", "seconds"])
    ok = all(r["met"] for r in results)
    print(f"target: beat best_classical on ROC AUC and PR AUC, Brier and log loss no worse, in all "
          f"{len(results)} cases: {'met' if ok else 'NOT met'} ({sum(r['met'] for r in results)} of {len(results)})")
    return ok


if __name__ == "__main__":
    run()
