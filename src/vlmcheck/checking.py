"""``check()``: judge every sample the way the user's own training framework will, from the config they launch.

>>> report = check("examples/train_lora/qwen2_5vl_lora_sft.yaml")  # doctest: +SKIP
>>> report.counts  # doctest: +SKIP
{'VC201': 3}

The config names the framework, the model, the datasets and every setting; the framework module
(:mod:`vlmcheck.frameworks`) fills in the framework's defaults and says how rows become tokens, how images are
sized and what happens at the cut. The model family (:mod:`vlmcheck.families`) counts each image's features.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from vlmcheck import findings as F
from vlmcheck.data.images import ImageProblem, probe_bytes, probe_path
from vlmcheck.data.readers import BadRow
from vlmcheck.errors import DatasetError, UsageError
from vlmcheck.families import Overrides
from vlmcheck.frameworks import detect
from vlmcheck.frameworks import llamafactory as lf
from vlmcheck.model import ModelSpec, load_model
from vlmcheck.report import Report, ReportBuilder
from vlmcheck.scan import SampleResult, ScanOptions, write_records


def read_config_file(path: Path) -> dict[str, Any]:
    """A launch config (YAML or JSON) as a dict."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"config not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read config {path}: {e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UsageError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path} must hold a mapping of settings")
    return raw


