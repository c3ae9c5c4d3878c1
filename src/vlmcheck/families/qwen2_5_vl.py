"""Qwen2.5-VL: counts images exactly as Qwen2-VL (its processor uses ``Qwen2VLImageProcessor``).

Sources: ``models/qwen2_5_vl/processing_qwen2_5_vl.py`` (generated from the Qwen2-VL modular file;
same ``<|image_pad|>`` expansion), hub ``Qwen/Qwen2.5-VL-7B-Instruct/preprocessor_config.json``
(patch 14, merge 2, min_pixels 3136, max_pixels 12845056).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmcheck.families.qwen2_vl import Qwen2VLFamily


@dataclass(frozen=True)
class Qwen25VLFamily(Qwen2VLFamily):
    name: str = "qwen2_5_vl"
    title: str = "Qwen2.5-VL"
    exactness: str = "exact: proved against transformers' Qwen2_5_VLProcessor on 200+ images"


FAMILY = Qwen25VLFamily()
