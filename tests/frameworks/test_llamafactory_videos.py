"""Videos under LLaMA-Factory's Qwen2-VL plugin (templates ``qwen2_vl``: Qwen2-VL and Qwen2.5-VL), proved per sample
against LLaMA-Factory 0.9.5's own data pipeline, as test_llamafactory_check.py proves images.

The corpus: real video files written with PyAV (MP4 with mpeg4 and with x264 B-frames and an edit list, MOV, AVI,
a fragmented MP4, a 90-degree display matrix, a one-frame clip, a clip with a side under 28 px, a long clip), in
multi-turn rows with one or two videos, with and without images, under LLaMA-Factory's video defaults
(``video_fps`` 2, ``video_maxlen`` 128, ``video_max_pixels`` 256*256, ``video_min_pixels`` 16*16) and under other
budgets and ``cutoff_len`` values; and rows on which LLaMA-Factory raises (a placeholder too many, a missing file, a
file that is not a video). The oracle (llamafactory_oracle_runner.py) runs LLaMA-Factory's converter, template and
mm_plugin (``process_messages`` counts each video's tokens from PyAV stream metadata) and the collator's path for
the features (``_regularize_videos`` decodes and pre-scales the frames, the checkpoint's Qwen2VLVideoProcessor
sizes and patches them). Every row must agree on kept / raising, the untruncated total, each video's token count,
the video and image tokens left by the cut, and the crash verdict (tokens left != features), which for a
fragmented MP4 is a crash even uncut: LLaMA-Factory counts ``video_maxlen`` frames for it and decodes fewer.
"""

from __future__ import annotations

import fractions
import json
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from lf_corpus import write_configs
from test_llamafactory_check import _compare, check_configs, mismatches, run_oracle, verdicts_in_forward

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/test_video_qwen.py
av = pytest.importorskip("av")

# (file, width, height, rate, frames, write options)
VIDEOS = [
    ("a.mp4", 320, 240, 30, 45, {}),
    ("b.mp4", 640, 360, fractions.Fraction(30000, 1001), 100, {}),
    ("c.mov", 160, 96, 25, 30, {}),
    ("d.avi", 160, 120, 25, 50, {}),
    ("x264.mp4", 352, 288, 25, 40, {"codec": "libx264"}),
    ("rot90.mp4", 320, 180, 30, 24, {"rotation": 90}),
    ("one.mp4", 96, 64, 25, 1, {}),
    ("thin.mp4", 24, 96, 10, 12, {}),  # a side under 28 px: the Qwen plugin stretches the frames
    ("long.mp4", 64, 48, 30, 600, {}),  # 20 s: 40 frames at 2 fps, capped by a small video_maxlen
    ("frag.mp4", 160, 120, 25, 60, {"movflags": "frag_keyframe+empty_moov"}),  # nb_frames 0
]
WORDS = "the a video shows what happens next frame scene person car moves quickly slowly left right".split()


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _row(rng: random.Random, videos: list[str], images: list[str]) -> dict[str, Any]:
    """A multi-turn sharegpt row: each video and image placeholder in some user turn, in order."""
    pairs = rng.choice((1, 1, 2, 3))
    marks = ["<video>"] * len(videos) + ["<image>"] * len(images)
    rng.shuffle(marks)
    # the k-th <video> takes videos[k] and the k-th <image> images[k] whatever their turns: keep the lists in order
    turns: list[list[str]] = [[] for _ in range(pairs)]
    for mark in marks:
        turns[rng.randrange(pairs)].append(mark)
    conv = []
    for marks_here in turns:
        text = _text(rng, 1, 30)
        conv.append({"from": "human", "value": ("".join(marks_here) + text) if rng.random() < 0.6
                     else (text + "\n" + "".join(marks_here))})
        answer = _text(rng, 1, 80)
        conv.append({"from": "gpt", "value": ("\n" + answer) if rng.random() < 0.2 else answer})
    row: dict[str, Any] = {"conversations": conv, "videos": [f"videos/{v}" for v in videos]}
    if images:
        row["images"] = [f"images/{i}" for i in images]
    if rng.random() < 0.3:
        row["system"] = _text(rng, 0, 10)
    return row


