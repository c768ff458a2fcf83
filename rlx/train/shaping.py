"""CAMPO's score shaping and multi-stage response length, as the trainer applies them
(ALGORITHMS.md section 7; the kernels are in `rlx.kernels.campo`).

Both run on the host between the verifier and the advantage estimator: the loop detector walks
token lists, and the response length is a static shape of the engine's rollout.
"""

from __future__ import annotations

import numpy as np

from rlx.config import CampoSection
from rlx.kernels.campo import (LengthStage, advance_length_stage, max_length_at_step,
                               repetition_penalized_scores, trailing_loop_fraction, zero_overlength)


def shape_scores(c: CampoSection, response_ids: np.ndarray, response_mask: np.ndarray,
                 truncated: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, dict]:
    """Scores after the over-length zeroing and the repetition penalty, and what they did."""
    metrics = {}
    if c.zero_overlength:
        scores = np.asarray(zero_overlength(scores, truncated))
    if c.repetition_penalty != "none":
        frac = np.array([trailing_loop_fraction(r[m.astype(bool)], c.loop_min_repeats)
                         for r, m in zip(response_ids, response_mask)], np.float32)
        scores = np.asarray(repetition_penalized_scores(scores, frac, truncated, form=c.repetition_penalty,
                                                        code_penalty=c.code_penalty))
        metrics = {"campo/loop_fraction": float(frac.mean()), "campo/looping": float((frac > 0).mean())}
    return np.asarray(scores, np.float32), metrics


def stage_lengths(c: CampoSection, default: int) -> tuple[int, ...]:
    return tuple(c.max_lengths) or (default,)


def length_at(c: CampoSection, default: int, stage: LengthStage, step: int) -> int:
    """The maximum response length of `step`: fixed stages at `boundaries`, or the current
    saturation stage (ALGORITHMS.md section 7)."""
    lengths = stage_lengths(c, default)
    if c.boundaries:
        return max_length_at_step(step, max_lengths=lengths, boundaries=c.boundaries)
    return int(lengths[stage.stage])


def observe_length(c: CampoSection, default: int, stage: LengthStage, mean_length: float) -> LengthStage:
    """The stage after a step whose mean response length was `mean_length` (saturation mode)."""
    lengths = stage_lengths(c, default)
    if len(lengths) > 1 and not c.boundaries:
        return advance_length_stage(stage, mean_length, num_stages=len(lengths), patience=c.patience,
                                    min_growth=c.min_growth)
    return stage
