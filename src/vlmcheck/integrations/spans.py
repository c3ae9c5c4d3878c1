"""Placeholder runs in token id batches: where a token sits in each row, and which images own which runs.

Shared by the collator guards (:mod:`vlmcheck.integrations.guards`) and the rollout checks
(:mod:`vlmcheck.integrations.rollout`).
"""

from __future__ import annotations

import torch


def runs_of(positions: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for p in positions:
        if runs and runs[-1][1] == p:
            runs[-1] = (runs[-1][0], p + 1)
        else:
            runs.append((p, p + 1))
    return runs


def positions(input_ids: torch.Tensor, token_id: int | None) -> list[list[int]]:
    """Per row, the positions of ``token_id`` (one transfer, not per-row indexing: this runs every batch)."""
    if token_id is None:
        return [[] for _ in range(input_ids.shape[0])]
    return rows_of(input_ids == token_id)


def rows_of(hit: torch.Tensor) -> list[list[int]]:
    if not bool(hit.any()):
        return [[] for _ in range(hit.shape[0])]
    return [r.nonzero().flatten().tolist() for r in hit.cpu()]


def typed_positions(
    input_ids: torch.Tensor, token_id: int | None, types: torch.Tensor | None
) -> tuple[list[list[int]], list[list[int]]]:
    """Placeholder positions the processor marked in ``mm_token_type_ids`` / ``token_type_ids``, and
    the others (appended later: a generated completion re-fed for log-probs, which TRL types 0).
    Types that mark no placeholder at all say nothing, and every placeholder counts as marked."""
    if token_id is None or types is None:
        return positions(input_ids, token_id), [[] for _ in range(input_ids.shape[0])]
    hit = input_ids == token_id
    typed = hit & (types != 0)
    if not bool(typed.any()):
        return rows_of(hit), [[] for _ in range(input_ids.shape[0])]
    return rows_of(typed), rows_of(hit & ~typed)


def counts_from_runs(runs_per_row: list[list[tuple[int, int]]], chunks: list[list[int]]) -> list[int] | None:
    """Items per row when every item left in a row still has its first run there (a truncation cuts only
    a row's last items); None when items are left over, i.e. whole items were cut away."""
    counts: list[int] = []
    cursor = 0
    for runs in runs_per_row:
        left, count = len(runs), 0
        while left > 0 and cursor < len(chunks):
            left -= len(chunks[cursor])
            cursor += 1
            count += 1
        counts.append(count)
    return counts if cursor == len(chunks) else None


def counts_by_prefix(runs_per_row: list[list[tuple[int, int]]], chunks: list[list[int]]) -> list[int]:
    """Items per row when rows may hold extra placeholders (generated ones): every run takes the whole
    items, in batch order, that fit it; what is left of a run belongs to no item. Items no row took
    are given to the last row, where they show as missing."""
    counts: list[int] = []
    item, chunk = 0, 0
    for runs in runs_per_row:
        count = 0
        for start, end in runs:
            length = end - start
            while item < len(chunks) and length >= chunks[item][chunk]:
                length -= chunks[item][chunk]
                count += chunk == 0
                chunk += 1
                if chunk == len(chunks[item]):
                    item, chunk = item + 1, 0
        if chunk:  # an item whose later runs are not in this row stays in this row
            item, chunk = item + 1, 0
        counts.append(count)
    if counts and item < len(chunks):
        counts[-1] += len(chunks) - item
    return counts
