"""``vlmcheck.lint(config, ...)``: read a training config, run every rule, return a report."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from vlmcheck.data.files import not_a_file
from vlmcheck.errors import UsageError, VlmcheckError
from vlmcheck.families import known_families
from vlmcheck.lint.device import DeviceInfo, probe_device
from vlmcheck.lint.frameworks import View
from vlmcheck.lint.readers import RunConfig, read_config
from vlmcheck.lint.records import LintReport
from vlmcheck.lint.rules import RULES, Context
from vlmcheck.model import read_checkpoint_json
from vlmcheck.options import LintOptions, from_keywords, keyword_signature


def _letters(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def family_from_name(name: str) -> str | None:
    """The registered family a hub id or template names, by its ``model_type`` or title written in any
    spelling (``Qwen/Qwen2.5-VL-7B-Instruct`` -> ``qwen2_5_vl``, LLaMA-Factory's ``qwen2_vl`` template ->
    ``qwen2_vl``); the longest match wins (``paligemma-3b`` is PaliGemma, not Gemma 3)."""
    wanted = _letters(name)
    best: tuple[int, str] | None = None
    for model_type, family in known_families().items():
        for key in {_letters(model_type), _letters(family.title)}:
            if key and key in wanted and (best is None or len(key) > best[0]):
                best = (len(key), model_type)
    return best[1] if best else None


def _read_checkpoint(model: str | os.PathLike[str]) -> tuple[str | None, int | None]:
    """model_type and the image processor's max_pixels of a local checkpoint folder, read by the checkpoint reader
    (a FIFO, an oversized, too deeply nested or malformed file is a ModelError, as ``check`` says it)."""
    folder = Path(model)
    family: str | None = None
    max_pixels: int | None = None
    model_type = read_checkpoint_json(folder / "config.json").get("model_type")
    if isinstance(model_type, str):
        family = model_type
    values = read_checkpoint_json(folder / "preprocessor_config.json")
    if isinstance(values.get("max_pixels"), int):
        max_pixels = values["max_pixels"]
    elif isinstance(values.get("size"), dict) and isinstance(values["size"].get("longest_edge"), int):
        max_pixels = values["size"]["longest_edge"]  # Qwen3-VL spells the pixel cap this way
    if family is None and not folder.exists():
        family = family_from_name(str(model))
    return family, max_pixels


def _config_family(view: View) -> str | None:
    names = []
    for concept in ("model", "template"):
        opt = view.opt(concept)
        if opt is not None and isinstance(opt.value, str):
            names.append(opt.value)
    for name in names:
        folder = Path(name)
        if not_a_file(folder / "config.json") != "not found":  # a FIFO there is refused, not taken for no folder
            family, _ = _read_checkpoint(folder)
            if family:
                return family
        family = family_from_name(name)
        if family:
            return family
    return None


def _pixel_cap(run: RunConfig, view: View) -> int | None:
    """The image size cap the run resizes with, so the scan counts the tokens training will see."""
    if run.framework == "swift" and str(run.env.get("MAX_PIXELS", "")).isdigit():
        return int(run.env["MAX_PIXELS"])
    opt = view.opt("max_pixels")
    if opt is not None and isinstance(opt.value, int) and not isinstance(opt.value, bool):
        return opt.value
    return None


def _scan_summary(
    data: str | os.PathLike[str], model: str | os.PathLike[str], max_pixels: int | None, framework: str | None = None
) -> dict[str, Any]:
    try:
        from vlmcheck.scan import scan
    except ImportError as exc:
        raise VlmcheckError(
            f"--data needs vlmcheck.scan, which this build does not have yet ({exc}); lint without --data"
        ) from None
    # the framework's own truncation, resize route and defaults (scan --framework), as its module states them
    report = scan(str(data), model=str(model), max_pixels=max_pixels, framework=framework)
    summary = getattr(report, "summary", None)
    if not isinstance(summary, dict):
        raise VlmcheckError("vlmcheck.scan returned a report without a summary dict; cannot check lengths")
    return summary


def _llamafactory_run(config: str | os.PathLike[str], data: str | os.PathLike[str]) -> bool:
    """A LLaMA-Factory YAML with a dataset folder (holding dataset_info.json) that check() can read whole. Whatever
    is at dataset_info.json goes to check(), which refuses it as it refuses it there when it is not a file to read
    (a FIFO, a device, a folder), never scanned past as a plain folder of data."""
    info = Path(data) / "dataset_info.json"
    return Path(config).suffix in (".yaml", ".yml", ".json") and not_a_file(info) != "not found"


def lint(
    config: str | os.PathLike[str],
    *,
    options: LintOptions | None = None,
    device: DeviceInfo | None | Literal["auto"] = "auto",
    **kwargs: Any,
) -> LintReport:
    """Lint a training config; problems are findings in the report, never exceptions.

    ``config`` is a LLaMA-Factory / TRL / verl / EasyR1 YAML or JSON file, a shell script or file
    holding the launch command (torchrun, accelerate launch, deepspeed, python, swift,
    llamafactory-cli), or a Python training script. Every keyword but ``device`` is a field of
    :class:`~vlmcheck.options.LintOptions`, built once from them (or pass one as ``options=``):
    ``data`` (with ``model``, or the model the config names when it is a local folder) checks the length
    options against a real scan of the dataset; ``framework`` overrides detection; ``num_processes`` gives the
    launch's process count when the config does not say it. ``device`` is the hardware to check against
    (``"auto"``: read it with torch when importable, skipping the hardware rules when torch or a GPU is absent).

    Raises :class:`vlmcheck.UsageError` only for misuse: a missing file, a config that cannot be
    parsed at all, an unknown framework, or ``data`` without a model.

    >>> import vlmcheck
    >>> report = vlmcheck.lint("tests/lint/configs/vlmr1_grpo_rec.sh")  # doctest: +SKIP
    >>> report.counts  # doctest: +SKIP
    {'VL101': 1, 'VL104': 1}
    """
    options = from_keywords(LintOptions, options, kwargs, caller="lint")
    data, model, framework = options.data, options.model, options.framework
    run: RunConfig = read_config(config, framework=framework)
    view = View(run)
    family: str | None = None
    model_max_pixels: int | None = None
    if model is not None:
        family, model_max_pixels = _read_checkpoint(model)
    if family is None:
        family = _config_family(view)
    summary = None
    if data is not None:
        scan_model = model
        if scan_model is None:
            named = view.opt("model")
            if named is not None and isinstance(named.value, str) and Path(named.value).is_dir():
                scan_model = named.value
        if scan_model is None:
            raise UsageError("--data needs --model (a checkpoint folder or hub id) to count tokens")
        scan_model = str(scan_model)
        if run.framework == "llamafactory" and _llamafactory_run(config, data):
            # the same path as `vlmcheck check`: LLaMA-Factory's own templates, image rules and cut
            from vlmcheck.checking import check

            summary = check(config, model=scan_model, data=data).summary
        else:
            semantics = run.framework if run.framework in ("llamafactory", "trl", "swift") else None
            summary = _scan_summary(data, scan_model, _pixel_cap(run, view), semantics)
        if not summary.get("tokens"):
            raise UsageError(f"--data {data}: no sample could be counted ({summary.get('samples', 0)} rows read); "
                             "an empty or unreadable dataset cannot pass a length check")
    ctx = Context(
        run=run,
        view=view,
        device=probe_device() if device == "auto" else device,
        num_processes=options.num_processes,
        family=family,
        model_max_pixels=model_max_pixels,
        data_summary=summary,
        data_name=str(data) if data is not None else None,
    )
    findings = []
    for rule in RULES:
        findings.extend(rule(ctx))
    findings.extend(ctx.problems)
    report_summary: dict[str, Any] = {
        "launcher": run.launcher,
        "entry": run.entry,
        "num_processes": ctx.world_size,
        "family": family,
        "grpo": view.is_grpo,
        "options": len(run.options),
        "notes": run.notes,
    }
    if summary is not None:
        report_summary["data"] = {"recommended_max_length": summary.get("recommended_max_length")}
    return LintReport(config=str(config), framework=run.framework, findings=findings, summary=report_summary)


# the config, then every option, then the hardware, as help() and editors show it
lint.__signature__ = keyword_signature(lint, LintOptions, after="config")  # type: ignore[attr-defined]
