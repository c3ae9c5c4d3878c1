"""``vlmcheck check`` on the paired ``swift rlhf`` types (``--rlhf_type dpo``, RLHFArguments' default, ``orpo``,
``simpo``, ``cpo``), proved against ms-swift 4.6's own data path in its environment (swift_env.py), one subprocess
for every case:

- the run-level checks: each setting's ``swift rlhf`` arguments through ms-swift's own parser
  (``SwiftPipeline._parse_args``: an option it lacks raises ``remaining_argv``) into ``RLHFArguments``
  (``__post_init__``: a ``--ref_model``, several ``--loss_type`` values, ``--sequence_parallel_size``): vlmcheck
  refuses exactly the settings ms-swift raises on, quoting its message, and reads the trainer, loss scale and
  truncation strategy ms-swift sets for the others;
- each row as each type's data path meets it: the dataset from ``args.load_dataset()``, the template from
  ``SwiftRLHF._prepare_template`` (which sets the mode of the type: ``rlhf`` for all four), and ``template.encode``
  as ``LazyLLMDataset`` calls it (``TemplateInputs.from_dict`` makes the pair, ``Template._rlhf_encode`` encodes and
  cuts each of it): a ``MaxLengthError`` deletes the row, another raise skips it; for the others the chosen and the
  rejected sequence's ids, labels and image tokens (swift_env.RLHF_ROWS).

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
from swift_env import RLHF_ROWS, oracle_python

import vlmcheck
from vlmcheck.errors import UsageError
from vlmcheck.frameworks import swift

MAX_PIXELS = 200704  # 256 * 28 * 28
ORPO, SIMPO, CPO = ({"rlhf_type": t} for t in ("orpo", "simpo", "cpo"))
# (max_length, truncation_strategy, more settings) per template; None: ms-swift's default max_length; no rlhf_type:
# its default, dpo
RUNS = {
    "qwen2_vl": [(None, "delete", {}), (120, "delete", {}), (120, "left", {}), (120, "right", {}),
                 (300, "left", {}), (None, "delete", {"loss_scale": "default"}),
                 (None, "delete", ORPO), (120, "right", ORPO), (120, "left", SIMPO), (120, "delete", CPO),
                 (300, "left", {**CPO, "loss_scale": "default"})],
    "llava1_5_hf": [(None, "delete", {}), (700, "delete", {}), (700, "right", {}), (None, "delete", SIMPO),
                    (700, "right", ORPO)],
}
IMAGE_IDS = {"qwen2_vl": 151655, "llava1_5_hf": 32000}  # <|image_pad|>, <image>
SKIP = {"llava1_5_hf": ["r13"]}  # CLIP sizes the 6000 x 20 strip to 100,800 x 336 px: seconds per encode
# settings ms-swift's parser and argument checks take or refuse, per type
CHECKS: list[dict[str, Any]] = [
    *({**kind, **case} for kind in ({}, ORPO, SIMPO, CPO) for case in (
        {},
        {"ref_model": "MODEL"},
        {"ref_model": "MODEL", "tuner_type": "full"},
        {"precompute_ref_log_probs": "true"},
        {"loss_type": ["sigmoid", "ipo"]},
        {"sequence_parallel_size": 2},
    )),
    {"precompute_ref_log_probs": "true", "ignore_args_error": "true"},
    {"truncation_strategy": "left", "loss_scale": "default"},
    {**ORPO, "tuner_type": "full", "loss_type": "sigmoid", "sequence_parallel_size": 1},
    {**SIMPO, "truncation_strategy": "right", "loss_scale": "default"},
]

ORACLE = QWEN_IMAGES_PRELUDE + RLHF_ROWS + textwrap.dedent('''
    def load(*args, **kwargs):  # transformers' own Qwen2-VL processor, without the torchvision video processor
        template = json.load(open(folder + "/chat_template.json"))["chat_template"]
        return ImageOnly(image_processor=Qwen2VLImageProcessorPil(**values),
                         tokenizer=AutoTokenizer.from_pretrained(folder), chat_template=template)

    auto = transformers.AutoProcessor.__dict__["from_pretrained"]
    from swift.model import get_processor

    def arguments(run, settings):  # `swift rlhf ...` (no --rlhf_type: its default, dpo), parsed as ms-swift does
        argv = ["--model", run["checkpoint"], "--model_type", run["model_type"], "--template", run["template"],
                "--dataset", *job["data"], "--output_dir", job["output"], "--load_from_cache_file", "false",
                "--remove_unused_columns", "false"]  # keeps the id column (the encode ignores it)
        for key, value in settings.items():
            if value is not None:
                argv += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
        return rlhf_arguments(argv)

    out = {"checks": [], "runs": {}}
    first = job["runs"][0]
    for case in job["checks"]:
        try:
            a = arguments(first, case)
            out["checks"].append({"rlhf_type": a.rlhf_type, "truncation": a.truncation_strategy,
                                  "loss_scale": str(a.loss_scale)})
        except Exception as e:
            out["checks"].append({"raises": str(e)})

    for run in job["runs"]:
        transformers.AutoProcessor.from_pretrained = staticmethod(load) if run["qwen"] else auto
        processor = get_processor(run["checkpoint"], model_type=run["model_type"])
        results = {"max_model_len": processor.model_info.max_model_len}
        for max_length, strategy, more in run["settings"]:
            args = arguments(run, {"max_length": max_length, "truncation_strategy": strategy,
                                   "split_dataset_ratio": 0, **more})
            template = rlhf_template(args, processor)

            def judge(wanted, row):  # LazyLLMDataset.__getitem__'s encode_func
                encoded = template.encode(row, return_length=True)
                res = {}
                for side in ("chosen", "rejected"):
                    ids, labels = list(encoded[side + "_input_ids"]), list(encoded[side + "_labels"])
                    res[side] = [len(ids), sum(1 for t in labels if t != -100), ids.count(run["image_id"])]
                return res

            results[f"{max_length}-{strategy}-{json.dumps(more, sort_keys=True)}"] = {
                "mode": template.mode, "rlhf_type": args.rlhf_type, "loss_scale": str(args.loss_scale),
                "rows": judged_rows(args, job["ids"], run["skip"], judge)}
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
        # a last answer that is untrained and ends with the template's stop word (Qwen's; LLaVA's EOS): no suffix, so
        # the chosen sequence has no trained token (VC003); the rejected answer is trained
        {"messages": [user("<image>Q"), bot("untrained<|im_end|>", loss=False)], "rejected_response": "B",
         "images": [thin]},
        {"messages": [user("Q"), bot("untrained</s>", loss=False)], "rejected_response": "B"},
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
    """A `swift rlhf` script in the shape of ms-swift's examples/train/rlhf/dpo (orpo, simpo, cpo) scripts."""
    settings = {"rlhf_type": "dpo", **settings}
    words = [f"--{key} " + " ".join(shlex.quote(str(v)) for v in (value if isinstance(value, list) else [value]))
             for key, value in settings.items() if value is not None]
    path = tmp_path / "rlhf.sh"
    path.write_text("\n".join([f"MAX_PIXELS={MAX_PIXELS} \\", "swift rlhf \\", f"    --model {model} \\",
                               f"    --dataset {' '.join(map(str, data))} \\", *(f"    {w} \\" for w in words),
                               "    --output_dir output", ""]))
    return path


