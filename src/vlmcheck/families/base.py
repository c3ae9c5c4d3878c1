"""The family contract: what the scan engine needs from a model family.

A family answers three questions for its processor: which string the chat template writes for an
image, how many placeholder tokens an image of W x H becomes under the checkpoint's processor
settings, and what text that placeholder expands to. Everything else (rendering, tokenizing,
truncation, findings) is shared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from vlmcheck.errors import UsageError


@dataclass(frozen=True)
class Overrides:
    """Processor settings the user changes the way their framework does.

    ``resize`` says how ``max_pixels``/``min_pixels`` are applied:

    - ``"processor"``: passed to the image processor (TRL, transformers, ``processor(min_pixels=...)``).
    - ``"prescale"``: the image is first scaled to fit the pixel budget, as LLaMA-Factory's
      ``image_max_pixels``/``image_min_pixels`` and EasyR1/verl's ``max_pixels`` do, then the processor
      runs with the checkpoint's own settings.
    - ``"qwen-vl-utils"``: qwen-vl-utils' ``fetch_image`` resizes first (ms-swift's ``MAX_PIXELS``,
      scripts built on ``process_vision_info``), then the processor.
    """

    max_pixels: int | None = None
    min_pixels: int | None = None
    resize: str = "processor"
    extra: dict[str, Any] = field(default_factory=dict)


RESIZE_MODES = ("processor", "prescale", "qwen-vl-utils")

_TRUE = ("true", "1")
_FALSE = ("false", "0")


def option_flag(key: str, value: Any) -> bool:
    """A yes/no processor option: a bool, 0/1, or "true"/"false" in any case. ``bool("False")`` is True,
    so a string the CLI could not read as JSON must not go through ``bool``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise UsageError(f"processor option {key} must be true or false, got {value!r}")


def option_int(key: str, value: Any) -> int:
    """A whole-number processor option (a float with no fraction, or its text, is accepted)."""
    try:
        number = float(value) if isinstance(value, str) else value
        if isinstance(number, bool) or not isinstance(number, (int, float)) or number != int(number):
            raise ValueError
        return int(number)
    except (ValueError, OverflowError):
        raise UsageError(f"processor option {key} must be a whole number, got {value!r}") from None


def option_float(key: str, value: Any) -> float:
    """A numeric processor option."""
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        return float(value)
    except ValueError:
        raise UsageError(f"processor option {key} must be a number, got {value!r}") from None


@dataclass(frozen=True)
class Expansion:
    """What one image's placeholder becomes in the processor's text, *collapsed*: ``text`` holds
    ``image_token`` once per run of features, and ``runs`` the length of each run.

    Most families have one run (``<|image_pad|>`` x N). Families whose processor interleaves
    marker tokens (Idefics3 tiles, Pixtral row breaks, Gemma-3 pan-and-scan crops) have several;
    the text between runs is tokenized for real, so merges with neighbouring text stay exact.
    """

    text: str
    runs: tuple[int, ...]

    @property
    def features(self) -> int:
        """Image features the model produces for this image (placeholders it must find)."""
        return sum(self.runs)


def single_run(text: str, tokens: int) -> Expansion:
    """The common case: ``text`` with ``image_token`` once, repeated ``tokens`` times."""
    return Expansion(text, (tokens,))


