"""Find a model's processor files where users have them, and read them without transformers.

``--model`` is a local checkpoint/processor folder, or a Hugging Face model id resolved from the
local HF cache (and, when ``huggingface_hub`` is installed and the hub is reachable, by fetching
only the small config/tokenizer files, never weights).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmcheck.data.files import FileProblem, not_a_file, read_text
from vlmcheck.data.nesting import parse
from vlmcheck.errors import ModelError, UsageError
from vlmcheck.families import Family, Overrides, get_family

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# The files a processor is made of (no weights).
PROCESSOR_FILES = (
    "config.json", "preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.json",
    "chat_template.jinja", "generation_config.json", "added_tokens.json",
)


def read_checkpoint_json(path: Path) -> dict[str, Any]:
    """A checkpoint's JSON file (config, processor or tokenizer file) as its object; {} where the checkpoint has no
    such file. One that is there but is not a regular file (a FIFO, a device: transformers would block or fail on
    it), is over the size vlmcheck reads whole, nests deeper than it reads or is not a JSON object is a ModelError,
    never read as absent.

    >>> read_checkpoint_json(Path("no/such/folder/config.json"))
    {}
    """
    text = read_checkpoint_text(path)
    if text is None:
        return {}
    try:
        value = parse(json.loads, text, where=str(path), error=ModelError)
    except ValueError as e:
        raise ModelError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ModelError(f"{path} must hold a JSON object")
    return value


# The largest tokenizer.json read: real ones are megabytes (Qwen2 7 MB, Gemma 3 33 MB); the tokenizers library reads
# the file whole, so a wrong or sparse one over this is refused before it is handed over.
TOKENIZER_LIMIT = 1 << 30


def tokenizer_file(path: Path) -> Path:
    """``path`` (a checkpoint's tokenizer.json) when the tokenizers library can be handed it: a regular file of at
    most ``TOKENIZER_LIMIT`` bytes. Missing, a FIFO or device (the library would block on it), a folder or a file
    over the limit is a ModelError saying which."""
    problem = not_a_file(path)
    if problem == "not found":
        raise ModelError(f"{path.parent} has no tokenizer.json; vlmcheck reads the fast tokenizer file (save one with "
                         "`AutoTokenizer.from_pretrained(...).save_pretrained(folder)`)")
    if problem:
        raise ModelError(f"the checkpoint's tokenizer.json is {problem}: {path}")
    size = path.stat().st_size
    if size > TOKENIZER_LIMIT:
        raise ModelError(f"{path} is {size:,} bytes, over the {TOKENIZER_LIMIT >> 30} GiB vlmcheck hands to the "
                         "tokenizers library (a real tokenizer.json is megabytes)")
    return path


def read_checkpoint_text(path: Path) -> str | None:
    """The UTF-8 text of a checkpoint's file (``chat_template.jinja``, a JSON file); None where there is none. One
    that is there but cannot be read whole (a FIFO, a device, a file over the size vlmcheck reads, not UTF-8) is a
    ModelError: transformers could not load it either."""
    problem = not_a_file(path)
    if problem == "not found":
        return None
    try:
        if problem:
            raise FileProblem("unreadable", f"{problem}: {path}")
        return read_text(path)
    except FileProblem as e:
        raise ModelError(f"the checkpoint's {path.name} cannot be read ({e.message}); transformers could not load "
                         "it either") from None
    except UnicodeDecodeError as e:
        raise ModelError(f"{path} is not UTF-8 text ({e}); re-save it as UTF-8") from None
    except OSError as e:
        raise ModelError(f"{path} cannot be read: {e}") from None


# Processor values that count something (pixels, patches, tiles, tokens): each must be a finite number > 0.
# A 0 divides by zero in the arithmetic, a negative one gives wrong counts in silence, a string or inf fails
# somewhere mid-scan; all are a broken checkpoint, said before the scan starts.
_COUNTING = ("size", "patch", "pixels", "edge", "height", "width", "merge", "tiles", "pinpoints", "resolutions",
             "image_seq_length", "tokens_per_image", "downsample_ratio", "num_crops", "factor")
_NOT_COUNTING = ("num_additional_image_tokens", "rescale_factor", "vision_feature_layer")


def _check_numbers(where: str, values: Any, *, counting: bool = False) -> None:
    """Raise ModelError for a counting value that is not a finite positive number (see ``_COUNTING``)."""
    import math

    if isinstance(values, dict):
        for key, value in values.items():
            name = str(key).lower()
            counts = (counting or any(c in name for c in _COUNTING)) and name not in _NOT_COUNTING
            _check_numbers(f"{where}.{key}", value, counting=counts)
    elif isinstance(values, (list, tuple)):
        for k, value in enumerate(values):
            _check_numbers(f"{where}[{k}]", value, counting=counting)
    elif isinstance(values, bool) or values is None:
        return
    elif isinstance(values, (int, float)):
        if not math.isfinite(values):
            raise ModelError(f"{where} is {values}: a processor value must be a finite number")
        if counting and values <= 0:
            raise ModelError(f"{where} is {values}: it counts pixels, patches or tokens, so it must be positive")
    elif counting and isinstance(values, str):
        raise ModelError(f"{where} is the string {values[:40]!r}: it must be a number")


def _hf_cache_roots() -> list[Path]:
    roots = []
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            roots.append(Path(os.environ[var]))
    hf_home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    roots.append(hf_home / "hub")
    return roots


def _from_hf_cache(repo_id: str, revision: str | None) -> Path | None:
    """The snapshot folder of ``repo_id`` in the HF cache layout ``models--org--name/snapshots/<sha>``."""
    for root in _hf_cache_roots():
        repo = root / ("models--" + repo_id.replace("/", "--"))
        if not repo.is_dir():
            continue
        ref = repo / "refs" / (revision or "main")
        if ref.is_file():
            snapshot = repo / "snapshots" / ref.read_text().strip()
            if snapshot.is_dir():
                return snapshot
        if revision and (repo / "snapshots" / revision).is_dir():
            return repo / "snapshots" / revision
        snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime)
        if snapshots:
            return snapshots[-1]
    return None


def _looks_like_repo_id(text: str) -> bool:
    """``org/name`` as the Hub spells ids: two parts of letters, digits, ``-_.``, no leading dot or ``~``."""
    import re

    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}", text) is not None


def resolve_model_path(model: str | os.PathLike[str], *, revision: str | None = None) -> Path:
    """A local folder holding the model's processor files."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    text = str(model)
    if path.exists():
        raise ModelError(f"--model {text!r} is a file; pass the checkpoint folder that holds config.json")
    if not _looks_like_repo_id(text):
        raise ModelError(f"--model {text!r}: no such folder, and not a Hugging Face model id (org/name)")
    if Path(text.split("/")[0]).expanduser().is_dir():
        # `runs/ckpt-1200` with a typo: the first part is a local folder, so this is a path, not a Hub id
        raise ModelError(f"--model {text!r}: no such folder ({path.parent} exists, {path.name!r} is not in it)")
    cached = _from_hf_cache(text, revision)
    if cached is not None:
        return cached
    if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0"):
        raise ModelError(f"model {text!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelError(
            f"model {text!r} is not in the local Hugging Face cache; download its processor files "
            f"(`huggingface-cli download {text} --include '*.json' '*.jinja'`) or pass a local folder"
        ) from None
    try:
        return Path(snapshot_download(text, revision=revision, allow_patterns=["*.json", "*.jinja"]))
    except Exception as e:  # network, auth, unknown repo: all a usage error here
        raise ModelError(f"could not fetch the processor files of {text!r}: {e}") from e


def _chat_template(folder: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """The template ``processor.apply_chat_template`` uses: the processor's own first
    (chat_template.jinja, chat_template.json, processor_config.json), then the tokenizer's."""
    template = read_checkpoint_text(folder / "chat_template.jinja")  # a FIFO there is refused, not taken for none
    if template is not None:
        return template
    for name in ("chat_template.json", "processor_config.json"):
        value = read_checkpoint_json(folder / name).get("chat_template")
        if isinstance(value, str):
            return value
    value = tokenizer_config.get("chat_template")
    if isinstance(value, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {item.get("name"): item.get("template") for item in value if isinstance(item, dict)}
        value = named.get("default") or next(iter(named.values()), None)
    return value if isinstance(value, str) else None


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):  # serialized AddedToken
        value = value.get("content")
    return value if isinstance(value, str) else None


def family_name(config: dict[str, Any]) -> str:
    """The family that counts for a checkpoint: its ``model_type``, except where transformers builds
    another family's processor for it. mistral-community/pixtral-12b is a ``llava`` checkpoint with a
    Pixtral vision tower, and its processor files name ``PixtralProcessor``, not ``LlavaProcessor``."""
    model_type = str(config.get("model_type"))
    vision = config.get("vision_config")
    if model_type == "llava" and isinstance(vision, dict) and vision.get("model_type") == "pixtral":
        return "pixtral"
    return model_type


@dataclass
class ModelSpec:
    """A resolved model: its folder, family, processor settings, tokenizer and chat template."""

    path: Path
    model_type: str
    family: Family
    settings: Any
    chat_template: str | None
    special_tokens: dict[str, Any]
    overrides: Overrides = field(default_factory=Overrides)

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """The checkpoint's tokenizer, shared by whoever reads this spec: not to be changed (see own_tokenizer)."""
        return self._read_tokenizer()

    def own_tokenizer(self) -> Tokenizer:
        """A tokenizer of the checkpoint that the caller may change (add tokens to, as a framework's template
        does): a copy of the shared one when that has been read, else read from the file without being shared
        (a copy and a read cost about the same; one of them, not both)."""
        if "tokenizer" in self.__dict__:
            from tokenizers import Tokenizer

            return Tokenizer.from_str(self.tokenizer.to_str())
        return self._read_tokenizer()

    def _read_tokenizer(self) -> Tokenizer:
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_file(self.path / "tokenizer.json")))
        except ModelError:
            raise
        except Exception as e:  # the tokenizers library raises a bare Exception for a corrupt file
            raise ModelError(f"{self.path / 'tokenizer.json'} cannot be read by the tokenizers library: "
                             f"{str(e)[:300]}") from None
        if getattr(self.family, "adds_special_tokens", True) is False:
            # the family's processor turns the tokenizer's BOS/EOS off (PaliGemma): they are only
            # where the rendered text writes them
            tokenizer.post_processor = None
        return tokenizer

    def token_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ModelError(f"the tokenizer in {self.path} has no token {token!r}")
        return int(token_id)


