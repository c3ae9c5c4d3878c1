"""Produce next_golden.jsonl: what LLaVA-NeXT's own train.py data path and model splice keep of each row (see
README.md). Not run by the tests.

LLaVA-VL/LLaVA-NeXT at commit df17966 runs in LLaVA's pinned stack (the scratch environment of produce.py step 2:
transformers 4.37.2, tokenizers 0.15.1, sentencepiece 0.1.99, torch, pillow). Its modules are imported from the
checkout unmodified; only what they import and preprocessing does not use is stubbed in ``sys.modules``
(``deepspeed``, ``llava/__init__``, ``llava/model/__init__``, ``llava.train.llava_trainer`` and the encoder,
resampler and projector builders, which import open_clip, imagebind and the like).

For each case (a ``--version``, ``--image_aspect_ratio``, ``--mm_patch_merge_type``, ``--image_grid_pinpoints``
and ``model_max_length``) and each conversation of conversations.json, with the tokenizer setup
``v15_legacy_false`` loaded as LLaVA-NeXT's ``train()`` loads a name holding "vicuna" (``use_fast=False``):

- ``LazySupervisedDataset.__getitem__`` (its retries included) opens the row's image (sizes: ``SIZES``), runs
  ``process_anyres_image`` / ``expand2square`` / the CLIP processor of a real tiny ``CLIPVisionTower``
  (clip_encoder.py, image_size 336, patch_size 14) and LLaVA-NeXT's own ``preprocess_multimodal`` and
  ``preprocess``;
- ``DataCollatorForSupervisedDataset`` slices to ``model_max_length``;
- ``LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal`` (llava_arch.py) merges the tiles (anyres grid,
  ``unpad_image``, the ``anyres_max`` downscale, ``image_newline``) and slices to ``tokenizer_model_max_length``.
  Only ``embed_tokens`` (zeros), the projector (ones) and ``image_newline`` (ones) stand in for the language model,
  so every image feature position, newlines included, can be counted.

Each entry is ``[kept_tokens, kept_image_features, kept_labels, id]`` (``id``: the row ``__getitem__`` returned,
another row's where it gave up on this one) or null where LLaVA-NeXT raises. Commands:

1. project environment: ``python tests/assets/llava_golden/produce.py folders OUT``
2. LLaVA's environment: ``python tests/assets/llava_golden/produce_next.py LLAVA_NEXT_CHECKOUT OUT``
   (writes next_golden.jsonl). Nothing of LLaVA-NeXT is copied here.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
LIST_PINPOINTS = "[(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]"
RANGE_PINPOINTS = "(1x1),...,(6x6)"
# (version, image_aspect_ratio, mm_patch_merge_type, image_grid_pinpoints, model_max_length)
CASES = [("v1", "anyres", "spatial_unpad", LIST_PINPOINTS, 8192), ("v1", "anyres", "spatial_unpad", LIST_PINPOINTS, 1500),
         ("v1", "anyres_max_9", "spatial_unpad", RANGE_PINPOINTS, 16384),
         ("v1", "anyres_max_9", "spatial_unpad", RANGE_PINPOINTS, 900),
         ("v1", "anyres", "spatial", LIST_PINPOINTS, 8192), ("v1", "anyres", "flat", LIST_PINPOINTS, 8192),
         ("v1", "anyres", "spatial_unpad_nobase", LIST_PINPOINTS, 8192),
         ("v1", "pad", "spatial_unpad", None, 8192), ("v1", "square", "flat", None, 600),
         ("plain", "anyres", "spatial_unpad", LIST_PINPOINTS, 8192),
         ("v0", "anyres", "spatial_unpad", LIST_PINPOINTS, 8192), ("mpt", "pad", "flat", None, 8192),
         ("v1_mmtag", "anyres", "spatial_unpad", LIST_PINPOINTS, 3000)]
# (width, height); 88x55, 176x110, 328x205 and 352x748 are sizes where LLaVA-NeXT's unpad_image (int()) keeps one
# row or column more or less than transformers' LlavaNextProcessor (int(round(x, 7)))
SIZES = [(640, 480), (120, 900), (336, 336), (50, 20), (88, 55), (176, 110), (328, 205), (352, 748), (1000, 300),
         (3000, 2000), (1920, 1080), (700, 2100), (1, 1)]
SETUP = "v15_legacy_false"
MISSING_ROW = 5  # img_mid: its image file is not written, so __getitem__ gives up on it


def next_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, tuple[int, int]]]:
    """The rows with one image file each (``r{index}.png``) and each file's size, the missing one left out."""
    out, sizes = [], {}
    for k, row in enumerate(rows):
        if isinstance(row.get("image"), str):
            row = {**row, "image": f"r{k}.png"}
            if k != MISSING_ROW:
                sizes[row["image"]] = SIZES[len(sizes) % len(SIZES)]
        out.append(row)
    return out, sizes


