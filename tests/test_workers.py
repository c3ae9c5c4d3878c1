"""``workers=N`` uses N processes and gives exactly the single-process result, in order."""

from __future__ import annotations

import json

from vlmcheck import scan
from vlmcheck.demo.run import DATA


def test_two_workers_match_one(tmp_path, qwen2_vl_checkpoint):
    rows = DATA.read_text().splitlines() * 20  # > several chunks, so both workers get work
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(rows) + "\n")
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    r1 = scan(data, model=qwen2_vl_checkpoint, max_length=4096, output=one, image_root=DATA.parent)
    r2 = scan(data, model=qwen2_vl_checkpoint, max_length=4096, output=two, workers=2,
              image_root=DATA.parent)
    assert one.read_text() == two.read_text()
    assert len(one.read_text().splitlines()) == len(rows)
    s1, s2 = dict(r1.summary), dict(r2.summary)
    for key in ("seconds", "samples_per_second"):
        s1.pop(key), s2.pop(key)
    assert s1 == s2
    assert json.loads(one.read_text().splitlines()[0])["tokens"] > 0
