"""Make EasyR1's golden cases: run EasyR1's own ``verl/utils/dataset.py`` on the corpus of
tests/frameworks/easyr1_corpus.py and write what it does, per row, to golden.json.

Not run by the tests (EasyR1 does not install from the package registry, and pins transformers<5): run by hand,
in an environment with transformers 4.x, datasets, jinja2, qwen-vl-utils, codetiming and torch, beside a checkout
of EasyR1 (see README.md here):

    python tests/assets/easyr1_golden/make_golden.py EASYR1_CHECKOUT CHECKPOINT_DIR [COMMIT]

EasyR1's code is imported from the checkout, never copied. Its lengths are observed through the threshold its
overlong filter compares them with, so no line of it is restated here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "frameworks"))  # easyr1_corpus

from easyr1_corpus import write_corpus  # noqa: E402

checkout, checkpoint = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
sys.path.insert(0, str(checkout))

# qwen-vl-utils (imported by EasyR1's dataset module for videos) imports torchvision at module level; images never
# touch it, so a stand-in is put in place while it is imported
import types  # noqa: E402

_names = ["torchvision", "torchvision.io", "torchvision.transforms"]
_stand_in = {n: types.ModuleType(n) for n in _names}
_stand_in["torchvision"].io = _stand_in["torchvision.io"]  # type: ignore[attr-defined]
_stand_in["torchvision"].transforms = _stand_in["torchvision.transforms"]  # type: ignore[attr-defined]
_stand_in["torchvision.transforms"].InterpolationMode = types.SimpleNamespace(BICUBIC=3)  # type: ignore[attr-defined]
sys.modules.update(_stand_in)
import qwen_vl_utils.vision_process  # noqa: E402,F401

for _n in _names:
    del sys.modules[_n]

from transformers import AutoTokenizer, Qwen2VLImageProcessor, Qwen2VLProcessor  # noqa: E402
from verl.utils.dataset import RLHFDataset, process_image  # noqa: E402


class ImageOnly(Qwen2VLProcessor):
    """Qwen2VLProcessor without its video processor (which needs torchvision); every image path is unchanged."""

    attributes = ["image_processor", "tokenizer"]

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = "<|image_pad|>"
        self.video_token = "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        super(Qwen2VLProcessor, self).__init__(image_processor, tokenizer, chat_template=chat_template)


values = json.loads((checkpoint / "preprocessor_config.json").read_text())
values = {k: v for k, v in values.items() if k not in ("image_processor_type", "processor_class")}
template = json.loads((checkpoint / "chat_template.json").read_text())["chat_template"]
tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
tokenizer.chat_template = template  # a Qwen2-VL hub checkpoint's tokenizer carries the same template
processor = ImageOnly(image_processor=Qwen2VLImageProcessor(**values), tokenizer=tokenizer, chat_template=template)
MERGE = processor.image_processor.merge_size ** 2
IMAGE_PAD = processor.image_token_id


class Threshold:
    """Stands for max_prompt_length: EasyR1's filter compares each row's length with it."""

    def __init__(self):
        self.seen = []

    def __ge__(self, length):
        self.seen.append(int(length))
        return True


def dataset(file, *, format_prompt, min_pixels, max_pixels, image_dir=None, limit=10**9, filter=False):
    return RLHFDataset(data_path=str(file), tokenizer=tokenizer, processor=processor, prompt_key="problem",
                       answer_key="answer", image_key="images", image_dir=image_dir, max_prompt_length=limit,
                       truncation="right", format_prompt=format_prompt, min_pixels=min_pixels,
                       max_pixels=max_pixels, filter_overlong_prompts=filter, filter_overlong_prompts_workers=1)


def scenario(file, *, format_prompt=None, min_pixels=262144, max_pixels=4194304, image_dir=None, limits=(),
             cut=None):
    kw = dict(format_prompt=format_prompt, min_pixels=min_pixels, max_pixels=max_pixels, image_dir=image_dir)
    ds = dataset(file, **kw)
    rows = []
    for example in ds.dataset:
        threshold = Threshold()
        ds.max_prompt_length = threshold
        row = {"id": example["id"], "tokens": None, "images": None, "error": None}
        try:
            ds._filter_overlong_prompts(dict(example))
            row["tokens"] = threshold.seen[-1]
        except Exception as e:  # the filter raises on this row: datasets.filter, and the run, stop
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        images = example.get("images")
        if images:
            if image_dir is not None and isinstance(images[0], str):
                images = [str(Path(image_dir) / i) for i in images]
            try:
                scaled = [process_image(i, min_pixels, max_pixels) for i in images]
                row["scaled"] = [list(i.size) for i in scaled]
                grids = processor.image_processor(images=scaled)["image_grid_thw"]
                row["images"] = [int(g[0] * g[1] * g[2]) // MERGE for g in grids]
            except Exception as e:
                row["images_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        elif "images" in example:
            row["images"] = []
        rows.append(row)
    out = {"file": Path(file).name, "format_prompt": bool(format_prompt), "min_pixels": min_pixels,
           "max_pixels": max_pixels, "image_dir": image_dir is not None, "rows": rows, "survivors": {}}
    measured = [r["tokens"] for r in rows if r["tokens"] is not None]
    for limit in [*limits, *((measured[0], measured[0] - 1) if measured else ())]:
        try:
            kept = dataset(file, **kw, limit=limit, filter=True)
            out["survivors"][str(limit)] = [int(r["id"]) for r in kept.dataset]
        except Exception as e:
            out["survivors"][str(limit)] = f"raises {type(e).__name__}: {str(e)[:200]}"
    if cut is not None:  # without the filter: what __getitem__ hands the rollout at max_prompt_length=cut
        ds = dataset(file, **kw, limit=cut)
        out["cut"] = {"limit": cut, "rows": []}
        for i in range(len(ds)):
            try:
                item = ds[i]
                ids = item["input_ids"][item["attention_mask"].bool()].tolist()
                out["cut"]["rows"].append({"id": i, "tokens": len(ids),
                                           "image_tokens": sum(1 for t in ids if t == IMAGE_PAD)})
            except Exception as e:
                out["cut"]["rows"].append({"id": i, "error": f"{type(e).__name__}: {str(e)[:200]}"})
    return out


with tempfile.TemporaryDirectory() as tmp:
    files = write_corpus(Path(tmp))
    fmt = str(files["format"])
    golden = {
        "easyr1_commit": sys.argv[3] if len(sys.argv) > 3 else subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "transformers": __import__("transformers").__version__,
        "scenarios": {
            "geo_defaults": scenario(files["geo"], limits=(1024,), cut=1024),
            "geo_format_no_pixels": scenario(files["geo"], format_prompt=fmt, min_pixels=None, max_pixels=None,
                                             limits=(2048,)),
            "geo_format_small": scenario(files["geo"], format_prompt=fmt, min_pixels=3136, max_pixels=200704,
                                         limits=(300,), cut=300),
            "paths_image_dir": scenario(files["paths"], format_prompt=fmt, image_dir=str(files["images"]),
                                        limits=(1024, 4096), cut=1024),
            "math_format": scenario(files["math"], format_prompt=fmt, limits=(100, 2048), cut=100),
        },
    }
(HERE / "golden.json").write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")
print("wrote", HERE / "golden.json")
