"""Per-family scan speed (issue 4): vlmcheck scan vs each family's real processor loop.

    python benchmarks/bench_families.py                      # every family with a module, 400 samples each
    python benchmarks/bench_families.py --families gemma3,llava_next --samples 1000 --processor-samples 100

For each family, the checkpoint fixture its oracle test uses (``tests/*_checkpoint.py``: the hub's
preprocessor values and a real or stand-in tokenizer, see each test's docstring) and a dataset of
TRL ``messages`` rows over real JPEG/PNG files of varied sizes (1-3 images per sample). Two phases,
each in this process after a warm-up:

1. ``vlmcheck.scan`` over all samples (workers=1), with ``output=`` records;
2. the loop a length filter runs with the real processor: PIL-load each image
   (``transformers.image_utils.load_image``), ``processor.apply_chat_template(..., tokenize=False)``,
   ``processor(text=..., images=...)``, ``len(input_ids)``, on the first ``--processor-samples``
   rows; their totals and image-token counts are checked identical to vlmcheck's records (the
   script exits 1 otherwise).

Needs the test extras (transformers, the fixtures' packages); no network beyond what the fixtures
cache on first use. Results: printed as a markdown table and written to benchmarks/out/families.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]


@dataclass
class Case:
    name: str
    checkpoint: Callable[[], Path]
    processor: Callable[[Path], Any]
    call: str = "chat"  # "chat": apply_chat_template + processor; "paligemma": prompt + suffix


def _cases() -> dict[str, Case]:
    # imported lazily: each fixture module builds its tokenizer on first use
    def lazy(module: str, checkpoint: str, processor: str, **kwargs: Any) -> tuple[Callable[[], Path], Callable]:
        def ck() -> Path:
            return getattr(__import__(module), checkpoint)(**kwargs)

        def pr(folder: Path) -> Any:
            return getattr(__import__(module), processor)(folder)

        return ck, pr

    def qwen(model_type: str) -> tuple[Callable[[], Path], Callable]:
        def ck() -> Path:
            from vlmcheck.demo.checkpoints import qwen_checkpoint

            return qwen_checkpoint(model_type)

        def pr(folder: Path) -> Any:
            from realparts import qwen_processor

            return qwen_processor(model_type)

        return ck, pr

    table = {
        "qwen2_vl": qwen("qwen2_vl"),
        "qwen2_5_vl": qwen("qwen2_5_vl"),
        "qwen3_vl": qwen("qwen3_vl"),
        "llava": lazy("llava_checkpoint", "llava_checkpoint", "llava_processor"),
        "llava_next": lazy("llava_next_checkpoint", "llava_next_checkpoint", "llava_next_processor"),
        "llava_onevision": lazy("onevision_checkpoint", "onevision_checkpoint", "onevision_processor"),
        "gemma3": lazy("gemma3_checkpoint", "gemma3_checkpoint", "gemma3_processor"),
        "idefics3": lazy("idefics3_checkpoint", "checkpoint", "processor", name="smolvlm-instruct"),
        "smolvlm": lazy("idefics3_checkpoint", "checkpoint", "processor", name="smolvlm2-2.2b-instruct"),
        "internvl": lazy("internvl_checkpoint", "internvl_checkpoint", "internvl_processor"),
        "pixtral": lazy("pixtral_checkpoint", "pixtral_checkpoint", "pixtral_processor"),
        "mistral3": lazy("pixtral_checkpoint", "pixtral_checkpoint", "pixtral_processor",
                         name="mistral-small-3.1"),
        "glm4v": lazy("glm4v_checkpoint", "glm4v_checkpoint", "glm4v_processor"),
        "mllama": lazy("mllama_checkpoint", "mllama_checkpoint", "mllama_processor"),
        "paligemma": lazy("paligemma_checkpoint", "paligemma_checkpoint", "paligemma_processor"),
    }
    cases = {name: Case(name, ck, pr) for name, (ck, pr) in table.items()}
    cases["paligemma"].call = "paligemma"
    return cases


# -- dataset ------------------------------------------------------------------------------------
def _images(folder: Path, n: int, rng: random.Random) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.5:  # photos
            long = rng.randint(480, 1600)
            ratio = rng.choice([4 / 3, 3 / 2, 16 / 9, 1.0])
            w, h = long, max(1, int(long / ratio))
        elif kind < 0.7:  # portrait documents / screenshots
            w, h = rng.randint(600, 1400), rng.randint(900, 2400)
        elif kind < 0.9:  # small crops
            w, h = rng.randint(32, 400), rng.randint(32, 400)
        else:  # banners
            w, h = rng.randint(800, 2000), rng.randint(40, 160)
        if rng.random() < 0.5:
            w, h = h, w
        name = f"im{i:03d}_{w}x{h}.{'png' if i % 4 == 0 else 'jpg'}"
        path = folder / name
        if not path.exists():
            Image.new("RGB", (w, h), (rng.randrange(256), rng.randrange(256), 90)).save(path)
        names.append(name)
    return names


def _rows(names: list[str], n: int, rng: random.Random) -> list[dict[str, Any]]:
    questions = ["What is shown here?", "Describe the image in detail.", "Read the text.", "Compare these."]
    rows = []
    for i in range(n):
        k = rng.choices([1, 2, 3], weights=[0.7, 0.2, 0.1])[0]
        images = rng.sample(names, k)
        answer = " ".join(rng.choice(["a", "cat", "sits", "on", "the", "red", "mat", "near", "two"])
                          for _ in range(rng.randint(3, 80)))
        rows.append({
            "id": f"s{i}",
            "messages": [
                {"role": "user", "content": [*({"type": "image"} for _ in images),
                                             {"type": "text", "text": rng.choice(questions)}]},
                {"role": "assistant", "content": [{"type": "text", "text": answer}]},
            ],
            "images": images,
        })
    return rows


# -- phases ---------------------------------------------------------------------------------------
def _processor_ids(case: Case, processor: Any, row: dict[str, Any], folder: Path) -> list[int]:
    from transformers.image_utils import load_image

    images = [load_image(str(folder / name)) for name in row["images"]]
    if case.call == "paligemma":
        prompt = row["messages"][0]["content"][-1]["text"]
        suffix = row["messages"][1]["content"][0]["text"]
        return list(processor(text=[prompt], images=[images], suffix=[suffix])["input_ids"][0])
    text = processor.apply_chat_template(row["messages"], tokenize=False)
    bos = processor.tokenizer.bos_token
    # apply_chat_template(tokenize=True) and TRL's collators: no second BOS when the template wrote one
    special = not (bos and text.startswith(bos))
    return list(processor(text=[text], images=[images], add_special_tokens=special)["input_ids"][0])


def run_case(case: Case, samples: int, processor_samples: int, seed: int) -> dict[str, Any]:
    from vlmcheck import scan
    from vlmcheck.model import load_model

    rng = random.Random(seed)
    folder = OUT / "family-images"
    names = _images(folder, 120, rng)
    rows = _rows(names, samples, rng)
    data = OUT / f"family-{case.name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records_path = OUT / f"family-{case.name}.records.jsonl"
    checkpoint = case.checkpoint()
    spec = load_model(checkpoint)
    image_id = spec.token_id(spec.family.image_token)

    scan(data, model=spec, image_root=folder, limit=20)  # warm-up: page cache
    started = time.perf_counter()  # the model is loaded once, outside the timing (about 1 s per checkpoint)
    report = scan(data, model=spec, image_root=folder, output=records_path)
    scan_s = time.perf_counter() - started
    records = [json.loads(line) for line in records_path.read_text().splitlines()]

    processor = case.processor(checkpoint)
    _processor_ids(case, processor, rows[0], folder)  # warm-up
    mismatches, compared, rejected = [], 0, 0
    started = time.perf_counter()
    for row, rec in zip(rows[:processor_samples], records):
        try:
            ids = _processor_ids(case, processor, row, folder)
        except ValueError:
            rejected += 1  # sizes the processor refuses (vlmcheck reports them as findings)
            continue
        compared += 1
        got = (len(ids), sum(1 for t in ids if t == image_id))
        want = (rec["tokens"], sum(c or 0 for c in rec["image_tokens"]))
        if got != want:
            mismatches.append((row["id"], got, want))
    processor_s = time.perf_counter() - started
    done = compared + rejected
    scan_rate = samples / scan_s
    proc_rate = done / processor_s
    return {
        "family": case.name, "model_type": spec.model_type, "samples": samples, "scan_s": round(scan_s, 2),
        "scan_per_s": round(scan_rate, 1), "processor_samples": done, "processor_s": round(processor_s, 2),
        "processor_per_s": round(proc_rate, 2), "ratio": round(scan_rate / proc_rate, 1),
        "compared": compared, "rejected": rejected, "mismatches": len(mismatches),
        "mismatch_examples": mismatches[:3], "findings": report.counts,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=None, help="comma-separated (default: every family)")
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--processor-samples", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    cases = _cases()
    wanted = args.families.split(",") if args.families else list(cases)
    results = []
    for name in wanted:
        if name not in cases:
            print(f"unknown family {name}; known: {', '.join(cases)}", file=sys.stderr)
            return 2
        print(f"-- {name}", file=sys.stderr, flush=True)
        results.append(run_case(cases[name], args.samples, args.processor_samples, args.seed))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    meta = {"date": date.today().isoformat(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "machine": platform.machine(), "load_avg": os.getloadavg()}
    (OUT / "families.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"machine: {meta}")
    print("| family | samples | scan samples/s | processor samples/s | ratio | compared (identical) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        same = r["compared"] - r["mismatches"]
        print(f"| `{r['family']}` | {r['samples']:,} | {r['scan_per_s']:,} | {r['processor_per_s']} | "
              f"{r['ratio']:,}x | {r['compared']} ({same}) |")
    return 1 if any(r["mismatches"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
