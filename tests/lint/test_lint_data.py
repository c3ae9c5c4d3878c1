"""--data: the length rules against a real vlmcheck.scan of the bundled demo dataset (real images,
the offline Qwen2-VL checkpoint folder). The scan uses the config's own pixel cap."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmcheck.demo.checkpoints import qwen_checkpoint
from vlmcheck.demo.run import DATA
from vlmcheck.lint import lint
from vlmcheck.scan import scan

CONFIGS = Path(__file__).parent / "configs"


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return qwen_checkpoint("qwen2_vl")


def test_multi_image_cutoff_len_against_real_scan(checkpoint: Path) -> None:
    config = CONFIGS / "llamafactory_qwen2vl_multi_image.yaml"
    report = lint(config, data=DATA, model=checkpoint, device=None)
    (finding,) = [f for f in report.findings if f.code == "VL201"]
    # the same numbers a scan with LLaMA-Factory's semantics (its pre-scaling to image_max_pixels, no EXIF
    # rotation, its cut) gives at the config's image_max_pixels; the processor's own resize needs fewer
    need = scan(DATA, model=checkpoint, max_pixels=1003520, framework="llamafactory").summary["recommended_max_length"]
    bare = scan(DATA, model=checkpoint, max_pixels=1003520).summary["recommended_max_length"]
    assert bare["100%"] != need["100%"]
    assert finding.data["needed"] == need["100%"] > 1024
    assert finding.option == "cutoff_len" and f"`cutoff_len: {need['100%']}`" in finding.fix
    assert report.summary["data"]["recommended_max_length"] == need


def test_length_that_fits_the_data_is_clean(checkpoint: Path, tmp_path: Path) -> None:
    need = scan(DATA, model=checkpoint, max_pixels=589824, framework="llamafactory").summary["recommended_max_length"]["100%"]
    cfg = tmp_path / "lf.yaml"
    text = (CONFIGS / "llamafactory_clean.yaml").read_text().replace("cutoff_len: 4096", f"cutoff_len: {need}")
    cfg.write_text(text)
    assert "VL201" not in lint(cfg, data=DATA, model=checkpoint, device=None).counts
    cfg.write_text(text.replace(f"cutoff_len: {need}", f"cutoff_len: {need - 1}"))
    assert "VL201" in lint(cfg, data=DATA, model=checkpoint, device=None).counts


def test_model_folder_gives_family_for_pixel_rule(checkpoint: Path, tmp_path: Path) -> None:
    # a TRL config names no pixel cap: the checkpoint's preprocessor_config.json max_pixels is used
    cfg = tmp_path / "sft.yaml"
    cfg.write_text("output_dir: x\nmax_length: 2048\n")
    (finding,) = lint(cfg, model=checkpoint, device=None).findings
    assert finding.code == "VL202" and finding.data["max_pixels"] == 12845056
