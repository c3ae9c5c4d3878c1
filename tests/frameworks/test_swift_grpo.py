"""``vlmcheck check`` on ``swift rlhf --rlhf_type grpo`` launch scripts, proved against ms-swift 4.6's own GRPO path in
its environment (swift_env.py), one subprocess for every case:

- the run-level checks: ``RLHFArguments`` built from each setting (``_init_grpo``, ``_init_rollout``, GRPOConfig's
  ``_init_generation_batch_params``, ``_check_teacher``): vlmcheck refuses exactly the settings ms-swift raises on,
  quoting its message, and finds the same generation batch for the others;
- each row as the GRPO trainer meets it (swift_env.RLHF_ROWS): the dataset from ``args.load_dataset()``, the
  template from ``SwiftRLHF._prepare_template`` (``args.get_template`` in the mode it sets for grpo, train); under
  ``delete`` the length check before the rollout (``rl_core.resample.resample_encode_failed_inputs``); the rollout's
  request (``GRPOSample.from_row``, ``remove_response``, ``to_infer_request``) encoded by a copy of the template in
  the mode ``TransformersEngine`` sets (transformers), as ``_prepare_vllm`` makes it; the engine's budget
  (``InferEngine.set_default_max_tokens``, on an attribute holder with the ``max_model_len`` and offset its
  ``__init__`` sets); and the training step's encode of the prompt with a completion (``encode_sample`` under
  ``_template_context``, as ``_prepare_batch_inputs`` runs it).

No model is loaded (nothing here needs a GPU). ``swift.rlhf_trainers.utils`` imports msgspec for a vLLM weight-sync
struct only; it is not installed in the oracle environment, so a stand-in module with ``field`` is put in place.
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
REWARD = {"reward_funcs": ["accuracy"]}
BASE = {**REWARD, "num_generations": 2, "per_device_train_batch_size": 2}  # the runs' batches: GRPO's checks pass
# (max_length, truncation_strategy, more settings) per template; None: ms-swift's default max_length
RUNS = {
    "qwen2_vl": [(None, "left", {}), (120, "delete", {}), (120, "left", {}), (300, "delete", {}), (300, "left", {}),
                 (None, "left", {"loss_scale": "default"})],
    "llava1_5_hf": [(None, "left", {}), (600, "delete", {}), (600, "left", {})],
}
IMAGE_IDS = {"qwen2_vl": 151655, "llava1_5_hf": 32000}  # <|image_pad|>, <image>
# rows a run leaves out: CLIP sizes the 6000 x 20 strip (there for qwen-vl-utils' ratio limit) to 100,800 x 336 px,
# seconds per encode
SKIP = {"llava1_5_hf": ["r6"]}
# settings ms-swift's argument checks take or refuse (on top of the reward function)
CHECKS: list[dict[str, Any]] = [
    {},  # num_generations 8, one sample per device, one step: a generation batch of 1
    {"num_generations": 1},
    {"num_generations": 2, "per_device_train_batch_size": 2},
    {"num_generations": 4, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2},
    {"num_generations": 3, "per_device_train_batch_size": 2},
    {"num_generations": 2, "per_device_train_batch_size": 2, "generation_batch_size": 6},
    {"num_generations": 2, "per_device_train_batch_size": 4, "generation_batch_size": 6},
    {"num_generations": 2, "steps_per_generation": 3},
    {"num_generations": 2, "generation_batch_size": 4, "steps_per_generation": 3},
    {"num_generations": 2, "steps_per_generation": 0},
    {"num_generations": 1, "teacher_model": "MODEL"},
    {"num_generations": 2, "per_device_train_batch_size": 2, "truncation_strategy": "right"},
    {"num_generations": 2, "per_device_train_batch_size": 2, "truncation_strategy": "delete"},
    {"num_generations": 2, "per_device_train_batch_size": 2, "vllm_mode": "colocate"},
    {"num_generations": 2, "per_device_train_batch_size": 2, "val_dataset": ["DATA"]},
    {"num_generations": 2, "per_device_train_batch_size": 2, "val_dataset": ["DATA"], "per_device_eval_batch_size": 2},
    {"num_generations": 4, "per_device_train_batch_size": 4, "val_dataset": ["DATA"], "per_device_eval_batch_size": 2,
     "num_generations_eval": 2},
    {"num_generations": 2, "per_device_train_batch_size": 2, "val_dataset": ["DATA"], "eval_strategy": "no"},
    {"num_generations": 2, "per_device_train_batch_size": 2, "split_dataset_ratio": 0.5},
]

ORACLE = QWEN_IMAGES_PRELUDE + RLHF_ROWS + textwrap.dedent('''
    import types
    from copy import copy

    def load(*args, **kwargs):  # transformers' own Qwen2-VL processor, without the torchvision video processor
        template = json.load(open(folder + "/chat_template.json"))["chat_template"]
        return ImageOnly(image_processor=Qwen2VLImageProcessorPil(**values),
                         tokenizer=AutoTokenizer.from_pretrained(folder), chat_template=template)

    auto = transformers.AutoProcessor.__dict__["from_pretrained"]
    sys.modules["msgspec"] = types.SimpleNamespace(field=lambda default=None: default)  # see the module docstring
    from swift.arguments import RLHFArguments
    from swift.infer_engine import InferEngine, RequestConfig
    from swift.model import get_processor
    from swift.rl_core.data import GRPOSample
    from swift.rl_core.resample import resample_encode_failed_inputs
    from swift.rlhf_trainers.base_rollout_mixin import BaseRolloutTrainerMixin
    from swift.rlhf_trainers.rollout_mixin import RolloutTrainerMixin
    from swift.rlhf_trainers.utils import encode_sample
    from swift.utils import remove_response

    def arguments(run, **settings):  # RLHFArguments as `swift rlhf --rlhf_type grpo ...` builds them
        return RLHFArguments(rlhf_type="grpo", model=run["checkpoint"], model_type=run["model_type"],
                             template=run["template"], dataset=job["data"], output_dir=job["output"],
                             load_from_cache_file=False, **settings)

    def fresh(row):
        return json.loads(json.dumps(row))

    out = {"checks": [], "runs": {}}
    first = job["runs"][0]
    for case in job["checks"]:
        try:
            a = arguments(first, **case)
            out["checks"].append({"generation_batch_size": a.training_args.generation_batch_size,
                                  "truncation": a.truncation_strategy})
        except Exception as e:
            out["checks"].append({"raises": str(e)})

    for run in job["runs"]:
        transformers.AutoProcessor.from_pretrained = staticmethod(load) if run["qwen"] else auto
        processor = get_processor(run["checkpoint"], model_type=run["model_type"])
        engine = types.SimpleNamespace(max_model_len=processor.model_info.max_model_len, max_tokens_offset=0,
                                       _get_num_tokens=InferEngine._get_num_tokens)  # InferEngine.__init__'s
        results = {"max_model_len": processor.model_info.max_model_len}
        whole_prompts = {}  # the prompt in training mode does not depend on max_length: once per loss scale
        for max_length, strategy, more in run["settings"]:
            args = arguments(run, max_length=max_length, truncation_strategy=strategy, split_dataset_ratio=0,
                             **{**job["base"], **more})
            template = rlhf_template(args, processor)  # SwiftRLHF._prepare_template: grpo encodes in 'train' mode
            assert template.mode == "train", template.mode

            def judge(wanted, row):
                key = (wanted, json.dumps(more, sort_keys=True))
                if key not in whole_prompts:
                    whole = copy(template)
                    whole.max_length = None
                    prompt = fresh(row)
                    remove_response(prompt["messages"])
                    try:  # the prompt in training mode, as the length check encodes it
                        whole_prompts[key] = {"train_tokens": len(whole.encode(prompt)["input_ids"])}
                    except Exception as e:
                        whole_prompts[key] = {"train_error": repr(e)[:200]}
                res = dict(whole_prompts[key])
                if template.truncation_strategy == "raise":  # GRPOTrainer._rollout_samples under 'delete'
                    try:
                        resample_encode_failed_inputs(template, iter([[]]), [fresh(row)], max_resample_rounds=0)
                        res["resample"] = "kept"
                    except RuntimeError:
                        res["resample"] = "replaced"
                # the rollout (RolloutTrainerMixin._generate_completions -> _colocate_rollout -> TransformersEngine)
                sample = GRPOSample.from_row(fresh(row))
                BaseRolloutTrainerMixin._set_inputs_system(types.SimpleNamespace(template=template), [sample])
                remove_response(sample.messages)
                infer = copy(template)  # RolloutTrainerMixin._prepare_vllm without vLLM
                infer.padding_free, infer.sequence_parallel_size, infer.remove_unused_columns = False, 1, True
                infer.set_mode("transformers")
                try:
                    ids = list(infer.encode(sample.to_infer_request(), return_template_inputs=True)["input_ids"])
                    res.update(rollout_tokens=len(ids), rollout_image_tokens=ids.count(run["image_id"]))
                    try:
                        InferEngine.set_default_max_tokens(engine, RequestConfig(max_tokens=512),
                                                           {"input_ids": ids})
                        res["engine"] = "generates"
                    except ValueError as e:
                        res["engine"] = str(e)
                except Exception as e:
                    res["rollout_error"] = repr(e)[:200]
                # the training step of a prompt over max_length: the whole prompt with a completion, the template
                # without max_length
                if strategy == "left" and res.get("train_tokens", 0) > (max_length or engine.max_model_len):
                    done = GRPOSample.from_row({"messages": [*sample.messages,
                                                             {"role": "assistant", "content": "Yes."}],
                                                "images": row.get("images") or []})
                    with RolloutTrainerMixin._template_context(types.SimpleNamespace(), template):
                        res["trained_tokens"] = len(encode_sample(done, template)["input_ids"])
                return res

            rows = judged_rows(args, job["ids"], run["skip"], judge)
            results[f"{max_length}-{strategy}-{json.dumps(more, sort_keys=True)}"] = rows
        out["runs"][run["template"]] = results
    print("ORACLE" + json.dumps(out))
''')


def corpus(folder: Path) -> tuple[list[Path], list[str]]:
    """GRPO datasets as ms-swift documents them: a prompt (the last answer, when there is one, is what the rollout
    replaces), images with absolute paths, extra columns (``solution``) for the reward functions."""
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
        {"messages": [user("<image>What is shown? One word.")], "images": [photo], "solution": "purple"},
        {"messages": [user("<image>Q"), bot("A")], "images": [photo], "solution": "A"},  # the answer removed
        {"messages": [{"role": "system", "content": "Be terse."}, user("<image>First?"), bot("One."),
                      user("Second?"), bot("Two.")], "images": [photo]},
        # a loss key in the prompt: the rollout's request cannot hold it (dacite raises)
        {"messages": [user("<image>Q1"), bot("\nA1", loss=True), user("Q2")], "images": [photo]},
        # an earlier answer: under last_round untrained, tokenized with the text around it
        {"messages": [user("Hi"), bot("\n\nHello"), user("<image>And?"), bot("x")], "images": [thin]},
        {"messages": [user("<image>" + long), bot("y")], "images": [photo]},
        {"messages": [user("<image>Q"), bot("A")], "images": [strip]},  # ratio 300: qwen-vl-utils raises
        {"messages": [user("Say hi.")]},
        {"messages": [user("<image>Draw<start-image>"), bot("x")], "images": [photo]},
        {"messages": [user("Q"), bot("Here <image> it is"), user("More?")], "images": [photo]},
        {"messages": [{"role": "system", "content": "S"}, bot("A")]},  # nothing left but the system prompt
        {"messages": [user("<image>Q"), bot("A"), bot("B")], "images": [photo]},  # still ends with an answer
        {"messages": [{"role": "system", "content": ""}, user("<image>Q")], "images": [big]},
        {"messages": [user(long), bot("\n\nlong answer " + long), user("<image>" + long)], "images": [photo, thin]},
        {"messages": [user("literal <|image_pad|> and <image>"), bot("z")], "images": [photo]},
        {"messages": [user("<image><image> two tags"), bot("one")], "images": [photo]},
        {"messages": [user("<image>Q"), bot("untrained last", loss=False)], "images": [thin]},
    ]
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{k}", **r}) + "\n" for k, r in enumerate(rows)))
    problems = [{"id": "p0", "problem": "<image>How many?", "solution": "3", "images": [big]},
                {"id": "p1", "problem": "Count to three.", "solution": "1 2 3", "images": []}]
    more = folder / "problems.jsonl"  # problem / solution: query / response, the solution kept for the reward
    more.write_text("".join(json.dumps(r) + "\n" for r in problems))
    return [data, more], [f"r{k}" for k in range(len(rows))] + [r["id"] for r in problems]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory, qwen2_vl_checkpoint: Path) -> dict[str, Any]:
    from llava_checkpoint import llava_checkpoint

    folder = tmp_path_factory.mktemp("swift_grpo")
    data, ids = corpus(folder)
    llava = llava_checkpoint()
    checkpoints = {"qwen2_vl": qwen2_vl_checkpoint, "llava1_5_hf": llava}
    checks = [{**REWARD, **_placed(case, qwen2_vl_checkpoint, data[0])} for case in CHECKS]
    runs = [{"template": name, "checkpoint": str(checkpoints[name]), "qwen": name == "qwen2_vl",
             "model_type": name, "image_id": IMAGE_IDS[name], "settings": settings, "skip": SKIP.get(name, [])}
            for name, settings in RUNS.items()]
    job = {"checkpoint": str(qwen2_vl_checkpoint), "data": [str(d) for d in data], "ids": ids, "base": BASE,
           "checks": checks, "runs": runs, "output": str(folder / "output")}
    env = {k: v for k, v in os.environ.items() if k not in ("MAX_PIXELS", "MIN_PIXELS", "NPROC_PER_NODE", "NNODES")}
    done = subprocess.run([str(oracle_python()), "-c", ORACLE, json.dumps(job)], capture_output=True, text=True,
                          timeout=900, cwd=folder,
                          env={**env, "MAX_PIXELS": str(MAX_PIXELS), "HF_HUB_OFFLINE": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("ORACLE")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    return {"data": data, "checkpoints": checkpoints, "cases": checks, **json.loads(lines[-1][len("ORACLE"):])}


def _placed(case: dict[str, Any], model: Path, data: Path) -> dict[str, Any]:
    """A check case with its MODEL and DATA placeholders made paths."""
    swap = {"MODEL": str(model), "DATA": str(data)}
    return {k: [swap.get(x, x) for x in v] if isinstance(v, list) else swap.get(v, v) for k, v in case.items()}


def script(tmp_path: Path, model: Path, data: list[Path], settings: dict[str, Any]) -> Path:
    """A `swift rlhf --rlhf_type grpo` script in the shape of ms-swift's examples/train/grpo scripts."""
    words = []
    for key, value in settings.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        words.append(f"--{key} " + " ".join(shlex.quote(str(v)) for v in values))
    path = tmp_path / "grpo.sh"
    path.write_text("\n".join([f"MAX_PIXELS={MAX_PIXELS} \\", "swift rlhf \\", "    --rlhf_type grpo \\",
                               f"    --model {model} \\", f"    --dataset {' '.join(map(str, data))} \\",
                               *(f"    {w} \\" for w in words), "    --output_dir output", ""]))
    return path


