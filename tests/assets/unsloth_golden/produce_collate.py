"""Produce collate_golden.json: what Unsloth's own ``UnslothVisionDataCollator.__call__`` (unsloth_zoo 2026.10.9)
does with each row of the notebooks' shape (``convert_to_conversation``: the image inside the user's content, the
answer as text), one row per batch, on a real Gemma 3 processor. Not run by the tests.

Run in the scratch environment of README.md (unsloth_zoo 2026.10.9, transformers 5.17, torch 2.13 CPU), with the
Gemma 3 test checkpoint folder (tests/gemma3_checkpoint.py, ``gemma3_checkpoint()``):
``UNSLOTH_IS_PRESENT=1 python tests/assets/unsloth_golden/produce_collate.py CHECKPOINT > collate_golden.json``.
Gemma3Processor needs no torchvision (its image processor is ``Gemma3ImageProcessorPil``), so the collator's whole
``__call__`` runs: the messages' images through ``fetch_image``, the collator's resize, the processor call with
``truncation=True, max_length=max_seq_length``, and the label masking (``train_on_responses_only`` included).
Nothing of Unsloth is copied here.
"""

from __future__ import annotations

import json

# (width, height) of each row's image, and its answer's length in words
ROWS = [(640, 480, 3), (4000, 3000, 40), (513, 2, 2), (3, 3, 5), (1920, 1080, 120), (30000, 100, 1), (100, 30000, 8),
        (896, 896, 0)]
# (max_seq_length given to the collator, train_on_responses_only markers or None)
SETTINGS = [(None, None), (300, None), (280, None), (200, None), (290, ("<start_of_turn>user\n", "<start_of_turn>model\n")),
            (2048, ("<start_of_turn>user\n", "<start_of_turn>model\n"))]
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


def main(checkpoint: str, folder: str) -> None:  # pragma: no cover - a producer, run by hand
    from types import SimpleNamespace

    import torch
    from transformers import AutoTokenizer, Gemma3ImageProcessorPil, Gemma3Processor
    from unsloth_zoo.vision_utils import UnslothVisionDataCollator

    args = json.loads(open(f"{checkpoint}/processor_config.json").read())
    args.pop("processor_class", None)
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessorPil.from_pretrained(checkpoint),
                                tokenizer=AutoTokenizer.from_pretrained(checkpoint),
                                chat_template=open(f"{checkpoint}/chat_template.jinja").read(), **args)
    config = json.loads(open(f"{checkpoint}/config.json").read())
    vision = config["vision_config"]
    embeddings = torch.nn.Embedding(4, 4)
    data = rows(folder)
    out = []
    for max_seq_length, markers in SETTINGS:
        model = SimpleNamespace(config=SimpleNamespace(
            vision_config=SimpleNamespace(image_size=vision["image_size"], patch_size=vision["patch_size"]),
            image_token_index=config["image_token_index"]), get_input_embeddings=lambda: embeddings,
            max_seq_length=2048)
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
            results.append({"tokens": int(ids.shape[0]),
                            "image_tokens": int((ids == config["image_token_index"]).sum()),
                            "labels": int((labels != -100).sum())})
        out.append({"max_seq_length": max_seq_length, "markers": list(markers) if markers else None,
                    "results": results})
    print(json.dumps({"instruction": INSTRUCTION, "rows": [[w, h, n] for w, h, n in ROWS], "settings": out},
                     indent=1))


if __name__ == "__main__":
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        main(sys.argv[1], tmp)
