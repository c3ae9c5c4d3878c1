"""LLaVA's own preprocess is the oracle: every conversation x tokenizer setup x --version of
tests/assets/llava_golden (produced by running haotian-liu/LLaVA's train.py unmodified, see its README) must come
out of vlmcheck with the same ids, the same labels, the same "tokenization mismatch" numbers, and a refusal where
LLaVA raises; and check_template must give the same verdict and numbers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from llama_vocab import llama2_checkpoint
from vlmcheck.frameworks import llava
from vlmcheck.templates import check_template

ASSETS = Path(__file__).parent / "assets" / "llava_golden"
ROWS: list[dict[str, Any]] = json.loads((ASSETS / "conversations.json").read_text(encoding="utf-8"))
SETUPS: list[dict[str, Any]] = json.loads((ASSETS / "setups.json").read_text(encoding="utf-8"))
GOLDEN = {(g["setup"], g["version"]): g["cases"]
          for g in map(json.loads, (ASSETS / "golden.jsonl").read_text(encoding="utf-8").splitlines())}
VERSIONS = sorted({v for _, v in GOLDEN})


def _sha(value: object) -> str:
    return hashlib.sha1(json.dumps(value).encode() if not isinstance(value, str) else value.encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llava-tokenizers")
    out = {}
    for s in SETUPS:
        build = dict(s["build"])
        build["added"] = tuple(build.get("added", ()))
        out[s["name"]] = llama2_checkpoint(root / s["name"], **build)
    return out


def test_golden_covers_every_version_setup_and_raise() -> None:
    assert len(GOLDEN) == len(SETUPS) * len(VERSIONS) and set(llava.VERSIONS) <= set(VERSIONS)
    assert any(v not in llava.VERSIONS for v in VERSIONS)  # an unregistered name: the vicuna_v1 fallback
    where = {c["where"].split(":")[0] for cases in GOLDEN.values() for c in cases if isinstance(c, dict)}
    assert {"preprocess_plain", "preprocess_v1", "preprocess_mpt", "preprocess_llama_2", "get_prompt",
            "load"} <= where
    masked = sum(1 for cases in GOLDEN.values() for c in cases if isinstance(c, list) and c[2])
    trains = sum(1 for cases in GOLDEN.values() for c in cases if isinstance(c, list) and not c[2] and c[1])
    assert masked > 1000 and trains > 3000


@pytest.mark.parametrize("setup", SETUPS, ids=[s["name"] for s in SETUPS])
def test_simulation_gives_llavas_ids_labels_and_numbers(setup: dict[str, Any], folders: dict[str, Path]) -> None:
    wrong = []
    for version in VERSIONS:
        try:
            tok = llava.load_tokenizer(folders[setup["name"]], version=version,
                                       model_max_length=setup["model_max_length"],
                                       model_name_or_path=setup["model_name_or_path"] or str(folders[setup["name"]]),
                                       mm_use_im_start_end=setup["mm_use_im_start_end"])
        except llava.Refused:
            tok = None
        for row, want in zip(ROWS, GOLDEN[(setup["name"], version)]):
            if tok is None:
                got: object = "refused"
            else:
                run = llava.simulate(row, tokenizer=tok, version=version,
                                     mm_use_im_start_end=setup["mm_use_im_start_end"])
                got = "refused" if run.refused else [
                    len(run.input_ids), sum(run.supervised), list(run.mismatch) if run.mismatch else None,
                    _sha(run.input_ids), _sha("".join("1" if s else "0" for s in run.supervised))]
            if got != ("refused" if isinstance(want, dict) else want):
                wrong.append((version, row["id"], got, want))
    assert not wrong, f"{len(wrong)} cases differ from LLaVA, first: {wrong[:3]}"


@pytest.mark.parametrize("setup", [s for s in SETUPS if s["name"] in ("v15_legacy_false", "yi34b_style",
                                                                        "fast_generic", "add_eos_short")],
                         ids=lambda s: s["name"])
def test_check_template_verdicts_and_numbers_match_llava(setup: dict[str, Any], folders: dict[str, Path]) -> None:
    report = check_template(ROWS, tokenizer=folders[setup["name"]], template=VERSIONS,
                            max_length=setup["model_max_length"], mm_use_im_start_end=setup["mm_use_im_start_end"],
                            model_name_or_path=setup["model_name_or_path"])
    for v in report.verdicts:
        want = GOLDEN[(setup["name"], v.framework)][v.index]
        if isinstance(want, dict):
            assert v.verdict == "refused" and v.findings[0].code == "VT007", (v.framework, v.id)
            # the oracle wrote f"{type(e).__name__}: {e}": a bare assert reads "AssertionError: "
            assert v.findings[0].data["error"] == want["refused"].rstrip(": "), (v.framework, v.id)
            fn = want["where"].split(":")[0]
            assert fn in v.findings[0].data["where"] or fn == "load", (v.findings[0].data["where"], want["where"])
        elif want[2]:
            f = v.findings[0]
            assert (v.verdict, f.code, [f.data["cur_len"], f.data["total_len"]]) == ("masked", "VT001", want[2])
            assert v.warning == f"WARNING: tokenization mismatch: {want[2][0]} vs. {want[2][1]}. (ignored)"
        else:
            assert v.verdict != "refused" and v.supervised_framework == want[1], (v.framework, v.id)
            assert (v.verdict == "masked") == (want[1] == 0)