def _stub(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def main(checkout: Path, work: Path) -> None:  # pragma: no cover - a producer, run by hand
    import torch
    import transformers
    from PIL import Image

    sys.path.insert(0, str(checkout))
    _stub("deepspeed")
    _stub("llava", __path__=[str(checkout / "llava")])
    _stub("llava.model", __path__=[str(checkout / "llava" / "model")])
    _stub("llava.train.llava_trainer", LLaVATrainer=type("LLaVATrainer", (), {}))
    for part in ("multimodal_encoder", "multimodal_resampler", "multimodal_projector"):
        _stub(f"llava.model.{part}.builder", build_vision_tower=None, build_vision_resampler=None,
              build_vision_projector=None)
    from llava import conversation as conversation_lib
    from llava.model import llava_arch
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
    from llava.train import train as next_train

    tower_dir = work / "clip-vit-tiny-patch14-336"
    torch.manual_seed(0)
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        image_size=336, patch_size=14, hidden_size=8, intermediate_size=8, num_hidden_layers=2,
        num_attention_heads=2)).save_pretrained(tower_dir)
    transformers.CLIPImageProcessor(size={"shortest_edge": 336},
                                    crop_size={"height": 336, "width": 336}).save_pretrained(tower_dir)
    tower = CLIPVisionTower(str(tower_dir), args=types.SimpleNamespace(mm_vision_select_layer=-2,
                                                                       mm_vision_select_feature="patch"))

    rows, sizes = next_rows(json.loads((HERE / "conversations.json").read_text(encoding="utf-8")))
    images = work / "next-images"
    images.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        Image.new("RGB", size, "white").save(images / name)
    data = work / "next-rows.json"
    data.write_text(json.dumps(rows), encoding="utf-8")
    default_conversation = conversation_lib.default_conversation

    class Model(llava_arch.LlavaMetaForCausalLM):
        device = torch.device("cpu")

        def __init__(self, config: Any) -> None:
            self.config = config
            embed = torch.nn.Embedding(64000, 4)
            torch.nn.init.zeros_(embed.weight)
            self.model = types.SimpleNamespace(embed_tokens=embed, image_newline=torch.ones(4))

        def get_model(self) -> Any:
            return self.model

        def get_vision_tower(self) -> Any:
            return tower

        def encode_images(self, pixels: Any) -> Any:
            features = tower(pixels)
            return torch.ones(features.shape[0], features.shape[1], 4)

    for version, aspect, merge, pinpoints, limit in CASES:
        tok = transformers.AutoTokenizer.from_pretrained(str(work / SETUP), model_max_length=limit,
                                                         padding_side="right", use_fast=False)
        conversation_lib.default_conversation = default_conversation  # a fresh process
        if version == "v0":
            if tok.pad_token is None:
                tok.add_special_tokens({"pad_token": "[PAD]"})
        elif version == "v0.5":
            tok.pad_token = tok.unk_token
        else:
            if tok.unk_token is not None:
                tok.pad_token = tok.unk_token
            conversation_lib.default_conversation = conversation_lib.conv_templates.get(
                version, conversation_lib.conv_templates["vicuna_v1"])
        args = types.SimpleNamespace(image_folder=str(images), image_processor=tower.image_processor,
                                     image_aspect_ratio=aspect, image_grid_pinpoints=pinpoints, is_multimodal=True,
                                     mm_use_im_start_end=False, early_mix_text=False)
        dataset = next_train.LazySupervisedDataset(str(data), tok, args)
        collate = next_train.DataCollatorForSupervisedDataset(tokenizer=tok)
        model = Model(types.SimpleNamespace(
            image_aspect_ratio=aspect, mm_patch_merge_type=merge, image_grid_pinpoints=pinpoints,
            tokenizer_model_max_length=limit, tokenizer_padding_side="right", mm_newline_position="grid",
            tune_mm_mlp_adapter=False, mm_use_im_start_end=False, use_pos_skipping=False))
        out = []
        for k in range(len(rows)):
            try:
                item = dataset[k]
            except Exception:
                out.append(None)
                continue
            try:
                batch = collate([item])
                _, _, mask, _, embeds, labels = model.prepare_inputs_labels_for_multimodal(
                    batch["input_ids"], None, batch["attention_mask"], None, batch["labels"], batch["images"],
                    batch["modalities"], batch["image_sizes"])
            except Exception:
                out.append(None)
                continue
            n = int(mask[0].sum())
            out.append([n, int((embeds[0][:n] == 1).all(dim=-1).sum()), int((labels[0][:n] != -100).sum()),
                        item["id"]])
        print(json.dumps({"setup": SETUP, "version": version, "image_aspect_ratio": aspect, "mm_patch_merge_type": merge,
                          "image_grid_pinpoints": pinpoints, "model_max_length": limit, "cases": out}, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/tmp/llava-next-golden"))
