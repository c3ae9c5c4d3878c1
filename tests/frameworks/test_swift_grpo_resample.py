"""ms-swift's GRPO trainer under ``--truncation_strategy delete`` against vlmcheck's chance that a generation batch
raises 'resample: only collected ...', ``swift.resample_failures``: GRPOTrainer's own data path on one process, its
train dataloader (trl's RepeatSampler: each prompt ``--num_generations`` times, ``--steps_per_generation`` batches
at once), the resample iterator its ``_prepare_resample_data_iterator`` builds (seed + 1, one row per draw, cycled)
and ``RolloutTrainerMixin.resample_encode_failed_inputs`` (rl_core/resample.py, 10 rounds) on each generation batch,
as ``_prepare_inputs`` reaches ``_rollout_samples``; over several dataset sizes, shares of replaced rows and batch
shapes, 2 epochs of 60 seeded trainers each. The rows' encode is a stand-in that raises ms-swift's own MaxLengthError
for the rows chosen to be replaced (which rows ms-swift's template replaces is proved in test_swift_grpo.py); the
trainer is built without ``__init__`` (no model: nothing else of it runs), and ``msgspec`` is a stand-in as there.
A run-level VC208 on a real GRPO config whose every prompt is over --max_length closes it.
"""

from __future__ import annotations

import json
import math
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from swift_env import oracle_python

import vlmcheck
from vlmcheck.frameworks.swift import resample_failures

# (rows, replaced rows, per_device_train_batch_size, num_generations, steps_per_generation, num_iterations)
CASES = [(1000, 900, 16, 8, 1, 1), (300, 285, 4, 4, 2, 1), (600, 450, 4, 2, 1, 1), (1000, 800, 8, 4, 1, 1),
         (500, 420, 4, 2, 2, 1), (400, 320, 4, 2, 1, 2), (31, 31, 4, 2, 1, 1)]
# datasets not much larger than a batch's draws (10 x its rows): the draws of one batch and the next share a pass of
# the resample iterator, and vlmcheck's figure is a lower bound
SMALL = [(8, 7, 2, 2, 1, 1), (50, 45, 4, 2, 1, 1), (50, 40, 2, 2, 2, 1), (40, 36, 8, 2, 1, 1)]
SEEDS, EPOCHS = 60, 2

SCRIPT = textwrap.dedent('''
    import json, logging, random, sys, types
    sys.modules["msgspec"] = types.SimpleNamespace(field=lambda default=None: default)  # see the module docstring
    from accelerate import Accelerator
    from swift.rlhf_trainers.grpo_trainer import GRPOTrainer
    from swift.rlhf_trainers.utils import identity_data_collator
    from swift.template import MaxLengthError
    from swift.utils import get_logger

    get_logger().setLevel(logging.WARNING)  # one info line per replaced row
    accelerator = Accelerator(cpu=True)

    def epochs(rows, replaced, per_device, generations, steps, iterations, seed):
        bad = set(random.Random(seed).sample(range(rows), replaced))

        def encode(item, **kwargs):
            if item["row"] in bad:
                raise MaxLengthError("over max_length")
            return {"input_ids": [item["row"]]}

        trainer = object.__new__(GRPOTrainer)  # what get_train_dataloader and the resample path read
        trainer.args = types.SimpleNamespace(
            seed=seed, steps_per_generation=steps, generation_batch_size=per_device * steps, dynamic_sample=False,
            dataloader_num_workers=0, dataloader_pin_memory=False, dataloader_persistent_workers=False,
            dataloader_drop_last=False, dataloader_prefetch_factor=None, process_index=0,
            remove_unused_columns=False, report_to=[])
        trainer.accelerator, trainer._train_batch_size = accelerator, per_device
        trainer.num_generations, trainer.num_iterations, trainer.shuffle_dataset = generations, iterations, True
        trainer.template = types.SimpleNamespace(sequence_parallel_size=1, truncation_strategy="raise", encode=encode)
        trainer.data_collator = identity_data_collator
        trainer.train_dataset = [{"row": i, "messages": [{"role": "user", "content": "q"}]} for i in range(rows)]
        trainer._prepare_resample_data_iterator()  # GRPOTrainer.__init__ under truncation_strategy raise (delete)
        loader = trainer.get_train_dataloader()
        out = []
        for _ in range(EPOCHS):
            batches = failed = 0
            for step, inputs in enumerate(loader):
                if step % (steps * iterations):  # _prepare_inputs: a new generation every steps x iterations
                    continue
                batches += 1
                try:
                    trainer.resample_encode_failed_inputs(inputs)  # GRPOTrainer._rollout_samples
                except RuntimeError as e:
                    assert "resample: only collected" in str(e), e
                    failed += 1
            out.append([batches, failed])
        return out

    cases, seeds, EPOCHS = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    print("ORACLE" + json.dumps([[epochs(*case, seed) for seed in range(seeds)] for case in cases]))
''')


