"""The batch layout the guards check: :class:`VisionSpec` (a family's layout, read from the families registry),
:func:`vision_spec` (a processor's), and the error the guards raise."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from vlmcheck.errors import MissingDependencyError, UsageError, VlmcheckError
from vlmcheck.families import get_family, known_families
from vlmcheck.families.base import (
    BatchLayoutFamily,
    CroppedBatchLayoutFamily,
    MediaLayout,
    VideoBatchLayoutFamily,
)

if TYPE_CHECKING:
    from vlmcheck.integrations._accounting import SampleAccount

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise MissingDependencyError("torch", "transformers", "vlmcheck.integrations.guards") from exc

# "drop-media" drops cut images and cut videos; "drop-images" is its original name and stays an alias.
Policy = Literal["raise", "drop-media", "drop-images", "truncate"]
POLICIES: tuple[str, ...] = ("raise", "drop-media", "drop-images", "truncate")
MediaKind = Literal["image", "video"]
IGNORE_INDEX = -100  # transformers' CrossEntropyLoss ignore_index, used by every trainer for masked labels

# Keys that hold one value per token and must be cut / masked along with input_ids.
TOKEN_TYPE_KEYS = ("mm_token_type_ids", "token_type_ids")


class SpanMismatchError(VlmcheckError, ValueError):
    """A batch whose image (video) placeholders do not match its images (videos) (policy ``"raise"``).

    Subclasses ``ValueError`` so that code catching the model's own mismatch error catches it too.
    ``accounts`` holds the per-sample counts; ``code`` is its runtime catalogue code (``VR101``
    span-mismatch, ``VR103`` batch-unsupervised; ``vlmcheck explain VR101``).
    """

    def __init__(self, message: str, accounts: Sequence[SampleAccount] = (), *, code: str = "VR101") -> None:
        super().__init__(message)
        self.accounts = list(accounts)
        self.code = code



# --------------------------------------------------------------------------- the family layout


@dataclass(frozen=True)
class VisionSpec:
    """How a batch of one model family lays out image and video placeholders and pixels.

    ``family`` is a registered ``model_type`` whose module declares the batch layout
    (:class:`vlmcheck.families.base.BatchLayoutFamily`): which tokens are placeholders and how many
    each image of a batch needs. ``settings`` is what that layout reads from the processor
    (``family.layout_settings(processor)``). Build it from a processor with :func:`vision_spec`;
    construct it directly for a tokenizer-only setup::

        spec = VisionSpec(family="qwen2_vl", image_token_id=151655, video_token_id=151656,
                          start_token_id=151652, end_token_id=151653, pad_token_id=151643,
                          settings={"merge_size": 2})
    """

    family: str
    image_token_id: int
    pad_token_id: int
    video_token_id: int | None = None
    start_token_id: int | None = None
    end_token_id: int | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def layout(self) -> BatchLayoutFamily:
        """The family module's batch layout (a usage error when the family declares none)."""
        return batch_layout_family(self.family)

    @property
    def merge_size(self) -> int | None:
        """The Qwen-style merge size the layout read from the processor, if any."""
        value = self.settings.get("merge_size")
        return None if value is None else int(value)

    @property
    def tokens_per_image(self) -> int | None:
        value = self.settings.get("tokens_per_image")
        return None if value is None else int(value)

    @property
    def video_frame_runs(self) -> bool:
        """Whether every temporal patch of a video is its own placeholder run (Qwen3-VL), as the layout says
        for a video of two temporal patches."""
        probe = {"video_grid_thw": torch.tensor([[2, 2, 2]])}
        runs = self.media(probe, "video").runs
        return bool(runs) and len(runs[0]) > 1

    @property
    def crops_from_sizes(self) -> bool:
        """Whether each image's pixel rows depend on crops worked out from its size (Gemma 3 pan-and-scan)."""
        return isinstance(self.layout, CroppedBatchLayoutFamily)

    def media(self, batch: Mapping[str, Any], kind: MediaKind, crops: Sequence[int] | None = None) -> MediaLayout:
        """Where the batch's images (videos) sit: their placeholder runs and pixel rows, in batch order."""
        if kind == "image":
            return self.layout.image_layout(batch, self.settings, crops=crops)
        layout = self.layout
        if isinstance(layout, VideoBatchLayoutFamily):
            return layout.video_layout(batch, self.settings)
        return MediaLayout([], [], ())

    def image_tokens(self, batch: dict[str, Any], crops: Sequence[int] | None = None) -> list[int]:
        """Placeholders each image of the batch needs, in batch order (Gemma 3: ``crops`` per image)."""
        return self.media(batch, "image", crops).features

    def image_pixel_units(self, batch: dict[str, Any], crops: Sequence[int] | None = None) -> list[int]:
        """Entries of ``pixel_values``' item axis each image owns, in batch order (rows, or the slots of a
        per-sample layout: ``MediaLayout.unit`` says which); Gemma 3: ``crops`` per image."""
        return list(self.media(batch, "image", crops).units)

    def image_crops(self, batch: dict[str, Any], crops: Sequence[int] | None = None) -> list[int]:
        """Gemma 3 pan-and-scan crops of each image, in batch order (zeros for other families)."""
        media = self.media(batch, "image", crops)
        return media.crops if media.crops is not None else [0] * len(media.runs)

    def video_tokens(self, batch: dict[str, Any]) -> list[int]:
        """Placeholders each video of the batch needs, in batch order."""
        return self.media(batch, "video").features

    def video_pixel_units(self, batch: dict[str, Any]) -> list[int]:
        """Rows of ``pixel_values_videos`` each video owns, in batch order."""
        return list(self.media(batch, "video").units)

    def chunks(self, batch: dict[str, Any], kind: MediaKind, crops: Sequence[int] | None = None) -> list[list[int]]:
        """Per image (video): the placeholder runs it fills, as lengths."""
        return [list(runs) for runs in self.media(batch, kind, crops).runs]


