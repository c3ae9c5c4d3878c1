"""The max_pixels a VC201 fix recommends must be one the pipeline accepts, and must make the sample fit.

Regression: under ``resize="qwen-vl-utils"`` the budget search reached budgets below qwen-vl-utils'
floor (it asserts ``max_pixels >= min_pixels``), where its resize gives a 0-px side for a
non-square image, and the scan died with ZeroDivisionError.
"""

from __future__ import annotations

import json
import re

from PIL import Image

from vlmcheck import scan


def test_qwen_vl_utils_recommendation_is_valid_and_fits(tmp_path, qwen2_vl_checkpoint):
    Image.new("RGB", (1400, 1120)).save(tmp_path / "a.jpg")
    row = {"messages": [{"role": "user", "content": "<image>Describe."}, {"role": "assistant", "content": "ok"}],
           "images": ["a.jpg"]}
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    report = scan(tmp_path / "d.jsonl", model=qwen2_vl_checkpoint, max_length=512, resize="qwen-vl-utils")
    assert report.counts.get("VC201") == 1
    (finding,) = [f for f in report.findings if f.code == "VC201"]
    budget = int(re.search(r"cap max_pixels at ([\d,]+)", str(finding.fix)).group(1).replace(",", ""))
    assert budget >= 4 * 28 * 28  # qwen-vl-utils' IMAGE_MIN_TOKEN_NUM * factor**2
    again = scan(tmp_path / "d.jsonl", model=qwen2_vl_checkpoint, max_length=512, resize="qwen-vl-utils",
                 max_pixels=budget)
    assert again.counts == {}