@dataclass(frozen=True)
class ImageIssue:
    """A property of one image the processor rejects or degrades on: (finding code, message, numbers)."""

    code: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Family(Protocol):
    """One model family (a ``config.model_type``). Implementations live one per file."""

    @property
    def name(self) -> str:
        """The ``model_type`` this family handles."""

    @property
    def title(self) -> str: ...

    @property
    def placeholder(self) -> str:
        """What the chat template writes for one image."""

    @property
    def image_token(self) -> str:
        """The token repeated once per image feature."""

    @property
    def vision_tokens(self) -> tuple[str, ...]:
        """Every special token the processor or chat template writes for media (markers included);
        the rollout sanitizer keeps all of them out of generated text."""

    @property
    def feature_tokens(self) -> tuple[str, ...]:
        """The subset the model counts against image/video features (``image_token`` first)."""

    @property
    def exactness(self) -> str:
        """How the count is known to be right (shown by `vlmcheck families`)."""

    @property
    def settings_read(self) -> tuple[str, ...]:
        """Checkpoint keys this family reads."""

    def settings(self, *, preprocessor: dict[str, Any], config: dict[str, Any], overrides: Overrides) -> Any:
        """Processor settings from the checkpoint's files, with the user's overrides applied."""
        ...

    def image_tokens(self, width: int, height: int, settings: Any) -> int:
        """Number of ``image_token`` placeholders (image features) for a W x H image."""
        ...

    def expansion(self, settings: Any) -> str:
        """What one ``placeholder`` becomes when the image is unknown, with ``image_token`` once."""
        ...

    def expand(self, width: int, height: int, settings: Any) -> Expansion:
        """What the placeholder of a W x H image becomes (``image_tokens`` is its ``features``)."""
        ...

    def check_image(self, width: int, height: int, settings: Any) -> list[ImageIssue]:
        """Problems the processor has with this image size (aspect limit, minimum size)."""
        ...

    def with_max_pixels(self, settings: Any, max_pixels: int) -> Any | None:
        """The settings with a different pixel budget, or None when the family has none."""
        ...


@runtime_checkable
class PixelBudgetFamily(Family, Protocol):
    """A family whose image processor resizes every image to a pixel budget (``max_pixels``), so that an image
    at the cap takes about ``max_pixels // token_side**2`` placeholders plus ``image_wrap_tokens`` markers.
    Config lint reads it (VL202) to say when one image at the cap cannot fit the sequence length."""

    @property
    def token_side(self) -> int:
        """Pixels per placeholder side: the patch size times the merge size."""

    @property
    def image_wrap_tokens(self) -> int:
        """Marker tokens around each image's placeholders (``<|vision_start|>``, ``<|vision_end|>``)."""


@runtime_checkable
class VideoFamily(Family, Protocol):
    """A family that also counts videos (the Qwen VL families). The scan replaces the j-th
    ``video_placeholder`` of the rendered text with video j's ``expand_video``, in text order with the
    images' placeholders; ``expand_video`` raises :class:`vlmcheck.data.videos.VideoProblem` where the
    processor would raise (too few frames, aspect ratio)."""

    @property
    def video_placeholder(self) -> str:
        """What the chat template writes for one video (and the processor replaces)."""

    @property
    def video_token(self) -> str:
        """The token repeated once per video feature."""

    def expand_video(self, info: Any, settings: Any, options: dict[str, Any]) -> Expansion:
        """What the placeholder of a video with container metadata ``info`` becomes; ``options`` are
        the per-video keys of its content part (qwen-vl-utils reads ``fps``, ``max_pixels``, ...)."""
        ...

    def video_expansion(self, settings: Any) -> str:
        """What one ``video_placeholder`` becomes when the video is unknown, with ``video_token`` once."""
        ...


# --------------------------------------------------------------------------- the batch layout capability


@dataclass(frozen=True)
class LayoutTokens:
    """The special tokens of a processed batch the collator guards look at: ``image`` (``video``) is the
    placeholder the model counts against image (video) features; ``start``/``end`` open and close a span,
    and a truncation at a span takes its ``start`` along."""

    image: str
    start: str | None = None
    end: str | None = None
    video: str | None = None


