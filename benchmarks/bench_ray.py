"""Ray's overhead (issue 17): ``scan(engine="ray")`` against the local engine on the same data, in the same run.

    python benchmarks/bench_ray.py                      # 5,000 samples, JSON Lines and Parquet
    python benchmarks/bench_ray.py --samples 20000 --images 600

Builds (once, cached under benchmarks/out/, by ``bench_scan.build_dataset``) the LLaMA-Factory ShareGPT JSON
Lines dataset with real image files that ``bench_scan.py`` measures, writes the same rows as Parquet, starts a
local Ray cluster with one CPU per core, then scans each file with the local engine (workers 1 and 2) and the Ray
engine (one actor per CPU), and checks that every engine wrote the same records. Prints a table and writes
benchmarks/out/ray.json. Needs ``vlmcheck[ray]``; no network.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
sys.path.insert(0, str(HERE))


def _machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    import ray

    return {"date": date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), "ray": ray.__version__, "load_avg_1m": os.getloadavg()[0]}


def _parquet(dataset: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = dataset.with_suffix(".parquet")
    if not target.is_file():
        rows = [json.loads(line) for line in dataset.read_text(encoding="utf-8").splitlines()]
        pq.write_table(pa.Table.from_pylist(rows), target, row_group_size=1024)
    return target


def _scan(dataset: Path, *, checkpoint: Path, max_length: int, output: Path, **engine: Any) -> dict[str, Any]:
    import vlmcheck

    started = time.perf_counter()
    report = vlmcheck.scan(dataset, model=checkpoint, max_length=max_length, output=output, **engine)
    wall = time.perf_counter() - started
    samples = report.summary["samples"]
    return {"samples": samples, "wall_s": round(wall, 2), "samples_per_s": round(samples / wall, 1),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each engine, interleaved; the fastest counts")
    args = parser.parse_args(argv)

    import ray
    from bench_scan import build_dataset

    from vlmcheck.demo.checkpoints import qwen_checkpoint

    checkpoint = qwen_checkpoint("qwen2_vl")
    jsonl = build_dataset(args.samples, args.images, args.seed)
    inputs = {"jsonl": jsonl, "parquet": _parquet(jsonl)}
    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray_start = round(time.perf_counter() - started, 2)
    runs: dict[str, dict[str, Any]] = {}
    # what the Ray engine pays per scan whatever the data's size: starting its actors, each loading the tokenizer
    runs["jsonl, first 16 rows: ray"] = _scan(jsonl, checkpoint=checkpoint, max_length=args.max_length,
                                              output=OUT / "ray-bench-16.jsonl", engine="ray", limit=16)
    for kind, dataset in inputs.items():
        # wall time includes what each engine pays per scan: loading the tokenizer (each local worker, each Ray
        # actor), starting the pool or the actors; the Ray cluster's own start is measured apart, above
        for _ in range(args.repeats):
            for name, engine in (("local, workers=1", {}), ("local, workers=2", {"workers": 2}),
                                 ("ray", {"engine": "ray"})):
                out = OUT / f"ray-bench-{kind}-{name.split(',')[0]}{engine.get('workers', '')}.jsonl"
                run = _scan(dataset, checkpoint=checkpoint, max_length=args.max_length, output=out, **engine)
                print(f"{kind}: {name}: {run}", file=sys.stderr)
                best = runs.get(f"{kind}: {name}")
                if best is None or run["wall_s"] < best["wall_s"]:
                    runs[f"{kind}: {name}"] = run
        outputs = sorted(OUT.glob(f"ray-bench-{kind}-*.jsonl"))
        texts = {p.read_bytes() for p in outputs}
        if len(texts) != 1:
            print(f"records differ between engines on {kind}: {[p.name for p in outputs]}", file=sys.stderr)
            return 1
    ray.shutdown()
    ratios = {kind: {"ray / local workers=1": round(runs[f"{kind}: ray"]["samples_per_s"]
                                                    / runs[f"{kind}: local, workers=1"]["samples_per_s"], 2),
                     "ray / local workers=2": round(runs[f"{kind}: ray"]["samples_per_s"]
                                                    / runs[f"{kind}: local, workers=2"]["samples_per_s"], 2)}
              for kind in inputs}
    result = {"machine": _machine(), "samples": args.samples, "ray_init_s": ray_start, "runs": runs,
              "ratios": ratios, "records_identical": True}
    OUT.mkdir(exist_ok=True)
    (OUT / "ray.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| run | samples | wall (s) | samples/s | load avg |\n|---|---:|---:|---:|---:|")
    for name, run in runs.items():
        print(f"| {name} | {run['samples']:,} | {run['wall_s']} | {run['samples_per_s']:,} | {run['load_avg_1m']} |")
    print(f"\nray.init: {ray_start} s; ratios (samples/s, ray over local): {json.dumps(ratios)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
