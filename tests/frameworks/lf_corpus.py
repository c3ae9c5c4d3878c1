"""A seeded corpus of LLaMA-Factory datasets and training configs, for the proof against LLaMA-Factory's own pipeline.

``write_corpus(root, checkpoints, seed=..., rows=...)`` writes, under ``root``:

- ``images/``: every size class the resize rules care about: ordinary photos, sides under 28 px, ratios over 200
  (both ways), multi-megapixel, tiny (under ``image_min_pixels``), an EXIF-rotated JPEG (orientation 6, stored
  landscape), grey and RGBA PNGs;
- ``data/dataset_info.json`` with five datasets: ``sg`` (sharegpt, LLaMA-Factory's default tags, images and a
  system column), ``chat`` (sharegpt with custom ``columns`` and ``tags`` and no ``system_tag``, so a leading
  system turn drops the row), ``alp`` (alpaca with history and system), ``oa`` (openai roles), and ``bad``
  (rows with one ``<image>`` too many or too few, a missing image file: LLaMA-Factory raises on them);
- rows of every shape the template cares about: one to three pairs, zero to three images placed anywhere in the
  user turns, empty / missing / leading-turn system prompts, answers starting with newlines, answers with their
  own ``<think>`` block, unicode, and rows LLaMA-Factory drops (odd turn counts, bad roles);
- ``configs/*.yaml``: the same data under several ``cutoff_len`` and ``image_max_pixels`` values, including both
  unset (LLaMA-Factory's defaults), ``media_dir``, ``mask_history``, ``train_on_prompt``, ``default_system``,
  ``max_samples``, and the ``qwen3_vl`` reasoning template with and without ``enable_thinking``.

Nothing here knows what LLaMA-Factory or vlmcheck will make of a row: the test compares the two.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from PIL import Image

# (width, height) per size class
SIZES: dict[str, list[tuple[int, int]]] = {
    "photo": [(640, 480), (1024, 768), (333, 517), (1280, 720), (801, 1199), (96, 96)],
    "under_28": [(20, 600), (640, 12), (27, 27), (3, 300)],
    "ratio_over_200": [(3000, 10), (12, 2600), (6030, 29), (4200, 20)],
    "megapixel": [(4000, 3000), (2480, 3508), (5000, 1200)],
    "tiny": [(5, 5), (16, 9), (30, 30)],
}
_WORDS = ("the cat sat on a mat while two dogs ran past the old red barn near the river; what colour is it? "
          "count every object, then answer briefly. ünïcödé 漢字 テスト émoji 🙂 x=3.14 {json: true}").split()


def _write_images(folder: Path, rng: random.Random) -> dict[str, list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    names: dict[str, list[str]] = {}
    for cls, sizes in SIZES.items():
        for i, (w, h) in enumerate(sizes):
            name = f"{cls}_{i}_{w}x{h}.png"
            Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3))).save(folder / name)  # type: ignore[arg-type]
            names.setdefault(cls, []).append(name)
    # stored 900x300, shown 300x900: LLaMA-Factory opens it without EXIF rotation
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (900, 300), (200, 30, 30)).save(folder / "exif_rot6.jpg", exif=exif.tobytes(), quality=60)
    Image.new("L", (700, 500), 128).save(folder / "grey.png")
    Image.new("RGBA", (500, 700), (1, 2, 3, 100)).save(folder / "rgba.png")
    names["other"] = ["exif_rot6.jpg", "grey.png", "rgba.png"]
    return names


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))


def _answer(rng: random.Random) -> str:
    text = _text(rng, 1, 60 if rng.random() < 0.8 else 400)
    roll = rng.random()
    if roll < 0.15:
        text = "\n" + text  # per-element tokenization splits this "\n" differently
    elif roll < 0.2:
        text = "\n\n" + text + "\n"
    elif roll < 0.3:
        text = f"<think>\n{_text(rng, 1, 20)}\n</think>\n\n{text}"
    elif roll < 0.35:
        text = f"<answer>{text}</answer>"  # a stop word some templates add as a special token (glm4v)
    return text


def _conversation(rng: random.Random, images: list[str]) -> list[tuple[str, str]]:
    """(role, content) pairs: user/assistant alternating, the images' <image> tags spread over the user turns."""
    pairs = rng.choice((1, 1, 1, 2, 2, 3))
    users = [_text(rng, 1, 30 if rng.random() < 0.8 else 300) for _ in range(pairs)]
    for _ in images:
        k = rng.randrange(pairs)
        where = rng.choice(("start", "end", "middle"))
        users[k] = {"start": "<image>" + users[k], "end": users[k] + "<image>",
                    "middle": users[k][: len(users[k]) // 2] + "\n<image>\n" + users[k][len(users[k]) // 2:]}[where]
    out: list[tuple[str, str]] = []
    for u in users:
        out += [("user", u), ("assistant", _answer(rng))]
    return out


# how often each class is drawn: multi-megapixel images are few, they dominate the oracle's run time
_WEIGHTS = {"photo": 5, "under_28": 2, "ratio_over_200": 2, "megapixel": 1, "tiny": 2, "other": 2}


def _pick_images(rng: random.Random, names: dict[str, list[str]]) -> list[str]:
    n = rng.choice((0, 1, 1, 1, 1, 2, 2, 3))
    classes = list(names)
    weights = [_WEIGHTS[c] for c in classes]
    return [rng.choice(names[rng.choices(classes, weights)[0]]) for _ in range(n)]


def _sharegpt_rows(rng: random.Random, names: dict[str, list[str]], n: int, prefix: str) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        images = _pick_images(rng, names)
        conv = [{"from": {"user": "human", "assistant": "gpt"}[r], "value": c} for r, c in _conversation(rng, images)]
        row: dict[str, Any] = {"id": f"{prefix}{i}", "conversations": conv, "images": [prefix + p for p in images]}
        roll = rng.random()
        if roll < 0.15:
            row["conversations"] = [{"from": "system", "value": _text(rng, 1, 20)}, *conv]
        elif roll < 0.25:
            row["conversations"] = [{"from": "system", "value": ""}, *conv]  # empty: the template's default
        elif roll < 0.4:
            row["system"] = _text(rng, 1, 15)
        elif roll < 0.5:
            row["system"] = ""
        # else: no system key in this row (others have it: the loader fills None)
        roll = rng.random()
        if roll < 0.04:
            row["conversations"] = row["conversations"][:-1]  # odd count: dropped
        elif roll < 0.07:
            row["conversations"] = [row["conversations"][-1], *row["conversations"][:-1]]  # bad role order
        rows.append(row)
    return rows


def _chat_rows(rng: random.Random, names: dict[str, list[str]], n: int, prefix: str) -> list[dict[str, Any]]:
    rows = []
    for _ in range(n):
        images = _pick_images(rng, names)
        turns = [{"speaker": {"user": "q", "assistant": "a"}[r], "text": c} for r, c in _conversation(rng, images)]
        if rng.random() < 0.1:  # a leading system turn, but this dataset's tags name no system_tag: dropped
            turns = [{"speaker": "sys", "text": _text(rng, 1, 10)}, *turns]
        rows.append({"dialog": turns, "pics": [prefix + p for p in images]})
    return rows


def _alpaca_rows(rng: random.Random, names: dict[str, list[str]], n: int, prefix: str) -> list[dict[str, Any]]:
    rows = []
    for _ in range(n):
        images = _pick_images(rng, names)
        conv = _conversation(rng, images)
        history = [[conv[k][1], conv[k + 1][1]] for k in range(0, len(conv) - 2, 2)]
        row: dict[str, Any] = {"instruction": conv[-2][1], "input": _text(rng, 1, 8) if rng.random() < 0.3 else "",
                               "output": conv[-1][1], "history": history, "images": [prefix + p for p in images],
                               "system": rng.choice(("", _text(rng, 1, 12)))}
        rows.append(row)
    return rows


def _openai_rows(rng: random.Random, names: dict[str, list[str]], n: int, prefix: str) -> list[dict[str, Any]]:
    rows = []
    for _ in range(n):
        images = _pick_images(rng, names)
        messages = [{"role": r, "content": c} for r, c in _conversation(rng, images)]
        if rng.random() < 0.3:
            messages = [{"role": "system", "content": rng.choice(("", _text(rng, 1, 12)))}, *messages]
        rows.append({"messages": messages, "images": [prefix + p for p in images]})
    return rows


def _preference_rows(rng: random.Random, names: dict[str, list[str]], n: int, prefix: str, formatting: str
                     ) -> list[dict[str, Any]]:
    """Ranking rows (``ranking: true``): a prompt of one to three user turns with the history's answers, a chosen and
    a rejected answer (either may be the longer), in LLaMA-Factory's three layouts; among them rows its converter
    or pairwise processor drops (a prompt ending with an answer, answers that are not turn objects, a missing
    rejected answer) and a chosen turn with the user's role, which it only warns about. (A column must hold one
    type throughout: datasets cannot load a file whose chosen answers are objects in some rows and strings in
    others.)"""
    rows = []
    roles = {"sharegpt": ("from", "value", "human", "gpt"), "openai": ("role", "content", "user", "assistant")}
    for i in range(n):
        images = _pick_images(rng, names)
        conv = _conversation(rng, images)
        prompt, chosen, rejected = conv[:-1], conv[-1][1], _answer(rng)
        paths = [prefix + p for p in images]
        if formatting == "alpaca":
            history = [[prompt[k][1], prompt[k + 1][1]] for k in range(0, len(prompt) - 1, 2)]
            row: dict[str, Any] = {"instruction": prompt[-1][1], "history": history, "chosen": chosen,
                                   "rejected": rejected, "images": paths, "system": rng.choice(("", _text(rng, 1, 9)))}
            if i % 9 == 4:
                row["rejected"] = None  # one answer: dropped
            rows.append(row)
            continue
        role, content, user, assistant = roles[formatting]
        turns = [{role: {"user": user, "assistant": assistant}[r], content: c} for r, c in prompt]
        if rng.random() < 0.25:
            turns = [{role: "system", content: rng.choice(("", _text(rng, 1, 12)))}, *turns]
        row = {"messages": turns, "chosen": {role: assistant, content: chosen},
               "rejected": {role: assistant, content: rejected}, "images": paths}
        if i % 9 == 2:
            row["messages"] = turns + [{role: assistant, content: _answer(rng)}]  # even prompt: dropped
        elif i % 9 == 5:
            row["rejected"] = None  # no turn object: read as one answer, dropped
        elif i % 9 == 7:
            row["chosen"] = {role: user, content: chosen}  # warned, kept as a user turn
        rows.append(row)
    return rows


def _bad_rows(rng: random.Random, names: dict[str, list[str]], n: int) -> list[dict[str, Any]]:
    """Rows on which LLaMA-Factory raises (the whole run stops), among ordinary ones."""
    rows = []
    for i in range(n):
        images = _pick_images(rng, names)
        conv = [{"from": {"user": "human", "assistant": "gpt"}[r], "value": c} for r, c in _conversation(rng, images)]
        paths = ["images/" + p for p in images]
        if i % 4 == 1:
            conv[0]["value"] += "<image>"  # one placeholder more than images
        elif i % 4 == 2 and paths:
            paths[0] = "images/missing.png"  # no such file
        elif i % 4 == 3:
            paths.append("images/" + names["photo"][0])  # one image more than placeholders
        rows.append({"conversations": conv, "images": paths})
    return rows


def write_corpus(root: Path, checkpoints: dict[str, Path], *, seed: int = 0, rows: int = 40) -> list[Path]:
    """Write images, datasets and configs under ``root``; return the config paths. ``checkpoints`` maps
    ``qwen2_vl`` / ``qwen3_vl`` to checkpoint folders; ``rows`` is the row count per dataset."""
    data = write_data(root, seed=seed, rows=rows)
    media = {"media_dir": str(data / "images")}
    configs: dict[str, dict[str, Any]] = {
        # LLaMA-Factory's defaults: cutoff_len 2048, image_max_pixels 768*768, image_min_pixels 32*32
        "defaults": {"model_name_or_path": str(checkpoints["qwen2_vl"]), "template": "qwen2_vl", "dataset": "sg,alp"},
        "tight": {"model_name_or_path": str(checkpoints["qwen2_vl"]), "template": "qwen2_vl", "dataset": "chat,oa",
                  "cutoff_len": 384, "image_max_pixels": 1_003_520, **media},
        "history": {"model_name_or_path": str(checkpoints["qwen2_vl"]), "template": "qwen2_vl",
                    "dataset": "sg,alp", "cutoff_len": 700, "image_max_pixels": 262_144, "image_min_pixels": 4096,
                    "mask_history": True},
        "prompt": {"model_name_or_path": str(checkpoints["qwen2_vl"]), "template": "qwen2_vl", "dataset": "alp,sg",
                   "cutoff_len": 256, "image_max_pixels": 50_176, "train_on_prompt": True,
                   "default_system": "Answer in one short sentence.", "max_samples": 12},
        "think": {"model_name_or_path": str(checkpoints["qwen3_vl"]), "template": "qwen3_vl", "dataset": "sg,oa",
                  "cutoff_len": 600, **media},
        "nothink": {"model_name_or_path": str(checkpoints["qwen3_vl"]), "template": "qwen3_vl", "dataset": "alp,sg",
                    "cutoff_len": 900, "image_max_pixels": 2_000_000, "enable_thinking": False,
                    "mask_history": True},
        "broken": {"model_name_or_path": str(checkpoints["qwen2_vl"]), "template": "qwen2_vl", "dataset": "bad",
                   "cutoff_len": 1024},
        "qwen3_plain": {"model_name_or_path": str(checkpoints["qwen3_vl"]), "template": "qwen3_vl_nothink",
                        "dataset": "chat,sg", **media},
        # packing: each sample cut as without it (cutoff_len - 1), then packed; neat_packing the same
        "packed": {"model_name_or_path": str(checkpoints["qwen2_vl"]), "template": "qwen2_vl", "dataset": "sg,alp",
                   "cutoff_len": 500, "packing": True},
        "neat": {"model_name_or_path": str(checkpoints["qwen2_vl"]), "template": "qwen2_vl", "dataset": "chat,oa",
                 "cutoff_len": 900, "neat_packing": True, "image_max_pixels": 262_144, **media},
        # which rows: num_samples draws (a name listed twice is drawn twice, kept once), eval_dataset prepared too,
        # max_samples after the draw, val_size (split before preprocessing: every row is prepared)
        "sampled": {"model_name_or_path": str(checkpoints["qwen2_vl"]), "template": "qwen2_vl",
                    "dataset": "sg_few,alp_many,sg_few", "eval_dataset": "chat", "seed": 7, "cutoff_len": 600,
                    **media},
        "evaluated": {"model_name_or_path": str(checkpoints["qwen2_vl"]), "template": "qwen2_vl",
                      "dataset": "alp_many", "eval_dataset": "sg_few,oa", "max_samples": 9, "cutoff_len": 450,
                      **media},
        "split": {"model_name_or_path": str(checkpoints["qwen2_vl"]), "template": "qwen2_vl", "dataset": "sg,oa",
                  "val_size": 0.25, "cutoff_len": 800, **media},
        # a folder of JSON Lines files: rows in os.listdir order, max_samples and a num_samples draw over them
        "folder": {"model_name_or_path": str(checkpoints["qwen2_vl"]), "template": "qwen2_vl",
                   "dataset": "sgdir,sgdir_few", "max_samples": 11, "cutoff_len": 700, "seed": 3},
    }
    return write_configs(root, data, configs)


def write_template_corpus(root: Path, template: str, checkpoint: Path, *, seed: int = 0, rows: int = 40,
                          cutoffs: tuple[int, int, int] = (384, 700, 1200),
                          extra: dict[str, dict[str, Any]] | None = None) -> list[Path]:
    """The same datasets under configs for one of LLaMA-Factory's templates on ``checkpoint``: its defaults (no
    ``cutoff_len``, no pixel budget), three ``cutoff_len`` values (``cutoffs``, small to large for the model's
    image sizes) with ``media_dir``, ``mask_history``, ``train_on_prompt`` + ``default_system`` + ``max_samples``,
    pixel budgets, and the dataset on which LLaMA-Factory raises; ``extra`` adds configs of its own."""
    data = write_data(root, seed=seed, rows=rows)
    model = {"model_name_or_path": str(checkpoint), "template": template}
    small, middle, large = cutoffs
    configs: dict[str, dict[str, Any]] = {
        f"{template}-defaults": {**model, "dataset": "sg,alp"},
        f"{template}-tight": {**model, "dataset": "chat,oa", "cutoff_len": small, "image_max_pixels": 1_003_520,
                              "media_dir": str(data / "images")},
        f"{template}-history": {**model, "dataset": "sg,alp", "cutoff_len": middle, "image_max_pixels": 262_144,
                                "image_min_pixels": 4096, "mask_history": True},
        f"{template}-prompt": {**model, "dataset": "alp,oa", "cutoff_len": large, "image_max_pixels": 50_176,
                               "train_on_prompt": True, "default_system": "Answer in one short sentence.",
                               "max_samples": 12, "media_dir": str(data / "images")},
        f"{template}-broken": {**model, "dataset": "bad", "cutoff_len": large},
    }
    for name, values in (extra or {}).items():
        configs[f"{template}-{name}"] = {**model, "media_dir": str(data / "images"), **values}
    return write_configs(root, data, configs)


def write_data(root: Path, *, seed: int = 0, rows: int = 40) -> Path:
    """Images, datasets and dataset_info.json under ``root/data`` (returned)."""
    rng = random.Random(seed)
    data = root / "data"
    names = _write_images(data / "images", rng)
    # sg and alp name images relative to dataset_dir ("images/..."); chat and oa name them bare, found in media_dir
    files = {
        "sg.json": _sharegpt_rows(rng, names, rows, "images/"),
        "chat.jsonl": _chat_rows(rng, names, rows, ""),
        "alp.json": _alpaca_rows(rng, names, rows, "images/"),
        "oa.json": _openai_rows(rng, names, rows, ""),
        "bad.json": _bad_rows(rng, names, 12),
        "sg_pref.json": _preference_rows(rng, names, rows, "images/", "sharegpt"),
        "alp_pref.json": _preference_rows(rng, names, rows, "images/", "alpaca"),
        "oa_pref.jsonl": _preference_rows(rng, names, rows, "", "openai"),
    }
    # a folder dataset: its files in os.listdir order (not sorted), as LLaMA-Factory lists them
    (data / "sgdir").mkdir(exist_ok=True)
    # (datasets loads each file as a table of its own: every file has the same columns, and each a row with images)
    sg = [{"conversations": r["conversations"], "images": r.get("images") or [], "system": r.get("system") or ""}
          for r in files["sg.json"]]
    sg = [r for r in sg if r["images"]] + [r for r in sg if not r["images"]]
    for k, name in enumerate(("part-c.jsonl", "part-a.jsonl", "part-b.jsonl", "part-d.jsonl")):
        chunk = sg[k::4]
        (data / "sgdir" / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chunk))
    for file, content in files.items():
        if file.endswith(".jsonl"):
            (data / file).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in content))
        else:
            (data / file).write_text(json.dumps(content, ensure_ascii=False, indent=1))
    info = {
        "sg": {"file_name": "sg.json", "formatting": "sharegpt",
               "columns": {"messages": "conversations", "images": "images", "system": "system"}},
        "chat": {"file_name": "chat.jsonl", "formatting": "sharegpt", "columns": {"messages": "dialog", "images": "pics"},
                 "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "q", "assistant_tag": "a"}},
        "alp": {"file_name": "alp.json", "columns": {"prompt": "instruction", "query": "input", "response": "output",
                                                     "history": "history", "system": "system", "images": "images"}},
        # dataset_info num_samples: fewer rows than the file (a seeded draw), and more (rows repeated)
        "sg_few": {"file_name": "sg.json", "formatting": "sharegpt", "num_samples": max(1, rows // 2),
                   "columns": {"messages": "conversations", "images": "images", "system": "system"}},
        "alp_many": {"file_name": "alp.json", "num_samples": rows + 5,
                     "columns": {"prompt": "instruction", "query": "input", "response": "output",
                                 "history": "history", "system": "system", "images": "images"}},
        "sgdir": {"file_name": "sgdir", "formatting": "sharegpt",
                  "columns": {"messages": "conversations", "images": "images", "system": "system"}},
        "sgdir_few": {"file_name": "sgdir", "formatting": "sharegpt", "num_samples": max(1, rows // 3),
                      "columns": {"messages": "conversations", "images": "images", "system": "system"}},
        "bad": {"file_name": "bad.json", "formatting": "sharegpt", "columns": {"messages": "conversations",
                                                                             "images": "images"}},
        "sg_pref": {"file_name": "sg_pref.json", "formatting": "sharegpt", "ranking": True,
                    "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected", "images": "images"}},
        "alp_pref": {"file_name": "alp_pref.json", "ranking": True,
                     "columns": {"prompt": "instruction", "history": "history", "chosen": "chosen",
                                 "rejected": "rejected", "system": "system", "images": "images"}},
        "oa_pref": {"file_name": "oa_pref.jsonl", "formatting": "openai", "ranking": True,
                    "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected",
                                "images": "images"},
                    "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                             "assistant_tag": "assistant", "system_tag": "system"}},
        "oa": {"file_name": "oa.json", "formatting": "openai", "columns": {"messages": "messages", "images": "images"},
               "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                        "system_tag": "system"}},
    }
    (data / "dataset_info.json").write_text(json.dumps(info, indent=1))
    return data


def write_configs(root: Path, data: Path, configs: dict[str, dict[str, Any]]) -> list[Path]:
    """One training YAML per entry of ``configs`` under ``root/configs`` (the paths, in order)."""
    import yaml

    base = {"stage": "sft", "do_train": True, "finetuning_type": "lora", "dataset_dir": str(data)}
    out = []
    (root / "configs").mkdir(exist_ok=True)
    for name, values in configs.items():
        path = root / "configs" / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**base, **values}, sort_keys=False))
        out.append(path)
    return out
