"""Run the benchmarks: `python bench/run.py [name ...]` (all when no name is given)."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

BENCHMARKS = {"features": "bench_features", "kpis": "bench_kpis", "quality": "bench_quality", "scoring": "bench_scoring",
              "serve": "bench_serve", "spark": "bench_spark"}
# Former names, still accepted: `cdnow` grew into `quality` (CDNOW and the demo shop).
ALIASES = {"cdnow": "quality"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", choices=[*BENCHMARKS, *ALIASES, []], help="benchmarks to run")
    args = parser.parse_args()
    names = dict.fromkeys(ALIASES.get(name, name) for name in args.names or BENCHMARKS)
    results = {name: importlib.import_module(BENCHMARKS[name]).run() for name in names}
    print("\nsummary: " + ", ".join(f"{n}: {'met' if ok else 'NOT met'}" for n, ok in results.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
