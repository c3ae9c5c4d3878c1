"""One options object per scan: ``ScanOptions`` validates once, and the library and the CLI both take every field."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import vlmcheck
from vlmcheck.cli import main
from vlmcheck.errors import UsageError
from vlmcheck.options import ScanOptions

FIELDS = [f.name for f in dataclasses.fields(ScanOptions)]


@pytest.mark.parametrize("given, message", [
    ({"truncation": "middle"}, "truncation must be one of"),
    ({"resize": "squash"}, "resize must be one of"),
    ({"format": "csv"}, "format must be one of"),
    ({"max_length": 0}, "max_length must be positive"),
    ({"max_pixels": -1}, "max_pixels must be positive"),
    ({"confine": True, "allow_outside_root": True}, "contradict each other"),
    ({"exact": True, "processor_options": {"fps": 2}}, "processor_options apply to the arithmetic scan"),
    ({"exact": True, "shard": "0/2"}, "shard, resume and objects go with the arithmetic scan"),
    ({"exact": True, "resize": "qwen-vl-utils"}, "does not run qwen-vl-utils"),
    ({"trust_remote_code": True}, "only applies with exact=True"),
    ({"workers": 0}, "workers must be at least 1"),
    ({"resume": True}, "resume needs output"),
    ({"shard": "2/2"}, "shard 2/2"),
    ({"framework": "llamafactory", "truncation": "left"}, "contradicts framework"),
])
def test_every_misuse_is_refused_when_built(given: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ScanOptions(**given)  # type: ignore[arg-type]


def test_a_framework_fills_what_is_left_unset() -> None:
    bare = ScanOptions()
    assert (bare.truncation, bare.resize, bare.exif_rotated) == ("right", "processor", True)
    framed = ScanOptions(framework="llamafactory")
    assert framed.truncation == "llamafactory" and framed.resize == "prescale" and not framed.exif_rotated
    assert ScanOptions(framework="llamafactory", max_length=64).max_length == 64
    assert dataclasses.replace(framed) == framed  # validating again changes nothing
    assert ScanOptions(shard="1/4").shard == (1, 4)


def test_scan_takes_every_field_as_a_keyword() -> None:
    params = inspect.signature(vlmcheck.scan).parameters
    assert [name for name in params if name in FIELDS] == FIELDS
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_lenght'"):
        vlmcheck.scan("d.jsonl", model="m", max_lenght=4096)
    with pytest.raises(TypeError, match="not both"):
        vlmcheck.scan("d.jsonl", model="m", options=ScanOptions(), max_length=4096)


def test_repair_takes_its_scan_fields_as_keywords_or_one_options_object() -> None:
    from vlmcheck.repairing import SCAN_FIELDS

    params = inspect.signature(vlmcheck.repair).parameters
    # output is repair's own (the fixed dataset), not scan's records
    assert [name for name in params if name in FIELDS and name != "output"] == list(SCAN_FIELDS)
    assert params["max_length"].default is inspect.Parameter.empty  # required, as before
    assert {"output", "dry_run", "on_overlong", "pixel_cap_key", "hold", "options"} <= set(params)
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_lenght'"):
        vlmcheck.repair("d.jsonl", model="m", max_lenght=4096)
    with pytest.raises(TypeError, match="unexpected keyword argument 'workers'"):  # not a repair option
        vlmcheck.repair("d.jsonl", model="m", max_length=64, workers=2)
    with pytest.raises(TypeError, match="'max_length'"):
        vlmcheck.repair("d.jsonl", model="m")
    with pytest.raises(TypeError, match="not both"):
        vlmcheck.repair("d.jsonl", model="m", options=ScanOptions(max_length=64), max_length=64)
    with pytest.raises(UsageError, match="repair does not take workers"):
        vlmcheck.repair("d.jsonl", model="m", options=ScanOptions(max_length=64, workers=2))
    with pytest.raises(UsageError, match="repair needs max_length"):
        vlmcheck.repair("d.jsonl", model="m", options=ScanOptions())
    with pytest.raises(UsageError, match="max_length must be positive"):
        vlmcheck.repair("d.jsonl", model="m", max_length=0)


def test_every_field_is_a_flag_of_vlmcheck_scan() -> None:
    """Adding an option is a field and its flag: the flag's parameter is the field's name."""
    command = main.commands["scan"]
    names = {p.name for p in command.params}
    assert set(FIELDS) <= names, sorted(set(FIELDS) - names)