class LlamaFactoryJudge:
    """Judges rows the way LLaMA-Factory's default engine prepares them for ``stage: sft``."""

    def __init__(self, config: lf.Config, spec: ModelSpec) -> None:
        plugin = config.template.plugin
        if spec.model_type not in plugin.model_types:
            raise UsageError(
                f"template {config.template.name} uses LLaMA-Factory's {plugin.name} plugin, made for "
                f"{', '.join(plugin.model_types)}; the model is {spec.model_type}")
        self.config = config
        self.spec = spec
        self.family = spec.family
        self.settings = spec.settings
        self.tokenizer = spec.tokenizer
        self.pad_id = spec.token_id(plugin.image_token)

    # -- images -----------------------------------------------------------------------------------------------
    def _size(self, image: Any) -> tuple[int, int]:
        """The stored (width, height): LLaMA-Factory opens images with ``Image.open``, no EXIF rotation."""
        if isinstance(image, Mapping):
            data, path = image.get("bytes"), image.get("path")
            if data:
                return probe_bytes(bytes(data)).size(exif_transpose=False)
            if not path:
                raise ImageProblem("VC101", "an image struct with neither bytes nor a path")
            image = path
        if isinstance(image, (bytes, bytearray)):
            return probe_bytes(bytes(image)).size(exif_transpose=False)
        if not isinstance(image, str):
            raise ImageProblem("VC102", f"an image given as {type(image).__name__}, which LLaMA-Factory cannot open")
        if image.startswith(("http://", "https://", "s3://", "gs://")):
            raise ImageProblem("VC101", f"remote image {image} is not downloaded by vlmcheck")
        return probe_path(Path(image)).size(exif_transpose=False)

    def image_tokens(self, sizes: list[tuple[int, int]], config: lf.Config) -> list[int]:
        return [self.family.image_tokens(*lf.image_size(w, h, config), self.settings) for w, h in sizes]

    # -- one row ----------------------------------------------------------------------------------------------
    def judge(self, index: int, row: Any, attr: lf.DatasetAttr) -> SampleResult:
        result = SampleResult(index=index, id=f"{attr.name}:{index}", tokens=None, image_tokens=[],
                              supervised_tokens=None)
        found = result.findings
        frame: dict[str, Any] = {"name": lf.NAME, "dataset": attr.name, "verdict": "ok"}
        result.framework = frame
        if isinstance(row, BadRow):
            found.append(F.make("VC001", f"{row.reason}; LLaMA-Factory's loader fails on the file"))
            frame["verdict"] = "stops"
            return result
        if isinstance(row, Mapping) and isinstance(row.get("id"), (str, int)):
            result.id = str(row["id"])
        try:
            example = lf.convert(row, attr, self.config)
        except lf.Dropped as e:
            found.append(F.make("VC006", f"LLaMA-Factory skips this row: {e}"))
            frame["verdict"] = "dropped"
            return result
        except lf.Stops as e:
            found.append(F.make("VC001", f"{e}; LLaMA-Factory stops while preparing the dataset"))
            frame["verdict"] = "stops"
            return result
        except (TypeError, ValueError, AttributeError) as e:  # a value of a shape no converter step expects
            found.append(F.make("VC001", f"the row cannot be converted ({type(e).__name__}: {str(e)[:200]}); "
                                         "LLaMA-Factory raises on it while preparing the dataset"))
            frame["verdict"] = "stops"
            return result
        if example.videos:
            found.append(F.make("VC114", "videos under LLaMA-Factory are not counted by vlmcheck yet"))
            frame["verdict"] = "unknown"
            return result
        placeholders = sum(content.count(self.config.image_placeholder) for _, content in example.messages)
        if placeholders != len(example.images):
            found.append(F.make(
                "VC002", f"{placeholders} {self.config.image_placeholder} placeholder(s) for "
                         f"{len(example.images)} image(s): LLaMA-Factory raises 'The number of images does not "
                         "match the number of <image> tokens' and the run stops",
                placeholders=placeholders, images=len(example.images)))
            frame["verdict"] = "stops"
            return result
        sizes: list[tuple[int, int]] = []
        for k, image in enumerate(example.images, 1):
            label = f"image {k} of {len(example.images)} ({str(image)[:120] if isinstance(image, str) else 'bytes'})"
            try:
                size = self._size(image)
                lf.image_size(*size, self.config)
            except ImageProblem as p:
                found.append(F.make(p.code, f"{label}: {p.message}", image=k, **p.data))
                continue
            except (OSError, ValueError) as e:  # a path the OS refuses (NUL byte, too long, a loop)
                found.append(F.make("VC102", f"{label}: cannot be opened: {str(e)[:200]}", image=k))
                continue
            except lf.ImageRefused as e:
                found.append(F.make("VC107", f"{label}: {e}", image=k))
                continue
            sizes.append(size)
        if len(sizes) != len(example.images):
            frame["verdict"] = "stops"  # LLaMA-Factory's Image.open / resize raise inside datasets.map
            result.image_tokens = [None] * len(example.images)
            return result
        counts = self.image_tokens(sizes, self.config)
        result.image_tokens = list(counts)
        turns = lf.turns(example, self.config)
        encoded = self._encode(turns, counts, found)
        if encoded is None:
            frame["verdict"] = "stops"
            return result
        full = lf.truncate(encoded, replace(self.config, cutoff_len=encoded.total + 1), images=len(counts))
        result.tokens = encoded.total
        result.supervised_tokens = full.labels
        result.text_only_tokens = encoded.total - sum(counts)
        cut = lf.truncate(encoded, self.config, images=len(counts))
        frame.update(kept_tokens=cut.tokens, kept_supervised=cut.labels, kept_image_tokens=cut.image_tokens_kept)
        self._verdict(result, encoded, cut, counts, sizes, turns)
        return result

    def _encode(self, turns: list[list[str]], counts: list[int], found: list[F.Finding]) -> lf.Encoded | None:
        """Every element tokenized on its own (``add_special_tokens=False``); the k-th image pad expanded to image
        k's feature count."""
        flat = [element for elements in turns for element in elements]
        encodings = self.tokenizer.encode_batch(flat, add_special_tokens=False) if flat else []
        out_turns: list[list[int]] = []
        image_of: list[list[int]] = []
        k = 0
        at = 0
        for elements in turns:
            ids: list[int] = []
            owner: list[int] = []
            for enc in encodings[at:at + len(elements)]:
                for token in enc.ids:
                    if token == self.pad_id:
                        if k >= len(counts):
                            found.append(F.make("VC002", "the text holds an image token of its own beyond the "
                                                         f"{len(counts)} image(s): the model sees more image "
                                                         "tokens than features and raises"))
                            return None
                        ids += [token] * counts[k]
                        owner += [k] * counts[k]
                        k += 1
                    else:
                        ids.append(token)
                        owner.append(-1)
            at += len(elements)
            out_turns.append(ids)
            image_of.append(owner)
        return lf.Encoded(turns=out_turns, image_of=image_of)

    def _verdict(self, result: SampleResult, encoded: lf.Encoded, cut: lf.Cut, counts: list[int],
                 sizes: list[tuple[int, int]], turns: list[list[str]]) -> None:
        config = self.config
        found = result.findings
        frame = result.framework or {}
        total = encoded.total
        cutoff = config.cutoff_len
        if result.supervised_tokens == 0:
            found.append(F.make("VC003", "no answer tokens to learn from: every label is masked"))
        if config.packing and total > cutoff:
            found.append(F.make("VC204", f"{total:,} tokens > cutoff_len={cutoff:,}: with packing LLaMA-Factory drops "
                                         "the sample ('Dropped lengthy example')", tokens=total, max_length=cutoff))
            frame["verdict"] = "dropped"
            return
        if cut.tokens >= total:
            result.fits_max_pixels = config.image_max_pixels  # whole at the current budget
            return
        whole = self._whole_cutoff(encoded, counts)
        fits = self._fit_pixels(sizes, turns) if counts else None
        result.fits_max_pixels = fits
        cut_images = [k for k, n in enumerate(counts) if cut.image_tokens_kept[k] < n]
        for k in cut_images:
            fix = f"set {config.setting('cutoff_len', whole)}"
            if fits is not None:
                fix += f", or {config.setting('image_max_pixels', fits)} (the sample then fits whole)"
            found.append(F.make(
                "VC201",
                f"image {k + 1} of {len(counts)} needs {counts[k]:,} tokens, only {cut.image_tokens_kept[k]:,} "
                f"survive LLaMA-Factory's per-turn cut at cutoff_len={cutoff:,}; the sample is {total:,} tokens: "
                "training stops with 'Image features and image tokens do not match'",
                fix=fix + ", or drop the sample",
                image=k + 1, image_tokens=counts[k], kept=cut.image_tokens_kept[k], tokens=total, max_length=cutoff))
        if cut_images:
            frame["verdict"] = "crash"
        supervised = result.supervised_tokens or 0
        if supervised and not cut.labels:
            found.append(F.make(
                "VC202", f"all {supervised:,} supervised tokens are cut at cutoff_len={cutoff:,} "
                         f"(sample is {total:,} tokens)",
                fix=f"set {config.setting('cutoff_len', whole)}, shorten the prompt, or drop the sample",
                supervised=supervised, tokens=total, max_length=cutoff))
        elif not cut_images:
            found.append(F.make(
                "VC203", f"{total:,} tokens > cutoff_len={cutoff:,}: {total - cut.tokens:,} text tokens cut, "
                         f"{supervised - cut.labels:,} of {supervised:,} supervised tokens lost",
                fix=f"set {config.setting('cutoff_len', whole)} to keep it whole",
                tokens=total, max_length=cutoff, supervised_lost=supervised - cut.labels))

    def _whole_cutoff(self, encoded: lf.Encoded, counts: list[int]) -> int:
        """The smallest cutoff_len that keeps the sample whole (infer_seqlen's float share can cut one token
        of a pair that fits exactly)."""
        for cutoff in range(encoded.total, encoded.total + 64):
            cut = lf.truncate(encoded, replace(self.config, cutoff_len=cutoff), images=len(counts))
            if cut.tokens >= encoded.total:
                return cutoff
        return encoded.total + 64

    def _fit_pixels(self, sizes: list[tuple[int, int]], turns: list[list[str]]) -> int | None:
        """The largest image_max_pixels (a multiple of 28*28 at or above image_min_pixels) at which the sample
        keeps every token at this cutoff_len."""
        unit = 28 * 28

        def fits(budget: int) -> bool:
            config = replace(self.config, image_max_pixels=budget)
            try:
                counts = self.image_tokens(sizes, config)
            except (ZeroDivisionError, ValueError):
                return False
            if any(min(lf.image_size(w, h, config)) <= 0 for w, h in sizes):
                return False
            encoded = self._encode(turns, counts, [])
            if encoded is None:
                return False
            return lf.truncate(encoded, config, images=len(counts)).tokens >= encoded.total

        lo = max(1, math.ceil(self.config.image_min_pixels / unit))
        hi = self.config.image_max_pixels // unit
        try:
            if hi < lo or not fits(lo * unit):
                return None
        except lf.ImageRefused:
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            try:
                ok = fits(mid * unit)
            except lf.ImageRefused:
                ok = False
            if ok:
                lo = mid
            else:
                hi = mid - 1
        return lo * unit


