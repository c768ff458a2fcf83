"""What a classifier-head PRM reads: the rollouts re-laid-out the way the PRM was trained.

A PRM scores a step at a separator token of its own, in an input format of its own; fed the
actor's raw text it reads positions it was never trained on. `pure.prm_format` says which:

pure      PURE's PRM (Qwen2.5-Math-7B-PRM800K, PURE's experience maker): the actor's prompt tokens,
          then the response with the last token of every step (its "\\n\\n" token, or the final
          token) replaced by the PRM's separator "\\n"; read at those positions. Token positions
          do not move, so the actor's layout is reused as it is.
qwen_prm  Qwen2.5-Math-PRM's model card: a ChatML conversation -- the card's system prompt, the
          problem as the user turn, and the steps' texts joined and ended by "<extra_0>" as the
          assistant turn -- tokenized by the PRM's own tokenizer, read at every "<extra_0>".
actor     the actor's tokens unchanged, read at each step's last token (a PRM trained on the
          actor's own format).

Every format returns `PRMInputs`: right-padded ids / mask / positions and, per row, the K
positions to read (-1 where the row has fewer steps), aligned with the step ends that PURE's
advantage uses.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rlx.train import batch as layout

PRM_FORMATS = ("pure", "qwen_prm", "actor")
# The separator each format reads at, unless pure.prm_separator names another.
DEFAULT_SEPARATORS = {"pure": "\n", "qwen_prm": "<extra_0>", "actor": ""}
QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclasses.dataclass(frozen=True)
class PRMInputs:
    ids_BxT: np.ndarray
    mask_BxT: np.ndarray
    positions_BxT: np.ndarray
    read_BxK: np.ndarray  # int32 positions in [0, T), -1 = no step


def separator_id(tokenizer, separator: str, *, where: str) -> int:
    """The one token the PRM reads at; refuses a separator that is not a single token."""
    ids = tokenizer.encode(separator)
    if len(ids) != 1:
        raise ValueError(f"{where}: the PRM's step separator {separator!r} is {len(ids)} tokens in its tokenizer "
                         f"({ids}); set pure.prm_separator to a string that is one token")
    return ids[0]


def actor_inputs(batch, ends_BxK: np.ndarray, *, replace_with: int | None = None) -> PRMInputs:
    """The actor's own layout; with `replace_with`, each step's last token becomes that id."""
    response = batch.response_ids
    if replace_with is not None:
        response = response.copy()
        rows, cols = np.nonzero(ends_BxK >= 0)
        response[rows, ends_BxK[rows, cols]] = replace_with
    ids, mask, positions = layout.concat(batch.prompt_ids, batch.prompt_mask, response, batch.response_mask)
    width = batch.prompt_ids.shape[1]
    read = np.where(ends_BxK >= 0, ends_BxK + width, -1).astype(np.int32)
    return PRMInputs(ids, mask, positions, read)


def step_texts(tokenizer, response_ids: np.ndarray, ends: np.ndarray) -> list[str]:
    """Each step's text, separators and surrounding whitespace stripped."""
    texts, start = [], 0
    for end in ends[ends >= 0]:
        texts.append(tokenizer.decode(response_ids[start:end + 1]).strip())
        start = end + 1
    return texts


def qwen_prm_text(question: str, steps: list[str], separator: str = "<extra_0>") -> str:
    """The conversation Qwen2.5-Math-PRM's card scores (its chat template, no generation prompt)."""
    answer = "".join(step + separator for step in steps)
    return (f"<|im_start|>system\n{QWEN_PRM_SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            f"<|im_start|>assistant\n{answer}<|im_end|>\n")


def qwen_prm_inputs(batch, ends_BxK: np.ndarray, actor_tokenizer, prm_tokenizer, separator: str,
                    *, bucket: int = 64) -> PRMInputs:
    sep = separator_id(prm_tokenizer, separator, where="pure.prm_format=qwen_prm")
    rows, reads = [], []
    per_prompt = len(batch.response_ids) // len(batch.records)  # row b answers prompt b // n
    for b in range(len(batch.response_ids)):
        ends, record = ends_BxK[b], batch.records[b // per_prompt]
        if not (ends >= 0).any():
            rows.append([])
            reads.append([])
            continue
        steps = step_texts(actor_tokenizer, batch.response_ids[b], ends)
        ids = prm_tokenizer.encode(qwen_prm_text(record["question"], steps, separator))
        at = [i for i, t in enumerate(ids) if t == sep]
        # A step whose own text holds the separator would add readings: its steps' are the last ones.
        rows.append(ids)
        reads.append(at[len(at) - len(steps):])
    width = max(bucket, -(-max(len(r) for r in rows) // bucket) * bucket)
    ids, mask = layout.pad_responses(rows, width, getattr(prm_tokenizer, "pad_id", 0))
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    read = np.full(ends_BxK.shape, -1, np.int32)
    for b, at in enumerate(reads):
        read[b, :len(at)] = at
    return PRMInputs(ids, mask, positions, read)


def prm_inputs(fmt: str, batch, ends_BxK: np.ndarray, *, actor_tokenizer, prm_tokenizer, separator: str = "") -> PRMInputs:
    separator = separator or DEFAULT_SEPARATORS[fmt]
    if fmt == "actor":
        return actor_inputs(batch, ends_BxK)
    if fmt == "pure":
        return actor_inputs(batch, ends_BxK,
                            replace_with=separator_id(prm_tokenizer, separator, where="pure.prm_format=pure"))
    if fmt == "qwen_prm":
        return qwen_prm_inputs(batch, ends_BxK, actor_tokenizer, prm_tokenizer, separator)
    raise ValueError(f"pure.prm_format={fmt!r} is not one of {', '.join(PRM_FORMATS)}")
