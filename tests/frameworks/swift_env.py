"""ms-swift's own environment, the oracle for ``vlmcheck check`` on ``swift sft`` scripts (test_swift_oracle.py,
test_swift_gemma3.py).

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
