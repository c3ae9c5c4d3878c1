"""The training machine's accelerators, read with torch when it is importable (never required)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceInfo:
    """What the hardware rules need: visible CUDA GPUs and whether they do bf16."""

    count: int
    names: tuple[str, ...]
    bf16: bool
    #: compute capability of GPU 0, e.g. (7, 0) for V100; bf16 needs >= (8, 0)
    capability: tuple[int, int] | None = None


def probe_device() -> DeviceInfo | None:
    """The visible CUDA GPUs, or None when torch is absent or sees no GPU.

    Imports torch (late); a machine without it simply skips the hardware rules.
    """
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch

        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            return None
        count = torch.cuda.device_count()
        names = tuple(torch.cuda.get_device_name(i) for i in range(count))
        capability = tuple(torch.cuda.get_device_capability(0))
        # transformers' check for bf16 training (utils/import_utils.py is_torch_bf16_gpu_available)
        bf16 = bool(torch.cuda.is_bf16_supported())
    except Exception:  # a broken driver is not the config's problem
        return None
    return DeviceInfo(count=count, names=names, bf16=bf16, capability=(capability[0], capability[1]))