def check_options(family: Family, options: Mapping[str, Any] | None) -> None:
    """Processor options (``Overrides.extra``) must be ones the family reads: a misspelt key
    would otherwise change nothing, silently."""
    allowed = tuple(getattr(family, "options", ()))
    unknown = sorted(k for k in options or {} if k not in allowed)
    if unknown:
        takes = f"it reads {', '.join(allowed)}" if allowed else "it reads none"
        raise UsageError(f"{family.name} has no processor option {', '.join(unknown)}; {takes}")


def load_model(
    model: str | os.PathLike[str],
    *,
    overrides: Overrides | None = None,
    chat_template: str | None = None,
    revision: str | None = None,
) -> ModelSpec:
    """Resolve ``model`` and read what scanning needs from its files.

    >>> spec = load_model("Qwen/Qwen2-VL-7B-Instruct", overrides=Overrides(max_pixels=1003520))  # doctest: +SKIP
    """
    overrides = overrides or Overrides()
    folder = resolve_model_path(model, revision=revision)
    try:
        return _load(folder, overrides=overrides, chat_template=chat_template)
    except (ModelError, UsageError):
        raise
    except Exception as e:  # a processor file of a shape no reader expects: a broken checkpoint, said up front
        raise ModelError(f"the processor files of {folder} cannot be read ({type(e).__name__}: {str(e)[:200]}); "
                         "check config.json, preprocessor_config.json and processor_config.json") from None


