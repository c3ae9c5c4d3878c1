"""Qwen2-VL: images become ``<|image_pad|>`` tokens, one per 28 x 28 pixels after smart resize;
videos ``<|video_pad|>`` tokens, one per 2 frames x 28 x 28 pixels.

Sources (transformers 5.x): ``models/qwen2_vl/processing_qwen2_vl.py`` (placeholder expansion),
``models/qwen2_vl/image_processing_pil_qwen2_vl.py`` (``smart_resize`` and the grid),
``models/qwen2_vl/video_processing_qwen2_vl.py`` (``sample_frames``, ``resize``, ``patchify``),
qwen-vl-utils 0.0.14 ``vision_process.py`` (its own resize and frame sampling before the processor).

Videos, processor route (``processor(videos=path, **kwargs)``): the checkpoint's video processor
config sets ``do_sample_frames`` (class default False: every frame of the file is used), ``fps`` /
``num_frames``, ``min_frames``/``max_frames`` and ``size`` (min/max pixels per frame); the frames are
padded to a multiple of ``temporal_patch_size`` and each pair becomes one temporal slice of
``(H'/14) x (W'/14) / 4`` tokens. qwen-vl-utils route: ``smart_nframes`` picks the frames (fps 2,
4..768, even), its ``smart_resize`` the size under a per-frame budget shared out of
``MODEL_SEQ_LEN``, then the processor runs on those frames with ``do_sample_frames=False``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from vlmcheck.data.videos import VideoInfo, VideoProblem
from vlmcheck.families.base import (
    Expansion,
    ImageIssue,
    LayoutTokens,
    MediaLayout,
    Overrides,
    grid_rows,
    option_flag,
    option_float,
    option_int,
    single_run,
)

# processing_qwen2_vl.py: the chat template writes <|vision_start|><|image_pad|><|vision_end|>
# and the processor multiplies only <|image_pad|>.
IMAGE_PAD = "<|image_pad|>"
# Added tokens 151652-151654 of the Qwen2-VL tokenizer (tokenizer_config.json of Qwen/Qwen2-VL-7B-Instruct).
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VISION_PAD = "<|vision_pad|>"
# image_processing_qwen2_vl.py smart_resize: "absolute aspect ratio must be smaller than 200".
MAX_ASPECT_RATIO = 200
# Class defaults of Qwen2VLImageProcessor (checkpoints override them in preprocessor_config.json).
DEFAULT_PATCH_SIZE = 14
DEFAULT_MERGE_SIZE = 2
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280
# qwen-vl-utils vision_process.py: IMAGE_MIN_TOKEN_NUM / IMAGE_MAX_TOKEN_NUM (in merged tokens).
UTILS_MIN_TOKENS = 4
UTILS_MAX_TOKENS = 16384

# processing_qwen2_vl.py: video_token "<|video_pad|>"; the chat template writes
# <|vision_start|><|video_pad|><|vision_end|> and the processor multiplies only <|video_pad|>.
VIDEO_PAD = "<|video_pad|>"
# video_processing_qwen2_vl.py, Qwen2VLVideoProcessor class attributes (the checkpoint's video config,
# or its preprocessor_config.json when it has none, overrides them).
VIDEO_DEFAULTS: dict[str, Any] = {
    "size": {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768},
    "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, "min_frames": 4, "max_frames": 768,
    "do_sample_frames": False, "fps": None, "num_frames": None,
    # cap_pixels_per_frame None warns and means False in 5.23; max_video_tokens is a whole-video budget
    "cap_pixels_per_frame": False, "max_video_tokens": 128000,
}
# qwen-vl-utils vision_process.py video constants
UTILS_FPS = 2.0  # FPS
UTILS_FRAME_FACTOR = 2  # FRAME_FACTOR
UTILS_MIN_FRAMES = 4  # FPS_MIN_FRAMES
UTILS_MAX_FRAMES = 768  # FPS_MAX_FRAMES
UTILS_VIDEO_MIN_TOKENS = 128  # VIDEO_MIN_TOKEN_NUM (per frame, in factor**2 units)
UTILS_VIDEO_MAX_TOKENS = 768  # VIDEO_MAX_TOKEN_NUM
UTILS_MODEL_SEQ_LEN = 128000  # MODEL_SEQ_LEN (environment variable of the same name)
# Overrides.extra keys read for videos: the video processor's call-time kwargs, plus the
# environment qwen-vl-utils reads and whether the decoder applies the display rotation.
VIDEO_EXTRA_KEYS = ("fps", "num_frames", "do_sample_frames", "min_frames", "max_frames", "video_min_pixels",
                    "video_max_pixels", "cap_pixels_per_frame", "max_video_tokens", "model_seq_len",
                    "video_rotation")


@dataclass(frozen=True)
class QwenVLSettings:
    patch_size: int
    merge_size: int
    min_pixels: int
    max_pixels: int
    resize: str = "processor"
    # pixel budget applied before the processor ("prescale" / "qwen-vl-utils"); None: not applied
    pre_min_pixels: int | None = None
    pre_max_pixels: int | None = None
    video: QwenVideoSettings | None = None

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size


@dataclass(frozen=True)
class QwenVideoSettings:
    """The video processor's settings (checkpoint values over class defaults, call-time overrides)."""

    patch_size: int
    merge_size: int
    temporal_patch_size: int
    min_pixels: int  # size["shortest_edge"]
    max_pixels: int  # size["longest_edge"]
    do_sample_frames: bool
    fps: float | None
    num_frames: int | None
    min_frames: int
    max_frames: int
    cap_pixels_per_frame: bool
    max_video_tokens: int
    resize: str = "processor"  # or "qwen-vl-utils" (frames sampled and resized by fetch_video first)
    model_seq_len: int = UTILS_MODEL_SEQ_LEN
    apply_rotation: bool = True  # torchcodec rotates frames by the display matrix; decord does not

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size


