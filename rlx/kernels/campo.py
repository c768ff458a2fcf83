"""CAMPO (MiroMind-M1, ALGORITHMS.md section 7): repetition penalty, dynamic sampling and the
multi-stage maximum response length.

The loop detector and the length schedule run on the host (token lists, Python scalars: the
maximum length is a static shape for the engine); the per-row score functions are jittable.
"""

from typing import NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

from rlx.kernels.advantages import group_size, group_sum

PENALTY_FORMS = ("paper", "code")


def trailing_loop_fraction(token_ids: Sequence[int], min_repeats: int = 2) -> float:
    """f = (n - start) / n for a trailing loop, 0.0 if there is none.

    For each period p in 1..n // min_repeats, count back-to-back copies of the last p tokens;
    a period with >= min_repeats copies is a loop starting at its earliest copy. As in
    MiroMind-M1's find_infinite_loop_start, when several periods qualify the largest one sets
    `start`.
    """
    t = np.asarray(token_ids)
    n = t.shape[0]
    start = None
    for p in range(1, n // min_repeats + 1):
        # Cheap necessary condition before comparing whole slices: most periods fail here.
        if t[n - 1] != t[n - 1 - p]:
            continue
        count, right = 1, n - p
        while right - p >= 0 and np.array_equal(t[right - p:right], t[right:right + p]):
            count += 1
            right -= p
        if count >= min_repeats:
            start = right
    return 0.0 if start is None else (n - start) / n


def repetition_penalized_scores(scores_B, loop_frac_B, truncated_B, *, form="paper",
                                code_penalty=0.1):
    """Apply the repetition penalty before group normalisation.

    "paper": s - f, with f in [0, 1] the trailing-loop fraction. "code" (MiroMind-M1's
    compute_campo_outcome_advantage): s - code_penalty only for truncated responses that end in
    a loop (f > 0). `form` must be static.
    """
    if form not in PENALTY_FORMS:
        raise ValueError(f"unknown repetition penalty form {form!r}; choose one of {PENALTY_FORMS}")
    s = jnp.asarray(scores_B, jnp.float32)
    f = jnp.asarray(loop_frac_B, jnp.float32)
    if form == "paper":
        return s - f
    hit = jnp.asarray(truncated_B, bool) & (f > 0)
    return s - jnp.where(hit, code_penalty, 0.0)


def zero_overlength(scores_B, truncated_B):
    """Over-length (truncated) responses get reward 0."""
    return jnp.where(jnp.asarray(truncated_B, bool), 0.0, jnp.asarray(scores_B, jnp.float32))


def dynamic_sampling_keep(correct_B, group_ids_B):
    """DAPO-style dynamic sampling: keep groups with 0 < #correct < G; padding rows never kept."""
    n_correct = group_sum(jnp.asarray(correct_B, jnp.float32), group_ids_B)
    g = group_size(group_ids_B)
    return (jnp.asarray(group_ids_B) >= 0) & (n_correct > 0) & (n_correct < g)


# --------------------------------------------------------------------------- length schedule


def max_length_at_step(step: int, *, max_lengths: Sequence[int], boundaries: Sequence[int]) -> int:
    """Fixed schedule: stage = number of boundaries <= step; e.g. max_lengths=(16384, 32768),
    boundaries=(500,) uses 16K for steps 0..499 and 32K from step 500."""
    if len(boundaries) != len(max_lengths) - 1:
        raise ValueError(f"need len(max_lengths) - 1 boundaries, got {len(boundaries)} for "
                         f"{len(max_lengths)} stages")
    stage = sum(1 for b in boundaries if step >= b)
    return int(max_lengths[stage])


class LengthStage(NamedTuple):
    """Host state of the saturation schedule."""

    stage: int = 0
    best_mean_length: float = 0.0
    steps_without_growth: int = 0


def advance_length_stage(state: LengthStage, mean_length: float, *, num_stages: int,
                         patience: int = 20, min_growth: float = 0.01) -> LengthStage:
    """Saturation schedule, state in and state out.

    Mean response length "grows" when it beats the stage's best by a relative min_growth. After
    `patience` steps without growth the stage advances (up to num_stages - 1) and the tracking
    resets. Use the stage to index the max_lengths tuple.
    """
    if mean_length > state.best_mean_length * (1.0 + min_growth):
        state = LengthStage(state.stage, float(mean_length), 0)
    else:
        state = state._replace(steps_without_growth=state.steps_without_growth + 1)
    if state.steps_without_growth >= patience and state.stage < num_stages - 1:
        state = LengthStage(state.stage + 1, 0.0, 0)
    return state
