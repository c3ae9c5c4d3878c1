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