def _rows(config: lf.Config, attrs: list[lf.DatasetAttr]) -> Iterator[tuple[Any, lf.DatasetAttr]]:
    for attr in attrs:
        files = lf.dataset_files(config, attr)
        count = 0
        for row in lf.iter_rows(files):
            if config.max_samples is not None and count >= config.max_samples:
                break
            count += 1
            yield row, attr


def check(
    config: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    data: str | os.PathLike[str] | None = None,
    path_map: Mapping[str, str] | None = None,
    limit: int | None = None,
    output: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> Report:
    """Judge every sample of a training run from the config it is launched with.

    Args:
        config: the framework's launch config (a LLaMA-Factory YAML).
        model: overrides the config's model (a local checkpoint folder or a cached Hugging Face id).
        data: overrides the config's dataset folder (LLaMA-Factory ``dataset_dir``).
        path_map: rewrites path prefixes in the config and the data, ``{"/mnt/data": "./data"}``.
        limit: judge only the first N rows.
        output: write one JSON record per sample to this .jsonl file (atomically).
        env: the environment the framework reads (``USE_V1``, ``IMAGE_PLACEHOLDER``); default ``os.environ``.
    """
    path = Path(config)
    raw = read_config_file(path)
    framework = detect(raw, path=path)
    assert framework == lf.NAME
    cfg = lf.read_config(raw, path=path, model=str(model) if model is not None else None,
                         data=str(data) if data is not None else None, path_map=path_map, env=env)
    if cfg.v1:
        raise UsageError("USE_V1=1 (LLaMA-Factory's v1 engine) is not modelled by vlmcheck yet: it cuts from the "
                         "right and drops images whose span is cut; unset USE_V1 to check the default engine")
    spec = load_model(cfg.model, overrides=Overrides(resize="processor"))
    judge = LlamaFactoryJudge(cfg, spec)
    attrs = lf.read_dataset_info(cfg)
    shown = replace(spec.settings, resize="prescale", pre_max_pixels=cfg.image_max_pixels,
                    pre_min_pixels=cfg.image_min_pixels) if hasattr(spec.settings, "pre_max_pixels") else spec.settings
    options = ScanOptions(max_length=cfg.cutoff_len, truncation="llamafactory", exif_transpose=False)
    builder = ReportBuilder(dataset=", ".join(a.name for a in attrs), model=str(spec.path),
                            model_type=spec.model_type, options=options, settings=shown)
    started = time.perf_counter()
    if output is not None:
        for file in (path, *(f for a in attrs for f in lf.dataset_files(cfg, a))):
            if os.path.realpath(output) == os.path.realpath(file):
                raise UsageError(f"output {output} is one of the run's inputs; vlmcheck never writes over its input")

    def results() -> Iterator[SampleResult]:
        for index, (row, attr) in enumerate(_rows(cfg, attrs)):
            if limit is not None and index >= limit:
                return
            result = judge.judge(index, row, attr)
            if progress is not None:
                progress(index + 1, None)
            yield result

    try:
        write_records(results(), builder, output)
    except (OSError, DatasetError) as e:
        raise DatasetError(f"reading the datasets of {path}: {e}") from e
    report = builder.build(seconds=time.perf_counter() - started)
    report.summary["command"] = "check"
    report.summary["framework"] = {
        "name": lf.NAME, "versions": lf.VERSIONS, "config": str(path), "template": cfg.template.name,
        "cutoff_len": cfg.cutoff_len, "image_max_pixels": cfg.image_max_pixels,
        "image_min_pixels": cfg.image_min_pixels, "dataset_dir": str(cfg.dataset_dir),
        "media_dir": str(cfg.media_dir), "packing": cfg.packing, "train_on_prompt": cfg.train_on_prompt,
        "mask_history": cfg.mask_history, "enable_thinking": cfg.enable_thinking,
        "verdicts": dict(sorted(builder.verdicts.items())),
        "length_key": cfg.LENGTH_KEY, "pixels_key": cfg.PIXELS_KEY,
    }
    return report
