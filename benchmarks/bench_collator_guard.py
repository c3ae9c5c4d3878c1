"""Collator guard overhead (issue 5): SpanGuardCollator vs the collator it wraps.

    python benchmarks/bench_collator_guard.py                 # batch 8, 448x448 images, 30 repeats
    python benchmarks/bench_collator_guard.py --batch 16 --size 672 --repeats 50

The wrapped collator is TRL's ``DataCollatorForVisionLanguageModeling`` with the real Qwen2-VL
processor (built offline, as in tests/realparts.py): a conversational batch, one photo-like image
per sample (random pixels, so resizing and normalizing cost what they cost on real data), a
question and an answer of a few sentences. Four rows:

1. the collator alone;
2. the guard, policy ``raise``, on batches that need no repair (the usual case);
3. the guard, policy ``truncate``, owning ``max_length``
   (the inner collator runs without truncation, as the guard's docs recommend); the cut falls inside
   every sample's image, so every sample is repaired;
4. the guard's check alone (``guard_batch``) on an already collated batch: the overhead without
   the timing noise of rows 1-3.

Rows 1-3: median of ``--repeats`` interleaved calls each, after two warm-up calls. Prints a
Markdown table; no network.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def examples(batch: int, size: int) -> list[dict[str, Any]]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(batch):
        pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        answer = " ".join(
            ["The picture shows a street with cars, trees and a red bus near the corner."] * (1 + i % 3)
        )
        rows.append(
            {
                "images": [Image.fromarray(pixels)],
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image"}, {"type": "text", "text": "Describe the picture."}],
                    },
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]},
                ],
            }
        )
    return rows


def interleaved_ms(fns: list[Any], rows: list[dict[str, Any]], repeats: int) -> list[float]:
    """Median ms per call of each fn, calls interleaved so that drift (CPU clocks, caches) hits all alike."""
    for fn in fns:
        for _ in range(2):
            fn([dict(r) for r in rows])
    times: list[list[float]] = [[] for _ in fns]
    for repeat in range(repeats):
        order = list(range(len(fns)))
        if repeat % 2:
            order.reverse()
        for i in order:
            batch = [dict(r) for r in rows]
            start = time.perf_counter()
            fns[i](batch)
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) * 1000 for t in times]


def check_only_ms(batch: dict[str, Any], spec: Any, repeats: int) -> float:
    from vlmcheck.integrations.guards import guard_batch

    times = []
    for _ in range(repeats * 10):
        start = time.perf_counter()
        guard_batch(batch, spec=spec, images_per_sample=[1] * batch["input_ids"].shape[0])
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=448, help="image side in pixels (448: 256 placeholders)")
    parser.add_argument("--repeats", type=int, default=30)
    options = parser.parse_args()

    import logging

    import torch
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from realparts import qwen_processor
    from vlmcheck.integrations.guards import SpanGuardCollator

    logging.getLogger("vlmcheck").setLevel(logging.ERROR)  # the repair row logs every batch
    processor = qwen_processor("qwen2_vl")
    rows = examples(options.batch, options.size)
    inner = DataCollatorForVisionLanguageModeling(processor)
    sample = inner([dict(r) for r in rows])
    lengths = sample["attention_mask"].sum(1).tolist()
    # Cut inside the image of the longer half of the samples: the guard repairs them.
    image_end = int((sample["input_ids"][0] == processor.image_token_id).nonzero().max())
    max_length = image_end - 10

    guard = SpanGuardCollator(inner, processor=processor)
    repairing = SpanGuardCollator(inner, processor=processor, policy="truncate", max_length=max_length)
    alone, guarded, repaired = interleaved_ms([inner, guard, repairing], rows, options.repeats)
    results = [
        ("collator alone", alone),
        ("guard, policy raise, no repair", guarded),
        (f"guard, truncate at {max_length}, {options.batch} repairs", repaired),
        (
            "the guard's own check (guard_batch on the collated batch)",
            check_only_ms(sample, guard.spec, options.repeats),
        ),
    ]
    base = results[0][1]
    print(
        f"batch {options.batch} x {options.size}x{options.size} images "
        f"({int(sample['image_grid_thw'][0].prod()) // 4} placeholders each), "
        f"{min(lengths)}-{max(lengths)} tokens per sample, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{datetime.date.today().isoformat()}"
    )
    print()
    print("| what | median ms per batch | overhead |")
    print("|---|---:|---:|")
    for name, ms in results:
        overhead = "" if ms is base else f"{(ms - base) / base * 100:+.2f}%"
        if name.startswith("the guard's own"):
            overhead = f"{ms / base * 100:.2f}% of the collator"
        print(f"| {name} | {ms:.1f} | {overhead} |")


if __name__ == "__main__":
    main()