def _load(folder: Path, *, overrides: Overrides, chat_template: str | None) -> ModelSpec:
    config = read_checkpoint_json(folder / "config.json")
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise ModelError(f"{folder / 'config.json'} is missing or has no model_type")
    family = get_family(family_name(config))
    check_options(family, overrides.extra)
    tokenizer_file(folder / "tokenizer.json")
    preprocessor = read_checkpoint_json(folder / "preprocessor_config.json")
    processor_config = read_checkpoint_json(folder / "processor_config.json")
    if (not_a_file(folder / "preprocessor_config.json") == "not found"
            and not isinstance(processor_config.get("image_processor"), dict)):
        # transformers reads the image processor from processor_config.json's "image_processor", else from
        # preprocessor_config.json; with neither, AutoProcessor.from_pretrained raises OSError ("Can't load image
        # processor"): the run never starts, and the class defaults are not what it would use
        raise ModelError(
            f"{folder} has no preprocessor_config.json (nor an image_processor in processor_config.json): "
            "transformers cannot load this checkpoint's image processor (AutoProcessor.from_pretrained raises "
            "\"Can't load image processor\"); copy preprocessor_config.json from the base model, or save the "
            "processor with `AutoProcessor.from_pretrained(base).save_pretrained(folder)`")
    preprocessor.update(processor_config.get("image_processor", {}) or {})
    # The processor's own arguments (LlavaProcessor's patch_size, num_additional_image_tokens, ...)
    # ride along under one key, so they never shadow an image processor value of the same name.
    preprocessor["processor_config"] = {
        k: v for k, v in processor_config.items() if k not in ("image_processor", "chat_template")
    }
    # The video processor's own file (read by families that count videos), under its own key too.
    preprocessor["video_preprocessor_config"] = read_checkpoint_json(folder / "video_preprocessor_config.json")
    tokenizer_config = read_checkpoint_json(folder / "tokenizer_config.json")
    special: dict[str, Any] = {}
    specials_map = read_checkpoint_json(folder / "special_tokens_map.json")
    for key in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
        value = _token_content(tokenizer_config.get(key, specials_map.get(key)))
        if value is not None:
            special[key] = value
    template = chat_template if chat_template is not None else _chat_template(folder, tokenizer_config)
    if template is None:  # a processor that builds its string without one (PaliGemma) ships its own
        template = getattr(family, "chat_template", None)
    _check_numbers("preprocessor_config.json", {k: v for k, v in preprocessor.items() if k != "processor_config"})
    _check_numbers("processor_config.json", preprocessor["processor_config"])
    _check_numbers("config.json", {k: config[k] for k in ("vision_config", "downsample_ratio", "image_seq_length",
                                                           "mm_tokens_per_image") if k in config})
    try:
        settings = family.settings(preprocessor=preprocessor, config=config, overrides=overrides)
        family.expand(448, 336, settings)  # the arithmetic runs on these settings, or the checkpoint is broken
    except (UsageError, ModelError):
        raise
    except Exception as e:
        raise ModelError(f"the processor settings of {folder} do not work for {family.name} "
                         f"({type(e).__name__}: {str(e)[:200]}); check preprocessor_config.json") from None
    return ModelSpec(path=folder, model_type=model_type, family=family, settings=settings,
                     chat_template=template, special_tokens=special, overrides=overrides)
