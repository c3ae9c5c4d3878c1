"""Produce qwen_golden.jsonl: what LLaVA-NeXT's own train.py data path and model splice keep of each row under
``--version qwen_1_5`` / ``qwen_2`` / ``qwen_2_5`` (``preprocess_qwen``, LLaVA-OneVision's recipe) with a CLIP or
a SigLIP vision tower (see README.md). Not run by the tests. A sibling of produce_next.py.

LLaVA-VL/LLaVA-NeXT at commit df17966 runs in LLaVA's pinned stack (the scratch environment of produce.py step 2:
transformers 4.37.2, tokenizers 0.15.1, sentencepiece 0.1.99, torch, pillow). Its modules are imported from the
checkout unmodified; only what they import and this data path does not use is stubbed in ``sys.modules``
(``deepspeed``, ``llava/__init__``, ``llava/model/__init__``, ``llava.train.llava_trainer`` and the encoder,
resampler and projector builders, which import open_clip, imagebind and the like). ``time.sleep`` as train.py
sees it (the 1 s pause of each of ``__getitem__``'s first three retries) is a no-op: it changes nothing but the
wall time. LLaVA-NeXT's own prints (the retry messages) go to stderr; stdout holds only the JSON lines.

For each case (tokenizer folder, ``--version``, vision tower, ``--image_aspect_ratio``, ``--mm_patch_merge_type``,
``--image_grid_pinpoints``, ``model_max_length``) and each row of conversations.json (``produce_next.next_rows``:
one image file per image row, the same sizes, the same missing file):

- the tokenizer is loaded and set up as LLaVA-NeXT's ``train()`` does for a name holding "qwen":
  ``AutoTokenizer.from_pretrained(folder, model_max_length=..., padding_side="right")`` (the fast tokenizer), pad
  set to unk only when there is an unk token (there is none: pad stays ``<|endoftext|>``),
  ``conversation_lib.default_conversation = conv_templates[version]``; ``--image_grid_pinpoints`` is turned into
  a list as ``train()`` does (``"(1x1),...,(6x6)"`` times the processor's size);
- the vision tower is a real tiny one: ``CLIPVisionTower`` (clip_encoder.py, image_size 336, patch_size 14, as in
  produce_next.py) or ``SigLipVisionTower`` (siglip_encoder.py, built from a ``SigLipVisionConfig`` of that module
  with image_size 384, patch_size 14, hidden_size 8, 2 layers, saved with its ``SigLipVisionModel`` into a folder
  named ``siglip-tiny-patch14-384``; its processor is that module's ``SigLipImageProcessor``, 729 features a crop);
- ``LazySupervisedDataset.__getitem__`` (its retries included) opens the row's image, runs
  ``process_anyres_image`` / ``expand2square`` / the tower's processor, ``preprocess_multimodal`` and
  ``preprocess`` (-> ``preprocess_qwen``);
- ``DataCollatorForSupervisedDataset`` slices to ``model_max_length`` and masks pad ids;
- ``LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal`` (llava_arch.py) merges the tiles and slices to
  ``tokenizer_model_max_length``. Only ``embed_tokens`` (zeros), the projector (ones) and ``image_newline`` (ones)
  stand in for the language model, so every image feature position, newlines included, can be counted.

Each entry is null where LLaVA-NeXT raises (``dataset[k]`` after its retries, or the collator / splice), else
``[kept_tokens, kept_image_features, kept_labels, id, n_input_ids, n_supervised, ids_sha, labels_sha]``: the
first four as in produce_next.py (``id``: the row ``__getitem__`` returned, another row's where it gave up on this
one); then ``len(item["input_ids"])`` as ``__getitem__`` returned it (text ids, the image as one -200), how many of
``item["labels"]`` are not -100, and the first 16 hex digits of the SHA-1 of ``json.dumps(input_ids)`` and of the
labels as a "0"/"1" string (1: not -100). Commands:

1. project environment: ``python tests/assets/llava_golden/produce_qwen.py folders OUT`` (the two Qwen LLM
   tokenizer folders of ``tests/qwen_llm_checkpoint.py``, copied to ``OUT/qwen2-7b-instruct`` and
   ``OUT/qwen2.5-7b-instruct``)
2. LLaVA's environment: ``python tests/assets/llava_golden/produce_qwen.py run LLAVA_NEXT_CHECKOUT OUT >
   tests/assets/llava_golden/qwen_golden.jsonl`` (and ``... facts LLAVA_NEXT_CHECKOUT OUT`` prints the tokenizer
   facts README.md quotes). Nothing of LLaVA-NeXT is copied here.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import sys
import types
from pathlib import Path
from typing import Any

# set before transformers is imported: LLaVA-NeXT's conversation.py asks the hub for
# meta-llama/Meta-Llama-3-8B-Instruct's tokenizer at import (it takes None when that fails); nothing is fetched
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
HERE = Path(__file__).parent
stdout = sys.stdout  # where the JSON lines go; __main__ points sys.stdout itself at stderr
sys.path.insert(0, str(HERE))
from produce_next import LIST_PINPOINTS, RANGE_PINPOINTS, _stub, next_rows  # noqa: E402

QWEN2, QWEN25 = "qwen2-7b-instruct", "qwen2.5-7b-instruct"
# (tokenizer folder, version, vision tower, image_aspect_ratio, mm_patch_merge_type, image_grid_pinpoints,
#  model_max_length)
CASES = [(QWEN2, "qwen_1_5", "siglip-384", "anyres_max_9", "spatial_unpad", RANGE_PINPOINTS, 32768),
         (QWEN2, "qwen_1_5", "siglip-384", "anyres_max_9", "spatial_unpad", RANGE_PINPOINTS, 3000),
         (QWEN2, "qwen_2", "siglip-384", "pad", "flat", None, 1200),
         (QWEN2, "qwen_2_5", "clip-336", "anyres", "spatial_unpad", LIST_PINPOINTS, 8192),
         (QWEN2, "qwen_1_5", "clip-336", "square", "flat", None, 700),
         (QWEN25, "qwen_2_5", "siglip-384", "anyres_max_9", "spatial_unpad", RANGE_PINPOINTS, 32768)]
# the same on multi_rows(): lists of images (each padded to one crop when there are several)
MULTI_CASES = [(QWEN2, "qwen_1_5", "siglip-384", "anyres_max_9", "spatial_unpad", RANGE_PINPOINTS, 32768),
               (QWEN2, "qwen_1_5", "siglip-384", "anyres_max_9", "spatial_unpad", RANGE_PINPOINTS, 1600),
               (QWEN2, "qwen_2", "clip-336", "pad", "flat", None, 4096)]
_MULTI_SIZES = [(640, 480), (120, 900), (1000, 300), (3000, 2000), (50, 20), (336, 336), (700, 2100)]


def multi_rows() -> tuple[list[dict[str, Any]], dict[str, tuple[int, int]]]:
    """Rows whose ``image`` is a list (LLaVA-OneVision's multi-image data): as many ``<image>`` as images, fewer,
    one more, two more, a one-image list, an empty list, a missing file, a 1 x 1 image, ``<image>`` in an answer,
    long rows to cut; with each file's size (``m{k}_{j}.png``; ``m7_1.png`` is not written)."""
    words = "the first second image shows a chart table person street sign with more detail than".split()

    def text(k: int, n: int) -> str:
        return " ".join(words[(k * 7 + i * 3) % len(words)] for i in range(n))

    specs = [  # (images, first human turn, answer, more turns)
        (2, "<image>\n<image>\nCompare the two pictures.", text(0, 12), []),
        (3, "Look at <image> first.", text(1, 9), [("<image><image> and these two?", text(2, 30))]),
        (2, "<image>\nWhat is in the picture?", text(3, 8), []),
        (2, "<image>\n<image>\n<image>\nThree marks, two images.", text(4, 6), []),
        (2, "<image><image><image><image> four marks.", text(5, 6), []),
        (1, "<image>\nOne image in a list.", text(6, 15), []),
        (0, "No image at all in an empty list.", text(7, 5), []),
        (2, "<image>\n<image>\nThe second file is missing.", text(8, 5), []),
        (2, "<image>\n<image>\nThe second one is a single pixel.", text(9, 5), []),
        (2, "<image>\nDescribe it.", "Here: <image> " + text(10, 10), []),
        (3, "<image>\n<image>\n<image>\n" + text(11, 400), text(12, 300), [("Again?", text(13, 200))]),
        (2, "<image>\n" + text(14, 50) + " <image> " + text(15, 20), text(16, 250), []),
    ]
    rows, sizes = [], {}
    for k, (n, first, answer, more) in enumerate(specs):
        files = [f"m{k}_{j}.png" for j in range(n)]
        for j, name in enumerate(files):
            if name == "m7_1.png":
                continue
            sizes[name] = (1, 1) if name == "m8_1.png" else _MULTI_SIZES[(k + j) % len(_MULTI_SIZES)]
        conv = [{"from": "human", "value": first}, {"from": "gpt", "value": answer}]
        for q, a in more:
            conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        rows.append({"id": f"m{k}", "image": files, "conversations": conv})
    return rows, sizes


def folders(out: Path) -> None:
    """The two tokenizer folders, their tokenizer.json in the format the hub files have (merges as "a b"
    strings, no ``ignore_merges``), the one tokenizers 0.15.1 reads; the same vocabulary and merges."""
    sys.path.insert(0, str(HERE.parent.parent))
    from qwen_llm_checkpoint import qwen_llm_tokenizer

    for qwen25 in (False, True):
        src = Path(qwen_llm_tokenizer(qwen25=qwen25))
        shutil.copytree(src, out / src.name, dirs_exist_ok=True)
        data = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
        model = data["model"]
        assert model.pop("ignore_merges", False) is False
        assert not any(" " in part for pair in model["merges"] if isinstance(pair, list) for part in pair)
        model["merges"] = [" ".join(pair) if isinstance(pair, list) else pair for pair in model["merges"]]
        (out / src.name / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n",
                                                       encoding="utf-8")


def _import_llava(checkout: Path) -> types.SimpleNamespace:
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
    from llava.model.multimodal_encoder import siglip_encoder
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
    from llava.train import train as next_train

    return types.SimpleNamespace(conversation_lib=conversation_lib, llava_arch=llava_arch, siglip=siglip_encoder,
                                 CLIPVisionTower=CLIPVisionTower, train=next_train)


def _load_tokenizer(llava: types.SimpleNamespace, folder: Path, version: str, limit: int) -> Any:
    """train()'s lines for a model name holding "qwen" and a version other than v0 / v0.5."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), model_max_length=limit, padding_side="right")
    if tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token
    if version in llava.conversation_lib.conv_templates:
        llava.conversation_lib.default_conversation = llava.conversation_lib.conv_templates[version]
    else:
        llava.conversation_lib.default_conversation = llava.conversation_lib.conv_templates["vicuna_v1"]
    return tokenizer


def _pinpoints(pinpoints: Any, image_processor: Any) -> Any:
    """train()'s handling of --image_grid_pinpoints."""
    if pinpoints is not None:
        if isinstance(pinpoints, str) and "x" in pinpoints:
            try:
                patch_size = image_processor.size[0]
            except Exception:
                patch_size = image_processor.size["shortest_edge"]
            assert patch_size in [224, 336, 384, 448, 512], "patch_size should be in [224, 336, 384, 448, 512]"
            matches = re.findall(r"\((\d+)x(\d+)\)", pinpoints)
            range_start = tuple(map(int, matches[0]))
            range_end = tuple(map(int, matches[-1]))
            grid = [(i, j) for i in range(range_start[0], range_end[0] + 1)
                    for j in range(range_start[1], range_end[1] + 1)]
            pinpoints = [[dim * patch_size for dim in pair] for pair in grid]
        elif isinstance(pinpoints, str):
            pinpoints = ast.literal_eval(pinpoints)
    return pinpoints


def facts(checkout: Path, work: Path) -> None:  # pragma: no cover - a producer, run by hand
    llava = _import_llava(checkout)
    tok = _load_tokenizer(llava, work / QWEN2, "qwen_1_5", 32768)
    info: dict[str, Any] = {"class": type(tok).__name__, "additional_special_tokens": tok.additional_special_tokens,
                            "additional_special_tokens_ids": tok.additional_special_tokens_ids,
                            "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
                            "unk_token": tok.unk_token, "eos_token_id": tok.eos_token_id, "len": len(tok),
                            "newline_ids": tok("\n").input_ids}
    tok.add_tokens(["<image>"], special_tokens=True)
    info["image_token_id"] = tok.convert_tokens_to_ids("<image>")
    info["len_after_image"] = len(tok)
    tok25 = _load_tokenizer(llava, work / QWEN25, "qwen_2_5", 32768)
    info["qwen25_additional_special_tokens_ids"] = tok25.additional_special_tokens_ids
    print(json.dumps(info), file=stdout)


def run(checkout: Path, work: Path, only: str | None = None) -> None:  # pragma: no cover - run by hand
    import torch
    import transformers
    from PIL import Image

    llava = _import_llava(checkout)
    llava.train.time = types.SimpleNamespace(**{**vars(llava.train.time), "sleep": lambda seconds: None})
    llava_arch, next_train = llava.llava_arch, llava.train

    towers = {}
    clip_dir = work / "clip-vit-tiny-patch14-336"
    torch.manual_seed(0)
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        image_size=336, patch_size=14, hidden_size=8, intermediate_size=8, num_hidden_layers=2,
        num_attention_heads=2)).save_pretrained(clip_dir)
    transformers.CLIPImageProcessor(size={"shortest_edge": 336},
                                    crop_size={"height": 336, "width": 336}).save_pretrained(clip_dir)
    towers["clip-336"] = llava.CLIPVisionTower(str(clip_dir), args=types.SimpleNamespace(
        mm_vision_select_layer=-2, mm_vision_select_feature="patch"))
    siglip_dir = work / "siglip-tiny-patch14-384"
    torch.manual_seed(0)
    llava.siglip.SigLipVisionModel(llava.siglip.SigLipVisionConfig(
        hidden_size=8, intermediate_size=8, num_hidden_layers=2, num_attention_heads=2, image_size=384,
        patch_size=14)).save_pretrained(siglip_dir)
    towers["siglip-384"] = llava.siglip.SigLipVisionTower(str(siglip_dir), vision_tower_cfg=types.SimpleNamespace())

    rows, sizes = next_rows(json.loads((HERE / "conversations.json").read_text(encoding="utf-8")))
    multi, multi_sizes = multi_rows()
    images = work / "next-images"
    images.mkdir(parents=True, exist_ok=True)
    for name, size in {**sizes, **multi_sizes}.items():
        Image.new("RGB", size, "white").save(images / name)
    data = work / "next-rows.json"
    data.write_text(json.dumps(rows), encoding="utf-8")
    multi_data = work / "multi-rows.json"
    multi_data.write_text(json.dumps(multi), encoding="utf-8")

    class Model(llava_arch.LlavaMetaForCausalLM):
        device = torch.device("cpu")

        def __init__(self, config: Any, tower: Any) -> None:
            self.config = config
            self.tower = tower
            embed = torch.nn.Embedding(152064, 4)
            torch.nn.init.zeros_(embed.weight)
            self.model = types.SimpleNamespace(embed_tokens=embed, image_newline=torch.ones(4))

        def get_model(self) -> Any:
            return self.model

        def get_vision_tower(self) -> Any:
            return self.tower

        def encode_images(self, pixels: Any) -> Any:
            features = self.tower(pixels)
            return torch.ones(features.shape[0], features.shape[1], 4)

    def sha(text: str) -> str:
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    plan = [(case, rows, data, None) for case in CASES] + [(case, multi, multi_data, "multi") for case in MULTI_CASES]
    for (setup, version, tower_name, aspect, merge, pinpoints, limit), case_rows, case_data, kind in plan:
        if only is not None and kind != only:
            continue
        tower = towers[tower_name]
        tok = _load_tokenizer(llava, work / setup, version, limit)
        grid = _pinpoints(pinpoints, tower.image_processor)
        args = types.SimpleNamespace(image_folder=str(images), image_processor=tower.image_processor,
                                     image_aspect_ratio=aspect, image_grid_pinpoints=grid, is_multimodal=True,
                                     mm_use_im_start_end=False, early_mix_text=False)
        dataset = next_train.LazySupervisedDataset(str(case_data), tok, args)
        collate = next_train.DataCollatorForSupervisedDataset(tokenizer=tok)
        model = Model(types.SimpleNamespace(
            image_aspect_ratio=aspect, mm_patch_merge_type=merge, image_grid_pinpoints=grid,
            tokenizer_model_max_length=tok.model_max_length, tokenizer_padding_side=tok.padding_side,
            mm_newline_position="grid", tune_mm_mlp_adapter=False, mm_use_im_start_end=False,
            use_pos_skipping=False), tower)
        out: list[Any] = []
        for k in range(len(case_rows)):
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
            except Exception as e:  # the training step raises (the multi-image lines say so apart)
                out.append(None if kind is None else f"raises: {type(e).__name__}")
                continue
            n = int(mask[0].sum())
            ids, item_labels = item["input_ids"].tolist(), item["labels"].tolist()
            out.append([n, int((embeds[0][:n] == 1).all(dim=-1).sum()), int((labels[0][:n] != -100).sum()),
                        item["id"], len(ids), sum(x != -100 for x in item_labels), sha(json.dumps(ids)),
                        sha("".join("0" if x == -100 else "1" for x in item_labels))])
        line = {"setup": setup, "version": version, "vision_tower": tower_name, "image_aspect_ratio": aspect,
                "mm_patch_merge_type": merge, "image_grid_pinpoints": pinpoints, "model_max_length": limit,
                "cases": out}
        if kind is not None:
            line = {"rows": kind, **line}
        print(json.dumps(line, separators=(",", ":")), file=stdout, flush=True)