@dataclass(frozen=True)
class VideoPlan:
    """What the processor makes of one video: the frame indices it keeps, the resized frame size, the
    grid, and the fps it stamps timestamps with."""

    indices: tuple[int, ...]
    height: int
    width: int
    grid_t: int
    grid_h: int
    grid_w: int
    fps: float

    def tokens(self, merge_size: int) -> int:
        return self.grid_t * self.grid_h * self.grid_w // merge_size**2


def video_config(preprocessor: dict[str, Any]) -> dict[str, Any]:
    """The dict transformers builds the video processor from (``video_processing_utils.get_video_processor_dict``):
    processor_config.json's nested ``video_processor``, else video_preprocessor_config.json, else
    preprocessor_config.json itself."""
    nested = (preprocessor.get("processor_config") or {}).get("video_processor")
    if isinstance(nested, dict):
        return nested
    own = preprocessor.get("video_preprocessor_config")
    if isinstance(own, dict) and own:
        return own
    return {k: v for k, v in preprocessor.items() if k not in ("processor_config", "video_preprocessor_config")}


def read_video_settings(preprocessor: dict[str, Any], overrides: Overrides, defaults: dict[str, Any], *,
                        pixel_keys: bool) -> QwenVideoSettings:
    """``defaults`` are the video processor class attributes; ``pixel_keys``: whether ``__init__`` maps
    ``min_pixels``/``max_pixels`` onto ``size`` (Qwen2VLVideoProcessor does, Qwen3VLVideoProcessor not)."""
    config = video_config(preprocessor)
    size = dict(config.get("size") or defaults["size"])
    if pixel_keys:
        if config.get("min_pixels") is not None:
            size["shortest_edge"] = config["min_pixels"]
        if config.get("max_pixels") is not None:
            size["longest_edge"] = config["max_pixels"]
    values = {k: config.get(k, defaults[k]) for k in defaults if k != "size"}
    for k in ("patch_size", "merge_size", "temporal_patch_size", "min_frames", "max_frames", "max_video_tokens"):
        if values[k] is None:
            values[k] = defaults[k]
    extra = overrides.extra or {}
    for k in ("fps", "num_frames", "do_sample_frames", "min_frames", "max_frames", "cap_pixels_per_frame",
              "max_video_tokens"):
        if k in extra:
            values[k] = extra[k]
    lo = option_int("video_min_pixels",
                    extra.get("video_min_pixels") or size.get("shortest_edge") or defaults["size"]["shortest_edge"])
    hi = option_int("video_max_pixels",
                    extra.get("video_max_pixels") or size.get("longest_edge") or defaults["size"]["longest_edge"])
    return QwenVideoSettings(
        patch_size=int(values["patch_size"]), merge_size=int(values["merge_size"]),
        temporal_patch_size=int(values["temporal_patch_size"]), min_pixels=lo, max_pixels=hi,
        do_sample_frames=option_flag("do_sample_frames", values["do_sample_frames"]),
        fps=None if values["fps"] is None else option_float("fps", values["fps"]),
        num_frames=None if values["num_frames"] is None else option_int("num_frames", values["num_frames"]),
        min_frames=option_int("min_frames", values["min_frames"]),
        max_frames=option_int("max_frames", values["max_frames"]),
        cap_pixels_per_frame=option_flag("cap_pixels_per_frame", values["cap_pixels_per_frame"]),
        max_video_tokens=option_int("max_video_tokens", values["max_video_tokens"]),
        resize=overrides.resize, model_seq_len=option_int("model_seq_len", extra.get("model_seq_len", UTILS_MODEL_SEQ_LEN)),
        apply_rotation=option_flag("video_rotation", extra.get("video_rotation", True)),
    )


