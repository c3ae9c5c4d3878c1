"""The scanner's cached ``realpath`` (one resolution per image folder) equals ``os.path.realpath``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vlmcheck.model import load_model
from vlmcheck.scan import Scanner, ScanOptions


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "img" / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    for f in (root / "img" / "a.png", root / "img" / "sub" / "b.png", tmp_path / "elsewhere" / "c.png"):
        f.write_bytes(b"x")
    (root / "img" / "link-file.png").symlink_to(tmp_path / "elsewhere" / "c.png")
    (root / "img" / "link-dir").symlink_to(tmp_path / "elsewhere")
    (root / "alias").symlink_to(root / "img")
    return root


def test_cached_realpath_equals_os_realpath(tree: Path, qwen2_vl_checkpoint: Path) -> None:
    scanner = Scanner(load_model(qwen2_vl_checkpoint), ScanOptions(), tree)
    names = ["img/a.png", "img/sub/b.png", "img/link-file.png", "img/link-dir/c.png", "alias/a.png",
             "alias/sub/../a.png", "img/sub/..", "img/missing.png", "img/link-dir/../data/img/a.png",
             "alias/link-dir/c.png", "img/.", "img"]
    for _ in range(2):  # second pass: from the folder cache
        for name in names:
            assert scanner._realpath(tree / name) == os.path.realpath(tree / name), name
