"""Make VLM-R1's golden cases: run VLM-R1's own ``grpo_jsonl.py`` data path and its trainer's prompt step on the
corpus of tests/frameworks/vlm_r1_corpus.py and write what they do, per row, to golden.json.

Not run by the tests (VLM-R1 does not install from the package registry, and pins transformers 4.49 and trl
0.17): run by hand in such an environment beside a checkout of VLM-R1 (see README.md here):

    python tests/assets/vlm_r1_golden/make_golden.py VLM_R1_CHECKOUT CHECKPOINT_DIR COMMIT

VLM-R1's code is imported from the checkout, never copied: ``grpo_jsonl.main`` runs for real with its trainer
class replaced by a recorder (which keeps the dataset and settings ``main`` hands it), and the trainer's own
``_generate_and_score_completions`` runs for each row on an object without a model, up to the point where it
hands the prompt to ``generate``, where the inputs are kept. Imports of reward-function libraries and of the
InternVL / GLM modules (irrelevant to Qwen prompts) get stand-ins.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "frameworks"))  # vlm_r1_corpus

from vlm_r1_corpus import write_corpus, write_rec_corpus  # noqa: E402

checkout, checkpoint, commit = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve(), sys.argv[3]
source = checkout / "src" / "open-r1-multimodal" / "src"
sys.path[:0] = [str(source), str(source / "open_r1")]


def stand_in(name: str, **attrs: object) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module


def unused(*args: object, **kwargs: object) -> None:
    raise AssertionError("not used for prompts")


import torch  # noqa: E402
from transformers import AutoProcessor  # noqa: E402
from trl import TrlParser  # noqa: E402

# after transformers and trl, which look some of these names up for themselves
stand_in("babel")
stand_in("babel.numbers", parse_decimal=unused)
stand_in("math_verify", parse=unused, verify=unused)
stand_in("Levenshtein", ratio=unused)
stand_in("json_repair", repair_json=unused)
stand_in("openai", OpenAI=lambda **kwargs: None)  # a client made at import, for an LLM reward
stand_in("pycocotools")
stand_in("pycocotools.mask")
sys.modules["pycocotools"].mask = sys.modules["pycocotools.mask"]  # type: ignore[attr-defined]
# model-side patches (flash attention, deepspeed loading), applied at import: nothing a prompt goes through
stand_in("open_r1.qwen2_5vl_monkey_patch", monkey_patch_qwen2_5vl_flash_attn=lambda: None,
         monkey_patch_qwen2_5vl_forward=lambda: None, monkey_patch_torch_load=lambda: None)
stand_in("open_r1.vlm_modules.internvl_module", InvernVLModule=type("InvernVLModule", (), {}))
stand_in("open_r1.vlm_modules.glm_module", GLMVModule=type("GLMVModule", (), {}))


import open_r1.grpo_jsonl as grpo  # noqa: E402
import open_r1.grpo_rec as grpo_rec  # noqa: E402
from open_r1.trainer.grpo_trainer import VLMGRPOTrainer  # noqa: E402


class Recorder:
    """Stands for VLMGRPOTrainer in grpo_jsonl.main: keeps what main hands the trainer."""

    last: dict = {}

    def __init__(self, **kwargs):
        Recorder.last = kwargs

    def train(self, **kwargs):
        pass

    def save_model(self, *args):
        pass


class Captured(Exception):
    pass


class NoModel:
    """Where the trainer hands the prompt to generate, the inputs are kept."""

    def generate(self, **kwargs):
        raise Captured(kwargs)


grpo.VLMGRPOTrainer = Recorder
grpo_rec.VLMGRPOTrainer = Recorder
MERGE = 4


def run(flags: list[str], script: types.ModuleType = grpo) -> dict:
    parser = TrlParser((script.GRPOScriptArguments, script.GRPOConfig, script.GRPOModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(args=flags)
    try:
        script.main(script_args, training_args, model_args)
    except Exception as e:  # main raises before training: the run stops
        return {"flags": flags, "stops": f"{type(e).__name__}: {str(e)[:200]}"}
    kwargs = Recorder.last
    module = kwargs["vlm_module"]
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path)
    # the trainer's own loop: each (component, keyword) the module names is set from the trainer's kwargs
    for component, keyword in module.get_custom_processing_keywords():
        if keyword in kwargs:
            setattr(getattr(processor, component, processor), keyword, kwargs[keyword])
    processor.pad_token_id = processor.tokenizer.pad_token_id
    processor.eos_token_id = processor.tokenizer.eos_token_id
    trainer = object.__new__(VLMGRPOTrainer)
    trainer.__dict__.update(
        accelerator=types.SimpleNamespace(device=torch.device("cpu"), unwrap_model=lambda m, **k: m,
                                          state=types.SimpleNamespace(deepspeed_plugin=None)),
        args=types.SimpleNamespace(device=torch.device("cpu"), past_index=-1), is_deepspeed_enabled=False,
        is_fsdp_enabled=False, vlm_module=module, processing_class=processor, generation_config=None)
    rows = []
    dataset = kwargs["train_dataset"]
    for k in range(len(dataset)):
        try:
            example = dataset[k]
        except Exception as e:  # grpo_rec's __getitem__ raises in the training loop
            rows.append({"id": k, "tokens": None, "images": None, "error": f"{type(e).__name__}: {str(e)[:200]}"})
            continue
        # grpo_jsonl's rows carry an id; grpo_rec's carry their problem (which says where a row was replaced)
        row = {"id": example.get("id", k), "tokens": None, "images": None, "error": None}
        if "problem" in example and "id" not in example:
            row["problem"] = example["problem"]
        try:
            VLMGRPOTrainer._generate_and_score_completions(trainer, [dict(example)], NoModel())
            row["error"] = "generate was not reached"
        except Captured as c:
            inputs = c.args[0]
            row["tokens"] = int(inputs["attention_mask"].sum())
            grids = inputs.get("image_grid_thw")
            row["images"] = [] if grids is None else [int(g.prod()) // MERGE for g in grids]
        except Exception as e:  # the step raises: the run crashes here
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        rows.append(row)
    return {"flags": flags, "max_prompt_length": training_args.max_prompt_length, "rows": rows}


with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp)
    files = write_corpus(root / "data")
    rec = write_rec_corpus(root / "rec")
    model = root / "Qwen2-VL-tiny"  # VLM-R1 picks its Qwen module from the model's name
    shutil.copytree(checkpoint, model)
    processor_files = json.loads((model / "chat_template.json").read_text())
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = processor_files["chat_template"]  # as a hub checkpoint carries it
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    os.environ["LOG_PATH"] = str(root / "log.txt")

    def flags(*extra: str, data: str = f"{files['train']}", folders: str = f"{files['images']}") -> list[str]:
        return ["--output_dir", str(root / "out"), "--model_name_or_path", str(model), "--dataset_name", "none",
                "--data_file_paths", data, "--image_folders", folders, "--max_prompt_length", "1024",
                "--num_generations", "8", "--per_device_train_batch_size", "8", "--report_to", "none",
                "--use_cpu", "true", *extra]

    golden = {
        "vlm_r1_commit": commit,
        "transformers": __import__("transformers").__version__, "trl": __import__("trl").__version__,
        "scenarios": {
            "default": run(flags()),
            "rec_small_pixels": run(flags("--task_type", "rec", "--max_pixels", "200704", "--min_pixels", "3136")),
            "odLength_big_min": run(flags("--task_type", "odLength", "--min_pixels", "262144")),
            "two_files": run(flags(data=f"{files['train']}:{files['more']}",
                                   folders=f"{files['images']}:{files['more_images']}")),
            "missing_image": run(flags(data=str(files["missing"]))),
            # grpo_rec.py: its YAML --dataset_name and --image_root (the launch of run_grpo_rec.sh)
            "grpo_rec": run(["--output_dir", str(root / "out"), "--model_name_or_path", str(model),
                             "--dataset_name", str(rec["rec_yaml"]), "--image_root", str(rec["images"]),
                             "--max_prompt_length", "1024", "--num_generations", "8",
                             "--per_device_train_batch_size", "8", "--report_to", "none", "--use_cpu", "true"],
                            script=grpo_rec),
        },
    }
(HERE / "golden.json").write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")
print("wrote", HERE / "golden.json")
