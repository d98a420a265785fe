"""Run a piece of work in a fresh process and measure its wall time and peak memory.

The reference and the measured work run the same way, one after the other on the same machine,
so their ratio is meaningful where absolute seconds are not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_RUNNER = textwrap.dedent(
    """
    import json, resource, sys, time
    sys.path.insert(0, {bench!r})
    setup_code, work_code = {setup!r}, {work!r}
    namespace = {{}}
    exec(setup_code, namespace)
    start = time.perf_counter()
    exec(work_code, namespace)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("BENCH_RESULT " + json.dumps({{"seconds": seconds, "peak_gib": peak_kib / 2**20, "info": namespace.get("info", {{}})}}))
    """
)


@dataclass
class Measurement:
    name: str
    seconds: float
    peak_gib: float
    info: dict


def measure(name: str, setup: str, work: str, repeat: int = 1) -> Measurement:
    """Best wall time of ``work`` over ``repeat`` fresh processes (imports and ``setup`` not timed).

    Peak memory is the process's maximum resident set size, imports included.
    """
    best: Measurement | None = None
    for _ in range(repeat):
        code = _RUNNER.format(bench=str(ROOT / "bench"), setup=textwrap.dedent(setup), work=textwrap.dedent(work))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"benchmark '{name}' failed:\n{done.stderr[-4000:]}")
        line = next(l for l in done.stdout.splitlines() if l.startswith("BENCH_RESULT "))
        result = json.loads(line.removeprefix("BENCH_RESULT "))
        current = Measurement(name, result["seconds"], result["peak_gib"], result["info"])
        if best is None or current.seconds < best.seconds:
            best = current
    assert best is not None
    return best


def main(run, doc: str | None, default_repeat: int = 1) -> None:
    """Command line of a benchmark module: ``--customers`` and ``--repeat``."""
    import argparse

    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=default_repeat)
    args = parser.parse_args()
    run(args.customers, args.repeat)


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print(f"\n{title}")
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 100 else f"{value:,.0f}"
    return "" if value is None else str(value)


def demo_data(n_customers: int, seed: int = 42) -> Path:
    """The demo shop of ``n_customers`` written under data/bench/, simulated once and reused."""
    directory = ROOT / "data" / "bench" / f"n={n_customers}_seed={seed}"
    if not (directory / "transactions.parquet").exists():
        # In a child process: a measured process started from this one would otherwise report
        # the simulation's memory as its own peak (the peak survives fork and exec).
        code = (f"from churnml.simulate import simulate_shop, write_shop; "
                f"write_shop(simulate_shop(n_customers={n_customers}, seed={seed}), {str(directory)!r})")
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    return directory


# The benchmarks that score train their models on one customer in SAMPLE_MODULUS, with
# MAX_SNAPSHOTS training snapshots.
SAMPLE_MODULUS = 50
MAX_SNAPSHOTS = 6


def train_default_models(directory: str | Path, scratch: str | Path, modulus: int = SAMPLE_MODULUS,
                         max_snapshots: int = MAX_SNAPSHOTS) -> tuple[dict, dict]:
    """Churn and repurchase models trained with the default configuration on one customer in
    ``modulus`` of the shop in ``directory`` (the sample is written under ``scratch``).

    ``max_snapshots`` training snapshots instead of the default's 12 keep the set-up short; the
    size of the models comes from the model configuration. Returns the models by target and the
    composed training settings.
    """
    import duckdb

    from churnml.features.build import FeatureConfig
    from churnml.features.snapshots import snapshot_table, training_cutoffs
    from churnml.io.sources import load_data
    from churnml.jobs.common import compose_settings
    from churnml.jobs.train import build_model, training_plan
    from churnml.models.training import extra_feature_builder, fit_model

    tables = ("transactions", "interactions", "customers")
    con = duckdb.connect()
    for t in tables:
        con.execute(f"COPY (SELECT * FROM read_parquet('{directory}/{t}.parquet') WHERE hash(customer_id) % {modulus} = 0) "
                    f"TO '{scratch}/sample-{t}.parquet' (FORMAT parquet)")
    con.close()
    sample = {"kind": "files", **{t: {"path": f"{scratch}/sample-{t}.parquet"} for t in tables}}
    models, settings = {}, {}
    for target in ("churn", "repurchase"):
        settings = compose_settings("train", [f"target={target}"])
        plan = training_plan(settings)
        dataset = load_data(sample, materialize=True)
        holdout = plan.resolve_holdout(dataset)
        cutoffs = training_cutoffs(holdout, plan.horizon_days, dataset.first_date, plan.step_days, max_snapshots,
                                   plan.min_snapshots, plan.min_history_days)
        table = snapshot_table(dataset, cutoffs, plan.target, plan.horizon_days, FeatureConfig(),
                               extra_feature_builder(plan), progress=False)
        template = build_model(settings["model"], plan.target, plan.horizon_days)
        models[target] = fit_model(template, table, plan.calibration_snapshots)
    return models, settings