def _rejected(message: str, **data: Any) -> VideoProblem:
    return VideoProblem("VC115", message, **data)


def _aspect_check(height: int, width: int) -> None:
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise _rejected(f"frames of {width}x{height}: the processor raises \"absolute aspect ratio must be smaller "
                        f"than {MAX_ASPECT_RATIO}\"", width=width, height=height)


def linspace_round(start: float, stop: float, num: int) -> list[int]:
    """``np.linspace(start, stop, num).round().astype(int)`` (float64: ``i * step + start``, the last
    value ``stop`` exactly; rounding half to even)."""
    if num <= 0:
        return []
    if num == 1:
        return [round(start)]
    step = (stop - start) / (num - 1)
    values = [i * step + start for i in range(num)]
    values[-1] = stop
    return [round(v) for v in values]


def _f32(x: float) -> float:
    return float(struct.unpack("f", struct.pack("f", x))[0])


def torch_linspace_round(start: int, end: int, steps: int) -> list[int]:
    """``torch.linspace(start, end, steps).round().long()`` in float32, as qwen-vl-utils samples frame
    indices: the first half counts up from ``start``, the second half down from ``end``."""
    if steps <= 0:
        return []
    if steps == 1:
        return [round(_f32(start))]
    step = _f32(_f32(end - start) / _f32(steps - 1))
    half = steps // 2
    out = []
    for i in range(steps):
        value = _f32(start + _f32(step * i)) if i < half else _f32(end - _f32(step * (steps - i - 1)))
        out.append(round(value))
    return out


def utils_frame_range(options: dict[str, Any], total: int, fps: float) -> tuple[int, int, int]:
    """qwen-vl-utils ``calculate_video_frame_range`` (torchcodec and decord readers): first frame, last
    frame and count for ``video_start`` / ``video_end`` seconds."""
    start_s, end_s = options.get("video_start"), options.get("video_end")
    if start_s is None and end_s is None:
        return 0, total - 1, total
    duration = total / fps
    start = math.ceil(max(0.0, min(start_s, duration)) * fps) if start_s is not None else 0
    end = min(math.floor(max(0.0, min(end_s, duration)) * fps), total - 1) if end_s is not None else total - 1
    if start >= end:
        raise _rejected(f"video_start/video_end select no frames (frames {start}..{end} of {total}); "
                        "qwen-vl-utils raises \"Invalid time range\"")
    return start, end, end - start + 1


