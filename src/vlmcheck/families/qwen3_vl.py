"""Qwen3-VL: the Qwen2-VL image rule with 16-pixel patches (factor 32); videos as timestamped frame
groups.

Sources: ``models/qwen3_vl/processing_qwen3_vl.py`` (same ``<|image_pad|>`` expansion; the
checkpoint names ``Qwen2VLImageProcessorFast`` as its image processor), hub
``Qwen/Qwen3-VL-8B-Instruct/preprocessor_config.json``: patch_size 16, merge_size 2,
size {shortest_edge: 65536, longest_edge: 16777216}.

Videos: ``models/qwen3_vl/video_processing_qwen3_vl.py`` samples ``fps`` (2) frames per second with
``np.linspace`` (``do_sample_frames`` True), resizes with a *3-D* ``smart_resize`` whose pixel budget
counts every frame, and ``Qwen3VLProcessor.replace_video_token`` writes, per temporal group of 2 frames,
``<{t:.1f} seconds><|vision_start|>`` + ``<|video_pad|>`` x (H'/16)(W'/16)/4 + ``<|vision_end|>``, where
``t`` is the mean of the group's first and last frame times (``_calculate_timestamps``). In
transformers 5.23 that replaces only ``<|video_pad|>``: the template's own
``<|vision_start|>``/``<|vision_end|>`` around it stay (4.57 swallowed them), and vlmcheck counts them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from vlmcheck.data.videos import VideoInfo, VideoProblem
from vlmcheck.families.base import Expansion, MediaLayout, Overrides
from vlmcheck.families.qwen2_vl import (
    MAX_ASPECT_RATIO,
    VIDEO_PAD,
    Qwen2VLFamily,
    QwenVideoSettings,
    QwenVLSettings,
    VideoPlan,
    linspace_round,
    read_settings,
    read_video_settings,
    torch_linspace_round,
    utils_frame_range,
    utils_nframes,
    utils_video_size,
)

# processing_qwen3_vl.py: vision_start_token / vision_end_token around each frame group
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
# video_processing_qwen3_vl.py, Qwen3VLVideoProcessor class attributes. Hub checkpoints ship
# video_preprocessor_config.json with size {shortest_edge: 4096, longest_edge: 25165824}.
VIDEO_DEFAULTS: dict[str, Any] = {
    "size": {"shortest_edge": 128 * 32 * 32, "longest_edge": 32 * 32 * 768},
    "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "min_frames": 4, "max_frames": 768,
    "do_sample_frames": True, "fps": 2, "num_frames": None,
    # cap_pixels_per_frame None warns and means False in 5.23; max_video_tokens is per frame here
    "cap_pixels_per_frame": False, "max_video_tokens": 768,
}
# processing_qwen3_vl.py / video_processing_qwen3_vl.py: fps assumed when the metadata has none
FALLBACK_FPS = 24


def smart_resize_3d(num_frames: int, height: int, width: int, temporal_factor: int, factor: int,
                    min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """``video_processing_qwen3_vl.smart_resize``: the budget covers all frames (t x h x w)."""
    if num_frames < temporal_factor:
        raise VideoProblem("VC115", f"{num_frames} sampled frame(s): the processor raises \"t:{num_frames} must be "
                                    f"larger than temporal_factor:{temporal_factor}\"", frames=num_frames)
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise VideoProblem("VC115", f"frames of {width}x{height}: the processor raises \"absolute aspect ratio "
                                    f"must be smaller than {MAX_ASPECT_RATIO}\"", width=width, height=height)
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def sample_indices(total: int, video_fps: float | None, s: QwenVideoSettings) -> list[int]:
    """``Qwen3VLVideoProcessor.sample_frames`` (all frames when ``do_sample_frames`` is off)."""
    if not s.do_sample_frames:
        return list(range(total))
    if s.fps is not None and s.num_frames is not None:
        raise VideoProblem("VC115", "fps and num_frames are both set: the processor raises \"mutually exclusive\"")
    num_frames = s.num_frames
    if num_frames is None and s.fps is not None:
        num_frames = int(total / (video_fps or FALLBACK_FPS) * s.fps)
        num_frames = min(max(num_frames, s.min_frames), s.max_frames, total)
    if num_frames is None:
        num_frames = min(max(total, s.min_frames), s.max_frames)
    return linspace_round(0, total - 1, num_frames)


def timestamps(indices: list[int] | tuple[int, ...], fps: float, temporal_patch_size: int) -> list[float]:
    """``Qwen3VLProcessor._calculate_timestamps``: pad to a whole group with the last index, then the
    mean of each group's first and last frame time."""
    indices = list(indices)
    if len(indices) % temporal_patch_size:
        indices.extend(indices[-1] for _ in range(temporal_patch_size - len(indices) % temporal_patch_size))
    times = [i / fps for i in indices]
    return [(times[i] + times[i + temporal_patch_size - 1]) / 2 for i in range(0, len(times), temporal_patch_size)]


