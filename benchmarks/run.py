"""Every benchmark, one after another, each with its own defaults (or smaller sizes with --quick).

    python benchmarks/run.py                     # all of them, as docs/performance.md reports them (about 1-2 h)
    python benchmarks/run.py --quick             # small sizes, a few minutes: does every benchmark still run?
    python benchmarks/run.py --only scan,check   # some of them

Each benchmark prints its Markdown table and writes its JSON under benchmarks/out/; this runner prints which ran,
how long each took and which failed (exit 1 if any did: a benchmark that cross-checks its counts against the real
thing exits 1 on a mismatch).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name: (script, the arguments of a --quick run)
BENCHMARKS = {
    "scan": ("bench_scan.py", ["--samples", "2000", "--processor-samples", "50"]),
    "speed": ("bench_speed.py", ["--only", "speed", "--samples", "2000", "--repeats", "1"]),
    "families": ("bench_families.py", ["--samples", "100", "--processor-samples", "20"]),
    "check": ("bench_check.py", ["--samples", "200"]),
    "guard": ("bench_collator_guard.py", ["--repeats", "5"]),
    "report": ("bench_report.py", ["--samples", "20000"]),
    "ray": ("bench_ray.py", ["--samples", "1000"]),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a check that each benchmark runs")
    parser.add_argument("--only", help=f"comma-separated, of: {', '.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r} (known: {', '.join(BENCHMARKS)})")
    outcomes = []
    for name in names:
        script, quick = BENCHMARKS[name]
        started = time.perf_counter()
        print(f"\n## {name}: python benchmarks/{script} {' '.join(quick) if args.quick else ''}", flush=True)
        done = subprocess.run([sys.executable, str(HERE / script), *(quick if args.quick else [])])
        outcomes.append((name, done.returncode, time.perf_counter() - started))
    print("\n| benchmark | exit | minutes |\n|---|---:|---:|")
    for name, code, seconds in outcomes:
        print(f"| {name} | {code} | {seconds / 60:.1f} |")
    return 1 if any(code for _, code, _ in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
