"""Produce collate_golden.json: what Unsloth's own ``UnslothVisionDataCollator.__call__`` (unsloth_zoo 2026.10.9)
does with each row of the notebooks' shape (``convert_to_conversation``: the image inside the user's content, the
answer as text), one row per batch, on real Gemma 3 and Qwen2-VL processors. Not run by the tests.

Run in the scratch environment of README.md (unsloth_zoo 2026.10.9, transformers 5.17, torch 2.13 CPU), with the
Gemma 3 test checkpoint (tests/gemma3_checkpoint.py, ``gemma3_checkpoint()``) and the Qwen2-VL demo checkpoint
(``vlmcheck.demo.checkpoints.qwen_checkpoint("qwen2_vl")``):
``UNSLOTH_IS_PRESENT=1 python tests/assets/unsloth_golden/produce_collate.py GEMMA3 QWEN2_VL > collate_golden.json``.
Gemma3Processor needs no torchvision (``Gemma3ImageProcessorPil``). Qwen2VLProcessor insists on a video processor,
which needs torchvision; no row holds a video, so it is built with none (transformers' class check on that one
argument is skipped) and ``Qwen2VLImageProcessorPil``. So the collator's whole ``__call__`` runs: the messages'
images through ``fetch_image``, the collator's resize, the processor call with ``truncation=True,
max_length=max_seq_length``, and the label masking (``train_on_responses_only`` included).
Nothing of Unsloth is copied here.
"""

from __future__ import annotations

import contextlib
import json
import sys

# (width, height) of each row's image, and its answer's length in words
ROWS = [(640, 480, 3), (4000, 3000, 40), (513, 2, 2), (3, 3, 5), (1920, 1080, 120), (30000, 100, 1), (100, 30000, 8),
        (896, 896, 0), (1000, 6, 4), (28, 5000, 6), (513, 700, 30)]
# per processor: (max_seq_length given to the collator, train_on_responses_only markers or None)
GEMMA = ("<start_of_turn>user\n", "<start_of_turn>model\n")
QWEN = ("<|im_start|>user\n", "<|im_start|>assistant\n")
SETTINGS = {
    "gemma3": [(None, None), (300, None), (280, None), (200, None), (290, GEMMA), (2048, GEMMA)],
    "qwen2_vl": [(None, None), (400, None), (120, None), (60, None), (300, QWEN), (2048, QWEN)],
}
INSTRUCTION = "Write the LaTeX representation for this image."


def rows(folder: str) -> list[dict]:
    from PIL import Image

    out = []
    for k, (w, h, words) in enumerate(ROWS):
        path = f"{folder}/img{k}.png"
        Image.new("RGB", (w, h), (k * 20, 100, 50)).save(path)
        answer = " ".join(f"x_{{{i}}}" for i in range(words))
        out.append({"image": path, "text": answer, "size": [w, h]})
    return out


def gemma3_processor(checkpoint: str):  # pragma: no cover
    from transformers import AutoTokenizer, Gemma3ImageProcessorPil, Gemma3Processor

    args = json.loads(open(f"{checkpoint}/processor_config.json").read())
    args.pop("processor_class", None)
    return Gemma3Processor(image_processor=Gemma3ImageProcessorPil.from_pretrained(checkpoint),
                           tokenizer=AutoTokenizer.from_pretrained(checkpoint),
                           chat_template=open(f"{checkpoint}/chat_template.jinja").read(), **args)


def qwen2_vl_processor(checkpoint: str):  # pragma: no cover
    from transformers import AutoTokenizer, ProcessorMixin, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    check = ProcessorMixin.check_argument_for_proper_class

    def lenient(self, name, arg):  # no video processor: it needs torchvision, and no row holds a video
        return None if name == "video_processor" else check(self, name, arg)

    ProcessorMixin.check_argument_for_proper_class = lenient
    try:
        template = json.loads(open(f"{checkpoint}/chat_template.json").read())["chat_template"]
        return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessorPil.from_pretrained(checkpoint),
                                tokenizer=AutoTokenizer.from_pretrained(checkpoint), video_processor=None,
                                chat_template=template)
    finally:
        ProcessorMixin.check_argument_for_proper_class = check


def collate(processor, config: dict, settings: list, data: list[dict]) -> list[dict]:  # pragma: no cover
    from types import SimpleNamespace

    import torch
    from unsloth_zoo.vision_utils import UnslothVisionDataCollator

    # the model's config as Unsloth reads it: vision_config's image_size / patch_size when the checkpoint has them
    # (the Qwen2-VL demo checkpoint has no vision_config: Unsloth then uses 512 and 14, as for the hub's, which
    # has neither image_size nor a vision model_type)
    vision = {k: v for k, v in (config.get("vision_config") or {}).items() if k in ("image_size", "patch_size")}
    image_token = config.get("image_token_index", config.get("image_token_id"))
    embeddings = torch.nn.Embedding(4, 4)
    out = []
    for max_seq_length, markers in settings:
        model = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(**vision),
                                                       image_token_index=image_token),
                                get_input_embeddings=lambda: embeddings, max_seq_length=2048)
        kwargs = {"train_on_responses_only": True, "instruction_part": markers[0], "response_part": markers[1]} \
            if markers else {}
        collator = UnslothVisionDataCollator(model, processor, max_seq_length=max_seq_length, **kwargs)
        results = []
        for row in data:
            example = {"messages": [
                {"role": "user", "content": [{"type": "text", "text": INSTRUCTION},
                                             {"type": "image", "image": row["image"]}]},
                {"role": "assistant", "content": [{"type": "text", "text": row["text"]}]}]}
            try:
                batch = collator([example])
            except Exception as e:  # the collator raises: the run stops at this batch
                results.append({"raises": f"{type(e).__name__}: {str(e)[:160]}"})
                continue
            ids = batch["input_ids"][0]
            labels = batch["labels"][0]
            results.append({"tokens": int(ids.shape[0]), "image_tokens": int((ids == image_token).sum()),
                            "labels": int((labels != -100).sum())})
        out.append({"max_seq_length": max_seq_length, "markers": list(markers) if markers else None,
                    "results": results})
    return out


def main(gemma3: str, qwen2_vl: str, folder: str) -> None:  # pragma: no cover - a producer, run by hand
    data = rows(folder)
    out = {}
    for name, checkpoint, make in (("gemma3", gemma3, gemma3_processor), ("qwen2_vl", qwen2_vl, qwen2_vl_processor)):
        config = json.loads(open(f"{checkpoint}/config.json").read())
        with contextlib.redirect_stdout(sys.stderr):  # Unsloth prints its notes on stdout
            out[name] = collate(make(checkpoint), config, SETTINGS[name], data)
    print(json.dumps({"instruction": INSTRUCTION, "rows": [[w, h, n] for w, h, n in ROWS], "processors": out},
                     indent=1))


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        main(sys.argv[1], sys.argv[2], tmp)