def qwen3_video_plan(info: VideoInfo, s: QwenVideoSettings, options: dict[str, Any]) -> VideoPlan:
    width, height = info.size(apply_rotation=s.apply_rotation)
    fps = info.fps or FALLBACK_FPS
    if s.resize == "qwen-vl-utils":
        if info.fps is None:
            raise VideoProblem("VC115", "qwen-vl-utils needs the video's frame rate, which its header lacks")
        start, end, total = utils_frame_range(options, info.frames, info.fps)
        frames = utils_nframes(options, total, info.fps)
        height, width = utils_video_size(height, width, frames, options, s.factor, s.model_seq_len)
        indices = torch_linspace_round(start, end, frames)
    elif s.resize == "processor":
        indices = sample_indices(info.frames, info.fps, s)
    else:
        raise VideoProblem("VC114", f"videos are not counted for resize={s.resize!r} (LLaMA-Factory samples and "
                                    "scales frames its own way)")
    frames = len(indices)
    max_pixels = s.max_pixels
    if s.cap_pixels_per_frame and frames:  # resize(): max_video_tokens per frame, or an even share of the budget
        per_frame = max(min(s.max_video_tokens * s.factor * s.factor, s.max_pixels // frames), int(s.min_pixels * 1.05))
        max_pixels = per_frame * frames
    h, w = smart_resize_3d(frames, height, width, s.temporal_patch_size, s.factor, s.min_pixels, max_pixels)
    grid_t = -(-frames // s.temporal_patch_size)
    return VideoPlan(indices=tuple(indices), height=h, width=w, grid_t=grid_t, grid_h=h // s.patch_size,
                     grid_w=w // s.patch_size, fps=fps)


@dataclass(frozen=True)
class Qwen3VLFamily(Qwen2VLFamily):
    name: str = "qwen3_vl"
    title: str = "Qwen3-VL"
    exactness: str = (
        "exact: proved against transformers' Qwen3VLProcessor (images) on 200+ images; videos: frame "
        "sampling and 3-D resize proved against the video processor's own sample_frames/"
        "get_num_of_video_patches and qwen-vl-utils' smart_nframes/smart_resize called for real, the "
        "timestamped text against Qwen3VLProcessor.replace_video_token and the real tokenizer, token counts "
        "against golden values worked out by hand (the video processor itself needs torchvision, absent here)"
    )
    # Class defaults when a checkpoint omits them (Qwen3-VL hub values).
    patch_size: int = 16
    min_pixels: int = 65536
    max_pixels: int = 16777216

    def settings(self, *, preprocessor: dict[str, Any], config: dict[str, Any], overrides: Overrides) -> QwenVLSettings:
        settings = read_settings(preprocessor, overrides, patch_size=self.patch_size, merge_size=self.merge_size,
                                 min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        return replace(settings, video=read_video_settings(preprocessor, overrides, VIDEO_DEFAULTS, pixel_keys=False))

    def video_plan(self, info: VideoInfo, settings: QwenVLSettings, options: dict[str, Any]) -> VideoPlan:
        assert settings.video is not None
        return qwen3_video_plan(info, settings.video, options)

    def expand_video(self, info: VideoInfo, settings: QwenVLSettings, options: dict[str, Any]) -> Expansion:
        """One ``<t seconds><|vision_start|><|video_pad|>..<|vision_end|>`` group per 2 frames."""
        s = settings.video
        assert s is not None
        plan = self.video_plan(info, settings, options)
        per_group = plan.grid_h * plan.grid_w // s.merge_size**2
        stamps = timestamps(plan.indices, plan.fps, s.temporal_patch_size)
        text = "".join(f"<{stamps[k]:.1f} seconds>{VISION_START}{VIDEO_PAD}{VISION_END}" for k in range(plan.grid_t))
        return Expansion(text, (per_group,) * plan.grid_t)

    def video_layout(self, batch: Mapping[str, Any], settings: Mapping[str, Any]) -> MediaLayout:
        """Every temporal patch of a video is its own run, "<t seconds><|vision_start|><|video_pad|> x
        (h*w // merge_size**2)<|vision_end|>" (replace_video_token, processing_qwen3_vl.py)."""
        grid = batch.get("video_grid_thw")
        merge = int(settings.get("merge_size") or self.merge_size) ** 2
        thw = [] if grid is None else [tuple(int(v) for v in row) for row in grid.tolist()]
        return MediaLayout([(h * w // merge,) * t for t, h, w in thw], [t * h * w for t, h, w in thw],
                           ("pixel_values_videos",), ("video_grid_thw",))


# transformers' models/auto/processing_auto.py gives these model types the same Qwen3VLProcessor (and
# image_processing_auto.py the same Qwen2VLImageProcessor): Qwen3-VL MoE (Qwen3-VL-30B-A3B, 235B-A22B) and Qwen3.5
# (dense and MoE), whose vision tower is Qwen3-VL's
def _sharing(name: str, title: str) -> Qwen3VLFamily:
    return Qwen3VLFamily(
        name=name, title=title,
        exactness=(f"exact: Qwen3-VL's processor (Qwen3VLProcessor, the class transformers builds for {name}), "
                   f"proved on 200+ images with a {name} checkpoint folder"))


FAMILIES = (
    Qwen3VLFamily(),
    _sharing("qwen3_vl_moe", "Qwen3-VL MoE"),
    _sharing("qwen3_5", "Qwen3.5"),
    _sharing("qwen3_5_moe", "Qwen3.5 MoE"),
)
