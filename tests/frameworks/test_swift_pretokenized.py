"""``vlmcheck check`` on ``swift sft`` / ``swift rlhf`` runs that encode their rows while loading (``--lazy_tokenize
false``, ``--packing``, ``--group_by_length``) and the refusals of ``--lazy_tokenize`` / ``--packing`` /
``--padding_free``, proved against ms-swift 4.6's own code in its environment (swift_env.py), one subprocess:

- the arguments: each setting through ms-swift's own parser (``SwiftPipeline._parse_args`` into ``SftArguments`` /
  ``RLHFArguments``: ``_init_lazy_tokenize``, ``_check_padding_free``): vlmcheck refuses exactly where ms-swift
  raises, with its message, and resolves ``lazy_tokenize`` as it does; ``SwiftSft._prepare_template`` on a template
  without padding-free support raises, and each modelled template's ``support_padding_free``;
- the dataset path: ``SwiftSft._prepare_dataset`` (``args.load_dataset``, ``_encode_dataset``'s
  AddLengthPreprocessor, ``_post_process_datasets``' LazyLLMDataset and PackingDataset, ``_show_dataset``) with the
  real ``qwen2_vl`` template on rows incl. over-length rows and rows whose encode raises: which rows are kept, their
  encoded (cut) lengths, the packs, and what raises when every row is deleted.

No model is loaded (nothing here needs a GPU).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from oracle_env import QWEN_IMAGES_PRELUDE
from PIL import Image
from swift_env import oracle_python

import vlmcheck
from vlmcheck.errors import UsageError
from vlmcheck.frameworks import swift

MAX_PIXELS = 200704  # 256 * 28 * 28
FLASH = {"attn_impl": "flash_attn"}
GRPO = {"rlhf_type": "grpo", "reward_funcs": "accuracy", "num_generations": 2, "per_device_train_batch_size": 2}
# (command, settings): ms-swift's parser and argument checks take or refuse them
CHECKS: list[tuple[str, dict[str, Any]]] = [
    ("sft", {}),
    ("sft", {"lazy_tokenize": "false"}),
    ("sft", {"lazy_tokenize": "true"}),
    ("sft", {"streaming": "true"}),
    ("sft", {"group_by_length": "true"}),
    ("sft", {"packing": "true"}),
    ("sft", {"packing": "true", "attn_impl": "sdpa"}),
    ("sft", {"packing": "true", **FLASH}),
    ("sft", {"packing": "true", "attn_impl": "flash_attention_3", "packing_length": 64}),
    ("sft", {"padding_free": "true"}),
    ("sft", {"padding_free": "true", "attn_impl": "flash_attention_2"}),
    ("sft", {"lazy_tokenize": "true", "packing": "true", **FLASH}),
    ("sft", {"lazy_tokenize": "true", "packing": "true"}),
    ("sft", {"lazy_tokenize": "true", "streaming": "true"}),
    ("sft", {"lazy_tokenize": "false", "streaming": "true"}),
    ("rlhf", {}),
    ("rlhf", {"packing": "true", **FLASH}),
    ("rlhf", {"packing": "true"}),
    ("rlhf", {"rlhf_type": "orpo", "padding_free": "true", **FLASH}),
    ("rlhf", {"rlhf_type": "simpo", "packing": "true", **FLASH}),
    ("rlhf", {"rlhf_type": "cpo", "lazy_tokenize": "true", "packing": "true"}),
    ("rlhf", {**GRPO}),
    ("rlhf", {**GRPO, "packing": "true", **FLASH}),
    ("rlhf", {**GRPO, "padding_free": "true"}),
    ("rlhf", {**GRPO, "lazy_tokenize": "true", "streaming": "true"}),
]
# (command, settings) whose whole dataset path ms-swift runs; delete unless said
RUNS: list[tuple[str, dict[str, Any]]] = [
    ("sft", {"max_length": 100}),  # lazy: nothing encoded while loading
    ("sft", {"max_length": 100, "lazy_tokenize": "false"}),
    ("sft", {"max_length": 100, "group_by_length": "true"}),
    ("sft", {"max_length": 100, "truncation_strategy": "left", "packing": "true", **FLASH}),
    ("sft", {"max_length": 400, "packing": "true", "packing_length": 80, **FLASH}),
    ("sft", {"max_length": 12, "lazy_tokenize": "false"}),  # every row deleted
    ("sft", {"max_length": 12, "packing": "true", **FLASH}),
    ("rlhf", {"max_length": 100, "lazy_tokenize": "false"}),  # DPO, its default type
]

ORACLE = QWEN_IMAGES_PRELUDE + textwrap.dedent('''
    def load(*args, **kwargs):  # transformers' own Qwen2-VL processor, without the torchvision video processor
        template = json.load(open(folder + "/chat_template.json"))["chat_template"]
        return ImageOnly(image_processor=Qwen2VLImageProcessorPil(**values),
                         tokenizer=AutoTokenizer.from_pretrained(folder), chat_template=template)

    auto = transformers.AutoProcessor.__dict__["from_pretrained"]
    transformers.AutoProcessor.from_pretrained = staticmethod(load)
    from swift.model import get_processor
    from swift.pipelines.train.rlhf import SwiftRLHF
    from swift.pipelines.train.sft import SwiftSft
    from swift.template import TEMPLATE_MAPPING

    PIPELINES = {"sft": SwiftSft, "rlhf": SwiftRLHF}

    def arguments(command, data, settings, model=("qwen2_vl", folder)):
        argv = ["--model", model[1], "--model_type", model[0], "--template", model[0], "--dataset", data,
                "--output_dir", job["output"], "--load_from_cache_file", "false", "--remove_unused_columns", "false",
                "--split_dataset_ratio", "0", "--dataset_num_proc", "1"]
        for key, value in settings.items():
            argv += [f"--{key}", str(value)]
        cls = PIPELINES[command]
        return cls._parse_args(object.__new__(cls), argv)

    def pipeline(command, args, processor):
        p = object.__new__(PIPELINES[command])
        p.args, p.processor, p.model, p.train_msg = args, processor, None, {}
        p._prepare_template()
        return p

    out = {"checks": [], "runs": [], "support": {}}
    for command, settings in job["checks"]:
        try:
            a = arguments(command, job["data"]["sft"], settings)
            out["checks"].append({"lazy_tokenize": a.lazy_tokenize, "packing_length": a.packing_length})
        except Exception as e:
            out["checks"].append({"raises": str(e)})
    out["support"] = {name: TEMPLATE_MAPPING[name].template_cls.support_padding_free for name in job["templates"]}
    transformers.AutoProcessor.from_pretrained = auto
    llava = get_processor(job["llava"], model_type="llava1_5_hf")
    try:  # SwiftSft._prepare_template on a template without padding-free support
        pipeline("sft", arguments("sft", job["data"]["sft"], {"packing": "true", "attn_impl": "flash_attn"},
                                  model=("llava1_5_hf", job["llava"])), llava)
        out["llava_packing"] = "ok"
    except Exception as e:
        out["llava_packing"] = str(e)
    transformers.AutoProcessor.from_pretrained = staticmethod(load)
    processor = get_processor(folder, model_type="qwen2_vl")

    for command, settings in job["runs"]:
        args = arguments(command, job["data"][command], settings)
        p = pipeline(command, args, processor)
        res = {"lazy_tokenize": args.lazy_tokenize}
        try:
            train, _ = p._prepare_dataset()
        except Exception as e:
            res["raises"] = f"{type(e).__name__}: {e}"
            out["runs"].append(res)
            continue
        res["train"] = type(train).__name__
        lazy = train.dataset if hasattr(train, "packed_idx") else train  # PackingDataset over LazyLLMDataset
        table = lazy.dataset  # the loaded (and, not lazy, pre-encoded) rows
        ids = table["id"]
        if "lengths" in table.column_names:  # AddLengthPreprocessor: each kept row's encoded (cut) lengths
            res["kept"] = {i: n for i, n in zip(ids, table["lengths"])}
        else:  # lazy: LazyLLMDataset encodes at fetch, a raise skips the row
            res["fetched"] = {}
            for k, i in enumerate(ids):
                try:
                    res["fetched"][i] = lazy.encode_func(table[k], return_length=True)["lengths"]
                except Exception as e:
                    res["fetched"][i] = type(e).__name__
        if hasattr(train, "packed_idx"):
            res["packs"] = [[ids[k] for k in pack] for pack in train.packed_idx]
            res["packed_length"] = train.packed_length
            res["packing_length"] = train.packing_length
        out["runs"].append(res)
    print("ORACLE" + json.dumps(out))
''')


def corpus(folder: Path) -> dict[str, Path]:
    def image(name: str, size: tuple[int, int]) -> str:
        path = folder / f"{name}.png"
        Image.new("RGB", size, "purple").save(path)
        return str(path)

    photo, thin, strip = image("photo", (640, 480)), image("thin", (300, 12)), image("strip", (6000, 20))
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    bot = lambda text: {"role": "assistant", "content": text}  # noqa: E731
    words = " ".join(f"w{i}" for i in range(40))
    rows = [
        {"messages": [user("<image>What is shown?"), bot("A purple square.")], "images": [photo]},  # over 100
        {"messages": [user("Say hi."), bot("Hi.")]},
        {"messages": [user(words), bot("ok")]},  # between 80 and 100 tokens
        {"messages": [user("<image>Q"), bot("A")], "images": [strip]},  # qwen-vl-utils raises (ratio 300)
        {"messages": [user("<image>Q"), bot("A")], "images": [str(folder / "missing.png")]},  # cannot be opened
        {"messages": [user("Q"), bot(None)]},  # the row preprocessor deletes it
        {"messages": [user("<image>Tiny?"), bot("Thin.")], "images": [thin]},
        {"messages": [user(words + " " + words), bot("long")]},  # over 100
    ]
    sft = folder / "train.jsonl"
    sft.write_text("".join(json.dumps({"id": f"r{k}", **r}) + "\n" for k, r in enumerate(rows)))
    pairs = [{"id": "p0", "messages": [user("<image>Q"), bot("Yes.")], "rejected_response": "No.", "images": [thin]},
             {"id": "p1", "messages": [user("Q"), bot("short")], "rejected_response": "long " + words + words},
             {"id": "p2", "messages": [user("<image>Q"), bot("A")], "rejected_response": "B", "images": [strip]},
             {"id": "p3", "messages": [user("Hi"), bot("Yo")], "rejected_response": "No"}]
    dpo = folder / "pairs.jsonl"
    dpo.write_text("".join(json.dumps(r) + "\n" for r in pairs))
    return {"sft": sft, "rlhf": dpo}


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory, qwen2_vl_checkpoint: Path) -> dict[str, Any]:
    from llava_checkpoint import llava_checkpoint

    folder = tmp_path_factory.mktemp("swift_pretokenized")
    data = corpus(folder)
    job = {"checkpoint": str(qwen2_vl_checkpoint), "llava": str(llava_checkpoint()),
           "data": {k: str(v) for k, v in data.items()}, "checks": CHECKS, "runs": RUNS,
           "templates": list(swift.TEMPLATES), "output": str(folder / "output")}
    env = {k: v for k, v in os.environ.items() if k not in ("MAX_PIXELS", "MIN_PIXELS", "NPROC_PER_NODE", "NNODES")}
    done = subprocess.run([str(oracle_python()), "-c", ORACLE, json.dumps(job)], capture_output=True, text=True,
                          timeout=900, cwd=folder, env={**env, "MAX_PIXELS": str(MAX_PIXELS), "HF_HUB_OFFLINE": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("ORACLE")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    return {"data": data, "checkpoint": qwen2_vl_checkpoint, "llava": Path(job["llava"]),
            **json.loads(lines[-1][len("ORACLE"):])}


def script(tmp_path: Path, command: str, model: Path, data: Path, settings: dict[str, Any]) -> Path:
    words = [f"--{key} {shlex.quote(str(value))}" for key, value in settings.items()]
    path = tmp_path / "train.sh"
    path.write_text("\n".join([f"MAX_PIXELS={MAX_PIXELS} \\", f"swift {command} \\", f"    --model {model} \\",
                               f"    --dataset {data} \\", *(f"    {w} \\" for w in words),
                               "    --output_dir output", ""]))
    return path


@pytest.mark.parametrize("k", range(len(CHECKS)), ids=[f"{c}-{'-'.join(f'{a}={b}' for a, b in s.items())}"
                                                       for c, s in CHECKS])
def test_lazy_tokenize_and_packing_are_read_as_swift_parses_them(tmp_path: Path, oracle: dict[str, Any],
                                                                 k: int) -> None:
    """vlmcheck refuses exactly the settings ms-swift's argument checks raise on, with ms-swift's message, and
    resolves --lazy_tokenize (and --packing_length) as ms-swift does for the others."""
    command, settings = CHECKS[k]
    theirs = oracle["checks"][k]
    path = script(tmp_path, command, oracle["checkpoint"], oracle["data"]["sft"], settings)
    raw = swift.read_launch(path.read_text(), path=path, env={})
    assert raw is not None
    if "raises" in theirs:
        with pytest.raises(UsageError) as refused:
            swift.read_config(raw, path=path)
        assert theirs["raises"] in str(refused.value), (theirs, str(refused.value))
        return
    config = swift.read_config(raw, path=path)
    assert config.tokenize.lazy == theirs["lazy_tokenize"], (config.tokenize, theirs)
    if config.tokenize.packing:
        limit = config.tokenize.packing_length or 32768  # the checkpoint's max_position_embeddings
        assert limit == theirs["packing_length"], (config.tokenize, theirs)


def test_templates_without_padding_free_are_refused(tmp_path: Path, oracle: dict[str, Any]) -> None:
    """SwiftSft._prepare_template raises on --packing / --padding_free with a template whose support_padding_free
    is not true (None reads as false on a multimodal model); vlmcheck refuses the same templates with its message."""
    for name, support in oracle["support"].items():
        assert (name in swift.PADDING_FREE_TEMPLATES) == bool(support), (name, support)
    path = script(tmp_path, "sft", oracle["llava"], oracle["data"]["sft"], {"packing": "true", **FLASH})
    with pytest.raises(UsageError) as refused:
        vlmcheck.check(path, output=tmp_path / "out.jsonl")
    assert oracle["llava_packing"] != "ok" and oracle["llava_packing"] in str(refused.value), (
        oracle["llava_packing"], str(refused.value))


@pytest.mark.parametrize("k", range(len(RUNS)), ids=[f"{c}-{'-'.join(f'{a}={b}' for a, b in s.items())}"
                                                     for c, s in RUNS])
def test_rows_are_kept_deleted_or_skipped_as_swifts_dataset_path_does(tmp_path: Path, oracle: dict[str, Any],
                                                                      k: int) -> None:
    """Per row, ms-swift's own _prepare_dataset against vlmcheck's records: a pre-encoded run keeps the rows whose
    encode succeeds, at their encoded (cut) length, and deletes the others while loading (``dropped_at``
    ``preprocess``, no VC208 risk); a lazy run skips them at fetch (``encode``); when every row is deleted, ms-swift
    raises before step 1 and vlmcheck's VC208 says so; packing keeps each row's encode and packs whole rows."""
    command, settings = RUNS[k]
    theirs = oracle["runs"][k]
    path = script(tmp_path, command, oracle["checkpoint"], oracle["data"][command], settings)
    out = tmp_path / "records.jsonl"
    report = vlmcheck.check(path, output=out)
    ours = {r["id"]: r for r in (json.loads(line) for line in out.read_text().splitlines())}
    run_level = [f for f in report.findings if f.code == "VC208"]
    assert (report.summary["framework"]["lazy_tokenize"] is True) == theirs["lazy_tokenize"]
    if "raises" in theirs:  # every training row deleted while loading: the dataset is None and _show_dataset raises
        assert all(r["framework"]["verdict"] == "dropped" and r["framework"].get("dropped_at") == "preprocess"
                   for r in ours.values()), ours
        said = theirs["raises"].split(": ", 1)[1]
        assert len(run_level) == 1 and said in run_level[0].message and "before step 1" in run_level[0].message, (
            theirs, [f.message for f in run_level])
        return
    if "fetched" in theirs:  # lazy: nothing encoded while loading, a raise at fetch skips the row
        for i, record in ours.items():
            frame, fetched = record["framework"], theirs["fetched"].get(i)
            if fetched is None:  # deleted by the row preprocessor
                assert frame.get("dropped_at") == "preprocess", (i, record)
            elif isinstance(fetched, str):
                assert (frame["verdict"], frame.get("dropped_at")) == ("dropped", "encode"), (i, record, fetched)
            else:
                assert frame["verdict"] != "dropped" and frame["kept_tokens"] == sum(fetched), (i, record, fetched)
        return
    kept = theirs["kept"]
    assert set(kept) < set(ours), (kept, list(ours))  # some rows are deleted while loading
    for i, record in ours.items():
        frame = record["framework"]
        if i not in kept:  # deleted while loading: by the row preprocessor or the encode
            assert (frame["verdict"], frame.get("dropped_at")) == ("dropped", "preprocess"), (i, record)
            continue
        assert frame["verdict"] in ("ok", "cut"), (i, record)
        ours_kept = [frame["kept_tokens"]] + ([frame["pair"]["kept_rejected_tokens"]] if "pair" in frame else [])
        assert ours_kept == kept[i], (i, record, kept[i])
    assert not run_level, [f.message for f in run_level]  # nothing is skipped at fetch
    if "packs" in theirs:  # every kept row in one pack, whole; a row longer than packing_length alone in its own
        assert sorted(i for pack in theirs["packs"] for i in pack) == sorted(kept)
        limit = theirs["packing_length"]
        assert report.summary["framework"]["packing_length"] == limit
        for pack, length in zip(theirs["packs"], theirs["packed_length"]):
            assert length == sum(ours[i]["framework"]["kept_tokens"] for i in pack)
            assert length <= limit or len(pack) == 1, (pack, length, limit)


def test_the_oracle_cases_are_not_vacuous(oracle: dict[str, Any]) -> None:
    """The runs hold what the per-row test is meant to compare: rows deleted by their encode while loading, a
    lazy run that skips them at fetch instead, packs of rows cut before packing and rows longer than
    --packing_length (a pack of their own), and the raise of a run whose every row is deleted."""
    runs = oracle["runs"]
    fetched = runs[0]["fetched"]
    assert {"MaxLengthError", "ValueError", "FileNotFoundError"} <= {v for v in fetched.values() if isinstance(v, str)}
    assert runs[1]["lazy_tokenize"] is False and runs[2]["lazy_tokenize"] is False  # --group_by_length too
    assert set(runs[1]["kept"]) < {k for k, v in fetched.items()}
    assert [100] in runs[3]["kept"].values()  # cut to --max_length before packing
    assert any(length > runs[4]["packing_length"] for length in runs[4]["packed_length"])
    assert all(r["raises"].startswith("TypeError") for r in runs[5:7])
    assert set(runs[7]["kept"]) == {"p0", "p3"}  # DPO: over-long and raising pairs deleted while loading
