"""Run LLaMA-Factory's own data pipeline on a training YAML and write what it makes of every row.

Runs inside LLaMA-Factory's environment (tests/frameworks/llamafactory_env.py), never in vlmcheck's:

    python llamafactory_oracle_runner.py OUT.json CONFIG.yaml [CONFIG.yaml ...] [--forward N]

OUT.json maps each config's file name (without .yaml) to its result.

Every step is LLaMA-Factory's code: ``get_train_args`` reads the YAML and fills in its defaults, ``load_tokenizer``
and ``patch_processor`` load the tokenizer and hand the processor the pixel budgets, ``get_dataset_list`` reads
``dataset_info.json``, the dataset is loaded with the same ``datasets.load_dataset`` call as its loader, each row
goes through its converter (``get_dataset_converter``) and its supervised processor (``_get_dataset_processor``,
the template, the mm_plugin, ``infer_seqlen``), and image sizes and features come from the plugin's
``_regularize_images`` and the real image processor (what ``_get_mm_inputs``, the collator's path, does). Rows are run one
at a time so that each result keeps its row number; then ``get_dataset`` itself runs on the whole config and its
output is compared with the rows, so the per-row path is checked against the real entry point on every run.

One adaptation, of transformers and not of LLaMA-Factory: without torchvision, transformers 5.x cannot build the
Qwen-VL processors (their video processor requires it). When ``load_tokenizer`` returns no processor, the real
processor class is built with the real PIL image processor, and LLaMA-Factory's own ``patch_processor`` is applied to
it. Qwen2-VL / Qwen2.5-VL get their real ``Qwen2VLVideoProcessor``, built by its own ``__init__`` from the dict
transformers' ``get_video_processor_dict`` reads from the checkpoint (its source file imported beside empty
torchvision modules, which are removed again); only its pixel interpolation (torchvision's) is replaced, by zeros of
the size its own code chose, and its normalization (torchvision's too) returns the values as they are: neither changes
a shape. Videos: LLaMA-Factory's ``process_messages`` counts the text (PyAV stream metadata, this environment has
PyAV); the features come from the collator's path, ``Qwen2VLPlugin._get_mm_inputs`` itself (PyAV decode, frame
choice, PIL pre-scaling, then the video processor's resize decision, temporal padding and patch grid).

``--forward N``: a tiny randomly initialised Qwen-VL model of the checkpoint's type (built from a config, no
download) runs forward on up to N kept samples whose image tokens were cut, and on up to N whole ones, through
LLaMA-Factory's own collator, recording the error each raises.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from stand_in_processors import internvl_processor

IGNORE_INDEX = -100


def _pixtral_processor(model_path: str, tokenizer: Any) -> Any:
    """transformers' own PixtralProcessor with its PIL image processor: its module imports one helper from the
    torchvision image processor's module, which the PIL module defines too (the import is pointed there)."""
    import importlib
    import types

    from transformers.models.pixtral import image_processing_pil_pixtral as pil

    name = "transformers.models.pixtral.image_processing_pixtral"
    stub = types.ModuleType(name)
    stub.get_resize_output_image_size = pil.get_resize_output_image_size  # type: ignore[attr-defined]
    sys.modules[name] = stub
    try:
        processor_class = importlib.import_module("transformers.models.pixtral.processing_pixtral").PixtralProcessor
    finally:
        del sys.modules[name]
    values = json.loads(Path(model_path, "preprocessor_config.json").read_text())
    args = json.loads(Path(model_path, "processor_config.json").read_text())
    for key in ("image_processor_type", "processor_class"):
        values.pop(key, None)
        args.pop(key, None)
    return processor_class(image_processor=pil.PixtralImageProcessorPil(**values), tokenizer=tokenizer, **args)


def _glm4v_processor(model_path: str, tokenizer: Any) -> Any:
    """transformers' own Glm4vProcessor with its PIL image processor and no video processor (which requires
    torchvision; the corpus has no videos)."""
    from transformers import Glm4vProcessor
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    class WithoutVideo(Glm4vProcessor):  # type: ignore[misc]
        def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None,
                     **kwargs: Any) -> None:
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                             chat_template=chat_template, **kwargs)

    WithoutVideo.__name__ = "Glm4vProcessor"
    values = json.loads(Path(model_path, "preprocessor_config.json").read_text())
    for key in ("image_processor_type", "processor_class"):
        values.pop(key, None)
    return WithoutVideo(Glm4vImageProcessorPil(**values), tokenizer)


def _processor(model_path: str, tokenizer: Any) -> Any:
    if _model_type(model_path) == "glm4v":
        return _glm4v_processor(model_path, tokenizer)
    if _model_type(model_path) in ("llava", "mistral3"):  # Pixtral / Mistral Small 3.1: the PixtralProcessor
        return _pixtral_processor(model_path, tokenizer)
    if _model_type(model_path) == "internvl":
        return internvl_processor(model_path, tokenizer)
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    model_type = json.loads(Path(model_path, "config.json").read_text())["model_type"]
    # transformers gives Qwen3-VL MoE and Qwen3.5 (dense, MoE) Qwen3-VL's processor
    model_type = {"qwen3_vl_moe": "qwen3_vl", "qwen3_5": "qwen3_vl", "qwen3_5_moe": "qwen3_vl"}.get(model_type, model_type)
    base = {"qwen2_vl": Qwen2VLProcessor, "qwen2_5_vl": Qwen2_5_VLProcessor, "qwen3_vl": Qwen3VLProcessor}[model_type]

    class WithoutVideo(base):  # type: ignore[misc, valid-type]
        def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None,
                     **kwargs: Any) -> None:
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            self.video_processor = _qwen_video_processor(model_path, model_type)

    WithoutVideo.__name__ = base.__name__
    return WithoutVideo(Qwen2VLImageProcessorPil.from_pretrained(model_path), tokenizer)


