"""``vlmcheck check`` on ``swift sft`` launch scripts, proved against ms-swift's own template encode.

ms-swift 4.6 pins ``trl<1.0`` and ``datasets<4.8.5``, which clash with the test extras, so the test setup builds it
its own environment once and caches it under ``~/.cache/vlmcheck/oracles/swift-<hash>`` (torch kept at 2.13.0 by a
constraints file; qwen-vl-utils imports torchvision for videos only, so a stand-in module is put in place while it
is imported, in that environment only; ``AutoProcessor`` is pointed at transformers' Qwen2-VL processor built from
the test checkpoint's files, because no CPU torchvision exists for its video processor). There, ms-swift's own
``get_processor`` / ``get_template('qwen2_vl')`` encode every row in training mode, with ``MAX_PIXELS`` set in the
environment as ms-swift documents, and report per row: the total, each image's tokens (``image_grid_thw``), the
labels, and at a ``max_length`` for each ``truncation_strategy``: ``MaxLengthError`` (delete) or the kept tokens,
labels and image tokens (left, right).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from oracle_env import QWEN_IMAGES_PRELUDE
from PIL import Image
from swift_env import oracle_python

import vlmcheck

MAX_PIXELS = 200704  # 256 * 28 * 28
LIMITS = [120, 300]


ORACLE = QWEN_IMAGES_PRELUDE + textwrap.dedent('''

    def load(*args, **kwargs):  # transformers' own Qwen2-VL processor, without the torchvision video processor
        template = json.load(open(folder + "/chat_template.json"))["chat_template"]
        return ImageOnly(image_processor=Qwen2VLImageProcessorPil(**values),
                         tokenizer=AutoTokenizer.from_pretrained(folder), chat_template=template)

    transformers.AutoProcessor.from_pretrained = staticmethod(load)
    from swift.model import get_processor
    from swift.template import MaxLengthError, get_template

    processor = get_processor(folder, model_type=job["model_type"])
    merge = processor.image_processor.merge_size ** 2
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    from swift.dataset import load_dataset

    # the rows as ms-swift's load_dataset standardizes them (AutoPreprocessor), file by file, in order; a row its
    # preprocessor deletes is missing there (found by the id column every corpus row carries)
    rows = []
    for data in job["data"]:
        wanted = [json.loads(line)["id"] for line in open(data)]
        loaded, _ = load_dataset([data], split_dataset_ratio=0, remove_unused_columns=False, strict=False,
                                 load_from_cache_file=False)
        by_id = {r["id"]: {k: v for k, v in r.items() if v is not None} for r in loaded}
        rows += [by_id.get(i) for i in wanted]

    if job["max_pixels"]:
        # --max_pixels: the template's rescale_image resizes with torchvision's Resize((h, w)), which has no CPU
        # build here; a stand-in makes an image of exactly that size (the size is all the counts depend on)
        import types

        class Resize:
            def __init__(self, size):
                self.size = size

            def __call__(self, image):
                height, width = self.size
                return image.resize((width, height))

        tv, tvt = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")
        tvt.Resize, tv.transforms = Resize, tvt
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tvt})

    def encode(row, max_length, strategy):
        if row is None:
            return {"verdict": "deleted"}
        template = get_template(processor, max_length=max_length, truncation_strategy=strategy,
                                template_type=job["template"], max_pixels=job["max_pixels"])
        template.set_mode("train")
        try:
            enc = template.encode(json.loads(json.dumps(row)))
        except MaxLengthError:
            return {"verdict": "dropped"}
        except Exception as e:
            return {"verdict": "error", "error": repr(e)[:200]}
        grid = enc.get("image_grid_thw")
        return {"verdict": "ok", "tokens": len(enc["input_ids"]),
                "labels": sum(1 for t in enc["labels"] if t != -100),
                "pads": enc["input_ids"].count(pad) if isinstance(enc["input_ids"], list) else None,
                "images": [int(g.prod()) // merge for g in grid] if grid is not None else []}

    out = {"whole": [encode(r, None, "raise") for r in rows], "cut": {}}
    for limit in job["limits"]:
        for strategy in ("raise", "left", "right"):
            out["cut"][f"{limit}-{strategy}"] = [encode(r, limit, strategy) for r in rows]
    # --strict true: the training dataset (LazyLLMDataset, ms-swift's lazy tokenization of a multimodal model)
    # fetching each loaded row at the first limit under delete: what raises out of it stops the run
    from swift.dataset.utils import LazyLLMDataset

    template = get_template(processor, max_length=job["limits"][0], truncation_strategy="raise",
                            template_type=job["template"], max_pixels=job["max_pixels"])
    template.set_mode("train")
    loaded = [json.loads(json.dumps(r)) for r in rows if r is not None]
    lazy = LazyLLMDataset(loaded, template.encode, strict=True)
    out["strict"] = []
    for k in range(len(loaded)):
        try:
            lazy[k]
            out["strict"].append("ok")
        except MaxLengthError:
            out["strict"].append("MaxLengthError")
        except Exception as e:
            out["strict"].append(type(e).__name__)
    # --strict false (the default): a fetch whose row's encode raises draws others, at most 10 tries, then raises;
    # at a --max_length no row fits, the first fetch
    template = get_template(processor, max_length=8, truncation_strategy="raise", template_type=job["template"],
                            max_pixels=job["max_pixels"])
    template.set_mode("train")
    try:
        LazyLLMDataset(loaded, template.encode, strict=False, random_state=42)[0]
        out["every_row_skipped"] = "ok"
    except Exception as e:
        out["every_row_skipped"] = f"{type(e).__name__}: {e}"
    print("ORACLE" + json.dumps(out))
''')


def corpus(folder: Path) -> list[Path]:
    """ms-swift's documented layout (messages, absolute image paths), then the other layouts its AutoPreprocessor
    converts, one file each."""
    folder.mkdir(parents=True, exist_ok=True)

    def image(name: str, size: tuple[int, int]) -> str:
        path = folder / f"{name}.png"
        Image.new("RGB", size, "purple").save(path)
        return str(path.resolve())

    photo, big, thin, strip = (image("photo", (640, 480)), image("big", (1280, 960)), image("thin", (300, 12)),
                               image("strip", (6000, 20)))
    # 14.4 million pixels: over qwen-vl-utils' default budget for patch 14 (16,384 x 28**2 = 12.8 M), under the
    # one for patch 16 (16,384 x 32**2 = 16.8 M)
    huge = image("huge", (4500, 3200))
    qa = [{"role": "user", "content": "<image>What is shown?"}, {"role": "assistant", "content": "A purple field."}]
    rows = [
        {"messages": qa, "images": [photo]},
        {"messages": [{"role": "user", "content": "What is shown?"}, {"role": "assistant", "content": "Purple."}],
         "images": [big]},  # no tag: ms-swift adds it
        {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "<image><image>Compare."},
                      {"role": "assistant", "content": "\n\nBoth purple."}], "images": [photo, thin]},
        {"messages": [{"role": "system", "content": "You are terse."}, *qa,
                      {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "\nYes. " * 30}],
         "images": [photo]},
        {"messages": qa, "images": [strip]},  # ratio 300: qwen-vl-utils raises, ms-swift skips the row
        {"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]},
        {"messages": qa, "images": [huge]},
        {"messages": [*qa[:1], {"role": "assistant", "content": "Not trained.", "loss": False},
                      {"role": "user", "content": "Again?"}, {"role": "assistant", "content": "Trained."}],
         "images": [photo]},
        # the last answer untrained: its suffix is still trained (a SUFFIX context)
        {"messages": [*qa[:1], {"role": "assistant", "content": "Not trained.", "loss": False}], "images": [photo]},
        # a tag more than the images: the first is the image, the other stays text
        {"messages": [{"role": "user", "content": "<image> and <image>?"}, qa[1]], "images": [photo]},
        {"messages": [{"role": "system", "content": "See <image>."}, *qa], "images": [photo, thin]},
        # an answer's tag: its image is placed there, untrained; the text either side trained
        {"messages": [{"role": "user", "content": "Describe."}, {"role": "assistant", "content": "Here <image> it is."}],
         "images": [photo]},
        {"messages": [*qa[:1], {"role": "assistant", "content": "<image>The second."}, {"role": "user", "content": "And?"},
                      {"role": "assistant", "content": "Done <image>"}], "images": [photo, thin]},
        # a trailing question ending with <start-image> loses the tag (_replace_start_image_tags); an earlier one
        # keeps it as text
        {"messages": [*qa, {"role": "user", "content": "More<start-image>"}], "images": [photo]},
        {"messages": [{"role": "user", "content": "<image>Q<start-image>"}, qa[1]], "images": [photo]},
    ]
    conversations = [  # sharegpt: from / value, human / gpt / bot, one image as a string, a system column
        {"conversations": [{"from": "human", "value": "<image>What?"}, {"from": "gpt", "value": "A field."}],
         "image": photo, "system": "Be brief."},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "\nHello"},
                           {"from": "human", "value": "<image>And?"}, {"from": "bot", "value": "Purple."}],
         "image": photo, "system": ""},
        {"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": None}], "image": None,
         "system": None},  # no answer: the preprocessor deletes the row
        {"conversations": [], "image": None, "system": None},  # nothing: no row
        {"conversations": [{"from": "system", "value": "Own system."}, {"from": "human", "value": "<image>Q"},
                           {"from": "gpt", "value": "A"}], "image": big, "system": "Column system."},
        {"conversations": [{"from": "human", "value": "<image>Q"}, {"from": "narrator", "value": "A"}],
         "image": photo, "system": None},  # a role ms-swift does not know
    ]
    alpaca = [
        {"instruction": "<image>Describe.", "input": "Briefly.", "output": "Purple.", "images": [photo]},
        {"instruction": "Say hi", "input": "", "output": "\nHi", "images": []},
        {"instruction": "", "input": "<image>Only the input", "output": "Ok", "images": [thin]},
    ]
    query = [  # query / response / history, and other names for them (question / answer)
        {"query": "<image>What now?", "response": "Purple.", "history": [["First?", "Yes."]], "system": "S",
         "images": [photo]},
        {"query": "Hello", "response": "Hi", "history": [], "system": None, "images": []},
    ]
    question = [{"question": "<image>Which colour?", "answer": "Purple.", "image": photo}]
    # ms-swift maps columns and picks its preprocessor per file, from the file's columns: where two columns are
    # bound for one name (image / images, messages / conversations, query / question) neither is renamed
    mixed = [
        {"messages": qa, "images": [photo]},
        {"messages": qa, "image": photo},  # 'image' is not renamed: the row has no image, its tag stays text
        {"query": "<image>Q?", "response": "A.", "images": [photo]},  # a messages file: no row
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},  # not renamed: no row
    ]
    questions = [{"query": "<image>What?", "response": "Blue.", "images": [photo]},
                 {"question": "<image>Which?", "response": "Red.", "images": [photo]}]  # an answer alone
    files = []
    for name, content in (("train", rows), ("conv", conversations), ("alpaca", alpaca), ("query", query),
                          ("question", question), ("mixed", mixed), ("questions", questions)):
        data = folder / f"{name}.jsonl"
        data.write_text("\n".join(json.dumps({"id": f"{name}-{k}", **r}) for k, r in enumerate(content)))
        files.append(data)
    return files


RESCALE = 150_000  # --max_pixels: the template's rescale_image before qwen-vl-utils


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen3_vl", "qwen2_vl --max_pixels", "qwen3_vl_moe"])
def swift_oracle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                 checkpoint_for: Any) -> dict[str, Any]:
    """ms-swift's encode of the corpus for one template, on the demo checkpoint of its model type (Qwen3-VL: patch
    16, so MAX_PIXELS is divided by 32**2, and no default system prompt)."""
    python = oracle_python()
    data = corpus(tmp_path_factory.mktemp("swift"))
    model_type = request.param.split()[0]
    template = "qwen3_vl" if model_type == "qwen3_vl_moe" else model_type  # ms-swift's registry: qwen3_vl for both
    rescale = RESCALE if "--max_pixels" in request.param else None
    checkpoint = checkpoint_for(model_type)
    job = {"checkpoint": str(checkpoint), "data": [str(d) for d in data], "limits": LIMITS, "template": template,
           "model_type": model_type,
           "max_pixels": rescale}
    # Qwen2-VL under MAX_PIXELS; Qwen3-VL under qwen-vl-utils' own budgets (in tokens of 32 x 32 px)
    max_pixels = MAX_PIXELS if template == "qwen2_vl" else None
    env = {k: v for k, v in os.environ.items() if k not in ("MAX_PIXELS", "MIN_PIXELS")}
    done = subprocess.run([str(python), "-c", ORACLE, json.dumps(job)], capture_output=True, text=True, timeout=600,
                          env={**env, **({"MAX_PIXELS": str(max_pixels)} if max_pixels else {})})
    lines = [line for line in done.stdout.splitlines() if line.startswith("ORACLE")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    return {"data": data, "checkpoint": checkpoint, "max_pixels": max_pixels, "rescale": rescale,
            **json.loads(lines[-1][len("ORACLE"):])}


def launch(tmp_path: Path, oracle: dict[str, Any], *options: str) -> Path:
    """A launch script in the shape of ms-swift's examples/train/multimodal scripts."""
    script = tmp_path / "sft.sh"
    checkpoint, data = oracle["checkpoint"], oracle["data"]
    pixels = [f"MAX_PIXELS={oracle['max_pixels']} \\"] if oracle["max_pixels"] else []
    lines = ["# 22GiB", *pixels, "CUDA_VISIBLE_DEVICES=0 \\", "swift sft \\",
             f"    --model {checkpoint} \\", f"    --dataset {' '.join(map(str, data))} \\",
             "    --split_dataset_ratio 0 \\",  # the oracle loads without a split (a one-row file would stop)
             "    --train_type lora \\", "    --torch_dtype bfloat16 \\", "    --num_train_epochs 1 \\",
             "    --learning_rate 1e-4 \\", "    --lora_rank 8 \\", "    --target_modules all-linear \\",
             "    --freeze_vit true \\", *(f"    {o} \\" for o in options),
             *([f"    --max_pixels {oracle['rescale']} \\"] if oracle["rescale"] else []), "    --output_dir output", ""]
    script.write_text("\n".join(lines))
    return script


