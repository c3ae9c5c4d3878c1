"""Fixtures for the training-time guards: the real Qwen2-VL processor, fresh tiny models, datasets."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for realparts

from realparts import qwen_processor, tiny_qwen2_vl_model  # noqa: E402


@pytest.fixture(scope="session")
def processor() -> Any:
    return qwen_processor("qwen2_vl")


@pytest.fixture
def fresh_model() -> Any:
    """A private copy of the tiny model: trainers change weights, the cached one stays clean."""
    return copy.deepcopy(tiny_qwen2_vl_model())
