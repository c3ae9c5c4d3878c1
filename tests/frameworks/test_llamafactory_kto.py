"""`vlmcheck.check` on LLaMA-Factory's ``stage: kto``, proved per sample against its own feedback data path.

The oracle is LLaMA-Factory 0.9.5 in its own environment (llamafactory_oracle_runner.py, ``run_kto_config``): its
``get_dataset(stage="kto")`` runs on each whole config, ``datasets.map`` batching and sharding the rows as the
config's ``preprocessing_batch_size`` / ``preprocessing_num_workers`` say, and ``FeedbackDatasetProcessor`` makes
each row's target sequence and its KL sequence (the same prompt with the answer of the row before it in its map
batch, the batch's first row the last row's). Spies that only watch tell the rows apart (which row each output
row is, which rows a batch held, which answer its KL sequence borrowed, which row raised). For every row both must
agree on kept / dropped / raising, the KL partner, the kto tag, each sequence's untruncated length and labels, what
its own ``infer_seqlen`` cut keeps of it and of its labels, each image's features, the image tokens left in each
and so the crash verdict. A tiny random Qwen2-VL behind LLaMA-Factory's ``KTODataCollatorWithPadding`` and
``CustomKTOTrainer.concatenated_forward`` raises on the rows judged a crash (in the target forward or, for a cut
in the KL sequence only, in the KL forward) and runs the whole ones.

Corpus: KTO datasets in sharegpt and alpaca layouts (lf_corpus's conversations and images, a ``kto_tag`` column:
true, false, null (dropped: not a KTO example), a true tag on an empty answer), answers of very different lengths so
that a row's KL sequence is cut where its target is not and the other way round; and a sharegpt dataset with a row
the converter skips (an odd turn count) before a valid one: the valid row's KL answer is missing and LLaMA-Factory
raises (IndexError) while preparing the dataset.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from lf_corpus import _conversation, _pick_images, _text, _write_images, write_configs
from test_llamafactory_check import check_configs, run_oracle

import vlmcheck
from vlmcheck.frameworks import llamafactory as lf

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/*_checkpoint.py


def _kto_rows(rng: random.Random, names: dict[str, list[str]], n: int, formatting: str, *,
              broken: bool = False) -> list[dict[str, Any]]:
    """KTO rows: a conversation whose last answer is labelled desirable or not (kto_tag), some rows not KTO
    examples (a null tag), a true tag on an empty answer, and (``broken``) sharegpt rows the converter skips."""
    rows = []
    for i in range(n):
        images = _pick_images(rng, names)
        conv = _conversation(rng, images)
        if rng.random() < 0.3:  # a long answer: the KL sequences of its batch neighbour differ a lot
            conv[-1] = ("assistant", _text(rng, 200, 500))
        tag: bool | None = rng.random() < 0.6
        if i % 11 == 6:
            tag = None  # not a KTO example: dropped, but its answer still serves the next row's KL sequence
        paths = ["images/" + p for p in images]
        if formatting == "alpaca":
            history = [[conv[k][1], conv[k + 1][1]] for k in range(0, len(conv) - 2, 2)]
            row: dict[str, Any] = {"instruction": conv[-2][1], "output": conv[-1][1], "history": history,
                                   "images": paths, "system": rng.choice(("", _text(rng, 1, 9))), "label": tag}
            if i % 13 == 9:
                row.update(output="", label=True)  # undesirable, with an empty answer
            rows.append(row)
            continue
        turns = [{"from": {"user": "human", "assistant": "gpt"}[r], "value": c} for r, c in conv]
        if broken and i % 5 == 2:
            turns = turns[:-1]  # odd count: the converter skips it, and the next row's KL answer is missing
        rows.append({"conversations": turns, "images": paths, "label": tag})
    return rows


def write_kto_data(root: Path, *, seed: int, rows: int) -> Path:
    rng = random.Random(seed)
    data = root / "data"
    names = _write_images(data / "images", rng)
    files = {"sg_kto.json": _kto_rows(rng, names, rows, "sharegpt"),
             "alp_kto.json": _kto_rows(rng, names, rows, "alpaca"),
             "sg_kto_broken.json": _kto_rows(rng, names, 12, "sharegpt", broken=True)}
    for file, content in files.items():
        (data / file).write_text(json.dumps(content, ensure_ascii=False, indent=1))
    sharegpt = {"formatting": "sharegpt", "columns": {"messages": "conversations", "images": "images",
                                                       "kto_tag": "label"}}
    info = {
        "sg_kto": {"file_name": "sg_kto.json", **sharegpt},
        "sg_kto_broken": {"file_name": "sg_kto_broken.json", **sharegpt},
        "alp_kto": {"file_name": "alp_kto.json",
                    "columns": {"prompt": "instruction", "response": "output", "history": "history",
                                "system": "system", "images": "images", "kto_tag": "label"}},
    }
    (data / "dataset_info.json").write_text(json.dumps(info, indent=1))
    return data


@pytest.fixture(scope="module")
def proof(tmp_path_factory: pytest.TempPathFactory, llamafactory_python: Path, qwen2_vl_checkpoint: Path
          ) -> dict[str, Any]:
    from llava_checkpoint import llava_checkpoint

    root = tmp_path_factory.mktemp("lf_kto")
    data = write_kto_data(root, seed=29, rows=22)
    qwen2 = {"model_name_or_path": str(qwen2_vl_checkpoint), "template": "qwen2_vl", "stage": "kto"}
    llava = {"model_name_or_path": str(llava_checkpoint()), "template": "llava", "stage": "kto"}
    configs = write_configs(root, data, {
        "kto-defaults": {**qwen2, "dataset": "sg_kto,alp_kto"},
        # small map batches: many batch boundaries, each batch's first row paired with its last
        "kto-tight": {**qwen2, "dataset": "alp_kto,sg_kto", "cutoff_len": 384, "image_max_pixels": 1_003_520,
                      "preprocessing_batch_size": 5},
        # two map workers: two contiguous shards, batches restarting in each; an evaluation map of its own (LLaVA:
        # the runner's stand-in Qwen-VL processor class cannot be pickled into datasets' worker processes)
        "kto-workers": {**llava, "dataset": "sg_kto,alp_kto", "eval_dataset": "alp_kto", "cutoff_len": 900,
                        "preprocessing_num_workers": 2, "preprocessing_batch_size": 4},
        "kto-mid": {**qwen2, "dataset": "alp_kto", "cutoff_len": 800, "image_max_pixels": 262_144,
                    "preprocessing_batch_size": 7, "max_samples": 15},
        "kto-raises": {**qwen2, "dataset": "sg_kto_broken", "cutoff_len": 500, "preprocessing_batch_size": 3},
        "kto-llava": {**llava, "dataset": "sg_kto,alp_kto", "cutoff_len": 700, "preprocessing_batch_size": 6},
        "kto-llava-wide": {**llava, "dataset": "alp_kto,sg_kto", "cutoff_len": 1200,
                           "preprocessing_num_workers": 2},
    })
    oracle = run_oracle(llamafactory_python, configs, cwd=data, forward=3)
    return {"oracle": oracle, "mine": check_configs(configs, data)}


def compare_kto(oracle_row: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """What differs between LLaMA-Factory's result for a KTO row and vlmcheck's record of it."""
    frame = record["framework"]
    where = f"{oracle_row['dataset']}[{oracle_row['row']}]"
    if (frame["dataset"], frame["row"], frame.get("split", "train")) != (
            oracle_row["dataset"], oracle_row["row"], oracle_row["split"]):
        return [f"{where}: vlmcheck judged {frame['dataset']}[{frame['row']}] in its place"]
    if oracle_row["error"]:
        return [] if frame["verdict"] == "stops" else [f"{where}: LLaMA-Factory raises ({oracle_row['error']}), "
                                                       f"vlmcheck says {frame['verdict']} {record['findings']}"]
    if not oracle_row["kept"]:
        return [] if frame["verdict"] == "dropped" else [f"{where}: LLaMA-Factory drops it, vlmcheck says "
                                                         f"{frame['verdict']} {record['findings']}"]
    if frame["verdict"] not in ("ok", "crash"):
        return [f"{where}: LLaMA-Factory keeps it, vlmcheck says {frame['verdict']} {record['findings']}"]
    kl = frame["kl"]
    pairs = {
        "kto tag": (oracle_row["kto_tag"], frame["kto_tag"]),
        "KL partner": ((oracle_row["kl_dataset"], oracle_row["kl_row"]), (kl["dataset"], kl["row"])),
        "untruncated tokens": (oracle_row["tokens"], record["tokens"]),
        "features per image": (oracle_row["image_features"], record["image_tokens"]),
        "supervised tokens": (oracle_row["supervised"], record["supervised_tokens"]),
        "kept tokens": (oracle_row["kept_tokens"], frame["kept_tokens"]),
        "kept labels": (oracle_row["kept_supervised"], frame["kept_supervised"]),
        "image tokens left": (oracle_row["image_tokens_left"], sum(frame["kept_image_tokens"])),
        "KL untruncated tokens": (oracle_row["kl_tokens"], kl["tokens"]),
        "KL labels": (oracle_row["kl_supervised"], kl["supervised_tokens"]),
        "KL kept tokens": (oracle_row["kl_kept_tokens"], kl["kept_tokens"]),
        "KL kept labels": (oracle_row["kl_kept_supervised"], kl["kept_supervised"]),
        "KL image tokens left": (oracle_row["kl_image_tokens_left"], sum(kl["kept_image_tokens"])),
        "crash": (oracle_row["crash"], frame["verdict"] == "crash"),
    }
    return [f"{where}: {what}: LLaMA-Factory {a}, vlmcheck {b}" for what, (a, b) in pairs.items() if a != b]


def kto_mismatches(proof: dict[str, Any]) -> tuple[list[str], int]:
    found: list[str] = []
    compared = 0
    for name, result in proof["oracle"].items():
        assert "config_error" not in result, f"{name}: {result['config_error']}"
        rows, records = result["rows"], proof["mine"][name]
        assert len(rows) == len(records), f"{name}: LLaMA-Factory read {len(rows)} rows, vlmcheck {len(records)}"
        for row, record in zip(rows, records):
            found += [f"{name}: {m}" for m in compare_kto(row, record)]
            compared += 1
    return found, compared


def test_every_kto_sample_is_judged_as_llamafactory_prepares_it(proof: dict[str, Any]) -> None:
    found, compared = kto_mismatches(proof)
    assert compared >= 250, compared
    assert not found, f"{len(found)} mismatches in {compared} samples:\n" + "\n".join(found[:30])


def test_the_oracle_is_get_dataset_and_reaches_every_case(proof: dict[str, Any]) -> None:
    """The per-row results are get_dataset's own output rows (a config with a raising row raises there too);
    not vacuous: target-only and KL-only image cuts, both desirable and undesirable rows, drops, a raising row,
    batch boundaries (a batch's first row paired with its last) and two shards."""
    seen: Counter[str] = Counter()
    for name, result in proof["oracle"].items():
        assert result["llamafactory"] == "0.9.5"
        rows = result["rows"]
        if any(r["error"] for r in rows):
            assert result["get_dataset"]["error"], name
            seen["raises"] += sum(1 for r in rows if r["error"])
        kept = [r for r in rows if r["kept"] and not r["error"]]
        assert sum(result["get_dataset"]["rows"].values()) == len(kept), name
        seen["dropped"] += sum(1 for r in rows if not r["kept"] and not r["error"])
        for r in kept:
            target = r["image_tokens_left"] != sum(r["image_features"])
            kl = r["kl_image_tokens_left"] != sum(r["image_features"])
            seen["target cut"] += target and not kl
            seen["KL cut only"] += kl and not target
            seen["both cut"] += kl and target
            seen["whole"] += not r["crash"] and r["kept_tokens"] == r["tokens"]
            seen["undesirable"] += not r["kto_tag"]
            seen["desirable"] += r["kto_tag"]
            seen["wraps"] += r["batch"] > 1 and r["pos"] == r["batch_start"]  # paired with its batch's last row
        seen[f"{name} batches"] = len({(r["split"], r["batch_start"]) for r in rows})
    assert seen["target cut"] >= 3 and seen["KL cut only"] >= 3 and seen["raises"] >= 1, seen
    assert seen["dropped"] >= 8 and seen["undesirable"] >= 20 and seen["desirable"] >= 20, seen
    assert seen["wraps"] >= 10 and seen["kto-tight batches"] >= 8 and seen["kto-workers batches"] >= 6, seen
    assert seen["whole"] >= 40, seen


MISMATCH = ("Image features and image tokens do not match", "shape mismatch")
# transformers 5.x Qwen2-VL computes M-RoPE from mm_token_type_ids when no position_ids are given, and
# CustomKTOTrainer.forward (LLaMA-Factory 0.9.5) passes neither: every sample with an image raises there
NO_MROPE = "mm_token_type_ids` is missing"


def test_a_tiny_real_model_crashes_where_the_kto_sequences_are_cut(proof: dict[str, Any]) -> None:
    """LLaMA-Factory's KTO collator and CustomKTOTrainer.concatenated_forward on a tiny random model of the
    checkpoint's type. LLaVA: a row whose target is cut through an image raises in the target forward, one whose KL
    sequence only is cut raises in the KL forward (after the target's ran), whole rows run. Qwen2-VL: the rows
    judged a crash raise on their cut image span (in the collator's M-RoPE index or the target forward), and every
    other row with an image raises for want of mm_token_type_ids (see NO_MROPE: not a data matter)."""
    ran: Counter[str] = Counter()
    for name, result in proof["oracle"].items():
        qwen = "llava" not in name and name != "kto-workers"
        for f in result.get("forward", []):
            row = next(r for r in result["rows"] if r["kept"] and not r["error"] and
                       (r["dataset"], r["row"], r["split"]) == (f["dataset"], f["row"], f["split"]))
            target = row["image_tokens_left"] != sum(row["image_features"])
            kl = row["kl_image_tokens_left"] != sum(row["image_features"])
            if target or kl:
                assert f["error"] and any(m in f["error"] for m in MISMATCH), f"{name}: {f}"
                if not qwen:
                    assert f["raised_in"] == ("target" if target else "kl"), f"{name}: {f}"
                ran[f"{'qwen' if qwen else 'llava'} {'target' if target else 'kl only'} raises"] += 1
            elif qwen:
                assert f["error"] and NO_MROPE in f["error"], f"{name}: {f}"
                ran["qwen whole: no M-RoPE"] += 1
            else:
                assert f["error"] is None, f"{name}: {f}"
                ran["llava whole runs"] += 1
    assert ran["llava whole runs"] >= 3 and ran["llava kl only raises"] >= 2 and ran["llava target raises"] >= 2, ran
    assert ran["qwen target raises"] >= 3, ran


def test_map_batches_are_datasets_shards_then_batches() -> None:
    assert lf.map_batches(10, None, 4) == [4, 4, 2]
    assert lf.map_batches(10, 2, 4) == [4, 1, 4, 1]
    assert lf.map_batches(11, 2, 4) == [4, 2, 4, 1]
    assert lf.map_batches(3, 8, 1000) == [1, 1, 1]
    assert lf.map_batches(7, 1, 0) == [7]
    assert lf.map_batches(7, 2, -1) == [4, 3]
    assert lf.map_batches(0, 2, 5) == []


def test_what_kto_does_not_follow_is_refused(tmp_path: Path) -> None:
    base = {"model_name_or_path": "m", "template": "qwen2_vl", "dataset": "a", "stage": "kto"}
    config = lf.read_config(base, path=tmp_path / "x.yaml")
    assert config.feedback and config.oneturn and not config.pairwise and not config.packing
    assert (config.preprocessing_batch_size, config.preprocessing_num_workers) == (1000, None)
    for extra, match in (({"val_size": 0.1}, "val_size"), ({"streaming": True, "dataloader_num_workers": 1},
                                                           "streaming"),
                         ({"preprocessing_num_workers": 0}, "num_proc"), ({"preprocessing_batch_size": "8"}, "text"),
                         ({"train_on_prompt": True}, "train_on_prompt"), ({"neat_packing": True}, "neat_packing")):
        with pytest.raises(vlmcheck.UsageError, match=match):
            lf.read_config({**base, **extra}, path=tmp_path / "x.yaml")
