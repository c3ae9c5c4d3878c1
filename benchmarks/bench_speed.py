"""Scan speed against the tokenization floor on one core, worker scaling, and peak memory (issue 17).

    python benchmarks/bench_speed.py                              # all three, 20,000 samples, 3 repeats
    python benchmarks/bench_speed.py --only speed --repeats 5
    python benchmarks/bench_speed.py --only rss --rss-rows 10000,100000,1000000

Uses the dataset of benchmarks/bench_scan.py (LLaMA-Factory ShareGPT JSONL over 600 real JPEG/PNG files,
built once under benchmarks/out/) and the Qwen2-VL demo checkpoint. Every measurement runs in its own
process; the 1-minute load average is printed with each, because the machine may be shared.

1. speed, on one core (``RAYON_RS_NUM_CPUS=1``: the tokenizers library then tokenizes on one thread):
   repeated rounds of the floor (``Tokenizer.encode_batch`` of the same texts the scan tokenizes, rendered
   beforehand, all in one call and in the scan's chunks of 512; only tokenization is timed), the scan, and
   the scan with each shortcut off (``VLMCHECK_SEGMENT_CACHE=0``, ``VLMCHECK_PROBE_CACHE=0``,
   ``VLMCHECK_FAST_RENDER=0``, ``VLMCHECK_BUDGET_CACHE=0``) and with all of them off.
   Ratios are taken within a round. The scans' summaries (finding counts, token totals) must be equal, or
   the script exits 1.
2. scaling: ``workers=1`` and ``workers=N`` with one tokenizer thread each, one worker with the tokenizers
   library's own threads, and the default (``workers=None``: one per core on this dataset).
3. peak RSS of a whole scan (the child process's ``ru_maxrss``) over JSON Lines and Parquet files of
   10k, 100k, 1M rows, written streaming (any size fits: nothing holds the rows).

Results: printed as Markdown and written to benchmarks/out/speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
sys.path.insert(0, str(HERE))

import bench_scan  # noqa: E402  (the dataset generator and the rendered-text helpers)

ONE_CORE = {"RAYON_RS_NUM_CPUS": "1"}


# -- phases, each in its own process ---------------------------------------------------------------

def phase_floor(args: argparse.Namespace) -> dict[str, Any]:
    from tokenizers import Tokenizer

    from vlmcheck.chat import render_chat

    checkpoint = bench_scan._checkpoint()
    template = json.loads((checkpoint / "chat_template.json").read_text())["chat_template"]
    rows = bench_scan._read_rows(Path(args.dataset))[: args.samples]
    texts = [render_chat(template, bench_scan._typed_messages(row)) for _, row in rows]  # untimed
    tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    tokenizer.encode_batch(texts[:64])
    out: dict[str, Any] = {"samples": len(texts)}
    for label, size in (("all", len(texts)), ("chunks512", 512)):
        started, cpu = time.perf_counter(), time.process_time()
        tokens = 0
        for k in range(0, len(texts), size):
            tokens += sum(len(e.ids) for e in tokenizer.encode_batch(texts[k:k + size], add_special_tokens=True))
        out[f"{label}_s"] = round(time.perf_counter() - started, 3)
        out[f"{label}_cpu_s"] = round(time.process_time() - cpu, 3)
        out["tokens"] = tokens
    return out


def phase_scan(args: argparse.Namespace) -> dict[str, Any]:
    import resource

    import vlmcheck

    checkpoint = bench_scan._checkpoint()
    cpu = time.process_time()
    workers = None if args.workers == "auto" else int(args.workers)
    report = vlmcheck.scan(Path(args.dataset), model=checkpoint, max_length=4096, workers=workers,
                           limit=args.samples, format=args.format)
    cpu = time.process_time() - cpu  # this process's CPU time: scan and model load (workers not included)
    s = report.summary
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"loop_s": s["seconds"], "samples": s["samples"], "samples_per_s": round(s["samples"] / s["seconds"], 1),
            "counts": s["counts"], "tokens": s["tokens"], "scan_cpu_s": round(cpu, 3),
            "cpu_s": round(own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime, 1)}


PHASES = {"floor": phase_floor, "scan": phase_scan}


def run_phase(name: str, args: argparse.Namespace, *, env: dict[str, str] | None = None, **extra: Any
              ) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--dataset", str(extra.pop("dataset",
           args.dataset)), "--samples", str(extra.pop("samples", args.samples))]
    for key, value in extra.items():
        cmd += [f"--{key}", str(value)]
    load = round(os.getloadavg()[0], 2)
    print(f"  {name} {extra} {env or ''} (load {load}) ...", file=sys.stderr, flush=True)
    child_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=child_env, text=True)
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"phase {name} failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    result["load"] = load
    result["peak_rss_mib"] = round(usage.ru_maxrss / 1024)  # this child only (KiB on Linux)
    return result


# -- the three measurements ----------------------------------------------------------------------

VARIANTS = {  # label: environment of the scan (each lever's switch)
    "scan": {},
    "no segment cache": {"VLMCHECK_SEGMENT_CACHE": "0"},
    "no probe cache": {"VLMCHECK_PROBE_CACHE": "0"},
    "no written-out render": {"VLMCHECK_FAST_RENDER": "0"},
    "no budget cache": {"VLMCHECK_BUDGET_CACHE": "0"},
    "none of them": {"VLMCHECK_SEGMENT_CACHE": "0", "VLMCHECK_PROBE_CACHE": "0", "VLMCHECK_FAST_RENDER": "0",
                     "VLMCHECK_BUDGET_CACHE": "0"},
}


def measure_speed(args: argparse.Namespace) -> dict[str, Any]:
    rounds = []
    for _ in range(args.repeats):
        floor = run_phase("floor", args, env=ONE_CORE)
        scans = {label: run_phase("scan", args, env={**ONE_CORE, **env}, workers=1) for label, env in VARIANTS.items()}
        first = scans["scan"]
        for label, r in scans.items():
            if (r["counts"], r["tokens"]) != (first["counts"], first["tokens"]):
                raise SystemExit(f"{label} changed the summary: {r} vs {first}")
        rounds.append({"floor": floor, "scans": scans,
                       "ratio": {label: round(r["loop_s"] / floor["all_s"], 2) for label, r in scans.items()},
                       "cpu_ratio": {label: round(r["scan_cpu_s"] / floor["all_cpu_s"], 2)
                                     for label, r in scans.items()}})
    return {"rounds": rounds,
            "median_ratio": {label: statistics.median(r["ratio"][label] for r in rounds) for label in VARIANTS},
            "median_cpu_ratio": {label: statistics.median(r["cpu_ratio"][label] for r in rounds) for label in VARIANTS}}


def measure_scaling(args: argparse.Namespace) -> dict[str, Any]:
    n = os.cpu_count() or 1
    out: dict[str, Any] = {"cores": n, "rounds": []}
    for _ in range(args.repeats):
        one = run_phase("scan", args, env=ONE_CORE, workers=1)
        many = run_phase("scan", args, env=ONE_CORE, workers=n)
        threads = run_phase("scan", args, workers=1)  # one worker, the tokenizers library's threads (all cores)
        default = run_phase("scan", args, workers="auto")  # the scan's default (workers=None)
        out["rounds"].append({"workers=1, 1 thread": one, f"workers={n}, 1 thread each": many,
                              "workers=1, tokenizer threads=cores": threads,
                              "default (workers=None: auto)": default,
                              "speedup": round(one["loop_s"] / many["loop_s"], 2),
                              "speedup_threads": round(one["loop_s"] / threads["loop_s"], 2),
                              "speedup_default": round(one["loop_s"] / default["loop_s"], 2)})
    out["median_speedup"] = statistics.median(r["speedup"] for r in out["rounds"])
    out["median_speedup_threads"] = statistics.median(r["speedup_threads"] for r in out["rounds"])
    out["median_speedup_default"] = statistics.median(r["speedup_default"] for r in out["rounds"])
    return out


def write_rss_data(rows: int, fmt: str, seed: int = 0) -> Path:
    """benchmarks/out/rss-<rows>.<fmt>: rows of the speed dataset's kind over its images, written as they are
    made (JSON Lines line by line, Parquet one 10,000-row group at a time)."""
    base = bench_scan.build_dataset(args_global.samples, 600, 0)
    pool = [f"images/{p.name}" for p in sorted((base.parent / "images").iterdir())]
    path = base.parent / f"rss-{rows}.{fmt}"
    if path.is_file():
        return path
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    if fmt == "jsonl":
        with open(tmp, "w", encoding="utf-8") as fp:
            for i in range(rows):
                fp.write(json.dumps(bench_scan._sample(i, rng, pool), ensure_ascii=False) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("id", pa.string()), ("messages", pa.list_(pa.struct(
            [("role", pa.string()), ("content", pa.string())]))), ("images", pa.list_(pa.string())),
            ("system", pa.string())])
        with pq.ParquetWriter(tmp, schema) as writer:
            for start in range(0, rows, 10_000):
                batch = [bench_scan._sample(i, rng, pool) for i in range(start, min(rows, start + 10_000))]
                for row in batch:
                    row.setdefault("system", None)
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    os.replace(tmp, path)
    return path


def measure_rss(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rows in [int(r) for r in args.rss_rows.split(",")]:
        for fmt in ("jsonl", "parquet"):
            path = write_rss_data(rows, fmt)
            r = run_phase("scan", args, dataset=path, samples=rows, workers=1)
            out[f"{fmt} {rows}"] = {"rows": rows, "peak_rss_mib": r["peak_rss_mib"], "loop_s": r["loop_s"],
                                    "samples_per_s": r["samples_per_s"], "load": r["load"]}
    return out


# -- report ----------------------------------------------------------------------------------------

def markdown(res: dict[str, Any]) -> str:
    lines = [f"Machine: {res['machine']['cores']} cores ({res['machine']['cpu']}), {res['machine']['date']}; "
             f"tokenizers {res['machine']['tokenizers']}.", ""]
    if "speed" in res:
        labels = list(VARIANTS)
        lines += ["Speed on one core (RAYON_RS_NUM_CPUS=1): seconds for "
                  f"{res['args']['samples']:,} samples, and the ratio to the floor's (wall; CPU in brackets, the "
                  "scan's CPU time including loading the tokenizer):", "",
                  "| round | load | floor: one encode_batch (CPU) | floor: chunks of 512 | "
                  + " | ".join(labels) + " |", "|---|---:|---:|---:|" + "---:|" * len(labels)]
        for k, r in enumerate(res["speed"]["rounds"], 1):
            cells = [f"{r['scans'][label]['loop_s']:.2f} = {r['ratio'][label]:.2f}x ({r['cpu_ratio'][label]:.2f}x)"
                     for label in labels]
            lines.append(f"| {k} | {r['floor']['load']} | {r['floor']['all_s']:.2f} ({r['floor']['all_cpu_s']:.2f}) | "
                         f"{r['floor']['chunks512_s']:.2f} | " + " | ".join(cells) + " |")
        med, cpu = res["speed"]["median_ratio"], res["speed"]["median_cpu_ratio"]
        lines += ["", "Median ratio to the floor: " + "; ".join(f"{label} {med[label]:.2f}x (CPU {cpu[label]:.2f}x)"
                                                            for label in labels) + ".", ""]
    if "scaling" in res:
        sc = res["scaling"]
        lines += ["Worker scaling (scan loop seconds):", ""]
        for k, r in enumerate(sc["rounds"], 1):
            parts = [f"{label}: {v['loop_s']:.2f} s (load {v['load']})" for label, v in r.items()
                     if isinstance(v, dict)]
            lines.append(f"- round {k}: " + "; ".join(parts) + f"; speedup {r['speedup']}x, default {r['speedup_default']}x")
        lines += ["", f"Median speedup of {sc['cores']} workers: {sc['median_speedup']}x "
                      f"(target >= {0.9 * sc['cores']:.1f}x); one worker with the library's threads: "
                      f"{sc['median_speedup_threads']}x; the default (auto): {sc['median_speedup_default']}x.", ""]
    if "rss" in res:
        lines += ["| dataset | rows | peak RSS (MiB) | samples/s | load |", "|---|---:|---:|---:|---:|"]
        for label, r in res["rss"].items():
            lines.append(f"| {label.split()[0]} | {r['rows']:,} | {r['peak_rss_mib']} | {r['samples_per_s']:,.0f} "
                         f"| {r['load']} |")
    return "\n".join(lines)


args_global: argparse.Namespace


def main(argv: list[str] | None = None) -> int:
    global args_global
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", choices=["speed", "scaling", "rss"], action="append")
    p.add_argument("--rss-rows", default="10000,100000")
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--dataset", help=argparse.SUPPRESS)
    p.add_argument("--workers", default="1", help=argparse.SUPPRESS)  # a number, or auto (the default, None)
    p.add_argument("--format", default=None, help=argparse.SUPPRESS)
    args = args_global = p.parse_args(argv)
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)))
        return 0
    args.dataset = bench_scan.build_dataset(args.samples, 600, 0)
    started = time.perf_counter()
    res: dict[str, Any] = {"args": {"samples": args.samples, "repeats": args.repeats},
                           "machine": bench_scan._machine()}
    only = args.only or ["speed", "scaling", "rss"]
    if "speed" in only:
        res["speed"] = measure_speed(args)
    if "scaling" in only:
        res["scaling"] = measure_scaling(args)
    if "rss" in only:
        res["rss"] = measure_rss(args)
    res["total_s"] = round(time.perf_counter() - started)
    OUT.mkdir(exist_ok=True)
    (OUT / "speed.json").write_text(json.dumps(res, indent=2) + "\n")
    print(markdown(res))
    print(f"\n({res['total_s']} s; benchmarks/out/speed.json)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