def batch_layout_family(model_type: str) -> BatchLayoutFamily:
    """The registered family of ``model_type``, which must declare a batch layout."""
    family = get_family(model_type)
    if not isinstance(family, BatchLayoutFamily):
        raise UsageError(
            f"the {family.title} family ({model_type}) declares no batch layout (layout_tokens, layout_settings, "
            "image_layout: vlmcheck.families.base.BatchLayoutFamily), so the guards cannot check its batches"
        )
    return family


def _token_id(tokenizer: Any, token: str | None) -> int | None:
    if token is None:
        return None
    value = tokenizer.convert_tokens_to_ids(token)
    if value is None or value == getattr(tokenizer, "unk_token_id", object()):
        return None
    return int(value)


def processor_model_type(processor: Any) -> str:
    """The registered ``model_type`` whose transformers processor class ``processor`` is (or subclasses)."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    by_class: dict[str, str] = {}
    for model_type in known_families():
        name = PROCESSOR_MAPPING_NAMES.get(model_type)
        if isinstance(name, str):
            by_class.setdefault(name, model_type)
    for cls in type(processor).__mro__:
        if cls.__name__ in by_class:
            return by_class[cls.__name__]
    raise UsageError(
        f"{type(processor).__name__} is not the processor of a family vlmcheck knows "
        f"({', '.join(known_families())}); pass model_type= or build a VisionSpec(...) by hand"
    )


def vision_spec(processor: Any, *, model_type: str | None = None) -> VisionSpec:
    """The :class:`VisionSpec` of a transformers processor of any registered family that declares a batch
    layout; ``model_type`` when the processor's class does not say (a custom subclass).

    Example::

        spec = vision_spec(processor)
        spec.image_token_id   # 151655 for Qwen2-VL
    """
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        raise UsageError(f"vision_spec needs a processor with a .tokenizer (got {type(processor).__name__})")
    name = model_type or processor_model_type(processor)
    family = batch_layout_family(name)
    tokens = family.layout_tokens
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    image_id = _token_id(tokenizer, tokens.image)
    if image_id is None:
        raise UsageError(f"{type(processor).__name__}'s tokenizer has no {tokens.image} token")
    return VisionSpec(
        family=name,
        image_token_id=image_id,
        pad_token_id=int(pad),
        video_token_id=_token_id(tokenizer, tokens.video),
        start_token_id=_token_id(tokenizer, tokens.start),
        end_token_id=_token_id(tokenizer, tokens.end),
        settings=family.layout_settings(processor),
    )
