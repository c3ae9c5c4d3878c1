"""``vlmcheck check`` on ``swift rlhf --rlhf_type dpo`` launch scripts (DPO is RLHFArguments' default type), proved
against ms-swift 4.6's own DPO data path in its environment (swift_env.py), one subprocess for every case:

- the run-level checks: ``RLHFArguments`` built from each setting (``__post_init__``: a ``--ref_model`` under LoRA)
  and ``DPOTrainer.__init__``'s own check (``--precompute_ref_log_probs``, which raises before anything is loaded):
  vlmcheck refuses exactly the settings ms-swift raises on, quoting its message, and reads the loss scale and the
  truncation strategy ms-swift sets for the others;
- each row as the DPO trainer's data path meets it: the dataset from ``args.load_dataset()``, the template from
  ``args.get_template`` in the mode ``SwiftRLHF._prepare_template`` sets for dpo (``rlhf``), and ``template.encode``
  as ``LazyLLMDataset`` calls it (``TemplateInputs.from_dict`` makes the pair, ``Template._rlhf_encode`` encodes and
  cuts each of it): a ``MaxLengthError`` deletes the row, another raise skips it; for the others the chosen and the
  rejected sequence's ids, labels and image tokens.

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
# (max_length, truncation_strategy, more settings) per template; None: ms-swift's default max_length
RUNS = {
    "qwen2_vl": [(None, "delete", {}), (120, "delete", {}), (120, "left", {}), (120, "right", {}),
                 (300, "left", {}), (None, "delete", {"loss_scale": "default"})],
    "llava1_5_hf": [(None, "delete", {}), (700, "delete", {}), (700, "right", {})],
}
IMAGE_IDS = {"qwen2_vl": 151655, "llava1_5_hf": 32000}  # <|image_pad|>, <image>
SKIP = {"llava1_5_hf": ["r13"]}  # CLIP sizes the 6000 x 20 strip to 100,800 x 336 px: seconds per encode
# settings ms-swift's argument checks (and DPOTrainer's) take or refuse
CHECKS: list[dict[str, Any]] = [
    {},
    {"ref_model": "MODEL"},
    {"ref_model": "MODEL", "tuner_type": "full"},
    {"precompute_ref_log_probs": "true"},
    {"truncation_strategy": "left", "loss_scale": "default"},
]

ORACLE = QWEN_IMAGES_PRELUDE + textwrap.dedent('''
    import types

    def load(*args, **kwargs):  # transformers' own Qwen2-VL processor, without the torchvision video processor
        template = json.load(open(folder + "/chat_template.json"))["chat_template"]
        return ImageOnly(image_processor=Qwen2VLImageProcessorPil(**values),
                         tokenizer=AutoTokenizer.from_pretrained(folder), chat_template=template)

    auto = transformers.AutoProcessor.__dict__["from_pretrained"]
    from swift.arguments import RLHFArguments
    from swift.model import get_processor
    from swift.rlhf_trainers.dpo_trainer import DPOTrainer
    from swift.template import MaxLengthError

    def arguments(run, **settings):  # RLHFArguments as `swift rlhf ...` builds them (rlhf_type: its default, dpo)
        return RLHFArguments(model=run["checkpoint"], model_type=run["model_type"], template=run["template"],
                             dataset=job["data"], output_dir=job["output"], load_from_cache_file=False,
                             remove_unused_columns=False, **settings)  # keeps the id column (the encode ignores it)

    out = {"checks": [], "runs": {}}
    first = job["runs"][0]
    for case in job["checks"]:
        try:
            a = arguments(first, **{k: v for k, v in case.items() if k != "precompute_ref_log_probs"})
            if "precompute_ref_log_probs" in case:  # DPOTrainer.__init__ checks it first thing
                DPOTrainer.__init__(object.__new__(DPOTrainer), args=types.SimpleNamespace(
                    precompute_ref_log_probs=case["precompute_ref_log_probs"] == "true"))
            out["checks"].append({"rlhf_type": a.rlhf_type, "truncation": a.truncation_strategy,
                                  "loss_scale": str(a.loss_scale)})
        except Exception as e:
            out["checks"].append({"raises": str(e)})

    by_id = None  # the same files and options for every run: loaded once
    for run in job["runs"]:
        transformers.AutoProcessor.from_pretrained = staticmethod(load) if run["qwen"] else auto
        processor = get_processor(run["checkpoint"], model_type=run["model_type"])
        results = {"max_model_len": processor.model_info.max_model_len}
        for max_length, strategy, more in run["settings"]:
            args = arguments(run, max_length=max_length, truncation_strategy=strategy, split_dataset_ratio=0,
                             **more)
            template = args.get_template(processor)
            template.set_mode("rlhf")  # SwiftRLHF._prepare_template: dpo encodes in 'rlhf' mode
            if by_id is None:
                by_id = {r["id"]: r for r in args.load_dataset()[0]}
            rows = {}
            for wanted in job["ids"]:
                if wanted in run["skip"]:
                    continue
                row = by_id.get(wanted)
                if row is None:
                    rows[wanted] = {"verdict": "deleted"}
                    continue
                try:  # LazyLLMDataset.__getitem__'s encode_func
                    encoded = template.encode(row, return_length=True)
                except MaxLengthError:
                    rows[wanted] = {"verdict": "max_length"}
                    continue
                except Exception as e:
                    rows[wanted] = {"verdict": "error", "error": repr(e)[:200]}
                    continue
                res = {"verdict": "encoded"}
                for side in ("chosen", "rejected"):
                    ids, labels = list(encoded[side + "_input_ids"]), list(encoded[side + "_labels"])
                    res[side] = [len(ids), sum(1 for t in labels if t != -100), ids.count(run["image_id"])]
                rows[wanted] = res
            results[f"{max_length}-{strategy}-{json.dumps(more, sort_keys=True)}"] = rows
        out["runs"][run["template"]] = results
    print("ORACLE" + json.dumps(out))
''')


def corpus(folder: Path) -> tuple[list[Path], list[str]]:
    """DPO datasets as ms-swift documents them: ``messages`` ending with the chosen answer and a
    ``rejected_response``, images with absolute paths (shared by the pair); a query / response file; a file with no
    rejected_response column."""
    def image(name: str, size: tuple[int, int]) -> str:
        path = folder / f"{name}.png"
        Image.new("RGB", size, "purple").save(path)
        return str(path)

    photo, big, thin, strip = (image("photo", (640, 480)), image("big", (1280, 960)), image("thin", (300, 12)),
                               image("strip", (6000, 20)))
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    bot = lambda text, **kw: {"role": "assistant", "content": text, **kw}  # noqa: E731
    long = " ".join(f"word{i}" for i in range(150))
    rows = [
        {"messages": [user("<image>What is shown?"), bot("A purple square.")], "rejected_response": "A red circle.",
         "images": [photo]},
        # an earlier answer: under last_round untrained, tokenized with the text around it
        {"messages": [{"role": "system", "content": "Be terse."}, user("<image>First?"), bot("\n\nOne."),
                      user("Second?"), bot("Two.")], "rejected_response": "Three.", "images": [photo]},
        {"messages": [user("<image>Q1"), bot("\nA1", loss=True), user("Q2"), bot("A2")], "rejected_response": "B2",
         "images": [thin]},
        {"messages": [user("<image>Q"), bot("same")], "rejected_response": "same", "images": [photo]},  # deleted
        {"messages": [user("<image>Q"), bot("A")], "images": [photo]},  # rejected_response null: deleted
        {"messages": [user("<image>" + long), bot("y")], "rejected_response": "n", "images": [photo]},
        {"messages": [user("<image>Q"), bot("short")], "rejected_response": "long " + long, "images": [photo]},
        {"messages": [user("<image>Q"), bot("long " + long)], "rejected_response": "no", "images": [photo]},
        {"messages": [user("Say hi."), bot("Hi.")], "rejected_response": "Bye."},
        {"messages": [user("<image>Q"), bot("untrained", loss=False)], "rejected_response": "B", "images": [thin]},
        # two answers after the last question: the rejected_response replaces both
        {"messages": [user("<image>Q"), bot("First part."), bot(" Second part.")], "rejected_response": "C",
         "images": [photo]},
        {"messages": [user("literal <|image_pad|> and <image>"), bot("z")], "rejected_response": "w",
         "images": [photo]},
        {"messages": [user("Q"), bot("Here <image> it is")], "rejected_response": "No image", "images": [photo]},
        {"messages": [user("<image>Q"), bot("A")], "rejected_response": "B", "images": [strip]},  # ratio 300
        {"messages": [user("<image><image>Compare " + long), bot("Same")], "rejected_response": "Different",
         "images": [photo, thin]},
        {"messages": [{"role": "system", "content": ""}, user(long), bot("\n\nlong answer " + long),
                      user("<image>And?"), bot("x")], "rejected_response": "y " + long, "images": [big]},
    ]
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{k}", **r}) + "\n" for k, r in enumerate(rows)))
    queries = [{"id": "q0", "query": "<image>How many?", "response": "3", "rejected_response": "4", "images": [big]},
               {"id": "q1", "query": "Count to three.", "response": "1 2 3", "rejected_response": "1 2",
                "images": []}]
    more = folder / "queries.jsonl"
    more.write_text("".join(json.dumps(r) + "\n" for r in queries))
    unpaired = folder / "unpaired.jsonl"  # no rejected_response column: the rlhf encode raises
    unpaired.write_text(json.dumps({"id": "u0", "messages": [user("<image>Q"), bot("A")], "images": [photo]}) + "\n")
    return [data, more, unpaired], [f"r{k}" for k in range(len(rows))] + ["q0", "q1", "u0"]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory, qwen2_vl_checkpoint: Path) -> dict[str, Any]:
    from llava_checkpoint import llava_checkpoint

    folder = tmp_path_factory.mktemp("swift_dpo")
    data, ids = corpus(folder)
    checkpoints = {"qwen2_vl": qwen2_vl_checkpoint, "llava1_5_hf": llava_checkpoint()}
    checks = [_placed(case, qwen2_vl_checkpoint) for case in CHECKS]
    runs = [{"template": name, "checkpoint": str(checkpoints[name]), "qwen": name == "qwen2_vl",
             "model_type": name, "image_id": IMAGE_IDS[name], "settings": settings, "skip": SKIP.get(name, [])}
            for name, settings in RUNS.items()]
    job = {"checkpoint": str(qwen2_vl_checkpoint), "data": [str(d) for d in data], "ids": ids, "checks": checks,
           "runs": runs, "output": str(folder / "output")}
    env = {k: v for k, v in os.environ.items() if k not in ("MAX_PIXELS", "MIN_PIXELS", "NPROC_PER_NODE", "NNODES")}
    done = subprocess.run([str(oracle_python()), "-c", ORACLE, json.dumps(job)], capture_output=True, text=True,
                          timeout=900, cwd=folder,
                          env={**env, "MAX_PIXELS": str(MAX_PIXELS), "HF_HUB_OFFLINE": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("ORACLE")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    return {"data": data, "checkpoints": checkpoints, "cases": checks, **json.loads(lines[-1][len("ORACLE"):])}


def _placed(case: dict[str, Any], model: Path) -> dict[str, Any]:
    return {k: str(model) if v == "MODEL" else v for k, v in case.items()}


def script(tmp_path: Path, model: Path, data: list[Path], settings: dict[str, Any]) -> Path:
    """A `swift rlhf` script in the shape of ms-swift's examples/train/rlhf/dpo scripts (--rlhf_type dpo)."""
    words = [f"--{key} {shlex.quote(str(value))}" for key, value in settings.items() if value is not None]
    path = tmp_path / "dpo.sh"
    path.write_text("\n".join([f"MAX_PIXELS={MAX_PIXELS} \\", "swift rlhf \\", "    --rlhf_type dpo \\",
                               f"    --model {model} \\", f"    --dataset {' '.join(map(str, data))} \\",
                               *(f"    {w} \\" for w in words), "    --output_dir output", ""]))
    return path


