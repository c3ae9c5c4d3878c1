"""Qwen3-VL: the Qwen2-VL image rule with 16-pixel patches (factor 32).

Sources: ``models/qwen3_vl/processing_qwen3_vl.py`` (same ``<|image_pad|>`` expansion; the
checkpoint names ``Qwen2VLImageProcessorFast`` as its image processor), hub
``Qwen/Qwen3-VL-8B-Instruct/preprocessor_config.json``: patch_size 16, merge_size 2,
size {shortest_edge: 65536, longest_edge: 16777216}.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmcheck.families.qwen2_vl import Qwen2VLFamily


@dataclass(frozen=True)
class Qwen3VLFamily(Qwen2VLFamily):
    name: str = "qwen3_vl"
    title: str = "Qwen3-VL"
    exactness: str = "exact: proved against transformers' Qwen3VLProcessor (images) on 200+ images"
    # Class defaults when a checkpoint omits them (Qwen3-VL hub values).
    patch_size: int = 16
    min_pixels: int = 65536
    max_pixels: int = 16777216


FAMILY = Qwen3VLFamily()
