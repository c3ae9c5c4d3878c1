"""Turn a dataset row, in any of the layouts users train from, into one conversation in the typed
message form chat templates read (``{"type": "image"}`` / ``{"type": "text", "text": ...}`` parts)
plus its images in placeholder order.

Formats:

- ``llava``: ``conversations`` of ``{"from": "human"|"gpt", "value": ...}`` with ``<image>`` tags,
  ``image`` (a path) or ``images``.
- ``sharegpt``: LLaMA-Factory's ShareGPT layout: ``messages`` (role/content) or ``conversations``
  (from/value), ``<image>`` / ``<video>`` tags in text, ``images`` / ``videos`` lists, optional ``system``.
- ``messages``: TRL / HF: ``messages`` whose content is a list of typed parts, images given by
  ``images`` or inline (``{"type": "image", "image": ...}`` / ``"url"`` / ``"path"``), videos by
  ``videos`` or inline (``{"type": "video", "video": ..., "fps": ...}``, qwen-vl-utils' keys kept).
- ``openai``: ``messages`` with ``{"type": "image_url", "image_url": {"url": ...}}`` parts, local paths
  or data URLs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from vlmcheck.data.remote import is_url

FORMATS = ("llava", "sharegpt", "messages", "openai")
IMAGE_TAG = "<image>"
VIDEO_TAG = "<video>"  # LLaMA-Factory's video placeholder (data/template.py, mm_plugin.py)
_TAG_RE = re.compile(f"{re.escape(IMAGE_TAG)}|{re.escape(VIDEO_TAG)}")
# qwen-vl-utils reads these keys from a video content part (vision_process.py fetch_video)
VIDEO_OPTION_KEYS = ("fps", "nframes", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels",
                     "video_start", "video_end", "resized_height", "resized_width")

# LLaVA / ShareGPT speaker names (LLaMA-Factory data/parser.py defaults: human, gpt, observation,
# function_call, system).
_ROLE = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
    "bot": "assistant", "system": "system", "function_call": "assistant", "observation": "tool",
    "tool": "tool", "function": "tool",
}
_ID_KEYS = ("id", "sample_id", "uid", "idx", "question_id")


class RowError(Exception):
    """The row cannot be read as a conversation (becomes a VC001 finding)."""


@dataclass
class ImageRef:
    """Where one image comes from: ``path``, ``bytes`` (HF image struct), ``data_url``, ``url`` (the web),
    ``remote`` (an fsspec URL) or ``pil`` (an opened PIL image)."""

    kind: str
    value: Any

    def describe(self) -> str:
        if self.kind == "path":
            return str(self.value)
        if self.kind == "bytes":
            return f"<{len(self.value)} embedded bytes>"
        if self.kind == "data_url":
            return "<data URL>"
        if self.kind == "pil":
            return f"<{self.value.width}x{self.value.height} {type(self.value).__name__}>"
        return str(self.value)


@dataclass
class VideoRef(ImageRef):
    """Where one video comes from (``kind`` as for images, or ``frames``: a list of frame images), and
    the per-video keys qwen-vl-utils reads from its content part (``fps``, ``max_pixels``, ...)."""

    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "frames":
            return f"<{len(self.value)} frame images>"
        return super().describe()


@dataclass
class Conversation:
    messages: list[dict[str, Any]]
    images: list[ImageRef]
    id: str | None = None
    # number of placeholders written in the data vs images provided, when they differ
    mismatch: tuple[int, int] | None = None
    videos: list[VideoRef] = field(default_factory=list)
    # the same for video placeholders and videos
    video_mismatch: tuple[int, int] | None = None


def image_ref(value: Any) -> ImageRef:
    """Read one image entry: a path/URL string, an HF ``{"bytes", "path"}`` struct, or an OpenAI
    ``{"url": ...}`` object."""
    if isinstance(value, str):
        if value.startswith("data:"):
            return ImageRef("data_url", value)
        if value.startswith(("http://", "https://")):
            return ImageRef("url", value)
        if value.startswith("file://"):
            return ImageRef("path", value[len("file://"):])
        if is_url(value):  # s3://, gs://, hf://, ...: read through fsspec, never as a local path
            return ImageRef("remote", value)
        return ImageRef("path", value)
    if _is_pil(value):  # an opened PIL image (a list of dicts or a DataFrame in memory)
        return ImageRef("pil", value)
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            # datasets' Image feature decodes the bytes whenever they are not None, even when empty (and
            # then fails): the path is the fallback only for None
            data = value["bytes"]
            if isinstance(data, (bytes, bytearray, memoryview)):
                return ImageRef("bytes", bytes(data))
            raise RowError(f"image 'bytes' must be bytes, got {type(data).__name__}")
        for key in ("path", "url", "image", "image_url"):
            if isinstance(value.get(key), (str, dict)) and value.get(key):
                return image_ref(value[key])
    raise RowError(f"cannot read an image from {type(value).__name__} {str(value)[:60]!r}")


def _is_pil(value: Any) -> bool:
    from PIL import Image

    return isinstance(value, Image.Image)


def video_options(source: dict[str, Any]) -> dict[str, Any]:
    """The per-video keys of a content part or video entry (``VIDEO_OPTION_KEYS``). Each must be a finite
    number: qwen-vl-utils does arithmetic on them, so a string there is a bad row, not a crash. A None
    is an absent key (Arrow fills a struct column's missing fields with None)."""
    options: dict[str, Any] = {}
    for key in VIDEO_OPTION_KEYS:
        value = source.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RowError(f"video option {key} must be a number, got {type(value).__name__} {str(value)[:40]!r}")
        options[key] = value
    return options


def video_ref(value: Any, options: dict[str, Any] | None = None) -> VideoRef:
    """Read one video entry: a path/URL string, an HF ``{"bytes", "path"}`` struct, a ``{"url": ...}``
    object, or a list of frame images (qwen-vl-utils and transformers accept those)."""
    options = dict(options or {})
    if isinstance(value, dict):
        options.update(video_options(value))
        for key in ("video", "video_url"):
            if value.get(key) is not None:
                return video_ref(value[key], options)
    if isinstance(value, (list, tuple)):
        if not value:
            raise RowError("a video given as a list of frames has no frames")
        return VideoRef("frames", [image_ref(v) for v in value], options)
    try:
        ref = image_ref(value)
    except RowError:
        raise RowError(f"cannot read a video from {type(value).__name__} {str(value)[:60]!r}") from None
    return VideoRef(ref.kind, ref.value, options)


def _videos_field(row: dict[str, Any]) -> list[VideoRef]:
    value = row.get("videos", row.get("video"))
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list):
        raise RowError(f"'videos' must be a list, got {type(value).__name__}")
    return [video_ref(v) for v in value if v is not None]


