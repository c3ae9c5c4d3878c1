"""Videos given as lists of frame images (a ``videos`` column of ``[["frames/a/0001.jpg", ...]]``) under
LLaMA-Factory's Qwen-VL plugins (templates ``qwen2_vl``: Qwen2-VL and Qwen2.5-VL; ``qwen3_vl``), proved per sample
against LLaMA-Factory 0.9.5's own data pipeline, as test_llamafactory_videos.py proves video files.

LLaMA-Factory (mm_plugin.py ``Qwen2VLPlugin._regularize_videos``) takes such a list as frames already sampled: every
frame is kept whatever ``video_fps`` / ``video_maxlen`` say, the last one repeated to an even count, each pre-scaled
to ``video_max_pixels`` / ``video_min_pixels`` (and the Qwen side and ratio rules); the stream-metadata shortcut of
``process_messages`` (``_get_qwen_video_stream_metadata``) returns None for a list, so the whole row is counted on
the collator's path (``_get_mm_inputs``: the frames opened, the video processor stacking them, which raises on
frames of different sizes). Qwen3-VL's timestamps are those of frame indices 0 .. n-1 at ``video_fps``.

The corpus: frame folders of 1, 2, 3, 7 and 41 frames, frames over and under the pixel budgets, frames of mixed
stored sizes (the same size after pre-scaling, and not), a list with a missing frame, one with a side under 32 px,
rows with frame lists and images, several frame lists in one row, and a file whose rows give a video file and a
frame list in one ``videos`` list; under several ``video_fps`` / ``video_maxlen`` / pixel budgets and ``cutoff_len``
values that cut through the frame groups. Every row must agree on kept / raising, the untruncated total, each
video's token runs and features, the video and image tokens left by the cut, and the crash verdict.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from lf_corpus import write_configs
from test_llamafactory_check import _compare, check_configs, mismatches, run_oracle, verdicts_in_forward
from test_llamafactory_videos import _compare_videos

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/test_video_qwen.py
pytest.importorskip("av")

# (folder, [(width, height, format), ...]): one entry per frame
FOLDERS: dict[str, list[tuple[int, int, str]]] = {
    "one": [(320, 240, "jpg")],
    "two": [(640, 480, "jpg")] * 2,  # over the 256*256 default budget: scaled down
    "three": [(100, 80, "png")] * 3,  # under it: as they are
    "seven": [(160, 120, "jpg")] * 7,
    "many": [(64, 48, "png")] * 41,  # more than every video_maxlen here: kept whole all the same
    "small": [(12, 10, "png")] * 4,  # under video_min_pixels: scaled up, then the 28 px Qwen side rule
    "same": [(1024, 768, "jpg"), (2048, 1536, "jpg"), (1024, 768, "jpg")],  # one size after pre-scaling (defaults)
    "mixed": [(320, 240, "jpg"), (320, 240, "jpg"), (200, 150, "jpg")],  # two sizes: np.stack raises
    "wide": [(900, 40, "png")] * 2,
}
NAMES = ["one", "two", "three", "seven", "many", "small", "same", "wide"]
WORDS = "the a video shows what happens next frame scene person car moves quickly slowly left right".split()


def _frames(name: str) -> list[str]:
    return [f"frames/{name}/{k:04d}.{fmt}" for k, (_, _, fmt) in enumerate(FOLDERS[name], 1)]


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _row(rng: random.Random, videos: list[Any], images: list[str], *, first: bool = False) -> dict[str, Any]:
    """A sharegpt row: each <video> and <image> in some user turn, in order (``first``: all in the first turn,
    where Qwen3-VL's timestamps, read by message index, exist)."""
    pairs = rng.choice((1, 1, 2, 3))
    marks = ["<video>"] * len(videos) + ["<image>"] * len(images)
    rng.shuffle(marks)
    turns: list[list[str]] = [[] for _ in range(pairs)]
    for mark in marks:
        turns[0 if first else rng.randrange(pairs)].append(mark)
    conv = []
    for marks_here in turns:
        text = _text(rng, 1, 30)
        conv.append({"from": "human", "value": ("".join(marks_here) + text) if rng.random() < 0.6
                     else (text + "\n" + "".join(marks_here))})
        conv.append({"from": "gpt", "value": _text(rng, 1, 60)})
    return {"conversations": conv, "videos": videos, "images": [f"images/{i}" for i in images]}


def write_frame_corpus(root: Path, checkpoints: dict[str, Path], *, seed: int = 0) -> list[Path]:
    from PIL import Image

    from test_video_qwen import write_video

    rng = random.Random(seed)
    data = root / "data"
    for name, frames in FOLDERS.items():
        (data / "frames" / name).mkdir(parents=True)
        for path, (w, h, _) in zip(_frames(name), frames):
            Image.new("RGB", (w, h), (rng.randrange(256), 90, 160)).save(data / path)
    (data / "images").mkdir()
    (data / "videos").mkdir()
    Image.new("RGB", (640, 480), (20, 90, 160)).save(data / "images" / "photo.png")
    write_video(data / "videos" / "a.mp4", 320, 240, 30, 45)
    rows = []
    for i in range(26):
        k = rng.choice((1, 1, 1, 2))
        rows.append(_row(rng, [_frames(n) for n in rng.sample(NAMES, k)],
                         rng.sample(["photo.png"], rng.choice((0, 0, 1))), first=i % 2 == 0))
    broken = [_frames("mixed"), _frames("seven")[:3] + ["frames/seven/9999.jpg"]]
    for video in broken:  # frames of two sizes; a missing frame
        rows.append(_row(rng, [video], []))
    rows.append(_row(rng, [_frames("two"), _frames("mixed")], [], first=True))
    (data / "frames.json").write_text(json.dumps(rows, indent=1))
    # a video file and a frame list in one row's videos: datasets cannot type the column
    both = [_row(rng, ["videos/a.mp4", _frames("three")], ["photo.png"], first=True),
            _row(rng, [_frames("three"), "videos/a.mp4"], [], first=True)]
    (data / "both.json").write_text(json.dumps(both, indent=1))
    # frames relative to a media_dir that is not the launch folder: the converter joins each frame to it
    relative = [{**row, "videos": [[f.removeprefix("frames/") for f in v] for v in row["videos"]], "images": []}
                for row in rows[:10] if not row["images"]]
    (data / "relative.json").write_text(json.dumps(relative, indent=1))
    columns = {"messages": "conversations", "images": "images", "videos": "videos"}
    (data / "dataset_info.json").write_text(json.dumps({
        "frames": {"file_name": "frames.json", "formatting": "sharegpt", "columns": columns},
        "relative": {"file_name": "relative.json", "formatting": "sharegpt", "columns": columns},
        "both": {"file_name": "both.json", "formatting": "sharegpt", "columns": columns},
    }, indent=1))
    q2 = {"model_name_or_path": str(checkpoints["qwen2_vl"]), "template": "qwen2_vl", "dataset": "frames"}
    configs: dict[str, dict[str, Any]] = {
        "f-defaults": q2,
        "f-tight": {**q2, "cutoff_len": 300, "video_max_pixels": 16_384, "video_fps": 1.0, "video_maxlen": 4},
        "f-budget": {**q2, "cutoff_len": 900, "video_fps": 5.0, "video_maxlen": 8, "video_max_pixels": 200_000,
                     "video_min_pixels": 50_000, "train_on_prompt": True},
        "f25": {"model_name_or_path": str(checkpoints["qwen2_5_vl"]), "template": "qwen2_vl", "dataset": "frames",
                "cutoff_len": 700, "video_fps": 3.0},
        "f3": {"model_name_or_path": str(checkpoints["qwen3_vl"]), "template": "qwen3_vl_nothink",
               "dataset": "frames"},
        "f3-think": {"model_name_or_path": str(checkpoints["qwen3_vl_think"]), "template": "qwen3_vl",
                     "dataset": "frames", "cutoff_len": 600, "video_fps": 1.5, "video_maxlen": 6,
                     "video_max_pixels": 40_000},
        "f-media": {**q2, "dataset": "relative", "media_dir": str(data / "frames"), "cutoff_len": 400},
        "f-both": {**q2, "dataset": "both"},
    }
    return write_configs(root, data, configs)


@pytest.fixture(scope="module")
def proof(tmp_path_factory: pytest.TempPathFactory, llamafactory_python: Path,
          qwen3_vl_think_checkpoint: Path) -> dict[str, Any]:
    from vlmcheck.demo.checkpoints import qwen_checkpoint

    root = tmp_path_factory.mktemp("lf_frame_videos")
    configs = write_frame_corpus(root, {"qwen2_vl": qwen_checkpoint("qwen2_vl"),
                                        "qwen2_5_vl": qwen_checkpoint("qwen2_5_vl"),
                                        "qwen3_vl": qwen_checkpoint("qwen3_vl"),
                                        "qwen3_vl_think": qwen3_vl_think_checkpoint}, seed=3)
    data = root / "data"
    # a tiny random Qwen-VL model runs forward on a cut (or frame-group-mismatched) and a whole sample per config
    oracle = run_oracle(llamafactory_python, configs, cwd=data, forward=1)
    counted = [c for c in configs if c.stem != "f-both"]
    return {"oracle": {c.stem: oracle[c.stem] for c in counted}, "mine": check_configs(counted, data),
            "both": (next(c for c in configs if c.stem == "f-both"), oracle["f-both"]), "data": data}


def _compare_rows(row: dict[str, Any], record: dict[str, Any]) -> list[str]:
    return _compare(row, record) or _compare_videos(row, record)


def test_every_frame_list_sample_is_judged_as_llamafactory_prepares_it(proof: dict[str, Any]) -> None:
    found, compared = mismatches(proof, _compare_rows)
    assert compared >= 150
    assert not found, f"{len(found)} mismatches in {compared} samples:\n" + "\n".join(found[:25])


def test_the_frame_corpus_reaches_every_case(proof: dict[str, Any]) -> None:
    """LLaMA-Factory itself keeps every frame of a list longer than video_maxlen, cuts through frame lists, writes
    the first video's frame groups for a Qwen3-VL row's later video, and raises on a missing frame, on frames of two
    sizes after pre-scaling, and on Qwen3-VL frames with a side under 32 px."""
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for name, result in proof["oracle"].items():
        for row, record in zip(result["rows"], proof["mine"][name]):
            if row["error"]:
                outcomes["raises"] += 1
                errors[row["error"]] += 1
                assert record["framework"]["verdict"] == "stops", (name, row, record)
                continue
            if sum(row["video_tokens"]) != sum(row["video_features"]):
                outcomes["frames mismatch"] += 1
                assert "VC116" in record["findings"], (name, row, record)
            elif row["video_tokens_left"] < sum(row["video_features"]):
                outcomes["video cut"] += 1
                assert "VC205" in record["findings"], (name, row, record)
            else:
                outcomes["whole"] += 1
            if name in ("f-tight", "f3-think") and 84 in row["video_features"]:
                outcomes["41 frames over video_maxlen"] += 1  # 64x48: 4 features a frame pair, 21 pairs
    assert outcomes["frames mismatch"] >= 2 and outcomes["video cut"] >= 5 and outcomes["whole"] >= 100, outcomes
    assert outcomes["41 frames over video_maxlen"] >= 4, outcomes
    assert len(proof["oracle"]["f-media"]["rows"]) >= 5
    for fragment in ("all input arrays must have the same shape", "Invalid image found in video frames",
                     "must be larger than factor", "IndexError"):
        assert any(fragment in e for e in errors), (fragment, errors)
    # f-tight: the frames of "mixed" are one size after its pre-scaling, so the row trains
    tight = proof["oracle"]["f-tight"]["rows"]
    assert not tight[26]["error"] and tight[26]["kept"], tight[26]


# what the model raises first (transformers 5.6): the M-RoPE position step's shape mismatch (a cut video under
# Qwen2-VL), Qwen3-VL's own features check (the first video's frame-group count)
RAISES = ("shape mismatch", "Video features and video tokens do not match")


def test_a_tiny_real_model_crashes_on_the_crash_verdicts_only(proof: dict[str, Any]) -> None:
    """LLaMA-Factory's collator (frames opened and pre-scaled by its plugin, the video processor's real __call__,
    pixel values zeros) and a random-weight model of the checkpoint's type: every sample vlmcheck calls a crash
    raises, every whole one runs."""
    ran = verdicts_in_forward(proof, RAISES)
    assert ran["crash"] >= 3 and ran["whole"] >= 4, ran


def test_a_file_and_a_frame_list_in_one_row_stop_the_run(proof: dict[str, Any]) -> None:
    """datasets cannot type a videos list holding a path and a list of paths: LLaMA-Factory's loader raises."""
    import vlmcheck

    config, oracle = proof["both"]
    assert "DatasetGenerationError" in oracle["config_error"], oracle
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(proof["data"])
        with pytest.raises(vlmcheck.DatasetError, match="datasets cannot load the file"):
            vlmcheck.check(config)
