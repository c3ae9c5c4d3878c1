"""ms-swift's training dataset (LazyLLMDataset, --strict false) against vlmcheck's expected count of fetches that
give up ('Failed to retrieve the dataset'), ``swift.fetch_failures``: the real class, its seeded permutation and its
10 tries, over datasets of many sizes and shares of skipped rows, each epoch fetched in a shuffled order as a
sampler does. The rows' encode is a stand-in that raises ms-swift's own MaxLengthError for the rows chosen to be
skipped (which rows ms-swift's template skips is proved in test_swift_oracle.py).
"""

from __future__ import annotations

import json
import math
import subprocess
import textwrap

import pytest
from swift_env import oracle_python

from vlmcheck.frameworks.swift import fetch_failures

CASES = [(8, 7), (8, 8), (50, 45), (200, 100), (300, 240), (1000, 500), (1000, 600), (2000, 1200)]
SEEDS = 40

SCRIPT = textwrap.dedent('''
    import json, random, sys
    from swift.dataset.utils import LazyLLMDataset
    from swift.template import MaxLengthError

    def failures(rows, skipped, seed):
        bad = set(random.Random(seed).sample(range(rows), skipped))

        def encode(row, return_length=True):
            if row in bad:
                raise MaxLengthError("over max_length")
            return {"input_ids": [row]}

        lazy = LazyLLMDataset(list(range(rows)), encode, strict=False, random_state=seed)
        order = list(range(rows))
        random.Random(seed + 1).shuffle(order)
        failed = 0
        for i in order:
            try:
                lazy[i]
            except ValueError as e:
                assert "Failed to retrieve the dataset" in str(e)
                failed += 1
        return failed

    cases, seeds = json.loads(sys.argv[1]), int(sys.argv[2])
    print("ORACLE" + json.dumps([[failures(n, k, s) for s in range(seeds)] for n, k in cases]))
''')


@pytest.fixture(scope="module")
def epochs() -> list[list[int]]:
    done = subprocess.run([str(oracle_python()), "-c", SCRIPT, json.dumps(CASES), str(SEEDS)], capture_output=True,
                          text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("ORACLE")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return list(json.loads(lines[-1][len("ORACLE"):]))


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{n}-rows-{k}-skipped" for n, k in CASES])
def test_expected_failed_fetches_per_epoch_are_lazyllmdatasets(epochs: list[list[int]], case: int) -> None:
    rows, skipped = CASES[case]
    counts = epochs[case]
    mean = sum(counts) / len(counts)
    expected = fetch_failures(rows, skipped)
    if skipped == rows:  # every fetch fails
        assert mean == expected == rows
        return
    # the mean of 40 epochs within three standard errors (a Poisson count's variance is its mean), or 0.1
    assert abs(mean - expected) <= max(3 * math.sqrt(max(expected, mean) / len(counts)), 0.1), (mean, expected)
    # and how often an epoch sees at least one: 1 - exp(-expected), within 0.25
    seen = sum(c > 0 for c in counts) / len(counts)
    assert abs(seen - (1 - math.exp(-expected))) <= 0.25, (seen, expected)
