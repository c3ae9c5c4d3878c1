"""The lint rules: one function per rule, each ``(ctx) -> list[LintFinding]``.

A rule reads options through :class:`~vlmcheck.lint.frameworks.View` (so a fix names the option as
the framework spells it), never raises on odd values (VL002 instead), and stays silent when a value
it needs is unknown: no finding beats a wrong one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vlmcheck.families import known_families
from vlmcheck.families.base import PixelBudgetFamily
from vlmcheck.lint.device import DeviceInfo
from vlmcheck.lint.frameworks import Opt, View, known_options
from vlmcheck.lint.readers import RunConfig
from vlmcheck.lint.records import LintFinding, make

_VLM_NAME = re.compile(
    r"vl\b|vl[-_]|-vl|vision|llava|idefics|smolvlm|paligemma|pixtral|gemma-?3|internvl|omni|mllama|"
    r"molmo|florence|blip|minicpm-v|glm-?4\.?\d*v|aya-vision|kimi-vl|phi-?[34].*vision|qwen\d?(\.\d)?-?vl",
    re.IGNORECASE,
)


@dataclass
class Context:
    """What every rule may look at."""

    run: RunConfig
    view: View
    device: DeviceInfo | None = None
    num_processes: int | None = None
    family: str | None = None
    #: max_pixels of the --model checkpoint's image processor, when read
    model_max_pixels: int | None = None
    #: ``report.summary`` of vlmcheck.scan over --data
    data_summary: dict[str, Any] | None = None
    data_name: str | None = None
    problems: list[LintFinding] = field(default_factory=list)
    _reported: set[str] = field(default_factory=set)

    # -- reading values ----------------------------------------------------------------------

    def get_int(self, concept: str) -> tuple[Opt, int] | None:
        opt = self.view.opt(concept)
        if opt is None or opt.value is None:
            return None
        value = opt.value
        if isinstance(value, bool):
            self._bad(opt, "an integer")
            return None
        if isinstance(value, int):
            return opt, value
        if isinstance(value, float) and value.is_integer():
            return opt, int(value)
        if isinstance(value, str):
            try:
                return opt, int(value.strip())
            except ValueError:
                pass
        self._bad(opt, "an integer")
        return None

    def get_float(self, concept: str) -> tuple[Opt, float] | None:
        opt = self.view.opt(concept)
        if opt is None or opt.value is None:
            return None
        if isinstance(opt.value, bool):
            self._bad(opt, "a number")
            return None
        try:
            return opt, float(opt.value)
        except (TypeError, ValueError):
            self._bad(opt, "a number")
            return None

    def get_bool(self, concept: str) -> tuple[Opt, bool] | None:
        opt = self.view.opt(concept)
        if opt is None or opt.value is None:
            return None
        if isinstance(opt.value, bool):
            return opt, opt.value
        if isinstance(opt.value, int) and opt.value in (0, 1):
            return opt, bool(opt.value)
        if isinstance(opt.value, str) and opt.value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return opt, opt.value.strip().lower() in ("true", "1", "yes")
        self._bad(opt, "true or false")
        return None

    def _bad(self, opt: Opt, expected: str) -> None:
        if opt.name not in self._reported:
            self._reported.add(opt.name)
            self.problems.append(make(
                "VL002", f"{opt.name}={opt.value!r} is not {expected}",
                fix=f"write {opt.name} as {expected}", option=opt.name, value=opt.value, expected=expected,
            ))
        return None

    # -- writing fixes -----------------------------------------------------------------------

    def spell(self, name: str, value: Any) -> str:
        """``name = value`` the way this config writes options."""
        style = self.run.style
        if isinstance(value, bool):
            text = "true" if value else "false"
            if style == "python":
                text = str(value)
        elif isinstance(value, dict):
            import json

            text = json.dumps(value)
            if style == "cli":
                text = f"'{text}'"
        else:
            text = str(value)
        if style == "cli":
            return f"`--{name} {text}`"
        if style in ("dotted", "python"):
            return f"`{name}={text}`"
        return f"`{name}: {text}`"

    @property
    def world_size(self) -> int | None:
        return self.num_processes if self.num_processes is not None else self.run.num_processes

    def default_note(self, opt: Opt) -> str:
        return "" if opt.explicit else f" ({self.view.framework}'s default)"


Rule = Callable[[Context], list[LintFinding]]


# -- VL0xx -------------------------------------------------------------------------------------


def unknown_options(ctx: Context) -> list[LintFinding]:
    """VL001: options the framework does not have."""
    accepts = known_options(ctx.view.framework)
    if accepts is None:
        return []
    out = []
    for name in ctx.run.options:
        if name in ctx.run.added or accepts(name):
            continue
        stops = (": LLaMA-Factory stops before step 1 on a key it does not know (ALLOW_EXTRA_ARGS=1 lets it run)"
                 if ctx.view.framework == "llamafactory" else "")
        out.append(make(
            "VL001", f"{name!r} is not an option of {ctx.view.framework} (as of the versions in the docs){stops}",
            option=name, value=ctx.run.options[name],
        ))
    return out


# -- VL1xx: GRPO -------------------------------------------------------------------------------


def grpo_single_generation(ctx: Context) -> list[LintFinding]:
    """VL101: a group of one completion per prompt."""
    if not ctx.view.is_grpo:
        return []
    got = ctx.get_int("num_generations")
    if got is None or got[1] >= 2:
        return []
    opt, n = got
    fw = ctx.view.framework
    if fw == "verl":
        what = (f"{opt.name}={n}{ctx.default_note(opt)} with algorithm.adv_estimator=grpo: verl gives a group "
                "of one mean 0 and std 1, so the advantage is the raw reward with no group baseline")
    elif fw == "easyr1":
        what = (f"{opt.name}={n}{ctx.default_note(opt)}: EasyR1 >= 0.3.0 raises \"GRPO and RLOO algorithm need "
                "`config.worker.rollout.n > 1`\"; older versions train on groups of one")
    else:
        what = (f"{opt.name}={n}: the reward std of a group of one is NaN in torch, so loss and grad_norm go "
                "NaN (TRL 0.14 and forks), or the trainer refuses to start (TRL >= 0.15, VLM-R1, ms-swift)")
    return [make("VL101", what, fix=f"sample a group per prompt: {ctx.spell(opt.name, 8 if fw not in ('verl', 'easyr1') else 5)}",
                 option=opt.name, num_generations=n)]


def _valid_divisors(total: int) -> list[int]:
    return [d for d in range(2, total + 1) if total % d == 0]


def grpo_batch_indivisible(ctx: Context) -> list[LintFinding]:
    """VL102: the batch does not hold whole groups."""
    if not ctx.view.is_grpo:
        return []
    fw = ctx.view.framework
    if fw in ("easyr1", "verl"):
        return _rl_batches(ctx)
    n_got = ctx.get_int("num_generations")
    bs_got = ctx.get_int("per_device_train_batch_size")
    if n_got is None or bs_got is None or n_got[1] < 2:
        return []
    n_opt, n = n_got
    bs_opt, bs = bs_got
    world = ctx.world_size or 1
    procs = f"{world} process{'es' if world != 1 else ''}"
    if fw == "vlm-r1":
        # VLM-R1's trainer: per_device_train_batch_size x num_processes (grpo_trainer.py)
        total = bs * world
        if total % n == 0:
            return []
        need = n // math.gcd(bs * world, n)
        return [make(
            "VL102",
            f"the global batch {bs} x {procs} = {total} is not a multiple of {n_opt.name}={n}; VLM-R1's trainer "
            f"raises at init. Valid {n_opt.name} values: {_valid_divisors(total)}",
            fix=f"{ctx.spell(bs_opt.name, math.ceil(bs / need) * need)}, or {n_opt.name} in {_valid_divisors(total)}",
            option=n_opt.name, num_generations=n, global_batch=total, valid=_valid_divisors(total),
        )]
    gen = ctx.get_int("generation_batch_size")
    spg = ctx.get_int("steps_per_generation")
    ga = ctx.get_int("gradient_accumulation_steps")
    if gen is not None:
        total, how = gen[1], f"generation_batch_size={gen[1]}"
        fix_name, fix_value = gen[0].name, math.ceil(total / n) * n
    else:
        steps = spg if spg is not None else ga
        if steps is None:
            return []  # ms-swift derives gradient_accumulation_steps at run time
        total = bs * world * steps[1]
        how = (f"the generation batch per_device_train_batch_size x processes x {steps[0].name} = "
               f"{bs} x {world} x {steps[1]} = {total}")
        need = n // math.gcd(bs * world, n)
        fix_name, fix_value = steps[0].name, math.ceil(steps[1] / need) * need
    if total % n == 0:
        return []
    valid = _valid_divisors(total)
    world_note = "" if ctx.world_size else " (assuming 1 process; pass --num-processes for the launch)"
    return [make(
        "VL102",
        f"{how} is not a multiple of {n_opt.name}={n}{world_note}: TRL >= 0.18 GRPOConfig and ms-swift raise "
        f"\"generation_batch_size ({total}) must be divisible by num_generations ({n})\"",
        fix=f"{ctx.spell(fix_name, fix_value)}, or {n_opt.name} in {valid}",
        option=n_opt.name, num_generations=n, generation_batch_size=total, valid=valid,
    )]


def _rl_batches(ctx: Context) -> list[LintFinding]:
    fw = ctx.view.framework
    n_got = ctx.get_int("num_generations")
    n = n_got[1] if n_got else 1
    out = []
    if fw == "easyr1":
        rb, gb, mb = ctx.get_int("rollout_batch_size"), ctx.get_int("global_batch_size"), ctx.get_int("micro_batch_size_for_experience")
        if rb and gb and rb[1] % gb[1]:
            out.append(make(
                "VL102", f"{rb[0].name}={rb[1]} is not a multiple of {gb[0].name}={gb[1]}: EasyR1 raises "
                "\"Rollout batch size must be divisible by actor global batch size\"",
                fix=f"{ctx.spell(gb[0].name, _largest_divisor_at_most(rb[1], gb[1]))} (a divisor of {rb[1]})",
                option=gb[0].name, rollout_batch_size=rb[1], global_batch_size=gb[1],
            ))
        if rb and mb and (rb[1] * n) % mb[1]:
            out.append(make(
                "VL102", f"{rb[0].name} x worker.rollout.n = {rb[1]} x {n} = {rb[1] * n} is not a multiple of "
                f"{mb[0].name}={mb[1]}: EasyR1 raises at trainer init",
                fix=f"{ctx.spell(mb[0].name, _largest_divisor_at_most(rb[1] * n, mb[1]))}",
                option=mb[0].name, rollout_batch_size=rb[1], n=n, micro_batch_size=mb[1],
            ))
    else:
        tb, gpus, nodes = ctx.get_int("train_batch_size"), ctx.get_int("n_gpus_per_node"), ctx.get_int("nnodes")
        if tb and gpus:
            total_gpus = gpus[1] * (nodes[1] if nodes and nodes[1] > 0 else 1)
            if (tb[1] * n) % total_gpus:
                out.append(make(
                    "VL102", f"{tb[0].name} x rollout.n = {tb[1]} x {n} = {tb[1] * n} is not a multiple of the "
                    f"{total_gpus} GPUs: verl asserts \"real_train_batch_size ... must be divisible by minimal "
                    "possible batch size\"",
                    fix=f"{ctx.spell(tb[0].name, math.ceil(tb[1] / total_gpus) * total_gpus)}",
                    option=tb[0].name, train_batch_size=tb[1], n=n, gpus=total_gpus,
                ))
    return out


def _largest_divisor_at_most(total: int, limit: int) -> int:
    return max(d for d in range(1, min(total, limit) + 1) if total % d == 0)


def grpo_temperature_zero(ctx: Context) -> list[LintFinding]:
    """VL103: greedy sampling gives identical completions."""
    if not ctx.view.is_grpo or ctx.view.framework == "vlm-r1":
        return []
    got = ctx.get_float("temperature")
    if got is None or got[1] > 0:
        return []
    opt, t = got
    return [make(
        "VL103", f"{opt.name}={t:g}: every completion of a group is the greedy one, rewards are equal, the "
        "reward std is 0 and so is every advantage",
        fix=f"sample: {ctx.spell(opt.name, 1.0)}", option=opt.name, temperature=t,
    )]


def option_ignored(ctx: Context) -> list[LintFinding]:
    """VL104: VLM-R1 ignores max_prompt_length and temperature."""
    if ctx.view.framework != "vlm-r1":
        return []
    out = []
    for name, what in (("max_prompt_length", "sets it to None with a warning: prompts are never truncated"),
                       ("temperature", "samples at a fixed temperature=1")):
        if name in ctx.run.options:
            out.append(make("VL104", f"{name}={ctx.run.options[name]!r} has no effect: VLM-R1's GRPO trainer {what}",
                            option=name, value=ctx.run.options[name]))
    return out


# -- VL2xx: lengths ----------------------------------------------------------------------------


def _length(ctx: Context) -> tuple[Opt, int] | None:
    fw = ctx.view.framework
    if fw in ("trl", "vlm-r1") and ctx.view.is_grpo:
        return None if fw == "vlm-r1" else ctx.get_int("max_prompt_length")
    if fw == "unsloth":
        col = ctx.run.calls.get("UnslothVisionDataCollator", {})
        if isinstance(col.get("max_seq_length"), int):
            return Opt("max_seq_length", col["max_seq_length"], True), col["max_seq_length"]
    return ctx.get_int("max_length")


def max_length_below_data(ctx: Context) -> list[LintFinding]:
    """VL201: the length option against a real scan of --data."""
    summary = ctx.data_summary
    if not summary:
        return []
    rec = summary.get("recommended_max_length") or {}
    need = rec.get("100%")
    got = _length(ctx)
    if got is None or not isinstance(need, int):
        return []
    opt, length = got
    if length >= need:
        return []
    p999, p99 = rec.get("99.9%"), rec.get("99%")
    quant = ", ".join(f"{k}: {v:,}" for k, v in (("99.9%", p999), ("99%", p99)) if isinstance(v, int))
    target = p999 if isinstance(p999, int) and p999 > length else need
    return [make(
        "VL201",
        f"{opt.name}={length:,}{ctx.default_note(opt)} but the longest sample of {ctx.data_name or 'the dataset'} "
        f"needs {need:,} tokens ({quant}); longer samples are cut (through image spans) or dropped",
        fix=f"{ctx.spell(opt.name, need)}" + (f" (or {target:,} to give up the longest 0.1%)" if target != need else "")
        + ", or lower the image size cap",
        option=opt.name, max_length=length, needed=need, recommended=rec,
    )]


def max_pixels_exceeds_length(ctx: Context) -> list[LintFinding]:
    """VL202: one image at the pixel cap is longer than the whole sequence."""
    family = known_families().get(ctx.family or "")
    if not isinstance(family, PixelBudgetFamily):
        return []
    side, wrap = family.token_side, family.image_wrap_tokens
    got_len = _length(ctx)
    if got_len is None:
        return []
    len_opt, length = got_len
    env_pixels = ctx.run.env.get("MAX_PIXELS") if ctx.view.framework == "swift" else None
    if env_pixels is not None and env_pixels.isdigit():
        pix_name, pixels, explicit = "MAX_PIXELS", int(env_pixels), True
    else:
        got_pix = ctx.get_int("max_pixels")
        if got_pix is not None:
            pix_name, pixels, explicit = got_pix[0].name, got_pix[1], got_pix[0].explicit
        elif ctx.model_max_pixels is not None:
            pix_name, pixels, explicit = "max_pixels (the checkpoint's preprocessor_config.json)", ctx.model_max_pixels, True
        else:
            return []
    tokens = pixels // (side * side) + wrap
    if tokens <= length:
        return []
    fit_pixels = (length - wrap) * side * side
    cap = (length * 3 // 4 - wrap) * side * side  # leaves a quarter of the length to text
    default = "" if explicit else f" ({ctx.view.framework}'s default)"
    pix_fix = f"`MAX_PIXELS={cap}` in the environment" if pix_name == "MAX_PIXELS" else ctx.spell(pix_name, cap)
    return [make(
        "VL202",
        f"an image at {pix_name}={pixels:,}{default} takes up to {tokens:,} tokens ({ctx.family}: one per "
        f"{side}x{side} px), more than {len_opt.name}={length:,}; images over {fit_pixels:,} px cannot fit "
        "even alone (run with --data to check the real images)",
        fix=f"{pix_fix} (leaves a quarter of {len_opt.name} to text), or {ctx.spell(len_opt.name, tokens + 512)}",
        option=pix_name, max_pixels=pixels, image_tokens=tokens, max_length=length, family=ctx.family,
    )]


# -- VL3xx: trainer features vs vision data ----------------------------------------------------


def _looks_vlm(ctx: Context) -> bool:
    if ctx.family is not None or ctx.data_summary is not None:
        return True
    model = ctx.view.opt("model")
    if model is None or not isinstance(model.value, str):
        return True  # vlmcheck's users train VLMs; only a known text model turns the rules off
    return bool(_VLM_NAME.search(model.value))


def trl_vision_features(ctx: Context) -> list[LintFinding]:
    """VL301-VL304: SFTTrainer features that do not work with vision datasets."""
    if ctx.view.framework not in ("trl", "unsloth") or not ctx.view.is_sft or not _looks_vlm(ctx):
        return []
    out = []
    packing = ctx.get_bool("packing")
    if packing and packing[1]:
        out.append(make("VL301", f"{packing[0].name}=true with vision data: TRL raises \"Packing is not supported "
                        "for vision datasets\"", fix=ctx.spell(packing[0].name, False), option=packing[0].name))
    pf = ctx.get_bool("padding_free")
    if pf and pf[1]:
        out.append(make("VL302", f"{pf[0].name}=true with vision data: TRL raises \"Padding-free training is yet "
                        "not supported for vision datasets\"", fix=ctx.spell(pf[0].name, False), option=pf[0].name))
    aol = ctx.get_bool("assistant_only_loss")
    if aol and aol[1]:
        out.append(make("VL303", f"{aol[0].name}=true with vision data: TRL 0.22 to 1.9 raise \"Assistant-only loss "
                        "is not yet supported for vision-language models\"; TRL 1.16 needs transformers >= 5.18",
                        fix=f"run TRL >= 1.16 with transformers >= 5.18, or {ctx.spell(aol[0].name, False)}",
                        option=aol[0].name))
    tm = ctx.view.opt("truncation_mode")
    ml = ctx.view.opt("max_length")
    if tm is not None and str(tm.value) == "keep_end" and (ml is None or ml.value is not None):
        out.append(make("VL304", f"{tm.name}=keep_end with vision data: cutting from the left removes image "
                        "tokens whose pixel_values stay; TRL >= 1.0 raises at SFTTrainer init",
                        fix=ctx.spell(tm.name, "keep_start"), option=tm.name))
    return out


# Unsloth's FastBaseModel.from_pretrained(max_seq_length=2048) (unsloth/models/vision.py).
UNSLOTH_DEFAULT_MAX_SEQ_LENGTH = 2048


def unsloth_collator_max_length(ctx: Context) -> list[LintFinding]:
    """VL305: the Unsloth vision collator truncates at its own length, not SFTConfig's."""
    calls = ctx.run.calls
    if "UnslothVisionDataCollator" not in calls or "max_seq_length" in calls["UnslothVisionDataCollator"]:
        return []
    loaders = [kw for name, kw in calls.items() if name.endswith("from_pretrained") and name.startswith("Fast")]
    model_len: int | None = None
    if loaders:
        value = loaders[0].get("max_seq_length", UNSLOTH_DEFAULT_MAX_SEQ_LENGTH)
        model_len = value if isinstance(value, int) else None
    sft = ctx.run.options.get("max_length")
    fix = f"`UnslothVisionDataCollator(model, tokenizer, max_seq_length={sft if isinstance(sft, int) else 2048})`"
    if not loaders:
        return [make("VL305", "UnslothVisionDataCollator has no max_seq_length and the model is not loaded with "
                     "FastVisionModel.from_pretrained: the collator truncates nothing, and SFTConfig's max_length "
                     "is not applied to vision data", fix=fix, option="max_seq_length")]
    if isinstance(sft, int) and model_len is not None and sft != model_len:
        return [make("VL305", f"SFTConfig max_length={sft:,} is not applied to vision data; "
                     f"UnslothVisionDataCollator truncates at the model's max_seq_length={model_len:,} instead",
                     fix=fix, option="max_seq_length", max_length=sft, max_seq_length=model_len)]
    return []


