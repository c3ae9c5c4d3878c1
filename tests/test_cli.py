"""`vlmcheck scan` and `vlmcheck demo`, run in-process with click's CliRunner: exact output, exit
codes (0 clean, 1 findings at or above --fail-on, 2 usage), and the files --json and --output write.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from builders import image, tokenizer, write_jsonl
from vlmcheck.cli import main
from vlmcheck.families import known_families

QA = [{"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "A square."}]


@pytest.fixture(autouse=True)
def shared_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI loads the model as usual; only the one-second read of tokenizer.json is shared."""
    scan_module = importlib.import_module("vlmcheck.scan")  # the module; `vlmcheck.scan` is the function
    real = scan_module.load_model

    def load_model(model, **kwargs):
        spec = real(model, **kwargs)
        spec.__dict__["tokenizer"] = tokenizer(Path(spec.path))
        return spec

    monkeypatch.setattr(scan_module, "load_model", load_model)


def run(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def timing(output: str) -> str:
    """The one line that changes from run to run."""
    return re.sub(r"\(\d+\.\d\d s, [\d,.]+ samples/s\)", "(T s, N samples/s)", output)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    image(tmp_path / "a.png", 280, 224)  # 80 tokens
    image(tmp_path / "icon.png", 20, 20)  # 4 tokens after upscaling; below 28 px: a warning
    write_jsonl(tmp_path / "clean.jsonl", [{"id": "a", "messages": QA, "images": ["a.png"]}] * 2)
    write_jsonl(tmp_path / "warn.jsonl", [{"id": "i", "messages": QA, "images": ["icon.png"]}])
    write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "messages": QA, "images": ["a.png"]},
                                         {"id": "m", "messages": QA, "images": ["gone.png"]}])
    return tmp_path


def test_clean_dataset_exits_0(folder: Path, qwen2_vl_checkpoint: Path) -> None:
    code, out = run("scan", folder / "clean.jsonl", "--model", qwen2_vl_checkpoint, "--max-length", "4096")
    assert code == 0
    assert timing(out) == (
        f"vlmcheck scan: {folder / 'clean.jsonl'}: 2 samples, qwen2_vl at max_length=4,096 (right truncation)\n"
        "  processor: patch_size 14, merge_size 2, min_pixels 3,136, max_pixels 12,845,056; resize by processor\n"
        "\n"
        "No findings.\n"
        "\n"
        "Tokens per sample: min 110, median 110, p90 110, p99 110, max 110\n"
        "max_length that keeps samples whole: 100% -> 110, 99.9% -> 110, 99% -> 110\n"
        "max_pixels that keeps samples whole at max_length=4,096: 100% -> 12,845,056, 99.9% -> 12,845,056, "
        "99% -> 12,845,056\n"
        "\n"
        "Result: clean, no findings in 2 samples (T s, N samples/s)\n"
    )


def test_findings_exit_1(folder: Path, qwen2_vl_checkpoint: Path) -> None:
    code, out = run("scan", folder / "bad.jsonl", "--model", qwen2_vl_checkpoint)
    assert code == 1
    assert timing(out) == (
        f"vlmcheck scan: {folder / 'bad.jsonl'}: 2 samples, qwen2_vl at no max_length\n"
        "  processor: patch_size 14, merge_size 2, min_pixels 3,136, max_pixels 12,845,056; resize by processor\n"
        "\n"
        "Findings\n"
        "  VC101  error    image-missing                1  An image file does not exist\n"
        "\n"
        "First 1 of 1 findings\n"
        f"  VC101 sample 1 (id 'm'): image 1 of 1 (gone.png): file not found: {folder / 'gone.png'}\n"
        "        fix: Fix the path, or pass --image-root with the folder the paths are relative to.\n"
        "\n"
        "Tokens per sample: min 110, median 110, p90 110, p99 110, max 110\n"
        "max_length that keeps samples whole: 100% -> 110, 99.9% -> 110, 99% -> 110\n"
        "1 sample(s) have no length: a row or image could not be read, or the processor refuses an image\n"
        "\n"
        "Result: 1 error in 1 of 2 samples (T s, N samples/s)\n"
    )


def test_fail_on_warning(folder: Path, qwen2_vl_checkpoint: Path) -> None:
    args = ("scan", folder / "warn.jsonl", "--model", qwen2_vl_checkpoint, "--quiet")
    assert run(*args) == (0, "")
    assert run(*args, "--fail-on", "warning") == (1, "")
    assert run("scan", folder / "clean.jsonl", "--model", qwen2_vl_checkpoint, "-q", "--fail-on", "info") == (0, "")


def test_unknown_model_type_is_a_usage_error(folder: Path) -> None:
    model = folder / "acme-vl"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "acme_vl"}))
    code, out = run("scan", folder / "clean.jsonl", "--model", model)
    assert code == 2
    assert out.endswith(
        "Error: vlmcheck has no module for model_type 'acme_vl', so it does not know how this family counts "
        f"image tokens and will not guess. Known families: {', '.join(sorted(known_families()))} "
        "(`vlmcheck families`). For an exact count, run the checkpoint's own processor: `vlmcheck scan --exact` "
        "(scan(..., exact=True); needs transformers), adding --trust-remote-code if its processor is remote "
        "code.\n")