def _images_field(row: dict[str, Any]) -> list[ImageRef]:
    value = row.get("images", row.get("image"))
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list):
        raise RowError(f"'images' must be a list, got {type(value).__name__}")
    return [image_ref(v) for v in value if v is not None]


def row_id(row: dict[str, Any]) -> str | None:
    for key in _ID_KEYS:
        if key in row and isinstance(row[key], (str, int)) and not isinstance(row[key], bool):
            return str(row[key])
    return None


def _split_tags(text: str) -> list[dict[str, Any]]:
    """``"<image>\\nWhat?"`` -> image part then text part, in the order written (what LLaMA-Factory
    and ms-swift do in place); ``<video>`` becomes a video part."""
    parts: list[dict[str, Any]] = []
    pos = 0
    for m in _TAG_RE.finditer(text):
        if m.start() > pos:
            parts.append({"type": "text", "text": text[pos:m.start()]})
        parts.append({"type": "image" if m.group() == IMAGE_TAG else "video"})
        pos = m.end()
    if pos < len(text):
        parts.append({"type": "text", "text": text[pos:]})
    return parts


def _role(raw: Any, where: str) -> str:
    if not isinstance(raw, str):
        raise RowError(f"{where}: role must be a string, got {type(raw).__name__}")
    return _ROLE.get(raw.lower(), raw)


def _tagged(row: dict[str, Any], turns: list[Any], role_key: str, text_key: str, field_name: str) -> Conversation:
    images = _images_field(row)
    videos = _videos_field(row)
    messages: list[dict[str, Any]] = []
    system = row.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    tags = video_tags = 0
    for i, turn in enumerate(turns):
        where = f"{field_name}[{i}]"
        if not isinstance(turn, dict):
            raise RowError(f"{where} must be an object, got {type(turn).__name__}")
        if role_key not in turn or text_key not in turn:
            raise RowError(f"{where} needs {role_key!r} and {text_key!r}")
        text = turn[text_key]
        if not isinstance(text, str):
            raise RowError(f"{where}.{text_key} must be a string, got {type(text).__name__}")
        role = _role(turn[role_key], where)
        n, v = text.count(IMAGE_TAG), text.count(VIDEO_TAG)
        tags += n
        video_tags += v
        # Text-only turns stay strings: templates render strings and parts differently.
        messages.append({"role": role, "content": _split_tags(text) if n or v else text})
    mismatch = (tags, len(images)) if tags != len(images) else None
    video_mismatch = (video_tags, len(videos)) if video_tags != len(videos) else None
    return Conversation(messages=messages, images=images, id=row_id(row), mismatch=mismatch, videos=videos,
                        video_mismatch=video_mismatch)


