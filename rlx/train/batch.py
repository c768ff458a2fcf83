"""Token layout shared by SFT, scoring and RL updates.

A sequence is a left-padded prompt of width P followed by a right-padded response of width R,
so every response starts at column P and the logits that predict it are columns P-1 .. P+R-2.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def pad_prompts(prompts: list[list[int]], width: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad to `width`: (ids_BxP int32, mask_BxP int32)."""
    ids = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        if len(p) > width:
            raise ValueError(f"prompt {i} has {len(p)} tokens, more than the {width} allowed; "
                             f"raise engine.max_prefill_length or shorten it")
        if p:
            ids[i, width - len(p):] = p
            mask[i, width - len(p):] = 1
    return ids, mask


def pad_responses(responses: list[list[int]], width: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad (truncating) to `width`: (ids_BxR int32, mask_BxR int32)."""
    ids = np.full((len(responses), width), pad_id, np.int32)
    mask = np.zeros((len(responses), width), np.int32)
    for i, r in enumerate(responses):
        r = r[:width]
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask


def concat(prompt_ids_BxP, prompt_mask_BxP, response_ids_BxR, response_mask_BxR):
    """Full sequences plus positions that skip the left padding."""
    ids_BxT = np.concatenate([prompt_ids_BxP, response_ids_BxR], axis=1)
    mask_BxT = np.concatenate([prompt_mask_BxP, response_mask_BxR], axis=1)
    positions_BxT = np.maximum(np.cumsum(mask_BxT, axis=1) - 1, 0).astype(np.int32)
    return ids_BxT, mask_BxT, positions_BxT


@dataclasses.dataclass
class StepBatch:
    """One step's rollouts as fixed-shape host arrays, prompt-major (row i: group i // n).

    Rows of groups that a filter dropped, and padding groups that fill a short step, have
    group id -1 and an all-zero response mask (no loss). `per_fn` holds each reward function's
    own (unweighted) score per row -- side data such as EMPO's cluster frequencies.
    """

    records: list[dict]
    prompt_ids: np.ndarray
    prompt_mask: np.ndarray
    response_ids: np.ndarray
    response_mask: np.ndarray
    logprobs: np.ndarray
    group_ids: np.ndarray
    scores: np.ndarray
    correct: np.ndarray
    truncated: np.ndarray
    per_fn: dict = dataclasses.field(default_factory=dict)


_ROW_FIELDS = ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "logprobs", "scores", "correct",
               "truncated")


def assemble(parts: list[tuple[StepBatch, np.ndarray]], want: int, n: int) -> StepBatch:
    """The first `want` kept groups of the rounds' batches (`keep`: one bool per group); short
    of that, padding groups (group id -1, no loss) repeat dropped ones."""
    rows, records = [], []
    for sb, keep in parts:
        for g in np.flatnonzero(keep):
            if len(records) < want:
                rows.append((sb, np.arange(g * n, (g + 1) * n), len(records)))
                records.append(sb.records[g])
    sb0 = parts[0][0]
    while len(records) < want:  # refill with dropped groups, masked out of the loss
        g = len(records)
        rows.append((sb0, np.arange(g * n, (g + 1) * n), -1))
        records.append(sb0.records[g % len(sb0.records)])

    def gather(get):
        arrays = [get(sb)[idx] for sb, idx, _ in rows]
        if arrays[0].ndim == 2:  # prompts are left-padded to each round's own width
            width = max(a.shape[1] for a in arrays)
            arrays = [np.pad(a, ((0, 0), (width - a.shape[1], 0))) if a.shape[1] < width else a for a in arrays]
        return np.concatenate(arrays)

    fields = {name: gather(lambda sb, name=name: getattr(sb, name)) for name in _ROW_FIELDS}
    per_fn = {key: gather(lambda sb, key=key: sb.per_fn[key]) for key in sb0.per_fn}
    group_ids = np.concatenate([np.full(n, gid, np.int32) for _, _, gid in rows])
    fields["response_mask"] = fields["response_mask"] * (group_ids >= 0)[:, None]
    return StepBatch(records=records, group_ids=group_ids, per_fn=per_fn, **fields)
