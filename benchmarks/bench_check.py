"""`vlmcheck check` on a LLaMA-Factory run vs LLaMA-Factory's own `get_dataset` on it, against a floor.

    python benchmarks/bench_check.py                    # 2,000 samples, the images of bench_scan.py's dataset
    python benchmarks/bench_check.py --samples 500 --no-framework

The run: benchmarks/bench_scan.py's dataset (ShareGPT JSON Lines over real JPEG/PNG files, built once under
benchmarks/out/), registered in a dataset_info.json, and a LLaMA-Factory YAML in the shape of its
examples/train_lora/qwen2_5vl_lora_sft.yaml (template qwen2_vl, cutoff_len 2048, image_max_pixels and
image_min_pixels left at LLaMA-Factory's defaults) on the Qwen2-VL demo checkpoint. Each phase runs in its own
process:

1. floor: what any exact count has to do at least, in this process: parse every row (json.loads), read each
   distinct image file's header once (PIL ``Image.open(...).size``), and tokenize every message's text with the
   checkpoint's fast tokenizer in one ``encode_batch`` call. Timed: all of it.
2. check: ``vlmcheck.check(config, output=records)``, wall time including reading the checkpoint and
   dataset_info.json.
3. framework: LLaMA-Factory 0.9.5's own ``get_dataset`` on the same YAML, in its own environment (the tests'
   oracle environment, tests/frameworks/llamafactory_env.py: built on first use, cached), with
   ``preprocessing_num_workers`` unset (one process) and a fresh datasets cache: its loader, converter, template,
   mm_plugin (which runs the image processor on every image) and ``infer_seqlen`` cut. Its kept rows' lengths
   must equal vlmcheck's ``kept_tokens`` of the rows it calls trained, in order, or the script exits 1.

Ratios are to the floor of the same run. Results: printed as Markdown and written to benchmarks/out/check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
sys.path[:0] = [str(HERE), str(REPO / "src"), str(REPO / "tests"), str(REPO / "tests" / "frameworks")]

import bench_scan  # noqa: E402  (the dataset generator, the checkpoint, the machine description)

TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
        "system_tag": "system"}


def write_run(dataset: Path, samples: int, folder: Path) -> Path:
    """A LLaMA-Factory run over the first ``samples`` rows: dataset_info.json beside the data, and the YAML."""
    folder.mkdir(parents=True, exist_ok=True)
    data = dataset.parent
    train = data / f"train-{samples}.jsonl"
    if not train.is_file():
        with open(dataset, encoding="utf-8") as src, open(train.with_suffix(".tmp"), "w", encoding="utf-8") as dst:
            for k, line in enumerate(src):
                if k >= samples:
                    break
                dst.write(line)
        os.replace(train.with_suffix(".tmp"), train)
    info = {"bench": {"file_name": train.name, "formatting": "sharegpt",
                      "columns": {"messages": "messages", "images": "images", "system": "system"}, "tags": TAGS}}
    (data / "dataset_info.json").write_text(json.dumps(info, indent=2))
    config = folder / f"qwen2vl_lora_sft_{samples}.yaml"
    config.write_text(textwrap.dedent(f"""\
        ### model
        model_name_or_path: {bench_scan._checkpoint()}
        trust_remote_code: true

        ### method
        stage: sft
        do_train: true
        finetuning_type: lora
        lora_rank: 8
        lora_target: all

        ### dataset
        dataset: bench
        dataset_dir: {data}
        template: qwen2_vl
        cutoff_len: 2048
        overwrite_cache: true

        ### output
        output_dir: {folder / 'saves'}
        report_to: none

        ### train
        per_device_train_batch_size: 1
        learning_rate: 1.0e-4
        bf16: false
        """))
    return config


# -- phases --------------------------------------------------------------------------------------

def phase_floor(args: argparse.Namespace) -> dict[str, Any]:
    from PIL import Image
    from tokenizers import Tokenizer

    checkpoint = bench_scan._checkpoint()
    tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    data = Path(args.dataset).parent
    started = time.perf_counter()
    texts: list[str] = []
    sizes: dict[str, tuple[int, int]] = {}
    rows = 0
    with open(data / f"train-{args.samples}.jsonl", encoding="utf-8") as fp:
        for line in fp:
            row = json.loads(line)
            rows += 1
            texts += [m["content"] for m in row["messages"]] + ([row["system"]] if row.get("system") else [])
            for name in row["images"]:
                if name not in sizes:
                    with Image.open(data / name) as im:
                        sizes[name] = im.size
    tokens = sum(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False))
    wall = time.perf_counter() - started
    return {"wall_s": round(wall, 3), "samples": rows, "samples_per_s": round(rows / wall, 1),
            "images": len(sizes), "text_tokens": tokens}


def phase_check(args: argparse.Namespace) -> dict[str, Any]:
    import vlmcheck

    records = OUT / f"check-records-{args.samples}.jsonl"
    started = time.perf_counter()
    report = vlmcheck.check(args.config, output=records)
    wall = time.perf_counter() - started
    s = report.summary
    kept = []
    for line in records.read_text().splitlines():
        frame = json.loads(line)["framework"]
        if frame["verdict"] != "dropped":
            kept.append(frame["kept_tokens"])
    return {"wall_s": round(wall, 3), "samples": s["samples"], "samples_per_s": round(s["samples"] / wall, 1),
            "verdicts": s["framework"]["verdicts"], "kept_lengths": kept}


FRAMEWORK = textwrap.dedent('''
    import json, sys, time
    import yaml
    from llamafactory_oracle_runner import entry_train_dataset

    args = yaml.safe_load(open(sys.argv[1]).read())
    started = time.perf_counter()
    train = entry_train_dataset(args)  # get_train_args ... get_dataset, LLaMA-Factory's own
    lengths = [len(ids) for ids in train["input_ids"]]
    wall = time.perf_counter() - started
    print("RESULT" + json.dumps({"wall_s": round(wall, 3), "rows": len(lengths), "kept_lengths": lengths}))
''')


def phase_framework(args: argparse.Namespace) -> dict[str, Any]:
    from llamafactory_env import oracle_python

    python = oracle_python()
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": cache, "DISABLE_VERSION_CHECK": "1",
               "PYTHONPATH": str(REPO / "tests" / "frameworks")}
        done = subprocess.run([str(python), "-c", FRAMEWORK, str(args.config)], capture_output=True, text=True,
                              env=env, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    if done.returncode or not lines:
        raise SystemExit(f"LLaMA-Factory's get_dataset failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT"):])
    result["samples_per_s"] = round(args.samples / result["wall_s"], 1)
    return result


PHASES = {"floor": phase_floor, "check": phase_check, "framework": phase_framework}


def _run_phase(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--dataset", str(args.dataset),
           "--samples", str(args.samples), "--config", str(args.config)]
    load = round(os.getloadavg()[0], 2)
    print(f"  {name} (load average {load}) ...", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["loadavg_start"] = load
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--no-framework", action="store_true", help="skip LLaMA-Factory's own get_dataset")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)))
        return 0
    OUT.mkdir(exist_ok=True)
    args.dataset = bench_scan.build_dataset(max(args.samples, 20000), 600, 0)
    args.config = write_run(args.dataset, args.samples, OUT / "check-run")
    results: dict[str, Any] = {"machine": bench_scan._machine(), "samples": args.samples, "config": str(args.config)}
    for name in ("floor", "check") + (() if args.no_framework else ("framework",)):
        results[name] = _run_phase(name, args)
    same = None
    if "framework" in results:
        same = results["framework"]["kept_lengths"] == results["check"]["kept_lengths"]
        results["identical_lengths"] = same
    for name in ("check", "framework"):
        if name in results:
            results[name]["kept_rows"] = len(results[name].pop("kept_lengths"))
    (OUT / "check.json").write_text(json.dumps(results, indent=2))
    floor = results["floor"]["wall_s"]
    m = results["machine"]
    print(f"\n{m['date']}, {m['cpu']}, {m['cores']} cores, {args.samples:,} samples "
          f"({results['floor']['images']} distinct images)\n")
    print("| what | wall s | samples/s | ratio to the floor |\n|---|---:|---:|---:|")
    rows = [("floor: parse rows, read image headers, tokenize the texts", results["floor"]),
            ("vlmcheck check (model and config reading included)", results["check"])]
    if "framework" in results:
        rows.append(("LLaMA-Factory 0.9.5 get_dataset (one process)", results["framework"]))
    for label, r in rows:
        print(f"| {label} | {r['wall_s']:.2f} | {r['samples_per_s']:,.1f} | {r['wall_s'] / floor:.1f}x |")
    if same is not None:
        print(f"\nkept rows: vlmcheck {results['check']['kept_rows']:,}, LLaMA-Factory {results['framework']['kept_rows']:,};"
              f" lengths identical: {same}")
    return 0 if same in (None, True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
