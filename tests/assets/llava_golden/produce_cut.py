"""Produce cut_golden.jsonl: what LLaVA's own collator and model do at ``model_max_length`` (see README.md).
Not run by the tests.

For each case (a tokenizer setup, a ``--version``, an ``--image_aspect_ratio`` and a ``model_max_length``) and
each conversation of conversations.json, LLaVA's own code at commit c121f04 runs, imported from a checkout whose
``llava/__init__.py`` and ``llava/model/__init__.py`` are emptied and whose ``llava/train/llava_trainer.py`` holds
only ``class LLaVATrainer: pass``:

- ``LazySupervisedDataset.__getitem__`` opens the row's image from ``--image_folder``, pads it (``pad``) and runs
  the vision tower's CLIP image processor; its ``preprocess`` call is answered with vlmcheck's ids and labels for
  the row, which equal LLaVA's own (their SHA-1 are golden.jsonl's, tests/test_template_llava_golden.py);
- ``DataCollatorForSupervisedDataset`` slices the batch to ``model_max_length``;
- ``LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal`` splices the features of a real (tiny, random)
  ``CLIPVisionTower`` (clip_encoder.py, image_size 336, patch_size 14, select layer -2, ``patch``) where the
  ``<image>`` id was and slices to ``tokenizer_model_max_length``. Only ``embed_tokens`` (zeros) and the
  projector (features set to ones, so they can be counted) stand in for the language model.

Each entry is ``[kept_tokens, kept_image_features, kept_labels]`` or null where LLaVA raises. In the project's
environment (torch, transformers with CLIP): ``python tests/assets/llava_golden/produce_cut.py LLAVA_CHECKOUT``.
Nothing of LLaVA is copied here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).parent
CASES = [("v15_legacy_false", "v1", "pad", 64), ("v15_legacy_false", "v1", "pad", 128),
         ("v15_legacy_false", "v1", "square", 600), ("v15_legacy_false", "plain", "pad", 590),
         ("no_bos_short", "llava_llama_2", "pad", 128), ("legacy_true", "mpt", "pad", 620)]
SIZES = [(640, 480), (120, 900), (336, 336), (50, 20)]


def main(checkout: Path, work: Path) -> None:  # pragma: no cover - a producer, run by hand
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    sys.path.insert(0, str(checkout))
    sys.path.insert(0, str(HERE.parent.parent))
    from llava.model import llava_arch
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
    from llava.train import train as llava_train

    from llama_vocab import llama2_checkpoint
    from vlmcheck.frameworks import llava as ours

    tower_dir = work / "clip-vit-tiny-patch14-336"
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=8, intermediate_size=8,
                                     num_hidden_layers=2, num_attention_heads=2)).save_pretrained(tower_dir)
    CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(
        tower_dir)
    tower = CLIPVisionTower(str(tower_dir), args=SimpleNamespace(mm_vision_select_layer=-2,
                                                                 mm_vision_select_feature="patch"))

    rows = json.loads((HERE / "conversations.json").read_text(encoding="utf-8"))
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    for k, row in enumerate(rows):
        if isinstance(row.get("image"), str):
            Image.new("RGB", SIZES[k % len(SIZES)], "white").save(images / row["image"])
    data = work / "rows.json"
    data.write_text(json.dumps(rows), encoding="utf-8")
    setups = {s["name"]: s for s in json.loads((HERE / "setups.json").read_text(encoding="utf-8"))}

    class Model(llava_arch.LlavaMetaForCausalLM):
        device = torch.device("cpu")

        def __init__(self, limit: int, aspect: str) -> None:
            self.config = SimpleNamespace(tokenizer_model_max_length=limit, image_aspect_ratio=aspect,
                                          tune_mm_mlp_adapter=False, mm_use_im_start_end=False)
            self.embed = torch.nn.Embedding(64000, 4)
            torch.nn.init.zeros_(self.embed.weight)

        def get_model(self) -> Any:
            return SimpleNamespace(embed_tokens=self.embed)

        def get_vision_tower(self) -> Any:
            return tower

        def encode_images(self, pixels: Any) -> Any:
            features = tower(pixels)
            return torch.ones(features.shape[0], features.shape[1], 4)

    current: dict[str, Any] = {}  # the row __getitem__ is on: its ids and labels answer LLaVA's preprocess call
    for setup, version, aspect, limit in CASES:
        s = setups[setup]
        build = dict(s["build"])
        build["added"] = tuple(build.get("added", ()))
        folder = llama2_checkpoint(work / setup, **build)
        tok = ours.load_tokenizer(folder, version=version, model_max_length=limit,
                                  model_name_or_path=s["model_name_or_path"] or str(folder))
        def preprocess(sources: Any, tokenizer: Any, has_image: bool = False,
                       current: dict[str, Any] = current) -> dict[str, Any]:
            run = current["run"]
            labels = [t if keep else llava_train.IGNORE_INDEX for t, keep in zip(run.input_ids, run.supervised)]
            return {"input_ids": [torch.tensor(run.input_ids)], "labels": [torch.tensor(labels)]}

        llava_train.preprocess = preprocess
        args = SimpleNamespace(image_folder=str(images), image_processor=tower.image_processor,
                               image_aspect_ratio=aspect, is_multimodal=True, mm_use_im_start_end=False)
        dataset = llava_train.LazySupervisedDataset(str(data), None, args)
        collate = llava_train.DataCollatorForSupervisedDataset(
            tokenizer=SimpleNamespace(pad_token_id=tok.pad_id, model_max_length=limit))
        model = Model(limit, aspect)
        out = []
        for k, row in enumerate(rows):
            run = ours.simulate(row, tokenizer=tok, version=version)
            if run.refused is not None:
                out.append(None)
                continue
            current["run"] = run
            try:
                batch = collate([dataset[k]])
                _, _, mask, _, embeds, labels = model.prepare_inputs_labels_for_multimodal(
                    batch["input_ids"], None, batch["attention_mask"], None, batch["labels"], batch["images"])
            except Exception:
                out.append(None)
                continue
            n = int(mask[0].sum())
            out.append([n, int((embeds[0][:n] == 1).all(dim=-1).sum()), int((labels[0][:n] != -100).sum())])
        print(json.dumps({"setup": setup, "version": version, "image_aspect_ratio": aspect,
                          "model_max_length": limit, "sizes": SIZES, "cases": out}, separators=(",", ":")))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/tmp/llava-cut"))