@dataclass(frozen=True)
class MediaLayout:
    """Where the images (or videos) of one processed batch sit, in batch order.

    ``runs``: per item, the lengths of the placeholder runs it fills (one run, unless markers interleave:
    Pixtral's row breaks, Gemma 3's pan-and-scan crops, Qwen3-VL's video frames). ``units``: per item, how
    many entries of the item axis of every tensor in ``pixel_keys`` it owns, and ``unit`` what one such entry
    is, as the guards' messages name it: a leading-axis ``"row"`` (the default), or a slot of a per-sample
    layout (``"tile slot"``: Idefics3 / SmolVLM, ``"image slot"``: Mllama); ``item_keys`` hold one row per item
    (``image_grid_thw``, ``image_sizes``). ``crops``: Gemma 3 pan-and-scan crops per item, else zeros.
    ``sample_keys`` hold one item count per sample and each item's features depend on it
    (LLaVA-OneVision's ``batch_num_images``: a sample with several images keeps only their base
    features), so a sample that loses one item loses them all. ``items_per_sample``: set when ``pixel_keys``
    are laid out per sample, ``[sample, slot, ...]`` (Idefics3 / SmolVLM tiles, Mllama images): sample s's
    items fill its first slots in batch order (``units`` slots each) and the rest are padding, so dropping an
    item moves the sample's later slots up, pads its end, and the slot axis shrinks to the most slots a
    sample still fills (as the processor pads it). ``slot_axes``: the slot axis of a key when it is not the
    second (Mllama's ``cross_attention_mask``, ``[sample, token, image, tile]``: 2); ``slot_fill``: what a
    padding slot of a key holds when it is not zeros, broadcast over the slot (Mllama's
    ``aspect_ratio_mask``: its first tile on). ``token_keys``: keys besides the 2-D per-token ones whose
    second axis is the token (Mllama's ``cross_attention_mask``), cut along with ``input_ids``.
    """

    runs: Sequence[tuple[int, ...]]
    units: Sequence[int]
    pixel_keys: tuple[str, ...] = ("pixel_values",)
    item_keys: tuple[str, ...] = ()
    crops: list[int] | None = None
    sample_keys: tuple[str, ...] = ()
    items_per_sample: Sequence[int] | None = None
    slot_axes: Mapping[str, int] = field(default_factory=dict)
    slot_fill: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    token_keys: tuple[str, ...] = ()
    unit: str = "row"

    @property
    def features(self) -> list[int]:
        """Placeholders each item needs."""
        return [sum(r) for r in self.runs]


@runtime_checkable
class BatchLayoutFamily(Family, Protocol):
    """A family whose processor output batches the collator guards (:mod:`vlmcheck.integrations.guards`)
    can check and repair: which tokens are placeholders, and how many each image of a batch needs, read
    from the batch's own metadata (``image_grid_thw``, ``image_sizes``, ``pixel_values``' shape, ...).

    ``layout_settings`` reads what the layout needs from a transformers processor once (the guards keep
    it in their ``VisionSpec``); ``image_layout`` runs on every batch. Batches are duck-typed (tensors
    answer ``.shape`` and ``.tolist()``): families never import torch.
    """

    @property
    def layout_tokens(self) -> LayoutTokens: ...

    def layout_settings(self, processor: Any) -> dict[str, Any]:
        """What ``image_layout`` needs from this family's transformers processor (merge size, settings)."""
        ...

    def image_layout(
        self, batch: Mapping[str, Any], settings: Mapping[str, Any], *, crops: Sequence[int] | None = None
    ) -> MediaLayout:
        """The batch's images; ``crops`` (Gemma 3): pan-and-scan crops per image when the batch lacks them."""
        ...


@runtime_checkable
class VideoBatchLayoutFamily(BatchLayoutFamily, Protocol):
    """A batch-layout family whose batches also carry videos."""

    def video_layout(self, batch: Mapping[str, Any], settings: Mapping[str, Any]) -> MediaLayout:
        """The batch's videos."""
        ...


