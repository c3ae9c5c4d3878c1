"""``--processor-option KEY=VALUE`` / ``processor_options=``: call-time processor options reach the family.

Gemma 3's pan-and-scan is off unless the processor call turns it on (``Gemma3Processor`` passes its
own defaults on every call, whatever preprocessor_config.json says). The CLI option must count what
``processor(..., do_pan_and_scan=True)`` produces, and an option the family does not read must be a
usage error, never silently ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from gemma3_checkpoint import gemma3_checkpoint, gemma3_processor
from vlmcheck import scan
from vlmcheck.cli import main
from vlmcheck.errors import UsageError
from vlmcheck.families.base import Overrides
from vlmcheck.model import load_model

SOFT_TOKEN_ID = 262144  # <image_soft_token>, the real Gemma 3 id


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("options")
    Image.new("RGB", (1500, 400), (10, 120, 200)).save(folder / "wide.png")  # aspect 3.75: crops when on
    row = {"id": "wide", "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A blue banner."}]},
    ], "images": ["wide.png"]}
    (folder / "data.jsonl").write_text(json.dumps(row) + "\n")
    return folder


def _processor_soft_tokens(data: Path, **call: object) -> int:
    from transformers.image_utils import load_image

    processor = gemma3_processor(gemma3_checkpoint())
    row = json.loads((data / "data.jsonl").read_text())
    text = processor.apply_chat_template(row["messages"], tokenize=False)
    ids = processor(text=[text], images=[[load_image(str(data / "wide.png"))]], add_special_tokens=False,
                    **call)["input_ids"][0]
    return sum(1 for t in ids if t == SOFT_TOKEN_ID)


def test_cli_option_counts_what_the_processor_call_produces(data: Path, tmp_path: Path) -> None:
    out_on, out_off = tmp_path / "on.jsonl", tmp_path / "off.jsonl"
    for out, extra in ((out_on, ["--processor-option", "do_pan_and_scan=true"]), (out_off, [])):
        result = CliRunner().invoke(main, ["scan", str(data / "data.jsonl"), "--model", str(gemma3_checkpoint()),
                                           "-o", str(out), "-q", *extra])
        assert result.exit_code == 0, result.output
    on = json.loads(out_on.read_text())["image_tokens"]
    off = json.loads(out_off.read_text())["image_tokens"]
    assert on == [_processor_soft_tokens(data, do_pan_and_scan=True)]
    assert off == [_processor_soft_tokens(data)]
    assert on[0] > off[0]  # the crops are really there: the option was not dropped on the way


def test_library_twin(data: Path) -> None:
    on = scan(data / "data.jsonl", model=gemma3_checkpoint(), processor_options={"do_pan_and_scan": True})
    cli = CliRunner().invoke(main, ["scan", str(data / "data.jsonl"), "--model", str(gemma3_checkpoint()),
                                    "--processor-option", "do_pan_and_scan=true", "--json", str(data / "r.json"),
                                    "-q"])
    assert cli.exit_code == 0
    assert json.loads((data / "r.json").read_text())["summary"]["tokens"] == on.to_dict()["summary"]["tokens"]


def test_an_option_the_family_does_not_read_is_a_usage_error(data: Path) -> None:
    result = CliRunner().invoke(main, ["scan", str(data / "data.jsonl"), "--model", str(gemma3_checkpoint()),
                                       "--processor-option", "do_pan_and_scna=true"])
    assert result.exit_code == 2
    assert "gemma3 has no processor option do_pan_and_scna; it reads do_pan_and_scan," in result.output


def test_malformed_option_and_loaded_spec_are_usage_errors(data: Path) -> None:
    result = CliRunner().invoke(main, ["scan", str(data / "data.jsonl"), "--model", str(gemma3_checkpoint()),
                                       "--processor-option", "do_pan_and_scan"])
    assert result.exit_code == 2
    assert "'do_pan_and_scan' is not KEY=VALUE" in result.output
    with pytest.raises(UsageError, match="processor_options cannot change a loaded ModelSpec"):
        scan(data / "data.jsonl", model=load_model(gemma3_checkpoint()), processor_options={"do_pan_and_scan": True})
    with pytest.raises(UsageError, match="with exact=True"):
        scan(data / "data.jsonl", model=gemma3_checkpoint(), exact=True, processor_options={"do_pan_and_scan": True})


@pytest.mark.parametrize("value", ["False", "false", "0", "FALSE"])
def test_a_false_flag_spelt_any_usual_way_is_off(data: Path, value: str) -> None:
    # `do_pan_and_scan=False` (Python's spelling) is not JSON, so it arrives as the string "False";
    # bool("False") is True, which turned pan-and-scan on for a user asking for it off.
    on = scan(data / "data.jsonl", model=gemma3_checkpoint(), processor_options={"do_pan_and_scan": True})
    off = scan(data / "data.jsonl", model=gemma3_checkpoint(), processor_options={"do_pan_and_scan": value})
    default = scan(data / "data.jsonl", model=gemma3_checkpoint())
    assert off.to_dict()["summary"]["tokens"] == default.to_dict()["summary"]["tokens"]
    assert off.to_dict()["summary"]["tokens"] != on.to_dict()["summary"]["tokens"]


@pytest.mark.parametrize(("key", "value"), [("do_pan_and_scan", "yes please"), ("do_pan_and_scan", 2),
                                            ("pan_and_scan_max_num_crops", "abc"),
                                            ("pan_and_scan_min_ratio_to_activate", [1])])
def test_an_option_value_of_the_wrong_kind_is_a_usage_error(data: Path, key: str, value: object) -> None:
    with pytest.raises(UsageError, match=key):
        load_model(gemma3_checkpoint(), overrides=Overrides(extra={key: value}))
    result = CliRunner().invoke(main, ["scan", str(data / "data.jsonl"), "--model", str(gemma3_checkpoint()),
                                       "--processor-option", f"{key}={json.dumps(value)}"])
    assert result.exit_code == 2, result.output
    assert key in result.output


@pytest.mark.parametrize(("model", "options"), [
    ("internvl", {"crop_to_patches": "False"}), ("internvl", {"max_patches": "many"}),
    ("onevision", {"images_nested": "no"}), ("qwen2_vl", {"do_sample_frames": "maybe"}),
    ("qwen2_vl", {"fps": "fast"}), ("qwen2_vl", {"video_rotation": "sideways"}),
])
def test_other_families_check_option_values_too(model: str, options: dict[str, object]) -> None:
    if model == "internvl":
        from internvl_checkpoint import internvl_checkpoint as build
    elif model == "onevision":
        from onevision_checkpoint import onevision_checkpoint as build
    else:
        from vlmcheck.demo.checkpoints import qwen_checkpoint

        def build() -> Path:
            return qwen_checkpoint("qwen2_vl")
    (key, value), = options.items()
    if value == "False":  # a spelling of false: accepted, and means off
        spec = load_model(build(), overrides=Overrides(extra=options))
        assert spec.settings.crop_to_patches is False
        return
    with pytest.raises(UsageError, match=key):
        load_model(build(), overrides=Overrides(extra=options))