@pytest.mark.parametrize("k", range(len(CHECKS)))
def test_run_level_checks_are_swifts_own(tmp_path: Path, oracle: dict[str, Any], k: int) -> None:
    """vlmcheck refuses a DPO run exactly where ms-swift's checks raise, with ms-swift's message; where they pass,
    it reads the truncation strategy and loss scale ms-swift sets."""
    theirs = oracle["checks"][k]
    path = script(tmp_path, oracle["checkpoints"]["qwen2_vl"], oracle["data"], oracle["cases"][k])
    raw = swift.read_launch(path.read_text(), path=path, env={})
    assert raw is not None and raw["stage"] == "dpo"
    if "raises" in theirs:
        with pytest.raises(UsageError) as refused:
            swift.read_config(raw, path=path)
        assert theirs["raises"].split(". ")[0] in str(refused.value), (theirs, str(refused.value))
        return
    config = swift.read_config(raw, path=path)
    assert config.dpo is not None and theirs["rlhf_type"] == "dpo"
    assert (config.truncation, config.dpo.loss_scale) == (
        "delete" if theirs["truncation"] == "raise" else theirs["truncation"], theirs["loss_scale"])


CASES = [(name, *setting) for name, settings in RUNS.items() for setting in settings]


@pytest.mark.parametrize(("template", "max_length", "strategy", "more"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}{'-' + '-'.join(c[3].values()) if c[3] else ''}" for c in CASES])
def test_each_pair_is_judged_as_swifts_dpo_encodes_it(tmp_path: Path, oracle: dict[str, Any], template: str,
                                                      max_length: int | None, strategy: str,
                                                      more: dict[str, Any]) -> None:
    run = oracle["runs"][template]
    theirs = run[f"{max_length}-{strategy}-{json.dumps(more, sort_keys=True)}"]
    path = script(tmp_path, oracle["checkpoints"][template], oracle["data"],
                  {"max_length": max_length, "truncation_strategy": strategy, **more})
    out = tmp_path / "records.jsonl"
    vlmcheck.check(path, output=out)
    ours = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in ours if r["id"] in theirs] == list(theirs)
    limit = max_length or run["max_model_len"]
    seen = set()
    for record in ours:
        k, row = record["id"], theirs.get(record["id"])
        if row is None:
            continue
        frame, verdict = record["framework"], record["framework"]["verdict"]
        seen.add(row["verdict"])
        if row["verdict"] == "deleted":  # ms-swift's preprocessor deletes it while loading
            assert (verdict, record["findings"]) == ("dropped", ["VC006"]), (k, record, row)
            continue
        if row["verdict"] == "max_length":  # MaxLengthError on the chosen or the rejected: the row is skipped
            assert verdict == "dropped" and "VC204" in record["findings"], (k, record, row)
            continue
        if row["verdict"] == "error":  # another raise: skipped (--strict false)
            assert verdict == "dropped" and "VC006" in record["findings"] and "VC204" not in record["findings"], (
                k, record, row)
            continue
        pair = frame["pair"]
        literal = frame.get("kept_literal_image_tokens", 0)
        chosen = [frame["kept_tokens"], frame["kept_supervised"], sum(frame["kept_image_tokens"]) + literal]
        rejected = [pair["kept_rejected_tokens"], pair["kept_rejected_supervised"],
                    sum(pair["kept_rejected_image_tokens"]) + pair.get("kept_rejected_literal_image_tokens", 0)]
        assert (chosen, rejected) == (row["chosen"], row["rejected"]), (k, record, row)
        assert pair["chosen_tokens"] == record["tokens"], (k, record)
        over = record["tokens"] > limit or pair["rejected_tokens"] > limit
        assert over == (strategy != "delete" and (row["chosen"][0] < record["tokens"]
                                                  or row["rejected"][0] < pair["rejected_tokens"])), (k, record, row)
        if "VC002" in record["findings"]:
            assert verdict == "crash", (k, record)
        else:
            assert verdict == ("cut" if over else "ok"), (k, record, row)
            assert ("VC003" in record["findings"]) == (row["chosen"][1] == 0 and not over), (k, record, row)
    assert {"deleted", "encoded"} <= seen, seen
    if max_length is not None and strategy == "delete":
        assert "max_length" in seen, seen


def test_other_rlhf_types_stay_refused(tmp_path: Path) -> None:
    """kto, orpo, simpo, cpo, rm, ppo, gkd encode rows their own way: refused by name, as `swift pt` is."""
    for kind in ("kto", "orpo", "simpo", "cpo", "rm", "ppo", "gkd"):
        path = tmp_path / "run.sh"
        path.write_text(f"swift rlhf --rlhf_type {kind} --model m --dataset d.jsonl\n")
        with pytest.raises(UsageError, match=f"--rlhf_type {kind}` is not modelled"):
            swift.read_launch(path.read_text(), path=path, env={})
    path.write_text("swift rlhf --model m --dataset d.jsonl\n")  # dpo, the default type
    raw = swift.read_launch(path.read_text(), path=path, env={})
    assert raw is not None and raw["stage"] == "dpo"
