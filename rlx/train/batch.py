"""Token layout shared by SFT, scoring and RL updates.

A sequence is a left-padded prompt of width P followed by a right-padded response of width R,
so every response starts at column P and the logits that predict it are columns P-1 .. P+R-2.
"""

from __future__ import annotations

import numpy as np


def pad_prompts(prompts: list[list[int]], width: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad to `width`: (ids_BxP int32, mask_BxP int32)."""
    ids = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        if len(p) > width:
            raise ValueError(f"prompt {i} has {len(p)} tokens, more than the {width} allowed; "
                             f"raise data.max_prompt_len / engine.max_prefill_length or shorten it")
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


def bucket(length: int, buckets: tuple[int, ...]) -> int:
    """Smallest bucket >= length, so shapes (and compiled programs) repeat across steps."""
    for b in buckets:
        if length <= b:
            return b
    raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")


def concat(prompt_ids_BxP, prompt_mask_BxP, response_ids_BxR, response_mask_BxR):
    """Full sequences plus positions that skip the left padding."""
    ids_BxT = np.concatenate([prompt_ids_BxP, response_ids_BxR], axis=1)
    mask_BxT = np.concatenate([prompt_mask_BxP, response_mask_BxR], axis=1)
    positions_BxT = np.maximum(np.cumsum(mask_BxT, axis=1) - 1, 0).astype(np.int32)
    return ids_BxT, mask_BxT, positions_BxT