def _typed(row: dict[str, Any], turns: list[Any]) -> Conversation:
    listed = _images_field(row)
    inline: list[ImageRef] = []
    bare = 0
    listed_videos = _videos_field(row)
    inline_videos: list[VideoRef] = []
    bare_videos = video_tags = 0
    messages: list[dict[str, Any]] = []
    tags = 0
    for i, turn in enumerate(turns):
        where = f"messages[{i}]"
        if not isinstance(turn, dict) or "role" not in turn:
            raise RowError(f"{where} must be an object with 'role'")
        role = _role(turn["role"], where)
        content = turn.get("content")
        if content is None:
            content = ""
        if isinstance(content, str):
            n, v = content.count(IMAGE_TAG), content.count(VIDEO_TAG)
            tags += n
            video_tags += v
            messages.append({"role": role, "content": _split_tags(content) if n or v else content})
            continue
        if not isinstance(content, list):
            raise RowError(f"{where}.content must be a string or a list, got {type(content).__name__}")
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                raise RowError(f"{where}.content[{j}] must be an object")
            kind = part.get("type")
            if "type" in part and not isinstance(kind, str):
                # templates test part.type == "text" / "image": a null, number or list type renders nothing
                raise RowError(f"{where}.content[{j}].type must be a string, got {type(kind).__name__} "
                               f"{str(kind)[:40]}")
            if kind in ("audio", "input_audio"):
                raise RowError(f"{where}.content[{j}]: {kind} parts are not scanned yet")
            if kind == "image_url" or (kind is None and "image_url" in part):
                url = part.get("image_url")
                inline.append(image_ref(url.get("url") if isinstance(url, dict) else url))
                parts.append({"type": "image"})
            elif kind == "image" or (kind is None and "image" in part):
                source = part.get("image") or part.get("url") or part.get("path")
                if source is None:
                    bare += 1
                else:
                    inline.append(image_ref(source))
                parts.append({"type": "image"})
            elif kind == "text" or (kind is None and "text" in part):
                text = part.get("text")
                if not isinstance(text, str):
                    raise RowError(f"{where}.content[{j}].text must be a string")
                parts.append({"type": "text", "text": text})
            elif kind in ("video", "video_url") or (kind is None and ("video" in part or "video_url" in part)):
                source = part.get("video") or part.get("video_url") or part.get("url") or part.get("path")
                if isinstance(source, dict) and "url" in source:
                    source = source["url"]
                options = video_options(part)
                if source is None:
                    bare_videos += 1
                else:
                    inline_videos.append(video_ref(source, options))
                parts.append({"type": "video"})
            elif kind in ("audio", "input_audio"):
                raise RowError(f"{where}.content[{j}]: {kind} parts are not scanned yet")
            else:
                raise RowError(f"{where}.content[{j}] has unknown type {kind!r}")
        messages.append({"role": role, "content": parts})
    if inline and listed:
        raise RowError("images given both inline in messages and in 'images'")
    if inline_videos and listed_videos:
        raise RowError("videos given both inline in messages and in 'videos'")
    images = inline or listed
    videos = inline_videos or listed_videos
    placeholders = tags + bare + len(inline)
    mismatch = (placeholders, len(images)) if placeholders != len(images) else None
    video_placeholders = video_tags + bare_videos + len(inline_videos)
    video_mismatch = (video_placeholders, len(videos)) if video_placeholders != len(videos) else None
    return Conversation(messages=messages, images=images, id=row_id(row), mismatch=mismatch, videos=videos,
                        video_mismatch=video_mismatch)


def detect_format(row: Any) -> str | None:
    """The format of one row, or None when it matches none."""
    if not isinstance(row, dict):
        return None
    turns = row.get("conversations", row.get("messages"))
    if not isinstance(turns, list) or not turns or not isinstance(turns[0], dict):
        return None
    first = turns[0]
    if "from" in first and "value" in first:
        return "llava" if "image" in row and "images" not in row else "sharegpt"
    for turn in turns:
        content = turn.get("content") if isinstance(turn, dict) else None
        if isinstance(content, list):
            kinds = {p.get("type") for p in content if isinstance(p, dict)}
            if "image_url" in kinds:
                return "openai"
            return "messages"
    return "sharegpt"


def to_conversation(row: Any, fmt: str) -> Conversation:
    """Normalize ``row`` in format ``fmt``; raises :class:`RowError` for a malformed row."""
    if not isinstance(row, dict):
        raise RowError(f"a row must be a JSON object, got {type(row).__name__}")
    if fmt in ("llava", "sharegpt"):
        key = "conversations" if "conversations" in row else "messages"
        turns = row.get(key)
        if not isinstance(turns, list):
            raise RowError(f"no {key!r} list in the row" if turns is None else f"{key!r} must be a list")
        if turns and isinstance(turns[0], dict) and "role" in turns[0]:
            return _tagged(row, turns, "role", "content", key)
        return _tagged(row, turns, "from", "value", key)
    if fmt in ("messages", "openai"):
        turns = row.get("messages", row.get("conversations"))
        if not isinstance(turns, list):
            raise RowError("no 'messages' list in the row")
        return _typed(row, turns)
    raise ValueError(f"unknown format {fmt!r}")
