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


class LengthSchedule:
    """The maximum response length of each step: fixed stages at `boundaries`, or the next stage
    once the mean response length saturates. Its state is part of the checkpoint."""

    def __init__(self, c: CampoSection, default: int):
        self.c = c
        self.lengths = tuple(c.max_lengths) or (default,)
        self.state = LengthStage()

    def max_new_tokens(self, step: int) -> int:
        if self.c.boundaries:
            return max_length_at_step(step, max_lengths=self.lengths, boundaries=self.c.boundaries)
        return int(self.lengths[self.state.stage])

    def observe(self, mean_length: float) -> None:
        """Feed one step's mean response length (saturation mode only)."""
        if len(self.lengths) > 1 and not self.c.boundaries:
            self.state = advance_length_stage(self.state, mean_length, num_stages=len(self.lengths),
                                              patience=self.c.patience, min_growth=self.c.min_growth)

    def get_state(self) -> list:
        return list(self.state)

    def set_state(self, state: list | None) -> None:
        self.state = LengthStage(*state) if state else LengthStage()