# --data_path forms LLaVA-NeXT's LazySupervisedDataset reads: (name, data_path relative to the data folder, YAML)
DATA_PATHS = [
    ("plain-yaml", "mix.yaml", [("a.json", None), ("b.jsonl", "first:3"), ("c.json", "end:2")]),
    ("percent", "pct.yaml", [("a.json", "first:25%"), ("b.jsonl", "end:50%"), ("c.json", "first:0")]),
    ("end-zero", "zero.yaml", [("a.json", "end:0"), ("c.json", "all"), ("b.jsonl", "middle:2")]),
    ("random", "rand.yaml", [("c.json", "first:1"), ("b.jsonl", "random:2")]),
    ("braces", "{a,c}.json", None),
]


def data_files(folder: Path) -> None:
    """The data files DATA_PATHS reads (rows with ids only: LazySupervisedDataset.__init__ reads no further)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = {name: [{"id": f"{name[0]}{k}", "conversations": []} for k in range(n)]
            for name, n in (("a.json", 10), ("b.jsonl", 7), ("c.json", 5))}
    for name, content in rows.items():
        text = ("".join(json.dumps(r) + "\n" for r in content) if name.endswith(".jsonl")
                else json.dumps(content))
        (folder / name).write_text(text, encoding="utf-8")
    for _, path, entries in DATA_PATHS:
        if entries is not None:
            spec = [{"json_path": str(folder / f), **({"sampling_strategy": st} if st else {})} for f, st in entries]
            (folder / path).write_text(json.dumps({"datasets": spec}), encoding="utf-8")  # JSON is YAML


def data(checkout: Path, work: Path) -> None:  # pragma: no cover - a producer, run by hand
    """Print, per DATA_PATHS entry, the ids of the rows LLaVA-NeXT's LazySupervisedDataset holds, in order."""
    llava = _import_llava(checkout)
    folder = work / "data-paths"
    data_files(folder)
    out = {}
    for name, path, _ in DATA_PATHS:
        args = types.SimpleNamespace()
        dataset = llava.train.LazySupervisedDataset(str(folder / path), None, args)
        out[name] = [row["id"] for row in dataset.list_data_dict]
    print(json.dumps(out, separators=(",", ":")), file=stdout, flush=True)


