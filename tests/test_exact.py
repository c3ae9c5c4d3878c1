"""``--exact``: the checkpoint's own transformers processor counts every sample.

The processor is transformers' real ``Qwen2VLProcessor`` loaded by ``AutoProcessor`` from the
offline Qwen2-VL checkpoint (no torchvision here: vlmcheck builds it without its video processor).
An exact scan must agree with the arithmetic scan, sample by sample and finding by finding; a
checkpoint whose model_type vlmcheck does not know is an error without ``--exact`` and scans with it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import vlmcheck
from builders import image, write_jsonl
from vlmcheck.cli import main
from vlmcheck.demo.run import DATA
from vlmcheck.errors import ModelError, UnknownFamilyError, UsageError
from vlmcheck.exact import ExactScanner, _Setup, _without_video
from vlmcheck.families import Overrides, known_families
from vlmcheck.scan import SampleResult, ScanOptions

# Demo rows the processor cannot take whole: vlmcheck still counts them, the processor raises.
REFUSED = {"tag-without-image", "banner"}  # VC002 (two tags, one image), VC107 (aspect ratio 300)
QA = [{"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "A square."}]


def scan(dataset: Path, model: Path, out: Path, **options: Any) -> tuple[vlmcheck.Report, list[dict[str, Any]]]:
    report = vlmcheck.scan(dataset, model=model, output=out, **options)
    return report, [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def findings(report: vlmcheck.Report) -> list[tuple[Any, ...]]:
    return sorted((f.index, f.code, f.message, f.fix, json.dumps(f.data, sort_keys=True)) for f in report.findings)


def demo_rows(tmp_path: Path, *, without: set[str], times: int = 1) -> Path:
    rows = [line for line in DATA.read_text(encoding="utf-8").splitlines()
            if not any(f'"id": "{name}"' in line for name in without)]
    path = tmp_path / "demo.jsonl"
    path.write_text("\n".join(rows * times) + "\n", encoding="utf-8")
    return path


def renamed(checkpoint: Path, dest: Path, model_type: str = "acme_vl") -> Path:
    """A copy of the checkpoint with a model_type neither vlmcheck nor transformers knows; its
    preprocessor_config.json names the processor class (as a fork's would)."""
    shutil.copytree(checkpoint, dest)
    config = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**config, "model_type": model_type}, indent=2))
    return dest


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory, qwen2_vl_checkpoint: Path) -> Path:
    """One renamed checkpoint for the module: its processor is built once per process."""
    return renamed(qwen2_vl_checkpoint, tmp_path_factory.mktemp("models") / "acme")