def _qwen_video_processor(model_path: str, model_type: str) -> Any:
    """transformers' Qwen2VLVideoProcessor (Qwen2-VL, Qwen2.5-VL) or Qwen3VLVideoProcessor, built by its own __init__
    from the checkpoint's video processor dict; its pixel interpolation returns zeros of the target size and its
    normalization the values as they are (both torchvision's, absent here; the sizes are its own code's)."""
    import importlib.util
    import types

    import torch
    import transformers
    from transformers.video_processing_utils import BaseVideoProcessor

    names = ["torchvision", "torchvision.io", "torchvision.transforms", "torchvision.transforms.v2",
             "torchvision.transforms.v2.functional", "torchvision.transforms.functional"]
    modules = {name: types.ModuleType(name) for name in names}
    for name, module in modules.items():
        if "." in name:
            parent, _, child = name.rpartition(".")
            setattr(modules[parent], child, module)
    modules["torchvision"].__version__ = "0.0"  # type: ignore[attr-defined]
    modules["torchvision.transforms"].InterpolationMode = SimpleNamespace(BICUBIC="bicubic")  # type: ignore[attr-defined]
    folder = "qwen3_vl" if model_type == "qwen3_vl" else "qwen2_vl"
    package = f"transformers.models.{folder}"
    path = Path(transformers.__file__).parent / f"models/{folder}/video_processing_{folder}.py"
    spec = importlib.util.spec_from_file_location(f"{package}.video_processing_{folder}_oracle", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = package
    sys.modules[spec.name] = module
    sys.modules.update(modules)
    try:
        spec.loader.exec_module(module)
    finally:
        for name in modules:
            sys.modules.pop(name, None)

    base = module.Qwen3VLVideoProcessor if model_type == "qwen3_vl" else module.Qwen2VLVideoProcessor

    class ZeroPixels(base):  # type: ignore[misc, valid-type]
        def resize(self, image: Any, size: Any, resample: Any = None, **kwargs: Any) -> Any:
            return torch.zeros((*image.shape[:-2], size.height, size.width), dtype=torch.uint8)

        def normalize(self, image: Any, mean: Any, std: Any, **kwargs: Any) -> Any:  # torchvision's too; values only
            return image.to(torch.float32)

    values, _ = BaseVideoProcessor.get_video_processor_dict(model_path)
    return ZeroPixels(**values)


def _video_features(plugin: Any, videos: list[Any], processor: Any) -> list[int]:
    """Each video's feature count on the collator's path, Qwen2VLPlugin._get_mm_inputs itself: LLaMA-Factory decodes,
    chooses and pre-scales the frames, the video processor sizes, pads and patches them (video_grid_thw)."""
    grid = plugin._get_mm_inputs([], videos, [], processor)["video_grid_thw"]
    merge = processor.video_processor.merge_size ** 2
    return [int(t * h * w) // merge for t, h, w in grid.tolist()]


def _unpacked(packed: dict[str, Any]) -> dict[str, Any]:
    """The one sample a packed sequence of one row holds: its positions count 0, 1, ... until the padding."""
    positions = packed["position_ids"][0]
    n = next((i for i, p in enumerate(positions) if p != i), len(positions))
    return {"input_ids": [packed["input_ids"][0][:n]], "labels": [packed["labels"][0][:n]]}


def _segments(sequence: dict[str, Any]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The samples of one packed sequence: position_ids restart at 0 for each, and the padding after the last one
    sits at position 0 throughout (every sample here is longer than one token, so it ends at a position above 0)."""
    positions = sequence["position_ids"]
    end = max((i for i, p in enumerate(positions) if p != 0), default=-1) + 1
    starts = [i for i in range(end) if positions[i] == 0] + [end]
    return [(tuple(sequence["input_ids"][a:b]), tuple(sequence["labels"][a:b])) for a, b in zip(starts, starts[1:])]


def _runs(ids: list[int], token: int) -> list[int]:
    """Lengths of the runs of ``token`` in ``ids``, in order (one per video: vision_end / vision_start part them)."""
    runs: list[int] = []
    previous = None
    for t in ids:
        if t == token:
            if previous == token:
                runs[-1] += 1
            else:
                runs.append(1)
        previous = t
    return runs


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e)[:300]}"


def entry_train_dataset(args: dict[str, Any]) -> Any:
    """LLaMA-Factory's own path from a config's settings to its training dataset, as its sft / dpo / rm workflows
    take it: get_train_args, load_tokenizer (the real processor class built when transformers gives none, see
    above), get_template_and_fix_tokenizer, get_dataset."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer
    from llamafactory.model.patcher import patch_processor

    model_args, data_args, training_args, finetuning_args, _ = get_train_args(args)
    loaded = load_tokenizer(model_args)
    tokenizer, processor = loaded["tokenizer"], loaded["processor"]
    if processor is None:
        processor = _processor(model_args.model_name_or_path, tokenizer)
        patch_processor(processor, tokenizer, model_args)
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    stage = "rm" if finetuning_args.stage in ("dpo", "rm") else "sft"
    return get_dataset(template, model_args, data_args, training_args, stage, tokenizer, processor)["train_dataset"]


def main(argv: list[str]) -> None:
    forward = 0
    if "--forward" in argv:
        at = argv.index("--forward")
        forward = int(argv[at + 1])
        argv = argv[:at] + argv[at + 2:]
    out_path, configs = Path(argv[0]), [Path(a) for a in argv[1:]]
    work = Path(tempfile.mkdtemp(prefix="lf-oracle-"))
    try:
        _main(out_path, configs, work, forward)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _main(out_path: Path, configs: list[Path], work: Path, forward: int) -> None:
    os.environ.setdefault("HF_DATASETS_CACHE", str(work / "datasets"))
    import datasets
    from llamafactory.data import template as lf_templates

    datasets.disable_progress_bars()
    # Nothing is cached between runs, so datasets' fingerprints (which name cache files) can be random: hashing
    # LLaMA-Factory's map functions pickles the whole tokenizer, about two seconds a map.
    datasets.disable_caching()
    from datasets import arrow_dataset, fingerprint

    def random_fingerprint(*args: Any, **kwargs: Any) -> str:
        return fingerprint.generate_random_fingerprint()

    fingerprint.update_fingerprint = arrow_dataset.update_fingerprint = random_fingerprint
    _no_processor_load()
    pristine = copy.deepcopy(lf_templates.TEMPLATES)  # get_template_and_fix_tokenizer sets config values on them
    results = {}
    for config in configs:
        lf_templates.TEMPLATES.clear()
        lf_templates.TEMPLATES.update(copy.deepcopy(pristine))
        started = time.perf_counter()
        try:
            results[config.stem] = run_config(config, work / config.stem, forward)
        except Exception as e:  # LLaMA-Factory refuses the config itself (or its datasets' merge)
            results[config.stem] = {"config_error": _error(e), "rows": []}
        results[config.stem]["seconds"] = round(time.perf_counter() - started, 1)
    out_path.write_text(json.dumps(results))


QWEN_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")


def _model_type(path: Any) -> str:
    return str(json.loads(Path(path, "config.json").read_text())["model_type"])


def _no_processor_load() -> None:
    """Speed only: for Qwen-VL checkpoints ``AutoProcessor`` fails at once with the ImportError it would raise after
    reading the tokenizer a second time (seconds for a 151k-token vocabulary; no torchvision, see above), and
    ``load_tokenizer`` goes on without a processor exactly as it does then. Other processors (Gemma 3, LLaVA) build
    without torchvision and load as LLaMA-Factory loads them."""
    import transformers

    original = transformers.AutoProcessor.from_pretrained

    def processor(path: Any, *args: Any, **kwargs: Any) -> Any:
        if _model_type(path) in QWEN_TYPES:
            raise ImportError("the Qwen-VL video processors require torchvision, which this environment does not "
                              "have")
        return original(path, *args, **kwargs)

    transformers.AutoProcessor.from_pretrained = processor  # type: ignore[method-assign]


def _features(regular: list[Any], processor: Any, model_path: str) -> tuple[list[int], list[list[int]]]:
    """Each image's feature count as the model computes it from the image processor's output (what
    ``_get_mm_inputs``, the collator's path, gives the model), with the checkpoint's config.json; and the Qwen
    grids (empty for the others)."""
    model_type = _model_type(model_path)
    config = json.loads(Path(model_path, "config.json").read_text())
    if model_type in (*QWEN_TYPES, "glm4v"):
        # Glm4vModel.get_image_features: like Qwen-VL's, grid t * h * w / merge_size^2 (its own smart_resize)
        merge = processor.image_processor.merge_size ** 2
        grid = processor.image_processor(regular, return_tensors="pt")["image_grid_thw"]
        grids = [[int(x) for x in g] for g in grid]
        return [int(g[0] * g[1] * g[2]) // merge for g in grids], grids
    if model_type == "gemma3":
        # BasePlugin._get_mm_inputs: LLaMA-Factory's pan-and-scan kwargs; every crop and the original give
        # mm_tokens_per_image features (Gemma3ForConditionalGeneration.get_image_features)
        kwargs = {}
        if getattr(processor, "image_do_pan_and_scan", False):
            kwargs = {"do_pan_and_scan": True, "pan_and_scan_min_crop_size": 256, "pan_and_scan_max_num_crops": 4,
                      "pan_and_scan_min_ratio_to_activate": 1.2}
        out = processor.image_processor(regular, return_tensors="pt", **kwargs)
        crops = [int(c) for c in _flat(out["num_crops"])]
        assert out["pixel_values"].shape[0] == len(regular) + sum(crops)
        return [(1 + c) * int(config["mm_tokens_per_image"]) for c in crops], []
    if model_type == "mistral3" or (model_type == "llava" and config["vision_config"].get("model_type") == "pixtral"):
        # PixtralVisionModel: one feature per patch of the resized image (image_sizes), merged spatial_merge_size^2
        # (Mistral3's patch merger)
        out = processor.image_processor(regular, return_tensors="pt")
        step = int(processor.patch_size) * int(getattr(processor, "spatial_merge_size", 1))
        return [(h // step) * (w // step) for h, w in out["image_sizes"].tolist()], []
    if model_type == "llava":
        # LlavaModel.get_image_features: one feature per patch, the CLS dropped by the "default" strategy
        pixels = processor.image_processor(regular, return_tensors="pt")["pixel_values"]
        patch = int(config["vision_config"]["patch_size"])
        n = (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)
        if config.get("vision_feature_select_strategy", "default") != "default":
            n += 1
        return [n] * len(regular), []
    if model_type == "llava_next":
        # LlavaNextModel.pack_image_features: base patches plus the unpadded anyres grid and its newline column,
        # as transformers' own processor counts them for the image size
        out = processor.image_processor(regular, return_tensors="pt")
        height, width = out["pixel_values"].shape[-2:]
        counts = []
        for orig_h, orig_w in out["image_sizes"].tolist():
            n = processor._get_number_of_features(orig_h, orig_w, height, width)
            counts.append(n - 1 if processor.vision_feature_select_strategy == "default" else n)
        return counts, []
    if model_type == "mllama":
        # MllamaForConditionalGeneration: the image's tiles reach the text through cross-attention; its one text
        # token is <|image|> (processing_mllama.py), whatever pixel_values the image processor makes
        out = processor.image_processor(regular, return_tensors="pt")
        assert out["pixel_values"].shape[1] == len(regular)
        return [1] * len(regular), []
    if model_type == "paligemma":
        # PaliGemmaModel.get_image_features: the SigLIP tower's num_image_tokens per image (one pixel_values row each)
        pixels = processor.image_processor(regular, return_tensors="pt")["pixel_values"]
        assert pixels.shape[0] == len(regular)
        return [int(config["vision_config"]["num_image_tokens"])] * len(regular), []
    if model_type == "internvl":
        # InternVLPlugin._get_mm_inputs: the image processor called directly, crop_to_patches (12 / 1 tiles) when
        # LLaMA-Factory's crop_to_patches is set; InternVLModel: (image_size / patch)^2 * downsample_ratio^2
        # features per tile
        kwargs = {"crop_to_patches": True, "max_patches": 12, "min_patches": 1} if getattr(
            processor, "crop_to_patches", False) else {}
        tiles = processor.image_processor(images=regular, return_tensors="pt", **kwargs)["num_patches"]
        vision = config["vision_config"]
        side = _first(vision["image_size"]) // _first(vision["patch_size"])
        per_tile = int(side * side * float(config["downsample_ratio"]) ** 2)
        return [int(t) * per_tile for t in _flat(tiles)], []
    raise NotImplementedError(model_type)


def _first(value: Any) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def _flat(values: Any) -> list[Any]:
    if hasattr(values, "tolist"):
        values = values.tolist()
    out: list[Any] = []
    for v in values:
        out += _flat(v) if isinstance(v, (list, tuple)) or hasattr(v, "tolist") else [v]
    return out


def run_config(config_path: Path, work: Path, forward: int) -> dict[str, Any]:
    import datasets
    import numpy as np
    import yaml
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.data.converter import get_dataset_converter
    from llamafactory.data.data_utils import merge_dataset
    from llamafactory.data.loader import _get_dataset_processor
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.extras.constants import FILEEXT2TYPE
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer
    from llamafactory.model.patcher import patch_processor
    from PIL import Image

    args = yaml.safe_load(config_path.read_text())
    args.update(do_train=True, output_dir=str(work / "out"), overwrite_cache=True, report_to="none")
    if args.get("stage") == "kto":  # its rows depend on their map batch: run_kto_config
        return run_kto_config(args, work, forward)
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(args)
    # train/dpo and train/rm workflows: get_dataset(stage="rm"), the pairwise processor
    stage = "rm" if finetuning_args.stage in ("dpo", "rm") else "sft"
    pairwise = stage == "rm"
    loaded = load_tokenizer(model_args)
    tokenizer, processor = loaded["tokenizer"], loaded["processor"]
    built_processor = processor is None
    if processor is None:
        processor = _processor(model_args.model_name_or_path, tokenizer)
        patch_processor(processor, tokenizer, model_args)
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    plugin = template.mm_plugin
    # the token the model counts against image features (config.json), not the plugin's own name for it
    model_config = json.loads(Path(model_args.model_name_or_path, "config.json").read_text())
    image_token_id = model_config.get("image_token_index", model_config.get("image_token_id"))
    video_token_id = model_config.get("video_token_id")
    cut_processor = _get_dataset_processor(data_args, stage, template, tokenizer, processor, do_generate=False)
    packing = bool(data_args.packing) and not pairwise  # PackedSupervisedDatasetProcessor: each row packed alone, then unpacked
    whole_args = copy.copy(data_args)
    whole_args.cutoff_len = 10**9
    whole_args.packing = whole_args.neat_packing = False
    whole_processor = _get_dataset_processor(whole_args, stage, template, tokenizer, processor, do_generate=False)

    rows: list[dict[str, Any]] = []
    kept_rows: list[dict[str, Any]] = []
    # get_train_args seeded numpy's global generator; the rows are drawn here as _load_single_dataset draws them
    # (num_samples) and the state put back, so that get_dataset below draws the same rows again and its output
    # proves these selections
    seeded = np.random.get_state()
    loads: list[tuple[str, str, Any, Any, int]] = []  # (split, name, attr, table, row number) per row
    for split, names in (("train", data_args.dataset or []), ("eval", data_args.eval_dataset or [])):
        chosen: dict[str, tuple[Any, Any, list[int]]] = {}  # _get_merged_dataset keeps a dict by name
        for name, attr in zip(names, get_dataset_list(names, data_args.dataset_dir)):
            local = os.path.join(data_args.dataset_dir, attr.dataset_name)
            files = [os.path.join(local, f) for f in os.listdir(local)] if os.path.isdir(local) else [local]
            raw = datasets.load_dataset(FILEEXT2TYPE[os.path.splitext(files[0])[-1][1:]], data_files=files,
                                        split="train", cache_dir=str(work / "raw"))
            numbers = list(range(len(raw)))
            if attr.num_samples is not None and not data_args.streaming:
                numbers = [int(i) for i in np.random.permutation(len(raw))[:attr.num_samples]]
                if attr.num_samples > len(numbers):
                    numbers += [int(i) for i in np.random.choice(len(raw), attr.num_samples - len(numbers))]
            if data_args.max_samples is not None:
                numbers = numbers[:data_args.max_samples]
            chosen[name] = (attr, raw, numbers)
        order = [(name, attr, raw, number) for name, (attr, raw, numbers) in chosen.items() for number in numbers]
        if len(chosen) > 1 and (split == "train" or not data_args.eval_on_each_dataset):
            # the order merge_dataset gives (concat, or datasets.interleave_datasets with the run's seed): LLaMA-Factory's
            # own function on stand-in datasets holding each row's place
            stand_ins = [datasets.Dataset.from_dict({"source": [k] * len(numbers), "number": numbers})
                         for k, (_, _, numbers) in enumerate(chosen.values())]
            merged = merge_dataset(stand_ins, data_args, seed=training_args.seed)
            sources = list(chosen.items())
            order = [(sources[r["source"]][0], sources[r["source"]][1][0], sources[r["source"]][1][1], r["number"])
                     for r in merged]
        loads += [(split, *item) for item in order]
    np.random.set_state(seeded)
    for split, name, attr, raw, row_index in loads:
        converter = get_dataset_converter(attr.formatting, attr, data_args)
        row = raw[row_index]
        record: dict[str, Any] = {"dataset": name, "row": row_index, "split": split, "kept": False, "error": None}
        rows.append(record)
        # where a raise comes from: get_dataset's map (the run stops before step 1), or the collator
        raised_in = "dataset"
        try:
            example = converter(row)
            batch = {k: [v] for k, v in example.items()}
            cut = cut_processor.preprocess_dataset(batch)
            if not cut.get("chosen_input_ids" if pairwise else "input_ids"):
                continue  # "Dropped invalid example" (with packing also "Dropped lengthy example")
            if packing:
                cut = _unpacked(cut)
            whole = whole_processor.preprocess_dataset(batch)
            images = example["_images"] or []
            sizes, features, grids = [], [], []
            raised_in = "collator"  # get_mm_inputs opens the images again at the training step (a plugin whose text
            # does not depend on them opens them only there)
            stored = [list(Image.open(im).size) for im in images if isinstance(im, str)]
            if images:
                regular = plugin._regularize_images(images, image_max_pixels=processor.image_max_pixels,
                                                    image_min_pixels=processor.image_min_pixels)["images"]
                sizes = [list(im.size) for im in regular]
                # what _get_mm_inputs (the collator's path) does after _regularize_images
                features, grids = _features(regular, processor, model_args.model_name_or_path)
            videos = example["_videos"] or []
            video_features = _video_features(plugin, videos, processor) if videos else []
        except Exception as e:  # LLaMA-Factory raises on this row: inside datasets.map the whole run stops
            record["error"] = _error(e)
            record["stage"] = raised_in
            continue
        if pairwise:
            _pair_record(record, cut, whole, image_token_id, features)
            if videos:  # the collator batches both sequences with the videos too: either one short crashes
                video_left = [sum(1 for t in cut[f"{side}_input_ids"][0] if t == video_token_id)
                              for side in ("chosen", "rejected")]
                record.update(video_features=video_features, video_tokens_left=min(video_left),
                              crash=record["crash"] or any(n != sum(video_features) for n in video_left))
            record.update(image_stored=stored, image_sizes=sizes, image_grid_thw=grids, image_features=features)
            kept_rows.append({**{f"{side}_{key}": cut[f"{side}_{key}"][0] for side in ("chosen", "rejected")
                                 for key in ("input_ids", "labels")}, "images": images, "videos": videos,
                              "split": split})
            continue
        ids, labels = cut["input_ids"][0], cut["labels"][0]
        left = sum(1 for t in ids if t == image_token_id)
        record.update(
            kept=True, tokens=len(whole["input_ids"][0]),
            supervised=sum(1 for t in whole["labels"][0] if t != IGNORE_INDEX),
            input_ids=ids, labels=labels, kept_tokens=len(ids),
            kept_supervised=sum(1 for t in labels if t != IGNORE_INDEX),
            image_stored=stored, image_sizes=sizes, image_grid_thw=grids, image_features=features, image_tokens_left=left,
            crash=left != sum(features),
        )
        if videos:
            video_left = sum(1 for t in ids if t == video_token_id)
            record.update(video_tokens=_runs(whole["input_ids"][0], video_token_id), video_features=video_features,
                          video_tokens_left=video_left,
                          crash=record["crash"] or video_left != sum(video_features))
        kept_rows.append({"input_ids": ids, "labels": labels, "images": images, "videos": videos, "split": split})

    # The real entry point on the whole config: it must give exactly the kept rows, or raise when a row raises.
    check: dict[str, Any] = {}
    try:
        module = get_dataset(template, model_args, data_args, training_args, stage, tokenizer, processor)
        train = module["train_dataset"]
        check["rows"] = len(train)
        evals = module.get("eval_dataset")
        evals = list(evals.values()) if isinstance(evals, dict) else [evals] if evals is not None else []
        if data_args.val_size > 1e-6:  # split at random before preprocessing: together they hold the kept rows
            train = [r for part in (train, *evals) for r in part]
            kept_train = kept_rows
            kept_eval: list[dict[str, Any]] = []
            evals = []
        else:
            kept_train = [r for r in kept_rows if r["split"] == "train"]
            kept_eval = [r for r in kept_rows if r["split"] == "eval"]
        if packing:  # packed sequences: the samples they hold (split where position_ids restart), in any order
            for got, want, key in ((train, kept_train, "same_as_rows"),
                                   ([r for part in evals for r in part], kept_eval, "same_as_eval_rows")):
                packed = sorted(s for seq in got for s in _segments(seq))
                check[key] = packed == sorted((tuple(r["input_ids"]), tuple(r["labels"])) for r in want)
        elif data_args.val_size > 1e-6:  # in any order; a pairwise row by its chosen and rejected ids and labels
            keys = [k for k in (kept_train[0] if kept_train else {}) if k.endswith(("input_ids", "labels"))]
            check["same_as_rows"] = sorted(tuple(tuple(r[k]) for k in keys) for r in train) == sorted(
                tuple(tuple(r[k]) for k in keys) for r in kept_train)
        else:
            check["same_as_rows"] = _same(train, kept_train)
            check["same_as_eval_rows"] = _same([r for part in evals for r in part], kept_eval)
    except Exception as e:
        check["error"] = _error(e)

    result: dict[str, Any] = {
        "llamafactory": _version("llamafactory"), "transformers": _version("transformers"),
        "built_processor": built_processor, "cutoff_len": data_args.cutoff_len,
        "image_max_pixels": model_args.image_max_pixels, "image_min_pixels": model_args.image_min_pixels,
        "get_dataset": check, "rows": rows,
    }
    if forward and _model_type(model_args.model_name_or_path) == "mllama":
        result["forward"] = _forward_mllama(rows, kept_rows, template, tokenizer, processor, forward)
    elif forward and _model_type(model_args.model_name_or_path) in QWEN_TYPES:
        result["forward"] = _forward(model_args.model_name_or_path, rows, kept_rows, template, tokenizer, processor,
                                     forward, pairwise=pairwise)
    return result


def _same(got: Any, want: list[dict[str, Any]]) -> bool:
    """The dataset's rows are the kept rows, in order (a pairwise dataset's: chosen and rejected ids and labels)."""
    got = list(got)
    keys = [k for k in (want[0] if want else {}) if k.endswith(("input_ids", "labels"))]
    return len(got) == len(want) and all(a[k] == b[k] for a, b in zip(got, want) for k in keys)


def _pair_record(record: dict[str, Any], cut: dict[str, Any], whole: dict[str, Any], image_token_id: int,
                 features: list[int]) -> None:
    """A ranking row through the pairwise processor: the chosen sequence's counts, the longer sequence's length, the
    rejected answer's kept labels; image tokens left in each sequence (the collator batches both, each with the
    images: either one short of the features crashes)."""
    def labelled(labels: list[int]) -> int:
        return sum(1 for t in labels if t != IGNORE_INDEX)

    chosen, rejected = cut["chosen_input_ids"][0], cut["rejected_input_ids"][0]
    left = [sum(1 for t in ids if t == image_token_id) for ids in (chosen, rejected)]
    record.update(
        kept=True, tokens=max(len(whole["chosen_input_ids"][0]), len(whole["rejected_input_ids"][0])),
        chosen_tokens=len(whole["chosen_input_ids"][0]), rejected_tokens=len(whole["rejected_input_ids"][0]),
        supervised=labelled(whole["chosen_labels"][0]), kept_tokens=max(len(chosen), len(rejected)),
        kept_supervised=labelled(cut["chosen_labels"][0]),
        kept_rejected_supervised=labelled(cut["rejected_labels"][0]),
        image_tokens_left=min(left), crash=any(n != sum(features) for n in left),
    )


# -- stage kto ---------------------------------------------------------------------------------------------------
# What the spies below see, per process (datasets.map's workers are forked: they inherit these, and write to the
# side file, which the main process reads back).
_KTO: dict[str, Any] = {}


def _spy_loads() -> None:
    """Identity only, no change to what LLaMA-Factory computes: each loaded row carries its number in the dataset's
    files (``_num``, through num_samples / max_samples selections), each converted row its dataset's name (``_src``),
    each row of a map its place in the dataset the map runs over (``_pos``); ``FeedbackDatasetProcessor`` reports,
    per map batch, the places it was handed, which rows ``_encode_data_example`` encoded with which ``kl_response``
    (found by object identity in the batch), and each row's untruncated sequences (a second
    ``_encode_data_example`` of LLaMA-Factory's, at an unlimited cutoff_len). A row whose encoding raises is
    recorded and left out of the batch's output (so that the other rows can be compared); get_dataset is then run
    again without that (see run_kto_config)."""
    import llamafactory.data.loader as loader
    from llamafactory.data.processor.feedback import FeedbackDatasetProcessor

    if _KTO.get("patched"):
        return
    _KTO["patched"] = True
    load, align, listing = loader.load_dataset, loader.align_dataset, loader.get_dataset_list
    prepare, preprocess = loader._get_preprocessed_dataset, FeedbackDatasetProcessor.preprocess_dataset

    def load_dataset(*args: Any, **kwargs: Any) -> Any:
        dataset = load(*args, **kwargs)
        return dataset.add_column("_num", list(range(len(dataset))))

    def get_dataset_list(names: Any, *args: Any, **kwargs: Any) -> Any:
        attrs = listing(names, *args, **kwargs)
        for name, attr in zip(names or [], attrs):
            attr.vc_name = name
        return attrs

    def align_dataset(dataset: Any, attr: Any, *args: Any, **kwargs: Any) -> Any:
        numbers = dataset["_num"]
        aligned = align(dataset, attr, *args, **kwargs)
        return aligned.add_column("_num", numbers).add_column("_src", [attr.vc_name] * len(numbers))

    def get_preprocessed(dataset: Any, *args: Any, is_eval: bool = False, **kwargs: Any) -> Any:
        if dataset is None:
            return None
        _KTO["unit"] = f"eval:{dataset[0]['_src']}" if is_eval else "train"
        return prepare(dataset.add_column("_pos", list(range(len(dataset)))), *args, is_eval=is_eval, **kwargs)

    def preprocess_dataset(self: Any, examples: dict[str, list[Any]]) -> dict[str, list[Any]]:
        calls: list[dict[str, Any]] = []
        encode = self._encode_data_example
        whole = _KTO["whole"]

        def spy(**kw: Any) -> Any:
            call = {"prompt": id(kw["prompt"]), "kl": id(kw["kl_response"]), "error": None}
            calls.append(call)
            try:
                out = encode(**kw)
                full = whole._encode_data_example(**kw)
            except Exception as e:
                if _KTO.get("strict"):
                    raise
                call["error"] = _error(e)
                return [], [], [], [], False
            call["whole"] = [len(full[0]), sum(1 for t in full[1] if t != IGNORE_INDEX), len(full[2]),
                             sum(1 for t in full[3] if t != IGNORE_INDEX)]
            return out

        self._encode_data_example = spy
        try:
            out = preprocess(self, examples)
        finally:
            del self._encode_data_example
        places = {id(p): i for i, p in enumerate(examples["_prompt"])}
        answers = {id(r): i for i, r in enumerate(examples["_response"])}
        positions = examples["_pos"]
        encoded = [{"pos": positions[places[c["prompt"]]], "kl_pos": positions[answers[c["kl"]]],
                    "error": c["error"], "whole": c.get("whole")} for c in calls]
        with open(_KTO["side"], "a") as f:
            f.write(json.dumps({"unit": _KTO["unit"], "positions": positions, "encoded": encoded,
                                "sources": examples["_src"], "numbers": examples["_num"]}) + "\n")
        good = [i for i, c in enumerate(calls) if c["error"] is None]
        out = {k: [v[i] for i in good] for k, v in out.items()}
        out["_pos"] = [encoded[i]["pos"] for i in good]
        return out

    loader.load_dataset, loader.align_dataset, loader.get_dataset_list = load_dataset, align_dataset, get_dataset_list
    loader._get_preprocessed_dataset = get_preprocessed
    FeedbackDatasetProcessor.preprocess_dataset = preprocess_dataset


def run_kto_config(args: dict[str, Any], work: Path, forward: int) -> dict[str, Any]:
    """``stage: kto``: LLaMA-Factory's get_dataset(stage="kto") on the whole config (the map, its batches and shards
    as the config sets them), its rows told apart by the spies of :func:`_spy_loads`. Per row of each map (training
    rows, evaluation rows), in the map's order: dropped, raising, or kept with its target sequence (``input_ids``,
    ``labels``) and KL sequence (``kl_input_ids``, ``kl_labels``) as get_dataset returns them, the row whose answer
    the KL sequence borrows, both untruncated lengths, each image's features, and the image tokens left in each."""
    import copy as copy_

    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.data.loader import _get_dataset_processor
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer
    from llamafactory.model.patcher import patch_processor

    _spy_loads()
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(args)
    loaded = load_tokenizer(model_args)
    tokenizer, processor = loaded["tokenizer"], loaded["processor"]
    if processor is None:
        processor = _processor(model_args.model_name_or_path, tokenizer)
        patch_processor(processor, tokenizer, model_args)
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    model_config = json.loads(Path(model_args.model_name_or_path, "config.json").read_text())
    image_token_id = model_config.get("image_token_index", model_config.get("image_token_id"))
    whole_args = copy_.copy(data_args)
    whole_args.cutoff_len = 10**9
    _KTO["whole"] = _get_dataset_processor(whole_args, "kto", template, tokenizer, processor)
    _KTO["side"] = str(work / "kto-batches.jsonl")
    work.mkdir(parents=True, exist_ok=True)
    Path(_KTO["side"]).write_text("")
    module = get_dataset(template, model_args, data_args, training_args, "kto", tokenizer, processor)
    batches = [json.loads(line) for line in Path(_KTO["side"]).read_text().splitlines()]
    outputs: dict[str, Any] = {"train": module["train_dataset"]}
    evals = module.get("eval_dataset")
    eval_units = [u for u in dict.fromkeys(b["unit"] for b in batches) if u != "train"]  # in map order
    for unit, part in zip(eval_units, evals.values() if isinstance(evals, dict) else [evals] if evals else []):
        outputs[unit] = part
    rows: list[dict[str, Any]] = []
    kept_rows: list[dict[str, Any]] = []
    check: dict[str, Any] = {}
    for unit in dict.fromkeys(b["unit"] for b in batches):
        mine = [b for b in batches if b["unit"] == unit]
        mine.sort(key=lambda b: b["positions"][0])
        output = {r["_pos"]: r for r in (outputs[unit] if unit in outputs else [])}
        identity = {pos: (src, num) for b in mine for pos, src, num in zip(b["positions"], b["sources"], b["numbers"])}
        encoded = {e["pos"]: e for b in mine for e in b["encoded"]}
        for b in mine:
            for pos in b["positions"]:
                src, num = identity.get(pos, ("?", -1))
                record: dict[str, Any] = {"dataset": src, "row": num, "split": "train" if unit == "train" else "eval",
                                          "kept": False, "error": None, "pos": pos, "batch": len(b["positions"]),
                                          "batch_start": b["positions"][0]}
                rows.append(record)
                e = encoded.get(pos)
                if e is None:
                    continue  # "Dropped invalid example"
                record["kl_dataset"], record["kl_row"] = identity.get(e["kl_pos"], ("?", -1))
                if e["error"]:
                    record.update(error=e["error"], stage="dataset")
                    continue
                r = output[pos]
                _kto_record(record, r, e["whole"], image_token_id, processor, model_args.model_name_or_path)
                kept_rows.append({**{k: r[k] for k in ("input_ids", "labels", "kl_input_ids", "kl_labels",
                                                       "kto_tags", "images")},
                                  "target_crash": record["image_tokens_left"] != sum(record["image_features"]),
                                  "kl_crash": record["kl_crash"], "dataset": record["dataset"], "row": record["row"],
                                  "split": record["split"]})
    check["rows"] = {unit: len(part) for unit, part in outputs.items()}
    if any(r["error"] for r in rows):  # the same config without the spy's leniency: get_dataset must raise
        _KTO["strict"] = True
        try:
            get_dataset(template, model_args, data_args, training_args, "kto", tokenizer, processor)
            check["error"] = None
        except Exception as e:
            check["error"] = _error(e)
        finally:
            _KTO["strict"] = False
    result: dict[str, Any] = {
        "llamafactory": _version("llamafactory"), "cutoff_len": data_args.cutoff_len,
        "preprocessing_batch_size": data_args.preprocessing_batch_size,
        "preprocessing_num_workers": data_args.preprocessing_num_workers, "get_dataset": check, "rows": rows,
    }
    if forward:
        result["forward"] = _forward_kto(model_args.model_name_or_path, rows, kept_rows, template, tokenizer,
                                         processor, forward)
    return result


def _kto_record(record: dict[str, Any], row: dict[str, Any], whole: list[int], image_token_id: int, processor: Any,
                model_path: str) -> None:
    """A kept KTO row: both sequences as get_dataset returns them, their untruncated lengths and labels, each
    image's features (the collator's path: _regularize_images, then the image processor), the image tokens left in
    each sequence and so the crash verdicts (the KTO collator gives both sequences the row's images)."""
    def labelled(labels: list[int]) -> int:
        return sum(1 for t in labels if t != IGNORE_INDEX)

    features: list[int] = []
    images = row["images"] or []
    if images:
        plugin = _KTO["whole"].template.mm_plugin
        regular = plugin._regularize_images(images, image_max_pixels=processor.image_max_pixels,
                                            image_min_pixels=processor.image_min_pixels)["images"]
        features, _ = _features(regular, processor, model_path)
    left = sum(1 for t in row["input_ids"] if t == image_token_id)
    kl_left = sum(1 for t in row["kl_input_ids"] if t == image_token_id)
    record.update(
        kept=True, kto_tag=bool(row["kto_tags"]), tokens=whole[0], supervised=whole[1], kl_tokens=whole[2],
        kl_supervised=whole[3], kept_tokens=len(row["input_ids"]), kept_supervised=labelled(row["labels"]),
        kl_kept_tokens=len(row["kl_input_ids"]), kl_kept_supervised=labelled(row["kl_labels"]),
        image_features=features, image_tokens_left=left, kl_image_tokens_left=kl_left,
        crash=left != sum(features) or kl_left != sum(features), kl_crash=kl_left != sum(features),
    )


def _forward_kto(model_path: str, rows: list[dict[str, Any]], kept_rows: list[dict[str, Any]], template: Any,
                 tokenizer: Any, processor: Any, n: int) -> list[dict[str, Any]]:
    """A tiny random Qwen-VL model (as _forward builds it) behind LLaMA-Factory's KTODataCollatorWithPadding (as its
    kto workflow builds it) and CustomKTOTrainer's own concatenated_forward (the target forward, then the KL one):
    up to n rows whose target is cut through an image, n whose KL sequence only is, n whole ones. Records where
    each raises: collator, target or kl."""
    import torch
    from llamafactory.data.collator import KTODataCollatorWithPadding
    from llamafactory.train.kto.trainer import CustomKTOTrainer

    model = _tiny_qwen(model_path)
    collator = KTODataCollatorWithPadding(template=template, processor=processor, tokenizer=tokenizer, model=model,
                                          pad_to_multiple_of=8, label_pad_token_id=IGNORE_INDEX)
    phase = {"now": "collator"}

    class Trainer:  # what concatenated_forward reads of self: its forward
        def forward(self, model: Any, batch: Any, prefix: str = "") -> Any:
            phase["now"] = "kl" if prefix else "target"
            return CustomKTOTrainer.forward(self, model, batch, prefix)

    target_cut = [i for i, r in enumerate(kept_rows) if r["target_crash"] and not r["kl_crash"]]
    both_cut = [i for i, r in enumerate(kept_rows) if r["target_crash"] and r["kl_crash"]]
    kl_cut = [i for i, r in enumerate(kept_rows) if r["kl_crash"] and not r["target_crash"]]
    whole = [i for i, r in enumerate(kept_rows) if not r["target_crash"] and not r["kl_crash"] and r["images"]]
    out = []
    for i in target_cut[:n] + kl_cut[:n] + both_cut[:n] + whole[:n]:
        sample = kept_rows[i]
        feature = {"input_ids": sample["input_ids"], "attention_mask": [1] * len(sample["input_ids"]),
                   "labels": sample["labels"], "kl_input_ids": sample["kl_input_ids"],
                   "kl_attention_mask": [1] * len(sample["kl_input_ids"]), "kl_labels": sample["kl_labels"],
                   "kto_tags": sample["kto_tags"], "images": sample["images"], "videos": [], "audios": []}
        record = {"dataset": sample["dataset"], "row": sample["row"], "split": sample["split"], "error": None,
                  "raised_in": None}
        phase["now"] = "collator"
        try:
            batch = collator([feature])
            with torch.no_grad():
                CustomKTOTrainer.concatenated_forward(Trainer(), model, batch)
        except Exception as e:
            record.update(error=_error(e), raised_in=phase["now"])
        out.append(record)
    return out


def _tiny_qwen(model_path: str) -> Any:
    """The tiny random Qwen-VL model of :func:`_forward` (the same sizes, built from the checkpoint's config)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(model_path)
    text = getattr(config, "text_config", config)
    for key, value in {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "head_dim": 16}.items():
        setattr(text, key, value)
    rope = getattr(text, "rope_parameters", None) or {}
    text.rope_parameters = {"rope_type": "default", "rope_theta": 1e6, **rope, "mrope_section": [2, 3, 3]}
    vision = config.vision_config
    width = {"embed_dim": 32, "hidden_size": 32, "out_hidden_size": 64} if hasattr(vision, "out_hidden_size") else {
        "embed_dim": 32, "hidden_size": 64}
    for key, value in {"depth": 1, "num_heads": 2, "intermediate_size": 64, **width}.items():
        if hasattr(vision, key):
            setattr(vision, key, value)
    if hasattr(vision, "deepstack_visual_indexes"):
        vision.deepstack_visual_indexes = [0]
    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_config(config).eval()


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _forward(model_path: str, rows: list[dict[str, Any]], kept_rows: list[dict[str, Any]], template: Any,
             tokenizer: Any, processor: Any, n: int, *, pairwise: bool = False) -> list[dict[str, Any]]:
    """A tiny random Qwen-VL model of the checkpoint's type runs forward on cut and whole samples, batched by
    LLaMA-Factory's own collator (it computes pixel_values and image_grid_thw from the images); a ranking row's
    chosen and rejected sequences go through its pairwise collator together, as the dpo / rm workflows batch them."""
    import torch
    from llamafactory.data.collator import PairwiseDataCollatorWithPadding, SFTDataCollatorWith4DAttentionMask
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(model_path)
    text = getattr(config, "text_config", config)
    for key, value in {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "head_dim": 16}.items():
        setattr(text, key, value)
    rope = getattr(text, "rope_parameters", None) or {}  # M-RoPE: its sections sum to head_dim / 2
    text.rope_parameters = {"rope_type": "default", "rope_theta": 1e6, **rope, "mrope_section": [2, 3, 3]}
    vision = config.vision_config
    # Qwen2-VL's vision hidden_size is its output width (the text width); Qwen2.5/3-VL name it out_hidden_size
    width = {"embed_dim": 32, "hidden_size": 32, "out_hidden_size": 64} if hasattr(vision, "out_hidden_size") else {
        "embed_dim": 32, "hidden_size": 64}
    for key, value in {"depth": 1, "num_heads": 2, "intermediate_size": 64, **width}.items():
        if hasattr(vision, key):
            setattr(vision, key, value)
    if hasattr(vision, "deepstack_visual_indexes"):
        vision.deepstack_visual_indexes = [0]
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config).eval()
    collator_class = PairwiseDataCollatorWithPadding if pairwise else SFTDataCollatorWith4DAttentionMask
    collator = collator_class(template=template, processor=processor, tokenizer=tokenizer, model=model,
                              pad_to_multiple_of=8 if pairwise else None, label_pad_token_id=IGNORE_INDEX)
    kept = [r for r in rows if r["kept"]]
    def crash_kind(r: dict[str, Any]) -> str:  # with videos: uncut but more tokens than features, or cut
        return "frames" if r.get("video_tokens") not in (None, r.get("video_features")) else "cut"

    crashes = [i for i, r in enumerate(kept) if r["crash"]]
    chosen = ([i for i in crashes if crash_kind(kept[i]) == "cut"][:n] + [
        i for i in crashes if crash_kind(kept[i]) == "frames"][:n] + [
        i for i, r in enumerate(kept) if not r["crash"] and (r["image_features"] or r.get("video_features"))][:n])
    out = []
    for i in chosen:
        sample = kept_rows[i]
        if pairwise:
            feature = {**{k: v for k, v in sample.items() if k.endswith(("input_ids", "labels"))},
                       "chosen_attention_mask": [1] * len(sample["chosen_input_ids"]),
                       "rejected_attention_mask": [1] * len(sample["rejected_input_ids"]),
                       "images": sample["images"], "videos": sample.get("videos") or [], "audios": []}
        else:
            feature = {"input_ids": sample["input_ids"], "attention_mask": [1] * len(sample["input_ids"]),
                       "labels": sample["labels"], "images": sample["images"], "videos": sample.get("videos") or [],
                       "audios": []}
        record = {"dataset": kept[i]["dataset"], "row": kept[i]["row"], "split": kept[i]["split"], "error": None}
        try:
            batch = collator([feature])
            with torch.no_grad():
                model(**{k: v for k, v in batch.items() if k != "labels"})
        except Exception as e:
            record["error"] = _error(e)
        out.append(record)
    return out


def _forward_mllama(rows: list[dict[str, Any]], kept_rows: list[dict[str, Any]], template: Any, tokenizer: Any,
                    processor: Any, n: int) -> list[dict[str, Any]]:
    """A tiny randomly initialised MllamaForConditionalGeneration (built from a config, the real vocabulary size
    and image token id) runs forward on cut and whole samples through LLaMA-Factory's own collator, which builds
    cross_attention_mask from the <|image|> ids left in the sample (MllamaPlugin.get_mm_inputs). Only the tile
    size is made small (56 px instead of 560: the text never depends on it)."""
    import torch
    from llamafactory.data.collator import SFTDataCollatorWith4DAttentionMask
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    tile = 56
    from transformers.image_utils import SizeDict

    processor.image_processor.size = SizeDict(height=tile, width=tile)
    torch.manual_seed(0)
    config = MllamaConfig(
        vision_config={"hidden_size": 16, "num_hidden_layers": 2, "num_global_layers": 1, "attention_heads": 2,
                       "intermediate_size": 32, "vision_output_dim": 32, "image_size": tile, "patch_size": 14,
                       "max_num_tiles": int(processor.image_processor.max_image_tiles),
                       "intermediate_layers_indices": [0]},
        text_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                     "intermediate_size": 64, "cross_attention_layers": [1]},
        image_token_index=processor.image_token_id,
    )
    model = MllamaForConditionalGeneration(config).eval()
    collator = SFTDataCollatorWith4DAttentionMask(template=template, processor=processor, tokenizer=tokenizer,
                                                  model=model, pad_to_multiple_of=None, label_pad_token_id=IGNORE_INDEX)
    kept = [r for r in rows if r["kept"]]
    chosen = [i for i, r in enumerate(kept) if r["crash"]][:n] + [i for i, r in enumerate(kept) if not r["crash"]
                                                                  and r["image_features"]][:n]
    def feature(i: int) -> dict[str, Any]:
        sample = kept_rows[i]
        return {"input_ids": sample["input_ids"], "attention_mask": [1] * len(sample["input_ids"]),
                "labels": sample["labels"], "images": sample["images"], "videos": [], "audios": []}

    def run(indices: list[int]) -> str | None:
        try:
            batch = collator([feature(i) for i in indices])
            with torch.no_grad():
                model(**{k: v for k, v in batch.items() if k != "labels"})
        except Exception as e:
            return _error(e)
        return None

    out = []
    for i in chosen:
        record = {"dataset": kept[i]["dataset"], "row": kept[i]["row"], "split": kept[i]["split"], "error": run([i]),
                  "images": len(kept_rows[i]["images"]), "image_tokens_left": kept[i]["image_tokens_left"]}
        # batched with a whole sample holding as many images: the batch's cross_attention_mask then has a slot
        # for every image of this sample
        partner = next((j for j, r in enumerate(kept) if not r["crash"] and j != i
                        and len(kept_rows[j]["images"]) >= len(kept_rows[i]["images"])), None)
        if kept[i]["crash"] and partner is not None:
            record["batched_with_whole"] = {"error": run([i, partner])}
        out.append(record)
    return out


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Exception:
        traceback.print_exc()
        sys.exit(1)
