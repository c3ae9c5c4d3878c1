"""SmolVLM2 (``model_type`` ``smolvlm``): HuggingFaceTB/SmolVLM2-2.2B-Instruct, -500M/-256M-Video-Instruct.

Images are counted exactly as Idefics3 counts them (``idefics3.py``, whose arithmetic and prompt this family
uses): SmolVLMImageProcessorPil is Idefics3ImageProcessorPil unchanged (``modular_smolvlm.py`` subclasses it and
transformers generates the copy), and SmolVLMProcessor, its own class, has Idefics3Processor's defaults
(image_seq_len 169) and writes the same marker text. What differs is read here: SmolVLMProcessor takes its token
strings from the tokenizer (``<global-img>`` is a special token in SmolVLM2's vocabulary, so it is listed among the
vision tokens), and it adds video prompts, which are not counted.

Sources (transformers 5.23.0): ``models/smolvlm/processing_smolvlm.py`` (``SmolVLMProcessor.__init__``,
``replace_image_token`` -> ``get_image_prompt_string``, ``_prompt_split_image``, ``_prompt_single_image``) and
``models/smolvlm/image_processing_pil_smolvlm.py`` (``SmolVLMImageProcessorPil``).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmcheck.families.idefics3 import FAKE_IMAGE_TOKEN, GLOBAL_IMAGE_TAG, IMAGE_TOKEN, Idefics3Family


@dataclass(frozen=True)
class SmolVLMFamily(Idefics3Family):
    """Idefics3's counting and batch layout, under SmolVLM2's name and vocabulary."""

    name: str = "smolvlm"
    title: str = "SmolVLM2"
    # <global-img> is one special token in SmolVLM2's vocabulary (ordinary text in Idefics3-8B-Llama3's)
    vision_tokens: tuple[str, ...] = (FAKE_IMAGE_TOKEN, GLOBAL_IMAGE_TAG, IMAGE_TOKEN)
    exactness: str = (
        "exact for images: proved against transformers' SmolVLMProcessor (SmolVLMImageProcessorPil) on 110+ "
        "images with SmolVLM2-2.2B-Instruct's files (a StarCoder2 BPE stand-in for SmolLM2 holding SmolVLM's "
        "special tokens at their real ids); videos are not counted"
    )


FAMILY = SmolVLMFamily()