@pytest.mark.parametrize("k", range(len(CHECKS)))
def test_run_level_checks_are_swifts_own(tmp_path: Path, oracle: dict[str, Any], k: int) -> None:
    """vlmcheck refuses a GRPO run exactly where ms-swift's argument checks raise, with ms-swift's message; where
    they pass, it finds the same generation batch and truncation strategy."""
    theirs = oracle["checks"][k]
    path = script(tmp_path, oracle["checkpoints"]["qwen2_vl"], oracle["data"], oracle["cases"][k])
    raw = swift.read_launch(path.read_text(), path=path, env={})
    assert raw is not None
    if "raises" in theirs:
        with pytest.raises(UsageError) as refused:
            swift.read_config(raw, path=path)
        assert theirs["raises"] in str(refused.value), (theirs, str(refused.value))
        return
    config = swift.read_config(raw, path=path)
    assert config.grpo is not None
    assert (config.grpo.generation_batch_size, config.truncation) == (
        theirs["generation_batch_size"], "delete" if theirs["truncation"] == "raise" else theirs["truncation"])


CASES = [(name, *setting) for name, settings in RUNS.items() for setting in settings]


@pytest.mark.parametrize(("template", "max_length", "strategy", "more"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}{'-' + '-'.join(c[3].values()) if c[3] else ''}" for c in CASES])
def test_each_prompt_is_judged_as_swifts_grpo_rollout_encodes_it(tmp_path: Path, oracle: dict[str, Any], template: str,
                                                                  max_length: int | None, strategy: str,
                                                                  more: dict[str, Any]) -> None:
    run = oracle["runs"][template]
    theirs = run[f"{max_length}-{strategy}-{json.dumps(more, sort_keys=True)}"]
    path = script(tmp_path, oracle["checkpoints"][template], oracle["data"],
                  {**BASE, "max_length": max_length, "truncation_strategy": strategy, **more})
    out = tmp_path / "records.jsonl"
    report = vlmcheck.check(path, output=out)
    assert report.summary["framework"]["rollout_max_model_len"] == run["max_model_len"]
    ours = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in ours if r["id"] in theirs] == list(theirs)
    limit = max_length or run["max_model_len"]
    for record in ours:
        k, row = record["id"], theirs.get(record["id"])
        if row is None:
            continue
        frame, verdict = record["framework"], record["framework"]["verdict"]
        if row["verdict"] == "deleted":  # ms-swift's preprocessor deletes it while loading
            assert (verdict, record["findings"]) == ("dropped", ["VC006"]), (k, record, row)
            continue
        assert row["verdict"] == "encoded", (k, row)  # the oracle's judge records each raise it expects
        assert record["supervised_tokens"] is None, (k, record)  # the completion is generated, not supervised
        if verdict == "unknown":  # a prompt still ending with an answer: not modelled
            assert record["findings"] == ["VC007"] and "train_tokens" in row, (k, record, row)
            continue
        if "train_tokens" in row:  # the prompt as ms-swift encodes it for its length check
            assert record["tokens"] == row["train_tokens"], (k, record, row)
        if row.get("resample") == "replaced":  # delete: the row is replaced by another before its rollout
            assert verdict == "dropped", (k, record, row)
            continue
        if "rollout_error" in row:  # the rollout's request or encode raises: the run stops
            assert verdict == "stops" and "VC001" in record["findings"], (k, record, row)
            continue
        assert verdict != "stops", (k, record, row)
        # the prompt the rollout generates from: cut from the left past max_length, every image token kept
        image_tokens = sum(frame["kept_image_tokens"]) + frame.get("kept_literal_image_tokens", 0)
        assert (frame["kept_tokens"], image_tokens) == (row["rollout_tokens"], row["rollout_image_tokens"]), (
            k, record, row)
        if row["train_tokens"] > limit:
            assert "VC203" in record["findings"], (k, record, row)
            # ...and the training step encodes the whole prompt with the completion, past max_length
            assert row["trained_tokens"] > limit and row["trained_tokens"] >= record["tokens"], (k, record, row)
        # the engine's budget: no room left under the model's max_model_len -> the run stops there
        assert (row["engine"] != "generates") == ("VC206" in record["findings"]), (k, record, row)
        if "VC206" in record["findings"] or "VC002" in record["findings"]:
            assert verdict == "crash", (k, record, row)
        else:
            assert verdict == ("cut" if row["train_tokens"] > limit else "ok"), (k, record, row)
    verdicts = {r["framework"]["verdict"] for r in ours if r["id"] in theirs}
    assert {"ok", "stops" if strategy == "left" else "dropped"} <= verdicts, verdicts