def records(script: Path, tmp_path: Path) -> list[dict[str, Any]]:
    out = tmp_path / "records.jsonl"
    vlmcheck.check(script, output=out)
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_totals_images_and_labels_agree_with_swifts_encode(tmp_path: Path, swift_oracle: dict[str, Any]) -> None:
    ours = records(launch(tmp_path, swift_oracle), tmp_path)
    assert len(ours) == len(swift_oracle["whole"])
    for record, whole in zip(ours, swift_oracle["whole"]):
        if whole["verdict"] == "deleted":  # the dataset preprocessor keeps no row for it
            assert record["framework"]["verdict"] == "dropped", record
            continue
        if whole["verdict"] == "error":
            assert record["framework"]["verdict"] == "dropped" and "VC006" in record["findings"], record
            continue
        assert record["tokens"] == whole["tokens"], (record, whole)
        assert record["image_tokens"] == whole["images"], (record, whole)
        assert record["supervised_tokens"] == whole["labels"], (record, whole)
    # the 300:1 strip (qwen-vl-utils raises at encode); deleted while loading: the empty answer, the empty
    # conversation, the unknown role, the mixed file's query and conversations rows
    verdicts = [w["verdict"] for w in swift_oracle["whole"]]
    assert (verdicts.count("error"), verdicts.count("deleted")) == (1, 5), verdicts