def utils_nframes(options: dict[str, Any], total: int, video_fps: float) -> int:
    """qwen-vl-utils ``smart_nframes``."""
    if "fps" in options and "nframes" in options:
        raise _rejected("a video part sets both fps and nframes; qwen-vl-utils asserts only one")
    factor = UTILS_FRAME_FACTOR
    if "nframes" in options:
        n = round(options["nframes"] / factor) * factor
    else:
        fps = options.get("fps", UTILS_FPS)
        min_frames = math.ceil(options.get("min_frames", UTILS_MIN_FRAMES) / factor) * factor
        max_frames = math.floor(options.get("max_frames", min(UTILS_MAX_FRAMES, total)) / factor) * factor
        frames = total / video_fps * fps
        frames = min(min(max(frames, min_frames), max_frames), total)
        n = math.floor(frames / factor) * factor
    if not (factor <= n <= total):
        raise _rejected(f"qwen-vl-utils samples {n} frames of {total}: it raises \"nframes should in interval "
                        f"[{factor}, {total}]\"", frames=total)
    return int(n)


def utils_video_size(height: int, width: int, frames: int, options: dict[str, Any], factor: int,
                     model_seq_len: int) -> tuple[int, int]:
    """qwen-vl-utils ``fetch_video``'s resize: a per-frame budget shared out of ``total_pixels``."""
    if "resized_height" in options and "resized_width" in options:
        h, w = int(options["resized_height"]), int(options["resized_width"])
        lo, hi = UTILS_MIN_TOKENS * factor**2, UTILS_MAX_TOKENS * factor**2
    else:
        h, w = height, width
        lo = options.get("min_pixels", UTILS_VIDEO_MIN_TOKENS * factor * factor)
        total_pixels = options.get("total_pixels", model_seq_len * factor * factor * 0.9)
        hi = max(min(UTILS_VIDEO_MAX_TOKENS * factor * factor, total_pixels / frames * UTILS_FRAME_FACTOR),
                 int(lo * 1.05))
        hi = min(options.get("max_pixels", hi), hi)
    if hi < lo:
        raise _rejected(f"max_pixels {hi} < min_pixels {lo}: qwen-vl-utils asserts max_pixels >= min_pixels")
    _aspect_check(h, w)
    return utils_smart_resize(h, w, factor, lo, hi)


def qwen2_sampled_frames(total: int, video_fps: float | None, s: QwenVideoSettings) -> int:
    """How many frames ``Qwen2VLVideoProcessor`` keeps: all of them unless ``do_sample_frames``; else
    its ``sample_frames`` (fps or num_frames, rounded to ``temporal_patch_size``), whose
    ``torch.arange(0, total, total / n)`` can keep one frame more than ``n``."""
    if not s.do_sample_frames:
        return total
    if s.fps is not None and s.num_frames is not None:
        raise _rejected("fps and num_frames are both set: the processor raises \"mutually exclusive\"")
    tps = s.temporal_patch_size
    n: float | None = None
    if s.num_frames is not None:
        n = round(s.num_frames / tps) * tps
    elif s.fps is not None:
        if video_fps is None:
            raise _rejected("fps sampling needs the video's frame rate, which its header lacks")
        max_frames = math.floor(min(s.max_frames, total) / tps) * tps
        n = total / video_fps * s.fps
        n = min(max(n, s.min_frames), max_frames, total)
        n = math.floor(n / tps) * tps
    if n is None:
        return total
    if n > total:
        raise _rejected(f"the processor samples {n} frames of {total}: it raises \"Video can't be sampled\"",
                        frames=total)
    if n == 0:
        raise _rejected(f"{total} frame(s) leave 0 to sample: the processor divides by zero", frames=total)
    return math.ceil(total / (total / n))  # len(torch.arange(0, total, total / n))