def write_video_corpus(root: Path, checkpoints: dict[str, Path], *, seed: int = 0, rows: int = 24) -> list[Path]:
    from PIL import Image

    from test_video_qwen import write_video

    rng = random.Random(seed)
    data = root / "data"
    (data / "videos").mkdir(parents=True)
    (data / "images").mkdir()
    for name, w, h, rate, n, options in VIDEOS:
        write_video(data / "videos" / name, w, h, rate, n, **options)
    (data / "videos" / "garbage.mp4").write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    Image.new("RGB", (640, 480), (20, 90, 160)).save(data / "images" / "photo.png")
    Image.new("RGB", (300, 1200), (200, 30, 30)).save(data / "images" / "tall.png")
    names = [v[0] for v in VIDEOS]
    good = [_row(rng, rng.sample(names, rng.choice((1, 1, 2))),
                 rng.sample(["photo.png", "tall.png"], rng.choice((0, 0, 1, 2)))) for _ in range(rows)]
    bad = []
    for i in range(8):
        row = _row(rng, rng.sample(names, 1), [])
        # a column that no row of the file has stops LLaMA-Factory on every row (KeyError)
        row["system"] = _text(rng, 0, 6)
        row["images"] = ["images/photo.png"] if i == 3 else []
        if i == 3:
            row["conversations"][0]["value"] += "<image>"
        if i % 4 == 0:
            row["conversations"][0]["value"] += "<video>"  # a placeholder more than videos
        elif i % 4 == 1:
            row["videos"] = ["videos/missing.mp4"]
        elif i % 4 == 2:
            row["videos"] = ["videos/garbage.mp4"]
        bad.append(row)
    (data / "vid.json").write_text(json.dumps(good, indent=1))
    (data / "vbad.json").write_text(json.dumps(bad, indent=1))
    # openai rows read their videos too; media the template has no token for, and placeholders without media,
    # stop LLaMA-Factory before anything is tokenized (process_messages' _validate_input / _validate_messages)
    openai = []
    for _ in range(10):
        row = _row(rng, rng.sample(names[:6], rng.choice((1, 1, 2))), rng.sample(["photo.png"], rng.choice((0, 1))))
        roles = {"human": "user", "gpt": "assistant"}
        openai.append({"messages": [{"role": roles[t["from"]], "content": t["value"]} for t in row["conversations"]],
                       "videos": row["videos"], "images": row.get("images", [])})
    mixed = []
    for i in range(12):
        row = _row(rng, rng.sample(names[:6], 1) if i % 6 in (2, 3) else [], ["photo.png"] if i % 6 == 4 else [])
        row.setdefault("images", [])
        row["audios"] = []
        row.setdefault("system", "")
        if i % 6 == 0:
            row["conversations"][0]["value"] += " <audio>"  # a placeholder with no audio
        elif i % 6 == 1:
            row["audios"] = ["sounds/missing.wav"]  # an audio: no modelled template takes one
            row["conversations"][0]["value"] = "<audio>" + row["conversations"][0]["value"]
        elif i % 6 == 3:
            row["conversations"][-2]["value"] += "<video>"  # a <video> too many
        elif i % 6 == 5:
            row["conversations"][0]["value"] += " what is <video> here?"  # a placeholder with no video
        mixed.append(row)
    # ranking rows (stage dpo): a one-turn prompt with the videos, chosen and rejected answers; the collator batches
    # both sequences with the videos, so a cut through the video span in either crashes
    pref = [{"conversations": row["conversations"][:1], "videos": row["videos"], "images": row.get("images", []),
             "chosen": {"from": "gpt", "value": _text(rng, 1, 60)}, "rejected": {"from": "gpt", "value": _text(rng, 1, 9)}}
            for row in good[:12]]
    (data / "vpref.json").write_text(json.dumps(pref, indent=1))
    (data / "voa.json").write_text(json.dumps(openai, indent=1))
    (data / "vmix.json").write_text(json.dumps(mixed, indent=1))
    columns = {"messages": "conversations", "images": "images", "videos": "videos", "system": "system"}
    (data / "dataset_info.json").write_text(json.dumps({
        "vid": {"file_name": "vid.json", "formatting": "sharegpt", "columns": columns},
        "vbad": {"file_name": "vbad.json", "formatting": "sharegpt", "columns": columns},
        "voa": {"file_name": "voa.json", "formatting": "openai",
                "columns": {"messages": "messages", "images": "images", "videos": "videos"},
                "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                         "assistant_tag": "assistant", "system_tag": "system"}},
        "vmix": {"file_name": "vmix.json", "formatting": "sharegpt", "columns": {**columns, "audios": "audios"}},
        "vpref": {"file_name": "vpref.json", "formatting": "sharegpt", "ranking": True,
                  "columns": {"messages": "conversations", "images": "images", "videos": "videos",
                              "chosen": "chosen", "rejected": "rejected"}},
    }, indent=1))
    q2 = {"model_name_or_path": str(checkpoints["qwen2_vl"]), "template": "qwen2_vl"}
    configs: dict[str, dict[str, Any]] = {
        # LLaMA-Factory's defaults: cutoff_len 2048, video_fps 2, video_maxlen 128, 256*256 frames
        "v-defaults": {**q2, "dataset": "vid"},
        "v-tight": {**q2, "dataset": "vid", "cutoff_len": 320, "video_max_pixels": 16_384},
        "v-budget": {**q2, "dataset": "vid", "cutoff_len": 900, "video_fps": 1.0, "video_maxlen": 8,
                     "video_max_pixels": 200_000, "video_min_pixels": 50_000, "mask_history": True},
        "v-fast": {**q2, "dataset": "vid", "cutoff_len": 1200, "video_fps": 5.0, "video_maxlen": 64,
                   "train_on_prompt": True},
        "v-bad": {**q2, "dataset": "vbad"},
        "v25": {"model_name_or_path": str(checkpoints["qwen2_5_vl"]), "template": "qwen2_vl", "dataset": "vid",
                "cutoff_len": 700},
        # Qwen3VLPlugin: frame groups with timestamps, the first video's group count for every video, the timestamps
        # of video_metadata[message index]
        "v3": {"model_name_or_path": str(checkpoints["qwen3_vl"]), "template": "qwen3_vl_nothink", "dataset": "vid"},
        "v3-think": {"model_name_or_path": str(checkpoints["qwen3_vl_think"]), "template": "qwen3_vl",
                     "dataset": "vid", "cutoff_len": 600, "video_fps": 1.0, "video_max_pixels": 40_000},
        "v-openai": {**q2, "dataset": "voa", "cutoff_len": 900},
        "v-mix": {**q2, "dataset": "vmix"},
        "v-dpo": {**q2, "stage": "dpo", "dataset": "vpref", "cutoff_len": 1500},
        "v-dpo-tight": {**q2, "stage": "dpo", "dataset": "vpref", "cutoff_len": 300, "video_max_pixels": 16_384},
        # LlavaPlugin has no video token: any video stops the run, as any audio does under every template here
        "v-mix-llava": {"model_name_or_path": str(checkpoints["llava"]), "template": "llava", "dataset": "vmix"},
    }
    return write_configs(root, data, configs)


@pytest.fixture(scope="module")
def proof(tmp_path_factory: pytest.TempPathFactory, llamafactory_python: Path,
          qwen3_vl_think_checkpoint: Path) -> dict[str, Any]:
    from llava_checkpoint import llava_checkpoint
    from vlmcheck.demo.checkpoints import qwen_checkpoint

    root = tmp_path_factory.mktemp("lf_videos")
    configs = write_video_corpus(root, {"qwen2_vl": qwen_checkpoint("qwen2_vl"), "llava": llava_checkpoint(),
                                        "qwen2_5_vl": qwen_checkpoint("qwen2_5_vl"),
                                        "qwen3_vl": qwen_checkpoint("qwen3_vl"),
                                        "qwen3_vl_think": qwen3_vl_think_checkpoint}, seed=7)
    data = root / "data"
    # a tiny random Qwen2-VL model runs forward on cut, frame-mismatched and whole samples through the collator
    oracle = run_oracle(llamafactory_python, configs, cwd=data, forward=2)
    return {"oracle": oracle, "mine": check_configs(configs, data)}


def _compare_videos(row: dict[str, Any], record: dict[str, Any]) -> list[str]:
    where = f"{row['dataset']}[{row['row']}]"
    if not row["kept"] or row["error"] or "video_tokens" not in row:
        return []
    frame = record["framework"]
    pairs = {
        # the runs of video tokens in input_ids: one a video (Qwen2-VL), one a frame group (Qwen3-VL)
        "video token runs": (row["video_tokens"], [n for runs in frame["video_runs"] for n in runs]
                             if "video_runs" in frame else record.get("video_tokens")),
        "tokens per video": (sum(row["video_tokens"]), sum(record.get("video_tokens") or [])),
        "features per video": (row["video_features"], frame.get("video_features")),
        "video tokens left": (row["video_tokens_left"], sum(frame.get("kept_video_tokens") or [])),
    }
    return [f"{where}: {what}: LLaMA-Factory {a}, vlmcheck {b}" for what, (a, b) in pairs.items() if a != b]


def test_every_video_sample_is_judged_as_llamafactory_prepares_it(proof: dict[str, Any]) -> None:
    found, compared = mismatches(proof, lambda row, record: _compare(row, record) + _compare_videos(row, record))
    assert compared >= 100
    assert not found, f"{len(found)} mismatches in {compared} samples:\n" + "\n".join(found[:25])


def test_the_video_corpus_reaches_every_case(proof: dict[str, Any]) -> None:
    """LLaMA-Factory itself cuts through videos, keeps them whole, raises on broken rows, and writes more tokens
    than features for the fragmented MP4 (vlmcheck's VC116)."""
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for name, result in proof["oracle"].items():
        for row, record in zip(result["rows"], proof["mine"][name]):
            if row["error"]:
                outcomes["raises"] += 1
                errors[row["error"]] += 1
                continue
            if name.startswith("v3") and "VC116" in record["findings"] and len(record["video_tokens"]) > 1:
                outcomes["qwen3 first video's groups"] += 1
            if "video_tokens" not in row:
                continue
            if sum(row["video_tokens"]) != sum(row["video_features"]) or (
                    "video_runs" not in record["framework"] and row["video_tokens"] != row["video_features"]):
                outcomes["frames mismatch"] += 1
                assert "VC116" in record["findings"], (name, row, record)
            elif row["video_tokens_left"] < sum(row["video_features"]):
                outcomes["video cut"] += 1
                assert "VC205" in record["findings"], (name, row, record)
            else:
                outcomes["whole"] += 1
    assert outcomes["frames mismatch"] >= 3 and outcomes["video cut"] >= 5, outcomes
    assert outcomes["qwen3 first video's groups"] >= 2, outcomes
    # LLaMA-Factory's own errors: a <video> too many, a missing file, a file that is not a video (vbad); Qwen3-VL's
    # timestamps read by message index; transformers 5.6's Qwen3-VL video resize refusing a side under 32 px
    for fragment in ("does not match the number of <video>", "No such file", "IndexError", "must be larger than factor",
                     "does not match the number of <audio>", "does not support audio input",
                     "does not support video input"):
        assert any(fragment in e for e in errors), (fragment, errors)
    assert outcomes["whole"] >= 30 and outcomes["raises"] >= 6, outcomes


def test_a_preference_pair_cut_through_its_video_crashes(proof: dict[str, Any]) -> None:
    """stage dpo: the pairwise collator batches the chosen and the rejected sequence, each with the row's videos; a
    cut through the video span in either leaves fewer video tokens than features (LLaMA-Factory's own sequences),
    and vlmcheck says VC205, crash."""
    cut = [(row, record) for name in ("v-dpo", "v-dpo-tight")
           for row, record in zip(proof["oracle"][name]["rows"], proof["mine"][name])
           if row["kept"] and not row["error"] and row.get("video_features")
           and row["video_tokens_left"] < sum(row["video_features"])]
    assert cut, "no pair is cut through its video"
    assert all(row["crash"] and "VC205" in record["findings"] for row, record in cut), cut


# what the model raises first, by case (transformers 5.6): the M-RoPE position step's shape mismatch (a cut video, a
# fragmented MP4 under Qwen2-VL), Qwen3-VL's own features check (the first video's frame-group count), and its
# position step running out of video grids (StopIteration: a fragmented MP4 under Qwen3-VL)
RAISES = ("shape mismatch", "Video features and video tokens do not match", "StopIteration")


def test_a_tiny_real_model_crashes_on_the_crash_verdicts_only(proof: dict[str, Any]) -> None:
    """LLaMA-Factory's collator (its video processor's real __call__, pixel values zeros) and a random-weight model
    of the checkpoint's type: every sample vlmcheck calls a crash (a cut video, a fragmented MP4) raises, every whole
    one runs. (With transformers 5.6 the first to raise is the M-RoPE position step, "shape mismatch: value tensor
    of shape [3, N] cannot be broadcast to indexing result of shape [3, M]", before the features check.)"""
    ran = verdicts_in_forward(proof, RAISES)
    assert ran["crash"] >= 4 and ran["whole"] >= 4, ran


def test_the_frame_indices_are_numpys() -> None:
    """LLaMA-Factory's indices are ``np.linspace(0, frames - 1, n).astype(np.int32)``; Qwen3-VL's timestamps read
    them, so every index must be numpy's."""
    import numpy as np

    from vlmcheck.frameworks.llamafactory import _linspace_int

    for stop in range(0, 400, 7):
        for num in range(1, min(stop + 1, 140) + 1):
            assert _linspace_int(stop, num) == np.linspace(0, stop, num).astype(np.int32).tolist(), (stop, num)


def test_hostile_video_settings_are_bounded(tmp_path: Path) -> None:
    """A huge video_maxlen or video_fps, or a header declaring billions of frames, is a finding for the row, in
    bounded time and memory, never a hang, an overflow or a silent count."""
    from vlmcheck.data.videos import VideoInfo, VideoProblem
    from vlmcheck.frameworks import llamafactory as lf

    def config(**values: Any) -> lf.Config:
        raw = {"template": "qwen2_vl", "model_name_or_path": "m", "dataset": "d", **values}
        return lf.read_config(raw, path=tmp_path / "train.yaml")

    normal = VideoInfo(64, 48, 60, 25.0, 2.4)
    # 2.4 s at 2 fps: floor(4.8) = 4 frames, 59 / 3 = 19.67 apart, truncated
    assert lf.sampled_frames(normal, config()) == ([0, 19, 39, 59], 4)
    hostile = config(video_maxlen=10**12, video_fps=1e308)
    for info in (VideoInfo(64, 48, 4 * 10**9, 30.0, 1.4e8), VideoInfo(64, 48, 60, 25.0, 2.4, indexed_frames=0)):
        with pytest.raises(VideoProblem) as problem:
            lf.sampled_frames(info, hostile)
        assert problem.value.code == "VC114"
    assert lf.sampled_frames(normal, config(video_fps=1e308)) == (lf._linspace_int(59, 60), 60)