def test_exact_matches_the_arithmetic_scan(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    # the demo: cut images, one 12 MP photo, unreadable / missing / truncated / outside-root images,
    # overlong prompt and answer, EXIF rotation, a two-turn sample, malformed rows
    arithmetic, expected = scan(DATA, qwen2_vl_checkpoint, tmp_path / "a.jsonl", max_length=4096)
    exact, got = scan(DATA, qwen2_vl_checkpoint, tmp_path / "e.jsonl", max_length=4096, exact=True)
    assert findings(exact) == findings(arithmetic)
    assert {"VC201", "VC202", "VC203", "VC101", "VC102", "VC103", "VC001"} <= set(exact.counts)
    assert len(got) == len(expected) == 22
    for e, g in zip(expected, got):
        if e["id"] in REFUSED:
            assert g["tokens"] is None and g["findings"] == e["findings"]
        else:
            assert g == e
    banner = next(r for r in got if r["id"] == "banner")
    assert banner["image_tokens"] == [None]  # the processor refuses the image itself
    settings = exact.summary["settings"]
    assert settings == {"processor_class": "Qwen2VLProcessor", "min_pixels": 3136, "max_pixels": 12845056,
                        "pre_min_pixels": None, "pre_max_pixels": None, "resize": "processor"}
    assert exact.summary["recommended_max_pixels"]["100%"] == arithmetic.summary["recommended_max_pixels"]["100%"]


@pytest.mark.parametrize("truncation", ["llamafactory", "left"])
def test_exact_matches_under_other_truncations(tmp_path: Path, qwen2_vl_checkpoint: Path, truncation: str) -> None:
    data = demo_rows(tmp_path, without={"camera-12mp", "screenshot-cut"})
    options = {"max_length": 1024, "truncation": truncation, "image_root": DATA.parent}
    arithmetic, expected = scan(data, qwen2_vl_checkpoint, tmp_path / "a.jsonl", **options)
    exact, got = scan(data, qwen2_vl_checkpoint, tmp_path / "e.jsonl", exact=True, **options)
    assert findings(exact) == findings(arithmetic)
    assert exact.counts.get("VC201")
    assert [r for r in got if r["id"] not in REFUSED] == [r for r in expected if r["id"] not in REFUSED]


@pytest.mark.parametrize("resize", ["processor", "prescale"])
def test_pixel_budget(tmp_path: Path, qwen2_vl_checkpoint: Path, resize: str) -> None:
    rows = []
    for k, (w, h) in enumerate([(1000, 700), (640, 480), (333, 1500), (56, 56)]):
        image(tmp_path / f"{k}.png", w, h)
        rows.append({"id": f"s{k}", "messages": QA, "images": [f"{k}.png"]})
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    options = {"max_length": 200, "max_pixels": 200_704, "min_pixels": 6272, "resize": resize}
    arithmetic, expected = scan(data, qwen2_vl_checkpoint, tmp_path / "a.jsonl", **options)
    exact, got = scan(data, qwen2_vl_checkpoint, tmp_path / "e.jsonl", exact=True, **options)
    assert got == expected
    assert findings(exact) == findings(arithmetic)
    assert exact.counts == arithmetic.counts and exact.counts["VC201"]
    assert got[0]["image_tokens"][0] < 300  # 1000 x 700 is 900 tokens without the budget


def test_a_second_family(tmp_path: Path) -> None:
    """LLaVA-1.5 (``LlavaProcessor``, CLIP image processor, Llama-2 tokenizer with BOS, no video processor)."""
    from llava_checkpoint import llava_checkpoint

    rows = []
    for k, (w, h) in enumerate([(640, 480), (20, 900)]):
        image(tmp_path / f"{k}.png", w, h)
        rows.append({"id": f"s{k}", "messages": QA, "images": [f"{k}.png"]})
    rows.append({"id": "two", "messages": [{"role": "user", "content": "<image><image>Compare."},
                                           {"role": "assistant", "content": "Same."}], "images": ["0.png", "1.png"]})
    rows.append({"id": "gone", "messages": QA, "images": ["gone.png"]})
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    arithmetic, expected = scan(data, llava_checkpoint(), tmp_path / "a.jsonl", max_length=1000)
    exact, got = scan(data, llava_checkpoint(), tmp_path / "e.jsonl", max_length=1000, exact=True)
    assert got == expected
    assert findings(exact) == findings(arithmetic)
    # the string turns are counted as typed text parts (as TRL routes them), so supervision is cut too
    assert exact.counts == {"VC201": 1, "VC202": 1, "VC101": 1} and exact.summary["settings"]["processor_class"] == "LlavaProcessor"


def test_two_workers_match_one(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    data = demo_rows(tmp_path, without={"camera-12mp", "screenshot-cut", "ok-frame", "multi-image-second-cut"},
                     times=4)  # 72 rows: three chunks of work
    options = {"max_length": 1024, "image_root": DATA.parent, "exact": True}
    one, rows = scan(data, qwen2_vl_checkpoint, tmp_path / "one.jsonl", **options)
    two, _ = scan(data, qwen2_vl_checkpoint, tmp_path / "two.jsonl", workers=2, **options)
    assert (tmp_path / "one.jsonl").read_text() == (tmp_path / "two.jsonl").read_text()
    assert len(rows) == 72
    s1, s2 = dict(one.summary), dict(two.summary)
    for key in ("seconds", "samples_per_second"):
        s1.pop(key), s2.pop(key)
    assert s1 == s2


def test_without_replacement_offsets(qwen2_vl_checkpoint: Path) -> None:
    """Processors with their own ``__call__`` return no ``text_replacement_offsets``: the layout is
    then read from the decoded ``input_ids``, and must be the same."""
    setup = _Setup(path=str(qwen2_vl_checkpoint), trust_remote_code=False, overrides=Overrides(),
                   chat_template=None, options=ScanOptions(max_length=4096), root=str(DATA.parent))
    scanner = ExactScanner(setup)
    checked = 0
    for line in DATA.read_text().splitlines()[:8]:
        conv = scanner._conversation(SampleResult(0, "x", None, [], None), json.loads(line))
        assert conv is not None
        images, _ = scanner._open_images(conv, [])
        text = scanner._render(conv)
        out = scanner._process(text, [im for im in images if im is not None])
        ids = [int(t) for t in out["input_ids"][0]]
        offsets = [(int(a), int(b)) for a, b in out["offset_mapping"][0]]
        replacements = out["text_replacement_offsets"][0]
        exact, known = scanner.layout(conv, text, ids, offsets, replacements, images)
        decoded, known_too = scanner.layout(conv, text, ids, None, None, images)
        assert known and known_too
        assert decoded == exact
        assert exact.supervised_tokens > 0 and exact.images
        checked += 1
    assert checked == 8


def test_image_only_processor_keeps_every_other_argument() -> None:
    """The processor built without torchvision is the same class minus its video processor: its own
    arguments (LLaVA-OneVision's num_image_tokens, vision_aspect_ratio, video_token) still reach it
    from processor_config.json, or its counts would silently change."""
    from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor

    image_only = _without_video(LlavaOnevisionProcessor)
    assert image_only.__name__ == "LlavaOnevisionProcessor" and image_only.__mro__[1] is LlavaOnevisionProcessor
    assert LlavaOnevisionProcessor.get_attributes() == ["image_processor", "tokenizer", "video_processor"]
    assert image_only.get_attributes() == ["image_processor", "tokenizer"]
    code = image_only.__init__.__code__
    assert code.co_varnames[:code.co_argcount] == (
        "self", "image_processor", "tokenizer", "num_image_tokens", "vision_feature_select_strategy",
        "chat_template", "image_token", "video_token", "vision_aspect_ratio")


def test_unknown_model_type(tmp_path: Path, qwen2_vl_checkpoint: Path, acme: Path) -> None:
    model = acme
    data = demo_rows(tmp_path, without={"camera-12mp", "screenshot-cut"})
    with pytest.raises(UnknownFamilyError) as error:
        vlmcheck.scan(data, model=model, max_length=1024, image_root=DATA.parent)
    assert "does not know how this family counts image tokens and will not guess" in str(error.value)
    assert "`vlmcheck scan --exact`" in str(error.value) and "--trust-remote-code" in str(error.value)

    options = {"max_length": 1024, "image_root": DATA.parent}
    arithmetic, expected = scan(data, qwen2_vl_checkpoint, tmp_path / "a.jsonl", **options)
    exact, got = scan(data, model, tmp_path / "e.jsonl", exact=True, **options)
    assert exact.summary["model_type"] == "acme_vl"
    assert exact.summary["settings"]["processor_class"] == "Qwen2VLProcessor"
    # no family module: no image-size rules (VC106, VC107) and no max_pixels fixes; every count the same
    family_only = {"VC106", "VC107"}
    for e, g in zip(expected, got):
        if e["id"] in REFUSED:
            continue
        assert {k: v for k, v in g.items() if k != "findings"} == {k: v for k, v in e.items() if k != "findings"}
        assert g["findings"] == [c for c in e["findings"] if c not in family_only]
    cut = [f for f in exact.findings if f.code == "VC201"]
    assert cut and all(f.fix.startswith("raise max_length to ") and "max_pixels" not in f.fix for f in cut)
    assert [f.data for f in cut] == [f.data for f in arithmetic.findings if f.code == "VC201"]


def test_remote_code_runs_only_when_trusted(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    model = renamed(qwen2_vl_checkpoint, tmp_path / "acme-remote")
    pre = json.loads((model / "preprocessor_config.json").read_text())
    pre.pop("processor_class")
    pre["auto_map"] = {"AutoProcessor": "processing_acme.AcmeProcessor"}
    (model / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    (model / "processing_acme.py").write_text(
        "from transformers import Qwen2VLProcessor\n\n\n"
        "class AcmeProcessor(Qwen2VLProcessor):\n"
        "    pass\n"
    )
    data = write_jsonl(tmp_path / "data.jsonl", [{"id": "a", "messages": QA, "images": ["a.png"]}])
    image(tmp_path / "a.png", 280, 224)  # 80 image tokens
    with pytest.raises(ModelError, match="is remote code .* pass --trust-remote-code"):
        vlmcheck.scan(data, model=model, exact=True)
    with pytest.raises(UsageError, match="only applies with exact=True"):
        vlmcheck.scan(data, model=qwen2_vl_checkpoint, trust_remote_code=True)
    report, rows = scan(data, model, tmp_path / "out.jsonl", exact=True, trust_remote_code=True)
    assert report.summary["settings"]["processor_class"] == "AcmeProcessor"
    assert rows == [{"index": 0, "id": "a", "tokens": 110, "image_tokens": [80], "supervised_tokens": 4,
                     "findings": []}]


def run(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def test_cli(tmp_path: Path, acme: Path) -> None:
    model = acme
    image(tmp_path / "a.png", 280, 224)  # 80 image tokens, 110 in all
    data = write_jsonl(tmp_path / "data.jsonl", [{"id": "a", "messages": QA, "images": ["a.png"]},
                                                 {"id": "gone", "messages": QA, "images": ["gone.png"]}])
    code, out = run("scan", data, "--model", model, "--max-length", "50")
    assert code == 2
    assert out.splitlines()[-1] == (
        "Error: vlmcheck has no module for model_type 'acme_vl', so it does not know how this family counts "
        "image tokens and will not guess. Known families: "
        + ", ".join(sorted(known_families()))
        + " (`vlmcheck families`). For an exact count, run the checkpoint's own processor: `vlmcheck scan "
        "--exact` (scan(..., exact=True); needs transformers), adding --trust-remote-code if its processor "
        "is remote code.")
    code, out = run("scan", data, "--model", model, "--trust-remote-code")
    assert code == 2 and "trust_remote_code only applies with exact=True (--exact)" in out

    code, out = run("scan", data, "--model", model, "--max-length", "50", "--exact")
    assert code == 1
    assert re.sub(r"\(\d+\.\d\d s, [\d,.]+ samples/s\)", "(T s, N samples/s)", out) == (
        f"vlmcheck scan: {data}: 2 samples, acme_vl at max_length=50 (right truncation)\n"
        "  processor: processor_class Qwen2VLProcessor; resize by processor\n"
        "\n"
        "Findings\n"
        "  VC101  error    image-missing                1  An image file does not exist\n"
        "  VC201  error    image-span-cut               1  Truncation cuts through an image's placeholder span\n"
        "  VC202  error    supervision-truncated        1  Truncation removes every supervised token\n"
        "\n"
        "First 3 of 3 findings\n"
        "  VC201 sample 0 (id 'a'): image 1 of 1 needs 80 tokens, only 35 survive truncation at max_length=50 "
        "(right); the sample is 110 tokens\n"
        "        fix: raise max_length to 110, or drop the sample\n"
        "  VC202 sample 0 (id 'a'): all 4 supervised tokens fall past the cut at max_length=50 "
        "(sample is 110 tokens)\n"
        "        fix: Raise the max length, shorten the prompt, or drop the sample.\n"
        f"  VC101 sample 1 (id 'gone'): image 1 of 1 (gone.png): file not found: {tmp_path / 'gone.png'}\n"
        "        fix: Fix the path, or pass --image-root with the folder the paths are relative to.\n"
        "\n"
        "Tokens per sample: min 110, median 110, p90 110, p99 110, max 110\n"
        "max_length that keeps samples whole: 100% -> 110, 99.9% -> 110, 99% -> 110\n"
        "1 sample(s) have no length: a row or image could not be read, or the processor refuses an image\n"
        "\n"
        "Result: 3 errors in 2 of 2 samples (T s, N samples/s)\n"
    )


def test_without_transformers_the_error_says_what_to_install(tmp_path: Path, qwen2_vl_checkpoint: Path) -> None:
    data = write_jsonl(tmp_path / "data.jsonl", [{"id": "a", "messages": QA, "images": ["a.png"]}])
    code = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'transformers':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from vlmcheck.cli import main\n"
        f"main(['scan', {str(data)!r}, '--model', {str(qwen2_vl_checkpoint)!r}, '--exact'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        "Error: --exact (the checkpoint's own processor) needs transformers: pip install 'vlmcheck[exact]'")


def test_exact_runs_the_video_checks_and_never_counts_a_video_sample_in_silence(tmp_path, qwen2_vl_checkpoint):
    """--exact cannot run a video processor (torchvision), so a sample with a video gets no length and VC114
    says why; the container checks the arithmetic scan makes (VC111-VC113) run all the same."""
    pytest.importorskip("av")
    from test_video_qwen import write_video

    write_video(tmp_path / "clip.mp4", 64, 48, 8, 16)
    half = (tmp_path / "clip.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(half[: len(half) // 3])
    qa = [{"role": "user", "content": "<video>What happens?"}, {"role": "assistant", "content": "Nothing."}]
    rows = [{"id": v, "messages": qa, "videos": [f"{v}.mp4"]} for v in ("clip", "gone", "cut")]
    data = write_jsonl(tmp_path / "v.jsonl", rows)
    arithmetic, plain = scan(data, qwen2_vl_checkpoint, tmp_path / "a.jsonl")
    exact, got = scan(data, qwen2_vl_checkpoint, tmp_path / "e.jsonl", exact=True)
    assert [r["tokens"] for r in got] == [None, None, None]
    assert all("VC114" in r["findings"] for r in got)
    # the container findings equal the arithmetic scan's
    assert [[c for c in r["findings"] if c != "VC114"] for r in got] == [r["findings"] for r in plain]
    assert plain[1]["findings"] == ["VC111"] and plain[2]["findings"] and plain[0]["findings"] == []