@pytest.mark.parametrize("k", range(len(CHECKS)))
def test_run_level_checks_are_swifts_own(tmp_path: Path, oracle: dict[str, Any], k: int) -> None:
    """vlmcheck refuses a paired run exactly where ms-swift's parser and checks raise, with ms-swift's message;
    where they pass, it reads the trainer, truncation strategy and loss scale ms-swift sets."""
    theirs, case = oracle["checks"][k], oracle["cases"][k]
    path = script(tmp_path, oracle["checkpoints"]["qwen2_vl"], oracle["data"], case)
    raw = swift.read_launch(path.read_text(), path=path, env={})
    assert raw is not None and raw["stage"] == case.get("rlhf_type", "dpo")
    if "raises" in theirs:
        with pytest.raises(UsageError) as refused:
            swift.read_config(raw, path=path)
        assert theirs["raises"] in str(refused.value), (theirs, str(refused.value))
        return
    config = swift.read_config(raw, path=path)
    assert config.pairs is not None
    assert (config.pairs.trainer, config.truncation, config.pairs.loss_scale) == (
        theirs["rlhf_type"], "delete" if theirs["truncation"] == "raise" else theirs["truncation"],
        theirs["loss_scale"])


CASES = [(name, *setting) for name, settings in RUNS.items() for setting in settings]


@pytest.mark.parametrize(("template", "max_length", "strategy", "more"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}{'-' + '-'.join(c[3].values()) if c[3] else ''}" for c in CASES])
def test_each_pair_is_judged_as_swifts_rlhf_encode_makes_it(tmp_path: Path, oracle: dict[str, Any], template: str,
                                                            max_length: int | None, strategy: str,
                                                            more: dict[str, Any]) -> None:
    run = oracle["runs"][template]
    setting = run[f"{max_length}-{strategy}-{json.dumps(more, sort_keys=True)}"]
    theirs = setting["rows"]
    assert setting["mode"] == "rlhf", setting["mode"]  # every paired type: DPO's encode (Template._rlhf_encode)
    path = script(tmp_path, oracle["checkpoints"][template], oracle["data"],
                  {"max_length": max_length, "truncation_strategy": strategy, **more})
    out = tmp_path / "records.jsonl"
    report = vlmcheck.check(path, output=out)
    shown = report.summary["framework"]
    assert (shown["command"], shown["loss_scale"]) == (
        f"swift rlhf --rlhf_type {more.get('rlhf_type', 'dpo')}", setting["loss_scale"]), (shown, setting)
    ours = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in ours if r["id"] in theirs] == list(theirs)
    limit = max_length or run["max_model_len"]
    seen, untrained = set(), set()
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
            if "VC003" in record["findings"]:
                untrained.add(k)
    assert {"deleted", "encoded"} <= seen, seen
    if max_length is None:  # the chosen sequence without a trained token (a row ending with the stop word)
        assert untrained, "no VC003 case"
    if max_length is not None and strategy == "delete":
        assert "max_length" in seen, seen


def test_other_rlhf_types_stay_refused(tmp_path: Path) -> None:
    """kto, rm, ppo, gkd encode rows their own way: refused by name, as `swift pt` is; the paired types are read."""
    path = tmp_path / "run.sh"
    for kind in ("kto", "rm", "ppo", "gkd"):
        path.write_text(f"swift rlhf --rlhf_type {kind} --model m --dataset d.jsonl\n")
        with pytest.raises(UsageError, match=f"--rlhf_type {kind}` is not modelled"):
            swift.read_launch(path.read_text(), path=path, env={})
    for kind, line in [("dpo", ""), ("orpo", "--rlhf_type orpo"), ("simpo", "--rlhf_type=simpo"),
                       ("cpo", "--rlhf_type cpo")]:  # dpo: the default type
        path.write_text(f"swift rlhf --model m --dataset d.jsonl {line}\n")
        raw = swift.read_launch(path.read_text(), path=path, env={})
        assert raw is not None and raw["stage"] == kind
