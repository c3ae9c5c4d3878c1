"""Shared fixtures. Everything is offline: checkpoints are built from the `dashscope` wheel's real
Qwen2 BPE ranks (see vlmcheck.demo.checkpoints) and cached in $VLMCHECK_CACHE (~/.cache/vlmcheck)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/realparts.py


@pytest.fixture(scope="session")
def qwen2_vl_checkpoint() -> Path:
    from vlmcheck.demo.checkpoints import qwen_checkpoint

    return qwen_checkpoint("qwen2_vl")


@pytest.fixture(scope="session")
def checkpoint_for():
    """The offline checkpoint folder of a Qwen-VL model type (those sharing Qwen3-VL's processor included)."""
    from qwen3_sharing_checkpoint import ARCHITECTURES, sharing_checkpoint
    from vlmcheck.demo.checkpoints import qwen_checkpoint

    return lambda model_type: (sharing_checkpoint if model_type in ARCHITECTURES else qwen_checkpoint)(model_type)
