"""``vlmcheck check`` on verl runs, proved against verl's own ``RLHFDataset``.

verl 0.9.1 pins ``transformers<5.11``, which clashes with the test extras, so the test setup builds it its own
environment once and caches it under ``~/.cache/vlmcheck/oracles/verl-<hash>`` (torch kept at 2.13.0 by a
constraints file; qwen-vl-utils imports torchvision for videos only, so a stand-in module is put in place while it
is imported, in that environment only). There, ``RLHFDataset`` is built for real on the generated parquet file
(geo3k's layout: a ``prompt`` chat list with ``<image>`` tags, ``images`` as byte structs) with transformers'
Qwen2-VL processor made from the test checkpoint's files, and reports per row:

- the prompt length verl's overlong filter computes (its own ``doc2len``, observed through the threshold it is
  compared with, so no line of verl is copied), or that it cannot compute one;
- each image's token count, from verl's own ``_build_messages`` and ``_process_multi_modal_info``;
- which rows survive ``filter_overlong_prompts=True`` at several ``max_prompt_length`` values.

What the rollout does with a prompt over ``rollout.prompt_length`` is proved by running verl's own rollout worker
up to its generation call: ``AgentLoopWorker`` (``experimental/agent_loop/agent_loop.py``) built from verl's own
Hydra config (``ppo_trainer.yaml`` composed with the launch script's overrides) runs a batch that verl's
``collate_fn`` makes of one ``RLHFDataset`` item through its default single-turn agent loop, which tokenizes the
prompt with its Continuous Token builder and then either raises ("Multimodal prompt produced N tokens") or caps a
text prompt before handing it to the generation server. The server is the one stand-in: it records the prompt ids
verl hands it and stops the loop there (nothing after that call runs). The worker loads the tokenizer itself; its
processor (``AutoProcessor``, which needs torchvision for Qwen2-VL's video processor, and no CPU torchvision exists
for this torch) is set to the same image-only Qwen2-VL processor as the dataset's.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from oracle_env import QWEN_IMAGES_PRELUDE, OracleEnv
from PIL import Image

import vlmcheck

VERL = "verl==0.9.1"
REQUIREMENTS = ("transformers==5.10.4", "datasets==5.2.0", "omegaconf", "hydra-core", "tensordict==0.10.0", "ray",
                "pandas", "pyarrow", "pillow", "packaging",
                # what importing the agent loop needs beyond the dataset (verl's profiler, its LLM server client)
                "codetiming==1.4.0", "cachetools==8.0.3", "fastapi==0.165.0", "uvicorn==0.55.0")
NO_DEPS = (VERL, "qwen-vl-utils==0.0.14")  # verl's own list pulls in wandb, tensorboard, ...; the dataset needs none


ENV = OracleEnv("verl", packages=REQUIREMENTS, no_deps=NO_DEPS)
oracle_python = ENV.python


ORACLE = QWEN_IMAGES_PRELUDE + textwrap.dedent('''
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    tokenizer = AutoTokenizer.from_pretrained(folder)
    template = json.load(open(folder + "/chat_template.json"))["chat_template"]
    processor = ImageOnly(image_processor=Qwen2VLImageProcessorPil(**values), tokenizer=tokenizer,
                          chat_template=template)

    def dataset(**data):
        config = OmegaConf.create({"cache_dir": job["cache"], "filter_overlong_prompts_workers": 1,
                                   "image_patch_size": job["patch"], **data})
        return RLHFDataset(data_files=[job["parquet"]], tokenizer=tokenizer, config=config, processor=processor)

    class Threshold:
        """Stands for max_prompt_length: verl's filter compares each row's length with it (appended to a file:
        datasets runs a copy of the filter function), and adds 1 to it for a row whose length it cannot compute."""
        def __init__(self, path):
            self.path = path
        def __ge__(self, length):
            with open(self.path, "a") as f:
                f.write(json.dumps(length) + "\\n")
            return True
        def __add__(self, one):
            return None  # the row could not be measured
        def seen(self):
            return [json.loads(line) for line in open(self.path)]

    out = {"lengths": [], "images": [], "survivors": {}}
    ds = dataset(filter_overlong_prompts=False)
    threshold = Threshold(job["cache"] + ".lengths")
    ds.max_prompt_length = threshold
    ds.filter_overlong_prompts = True
    ds.maybe_filter_out_long_prompts(ds.dataframe)
    out["lengths"] = threshold.seen()
    merge = processor.image_processor.merge_size ** 2
    for row in ds.dataframe:
        try:
            messages = ds._build_messages(dict(row), key="prompt")
            images, _, _ = ds._process_multi_modal_info(messages, ds.image_patch_size, ds.config)
        except Exception:
            out["images"].append(None)
            continue
        if not images:
            out["images"].append([])
            continue
        grids = processor.image_processor(images=images)["image_grid_thw"]
        out["images"].append([int(g[0] * g[1] * g[2]) // merge for g in grids])
    boundary = next(length for length in out["lengths"] if length)  # a limit exactly at a row's length
    out["boundary"] = boundary
    for limit in [*job["limits"], boundary, boundary - 1]:
        kept = dataset(filter_overlong_prompts=True, max_prompt_length=limit)
        out["survivors"][str(limit)] = [int(r["extra_info"]["index"]) for r in kept.dataframe]
    print("ORACLE" + json.dumps(out))
''')


ROLLOUT = QWEN_IMAGES_PRELUDE + textwrap.dedent('''
    import asyncio, os
    import verl
    from hydra import compose, initialize_config_dir
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.protocol import DataProto
    from verl.utils.config import omega_conf_to_dataclass
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    tokenizer = AutoTokenizer.from_pretrained(folder)
    template = json.load(open(folder + "/chat_template.json"))["chat_template"]
    processor = ImageOnly(image_processor=Qwen2VLImageProcessorPil(**values), tokenizer=tokenizer,
                          chat_template=template)

    class Reached(Exception):
        """The rollout got as far as the generation call."""

    class Server:
        """Stands for the generation server, which the agent loop calls only once it has decided on the prompt:
        records the prompt ids it is handed and stops the loop there."""
        sent = None
        async def generate(self, *, prompt_ids, **kwargs):
            self.sent = list(prompt_ids)
            raise Reached

    def trainer_config(overrides):
        """verl's own trainer config (ppo_trainer.yaml) with a launch script's overrides."""
        where = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
        with initialize_config_dir(config_dir=where, version_base=None):
            return compose("ppo_trainer", overrides=[
                f"actor_rollout_ref.model.path={folder}", f"data.train_files={job['parquet']}",
                "actor_rollout_ref.rollout.name=vllm", f"+data.cache_dir={job['cache']}", *job["common"],
                *overrides])

    server = Server()
    worker = AgentLoopWorker(trainer_config([]), llm_client=server)  # loads the tokenizer itself (seconds)
    worker.processor = processor  # AutoProcessor needs torchvision for the video processor: the image-only one

    def rollout(index, overrides):
        """Row ``index`` through verl's rollout worker, with the trainer config the launch script's overrides make:
        the worker hands ``worker.config`` to the agent loop it builds for each row, and reads its own settings
        from the rollout section (as its __init__ does)."""
        config = trainer_config(overrides)
        worker.config = config
        worker.rollout_config = omega_conf_to_dataclass(config.actor_rollout_ref.rollout)
        server.sent = None
        dataset = RLHFDataset(data_files=config.data.train_files, tokenizer=worker.tokenizer, config=config.data,
                              processor=processor)
        case = {"row": index, "overrides": overrides, "budget": config.actor_rollout_ref.rollout.prompt_length}
        try:
            batch = DataProto.from_single_dict(collate_fn([dataset[index]]), meta_info={"global_steps": 1})
            asyncio.run(worker.generate_sequences(batch))
            case["raised"] = "the generation server was not called"
        except Reached:
            case["sent"] = server.sent
        except Exception as e:
            case["raised"] = f"{type(e).__name__}: {e}"
        return case

    out = {"whole": [rollout(i, [f"data.max_prompt_length={job['ample']}"]) for i in range(job["rows"])], "cases": []}
    for whole in out["whole"]:
        if "sent" not in whole:
            continue
        n = len(whole["sent"])  # the prompt at exactly the budget, one token over it (set either way), twice it
        for overrides in ([f"data.max_prompt_length={n}"], [f"data.max_prompt_length={n - 1}"],
                          [f"data.max_prompt_length={job['ample']}", f"actor_rollout_ref.rollout.prompt_length={n - 1}"],
                          [f"data.max_prompt_length={n // 2}"]):
            out["cases"].append(rollout(whole["row"], overrides))
    print("ORACLE" + json.dumps(out))
''')


def png(size: tuple[int, int]) -> dict[str, Any]:
    buf = io.BytesIO()
    Image.new("RGB", size, "green").save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def geo3k_rows() -> list[dict[str, Any]]:
    """geo3k's layout (verl's examples/data_preprocess/geo3k.py): an ``<image>`` tag in the user turn."""
    def row(i: int, content: str, sizes: list[tuple[int, int]], system: str | None = None) -> dict[str, Any]:
        prompt = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": content}]
        return {"data_source": "geo3k", "prompt": prompt, "images": [png(s) for s in sizes], "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": "3"}, "extra_info": {"index": i, "split": "train"}}

    ask = " Think step by step and put the answer in \\\\boxed{}."
    return [
        row(0, "<image>Find x." + ask, [(640, 480)]),
        row(1, "<image>Find the area." + ask, [(1280, 960)]),  # 1.2 megapixels
        row(2, "Compare <image> with <image>." + ask, [(56, 56), (300, 12)], system=""),  # a side under 28 px
        row(3, "<image>Read the strip.", [(6000, 20)]),  # ratio 300: qwen-vl-utils raises
        row(4, "No tag for the image.", [(100, 100)]),  # verl's assertion fails
        row(5, "A text-only question. " * 30, []),
        row(6, "<image>" + "A long question. " * 100, [(224, 224)], system="You are a geometry tutor."),
    ]


def write_corpus(root: Path) -> Path:
    import datasets

    parquet = root / "train.parquet"
    ds = datasets.Dataset.from_list(geo3k_rows()).cast_column("images", datasets.List(datasets.Image()))
    ds.to_parquet(str(parquet))
    return parquet


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen3_vl_moe"])
def verl_oracle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                checkpoint_for: Any) -> dict[str, Any]:
    """verl's RLHFDataset on the corpus, on the test checkpoint of a model type: Qwen2-VL (patch 14, verl's
    default data.image_patch_size) and Qwen3-VL MoE (Qwen3-VL's processor: patch 16, which verl's Qwen3-VL
    examples set as data.image_patch_size=16)."""
    root = tmp_path_factory.mktemp("verl")
    parquet = write_corpus(root)
    checkpoint = checkpoint_for(request.param)
    patch = json.loads((checkpoint / "preprocessor_config.json").read_text())["patch_size"]
    job = {"checkpoint": str(checkpoint), "parquet": str(parquet), "cache": str(root / "cache"),
           "limits": LIMITS, "patch": patch}
    return {"parquet": parquet, "checkpoint": checkpoint, "patch": patch, **run_oracle(ORACLE, job)}


def run_oracle(script: str, job: dict[str, Any]) -> Any:
    """An oracle script run in verl's environment; what it prints after ``ORACLE``."""
    done = subprocess.run([str(oracle_python()), "-c", script, json.dumps(job)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "RAY_DISABLE_IMPORT_WARNING": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("ORACLE")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    return json.loads(lines[-1][len("ORACLE"):])


LIMITS = [1024]


def launch(tmp_path: Path, oracle: dict[str, Any], *overrides: str) -> Path:
    """A launch script in the shape of verl's examples/grpo_trainer/run_qwen2_5_vl-7b.sh."""
    checkpoint, parquet = oracle["checkpoint"], oracle["parquet"]
    if oracle["patch"] != 14:
        overrides = (f"data.image_patch_size={oracle['patch']}", *overrides)
    script = tmp_path / "run_qwen2_vl.sh"
    lines = ["set -x", "ENGINE=${1:-vllm}", f"DATA={parquet.parent}", "", "python3 -m verl.trainer.main_ppo \\",
             "    algorithm.adv_estimator=grpo \\", f"    data.train_files=$DATA/{parquet.name} \\",
             "    data.val_files=$DATA/test.parquet \\", "    data.train_batch_size=512 \\",
             "    data.max_response_length=2048 \\", "    data.truncation='error' \\", "    data.image_key=images \\",
             f"    actor_rollout_ref.model.path={checkpoint} \\", "    actor_rollout_ref.actor.optim.lr=1e-6 \\",
             "    actor_rollout_ref.rollout.name=$ENGINE \\", "    actor_rollout_ref.rollout.n=5 \\",
             "    trainer.logger=['console','wandb'] \\", "    trainer.project_name='verl_grpo_example_geo3k' \\",
             *(f"    {o} \\" for o in overrides), "    trainer.total_epochs=15 $@", ""]
    script.write_text("\n".join(lines))
    return script


def records(script: Path, tmp_path: Path) -> list[dict[str, Any]]:
    return checked(script, tmp_path)[0]


def checked(script: Path, tmp_path: Path) -> tuple[list[dict[str, Any]], Any]:
    out = tmp_path / "records.jsonl"
    report = vlmcheck.check(script, output=out)
    return [json.loads(line) for line in out.read_text().splitlines()], report


def test_prompt_lengths_and_image_counts_agree_with_rlhfdataset(tmp_path: Path, verl_oracle: dict[str, Any]) -> None:
    ours = records(launch(tmp_path, verl_oracle, "data.max_prompt_length=100000"), tmp_path)
    assert len(ours) == len(verl_oracle["lengths"]) == len(geo3k_rows())
    for record, length, images in zip(ours, verl_oracle["lengths"], verl_oracle["images"]):
        assert record["tokens"] == length, (record, length)  # None: verl cannot measure the row
        if length is not None:
            assert record["image_tokens"] == images, (record, images)
        assert "VC003" not in record["findings"]  # prompts have no assistant turn by design
    assert sum(length is None for length in verl_oracle["lengths"]) == 2  # the 300:1 strip, the missing tag


@pytest.mark.parametrize("limit", LIMITS)
def test_the_overlong_filter_keeps_what_rlhfdataset_keeps(tmp_path: Path, verl_oracle: dict[str, Any],
                                                          limit: int) -> None:
    ours, report = checked(launch(tmp_path, verl_oracle, f"data.max_prompt_length={limit}",
                                  "data.filter_overlong_prompts=True"), tmp_path)
    kept = [i for i, r in enumerate(ours) if r["framework"]["verdict"] != "filtered"]
    assert kept == verl_oracle["survivors"][str(limit)]
    assert len(kept) < len(ours)
    fixes = {f.index: f.fix for f in report.findings if f.code == "VC204"}
    for record in ours:
        if record["framework"]["verdict"] == "filtered" and record["tokens"] is not None:
            assert record["findings"] == ["VC204"]
            assert fixes[record["index"]].startswith(f"set data.max_prompt_length={record['tokens']} ")


def test_the_filter_boundary_is_verls(tmp_path: Path, verl_oracle: dict[str, Any]) -> None:
    for limit in (verl_oracle["boundary"], verl_oracle["boundary"] - 1):  # a prompt of exactly the limit is kept
        ours = records(launch(tmp_path, verl_oracle, f"data.max_prompt_length={limit}",
                              "data.filter_overlong_prompts=True"), tmp_path)
        kept = [i for i, r in enumerate(ours) if r["framework"]["verdict"] != "filtered"]
        assert kept == verl_oracle["survivors"][str(limit)]


def test_without_the_filter_an_image_prompt_over_budget_stops_the_rollout(tmp_path: Path,
                                                                          verl_oracle: dict[str, Any]) -> None:
    # data.filter_overlong_prompts is False by default
    ours = records(launch(tmp_path, verl_oracle, "data.max_prompt_length=1024"), tmp_path)
    verdicts = {r["index"]: (r["framework"]["verdict"], r["findings"]) for r in ours}
    lengths = verl_oracle["lengths"]
    assert verdicts[1] == ("crash", ["VC206"]) and lengths[1] > 1024  # the 1.2-megapixel image
    assert verdicts[4][0] == "stops" and verdicts[3][0] == "stops"
    assert verdicts[0] == ("ok", []) and lengths[0] <= 1024


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen3_vl_moe"])
def verl_rollout(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                 checkpoint_for: Any) -> dict[str, Any]:
    """Each row through verl's rollout worker up to its generation call: once with an ample budget (the whole
    prompt), then, for every row that gets that far, with the budget at exactly its length, one token under it (set
    by data.max_prompt_length, and by actor_rollout_ref.rollout.prompt_length), and at half of it."""
    root = tmp_path_factory.mktemp("verl_rollout")
    parquet = write_corpus(root)
    checkpoint = checkpoint_for(request.param)
    patch = json.loads((checkpoint / "preprocessor_config.json").read_text())["patch_size"]
    common = [f"data.image_patch_size={patch}"] if patch != 14 else []  # as launch() writes it
    job = {"checkpoint": str(checkpoint), "parquet": str(parquet), "cache": str(root / "cache"), "common": common,
           "rows": len(geo3k_rows()), "ample": AMPLE}
    return {"parquet": parquet, "checkpoint": checkpoint, "patch": patch, **run_oracle(ROLLOUT, job)}


AMPLE = 100000
# the findings that say what verl does with a row (the others describe it: an image upscaled, ...)
RULED = ("VC001", "VC006", "VC203", "VC204", "VC206")
# verl's message when a prompt with images is over the budget (experimental/agent_loop/agent_loop.py)
OVER = re.compile(r"ValueError: Multimodal prompt produced (\d+) tokens, exceeding rollout\.prompt_length=(\d+)\.")


def test_the_rollout_raises_on_images_and_cuts_text_from_the_left_as_verl_does(
        tmp_path: Path, verl_rollout: dict[str, Any]) -> None:
    whole = {case["row"]: case.get("sent") for case in verl_rollout["whole"]}
    checks: dict[tuple[str, ...], list[dict[str, Any]]] = {}  # vlmcheck once per launch script
    seen = set()
    for case in [*verl_rollout["whole"], *verl_rollout["cases"]]:
        overrides = tuple(case["overrides"])
        if overrides not in checks:
            checks[overrides] = records(launch(tmp_path, verl_rollout, *overrides), tmp_path)
        ours = checks[overrides][case["row"]]
        verdict, tokens = ours["framework"]["verdict"], ours["tokens"]
        found = [code for code in ours["findings"] if code in RULED]  # not VC106 (an image upscaled), VC107 (why)
        where = (case["row"], case["overrides"], ours)
        over = OVER.match(case.get("raised", ""))
        if over:  # a prompt with images over the budget: verl stops the run, naming its length
            assert (verdict, found) == ("crash", ["VC206"]), where
            assert (tokens, case["budget"]) == (int(over[1]), int(over[2])), where
        elif "raised" in case:  # verl cannot build the row (its tag count, an image qwen-vl-utils refuses)
            assert (verdict, found) == ("stops", ["VC001"]), (where, case["raised"])
        elif case["sent"] == whole[case["row"]]:  # handed to the server whole
            assert (verdict, found, tokens) == ("ok", [], len(case["sent"])), where
        else:  # handed to the server cut: the tokens vlmcheck says are kept, of the whole prompt
            assert (verdict, found, tokens) == ("cut", ["VC203"], len(whole[case["row"]])), where
            start, end = ours["framework"]["prompt_tokens_kept"]
            assert case["sent"] == whole[case["row"]][start:end], where
        seen.add((verdict, bool(ours["image_tokens"])))
    # the corpus reaches every outcome: images over (crash), text over (cut), both at the budget (ok), unbuildable
    assert seen == {("crash", True), ("cut", False), ("ok", True), ("ok", False), ("stops", True)}