# -- VL4xx: distributed and hardware -----------------------------------------------------------


def _lora(ctx: Context) -> bool:
    fw, calls = ctx.view.framework, ctx.run.calls
    if any(name.split(".")[-1] in ("LoraConfig", "get_peft_model") for name in calls):
        return True
    opt = ctx.view.opt("lora")
    if opt is None:
        return False
    if fw in ("llamafactory", "swift"):
        return str(opt.value).lower() in ("lora", "qlora", "longlora", "adalora")
    got = ctx.get_bool("lora")
    return bool(got and got[1])


def _installed_major(package: str) -> int | None:
    from importlib import metadata

    try:
        return int(metadata.version(package).split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return None


def ddp_reentrant_find_unused(ctx: Context) -> list[LintFinding]:
    """VL401: DDP + LoRA + reentrant checkpointing + find_unused_parameters."""
    fw = ctx.view.framework
    if fw in ("verl", "easyr1") or not _lora(ctx):
        return []
    if ctx.world_size == 1:
        return []
    if ctx.run.distributed or ctx.run.options.get("deepspeed") or ctx.run.options.get("fsdp"):
        return []  # not plain DDP
    # gradient checkpointing on?
    if fw == "llamafactory":
        off = ctx.get_bool("disable_gradient_checkpointing")
        if off and off[1]:
            return []
        re_got = ctx.get_bool("use_reentrant_gc")
        if re_got is None:
            return []
        reentrant, re_name, re_explicit = re_got[1], re_got[0].name, re_got[0].explicit
        re_fix = ctx.spell("use_reentrant_gc", False)
    else:
        gc = ctx.get_bool("gradient_checkpointing")
        if not gc or not gc[1]:
            return []
        kwargs_opt = ctx.view.opt("gradient_checkpointing_kwargs")
        kwargs = kwargs_opt.value if kwargs_opt is not None else None
        re_name = "gradient_checkpointing_kwargs.use_reentrant"
        if isinstance(kwargs, dict) and "use_reentrant" in kwargs:
            reentrant, re_explicit = bool(kwargs["use_reentrant"]), True
        elif fw == "vlm-r1":
            reentrant, re_explicit = True, False  # transformers 4.49 (pinned): use_reentrant=True default
        elif fw == "swift":
            reentrant, re_explicit = False, False  # ms-swift trainers/mixin.py: False under plain DDP
        else:
            major = _installed_major("transformers")
            # transformers 5 defaults to non-reentrant (modeling_utils.py); 4.35-4.x to reentrant
            reentrant, re_explicit = (major is None or major < 5), False
        re_fix = ctx.spell(kwargs_opt.name if kwargs_opt else "gradient_checkpointing_kwargs", {"use_reentrant": False})
    if not reentrant:
        return []
    fu = ctx.get_bool("ddp_find_unused_parameters")
    if not fu or not fu[1]:
        return []
    procs = f"{ctx.world_size} processes" if ctx.world_size else "more than one GPU"
    default = "" if re_explicit else " (the default)"
    return [make(
        "VL401",
        f"LoRA + gradient checkpointing with reentrant checkpointing{default} ({re_name}) + "
        f"ddp_find_unused_parameters=true under DDP on {procs}: backward fails with \"Expected to mark a "
        "variable ready only once ... has been marked as ready twice\"",
        fix=f"{re_fix}, or {ctx.spell(fu[0].name, False)}",
        option=fu[0].name, reentrant=reentrant, processes=ctx.world_size,
    )]


def _wants_bf16(ctx: Context) -> str | None:
    """The option that asks for bf16, if one does."""
    bf = ctx.get_bool("bf16")
    if bf and bf[1] and bf[0].explicit:
        return bf[0].name
    if ctx.view.framework in ("trl", "unsloth") and ctx.view.opt("bf16") is not None:
        fp16 = ctx.get_bool("fp16")
        if ctx.run.options.get("bf16", None) is None and not (fp16 and fp16[1]):
            # TRL's configs turn bf16=None into `not fp16` (base_config.py / sft_config.py __post_init__)
            return "bf16 (TRL's default: on unless fp16)"
    dtype = ctx.view.opt("torch_dtype")
    if dtype is not None and str(dtype.value).lower() in ("bfloat16", "bf16", "torch.bfloat16"):
        return dtype.name
    return None


def bf16_unsupported(ctx: Context) -> list[LintFinding]:
    """VL402: bf16 on a GPU without it (only with a real device)."""
    dev = ctx.device
    if dev is None or dev.bf16 or ctx.view.framework in ("verl", "easyr1"):
        return []
    name = _wants_bf16(ctx)
    if name is None:
        return []
    cap = f" (compute capability {dev.capability[0]}.{dev.capability[1]})" if dev.capability else ""
    fix = f"{ctx.spell('fp16', True)} and {ctx.spell('bf16', False)}"
    if name in ("torch_dtype", "dtype"):
        fix = ctx.spell(name, "float16")
    return [make("VL402", f"{name} asks for bf16 but {dev.names[0]}{cap} does not support it", fix=fix,
                 option=name, gpu=dev.names[0])]


def gpu_count_mismatch(ctx: Context) -> list[LintFinding]:
    """VL403: more processes per node than visible GPUs."""
    dev = ctx.device
    if dev is None:
        return []
    if ctx.view.framework in ("verl", "easyr1"):
        got = ctx.get_int("n_gpus_per_node")
        if got is None:
            return []
        name, asked = got[0].name, got[1]
    elif ctx.run.nproc_per_node is not None:
        name, asked = {"torchrun": "--nproc_per_node", "accelerate": "--num_processes",
                       "deepspeed": "--num_gpus"}.get(ctx.run.launcher or "", "NPROC_PER_NODE"), ctx.run.nproc_per_node
    else:
        return []
    if asked <= dev.count:
        return []
    return [make("VL403", f"{name}={asked} but this machine has {dev.count} GPU{'s' if dev.count != 1 else ''} "
                 f"({', '.join(dict.fromkeys(dev.names))})", fix=f"set {name} to {dev.count}",
                 option=name, asked=asked, gpus=dev.count)]


RULES: list[Rule] = [
    unknown_options,
    grpo_single_generation,
    grpo_batch_indivisible,
    grpo_temperature_zero,
    option_ignored,
    max_length_below_data,
    max_pixels_exceeds_length,
    trl_vision_features,
    unsloth_collator_max_length,
    ddp_reentrant_find_unused,
    bf16_unsupported,
    gpu_count_mismatch,
]