def qwen2_video_plan(info: VideoInfo, s: QwenVideoSettings, options: dict[str, Any]) -> VideoPlan:
    """Qwen2-VL / Qwen2.5-VL: the grid of one video (``video_processing_qwen2_vl.py``)."""
    width, height = info.size(apply_rotation=s.apply_rotation)
    # transformers video_utils.py VideoMetadata.sampled_fps: `self.fps or 24` when the header has no rate
    fps = info.fps or 24.0
    if s.resize == "qwen-vl-utils":
        if info.fps is None:
            raise _rejected("qwen-vl-utils needs the video's frame rate, which its header lacks")
        start, end, total = utils_frame_range(options, info.frames, info.fps)
        frames = utils_nframes(options, total, info.fps)
        height, width = utils_video_size(height, width, frames, options, s.factor, s.model_seq_len)
        indices = tuple(torch_linspace_round(start, end, frames))
    elif s.resize == "processor":
        frames = qwen2_sampled_frames(info.frames, info.fps, s)
        indices = ()
    else:
        raise VideoProblem("VC114", f"videos are not counted for resize={s.resize!r} (LLaMA-Factory samples and "
                                    "scales frames its own way)")
    max_pixels = s.max_pixels
    if s.cap_pixels_per_frame:  # resize(): a share of max_video_tokens per frame, floored at 1.05 x min
        total_pixels = int(s.max_video_tokens * s.factor * s.factor * 0.9)
        max_pixels = max(min(max_pixels, total_pixels * s.temporal_patch_size // frames), int(s.min_pixels * 1.05))
    _aspect_check(height, width)
    h, w = smart_resize(height, width, s.factor, s.min_pixels, max_pixels)
    grid_t = -(-frames // s.temporal_patch_size)  # patchify pads with copies of the last frame
    return VideoPlan(indices=indices, height=h, width=w, grid_t=grid_t, grid_h=h // s.patch_size,
                     grid_w=w // s.patch_size, fps=fps)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The processor's resize target (transformers 5.x ``image_processing_qwen2_vl.smart_resize``).

    Python's ``round`` (half to even) on purpose: the processor uses it. No minimum-side check:
    transformers >= 4.50 upsamples small images instead of raising.
    """
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def utils_smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """qwen-vl-utils' own ``smart_resize`` (``vision_process.py``): rounds up to at least one factor
    first, and has no lower guard in the shrinking branch."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def prescale(width: int, height: int, min_pixels: int | None, max_pixels: int | None) -> tuple[int, int]:
    """LLaMA-Factory ``mm_plugin._preprocess_image`` / EasyR1 ``process_image``: scale the image by
    sqrt(budget / pixels) and truncate to int, before the processor sees it."""
    if max_pixels is not None and width * height > max_pixels:
        f = math.sqrt(max_pixels / (width * height))
        width, height = int(width * f), int(height * f)
    if min_pixels is not None and width * height < min_pixels:
        f = math.sqrt(min_pixels / (width * height))
        width, height = int(width * f), int(height * f)
    return width, height


def read_settings(
    preprocessor: dict[str, Any], overrides: Overrides, *, patch_size: int, merge_size: int,
    min_pixels: int, max_pixels: int,
) -> QwenVLSettings:
    """Checkpoint values over class defaults; ``size`` (5.x) or ``min_pixels``/``max_pixels`` (4.x
    configs, still read by 5.x)."""
    patch = int(preprocessor.get("patch_size", patch_size))
    merge = int(preprocessor.get("merge_size", merge_size))
    size = preprocessor.get("size") or {}
    lo = int(preprocessor.get("min_pixels") or size.get("shortest_edge") or min_pixels)
    hi = int(preprocessor.get("max_pixels") or size.get("longest_edge") or max_pixels)
    settings = QwenVLSettings(patch_size=patch, merge_size=merge, min_pixels=lo, max_pixels=hi,
                              resize=overrides.resize)
    settings = replace(settings, video=read_video_settings(preprocessor, overrides, VIDEO_DEFAULTS, pixel_keys=True))
    return apply_budget(settings, overrides.min_pixels, overrides.max_pixels)


def apply_budget(settings: QwenVLSettings, min_pixels: int | None, max_pixels: int | None) -> QwenVLSettings:
    if settings.resize == "processor":
        return replace(
            settings,
            min_pixels=min_pixels if min_pixels is not None else settings.min_pixels,
            max_pixels=max_pixels if max_pixels is not None else settings.max_pixels,
        )
    if settings.resize == "qwen-vl-utils":
        f2 = settings.factor**2
        return replace(
            settings,
            pre_min_pixels=min_pixels if min_pixels is not None else UTILS_MIN_TOKENS * f2,
            pre_max_pixels=max_pixels if max_pixels is not None else UTILS_MAX_TOKENS * f2,
        )
    return replace(settings, pre_min_pixels=min_pixels, pre_max_pixels=max_pixels)


def resized(width: int, height: int, s: QwenVLSettings) -> tuple[int, int]:
    """(height, width) the vision encoder sees."""
    if s.resize == "qwen-vl-utils":
        assert s.pre_min_pixels is not None and s.pre_max_pixels is not None
        height, width = utils_smart_resize(height, width, s.factor, s.pre_min_pixels, s.pre_max_pixels)
    elif s.resize == "prescale":
        width, height = prescale(width, height, s.pre_min_pixels, s.pre_max_pixels)
    return smart_resize(height, width, s.factor, s.min_pixels, s.max_pixels)


def count_image_tokens(width: int, height: int, s: QwenVLSettings) -> int:
    h, w = resized(width, height, s)
    # grid_t = 1 for an image; the merger folds merge_size**2 patches into one token.
    return (h // s.patch_size) * (w // s.patch_size) // (s.merge_size**2)


def image_issues(width: int, height: int, s: QwenVLSettings) -> list[ImageIssue]:
    issues = []
    if s.resize == "prescale":
        width, height = prescale(width, height, s.pre_min_pixels, s.pre_max_pixels)
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > MAX_ASPECT_RATIO:
        issues.append(ImageIssue(
            "VC107",
            f"aspect ratio {ratio:.1f} is over the processor's limit of {MAX_ASPECT_RATIO} ({width}x{height})",
            {"width": width, "height": height, "aspect_ratio": round(ratio, 2), "limit": MAX_ASPECT_RATIO},
        ))
    if min(width, height) < s.factor:
        issues.append(ImageIssue(
            "VC106",
            f"{width}x{height} is below {s.factor} px on a side; the processor upsamples it",
            {"width": width, "height": height, "min_side": s.factor},
        ))
    if s.resize == "qwen-vl-utils" and ratio <= MAX_ASPECT_RATIO:
        assert s.pre_min_pixels is not None and s.pre_max_pixels is not None
        if s.pre_max_pixels < s.pre_min_pixels:  # vision_process.smart_resize asserts max_pixels >= min_pixels
            issues.append(ImageIssue(
                "VC107", f"qwen-vl-utils' pixel budget is {s.pre_min_pixels:,} to {s.pre_max_pixels:,}: its "
                         "smart_resize raises on every image ('The max_pixels of image must be greater than or equal "
                         "to min_pixels')",
                {"min_pixels": s.pre_min_pixels, "max_pixels": s.pre_max_pixels}))
        elif 0 in utils_smart_resize(height, width, s.factor, s.pre_min_pixels, s.pre_max_pixels):
            # the shrinking branch floors a thin side to 0: fetch_image's resize raises
            issues.append(ImageIssue(
                "VC107", f"qwen-vl-utils scales {width}x{height} into {s.pre_max_pixels:,} pixels and floors a side "
                         "to 0 px: its resize raises ('height and width must be > 0')",
                {"width": width, "height": height, "max_pixels": s.pre_max_pixels}))
    return issues


@dataclass(frozen=True)
class Qwen2VLFamily:
    name: str = "qwen2_vl"
    title: str = "Qwen2-VL"
    # Overrides.extra keys (scan --processor-option KEY=VALUE): call-time video processor / qwen-vl-utils options
    options: tuple[str, ...] = ("fps", "num_frames", "do_sample_frames", "min_frames", "max_frames",
                                "cap_pixels_per_frame", "max_video_tokens", "video_min_pixels", "video_max_pixels",
                                "model_seq_len", "video_rotation")
    placeholder: str = IMAGE_PAD
    image_token: str = IMAGE_PAD
    # Every special token the processor writes for media: none may appear in generated text.
    vision_tokens: tuple[str, ...] = (VISION_START, VISION_END, VISION_PAD, IMAGE_PAD, VIDEO_PAD)
    # The ones the model counts against image/video features: one generated breaks the forward.
    feature_tokens: tuple[str, ...] = (IMAGE_PAD, VIDEO_PAD)
    video_placeholder: str = VIDEO_PAD
    video_token: str = VIDEO_PAD
    exactness: str = (
        "exact: proved against transformers' Qwen2VLProcessor on 200+ images; videos: frame sampling and "
        "resize proved against the video processor's own sample_frames/get_num_of_video_patches and "
        "qwen-vl-utils' smart_nframes/smart_resize called for real, token counts against golden values "
        "worked out by hand (the video processor itself needs torchvision, absent here)"
    )
    settings_read: tuple[str, ...] = ("patch_size", "merge_size", "min_pixels", "max_pixels", "size")
    patch_size: int = DEFAULT_PATCH_SIZE
    merge_size: int = DEFAULT_MERGE_SIZE
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS

    def settings(self, *, preprocessor: dict[str, Any], config: dict[str, Any], overrides: Overrides) -> QwenVLSettings:
        return read_settings(preprocessor, overrides, patch_size=self.patch_size, merge_size=self.merge_size,
                             min_pixels=self.min_pixels, max_pixels=self.max_pixels)

    def image_tokens(self, width: int, height: int, settings: QwenVLSettings) -> int:
        return count_image_tokens(width, height, settings)

    def expansion(self, settings: QwenVLSettings) -> str:
        return IMAGE_PAD

    def expand(self, width: int, height: int, settings: QwenVLSettings) -> Expansion:
        return single_run(IMAGE_PAD, count_image_tokens(width, height, settings))

    def check_image(self, width: int, height: int, settings: QwenVLSettings) -> list[ImageIssue]:
        return image_issues(width, height, settings)

    def video_plan(self, info: VideoInfo, settings: QwenVLSettings, options: dict[str, Any]) -> VideoPlan:
        """Frames, size and grid of one video; raises :class:`VideoProblem` where the processor raises."""
        assert settings.video is not None
        return qwen2_video_plan(info, settings.video, options)

    def expand_video(self, info: VideoInfo, settings: QwenVLSettings, options: dict[str, Any]) -> Expansion:
        """``<|video_pad|>`` x grid_t * grid_h * grid_w / merge**2 (``Qwen2VLProcessor.replace_video_token``)."""
        assert settings.video is not None
        plan = self.video_plan(info, settings, options)
        return single_run(VIDEO_PAD, plan.tokens(settings.video.merge_size))

    def video_expansion(self, settings: QwenVLSettings) -> str:
        return VIDEO_PAD

    def with_max_pixels(self, settings: QwenVLSettings, max_pixels: int) -> QwenVLSettings:
        return apply_budget(settings, None, max_pixels)

    # -- the pixel budget (config lint) ----------------------------------------------------------
    @property
    def token_side(self) -> int:
        return self.patch_size * self.merge_size

    # <|vision_start|> and <|vision_end|> around each image's pads (the chat template)
    image_wrap_tokens: int = 2

    # -- the batch layout (the collator guards) --------------------------------------------------
    # pixel_values is 2-D (patches, C*T*P*P) with every image of the batch concatenated; image_grid_thw has
    # one (t, h, w) row per image, which owns t*h*w rows and needs t*h*w // merge_size**2 placeholders
    # (Qwen2VLProcessor.__call__). Videos: video_grid_thw / pixel_values_videos by the same rule, plus
    # Qwen2.5-VL's second_per_grid_ts, one value per video.
    layout_tokens: LayoutTokens = LayoutTokens(IMAGE_PAD, VISION_START, VISION_END, VIDEO_PAD)

    def layout_settings(self, processor: Any) -> dict[str, Any]:
        merge = getattr(getattr(processor, "image_processor", None), "merge_size", None)
        return {"merge_size": int(merge or self.merge_size)}

    def image_layout(
        self, batch: Mapping[str, Any], settings: Mapping[str, Any], *, crops: Sequence[int] | None = None
    ) -> MediaLayout:
        rows = grid_rows(batch, "image_grid_thw")
        merge = int(settings.get("merge_size") or self.merge_size) ** 2
        return MediaLayout([(n // merge,) for n in rows], rows, ("pixel_values",), ("image_grid_thw",))

    def video_layout(self, batch: Mapping[str, Any], settings: Mapping[str, Any]) -> MediaLayout:
        rows = grid_rows(batch, "video_grid_thw")
        merge = int(settings.get("merge_size") or self.merge_size) ** 2
        return MediaLayout([(n // merge,) for n in rows], rows, ("pixel_values_videos",),
                           ("video_grid_thw", "second_per_grid_ts"))


FAMILY = Qwen2VLFamily()
