"""``check()``: judge every sample the way the user's own training framework will, from the config they launch.

>>> report = check("examples/train_lora/qwen2_5vl_lora_sft.yaml")  # doctest: +SKIP
>>> report.counts  # doctest: +SKIP
{'VC201': 3}

The config names the framework, the model, the datasets and every setting; the framework module
(:mod:`vlmcheck.frameworks`) fills in the framework's defaults and says how rows become tokens, how images are
sized and what happens at the cut. The model family (:mod:`vlmcheck.families`) counts each image's features.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmcheck import findings as F
from vlmcheck.counting import unreadable_row
from vlmcheck.data.files import not_a_file
from vlmcheck.data.hfjson import NotFollowed, Rewritten
from vlmcheck.errors import DatasetError, UsageError
from vlmcheck.frameworks import Concludes, Run, detect, read_launch
from vlmcheck.options import CheckOptions, from_keywords, keyword_signature
from vlmcheck.pipeline import write_records
from vlmcheck.report import CutAt, Report, ReportBuilder
from vlmcheck.results import SampleResult
from vlmcheck.util import report_target


def read_config_file(path: Path) -> dict[str, Any]:
    """A launch config (YAML or JSON) as a dict."""
    import yaml

    from vlmcheck.data.files import FileProblem, read_text
    from vlmcheck.data.nesting import parse

    problem = not_a_file(path)
    if problem == "not found":
        raise UsageError(f"config not found: {path}")
    if problem:  # a FIFO or device would block the read forever
        raise UsageError(f"config {path}: {problem}")
    try:
        text = read_text(path)  # refused above 64 MiB: no config is, and a sparse one would fill memory
    except FileNotFoundError:
        raise UsageError(f"config not found: {path}") from None
    except FileProblem as e:
        raise UsageError(f"cannot read the config: {e.message}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read config {path}: {e}") from None
    if path.suffix in (".sh", ".bash"):  # a launch script: the framework module reads its overrides
        launched = read_launch(text, path=path)
        if launched is None:
            raise UsageError(f"{path}: no training command vlmcheck reads was found in this script")
        return launched
    if path.suffix.lower() in (".py", ".ipynb"):  # a training script or notebook, read without running it
        launched = read_launch(text, path=path)
        if launched is None:
            raise UsageError(f"{path}: vlmcheck reads Python training scripts and notebooks of Unsloth (importing "
                             "unsloth); for another framework pass its launch config")
        return launched
    try:
        raw = parse(yaml.safe_load, text, where=str(path))
    except yaml.YAMLError as e:
        raise UsageError(f"{path} is not valid YAML: {e}") from None
    if raw is None or raw == {}:  # empty, only comments, `{}`: no run is launched from it
        raise UsageError(f"{path} holds no settings: there is nothing to check")
    if not isinstance(raw, dict):
        raise UsageError(f"{path} must hold a mapping of settings")
    return raw


def _reading(rows: Iterator[Any], path: Path) -> Iterator[Any]:
    """``rows``; what stops reading them (a dataset file that fails mid-read) is a DatasetError naming the config
    whose datasets they are, told apart from an error writing the output."""
    try:
        yield from rows
    except (OSError, DatasetError) as e:
        raise DatasetError(f"reading the datasets of {path}: {e}") from e


def judge_row(run: Run, index: int, row: Any, source: Any) -> SampleResult:
    """``run.judge`` of one row; a row of a shape no judge expected is a finding on it, and the check goes on. A
    row the load changes (hfjson.as_loaded) is judged as loaded and says so (VC008); one it changes in a way
    vlmcheck does not follow is not counted (VC007)."""
    if isinstance(row, NotFollowed):
        result = SampleResult(index=index, id=str(index), tokens=None, image_tokens=[], supervised_tokens=None)
        result.findings.append(F.make("VC007", f"{row.reason}, which vlmcheck does not follow: the row is not "
                                               "counted"))
        result.framework = {"name": run.name, "verdict": "unknown"}
        return result
    try:
        result = run.judge(index, row, source)
    except (UsageError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:
        result = unreadable_row(index, row, e)
        where = getattr(run, "frame", None)  # the dataset and row it came from, where the run names them
        result.framework = {"name": run.name, **(where(index, source) if where is not None else {}),
                            "verdict": "unknown"}
        return result
    if isinstance(row, Rewritten):
        result.findings.append(F.make(
            "VC008", f"datasets returns this row's {', '.join(row.fields)} otherwise than the file writes "
                     f"it ({row.why}): the framework trains on what datasets returns, "
                     "and vlmcheck counted that", fields=row.fields))
    return result


@dataclass(frozen=True)
class CheckRecipe:
    """How another process (a Ray actor or read task) opens the same run: the config and what ``check`` was given,
    the environment the framework reads and the folder relative paths start from, as the caller had them."""

    config: str
    model: str | None
    data: str | None
    path_map: tuple[tuple[str, str], ...]
    env: tuple[tuple[str, str], ...]
    cwd: str

    def open(self) -> Run:
        if os.getcwd() != self.cwd:
            # a framework reads relative paths (LLaMA-Factory's dataset_dir) from where it is launched: a Ray worker
            # process of this machine may start elsewhere
            os.chdir(self.cwd)
        path = Path(self.config)
        raw = read_config_file(path)
        return detect(raw, path=path).open_run(raw, path=path, model=self.model, data=self.data,
                                               path_map=dict(self.path_map), env=dict(self.env))

    def build(self) -> CheckCounter:
        return CheckCounter(self)

    def rows(self, *, start: int = 0, limit: int | None = None) -> Iterator[tuple[int, Any]]:
        """``(index, (row, source))`` of the run, below ``limit`` (the Ray engine's reader)."""
        for index, item in enumerate(self.open().rows()):
            if limit is not None and index >= limit:
                return
            if index >= start:
                yield index, item

    shard = None  # what the Ray engine asks of a source: a check has no shards


class CheckCounter:
    """The check's judge as the pipeline's counter (:class:`vlmcheck.pipeline.Counter`) for the Ray engine: one
    run opened once per actor, each row judged by :func:`judge_row` as the local check does."""

    chunk_size = 64

    def __init__(self, recipe: CheckRecipe) -> None:
        self._recipe = recipe
        self.run = recipe.open()

    def recipe(self) -> CheckRecipe:
        return self._recipe

    def count_chunk(self, rows: list[tuple[int, Any]]) -> list[SampleResult]:
        return [judge_row(self.run, index, row, source) for index, (row, source) in rows]


def check(
    config: str | os.PathLike[str],
    *,
    options: CheckOptions | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    env: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> Report:
    """Judge every sample of a training run from the config it is launched with.

    Every keyword but ``progress`` and ``env`` is a field of :class:`~vlmcheck.options.CheckOptions`, built once
    from them (or pass one as ``options=``).

    Args:
        config: the framework's launch config (a LLaMA-Factory or ``trl sft`` / ``trl grpo`` / ``trl dpo`` YAML, a verl launch
            script or Hydra YAML, an ms-swift or LLaVA launch script, an EasyR1 launch script or YAML, a VLM-R1
            launch script, an Unsloth training script or notebook).
        model: overrides the config's model (a local checkpoint folder or a cached Hugging Face id).
        data: overrides the config's data (LLaMA-Factory ``dataset_dir``, TRL ``dataset_name``, verl
            ``data.train_files``, LLaVA ``--data_path``).
        path_map: rewrites path prefixes in the config and the data, ``{"/mnt/data": "./data"}``.
        limit: judge only the first N rows.
        output: write one JSON record per sample to this .jsonl file (atomically).
        progress: called as ``progress(done, None)`` while judging.
        env: the environment the framework reads (``USE_V1``, ``IMAGE_PLACEHOLDER``); default ``os.environ``.
        engine: ``local`` (this process) or ``ray``: each row judged on Ray actors (one per CPU of the cluster,
            each opening the run once), the rows read by one Ray task; the records and the summary are the local
            engine's (:mod:`vlmcheck.integrations.ray_engine`; needs ``vlmcheck[ray]``).
        ray_address: with ``engine="ray"``, the cluster to connect to; default: Ray's own (``RAY_ADDRESS``, else
            a local cluster). The config, model and data must be at the same paths on every node.
    """
    options = from_keywords(CheckOptions, options, kwargs, caller="check")
    model, data, limit, output = options.model, options.data, options.limit, options.output
    engine, ray_address, path_map = options.engine, options.ray_address, options.path_map
    if engine == "ray":
        from vlmcheck.integrations.ray_engine import ray

        ray()  # without Ray, the install hint before any work
    path = Path(config)
    raw = read_config_file(path)
    module = detect(raw, path=path)
    run = module.open_run(raw, path=path, model=str(model) if model is not None else None,
                          data=str(data) if data is not None else None, path_map=options.path_map, env=env)
    if output is not None:
        report_target(output)  # an existing file must be a vlmcheck output (not a dataset, image or checkpoint file)
        for file in run.inputs():
            if os.path.realpath(output) == os.path.realpath(file):
                raise UsageError(f"output {output} is one of the run's inputs; vlmcheck never writes over its input")
    described = run.describe()
    sources = [*described.get("datasets", []), *(f"{d} (eval)" for d in described.get("eval_datasets", []))]
    builder = ReportBuilder(dataset=", ".join(sources), model=str(run.spec.path),
                            model_type=run.spec.model_type, options=CutAt(max_length=run.max_length,
                                                                          truncation=run.name),
                            settings=run.shown_settings())
    started = time.perf_counter()

    def judged() -> Iterator[SampleResult]:
        if engine == "ray":  # (ray: hook) the same judge on Ray actors, results back in row order
            from vlmcheck.integrations.ray_engine import ray_results

            recipe = CheckRecipe(
                config=os.path.abspath(path), model=str(model) if model is not None else None,
                data=str(data) if data is not None else None, path_map=tuple((path_map or {}).items()),
                env=tuple((env if env is not None else os.environ).items()), cwd=os.getcwd())
            yield from _reading(ray_results(None, recipe, recipe, limit=limit, address=ray_address,
                                            chunk=CheckCounter.chunk_size), path)
            return
        for index, (row, source) in enumerate(_reading(run.rows(), path)):
            if limit is not None and index >= limit:
                return
            yield judge_row(run, index, row, source)

    def results() -> Iterator[SampleResult]:
        for done, result in enumerate(judged(), 1):
            if progress is not None:
                progress(done, None)
            yield result

    try:
        write_records(results(), builder, output)
    except OSError as e:  # what is left is the records' file: a full disk, a folder that cannot be written
        where = f"the --output records {output}" if output is not None else "the records' temporary file"
        raise UsageError(f"cannot write {where}: {e}") from e
    if limit is None and isinstance(run, Concludes) and builder.store is not None:  # it rests on every row
        for finding in run.conclude(iter(builder.store)):
            builder.add_run_finding(finding)
    report = builder.build(seconds=time.perf_counter() - started)
    report.summary["command"] = "check"
    report.summary["framework"] = {**described, "verdicts": dict(sorted(builder.verdicts.items()))}
    return report


# the config, then every option, as help() and editors show it
check.__signature__ = keyword_signature(check, CheckOptions, after="config")  # type: ignore[attr-defined]