def modality(checkout: Path, work: Path) -> None:  # pragma: no cover - a producer, run by hand
    """Print, for each row of next_rows and multi_rows, what LLaVA-NeXT's ``modality_lengths`` (read by the
    trainer's sampler under --group_by_modality_length, before step 1) does with it alone: null, or the exception."""
    llava = _import_llava(checkout)
    rows, _ = next_rows(json.loads((HERE / "conversations.json").read_text(encoding="utf-8")))
    multi, _ = multi_rows()
    out = {}
    for name, group in (("rows", rows), ("multi", multi)):
        results = []
        for row in group:
            dataset = llava.train.LazySupervisedDataset.__new__(llava.train.LazySupervisedDataset)
            dataset.list_data_dict = [row]
            dataset.data_args = types.SimpleNamespace(early_mix_text=False)
            try:
                dataset.modality_lengths  # noqa: B018 - the property is the code under test
                results.append(None)
            except Exception as e:
                results.append(f"{type(e).__name__}: {e}"[:200])
        out[name] = results
    print(json.dumps(out, separators=(",", ":")), file=stdout, flush=True)


if __name__ == "__main__":
    command, rest = sys.argv[1], [Path(a) for a in sys.argv[2:]]
    stdout, sys.stdout = sys.stdout, sys.stderr  # LLaVA-NeXT's prints (loading, retries) go to stderr
    if command == "folders":
        folders(rest[0])
    elif command == "modality":  # modality CHECKOUT OUT > modality_golden.json
        modality(rest[0], rest[1] if len(rest) > 1 else Path("/tmp/llava-qwen-golden"))
    elif command == "data":  # data CHECKOUT OUT > data_paths_golden.json
        data(rest[0], rest[1] if len(rest) > 1 else Path("/tmp/llava-qwen-golden"))
    elif command == "facts":
        facts(rest[0], rest[1] if len(rest) > 1 else Path("/tmp/llava-qwen-golden"))
    else:  # run CHECKOUT [OUT [multi]]: every line, or only the multi-image lines
        run(rest[0], rest[1] if len(rest) > 1 else Path("/tmp/llava-qwen-golden"),
            str(rest[2]) if len(rest) > 2 else None)
