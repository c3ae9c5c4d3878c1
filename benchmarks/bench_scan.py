"""Scan throughput (issue 3): vlmcheck scan vs the real processor loop vs bare tokenization.

    python benchmarks/bench_scan.py                  # 20,000 samples, workers 1 and 2, 500 processor samples
    python benchmarks/bench_scan.py --samples 50000 --workers 1,2 --processor-samples 1000
    python benchmarks/bench_scan.py --profile        # cProfile of one workers=1 scan, top functions

Builds (once, cached under benchmarks/out/) a LLaMA-Factory ShareGPT JSONL dataset whose images are
real JPEG/PNG files on disk, then measures, each phase in its own subprocess so that peak RSS values
do not mix:

1. ``vlmcheck.scan`` (workers 1 and 2, warm page cache; workers 1 again with the image files evicted
   from the page cache), with ``output=`` records;
2. the processor loop the frameworks' length filters run (EasyR1/verl ``filter_overlong_prompts``,
   LLaMA-Factory's length scripts): PIL-load each image, ``processor.apply_chat_template(...,
   tokenize=False)``, ``processor(text=[...], images=[...])``, ``len(input_ids)``, on a random subset;
   its per-sample and per-image counts are asserted identical to vlmcheck's records;
3. the floor: ``tokenizers.Tokenizer.encode_batch`` of the same rendered texts vlmcheck tokenizes
   (rendered beforehand; only tokenization is timed).

Needs the test extras (transformers) for phase 2; no network. Results: printed, and written to
benchmarks/out/results.json and benchmarks/out/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
DATA_VERSION = 1  # bump when the generator changes, to rebuild cached datasets

# -- dataset ------------------------------------------------------------------------------------

# (share, kind): what VLM fine-tuning data looks like, by where its images come from.
IMAGE_KINDS = [
    (0.34, "photo"),       # COCO / web photos: long side 480-1024, 4:3, 3:2, 16:9, 1:1, portrait
    (0.18, "camera"),      # phone / camera originals: long side 1500-4000, some EXIF-rotated
    (0.14, "screen"),      # screenshots, UI, charts (PNG): 800x600 .. 2560x1440
    (0.08, "document"),    # scanned pages, receipts: A4-ish portrait, tall receipts
    (0.14, "small"),       # crops, icons, thumbnails: 64-400 px
    (0.07, "random"),      # anything 64..4000 px, aspect 1/4..4
    (0.05, "extreme"),     # banners, strips: aspect 8..60
]

WORDS = (
    "a the of and in on with to at is are was were this that these those it its there here which what "
    "who where when how why one two three four five several many few some all each both other another "
    "man woman person people child children boy girl dog cat horse bird cow sheep elephant giraffe zebra "
    "car bus truck train bicycle motorcycle airplane boat street road sidewalk building house window door "
    "table chair bed sofa kitchen room wall floor ceiling lamp plate bowl cup glass bottle knife fork spoon "
    "pizza sandwich cake banana apple orange broccoli carrot food shirt jacket hat shoes bag umbrella phone "
    "laptop screen keyboard book paper sign text label chart graph bar line axis value table column row "
    "total price receipt store menu number date time year month percent increase decrease left right top "
    "bottom middle center front behind next near far large small big little tall short long wide narrow "
    "red blue green yellow white black brown gray orange pink purple bright dark colorful sitting standing "
    "walking running holding looking wearing riding playing eating drinking reading writing showing "
    "appears shows contains depicts indicates suggests because while during after before above below "
    "between around through across under over into onto outside inside background foreground image photo "
    "picture scene view close distance sky cloud tree grass water snow sun light shadow reflection"
).split()
CJK = "图片 中 一个 人 正在 桌子 上 有 两只 猫 和 狗 街道 汽车 红色 的 建筑 天空 图表 显示 数据 增长 价格 总计 文字 说明".split()
QUESTIONS = [
    "What is shown in this image?", "Describe the image in detail.", "How many people are in the picture?",
    "What color is the car on the left?", "What is the total amount on this receipt?",
    "Which bar in the chart is the tallest?", "Read the text in the image.", "Is it day or night?",
    "What is the person holding?", "Summarize the document.", "What changed between these images?",
    "Compare the two pictures.", "Write a caption for this photo.", "Where was this photo taken?",
]


def _sentence(rng: random.Random, lo: int, hi: int, cjk: bool) -> str:
    if cjk:
        return "".join(rng.choice(CJK) for _ in range(rng.randint(lo, hi))) + "。"
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words) + 1), str(rng.choice([2, 3, 12, 45, 1999, 2024, 3.5, 87.2])))
    return " ".join(words).capitalize() + rng.choice(".....?!")


def _paragraph(rng: random.Random, sentences: int, cjk: bool = False) -> str:
    return " ".join(_sentence(rng, 5, 22, cjk) for _ in range(sentences))


def _answer(rng: random.Random, cjk: bool) -> str:
    r = rng.random()
    if r < 0.3:  # short VQA answers
        return _sentence(rng, 1, 8, cjk)
    if r < 0.75:  # a few sentences
        return _paragraph(rng, rng.randint(1, 5), cjk)
    return _paragraph(rng, rng.randint(6, 25), cjk)  # detailed descriptions, reasoning traces


def _prompt(rng: random.Random, cjk: bool) -> str:
    r = rng.random()
    if r < 0.6:
        return rng.choice(QUESTIONS)
    if r < 0.9:
        return _paragraph(rng, rng.randint(1, 3), cjk) + " " + rng.choice(QUESTIONS)
    return _paragraph(rng, rng.randint(5, 15), cjk) + " " + rng.choice(QUESTIONS)  # long instructions


def _image_spec(rng: random.Random) -> tuple[str, int, int, str, int]:
    """(kind, width, height, format, EXIF orientation) of one pool image."""
    kind = rng.choices([k for _, k in IMAGE_KINDS], [w for w, _ in IMAGE_KINDS])[0]
    fmt, orientation = "JPEG", 1
    if kind == "photo":
        long_side = rng.choice([480, 500, 512, 612, 640, 640, 640, 800, 1024])
        aspect = rng.choice([4 / 3, 4 / 3, 3 / 2, 16 / 9, 1.0, 5 / 4])
    elif kind == "camera":
        long_side = rng.choice([1536, 2048, 3024, 3264, 4000, 4000])
        aspect = rng.choice([4 / 3, 4 / 3, 16 / 9, 3 / 2])
        orientation = 6 if rng.random() < 0.3 else 1  # phone held upright: stored landscape, shown portrait
    elif kind == "screen":
        w, h = rng.choice([(800, 600), (1280, 720), (1366, 768), (1920, 1080), (2560, 1440), (1170, 2532)])
        return kind, w, h, "PNG", 1
    elif kind == "document":
        w, h = rng.choice([(1240, 1754), (2480, 3508), (850, 1100), (480, 1200), (576, 2400)])
        return kind, w, h, "JPEG", 1
    elif kind == "small":
        long_side = rng.randint(64, 400)
        aspect = rng.uniform(1.0, 2.0)
        fmt = rng.choice(["JPEG", "PNG"])
    elif kind == "random":
        long_side = rng.randint(64, 4000)
        aspect = rng.uniform(1.0, 4.0)
    else:
        long_side = rng.randint(1024, 4000)
        aspect = rng.uniform(8.0, 60.0)
        fmt = "PNG"
    short = max(64 if kind != "extreme" else 32, round(long_side / aspect))
    w, h = (long_side, short) if rng.random() < 0.75 else (short, long_side)
    return kind, w, h, fmt, orientation


def _write_image(path: Path, spec: tuple[str, int, int, str, int], rng: random.Random) -> None:
    from PIL import Image, ImageDraw

    kind, w, h, fmt, orientation = spec
    if kind in ("screen", "document", "extreme"):
        # flat background, boxes and "text" lines: compresses like real UI and scans
        im = Image.new("RGB", (w, h), tuple(rng.randint(200, 255) for _ in range(3)))
        draw = ImageDraw.Draw(im)
        for _ in range(rng.randint(5, 40)):
            x0, y0 = rng.randrange(w), rng.randrange(h)
            x1, y1 = min(w, x0 + rng.randint(8, max(9, w // 3))), min(h, y0 + rng.randint(4, max(5, h // 8)))
            draw.rectangle((x0, y0, x1, y1), fill=tuple(rng.randrange(256) for _ in range(3)))
    else:
        # photo-like: smooth colour fields (a small random image upsampled) plus sensor-like noise
        bw, bh = max(2, w // rng.randint(40, 120)), max(2, h // rng.randint(40, 120))
        base = Image.frombytes("RGB", (bw, bh), rng.randbytes(bw * bh * 3))
        im = base.resize((w, h), Image.Resampling.BICUBIC)
        noise = Image.effect_noise((w, h), rng.uniform(10, 40)).convert("RGB")
        im = Image.blend(im, noise, 0.12)
    kwargs: dict[str, Any] = {}
    if fmt == "JPEG":
        kwargs = {"quality": rng.choice([75, 85, 90, 95]), "progressive": rng.random() < 0.2}
        if orientation != 1:
            exif = Image.Exif()
            exif[0x0112] = orientation
            kwargs["exif"] = exif.tobytes()
    im.save(path, fmt, **kwargs)


def _sample(i: int, rng: random.Random, pool: list[str]) -> dict[str, Any]:
    r = rng.random()
    n_images = 0 if r < 0.05 else 1 if r < 0.75 else 2 if r < 0.93 else rng.randint(3, 5)
    cjk = rng.random() < 0.1
    turns = 1 if rng.random() < 0.75 else rng.randint(2, 4)
    images = [rng.choice(pool) for _ in range(n_images)]
    # LLaMA-Factory puts the tags where the user wrote them: mostly all up front in the first turn,
    # sometimes one image per turn.
    per_turn = [0] * turns
    for k in range(n_images):
        per_turn[k % turns if rng.random() < 0.3 else 0] += 1
    messages = []
    for t in range(turns):
        messages.append({"role": "user", "content": "<image>" * per_turn[t] + _prompt(rng, cjk)})
        messages.append({"role": "assistant", "content": _answer(rng, cjk)})
    row: dict[str, Any] = {"id": f"bench-{i:06d}", "messages": messages, "images": images}
    if rng.random() < 0.1:
        row["system"] = _paragraph(rng, rng.randint(1, 3))
    return row


def build_dataset(samples: int, n_images: int, seed: int) -> Path:
    """benchmarks/out/data-<samples>-<images>-<seed>/train.jsonl, built once."""
    folder = OUT / f"data-v{DATA_VERSION}-{samples}-{n_images}-{seed}"
    dataset = folder / "train.jsonl"
    if dataset.is_file():
        return dataset
    started = time.perf_counter()
    rng = random.Random(seed)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    pool = []
    for k in range(n_images):
        spec = _image_spec(rng)
        kind, w, h, fmt, orientation = spec
        name = f"{kind}_{k:04d}_{w}x{h}{'_exif6' if orientation != 1 else ''}.{'jpg' if fmt == 'JPEG' else 'png'}"
        _write_image(images / name, spec, random.Random(rng.random()))
        pool.append(f"images/{name}")
    tmp = dataset.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fp:
        for i in range(samples):
            fp.write(json.dumps(_sample(i, rng, pool), ensure_ascii=False) + "\n")
    os.replace(tmp, dataset)
    print(f"built {dataset} ({samples:,} samples, {n_images} images) in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)
    return dataset


def dataset_stats(dataset: Path) -> dict[str, Any]:
    from PIL import Image

    folder = dataset.parent / "images"
    files = sorted(folder.iterdir())
    sizes, pixels = [], []
    for f in files:
        with Image.open(f) as im:
            pixels.append(im.size[0] * im.size[1])
            sizes.append(max(im.size))
    counts = {0: 0, 1: 0, 2: 0, 3: 0}
    refs = 0
    with open(dataset, encoding="utf-8") as fp:
        for line in fp:
            n = len(json.loads(line)["images"])
            refs += n
            counts[min(n, 3)] += 1
    return {
        "image_files": len(files),
        "image_bytes": sum(f.stat().st_size for f in files),
        "image_long_side": [min(sizes), max(sizes)],
        "image_megapixels_median": round(sorted(pixels)[len(pixels) // 2] / 1e6, 2),
        "image_refs": refs,
        "samples_by_images": {"0": counts[0], "1": counts[1], "2": counts[2], "3+": counts[3]},
        "dataset_bytes": dataset.stat().st_size,
    }


# -- phases (each runs in its own process) -------------------------------------------------------

def _peak_rss_mib() -> dict[str, float]:
    # ru_maxrss is KiB on Linux; RUSAGE_CHILDREN is the largest waited-for child (the pool workers).
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"peak_rss_mib": round(own.ru_maxrss / 1024), "peak_rss_worker_mib": round(children.ru_maxrss / 1024),
            # CPU seconds of the whole phase process (and its workers), including imports and setup
            "cpu_s": round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 1)}


def _checkpoint() -> Path:
    from vlmcheck.demo.checkpoints import qwen_checkpoint

    return qwen_checkpoint("qwen2_vl")


def _evict(dataset: Path) -> None:
    """Drop the image files and the dataset from the page cache (POSIX_FADV_DONTNEED, no root)."""
    for f in [dataset, *sorted((dataset.parent / "images").iterdir())]:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def phase_scan(args: argparse.Namespace) -> dict[str, Any]:
    import vlmcheck

    dataset = Path(args.dataset)
    checkpoint = _checkpoint()
    if args.cold:
        _evict(dataset)
    started = time.perf_counter()
    report = vlmcheck.scan(dataset, model=checkpoint, max_length=args.max_length, workers=args.workers,
                           output=args.output)
    wall = time.perf_counter() - started
    s = report.summary
    # samples/s over the scan loop (report.summary["seconds"]: reading, probing, rendering,
    # tokenizing, findings; with workers > 1 it includes starting the pool); wall_s adds loading
    # the model (tokenizer.json, configs), which a scan pays once.
    return {"wall_s": round(wall, 3), "loop_s": s["seconds"], "samples": s["samples"],
            "samples_per_s": round(s["samples"] / s["seconds"], 1),
            "samples_per_s_wall": round(s["samples"] / wall, 1),
            "counts": s["counts"], "tokens": s["tokens"], "images": s["images"], **_peak_rss_mib()}


def phase_profile(args: argparse.Namespace) -> dict[str, Any]:
    import cProfile
    import io
    import pstats

    import vlmcheck

    checkpoint = _checkpoint()
    profiler = cProfile.Profile()
    profiler.enable()
    vlmcheck.scan(Path(args.dataset), model=checkpoint, max_length=args.max_length, workers=1,
                  limit=args.profile_samples)
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(30)
    print(text.getvalue(), file=sys.stderr)
    return {}


def _typed_messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    """ShareGPT row -> the typed messages a processor's chat template takes (what LLaMA-Factory's
    mm_plugin and EasyR1's dataset do with ``<image>`` tags), independent of vlmcheck's readers."""
    messages = []
    if row.get("system"):
        messages.append({"role": "system", "content": [{"type": "text", "text": row["system"]}]})
    for m in row["messages"]:
        parts: list[dict[str, Any]] = []
        for k, piece in enumerate(m["content"].split("<image>")):
            if k:
                parts.append({"type": "image"})
            if piece:
                parts.append({"type": "text", "text": piece})
        messages.append({"role": m["role"], "content": parts})
    return messages


def _read_rows(dataset: Path, indices: set[int] | None = None) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    with open(dataset, encoding="utf-8") as fp:
        for i, line in enumerate(fp):
            if indices is None or i in indices:
                rows.append((i, json.loads(line)))
    return rows


def phase_processor(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "tests"))
    from PIL import Image, ImageOps

    from realparts import qwen_processor  # tests/realparts.py: transformers' own Qwen2VLProcessor

    dataset = Path(args.dataset)
    total = sum(1 for _ in open(dataset, "rb"))
    indices = set(random.Random(args.seed + 1).sample(range(total), min(args.processor_samples, total)))
    rows = _read_rows(dataset, indices)
    processor = qwen_processor("qwen2_vl")
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    results = {}
    started = time.perf_counter()
    for i, row in rows:
        images = []
        for rel in row["images"]:
            # transformers.image_utils.load_image: open, apply EXIF orientation, convert to RGB
            with Image.open(dataset.parent / rel) as im:
                images.append(ImageOps.exif_transpose(im).convert("RGB"))
        text = processor.apply_chat_template(_typed_messages(row), tokenize=False)
        out = processor(text=[text], images=images or None)
        ids = out["input_ids"][0]
        runs, prev = [], None
        for t in ids:
            if t == image_pad:
                if prev != image_pad:
                    runs.append(0)
                runs[-1] += 1
            prev = t
        results[i] = {"tokens": len(ids), "image_tokens": runs}
    wall = time.perf_counter() - started
    # agreement with vlmcheck's --output records
    records = {}
    with open(args.output, encoding="utf-8") as fp:
        for line in fp:
            rec = json.loads(line)
            if rec["index"] in results:
                records[rec["index"]] = rec
    same = sum(records[i]["tokens"] == r["tokens"] and records[i]["image_tokens"] == r["image_tokens"]
               for i, r in results.items())
    images_same = sum(a == b for i, r in results.items()
                      for a, b in zip(records[i]["image_tokens"], r["image_tokens"], strict=False))
    bad = [(i, r, records[i]) for i, r in results.items()
           if (records[i]["tokens"], records[i]["image_tokens"]) != (r["tokens"], r["image_tokens"])][:5]
    return {"wall_s": round(wall, 3), "samples": len(rows), "samples_per_s": round(len(rows) / wall, 2),
            "agree_samples": same, "agree_images": images_same,
            "images": sum(len(r["image_tokens"]) for r in results.values()),
            "tokens_total": sum(r["tokens"] for r in results.values()), "mismatches": bad, **_peak_rss_mib()}


def phase_floor(args: argparse.Namespace) -> dict[str, Any]:
    from tokenizers import Tokenizer

    from vlmcheck.chat import render_chat

    dataset = Path(args.dataset)
    checkpoint = _checkpoint()
    template = json.loads((checkpoint / "chat_template.json").read_text())["chat_template"]
    # untimed: the same texts vlmcheck tokenizes (one <|image_pad|> per image; vlmcheck expands the
    # count arithmetically, as the processor would in the text)
    texts = [render_chat(template, _typed_messages(row)) for _, row in _read_rows(dataset)]
    tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    tokenizer.encode_batch(texts[:64])  # warm up the thread pool
    timings: dict[str, float] = {}
    for label, size, repeats in (("all", len(texts), args.repeats), ("chunks64", 64, 1)):  # best of
        for _ in range(repeats):
            started = time.perf_counter()
            n = 0
            for k in range(0, len(texts), size):
                n += sum(len(e.ids) for e in tokenizer.encode_batch(texts[k:k + size], add_special_tokens=True))
            timings[label] = min(timings.get(label, 1e9), time.perf_counter() - started)
    # cross-check: collapsed lengths plus the image expansions equal vlmcheck's totals
    expected = 0
    with open(args.output, encoding="utf-8") as fp:
        for line in fp:
            rec = json.loads(line)
            expected += rec["tokens"] - sum(c - 1 for c in rec["image_tokens"])
    best = min(timings.values())
    return {"wall_s": round(best, 3), "samples": len(texts), "samples_per_s": round(len(texts) / best, 1),
            "wall_all_s": round(timings["all"], 3), "wall_chunks64_s": round(timings["chunks64"], 3),
            "collapsed_tokens": n, "collapsed_tokens_match_scan": n == expected, **_peak_rss_mib()}


PHASES = {"scan": phase_scan, "processor": phase_processor, "floor": phase_floor, "profile": phase_profile}


def _run_phase(name: str, args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--dataset", str(args.dataset),
           "--repeats", str(args.repeats),
           "--max-length", str(args.max_length), "--seed", str(args.seed),
           "--processor-samples", str(args.processor_samples), "--profile-samples", str(args.profile_samples)]
    for key, value in extra.items():
        if value is True:
            cmd.append(f"--{key.replace('_', '-')}")
        elif value is not None and value is not False:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    load = round(os.getloadavg()[0], 2)  # other jobs on the machine (1-minute load average)
    print(f"  {name} {extra or ''} (load average {load}) ...", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["loadavg_start"] = load
    return result


# -- report -------------------------------------------------------------------------------------

def _machine() -> dict[str, Any]:
    import tokenizers
    import transformers

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split()[1]
    return {"date": date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(),
            "ram_gib": round(int(mem) / 2**20, 1), "python": platform.python_version(),
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "platform": platform.platform()}


def _markdown(res: dict[str, Any]) -> str:
    d, m = res["dataset"], res["machine"]
    floor, proc = res["floor"], res["processor"]
    lines = [
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, {m['platform']}; {m['date']}.",
        f"Python {m['python']}, transformers {m['transformers']}, tokenizers {m['tokenizers']}.",
        "",
        f"Dataset: {d['samples']:,} samples ({d['samples_by_images']}), {d['image_refs']:,} image references "
        f"to {d['image_files']} real files ({d['image_bytes'] / 2**20:.0f} MiB, long side "
        f"{d['image_long_side'][0]}-{d['image_long_side'][1]} px, median {d['image_megapixels_median']} MP); "
        f"max_length={res['args']['max_length']}.",
        "",
        "| run | samples | time (s) | samples/s | peak RSS main / worker (MiB) | CPU s | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in res["scan"].items():
        lines.append(f"| vlmcheck scan, {label} | {r['samples']:,} | {r['loop_s']:.2f} ({r['wall_s']:.2f} with "
                     f"model load) | {r['samples_per_s']:,.0f} ({r['samples_per_s_wall']:,.0f}) | "
                     f"{r['peak_rss_mib']} / {r['peak_rss_worker_mib'] or '-'} | {r['cpu_s']} | {r['loadavg_start']} |")
    lines.append(f"| processor loop (PIL + apply_chat_template + processor), 1 process | {proc['samples']:,} | "
                 f"{proc['wall_s']:.1f} | {proc['samples_per_s']:,.1f} | {proc['peak_rss_mib']} / - | {proc['cpu_s']} | "
                 f"{proc['loadavg_start']} |")
    lines.append(f"| floor: encode_batch of the rendered texts, all at once | {floor['samples']:,} | "
                 f"{floor['wall_all_s']:.2f} | {floor['samples'] / floor['wall_all_s']:,.0f} | "
                 f"{floor['peak_rss_mib']} / - | {floor['cpu_s']} | {floor['loadavg_start']} |")
    lines.append(f"| floor: encode_batch in batches of 64 (scan's chunk) | {floor['samples']:,} | "
                 f"{floor['wall_chunks64_s']:.2f} | {floor['samples'] / floor['wall_chunks64_s']:,.0f} | | | |")
    lines += ["", "Ratios (samples/s):", ""]
    for label, ratio in res["ratios"].items():
        lines.append(f"- {label}: {ratio}")
    lines += [
        "",
        f"Agreement: {proc['agree_samples']}/{proc['samples']} samples and {proc['agree_images']}/{proc['images']} "
        "images have identical token counts (processor `input_ids` length and `<|image_pad|>` runs vs "
        "vlmcheck `--output` records).",
        f"Floor cross-check: collapsed token counts + image expansions equal scan totals: "
        f"{floor['collapsed_tokens_match_scan']}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--samples", type=int, default=20_000)
    p.add_argument("--images", type=int, default=600, help="distinct image files in the pool")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts to scan with")
    p.add_argument("--processor-samples", type=int, default=500)
    p.add_argument("--max-length", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2, help="best of N for the warm scans and the floor")
    p.add_argument("--no-cold", action="store_true", help="skip the cold-page-cache scan")
    p.add_argument("--profile", action="store_true", help="only cProfile one workers=1 scan")
    p.add_argument("--profile-samples", type=int, default=5000)
    # internal: one phase in this process
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--dataset", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    p.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.phase:
        if args.phase == "scan":
            args.workers = int(args.workers)
        print(json.dumps(PHASES[args.phase](args)))
        return 0

    started = time.perf_counter()
    args.dataset = build_dataset(args.samples, args.images, args.seed)
    if args.profile:
        _run_phase("profile", args)
        return 0
    records = OUT / "scan_records.jsonl"
    workers = [int(w) for w in args.workers.split(",")]
    res: dict[str, Any] = {"args": vars(args) | {"dataset": str(args.dataset)}, "machine": _machine(),
                           "dataset": {"samples": args.samples, **dataset_stats(args.dataset)}, "scan": {}}
    print("measuring:", file=sys.stderr)
    for w in workers:
        out = records if w == workers[0] else OUT / f"scan_records_w{w}.jsonl"
        runs = [_run_phase("scan", args, workers=w, output=out) for _ in range(args.repeats)]
        res["scan"][f"workers={w}"] = max(runs, key=lambda r: r["samples_per_s"])
    if not args.no_cold:
        res["scan"][f"workers={workers[0]}, cold page cache"] = _run_phase(
            "scan", args, workers=workers[0], output=OUT / "scan_records_cold.jsonl", cold=True)
    res["processor"] = _run_phase("processor", args, output=records)
    res["floor"] = _run_phase("floor", args, output=records)

    proc, floor = res["processor"], res["floor"]
    res["ratios"] = {}
    for label, r in res["scan"].items():
        res["ratios"][f"vlmcheck ({label}) / processor loop"] = f"{r['samples_per_s'] / proc['samples_per_s']:,.0f}x"
    for label, r in res["scan"].items():
        res["ratios"][f"floor / vlmcheck ({label})"] = f"{floor['samples_per_s'] / r['samples_per_s']:.2f}x"
    res["total_s"] = round(time.perf_counter() - started, 1)
    OUT.mkdir(exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    md = _markdown(res)
    (OUT / "results.md").write_text(md + "\n")
    print(md)
    print(f"\n(benchmark ran {res['total_s']:.0f} s; results in {OUT})", file=sys.stderr)
    if proc["agree_samples"] != proc["samples"] or proc["agree_images"] != proc["images"]:
        print(f"COUNTS DIFFER: {proc['mismatches']}", file=sys.stderr)
        return 1
    if not floor["collapsed_tokens_match_scan"]:
        print("floor texts do not add up to the scan's totals", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
