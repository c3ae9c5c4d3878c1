"""Fixtures for the framework proofs: LLaMA-Factory's own environment and the checkpoints it reads."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # llamafactory_env.py, lf_corpus.py

# Qwen3's added tokens after <|file_sep|> (151664), in id order, none of them special (the Qwen3-VL hub
# tokenizer.json / tokenizer_config.json added_tokens_decoder): the demo checkpoint stops at 151664.
QWEN3_ADDED = ("<tool_response>", "</tool_response>", "<think>", "</think>")


@pytest.fixture(scope="session")
def qwen3_vl_think_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Qwen3-VL demo checkpoint with Qwen3's <think> / </think> tokens (151667, 151668), which LLaMA-Factory's
    qwen3_vl template writes into every answer."""
    from tokenizers import AddedToken, Tokenizer

    from vlmcheck.demo.checkpoints import qwen_checkpoint

    source = qwen_checkpoint("qwen3_vl")
    target = tmp_path_factory.mktemp("qwen3_vl_think")
    for file in source.iterdir():
        shutil.copy(file, target / file.name)
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    if tokenizer.token_to_id("<think>") is None:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN3_ADDED])
    assert tokenizer.token_to_id("<think>") == 151667 and tokenizer.token_to_id("</think>") == 151668
    tokenizer.save(str(target / "tokenizer.json"))
    return target


@pytest.fixture(scope="session")
def llamafactory_python() -> Path:
    """LLaMA-Factory's own Python (built and cached on first use; skipped only when the package index is
    unreachable, and never under CI)."""
    from llamafactory_env import oracle_python

    return oracle_python()