@pytest.fixture(scope="module")
def measured() -> list[list[list[list[int]]]]:
    done = subprocess.run([str(oracle_python()), "-c", SCRIPT, json.dumps(CASES + SMALL), str(SEEDS), str(EPOCHS)],
                          capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("ORACLE")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return list(json.loads(lines[-1][len("ORACLE"):]))


def _compare(runs: list[list[list[int]]], case: tuple[int, ...]) -> tuple[float, float, float, float, float]:
    """The measured mean of failing batches per epoch, its standard error, vlmcheck's expectation, the measured share
    of epochs with one or more and vlmcheck's chance of that."""
    rows, replaced, per_device, generations, steps, iterations = case
    batches, chance = resample_failures(rows, replaced, generations=generations, batch=per_device * steps,
                                        iterations=iterations)
    epochs = [epoch for seed in runs for epoch in seed]
    assert {b for b, _ in epochs} == {batches}  # the generation batches of an epoch: rows // prompts per batch
    counts = [failed for _, failed in epochs]
    mean = sum(counts) / len(counts)
    spread = math.sqrt(sum((c - mean) ** 2 for c in counts) / (len(counts) - 1))
    # the count of an epoch's batches, each failing with ``chance``: its binomial spread, or the measured one
    error = max(spread, math.sqrt(batches * chance * (1 - chance))) / math.sqrt(len(counts))
    stopped = sum(c > 0 for c in counts) / len(counts)
    return mean, error, batches * chance, stopped, 1 - (1 - chance) ** batches


@pytest.mark.parametrize("case", range(len(CASES)), ids=["-".join(map(str, c)) for c in CASES])
def test_expected_failing_batches_per_epoch_are_grpos(measured: list[Any], case: int) -> None:
    mean, error, expected, stopped, chance = _compare(measured[case], CASES[case])
    # within four standard errors of the mean of 120 epochs, and 3% of it for the model's own approximation (the
    # draws taken as a window starting anywhere in a pass of the resample iterator, the last batch's too), or 0.1
    assert abs(mean - expected) <= max(4 * error + 0.03 * expected, 0.1), (mean, error, expected)
    n = len(measured[case]) * EPOCHS
    assert abs(stopped - chance) <= 4 * math.sqrt(max(chance * (1 - chance), 1 / n) / n), (stopped, chance)


@pytest.mark.parametrize("case", range(len(SMALL)), ids=["-".join(map(str, c)) for c in SMALL])
def test_on_a_small_dataset_the_expectation_is_a_lower_bound(measured: list[Any], case: int) -> None:
    mean, error, expected, stopped, chance = _compare(measured[len(CASES) + case], SMALL[case])
    assert mean >= expected - 4 * error, (mean, error, expected)
    assert stopped >= chance - 4 * math.sqrt(max(chance * (1 - chance), 1e-3) / (SEEDS * EPOCHS)), (stopped, chance)


def test_when_every_prompt_is_over_max_length_the_first_batch_stops_the_run(tmp_path: Path,
                                                                            qwen2_vl_checkpoint: Path) -> None:
    """A real `swift rlhf --rlhf_type grpo` script whose every prompt is over --max_length under delete: every batch
    raises in ms-swift (the 31-31 case above), and vlmcheck check reports VC208 for the run, not only each row's
    VC204."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Count the words {i} " * 20}],
                                        "solution": "x"}) + "\n" for i in range(12)))
    script = tmp_path / "grpo.sh"
    script.write_text(f"swift rlhf --rlhf_type grpo --model {qwen2_vl_checkpoint} --dataset {data} --reward_funcs "
                      "accuracy --num_generations 2 --per_device_train_batch_size 4 --max_length 16 "
                      "--truncation_strategy delete --output_dir output\n")
    report = vlmcheck.check(script)
    assert report.summary["counts"].get("VC204") == 12
    run = [f for f in report.findings if f.code == "VC208"]
    assert len(run) == 1 and run[0].index is None, run
    assert "every one" in run[0].message and "40 replacements for the 4 rows" in run[0].message, run[0].message
    assert "the run stops at step 1" in run[0].message
