"""When the model raises its own mismatch anyway: :func:`explain_vision_mismatch` names the samples."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from vlmcheck.errors import MissingDependencyError, UsageError
from vlmcheck.integrations._accounting import account_batch
from vlmcheck.integrations._layout import TOKEN_TYPE_KEYS, SpanMismatchError, VisionSpec, vision_spec
from vlmcheck.integrations._repair import fix_hint

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise MissingDependencyError("torch", "transformers", "vlmcheck.integrations.guards") from exc


# --------------------------------------------------------------------------- when the model raises anyway

_MISMATCH_MARKERS = ("features and image tokens do not match", "features and video tokens do not match")


def _mismatch_message(error: BaseException) -> str | None:
    """The model's own mismatch message, also when a trainer re-raised it with its own words."""
    seen: BaseException | None = error
    while seen is not None:
        if any(marker in str(seen) for marker in _MISMATCH_MARKERS):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def explain_vision_mismatch(
    model: Any, *, processor: Any = None, spec: VisionSpec | None = None
) -> Iterator[None]:
    """Re-raise the model's "Image features and image tokens do not match" with the samples involved.

    A forward pre-hook keeps a reference to the inputs of the model's latest call (no copy), so
    this works with dataloader workers, gradient accumulation, and RL re-feeds alike.

    Example::

        with explain_vision_mismatch(model, processor=processor):
            trainer.train()
        # SpanMismatchError: ... sample 3: 2,047 image tokens, 2,048 features ...
    """
    if spec is None:
        if processor is None:
            raise UsageError("explain_vision_mismatch needs processor= or spec=")
        spec = vision_spec(processor)
    latest: dict[str, Any] = {}

    def remember(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(ids, torch.Tensor) and ids.dim() == 2:
            latest.clear()
            latest.update(
                {
                    k: kwargs.get(k)
                    for k in (
                        "attention_mask",
                        "labels",
                        "image_grid_thw",
                        "image_sizes",
                        "batch_num_images",
                        "pixel_values",
                        "video_grid_thw",
                        *TOKEN_TYPE_KEYS,
                    )
                }
            )
            latest["input_ids"] = ids

    handle = model.register_forward_pre_hook(remember, with_kwargs=True)
    try:
        yield
    except Exception as error:
        original = _mismatch_message(error)
        if original is None or "input_ids" not in latest:
            raise
        batch = {k: v for k, v in latest.items() if v is not None}
        try:
            accounts = account_batch(batch, spec=spec)
        except SpanMismatchError as unknown:
            raise SpanMismatchError(f"{original}\nvlmcheck: {unknown}") from error
        lines = "\n".join("  " + a.describe() for a in accounts)
        bad = [a.index for a in accounts if not a.ok]
        raise SpanMismatchError(
            f"{original}\nvlmcheck: samples {bad} of the failing batch are involved. Per sample:\n{lines}\n"
            f"Fix: {fix_hint(next(a for a in accounts if not a.ok), max_length=None, spec=spec) if bad else 'see above'}.",
            accounts,
        ) from error
    finally:
        handle.remove()
