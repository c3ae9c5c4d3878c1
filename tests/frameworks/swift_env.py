"""ms-swift's own environment, the oracle for ``vlmcheck check`` on ``swift sft`` scripts (test_swift_oracle.py,
test_swift_gemma3.py) and ``swift rlhf`` scripts (test_swift_grpo.py, test_swift_dpo.py).

ms-swift 4.6 pins ``trl<1.0`` and ``datasets<4.8.5``, which clash with the test extras: it gets a virtual environment
of its own (oracle_env.py: built once by the test setup, cached in ``$VLMCHECK_CACHE/oracles/swift-<hash>``, torch
kept at 2.13.0). qwen-vl-utils comes without its dependencies (it would pull torchvision).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from oracle_env import OracleEnv

REQUIREMENTS = ("ms-swift==4.6.0",)
NO_DEPS = ("qwen-vl-utils==0.0.14",)

ENV = OracleEnv("swift", packages=REQUIREMENTS, no_deps=NO_DEPS)
oracle_python = ENV.python


# The start of an oracle script (after ``import json``): the rows of a file as ms-swift's own load_dataset
# standardizes them, and each setting's train-mode encode of each row (``measure(template, encoded, row)`` says
# what to record of an encode that succeeds).
ENCODE_ROWS = """
def loaded_rows(data, **options):  # more of load_dataset's options (columns, disable_auto_column_mapping, ...)
    from swift.dataset import load_dataset

    wanted = [json.loads(line)["id"] for line in open(data)]  # a row the loader deletes is missing: None
    options = {"split_dataset_ratio": 0, **options}
    loaded, _ = load_dataset([data], remove_unused_columns=False, strict=False, load_from_cache_file=False,
                             **options)
    by_id = {r["id"]: {k: v for k, v in r.items() if v is not None} for r in loaded}
    return [by_id.get(i) for i in wanted]


def encode_all(processor, template_type, rows, settings, system, measure):
    from swift.template import MaxLengthError, get_template

    out = {}
    for max_length, strategy in settings:
        t = get_template(processor, max_length=max_length, truncation_strategy=strategy, template_type=template_type,
                         default_system=system)
        t.set_mode("train")
        results = []
        for row in rows:
            if row is None:
                results.append({"verdict": "deleted"})
                continue
            try:
                enc = t.encode(json.loads(json.dumps(row)))
            except MaxLengthError:
                results.append({"verdict": "dropped"})
                continue
            except Exception as e:
                results.append({"verdict": "error", "error": repr(e)[:200]})
                continue
            results.append({"verdict": "ok", **measure(t, enc, row)})
        out[f"{max_length}-{strategy}"] = results
    return out
"""


# The row loop of a `swift rlhf` oracle script (GRPO's, the paired types'), after its imports: the run's arguments
# through ms-swift's own parser, the template as its pipeline prepares it, and each wanted row of the loaded dataset
# through ``judge(wanted, row)`` (what to record of the row), with what ms-swift's data path does on a raise.
RLHF_ROWS = """
LOADED = {}


def rlhf_arguments(argv):  # `swift rlhf ARGV`: SwiftPipeline._parse_args (remaining_argv raises) builds RLHFArguments
    from swift.pipelines.train.rlhf import SwiftRLHF

    return SwiftRLHF._parse_args(object.__new__(SwiftRLHF), argv)


def rlhf_template(args, processor):  # SwiftRLHF._prepare_template: get_template, and the mode of the rlhf_type
    from swift.pipelines.train.rlhf import SwiftRLHF

    pipeline = object.__new__(SwiftRLHF)
    pipeline.args, pipeline.processor, pipeline.model = args, processor, None
    pipeline._prepare_template()
    return pipeline.template


def judged_rows(args, ids, skip, judge):
    # each of ids (but skip) as ms-swift meets it: 'deleted' when the rows args.load_dataset() keeps have none with
    # that id (loaded once: every run reads the same files with the same load options); else judge(wanted, row)'s
    # record, 'encoded', or 'max_length' where it raises MaxLengthError (the training dataset skips the row), or
    # 'error' with any other raise
    from swift.template import MaxLengthError

    if not LOADED:
        LOADED.update({r["id"]: r for r in args.load_dataset()[0]})
    rows = {}
    for wanted in ids:
        if wanted in skip:
            continue
        row = LOADED.get(wanted)
        if row is None:
            rows[wanted] = {"verdict": "deleted"}
            continue
        try:
            rows[wanted] = {"verdict": "encoded", **judge(wanted, row)}
        except MaxLengthError:
            rows[wanted] = {"verdict": "max_length"}
        except Exception as e:
            rows[wanted] = {"verdict": "error", "error": repr(e)[:200]}
    return rows
"""


def check_launch(tmp_path: Path, oracle: dict[str, Any], max_length: int | None, strategy: str,
                 *extra: str) -> list[dict[str, Any]]:
    """vlmcheck's records for a ``swift sft`` script on the oracle's checkpoint and data, at ``max_length`` with
    ``strategy`` (ms-swift's ``raise`` is the script's ``delete``), plus ``extra`` options."""
    import vlmcheck

    options = ([f"--max_length {max_length}"] if max_length else []) + \
        [f"--truncation_strategy {'delete' if strategy == 'raise' else strategy}", *extra]
    script = tmp_path / "sft.sh"
    script.write_text("\n".join(["swift sft \\", f"    --model {oracle['checkpoint']} \\",
                                 f"    --dataset {oracle['data']} \\", *(f"    {o} \\" for o in options),
                                 "    --output_dir output", ""]))
    out = tmp_path / "records.jsonl"
    vlmcheck.check(script, output=out)
    return [json.loads(line) for line in out.read_text().splitlines()]
