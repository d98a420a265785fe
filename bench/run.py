"""Run the benchmarks: `python bench/run.py [name ...]` (all when no name is given)."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

BENCHMARKS = {"features": "bench_features", "cdnow": "bench_cdnow", "scoring": "bench_scoring", "spark": "bench_spark"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", choices=[*BENCHMARKS, []], help="benchmarks to run")
    args = parser.parse_args()
    results = {name: importlib.import_module(BENCHMARKS[name]).run() for name in (args.names or BENCHMARKS)}
    print("\nsummary: " + ", ".join(f"{n}: {'met' if ok else 'NOT met'}" for n, ok in results.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