@runtime_checkable
class CroppedBatchLayoutFamily(BatchLayoutFamily, Protocol):
    """A batch layout whose images own a number of pixel rows that depends on crops the processor cuts and
    then leaves out of its output (Gemma 3 pan-and-scan crops, InternVL tiles): an image with ``c`` crops owns
    ``1 + c`` rows. The guards work the crops out from the examples' image sizes; ``image_layout`` takes them
    as ``crops``."""

    @property
    def crops_fix(self) -> str:
        """How to give an image fewer crops, with ``{n}`` for the crops it has (the guards' fix hint)."""

    @property
    def crops_on(self) -> Mapping[str, Any]:
        """Call-time options that turn cropping on, tried when a batch has more rows than the settings give."""

    def crop_settings(self, processor: Any, options: Mapping[str, Any], *, settings: Mapping[str, Any]) -> Any:
        """The settings a call of ``processor`` with ``options`` crops with (``settings``: the layout's)."""
        ...

    def layout_crops(self, sizes: Sequence[tuple[int, int]], settings: Any) -> list[int]:
        """Crops of each ``(width, height)`` image under ``crop_settings``."""
        ...


@runtime_checkable
class CrossAttentionLayoutFamily(BatchLayoutFamily, Protocol):
    """A batch layout whose images reach the language model through cross-attention (Mllama): each image is
    one placeholder in the text and its features never become tokens, so no cut goes through an image; an
    image is whole, or its placeholder is gone. The model does not count placeholders against images, so a
    mismatch does not raise there: the guards say what happens instead, and how to avoid it."""

    @property
    def mismatch_effect(self) -> str:
        """What transformers does with a batch whose placeholders do not match its images (the guards' error)."""

    @property
    def mismatch_fix(self) -> str:
        """How to keep every image's placeholder (the guards' fix hint, instead of capping pixels)."""


def processor_files(processor: Any) -> dict[str, Any]:
    """A transformers processor as the scan reads a checkpoint's processor files: the image processor's
    settings (preprocessor_config.json) with the processor's own arguments under ``processor_config``
    (processor_config.json), so that a family's ``settings`` reads a live processor as it reads files."""
    image_processor = getattr(processor, "image_processor", None)
    files: dict[str, Any] = dict(image_processor.to_dict()) if image_processor is not None else {}
    own = processor.to_dict() if hasattr(processor, "to_dict") else {}
    files["processor_config"] = {k: v for k, v in own.items() if not isinstance(v, dict)}
    return files


def layout_family_settings(family: Family, settings: Mapping[str, Any]) -> Any:
    """The family settings a batch layout keeps under ``"settings"`` (read from the processor by
    ``layout_settings``), or the family's class defaults for a hand-built layout without them."""
    found = settings.get("settings")
    return found if found is not None else family.settings(preprocessor={}, config={}, overrides=Overrides())


def grid_rows(batch: Mapping[str, Any], key: str) -> list[int]:
    """``t*h*w`` of each row of a ``*_grid_thw`` tensor (the pixel rows each item owns); none when absent."""
    grid = batch.get(key)
    if grid is None:
        return []
    return [int(t) * int(h) * int(w) for t, h, w in grid.tolist()]


def leading_rows(batch: Mapping[str, Any], key: str = "pixel_values") -> int:
    value = batch.get(key)
    return 0 if value is None else int(value.shape[0])


def slotted_layout(
    batch: Mapping[str, Any], *, tokens: int, crops: Sequence[int] | None, title: str
) -> MediaLayout:
    """The layout of a batch whose ``pixel_values`` are ``[sample, slot, 3, H, W]`` (Idefics3 / SmolVLM): an
    image with ``c`` crops (tiles besides the global image) fills ``1 + c`` slots and ``tokens`` placeholders
    per slot, in one run each (the markers between tiles split them); the padding slots are all zero (the
    model drops them: ``Idefics3Model.get_image_features``). The batch keeps no tile counts, so they come as
    ``crops``, worked out from the images' sizes."""
    pixels = batch.get("pixel_values")
    if pixels is None:
        return MediaLayout([], [])
    if crops is None:
        raise UsageError(
            f"a {title} batch does not say how many tiles each image has: pass crops_per_image=[tiles - 1 for "
            "each image] (SpanGuardCollator works them out from the examples' images)"
        )
    found = [int(c) for c in crops]
    real = [int(n) for n in (pixels.flatten(2) != 0).any(-1).sum(-1).tolist()]
    per_sample: list[int] = []
    k = 0
    for slots in real:
        count = 0
        while slots > 0 and k < len(found):
            slots -= 1 + found[k]
            k += 1
            count += 1
        if slots != 0:
            break
        per_sample.append(count)
    if len(per_sample) != len(real) or k != len(found):
        raise UsageError(
            f"crops_per_image gives {sum(1 + c for c in found)} tiles, but the batch's samples have {real} "
            "non-padding pixel_values slots; give the options the processor was called with (processor_options=)"
        )
    return MediaLayout(
        [(tokens,) * (1 + c) for c in found],
        [1 + c for c in found],
        pixel_keys=("pixel_values", "pixel_attention_mask"),
        crops=found,
        items_per_sample=per_sample,
        unit="tile slot",
    )