@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.parametrize("strategy", ["delete", "left", "right"])
def test_the_cut_agrees_with_swifts_encode(tmp_path: Path, swift_oracle: dict[str, Any], limit: int,
                                           strategy: str) -> None:
    ours = records(launch(tmp_path, swift_oracle, f"--max_length {limit}",
                          f"--truncation_strategy {strategy}"), tmp_path)
    theirs = swift_oracle["cut"][f"{limit}-{'raise' if strategy == 'delete' else strategy}"]
    assert len(ours) == len(theirs)
    for record, after in zip(ours, theirs):
        frame = record["framework"]
        if after["verdict"] in ("error", "deleted"):
            assert frame["verdict"] == "dropped"
        elif after["verdict"] == "dropped":
            assert frame["verdict"] == "dropped" and "VC204" in record["findings"], (record, after)
        else:
            assert frame["verdict"] in ("ok", "cut"), (record, after)
            assert frame["kept_tokens"] == after["tokens"], (record, after)
            assert frame["kept_supervised"] == after["labels"], (record, after)
            assert sum(frame["kept_image_tokens"]) == after["pads"], (record, after)
    verdicts = {r["framework"]["verdict"] for r in ours}
    assert ("dropped" if strategy == "delete" else "cut") in verdicts


def test_model_kwargs_set_the_pixel_budget_as_the_environment_does(tmp_path: Path,
                                                                  swift_oracle: dict[str, Any]) -> None:
    """``--model_kwargs '{"max_pixels": N}'`` puts MAX_PIXELS=N in the environment (BaseArguments
    ._init_model_kwargs, over the script's own): the same counts as the oracle's run under MAX_PIXELS."""
    if not swift_oracle["max_pixels"] or swift_oracle["rescale"]:
        pytest.skip("no MAX_PIXELS here, or --max_pixels shrinks every image below it")
    budget = swift_oracle["max_pixels"]
    bare = {**swift_oracle, "max_pixels": None}
    script = launch(tmp_path, bare, f"--model_kwargs '{{\"max_pixels\": {budget}}}'")
    script.write_text(script.read_text().replace("swift sft", "MAX_PIXELS=1000000 swift sft"))  # overridden
    ours = records(script, tmp_path)
    whole = swift_oracle["whole"]
    assert [r["image_tokens"] for r, w in zip(ours, whole) if w["verdict"] == "ok"] == \
        [w["images"] for w in whole if w["verdict"] == "ok"]