def test_missing_dataset_and_model_are_usage_errors(folder: Path, qwen2_vl_checkpoint: Path) -> None:
    code, out = run("scan", folder / "nope.jsonl", "--model", qwen2_vl_checkpoint)
    assert (code, out.splitlines()[-1]) == (2, f"Error: dataset not found: {folder / 'nope.jsonl'}")
    code, out = run("scan", folder / "clean.jsonl", "--model", folder / "no-model")
    assert (code, out.splitlines()[-1]) == (
        2, f"Error: --model '{folder / 'no-model'}': no such folder, and not a Hugging Face model id (org/name)")
    code, out = run("scan", folder / "clean.jsonl")
    assert code == 2 and "Missing option '--model'" in out
    code, out = run("scan", folder / "clean.jsonl", "--model", qwen2_vl_checkpoint, "--truncation", "middle")
    assert code == 2 and "'middle' is not one of 'right', 'left', 'llamafactory', 'delete'" in out


def test_json_summary_and_output_records(folder: Path, qwen2_vl_checkpoint: Path) -> None:
    summary, records = folder / "out" / "summary.json", folder / "out" / "records.jsonl"
    code, _ = run("scan", folder / "bad.jsonl", "--model", qwen2_vl_checkpoint, "--max-length", "100",
                  "--json", summary, "--output", records, "-q")
    assert code == 1
    data = json.loads(summary.read_text())
    assert set(data) == {"summary", "findings"}
    s = data["summary"]
    assert {"dataset", "model", "model_type", "samples", "samples_with_findings", "counts", "severity",
            "max_length", "truncation", "settings", "images", "image_tokens", "tokens",
            "recommended_max_length", "recommended_max_pixels"} <= set(s)
    assert (s["samples"], s["counts"], s["max_length"], s["model_type"]) == (
        2, {"VC101": 1, "VC202": 1}, 100, "qwen2_vl")
    assert s["recommended_max_length"] == {"100%": 110, "99.9%": 110, "99%": 110}
    assert s["image_tokens"] == {"total": 80, "max": 80}
    assert [(f["code"], f["severity"], f["index"], f["id"]) for f in data["findings"]] == [
        ("VC202", "error", 0, "a"), ("VC101", "error", 1, "m")]
    assert set(data["findings"][0]) == {"code", "name", "severity", "index", "id", "message", "fix", "data"}
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    assert [{k: r[k] for k in ("index", "id", "tokens", "image_tokens", "findings")} for r in rows] == [
        {"index": 0, "id": "a", "tokens": 110, "image_tokens": [80], "findings": ["VC202"]},
        {"index": 1, "id": "m", "tokens": None, "image_tokens": [None], "findings": ["VC101"]},
    ]


def test_demo_judges_the_bundled_llamafactory_run() -> None:
    code, out = run("demo")
    assert code == 0
    assert out.startswith("$ vlmcheck check ") and "llamafactory" in out
    assert "what the run does: 2 crash, 1 dropped, 5 ok, 2 stops" in out
    assert re.findall(r"^  (VC\d{3})  ", out, flags=re.M) == ["VC002", "VC006", "VC101", "VC201"]


def test_demo_reports_every_kind_of_finding() -> None:
    code, out = run("demo", "--scan")
    assert code == 0
    assert out.startswith("$ vlmcheck scan ")
    listed = re.findall(r"^  (VC\d{3})  ", out, flags=re.M)
    assert listed == ["VC001", "VC002", "VC003", "VC101", "VC102", "VC103", "VC106", "VC107",
                      "VC201", "VC202", "VC203"]


def test_scanning_does_not_import_torch(tmp_path: Path) -> None:
    pytest.importorskip("torch")  # the check means something only where torch is installed
    code = (
        "import sys, vlmcheck\n"
        "from vlmcheck.demo.checkpoints import qwen_checkpoint\n"
        "from vlmcheck.demo.run import DATA\n"
        "report = vlmcheck.scan(DATA, model=qwen_checkpoint('qwen2_vl'), max_length=4096)\n"
        "assert report.counts['VC201'] == 3, report.counts\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"


def test_vlmcheck_scan_stays_the_function_after_its_module_is_imported() -> None:
    # The CLI imports `vlmcheck.scan` the module; `vlmcheck.scan(...)` must still be the function.
    code = (
        "from vlmcheck.scan import ScanOptions\n"
        "import vlmcheck\n"
        "print(vlmcheck.scan.__name__, vlmcheck.scan.__module__, callable(vlmcheck.lint))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "scan vlmcheck.scan True\n"


def test_json_summary_never_replaces_the_dataset(folder: Path, qwen2_vl_checkpoint: Path) -> None:
    data = folder / "clean.jsonl"
    before = data.read_bytes()
    for command in (["scan", data, "--model", qwen2_vl_checkpoint, "--max-length", "4096"],
                    ["repair", data, "--model", qwen2_vl_checkpoint, "--max-length", "4096", "--dry-run"]):
        code, out = run(*command, "--json", data)
        assert code == 2 and "--json would replace the dataset" in out
        assert data.read_bytes() == before