class TiledSlotsLayout:
    """The batch layout of a processor that cuts an image into rows x cols tiles plus one global image, each a
    run of ``image_seq_len`` placeholders, and keeps ``pixel_values`` per sample (``Idefics3Processor``,
    ``SmolVLMProcessor``; see :func:`slotted_layout`). A family mixes it in; it reads the family's own
    ``settings`` (over the processor's files and the call's options) and ``expand`` (one run per tile), so it
    satisfies :class:`CroppedBatchLayoutFamily` for it. The tiles besides the global image are the crops."""

    crops_on: Mapping[str, Any] = MappingProxyType({})  # splitting into tiles is the processors' default
    crops_fix: str = "or give this image fewer tiles (it has {n} besides the global one: lower size's longest_edge)"

    @property
    def layout_tokens(self: Family) -> LayoutTokens:
        return LayoutTokens(self.image_token)

    def layout_settings(self: Family, processor: Any) -> dict[str, Any]:
        return {"settings": self.settings(preprocessor=processor_files(processor), config={}, overrides=Overrides())}

    def crop_settings(self: Family, processor: Any, options: Mapping[str, Any], *, settings: Mapping[str, Any]) -> Any:
        """The processor's files with the call's ``options`` (``do_image_splitting``, ``size``) over them."""
        files = {**processor_files(processor), **options}
        return self.settings(preprocessor=files, config={}, overrides=Overrides())

    def layout_crops(self: Family, sizes: Sequence[tuple[int, int]], settings: Any) -> list[int]:
        return [len(self.expand(int(w), int(h), settings).runs) - 1 for w, h in sizes]

    def image_layout(
        self: Family, batch: Mapping[str, Any], settings: Mapping[str, Any], *, crops: Sequence[int] | None = None
    ) -> MediaLayout:
        seq = layout_family_settings(self, settings).image_seq_len
        return slotted_layout(batch, tokens=seq, crops=crops, title=self.title)


class SameSizeRowsLayout:
    """The batch layout of a processor whose ``pixel_values`` are ``(images, 3, H, W)``, one row per image and
    every image of a batch resized to the same H x W (``LlavaProcessor``, ``PaliGemmaProcessor``): each image
    needs the family's ``image_tokens`` of that size (a processed size resizes to itself), in one run. A family
    mixes it in; it reads the family's own ``settings`` over the processor's files."""

    @property
    def layout_tokens(self: Family) -> LayoutTokens:
        return LayoutTokens(self.image_token)

    def layout_settings(self: Family, processor: Any) -> dict[str, Any]:
        return {"settings": self.settings(preprocessor=processor_files(processor), config={}, overrides=Overrides())}

    def image_layout(
        self: Family, batch: Mapping[str, Any], settings: Mapping[str, Any], *, crops: Sequence[int] | None = None
    ) -> MediaLayout:
        images = leading_rows(batch)
        if not images:
            return MediaLayout([], [])
        height, width = (int(d) for d in batch["pixel_values"].shape[-2:])
        tokens = self.image_tokens(width, height, layout_family_settings(self, settings))
        return MediaLayout([(tokens,)] * images, [1] * images)
