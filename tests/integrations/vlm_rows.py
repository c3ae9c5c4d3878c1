"""Dataset rows for the guard tests: real PIL images, TRL's prompt-completion and messages formats."""

from __future__ import annotations

from typing import Any

# 56x56 is the smallest image Qwen2-VL takes (min_pixels 3136): grid (1, 4, 4), 4 placeholders.
# 224x224: grid (1, 16, 16), 64 placeholders.
SMALL, BIG = 56, 224


def image(size: int, color: str = "red") -> Any:
    from PIL import Image

    return Image.new("RGB", (size, size), color)


def prompt_completion_row(size: int, answer: str, *, question: str = "What is shown?") -> dict[str, Any]:
    return {
        "images": [image(size)],
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
    }


def messages_row(sizes: list[int], answer: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "image"} for _ in sizes]
    content.append({"type": "text", "text": "Describe the pictures."})
    return {
        "images": [image(s) for s in sizes],
        "messages": [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
    }
