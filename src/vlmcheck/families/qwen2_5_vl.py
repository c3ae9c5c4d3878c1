"""Qwen2.5-VL: counts images and videos exactly as Qwen2-VL (its processor uses
``Qwen2VLImageProcessor`` and, per transformers' ``video_processing_auto.py``, ``Qwen2VLVideoProcessor``;
``second_per_grid_ts`` only feeds M-RoPE, not the count).

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
    exactness: str = (
        "exact: proved against transformers' Qwen2_5_VLProcessor on 200+ images; videos (its processor uses "
        "Qwen2VLVideoProcessor): frame sampling and resize proved against that video processor's own "
        "sample_frames/get_num_of_video_patches and qwen-vl-utils' smart_nframes/smart_resize called for real, "
        "token counts against golden values worked out by hand (the video processor itself needs torchvision, "
        "absent here)"
    )


FAMILY = Qwen25VLFamily()