def test_with_strict_true_a_row_over_max_length_stops_the_run(tmp_path: Path, swift_oracle: dict[str, Any]) -> None:
    """--strict true: ms-swift's training dataset re-raises whatever the encode raises, MaxLengthError included (under
    the default, the row is skipped and another fetched)."""
    limit = LIMITS[0]
    ours = [r for r in records(launch(tmp_path, swift_oracle, f"--max_length {limit}", "--truncation_strategy delete",
                                      "--strict true"), tmp_path) if "VC204" in r["findings"] or
            r["framework"]["verdict"] in ("ok", "cut")]
    theirs = [s for s in swift_oracle["strict"] if s in ("ok", "MaxLengthError")]
    assert "MaxLengthError" in theirs and len(ours) == len(theirs)
    assert [("MaxLengthError" if r["framework"]["verdict"] == "stops" else "ok") for r in ours] == theirs


def test_the_rows_the_training_dataset_skips_are_the_records_dropped_at_encode(tmp_path: Path,
                                                                              swift_oracle: dict[str, Any]) -> None:
    """What VC208 adds up: the training rows (those the loader keeps) and, among them, the ones whose encode raises
    at --max_length under delete (LazyLLMDataset skips them at fetch), as ms-swift's own encode says of each."""
    limit = LIMITS[0]
    ours = records(launch(tmp_path, swift_oracle, f"--max_length {limit}", "--truncation_strategy delete"), tmp_path)
    training = [r for r in ours if r["framework"].get("dropped_at") != "preprocess"]
    skipped = [r for r in training if r["framework"].get("dropped_at") == "encode"]
    assert len(training) == len(swift_oracle["strict"])
    assert len(skipped) == sum(s != "ok" for s in swift_oracle["strict"]) > 0


def test_when_the_encode_skips_every_row_the_first_fetch_stops_the_run(tmp_path: Path,
                                                                       swift_oracle: dict[str, Any]) -> None:
    """LazyLLMDataset (--strict false) raises 'Failed to retrieve the dataset' when every row's encode raises: a
    finding of the whole run (VC208, no sample), not only each row's VC204."""
    assert "Failed to retrieve the dataset" in swift_oracle["every_row_skipped"], swift_oracle["every_row_skipped"]
    report = vlmcheck.check(launch(tmp_path, swift_oracle, "--max_length 8", "--truncation_strategy delete"))
    run = [f for f in report.findings if f.code == "VC208"]
    assert len(run) == 1 and run[0].index is None and "every row" in run[0].message, run
    assert report.summary["counts"]["VC208"] == 1 and "VC208 the run: ms-swift's encode skips" in report.render()
